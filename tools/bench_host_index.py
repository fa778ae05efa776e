"""The host tier's resident probe alone: ``kernels/host_index.index_gather`` (two passes) against
the table it replaced (int64 keys and int32 slots at 3/4 load rounded to a power of two, the GPU
index's layout) and against its own one-pass form, in the same process, on the same rows.

    python tools/bench_host_index.py                        # 55k, 262k, 1M and 5M slots
    python tools/bench_host_index.py --slots 1000000 --load 0.75

Each id is resident; 256-byte rows, Zipf(1.0) over the resident ids in 65,536-id batches. Each
batch is timed by every kernel in turn, ``--repeats`` times; a kernel's time is the sum of its
fastest run of each batch (the machine is shared: the fastest run is the least disturbed).
``--between MB`` writes that many megabytes before each timed run, as the planner's round and
the caller's own work do between two lookups of the store: the index and the rows are then
no longer all in the caches (without it they are, each batch being gathered again and again).
"""
import argparse
import time

import numpy as np
from numba import njit

from tierstore.kernels import host_index
from tierstore.kernels.cache_hint import prefetch
from tierstore.kernels.hashing import mix64, table_size
from tierstore.tiers.memory import INDEX_LOAD
from tierstore.workloads import zipf_ids

BATCH = 65536


@njit(cache=True, _nrt=False)
def build_key_slot(keys, vals, ids, slots):
    """The replaced table: each id at the first empty bucket from ``mix64(id) & mask``."""
    mask = len(keys) - 1
    for k in range(len(ids)):
        i = np.int64(mix64(ids[k], 0) & np.uint64(mask))
        while keys[i] != -1:
            i = (i + 1) & mask
        keys[i] = ids[k]
        vals[i] = slots[k]


@njit(nogil=True, cache=True, _nrt=False)
def key_slot_gather(keys, vals, device, ram, device_rows, ids, out, missed):
    """The lookup of the replaced index: probe the keys by mask, take the slot beside the key."""
    mask = len(keys) - 1
    n_missed = 0
    for k in range(len(ids)):
        key = ids[k]
        i = np.int64(mix64(key, 0) & np.uint64(mask))
        slot = -1
        while keys[i] != -1:
            if keys[i] == key:
                slot = vals[i]
                break
            i = (i + 1) & mask
        if slot < 0:
            missed[n_missed] = k
            n_missed += 1
        elif slot < device_rows:
            for w in range(out.shape[1]):
                out[k, w] = device[slot, w]
        else:
            for w in range(out.shape[1]):
                out[k, w] = ram[slot - device_rows, w]
    return n_missed


@njit(nogil=True, cache=True, _nrt=False)
def one_pass_gather(buckets, owner, slab, ids, out, missed):
    """``host_index.index_gather`` in one pass (the store's below 2**18 slots until 2026-12-02):
    each id probed, checked against ``owner`` and copied before the next; only its home bucket
    is asked for ahead."""
    bits = host_index._bits(owner)
    slot_mask = (1 << bits) - 1
    size = len(buckets)
    n = len(ids)
    n_missed = 0
    for k in range(n):
        if k + host_index.AHEAD < n:
            prefetch(buckets, host_index._home_and_tag(size, bits, ids[k + host_index.AHEAD])[0])
        slot = -1
        i = host_index._find(buckets, owner, bits, ids[k])
        if i >= 0:
            slot = buckets[i] & slot_mask
        if slot < 0:
            missed[n_missed] = k
            n_missed += 1
        else:
            for w in range(out.shape[1]):
                out[k, w] = slab[slot, w]
    return n_missed


def run(slots: int, load: float, batches: int, repeats: int, between_mb: int):
    rng = np.random.default_rng(0)
    device_rows = slots // 11
    resident = rng.choice(50 * slots, slots, replace=False).astype(np.int64)
    where = rng.permutation(slots).astype(np.int64)
    keys = np.full(table_size(slots, 0.75), -1, dtype=np.int64)
    vals = np.full(len(keys), -1, dtype=np.int32)
    build_key_slot(keys, vals, resident, where)
    buckets, owner = host_index.new_host_index(slots, load)
    host_index.index_retarget(buckets, owner, np.empty(0, dtype=np.int64), resident, where)
    # HostMemory's: device rows first; filled, so each row is its own memory (untouched zeros
    # all read the one zero page, and the rows' cache misses vanish from the timing)
    slab = rng.integers(0, 1 << 62, (slots, 32), dtype=np.uint64)
    device, ram = slab[:device_rows], slab[device_rows:]
    ids = resident[np.minimum(zipf_ids(slots, 1.0, BATCH * batches, seed=1), slots - 1)]
    out = np.empty((BATCH, 32), dtype=np.uint64)
    missed = np.empty(BATCH, dtype=np.int64)
    kept = np.empty(BATCH, dtype=np.int64)
    kernels = {
        "key+slot table": lambda b: key_slot_gather(keys, vals, device, ram, device_rows, b, out,
                                                    missed),
        "host_index, one pass": lambda b: one_pass_gather(buckets, owner, slab, b, out, missed),
        "host_index": lambda b: host_index.index_gather(buckets, owner, slab, b, out, missed,
                                                        kept),
    }
    times = {name: np.zeros((repeats, batches)) for name in kernels}
    scratch = np.zeros(between_mb << 17)     # 8-byte words
    for r in range(repeats):
        for j, b in enumerate(ids.reshape(batches, BATCH)):
            for name, kernel in kernels.items():
                scratch += 1
                t0 = time.perf_counter()
                assert kernel(b) == 0
                times[name][r, j] = time.perf_counter() - t0
    best = {name: t.min(axis=0).sum() for name, t in times.items()}
    base = best["key+slot table"]
    print(f"| {slots:,} | {load} | " + " | ".join(
        f"{len(ids) / t / 1e6:.1f} ({base / t:.2f})" for t in best.values()) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, nargs="+", default=[55_000, 262_144, 1_000_000,
                                                                  5_000_000])
    parser.add_argument("--load", type=float, default=INDEX_LOAD, help="host_index's load")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--between", type=int, default=0, metavar="MB",
                        help="megabytes written before each timed run (default 0)")
    args = parser.parse_args()
    print("| slots | load | key+slot table M ids/s | host_index one pass (x table) | "
          "host_index, two passes (x table) |")
    print("|---:|---:|---:|---:|---:|")
    for slots in args.slots:
        run(slots, args.load, args.batches, args.repeats, args.between)


if __name__ == "__main__":
    main()
