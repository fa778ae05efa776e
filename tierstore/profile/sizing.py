"""Sizing: the smallest memory that reaches a hit-ratio target (searched on a rank sample of
the trace, refined on the whole trace), and the traffic each tier serves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .simulation import DEFAULT_POLICY, SimResult, simulate
from .stats import TraceStats


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


def simulate_on_sample(sample: Sample, device_rows, ram_rows, policy) -> SimResult:
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
        return simulate_on_sample(sample, d, r, policy)

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
        "disk_reads": result.disk_reads,   # rows read: once per unique id and batch
        "admissions": result.admissions,
        "promotions": result.promotions,
        "demotions": result.demotions,
    }
    return {k: {"rows_per_s": lookup_rate * v / n, "bytes_per_s": lookup_rate * v / n * row_bytes}
            for k, v in rows.items()}
