"""Indexed binary min-heap of slots keyed by (frequency, last access): LFU's order."""
from numba import njit

from .state import HEAP_SIZE


@njit(cache=True, inline="always", _nrt=False)
def _less(freq, stamp, a, b):
    return freq[a] < freq[b] or (freq[a] == freq[b] and stamp[a] < stamp[b])


@njit(cache=True, _nrt=False)
def _swap(heap, hpos, i, j):
    a = heap[i]
    b = heap[j]
    heap[i] = b
    heap[j] = a
    hpos[b] = i
    hpos[a] = j


@njit(cache=True, _nrt=False)
def _sift_up(heap, hpos, freq, stamp, i):
    while i > 0:
        parent = (i - 1) // 2
        if not _less(freq, stamp, heap[i], heap[parent]):
            break
        _swap(heap, hpos, i, parent)
        i = parent


@njit(cache=True, _nrt=False)
def heap_sift_down(meta, heap, hpos, freq, stamp, i):
    n = meta[HEAP_SIZE]
    while True:
        left = 2 * i + 1
        if left >= n:
            break
        child = left
        if left + 1 < n and _less(freq, stamp, heap[left + 1], heap[left]):
            child = left + 1
        if not _less(freq, stamp, heap[child], heap[i]):
            break
        _swap(heap, hpos, i, child)
        i = child


@njit(cache=True, _nrt=False)
def heap_push(meta, heap, hpos, freq, stamp, s):
    i = meta[HEAP_SIZE]
    heap[i] = s
    hpos[s] = i
    meta[HEAP_SIZE] = i + 1
    _sift_up(heap, hpos, freq, stamp, i)


@njit(cache=True, _nrt=False)
def heap_remove(meta, heap, hpos, freq, stamp, s):
    i = hpos[s]
    last = meta[HEAP_SIZE] - 1
    if i != last:
        _swap(heap, hpos, i, last)
    meta[HEAP_SIZE] = last
    hpos[s] = -1
    if i != last:
        heap_sift_down(meta, heap, hpos, freq, stamp, i)
        _sift_up(heap, hpos, freq, stamp, i)
