"""Count-min sketch with conservative update and periodic halving.

TinyLFU's frequency estimator: saturating 8-bit counters, ``DEPTH`` of them
per key. As in Caffeine's blocked sketch, a key's counters all lie in one
64-byte block (one cache line), ``16`` per depth, so an estimate costs one
cache miss instead of ``DEPTH``. After ``sample_size`` counted accesses every
counter is halved, so old popularity fades and the sketch follows a
drifting stream. Its size follows the cache capacity, never the number of
rows in the store.
"""
import numpy as np
from numba import njit

from .hashing import mix64, table_size

DEPTH = 4
BLOCK = 64
PER_DEPTH = BLOCK // DEPTH
# state: [additions since last halving, sample size]
ADDITIONS, SAMPLE_SIZE = 0, 1


def new_sketch(capacity: int, width: int | None = None):
    """A sketch of about ``4 * capacity`` counters (or ``4 * width``)."""
    counters = DEPTH * (max(capacity, 16) if width is None else width)
    blocks = table_size(counters // BLOCK, load=1.0, minimum=1)
    table = np.zeros((blocks, BLOCK), dtype=np.uint8)
    state = np.array([0, 10 * max(capacity, 16)], dtype=np.int64)
    return table, state


@njit(cache=True, inline="always", _nrt=False)
def _block(table, h):
    return np.int64(h & np.uint64(table.shape[0] - 1))


@njit(cache=True, inline="always", _nrt=False)
def _column(h, d):
    return d * PER_DEPTH + np.int64((h >> np.uint64(32 + 8 * d)) & np.uint64(PER_DEPTH - 1))


@njit(cache=True, _nrt=False)
def sketch_estimate(table, key):
    h = mix64(key, 1)
    b = _block(table, h)
    best = 255
    for d in range(DEPTH):
        c = table[b, _column(h, d)]
        if c < best:
            best = c
    return np.int64(best)


@njit(cache=True, _nrt=False)
def sketch_halve(table, state):
    for b in range(table.shape[0]):
        for w in range(table.shape[1]):
            table[b, w] >>= 1
    state[ADDITIONS] //= 2


@njit(cache=True, _nrt=False)
def sketch_add(table, state, key, amount):
    """Count ``amount`` accesses of ``key`` with conservative update.

    Every counter is raised to at least ``estimate + amount`` (saturating at
    255), which is what ``amount`` single conservative increments do.
    """
    h = mix64(key, 1)
    b = _block(table, h)
    target = min(sketch_estimate(table, key) + amount, 255)
    for d in range(DEPTH):
        w = _column(h, d)
        if table[b, w] < target:
            table[b, w] = target
    state[ADDITIONS] += amount
    if state[ADDITIONS] >= state[SAMPLE_SIZE]:
        sketch_halve(table, state)
