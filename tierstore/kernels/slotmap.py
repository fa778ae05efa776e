"""id -> slot map: open addressing, linear probing, backward-shift deletion.

``keys`` holds -1 in empty buckets; ``vals`` the value of the key beside it.
The table has ``capacity / LOAD + 1`` buckets (at most 3/4 full, 16 bytes a key with
4-byte values), not a power of two: a key's home is its hash scaled onto the table, as in
:mod:`.entry_map`. Memory follows the capacity, never the number of rows in
the store.
"""
import numpy as np
from numba import njit

from .entry_map import LOAD, home_bucket
from .hashing import fills_hole

EMPTY = -1


def new_slotmap(capacity: int, value_dtype=np.int32):
    size = max(2, int(capacity / LOAD) + 1)
    return np.full(size, EMPTY, dtype=np.int64), np.zeros(size, dtype=value_dtype)


@njit(cache=True, _nrt=False)
def slotmap_get(keys, vals, key):
    size = len(keys)
    i = home_bucket(size, key)
    while keys[i] != EMPTY:
        if keys[i] == key:
            return np.int64(vals[i])
        i += 1
        if i == size:
            i = 0
    return np.int64(-1)


@njit(cache=True, _nrt=False)
def slotmap_put(keys, vals, key, val):
    size = len(keys)
    i = home_bucket(size, key)
    while keys[i] != EMPTY and keys[i] != key:
        i += 1
        if i == size:
            i = 0
    keys[i] = key
    vals[i] = val


@njit(cache=True, _nrt=False)
def slotmap_delete(keys, vals, key):
    """Remove ``key``; shift later members of its run back so no tombstones pile up."""
    size = len(keys)
    i = home_bucket(size, key)
    while keys[i] != key:
        if keys[i] == EMPTY:
            return False
        i += 1
        if i == size:
            i = 0
    j = i
    while True:
        j += 1
        if j == size:
            j = 0
        if keys[j] == EMPTY:
            break
        home = home_bucket(size, keys[j])
        if fills_hole(i, j, home):
            keys[i] = keys[j]
            vals[i] = vals[j]
            i = j
    keys[i] = EMPTY
    return True
