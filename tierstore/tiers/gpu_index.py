"""The index of both memory tiers on the GPU: id -> physical slot, probed without the host.

An open-addressing table of 8-byte keys and 4-byte slots, its size the smallest
power of two that keeps it at most 3/4 full when the tiers are (so 16 to 32 bytes
of GPU memory a cached row), never sized by the store's ``num_rows``.
The host keeps a mirror with the same layout (:mod:`..kernels.slot_index`),
changed by the planner's batches of residency changes; only the buckets a
batch wrote travel to the GPU, in one copy and one ``index_copy_`` per array
(:meth:`GpuIndex.changes` / :meth:`GpuIndex.load`), ordered on the tier's
stream between the lookups that probe it.

:func:`probe` is the torch-ops probe (any device; CPU tensors in the tests):
``max_shift + 1`` rounds of linear probing, a bound the host tracks, so it
never asks the GPU how far to go. On CUDA the fused Triton kernel
(:mod:`.triton_lookup`) probes the same table.
"""
from __future__ import annotations

import numpy as np

from ..kernels.hashing import table_size
from ..kernels.slot_index import EMPTY, LOG_LEN, MAX_SHIFT, META_SIZE, index_apply, index_get

# splitmix64's finalizer constants (kernels/hashing.py) as signed int64: torch has no uint64
# arithmetic, but two's-complement products and xors are the same bits
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
LOAD = 0.75      # most keys a bucket: 32 bytes a cached row at most, probes still short


def _shift_right(z, bits: int):
    """Logical right shift of int64 tensors (torch's ``>>`` is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(ids):
    """``kernels.hashing.mix64(id, 0)`` of an int64 tensor, bit for bit, as int64."""
    z = ids
    z = (z ^ _shift_right(z, 30)) * _M1
    z = (z ^ _shift_right(z, 27)) * _M2
    return z ^ _shift_right(z, 31)


def probe(keys, vals, ids, rounds: int):
    """Slots (int32) of int64 ``ids`` in the table ``keys``/``vals``; -1 where absent."""
    import torch

    mask = len(keys) - 1
    home = mix64(ids) & mask
    slots = torch.full(ids.shape, -1, dtype=torch.int32, device=ids.device)
    searching = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    for r in range(rounds):
        pos = (home + r) & mask
        key = keys[pos]
        found = searching & (key == ids)
        slots = torch.where(found, vals[pos], slots)
        searching &= ~found & (key != EMPTY)
    return slots


class GpuIndex:
    """The host mirror and the device copy of the memory tiers' index."""

    def __init__(self, memory_rows: int, device, torch):
        size = table_size(memory_rows, LOAD)
        self.keys = np.full(size, EMPTY, dtype=np.int64)
        self.vals = np.full(size, -1, dtype=np.int32)
        self.meta = np.zeros(META_SIZE, dtype=np.int64)
        self.log = np.empty(max(1024, size // 4), dtype=np.int64)
        self.owner = np.full(memory_rows, -1, dtype=np.int64)   # slot -> id (host only)
        self._full = True                 # the device copy needs the whole table
        with torch.inference_mode(False):
            self.dev_keys = torch.full((size,), EMPTY, dtype=torch.int64, device=device)
            self.dev_vals = torch.full((size,), -1, dtype=torch.int32, device=device)

    @property
    def rounds(self) -> int:
        """Probe rounds that find every key: its largest distance from home, plus one."""
        return int(self.meta[MAX_SHIFT]) + 1

    def apply(self, removed: np.ndarray, put_ids: np.ndarray, put_slots: np.ndarray):
        """Remove ``removed``, then map ``put_ids`` to ``put_slots`` (in the mirror)."""
        index_apply(self.keys, self.vals, self.log, self.meta, np.asarray(removed, dtype=np.int64),
                    np.asarray(put_ids, dtype=np.int64), np.asarray(put_slots, dtype=np.int32))

    def retarget(self, removed: np.ndarray, removed_slots: np.ndarray, put_ids: np.ndarray,
                 put_slots: np.ndarray):
        """A round's moves: ``removed`` ids leave their ``removed_slots``, then ``put_ids[k]``
        sits in ``put_slots[k]`` (admitted, or moved)."""
        self.apply(removed, put_ids, put_slots)
        self.owner[removed_slots] = -1
        self.owner[put_slots] = put_ids

    def swap(self, promoted, sw_from, sw_to, has_y):
        """Promotions: ``promoted[k]`` moves from ``sw_from[k]`` to device slot ``sw_to[k]``,
        whose id before (where ``has_y[k]``) moves to ``sw_from[k]``; the other ``sw_from``
        slots are left empty."""
        demoted = self.owner[sw_to[has_y]]
        self.retarget(demoted[:0], demoted[:0], np.concatenate([promoted, demoted]),
                      np.concatenate([sw_to, sw_from[has_y]]))
        self.owner[sw_from[~has_y]] = -1

    def clear(self):
        self.keys.fill(EMPTY)
        self.vals.fill(-1)
        self.owner.fill(-1)
        self.meta[:] = 0
        self._full = True

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The mirror's slots of ``ids`` (int64; -1 where absent)."""
        out = np.empty(len(ids), dtype=np.int64)
        index_get(self.keys, self.vals, np.asarray(ids, dtype=np.int64), out)
        return out

    def contents(self) -> dict[int, int]:
        """id -> slot of every key in the mirror (for tests and checks)."""
        used = self.keys != EMPTY
        return dict(zip(self.keys[used].tolist(), self.vals[used].tolist()))

    def changes(self):
        """``(positions, keys, vals)`` of the buckets written since the last call, or
        ``(None, keys, vals)`` when the whole table must go; the log restarts."""
        n = int(self.meta[LOG_LEN])
        self.meta[LOG_LEN] = 0
        if self._full or n > len(self.log) or n > len(self.keys) // 2:
            self._full = False
            return None, self.keys, self.vals
        pos = np.unique(self.log[:n])
        return pos, self.keys[pos], self.vals[pos]

    def load(self, positions, keys, vals):
        """Write :meth:`changes` (as tensors on the index's device) into the device copy,
        on the current stream."""
        if positions is None:
            self.dev_keys.copy_(keys)
            self.dev_vals.copy_(vals)
        else:
            self.dev_keys.index_copy_(0, positions, keys)
            self.dev_vals.index_copy_(0, positions, vals)

    def probe(self, ids):
        """Slots of an int64 tensor of ids on the index's device, with torch ops."""
        return probe(self.dev_keys, self.dev_vals, ids, self.rounds)

    def host_nbytes(self) -> int:
        """Bytes of the host mirror, its bucket log and ``owner``."""
        return self.keys.nbytes + self.vals.nbytes + self.log.nbytes + self.owner.nbytes

    def nbytes(self) -> int:
        """Bytes of GPU memory (the host mirror holds as many, and 8 a slot for ``owner``)."""
        return self.dev_keys.numel() * 8 + self.dev_vals.numel() * 4
