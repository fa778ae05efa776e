"""The contract of a memory tier: what a Store needs from the slabs that hold its hot rows.

A memory tier holds ``device_rows + ram_rows`` rows of ``dim`` values of ``dtype``, addressed
by *physical slot*: slots ``[0, device_rows)`` are device slots, the rest RAM slots. The
policy (``tierstore.policy``) decides which row sits in which slot; the tier stores and
copies rows (:class:`MemoryTier`), and a tier that keeps its own index of where rows are (on
a GPU) follows the policy's moves (``retarget``, ``swap_index``, ``clear``), which reach it
at ``commit``. A tier serves lookups one of two ways:

:class:`HostLookupTier` (``HostMemory``, ``tiers/memory.py``): the store probes the policy's
slot map and calls, in this order and under the store's lock,

1. ``gather(slots, rows)``: the host-visible rows of the batch's unique ids;
2. ``finish_lookup(rows, inverse, shape, as_torch)``: the caller's output, built from the
   rows where they were when the batch began;
3. the moves the policy planned: ``read`` (evicted dirty rows, demoted rows),
   ``fill_rows`` (rows about to move that ``gather`` left to the tier), ``write``;
4. ``end_lookup()``: the moves are done.

:class:`DeviceLookupTier` (``CudaMemory``, ``tiers/cuda.py``): the tier finds rows itself,
without the store's lock: ``issue(ids)`` starts the lookup, ``misses`` lists the ids found
in neither slab, ``missed_rows`` gives arrays for the rows the store reads for them and
``fill`` puts those in place, ``ready`` closes it. The policy's moves come later, in rounds of the store's planner: ``read``,
``fill_rows``, ``write``, ``retarget``, ``swap_index``, then ``commit``, which makes them
visible to the lookups issued after it and to none issued before.

Either way the output reaches the caller through ``deliver``, possibly on another thread
and after the moves: moves must not change it. Outside a lookup, ``read``, ``write`` and
``commit`` may be called at any time (updates, flush). Every implementation runs the
suites of ``tierstore.testing.tier_tests``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class MemoryTier(ABC):
    """Device and RAM slabs addressed by physical slot (see the module's doc). Implementations
    set ``device_rows``, ``dim`` and ``dtype`` (a numpy dtype)."""

    device_rows: int
    dim: int
    dtype: np.dtype

    @abstractmethod
    def fill_rows(self, rows: np.ndarray, positions: np.ndarray, start: np.ndarray) -> None:
        """Make ``rows[positions]`` hold the rows of their slots ``start[positions]`` (where
        not -1) before the store moves them, if the lookup left them to the tier."""

    @abstractmethod
    def deliver(self, ready):
        """A lookup's output made ready for the caller (on the caller's stream, for a GPU
        tier)."""

    @abstractmethod
    def read(self, slots: np.ndarray) -> np.ndarray:
        """A new ``(len(slots), dim)`` host array of the rows in ``slots`` (no slot is -1), as
        of the last ``commit``."""

    @abstractmethod
    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows[k]`` in slot ``slots[k]``; lookups see it from the next ``commit`` on
        (at once, for a tier whose ``commit`` has nothing to send)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes the tier holds (device and host)."""

    @abstractmethod
    def retarget(self, removed: np.ndarray, removed_slots: np.ndarray, put_ids: np.ndarray,
                 put_slots: np.ndarray) -> None:
        """The policy's moves, for a tier with an index of its own: ``removed`` ids leave
        ``removed_slots``, then ``put_ids[k]`` (admitted: not resident; a resident row moves
        by ``swap_index``) sits in ``put_slots[k]``. A tier that is always told where rows
        are (by the store's slot map) keeps nothing (a no-op)."""

    @abstractmethod
    def swap_index(self, promoted: np.ndarray, sw_from: np.ndarray, sw_to: np.ndarray,
                   has_y: np.ndarray) -> None:
        """Promotions, for a tier with an index of its own: ``promoted[k]`` moves from
        ``sw_from[k]`` to device slot ``sw_to[k]``, whose row (where ``has_y[k]``) moves to
        ``sw_from[k]`` (a no-op for a tier without an index)."""

    @abstractmethod
    def clear(self) -> None:
        """Nothing is resident any more (a refresh), for a tier with an index of its own (a
        no-op for others)."""

    @abstractmethod
    def commit(self) -> None:
        """Send the writes and index changes made since the last commit, as one step between
        lookups (a no-op for a tier that writes at once)."""


