"""The device and RAM tiers on the host: fixed-capacity slabs addressed by physical slot, and an
index of both, so that a lookup of resident rows needs neither the store's lock nor the policy.

Physical slots ``[0, device_rows)`` lie in the device slab, the rest in the
RAM slab. On ``device="cpu"`` both slabs are views of one numpy array. The tier serves
lookups both ways of :mod:`.base`: driven by the store's slots (``gather``, for
small lookups planned at once), or by id through its own index
(``issue``: one numba pass that probes the index and copies each row into
the output, as the CUDA tier's kernel does; see ``kernels.host_index``).

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
from ..kernels.host_index import (EMPTY, index_buckets, index_gather, index_retarget, index_slots,
                                  index_swap, new_host_index)
from .base import DeviceLookupTier, HostLookupTier, MissedRows

# the index at most 0.6 full (buckets sized to the capacity, not a power of two): 6.7 bytes of
# buckets and 8 of ``owner`` a cached row. The probe and copy of 65,536-id Zipf batches against
# the key-and-slot table this replaced (a power of two at most 3/4 full, 28 to 40 bytes a row;
# tools/bench_host_index.py): at 3/4 load 0.90-0.93 of its speed at 55k slots and 0.77-0.97 at
# 5M; at 0.6 load 0.93-1.07 at 55k (one pass), 1.10-1.19 at 262k, 1.09-1.25 at 1M and
# 0.90-1.22 at 5M (two passes)
INDEX_LOAD = 0.6


def words(rows: np.ndarray) -> np.ndarray:
    """``rows`` as a 2-D array of the widest unsigned words that tile a row."""
    row_bytes = rows.shape[1] * rows.dtype.itemsize
    for word in (np.uint64, np.uint32, np.uint16, np.uint8):
        if row_bytes % np.dtype(word).itemsize == 0:
            return rows.view(word).reshape(len(rows), row_bytes // np.dtype(word).itemsize)


def index_bytes(slots: int) -> int:
    """Host bytes of the index of ``slots`` memory slots (the buckets and slot -> id)."""
    return index_buckets(slots, INDEX_LOAD) * 4 + max(1, slots) * 8


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
        # one slab, slot-addressed: the device tier its first rows, the RAM tier the rest (a
        # lookup's copy reads row ``slot`` without asking which tier holds it)
        self._slab = np.zeros((device_rows + ram_rows, dim), dtype=self.dtype)
        self.device = self._slab[:device_rows]
        self.ram = self._slab[device_rows:]
        # id -> slot (kernels.host_index): buckets of slots, keyed through slot -> id; both
        # as last committed
        self._buckets, self._owner = new_host_index(device_rows + ram_rows, INDEX_LOAD)
        self.launch = threading.Lock()   # a lookup's pass and a commit never interleave
        self._writes = []                # (slots, rows) buffered until commit
        self._index_ops = []             # (kernel, arguments...), or None for a clear

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
        flat = ids.reshape(-1)
        kept = np.empty_like(flat)        # the log outlives the call: not the caller's array
        out = np.empty((len(flat), self.dim), dtype=self.dtype)
        missed = np.empty(len(flat), dtype=np.int64)
        with self.launch:
            n_missed = index_gather(self._buckets, self._owner, words(self._slab), flat,
                                    words(out), missed, kept)
        return HostPending(out, tuple(ids.shape), kept, missed[:n_missed])

    def misses(self, pending: HostPending):
        """``(positions, ids)`` of the lookup's ids found in neither tier."""
        return pending.missed, pending.ids[pending.missed]

    def fill(self, pending: HostPending, missed: MissedRows):
        """Missed rows into the lookup's output (:meth:`DeviceLookupTier.fill`). Where every id
        missed (its positions, listed in order, are then 0..n-1), the gather of the rows makes
        the output itself: nothing is copied twice."""
        positions = missed.positions
        # np.take, not fancy indexing: 1.5 ms for 61,000 256-byte rows against 2 to 7
        rows = np.take(missed.rows, missed.which, axis=0)
        if len(positions) == len(pending.out) and (positions[1:] > positions[:-1]).all():
            pending.out = rows
        else:
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
        ``put_slots[k]``; applied at :meth:`commit` (the slots say which ids leave)."""
        self._index_ops.append((index_retarget, np.asarray(removed_slots, dtype=np.int64),
                                np.asarray(put_ids, dtype=np.int64),
                                np.asarray(put_slots, dtype=np.int64)))

    def swap_index(self, promoted, sw_from, sw_to, has_y):
        """Promotions: ``promoted[k]`` moves from ``sw_from[k]`` to device slot ``sw_to[k]``,
        whose row before (where ``has_y[k]``) moves to ``sw_from[k]``; applied at
        :meth:`commit`, which knows the demoted ids then."""
        self._index_ops.append((index_swap, np.asarray(promoted, dtype=np.int64),
                                np.asarray(sw_from, dtype=np.int64),
                                np.asarray(sw_to, dtype=np.int64), np.asarray(has_y, dtype=np.bool_)))

    def clear(self):
        """Nothing resident: the index emptied at :meth:`commit`."""
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
                    self._buckets.fill(EMPTY)
                    self._owner.fill(-1)
                else:
                    kernel, *args = op
                    kernel(self._buckets, self._owner, *args)
        self._writes = []
        self._index_ops = []

    def index_contents(self) -> dict[int, int]:
        """id -> slot as the index holds it (for tests and checks)."""
        slots = index_slots(self._buckets, self._owner)
        return dict(zip(self._owner[slots].tolist(), slots.tolist()))

    def index_host_bytes(self) -> int:
        return self._buckets.nbytes + self._owner.nbytes

    def nbytes(self) -> int:
        """Bytes of both slabs and the index."""
        return self.device.nbytes + self.ram.nbytes + self.index_host_bytes()
