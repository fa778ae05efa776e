"""The public Store: three tiers tied together by the placement policy."""
from __future__ import annotations

import math
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .config import StoreConfig
from .errors import ClosedStoreError, CorruptRowError, IdOutOfRangeError, ReadOnlyError
from .kernels.batch import dedupe, dedupe_last
from .policy import state as S
from .policy.partitions import PartitionedState
from .prefetch import NOTHING_TO_WAIT_FOR, LookupHandle, PrefetchHandle, Staging
from .progress import progress as progress_bar
from .record_walk import RecordWalk
from .table import TableFormat
from .table_store import TableStore
from .tier_sizes import check_fits, fitted_config
from .tiers.base import DeviceLookupTier, HostLookupTier
from .tiers.disk import DiskTier
from .tiers.memory import HostMemory
from .validation import as_id_array, as_id_tensor, as_rows, check_id_range, is_torch_tensor
from .warmstart import admit_ready, start_warm
from .writeback import WriteBackBuffer

CREATE_CHUNK = 1 << 16
LOGGED_LOOKUP_MIN_IDS = 8192  # device="cpu": smaller lookups plan at once (see lookup)
PREFETCH_MIN_ROWS = 1 << 18
WRITEBACK_MIN_ROWS = 1 << 12
ACCESS_LOG_MAX_IDS = 1 << 20  # logged ids waiting for the planner; beyond, lookups go unplanned
# lookups that all hit wait in the log until it holds this many ids (or a 16th of the memory's
# rows, up to a quarter of the log) before a planning round: the planner's thread then holds
# the GIL a sixteenth as often beside the caller's (docs/DESIGN_DECISIONS.md); a miss starts a
# round at once, so admissions are never late
PLAN_ROUND_MIN_IDS = 1 << 15


@dataclass
class CheckReport:
    """What ``Store.check()`` found."""

    rows_checked: int
    corrupt_ids: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    # runs [start, stop) of rows without a record in a store where every row has one
    missing_runs: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt_ids and not self.problems and not self.missing_runs

    @property
    def missing_count(self) -> int:
        return sum(b - a for a, b in self.missing_runs)

    def __str__(self):
        if self.ok:
            return f"ok: {self.rows_checked} stored rows verified"
        lines = [f"damaged: {len(self.corrupt_ids)} corrupt rows among {self.rows_checked}"]
        if self.corrupt_ids:
            lines.append("corrupt row ids: " + _id_ranges(self.corrupt_ids))
        if self.missing_runs:
            lines.append(f"{self.missing_count} rows have no record (every row should): " + ", ".join(
                str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in self.missing_runs))
        lines.extend(self.problems)
        return "\n".join(lines)


def _note_gaps(ids, expected: int, runs: list) -> int:
    """Append to ``runs`` the gaps in sorted ``ids`` from ``expected`` on; the next expected id."""
    starts = np.concatenate([[expected], ids[:-1] + 1])
    for k in np.flatnonzero(ids > starts):
        runs.append((int(starts[k]), int(ids[k])))
    return int(ids[-1]) + 1


def _id_ranges(ids) -> str:
    """Every id, runs of consecutive ids as ``a-b``: ``3, 7-12, 40``."""
    ids = sorted(ids)
    parts, k = [], 0
    while k < len(ids):
        j = k
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[k]) if j == k else f"{ids[k]}-{ids[j]}")
        k = j + 1
    return ", ".join(parts)