class HostLookupTier(MemoryTier):
    """A tier whose lookups the store drives with the policy's slots (steps 1-4)."""

    @abstractmethod
    def gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        """``out[k]`` = the row in slot ``slots[k]`` for the slots whose rows the host sees;
        rows where the slot is -1 are left alone, and a tier may leave device slots' rows
        alone too (it serves them in ``finish_lookup`` and ``fill_rows``)."""

    @abstractmethod
    def finish_lookup(self, rows: np.ndarray, inverse: np.ndarray, shape: tuple, as_torch: bool):
        """The lookup's output, not yet delivered: the unique rows expanded by ``inverse`` to
        ``shape + (dim,)``; torch for ``as_torch``."""

    @abstractmethod
    def end_lookup(self) -> None:
        """The lookup's moves are done: writes held back during it may go out now."""


class DeviceLookupTier(MemoryTier):
    """A tier that finds rows itself (an index of its slabs on its device), so a lookup of
    resident rows needs neither the store's lock nor host work per id."""

    @abstractmethod
    def index_host_bytes(self) -> int:
        """Host bytes of the tier's index (its buckets, or their host mirror, and whatever
        else it keeps per slot): bookkeeping that follows the capacity, as the policy's does."""

    @abstractmethod
    def caller_ids(self, ids):
        """Ids on the tier's device, with the caller's stream (where the lookup runs, after
        them), for ``issue`` (numpy ids go to ``issue`` as they are)."""

    @abstractmethod
    def issue(self, ids):
        """Start the lookup of ``ids`` (int64 numpy, or what ``caller_ids`` gave), reading
        the slabs as the last ``commit`` left them; a handle for the calls below."""

    def wait_listed(self, pending) -> bool:
        """Block until ``misses(pending)`` would not wait (a host tier's list is there at once);
        False only if the lookup is known to have missed nothing (its last step then has no
        host work that another thread could do ahead of the caller)."""
        return True

    @abstractmethod
    def misses(self, pending) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, ids)`` (flat positions in the lookup) of the ids in neither slab."""

    def missed_rows(self, rows: int, positions: int) -> "MissedRows":
        """Arrays for ``rows`` missed rows and the ``positions`` of the lookup's output they
        go to, for ``fill``: the store reads the rows straight into them (a tier may give
        memory it uploads without another copy, as CUDA's pinned staging)."""
        return MissedRows(np.empty((rows, self.dim), dtype=self.dtype),
                          np.empty(positions, dtype=np.int64), np.empty(positions, dtype=np.int64))

    @abstractmethod
    def fill(self, pending, missed: "MissedRows") -> None:
        """``missed.rows[missed.which[k]]`` into the lookup's output at flat position
        ``missed.positions[k]``, for every ``k``."""

    @abstractmethod
    def ready(self, pending):
        """The lookup's output, for ``deliver``."""


class MissedRows:
    """A lookup's missed rows on the host (one per unique id, in ``rows``) and, for each of
    its output's positions that missed, ``positions[k]`` and ``which[k]``: the row of
    ``rows`` that goes there. Made by :meth:`DeviceLookupTier.missed_rows`; ``lent``: the
    arrays are the tier's memory, reused after ``fill`` (the store keeps copies, never them)."""
    __slots__ = ("rows", "positions", "which")
    lent = False

    def __init__(self, rows: np.ndarray, positions: np.ndarray, which: np.ndarray):
        self.rows, self.positions, self.which = rows, positions, which
