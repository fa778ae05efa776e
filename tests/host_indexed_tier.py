"""A DeviceLookupTier on the host, so CI runs the store's GPU lookup path without a GPU.

It keeps what ``CudaMemory`` keeps, in host memory: the slabs lookups see (changed only at
``commit``), a shadow of the device slab (changed at ``write``, read by ``read``), and a
``GpuIndex`` on CPU tensors, probed with the torch-ops probe, its changed buckets loaded at
``commit``. What it leaves out (streams, the Triton kernel, pinned memory, events) the CUDA
tests cover on a GPU (tests/test_cuda_path.py, tests/test_cuda.py).
"""
import threading

import numpy as np
import torch

from tierstore.tiers.base import DeviceLookupTier, MissedRows
from tierstore.tiers.cuda import log_sample
from tierstore.tiers.gpu_index import GpuIndex
from tierstore.tiers.memory import HostMemory


class SampledPending:
    """A lookup as CUDA's ``Pending`` is to the store: its output, misses and logged sample."""
    __slots__ = ("out", "shape", "misses", "log", "log_weight")

    def __init__(self, out, shape, misses, log, log_weight):
        self.out, self.shape, self.misses, self.log, self.log_weight = out, shape, misses, log, log_weight

    def log_ids(self):
        return self.log


class LentRows(MissedRows):
    """Missed rows in the double's one reused buffer, as CUDA's are in its pinned staging."""
    __slots__ = ()
    lent = True


class HostIndexedMemory(DeviceLookupTier):
    def __init__(self, device_rows, ram_rows, dim, dtype):
        self.device_rows, self.dim, self.dtype = device_rows, dim, np.dtype(dtype)
        self.slabs = HostMemory(device_rows, ram_rows, dim, dtype)     # what lookups see
        self.shadow = np.zeros((device_rows, dim), dtype=self.dtype)
        self.index = GpuIndex(device_rows + ram_rows, "cpu", torch)
        self._writes = []
        self._lent = np.empty(0, dtype=self.dtype)
        self._turn = 0
        self.launch = threading.Lock()    # a lookup and a commit never interleave (the stream's order)

    # -- lookups -------------------------------------------------------------------------------
    def caller_ids(self, ids):
        return ids.detach().cpu().numpy()

    def issue(self, ids):
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((len(flat), self.dim), dtype=self.dtype)
        with self.launch:
            slots = self.index.probe(torch.from_numpy(flat)).numpy().astype(np.int64)
            self.slabs.gather(slots, out)
        missing = np.flatnonzero(slots < 0)
        start, stride = log_sample(len(flat), self._turn)
        self._turn += 1
        return SampledPending(out, tuple(np.shape(ids)), (missing, flat[missing]),
                              flat[start::stride].copy(), stride)

    def wait_listed(self, pending):
        return len(pending.misses[0]) > 0

    def misses(self, pending):
        return pending.misses

    def missed_rows(self, rows, positions):
        """As CUDA's: lent memory, the same buffer every time (a store that kept the rows
        instead of a copy would see them change under it)."""
        need = rows * self.dim
        if len(self._lent) < need:
            self._lent = np.empty(2 * need, dtype=self.dtype)
        return LentRows(self._lent[:need].reshape(rows, self.dim), np.empty(positions, dtype=np.int64),
                        np.empty(positions, dtype=np.int64))

    def fill(self, pending, missed):
        pending.out[missed.positions] = missed.rows[missed.which]

    def ready(self, pending):
        return pending.out.reshape(pending.shape + (self.dim,))

    def deliver(self, ready):
        return ready

    # -- moves ---------------------------------------------------------------------------------
    def read(self, slots):
        slots = np.asarray(slots, dtype=np.int64)
        out = self.slabs.read(slots)
        on_device = slots < self.device_rows
        out[on_device] = self.shadow[slots[on_device]]
        return out

    def fill_rows(self, rows, positions, start):
        need = positions[start[positions] >= 0]
        if len(need):
            rows[need] = self.read(start[need])

    def write(self, slots, rows):
        slots = np.asarray(slots, dtype=np.int64)
        rows = np.asarray(rows, dtype=self.dtype)
        on_device = slots < self.device_rows
        self.shadow[slots[on_device]] = rows[on_device]
        self._writes.append((slots, rows))

    def retarget(self, removed, removed_slots, put_ids, put_slots):
        self.index.retarget(removed, removed_slots, put_ids, put_slots)

    def swap_index(self, promoted, sw_from, sw_to, has_y):
        self.index.swap(promoted, sw_from, sw_to, has_y)

    def clear(self):
        self.index.clear()

    def commit(self):
        cleared, *changes = self.index.changes()
        with self.launch:
            for slots, rows in self._writes:
                self.slabs.write(slots, rows)
            self.slabs.commit()
            self.index.load(cleared, *(torch.from_numpy(a) for a in changes))
        self._writes = []

    def index_host_bytes(self):
        return self.index.host_nbytes()

    def nbytes(self):
        return self.slabs.nbytes() + self.shadow.nbytes + self.index.nbytes()

    # -- checks (the state machine's) --------------------------------------------------------------
    def device_snapshot(self):
        return self.slabs.device.copy()

    def index_snapshot(self):
        keys, vals = self.index.dev_keys.numpy(), self.index.dev_vals.numpy()
        used = keys != -1
        return dict(zip(keys[used].tolist(), vals[used].tolist()))
