"""Count-min sketch with conservative update and periodic halving.

TinyLFU's frequency estimator: ``depth`` rows of saturating 8-bit counters.
After ``sample_size`` increments every counter is halved, so old popularity
fades and the sketch follows a drifting stream. Its size follows the cache
capacity, never the number of rows in the store.
"""
import numpy as np
from numba import njit

from .hashing import mix64, table_size

DEPTH = 4
# state: [additions since last halving, sample size]
ADDITIONS, SAMPLE_SIZE = 0, 1


def new_sketch(capacity: int, width: int | None = None):
    width = table_size(max(capacity, 16), load=1.0) if width is None else table_size(width, load=1.0)
    table = np.zeros((DEPTH, width), dtype=np.uint8)
    state = np.array([0, 10 * max(capacity, 16)], dtype=np.int64)
    return table, state


@njit(cache=True)
def sketch_estimate(table, key):
    mask = np.uint64(table.shape[1] - 1)
    best = 255
    for d in range(table.shape[0]):
        c = table[d, np.int64(mix64(key, d + 1) & mask)]
        if c < best:
            best = c
    return np.int64(best)


@njit(cache=True)
def sketch_halve(table, state):
    for d in range(table.shape[0]):
        for w in range(table.shape[1]):
            table[d, w] >>= 1
    state[ADDITIONS] //= 2


@njit(cache=True)
def sketch_increment(table, state, key):
    """Count one access of ``key`` (raising only the smallest counters)."""
    current = sketch_estimate(table, key)
    if current < 255:
        mask = np.uint64(table.shape[1] - 1)
        for d in range(table.shape[0]):
            w = np.int64(mix64(key, d + 1) & mask)
            if table[d, w] == current:
                table[d, w] = current + 1
    state[ADDITIONS] += 1
    if state[ADDITIONS] >= state[SAMPLE_SIZE]:
        sketch_halve(table, state)


@njit(cache=True)
def sketch_estimate_many(table, ids, out):
    for k in range(len(ids)):
        out[k] = sketch_estimate(table, ids[k])
