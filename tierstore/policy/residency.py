"""Who stays in memory: the replacement policies, one hook each.

Hooks take the arrays they touch, never the state tuple: unpacking a tuple of
arrays costs a reference-count update per array, per call, on the hot path.

Every policy answers two questions about an entry (a resident row):
``on_hit`` (reorder it) and, when memory is full, ``pick_victim`` (which
entry leaves to make room). ``adaptive`` and ``wtinylfu`` are W-TinyLFU: an
LRU window admits every newcomer; the window's oldest row then enters the
main SLRU (probation, protected) only if the sketch says it is used more
often than main's oldest probationary row. ``adaptive`` resizes the window by
hill climbing on the hit ratio (as Caffeine does), so it drifts toward LRU
on streams whose popular set moves and toward LFU on stationary ones.
"""
import numpy as np
from numba import njit

from ..kernels.sketch import sketch_estimate
from .heap import heap_push, heap_remove, heap_sift_down
from .lists import list_back, list_push_front, list_remove, list_size
from .state import (ADAPTIVE, CAPACITY, HILL_DECAY, HILL_RESTART, HILL_STEP, LFU, LRU,
                    NO_SEGMENT, POLICY, PREV_HIT_RATE, PROBATION, PROTECTED, PROTECTED_CAP,
                    PROTECTED_SHARE, SAMPLE_HITS, SAMPLE_MISSES, SAMPLE_SIZE, STEP, TICK,
                    WINDOW, WINDOW_CAP, WINDOW_F, RECENT_SHIFT)


@njit(cache=True, _nrt=False)
def _move(meta, seg, prev, nxt, e, to):
    list_remove(meta, prev, nxt, seg[e], e)
    list_push_front(meta, prev, nxt, to, e)
    seg[e] = to


@njit(cache=True, _nrt=False)
def _shrink_protected(meta, seg, prev, nxt):
    while list_size(meta, PROTECTED) > meta[PROTECTED_CAP]:
        _move(meta, seg, prev, nxt, list_back(meta, PROTECTED), PROBATION)


@njit(cache=True, _nrt=False)
def _shrink_window(meta, seg, prev, nxt):
    while list_size(meta, WINDOW) > meta[WINDOW_CAP]:
        _move(meta, seg, prev, nxt, list_back(meta, WINDOW), PROBATION)


@njit(cache=True, _nrt=False)
def on_hit(meta, seg, prev, nxt, freq, stamp, heap, hpos, e, count):
    meta[TICK] += 1
    freq[e] += count
    policy = meta[POLICY]
    if policy == LFU:
        stamp[e] = meta[TICK]
        heap_sift_down(meta, heap, hpos, freq, stamp, hpos[e])
    elif policy == LRU:
        stamp[e] = meta[TICK]
        _move(meta, seg, prev, nxt, e, WINDOW)
    elif seg[e] == PROBATION:
        stamp[e] = meta[TICK]
        _move(meta, seg, prev, nxt, e, PROTECTED)
        _shrink_protected(meta, seg, prev, nxt)
    elif meta[TICK] - stamp[e] > (meta[CAPACITY] >> RECENT_SHIFT):
        # a row moved to the front less than capacity/8 moves ago is still near it:
        # leaving it there saves the list surgery on most hits of a Zipf stream
        stamp[e] = meta[TICK]
        _move(meta, seg, prev, nxt, e, seg[e])


@njit(cache=True, _nrt=False)
def on_insert(meta, seg, prev, nxt, freq, stamp, heap, hpos, e, count):
    """Place a newly resident entry in the policy's order."""
    meta[TICK] += 1
    freq[e] = count
    stamp[e] = meta[TICK]
    if meta[POLICY] == LFU:
        heap_push(meta, heap, hpos, freq, stamp, e)
    else:
        list_push_front(meta, prev, nxt, WINDOW, e)
        seg[e] = WINDOW
        if meta[POLICY] != LRU:
            _shrink_window(meta, seg, prev, nxt)


@njit(cache=True, _nrt=False)
def on_remove(meta, seg, prev, nxt, freq, stamp, heap, hpos, e):
    if meta[POLICY] == LFU:
        heap_remove(meta, heap, hpos, freq, stamp, e)
    else:
        list_remove(meta, prev, nxt, seg[e], e)
        seg[e] = NO_SEGMENT


@njit(cache=True, _nrt=False)
def pick_victim(meta, seg, prev, nxt, heap, entry_id, sketch):
    """The entry to evict when memory is full and a newcomer must enter."""
    policy = meta[POLICY]
    if policy == LFU:
        return np.int64(heap[0])
    if policy == LRU:
        return list_back(meta, WINDOW)
    victim = list_back(meta, PROBATION)
    if victim < 0:
        victim = list_back(meta, PROTECTED)
    if list_size(meta, WINDOW) < meta[WINDOW_CAP] or list_size(meta, WINDOW) == 0:
        return victim if victim >= 0 else list_back(meta, WINDOW)
    candidate = list_back(meta, WINDOW)
    if victim < 0:
        return candidate
    # TinyLFU admission: the window's oldest row enters main only if used more often
    if sketch_estimate(sketch, entry_id[candidate]) > sketch_estimate(sketch, entry_id[victim]):
        _move(meta, seg, prev, nxt, candidate, PROBATION)
        return victim
    return candidate


@njit(cache=True, _nrt=False)
def record_access(meta, fmeta, seg, prev, nxt, hit, count):
    """Feed the hill climber; every sample it moves the window toward a better hit ratio."""
    if meta[POLICY] != ADAPTIVE:
        return
    if hit:
        meta[SAMPLE_HITS] += count
    else:
        meta[SAMPLE_MISSES] += 1
        meta[SAMPLE_HITS] += count - 1
    requests = meta[SAMPLE_HITS] + meta[SAMPLE_MISSES]
    if requests < meta[SAMPLE_SIZE]:
        return
    capacity = meta[CAPACITY]
    rate = meta[SAMPLE_HITS] / requests
    change = rate - fmeta[PREV_HIT_RATE]
    amount = fmeta[STEP] if change >= 0 else -fmeta[STEP]
    if abs(change) >= HILL_RESTART:
        fmeta[STEP] = HILL_STEP * capacity * (1.0 if amount >= 0 else -1.0)
    else:
        fmeta[STEP] = HILL_DECAY * amount
    fmeta[PREV_HIT_RATE] = rate
    meta[SAMPLE_HITS] = 0
    meta[SAMPLE_MISSES] = 0
    fmeta[WINDOW_F] = min(max(fmeta[WINDOW_F] + amount, 1.0), float(capacity))
    meta[WINDOW_CAP] = np.int64(fmeta[WINDOW_F] + 0.5)
    meta[PROTECTED_CAP] = np.int64(PROTECTED_SHARE * (capacity - meta[WINDOW_CAP]))
    _shrink_window(meta, seg, prev, nxt)
    _shrink_protected(meta, seg, prev, nxt)
