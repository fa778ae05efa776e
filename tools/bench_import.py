"""Bulk loading against the disk's speed: ``create(init=array)`` and ``tierstore import``
beside a raw py-lmdb ``putmulti(append=True)`` of the same keys and row bytes, in one
process, on the same file system.

    PYTHONPATH=. python tools/bench_import.py [--rows 1000000] [--dim 64] [--dtype float16]

The raw baseline is what a loader with no checks would do: one transaction, the rows'
8-byte big-endian keys and their bytes sliced from the array, appended with a cursor. The
store also validates every row (finite, shape), frames it with a CRC-32 and writes its
metadata, all in chunks of bounded memory. Prints rows/s of each and their ratio.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lmdb
import numpy as np

import tierstore as ts
from tierstore.transfer import import_table, open_source


def raw_append(path: Path, table: np.ndarray) -> float:
    start = time.perf_counter()
    env = lmdb.open(str(path), map_size=1 << 36, max_dbs=2, readahead=False, meminit=False)
    db = env.open_db(b"rows")
    n = len(table)
    keys = np.arange(n, dtype=">u8").tobytes()
    width = table.shape[1] * table.dtype.itemsize
    flat = table.tobytes()
    with env.begin(write=True) as txn:
        txn.cursor(db).putmulti(((keys[8 * i:8 * i + 8], flat[width * i:width * (i + 1)])
                                 for i in range(n)), append=True)
    env.sync(True)
    env.close()
    return time.perf_counter() - start


def store_create(path: Path, table: np.ndarray) -> float:
    start = time.perf_counter()
    ts.create(path, len(table), table.shape[1], table.dtype, init=table,
              config=ts.StoreConfig(device_rows=0, ram_rows=1, map_size=1 << 30)).close()
    return time.perf_counter() - start


def store_import(path: Path, npy: Path) -> float:
    start = time.perf_counter()
    import_table(open_source(npy), path, progress=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--workdir", help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    table = np.random.default_rng(0).standard_normal((args.rows, args.dim)).astype(args.dtype)
    work = Path(tempfile.mkdtemp(prefix="bench_import-", dir=args.workdir))
    try:
        npy = work / "table.npy"
        np.save(npy, table)
        runs = {"raw putmulti(append=True)": lambda p: raw_append(p, table),
                "tierstore create(init=array)": lambda p: store_create(p, table),
                "tierstore import .npy": lambda p: store_import(p, npy)}
        best = {name: float("inf") for name in runs}
        for k in range(args.repeat):
            for name, run in runs.items():   # interleaved: drifts in the machine hit all alike
                path = work / f"{k}-{name.split()[1]}"
                best[name] = min(best[name], run(path))
                shutil.rmtree(path)
        print(f"{args.rows:,} rows x {args.dim} {args.dtype} "
              f"({table.shape[1] * table.dtype.itemsize} bytes a row), best of {args.repeat}")
        base = best["raw putmulti(append=True)"]
        for name, seconds in best.items():
            print(f"{name:<30} {args.rows / seconds:>12,.0f} rows/s  {seconds:6.2f} s  "
                  f"{base / seconds:5.2f}x raw")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
