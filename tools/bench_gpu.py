"""GPU benchmark of the CUDA device tier (issue 6, first step). Needs a CUDA device.

    python tools/bench_gpu.py                       # the recorded configuration
    python tools/bench_gpu.py --rows 2000000 --batches 200

Prints one table, every figure from the same run:
  1. host-to-device copy of missed rows through the tier's pinned staging ring
     (pack on the host + non-blocking copy on the side stream) against a plain
     pinned ``copy_(non_blocking=True)`` of the same bytes;
  2. hot-tier gather (the tier's lookup path on device-resident rows, host ids in,
     CUDA tensor out) against ``F.embedding`` on the same slab;
  3. end to end: ``store.lookup`` on ``device="cuda"`` (table >= 10x the device tier,
     tail in LMDB, Zipf ids, 16k-id batches) against an all-in-HBM ``nn.Embedding``.
"""
import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import tierstore as ts
from tierstore.kernels.batch import dedupe
from tierstore.tiers.cuda import CudaMemory, _take_into
from tierstore.workloads import zipf_ids

DEV = torch.device("cuda", 0)   # --device overrides (a dry run elsewhere)


def timed(fn, reps, warm=3):
    """Seconds per call (wall clock, the device drained before and after)."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def h2d(rows_n, dim, reps, table_rows=1 << 21):
    rng = np.random.default_rng(0)
    host_table = rng.standard_normal((table_rows, dim), dtype=np.float32).astype(np.float16)
    pos = np.sort(rng.choice(table_rows, rows_n, replace=False))
    mem = CudaMemory(1, 0, dim, np.float16, str(DEV))
    up = mem.uploader
    nbytes = rows_n * dim * 2

    def ours():
        slot, (t,) = up.send([(np.float16, (rows_n, dim), _take_into(host_table, pos))])
        up.release(slot)

    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=DEV)

    def plain():
        dst.copy_(pinned, non_blocking=True)

    t_ours, t_plain = timed(ours, reps), timed(plain, reps)
    return nbytes, t_ours, t_plain


def hot_gather(dim, slab_rows, batch, reps):
    mem = CudaMemory(slab_rows, 0, dim, np.float16, str(DEV))
    mem.device.normal_()
    ids = zipf_ids(slab_rows, 1.05, batch, seed=1)          # ids == device slots here
    ids_gpu = torch.as_tensor(ids, device=DEV)

    def ours():
        uniq, inverse, _ = dedupe(ids)
        rows = np.empty((len(uniq), dim), dtype=np.float16)
        mem.gather(uniq, rows)
        return mem.finish_lookup(rows, inverse, ids.shape)

    def emb_gpu_ids():
        return F.embedding(ids_gpu, mem.device)

    def emb_host_ids():
        return F.embedding(torch.from_numpy(ids).to(DEV), mem.device)

    uniq, inverse, _ = dedupe(ids)
    rows = np.empty((len(uniq), dim), dtype=np.float16)

    def tier_only():               # the tier's part alone: ids already deduplicated
        mem.gather(uniq, rows)
        return mem.finish_lookup(rows, inverse, ids.shape)

    assert torch.equal(ours(), emb_gpu_ids())
    parts = (timed(lambda: dedupe(ids), reps), timed(tier_only, reps))
    return timed(ours, reps), timed(emb_gpu_ids, reps), timed(emb_host_ids, reps), parts


def end_to_end(args, out):
    rows, dim = args.rows, args.dim
    device_rows = rows // args.ratio
    ram_rows = device_rows * 4
    rng = np.random.default_rng(2)
    table = rng.standard_normal((rows, dim), dtype=np.float32).astype(np.float16)
    n_batches = args.warm + args.batches
    ids = zipf_ids(rows, args.alpha, n_batches * args.batch, seed=3).reshape(n_batches, args.batch)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows, device="cuda")
        ts.create(f"{tmp}/t", rows, dim, "float16", init=table, config=config).close()
        out(f"# created LMDB table {rows}x{dim} fp16 in {time.perf_counter() - t:.1f}s")
        for name, device, prefetch in (("cuda", "cuda", False), ("cuda+prefetch", "cuda", True),
                                       ("cpu-tier+.to(cuda)", "cpu", False)):
            config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows, device=device)
            with ts.open(f"{tmp}/t", config, readonly=True) as store:
                for b in range(args.warm):
                    store.lookup(ids[b])
                before = store.stats()
                torch.cuda.synchronize()
                t = time.perf_counter()
                for b in range(args.warm, n_batches):
                    if prefetch and b + 1 < n_batches:
                        store.prefetch(ids[b + 1])
                    o = store.lookup(ids[b])
                    if device == "cpu":
                        o = torch.from_numpy(o).to(DEV)
                torch.cuda.synchronize()
                dt = (time.perf_counter() - t) / args.batches
                after = store.stats()
                assert np.array_equal(o.cpu().numpy(), table[ids[-1]])
                look = after["lookups"] - before["lookups"]
                hits = {k: (after[k]["hits"] - before[k]["hits"]) / look for k in ("device", "ram")}
                results[name] = (dt, hits, 1 - hits["device"] - hits["ram"])
    emb = torch.nn.Embedding(rows, dim, dtype=torch.float16, device=DEV)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(table).to(DEV))
        b = [args.warm]

        def base():
            emb(torch.from_numpy(ids[b[0] % n_batches]).to(DEV))
            b[0] += 1

        results["hbm"] = timed(base, args.batches, warm=0)
        assert torch.equal(emb(torch.from_numpy(ids[-1]).to(DEV)).cpu(),
                           torch.from_numpy(table[ids[-1]]))
    return device_rows, ram_rows, results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ratio", type=int, default=16, help="table rows / device-tier rows (>= 10)")
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--alpha", type=float, default=1.05)
    p.add_argument("--warm", type=int, default=100)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--device", default="cuda:0")
    args = p.parse_args()
    global DEV
    DEV = torch.device(args.device)
    out = print
    out(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, tierstore {ts.__version__}")
    lines = [("measure", "tierstore", "baseline", "ours/base")]
    for n in (args.batch, 16 * args.batch):
        nbytes, t_ours, t_plain = h2d(n, args.dim, reps=50)
        lines.append((f"1. H2D {n} missed rows ({nbytes / 2**20:.1f} MiB): GB/s, ours=staged vs plain pinned copy",
                      f"{nbytes / t_ours / 1e9:.2f}", f"{nbytes / t_plain / 1e9:.2f}",
                      f"{t_plain / t_ours:.2f}"))
    t_ours, t_gpu, t_host, (t_dedupe, t_tier) = hot_gather(args.dim, 1 << 20, args.batch, reps=200)
    lines.append((f"2. hot gather {args.batch} ids, 1M-row slab: us/batch vs F.embedding (ids on GPU)",
                  f"{t_ours * 1e6:.1f}", f"{t_gpu * 1e6:.1f}", f"{t_gpu / t_ours:.2f}"))
    lines.append(("2b. same vs F.embedding with ids copied from host",
                  f"{t_ours * 1e6:.1f}", f"{t_host * 1e6:.1f}", f"{t_host / t_ours:.2f}"))
    lines.append(("2c. of which: host dedupe alone (us) / tier gather+assemble alone (us)",
                  f"{t_dedupe * 1e6:.1f}", f"{t_tier * 1e6:.1f}", "-"))
    device_rows, ram_rows, res = end_to_end(args, out)
    base = res["hbm"]
    for name in ("cuda", "cuda+prefetch", "cpu-tier+.to(cuda)"):
        dt, hits, miss = res[name]
        lines.append((f"3. e2e {args.rows}x{args.dim} fp16, dev {device_rows} / ram {ram_rows} rows, "
                      f"zipf {args.alpha}, {args.batch} ids: Mids/s, store[{name}] vs nn.Embedding in HBM "
                      f"(hits dev {hits['device']:.3f} ram {hits['ram']:.3f} disk {miss:.3f})",
                      f"{args.batch / dt / 1e6:.2f}", f"{args.batch / base / 1e6:.2f}",
                      f"{base / dt:.3f}"))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    for r in lines:
        out(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
