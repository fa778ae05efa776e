"""The figures of the Profiling section of docs/BENCHMARKS.md.

    python tools/profile_demo.py                       # everything below
    python tools/profile_demo.py --skip-timing         # without the 100M-access timing

1. ``tierstore profile`` on a Zipf(1.0) trace of 10M accesses over 1M ids
   (``tierstore.workloads.zipf_ids(1_000_000, 1.0, 10_000_000, seed=0)``), through the real
   command, tiers of 1% and 10% of the ids (the defaults).
2. Agreement with libCacheSim (``pip install libcachesim``): LRU, LFU and Belady hit ratios on
   the same trace at caches of 1% and 10% of the ids, ours against theirs.
3. The time of one sequential replay of a 100M-access trace under the default policy, on one
   core (process CPU time and wall time).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from tierstore import profile as P
from tierstore.workloads import zipf_ids


def run_profile(path):
    cmd = [sys.executable, "-m", "tierstore", "profile", str(path)]
    print("$ tierstore profile " + os.path.basename(path), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(out.stdout)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
    print(f"(the command took {time.perf_counter() - t0:.1f} s of wall time)\n", flush=True)


def libcachesim_table(trace, workdir):
    try:
        import libcachesim as lcs
    except ImportError:
        print("libcachesim is not installed: pip install libcachesim\n")
        return
    path = os.path.join(workdir, "trace.oracleGeneral.bin")
    P.write_oracle_general(trace, path)
    stats = P.trace_stats(trace)
    n = len(trace)
    ids = stats.unique_ids
    print(f"Agreement with libCacheSim {getattr(lcs, '__version__', '')} on the same trace "
          f"({n:,} accesses, {ids:,} distinct ids), whole trace counted:\n")
    print("| cache | policy | tierstore | libCacheSim | difference (hits) |")
    print("|---:|---|---:|---:|---:|")
    for share in (0.01, 0.10):
        cap = int(share * 1_000_000)
        for name, policy in (("LRU", "lru"), ("LFU", "lfu"), ("Belady", None)):
            reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
            theirs = 1.0 - getattr(lcs, name)(cache_size=cap).process_trace(reader)[0]
            if policy is None:
                r = P.belady(stats, 0, cap)
            else:
                r = P.simulate(trace, cap // 10, cap - cap // 10, policy)
            hits = r.device_hits + r.ram_hits
            print(f"| {cap:,} rows ({share:.0%}) | {name} | {r.combined:.4f} | {theirs:.4f} | "
                  f"{hits - round(theirs * n):+d} |", flush=True)
    print()


def timing(size):
    print(f"Sequential replay of {size:,} accesses (Zipf 1.0 over 1M ids), device 10,000 + "
          f"RAM 100,000 rows, policy {P.DEFAULT_POLICY}:", flush=True)
    trace = zipf_ids(1_000_000, 1.0, size, seed=0)
    setup = P.SEQUENTIAL.prepare()
    cpu, wall = time.process_time(), time.perf_counter()
    r = P.simulate(trace, 10_000, 100_000)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"  {wall:.1f} s wall, {cpu:.1f} s CPU ({cpu / size * 1e9:.0f} ns an access), "
          f"replay mode {P.SEQUENTIAL.mode}, one-off compile and check {setup:.1f} s; "
          f"hit ratio {r.combined:.4f}\n", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accesses", type=int, default=10_000_000)
    parser.add_argument("--timing-accesses", type=int, default=100_000_000)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-libcachesim", action="store_true")
    args = parser.parse_args()
    trace = zipf_ids(1_000_000, 1.0, args.accesses, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "zipf1.0_10M.npy")
        np.save(path, trace)
        run_profile(path)
        if not args.skip_libcachesim:
            libcachesim_table(trace, workdir)
    if not args.skip_timing:
        del trace
        timing(args.timing_accesses)


if __name__ == "__main__":
    main()
