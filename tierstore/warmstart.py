"""Warm start: seed the memory tiers with the rows a trace says are hottest.

A store opened for serving starts with empty memory tiers and spends its first batches
reading the disk. ``tierstore profile TRACE --write-counts hot.npz`` writes the access counts
of the trace's most used ids (at most the memory tiers' rows of them, never a
``num_rows``-sized array); ``tierstore.open(path, config, warm="hot.npz")`` or
``store.warm((ids, counts))`` then loads the hottest rows into memory in the background,
hottest first, so the hottest land on the device tier.

Rows enter through the lookup's own path (probe, plan, move), so the policy's bookkeeping
knows them, and the admission sketch is seeded with their counts (scaled to the sketch's
sample, so the warm rows outrank newcomers without forcing a halving). Warming counts no
lookups: ``stats()`` hit ratios stay the user's. The warm runs chunk by chunk on the store's
worker thread, reading each chunk's rows outside the store's lock; a chunk drops the rows an
update wrote while it read them and the rows that entered memory meanwhile, so a warmed row
is never older than the last write. It writes nothing to disk, so a read-only store warms too.
When every chunk is in, the warm rows are reordered coldest to hottest as if just used, so
recency policies (``lru``) keep the hottest longest.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .kernels.batch import partition_of
from .kernels.sketch import SAMPLE_SIZE
from .policy import state as S
from .policy.belady import dense_ids
from .progress import progress as progress_bar
from .validation import as_id_array

COUNTS_FORMAT = "tierstore.hot_counts/1"
WARM_CHUNK = 8192           # rows read and admitted at a time: the lock is held for one chunk
ADMIT_RETRY_SECONDS = 0.05  # an idle store: how often the worker tries the lock for a read chunk
MAX_AMOUNT = 255            # the sketch's counters saturate here
# lookup counters warming must leave alone (stats() and the adaptive window's sample)
UNCOUNTED = (S.DEVICE_HITS, S.RAM_HITS, S.MISSES, S.DISK_READS, S.SAMPLE_HITS, S.SAMPLE_MISSES)


# -- counts: from a trace, to and from a file --------------------------------------------------
def hot_counts(trace, rows: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(ids, counts, accesses)``: the ``rows`` most used ids of ``trace`` by descending access
    count (ties: first seen first), their counts, and the trace's length. Memory follows the
    trace's distinct ids, never the id space."""
    trace = np.ascontiguousarray(np.asarray(trace).reshape(-1), dtype=np.int64)
    if rows < 1:
        raise ConfigError(f"the counts file holds at least one id, got rows={rows}")
    if not len(trace):
        raise ConfigError("the trace is empty: there is nothing to count")
    dense = np.empty(len(trace), dtype=np.int64)
    unique = int(dense_ids(trace, dense))
    counts = np.bincount(dense, minlength=unique)
    first_id = np.empty(unique, dtype=np.int64)
    first_id[dense] = trace                 # every access of a dense id names the same id
    k = min(int(rows), unique)
    # the k largest counts, ties broken toward the first seen (the smaller dense id)
    kth = np.partition(counts, unique - k)[unique - k]
    above = np.flatnonzero(counts > kth)
    top = np.concatenate([above, np.flatnonzero(counts == kth)[:k - len(above)]])
    top = top[np.lexsort((top, -counts[top]))]
    return first_id[top], counts[top].astype(np.int64), len(trace)


