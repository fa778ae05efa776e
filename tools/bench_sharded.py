"""Sharded-store benchmark: lookups/s and bytes exchanged per looked-up row, 1..N processes.

    python tools/bench_sharded.py                      # gloo on CPU, 1, 2 and 4 processes
    python tools/bench_sharded.py --nprocs 8 --backend nccl --device cuda   # one GPU a rank

For each process count it spawns that many ranks on this machine (a FileStore
rendezvous in the work directory), creates a sharded table of random rows (mod
rule), and has every rank look up its own slice of one Zipf id stream (hot rows
scattered over the table, as hashed Engram ids are), ``--batch`` ids a call.
After ``--warmup`` calls, ``--batches`` calls are timed between two barriers.
Reported, for the whole group: ids looked up per second (every rank's ids,
duplicates included), the bytes the all-to-alls sent between ranks per looked-up
id (counts, ids, rows and status rows; a rank's part for itself not counted),
and the shards' hit ratios. Tier capacities are per rank: each process brings
its own memory, as a host added to a job does. A first row times a plain Store
(no process group) on the one-process stream: the cost of the sharded layer.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nprocs", default="1,2,4", help="comma-separated process counts")
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    p.add_argument("--device", default="cpu", help="the shards' device tier: cpu or cuda")
    p.add_argument("--rows", type=int, default=1 << 20)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--device-rows", type=int, default=1 << 14, help="per rank")
    p.add_argument("--ram-rows", type=int, default=1 << 16, help="per rank")
    p.add_argument("--alpha", type=float, default=1.05, help="Zipf exponent")
    p.add_argument("--batch", type=int, default=8192, help="ids per rank per lookup")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the plain-Store row (same stream as 1 process, no process group)")
    return p.parse_args(argv)


def row_init(dim):
    """Random rows, the same for every process count (seeded by the chunk's first row)."""
    def init(start, stop):
        return np.random.default_rng(start).standard_normal((stop - start, dim), dtype=np.float32)
    return init


def id_batches(args, world: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s slice of one Zipf stream: the same hot rows everywhere, other draws."""
    from tierstore.workloads import zipf_ids

    calls = args.warmup + args.batches
    stream = zipf_ids(args.rows, args.alpha, world * calls * args.batch, seed=0)
    return stream[rank::world].reshape(calls, args.batch)


def plain_baseline(args, work: str) -> float:
    """ids/s of a plain Store (no process group) on the one-process stream."""
    import tierstore as ts

    config = ts.StoreConfig(device_rows=args.device_rows, ram_rows=args.ram_rows,
                            device=args.device)
    batches = id_batches(args, 1, 0)
    with ts.create(Path(work) / "plain", args.rows, args.dim, args.dtype,
                   init=row_init(args.dim), config=config, overwrite=True) as store:
        for k in range(args.warmup):
            store.lookup(batches[k])
        start = time.perf_counter()
        for k in range(args.warmup, len(batches)):
            store.lookup(batches[k])
        return args.batches * args.batch / (time.perf_counter() - start)


def rank_main(rank, world, args, work: str):
    import torch
    import torch.distributed as dist

    import tierstore as ts
    from tierstore.distributed import create_sharded

    run = Path(work) / f"world-{world}"
    dist.init_process_group(args.backend, init_method=f"file://{run}/rendezvous", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=10))
    if args.backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    try:
        config = ts.StoreConfig(device_rows=args.device_rows, ram_rows=args.ram_rows,
                                device=args.device)

        store = create_sharded(run / "table", args.rows, args.dim, args.dtype,
                               init=row_init(args.dim), config=config)
        mine = id_batches(args, world, rank)
        calls = len(mine)
        if args.backend == "nccl":
            mine = torch.from_numpy(mine).cuda()
        for k in range(args.warmup):
            store.lookup(mine[k])
        before = store.stats()
        dist.barrier()
        start = time.perf_counter()
        for k in range(args.warmup, calls):
            store.lookup(mine[k])
        if args.backend == "nccl":
            torch.cuda.synchronize()
        dist.barrier()
        seconds = time.perf_counter() - start
        after = store.stats()
        store.close()
        if rank == 0:
            ids = after["exchange"]["ids_requested"] - before["exchange"]["ids_requested"]
            sent = after["exchange"]["bytes_sent"] - before["exchange"]["bytes_sent"]
            served = after["lookups"] - before["lookups"]

            def hits(tier):
                return (after[tier]["hits"] - before[tier]["hits"]) / served

            result = {"world": world, "seconds": seconds, "ids": ids, "ids_per_s": ids / seconds,
                      "bytes_per_id": sent / ids,
                      "unique_per_id": (after["exchange"]["unique_ids_requested"]
                                        - before["exchange"]["unique_ids_requested"]) / ids,
                      "device_hit": hits("device"), "ram_hit": hits("ram"),
                      "disk_read": (after["disk"]["reads"] - before["disk"]["reads"]) / served}
            (run / "result.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main(argv=None):
    args = parse_args(argv)
    import torch.multiprocessing as mp

    worlds = [int(n) for n in args.nprocs.split(",")]
    work = args.dir or tempfile.mkdtemp(prefix="bench_sharded-")
    results = []
    for world in worlds:
        run = Path(work) / f"world-{world}"
        run.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        mp.spawn(rank_main, args=(world, args, work), nprocs=world, join=True)
        results.append(json.loads((run / "result.json").read_text()))
        print(f"{world} process(es) done in {time.perf_counter() - started:.1f} s", flush=True)
    plain = plain_baseline(args, work) if args.baseline else None
    row_bytes = args.dim * np.dtype(args.dtype).itemsize
    print(f"\n{args.rows:,} rows x {args.dim} {args.dtype} ({row_bytes} B a row), mod rule, "
          f"backend {args.backend}, device tier {args.device}; per rank: device "
          f"{args.device_rows:,} + RAM {args.ram_rows:,} rows; Zipf {args.alpha}, "
          f"{args.batch:,} ids a rank a call, {args.batches} timed calls after {args.warmup}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| processes | lookups/s (ids, all ranks) | per process | bytes exchanged / looked-up id "
          "| unique ids / id | device hit | RAM hit | disk read |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    if plain is not None:
        print(f"| plain Store, no group | {plain:,.0f} | {plain:,.0f} | - | - | - | - | - |")
    for r in results:
        print(f"| {r['world']} | {r['ids_per_s']:,.0f} | {r['ids_per_s'] / r['world']:,.0f} "
              f"| {r['bytes_per_id']:.1f} | {r['unique_per_id']:.3f} | {r['device_hit']:.3f} "
              f"| {r['ram_hit']:.3f} | {r['disk_read']:.3f} |")


if __name__ == "__main__":
    main()
