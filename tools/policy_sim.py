"""Hit ratios of every policy on a stationary and a drifting trace, by the store's own planner.

    python tools/policy_sim.py

Replays each trace through ``simulate_trace`` (the code path of ``Store.lookup``, moving no
data) with a cache of 1% and 10% of the ids (device tier a tenth of it) and prints the
combined hit ratio over the second half of the trace (the first half warms the cache).
"""
import argparse

import numpy as np

from tierstore.policy import POLICIES, CacheState
from tierstore.policy import state as S
from tierstore.policy.planner import simulate_trace
from tierstore.workloads import drifting_ids, zipf_ids


def hit_ratio(trace, capacity, policy, batch):
    state = CacheState.new(capacity // 10, capacity - capacity // 10, policy)
    half = len(trace) // 2
    simulate_trace(state.arrays(), trace[:half], batch)
    m = state.meta
    hits0, misses0 = m[S.DEVICE_HITS] + m[S.RAM_HITS], m[S.MISSES]
    simulate_trace(state.arrays(), trace[half:], batch)
    hits, misses = m[S.DEVICE_HITS] + m[S.RAM_HITS] - hits0, m[S.MISSES] - misses0
    return hits / (hits + misses)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--length", type=int, default=2_000_000)
    args = parser.parse_args()
    traces = [
        ("zipf 1.0, batch 1", zipf_ids(args.ids, 1.0, args.length, seed=0), 1),
        ("drifting: zipf 1.0 over a new 50k-id topic every 100k ids, batch 64",
         drifting_ids(args.ids, 1.0, args.length, 100_000, topic_rows=50_000, seed=1), 64),
    ]
    print("| trace | cache | " + " | ".join(POLICIES) + " | adaptive - max(lru, lfu) |")
    print("|---|---:|" + "---:|" * (len(POLICIES) + 1))
    for name, trace, batch in traces:
        for share in (0.01, 0.10):
            capacity = int(args.ids * share)
            ratios = {p: hit_ratio(trace, capacity, p, batch) for p in POLICIES}
            best = max(ratios["lru"], ratios["lfu"])
            print(f"| {name} | {share:.0%} | " + " | ".join(f"{ratios[p]:.3f}" for p in POLICIES)
                  + f" | {ratios['adaptive'] - best:+.3f} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
