"""Ghosts: ids of rows just evicted, without their data, as ARC keeps them.

Two FIFO rings share one id -> position map (its buckets hold ring positions, the
ring the ids; ``kernels/entry_map.py``): ghost 0 holds the ids the
window evicted most recently (TinyLFU refused them a place in main), ghost 1
the ids main evicted most recently. Each holds one window step's worth of
ids, so a miss on a ghost says the cache would have hit had that side been
one step larger. The adaptive policy counts these misses over a sample and
moves its window toward the side that would have gained more.
"""
import numpy as np
from numba import njit

from ..kernels.entry_map import entry_map_delete, entry_map_get, entry_map_put
from .state import GHOST_CAP, GHOST_HEAD, GHOST_LIVE


@njit(cache=True, _nrt=False)
def ghost_push(meta, ring, ghost_map, ghost, key):
    """Remember ``key`` in ``ghost``, forgetting that ghost's oldest id if it is full."""
    cap = meta[GHOST_CAP]
    if cap == 0:
        return
    pos = ghost * cap + meta[GHOST_HEAD + ghost]
    old = ring[pos]
    if old >= 0:
        entry_map_delete(ghost_map, ring, old)
        meta[GHOST_LIVE + ghost] -= 1
    ring[pos] = key
    entry_map_put(ghost_map, ring, key, pos)
    meta[GHOST_LIVE + ghost] += 1
    meta[GHOST_HEAD + ghost] = (meta[GHOST_HEAD + ghost] + 1) % cap


@njit(cache=True, _nrt=False)
def ghost_take(meta, ring, ghost_map, key):
    """Which ghost held ``key`` (0 or 1; it is forgotten there), or -1."""
    cap = meta[GHOST_CAP]
    if cap == 0:
        return np.int64(-1)
    pos = entry_map_get(ghost_map, ring, key)
    if pos < 0:
        return np.int64(-1)
    entry_map_delete(ghost_map, ring, key)
    ring[pos] = -1
    ghost = pos // cap
    meta[GHOST_LIVE + ghost] -= 1
    return ghost
