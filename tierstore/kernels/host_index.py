"""The host tier's index of its slabs: id -> physical slot, in 4-byte buckets over ``owner``.

``owner[slot]`` is the id whose row the slot holds (-1: none). A bucket holds the slot in its
low ``slot_bits`` bits (enough for every slot) and, above them, a tag: as many of the key's
hash bits as the rest of 31 bits takes, so a probe passes over most buckets of other keys
without reading ``owner`` (each read of it is a cache miss in a large store); a bucket whose
tag matches is the key's when ``owner`` at its slot says so. Open addressing, linear probing,
backward-shift deletion, ``-1`` in empty buckets, at most ``load`` full and sized to the
capacity (the home bucket is the hash scaled onto the table, as in :mod:`.entry_map`), so an
indexed cached row costs 8 bytes of ``owner`` and ``4 / load`` of buckets, never a number that
follows the store's rows.

``owner`` and the buckets change together, only here: a key leaves the map while ``owner``
still names it at its slot (deletion rehashes the keys it shifts back, read through
``owner``), and a slot is named for its new id just before the id enters.
"""
import numpy as np
from numba import njit

from ..errors import ConfigError
from .cache_hint import prefetch, prefetch_row
from .hashing import fills_hole, mix64

EMPTY = -1
AHEAD = 8   # ids between the one whose lines are asked for and the one being copied
WINDOW = 4  # buckets a lookup's probe reads with no branch between them


def index_buckets(slots: int, load: float) -> int:
    """Buckets of the index of ``slots`` slots, at most ``load`` full."""
    return max(2, int(slots / load) + 1)


def new_host_index(slots: int, load: float):
    """Empty buckets and ``owner`` of an index of ``slots`` slots (< 2**31)."""
    if slots >= 1 << 31:
        raise ConfigError(f"the memory tiers hold fewer than 2**31 rows, not {slots}: "
                          "lower device_rows/ram_rows")
    return (np.full(index_buckets(slots, load), EMPTY, dtype=np.int32),
            np.full(max(1, slots), -1, dtype=np.int64))


