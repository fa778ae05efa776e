"""The memory tiers on a CUDA GPU: hot slab in HBM, warm slab in pinned host memory, and an
index of both on the GPU, so that a lookup of resident rows does no host work per id.

A lookup (:meth:`CudaMemory.issue`) is one Triton kernel (:mod:`.triton_lookup`) on
the caller's stream: probe the GPU index (:mod:`.gpu_index`), copy each row from
the HBM slab or, over PCIe, straight from the pinned RAM slab, and list the ids
found in neither. The host reads back only that list (a count and the first
``MISS_PAIRS`` pairs, in one small copy); the store reads the missed rows
(staging, write-back buffer, disk) and :meth:`CudaMemory.fill` uploads them into
the output, on the same stream. The caller's stream already orders the output
after its ids and before its use, so a lookup costs the host a kernel launch, a
copy and an event, not the events and stream switches that a stream of its own
would take to join the caller's; nothing waits for the device as a whole.

Residency changes come from the store's planner in rounds: :meth:`write`
(rows into slots) and :meth:`retarget` (ids moved, admitted, evicted) are
buffered, and :meth:`commit` issues them together under the launch lock, on the
tier's stream: one upload, one kernel writing rows into either slab (the GPU
writes the pinned RAM slab too, so every slab change is ordered on the GPU with
the lookups that read it), and the index's changed buckets. The two kinds of
stream meet through events taken under the launch lock: a commit waits for the
last lookup issued on each stream before it, and a lookup waits for the last
commit issued before it (once per stream), so a lookup issued before a commit
sees the old rows and index, one issued after sees the new. The GPU is never
read back for rows: a host *shadow* of the device slab serves demotions,
write-backs and flushes, and the host reads the RAM slab only once the last
commit's writes are done (an event).
"""
from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

from ..errors import ConfigError
from ..kernels.batch import dedupe_last, gather_tiered
from ._torch import torch_dtype, torch_module
from .base import DeviceLookupTier, MissedRows
from .gpu_index import GpuIndex
from .memory import words
from .triton_lookup import HostPointer, scatter_rows, write_rows
from .triton_lookup import lookup as triton_lookup

ALIGN = 256          # bytes: each packed array starts at a multiple (any dtype's view is legal)
STAGING_SLOTS = 4    # pinned staging buffers in the ring
MISS_PAIRS = 4096    # (position, id) pairs of a lookup's miss list in its first copy back
LOG_SAMPLE_IDS = 16384   # ids of a lookup, at most about, that go to the planner's access log
STREAMS_KEPT = 1024   # stream handles whose torch Stream is kept

def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Slot:
    __slots__ = ("capacity", "copied", "consumed", "dev", "host", "host_np")

    def __init__(self, torch):
        self.capacity = 0
        self.host = self.host_np = self.dev = None
        self.copied = torch.cuda.Event()     # the host-to-device copy out of ``host`` is done
        self.consumed = torch.cuda.Event()   # the stream that read ``dev`` is done with it


class Packed:
    """Arrays packed into one pinned slot of an :class:`Uploader`: ``views`` (numpy, to fill
    on the host) and where each lies in the slot."""
    __slots__ = ("slot", "layout", "total", "views")

    def __init__(self, slot, layout, total, views):
        self.slot, self.layout, self.total, self.views = slot, layout, total, views


