"""The memory tiers on a CUDA GPU: hot slab in HBM, warm slab in pinned host memory, and an
index of both on the GPU, so that a lookup of resident rows does no host work per id.

A lookup (:meth:`CudaMemory.issue`, on the tier's stream) is one Triton kernel
(:mod:`.triton_lookup`): probe the GPU index (:mod:`.gpu_index`), copy each row
from the HBM slab or, over PCIe, straight from the pinned RAM slab, and list
the ids found in neither. The host reads back only that list (a count and the
first ``MISS_PAIRS`` pairs, in one small copy); the store reads the missed rows
(staging, write-back buffer, disk) and :meth:`CudaMemory.fill` uploads them into
the output. The output reaches the caller's stream through a CUDA event
(:meth:`CudaMemory.deliver`); nothing waits for the device as a whole.

Residency changes come from the store's planner in rounds: :meth:`write`
(rows into slots) and :meth:`retarget` (ids moved, admitted, evicted) are
buffered, and :meth:`commit` issues them together under the launch lock: one
upload, one kernel writing rows into either slab (the GPU writes the pinned RAM
slab too, so every slab change is ordered on the tier's stream with the lookups
that read it: a lookup issued before a commit sees the old rows and index, one
issued after sees the new), and the index's changed buckets. The GPU is never
read back for rows: a host *shadow* of the device slab serves demotions,
write-backs and flushes, and the host reads the RAM slab only once the last
commit's writes are done (an event).
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ConfigError
from ..kernels.batch import dedupe_last, gather_tiered
from ._torch import torch_module
from .base import DeviceLookupTier
from .gpu_index import GpuIndex
from .memory import words
from .triton_lookup import HostPointer, write_rows
from .triton_lookup import lookup as triton_lookup

ALIGN = 256          # bytes: each packed array starts at a multiple (any dtype's view is legal)
STAGING_SLOTS = 4    # pinned staging buffers in the ring
MISS_PAIRS = 4096    # (position, id) pairs of a lookup's miss list in its first copy back
LOG_SAMPLE_IDS = 16384   # ids of a lookup, at most about, that go to the planner's access log

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


def log_sample(n: int, turn: int) -> tuple[int, int]:
    """``(start, stride)``: the ids ``flat[start::stride]`` of a lookup of ``n`` ids go to the
    planner's log, each standing for ``stride`` lookups. The stride is odd (prime to the 16
    heads of an Engram batch) and the start turns with ``turn``, so every id's turn comes."""
    stride = max(1, n // LOG_SAMPLE_IDS) | 1
    return turn % stride, stride


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


class CallerIds:
    """CUDA ids and the event that marks them ready on the stream that made them: a lookup
    issued later, from any thread, waits for that point only."""
    __slots__ = ("ids", "event")

    def __init__(self, ids, event):
        self.ids, self.event = ids, event


class Pending:
    """A lookup issued on the GPU: its output (misses not yet filled), its miss list on the way
    back to the host, and its ids for the planner's access log."""
    __slots__ = ("out", "shape", "misses", "misses_host", "copied", "log", "log_weight")

    def __init__(self, out, shape, misses, misses_host, copied, log, log_weight):
        self.out, self.shape = out, shape
        self.misses, self.misses_host, self.copied = misses, misses_host, copied
        self.log = log            # the logged ids on the host: numpy, or (pinned tensor, event)
        self.log_weight = log_weight    # lookups each logged id stands for

    def log_ids(self) -> np.ndarray:
        """The lookup's logged ids on the host (waits for their copy back from the GPU)."""
        if isinstance(self.log, np.ndarray):
            return self.log
        host, event = self.log
        event.synchronize()
        return host.numpy()


class CudaMemory(DeviceLookupTier):
    """Device slab in GPU memory (with a host shadow), RAM slab in pinned host memory, and the
    GPU index of both."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype, device: str):
        torch = torch_module()
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}, but torch finds no CUDA device")
        self._torch = torch
        self.device_name = torch.device(device)
        if self.device_name.index is None:
            self.device_name = torch.device("cuda", torch.cuda.current_device())
        self.device_rows = device_rows
        self.ram_rows = ram_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self._tdtype = _torch_dtype(torch, self.dtype)
        self.stream = torch.cuda.Stream(device=self.device_name)
        with torch.cuda.stream(self.stream), torch.inference_mode(False):   # all slab work: here
            # one row at least: Triton needs a valid pointer even where a tier holds no rows
            self.slab = torch.zeros((max(device_rows, 1), dim), dtype=self._tdtype,
                                    device=self.device_name)
            self.index = GpuIndex(device_rows + ram_rows, self.device_name, torch)
        self.shadow = np.zeros((device_rows, dim), dtype=self.dtype)
        with torch.inference_mode(False):
            self.ram_tensor = torch.zeros((max(ram_rows, 1), dim), dtype=self._tdtype, pin_memory=True)
        self.ram = self.ram_tensor.numpy()[:ram_rows]
        self._ram_pointer = HostPointer(self.ram_tensor)
        self.uploader = Uploader(torch, self.device_name)
        self.launch = threading.Lock()   # a lookup's kernels and a commit's never interleave
        self._writes = []                # (slots, rows) buffered until commit
        self._index_dirty = False
        self._committed = None           # event: the last commit's writes are done
        self._log_turn = 0

    @property
    def device(self):
        """The device slab (a CUDA tensor of ``device_rows`` rows), written on :attr:`stream`."""
        return self.slab[:self.device_rows]

    def device_snapshot(self) -> np.ndarray:
        """A host copy of the device slab once the work issued on it is done (for checks)."""
        self.stream.synchronize()
        return self.device.cpu().numpy()

    def index_snapshot(self) -> dict[int, int]:
        """id -> slot as the GPU's index holds it once the work issued is done (for checks)."""
        self.stream.synchronize()
        keys, vals = self.index.dev_keys.cpu().numpy(), self.index.dev_vals.cpu().numpy()
        used = keys != -1
        return dict(zip(keys[used].tolist(), vals[used].tolist()))

    # -- the lookup path ---------------------------------------------------------------------
    def caller_ids(self, ids) -> CallerIds:
        """int64 CUDA ids on this device, marked ready at this point of the current stream."""
        event = self._torch.cuda.Event()
        event.record(self._torch.cuda.current_stream(self.device_name))
        return CallerIds(ids, event)

    def issue(self, ids) -> Pending:
        """Start the lookup of ``ids`` (an int64 numpy array, or :class:`CallerIds`) on the
        tier's stream: resident rows gathered, misses listed."""
        torch = self._torch
        on_gpu = isinstance(ids, CallerIds)
        shape = tuple(ids.ids.shape if on_gpu else ids.shape)
        n = int(np.prod(shape))
        with self.launch, torch.cuda.stream(self.stream):
            upload = None
            if on_gpu:
                self.stream.wait_event(ids.event)
                flat = ids.ids.reshape(-1)
                flat.record_stream(self.stream)
            else:
                flat_np = ids.reshape(-1)
                upload, (flat,) = self.uploader.send([(np.int64, (n,), _copy_into(flat_np))])
            out = torch.empty((n, self.dim), dtype=self._tdtype, device=self.device_name)
            misses = torch.empty(1 + 2 * n, dtype=torch.int64, device=self.device_name)
            misses[:1].zero_()
            triton_lookup(flat, self.index.dev_keys, self.index.dev_vals, self.index.rounds,
                          self.slab, self._ram_pointer, self.device_rows, out, misses)
            head = min(len(misses), 1 + 2 * MISS_PAIRS)
            misses_host = torch.empty(head, dtype=torch.int64, pin_memory=True)
            misses_host.copy_(misses[:head], non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
            # the planner sees a sample of a large lookup: an odd stride (prime to the heads'
            # count of an Engram batch) from an offset that turns, so every id's turn comes
            start, stride = log_sample(n, self._log_turn)
            self._log_turn += 1
            if on_gpu:
                sample = flat[start::stride]
                host_ids = torch.empty(len(sample), dtype=torch.int64, pin_memory=True)
                host_ids.copy_(sample, non_blocking=True)
                logged = torch.cuda.Event()
                logged.record(self.stream)
                log = (host_ids, logged)
            else:
                log = flat_np[start::stride].copy()
            self.uploader.release(upload)
        return Pending(out, shape, misses, misses_host, copied, log, stride)

    def misses(self, pending: Pending):
        """``(positions, ids)`` of the lookup's ids found in neither tier (waits for its list)."""
        torch = self._torch
        pending.copied.synchronize()
        head = pending.misses_host.numpy()
        count = int(head[0])
        pairs = head[1:1 + 2 * count]
        if 2 * count > len(pairs):                   # more than the first copy carried
            with torch.cuda.stream(self.stream):
                rest = torch.empty(2 * count, dtype=torch.int64, pin_memory=True)
                rest.copy_(pending.misses[1:1 + 2 * count], non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            done.synchronize()
            pairs = rest.numpy()
        pending.misses = pending.misses_host = None
        return pairs[0::2].copy(), pairs[1::2].copy()

    def fill(self, pending: Pending, positions: np.ndarray, rows: np.ndarray):
        """Missed rows into the lookup's output: ``rows[k]`` at flat position ``positions[k]``."""
        torch = self._torch
        if not len(positions):
            return
        with torch.cuda.stream(self.stream):
            slot, (index, values) = self.uploader.send([
                (np.int64, (len(positions),), _copy_into(positions)),
                (self.dtype, (len(positions), self.dim), _copy_into(rows)),
            ])
            pending.out.index_copy_(0, index, values)
            self.uploader.release(slot)

    def ready(self, pending: Pending) -> Ready:
        """The lookup's output, its rows all in place once its event completes."""
        torch = self._torch
        event = torch.cuda.Event()
        event.record(self.stream)
        return Ready(pending.out.view(pending.shape + (self.dim,)), event)

    def deliver(self, ready: Ready):
        """The output of a lookup, made safe to use on the current stream."""
        current = self._torch.cuda.current_stream(self.device_name)
        current.wait_event(ready.event)
        ready.out.record_stream(current)
        return ready.out

    # -- moving rows (the planner's rounds, updates) -----------------------------------------
    def read(self, slots: np.ndarray) -> np.ndarray:
        """Rows of ``slots`` as last committed: from the shadow and the RAM slab (no copy from
        the GPU). Within a round, rows written but not committed are not seen in RAM slots."""
        if self._committed is not None:
            self._committed.synchronize()
            self._committed = None
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        gather_tiered(words(self.shadow), words(self.ram), self.device_rows, slots, words(out))
        return out

    def fill_rows(self, rows: np.ndarray, positions: np.ndarray, start: np.ndarray):
        """``rows[positions]`` from their slots ``start[positions]`` where resident (the lookups
        gathered them on the GPU; the planner needs them on the host to move them)."""
        positions = np.asarray(positions, dtype=np.int64)
        need = positions[start[positions] >= 0]
        if len(need):
            rows[need] = self.read(start[need])

    def write(self, slots: np.ndarray, rows: np.ndarray):
        """Rows into slots: the shadow at once, both slabs at :meth:`commit`."""
        slots = np.asarray(slots, dtype=np.int64)
        if not len(slots):
            return
        rows = np.asarray(rows, dtype=self.dtype)
        on_device = slots < self.device_rows
        self.shadow[slots[on_device]] = rows[on_device]
        self._writes.append((slots, rows))

    def retarget(self, removed: np.ndarray, removed_slots: np.ndarray, put_ids: np.ndarray,
                 put_slots: np.ndarray):
        """Index changes of a round (:meth:`GpuIndex.retarget`), sent at :meth:`commit`."""
        self.index.retarget(removed, removed_slots, put_ids, put_slots)
        self._index_dirty = True

    def swap_index(self, promoted, sw_from, sw_to, has_y):
        """Promotions (:meth:`GpuIndex.swap`), sent at :meth:`commit`."""
        self.index.swap(promoted, sw_from, sw_to, has_y)
        self._index_dirty = True

    def clear(self):
        """Nothing resident: the index emptied (sent at :meth:`commit`)."""
        self.index.clear()
        self._index_dirty = True

    def commit(self):
        """Issue the buffered writes and index changes on the tier's stream, between lookups."""
        torch = self._torch
        if not self._writes and not self._index_dirty:
            return
        specs = []
        if self._writes:
            # later writes to a slot win, and the kernel writes each slot once
            slots, last = dedupe_last(np.concatenate([w[0] for w in self._writes]))
            rows = np.concatenate([w[1] for w in self._writes])[last]
            specs += [(np.int64, (len(slots),), _copy_into(slots)),
                      (self.dtype, (len(slots), self.dim), _copy_into(rows))]
        if self._index_dirty:
            pos, keys, vals = self.index.changes()
            if pos is not None:
                specs.append((np.int64, (len(pos),), _copy_into(pos)))
            specs += [(np.int64, (len(keys),), _copy_into(keys)),
                      (np.int32, (len(vals),), _copy_into(vals))]
        with self.launch, torch.cuda.stream(self.stream):
            slot, tensors = self.uploader.send(specs)
            if self._writes:
                write_rows(tensors[0], tensors[1], self.slab, self._ram_pointer, self.device_rows)
                tensors = tensors[2:]
            if self._index_dirty:
                self.index.load(*(tensors if pos is not None else [None] + tensors))
            self.uploader.release(slot)
            self._committed = torch.cuda.Event()
            self._committed.record(self.stream)
        self._writes = []
        self._index_dirty = False

    def index_host_bytes(self) -> int:
        return self.index.host_nbytes()

    def nbytes(self) -> int:
        return (self.slab.numel() * self.slab.element_size() + self.shadow.nbytes
                + self.ram.nbytes + self.index.nbytes())

