"""The contract of a memory tier: what a Store needs from the slabs that hold its hot rows.

A memory tier holds ``device_rows + ram_rows`` rows of ``dim`` values of ``dtype``, addressed
by *physical slot*: slots ``[0, device_rows)`` are device slots, the rest RAM slots. The
policy (``tierstore.policy``) decides which row sits in which slot; the tier only stores
and copies rows. ``HostMemory`` (``tiers/memory.py``) keeps both slabs in host memory;
``CudaMemory`` (``tiers/cuda.py``) keeps the device slab on a GPU. Every implementation
runs ``tierstore.testing.tier_tests.MemoryTierTests``.

A lookup calls, in this order and under the store's lock:

1. ``gather(slots, rows)``: the host-visible rows of the batch's unique ids;
2. ``finish_lookup(rows, inverse, shape, as_torch)``: the caller's output, built from the
   rows where they were when the batch began (``rows`` now holds every row the tier did
   not keep to itself);
3. the moves the policy planned: ``read`` (evicted dirty rows, demoted rows),
   ``fill_rows`` (rows about to move that ``gather`` left to the tier), ``write``;
4. ``end_lookup()``: the moves are done.

The output of step 2 reaches the caller through ``deliver``, possibly on another thread
and after step 4: writes of step 3 must not change it. Outside a lookup, ``read`` and
``write`` may be called at any time (updates, flush).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class MemoryTier(ABC):
    """Device and RAM slabs addressed by physical slot (see the module's doc for the order
    of calls during a lookup). Implementations set ``device_rows``, ``dim`` and ``dtype``
    (a numpy dtype)."""

    device_rows: int
    dim: int
    dtype: np.dtype

    @abstractmethod
    def gather(self, slots: np.ndarray, out: np.ndarray) -> None:
        """``out[k]`` = the row in slot ``slots[k]`` for the slots whose rows the host sees;
        rows where the slot is -1 are left alone, and a tier may leave device slots' rows
        alone too (it serves them in ``finish_lookup`` and ``fill_rows``)."""

    @abstractmethod
    def fill_rows(self, rows: np.ndarray, positions: np.ndarray) -> None:
        """Make ``rows[positions]`` hold their rows (those of the slots the last ``gather``
        was given), before the store moves them."""

    @abstractmethod
    def finish_lookup(self, rows: np.ndarray, inverse: np.ndarray, shape: tuple, as_torch: bool):
        """The lookup's output, not yet delivered: the unique rows (``rows`` after ``gather``,
        the tier's own rows for the slots it kept) expanded by ``inverse`` to
        ``shape + (dim,)``; torch for ``as_torch`` (a tier on a GPU always gives torch)."""

    @abstractmethod
    def deliver(self, ready):
        """What ``finish_lookup`` returned, made ready for the caller (on the caller's
        stream, for a GPU tier)."""

    @abstractmethod
    def end_lookup(self) -> None:
        """The lookup's moves are done: writes held back during it may go out now."""

    @abstractmethod
    def read(self, slots: np.ndarray) -> np.ndarray:
        """A new ``(len(slots), dim)`` host array of the rows in ``slots`` (no slot is -1)."""

    @abstractmethod
    def write(self, slots: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows[k]`` in slot ``slots[k]`` (distinct slots)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes the tier holds (device and host)."""
