"""Reading and marking the bookkeeping outside a lookup: dirty rows, invariants."""
import numpy as np
from numba import njit

from ..kernels.entry_map import entry_map_get
from .residency import on_hit
from .stamps import keep_stamps_narrow
from .state import (DIRTY, CAPACITY, DEVICE_ROWS, FREE_DEVICE, FREE_RAM, FREE_RAM_TOP, HEAP_SIZE, LFU, POLICY, SIZE0,
                    USED)


@njit(nogil=True, cache=True, _nrt=False)
def probe(st, ids, entries, slots):
    """Entry and physical slot of each id; -1 for both where the row is not in memory."""
    entry_map = st.entry_map
    entry_id = st.entry_id
    phys = st.phys
    for k in range(len(ids)):
        e = entry_map_get(entry_map, entry_id, ids[k])
        entries[k] = e
        slots[k] = phys[e] if e >= 0 else -1


@njit(nogil=True, cache=True)
def touch(st, ids):
    """Reorder resident rows among ``ids`` as if used now, counting nothing: rows that
    a queued prefetch says are about to be used move away from eviction."""
    meta, seg, prev, nxt = st.meta, st.seg, st.prev, st.next
    freq, stamp, heap, hpos = st.freq, st.stamp, st.heap, st.hpos
    entry_map = st.entry_map
    entry_id = st.entry_id
    keep_stamps_narrow(meta, stamp)
    for k in range(len(ids)):
        e = entry_map_get(entry_map, entry_id, ids[k])
        if e >= 0:
            on_hit(meta, seg, prev, nxt, freq, stamp, heap, hpos, e, 0)


@njit(cache=True)
def mark_dirty(st, ids):
    """Flag the resident rows among ``ids`` as newer than disk."""
    entry_map = st.entry_map
    entry_id = st.entry_id
    flags = st.flags
    for k in range(len(ids)):
        e = entry_map_get(entry_map, entry_id, ids[k])
        if e >= 0:
            flags[e] |= DIRTY


@njit(cache=True)
def dirty_rows(st):
    """(ids, physical slots) of every dirty resident row, in entry order."""
    meta = st.meta
    entry_id = st.entry_id
    phys = st.phys
    flags = st.flags
    n = 0
    for e in range(meta[USED]):
        n += flags[e] & DIRTY
    ids = np.empty(n, dtype=np.int64)
    slots = np.empty(n, dtype=np.int64)
    k = 0
    for e in range(meta[USED]):
        if flags[e] & DIRTY:
            ids[k] = entry_id[e]
            slots[k] = phys[e]
            k += 1
    return ids, slots


@njit(cache=True)
def clear_dirty(st):
    meta = st.meta
    flags = st.flags
    for e in range(meta[USED]):
        flags[e] &= ~DIRTY


@njit(cache=True)
def check_invariants(st):
    """0 when the bookkeeping is consistent, else the number of the first broken rule."""
    meta = st.meta
    entry_map, entry_id, phys, owner = st.entry_map, st.entry_id, st.phys, st.owner
    capacity = meta[CAPACITY]
    device_rows = meta[DEVICE_ROWS]
    used = meta[USED]
    if used > capacity or used < 0:
        return 1
    on_device = 0
    for e in range(used):
        if entry_id[e] < 0 or entry_map_get(entry_map, entry_id, entry_id[e]) != e:
            return 2
        p = phys[e]
        if p < 0 or p >= capacity or owner[p] != e:
            return 3
        if p < device_rows:
            on_device += 1
    if on_device > device_rows or used - on_device > capacity - device_rows:
        return 4
    mapped = 0
    for i in range(len(entry_map)):
        if entry_map[i] >= 0:
            mapped += 1
    if mapped != used:
        return 5
    occupied = 0
    for p in range(capacity):
        if owner[p] >= 0:
            occupied += 1
    if occupied != used or meta[FREE_DEVICE] + meta[FREE_RAM] != capacity - used:
        return 6
    ordered = meta[HEAP_SIZE] if meta[POLICY] == LFU else meta[SIZE0] + meta[SIZE0 + 1] + meta[SIZE0 + 2]
    if ordered != used:
        return 7
    # the free RAM slots (policy/free_slots.py): a chain through ``owner`` of exactly
    # FREE_RAM distinct RAM slots (distinct: a cycle would run past the count)
    p = meta[FREE_RAM_TOP]
    for _ in range(meta[FREE_RAM]):
        if p < device_rows or p >= capacity or owner[p] >= 0:
            return 8
        p = -2 - np.int64(owner[p])
    if p != -1:
        return 8
    return 0
