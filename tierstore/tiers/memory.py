"""The device and RAM tiers: fixed-capacity slabs addressed by physical slot.

Physical slots ``[0, device_rows)`` lie in the device slab, the rest in the
RAM slab. On ``device="cpu"`` both slabs are numpy arrays and every move is
numpy fancy indexing (memcpy-speed row copies).
"""
from __future__ import annotations

import numpy as np


class HostMemory:
    """Device and RAM slabs, both in host memory (``device="cpu"``)."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype: np.dtype):
        self.device_rows = device_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.device = np.zeros((device_rows, dim), dtype=self.dtype)
        self.ram = np.zeros((ram_rows, dim), dtype=self.dtype)

    def gather(self, slots: np.ndarray, out: np.ndarray):
        """``out[k]`` = the row in slot ``slots[k]``; rows where the slot is -1 are left alone."""
        on_device = (slots >= 0) & (slots < self.device_rows)
        in_ram = slots >= self.device_rows
        out[on_device] = self.device[slots[on_device]]
        out[in_ram] = self.ram[slots[in_ram] - self.device_rows]

    def read(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        self.gather(slots, out)
        return out

    def write(self, slots: np.ndarray, rows: np.ndarray):
        rows = np.asarray(rows, dtype=self.dtype)
        on_device = slots < self.device_rows
        self.device[slots[on_device]] = rows[on_device]
        self.ram[slots[~on_device] - self.device_rows] = rows[~on_device]

    def to_output(self, rows: np.ndarray, as_torch: bool):
        if not as_torch:
            return rows
        from ._torch import torch_module

        return torch_module().from_numpy(rows)

    def nbytes(self) -> int:
        return self.device.nbytes + self.ram.nbytes
