"""One batch of lookups, planned: who hits, who enters memory, who leaves, who moves.

``plan_batch`` changes only bookkeeping; it returns the data movement the
tiers must then carry out, in this order:

1. write back the rows of dirty evicted entries (read from their slots
   before anything is overwritten);
2. copy each freshly admitted row (``fresh``) from the batch's rows into
   its slot ``aslot``;
3. for each promotion ``k``: copy the demoted device row at ``sw_to[k]`` to
   RAM slot ``sw_from[k]`` (when ``sw_has_y[k]``), then the promoted row
   (batch row ``sw_u[k]``) into device slot ``sw_to[k]``.

Phase one processes the batch's unique ids in order exactly as a sequential
cache would (hits, admissions, evictions, the adaptive window's steps). Phase two places
rows: a batch row left in a RAM slot is promoted into a free device slot, or
swapped with a sampled device row whose sketch estimate is lower. No slot
takes part in two swaps of one batch, so step 3 is a set of disjoint copies.
"""
import numpy as np
from numba import njit

from ..kernels.batch import dedupe
from ..kernels.sketch import sketch_add, sketch_estimate
from ..kernels.entry_map import entry_map_delete, entry_map_put
from .queries import probe
from .ghosts import ghost_push, ghost_take
from .lookahead import ahead_add, ahead_remove
from .free_slots import free_ram_slot, take_free_device_slot, take_free_slot
from .residency import on_hit, on_insert, on_remove, pick_victim, record_access
from .stamps import keep_stamps_narrow
from .state import (ADAPTIVE, DISK_READS, ADMISSIONS,
                    BAR_RESCAN, BAR_SKIPS, BORN, CAPACITY, DEMOTIONS, DEVICE_BAR, DEVICE_HAND, DEVICE_HITS, DEVICE_ROWS,
                    DEVICE_SAMPLE, DIRTY, EPOCH, EVICTIONS, MOVED, FREE_DEVICE, MISSES, PROMOTIONS,
                    POLICY, RAM_HITS, REUSED, SAMPLED_COUNTS, USED, VICTIM_FROM_MAIN, WINDOW, WRITEBACKS)

MAX_COUNT = 255


@njit(cache=True, _nrt=False)
def _count_start_tier(meta, start, count):
    if start < 0:
        meta[MISSES] += count
        meta[DISK_READS] += 1   # the batch reads the row once, however often it uses it
    elif start < meta[DEVICE_ROWS]:
        meta[DEVICE_HITS] += count
    else:
        meta[RAM_HITS] += count


@njit(cache=True, _nrt=False)
def _admit_and_evict(st, uniq, counts, start_entry, start_slot, aslot, fresh, ev_id, ev_slot, ev_dirty):
    meta, fmeta, entry_map = st.meta, st.fmeta, st.entry_map
    entry_id, phys, owner, flags = st.entry_id, st.phys, st.owner, st.flags
    seg, prev, nxt, freq = st.seg, st.prev, st.next, st.freq
    stamp, heap, hpos = st.stamp, st.heap, st.hpos
    sketch, sketch_state = st.sketch, st.sketch_state
    ghost_ring, ghost_map = st.ghost_ring, st.ghost_map
    n_ev = 0
    for u in range(len(uniq)):
        key = uniq[u]
        c = counts[u]
        _count_start_tier(meta, start_slot[u], c)
        # a batch id stays resident from the batch's start until its own turn, or its
        # entry was taken by another id: the probe from the batch's start still tells
        e = start_entry[u]
        hit = e >= 0 and entry_id[e] == key
        prior = 0 if hit else sketch_estimate(sketch, key)
        sketch_add(sketch, sketch_state, key, min(c, MAX_COUNT))
        if hit:
            if meta[POLICY] == ADAPTIVE and seg[e] == WINDOW and meta[SAMPLED_COUNTS] == 0:
                flags[e] |= REUSED
            on_hit(meta, seg, prev, nxt, freq, stamp, heap, hpos, e, c)
            record_access(meta, fmeta, seg, prev, nxt, sketch_state, True, c, -1)
            fresh[u] = False
        else:
            ghost = ghost_take(meta, ghost_ring, ghost_map, key)
            if meta[USED] < meta[CAPACITY]:
                e = meta[USED]
                meta[USED] += 1
                p = take_free_slot(meta, owner)
                phys[e] = p
                owner[p] = e
            else:
                e = pick_victim(meta, seg, prev, nxt, heap, entry_id, flags, sketch, st.ahead_keys, st.ahead_vals)
                on_remove(meta, seg, prev, nxt, freq, stamp, heap, hpos, e)
                ghost_push(meta, ghost_ring, ghost_map, meta[VICTIM_FROM_MAIN], entry_id[e])
                entry_map_delete(entry_map, entry_id, entry_id[e])
                meta[EVICTIONS] += 1
                # a row admitted earlier in this batch never reached its slot: nothing to
                # write back or move out
                if not flags[e] & BORN:
                    dirty = flags[e] & DIRTY
                    ev_id[n_ev] = entry_id[e]
                    ev_slot[n_ev] = phys[e]
                    ev_dirty[n_ev] = dirty
                    meta[WRITEBACKS] += dirty
                    n_ev += 1
            entry_id[e] = key
            entry_map_put(entry_map, entry_id, key, e)
            flags[e] = BORN
            on_insert(meta, seg, prev, nxt, freq, stamp, heap, hpos, e, c, prior)
            meta[ADMISSIONS] += 1
            record_access(meta, fmeta, seg, prev, nxt, sketch_state, False, c, ghost)
            fresh[u] = True
        aslot[u] = e  # the entry for now: it may yet be evicted, or taken by a later id
    for u in range(len(uniq)):
        e = aslot[u]
        flags[e] &= ~BORN
        if entry_id[e] == uniq[u]:
            aslot[u] = phys[e]
        else:
            aslot[u] = -1
            fresh[u] = False
    return n_ev


