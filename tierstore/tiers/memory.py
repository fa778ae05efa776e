"""The device and RAM tiers on the host: fixed-capacity slabs addressed by physical slot, and an
index of both, so that a lookup of resident rows needs neither the store's lock nor the policy.

Physical slots ``[0, device_rows)`` lie in the device slab, the rest in the
RAM slab. On ``device="cpu"`` both slabs are numpy arrays. The tier serves
lookups both ways of :mod:`.base`: driven by the store's slots (``gather``, for
small lookups planned at once), or by id through its own index
(``issue``: one numba pass that probes the index and copies each row into
the output, as the CUDA tier's kernel does; see ``kernels.slot_index``).

Moves (``write``, ``retarget``, ``swap_index``, ``clear``) are buffered and
applied by :meth:`HostMemory.commit` under :attr:`HostMemory.launch`, the lock
a lookup's pass holds too: a lookup sees a whole round of moves or none of it,
like a lookup issued before or after a commit on the GPU. :meth:`read` (the
planner's, the flush's) sees buffered writes at once.
"""
from __future__ import annotations

import threading

import numpy as np

from ..kernels.batch import dedupe_last, gather_tiered
from ..kernels.hashing import table_size
from ..kernels.slot_index import EMPTY, META_SIZE, index_apply, index_gather
from .base import DeviceLookupTier, HostLookupTier

INDEX_LOAD = 0.75     # the index at most 3/4 full: 16 to 32 bytes a cached row, short probes


