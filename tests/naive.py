"""Slow, obvious reference implementations of tierstore's numba kernels.

Every function here is written for clarity, not speed: plain Python loops,
Python ints with explicit 64-bit masking, ``dict``/``OrderedDict`` caches.
The tests in ``test_kernels.py`` and ``test_policy_reference.py`` compare the
kernels against these, in the manner of stumpy's ``tests/naive.py``.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB


# --------------------------------------------------------------------------- hashing


def mix64(key: int, seed: int) -> int:
    """splitmix64's finalizer of ``key + seed * golden``, all arithmetic mod 2**64."""
    z = (int(key) + int(seed) * GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * M1) & MASK64
    z = ((z ^ (z >> 27)) * M2) & MASK64
    return z ^ (z >> 31)


def partition_of(ids, parts: int):
    return np.array([mix64(int(i), 3) % parts for i in ids], dtype=np.int64)


def table_size(n: int, load: float = 0.5, minimum: int = 8) -> int:
    size = minimum
    while size * load < n:
        size *= 2
    return size


def home(key: int, size: int) -> int:
    """The bucket a slot map of ``size`` buckets starts probing ``key`` at."""
    return mix64(key, 0) & (size - 1)


# --------------------------------------------------------------------------- slot map


def slotmap_contents(keys: np.ndarray, vals: np.ndarray) -> dict[int, int]:
    """The mapping an open-addressing table holds (keys == -1 mark empty buckets)."""
    return {int(k): int(v) for k, v in zip(keys, vals) if k != -1}


def entry_map_home(key: int, size: int) -> int:
    """The bucket an entry map (kernels/entry_map.py) of ``size`` buckets starts probing at:
    the hash's top 32 bits scaled onto the table."""
    return ((mix64(key, 0) >> 32) * size) >> 32


def entry_map_contents(buckets: np.ndarray, ids: np.ndarray) -> dict[int, int]:
    """key -> index of an entry map whose keys live in ``ids``."""
    return {int(ids[b]): int(b) for b in buckets if b != -1}


def slotmap_problems(keys: np.ndarray, home=home) -> list[str]:
    """Structural faults of a linear-probing table; empty when it is sound.

    Every key must be reachable from its home bucket without crossing an
    empty bucket (otherwise a lookup stops early), and no key may appear twice.
    ``home(key, size)``: where the table starts probing ``key``.
    """
    size = len(keys)
    problems = []
    present = [int(k) for k in keys if k != -1]
    if len(present) != len(set(present)):
        problems.append("duplicate key")
    for pos in range(size):
        k = int(keys[pos])
        if k == -1:
            continue
        i = home(k, size)
        while i != pos:
            if keys[i] == -1:
                problems.append(f"key {k} at {pos} unreachable from home {home(k, size)}")
                break
            i = (i + 1) % size
    return problems


