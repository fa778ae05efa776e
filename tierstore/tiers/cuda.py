"""The device tier on a CUDA GPU: the hot slab is a torch tensor in GPU memory.

Same interface as :class:`~tierstore.tiers.memory.HostMemory`: the store
gathers rows by physical slot into host arrays and writes them back by slot.
The RAM slab stays a numpy array; ``to_output`` hands the caller a CUDA
tensor.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._torch import torch_module
from .memory import HostMemory


class CudaMemory(HostMemory):
    """Device slab in GPU memory (torch), RAM slab in host memory (numpy)."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype, device: str):
        torch = torch_module()
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}, but torch finds no CUDA device")
        self._torch = torch
        self.device_name = torch.device(device)
        self.device_rows = device_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        torch_dtype = getattr(torch, self.dtype.name)
        self.device = torch.zeros((device_rows, dim), dtype=torch_dtype, device=self.device_name)
        self.ram = np.zeros((ram_rows, dim), dtype=self.dtype)

    def _index(self, slots: np.ndarray):
        return self._torch.as_tensor(slots, dtype=self._torch.int64, device=self.device_name)

    def gather(self, slots: np.ndarray, out: np.ndarray):
        """``out[k]`` = the row in slot ``slots[k]``; rows where the slot is -1 are left alone."""
        on_device = (slots >= 0) & (slots < self.device_rows)
        in_ram = slots >= self.device_rows
        if on_device.any():
            out[on_device] = self.device.index_select(0, self._index(slots[on_device])).cpu().numpy()
        out[in_ram] = self.ram[slots[in_ram] - self.device_rows]

    def write(self, slots: np.ndarray, rows: np.ndarray):
        rows = np.asarray(rows, dtype=self.dtype)
        on_device = slots < self.device_rows
        if on_device.any():
            values = self._torch.from_numpy(np.ascontiguousarray(rows[on_device])).to(self.device_name)
            self.device.index_copy_(0, self._index(slots[on_device]), values)
        self.ram[slots[~on_device] - self.device_rows] = rows[~on_device]

    def to_output(self, rows: np.ndarray, as_torch: bool):
        return self._torch.from_numpy(rows).to(self.device_name)

    def nbytes(self) -> int:
        return self.device.numel() * self.device.element_size() + self.ram.nbytes