def save_counts(path, ids: np.ndarray, counts: np.ndarray, accesses: int) -> Path:
    """Write a counts file (``.npz``: ``ids``, ``counts``, ``accesses``); returns its path."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")     # what np.savez would do, said up front
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such folder for the counts file")
    np.savez(path, format=np.array(COUNTS_FORMAT), ids=np.asarray(ids, dtype=np.int64),
             counts=np.asarray(counts, dtype=np.int64), accesses=np.int64(accesses))
    return path


def load_counts(path) -> tuple[np.ndarray, np.ndarray, int]:
    """``(ids, counts, accesses)`` of a counts file written by :func:`save_counts`."""
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a tierstore counts file ({exc})") from None
    with z:
        if not hasattr(z, "files") or "format" not in z.files or str(z["format"]) != COUNTS_FORMAT:
            raise ConfigError(f"{path}: not a tierstore counts file "
                              "(write one with tierstore profile --write-counts)")
        return z["ids"], z["counts"], int(z["accesses"])


# -- the warm itself ----------------------------------------------------------------------------
class WarmHandle:
    """A warm start in progress. ``total``: rows it will try to load (the hottest, at most the
    memory tiers' rows); ``loaded``: rows it put into memory so far (a row already in memory,
    or written while its chunk was read, is left to the store and not counted); ``seconds``:
    how long it took, once done. ``wait()``
    blocks until done and returns ``loaded``, raising what stopped the warm, if anything; a
    store closed mid-warm simply ends it."""

    def __init__(self, ids: np.ndarray, amounts: np.ndarray, bar):
        self._ids, self._amounts, self._bar = ids, amounts, bar
        self.total = len(ids)
        self.loaded = 0
        self.seconds: float | None = None
        self._started = time.perf_counter()
        self._next = 0                      # the first id not yet begun
        self._pending = None                # a chunk read, waiting to enter memory
        self._error: BaseException | None = None
        self._done = threading.Event()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise TimeoutError("the warm start has not finished")
        if self._error is not None:
            raise self._error
        return self.loaded

    def _finish(self, error: BaseException | None = None):
        self._error = error
        self.seconds = time.perf_counter() - self._started
        self._bar.close()
        self._done.set()

    def __repr__(self):
        state = "done" if self.done() else "warming"
        return f"<tierstore.WarmHandle {self.loaded}/{self.total} rows {state}>"


def start_warm(store, hot, progress: bool = True) -> WarmHandle:
    """Check ``hot`` (a counts file's path, or an ``(ids, counts)`` pair) against ``store``
    and start loading its hottest rows; bad input raises here and changes nothing."""
    ids, counts, accesses = _hot_pairs(hot, store.num_rows)
    with store._exclusive():
        store._check_open()
        ids, amounts = _bounded(ids, counts, accesses, store._state)
        handle = WarmHandle(ids, amounts, progress_bar(len(ids), f"warm {Path(store.path).name}",
                                                         enabled=progress))
        store._warms.append(handle)
        _begin_chunk(store, handle)
    return handle


def admit_ready(store):
    """Run at the start of every store call, under the store's lock: warm chunks read since
    enter memory, and their next chunks begin. Under a steady stream of calls, which leaves the
    lock free only for instants, a warm advances here, a chunk a call."""
    for handle in list(store._warms):
        _admit_pending(store, handle)


def _hot_pairs(hot, num_rows: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``hot`` as unique ids in range, their non-negative counts (duplicates summed), and the
    accesses counted (a pair's: the counts' sum)."""
    where, accesses = "", None
    if isinstance(hot, (str, os.PathLike)):
        where = f"{hot}: "
        ids, counts, accesses = load_counts(hot)
    elif isinstance(hot, tuple) and len(hot) == 2:
        ids, counts = hot
    else:
        raise ConfigError("warm takes a counts file's path or an (ids, counts) pair, "
                          f"got {type(hot).__name__}")
    try:
        ids = as_id_array(ids, num_rows)
    except (IndexError, TypeError) as exc:
        raise type(exc)(f"{where}{exc}") from None
    counts = np.asarray(counts)
    if counts.shape != ids.shape or ids.ndim != 1:
        raise ConfigError(f"{where}ids and counts must be 1-D of one length, got shapes "
                          f"{ids.shape} and {counts.shape}")
    if counts.dtype.kind not in "iuf" or (len(counts) and (
            not np.isfinite(counts).all() or counts.min() < 0)):
        raise ConfigError(f"{where}counts must be finite non-negative numbers")
    uniq, inverse = np.unique(ids, return_inverse=True)
    if len(uniq) < len(ids):
        counts = np.bincount(inverse, weights=counts, minlength=len(uniq))
        ids = uniq
    counts = counts.astype(np.float64)
    return ids, counts, float(counts.sum()) if accesses is None else float(accesses)


def _bounded(ids, counts, accesses, state):
    """The hottest ids that memory holds (each partition: as many as it has slots), hottest
    first, and the counts to seed the sketch with: each id's expected accesses in one sketch
    sample (``count * sample / accesses``), at least 1 and at most the counters' ceiling, and
    together at most half a sample, so warming forces no halving."""
    order = np.lexsort((ids, -counts))
    ids, counts = ids[order], counts[order]
    if state.parts == 1:
        keep = np.arange(len(ids)) < state.device_rows + state.ram_rows
    else:
        part = partition_of(ids, state.parts)
        by_part = np.argsort(part, kind="stable")
        first = np.searchsorted(part[by_part], np.arange(state.parts))
        rank = np.empty(len(ids), dtype=np.int64)
        rank[by_part] = np.arange(len(ids)) - first[part[by_part]]
        keep = rank < (state.dev_share + state.ram_share)[part]
    ids, counts = ids[keep], counts[keep]
    sample = sum(int(s.sketch_state[SAMPLE_SIZE]) for s in state.states)
    top = float(counts.sum())
    scale = min(sample / max(accesses, 1.0), sample / 2 / top if top > 0 else 1.0)
    amounts = np.clip(np.rint(counts * scale), 1, MAX_AMOUNT).astype(np.int64)
    return ids, amounts


class _Chunk:
    """One chunk of a warm: its ids not in memory when it began, and their rows once read."""

    def __init__(self, ids, amounts, gen: int, span: int):
        self.ids, self.amounts, self.gen, self.span = ids, amounts, gen, span
        self.rows = None
        self.error: BaseException | None = None
        self.consumed = threading.Event()


def _begin_chunk(store, handle: WarmHandle):
    """Under the lock: the next chunk's ids go to the worker to be read, or the warm ends."""
    if store._closed or handle._next >= handle.total:
        _end(store, handle)
        return
    k = handle._next
    handle._next = min(k + WARM_CHUNK, handle.total)
    ids, amounts = handle._ids[k:handle._next], handle._amounts[k:handle._next]
    _, slots = store._state.probe(ids)
    chunk = _Chunk(ids[slots < 0], amounts[slots < 0], store._write_gen, handle._next - k)
    store._inflight += 1            # while it reads, updates note the ids they write
    store._worker().submit(_read_chunk, store, handle, chunk)


def _read_chunk(store, handle: WarmHandle, chunk: _Chunk):
    """On the worker, without the lock: read the chunk's rows, then see them admitted, by
    the next store call or, on an idle store, by this thread once the lock is free."""
    try:
        chunk.rows = np.empty((len(chunk.ids), store.dim), dtype=store.dtype)
        store._disk.read_rows(chunk.ids, chunk.rows, np.arange(len(chunk.ids)))
    except BaseException as exc:  # noqa: BLE001  (wait() raises it)
        chunk.error = exc
    handle._pending = chunk
    while not chunk.consumed.is_set():
        if store._lock.acquire(blocking=False):
            try:
                with store._exclusive():        # (whose start may have admitted it)
                    _admit_pending(store, handle)
            finally:
                store._lock.release()
        else:
            chunk.consumed.wait(ADMIT_RETRY_SECONDS)


def _admit_pending(store, handle: WarmHandle):
    """Under the lock: the chunk read last (if any) enters memory, less the rows that entered
    memory or were written while it was read; then the next chunk begins."""
    chunk, handle._pending = handle._pending, None
    if chunk is None:
        return
    error = chunk.error
    try:
        if error is None and not store._closed:
            _, slots = store._state.probe(chunk.ids)
            keep = (slots < 0) & ~np.isin(chunk.ids, store._written_since(chunk.gen))
            ids, amounts, rows = chunk.ids[keep], chunk.amounts[keep], chunk.rows[keep]
            store._writeback.overlay(ids, rows)      # evicted dirty rows are newer than disk
            store._staging.drop(ids)
            _admit(store, ids, amounts, rows)
            handle.loaded += len(ids)
            handle._bar.update(int(chunk.span))
    except BaseException as exc:  # noqa: BLE001  (wait() raises it, not the call it ran in)
        error = exc
    finally:
        store._inflight -= 1
        if not store._inflight:
            store._recent_writes = []
        chunk.consumed.set()
    if error is not None:
        _end(store, handle, error)
    else:
        _begin_chunk(store, handle)


def _end(store, handle: WarmHandle, error: BaseException | None = None):
    """The warm is over. A complete one reorders its rows still in memory as if used coldest
    first and hottest last."""
    store._warms.remove(handle)
    if error is None and not store._closed:
        store._state.touch(handle._ids[::-1].copy())
    handle._finish(error)


def _admit(store, ids, amounts, rows):
    """``ids`` (none in memory) enter memory by the lookup's planning and moves, counted as
    ``amounts`` accesses by the policy and the sketch but as no lookups."""
    if not len(ids):
        return
    states = store._state.states
    kept = [s.meta[list(UNCOUNTED)].copy() for s in states]
    try:
        entries, start = store._state.probe(ids)
        if not store._on_gpu:                   # a GPU tier plans without a lookup open
            store._memory.gather(start, rows)   # every slot is -1: only opens the batch
        store._plan_and_end(ids, amounts, entries, start, rows)
    finally:
        for s, values in zip(states, kept):
            s.meta[list(UNCOUNTED)] = values
