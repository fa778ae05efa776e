"""id -> index map whose buckets hold only the index: the id lives in an array beside it.

The policy keeps every resident id in a record array anyway (``entry_id[entry]``, the
ghosts' ring of ids), so a bucket needs only the 4-byte index into it; a lookup compares
``ids[bucket]`` with the key. Open addressing, linear probing, backward-shift deletion
(no tombstones); ``-1`` in empty buckets. The table has ``capacity / LOAD`` buckets, not a
power of two: the home bucket is ``mix64(id)`` scaled onto the table (multiply and
shift), so the table stays at most 3/4 full whatever the capacity, 5.3 bytes per entry,
and never follows the number of rows in the store.

A key must be deleted while ``ids[index]`` still holds it: deletion rehashes the keys it
shifts back, read through ``ids``.
"""
import numpy as np
from numba import njit

from ..errors import ConfigError
from .hashing import fills_hole, mix64

EMPTY = -1
# at most 3/4 full: 5.3 bytes a key where half load took 8 (probes are the planner's, off the
# lookup's path; 2.5 buckets a hit and 8.5 a miss on average when full, against 1.5 and 2.5)
LOAD = 0.75


def new_entry_map(capacity: int) -> np.ndarray:
    """The buckets of a map of at most ``capacity`` keys (< 2**31)."""
    if capacity >= 1 << 31:
        raise ConfigError(f"a memory partition holds fewer than 2**31 rows, not {capacity}: "
                          "raise partitions or lower device_rows/ram_rows")
    return np.full(max(2, int(capacity / LOAD) + 1), EMPTY, dtype=np.int32)


@njit(cache=True, inline="always", _nrt=False)
def home_bucket(size, key):
    """Where a table of ``size`` (< 2**32) buckets starts probing ``key``: the top 32 bits
    of its hash times the size, over 2**32, uniform on ``[0, size)`` without a modulo."""
    return np.int64(((mix64(key, 0) >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))


@njit(cache=True, _nrt=False)
def entry_map_get(buckets, ids, key):
    """The index of ``key`` (``ids[index] == key``), or -1."""
    size = len(buckets)
    i = home_bucket(size, key)
    while buckets[i] != EMPTY:
        if ids[buckets[i]] == key:
            return np.int64(buckets[i])
        i += 1
        if i == size:
            i = 0
    return np.int64(-1)


@njit(cache=True, _nrt=False)
def entry_map_put(buckets, ids, key, index):
    """Map ``key`` (absent) to ``index``; ``ids[index]`` holds ``key`` from now on."""
    size = len(buckets)
    i = home_bucket(size, key)
    while buckets[i] != EMPTY:
        i += 1
        if i == size:
            i = 0
    buckets[i] = index


@njit(cache=True, _nrt=False)
def entry_map_delete(buckets, ids, key):
    """Forget ``key``; shift later members of its run back so no tombstones pile up."""
    size = len(buckets)
    i = home_bucket(size, key)
    while True:
        if buckets[i] == EMPTY:
            return False
        if ids[buckets[i]] == key:
            break
        i += 1
        if i == size:
            i = 0
    j = i
    while True:
        j += 1
        if j == size:
            j = 0
        if buckets[j] == EMPTY:
            break
        home = home_bucket(size, ids[buckets[j]])
        if fills_hole(i, j, home):
            buckets[i] = buckets[j]
            i = j
    buckets[i] = EMPTY
    return True
