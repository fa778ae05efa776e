"""Tier profiling: how a trace of row ids would fare in tierstore's tiers, before buying hardware.

    tierstore profile trace.npy --device-rows 10000 --ram-rows 100000 --target 0.9

Everything here replays the trace through the planner ``Store.lookup`` runs
(``policy.planner.plan_batch`` on a ``policy.state.CacheState``): the hit ratios are the
store's, not a separate model's. Next to each policy stand two bounds: the static optimum
(the rows the trace itself uses most, pinned in memory from the start) and Belady's MIN (the
offline optimum of a demand-filled cache, ``policy.belady``).

Speed. A batch-1 replay runs ``planner.simulate_sequential``: the planner's kernels, compiled
without reference counting, called once per access with one set of buffers (about 0.3 us an
access on this project's machine).
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import StoreConfig
from .errors import ConfigError
from .policy import POLICIES, CacheState
from .policy import planner as _planner
from .policy import state as S
from .policy.belady import belady_hit_counts, dense_ids, next_use
from .transfer import InputFileError

DEFAULT_POLICY = StoreConfig.__dataclass_fields__["policy"].default
NPY_MAGIC = b"\x93NUMPY"
COUNTERS = ("device_hits", "ram_hits", "misses", "admissions", "evictions", "promotions",
            "demotions")
_COUNTER_SLOTS = (S.DEVICE_HITS, S.RAM_HITS, S.MISSES, S.ADMISSIONS, S.EVICTIONS, S.PROMOTIONS,
                  S.DEMOTIONS)


# =========================================================================== traces


def load_trace(path, fmt: str = "npy") -> np.ndarray:
    """The ids of a trace file as a 1-D int64 array (memory-mapped where the file allows).

    ``fmt``: ``"npy"`` (a NumPy array of integers, any shape, read in C order) or ``"raw"``
    (little-endian int64, no header). Ids must be non-negative.
    """
    p = Path(path)
    _check_file(p)
    with open(p, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if fmt == "npy":
        if head != NPY_MAGIC:
            raise InputFileError(f"{p}: not a .npy file (no NumPy header); "
                                 "pass --format raw for little-endian int64 without a header")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - a garbled header raises anything
            raise InputFileError(f"{p}: a damaged .npy file ({exc})") from None
        if arr.dtype.kind not in "iu":
            raise InputFileError(f"{p}: holds {arr.dtype} values, not integer ids")
        ids = np.asarray(arr).reshape(-1)
    elif fmt == "raw":
        size = p.stat().st_size
        if size % 8:
            raise InputFileError(f"{p}: {size} bytes is not a whole number of int64 ids "
                                 "(--format raw reads little-endian int64)")
        ids = np.asarray(np.memmap(p, dtype="<i8", mode="r")) if size else np.empty(0, np.int64)
    else:
        raise ConfigError(f"trace format must be 'npy' or 'raw', got {fmt!r}")
    return _as_ids(ids, p)


def _check_file(p: Path):
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if not p.is_file():
        raise InputFileError(f"{p}: not a file")


def _as_ids(ids: np.ndarray, what) -> np.ndarray:
    if ids.size == 0:
        raise InputFileError(f"{what}: holds no ids")
    if ids.dtype == np.uint64 and ids.max() > np.iinfo(np.int64).max:
        k = int(np.argmax(ids > np.iinfo(np.int64).max))
        raise InputFileError(f"{what}: id {ids[k]} at position {k} does not fit in int64")
    if ids.dtype != np.int64 or not ids.dtype.isnative:
        ids = ids.astype(np.int64)
    low = int(ids.min())
    if low < 0:
        k = int(np.argmax(ids < 0))
        raise InputFileError(f"{what}: holds a negative id ({ids[k]} at position {k})")
    return np.ascontiguousarray(ids)


_WORD = re.compile(r"\w+|[^\w\s]")


def text_tokens(text: str) -> tuple[np.ndarray, int]:
    """Words and punctuation of ``text`` as token ids (1, 2, ... in first-seen order; 0 is the
    pad id), grouped by Engram's normal form where ``tierstore.hashing`` provides it."""
    try:
        from .hashing import compression_key
    except ImportError:
        compression_key = str.lower
    ids: dict = {}
    tokens = [ids.setdefault(compression_key(w), len(ids) + 1) for w in _WORD.findall(text)]
    return np.asarray(tokens, dtype=np.int64), len(ids) + 1


