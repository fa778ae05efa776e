"""The whole profile of a trace as one JSON-ready dict (what ``tierstore profile --json`` prints)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..policy import POLICIES, CacheState
from .curves import miss_ratio_curves, plot_curves, require_pyplot
from .simulation import DEFAULT_POLICY, SEQUENTIAL, belady, simulate, static_optimum
from .sizing import bandwidth, recommend
from .stats import trace_stats, zipf_fit


@dataclass
class ProfileSpec:
    device_rows: int | None = None
    ram_rows: int | None = None
    policies: tuple = POLICIES
    batch: int = 1
    lookahead: int = 0                      # batches submitted ahead of the one planned
    warmup: float = 0.0
    target: float = 0.9
    device_target: float | None = None
    lookup_rate: float = 1e6
    row_bytes: int = 256
    row_bytes_from: str = "given"           # how the caller knows the row size, for the report
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
        require_pyplot()            # before any work: no matplotlib, no point replaying
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
    if not policies:
        raise ConfigError("give at least one policy to replay")
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
        sims[p] = simulate(trace, device_rows, ram_rows, p, spec.batch, start,
                           lookahead=spec.lookahead)
    log("static optimum and Belady MIN")
    sims["static optimum"] = static_optimum(stats, device_rows, ram_rows, start)
    sims["Belady MIN"] = belady(stats, device_rows, ram_rows, start)
    report["simulation"] = {
        "device_rows": device_rows, "ram_rows": ram_rows, "batch": spec.batch,
        "lookahead": spec.lookahead,
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

    # sized under the default policy, unless the caller replays others only
    rec_policy = DEFAULT_POLICY if DEFAULT_POLICY in policies else policies[0]
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
        "lookup_rate": spec.lookup_rate, "row_bytes": spec.row_bytes,
        "row_bytes_from": spec.row_bytes_from, "policy": rec_policy,
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
