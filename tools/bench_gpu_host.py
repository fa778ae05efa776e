"""Host time of the CUDA lookup path, step by step (needs CUDA).

    python tools/bench_gpu_host.py [--label L] [--profile]

A 1M x 64 fp16 store (device tier 200,000 rows, RAM 300,000, 4 partitions), 131,072
Zipf(1.05) ids over 100,000 hot rows, replayed until every one is in the device tier. Prints,
in microseconds of host time:
  * the torch and Triton calls a lookup makes, each alone, back to back (host time a call);
  * the tier's ``issue`` and ``misses``, the store's ``lookup``, ``lookup_async`` and
    ``result()``, a frozen ``TieredEmbedding``'s ``prefetch`` and forward: the median of 300
    calls, each after the device was drained (as at a forward's start, where the GPU waits
    for the host), or after the lookup's own work was done (as at the Engram layer);
  * ``F.embedding`` on the same slab, the floor of a host-side call.
Host time drifts between processes on a shared machine by up to 2x: to compare two versions,
run each more than once, interleaved (``--label`` tags the lines).
"""
import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import tierstore as ts
from tierstore.tiers import cuda as tier_cuda
from tierstore.tiers.triton_lookup import lookup as triton_lookup
from tierstore.torch import TieredEmbedding
from tierstore.validation import as_id_tensor
from tierstore.workloads import zipf_ids

DEV = torch.device("cuda", 0)
ROWS, DIM, HOT, BATCH = 1_000_000, 64, 100_000, 131_072


def back_to_back(fn, reps=1000):
    """Host time of one call, calls back to back (the device drained after the loop)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - start) / reps * 1e6
    torch.cuda.synchronize()
    return host


def drained(fn, after=None, reps=300):
    """Median host time of one call made with the device drained first."""
    times = []
    for i in range(reps + 10):
        torch.cuda.synchronize()
        start = time.perf_counter()
        made = fn()
        took = time.perf_counter() - start
        if after is not None:
            after(made)
        if i >= 10:
            times.append(took)
    return statistics.median(times) * 1e6


def after_sync(prepare, fn, reps=300):
    """Median host time of ``fn(prepare())``, the device drained between the two."""
    times = []
    for _ in range(reps):
        made = prepare()
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(made)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def make_store(path):
    table = np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32).astype(np.float16)
    store = ts.create(path, ROWS, DIM, "float16", init=table,
                      config=ts.StoreConfig(device_rows=200_000, ram_rows=300_000, device="cuda:0",
                                            partitions=4))
    hot = np.random.default_rng(1).permutation(ROWS)[:HOT]
    ids = torch.as_tensor(hot[zipf_ids(HOT, 1.05, BATCH, seed=2)], device=DEV)
    for _ in range(30):
        store.lookup(ids)
    time.sleep(1.0)            # the planner's last round
    for _ in range(10):
        store.lookup(ids)
    torch.cuda.synchronize()
    return store, ids


def single_calls(mem, ids):
    n = ids.numel()
    start, stride = tier_cuda.log_sample(n, 0)
    logged = tier_cuda.sample_size(n, start, stride)
    head = 1 + logged + 2 * min(n, tier_cuda.MISS_PAIRS)
    scratch = torch.zeros(1 + logged + 2 * n, dtype=torch.int64, device=DEV)
    out = torch.empty((n, DIM), dtype=torch.float16, device=DEV)
    host = torch.empty(head, dtype=torch.int64, pin_memory=True)
    stream = torch.cuda.current_stream(DEV)
    event = torch.cuda.Event()
    slots = torch.as_tensor(zipf_ids(mem.device_rows, 1.05, n, seed=2), device=DEV)
    compiled = {}

    def new_event():
        torch.cuda.Event().record(stream)

    yield "torch.cuda.current_stream", back_to_back(lambda: torch.cuda.current_stream(DEV))
    yield "the current stream's handle", back_to_back(lambda: torch._C._cuda_getCurrentRawStream(0))
    yield "torch.empty, the output", back_to_back(
        lambda: torch.empty((n, DIM), dtype=torch.float16, device=DEV))
    yield "torch.zeros, the scratch", back_to_back(
        lambda: torch.zeros(1 + logged + 2 * n, dtype=torch.int64, device=DEV))
    yield "torch.empty, pinned miss-list buffer", back_to_back(
        lambda: torch.empty(head, dtype=torch.int64, pin_memory=True))
    yield "copy_ of the miss list to the host", back_to_back(
        lambda: host.copy_(scratch[:head], non_blocking=True))
    yield "Event() + record(stream)", back_to_back(new_event)
    yield "Event.synchronize, done", back_to_back(event.synchronize)
    yield "the lookup kernel's launch (compiled)", back_to_back(
        lambda: triton_lookup(ids.reshape(-1), mem.index.dev_keys, mem.index.dev_vals,
                              mem.index.rounds, mem.slab, mem._ram_pointer, mem.device_rows, out,
                              scratch, start, stride, logged, compiled))
    yield "F.embedding", back_to_back(lambda: F.embedding(slots, mem.slab))
    yield "as_id_tensor", back_to_back(lambda: as_id_tensor(ids, DEV))


def path_calls(store, mem, ids):
    caller = mem.caller_ids(ids)
    emb = TieredEmbedding(store).to(DEV)
    slots = torch.as_tensor(zipf_ids(mem.device_rows, 1.05, ids.numel(), seed=2), device=DEV)
    yield "F.embedding, drained", drained(lambda: F.embedding(slots, mem.slab))
    yield "tier issue, drained", drained(lambda: mem.issue(caller), after=mem.misses)
    yield "tier misses, its list on the host", after_sync(lambda: mem.issue(caller), mem.misses)
    yield "store lookup, drained", drained(lambda: store.lookup(ids))
    yield "store lookup_async, drained", drained(lambda: store.lookup_async(ids),
                                                 after=lambda handle: handle.result())
    yield "handle.result(), its lookup done", after_sync(lambda: store.lookup_async(ids),
                                                         lambda handle: handle.result())
    yield "lookup_async + result(), drained", drained(lambda: store.lookup_async(ids).result())
    yield "TieredEmbedding.prefetch, drained", drained(lambda: emb.prefetch(ids),
                                                       after=lambda _: emb(ids))
    yield "TieredEmbedding forward, prefetched", after_sync(lambda: emb.prefetch(ids),
                                                            lambda _: emb(ids))


def profile(store, ids):
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    for _ in range(300):
        torch.cuda.synchronize()
        profiler.enable()
        handle = store.lookup_async(ids)
        profiler.disable()
        torch.cuda.synchronize()
        profiler.enable()
        handle.result()
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    print(text.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="", help="a tag at the start of each line")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile 300 lookup_async + result() calls")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    tag = f"[{args.label}] " if args.label else ""
    with tempfile.TemporaryDirectory() as tmp:
        store, ids = make_store(f"{tmp}/table")
        mem = store._memory
        print(f"{tag}{'one call, back to back':46s} host us")
        for name, us in single_calls(mem, ids):
            print(f"{tag}  {name:44s} {us:7.1f}", flush=True)
        print(f"{tag}{'the lookup path (median of 300)':46s} host us")
        for name, us in path_calls(store, mem, ids):
            print(f"{tag}  {name:44s} {us:7.1f}", flush=True)
        stats = store.stats()
        print(f"{tag}hits: device {stats['device']['hits']:,}, RAM {stats['ram']['hits']:,}, "
              f"misses {stats['misses']:,}")
        if args.profile:
            profile(store, ids)
        store.close()


if __name__ == "__main__":
    main()
