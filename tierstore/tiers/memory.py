"""The device and RAM tiers: fixed-capacity slabs addressed by physical slot.

Physical slots ``[0, device_rows)`` lie in the device slab, the rest in the
RAM slab. On ``device="cpu"`` both slabs are numpy arrays and every move is
a numba copy over byte views; the CUDA slab (tiers/cuda.py) keeps the same
interface with the device slab in HBM.
"""
from __future__ import annotations

import numpy as np

from ..kernels.batch import gather_tiered, scatter_tiered


def _bytes(rows: np.ndarray) -> np.ndarray:
    return rows.view(np.uint8).reshape(len(rows), rows.shape[1] * rows.dtype.itemsize)


class HostMemory:
    """Device and RAM slabs, both in host memory (``device="cpu"``)."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype: np.dtype):
        self.device_rows = device_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.device = np.zeros((device_rows, dim), dtype=self.dtype)
        self.ram = np.zeros((ram_rows, dim), dtype=self.dtype)
        self._device_bytes = _bytes(self.device)
        self._ram_bytes = _bytes(self.ram)

    def gather(self, slots: np.ndarray, out: np.ndarray):
        """``out[k]`` = the row in slot ``slots[k]``; rows where the slot is -1 are left alone."""
        gather_tiered(self._device_bytes, self._ram_bytes, self.device_rows, slots, _bytes(out))

    def read(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        self.gather(slots, out)
        return out

    def write(self, slots: np.ndarray, rows: np.ndarray):
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        scatter_tiered(_bytes(rows), slots, self._device_bytes, self._ram_bytes, self.device_rows)

    def to_output(self, rows: np.ndarray, as_torch: bool):
        if not as_torch:
            return rows
        from ._torch import torch_module

        return torch_module().from_numpy(rows)

    def nbytes(self) -> int:
        return self.device.nbytes + self.ram.nbytes
