"""id -> slot map: open addressing, linear probing, backward-shift deletion.

``keys`` holds -1 in empty buckets; ``vals`` the slot of the key beside it.
The table is sized at twice the tier capacity, so probes stay short and
memory follows the capacity, never the number of rows in the store.
"""
import numpy as np
from numba import njit

from .hashing import mix64, table_size

EMPTY = -1


def new_slotmap(capacity: int):
    size = table_size(capacity)
    return np.full(size, EMPTY, dtype=np.int64), np.zeros(size, dtype=np.int32)


@njit(cache=True, inline="always", _nrt=False)
def _home(keys, key):
    return np.int64(mix64(key, 0) & np.uint64(len(keys) - 1))


@njit(cache=True, _nrt=False)
def slotmap_get(keys, vals, key):
    mask = len(keys) - 1
    i = _home(keys, key)
    while keys[i] != EMPTY:
        if keys[i] == key:
            return np.int64(vals[i])
        i = (i + 1) & mask
    return np.int64(-1)


@njit(cache=True, _nrt=False)
def slotmap_put(keys, vals, key, val):
    mask = len(keys) - 1
    i = _home(keys, key)
    while keys[i] != EMPTY and keys[i] != key:
        i = (i + 1) & mask
    keys[i] = key
    vals[i] = val


@njit(cache=True, _nrt=False)
def slotmap_delete(keys, vals, key):
    """Remove ``key``; shift later members of its run back so no tombstones pile up."""
    mask = len(keys) - 1
    i = _home(keys, key)
    while keys[i] != key:
        if keys[i] == EMPTY:
            return False
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if keys[j] == EMPTY:
            break
        home = _home(keys, keys[j])
        # keys[j] may move into the hole at i unless its home lies cyclically in (i, j]
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            keys[i] = keys[j]
            vals[i] = vals[j]
            i = j
    keys[i] = EMPTY
    return True
