"""The host mirror of the GPU's index of the memory tiers, without the ids.

The GPU probes a power-of-two table of int64 keys (ids) and int32 slots, each key's home at
``mix64(id) & mask``, linear probing (``tiers/gpu_index.py``). The host needs none of the
keys to keep that table: its mirror is the slots' array (``vals``, the GPU's bit for bit)
and, for each slot, the home bucket of the id it holds (``home``, -1 when free). That is all
backward-shift deletion (the homes of the keys after a hole) and the bound on the GPU's probe
rounds need, and a slot's bucket is found by probing from its home for the slot. So the
mirror costs 4 bytes a bucket and 4 a slot, where the keys and an id per slot took 12 and 8.

The GPU needs the keys of the buckets a round of changes wrote (``dirty``, a bit a bucket),
and they come from two places: an id the round admitted is given; a key it only moved
(shifted back by a deletion) or gave another slot (a promotion changes the slots beside two
keys and moves neither) is on the GPU already, in the bucket it held when the round began. So the round keeps, for each slot it placed, its
key's *identity* in a small map (``jkeys``/``jvals``, slot -> identity, :mod:`.slotmap`): the
id (>= 0: row ids are), or ``-2 - bucket``, the bucket that holds the key on the GPU. A slot
whose bucket the round has not written still holds the key it held when the round began
(every write of a bucket records its slot's identity), so its first move records
``-2 - bucket``. Between rounds the map is empty; the caller sizes it for a usual round.

A change that might add more identities than the map has room for is left for the caller,
who grows the map (:func:`journal_grow`) and calls again from it: each kernel returns how
many of its changes it made.

``meta``: ``[MAX_SHIFT]`` an upper bound on any key's distance from its home bucket (inserts
raise it; backward shifts only shorten distances), which caps the GPU's probe rounds;
``[DIRTY]`` buckets written since the last :func:`index_changes`; ``[LIVE]`` identities in
the map; ``[ROOM]`` how many it may hold (3/4 of its buckets).
"""
import numpy as np
from numba import njit

from .hashing import fills_hole, mix64
from .slotmap import slotmap_get, slotmap_put

EMPTY = -1
MAX_SHIFT, DIRTY, LIVE, ROOM = 0, 1, 2, 3
META_SIZE = 4


@njit(cache=True, inline="always", _nrt=False)
def home_of(mask, key):
    return np.int64(mix64(key, 0) & np.uint64(mask))


@njit(nogil=True, cache=True, _nrt=False)
def index_homes(mask, ids, out):
    """``out[k]`` = the home bucket of ``ids[k]`` in a table of ``mask + 1`` buckets."""
    for k in range(len(ids)):
        out[k] = home_of(mask, ids[k])


@njit(cache=True, inline="always", _nrt=False)
def _is_dirty(dirty, i):
    return (dirty[i >> 6] >> np.uint64(i & 63)) & np.uint64(1) != 0


@njit(cache=True, inline="always", _nrt=False)
def _write(vals, dirty, meta, i, slot):
    vals[i] = slot
    if not _is_dirty(dirty, i):
        dirty[i >> 6] |= np.uint64(1) << np.uint64(i & 63)
        meta[DIRTY] += 1


@njit(cache=True, inline="always", _nrt=False)
def _record(jkeys, jvals, meta, slot, identity):
    if slotmap_get(jkeys, jvals, slot) == -1:      # identities are never -1
        meta[LIVE] += 1
    slotmap_put(jkeys, jvals, slot, identity)


@njit(cache=True, inline="always", _nrt=False)
def _identity(vals, dirty, jkeys, jvals, i):
    """The identity of the key in bucket ``i`` (occupied)."""
    if _is_dirty(dirty, i):
        return slotmap_get(jkeys, jvals, vals[i])
    return np.int64(-2 - i)


@njit(cache=True, _nrt=False)
def _find(vals, home, slot):
    """The bucket holding ``slot`` (-1 when the slot is free)."""
    if home[slot] < 0:
        return np.int64(-1)
    mask = len(vals) - 1
    i = np.int64(home[slot])
    while vals[i] != slot:
        i = (i + 1) & mask
    return i


@njit(cache=True, _nrt=False)
def _run_after(vals, i):
    """Occupied buckets after ``i`` up to the first empty one: the most keys a deletion at
    ``i`` shifts back (0 for ``i`` = -1)."""
    if i < 0:
        return np.int64(0)
    mask = len(vals) - 1
    n = np.int64(0)
    j = (i + 1) & mask
    while vals[j] != EMPTY:
        n += 1
        j = (j + 1) & mask
    return n


@njit(cache=True, _nrt=False)
def _vacate(vals, home, dirty, jkeys, jvals, meta, slot):
    """The slot's key, if any, leaves the table; later keys of its run shift back."""
    i = _find(vals, home, slot)
    if i < 0:
        return
    mask = len(vals) - 1
    j = i
    while True:
        j = (j + 1) & mask
        moving = vals[j]
        if moving == EMPTY:
            break
        if fills_hole(i, j, np.int64(home[moving])):
            if not _is_dirty(dirty, j):     # still where the round found it: so on the GPU
                _record(jkeys, jvals, meta, moving, -2 - j)
            _write(vals, dirty, meta, i, moving)
            i = j
    _write(vals, dirty, meta, i, EMPTY)
    home[slot] = -1


