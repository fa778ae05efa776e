"""Free physical slots, kept in ``owner`` itself: no array of their own.

Device slots are never freed (a promotion frees the RAM slot it leaves), so the free
device slots are always the last ``meta[FREE_DEVICE]`` of the device tier, taken lowest
first. Free RAM slots form a stack (the slot freed last is taken first) linked through
``owner``: a free slot holds ``-2 - next`` (``-1``: the last), so every free slot still
reads as unowned (``owner < 0``). A new state (``CacheState.new``) links the RAM slots in
order, lowest on top: the order in which an array stack of them would be taken.
"""
import numpy as np
from numba import njit

from .state import DEVICE_ROWS, FREE_DEVICE, FREE_RAM, FREE_RAM_TOP


@njit(cache=True, _nrt=False)
def take_free_device_slot(meta):
    """The lowest free device slot (one must be free)."""
    meta[FREE_DEVICE] -= 1
    return meta[DEVICE_ROWS] - 1 - meta[FREE_DEVICE]


@njit(cache=True, _nrt=False)
def take_free_slot(meta, owner):
    """A free slot, device first (some slot must be free); its ``owner`` is for the caller
    to set."""
    if meta[FREE_DEVICE] > 0:
        return take_free_device_slot(meta)
    meta[FREE_RAM] -= 1
    p = meta[FREE_RAM_TOP]
    meta[FREE_RAM_TOP] = -2 - np.int64(owner[p])
    return p


@njit(cache=True, _nrt=False)
def free_ram_slot(meta, owner, p):
    """RAM slot ``p`` was left empty: it is taken next."""
    owner[p] = -2 - meta[FREE_RAM_TOP]
    meta[FREE_RAM_TOP] = p
    meta[FREE_RAM] += 1
