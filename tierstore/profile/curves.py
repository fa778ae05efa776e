"""Miss-ratio curves of every policy against memory size, and their plot (matplotlib, lazily)."""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import ConfigError
from ..policy.belady import belady_hit_counts, next_use
from ..transfer import InputFileError
from .simulation import static_optimum
from .sizing import simulate_on_sample, rank_sample
from .stats import TraceStats, trace_stats


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
            curves[p].append(1.0 - simulate_on_sample(sample, d, c - d, p).combined)
        cs = sample.scale(c)
        hits = belady_hit_counts(s_stats.dense, s_stats.unique_ids, [cs], sample.start,
                                 s_dense_next)[0]
        curves["Belady MIN"].append(1.0 - hits / (len(sample.trace) - sample.start))
        curves["static optimum"].append(1.0 - static_optimum(stats, 0, c, start).combined)
    return {"capacities": caps, "sample_rate": sample.rate, "miss_ratio": curves}


def require_pyplot():
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
    plt = require_pyplot()
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
