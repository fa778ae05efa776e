"""Belady's MIN: the offline optimum a cache of ``capacity`` rows could reach on a trace.

On every miss with the cache full, MIN evicts the resident row whose next use lies farthest
in the future (never used again counts as farthest), then inserts the missed row: demand
paging, as libCacheSim's ``Belady`` does, so the two agree hit for hit. Ties only arise among
rows never used again, and which of those leaves changes no later hit.

The trace is given as dense ids (``0 .. num_ids - 1``, see ``dense_ids``). ``next_use`` is one
backward pass; ``belady_hits`` keeps the residents in an indexed max-heap on their next use:
O(log capacity) per access, and memory by the capacity and the number of distinct ids.

MIN is a stack algorithm (the rows a cache of C holds are always among those a cache of C' > C
holds), so a device tier of D rows over a RAM tier of R rows has at best the hits of MIN(D) on
the device and those of MIN(D + R) minus MIN(D) in RAM.
"""
import numpy as np
from numba import njit

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _mix(key):
    """splitmix64's finalizer (a private copy: cached kernels here depend on no other file)."""
    z = np.uint64(key)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def dense_ids(trace, out):
    """Number the distinct ids of ``trace`` 0, 1, 2, ... in first-seen order into ``out``.

    Returns the number of distinct ids. An open-addressing table that doubles as it fills:
    memory follows the distinct ids, not the trace.
    """
    size = 1 << 12
    keys = np.full(size, -1, dtype=np.int64)
    vals = np.empty(size, dtype=np.int64)
    u = 0
    for i in range(len(trace)):
        if 2 * (u + 1) > size:
            new_size = size * 2
            new_keys = np.full(new_size, -1, dtype=np.int64)
            new_vals = np.empty(new_size, dtype=np.int64)
            mask = np.uint64(new_size - 1)
            for j in range(size):
                k = keys[j]
                if k >= 0:
                    h = np.int64(_mix(k) & mask)
                    while new_keys[h] >= 0:
                        h = (h + 1) & (new_size - 1)
                    new_keys[h] = k
                    new_vals[h] = vals[j]
            keys = new_keys
            vals = new_vals
            size = new_size
        key = trace[i]
        h = np.int64(_mix(key) & np.uint64(size - 1))
        while keys[h] >= 0 and keys[h] != key:
            h = (h + 1) & (size - 1)
        if keys[h] < 0:
            keys[h] = key
            vals[h] = u
            u += 1
        out[i] = vals[h]
    return u


@njit(cache=True)
def next_use(dense, num_ids, out):
    """``out[i]``: the position of the next access to ``dense[i]``'s id, ``len(dense)`` if none."""
    n = len(dense)
    last = np.full(num_ids, n, dtype=out.dtype)
    for i in range(n - 1, -1, -1):
        x = dense[i]
        out[i] = last[x]
        last[x] = i


@njit(cache=True, inline="always")
def _sift_up(heap, pos, key, i):
    s = heap[i]
    k = key[s]
    while i > 0:
        parent = (i - 1) >> 1
        p = heap[parent]
        if key[p] >= k:
            break
        heap[i] = p
        pos[p] = i
        i = parent
    heap[i] = s
    pos[s] = i


@njit(cache=True, inline="always")
def _sift_down(heap, pos, key, n, i):
    s = heap[i]
    k = key[s]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        c = heap[child]
        if child + 1 < n and key[heap[child + 1]] > key[c]:
            child += 1
            c = heap[child]
        if key[c] <= k:
            break
        heap[i] = c
        pos[c] = i
        i = child
    heap[i] = s
    pos[s] = i


@njit(cache=True)
def belady_hits(dense, nxt, num_ids, capacity, start):
    """Hits of MIN with ``capacity`` rows over ``dense``, counting accesses from ``start`` on."""
    n = len(dense)
    if capacity <= 0:
        return 0
    cap = min(capacity, num_ids)
    slot_of = np.full(num_ids, -1, dtype=np.int64)
    id_of = np.empty(cap, dtype=np.int64)
    key = np.empty(cap, dtype=np.int64)    # next use of the row in each slot
    heap = np.empty(cap, dtype=np.int64)   # slots, max-heap on key
    pos = np.empty(cap, dtype=np.int64)    # slot -> place in heap
    used = 0
    hits = 0
    for i in range(n):
        x = dense[i]
        s = slot_of[x]
        if s >= 0:
            if i >= start:
                hits += 1
            # its key was i, the smallest of all: it only grows
            key[s] = nxt[i]
            _sift_up(heap, pos, key, pos[s])
        elif used < cap:
            s = used
            used += 1
            slot_of[x] = s
            id_of[s] = x
            key[s] = nxt[i]
            heap[s] = s
            pos[s] = s
            _sift_up(heap, pos, key, s)
        else:
            s = heap[0]                    # the resident used farthest in the future
            slot_of[id_of[s]] = -1
            slot_of[x] = s
            id_of[s] = x
            key[s] = nxt[i]
            _sift_down(heap, pos, key, used, 0)
    return hits


def belady_hit_counts(dense: np.ndarray, num_ids: int, capacities, start: int = 0,
                      nxt: np.ndarray | None = None) -> list[int]:
    """MIN's hits at each capacity (accesses before ``start`` warm the cache, uncounted)."""
    dense = np.ascontiguousarray(dense)
    if nxt is None:
        nxt = np.empty(len(dense), dtype=np.int64 if len(dense) >= 2**31 - 1 else np.int32)
        next_use(dense, num_ids, nxt)
    return [int(belady_hits(dense, nxt, num_ids, int(c), int(start))) for c in capacities]