class KeySlotTable:
    """The GPU's index as a plain table (tiers/gpu_index.py): ``keys`` (ids) and ``vals``
    (slots) in a power of two of buckets, linear probing from ``home``, backward-shift
    deletion, ``max_shift`` raised by inserts; changed the way ``GpuIndex`` is, by slot."""

    def __init__(self, size: int):
        self.keys = [-1] * size
        self.vals = [-1] * size
        self.owner: dict[int, int] = {}        # slot -> id
        self.max_shift = 0

    def _bucket_of(self, key: int) -> int:
        i = home(key, len(self.keys))
        while self.keys[i] != key:
            i = (i + 1) % len(self.keys)
        return i

    def vacate(self, slot: int):
        if slot not in self.owner:
            return
        size = len(self.keys)
        i = self._bucket_of(self.owner.pop(slot))
        j = i
        while True:
            j = (j + 1) % size
            if self.keys[j] == -1:
                break
            h = home(self.keys[j], size)
            # the key at j may fill the hole at i unless its home lies cyclically in (i, j]
            if (h - i - 1) % size >= (j - i) % size:
                self.keys[i], self.vals[i] = self.keys[j], self.vals[j]
                i = j
        self.keys[i], self.vals[i] = -1, -1

    def put(self, key: int, slot: int):
        self.vacate(slot)
        size = len(self.keys)
        i, shift = home(key, size), 0
        while self.keys[i] != -1:
            i, shift = (i + 1) % size, shift + 1
        self.keys[i], self.vals[i] = key, slot
        self.owner[slot] = key
        self.max_shift = max(self.max_shift, shift)

    def retarget(self, removed_slots, put_ids, put_slots):
        for slot in removed_slots:
            self.vacate(int(slot))
        for key, slot in zip(put_ids, put_slots):
            self.put(int(key), int(slot))

    def swap(self, promoted, sw_from, sw_to, has_y):
        """Promotions: keys stay in their buckets, the slots beside them change."""
        for key, f, t, y in zip(promoted, sw_from, sw_to, has_y):
            f, t = int(f), int(t)
            assert self.owner[f] == key
            if y and t in self.owner:
                bf, bt = self._bucket_of(key), self._bucket_of(self.owner[t])
                self.vals[bf], self.vals[bt] = t, f
                self.owner[f], self.owner[t] = self.owner[t], key
            else:
                self.vacate(t)
                self.vals[self._bucket_of(key)] = t
                self.owner[t] = self.owner.pop(f)


# --------------------------------------------------------------------------- sketch


class NaiveCountMin:
    """Count-min sketch, conservative update, 8-bit saturating counters, halving.

    Each key owns ``depth`` counters, given by ``positions(key)``. Two layouts:

    * ``"rows"``: a ``(depth, width)`` table; row ``d`` uses
      ``mix64(key, d + 1) & (width - 1)``.
    * ``"blocked"`` (Caffeine's cache-line sketch): a ``(blocks, 64)`` table;
      with ``h = mix64(key, 1)`` the key's block is ``h & (blocks - 1)`` and
      its counter of depth ``d`` is column ``16 d + ((h >> (32 + 8 d)) & 15)``.

    An increment raises only the key's counters that equal its current
    estimate (the minimum), saturating at 255. Once ``additions`` reaches
    ``sample_size`` every counter and ``additions`` are halved.
    """

    def __init__(self, shape, layout: str = "rows", additions: int = 0, sample_size: int = 160,
                 depth: int = 4):
        rows, cols = shape
        assert layout in ("rows", "blocked")
        assert rows & (rows - 1) == 0 and cols & (cols - 1) == 0
        if layout == "rows":
            assert rows == depth
        else:
            assert cols % depth == 0
        self.layout = layout
        self.depth = depth
        self.shape = (rows, cols)
        self.table = [[0] * cols for _ in range(rows)]
        self.additions = additions
        self.sample_size = sample_size
        self.halvings = 0

    def positions(self, key: int) -> list[tuple[int, int]]:
        rows, cols = self.shape
        if self.layout == "rows":
            return [(d, mix64(key, d + 1) & (cols - 1)) for d in range(self.depth)]
        h = mix64(key, 1)
        block = h & (rows - 1)
        per = cols // self.depth
        return [(block, d * per + ((h >> (32 + 8 * d)) & (per - 1))) for d in range(self.depth)]

    def estimate(self, key: int) -> int:
        return min([255] + [self.table[r][c] for r, c in self.positions(key)])

    def halve(self):
        self.table = [[c >> 1 for c in row] for row in self.table]
        self.additions //= 2
        self.halvings += 1

    def _raise(self, key: int):
        current = self.estimate(key)
        if current < 255:
            for r, c in self.positions(key):
                if self.table[r][c] == current:
                    self.table[r][c] = current + 1

    def increment(self, key: int):
        self._raise(key)
        self.additions += 1
        if self.additions >= self.sample_size:
            self.halve()

    def add(self, key: int, amount: int):
        """``amount`` conservative increments at once, then at most one halving."""
        for _ in range(amount):
            self._raise(key)
        self.additions += amount
        if self.additions >= self.sample_size:
            self.halve()

    def as_array(self) -> np.ndarray:
        return np.array(self.table, dtype=np.uint8).reshape(self.shape)


