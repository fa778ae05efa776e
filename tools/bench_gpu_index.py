"""The GPU index's host side alone: a planning round's changes to the mirror, and the buckets
that would travel (``GpuIndex.retarget`` + ``swap`` + ``changes``, on CPU tensors: no GPU needed).

    python tools/bench_gpu_index.py                         # 1M, 1,048,592, 4,194,320 and 6.4M rows
    python tools/bench_gpu_index.py --rows 6400000 --batch 60000

The tiers are filled with random ids; each round evicts ``--batch`` random rows, admits as
many new ids into their slots and promotes ``--swaps`` RAM rows into device slots (a tenth of
the rows), as the store's rounds do. Prints the mirror's host bytes a cached row and the
fastest and median round (the first two left out: compilation; the machine may be shared).
"""
import argparse
import time

import numpy as np
import torch

from tierstore.tiers.gpu_index import GpuIndex


def run(rows: int, batch: int, swaps: int, rounds: int):
    rng = np.random.default_rng(0)
    index = GpuIndex(rows, "cpu", torch)
    ids = rng.choice(1 << 40, rows + batch * rounds, replace=False).astype(np.int64)
    slot_id = ids[:rows].copy()
    fresh = rows
    empty = np.empty(0, dtype=np.int64)
    index.retarget(empty, empty, slot_id, np.arange(rows, dtype=np.int64))
    index.changes()
    device_rows = max(1, rows // 10)
    times = []
    for _ in range(rounds):
        out = rng.choice(rows, batch, replace=False).astype(np.int64)
        new = ids[fresh:fresh + batch]
        fresh += batch
        up = rng.choice(np.arange(device_rows, rows), swaps, replace=False).astype(np.int64)
        up = up[~np.isin(up, out)]
        down = rng.choice(device_rows, len(up), replace=False).astype(np.int64)
        start = time.perf_counter()
        index.retarget(slot_id[out], out, new, out)
        slot_id[out] = new
        index.swap(slot_id[up], up, down, np.ones(len(up), dtype=bool))
        sent = index.changes()[-2]             # the keys of the buckets that travel
        times.append(time.perf_counter() - start)
        slot_id[up], slot_id[down] = slot_id[down].copy(), slot_id[up].copy()
    print(f"| {rows:,} | {index.host_nbytes() / rows:.2f} | {min(times[2:]) * 1e3:.1f} | "
          f"{np.median(times[2:]) * 1e3:.1f} | {len(sent):,} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+",
                        default=[1_000_000, 1_048_592, 4_194_320, 6_400_000])
    parser.add_argument("--batch", type=int, default=60_000)
    parser.add_argument("--swaps", type=int, default=4_000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    print("| cached rows | mirror bytes a row | round, fastest ms | round, median ms | buckets sent |")
    print("|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        run(rows, args.batch, args.swaps, args.rounds)


if __name__ == "__main__":
    main()