class Uploader:
    """Host arrays to the GPU through reusable pinned buffers.

    ``pack(specs)`` (``specs``: ``(numpy dtype, shape)`` pairs) takes a free pinned
    slot and gives numpy views of it to fill, on any thread and without a lock
    that lookups take; ``send(packed, stream)`` copies them all in one non-blocking copy
    on ``stream``, the one whose work reads them (and the current one), and gives the
    CUDA tensors; ``release(packed, stream)``, once that work is issued, frees the slot. A slot is reused
    once its last copy has left it and, on the GPU, once its last readers are done.
    """

    def __init__(self, torch, device, slots: int = STAGING_SLOTS):
        self.torch = torch
        self.device = device
        self.ring = [_Slot(torch) for _ in range(slots)]    # every slot made, for checks
        self._free = deque(self.ring)     # oldest first: its copy is the likeliest done
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.copies = 0

    def _grow(self, slot: _Slot, total: int):
        torch = self.torch
        capacity = max(_align(total), 2 * slot.capacity, 1 << 20)
        # the old device buffer goes back to the allocator of the stream it was made on, which
        # may hand it out at once: its readers on other streams must be done first
        slot.consumed.synchronize()
        with torch.inference_mode(False):      # reused outside the mode it was grown in
            slot.host = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
            slot.dev = torch.empty(capacity, dtype=torch.uint8, device=self.device)
        slot.host_np = slot.host.numpy()
        slot.capacity = capacity

    def _take(self) -> _Slot:
        with self._lock:
            if self._free:
                return self._free.popleft()
            slot = _Slot(self.torch)          # every slot busy: one more
            self.ring.append(slot)
            return slot

    def pack(self, specs) -> Packed:
        layout, total = [], 0
        for dt, shape in specs:
            nbytes = math.prod(shape) * np.dtype(dt).itemsize
            layout.append((total, nbytes, np.dtype(dt), tuple(shape)))
            total += _align(nbytes)
        slot = self._take()
        slot.copied.synchronize()            # this buffer's previous copy has left it
        if slot.host is None or slot.capacity < total:
            self._grow(slot, total)
        views = [slot.host_np[o:o + n].view(dt).reshape(shape) for o, n, dt, shape in layout]
        return Packed(slot, layout, total, views)

    def send(self, packed: Packed, stream):
        slot, total = packed.slot, packed.total
        if total:
            stream.wait_event(slot.consumed)   # the last reader of ``dev``, maybe on another stream
            slot.dev[:total].copy_(slot.host[:total], non_blocking=True)
            slot.copied.record(stream)
            self.bytes_sent += total
            self.copies += 1
        return [slot.dev[o:o + n].view(torch_dtype(dt)).view(shape)
                for o, n, dt, shape in packed.layout]

    def release(self, packed: Packed, stream):
        packed.slot.consumed.record(stream)
        with self._lock:
            self._free.append(packed.slot)

    def pack_arrays(self, arrays) -> Packed:
        """``arrays`` (numpy) copied into a pinned slot, for ``send``."""
        packed = self.pack([(a.dtype, a.shape) for a in arrays])
        for view, a in zip(packed.views, arrays):
            view[...] = a
        return packed


