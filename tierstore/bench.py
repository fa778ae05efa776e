"""The lookup benchmark: our store against np.take and a raw LMDB loop, same ids, same process.

Absolute times on shared machines drift, so every figure that matters is a
ratio against a baseline measured batch by batch, interleaved with ours.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import api
from .config import StoreConfig
from .kernels.batch import dedupe
from .progress import progress as progress_bar
from .tiers.format import row_keys
from .workloads import drifting_ids, uniform_ids, zipf_ids


@dataclass(frozen=True)
class BenchSpec:
    rows: int = 2_000_000
    dim: int = 128
    dtype: str = "float16"
    device_share: float = 0.01
    ram_share: float = 0.10
    batch: int = 65536
    warmup: int = 10
    timed: int = 20
    alphas: tuple = (0.8, 1.0, 1.2)
    drift_phase: int = 65536 * 8
    drift_topic_share: float = 0.22
    policies: tuple = ("adaptive", "lru", "lfu")
    codecs: tuple = ("raw", "zstd", "zstd+dict", "int8")
    codec_rows: int = 100_000
    seed: int = 0
    workdir: str | None = None

    @property
    def config(self) -> StoreConfig:
        return StoreConfig(device_rows=int(self.rows * self.device_share),
                           ram_rows=int(self.rows * self.ram_share))


@dataclass
class StreamResult:
    name: str
    hit: dict = field(default_factory=dict)        # policy -> (device, ram, combined)
    hit_at_lookup: float = 0.0                      # default policy: ids found in memory by lookups
    hit_sync: float = 0.0                           # default policy, every batch planned at once
    ours_rate: float = 0.0                          # ids/s, default policy
    take_rate: float = 0.0                          # ids/s, np.take over the whole table


def _streams(spec: BenchSpec):
    size = spec.batch * (spec.warmup + spec.timed)
    for i, alpha in enumerate(spec.alphas):
        yield f"zipf {alpha}", zipf_ids(spec.rows, alpha, size, seed=spec.seed + i)
    if spec.drift_phase:
        topic = int(spec.rows * spec.drift_topic_share)
        yield (f"drifting: zipf 1.0 over a new random {topic:,}-row topic every {spec.drift_phase:,} ids",
               drifting_ids(spec.rows, 1.0, size, spec.drift_phase, topic_rows=topic,
                            seed=spec.seed + 99))


def _table(spec: BenchSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    out = np.empty((spec.rows, spec.dim), dtype=spec.dtype)
    for start in range(0, spec.rows, 1 << 18):
        stop = min(start + (1 << 18), spec.rows)
        out[start:stop] = rng.standard_normal((stop - start, spec.dim), dtype=np.float32) * 0.05
    return out


def _hit_ratios(before: dict, after: dict):
    lookups = after["lookups"] - before["lookups"]
    dev = (after["device"]["hits"] - before["device"]["hits"]) / lookups
    ram = (after["ram"]["hits"] - before["ram"]["hits"]) / lookups
    return dev, ram, dev + ram


def _settled(store) -> float:
    """Seconds until the store's planner thread has planned every lookup (``stats`` waits for
    it): baselines are timed after, so they never share the machine with our planning."""
    t0 = time.perf_counter()
    store.stats()
    return time.perf_counter() - t0


def _hit_at_lookup(before: dict, after: dict) -> float:
    """The share of ids that lookups through the index found in memory (before any planning)."""
    ids = after["indexed_lookup"]["ids"] - before["indexed_lookup"]["ids"]
    missed = after["indexed_lookup"]["through_host"] - before["indexed_lookup"]["through_host"]
    return 1.0 - missed / ids if ids else float("nan")


def _run_stream(path, spec, policy, ids, table, time_baseline):
    """(planner's hit ratios, hit ratio at lookup, our rate, np.take's rate)."""
    config = StoreConfig(device_rows=spec.config.device_rows, ram_rows=spec.config.ram_rows,
                         policy=policy)
    batches = ids.reshape(-1, spec.batch)
    ours = take = 0.0
    with api.open(path, config=config) as store:
        for b in batches[:spec.warmup]:
            store.lookup(b)
        before = store.stats()
        for b in batches[spec.warmup:]:
            t0 = time.perf_counter()
            got = store.lookup(b)
            t1 = time.perf_counter()
            if time_baseline:
                _settled(store)
                t1 = time.perf_counter()
                want = np.take(table, b, axis=0)
                take += time.perf_counter() - t1
                if not np.array_equal(got, want):
                    raise AssertionError(f"store returned wrong rows ({policy})")
            ours += t1 - t0
        after = store.stats()
    n = spec.timed * spec.batch
    return (_hit_ratios(before, after), _hit_at_lookup(before, after), n / ours,
            (n / take if take else 0.0))


def _sync_hit_ratio(path, spec, ids) -> float:
    """The default policy's combined hit ratio with every batch planned before the next
    lookup (``lookup_async`` plans on its worker, holding the store): the figure the
    planner thread's delay and sampling must keep."""
    batches = ids.reshape(-1, spec.batch)
    with api.open(path, config=spec.config) as store:
        for b in batches[:spec.warmup]:
            store.lookup_async(b).wait()
        before = store.stats()
        for b in batches[spec.warmup:]:
            store.lookup_async(b).wait()
        return _hit_ratios(before, store.stats())[2]


