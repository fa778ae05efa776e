"""What a trace is made of: access counts by id, coverage of the most used rows, the Zipf fit."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..policy.belady import dense_ids


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
