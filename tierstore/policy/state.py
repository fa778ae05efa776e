"""The bookkeeping of the memory tiers, as plain arrays a kernel can take.

Memory holds ``capacity = device_rows + ram_rows`` physical slots: slots
below ``device_rows`` are device slots, the rest RAM slots. The policy orders
*entries*, not slots: the id -> entry map and the policy's lists and heap
index entries, and ``phys[entry]`` says where the row's bytes lie, so a row
moves between device and RAM by changing one number, keeping its place in
the policy's order. Every array here is sized by the capacities (and the sketch),
never by the number of rows in the store.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from ..kernels.entry_map import new_entry_map
from ..kernels.sketch import new_sketch
from ..kernels.slotmap import new_slotmap

POLICY_CODES = {"adaptive": 0, "wtinylfu": 1, "lru": 2, "lfu": 3}
ADAPTIVE, WTINYLFU, LRU, LFU = 0, 1, 2, 3

# segments (and list ids): LRU and LFU keep every row in WINDOW
NO_SEGMENT, WINDOW, PROBATION, PROTECTED = -1, 0, 1, 2

# scalar slots of ``meta`` (int64)
(HEAD0, TAIL0, HEAD1, TAIL1, HEAD2, TAIL2, SIZE0, SIZE1, SIZE2,
 CAPACITY, DEVICE_ROWS, POLICY, WINDOW_CAP, PROTECTED_CAP, TICK, HEAP_SIZE,
 FREE_DEVICE, FREE_RAM, DEVICE_HAND, EPOCH, USED,
 SAMPLE_HITS, SAMPLE_MISSES, SAMPLE_SIZE,
 DEVICE_HITS, RAM_HITS, MISSES, ADMISSIONS, EVICTIONS, PROMOTIONS, DEMOTIONS,
 WRITEBACKS, DEVICE_BAR, BAR_SKIPS,
 GHOST_CAP, GHOST_HEAD, GHOST_HEAD_MAIN, GHOST_LIVE, GHOST_LIVE_MAIN, VICTIM_FROM_MAIN,
 GHOST_HITS, GHOST_HITS_MAIN, DISK_READS, AHEAD_CAP, AHEAD_LIVE,
 FREE_RAM_TOP, SAMPLED_COUNTS, META_LEN) = range(48)

# bits of ``flags[entry]``: the row is newer than disk; the entry was admitted in the batch
# being planned; its row moved between device and RAM in that batch (both cleared before
# the batch's plan returns, so they need no batch number beside them)
DIRTY, BORN, MOVED = 1, 2, 4
# ``adaptive``: the row was used again while in the window (its exit to main skips TinyLFU);
# only where the planner sees every access: a sampled log (``SAMPLED_COUNTS`` set for the batch,
# the GPU's) shows a sixteenth of the reuses, and the rule then cost 1.3 points of ids missed
# at lookup on tests/test_device_lookup_path.py's stream, where without it sampling costs none
REUSED = 8

# ghosts: ids the window evicted (TinyLFU refused them main) and ids main evicted
GHOST_WINDOW, GHOST_MAIN = 0, 1

# slots of ``fmeta`` (float64): the adaptive window's exact size and last step
WINDOW_F, STEP, FMETA_LEN = range(3)

HILL_STEP = 0.0625
GHOST_MARGIN = 1.5
PROTECTED_SHARE = 0.8
RECENT_SHIFT = 3  # W-TinyLFU leaves a hit row in place if it moved within capacity >> 3 moves
DEVICE_SAMPLE = 8
BAR_RESCAN = 64  # a candidate under the last scan's bar skips the scan, but not this many in a row
# ``adaptive``: a newcomer the sketch has already counted this many times enters main's
# probation segment directly, as a hit in ARC's ghost enters its frequent list; +1.2 points on
# real text at 5% of the rows, +0.5 on Zipf 1.0 at 1% (docs/BENCHMARKS.md)
REPEAT_ADMIT = 3
# ``adaptive``: the sketch halves its counters every ``capacity * max(PERIOD_MIN, PERIOD_MAX *
# main_share ** 2)`` additions, ``main_share`` being the share of memory the ghosts left to main
# (Caffeine's period, and ``wtinylfu``'s, is a fixed 10 x capacity). The more a stream favors
# recency, the shorter the sketch's memory: +0.4 point on real text at 1% and 5% of the rows,
# +0.2 on Zipf at 1% (docs/DESIGN_DECISIONS.md)
PERIOD_MIN, PERIOD_MAX = 2.0, 10.0
# eviction passes over at most this many rows that lookups already submitted will use
AHEAD_WALK = 64
# the most submitted lookups an id's count in the lookahead map says (a byte; lookahead.py)
AHEAD_COUNT_MAX = 255

# CacheState's arrays as the kernels take them: one argument whose fields they read by name
# (a namedtuple compiles to the same code as a plain tuple of the arrays)
StateArrays = namedtuple("StateArrays", (
    "meta", "fmeta", "entry_map", "entry_id", "phys", "owner", "flags", "seg", "prev", "next",
    "freq", "stamp", "heap", "hpos",
    "sketch", "sketch_state", "ghost_ring", "ghost_map", "ahead_keys", "ahead_vals"))


@dataclass
class CacheState:
    """All arrays of one memory hierarchy's bookkeeping."""

    meta: np.ndarray
    fmeta: np.ndarray
    entry_map: np.ndarray
    entry_id: np.ndarray
    phys: np.ndarray
    owner: np.ndarray
    flags: np.ndarray
    seg: np.ndarray
    prev: np.ndarray
    next: np.ndarray
    freq: np.ndarray
    stamp: np.ndarray
    heap: np.ndarray
    hpos: np.ndarray
    sketch: np.ndarray
    sketch_state: np.ndarray
    ghost_ring: np.ndarray
    ghost_map: np.ndarray
    ahead_keys: np.ndarray
    ahead_vals: np.ndarray

    @classmethod
    def new(cls, device_rows: int, ram_rows: int, policy: str, sketch_width: int | None = None,
            lookahead_ids: int = 0):
        """``lookahead_ids``: how many ids of lookups submitted ahead (``policy.lookahead``)
        the state can hold; eviction spares the resident rows among them."""
        capacity = device_rows + ram_rows
        meta = np.zeros(META_LEN, dtype=np.int64)
        meta[[HEAD0, TAIL0, HEAD1, TAIL1, HEAD2, TAIL2]] = -1
        meta[CAPACITY] = capacity
        meta[DEVICE_ROWS] = device_rows
        meta[POLICY] = POLICY_CODES[policy]
        window = capacity if policy in ("lru", "lfu") else max(1, capacity // 100)
        meta[WINDOW_CAP] = window
        meta[PROTECTED_CAP] = int(PROTECTED_SHARE * (capacity - window))
        meta[SAMPLE_SIZE] = max(capacity, 256)
        # ghosts remember one window step's worth of evicted ids on each side
        ghost_cap = max(1, int(HILL_STEP * capacity)) if policy == "adaptive" else 0
        meta[GHOST_CAP] = ghost_cap
        fmeta = np.zeros(FMETA_LEN, dtype=np.float64)
        fmeta[WINDOW_F] = window
        # free slots are taken lowest first; free RAM slots are a stack linked through
        # ``owner`` (policy/free_slots.py): each holds -2 - the next, the last -1
        meta[FREE_DEVICE] = device_rows
        meta[FREE_RAM] = ram_rows
        meta[FREE_RAM_TOP] = device_rows if ram_rows else -1
        owner = np.full(capacity, -1, dtype=np.int32)
        owner[device_rows:capacity - 1] = -2 - np.arange(device_rows + 1, capacity, dtype=np.int32)
        sketch, sketch_state = new_sketch(capacity, sketch_width)
        meta[AHEAD_CAP] = max(0, int(lookahead_ids))
        ahead_keys, ahead_vals = new_slotmap(max(1, meta[AHEAD_CAP]), np.uint8)
        # LFU orders entries in a heap by (freq, stamp), the others in linked lists: each
        # leaves the other's arrays empty (the same dtypes, so the same compiled kernels)
        heap_rows = capacity if policy == "lfu" else 0
        list_rows = capacity - heap_rows
        return cls(
            meta=meta,
            fmeta=fmeta,
            entry_map=new_entry_map(capacity),
            entry_id=np.full(capacity, -1, dtype=np.int64),
            phys=np.full(capacity, -1, dtype=np.int32),
            owner=owner,
            flags=np.zeros(capacity, dtype=np.uint8),
            seg=np.full(list_rows, NO_SEGMENT, dtype=np.int8),
            prev=np.full(list_rows, -1, dtype=np.int32),
            next=np.full(list_rows, -1, dtype=np.int32),
            freq=np.zeros(heap_rows, dtype=np.uint32),  # saturating: residency.FREQ_MAX
            stamp=np.zeros(capacity, dtype=np.uint32),  # ticks, rebased: policy/stamps.py
            heap=np.zeros(heap_rows, dtype=np.int32),
            hpos=np.full(heap_rows, -1, dtype=np.int32),
            sketch=sketch,
            sketch_state=sketch_state,
            ghost_ring=np.full(2 * ghost_cap, -1, dtype=np.int64),
            ghost_map=new_entry_map(2 * ghost_cap),
            ahead_keys=ahead_keys,
            ahead_vals=ahead_vals,
        )

    def arrays(self) -> StateArrays:
        """The arrays, as the kernels take them."""
        return StateArrays(*(getattr(self, f) for f in StateArrays._fields))

    @property
    def capacity(self) -> int:
        return int(self.meta[CAPACITY])

    @property
    def device_rows(self) -> int:
        return int(self.meta[DEVICE_ROWS])

    def resident(self) -> dict[int, int]:
        """id -> physical slot of every resident row (for tests and checks)."""
        used = int(self.meta[USED])
        return {int(self.entry_id[e]): int(self.phys[e]) for e in range(used)}

    def nbytes(self) -> int:
        """Host bytes of every array here (all scale with the capacities, none with the
        store's rows); docs/DESIGN_DECISIONS.md has the budget per array."""
        return sum(a.nbytes for a in self.arrays())