@njit(cache=True, _nrt=False)
def _device_victim(meta, owner, entry_id, flags, sketch):
    """The least used of a few device slots past the clock hand (not yet moved this batch)."""
    device_rows = meta[DEVICE_ROWS]
    hand = meta[DEVICE_HAND]
    best = -1
    best_est = np.int64(1 << 30)
    looked = 0
    for _ in range(device_rows):
        d = hand
        hand = (hand + 1) % device_rows
        if owner[d] < 0 or flags[owner[d]] & MOVED:
            continue
        est = sketch_estimate(sketch, entry_id[owner[d]])
        if est < best_est:
            best = d
            best_est = est
        looked += 1
        if looked == DEVICE_SAMPLE:
            break
    meta[DEVICE_HAND] = hand
    return best, best_est


@njit(cache=True, _nrt=False)
def _place(st, uniq, aslot, sw_u, sw_from, sw_to, sw_has_y):
    meta, entry_id, phys, owner = st.meta, st.entry_id, st.phys, st.owner
    flags, sketch = st.flags, st.sketch
    device_rows = meta[DEVICE_ROWS]
    n_sw = 0
    if device_rows == 0:
        return n_sw
    for u in range(len(uniq)):
        p = aslot[u]
        # a slot takes part in one swap a batch: its entry moved, or it was left free
        if p < device_rows or owner[p] < 0 or flags[owner[p]] & MOVED:
            continue
        ex = owner[p]
        if meta[FREE_DEVICE] > 0:
            d = take_free_device_slot(meta)
            free_ram_slot(meta, owner, p)
            has_y = False
        else:
            est = sketch_estimate(sketch, uniq[u])
            # most RAM rows are colder than every device row: the last scan's least-used
            # device row sets a bar that spares them the scan
            if est <= meta[DEVICE_BAR] and meta[BAR_SKIPS] < BAR_RESCAN:
                meta[BAR_SKIPS] += 1
                continue
            d, victim_est = _device_victim(meta, owner, entry_id, flags, sketch)
            meta[DEVICE_BAR] = victim_est
            meta[BAR_SKIPS] = 0
            if d < 0 or est <= victim_est:
                continue
            ey = owner[d]
            owner[p] = ey
            phys[ey] = p
            flags[ey] |= MOVED
            has_y = True
            meta[DEMOTIONS] += 1
        owner[d] = ex
        phys[ex] = d
        flags[ex] |= MOVED
        meta[PROMOTIONS] += 1
        sw_u[n_sw] = u
        sw_from[n_sw] = p
        sw_to[n_sw] = d
        sw_has_y[n_sw] = has_y
        n_sw += 1
    for k in range(n_sw):
        flags[owner[sw_to[k]]] &= ~MOVED
        if sw_has_y[k]:
            flags[owner[sw_from[k]]] &= ~MOVED
    return n_sw


