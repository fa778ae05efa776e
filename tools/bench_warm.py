"""Warm start: the hit ratio of a store's first batches, opened cold and opened warm.

    python tools/bench_warm.py                          # real text and Zipf, 2,000 batches
    python tools/bench_warm.py --streams text --seconds 60

A serving process opens a store whose memory tiers are empty. Here a trace is split in two:
its first half is what was profiled (``tierstore profile --write-counts`` keeps the counts of
its most used ids, as many as memory holds: ``warmstart.hot_counts``), its second half is what
the store then serves, in batches, through ``Store.lookup``. Each stream is served three ways,
each by a store opened afresh: ``cold`` (no warm start), ``warm`` (``ts.open(..., warm=)``,
then ``store.warming.wait()`` before the first batch) and ``warm, not waited`` (the first
batches run while the warm loads in the background, so its figures depend on the machine).
Printed side by side: the combined (device + RAM) and device hit ratios over the first
batches, at a few points, from ``stats()`` (warming counts no lookups), and the seconds the
batches and the warm took.

Streams: ``text`` is the Engram row-id trace of real mail (tools/data/spamassassin.npz, made
by tools/make_trace.py: 12.9M accesses over 801k rows) in batches of 16 tokens (256 ids);
``zipf`` is Zipf(1.0) over 1M rows, 4M accesses, batches of 256 ids. Memory is 5% of the rows,
a tenth of it on the device tier; rows are 64 float16 values, stored on disk.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import tierstore as ts
from tierstore.warmstart import hot_counts, save_counts
from tierstore.workloads import text_trace, zipf_ids

TEXT = Path(__file__).resolve().parent / "data" / "spamassassin.npz"
MODES = ("cold", "warm", "warm, not waited")
SECONDS_MARK = 500      # with --seconds, a point every this many batches: modes compare at one


def streams(which, zipf_rows):
    if "text" in which:
        trace = text_trace(TEXT)
        yield "real text (SpamAssassin mail)", trace, int(trace.max()) + 1
    if "zipf" in which:
        yield "zipf 1.0", zipf_ids(zipf_rows, 1.0, 4 * zipf_rows, seed=0), zipf_rows


def random_rows(dim):
    rng = np.random.default_rng(0)
    return lambda start, stop: rng.standard_normal((stop - start, dim))


def checkpoints(batches):
    points = [b for b in (10, 100, 1000) if b < batches]
    return points + [batches]


def serve(path, config, counts, mode, served, batch, batches, seconds):
    """Serve ``served`` in batches; (rows of the table, warm seconds, batches served, seconds)."""
    t0 = time.perf_counter()
    store = ts.open(path, config, readonly=True, warm=None if mode == "cold" else counts)
    warm_seconds = None
    if mode == "warm":
        store.warming.wait()
        warm_seconds = time.perf_counter() - t0
    rows, marks = [], set(checkpoints(batches))
    start = time.perf_counter()
    n = 0
    while n < batches and (n + 1) * batch <= len(served):
        store.lookup(served[n * batch:(n + 1) * batch])
        n += 1
        over = seconds and time.perf_counter() - start >= seconds
        if n in marks or over or (seconds and n % SECONDS_MARK == 0):
            rows.append(_point(store, n, start))
        if over:
            break
    if not rows or rows[-1][0] != n:            # the trace ran out first
        rows.append(_point(store, n, start))
    if mode == "warm, not waited":
        store.warming.wait()
        warm_seconds = store.warming.seconds
    store.close()
    return rows, warm_seconds


def _point(store, n, start):
    s = store.stats()
    return n, s["hit_ratio"], s["device"]["hit_ratio"], time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", nargs="+", default=["text", "zipf"], choices=["text", "zipf"])
    parser.add_argument("--batches", type=int, default=2000, help="batches served (default 2000)")
    parser.add_argument("--seconds", type=float, help="serve this long instead of --batches "
                        "(the first minute: --seconds 60), or until the trace runs out")
    parser.add_argument("--batch", type=int, default=256, help="ids a batch (default 256)")
    parser.add_argument("--memory", type=float, default=0.05, help="memory tiers' share of the "
                        "rows (default 0.05)")
    parser.add_argument("--zipf-rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    batches = args.batches if not args.seconds else 1 << 62

    with tempfile.TemporaryDirectory() as tmp:
        for name, trace, rows in streams(args.streams, args.zipf_rows):
            half = len(trace) // 2
            memory = max(2, int(args.memory * rows))
            config = ts.StoreConfig(device_rows=memory // 10, ram_rows=memory - memory // 10)
            ids, counts, accesses = hot_counts(trace[:half], memory)
            counts_file = save_counts(Path(tmp) / "hot.npz", ids, counts, accesses)
            path = Path(tmp) / "store"
            ts.create(path, rows, args.dim, "float16", init=random_rows(args.dim),
                      overwrite=True).close()
            print(f"\n{name}: {rows:,} rows, memory {memory:,} rows ({args.memory:.0%}; device "
                  f"{config.device_rows:,}), batches of {args.batch} ids; the counts file: the "
                  f"{len(ids):,} most used ids of the first {half:,} accesses "
                  f"({counts.sum() / accesses:.1%} of them)")
            results = {m: serve(path, config, counts_file, m, trace[half:], args.batch, batches,
                                args.seconds) for m in MODES}
            if args.seconds:
                _print_first_seconds(results, args.seconds)
            else:
                _print_checkpoints(results)
            print(f"warm start: {results['warm'][1]:.2f} s waited before the first batch; "
                  f"the warm beside the batches took {results['warm, not waited'][1]:.2f} s")


def _print_checkpoints(results):
    print("| batches served | " + " | ".join(f"{m}: hit (device)" for m in MODES)
          + " | warm - cold | seconds: " + " / ".join(MODES) + " |")
    print("|---:|" + "---:|" * (len(MODES) + 2))
    for k in range(min(len(results[m][0]) for m in MODES)):
        got = [results[m][0][k] for m in MODES]
        print(f"| {got[0][0]:,} | " + " | ".join(f"{h:.3f} ({d:.3f})" for _, h, d, _ in got)
              + f" | {got[1][1] - got[0][1]:+.3f} | "
              + " / ".join(f"{t:.1f}" for *_, t in got) + " |")


def _print_first_seconds(results, seconds):
    """Each mode's batches in the time and its hit ratio over them; then all at the batches
    every mode reached (on a busy machine one mode may serve fewer)."""
    common = max(set.intersection(*({p[0] for p in results[m][0]} for m in MODES)))
    print(f"| opened | batches in the first {seconds:g} s | hit ratio (device) | hit ratio "
          f"(device) over the first {common:,} batches |")
    print("|---|---:|---:|---:|")
    for m in MODES:
        n, hit, device, _ = results[m][0][-1]
        _, at_hit, at_device, _ = next(p for p in results[m][0] if p[0] == common)
        print(f"| {m} | {n:,} | {hit:.3f} ({device:.3f}) | {at_hit:.3f} ({at_device:.3f}) |")


if __name__ == "__main__":
    main()
