"""The host mirror of the GPU's index of the memory tiers: id -> physical slot.

Open addressing as in :mod:`.slotmap` (linear probing, backward-shift deletion,
``-1`` in empty buckets) but in a power-of-two table, homes at ``mix64(id) & mask``
(cheap on the GPU), so the GPU probes the very table the host keeps. Every bucket a change writes is
logged, so only those buckets travel to the GPU; the log saturates (and the
caller sends the whole table) when a batch of changes writes more buckets than
it holds.

``meta``: ``[LOG_LEN]`` buckets logged, ``[MAX_SHIFT]`` an upper bound on any
key's distance from its home bucket (inserts raise it; backward shifts only
shorten distances, so it stays a bound), which caps the GPU's probe rounds.
"""
import numpy as np
from numba import njit

from .hashing import fills_hole, mix64

EMPTY = -1
LOG_LEN, MAX_SHIFT = 0, 1
META_SIZE = 2


@njit(cache=True, inline="always", _nrt=False)
def _home(mask, key):
    return np.int64(mix64(key, 0) & np.uint64(mask))


@njit(cache=True, inline="always", _nrt=False)
def _log(log, meta, i):
    n = meta[LOG_LEN]
    if n < len(log):
        log[n] = i
    meta[LOG_LEN] = n + 1


@njit(cache=True, _nrt=False)
def _put(keys, vals, log, meta, key, val):
    mask = len(keys) - 1
    i = _home(mask, key)
    shift = 0
    while keys[i] != EMPTY and keys[i] != key:
        i = (i + 1) & mask
        shift += 1
    keys[i] = key
    vals[i] = val
    _log(log, meta, i)
    if shift > meta[MAX_SHIFT]:
        meta[MAX_SHIFT] = shift


@njit(cache=True, _nrt=False)
def _delete(keys, vals, log, meta, key):
    mask = len(keys) - 1
    i = _home(mask, key)
    while keys[i] != key:
        if keys[i] == EMPTY:
            return
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if keys[j] == EMPTY:
            break
        home = _home(mask, keys[j])
        if fills_hole(i, j, home):
            keys[i] = keys[j]
            vals[i] = vals[j]
            _log(log, meta, i)
            i = j
    keys[i] = EMPTY
    vals[i] = -1
    _log(log, meta, i)


@njit(nogil=True, cache=True, _nrt=False)
def index_apply(keys, vals, log, meta, removed, put_ids, put_slots):
    """Remove ``removed`` (absent ones are skipped), then set ``put_ids[k] -> put_slots[k]``
    (inserted, or moved when present), logging every bucket written."""
    for k in range(len(removed)):
        _delete(keys, vals, log, meta, removed[k])
    for k in range(len(put_ids)):
        _put(keys, vals, log, meta, put_ids[k], put_slots[k])


@njit(nogil=True, cache=True, _nrt=False)
def index_get(keys, vals, ids, out):
    """``out[k]`` = the slot of ``ids[k]``, or -1 (the host's probe of the same table)."""
    mask = len(keys) - 1
    for k in range(len(ids)):
        key = ids[k]
        i = _home(mask, key)
        out[k] = -1
        while keys[i] != EMPTY:
            if keys[i] == key:
                out[k] = vals[i]
                break
            i = (i + 1) & mask
