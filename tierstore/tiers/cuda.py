"""The device tier on a CUDA GPU: hot slab in HBM, warm slab in pinned host memory.

Same interface as :class:`~tierstore.tiers.memory.HostMemory`, plus
:meth:`CudaMemory.finish_lookup`, through which the store's ``lookup`` gets its
output without a round trip through host memory:

* ``gather`` (the lookup's gather) copies the rows of RAM slots into the host
  batch and gathers the rows of device slots *on the GPU* into a device buffer;
  the host batch's rows of device slots are left alone (the store only reads
  the host rows of misses and RAM hits, which it admits and promotes);
* the store then fills the misses (prefetch staging, disk) on the host;
* ``finish_lookup`` packs the host rows (misses and RAM hits) and the output's
  index into a reusable pinned staging buffer, copies it with one non-blocking
  copy on a side stream, makes the current stream wait for that copy with a
  CUDA event, and assembles the output with one GPU gather.

Nothing on the lookup path waits for the whole device: the host waits only for
the event of a staging buffer's previous copy before refilling it (a ring of
buffers), and device-to-host copies happen only where rows leave the device
slab (demotions, write-backs, flush), which ``read`` serves.

Ordering: every slab operation is issued on the stream current at the call, so
a gather issued before a write sees the row as it was. Use one stream (or
synchronise your streams) for all calls on one store.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.batch import gather_tiered
from ._torch import torch_module
from .memory import HostMemory, words

ALIGN = 256          # bytes: each packed array starts at a multiple (any dtype's view is legal)
STAGING_SLOTS = 4    # pinned staging buffers in the ring


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Slot:
    __slots__ = ("capacity", "copied", "consumed", "dev", "host", "host_np")

    def __init__(self, torch):
        self.capacity = 0
        self.host = self.host_np = self.dev = None
        self.copied = torch.cuda.Event()     # the host-to-device copy out of ``host`` is done
        self.consumed = torch.cuda.Event()   # the current stream is done reading ``dev``


class Uploader:
    """Host arrays to the GPU through a ring of reusable pinned buffers, on a side stream.

    ``send(specs)``: ``specs`` is a list of ``(numpy dtype, shape, fill)``; each
    ``fill(view)`` writes its array into a numpy view of pinned memory. All of
    them travel in one non-blocking copy on the side stream; the current stream
    waits for it through an event. Returns ``(slot, tensors)``; call
    ``release(slot)`` once the work that reads the tensors has been issued.
    """

    def __init__(self, torch, device, slots: int = STAGING_SLOTS):
        self.torch = torch
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.ring = [_Slot(torch) for _ in range(slots)]
        self.next = 0
        self.bytes_sent = 0
        self.copies = 0

    def _grow(self, slot: _Slot, total: int):
        torch = self.torch
        capacity = max(_align(total), 2 * slot.capacity, 1 << 20)
        slot.host = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
        slot.host_np = slot.host.numpy()
        slot.dev = torch.empty(capacity, dtype=torch.uint8, device=self.device)
        slot.capacity = capacity

    def send(self, specs):
        torch = self.torch
        sizes = [_align(int(np.prod(shape)) * np.dtype(dt).itemsize) for dt, shape, _ in specs]
        total = sum(sizes)
        if total == 0:
            return None, [torch.empty(shape, dtype=_torch_dtype(torch, dt), device=self.device)
                          for dt, shape, _ in specs]
        slot = self.ring[self.next]
        self.next = (self.next + 1) % len(self.ring)
        slot.copied.synchronize()            # this buffer's previous copy has left it
        if slot.capacity < total:
            self._grow(slot, total)
        offset = 0
        views = []
        for (dt, shape, fill), size in zip(specs, sizes):
            nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
            fill(slot.host_np[offset:offset + nbytes].view(dt).reshape(shape))
            views.append((offset, nbytes, dt, shape))
            offset += size
        current = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(slot.consumed)   # the last reader of ``dev`` is done
            slot.dev[:total].copy_(slot.host[:total], non_blocking=True)
            slot.copied.record(self.stream)
        current.wait_event(slot.copied)
        self.bytes_sent += total
        self.copies += 1
        tensors = [slot.dev[o:o + n].view(_torch_dtype(torch, dt)).view(shape)
                   for o, n, dt, shape in views]
        return slot, tensors

    def release(self, slot):
        if slot is not None:
            slot.consumed.record(self.torch.cuda.current_stream(self.device))


def _torch_dtype(torch, dtype):
    return getattr(torch, np.dtype(dtype).name)


def _take_into(src, index):
    """A ``fill`` that writes ``src[index]`` (along axis 0) into the view."""
    def fill(view):
        np.take(src, index, axis=0, out=view, mode="clip")   # 'raise' would buffer a copy
    return fill


def _copy_into(src):
    """A ``fill`` that writes ``src`` into the view."""
    def fill(view):
        view[...] = src
    return fill


class CudaMemory(HostMemory):
    """Device slab in GPU memory, RAM slab in pinned host memory (a torch tensor with a numpy view)."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype, device: str):
        torch = torch_module()
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}, but torch finds no CUDA device")
        self._torch = torch
        self.device_name = torch.device(device)
        if self.device_name.index is None:
            self.device_name = torch.device("cuda", torch.cuda.current_device())
        self.device_rows = device_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self._tdtype = _torch_dtype(torch, self.dtype)
        self.device = torch.zeros((device_rows, dim), dtype=self._tdtype, device=self.device_name)
        self.ram_tensor = torch.zeros((ram_rows, dim), dtype=self._tdtype, pin_memory=ram_rows > 0)
        self.ram = self.ram_tensor.numpy()
        self._no_device = np.zeros((0, dim), dtype=self.dtype)
        self.uploader = Uploader(torch, self.device_name)
        self._pending = None      # what gather left for finish_lookup

    # -- the lookup path ---------------------------------------------------------------------
    def gather(self, slots: np.ndarray, out: np.ndarray):
        """The lookup's gather: rows of RAM slots into ``out`` (host); rows of device slots
        gathered on the GPU into a buffer that :meth:`finish_lookup` completes. Rows of
        ``out`` whose slot is -1 or a device slot are left alone."""
        torch = self._torch
        slots = np.asarray(slots, dtype=np.int64)
        on_device = (slots >= 0) & (slots < self.device_rows)
        dev_pos = np.flatnonzero(on_device)
        host_slots = np.where(on_device, -1, slots)
        if (host_slots >= 0).any():
            gather_tiered(words(self._no_device), words(self.ram), self.device_rows, host_slots,
                          words(out))
        uniq_rows = torch.empty((len(slots), self.dim), dtype=self._tdtype, device=self.device_name)
        if len(dev_pos):
            slot, (index,) = self.uploader.send(
                [(np.int64, (len(dev_pos),), _take_into(slots, dev_pos))])
            torch.index_select(self.device, 0, index, out=uniq_rows[:len(dev_pos)])
            self.uploader.release(slot)
        self._pending = (uniq_rows, dev_pos, on_device)

    def fill_rows(self, rows: np.ndarray, positions: np.ndarray):
        """Fill the host rows at ``positions`` that :meth:`gather` left alone (device hits),
        for the store to move them. Only ids whose entry another id of the same batch
        took need this (a batch larger than memory); it copies device to host."""
        uniq_rows, dev_pos, on_device = self._pending
        positions = np.asarray(positions, dtype=np.int64)
        need = positions[on_device[positions]]
        if not len(need):
            return
        need = np.unique(need)
        at = np.searchsorted(dev_pos, need)
        slot, (index,) = self.uploader.send([(np.int64, (len(at),), _copy_into(at))])
        values = uniq_rows.index_select(0, index)
        self.uploader.release(slot)
        rows[need] = values.cpu().numpy()

    def finish_lookup(self, rows: np.ndarray, inverse: np.ndarray, shape: tuple,
                      as_torch: bool = True):
        """The output of ``lookup``: a CUDA tensor of shape ``shape + (dim,)``. ``rows`` are the
        unique ids' rows as the store filled them on the host (misses and RAM hits),
        ``inverse`` maps each id to its unique row."""
        uniq_rows, dev_pos, on_device = self._pending
        self._pending = None
        n_dev = len(dev_pos)
        host_pos = np.flatnonzero(~on_device)
        where = np.empty(len(rows), dtype=np.int64)   # unique row -> its row in uniq_rows
        where[dev_pos] = np.arange(n_dev)
        where[host_pos] = np.arange(n_dev, len(rows))
        inverse = np.asarray(inverse, dtype=np.int64).reshape(-1)
        slot, (index, host_rows) = self.uploader.send([
            (np.int64, (len(inverse),), _take_into(where, inverse)),
            (self.dtype, (len(host_pos), self.dim), _take_into(rows, host_pos)),
        ])
        if len(host_pos):
            uniq_rows[n_dev:].copy_(host_rows)
        out = uniq_rows.index_select(0, index)
        self.uploader.release(slot)
        return out.view(tuple(shape) + (self.dim,))

    # -- moving rows -------------------------------------------------------------------------
    def read(self, slots: np.ndarray) -> np.ndarray:
        """Rows of ``slots`` on the host (device rows come back with a device-to-host copy,
        which waits for the current stream)."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        on_device = (slots >= 0) & (slots < self.device_rows)
        dev_pos = np.flatnonzero(on_device)
        if len(dev_pos):
            slot, (index,) = self.uploader.send(
                [(np.int64, (len(dev_pos),), _take_into(slots, dev_pos))])
            values = self.device.index_select(0, index)
            self.uploader.release(slot)
            out[dev_pos] = values.cpu().numpy()
        host_slots = np.where(on_device, -1, slots)
        if (host_slots >= 0).any():
            gather_tiered(words(self._no_device), words(self.ram), self.device_rows, host_slots,
                          words(out))
        return out

    def write(self, slots: np.ndarray, rows: np.ndarray):
        rows = np.asarray(rows, dtype=self.dtype)
        slots = np.asarray(slots, dtype=np.int64)
        on_device = slots < self.device_rows
        dev_pos = np.flatnonzero(on_device)
        if len(dev_pos):
            slot, (index, values) = self.uploader.send([
                (np.int64, (len(dev_pos),), _take_into(slots, dev_pos)),
                (self.dtype, (len(dev_pos), self.dim), _take_into(rows, dev_pos)),
            ])
            self.device.index_copy_(0, index, values)
            self.uploader.release(slot)
        self.ram[slots[~on_device] - self.device_rows] = rows[~on_device]

    def nbytes(self) -> int:
        return self.device.numel() * self.device.element_size() + self.ram.nbytes