def read_text_tokens(path) -> tuple[np.ndarray, int]:
    p = Path(path)
    _check_file(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{p}: not UTF-8 text ({exc})") from None
    tokens, vocab = text_tokens(text)
    if tokens.size == 0:
        raise InputFileError(f"{p}: holds no words")
    return tokens, vocab


def load_tokens(path) -> np.ndarray:
    """Token ids from a .npy file: ``[seq]`` or ``[batch, seq]`` integers."""
    p = Path(path)
    _check_file(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a garbled header raises anything
        raise InputFileError(f"{p}: not a readable .npy file of token ids ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise InputFileError(f"{p}: holds {getattr(arr, 'dtype', type(arr).__name__)} values, "
                             "not integer token ids")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise InputFileError(f"{p}: token ids must be a non-empty [seq] or [batch, seq] array, "
                             f"got shape {arr.shape}")
    if int(arr.min()) < 0:
        raise InputFileError(f"{p}: holds a negative token id")
    return arr.astype(np.int64, copy=False)


def ngram_trace(tokens: np.ndarray, vocab_size: int | None = None, **options):
    """Engram row ids of ``tokens`` (``[seq]`` or ``[batch, seq]``), read row by row, each
    position's ``ids_per_token`` ids together; returns ``(trace, hasher)``.

    ``options`` go to ``tierstore.hashing.NgramHasher`` (max_ngram, heads, table_size,
    layer_id, seed, pad_id)."""
    try:
        from .hashing import NgramHasher
    except ImportError as exc:
        raise ConfigError(f"--ngram needs tierstore.hashing, which this install lacks ({exc})") \
            from None
    top = int(tokens.max()) + 1
    pad = int(options.get("pad_id", 0))
    if vocab_size is None:
        vocab_size = max(top, pad + 1)
    elif top > vocab_size:
        raise ConfigError(f"token id {top - 1} is outside the vocabulary [0, {vocab_size})")
    options = {k: v for k, v in options.items() if v is not None}
    hasher = NgramHasher(vocab_size, **options)
    return np.ascontiguousarray(hasher(tokens).reshape(-1), dtype=np.int64), hasher


def write_oracle_general(trace: np.ndarray, path) -> None:
    """Write ``trace`` as a libCacheSim oracleGeneral file: one 24-byte record per access
    (u32 time, u64 id, u32 size = 1, i64 position of the id's next access or -1)."""
    trace = np.ascontiguousarray(trace, dtype=np.int64)
    n = len(trace)
    dense = np.empty(n, dtype=np.int64)
    u = dense_ids(trace, dense)
    nxt = np.empty(n, dtype=np.int64)
    next_use(dense, u, nxt)
    nxt[nxt == n] = -1
    rec = np.zeros(n, dtype=[("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
    rec["time"] = np.arange(n, dtype=np.uint64) & 0xFFFFFFFF
    rec["id"] = trace
    rec["size"] = 1
    rec["next"] = nxt
    rec.tofile(os.fspath(path))


# =========================================================================== trace statistics


@dataclass
class TraceStats:
    accesses: int
    unique_ids: int
    id_space: int
    id_space_source: str
    counts_sorted: np.ndarray = field(repr=False)      # per-id access counts, descending
    dense: np.ndarray = field(repr=False)              # ids numbered in first-seen order
    order: np.ndarray = field(repr=False)              # dense ids by descending count

    def coverage(self, share: float) -> tuple[int, float]:
        """(rows, share of accesses) of the top ``share`` of the id space."""
        k = max(1, math.ceil(share * self.id_space))
        return k, float(self.counts_sorted[:k].sum()) / self.accesses


def trace_stats(trace: np.ndarray, id_space: int | None = None, source: str = "") -> TraceStats:
    n = len(trace)
    dense = np.empty(n, dtype=np.int32 if n < 2**31 - 1 else np.int64)
    u = int(dense_ids(trace, dense))
    counts = np.bincount(dense, minlength=u)
    order = np.argsort(-counts, kind="stable")
    if id_space is None:
        id_space, source = int(trace.max()) + 1, "largest id + 1"
    return TraceStats(n, u, int(id_space), source, counts[order], dense, order)


def zipf_fit(counts_sorted: np.ndarray, min_count: int = 10, points: int = 60) -> dict:
    """Zipf exponent: least squares of log(count) on log(rank), on log-spaced ranks from 1 to
    the last rank counted at least ``min_count`` times (the tail below is sampling noise)."""
    c = counts_sorted
    last = int(np.searchsorted(-c, -min_count, side="right"))
    if last < 10:
        last = len(c)
    if last < 3:
        return {"alpha": None, "r2": None, "ranks": [1, last]}
    ranks = np.unique(np.geomspace(1, last, points).astype(np.int64))
    x = np.log(ranks)
    y = np.log(c[ranks - 1].astype(np.float64))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / total if total > 0 else 1.0
    return {"alpha": float(-slope), "r2": r2, "ranks": [1, last]}


# =========================================================================== simulation


@dataclass
class SimResult:
    """Counters of one replay over its measured accesses."""

    name: str
    accesses: int
    device_hits: int
    ram_hits: int
    misses: int
    admissions: int = 0
    evictions: int = 0
    promotions: int = 0
    demotions: int = 0
    seconds: float = 0.0

    @property
    def device(self) -> float:
        return self.device_hits / self.accesses

    @property
    def ram(self) -> float:
        return self.ram_hits / self.accesses

    @property
    def combined(self) -> float:
        return (self.device_hits + self.ram_hits) / self.accesses

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(device_hit_ratio=self.device, ram_hit_ratio=self.ram,
                   combined_hit_ratio=self.combined, miss_ratio=1.0 - self.combined)
        return out


class _Sequential:
    """Batch-1 replay: ``planner.simulate_sequential``, the store's planner called once per
    access with buffers allocated once."""

    mode = "simulate_sequential"
    note = None

    def prepare(self) -> float:
        """Compile the replay now (for writable and read-only traces); returns the seconds."""
        t0 = time.perf_counter()
        tiny = np.zeros(4, dtype=np.int64)
        self.run(CacheState.new(1, 1, DEFAULT_POLICY).arrays(), tiny)
        tiny.setflags(write=False)  # traces are often read-only memory maps
        self.run(CacheState.new(1, 1, DEFAULT_POLICY).arrays(), tiny)
        return time.perf_counter() - t0

    def run(self, st, trace):
        _planner.simulate_sequential(st, trace)


SEQUENTIAL = _Sequential()


def simulate(trace: np.ndarray, device_rows: int, ram_rows: int, policy: str = DEFAULT_POLICY,
             batch: int = 1, start: int = 0, name: str | None = None) -> SimResult:
    """Replay ``trace`` through the store's planner; count accesses from ``start`` on."""
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
    state = CacheState.new(int(device_rows), int(ram_rows), policy)
    st = state.arrays()
    trace = np.asarray(trace)
    t0 = time.perf_counter()

    def replay(part):
        if len(part) == 0:
            return
        if batch == 1:
            SEQUENTIAL.run(st, part)
        else:
            _planner.simulate_trace(st, part, batch)

    # the warm-up ends on a batch boundary, as the store's batches would
    start = min(len(trace), -(-start // batch) * batch)
    replay(trace[:start])
    before = state.meta[list(_COUNTER_SLOTS)].copy()
    replay(trace[start:])
    after = state.meta[list(_COUNTER_SLOTS)]
    seconds = time.perf_counter() - t0
    values = dict(zip(COUNTERS, (int(x) for x in after - before)))
    return SimResult(name or policy, len(trace) - start, seconds=seconds, **values)


def static_optimum(stats: TraceStats, device_rows: int, ram_rows: int, start: int = 0) -> SimResult:
    """The most used rows of the trace pinned from the start: the top ``device_rows`` on the
    device, the next ``ram_rows`` in RAM. No cold misses: an upper bound for any fixed choice."""
    counts = np.bincount(stats.dense[start:], minlength=stats.unique_ids)[stats.order] \
        if start else stats.counts_sorted
    d = int(counts[:device_rows].sum())
    m = int(counts[:device_rows + ram_rows].sum())
    n = stats.accesses - start
    return SimResult("static optimum", n, d, m - d, n - m)


def belady(stats: TraceStats, device_rows: int, ram_rows: int, start: int = 0,
           nxt: np.ndarray | None = None) -> SimResult:
    """Belady's MIN: the device holds MIN(device_rows)'s rows, memory MIN(device + ram)'s."""
    t0 = time.perf_counter()
    caps = [device_rows, device_rows + ram_rows] if device_rows else [device_rows + ram_rows]
    hits = belady_hit_counts(stats.dense, stats.unique_ids, caps, start, nxt)
    d, m = (hits if device_rows else [0, hits[0]])
    n = stats.accesses - start
    return SimResult("Belady MIN", n, d, m - d, n - m, seconds=time.perf_counter() - t0)


# =========================================================================== sizing


@dataclass
class Sample:
    """A miniature of the trace: every access to one id in ``1 / rate`` (see ``rank_sample``)."""

    trace: np.ndarray
    rate: float
    start: int
    batch: int

    def scale(self, rows: int) -> int:
        return max(1, round(rows * self.rate)) if rows > 0 else 0


def rank_sample(trace: np.ndarray, stats: TraceStats, max_accesses: int, start: int = 0,
                batch: int = 1, seed: int = 0) -> Sample:
    """Keep one id of every ``k`` by popularity (one at random from each run of ``k``
    consecutive ranks) with all of its accesses, ``k`` chosen for about ``max_accesses``
    accesses. A cache of C rows on the trace behaves much like one of C / k rows on the sample
    (miniature simulation, Waldspurger et al. 2017). Picking by rank rather than by a hash of
    the id keeps the sample's popularity curve the trace's own: on a Zipf(1) trace of 10M
    accesses a 1-in-5 hash sample was off by 1.3 to 4.7 points of hit ratio, this one by 0.4
    to 1.7."""
    n = len(trace)
    k = max(1, math.ceil(n / max_accesses))
    if k == 1:
        return Sample(np.asarray(trace), 1.0, start, batch)
    u = stats.unique_ids
    rng = np.random.default_rng(seed)
    firsts = np.arange(0, u, k)
    picks = firsts + (rng.random(len(firsts)) * np.minimum(k, u - firsts)).astype(np.int64)
    keep = np.zeros(u, dtype=bool)
    keep[stats.order[picks]] = True
    mask = keep[stats.dense]
    return Sample(np.ascontiguousarray(trace[mask]), 1.0 / k, int(np.count_nonzero(mask[:start])),
                  max(1, round(batch / k)))


def _sample_sim(sample: Sample, device_rows, ram_rows, policy) -> SimResult:
    total = sample.scale(device_rows + ram_rows)
    d = min(total, sample.scale(device_rows))
    return simulate(sample.trace, d, total - d, policy, sample.batch, sample.start)


@dataclass
class Recommendation:
    target: float
    policy: str
    reachable: bool
    best_possible: float
    device_rows: int = 0
    ram_rows: int = 0
    device_target: float | None = None
    verified: SimResult | None = None
    met: bool = False
    sample_rate: float = 1.0
    sample_accesses: int = 0
    sample_bias: float = 0.0
    sample_replays: int = 0
    full_replays: int = 0
    tried: list = field(default_factory=list)   # (memory rows, combined hit ratio), full trace

    @property
    def memory_rows(self) -> int:
        return self.device_rows + self.ram_rows


def _first_reaching(lo: int, hi: int, reaches, precision: float, min_step: int) -> int:
    """Smallest x in (lo, hi] with reaches(x), by bisection in log space (reaches(hi) holds)."""
    while hi - lo > min_step and hi > lo * (1 + precision):
        mid = int(math.sqrt(lo * hi)) if lo > 0 else hi // 2
        mid = min(max(mid, lo + 1), hi - 1)
        if reaches(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _extrapolate(full: dict, sizes: list, target: float, edge: int, low: float,
                 high: float) -> int:
    """The size where the line through the two ``sizes`` nearest ``edge`` (hit ratio against
    log size) reaches ``target``, kept within ``edge * low`` .. ``edge * high``."""
    near = sorted(sizes, key=lambda t: abs(math.log(t) - math.log(edge)))[:2]
    factor = math.sqrt(low * high)
    if len(near) == 2:
        (a, b), (ha, hb) = near, (full[near[0]].combined, full[near[1]].combined)
        slope = (hb - ha) / (math.log(b) - math.log(a))
        if slope > 0:       # aim 1% of memory past the crossing, to land on the target's side
            factor = math.exp((target - full[edge].combined) / slope) * 1.01
    return round(edge * min(max(factor, low), high))


def recommend(trace: np.ndarray, stats: TraceStats, target: float, device_share: float,
              policy: str = DEFAULT_POLICY, batch: int = 1, start: int = 0,
              device_target: float | None = None, sample_accesses: int = 2_000_000,
              anchor: tuple | None = None, max_full_replays: int = 6,
              precision: float = 0.02, tolerance: float = 0.002) -> Recommendation:
    """Smallest memory (device + RAM rows) whose combined hit ratio reaches ``target``.

    1. Bisection on a rank sample of the trace (``rank_sample``), aiming at ``target`` minus
       the sample's bias, measured where a full replay is known (``anchor``: (device rows, ram rows,
       SimResult) of the whole trace, e.g. the sizes the user gave).
    2. Replays of the whole trace refine it (interpolation in log memory between the largest
       size short of the target and the smallest reaching it), at most ``max_full_replays``,
       until the two lie within ``precision`` of each other or the size reaching the target
       overshoots it by at most ``tolerance`` (the first step inside the bracket interpolates,
       the next ones bisect).

    The device tier is ``device_share`` of memory, or, with ``device_target``, the smallest
    device tier (on the sample) whose own hit ratio reaches it, grown by 10% while the whole
    trace falls short of it."""
    n = stats.accesses - start
    # every id's first access misses; ids first seen during the warm-up are numbered below
    warm_ids = int(stats.dense[:start].max()) + 1 if start else 0
    best = 1.0 - (stats.unique_ids - warm_ids) / n
    rec = Recommendation(target, policy, target <= best, best, device_target=device_target)
    if not rec.reachable:
        return rec
    ceiling = stats.unique_ids
    sample = rank_sample(trace, stats, sample_accesses, start, batch)
    rec.sample_rate, rec.sample_accesses = sample.rate, len(sample.trace)
    min_step = max(1, int(1 / sample.rate))

    def split(total):
        d = min(total, round(total * device_share))
        return d, total - d

    def on_sample(d, r):
        rec.sample_replays += 1
        return _sample_sim(sample, d, r, policy)

    full = {}                                   # memory rows -> SimResult on the whole trace
    if anchor is not None and sample.rate < 1:
        d, r, result = anchor
        full[d + r] = result
        rec.sample_bias = result.combined - on_sample(d, r).combined
    goal = target - rec.sample_bias
    total = _first_reaching(0, ceiling, lambda t: on_sample(*split(t)).combined >= goal,
                            precision / 2, min_step)
    device = split(total)[0]
    if device_target is not None:
        device = 0
        if device_target > 0:
            def reaches(d):
                return on_sample(d, total - d).device >= device_target

            device = _first_reaching(0, total, reaches, precision / 2, min_step) \
                if reaches(total) else total

    def device_for(t):
        return min(t, device) if device_target is not None else split(t)[0]

    def replay(t):
        d = device_for(t)
        full[t] = simulate(trace, d, t - d, policy, batch, start, name=policy)
        rec.full_replays += 1
        rec.tried.append((t, full[t].combined))
        return full[t]

    replay(total)
    bracketed = False
    while rec.full_replays < max_full_replays:
        short = [t for t, r in full.items() if r.combined < target]
        good = [t for t, r in full.items() if r.combined >= target]
        lo = max(short) if short else None
        hi = min(good) if good else None
        if hi is None:
            if lo >= ceiling:
                break
            nxt = min(ceiling, _extrapolate(full, short, target, lo, 1.02, 1.5))
        elif full[hi].combined - target <= tolerance or (lo is not None and
                                                          hi <= lo * (1 + precision)):
            break
        elif lo is None:
            nxt = max(1, _extrapolate(full, good, target, hi, 1 / 1.5, 1 / 1.02))
        else:
            # the first step inside a bracket interpolates; later ones bisect, since a policy's
            # hit ratio is not smooth in memory at this scale (the adaptive window jitters)
            h_lo, h_hi = full[lo].combined, full[hi].combined
            x = 0.5 * (math.log(lo) + math.log(hi))
            if not bracketed and h_hi > h_lo:
                x = math.log(lo) + (target - h_lo) / (h_hi - h_lo) * (math.log(hi) - math.log(lo))
                # keep clear of both ends, so the bracket shrinks every time
                margin = 0.25 * (math.log(hi) - math.log(lo))
                x = min(max(x, math.log(lo) + margin), math.log(hi) - margin)
            bracketed = True
            nxt = round(math.exp(x))
            if nxt <= lo or nxt >= hi:
                break
        if nxt in full:
            break
        replay(nxt)
    # the anchor's device share is the given one: its replay counts unless a device target
    # sizes the device tier on its own
    usable = full if device_target is None else {t: full[t] for t, _ in rec.tried}
    good = [t for t, r in usable.items() if r.combined >= target]
    t = min(good) if good else max(usable)
    result = full[t]
    d = device_for(t)
    if device_target is not None:
        for _ in range(2):
            if result.device >= device_target or d >= t:
                break
            d = min(t, math.ceil(d * 1.1))
            result = simulate(trace, d, t - d, policy, batch, start, name=policy)
            rec.full_replays += 1
    rec.device_rows, rec.ram_rows, rec.verified = d, t - d, result
    rec.met = result.combined >= target and (device_target is None or result.device
                                             >= device_target or d >= t)
    return rec


def bandwidth(result: SimResult, lookup_rate: float, row_bytes: int) -> dict:
    """Rows and bytes per second each tier serves (and rows moved) at ``lookup_rate`` ids/s."""
    n = result.accesses
    rows = {
        "device_reads": result.device_hits,
        "ram_reads": result.ram_hits,
        "disk_reads": result.misses,
        "admissions": result.admissions,
        "promotions": result.promotions,
        "demotions": result.demotions,
    }
    return {k: {"rows_per_s": lookup_rate * v / n, "bytes_per_s": lookup_rate * v / n * row_bytes}
            for k, v in rows.items()}


# =========================================================================== curves and plot


def miss_ratio_curves(trace: np.ndarray, stats: TraceStats, policies, device_share: float,
                      batch: int = 1, start: int = 0, points: int = 10,
                      sample_accesses: int = 1_000_000) -> dict:
    """Miss ratio of every policy, MIN and the static optimum at log-spaced memory sizes
    (policies and MIN on a rank sample of the trace; the static optimum exact)."""
    sample = rank_sample(trace, stats, sample_accesses, start, batch)
    top = stats.unique_ids
    low = min(top, max(1, math.ceil(8 / sample.rate), top // 1000))
    caps = sorted({round(float(x)) for x in np.geomspace(low, top, points)})
    curves = {p: [] for p in policies}
    s_stats = trace_stats(sample.trace) if sample.rate < 1 else stats
    s_dense_next = np.empty(len(s_stats.dense), dtype=np.int64)
    next_use(s_stats.dense, s_stats.unique_ids, s_dense_next)
    curves["Belady MIN"] = []
    curves["static optimum"] = []
    for c in caps:
        d = min(c, round(c * device_share))
        for p in policies:
            curves[p].append(1.0 - _sample_sim(sample, d, c - d, p).combined)
        cs = sample.scale(c)
        hits = belady_hit_counts(s_stats.dense, s_stats.unique_ids, [cs], sample.start,
                                 s_dense_next)[0]
        curves["Belady MIN"].append(1.0 - hits / (len(sample.trace) - sample.start))
        curves["static optimum"].append(1.0 - static_optimum(stats, 0, c, start).combined)
    return {"capacities": caps, "sample_rate": sample.rate, "miss_ratio": curves}


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'tierstore[plot]' "
                          "(or pip install matplotlib)") from None
    return plt


def plot_curves(curves: dict, out, given_rows: int | None = None, target: float | None = None,
                title: str = "") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    caps = curves["capacities"]
    for name, ys in curves["miss_ratio"].items():
        style = "--" if name in ("Belady MIN", "static optimum") else "-"
        ax.plot(caps, ys, style, marker="o", markersize=3, label=name)
    if given_rows:
        ax.axvline(given_rows, color="grey", linewidth=0.8, linestyle=":", label="given memory")
    if target is not None:
        ax.axhline(1 - target, color="grey", linewidth=0.8, linestyle="-.",
                   label=f"target miss ratio {1 - target:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("memory (device + RAM rows)")
    ax.set_ylabel("miss ratio (disk reads / lookups)")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    rate = curves.get("sample_rate", 1.0)
    if rate < 1:
        title += f"\n(policies and MIN on a 1-in-{round(1 / rate)} sample of the ids)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(os.fspath(out), dpi=120)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{out}: cannot write the plot ({exc})") from None
    finally:
        plt.close(fig)


# =========================================================================== the whole profile


@dataclass
class ProfileSpec:
    device_rows: int | None = None
    ram_rows: int | None = None
    policies: tuple = POLICIES
    batch: int = 1
    warmup: float = 0.0
    target: float = 0.9
    device_target: float | None = None
    lookup_rate: float = 1e6
    row_bytes: int = 256
    num_rows: int | None = None
    sample_accesses: int = 2_000_000
    plot: str | None = None


def profile(trace: np.ndarray, spec: ProfileSpec, source: dict | None = None, log=None) -> dict:
    """Every figure of ``tierstore profile``, as a JSON-ready dict."""
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    if spec.batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {spec.batch}")
    if not 0 <= spec.warmup < 1:
        raise ConfigError(f"--warmup must lie in [0, 1), got {spec.warmup}")
    if not 0 < spec.target <= 1:
        raise ConfigError(f"--target must lie in (0, 1], got {spec.target}")
    if spec.device_target is not None and not 0 <= spec.device_target <= 1:
        raise ConfigError(f"--device-target must lie in [0, 1], got {spec.device_target}")
    if spec.plot:
        _pyplot()                   # before any work: no matplotlib, no point replaying
    id_space, id_source = spec.num_rows, "given"
    if source and source.get("num_rows") and id_space is None:
        id_space, id_source = source["num_rows"], source.get("num_rows_source", "hasher")
    if id_space is not None and int(trace.max()) >= id_space:
        raise ConfigError(f"the trace holds id {int(trace.max())}, outside the {id_space} rows")
    log("counting ids")
    stats = trace_stats(trace, id_space, id_source)
    rows = stats.id_space
    device_rows = max(0, int(spec.device_rows if spec.device_rows is not None else rows // 100))
    ram_rows = max(0, int(spec.ram_rows if spec.ram_rows is not None else max(1, rows // 10)))
    if device_rows + ram_rows < 1:
        raise ConfigError("--device-rows + --ram-rows must be at least 1")
    policies = tuple(dict.fromkeys(spec.policies))
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"unknown policy {p!r}; choose from {', '.join(POLICIES)}")
    # the warm-up ends on a batch boundary, as the store's lookups would
    start = min(len(trace), math.ceil(spec.warmup * len(trace) / spec.batch) * spec.batch)
    measured = len(trace) - start

    report = {
        "trace": dict(source or {}, accesses=stats.accesses, unique_ids=stats.unique_ids,
                      id_space=rows, id_space_source=stats.id_space_source),
        "zipf": zipf_fit(stats.counts_sorted),
        "coverage": {},
    }
    for share in (0.01, 0.05, 0.10):
        k, cov = stats.coverage(share)
        report["coverage"][f"top_{share:.0%}"] = {"rows": k, "share_of_accesses": cov}

    setup = SEQUENTIAL.prepare() if spec.batch == 1 else 0.0
    sims = {}
    for p in policies:
        log(f"replaying {stats.accesses:,} accesses under {p}")
        sims[p] = simulate(trace, device_rows, ram_rows, p, spec.batch, start)
    log("static optimum and Belady MIN")
    sims["static optimum"] = static_optimum(stats, device_rows, ram_rows, start)
    sims["Belady MIN"] = belady(stats, device_rows, ram_rows, start)
    report["simulation"] = {
        "device_rows": device_rows, "ram_rows": ram_rows, "batch": spec.batch,
        "warmup_accesses": start, "measured_accesses": measured,
        "default_policy": DEFAULT_POLICY,
        "replay": SEQUENTIAL.mode if spec.batch == 1 else "simulate_trace",
        "replay_note": SEQUENTIAL.note if spec.batch == 1 else None,
        "replay_setup_seconds": setup,
        "results": {name: r.to_dict() for name, r in sims.items()},
    }
    for r in sims.values():
        if r.name in POLICIES or r.name == "Belady MIN":
            report["simulation"]["results"][r.name]["ns_per_access"] = \
                r.seconds / max(1, stats.accesses) * 1e9

    rec_policy = DEFAULT_POLICY
    log(f"sizing for a combined hit ratio of {spec.target} under {rec_policy}")
    share = device_rows / (device_rows + ram_rows)
    anchor = (device_rows, ram_rows, sims[rec_policy]) if rec_policy in sims else None
    rec = recommend(trace, stats, spec.target, share, rec_policy, spec.batch, start,
                    spec.device_target, spec.sample_accesses, anchor)
    rec_out = {
        "target": rec.target, "policy": rec.policy, "reachable": rec.reachable,
        "best_possible": rec.best_possible, "device_target": rec.device_target,
        "device_share": share if rec.device_target is None else None,
    }
    if rec.reachable:
        bookkeeping = CacheState.new(rec.device_rows, rec.ram_rows, rec_policy).nbytes()
        rec_out.update(
            device_rows=rec.device_rows, ram_rows=rec.ram_rows, memory_rows=rec.memory_rows,
            met=rec.met, verified=rec.verified.to_dict(),
            device_bytes=rec.device_rows * spec.row_bytes, ram_bytes=rec.ram_rows * spec.row_bytes,
            bookkeeping_bytes=bookkeeping, sample_rate=rec.sample_rate,
            sample_accesses=rec.sample_accesses, sample_bias=rec.sample_bias,
            sample_replays=rec.sample_replays, full_replays=rec.full_replays,
            tried=[{"memory_rows": t, "combined_hit_ratio": h} for t, h in rec.tried])
    report["recommendation"] = rec_out
    base = sims.get(rec_policy) or simulate(trace, device_rows, ram_rows, rec_policy,
                                            spec.batch, start)
    report["bandwidth"] = {
        "lookup_rate": spec.lookup_rate, "row_bytes": spec.row_bytes, "policy": rec_policy,
        "given": bandwidth(base, spec.lookup_rate, spec.row_bytes),
        "recommended": bandwidth(rec.verified, spec.lookup_rate, spec.row_bytes)
        if rec.reachable else None,
    }
    if spec.plot:
        log("miss-ratio curves")
        curves = miss_ratio_curves(trace, stats, policies, share, spec.batch, start,
                                   sample_accesses=min(spec.sample_accesses, 1_000_000))
        name = (source or {}).get("path", "trace")
        plot_curves(curves, spec.plot, device_rows + ram_rows, spec.target,
                    title=f"{Path(str(name)).name}: miss ratio vs memory")
        report["curves"] = curves
        report["plot"] = str(spec.plot)
    report["seconds"] = time.perf_counter() - t_start
    return report


# =========================================================================== text report


def _n(x) -> str:
    return f"{int(x):,}"


def _rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.1f}"


def _bytes(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


def _table(header, rows) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return [line(cells[0]), sep] + [line(r) for r in cells[1:]]


def format_report(report: dict) -> str:
    t, sim, rec, bw = report["trace"], report["simulation"], report["recommendation"], \
        report["bandwidth"]
    out = []
    what = t.get("path", "trace")
    if t.get("ngram"):
        g = t["ngram"]
        what += (f" (Engram n-gram ids of {_n(g['tokens'])} tokens: orders 2-{g['max_ngram']}, "
                 f"{g['heads']} heads, {g['ids_per_token']} ids per token)")
    out.append(f"trace           {what}")
    out.append(f"accesses        {_n(t['accesses'])}")
    out.append(f"unique ids      {_n(t['unique_ids'])} of {_n(t['id_space'])} rows "
               f"(id space: {t['id_space_source']})")
    z = report["zipf"]
    if z["alpha"] is not None:
        out.append(f"Zipf exponent   {z['alpha']:.3f} (least squares of log count on log rank, "
                   f"ranks 1-{_n(z['ranks'][1])}, R^2 {z['r2']:.3f})")
    cov = ", ".join(f"top {k[4:]} of rows ({_n(v['rows'])}) serve {v['share_of_accesses']:.1%}"
                    for k, v in report["coverage"].items())
    out.append(f"coverage        {cov}")
    out.append("")
    counted = (f"the first {_n(sim['warmup_accesses'])} accesses warm the cache, the other "
               f"{_n(sim['measured_accesses'])} count"
               if sim["warmup_accesses"] else
               f"all {_n(sim['measured_accesses'])} accesses counted, cold start included")
    batch = "sequential (batch 1)" if sim["batch"] == 1 else f"batches of {_n(sim['batch'])} ids"
    out.append(f"Hit ratios: device {_n(sim['device_rows'])} rows + RAM {_n(sim['ram_rows'])} "
               f"rows, {batch}, {counted}")
    rows = []
    for name, r in sim["results"].items():
        label = name + (" (default)" if name == sim["default_policy"] else "")
        speed = f"{r['ns_per_access']:.0f}" if "ns_per_access" in r else ""
        rows.append([label, f"{r['device_hit_ratio']:.3f}", f"{r['ram_hit_ratio']:.3f}",
                     f"{r['combined_hit_ratio']:.3f}", f"{r['miss_ratio']:.3f}", speed])
    out += _table(["policy", "device", "RAM", "combined", "disk reads", "ns/access"], rows)
    out.append("static optimum: the most used rows pinned from the start (no cold misses); "
               "Belady MIN: the offline optimum of a demand-filled cache.")
    if sim["replay"] == "simulate_trace":
        how = "policy.planner.simulate_trace"
    else:
        how = (f"{'a fast' if sim['replay'] == 'fast' else 'a'} sequential loop over "
               f"policy.planner.plan_batch, compiled in {sim['replay_setup_seconds']:.1f} s")
    out.append(f"ns/access: replay time per access on one core ({how}).")
    out.append("")
    if not rec["reachable"]:
        out.append(f"Sizing: a combined hit ratio of {rec['target']} is out of reach: "
                   f"with every id in memory it is {rec['best_possible']:.4f} "
                   "(the first access to each id always misses).")
    else:
        v = rec["verified"]
        how = (f"device share {rec['device_share']:.1%} of memory, as given" if
               rec["device_target"] is None else
               f"device tier sized for a device hit ratio of {rec['device_target']}")
        out.append(f"Sizing for a combined hit ratio of {rec['target']} under {rec['policy']}: "
                   f"device {_n(rec['device_rows'])} + RAM {_n(rec['ram_rows'])} = "
                   f"{_n(rec['memory_rows'])} rows ({how}; every id in memory would reach "
                   f"{rec['best_possible']:.3f})")
        out.append(f"  on the whole trace: device {v['device_hit_ratio']:.3f}, RAM "
                   f"{v['ram_hit_ratio']:.3f}, combined {v['combined_hit_ratio']:.3f}"
                   + ("" if rec["met"] else "  (short of the target: the replays allowed ran out)"))
        out.append(f"  memory: device {_bytes(rec['device_bytes'])} + RAM "
                   f"{_bytes(rec['ram_bytes'])} of {bw['row_bytes']}-byte rows, policy bookkeeping "
                   f"{_bytes(rec['bookkeeping_bytes'])}")
        sample = (f"a 1-in-{round(1 / rec['sample_rate'])} sample of the ids by popularity "
                  f"({_n(rec['sample_accesses'])} accesses)")
        full = rec["full_replays"]
        if rec["sample_rate"] < 1:
            out.append(f"  searched in {rec['sample_replays']} replays of {sample}, then "
                       f"{full} replay{'s' if full != 1 else ''} of the whole trace")
        else:
            out.append(f"  searched in {rec['sample_replays'] + full} replays of the whole trace")
    out.append("")
    out.append(f"Bandwidth at {_rate(bw['lookup_rate'])} lookups/s of {bw['row_bytes']}-byte rows "
               f"({bw['policy']}):")
    labels = {"device_reads": "device reads", "ram_reads": "RAM reads (to the device)",
              "disk_reads": "disk reads", "admissions": "admissions (disk -> memory)",
              "promotions": "promotions (RAM -> device)", "demotions": "demotions (device -> RAM)"}
    given = _n(sim["device_rows"] + sim["ram_rows"])
    header = ["traffic", f"rows/s, {given} rows", "bytes/s"]
    if bw["recommended"]:
        header += [f"rows/s, {_n(rec['memory_rows'])} rows", "bytes/s"]
    rows = []
    for key, label in labels.items():
        g = bw["given"][key]
        row = [label, _rate(g["rows_per_s"]), _bytes(g["bytes_per_s"]) + "/s"]
        if bw["recommended"]:
            r = bw["recommended"][key]
            row += [_rate(r["rows_per_s"]), _bytes(r["bytes_per_s"]) + "/s"]
        rows.append(row)
    out += _table(header, rows)
    if report.get("plot"):
        out.append("")
        out.append(f"miss-ratio curves written to {report['plot']}")
    out.append(f"(profiled in {report['seconds']:.1f} s)")
    return "\n".join(out)