def words(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a 2-D array of the widest unsigned words that tile a row."""
    row_bytes = rows.shape[1] * rows.dtype.itemsize
    for word in (np.uint64, np.uint32, np.uint16, np.uint8):
        if row_bytes % np.dtype(word).itemsize == 0:
            return rows.view(word).reshape(len(rows), row_bytes // np.dtype(word).itemsize)


def index_bytes(slots: int) -> int:
    """Host bytes of the index of ``slots`` memory slots (the buckets and slot -> id)."""
    return table_size(slots, INDEX_LOAD) * (8 + 4) + slots * 8


class HostPending:
    """A lookup done through the index: its output (misses not yet filled), its ids (all of
    them go to the planner's access log: unlike the GPU, the host has them at hand, and a
    sample would cost the policy hit ratio) and the flat positions of its misses."""
    __slots__ = ("out", "shape", "ids", "missed")
    log_weight = 1                      # lookups each logged id stands for

    def __init__(self, out, shape, ids, missed):
        self.out, self.shape, self.ids, self.missed = out, shape, ids, missed

    def log_ids(self) -> np.ndarray:
        return self.ids


class HostMemory(HostLookupTier, DeviceLookupTier):
    """Device and RAM slabs, both in host memory (``device="cpu"``), and their index."""

    def __init__(self, device_rows: int, ram_rows: int, dim: int, dtype: np.dtype):
        self.device_rows = device_rows
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.device = np.zeros((device_rows, dim), dtype=self.dtype)
        self.ram = np.zeros((ram_rows, dim), dtype=self.dtype)
        size = table_size(device_rows + ram_rows, INDEX_LOAD)
        self._keys = np.full(size, EMPTY, dtype=np.int64)       # id -> slot, kernels.slot_index
        self._vals = np.full(size, -1, dtype=np.int32)
        self._meta = np.zeros(META_SIZE, dtype=np.int64)
        self._bucket_log = np.empty(0, dtype=np.int64)          # nothing to send anywhere
        self.owner = np.full(device_rows + ram_rows, -1, dtype=np.int64)   # slot -> id
        self.launch = threading.Lock()   # a lookup's pass and a commit never interleave
        self._writes = []                # (slots, rows) buffered until commit
        self._index_ops = []             # (removed, put_ids, put_slots), or None for a clear

    # -- lookups driven by the store's slots (HostLookupTier) ------------------------------
    def gather(self, slots: np.ndarray, out: np.ndarray):
        """``out[k]`` = the row in slot ``slots[k]`` as last committed; rows where the slot is
        -1 are left alone."""
        gather_tiered(words(self.device), words(self.ram), self.device_rows, slots, words(out))

    def finish_lookup(self, rows: np.ndarray, inverse: np.ndarray, shape: tuple, as_torch: bool):
        """The unique rows expanded to the caller's ids: numpy, or torch for torch ids."""
        out = np.take(rows, inverse, axis=0).reshape(shape + (self.dim,))
        if not as_torch:
            return out
        from ._torch import torch_module

        return torch_module().from_numpy(out)

    def end_lookup(self):
        """The lookup's moves are done: they reach the slabs and the index."""
        self.commit()

    def fill_rows(self, rows: np.ndarray, positions: np.ndarray, start: np.ndarray):
        """``rows[positions]`` from their slots ``start[positions]`` where resident: a lookup
        through the index leaves the planner's rows of resident ids unread."""
        positions = np.asarray(positions, dtype=np.int64)
        need = positions[start[positions] >= 0]
        if len(need):
            rows[need] = self.read(start[need])

    # -- lookups by id (DeviceLookupTier) --------------------------------------------------
    def caller_ids(self, ids):
        """Host ids need no marking: ``issue`` takes them as they are."""
        return ids

    def issue(self, ids: np.ndarray) -> HostPending:
        """The lookup of int64 ``ids`` (any shape) through the index, as last committed."""
        flat = ids.reshape(-1).copy()     # the log outlives the call: not the caller's array
        out = np.empty((len(flat), self.dim), dtype=self.dtype)
        missed = np.empty(len(flat), dtype=np.int64)
        with self.launch:
            n_missed = index_gather(self._keys, self._vals, words(self.device), words(self.ram),
                                    self.device_rows, flat, words(out), missed)
        return HostPending(out, tuple(ids.shape), flat, missed[:n_missed])

    def misses(self, pending: HostPending):
        """``(positions, ids)`` of the lookup's ids found in neither tier."""
        return pending.missed, pending.ids[pending.missed]

    def fill(self, pending: HostPending, positions: np.ndarray, rows: np.ndarray):
        """Missed rows into the lookup's output: ``rows[k]`` at flat position ``positions[k]``."""
        pending.out[positions] = rows

    def ready(self, pending: HostPending) -> np.ndarray:
        """The lookup's output in the ids' shape."""
        return pending.out.reshape(pending.shape + (self.dim,))

    def deliver(self, out):
        """The output of a lookup, ready for the caller."""
        return out

    # -- moves -----------------------------------------------------------------------------
    def read(self, slots: np.ndarray) -> np.ndarray:
        """Rows of ``slots``, copied: as written, committed or not."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), self.dim), dtype=self.dtype)
        self.gather(slots, out)
        for written, rows in self._writes:      # later writes win
            hit = np.flatnonzero(np.isin(slots, written))
            if len(hit):
                uniq, last = dedupe_last(written)
                order = np.argsort(uniq)
                at = order[np.searchsorted(uniq[order], slots[hit])]
                out[hit] = rows[last[at]]
        return out

    def write(self, slots: np.ndarray, rows: np.ndarray):
        """Rows into slots, seen by lookups from the next :meth:`commit`."""
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots):
            self._writes.append((slots, np.array(rows, dtype=self.dtype)))

    def retarget(self, removed, removed_slots, put_ids, put_slots):
        """Index changes: ``removed`` ids leave ``removed_slots``, then ``put_ids[k]`` sits in
        ``put_slots[k]``; applied at :meth:`commit`."""
        removed = np.asarray(removed, dtype=np.int64)
        put_ids = np.asarray(put_ids, dtype=np.int64)
        put_slots = np.asarray(put_slots, dtype=np.int64)
        self.owner[np.asarray(removed_slots, dtype=np.int64)] = -1
        self.owner[put_slots] = put_ids
        self._index_ops.append((removed, put_ids, put_slots.astype(np.int32)))

    def swap_index(self, promoted, sw_from, sw_to, has_y):
        """Promotions: ``promoted[k]`` moves from ``sw_from[k]`` to device slot ``sw_to[k]``,
        whose row before (where ``has_y[k]``) moves to ``sw_from[k]``."""
        demoted = self.owner[sw_to[has_y]]
        self.retarget(demoted[:0], demoted[:0], np.concatenate([promoted, demoted]),
                      np.concatenate([sw_to, sw_from[has_y]]))
        self.owner[sw_from[~has_y]] = -1

    def clear(self):
        """Nothing resident: the index emptied at :meth:`commit`."""
        self.owner.fill(-1)
        self._index_ops.append(None)

    def commit(self):
        """Apply the buffered writes and index changes, between lookups."""
        if not self._writes and not self._index_ops:
            return
        slots = rows = None
        if self._writes:
            # later writes to a slot win
            slots, last = dedupe_last(np.concatenate([w[0] for w in self._writes]))
            rows = np.concatenate([w[1] for w in self._writes])[last]
        on_device = slots < self.device_rows if slots is not None else None
        with self.launch:
            if slots is not None:
                self.device[slots[on_device]] = rows[on_device]
                self.ram[slots[~on_device] - self.device_rows] = rows[~on_device]
            for op in self._index_ops:
                if op is None:
                    self._keys.fill(EMPTY)
                    self._vals.fill(-1)
                    self._meta[:] = 0
                else:
                    index_apply(self._keys, self._vals, self._bucket_log, self._meta, *op)
        self._writes = []
        self._index_ops = []

    def index_contents(self) -> dict[int, int]:
        """id -> slot as the index holds it (for tests and checks)."""
        used = self._keys != EMPTY
        return dict(zip(self._keys[used].tolist(), self._vals[used].tolist()))

    def index_host_bytes(self) -> int:
        return index_bytes(len(self.owner))

    def nbytes(self) -> int:
        """Bytes of both slabs and the index."""
        return self.device.nbytes + self.ram.nbytes + index_bytes(len(self.owner))
