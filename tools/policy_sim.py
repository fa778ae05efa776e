"""Hit ratios of our policies next to libCacheSim's and Belady's, on real text and synthetic streams.

    python tools/policy_sim.py                      # every stream
    python tools/policy_sim.py --streams text       # the real-text trace only

Streams: ``text`` is the Engram row-id trace of real mail (tools/data/spamassassin.npz, made by
tools/make_trace.py: 12.9M accesses over 16 tables of about 50k rows) read in batches of 16
tokens (256 ids), with memory of 1%, 5% and 10% of the rows; ``zipf`` (Zipf 1.0, batch 1) and
``drift`` (Zipf 1.0 over a new 50k-id topic every 100k ids, batch 64) are 2M accesses over 1M
ids, with memory of 1% and 10%. Ours replays the trace through ``simulate_trace`` (the code path
of ``Store.lookup``, moving no data; a tenth of memory on the device tier); libCacheSim's
policies (the ``crosscheck`` extra) replay it one access at a time; Belady's MIN is the offline
optimum. Every figure is 1 - rows read from disk / accesses over the trace's second half (the
first half warms the cache): a batch reads a missing row once however often it uses it, as a
one-access-at-a-time simulator counts its repeats as hits. ``ours ... +K`` plans each batch
with the next K batches already submitted (``--lookahead``; policy/lookahead.py).
"""
import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from tierstore.policy import POLICIES
from tierstore.profile import belady, simulate, trace_stats, write_oracle_general
from tierstore.workloads import drifting_ids, text_trace, zipf_ids

TEXT = Path(__file__).resolve().parent / "data" / "spamassassin.npz"
LIBCACHESIM = ("LRU", "ARC", "S3FIFO", "WTinyLFU", "Sieve", "LFU")
CLASSIC = ("LRU", "ARC", "S3FIFO", "WTinyLFU", "Sieve")   # the ones ours must match


def theirs(halves, capacity, name):
    """libCacheSim's hit ratio over the second half, the first half having warmed the cache."""
    import libcachesim as lcs

    cache = getattr(lcs, name)(cache_size=capacity)
    for path in halves:
        miss = cache.process_trace(lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE))[0]
    return 1.0 - miss


def streams(which, ids, text_tokens):
    if "text" in which:
        trace = text_trace(TEXT)
        rows = int(trace.max()) + 1
        yield (f"real text (SpamAssassin mail), {text_tokens} tokens a batch", trace,
               16 * text_tokens, rows, (0.01, 0.05, 0.10))
    if "zipf" in which:
        yield "zipf 1.0, batch 1", zipf_ids(ids, 1.0, 2 * ids, seed=0), 1, ids, (0.01, 0.10)
    if "drift" in which:
        yield ("drifting: zipf 1.0 over a new 50k-id topic every 100k ids, batch 64",
               drifting_ids(ids, 1.0, 2 * ids, 100_000, topic_rows=50_000, seed=1), 64, ids,
               (0.01, 0.10))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", nargs="+", default=["text", "zipf", "drift"],
                        choices=["text", "zipf", "drift"])
    parser.add_argument("--ids", type=int, default=1_000_000, help="ids of the synthetic streams")
    parser.add_argument("--text-tokens", type=int, default=16,
                        help="tokens a batch on the real-text trace (16 ids each; default 16)")
    parser.add_argument("--ours", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--theirs", nargs="*", default=list(LIBCACHESIM), choices=LIBCACHESIM)
    parser.add_argument("--lookahead", type=int, nargs="*", default=[1, 4],
                        help="batches submitted ahead, for the first of --ours (default 1 4)")
    args = parser.parse_args()

    ahead = [f"ours {args.ours[0]} +{k}" for k in args.lookahead]
    cols = [f"ours {p}" for p in args.ours] + ahead + list(args.theirs) + ["Belady"]
    print("| stream | memory | " + " | ".join(cols) + " | ours - best classic | gap to Belady "
          "closed by lookahead " + ", ".join(f"+{k}" for k in args.lookahead) + " |")
    print("|---|---:|" + "---:|" * (len(cols) + 2))
    with tempfile.TemporaryDirectory() as tmp:
        for name, trace, batch, rows, shares in streams(args.streams, args.ids, args.text_tokens):
            half = len(trace) // 2 // batch * batch
            halves = [os.path.join(tmp, f"{i}.bin") for i in range(2)]
            if args.theirs:
                write_oracle_general(trace[:half], halves[0])
                write_oracle_general(trace[half:], halves[1])
            stats = trace_stats(trace)
            for share in shares:
                cap = int(rows * share)
                got = {f"ours {p}": simulate(trace, cap // 10, cap - cap // 10, p, batch,
                                             half).read_hit for p in args.ours}
                got.update({f"ours {args.ours[0]} +{k}": simulate(
                    trace, cap // 10, cap - cap // 10, args.ours[0], batch, half,
                    lookahead=k).read_hit for k in args.lookahead})
                got.update({t: theirs(halves, cap, t) for t in args.theirs})
                got["Belady"] = belady(stats, 0, cap, half).combined
                best = max((got[t] for t in CLASSIC if t in got), default=float("nan"))
                ours = got[f"ours {args.ours[0]}"]
                gap = got["Belady"] - ours
                closed = ", ".join(f"{(got[c] - ours) / gap:.0%}" for c in ahead) if gap > 0 else ""
                print(f"| {name} | {share:.0%} | " + " | ".join(f"{got[c]:.3f}" for c in cols)
                      + f" | {ours - best:+.3f} | {closed} |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