def index_slots(buckets: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The slots the buckets hold, in bucket order (for tests and checks)."""
    bits = max(1, (len(owner) - 1).bit_length())
    return buckets[buckets != EMPTY].astype(np.int64) & ((1 << bits) - 1)


@njit(cache=True, inline="always", _nrt=False)
def _bits(owner):
    n = len(owner) - 1
    bits = 1
    while (n >> bits) > 0:
        bits += 1
    return bits


@njit(cache=True, inline="always", _nrt=False)
def _home_and_tag(size, bits, key):
    """The key's home bucket (its hash's top 32 bits scaled onto the table) and its tag (the
    hash's low ``31 - bits`` bits, above the slot)."""
    h = mix64(key, 0)
    home = np.int64(((h >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))
    tag = np.int64(h & np.uint64((1 << (31 - bits)) - 1)) << bits
    return home, tag


@njit(cache=True, inline="always", _nrt=False)
def _find(buckets, owner, bits, key):
    """The bucket of ``key``, or -1."""
    size = len(buckets)
    i, tag = _home_and_tag(size, bits, key)
    slot_mask = (1 << bits) - 1
    tag_mask = ~slot_mask
    while buckets[i] != EMPTY:
        b = np.int64(buckets[i])
        if (b & tag_mask) == tag and owner[b & slot_mask] == key:
            return i
        i += 1
        if i == size:
            i = 0
    return np.int64(-1)


@njit(cache=True, inline="always", _nrt=False)
def _candidate(buckets, slot_mask, i, tag):
    """The slot in the first bucket from ``i`` on whose tag is ``tag`` (``owner`` unread), or
    -1 where an empty bucket comes first. The first ``WINDOW`` buckets are read and compared
    with no branch between them: in a lookup's batch most ids sit in their home bucket and
    many a few buckets on (at 55k slots, 2/3 of a Zipf batch's ids at home, 1/6 one to three
    buckets on), so a loop that stops at the match takes an unpredictable branch for a third
    of them; inside the store's resident lookups the first pass took about 0.7 of its time
    with a window of 4 (one of 8 was no faster). Beyond the window, or where it would wrap,
    bucket by bucket."""
    size = len(buckets)
    if i + WINDOW <= size:
        match = WINDOW
        empty = WINDOW
        for j in range(WINDOW - 1, -1, -1):
            b = np.int64(buckets[i + j])
            if b == EMPTY:
                empty = j
            if (b & ~slot_mask) == tag:
                match = j
        if match < empty:
            return np.int64(buckets[i + match]) & slot_mask
        if empty < match:
            return np.int64(-1)
        i += WINDOW      # a full window, no tag matching (an empty bucket matches none)
        if i == size:
            i = 0
    while buckets[i] != EMPTY:
        b = np.int64(buckets[i])
        if (b & ~slot_mask) == tag:
            return b & slot_mask
        i += 1
        if i == size:
            i = 0
    return np.int64(-1)


@njit(cache=True, _nrt=False)
def _delete_bucket(buckets, owner, bits, i):
    """Empty bucket ``i``; shift later members of its run back so no tombstones pile up."""
    size = len(buckets)
    slot_mask = (1 << bits) - 1
    j = i
    while True:
        j += 1
        if j == size:
            j = 0
        if buckets[j] == EMPTY:
            break
        home, _ = _home_and_tag(size, bits, owner[buckets[j] & slot_mask])
        if fills_hole(i, j, home):
            buckets[i] = buckets[j]
            i = j
    buckets[i] = EMPTY


@njit(cache=True, _nrt=False)
def _vacate(buckets, owner, bits, slot):
    """The slot's id, if any, leaves the map and the slot."""
    key = owner[slot]
    if key >= 0:
        i = _find(buckets, owner, bits, key)
        if i >= 0:
            _delete_bucket(buckets, owner, bits, i)
        owner[slot] = -1


@njit(cache=True, _nrt=False)
def _put(buckets, owner, bits, key, slot):
    """``key`` (absent) sits in ``slot`` (free) from now on."""
    size = len(buckets)
    i, tag = _home_and_tag(size, bits, key)
    while buckets[i] != EMPTY:
        i += 1
        if i == size:
            i = 0
    owner[slot] = key
    buckets[i] = np.int32(tag | slot)


@njit(cache=True, _nrt=False)
def _place(buckets, owner, bits, key, slot):
    """``key`` sits in ``slot`` from now on: it leaves its slot before, and the slot's id
    before (none, when the policy evicted it first) leaves the map."""
    i = _find(buckets, owner, bits, key)
    if i >= 0:
        before = buckets[i] & ((1 << bits) - 1)
        if before == slot:
            return
        _vacate(buckets, owner, bits, before)
    _vacate(buckets, owner, bits, slot)
    _put(buckets, owner, bits, key, slot)


@njit(nogil=True, cache=True, _nrt=False)
def index_retarget(buckets, owner, removed_slots, put_ids, put_slots):
    """The ids in ``removed_slots`` leave them, then ``put_ids[k]`` sits in
    ``put_slots[k]`` (admitted, or moved)."""
    bits = _bits(owner)
    for k in range(len(removed_slots)):
        _vacate(buckets, owner, bits, removed_slots[k])
    for k in range(len(put_ids)):
        _place(buckets, owner, bits, put_ids[k], put_slots[k])


@njit(nogil=True, cache=True, _nrt=False)
def index_swap(buckets, owner, promoted, sw_from, sw_to, has_y):
    """Promotions, pair by pair: ``promoted[k]`` moves from ``sw_from[k]`` to device slot
    ``sw_to[k]``, whose id before (where ``has_y[k]``) moves to ``sw_from[k]``; the other
    ``sw_from`` slots are left empty."""
    bits = _bits(owner)
    for k in range(len(promoted)):
        demoted = owner[sw_to[k]] if has_y[k] else np.int64(-1)
        _vacate(buckets, owner, bits, sw_from[k])
        _vacate(buckets, owner, bits, sw_to[k])
        _put(buckets, owner, bits, promoted[k], sw_to[k])
        if demoted >= 0:
            _put(buckets, owner, bits, demoted, sw_from[k])


@njit(nogil=True, cache=True, _nrt=False)
def index_gather(buckets, owner, slab, ids, out, missed, kept):
    """A lookup on the host through the index: ``out[k]`` = the row of ``ids[k]`` from the
    slab of both tiers (row ``slot``; rows as words, see ``tiers.memory.words``); the
    positions ``k`` of ids in neither go to ``missed`` (their rows left alone). Returns how
    many missed. ``kept`` receives a copy of ``ids`` (the access log's) as they are read.

    Two passes: the first probes only the buckets (``_candidate``) and keeps each id's first
    slot of a matching tag in ``missed``; the second checks it against ``owner`` (a tag shared
    with another key sends that id back to a full probe) and copies the row. The iterations of
    a pass then do not wait on each other's cache misses, where in one pass each id's read of
    ``owner`` and of its row held up the next id's probe. In each pass the lines an id will read are asked
    for ``AHEAD`` ids before it (``cache_hint``): its home bucket in the first pass, its
    ``owner`` and its row in the second. Against the one-pass form it replaced (each id probed
    with a loop, checked and copied before the next; ``tools/bench_host_index.py``): 1.06x
    its speed at 55k slots, 1.25x at 262k, 1.5x at 1M with the index and rows in the caches,
    1.2x to 1.4x with 64 MB written between batches, as the planner's rounds and the caller's
    own work do between a store's lookups (``--between 64``)."""
    bits = _bits(owner)
    slot_mask = (1 << bits) - 1
    size = len(buckets)
    n = len(ids)
    for k in range(n):
        if k + AHEAD < n:
            prefetch(buckets, _home_and_tag(size, bits, ids[k + AHEAD])[0])
        key = ids[k]
        kept[k] = key
        i, tag = _home_and_tag(size, bits, key)
        missed[k] = _candidate(buckets, slot_mask, i, tag)
    # missed[k] is read before missed[n_missed] (n_missed <= k) is written
    n_missed = 0
    for k in range(n):
        if k + AHEAD < n:
            ahead = missed[k + AHEAD]
            if ahead >= 0:
                prefetch(owner, ahead)
                prefetch_row(slab, ahead)
        slot = missed[k]
        if slot >= 0 and owner[slot] != ids[k]:
            slot = -1
            i = _find(buckets, owner, bits, ids[k])
            if i >= 0:
                slot = buckets[i] & slot_mask
        if slot < 0:
            missed[n_missed] = k
            n_missed += 1
        else:
            for w in range(out.shape[1]):
                out[k, w] = slab[slot, w]
    return n_missed
