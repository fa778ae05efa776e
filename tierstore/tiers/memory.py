"""The device and RAM tiers: fixed-capacity slabs addressed by physical slot.

Physical slots ``[0, device_rows)`` lie in the device slab, the rest in the
RAM slab. On ``device="cpu"`` both slabs are numpy arrays; gathers are a numba
copy over word views, writes numpy fancy indexing.
"""
from __future__ import annotations

import numpy as np

from ..kernels.batch import gather_tiered
from .base import HostLookupTier


def words(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a 2-D array of the widest unsigned words that tile a row."""
    row_bytes = rows.shape[1] * rows.dtype.itemsize
    for word in (np.uint64, np.uint32, np.uint16, np.uint8):
        if row_bytes % np.dtype(word).itemsize == 0:
            return rows.view(word).reshape(len(rows), row_bytes // np.dtype(word).itemsize)


class HostMemory(HostLookupTier):
    """Device and RAM slabs, both in host memory (``device="cpu"``)."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype: np.dtype):
        self.device_rows = device_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.device = np.zeros((device_rows, dim), dtype=self.dtype)
        self.ram = np.zeros((ram_rows, dim), dtype=self.dtype)

    def gather(self, slots: np.ndarray, out: np.ndarray):
        """``out[k]`` = the row in slot ``slots[k]``; rows where the slot is -1 are left alone."""
        gather_tiered(words(self.device), words(self.ram), self.device_rows, slots, words(out))

    def read(self, slots: np.ndarray) -> np.ndarray:
        """Rows of ``slots``, copied."""
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        self.gather(slots, out)
        return out

    def write(self, slots: np.ndarray, rows: np.ndarray):
        """Rows into slots."""
        rows = np.asarray(rows, dtype=self.dtype)
        on_device = slots < self.device_rows
        self.device[slots[on_device]] = rows[on_device]
        self.ram[slots[~on_device] - self.device_rows] = rows[~on_device]

    def fill_rows(self, rows: np.ndarray, positions: np.ndarray, start: np.ndarray):
        """Make ``rows[positions]`` hold their rows before the store moves them: the host
        tiers gathered every row already."""

    def retarget(self, removed, removed_slots, put_ids, put_slots):
        """The store's slot map is the only index of the host tiers: nothing to follow."""

    def swap_index(self, promoted, sw_from, sw_to, has_y):
        """No index to follow (see :meth:`retarget`)."""

    def clear(self):
        """No index to empty (see :meth:`retarget`)."""

    def commit(self):
        """Writes are done at once on the host: nothing to send."""


    def finish_lookup(self, rows: np.ndarray, inverse: np.ndarray, shape: tuple, as_torch: bool):
        """The unique rows expanded to the caller's ids: numpy, or torch for torch ids."""
        out = np.take(rows, inverse, axis=0).reshape(shape + (self.dim,))
        if not as_torch:
            return out
        from ._torch import torch_module

        return torch_module().from_numpy(out)

    def end_lookup(self):
        """The lookup's moves are done: the host tiers hold nothing back."""

    def deliver(self, out):
        """The output of :meth:`finish_lookup`, ready for the caller."""
        return out

    def nbytes(self) -> int:
        """Bytes of both slabs."""
        return self.device.nbytes + self.ram.nbytes
