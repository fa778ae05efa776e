"""Replays of a trace through the store's own planner, and the two bounds beside them: the
static optimum and Belady's MIN.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..config import StoreConfig
from ..errors import ConfigError
from ..policy import POLICIES, CacheState
from ..policy import planner as _planner
from ..policy import state as S
from ..policy.belady import belady_hit_counts
from .stats import TraceStats

DEFAULT_POLICY = StoreConfig.__dataclass_fields__["policy"].default
COUNTERS = ("device_hits", "ram_hits", "misses", "admissions", "evictions", "promotions",
            "demotions", "disk_reads")
_COUNTER_SLOTS = (S.DEVICE_HITS, S.RAM_HITS, S.MISSES, S.ADMISSIONS, S.EVICTIONS, S.PROMOTIONS,
                  S.DEMOTIONS, S.DISK_READS)


@dataclass
class SimResult:
    """Counters of one replay over its measured accesses.

    ``device_hits``, ``ram_hits`` and ``misses`` say which tier served each access (a batch's
    repeats of a missing id are served by the disk read of its first); ``disk_reads`` counts
    the rows read (one per unique missing id and batch; ``misses`` when None, as for the
    bounds, which replay one access at a time)."""

    name: str
    accesses: int
    device_hits: int
    ram_hits: int
    misses: int
    admissions: int = 0
    evictions: int = 0
    promotions: int = 0
    demotions: int = 0
    disk_reads: int | None = None
    seconds: float = 0.0

    def __post_init__(self):
        if self.disk_reads is None:
            self.disk_reads = self.misses

    @property
    def device(self) -> float:
        return self.device_hits / self.accesses

    @property
    def ram(self) -> float:
        return self.ram_hits / self.accesses

    @property
    def combined(self) -> float:
        return (self.device_hits + self.ram_hits) / self.accesses

    @property
    def read_hit(self) -> float:
        """1 - rows read / accesses: what a one-access-at-a-time simulator calls hit ratio."""
        return 1.0 - self.disk_reads / self.accesses

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(device_hit_ratio=self.device, ram_hit_ratio=self.ram,
                   combined_hit_ratio=self.combined, miss_ratio=1.0 - self.combined,
                   read_ratio=1.0 - self.read_hit, read_hit_ratio=self.read_hit)
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
             batch: int = 1, start: int = 0, name: str | None = None,
             lookahead: int = 0) -> SimResult:
    """Replay ``trace`` through the store's planner; count accesses from ``start`` on.
    ``lookahead``: each batch is planned while the next ``lookahead`` batches are already
    submitted (``policy.lookahead``), as with ``prefetch`` or ``lookup_async`` run ahead."""
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
    if lookahead < 0:
        raise ConfigError(f"--lookahead must be at least 0, got {lookahead}")
    state = CacheState.new(int(device_rows), int(ram_rows), policy,
                           lookahead_ids=lookahead * batch)
    st = state.arrays()
    trace = np.asarray(trace)
    t0 = time.perf_counter()

    def replay(part):
        if len(part) == 0:
            return
        if lookahead:
            _planner.simulate_lookahead(st, part, batch, lookahead)
        elif batch == 1:
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
