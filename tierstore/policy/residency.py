"""Who stays in memory: the replacement policies, one hook each.

Hooks take the arrays they touch, never the state tuple: unpacking a tuple of
arrays costs a reference-count update per array, per call, on the hot path.

Every policy answers two questions about an entry (a resident row):
``on_hit`` (reorder it) and, when memory is full, ``pick_victim`` (which
entry leaves to make room). ``adaptive`` and ``wtinylfu`` are W-TinyLFU: an
LRU window admits every newcomer; the window's oldest row then enters the
main SLRU (probation, protected) only if the sketch says it is used more
often than main's oldest probationary row. ``adaptive`` resizes the window from
two ghosts of recently evicted ids (``record_access``; ``policy/ghosts.py``), so it
drifts toward LRU on streams whose popular set moves and toward LFU on stationary
ones. (Caffeine's hill climbing on the hit ratio of successive samples was replaced:
it oscillated on drifting streams; docs/DESIGN_DECISIONS.md.) ``adaptive`` also lets a
row used again while in the window into main without the sketch's verdict, and shortens
the sketch's memory as the window grows (``PERIOD_MIN``, ``PERIOD_MAX``).
"""
import numpy as np
from numba import njit

from ..kernels.sketch import SAMPLE_SIZE as SKETCH_SAMPLE, sketch_estimate
from .heap import heap_push, heap_remove, heap_sift_down
from .lookahead import is_ahead
from .lists import list_back, list_push_front, list_remove, list_size
from .state import (AHEAD_WALK, REPEAT_ADMIT, ADAPTIVE, CAPACITY, GHOST_HITS, GHOST_MARGIN, HILL_STEP, LFU, LRU, NO_SEGMENT, POLICY,
                    PERIOD_MAX, PERIOD_MIN, REUSED,
                    PROBATION, PROTECTED, PROTECTED_CAP, PROTECTED_SHARE, SAMPLE_HITS,
                    SAMPLE_MISSES, SAMPLE_SIZE, STEP, TICK, VICTIM_FROM_MAIN,
                    WINDOW, WINDOW_CAP, WINDOW_F, RECENT_SHIFT)


FREQ_MAX = (1 << 32) - 1  # LFU's counts are 4 bytes; a row used this often stays put


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
    policy = meta[POLICY]
    if policy == LFU:
        freq[e] = min(np.int64(freq[e]) + count, FREQ_MAX)
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
def on_insert(meta, seg, prev, nxt, freq, stamp, heap, hpos, e, count, prior):
    """Place a newly resident entry in the policy's order; ``prior``: the sketch's count of
    its id before this batch."""
    meta[TICK] += 1
    stamp[e] = meta[TICK]
    if meta[POLICY] == LFU:
        freq[e] = count  # only LFU has a heap (and frequencies) to keep
        heap_push(meta, heap, hpos, freq, stamp, e)
    elif meta[POLICY] == ADAPTIVE and prior >= REPEAT_ADMIT:
        # used often before and back: main's probation, as a hit in ARC's ghost enters its
        # frequent list, rather than a window it would have to leave through TinyLFU again
        list_push_front(meta, prev, nxt, PROBATION, e)
        seg[e] = PROBATION
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
def _oldest_not_ahead(meta, prev, entry_id, ahead_keys, ahead_vals, segment):
    """The oldest entry of ``segment`` that no submitted lookup will use, among its last
    ``AHEAD_WALK``; -1 if the segment is empty or all of those are about to be used."""
    e = list_back(meta, segment)
    for _ in range(AHEAD_WALK):
        if e < 0 or not is_ahead(meta, ahead_keys, ahead_vals, entry_id[e]):
            return e
        e = np.int64(prev[e])
    return np.int64(-1)