# --------------------------------------------------------------------------- batch


def first_out_of_range(ids, num_rows) -> int:
    for k, i in enumerate(ids):
        if not 0 <= i < num_rows:
            return k
    return -1


def dedupe(ids):
    """(unique ids in first-seen order, inverse, counts) with a dict."""
    order: dict[int, int] = {}
    inverse = []
    counts = []
    for i in ids:
        i = int(i)
        if i not in order:
            order[i] = len(order)
            counts.append(0)
        inverse.append(order[i])
        counts[order[i]] += 1
    return (np.array(list(order), dtype=np.int64), np.array(inverse, dtype=np.int64),
            np.array(counts, dtype=np.int64))


def dedupe_last(ids):
    """(unique ids in first-seen order, index of each one's last occurrence)."""
    last: dict[int, int] = {}
    for k, i in enumerate(ids):
        last[int(i)] = k  # a dict keeps first-insertion order when a value is updated
    return np.array(list(last), dtype=np.int64), np.array(list(last.values()), dtype=np.int64)


def gather_tiered(device, ram, device_rows, slots, out):
    out = out.copy()
    for k, s in enumerate(slots):
        if s < 0:
            continue
        out[k] = device[s] if s < device_rows else ram[s - device_rows]
    return out


def index_gather(contents, device, ram, device_rows, ids, out):
    """A lookup through an index (``contents``: id -> slot): the output and the missed
    positions."""
    out = out.copy()
    missed = []
    for k, key in enumerate(ids):
        s = contents.get(int(key), -1)
        if s < 0:
            missed.append(k)
        else:
            out[k] = device[s] if s < device_rows else ram[s - device_rows]
    return out, missed


