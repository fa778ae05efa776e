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

The package, by responsibility: ``traces`` (trace files in and out), ``stats`` (counts,
coverage, Zipf fit), ``simulation`` (replays and the two bounds), ``sizing`` (the smallest
memory for a target, bandwidth), ``curves`` (miss-ratio curves and their plot), ``report``
(the whole profile as a dict) and ``text`` (that dict as text).
"""
from .curves import miss_ratio_curves, plot_curves
from .report import ProfileSpec, profile
from .simulation import COUNTERS, DEFAULT_POLICY, SEQUENTIAL, SimResult, belady, simulate, static_optimum
from .sizing import Recommendation, Sample, bandwidth, rank_sample, recommend
from .stats import TraceStats, trace_stats, zipf_fit
from .text import format_report
from .traces import (
    NPY_MAGIC,
    load_tokens,
    load_trace,
    ngram_trace,
    read_text_tokens,
    text_tokens,
    write_oracle_general,
)

__all__ = [
    "COUNTERS",
    "DEFAULT_POLICY",
    "NPY_MAGIC",
    "SEQUENTIAL",
    "ProfileSpec",
    "Recommendation",
    "Sample",
    "SimResult",
    "TraceStats",
    "bandwidth",
    "belady",
    "format_report",
    "load_tokens",
    "load_trace",
    "miss_ratio_curves",
    "ngram_trace",
    "plot_curves",
    "profile",
    "rank_sample",
    "read_text_tokens",
    "recommend",
    "simulate",
    "static_optimum",
    "text_tokens",
    "trace_stats",
    "write_oracle_general",
    "zipf_fit",
]