@njit(cache=True, _nrt=False)
def pick_victim(meta, seg, prev, nxt, heap, entry_id, flags, sketch, ahead_keys, ahead_vals):
    """The entry to evict when memory is full and a newcomer must enter. Rows that lookups
    already submitted will use (``lookahead``) are passed over where another is near."""
    policy = meta[POLICY]
    if policy == LFU:
        return np.int64(heap[0])
    if policy == LRU:
        victim = _oldest_not_ahead(meta, prev, entry_id, ahead_keys, ahead_vals, WINDOW)
        return victim if victim >= 0 else list_back(meta, WINDOW)
    victim = _oldest_not_ahead(meta, prev, entry_id, ahead_keys, ahead_vals, PROBATION)
    if victim < 0:
        victim = _oldest_not_ahead(meta, prev, entry_id, ahead_keys, ahead_vals, PROTECTED)
    if victim < 0:
        victim = list_back(meta, PROBATION)
    if victim < 0:
        victim = list_back(meta, PROTECTED)
    meta[VICTIM_FROM_MAIN] = 1
    if list_size(meta, WINDOW) < meta[WINDOW_CAP] or list_size(meta, WINDOW) == 0:
        if victim >= 0:
            return victim
        meta[VICTIM_FROM_MAIN] = 0
        return list_back(meta, WINDOW)
    candidate = list_back(meta, WINDOW)
    # TinyLFU admission: the window's oldest row enters main only if used more often, or
    # (``adaptive``) if it was used again in the window, as S3-FIFO's small queue promotes.
    # (Also admitting it when a submitted lookup will use it cost 1 point at 10% on real text;
    # keeping it in the window past the window's size, main's row evicted instead, cost 0.1
    # and 0.5 point at 1% with 1 and 4 batches submitted ahead.)
    if victim >= 0 and (flags[candidate] & REUSED or sketch_estimate(
            sketch, entry_id[candidate]) > sketch_estimate(sketch, entry_id[victim])):
        _move(meta, seg, prev, nxt, candidate, PROBATION)
        return victim
    meta[VICTIM_FROM_MAIN] = 0
    return candidate


@njit(cache=True, _nrt=False)
def record_access(meta, fmeta, seg, prev, nxt, sketch_state, hit, count, ghost):
    """Count one id's accesses for the adaptive window; every sample, move the window.

    ``ghost`` tells which ghost a missed id was found in (-1: none). Over a sample
    of ``capacity`` accesses, misses that a one-step-larger window would have hit
    (ghost 0) are weighed against those a one-step-larger main would have hit
    (ghost 1), and the window takes one step toward the larger. Both counts come
    from the same stretch of the stream, so a drifting stream's swings in hit
    ratio, which made Caffeine's comparison of successive samples oscillate here,
    do not mislead it.
    """
    if meta[POLICY] != ADAPTIVE:
        return
    meta[SAMPLE_HITS] += count if hit else count - 1
    meta[SAMPLE_MISSES] += 0 if hit else 1
    if ghost >= 0:
        meta[GHOST_HITS + ghost] += 1
    if meta[SAMPLE_HITS] + meta[SAMPLE_MISSES] < meta[SAMPLE_SIZE]:
        return
    capacity = meta[CAPACITY]
    for_window = meta[GHOST_HITS]
    for_main = meta[GHOST_HITS + 1]
    meta[SAMPLE_HITS] = 0
    meta[SAMPLE_MISSES] = 0
    meta[GHOST_HITS] = 0
    meta[GHOST_HITS + 1] = 0
    # move only on a clear verdict: near-equal counts are noise, and on a stationary
    # stream they would walk the window away from its best size
    if GHOST_MARGIN * for_main < for_window:
        direction = 1.0
    elif GHOST_MARGIN * for_window < for_main:
        direction = -1.0
    else:
        fmeta[STEP] = 0.0
        return
    base = HILL_STEP * capacity
    step = direction * base
    if step * fmeta[STEP] > 0:  # the same way again: speed up, up to a quarter of memory a step
        step = max(-4 * base, min(4 * base, 1.5 * fmeta[STEP]))
    fmeta[STEP] = step
    fmeta[WINDOW_F] += step
    # keep a sliver of main, so main keeps evicting and its ghost can pull the window back
    top = max(1.0, float(capacity - max(1, capacity // 100)))
    fmeta[WINDOW_F] = min(max(fmeta[WINDOW_F], 1.0), top)
    meta[WINDOW_CAP] = np.int64(fmeta[WINDOW_F] + 0.5)
    meta[PROTECTED_CAP] = np.int64(PROTECTED_SHARE * (capacity - meta[WINDOW_CAP]))
    main_share = 1.0 - fmeta[WINDOW_F] / capacity
    period = max(PERIOD_MIN, PERIOD_MAX * main_share * main_share)
    sketch_state[SKETCH_SAMPLE] = np.int64(period * max(capacity, 16))
    _shrink_window(meta, seg, prev, nxt)
    _shrink_protected(meta, seg, prev, nxt)