def host_index_keys(buckets: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The key each bucket of a host index (kernels/host_index.py) holds, read through
    ``owner`` (-1 where empty); asserts each bucket's tag is its key's hash bits."""
    bits = max(1, (len(owner) - 1).bit_length())
    keys = np.full(len(buckets), -1, dtype=np.int64)
    for i, b in enumerate(buckets):
        if b != -1:
            keys[i] = owner[b % (1 << bits)]
            assert b >> bits == mix64(int(keys[i]), 0) % (1 << (31 - bits))
    return keys


def index_retarget(owner, removed_slots, put_ids, put_slots):
    """``owner`` (slot -> id, -1 free) after a host index's ``index_retarget``: the removed
    slots emptied, then each put id in its slot (leaving its slot before; the slot's id
    before leaving memory)."""
    owner = list(owner)
    for s in removed_slots:
        owner[s] = -1
    for key, s in zip(put_ids, put_slots):
        owner = [-1 if x == key else x for x in owner]
        owner[s] = int(key)
    return owner


def index_swap(owner, promoted, sw_from, sw_to, has_y):
    """``owner`` after ``index_swap``: each promoted id to its device slot, the id there
    before (where ``has_y``) to the promoted id's slot."""
    owner = list(owner)
    for x, a, b, y in zip(promoted, sw_from, sw_to, has_y):
        owner[a] = owner[b] if y else -1
        owner[b] = int(x)
    return owner


def scatter_tiered(rows, slots, device, ram, device_rows):
    device = device.copy()
    ram = ram.copy()
    for k, s in enumerate(slots):
        if s < device_rows:
            device[s] = rows[k]
        else:
            ram[s - device_rows] = rows[k]
    return device, ram


def any_nonfinite_row(rows) -> int:
    for i, row in enumerate(rows):
        for x in row:
            if x != x or x in (float("inf"), float("-inf")):
                return i
    return -1


# --------------------------------------------------------------------------- codec kernels


def crc32_bitwise(data: bytes, crc: int = 0) -> int:
    """zlib's CRC-32 one bit at a time (reflected, poly 0xEDB88320)."""
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c ^= byte
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def frame(key: int, payload: bytes) -> bytes:
    """A disk-tier value: payload, then CRC-32 of (8-byte big-endian key, payload), little-endian."""
    crc = zlib.crc32(key.to_bytes(8, "big") + payload)
    return payload + crc.to_bytes(4, "little")


def verify_frames(keybuf: bytes, buf: bytes, starts, stops):
    """(ok, new stops): each value's trailing CRC checked, and stripped from its stop."""
    ok = []
    new_stops = []
    for i, (a, b) in enumerate(zip(starts, stops)):
        a, b = int(a), int(b)
        if b - a < 4:
            ok.append(False)
            new_stops.append(b)
            continue
        key = bytes(keybuf[8 * i:8 * i + 8])
        payload = bytes(buf[a:b - 4])
        stored = int.from_bytes(bytes(buf[b - 4:b]), "little")
        ok.append(zlib.crc32(key + payload) == stored)
        new_stops.append(b - 4)
    return np.array(ok, dtype=np.bool_), np.array(new_stops, dtype=np.int64)


def decode_raw_rows(buf: bytes, starts, stops, out):
    """(out, ok): payload ``i`` copied into ``out[i]`` when its length is the row width."""
    out = out.copy()
    ok = []
    width = out.shape[1]
    for i, (a, b) in enumerate(zip(starts, stops)):
        a, b = int(a), int(b)
        if b - a != width:
            ok.append(False)
            continue
        out[i] = np.frombuffer(bytes(buf[a:b]), dtype=np.uint8)
        ok.append(True)
    return out, np.array(ok, dtype=np.bool_)


def verify_raw_rows(keys, frames: list[bytes], width: int):
    """(payloads, ok): each fixed-width frame's payload (its first ``width`` bytes), and
    whether its last 4 bytes are the CRC-32 of (8-byte big-endian key, payload)."""
    payloads = np.zeros((len(frames), width), dtype=np.uint8)
    ok = []
    for i, (key, value) in enumerate(zip(keys, frames)):
        payloads[i] = np.frombuffer(value[:width], dtype=np.uint8)
        stored = int.from_bytes(value[width:], "little")
        ok.append(zlib.crc32(int(key).to_bytes(8, "big") + value[:width]) == stored)
    return payloads, np.array(ok, dtype=np.bool_)


class Staging:
    """The staging of read-ahead rows as a list of (sorted ids, rows) chunks, each row taken
    out by copying the chunk's other rows (prefetch.Staging keeps a mask instead)."""

    def __init__(self, limit_rows: int):
        self.limit_rows = limit_rows
        self.chunks = []

    @property
    def rows(self) -> int:
        return sum(len(ids) for ids, _ in self.chunks)

    def add(self, ids, rows):
        if len(ids):
            order = np.argsort(ids)
            self.chunks.append((ids[order], rows[order]))
            while self.rows > self.limit_rows and len(self.chunks) > 1:
                self.chunks.pop(0)

    def take(self, ids, out, positions, keep=False):
        found = np.zeros(len(ids), dtype=bool)
        for c, (chunk_ids, chunk_rows) in enumerate(self.chunks):
            for k, i in enumerate(ids):
                if found[k] or i not in chunk_ids.tolist():
                    continue
                j = chunk_ids.tolist().index(i)
                if out is not None:
                    out[positions[k]] = chunk_rows[j]
                found[k] = True
                if not keep:
                    chunk_ids, chunk_rows = np.delete(chunk_ids, j), np.delete(chunk_rows, j, 0)
            self.chunks[c] = (chunk_ids, chunk_rows)
        self.chunks = [c for c in self.chunks if len(c[0])]
        return found

    def drop(self, ids):
        self.chunks = [(i[~np.isin(i, ids)], r[~np.isin(i, ids)]) for i, r in self.chunks]
        self.chunks = [c for c in self.chunks if len(c[0])]


def decode_int8_rows(buf: bytes, starts, stops, out):
    """(out, ok): float32 little-endian scale then ``dim`` int8, times the scale, in float32."""
    out = out.copy()
    ok = []
    dim = out.shape[1]
    for i, (a, b) in enumerate(zip(starts, stops)):
        a, b = int(a), int(b)
        if b - a != 4 + dim:
            ok.append(False)
            continue
        raw = bytes(buf[a:b])
        scale = np.frombuffer(raw[:4], dtype="<f4")[0]
        q = np.frombuffer(raw[4:], dtype=np.int8)
        with np.errstate(all="ignore"):
            for j in range(dim):
                out[i, j] = np.float32(q[j]) * np.float32(scale)
        ok.append(True)
    return out, np.array(ok, dtype=np.bool_)


# --------------------------------------------------------------------------- caches


class NaiveLRU:
    """Least recently used, every miss admitted."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.order: OrderedDict[int, None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def access(self, key: int, count: int = 1, ahead=frozenset(), walk: int = 64) -> bool:
        """One access (``count`` accesses of one id in one batch move it once). Eviction takes
        the oldest id not in ``ahead`` among the ``walk`` oldest, else the oldest."""
        if key in self.order:
            self.order.move_to_end(key)
            self.hits += 1
            return True
        self.misses += 1
        if self.capacity == 0:
            return False
        if len(self.order) >= self.capacity:
            oldest = list(self.order)[:walk]
            victim = next((k for k in oldest if k not in ahead), oldest[0])
            del self.order[victim]
        self.order[key] = None
        return False

    def resident(self) -> set[int]:
        return set(self.order)


class NaiveLFU:
    """Least frequently used since admission; ties go to the oldest last access.

    An admitted id starts at count 1, each hit adds 1; every miss is admitted,
    evicting the id with the smallest (count, time of last access).
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.count: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.clock = 0
        self.hits = 0
        self.misses = 0

    def access(self, key: int, count: int = 1) -> bool:
        """``count`` accesses of ``key`` at once (a batch's duplicates)."""
        self.clock += 1
        if key in self.count:
            self.count[key] += count
            self.last[key] = self.clock
            self.hits += 1
            return True
        self.misses += 1
        if self.capacity == 0:
            return False
        if len(self.count) >= self.capacity:
            victim = min(self.count, key=lambda k: (self.count[k], self.last[k]))
            del self.count[victim]
            del self.last[victim]
        self.count[key] = count
        self.last[key] = self.clock
        return False

    def resident(self) -> set[int]:
        return set(self.count)


def run_cache(cache, trace):
    """Feed ``trace`` to a naive cache; returns (hits, misses)."""
    for key in trace:
        cache.access(int(key))
    return cache.hits, cache.misses


def run_cache_batched(cache, trace, batch):
    """Feed ``trace`` in batches the way the planner does; returns (hits, misses).

    A batch's ids are taken once each, in first-seen order, with their count
    in the batch; all of an id's accesses are hits when it was resident as the
    batch began, misses otherwise (the cache itself still sees one access).
    """
    hits = misses = 0
    for start in range(0, len(trace), batch):
        chunk = [int(k) for k in trace[start:start + batch]]
        counts: dict[int, int] = {}
        for k in chunk:
            counts[k] = counts.get(k, 0) + 1
        resident = cache.resident()
        for k, c in counts.items():
            if k in resident:
                hits += c
            else:
                misses += c
            cache.access(k, c)
    return hits, misses


def run_lru_lookahead(cache, trace, batch, window):
    """Feed ``trace`` in batches to a ``NaiveLRU``, each batch's evictions sparing the ids of
    the next ``window`` batches; returns (hits, misses, rows read) counted as the planner does
    (rows read: the batch's unique ids not resident as it began)."""
    chunks = [[int(k) for k in trace[s:s + batch]] for s in range(0, len(trace), batch)]
    hits = misses = reads = 0
    for i, chunk in enumerate(chunks):
        counts: dict[int, int] = {}
        for k in chunk:
            counts[k] = counts.get(k, 0) + 1
        ahead = {k for later in chunks[i + 1:i + 1 + window] for k in later}
        resident = cache.resident()
        for k, c in counts.items():
            if k in resident:
                hits += c
            else:
                misses += c
                reads += 1
            cache.access(k, c, ahead)
    return hits, misses, reads