def log_sample(n: int, turn: int) -> tuple[int, int]:
    """``(start, stride)``: the ids ``flat[start::stride]`` of a lookup of ``n`` ids go to the
    planner's log, each standing for ``stride`` lookups. The stride is odd (prime to the 16
    heads of an Engram batch) and the start turns with ``turn``, so every id's turn comes."""
    stride = max(1, n // LOG_SAMPLE_IDS) | 1
    return turn % stride, stride


def sample_size(n: int, start: int, stride: int) -> int:
    """How many of ``range(start, n, stride)``."""
    return max(0, (n - start + stride - 1) // stride)


class Ready:
    """A lookup's output, the handle of the stream it was made on and the event that marks it
    done there."""
    __slots__ = ("out", "handle", "event")

    def __init__(self, out, handle: int, event):
        self.out, self.handle, self.event = out, handle, event


class CallerIds:
    """CUDA ids and the stream that made them (its handle and torch Stream), which their
    lookup runs on (issued again from another thread, it still runs there)."""
    __slots__ = ("ids", "handle", "stream")

    def __init__(self, ids, handle: int, stream):
        self.ids, self.handle, self.stream = ids, handle, stream


class Pending:
    """A lookup issued on the GPU: its output (misses not yet filled), the handle of its
    stream, and the head of its *scratch* (``[miss count | logged ids | (position, id)
    pairs]``) on its way back to the host in one copy; the logged ids, once read back, for the
    planner's access log."""
    __slots__ = ("out", "shape", "stream", "handle", "scratch", "head", "copied", "logged",
                 "log", "log_weight", "filled")

    def __init__(self, out, shape, stream, handle, scratch, head, copied, logged, log_weight):
        self.out, self.shape, self.stream, self.handle = out, shape, stream, handle
        self.scratch, self.head, self.copied = scratch, head, copied
        self.logged = logged          # how many ids of the lookup the log holds
        self.log = None               # those ids on the host, once ``misses`` has read them
        self.log_weight = log_weight  # lookups each logged id stands for
        self.filled = False           # missed rows uploaded into ``out`` since ``copied``

    def log_ids(self) -> np.ndarray:
        """The lookup's logged ids on the host (read back with its misses)."""
        return self.log


class CudaMissedRows(MissedRows):
    """Missed rows and their positions in a pinned slot of the tier's uploader."""
    __slots__ = ("packed",)
    lent = True

    def __init__(self, packed: Packed):
        super().__init__(*packed.views)
        self.packed = packed


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
        self._tdtype = torch_dtype(self.dtype)
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
        self._last_commit = torch.cuda.Event()   # the last commit's writes done (at first: the slabs made)
        self._last_commit.record(self.stream)
        self._commits = 1
        self._streams = {}               # stream handle -> its torch Stream
        self._seen = {}                  # stream handle -> commits its lookups have waited for
        self._issued = {}                # stream handle -> event after its last lookup
        self._kernels = {}               # Triton kernels compiled for this tier's arguments
        self._log_turn = 0

    @property
    def device(self):
        """The device slab (a CUDA tensor of ``device_rows`` rows), written on :attr:`stream`."""
        return self.slab[:self.device_rows]

    def device_snapshot(self) -> np.ndarray:
        """A host copy of the device slab once the work issued on it is done (for checks)."""
        self._torch.cuda.synchronize(self.device_name)
        return self.device.cpu().numpy()

    def index_snapshot(self) -> dict[int, int]:
        """id -> slot as the GPU's index holds it once the work issued is done (for checks)."""
        self._torch.cuda.synchronize(self.device_name)
        keys, vals = self.index.dev_keys.cpu().numpy(), self.index.dev_vals.cpu().numpy()
        used = keys != -1
        return dict(zip(keys[used].tolist(), vals[used].tolist()))

    # -- the lookup path ---------------------------------------------------------------------
    def current_stream(self):
        """``(handle, stream)`` of this device's current stream. The handle is one cheap call
        (0.1-0.2 us on the H200's host, where ``torch.cuda.current_stream``, which builds a
        Stream in Python, took 2.7-6.0 us, three times a lookup); a handle names one CUDA
        stream, so its Stream is made once."""
        torch = self._torch
        handle = torch._C._cuda_getCurrentRawStream(self.device_name.index)
        stream = self._streams.get(handle)
        if stream is None:
            if len(self._streams) >= STREAMS_KEPT:      # external streams come and go
                self._streams.clear()
            stream = self._streams[handle] = torch.cuda.current_stream(self.device_name)
        return handle, stream

    def caller_ids(self, ids) -> CallerIds:
        """int64 CUDA ids on this device, with the current stream, which made them."""
        return CallerIds(ids, *self.current_stream())

    def issue(self, ids) -> Pending:
        """Start the lookup of ``ids`` (an int64 numpy array, on the current stream, or
        :class:`CallerIds`, on theirs): resident rows gathered, misses listed, a sample of
        the ids logged."""
        torch = self._torch
        if torch.cuda.current_device() != self.device_name.index:
            with torch.cuda.device(self.device_name):    # Triton launches on the current device
                return self.issue(ids)
        key, current = self.current_stream()
        on_gpu = isinstance(ids, CallerIds)
        if on_gpu and ids.handle != key:
            with torch.cuda.stream(ids.stream):      # issued again, from another thread
                return self.issue(ids)
        shape = tuple(ids.ids.shape if on_gpu else ids.shape)
        n = math.prod(shape)
        # the planner sees a sample of a large lookup: an odd stride (prime to the heads'
        # count of an Engram batch) from an offset that turns, so every id's turn comes
        start, stride = log_sample(n, self._log_turn)
        self._log_turn += 1
        logged = sample_size(n, start, stride)
        head = 1 + logged + 2 * min(n, MISS_PAIRS)
        with self.launch:
            if self._seen.get(key, 0) != self._commits:     # a commit since its last lookup
                current.wait_event(self._last_commit)
                self._seen[key] = self._commits
            packed = None
            if on_gpu:
                flat = ids.ids.reshape(-1)
            else:
                packed = self.uploader.pack_arrays([ids.reshape(-1)])
                (flat,) = self.uploader.send(packed, current)
            out = torch.empty((n, self.dim), dtype=self._tdtype, device=self.device_name)
            scratch = torch.zeros(1 + logged + 2 * n, dtype=torch.int64, device=self.device_name)
            triton_lookup(flat, self.index.dev_keys, self.index.dev_vals, self.index.rounds,
                          self.slab, self._ram_pointer, self.device_rows, out, scratch,
                          start, stride, logged, self._kernels, key)
            host = torch.empty(head, dtype=torch.int64, pin_memory=True)
            host.copy_(scratch[:head], non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(current)
            self._issued[key] = copied
            if packed is not None:
                self.uploader.release(packed, current)
        return Pending(out, shape, current, key, scratch, host, copied, logged, stride)

    def wait_listed(self, pending: Pending) -> bool:
        """Block until the lookup's miss list is on the host (the GIL released meanwhile);
        whether it holds any id."""
        head = pending.head      # a result() that read the list first has let it go
        pending.copied.synchronize()
        return head is not None and bool(head.numpy()[0])

    def misses(self, pending: Pending):
        """``(positions, ids)`` of the lookup's ids found in neither tier (waits for its list);
        its logged ids are read back with them."""
        torch = self._torch
        pending.copied.synchronize()
        head = pending.head.numpy()
        count, logged = int(head[0]), pending.logged
        # a view, read by the planner's thread later: with a copy of it here (14,564 ids)
        # this call took 19-23 us on the H200's host, against 7 without
        pending.log = head[1:1 + logged]
        pairs = head[1 + logged:1 + logged + 2 * count]
        if 2 * count > len(pairs):                   # more than the first copy carried
            with torch.cuda.stream(pending.stream):
                rest = torch.empty(2 * count, dtype=torch.int64, pin_memory=True)
                rest.copy_(pending.scratch[1 + logged:1 + logged + 2 * count], non_blocking=True)
                done = torch.cuda.Event()
                done.record(pending.stream)
            done.synchronize()
            pairs = rest.numpy()
        pending.scratch = pending.head = None
        return pairs[0::2].copy(), pairs[1::2].copy()

    def missed_rows(self, rows: int, positions: int) -> CudaMissedRows:
        """Pinned arrays for the missed rows and their positions: ``fill`` uploads them as
        they are, in one copy."""
        return CudaMissedRows(self.uploader.pack([(self.dtype, (rows, self.dim)),
                                                  (np.int64, (positions,)),
                                                  (np.int64, (positions,))]))

    def fill(self, pending: Pending, missed: MissedRows):
        """Missed rows into the lookup's output (:meth:`DeviceLookupTier.fill`): one copy of
        the pinned slot, one kernel that puts each row where it goes."""
        torch = self._torch
        if not len(missed.positions):
            return
        if not isinstance(missed, CudaMissedRows):        # arrays made elsewhere: packed first
            mine = self.missed_rows(len(missed.rows), len(missed.positions))
            mine.rows[...], mine.positions[...], mine.which[...] = (missed.rows, missed.positions,
                                                                    missed.which)
            missed = mine
        with torch.cuda.stream(pending.stream):
            rows, positions, which = self.uploader.send(missed.packed, pending.stream)
            scatter_rows(rows, positions, which, pending.out, self._kernels)
            self.uploader.release(missed.packed, pending.stream)
        pending.filled = True

    def ready(self, pending: Pending) -> Ready:
        """The lookup's output, its rows all in place once its event completes (for a lookup
        that filled nothing, the event after its miss list's copy: no second one)."""
        event = pending.copied
        if pending.filled:
            event = self._torch.cuda.Event()
            event.record(pending.stream)
        return Ready(pending.out.view(pending.shape + (self.dim,)), pending.handle, event)

    def deliver(self, ready: Ready):
        """The output of a lookup, made safe to use on the current stream (on the stream it
        was made on, the stream's order does it)."""
        handle, current = self.current_stream()
        if handle != ready.handle:
            current.wait_event(ready.event)
            ready.out.record_stream(current)
        return ready.out

    # -- moving rows (the planner's rounds, updates) -----------------------------------------
    def read(self, slots: np.ndarray) -> np.ndarray:
        """Rows of ``slots`` as last committed: from the shadow and the RAM slab (no copy from
        the GPU). Within a round, rows written but not committed are not seen in RAM slots."""
        self._last_commit.synchronize()
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
        """Issue the buffered writes and index changes on the tier's stream, between lookups.
        Everything is packed into pinned memory first, outside the launch lock, so a lookup
        waits at most for a copy and two kernels to be queued."""
        torch = self._torch
        if not self._writes and not self._index_dirty:
            return
        arrays = []
        if self._writes:
            # later writes to a slot win, and the kernel writes each slot once
            slots, last = dedupe_last(np.concatenate([w[0] for w in self._writes]))
            arrays += [slots, np.concatenate([w[1] for w in self._writes])[last]]
        if self._index_dirty:
            cleared, *index_arrays = self.index.changes()    # positions, keys, slots
            arrays += index_arrays
        packed = self.uploader.pack_arrays(arrays)
        with self.launch, torch.cuda.stream(self.stream):
            for looked_up in self._issued.values():   # the lookups issued before it are done
                self.stream.wait_event(looked_up)
            self._issued.clear()
            tensors = self.uploader.send(packed, self.stream)
            if self._writes:
                write_rows(tensors[0], tensors[1], self.slab, self._ram_pointer, self.device_rows,
                           self._kernels)
                tensors = tensors[2:]
            if self._index_dirty:
                self.index.load(cleared, *tensors)
            self.uploader.release(packed, self.stream)
            self._last_commit = torch.cuda.Event()
            self._last_commit.record(self.stream)
            self._commits += 1
        self._writes = []
        self._index_dirty = False

    def index_host_bytes(self) -> int:
        return self.index.host_nbytes()

    def nbytes(self) -> int:
        return (self.slab.numel() * self.slab.element_size() + self.shadow.nbytes
                + self.ram.nbytes + self.index.nbytes())

