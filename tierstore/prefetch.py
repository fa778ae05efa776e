"""Prefetch: rows of upcoming ids read from disk on a background thread.

``Store.prefetch(ids)`` hands the ids to one worker thread, which reads the
rows that are in neither memory tier (LMDB reads and decoding, off the
caller's thread) into a staging area, and marks the resident ones as about to
be used so the policy does not evict them first. A later ``lookup`` takes
staged rows instead of reading the disk; they then enter the tiers by the
usual policy. Staging is bounded; the oldest prefetch is dropped first.

Consistency: an ``update`` drops staged copies of the rows it writes, and a
prefetch that read the disk while an update ran discards those rows, so a
staged row is never older than the last write.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from .kernels.staging import take_staged
from .tiers.memory import words


class PrefetchHandle:
    """A prefetch in flight. ``wait()`` blocks until its rows are staged and returns
    how many rows it read from disk."""

    def __init__(self, future: Future):
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> int:
        return self._future.result(timeout)

    result = wait


NOTHING_TO_WAIT_FOR = Future()   # a lookup's worker part that there is no need to run
NOTHING_TO_WAIT_FOR.set_result(None)


class LookupHandle:
    """A lookup running ahead on the store's worker (:meth:`Store.lookup_async`).

    ``result()`` gives the rows (on a CUDA store, safe to use on the calling
    stream) as soon as they are issued, while the worker may still be planning
    the batch's moves; ``wait()`` blocks until then and returns how many rows
    the lookup read from disk. ``stale`` is true once an update wrote one of
    its rows after it ran.
    """

    def __init__(self, deliver):
        self._deliver = deliver
        self._published = None                  # (rows not yet delivered, disk rows read)
        self._ready = threading.Event()         # published, or the lookup ended without
        self.future: Future | None = None
        self.uniq: np.ndarray | None = None     # its unique ids, once it has run
        self.disk_rows_before = 0
        self.stale = False
        # the lookup's last step (on CUDA: its misses), run by the first thread to ask, the
        # worker or the caller of ``result``: a caller that arrives first saves a thread switch.
        # One lock, held while it runs (an event beside it, and an event set three times a
        # lookup, were a third of the handle's host time)
        self._finish = None
        self._claim = threading.Lock()
        self._error: BaseException | None = None

    def attach(self, future: Future):
        self.future = future
        if future is NOTHING_TO_WAIT_FOR:
            self._ready.set()
        else:
            future.add_done_callback(lambda _: self._ready.set())

    def publish(self, ready, disk_rows: int):
        """Called by the lookup once its rows are issued."""
        self._published = (ready, disk_rows)
        if not self._ready.is_set():
            self._ready.set()

    def finish_by_first(self, finish):
        """``finish()``, the lookup's last step, is run by the first of the worker
        (``run_finish``) and the caller of ``result`` to ask."""
        self._finish = finish

    def run_finish(self):
        """Run the last step here unless another thread has; either way, return once it is
        done (its error raised here too)."""
        with self._claim:                   # a thread running it holds the lock till it is done
            if self._finish is not None:    # cleared once done: a thread that finds it set waits
                try:
                    self._finish()
                except BaseException as e:  # noqa: BLE001  raised to every thread that asks
                    self._error = e
                finally:
                    self._finish = None     # it referred to this handle: no cycle kept
        if self._error is not None:
            raise self._error

    def _outcome(self, timeout):
        if self._finish is not None:
            self.run_finish()
        if not self._ready.wait(timeout):
            raise TimeoutError("the lookup has not finished")
        if self._published is None:        # it failed (or the store closed) before its rows
            if self._error is not None:    # in its last step, maybe run by ``wait_quietly``
                raise self._error
            self.future.result()
            raise RuntimeError("the lookup ended without rows")
        return self._published

    def done(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> int:
        return self._outcome(timeout)[1]

    def result(self, timeout: float | None = None):
        return self._deliver(self._outcome(timeout)[0])

    def wait_quietly(self):
        """Block until the lookup and its planning are over, whatever the outcome (its last
        step run here if no thread has)."""
        self.future.exception()
        if self._finish is not None:
            try:
                self.run_finish()
            except BaseException:  # noqa: BLE001  result() raises it to whoever asks
                pass

    def note_update(self, ids: np.ndarray):
        if not self.stale and self.uniq is not None and np.isin(self.uniq, ids).any():
            self.stale = True


class Staging:
    """Rows read ahead of use, as a queue of chunks: sorted ids, their rows, and a mask of
    the rows still staged. Rows leave by their mask; a chunk is compacted only once fewer
    than half of its rows are left, so taking a few rows of a large chunk (the planner
    admitting 16 of a cold lookup's 61,000) costs no copy of the rest."""

    def __init__(self, limit_rows: int):
        self.limit_rows = limit_rows
        self._chunks: list[list] = []     # [ids, rows, live mask, live count]
        self.rows = 0

    def add(self, ids: np.ndarray, rows: np.ndarray):
        """Stage ``rows`` of unique ``ids``; sorted ids are staged as given (no copy: the
        caller hands the arrays over)."""
        if not len(ids):
            return
        if not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids)
            ids, rows = ids[order], rows[order]
        self._chunks.append([ids, rows, np.ones(len(ids), dtype=bool), len(ids)])
        self.rows += len(ids)
        while self.rows > self.limit_rows and len(self._chunks) > 1:
            self.rows -= self._chunks.pop(0)[3]

    def take(self, ids: np.ndarray, out: np.ndarray | None, positions: np.ndarray | None,
             keep: bool = False) -> np.ndarray:
        """Copy staged rows of ``ids`` into ``out[positions]`` (``out`` None: no copy); returns
        the mask of ids found. Unless ``keep``, the copies found leave the staging: one copy of
        each id (the oldest), as a prefetch stages its own copy of rows staged before it for
        its lookup, which the planning of an earlier lookup must leave there."""
        found = np.zeros(len(ids), dtype=bool)
        if not self._chunks or not len(ids):
            return found
        ids = np.asarray(ids, dtype=np.int64)
        if out is None:
            out, positions = words(self._chunks[0][1])[:0], np.empty(0, dtype=np.int64)
        else:
            out, positions = words(out), np.asarray(positions, dtype=np.int64)
        for chunk in self._chunks:
            chunk[3] -= take_staged(chunk[0], words(chunk[1]), chunk[2], ids, out, positions,
                                    found, keep)
        if not keep:
            self._compact()
        return found

    def drop(self, ids: np.ndarray):
        """Forget staged copies of ``ids``."""
        if not self._chunks or not len(ids):
            return
        for chunk in self._chunks:
            gone = chunk[2] & np.isin(chunk[0], ids)
            chunk[2][gone] = False
            chunk[3] -= int(gone.sum())
        self._compact()

    def _compact(self):
        """Chunks with no row left go; those less than half full keep only their live rows."""
        kept = []
        for chunk in self._chunks:
            ids, rows, live, count = chunk
            if count == 0:
                continue
            if 2 * count < len(ids):
                chunk = [ids[live], rows[live], np.ones(count, dtype=bool), count]
            kept.append(chunk)
        self._chunks = kept
        self.rows = sum(c[3] for c in kept)

    def clear(self):
        self._chunks = []
        self.rows = 0
