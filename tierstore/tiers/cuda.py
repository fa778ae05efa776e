"""The device tier on a CUDA GPU: hot slab in HBM, warm slab in pinned host memory.

Same interface as :class:`~tierstore.tiers.memory.HostMemory`. The GPU is
never read back: a host *shadow* of the device slab holds what every device
slot holds, so demotions, write-backs and flushes read the shadow, and
nothing is copied from the device to the host. One lookup costs the GPU two
host-to-device copies and three kernels, all on the tier's own stream:

* ``gather`` (the lookup's gather) copies the rows of RAM slots into the
  host batch and notes which of the batch's ids sit in device slots;
* the store fills the misses (prefetch staging, disk) on the host;
* ``finish_lookup`` packs, in one reusable pinned staging buffer, the
  output's index (a device slot, or a row of the batch's host rows) and the
  host rows; one non-blocking copy on a side stream carries it; on the
  tier's stream the host rows go to a scratch tail of the slab and one
  ``F.embedding`` gathers the output: device rows as the batch found them;
* the store plans the batch's moves; writes to device slots update the
  shadow and are noted, and ``end_lookup`` sends them in one more copy and
  one ``index_copy_``, after the gather on the same stream.

The output is handed to the caller's stream through a CUDA event
(:meth:`CudaMemory.deliver`), so a lookup may be computed on a worker thread
while the model runs, and nothing on the path waits for the device: the host
waits only for a staging buffer's previous copy before refilling it (a ring
of buffers).
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.batch import gather_tiered
from ._torch import torch_module
from .base import MemoryTier
from .memory import words

ALIGN = 256          # bytes: each packed array starts at a multiple (any dtype's view is legal)
STAGING_SLOTS = 4    # pinned staging buffers in the ring
MIN_SCRATCH_ROWS = 1024


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Slot:
    __slots__ = ("capacity", "copied", "consumed", "dev", "host", "host_np")

    def __init__(self, torch):
        self.capacity = 0
        self.host = self.host_np = self.dev = None
        self.copied = torch.cuda.Event()     # the host-to-device copy out of ``host`` is done
        self.consumed = torch.cuda.Event()   # the stream that read ``dev`` is done with it


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
        with torch.inference_mode(False):      # reused outside the mode it was grown in
            slot.host = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
            slot.dev = torch.empty(capacity, dtype=torch.uint8, device=self.device)
        slot.host_np = slot.host.numpy()
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


class Ready:
    """A lookup's output on the tier's stream, with the event that marks it done."""
    __slots__ = ("out", "event")

    def __init__(self, out, event):
        self.out = out
        self.event = event


class CudaMemory(MemoryTier):
    """Device slab in GPU memory (with a host shadow), RAM slab in pinned host memory."""

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
        self.stream = torch.cuda.Stream(device=self.device_name)
        with torch.cuda.stream(self.stream), torch.inference_mode(False):   # all slab work: here
            self.slab = torch.zeros((device_rows + MIN_SCRATCH_ROWS, dim), dtype=self._tdtype,
                                    device=self.device_name)
        self.shadow = np.zeros((device_rows, dim), dtype=self.dtype)
        with torch.inference_mode(False):
            self.ram_tensor = torch.zeros((ram_rows, dim), dtype=self._tdtype, pin_memory=ram_rows > 0)
        self.ram = self.ram_tensor.numpy()
        self.uploader = Uploader(torch, self.device_name)
        self._batch = None        # (slots, device slots written) from gather to end_lookup

    @property
    def device(self):
        """The device slab (a CUDA tensor of ``device_rows`` rows), written on :attr:`stream`."""
        return self.slab[:self.device_rows]

    def device_snapshot(self) -> np.ndarray:
        """A host copy of the device slab once the work issued on it is done (for checks)."""
        self.stream.synchronize()
        return self.device.cpu().numpy()

    # -- the lookup path ---------------------------------------------------------------------
    def gather(self, slots: np.ndarray, out: np.ndarray):
        """The lookup's gather: rows of RAM slots into ``out``; rows of device slots are left
        alone (the GPU gathers them in :meth:`finish_lookup`), as are those of slot -1."""
        slots = np.asarray(slots, dtype=np.int64)
        host_slots = np.where(slots < self.device_rows, -1, slots)
        gather_tiered(words(self.shadow), words(self.ram), self.device_rows, host_slots, words(out))
        self._batch = (slots, [])

    def fill_rows(self, rows: np.ndarray, positions: np.ndarray):
        """Fill ``rows[positions]`` that :meth:`gather` left alone (device slots), from the shadow,
        before the store moves them."""
        slots, _ = self._batch
        positions = np.asarray(positions, dtype=np.int64)
        need = positions[(slots[positions] >= 0) & (slots[positions] < self.device_rows)]
        if len(need):
            rows[need] = self.shadow[slots[need]]

    def finish_lookup(self, rows: np.ndarray, inverse: np.ndarray, shape: tuple,
                      as_torch: bool = True) -> Ready:
        """The output of ``lookup``, of shape ``shape + (dim,)``, issued on the tier's stream.
        ``rows`` are the unique ids' rows as the store filled them on the host (misses and RAM
        hits); ``inverse`` maps each id to its unique row. Pass the result to :meth:`deliver`."""
        torch = self._torch
        slots, _ = self._batch
        on_device = (slots >= 0) & (slots < self.device_rows)
        host_pos = np.flatnonzero(~on_device)
        self._reserve_scratch(len(host_pos))
        where = slots.astype(np.int32)       # unique row -> its row in the slab
        where[host_pos] = self.device_rows + np.arange(len(host_pos), dtype=np.int32)
        inverse = np.asarray(inverse, dtype=np.int64).reshape(-1)
        with torch.cuda.stream(self.stream):
            slot, (index, host_rows) = self.uploader.send([
                (np.int32, (len(inverse),), _take_into(where, inverse)),
                (self.dtype, (len(host_pos), self.dim), _take_into(rows, host_pos)),
            ])
            if len(host_pos):
                self.slab[self.device_rows:self.device_rows + len(host_pos)].copy_(host_rows)
            out = torch.nn.functional.embedding(index, self.slab)
            self.uploader.release(slot)
            event = torch.cuda.Event()
            event.record(self.stream)
        return Ready(out.view(tuple(shape) + (self.dim,)), event)

    def end_lookup(self):
        """The lookup's moves are planned: send its writes to device slots (after its gather,
        on the same stream) and close the batch."""
        if self._batch is not None:
            _, written = self._batch
            self._batch = None
            if written:
                self._send_rows(np.unique(np.concatenate(written)))

    def deliver(self, ready: Ready):
        """The output of :meth:`finish_lookup`, made safe to use on the current stream."""
        current = self._torch.cuda.current_stream(self.device_name)
        current.wait_event(ready.event)
        ready.out.record_stream(current)
        return ready.out

    def _reserve_scratch(self, rows: int):
        """Grow the slab's scratch tail (which holds one batch's host rows) to ``rows``."""
        if self.device_rows + rows <= len(self.slab):
            return
        torch = self._torch
        scratch = max(rows, 2 * (len(self.slab) - self.device_rows))
        # not an inference tensor even if a lookup under torch.inference_mode() grows it:
        # later writes may come from outside that mode (an update, a lookup on a worker)
        with torch.cuda.stream(self.stream), torch.inference_mode(False):
            slab = torch.empty((self.device_rows + scratch, self.dim), dtype=self._tdtype,
                               device=self.device_name)
            slab[:self.device_rows].copy_(self.slab[:self.device_rows])
        self.slab = slab

    # -- moving rows -------------------------------------------------------------------------
    def read(self, slots: np.ndarray) -> np.ndarray:
        """Rows of ``slots``, from the shadow and the RAM slab (no device-to-host copy)."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        gather_tiered(words(self.shadow), words(self.ram), self.device_rows, slots, words(out))
        return out

    def write(self, slots: np.ndarray, rows: np.ndarray):
        """Rows into slots. Device slots change in the shadow at once and on the GPU with the
        current lookup's output (after its gather), or at once outside a lookup."""
        rows = np.asarray(rows, dtype=self.dtype)
        slots = np.asarray(slots, dtype=np.int64)
        on_device = slots < self.device_rows
        dev_slots = slots[on_device]
        self.shadow[dev_slots] = rows[on_device]
        self.ram[slots[~on_device] - self.device_rows] = rows[~on_device]
        if not len(dev_slots):
            return
        if self._batch is not None:
            self._batch[1].append(dev_slots)
        else:
            self._send_rows(np.unique(dev_slots))

    def _send_rows(self, dev_slots: np.ndarray):
        """Copy the shadow's rows of ``dev_slots`` (unique) to the device slab."""
        torch = self._torch
        with torch.cuda.stream(self.stream):
            slot, (index, values) = self.uploader.send([
                (np.int64, (len(dev_slots),), _copy_into(dev_slots)),
                (self.dtype, (len(dev_slots), self.dim), _take_into(self.shadow, dev_slots)),
            ])
            self.slab.index_copy_(0, index, values)
            self.uploader.release(slot)

    def nbytes(self) -> int:
        return (self.slab.numel() * self.slab.element_size() + self.shadow.nbytes
                + self.ram.nbytes)
