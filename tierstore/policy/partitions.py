"""The bookkeeping of a store's memory, split into independent partitions planned in parallel.

A row belongs to partition ``partition_of(id, P)`` (a hash). Each partition is
a whole :class:`CacheState` (slot map, policy lists, sketch, ghosts) over its
own share of the device and RAM slots, so the numba kernels (which release the
GIL) plan the partitions of one batch on ``P`` threads at once. The store sees
global physical slots: partition ``p``'s device slot ``d`` is global
``dev_base[p] + d``, its RAM slot ``r`` is global ``device_rows +
ram_base[p] + r - dev_share[p]``. With one partition nothing is translated
and the store behaves exactly as one cache; with several, each is a cache of
``1/P`` of the capacity, which a hashed Zipf stream barely notices.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..kernels.batch import partition_of
from . import state as S
from .lookahead import ahead_add, ahead_remove
from .planner import plan_batch, plan_outputs
from .queries import check_invariants, clear_dirty, dirty_rows, mark_dirty, probe, touch
from .state import SAMPLED_COUNTS, CacheState

COUNTERS = (S.DEVICE_HITS, S.RAM_HITS, S.MISSES, S.ADMISSIONS, S.EVICTIONS, S.PROMOTIONS,
            S.DEMOTIONS, S.WRITEBACKS, S.DISK_READS)
# each partition remembers the ids of submitted lookups up to a fifth of its memory rows
# (policy.lookahead; ids beyond are left out, as a hint the window is): 2.4 bytes a cached
# row, room for 3 batches of 60k unique ids beside 1M rows (half took 6, and the bookkeeping
# over 64 bytes a row where the sketch rounds up most; docs/DESIGN_DECISIONS.md)
AHEAD_SHARE = 0.2
AHEAD_MIN_IDS = 64    # and at least this many, for a tiny partition (under 1 KB)


def _shares(total: int, parts: int) -> np.ndarray:
    return np.array([total // parts + (p < total % parts) for p in range(parts)], dtype=np.int64)


class PartitionedState:
    """``parts`` CacheStates over disjoint slot ranges, with the store's operations on them."""

    def __init__(self, device_rows: int, ram_rows: int, policy: str, parts: int = 1,
                 sketch_width: int | None = None):
        self.device_rows, self.ram_rows, self.policy = device_rows, ram_rows, policy
        self.parts = parts
        self.sketch_width = sketch_width
        # each partition gets at least one memory row, and never more device rows than memory
        self.dev_share = _shares(device_rows, parts)
        self.ram_share = _shares(device_rows + ram_rows, parts) - self.dev_share
        self.dev_base = np.concatenate([[0], np.cumsum(self.dev_share)[:-1]])
        self.ram_base = np.concatenate([[0], np.cumsum(self.ram_share)[:-1]])
        width = None if sketch_width is None else max(16, sketch_width // parts)
        self.states = [CacheState.new(int(d), int(r), policy, width,
                                      lookahead_ids=max(AHEAD_MIN_IDS, int(AHEAD_SHARE * (d + r))))
                       for d, r in zip(self.dev_share, self.ram_share)]
        self.arrays = [s.arrays() for s in self.states]
        self._pool = None

    # -- routing -----------------------------------------------------------------------------
    def _split(self, ids: np.ndarray):
        """(order, bounds): ``ids[order[bounds[p]:bounds[p+1]]]`` are partition ``p``'s."""
        if self.parts == 1:
            return None, np.array([0, len(ids)])
        part = partition_of(ids, self.parts)
        # small keys: numpy sorts them stably by radix, in linear time
        order = np.argsort(part.astype(np.uint16) if self.parts <= 1 << 16 else part, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=self.parts))])
        return order, bounds

    def _to_global(self, p: int, slots: np.ndarray) -> np.ndarray:
        if self.parts == 1:
            return slots
        d = self.dev_share[p]
        return np.where(slots < 0, -1, np.where(slots < d, self.dev_base[p] + slots,
                                                  self.device_rows + self.ram_base[p] + slots - d))

    def _to_local(self, p: int, slots: np.ndarray) -> np.ndarray:
        if self.parts == 1:
            return slots
        d = self.dev_share[p]
        return np.where(slots < 0, -1, np.where(slots < self.device_rows, slots - self.dev_base[p],
                                                  slots - self.device_rows - self.ram_base[p] + d))

    def _run(self, job, ids: np.ndarray) -> list:
        """``job(p, index)`` for each partition that has some of ``ids`` (``index``: their
        positions in ``ids``), on the pool when several: jobs write disjoint positions."""
        order, bounds = self._split(ids)
        tasks = [(p, slice(bounds[p], bounds[p + 1]) if order is None else order[bounds[p]:bounds[p + 1]])
                 for p in range(self.parts) if bounds[p + 1] > bounds[p]]
        if len(tasks) < 2:
            return [job(p, index) for p, index in tasks]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(min(self.parts, os.cpu_count() or 1),
                                            thread_name_prefix="tierstore-plan")
        return list(self._pool.map(lambda task: job(*task), tasks))

    # -- the lookup path ---------------------------------------------------------------------
    def probe(self, ids: np.ndarray):
        """(entries, global slots) of ``ids``; -1 where not in memory. Entries are only for
        :meth:`plan` (they are partition-local)."""
        entries = np.empty(len(ids), dtype=np.int64)
        slots = np.empty(len(ids), dtype=np.int64)

        def one(p, index):
            part_ids = ids[index]
            e = np.empty(len(part_ids), dtype=np.int64)
            s = np.empty(len(part_ids), dtype=np.int64)
            probe(self.arrays[p], part_ids, e, s)
            entries[index], slots[index] = e, self._to_global(p, s)

        self._run(one, ids)
        return entries, slots

    def plan(self, uniq, counts, entries, start, sampled=False):
        """Plan one batch (see :func:`planner.plan_batch`) in every partition; the outputs in
        global slots and batch positions: ``(aslot, fresh, evicted (ids, slots, dirty),
        swaps (u, from, to, has_y))``. ``sampled``: the counts estimate a sampled log's (the
        policy leaves out what needs every access seen)."""
        for state in self.states:
            state.meta[SAMPLED_COUNTS] = int(sampled)
        aslot = np.empty(len(uniq), dtype=np.int64)
        fresh = np.empty(len(uniq), dtype=np.bool_)

        def one(p, index):
            part_ids = uniq[index]
            out = plan_outputs(len(part_ids))
            n_ev, n_sw = plan_batch(self.arrays[p], part_ids, counts[index], entries[index],
                                    self._to_local(p, start[index]), *out)
            a, f, ev_id, ev_slot, ev_dirty, sw_u, sw_from, sw_to, sw_has_y = out
            aslot[index], fresh[index] = self._to_global(p, a), f
            batch_u = sw_u[:n_sw] if self.parts == 1 else index[sw_u[:n_sw]]
            return ((ev_id[:n_ev], self._to_global(p, ev_slot[:n_ev]), ev_dirty[:n_ev]),
                    (batch_u, self._to_global(p, sw_from[:n_sw]), self._to_global(p, sw_to[:n_sw]),
                     sw_has_y[:n_sw]))

        moves = self._run(one, uniq)
        return aslot, fresh, _cat([m[0] for m in moves], 3), _cat([m[1] for m in moves], 4)

    def ahead_add(self, uniq: np.ndarray):
        """A lookup of these unique ids was submitted: eviction spares them until it is planned."""
        self._run(lambda p, index: ahead_add(self.arrays[p], uniq[index]), uniq)

    def ahead_remove(self, uniq: np.ndarray):
        """The submitted lookup of these unique ids is being planned (or was dropped)."""
        self._run(lambda p, index: ahead_remove(self.arrays[p], uniq[index]), uniq)

    # -- outside lookups ---------------------------------------------------------------------
    def touch(self, ids: np.ndarray):
        self._run(lambda p, index: touch(self.arrays[p], ids[index]), ids)

    def mark_dirty(self, ids: np.ndarray):
        self._run(lambda p, index: mark_dirty(self.arrays[p], ids[index]), ids)

    def dirty_rows(self):
        """(ids, global slots) of every dirty resident row."""
        found = [dirty_rows(a) for a in self.arrays]
        return (np.concatenate([ids for ids, _ in found]),
                np.concatenate([self._to_global(p, slots) for p, (_, slots) in enumerate(found)]))

    def clear_dirty(self):
        for a in self.arrays:
            clear_dirty(a)

    def check_invariants(self) -> int:
        """0 when every partition's bookkeeping is consistent, else the first broken rule."""
        return next((code for code in map(check_invariants, self.arrays) if code), 0)

    def resident(self) -> dict[int, int]:
        """id -> global physical slot of every resident row (for tests and checks)."""
        out = {}
        for p, state in enumerate(self.states):
            local = state.resident()
            slots = self._to_global(p, np.fromiter(local.values(), dtype=np.int64, count=len(local)))
            out.update(zip(local, slots.tolist()))
        return out

    def meta(self) -> np.ndarray:
        """The partitions' meta counters and capacities, summed."""
        return np.sum([s.meta for s in self.states], axis=0)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.states)

    def close(self):
        """Stop the planning threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def forgotten(self) -> PartitionedState:
        """A state with nothing resident that keeps the sketches and counters (``refresh``)."""
        new = PartitionedState(self.device_rows, self.ram_rows, self.policy, self.parts,
                               self.sketch_width)
        for old, fresh in zip(self.states, new.states):
            fresh.sketch, fresh.sketch_state = old.sketch, old.sketch_state
            fresh.meta[list(COUNTERS)] = old.meta[list(COUNTERS)]
        new.arrays = [s.arrays() for s in new.states]
        new._pool = self._pool
        return new


def _cat(groups, width):
    if len(groups) == 1:
        return groups[0]
    if not groups:
        return (np.empty(0, dtype=np.int64),) * (width - 1) + (np.empty(0, dtype=np.bool_),)
    return tuple(np.concatenate([g[k] for g in groups]) for k in range(width))