@njit(nogil=True, cache=True, _nrt=False)
def plan_batch(st, uniq, counts, start_entry, start_slot, aslot, fresh, ev_id, ev_slot,
               ev_dirty, sw_u, sw_from, sw_to, sw_has_y):
    """Plan one batch; returns (number of evictions, number of promotions).

    ``start_entry[u]`` and ``start_slot[u]`` are the entry and slot of row
    ``uniq[u]`` when the batch began (-1: on disk), as ``probe`` gives them. Output arrays hold at least
    ``len(uniq)`` entries.
    """
    st.meta[EPOCH] += 1
    keep_stamps_narrow(st.meta, st.stamp)
    n_ev = _admit_and_evict(st, uniq, counts, start_entry, start_slot, aslot, fresh, ev_id, ev_slot, ev_dirty)
    n_sw = _place(st, uniq, aslot, sw_u, sw_from, sw_to, sw_has_y)
    return n_ev, n_sw


@njit(cache=True)
def plan_outputs(n):
    """The output arrays ``plan_batch`` fills for a batch of ``n`` unique ids."""
    return (np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_),
            np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint8),
            np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64),
            np.empty(n, dtype=np.bool_))


@njit(cache=True)
def simulate_trace(st, trace, batch):
    """Replay ``trace`` in batches through the store's planner, moving no data."""
    for start in range(0, len(trace), batch):
        uniq, _, counts = dedupe(trace[start:start + batch])
        n = len(uniq)
        start_entry = np.empty(n, dtype=np.int64)
        start_slot = np.empty(n, dtype=np.int64)
        probe(st, uniq, start_entry, start_slot)
        aslot, fresh, ev_id, ev_slot, ev_dirty, sw_u, sw_from, sw_to, sw_has_y = plan_outputs(n)
        plan_batch(st, uniq, counts, start_entry, start_slot, aslot, fresh, ev_id, ev_slot,
                   ev_dirty, sw_u, sw_from, sw_to, sw_has_y)


@njit(cache=True)
def simulate_sequential(st, trace):
    """Replay ``trace`` one id at a time (batch 1), reusing one set of buffers."""
    uniq = np.empty(1, dtype=np.int64)
    counts = np.ones(1, dtype=np.int64)
    start_entry = np.empty(1, dtype=np.int64)
    start_slot = np.empty(1, dtype=np.int64)
    aslot, fresh, ev_id, ev_slot, ev_dirty, sw_u, sw_from, sw_to, sw_has_y = plan_outputs(1)
    for i in range(len(trace)):
        uniq[0] = trace[i]
        probe(st, uniq, start_entry, start_slot)
        plan_batch(st, uniq, counts, start_entry, start_slot, aslot, fresh, ev_id, ev_slot,
                   ev_dirty, sw_u, sw_from, sw_to, sw_has_y)


@njit(cache=True)
def _batch(trace, batch, i):
    return dedupe(trace[i * batch:(i + 1) * batch])[0]


@njit(cache=True)
def simulate_lookahead(st, trace, batch, window):
    """Replay ``trace`` in batches as ``simulate_trace`` does, each batch planned while the
    next ``window`` batches are submitted (in the state's lookahead map)."""
    n_batches = (len(trace) + batch - 1) // batch
    for i in range(1, min(window, n_batches - 1) + 1):  # batch 0 is planned first
        ahead_add(st, _batch(trace, batch, i))
    for i in range(n_batches):
        uniq, _, counts = dedupe(trace[i * batch:(i + 1) * batch])
        if i > 0 and window > 0:
            ahead_remove(st, uniq)
            if i + window < n_batches:
                ahead_add(st, _batch(trace, batch, i + window))
        n = len(uniq)
        start_entry = np.empty(n, dtype=np.int64)
        start_slot = np.empty(n, dtype=np.int64)
        probe(st, uniq, start_entry, start_slot)
        aslot, fresh, ev_id, ev_slot, ev_dirty, sw_u, sw_from, sw_to, sw_has_y = plan_outputs(n)
        plan_batch(st, uniq, counts, start_entry, start_slot, aslot, fresh, ev_id, ev_slot,
                   ev_dirty, sw_u, sw_from, sw_to, sw_has_y)
