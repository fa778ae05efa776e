"""The index of both memory tiers on the GPU: id -> physical slot, probed without the host.

An open-addressing table of 8-byte keys and 4-byte slots, its size the smallest
power of two that keeps it at most 3/4 full when the tiers are (so 16 to 32 bytes
of GPU memory a cached row), never sized by the store's ``num_rows``.
The host keeps a mirror of it without the keys (:mod:`..kernels.slot_index`: the
slots' array, the GPU's bit for bit, and each slot's home bucket; 11.3 to 15.2 bytes a
cached row with the map and bits of a round), changed by the planner's batches of
residency changes; only the buckets a batch wrote travel to the GPU, in one copy
(:meth:`GpuIndex.changes` / :meth:`GpuIndex.load`), ordered on the tier's stream
between the lookups that probe it. A written bucket's key is sent where the host
has it (an id the batch placed), else taken on the GPU from the bucket that held it
before the batch (a key only moved).

:func:`probe` is the torch-ops probe (any device; CPU tensors in the tests):
``max_shift + 1`` rounds of linear probing, a bound the host tracks, so it
never asks the GPU how far to go. On CUDA the fused Triton kernel
(:mod:`.triton_lookup`) probes the same table.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.hashing import table_size
from ..kernels.slot_index import (DIRTY, EMPTY, LIVE, MAX_SHIFT, META_SIZE, ROOM, index_changes,
                                  index_homes, index_retarget, index_swap, journal_grow)
from ..kernels.slotmap import new_slotmap

# splitmix64's finalizer constants (kernels/hashing.py) as signed int64: torch has no uint64
# arithmetic, but two's-complement products and xors are the same bits
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
LOAD = 0.75      # most keys a bucket: 32 bytes a cached row at most, probes still short
# the identities a round of changes can hold before its map grows (kernels/slot_index.py), a
# share of the slots: a 60k-id round of a 6.4M-row store fits (0.33 bytes a cached row)
JOURNAL_SHARE = 1 / 64
JOURNAL_MIN = 1024


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
    """The host mirror and the device copy of the memory tiers' index.

    Keys are row ids (>= 0). ``retarget`` puts only ids not in the index (admitted); an id
    in it moves by ``swap``."""

    def __init__(self, memory_rows: int, device, torch):
        size = table_size(memory_rows, LOAD)
        if size > 1 << 31:
            raise ConfigError(f"the memory tiers hold at most 1,610,612,736 rows on a GPU, not "
                              f"{memory_rows}: lower device_rows/ram_rows")
        self.size = size
        self.vals = np.full(size, EMPTY, dtype=np.int32)              # bucket -> slot
        self.home = np.full(max(1, memory_rows), -1, dtype=np.int32)  # slot -> its id's home
        self.dirty = np.zeros((size + 63) // 64, dtype=np.uint64)     # buckets written
        self.meta = np.zeros(META_SIZE, dtype=np.int64)
        self._journal_min = max(JOURNAL_MIN, int(memory_rows * JOURNAL_SHARE))
        self._new_journal(self._journal_min)
        self._cleared = False             # the device copy must be emptied first
        self._torch = torch
        with torch.inference_mode(False):
            self.dev_keys = torch.full((size,), EMPTY, dtype=torch.int64, device=device)
            self.dev_vals = torch.full((size,), -1, dtype=torch.int32, device=device)

    def _new_journal(self, room: int):
        self.jkeys, self.jvals = new_slotmap(room, np.int64)
        self.meta[ROOM] = room
        self.meta[LIVE] = 0

    def _grow_journal(self):
        keys, vals = self.jkeys, self.jvals
        self._new_journal(2 * int(self.meta[ROOM]))
        journal_grow(keys, vals, self.jkeys, self.jvals)
        self.meta[LIVE] = int(np.count_nonzero(self.jkeys != EMPTY))

    def _until_done(self, kernel, total: int, *args):
        """Run a kernel of changes to the end, growing the round's identity map whenever the
        kernel stops for room."""
        done = 0
        while True:
            done = kernel(self.vals, self.home, self.dirty, self.jkeys, self.jvals, self.meta,
                          *args, done)
            if done == total:
                return
            self._grow_journal()

    @property
    def rounds(self) -> int:
        """Probe rounds that find every key: its largest distance from home, plus one."""
        return int(self.meta[MAX_SHIFT]) + 1

    def retarget(self, removed: np.ndarray, removed_slots: np.ndarray, put_ids: np.ndarray,
                 put_slots: np.ndarray):
        """A round's moves: ``removed`` ids leave their ``removed_slots``, then ``put_ids[k]``
        (admitted: not in the index) sits in ``put_slots[k]``, whose id before leaves."""
        removed_slots = np.asarray(removed_slots, dtype=np.int64)
        put_ids = np.asarray(put_ids, dtype=np.int64)
        self._until_done(index_retarget, len(removed_slots) + len(put_ids), removed_slots,
                         put_ids, np.asarray(put_slots, dtype=np.int64))

    def swap(self, promoted, sw_from, sw_to, has_y):
        """Promotions: ``promoted[k]`` moves from ``sw_from[k]`` to device slot ``sw_to[k]``,
        whose id before (where ``has_y[k]``) moves to ``sw_from[k]``; the other ``sw_from``
        slots are left empty. The ids stay in their buckets (the mirror knows them by slot)."""
        sw_from = np.asarray(sw_from, dtype=np.int64)
        self._until_done(index_swap, len(sw_from), sw_from, np.asarray(sw_to, dtype=np.int64),
                         np.asarray(has_y, dtype=np.bool_))

    def clear(self):
        self.vals.fill(EMPTY)
        self.home.fill(-1)
        self.dirty.fill(0)
        self.meta[MAX_SHIFT] = self.meta[DIRTY] = 0
        self._new_journal(self._journal_min)
        self._cleared = True

    def homes(self, ids: np.ndarray) -> np.ndarray:
        """The home buckets of ``ids`` (int64) in this table."""
        out = np.empty(len(ids), dtype=np.int64)
        index_homes(self.size - 1, np.asarray(ids, dtype=np.int64), out)
        return out

    def placements(self) -> dict[int, int]:
        """slot -> home bucket of its id, for every slot in the mirror (for tests and checks:
        with the ids, ``{slot: homes(id)}`` of the resident rows)."""
        slots = self.vals[self.vals != EMPTY].astype(np.int64)
        return dict(zip(slots.tolist(), self.home[slots].tolist()))

    def changes(self):
        """``(cleared, positions, keys, vals)``: whether the device copy must be emptied
        first, then the buckets written since the last call, their slots and their keys (an
        id, -1 where empty, or ``-2 - bucket``: the key the device copy holds in ``bucket``,
        which :meth:`load` reads before it writes). The round starts again."""
        n = int(self.meta[DIRTY])
        positions = np.empty(n, dtype=np.int64)
        keys = np.empty(n, dtype=np.int64)
        vals = np.empty(n, dtype=np.int32)
        n = index_changes(self.vals, self.dirty, self.jkeys, self.jvals, positions, keys, vals)
        self.meta[DIRTY] = 0
        if self.meta[ROOM] > self._journal_min:     # a large round's map: back to the usual
            self._new_journal(self._journal_min)
        else:
            self.jkeys.fill(EMPTY)
            self.meta[LIVE] = 0
        cleared, self._cleared = self._cleared, False
        return cleared, positions[:n], keys[:n], vals[:n]

    def load(self, cleared, positions, keys, vals):
        """Write :meth:`changes` (as tensors on the index's device) into the device copy, on
        the current stream."""
        if cleared:
            self.dev_keys.fill_(EMPTY)
            self.dev_vals.fill_(-1)
        if not len(positions):
            return
        # keys only moved are read where the device copy holds them, before any is written
        before = self.dev_keys[(-2 - keys).clamp(min=0)]
        keys = self._torch.where(keys < EMPTY, before, keys)
        self.dev_keys.index_copy_(0, positions, keys)
        self.dev_vals.index_copy_(0, positions, vals)

    def probe(self, ids):
        """Slots of an int64 tensor of ids on the index's device, with torch ops."""
        return probe(self.dev_keys, self.dev_vals, ids, self.rounds)

    def host_nbytes(self) -> int:
        """Bytes of the host mirror: the slots' array, each slot's home, the dirty bits and
        the round's identity map."""
        return (self.vals.nbytes + self.home.nbytes + self.dirty.nbytes + self.meta.nbytes
                + self.jkeys.nbytes + self.jvals.nbytes)

    def nbytes(self) -> int:
        """Bytes of GPU memory."""
        return self.dev_keys.numel() * 8 + self.dev_vals.numel() * 4