@njit(cache=True, _nrt=False)
def _put(vals, home, dirty, jkeys, jvals, meta, h, slot, identity):
    """The key of home ``h`` and ``identity`` sits in ``slot`` (free) from now on."""
    mask = len(vals) - 1
    i = h
    shift = 0
    while vals[i] != EMPTY:
        i = (i + 1) & mask
        shift += 1
    _write(vals, dirty, meta, i, slot)
    home[slot] = h
    _record(jkeys, jvals, meta, slot, identity)
    if shift > meta[MAX_SHIFT]:
        meta[MAX_SHIFT] = shift


@njit(nogil=True, cache=True, _nrt=False)
def index_retarget(vals, home, dirty, jkeys, jvals, meta, removed_slots, put_ids, put_slots,
                   start):
    """Changes ``start`` on: the keys in ``removed_slots`` leave, then ``put_ids[k]`` (not in
    the table) sits in ``put_slots[k]``, whose key before, if any, leaves. Returns how many
    changes are made, removals first (all of them, unless the identity map is full)."""
    mask = len(vals) - 1
    n_removed = len(removed_slots)
    n = n_removed + len(put_ids)
    for k in range(start, n):
        slot = removed_slots[k] if k < n_removed else put_slots[k - n_removed]
        need = _run_after(vals, _find(vals, home, slot)) + 1
        if meta[LIVE] + need > meta[ROOM]:
            return k
        _vacate(vals, home, dirty, jkeys, jvals, meta, slot)
        if k >= n_removed:
            key = put_ids[k - n_removed]
            _put(vals, home, dirty, jkeys, jvals, meta, home_of(mask, key), slot, key)
    return n


@njit(cache=True, inline="always", _nrt=False)
def _relabel(vals, home, dirty, jkeys, jvals, meta, i, slot, h, identity):
    """Bucket ``i``'s key (of home ``h`` and ``identity``) is in ``slot`` from now on."""
    _write(vals, dirty, meta, i, slot)
    home[slot] = h
    _record(jkeys, jvals, meta, slot, identity)


@njit(nogil=True, cache=True, _nrt=False)
def index_swap(vals, home, dirty, jkeys, jvals, meta, sw_from, sw_to, has_y, start):
    """Promotions from pair ``start`` on: the key in slot ``sw_from[k]`` moves to slot
    ``sw_to[k]``, whose key before (where ``has_y[k]``) moves to ``sw_from[k]``; the other
    ``sw_from`` slots are left empty. Keys stay in their buckets: only the slots beside them
    change (two buckets a pair, as in a table of keys and slots). Returns how many pairs are
    done."""
    for k in range(start, len(sw_from)):
        f, t = sw_from[k], sw_to[k]
        at_t = _find(vals, home, t)
        need = 2 if has_y[k] and at_t >= 0 else _run_after(vals, at_t) + 1
        if meta[LIVE] + need > meta[ROOM]:
            return k
        if not (has_y[k] and at_t >= 0):
            _vacate(vals, home, dirty, jkeys, jvals, meta, t)     # free, unless told otherwise
            at_t = -1
        at_f = _find(vals, home, f)
        if at_f < 0:
            continue
        key_f, home_f = _identity(vals, dirty, jkeys, jvals, at_f), np.int64(home[f])
        home[f] = -1
        if at_t >= 0:
            key_t, home_t = _identity(vals, dirty, jkeys, jvals, at_t), np.int64(home[t])
            _relabel(vals, home, dirty, jkeys, jvals, meta, at_t, f, home_t, key_t)
        _relabel(vals, home, dirty, jkeys, jvals, meta, at_f, t, home_f, key_f)
    return len(sw_from)


@njit(nogil=True, cache=True, _nrt=False)
def index_changes(vals, dirty, jkeys, jvals, positions, keys, out_vals):
    """The buckets written since the last call, in bucket order: ``positions``, their slots
    (``out_vals``) and their keys' identities (``keys``: an id, -1 for an empty bucket, or
    ``-2 - bucket`` on the GPU); the dirty bits are cleared. Returns how many."""
    n = 0
    for w in range(len(dirty)):
        word = dirty[w]
        if word == 0:
            continue
        dirty[w] = 0
        for b in range(64):
            if (word >> np.uint64(b)) & np.uint64(1):
                i = w * 64 + b
                slot = vals[i]
                positions[n] = i
                out_vals[n] = slot
                keys[n] = EMPTY if slot == EMPTY else slotmap_get(jkeys, jvals, slot)
                n += 1
    return n


@njit(nogil=True, cache=True, _nrt=False)
def journal_grow(jkeys, jvals, new_keys, new_vals):
    """The identities of one map put into a larger one."""
    for i in range(len(jkeys)):
        if jkeys[i] != EMPTY:
            slotmap_put(new_keys, new_vals, jkeys[i], jvals[i])