def _resident_path(path, spec, table):
    """Lookups whose rows are all in memory: the store's own overhead against np.take."""
    with api.open(path, config=spec.config) as store:
        warm = zipf_ids(spec.rows, 1.0, spec.batch * spec.warmup, seed=spec.seed + 7)
        for b in warm.reshape(-1, spec.batch):
            store.lookup(b)
        resident = store.resident_ids()
        rng = np.random.default_rng(spec.seed + 8)
        # draw with the Zipf skew of the stream, restricted to resident rows
        ids = resident[np.minimum(zipf_ids(len(resident), 1.0, spec.batch * spec.timed,
                                           seed=spec.seed + 9), len(resident) - 1)]
        ids = rng.permutation(ids).reshape(-1, spec.batch)
        ours = take = settle = 0.0
        cpu = np.zeros(2)      # thread CPU time of ours and np.take: what other jobs inflate less
        before = store.stats()
        for b in ids:
            c0, t0 = time.thread_time(), time.perf_counter()
            store.lookup(b)
            ours += time.perf_counter() - t0
            cpu[0] += time.thread_time() - c0
            settle += _settled(store)
            c1, t1 = time.thread_time(), time.perf_counter()
            np.take(table, b, axis=0)
            take += time.perf_counter() - t1
            cpu[1] += time.thread_time() - c1
        hit = _hit_ratios(before, store.stats())[2]
        # the same batches back to back, as a training loop calls: each lookup's planning
        # round runs beside the next lookups (on the other core, where one is free)
        t0 = time.perf_counter()
        for b in ids:
            store.lookup(b)
        in_a_row = time.perf_counter() - t0
        _settled(store)
        t0 = time.perf_counter()
        for b in ids:
            np.take(table, b, axis=0)
        take_in_a_row = time.perf_counter() - t0
    return ours, take, hit, settle, tuple(cpu), (in_a_row, take_in_a_row)


def _raw_reads(store, uniq, spec):
    """The baseline: a bare py-lmdb get + np.frombuffer loop over sorted keys."""
    env, db = store.disk.env, store.disk.rows_db
    out = np.empty((len(uniq), spec.dim), dtype=spec.dtype)
    with env.begin(db=db) as txn:
        for k, key in enumerate(row_keys(np.sort(uniq))):
            out[k] = np.frombuffer(txn.get(key), dtype=spec.dtype, count=spec.dim)


COLD_BATCHES = 4


def _cold_path(path, spec):
    """Lookups that all miss: our whole path against a bare py-lmdb get + decode loop, batch
    by batch; then the same batches with the next one's rows prefetched (read on the
    store's worker while the caller looks up the current one), against the loop over all."""
    tiny = StoreConfig(device_rows=16, ram_rows=16)
    ids = uniform_ids(spec.rows, spec.batch * 2 * (COLD_BATCHES + 1), seed=spec.seed + 11)
    batches = [dedupe(b)[0] for b in ids.reshape(2 * (COLD_BATCHES + 1), -1)]
    warm, plain, ahead = batches[:2], batches[2:2 + COLD_BATCHES], batches[2 + COLD_BATCHES:]
    ours = raw = 0.0
    with api.open(path, config=tiny) as store:
        # untimed, as the streams' warm-up batches: each path's first call in a process loads
        # its compiled kernels from numba's cache and makes its buffers; timed, that made the
        # 4 prefetched batches read 0.36-0.80x the raw loop in 5 runs, 0.95-1.01x after it
        store.lookup(warm[0])
        store.prefetch(warm[1]).wait()
        store.lookup(warm[1])
        _settled(store)
        for uniq in plain:
            t0 = time.perf_counter()
            store.lookup(uniq)
            ours += time.perf_counter() - t0
            _settled(store)
            t1 = time.perf_counter()
            _raw_reads(store, uniq, spec)
            raw += time.perf_counter() - t1
        t0 = time.perf_counter()
        staged = store.prefetch(ahead[0])
        for k, uniq in enumerate(ahead):
            staged.wait()
            if k + 1 < len(ahead):
                staged = store.prefetch(ahead[k + 1])
            store.lookup(uniq)
        ours_ahead = time.perf_counter() - t0
        _settled(store)
        t0 = time.perf_counter()
        for uniq in ahead:
            _raw_reads(store, uniq, spec)
        raw_ahead = time.perf_counter() - t0
    return (ours, raw, sum(map(len, plain))), (ours_ahead, raw_ahead, sum(map(len, ahead)))