class Store(TableStore):
    """``num_rows x dim`` rows: hot ones on the device, warm ones in RAM, all on disk.

    Use :func:`tierstore.create` or :func:`tierstore.open` rather than this
    constructor. A Store serialises its calls with a lock, so threads may
    share one; processes share a store through LMDB (one writer, any readers).
    A read-only store caches the rows it reads: it sees a writer's later
    flushes in rows it has not cached, and in the others after :meth:`refresh`
    (or a reopen).
    """

    def __init__(self, disk: DiskTier, config: StoreConfig):
        self._disk = disk
        self.path = disk.path
        self.num_rows = disk.format.num_rows
        self.dim = disk.format.dim
        self.dtype = disk.dtype
        self.codec = disk.codec
        self.readonly = disk.readonly
        self._lock = threading.RLock()
        config = self.config = fitted_config(config, self.num_rows)
        check_fits(config, self.dim * self.dtype.itemsize, self.path)
        self._memory = _memory_for(config, self.dim, self.dtype)
        self._state = PartitionedState(config.device_rows, config.ram_rows, config.policy,
                                       config.partitions, config.sketch_width)
        # rows evicted dirty, newer than disk, written in batches and by flush
        self._writeback = WriteBackBuffer(self.dim, self.dtype, config.writeback_rows or max(
            WRITEBACK_MIN_ROWS, config.memory_rows // 8))
        self._closed = False
        self._staging = Staging(limit_rows=max(4 * config.memory_rows, PREFETCH_MIN_ROWS))
        self._prefetcher: ThreadPoolExecutor | None = None
        self._planner: ThreadPoolExecutor | None = None      # plans logged lookups' moves
        # lookups through the tier's own index (every lookup on device="cuda", large ones on
        # "cpu") log their ids; the planner thread plans the logged batches under the lock,
        # while lookups of resident rows go on without it
        self._on_gpu = not isinstance(self._memory, HostLookupTier)
        self._indexed = isinstance(self._memory, DeviceLookupTier)
        self._log_lock = threading.Lock()
        self._access_log = []          # lookups (Pending) not yet planned
        self._log_ids = 0
        self._log_dropped = 0
        self._indexed_lookup = {"ids": 0, "through_host": 0}   # at lookup time, before planning
        self._log_scheduled = False
        self._log_planning = None      # the future of the last planning round submitted
        self._plan_round_ids = min(ACCESS_LOG_MAX_IDS // 4,
                                   max(PLAN_ROUND_MIN_IDS, config.memory_rows // 16))
        self._admitting = None         # the round that plans the last logged lookup with misses
        self._write_gen = 0          # bumped by every update
        self._recent_writes = []     # (gen, ids) of updates while prefetches are in flight
        self._inflight = 0
        self._prefetch_stats = {"prefetches": 0, "rows_read": 0, "rows_used": 0, "lookups_ahead": 0}
        self._ahead: weakref.WeakSet[LookupHandle] = weakref.WeakSet()   # async lookups, for staleness
        self._last_lookup_missed = True    # on the GPU path: whether lookups ahead go to the worker
        self._disk_rows_read = 0
        self.warming = None          # the last warm start (Store.warm), if any
        self._warms = []             # warm starts in progress

    @property
    def disk(self) -> DiskTier:
        """The disk tier: the LMDB environment and its records, for tools that work on the
        stored records themselves (stat, export, sharding, benchmarks). It holds what the last
        write-back or flush wrote; rows newer than that are in memory until :meth:`flush`."""
        return self._disk

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    @property
    def format(self) -> TableFormat:
        """What the table is (shape, dtype, codec, non-finite rule, init), as saved with it."""
        return self._disk.format

    # -- reading ---------------------------------------------------------------------------
    def lookup(self, ids):
        """Rows of ``ids`` (integers of any shape): an array of shape ``ids.shape + (dim,)``.

        numpy ids give a numpy array; torch ids give a torch tensor (on the
        store's device when it is CUDA). On a CUDA store every lookup gives a CUDA
        tensor, ready on the caller's current stream.

        On a CPU store a lookup of at least ``LOGGED_LOOKUP_MIN_IDS`` ids goes through the
        tier's index, as on CUDA, and leaves its planning to the planner thread; smaller
        ones (where a thread hand-off costs more than the planning) plan at once.
        """
        self._check_open()   # a closed store says so before it judges the ids
        if self._on_gpu:
            return self._memory.deliver(self._lookup_on_gpu(self._gpu_ids(ids)))
        id_array = as_id_array(ids, self.num_rows, check_range=False)
        if self._indexed and id_array.size >= LOGGED_LOOKUP_MIN_IDS:
            # an id outside the table misses the index: the range is checked among the misses
            # (as CUDA ids are), so the ids are read first by the pass, not by a check before it
            admitting = self._admitting
            if admitting is not None:
                # the rows an earlier lookup missed enter memory before this one probes it:
                # admissions are never a batch late (the hit ratio of planning at once), while
                # the planning of lookups that all hit stays off this path
                admitting.result()
            out = self._lookup_on_gpu(id_array)
            if is_torch_tensor(ids):
                from .tiers._torch import torch_module

                out = torch_module().from_numpy(out)
            return out
        check_id_range(id_array, self.num_rows)
        with self._exclusive():
            self._check_open()
            ready = self._lookup(id_array, is_torch_tensor(ids))
        return self._memory.deliver(ready)

    def lookup_async(self, ids) -> LookupHandle:
        """Start ``lookup(ids)`` on the store's worker thread; ``handle.result()`` gives the rows.

        Ids are checked now (bad ones raise here). The lookup reads the rows as they
        are now: ``update``, ``flush``, ``refresh`` and ``close`` first wait for the
        async lookups started before them. Its host work (planning, disk reads,
        packing) runs beside the caller; on a CUDA store its gather is queued at once on
        the caller's stream (ahead of the work that will use it) and its misses are read
        by the worker as soon as the GPU lists them; ``result()`` gives the tensor, ready
        on the current stream.
        ``handle.stale`` turns true once an update writes one of its rows: the
        result then holds rows older than the store's.
        """
        if self._on_gpu:   # no lock: a lookup of resident rows never waits for the planner
            self._check_open()
            gpu_ids = self._gpu_ids(ids)
            gen = self._write_gen
            pending = self._memory.issue(gpu_ids)     # on the GPU now; its misses are read by the
            handle = LookupHandle(self._memory.deliver)   # worker, or by result() if it comes first
            handle.finish_by_first(lambda: self._finish_ahead_on_gpu(handle, pending, gpu_ids, gen))
            if self._last_lookup_missed:
                handle.attach(self._worker().submit(self._finish_once_listed, handle, pending))
            else:
                # The last lookup found every row in memory: this one likely does too, and a
                # worker task would only wake a thread that takes turns at the GIL with the
                # caller (lookup_async + result() back to back on the H200: 458 us a call with
                # it, 212 without). result() finishes it; were there misses, it reads them,
                # and the lookups after it go to the worker again.
                handle.attach(NOTHING_TO_WAIT_FOR)
            self._ahead.add(handle)
            self._prefetch_stats["lookups_ahead"] += 1
            return handle
        with self._exclusive():
            self._check_open()
            id_array = as_id_array(ids, self.num_rows)
            handle = LookupHandle(self._memory.deliver)
            # until it is planned, eviction spares its rows (policy/lookahead.py)
            submitted = dedupe(id_array.reshape(-1))[0]
            self._state.ahead_add(submitted)
            handle.attach(self._worker().submit(self._lookup_ahead, handle, id_array,
                                                is_torch_tensor(ids), submitted))
            self._ahead.add(handle)
            self._prefetch_stats["lookups_ahead"] += 1
            return handle

    def _lookup_ahead(self, handle, id_array, as_torch, submitted):
        with self._exclusive():
            self._state.ahead_remove(submitted)
            self._check_open()
            handle.disk_rows_before = self._disk_rows_read
            self._lookup(id_array, as_torch, handle)

    # -- the GPU lookup path (device="cuda") -----------------------------------------------
    def _gpu_ids(self, ids):
        """Checked ids: a CUDA tensor stays on the GPU (its range is checked with the misses,
        which an id outside the table always is); others become numpy."""
        if is_torch_tensor(ids) and ids.is_cuda:
            return self._memory.caller_ids(as_id_tensor(ids, self._memory.device_name))
        return as_id_array(ids, self.num_rows)

    def _finish_once_listed(self, handle, pending):
        """The worker's part of a lookup ahead on the GPU: once its miss list is on the host,
        its last step (disk reads, upload), unless ``result()`` got there first. A lookup that
        missed nothing is left to ``result()``: its last step is a few calls that the worker
        would run while the model's thread launches kernels, the two taking turns at the GIL."""
        if self._memory.wait_listed(pending):
            handle.run_finish()

    def _finish_ahead_on_gpu(self, handle, pending, ids, gen):
        self._check_open()
        handle.disk_rows_before = self._disk_rows_read
        handle.uniq = np.unique(ids) if isinstance(ids, np.ndarray) else None
        handle.publish(self._finish_on_gpu(pending, ids, gen),
                       self._disk_rows_read - handle.disk_rows_before)

    def _lookup_on_gpu(self, ids, locked=False):
        """The rows of ``ids`` from the GPU (resident rows without the host), misses read by
        the host; ready for ``memory.deliver``. The ids go to the planner's access log."""
        self._check_open()
        gen = self._write_gen
        return self._finish_on_gpu(self._memory.issue(ids), ids, gen, locked)

    def _finish_on_gpu(self, pending, ids, gen, locked=False):
        """A lookup issued when updates were at ``gen``: its misses read and filled."""
        positions, missed = self._memory.misses(pending)
        self._last_lookup_missed = len(missed) > 0
        if len(missed):
            bad = np.flatnonzero((missed < 0) | (missed >= self.num_rows))
            if len(bad):
                k = int(np.argmin(positions[bad]))
                raise IdOutOfRangeError(f"row id {int(missed[bad[k]])} at position "
                                        f"{int(positions[bad[k]])} is outside [0, {self.num_rows})")
            with self._lock:
                self._check_open()
                if self._write_gen != gen and not locked:
                    # an update ran since the lookup began: its hits are older than its misses
                    # would be; again, with updates held off
                    return self._lookup_on_gpu(ids, locked=True)
                uniq, inverse, counts = dedupe(missed)
                order = np.argsort(uniq)          # rows are read for sorted ids
                filled = self._memory.missed_rows(len(uniq), len(positions))
                self._rows_of(uniq[order], filled.rows, filled.lent)
                row_of = np.empty_like(order)       # uniq[k]'s row is filled.rows[row_of[k]]
                row_of[order] = np.arange(len(order))
                # under the lock: a tier may lend the same memory to the next lookup's misses
                filled.positions[...] = positions
                filled.which[...] = row_of[inverse]
                self._memory.fill(pending, filled)
        else:
            uniq = counts = missed
        ready = self._memory.ready(pending)
        pending.out = None     # the output is the caller's; the log keeps the lookup's ids only
        self._log_access(pending, len(missed), uniq, counts)
        return ready

    def _rows_of(self, ids, rows, lent):
        """The current rows of sorted unique ``ids`` into ``rows``, on the host (under the
        lock): memory, staging, disk. Rows read from outside memory stay staged for the
        planner's admissions (when none was in memory, ``rows`` itself, unless it is ``lent``
        memory of the tier: sorted ids are staged without a copy)."""
        _, slots = self._state.probe(ids)
        resident = np.flatnonzero(slots >= 0)
        if len(resident):
            rows[resident] = self._memory.read(slots[resident])
        missing = np.flatnonzero(slots < 0)
        if len(missing) and self._staging.rows:
            # staged rows stay staged: the planner takes them as it admits them
            staged = self._staging.take(ids[missing], rows, missing, keep=True)
            self._prefetch_stats["rows_used"] += int(staged.sum())
            missing = missing[~staged]
        if len(missing) == len(ids):
            self._read_disk(ids, rows, missing)
            self._staging.add(ids, rows.copy() if lent else rows)
        elif len(missing):
            self._read_disk(ids[missing], rows, missing)
            self._staging.add(ids[missing], rows[missing])
        return rows

    def _log_access(self, pending, missed, missed_ids, missed_counts):
        """Log a lookup for the planner: its sample of ids and, when sampled, every id it missed
        too (the host read those anyway, and the policy should see each one to admit it)."""
        with self._log_lock:
            n = math.prod(pending.shape)
            self._indexed_lookup["ids"] += n
            self._indexed_lookup["through_host"] += missed
            if pending.log_weight == 1:      # every id is in the sample already
                missed_ids, missed_counts = missed_ids[:0], missed_counts[:0]
            logged = n // pending.log_weight + len(missed_ids)
            if self._log_ids and self._log_ids + logged > ACCESS_LOG_MAX_IDS:
                self._log_dropped += n           # the planner is behind: lose this batch's counts
                return
            self._access_log.append((pending, missed_ids, missed_counts, missed))
            self._log_ids += logged
            if missed or self._log_ids >= self._plan_round_ids:
                self._schedule_round()
            if missed:
                self._admitting = self._log_planning

    def _schedule_round(self):
        """A planning round for the logged lookups, unless one is waiting (under the log lock)."""
        if not self._log_scheduled:
            self._log_scheduled = True
            if self._planner is None:
                self._planner = ThreadPoolExecutor(1, thread_name_prefix="tierstore-planner")
            self._log_planning = self._planner.submit(self._plan_logged)

    def _wait_planned(self):
        """Every lookup logged so far planned (a round for those still waiting, then its end)."""
        with self._log_lock:
            if self._access_log:
                self._schedule_round()
            planning = self._log_planning
        if planning is not None:       # it takes the lock itself: wait outside it
            planning.result()

    def _plan_logged(self):
        """The planner thread's round: the lookups logged since the last round, as one batch."""
        with self._lock:
            with self._log_lock:
                batch, self._access_log = self._access_log, []
                self._log_ids = 0
                self._log_scheduled = False
            if self._closed or not batch:
                return
            ids, weights = [], []
            for pending, missed_ids, missed_counts, missed in batch:
                sample = pending.log_ids()
                if len(missed_ids):
                    # each miss counts for itself; the sample's hits stand for all the hits
                    sample = sample[~np.isin(sample, missed_ids)]
                    hits = math.prod(pending.shape) - missed
                    ids += [sample, missed_ids]
                    weights += [np.full(len(sample), hits / max(1, len(sample))), missed_counts]
                else:
                    ids.append(sample)
                    weights.append(np.full(len(sample), float(pending.log_weight)))
            ids, weights = np.concatenate(ids), np.concatenate(weights)
            uniq, inverse, _ = dedupe(ids)
            counts = np.rint(np.bincount(inverse, weights, minlength=len(uniq))).astype(np.int64)
            entries, start = self._state.probe(uniq)
            sampled = any(pending.log_weight > 1 for pending, *_ in batch)
            self._plan_and_move(uniq, counts, entries, start, None, sampled)
            self._memory.commit()

    def _lookup(self, id_array, as_torch, handle=None):
        """The rows of ``id_array``, ready for ``memory.deliver``; then the policy moves rows.

        The output depends only on where rows were when the batch began, so it is issued
        before the planning: a lookup run ahead hands it to ``handle`` at once, and the
        caller's model can use it while this thread goes on planning."""
        uniq, inverse, counts = dedupe(id_array.reshape(-1))
        if handle is not None:
            handle.uniq = uniq
        try:
            entries, start, rows = self._fetch(uniq)
            ready = self._memory.finish_lookup(rows, inverse, id_array.shape, as_torch)
        except BaseException:
            self._memory.end_lookup()
            raise
        if handle is not None:
            handle.publish(ready, self._disk_rows_read - handle.disk_rows_before)
        self._plan_and_end(uniq, counts, entries, start, rows)
        return ready

    def _plan_and_end(self, uniq, counts, entries, start, rows):
        try:
            self._plan_and_move(uniq, counts, entries, start, rows)
        finally:
            if self._on_gpu:              # the moves reach the GPU's slabs and index
                self._memory.commit()
            else:
                self._memory.end_lookup()

    @contextmanager
    def _exclusive(self):
        """The store's lock, once the planning of the lookups logged before is done."""
        self._wait_planned()
        with self._lock:
            if self._warms:     # warm chunks read in the background enter memory here
                admit_ready(self)
            yield

    def _wait_ahead(self):
        """Let async lookups started before this call finish (they read the rows as they were)."""
        for handle in list(self._ahead):
            handle.wait_quietly()

    def _worker(self) -> ThreadPoolExecutor:
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="tierstore-prefetch")
        return self._prefetcher

    def _fetch(self, uniq):
        """(entries, slots, rows) of unique ids: where each is, and its row (device rows are
        left to the device tier's ``finish_lookup``)."""
        entries, start = self._state.probe(uniq)
        rows = np.empty((len(uniq), self.dim), dtype=self.dtype)
        self._memory.gather(start, rows)
        self._read_missing(uniq, rows, np.flatnonzero(start < 0))
        return entries, start, rows

    def _read_missing(self, uniq, rows, missing, count_used=True):
        """``rows[missing]``: staged rows of ``uniq[missing]`` (taken from the staging), the
        others from disk."""
        if len(missing) and self._staging.rows:
            staged = self._staging.take(uniq[missing], rows, missing)
            if count_used:
                self._prefetch_stats["rows_used"] += int(staged.sum())
            missing = missing[~staged]
        if len(missing):
            self._read_disk(uniq[missing], rows, missing)

    def _read_disk(self, ids, rows, positions):
        self._disk.read_rows(ids, rows, positions)
        self._disk_rows_read += len(ids)
        self._writeback.overlay(ids, rows, positions)

    def _plan_and_move(self, uniq, counts, entries, start, rows, sampled=False):
        """Plan the batch and move its rows. ``rows``: the batch's rows, or None (the planner
        thread's rounds): then only the rows it admits are read, from the staging where the
        lookups left them (else from disk), and the staged copies of the others dropped.
        ``sampled``: ``counts`` come from a sampled log."""
        aslot, fresh, (ev_id, ev_slot, ev_dirty), (sw_u, sw_from, sw_to, sw_has_y) = \
            self._state.plan(uniq, counts, entries, start, sampled)
        n_sw = len(sw_u)
        dirty = np.flatnonzero(ev_dirty)
        if len(dirty):
            self._write_back(ev_id[dirty], self._memory.read(ev_slot[dirty]))
        admitted = np.flatnonzero(fresh)
        if rows is None:
            rows = np.empty((len(uniq), self.dim), dtype=self.dtype)
            outside = start < 0
            entering = admitted[outside[admitted]]
            outside[entering] = False
            # the lookups counted the staged rows they used
            self._read_missing(uniq, rows, entering, count_used=False)
            self._staging.take(uniq[outside], None, None)   # staged rows it does not admit
        self._memory.fill_rows(rows, np.concatenate([admitted, sw_u[:n_sw]]), start)
        if len(admitted):
            self._memory.write(aslot[admitted], rows[admitted])
        # the index of resident rows follows the moves (the GPU's; the host tiers keep none)
        self._memory.retarget(ev_id, ev_slot, uniq[admitted], aslot[admitted])
        if n_sw:
            has_y = sw_has_y[:n_sw]
            demoted = self._memory.read(sw_to[:n_sw][has_y])
            self._memory.write(sw_from[:n_sw][has_y], demoted)
            self._memory.write(sw_to[:n_sw], rows[sw_u[:n_sw]])
            self._memory.swap_index(uniq[sw_u[:n_sw]], sw_from[:n_sw], sw_to[:n_sw], has_y)

    def _write_back(self, ids, rows):
        """Evicted dirty rows join the write-back buffer, which goes to disk in one
        transaction once it holds ``config.writeback_rows`` rows, and at ``flush()``.

        Reads consult the buffer first (it is newer than disk), so deferring costs
        nothing but memory, and saves a synchronous commit on most lookups. If the
        disk refuses, the rows stay buffered and ``flush()`` reports the failure:
        raising here, after the plan moved rows, would leave admitted slots unfilled.
        """
        self._writeback.add(ids, rows)
        if self._writeback.full:
            self._drain_writeback()

    def _drain_writeback(self):
        ids, rows = self._writeback.ids, self._writeback.rows
        try:
            self._disk.write_rows(ids, rows)
        except Exception:  # noqa: BLE001
            return
        self._writeback.clear()
        self._note_write(ids)

    # -- prefetching ------------------------------------------------------------------------
    def prefetch(self, ids) -> PrefetchHandle:
        """Start bringing the rows of ``ids`` toward memory in the background.

        Disk reads and decoding run on a worker thread; a later ``lookup`` of these
        ids takes the staged rows instead of waiting on disk. Several prefetches may
        be queued (lookahead of several batches); rows in memory that they name are
        moved away from eviction. Returns a handle whose ``wait()`` blocks until done.
        """
        with self._exclusive():
            self._check_open()
            uniq = dedupe(as_id_array(ids, self.num_rows).reshape(-1))[0]
            future = self._worker().submit(self._prefetch_rows, uniq)
            self._inflight += 1
            self._prefetch_stats["prefetches"] += 1
            return PrefetchHandle(future)

    def _prefetch_rows(self, uniq):
        try:
            with self._exclusive():
                if self._closed:
                    return 0
                _, slots = self._state.probe(uniq)
                self._state.touch(uniq[slots >= 0])
                wanted = np.sort(uniq[slots < 0])     # sorted: decoded and staged in place
                rows = np.empty((len(wanted), self.dim), dtype=self.dtype)
                # rows staged already are copied, not left out: the planner takes staged rows
                # as it admits an earlier lookup's, and this prefetch's lookup comes later
                staged = self._staging.take(wanted, rows, np.arange(len(wanted)), keep=True)
                gen = self._write_gen
            read = np.flatnonzero(~staged)
            self._disk.read_rows(wanted[read], rows, read)
            with self._exclusive():
                late = self._written_since(gen)
                if len(late):
                    fresh = ~np.isin(wanted, late)
                    wanted, rows, read = wanted[fresh], rows[fresh], read[fresh[read]]
                self._writeback.overlay(wanted, rows)
                self._staging.add(wanted, rows)
                self._prefetch_stats["rows_read"] += len(read)
                return len(read)
        finally:
            with self._exclusive():
                self._inflight -= 1
                if not self._inflight:
                    self._recent_writes = []

    def _note_write(self, ids):
        self._write_gen += 1
        self._staging.drop(ids)
        if self._inflight:
            self._recent_writes.append((self._write_gen, ids))

    def _written_since(self, gen):
        late = [ids for g, ids in self._recent_writes if g > gen]
        return np.concatenate(late) if late else np.empty(0, dtype=np.int64)

    def warm(self, hot, *, progress: bool = True):
        """Load the hottest rows of ``hot`` into memory in the background, hottest to the device.

        ``hot``: a counts file (``tierstore profile TRACE --write-counts hot.npz``) or an
        ``(ids, counts)`` pair; at most the memory tiers' rows are loaded. Lookups and
        updates go on meanwhile (an update always wins over the warm's read). Returns a
        :class:`~tierstore.warmstart.WarmHandle` (``wait()``, ``loaded``, ``total``), also
        kept as ``store.warming``. ``progress``: a bar on stderr (when it is a terminal).
        """
        self.warming = start_warm(self, hot, progress)
        return self.warming

    # -- writing ---------------------------------------------------------------------------
    def update(self, ids, rows):
        """Overwrite rows; with duplicate ids in one call the last one wins.

        Rows in memory are changed in place and written to disk when evicted
        or flushed; rows only on disk are written at once.
        """
        self._wait_ahead()
        with self._exclusive():
            self._check_open()
            self._check_writable()
            id_array = as_id_array(ids, self.num_rows)
            new_rows = as_rows(rows, id_array.shape + (self.dim,), self.dtype,
                               self.format.allow_nonfinite, row_ids=id_array, codec=self.codec)
            uniq, last = dedupe_last(id_array.reshape(-1))
            values = new_rows.reshape(-1, self.dim)[last]
            _, slots = self._state.probe(uniq)
            resident = slots >= 0
            self._disk.write_rows(uniq[~resident], values[~resident])
            self._note_write(uniq)
            self._writeback.drop(uniq[~resident])
            self._memory.write(slots[resident], values[resident])
            self._memory.commit()
            self._state.mark_dirty(uniq[resident])
            for handle in list(self._ahead):
                handle.note_update(uniq)

    def apply_gradients(self, ids, grads, optimizer, rows=None) -> int:
        """Train the rows of ``ids`` (unique): ``optimizer.apply(ids, rows, grads)`` gives
        their new rows, which are stored; then ``optimizer.commit()``. ``rows``: the rows as
        the caller read them (``None``: read them now). Returns the rows written."""
        if ids is None or not len(ids):
            return 0
        id_array = as_id_array(ids, self.num_rows).reshape(-1)
        if rows is None:
            from .tiers._torch import torch_module

            rows = self.lookup(torch_module().from_numpy(id_array)).to(grads.device, grads.dtype)
        new_rows = optimizer.apply(id_array, rows, grads)
        self.update(id_array, new_rows)
        optimizer.commit()
        return len(id_array)

    def flush(self):
        """Write every dirty row in one transaction; after it returns, a crash loses nothing."""
        self._wait_ahead()
        with self._exclusive():
            self._check_open()
            self._flush()

    def _flush(self):
        if not self.readonly:
            ids, slots = self._state.dirty_rows()
            records = self._disk.encode(self._writeback.ids, self._writeback.rows)
            records += self._disk.encode(ids, self._memory.read(slots))
            if records:
                self._disk.write(lambda txn: self._disk.put_encoded(txn, records))
            self._disk.sync()
            self._state.clear_dirty()
            self._note_write(self._writeback.ids)
            self._writeback.clear()

    def refresh(self):
        """Forget every cached row, so the next lookups read the newest committed rows.

        A read-only store caches what it reads; another process's writer may have
        flushed newer rows since. After ``refresh()`` every lookup reads LMDB's
        newest committed state (rows then enter memory again as usual). Prefetches
        started before are waited for and their staged rows dropped. On a writable
        store (whose cache is never stale) this flushes first and frees the tiers.
        Counters and the admission sketch are kept.
        """
        self._wait_ahead()
        while True:
            with self._exclusive():
                self._check_open()
                if not self._inflight:
                    self._flush()
                    self._forget_cached_rows()
                    return
                try:  # the one worker runs prefetches in order: this waits for those queued
                    barrier = self._prefetcher.submit(int)
                except RuntimeError:  # close() is shutting the worker down: wait for it
                    barrier = None
            if barrier is None:
                time.sleep(0.001)
            else:
                barrier.result()

    def _forget_cached_rows(self):
        self._state = self._state.forgotten()
        self._staging.clear()
        self._memory.clear()
        self._memory.commit()

    # -- inspecting ------------------------------------------------------------------------
    def resident_ids(self) -> np.ndarray:
        """Ids of the rows in memory (device and RAM tiers) now, in the bookkeeping's order."""
        with self._exclusive():
            self._check_open()
            return np.fromiter(self._state.resident().keys(), dtype=np.int64)

    def stats(self) -> dict:
        """Per-tier hits, promotions, evictions and bytes moved since the store was opened.

        Every looked-up id (duplicates included) is one of ``lookups``, served by the tier
        that held its row when its lookup began: ``device.hits``, ``ram.hits`` or the disk
        (``disk.accesses``, also ``misses``); ``hit_ratio`` is the share served by memory.
        A lookup reads each missing row once, however often it holds the id: ``disk.reads``
        counts rows read (per unique id and lookup, staged prefetches included),
        ``disk.bytes_read`` the bytes LMDB gave for them, and ``read_hit_ratio`` is
        ``1 - disk.reads / lookups``, the figure a one-id-at-a-time cache simulator reports.
        """
        with self._exclusive():
            return self._stats()

    def _stats(self) -> dict:
        m = self._state.meta()
        lookups = int(m[S.DEVICE_HITS] + m[S.RAM_HITS] + m[S.MISSES])
        resident = int(m[S.USED])
        on_device = int(m[S.DEVICE_ROWS] - m[S.FREE_DEVICE])
        index_bytes = self._memory.index_host_bytes() if self._indexed else 0

        def ratio(x):
            return float(x) / lookups if lookups else 0.0

        return {
            "lookups": lookups,
            "device": {"hits": int(m[S.DEVICE_HITS]), "hit_ratio": ratio(m[S.DEVICE_HITS]),
                       "rows": on_device, "capacity": int(m[S.DEVICE_ROWS])},
            "ram": {"hits": int(m[S.RAM_HITS]), "hit_ratio": ratio(m[S.RAM_HITS]),
                    "rows": resident - on_device,
                    "capacity": int(m[S.CAPACITY] - m[S.DEVICE_ROWS])},
            # a batch reads a row once however often it uses it: ``reads`` are rows read
            # (per unique id and lookup), ``accesses`` the looked-up ids they served
            "disk": {"reads": int(m[S.DISK_READS]), "read_ratio": ratio(m[S.DISK_READS]),
                     "accesses": int(m[S.MISSES]), "access_ratio": ratio(m[S.MISSES]),
                     "bytes_read": self._disk.bytes_read, "bytes_written": self._disk.bytes_written},
            "hit_ratio": ratio(m[S.DEVICE_HITS] + m[S.RAM_HITS]),
            "read_hit_ratio": 1.0 - ratio(m[S.DISK_READS]) if lookups else 0.0,
            "misses": int(m[S.MISSES]),
            "admissions": int(m[S.ADMISSIONS]),
            "evictions": int(m[S.EVICTIONS]),
            "promotions": int(m[S.PROMOTIONS]),
            "demotions": int(m[S.DEMOTIONS]),
            "writebacks": int(m[S.WRITEBACKS]),
            "policy": self.config.policy,
            "window_rows": int(m[S.WINDOW_CAP]),
            "pending_writebacks": len(self._writeback),
            "prefetch": dict(self._prefetch_stats, staged_rows=self._staging.rows),
            # lookups through the tier's index (device="cuda", large ones on "cpu"): ids looked
            # up, those found in neither tier at lookup time (which the host read), and those
            # the planner, behind, never counted in the figures above
            "indexed_lookup": dict(self._indexed_lookup, unplanned=self._log_dropped),
            # host memory that follows the tiers' capacity: the policy's arrays and, where the
            # tier finds rows itself, its index (on CUDA, the index's host mirror)
            "bookkeeping_bytes": self._state.nbytes() + index_bytes,
            "bookkeeping": {"policy_bytes": self._state.nbytes(), "index_bytes": index_bytes},
        }

    def check(self, progress: bool = False) -> CheckReport:
        """Verify every stored record (checksum, decoding, key) and the memory bookkeeping.
        ``progress``: a bar on stderr (when it is a terminal)."""
        with self._exclusive():
            self._check_open()
            report = CheckReport(rows_checked=0)
            scratch = np.empty((CREATE_CHUNK, self.dim), dtype=self.dtype)
            expected = 0   # the next id a store with a record per row must hold
            # the walk runs in a child process: LMDB's cursor aborts (or faults) on a damaged
            # page, which must end the child, not the caller
            walk = RecordWalk(self.path, self._disk.env.info()["map_size"], 0, lock=True)
            with progress_bar(self._disk.stored_rows(), f"check {self.path.name}",
                              enabled=progress) as bar:
                for keys, values in walk.batches():
                    batch = list(zip((keys[k:k + 8] for k in range(0, len(keys), 8)), values))
                    ids, values = self._parse_keys(batch, report)
                    report.rows_checked += len(batch)
                    if len(ids):
                        self._verify_records(ids, values, scratch, report)
                        if self.format.every_row_stored:
                            expected = _note_gaps(ids, expected, report.missing_runs)
                    bar.update(len(batch))
            if not walk.complete:
                report.problems.append(
                    f"LMDB pages are damaged: the walk of the records stopped after "
                    f"{report.rows_checked} of them ({walk.error}); salvage the store")
            elif self.format.every_row_stored and expected < self.num_rows:
                report.missing_runs.append((expected, self.num_rows))
            code = self._state.check_invariants()
            if code:
                report.problems.append(f"memory bookkeeping broken (rule {code})")
            return report

    def _parse_keys(self, batch, report):
        ids, values = [], []
        for key, value in batch:
            row = int.from_bytes(key, "big") if len(key) == 8 else -1
            if not 0 <= row < self.num_rows:
                report.problems.append(f"record with a foreign key {key!r}")
                continue
            ids.append(row)
            values.append(value)
        return np.asarray(ids, dtype=np.int64), values

    def _verify_records(self, ids, values, scratch, report):
        positions = np.arange(len(ids))
        try:
            self._disk.decode_into(ids, values, scratch, positions)
            return
        except CorruptRowError:
            pass
        for k in range(len(ids)):
            try:
                self._disk.decode_into(ids[k:k + 1], values[k:k + 1], scratch, positions[:1])
            except CorruptRowError:
                report.corrupt_ids.append(int(ids[k]))

    # -- life cycle ------------------------------------------------------------------------
    def close(self):
        """Flush (unless read-only) and release the files. Closing twice is harmless.

        A close whose flush fails (a full disk) raises and leaves the store open with
        every row: once the cause is gone, ``flush()`` or ``close()`` persists them.
        """
        self._wait_ahead()
        with self._exclusive():
            if self._closed:
                return
            self._flush()          # raises before anything is released
            prefetcher, self._prefetcher = self._prefetcher, None
            self._closed = True    # a prefetch still queued finds the store closed
        if prefetcher is not None:
            prefetcher.shutdown(wait=True)  # outside the lock: the worker needs it
        with self._exclusive():
            if self._planner is not None:
                self._planner.shutdown()
            self._state.close()
            self._staging.clear()
            self._disk.close()

    def __repr__(self):
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return (f"<tierstore.Store {str(self.path)!r} {self.num_rows}x{self.dim} {self.dtype} "
                f"codec={self.codec.codec_id} device={self.config.device} {state}>")

    def _check_open(self):
        if self._closed:
            raise ClosedStoreError(f"store {self.path} is closed")

    def _check_writable(self):
        if self.readonly:
            raise ReadOnlyError(f"store {self.path} is open read-only; open it with readonly=False to write")


def _memory_for(config: StoreConfig, dim: int, dtype):
    if config.device == "cpu":
        return HostMemory(config.device_rows, config.ram_rows, dim, dtype)
    from .tiers.cuda import CudaMemory

    return CudaMemory(config.device_rows, config.ram_rows, dim, dtype, config.device)