def _codec_sizes(workdir, spec, table, done):
    """Per codec: bytes a row, read and write rates, error; ``done(name)`` after each."""
    rows = table[:spec.codec_rows]
    out = []
    for name in spec.codecs:
        codec = {"id": "zstd", "level": 3, "dict_size": 16384} if name == "zstd+dict" else name
        path = Path(workdir) / f"codec-{name}"
        t0 = time.perf_counter()
        with api.create(path, len(rows), spec.dim, spec.dtype, init=rows,
                        config=StoreConfig(device_rows=16, ram_rows=16), codec=codec) as store:
            build = time.perf_counter() - t0
            per_row = store.disk.used_bytes() / len(rows)
            sample = np.arange(0, len(rows), max(1, len(rows) // 4096))
            store.lookup(sample[-8:])  # compiles the codec's kernels outside the timing
            t0 = time.perf_counter()
            got = store.lookup(sample)
            read = time.perf_counter() - t0
            err = float(np.max(np.abs(got.astype(np.float64) - rows[sample])))
        out.append((name, per_row, per_row / (spec.dim * np.dtype(spec.dtype).itemsize),
                    len(sample) / read, len(rows) / build, err))
        shutil.rmtree(path, ignore_errors=True)
        done(name)
    return out


def run(spec: BenchSpec = BenchSpec(), out=print, progress: bool = False) -> dict:
    """Run the benchmark, print its tables, return the figures. ``progress``: a bar of the
    measuring steps on stderr (when it is a terminal); the tables follow it."""
    workdir = Path(spec.workdir or tempfile.mkdtemp(prefix="tierstore-bench-"))
    path = workdir / "table"
    try:
        return _run(spec, workdir, path, out, progress)
    finally:
        if spec.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(spec, workdir, path, out, progress):
    cfg = spec.config
    out(f"table: {spec.rows:,} rows x {spec.dim} {spec.dtype}; device tier {cfg.device_rows:,} rows "
        f"({spec.device_share:.0%}, device='cpu'), RAM tier {cfg.ram_rows:,} rows ({spec.ram_share:.0%}); "
        f"batches of {spec.batch:,} ids, {spec.warmup} warm-up + {spec.timed} timed per stream")
    table = _table(spec)
    t0 = time.perf_counter()
    api.create(path, spec.rows, spec.dim, spec.dtype, init=table, config=cfg, overwrite=True,
               progress=progress).close()
    out(f"store created in {time.perf_counter() - t0:.1f} s\n")

    streams = list(_streams(spec))
    steps = len(streams) * len(spec.policies) + 2 + len(spec.codecs)
    results = []
    with progress_bar(steps, "bench", unit="steps", enabled=progress) as bar:
        for name, ids in streams:
            res = StreamResult(name)
            for policy in spec.policies:
                bar.set_postfix_str(f"{name[:30]}, {policy}")
                ratios, at_lookup, ours, take = _run_stream(
                    path, spec, policy, ids, table, time_baseline=policy == spec.policies[0])
                res.hit[policy] = ratios
                if policy == spec.policies[0]:
                    res.ours_rate, res.take_rate = ours, take
                    res.hit_at_lookup = at_lookup
                    res.hit_sync = _sync_hit_ratio(path, spec, ids)
                bar.update(1)
            results.append(res)
        bar.set_postfix_str("resident path")
        ours, take, hit, settle, (ours_cpu, take_cpu), (in_a_row, take_in_a_row) = \
            _resident_path(path, spec, table)
        bar.update(1)
        bar.set_postfix_str("cold path")
        (cold_ours, cold_raw, n_cold), (ahead_ours, ahead_raw, n_ahead) = _cold_path(path, spec)
        bar.update(1)
        bar.set_postfix_str("codecs")
        sizes = _codec_sizes(workdir, spec, table, lambda name: bar.update(1))

    default = spec.policies[0]
    out(f"Lookup throughput ({default} policy; whole path: dedupe, tiers, disk misses, policy)")
    out("| stream | ours M ids/s | np.take M ids/s | ours / np.take | device hit | RAM hit | disk |")
    out("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        d, m, c = r.hit[default]
        out(f"| {r.name} | {r.ours_rate / 1e6:.2f} | {r.take_rate / 1e6:.2f} | "
            f"{r.ours_rate / r.take_rate:.2f} | {d:.3f} | {m:.3f} | {1 - c:.3f} |")

    out(f"\nHit ratio of the {default} policy: ids found in memory by the lookups (planning on the "
        "planner thread), the planner's count, and every batch planned at once")
    out("| stream | at lookup | planner's count | planned at once | at lookup - at once |")
    out("|---|---:|---:|---:|---:|")
    for r in results:
        out(f"| {r.name} | {r.hit_at_lookup:.4f} | {r.hit[default][2]:.4f} | {r.hit_sync:.4f} | "
            f"{r.hit_at_lookup - r.hit_sync:+.4f} |")

    out("\nCombined (device + RAM) hit ratio by policy, same stream, same tier sizes")
    out("| stream | " + " | ".join(spec.policies) + " | ours - max(lru, lfu) |")
    out("|---|" + "---:|" * (len(spec.policies) + 1))
    for r in results:
        best = max(r.hit[p][2] for p in ("lru", "lfu") if p in r.hit)
        out(f"| {r.name} | " + " | ".join(f"{r.hit[p][2]:.3f}" for p in spec.policies)
            + f" | {r.hit[default][2] - best:+.3f} |")

    n = spec.batch * spec.timed
    out("\nMemory-resident path (ids drawn from rows already in memory) and cold path (uniform ids, tiny tiers)")
    out("| path | ours M ids/s | baseline | baseline M ids/s | ours / baseline |")
    out("|---|---:|---|---:|---:|")
    out(f"| resident (hit ratio {hit:.3f}) | {n / ours / 1e6:.2f} | np.take, whole table in RAM | "
        f"{n / take / 1e6:.2f} | {take / ours:.2f} |")
    out(f"| (in thread CPU time: ours {ours_cpu / spec.timed * 1e3:.2f} ms a batch, np.take "
        f"{take_cpu / spec.timed * 1e3:.2f} ms) | | | | {take_cpu / ours_cpu:.2f} |")
    out(f"| (the planner thread, after the resident lookups returned: {settle / spec.timed * 1e3:.1f} ms "
        f"a batch, off the caller's path) | | | | |")
    out(f"| resident, lookups back to back (planning beside them) | {n / in_a_row / 1e6:.2f} | "
        f"np.take, back to back | {n / take_in_a_row / 1e6:.2f} | {take_in_a_row / in_a_row:.2f} |")
    out(f"| cold (all misses) | {n_cold / cold_ours / 1e6:.2f} | py-lmdb get + np.frombuffer loop | "
        f"{n_cold / cold_raw / 1e6:.2f} | {cold_raw / cold_ours:.2f} |")
    out(f"| cold, next batch prefetched | {n_ahead / ahead_ours / 1e6:.2f} | the same loop | "
        f"{n_ahead / ahead_raw / 1e6:.2f} | {ahead_raw / ahead_ours:.2f} |")

    if sizes:
        out(f"\nBytes on disk per row by codec ({spec.codec_rows:,} rows of the table, "
            f"{spec.dim * np.dtype(spec.dtype).itemsize} raw bytes a row; LMDB pages included)")
        out("| codec | bytes/row | vs raw row | read M rows/s | write M rows/s | max abs error |")
        out("|---|---:|---:|---:|---:|---:|")
        for name, per_row, rel, read, write, err in sizes:
            out(f"| {name} | {per_row:.1f} | {rel:.2f} | {read / 1e6:.2f} | {write / 1e6:.2f} | {err:.2g} |")
    return {"streams": results, "resident": (ours, take, hit, settle, ours_cpu, take_cpu,
                                             in_a_row, take_in_a_row),
            "cold": (cold_ours, cold_raw, ahead_ours, ahead_raw),
            "codecs": sizes}
