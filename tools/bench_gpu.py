"""GPU benchmark of the CUDA device tier and of an Engram model served from it. Needs CUDA.

    python tools/bench_gpu.py                     # the recorded configuration (about 5 minutes)
    python tools/bench_gpu.py --rows 2000000 --batches 20 --models 4x1024   # a quick look

Prints one table, every figure from the same run:
  1. host-to-device copy of missed rows through the tier's pinned staging ring
     (pack on the host + one non-blocking copy on a side stream) against a plain
     pinned ``copy_(non_blocking=True)`` of the same bytes;
  2. hot-tier gather (the tier's lookup path on device-resident rows: host ids in,
     CUDA tensor out) against ``F.embedding`` on the same slab;
  3. end to end, an Engram-style model: ``blocks`` transformer blocks of width
     ``hidden`` (bf16, causal attention, 4x MLP), ``EngramMemory`` after block 1,
     ``batch x seq`` tokens a forward, 16 rows a token (2 orders x 8 heads) of 64
     fp16 values each, Zipf(alpha) ids per head table; the table has ``rows`` rows
     (>= 10x the device tier), all of them in LMDB on local disk. Inference
     forward tokens/s of
       hbm        the whole table in HBM as ``nn.Embedding`` (the ceiling);
       pinned     the Engram paper's method: the whole table in pinned host memory,
                  read by the GPU over PCIe (zero-copy through UVA) on a side stream
                  started at forward entry, overlapped with the blocks before it;
       ours/off   tierstore, the lookup done when the Engram layer runs;
       ours/entry tierstore, ``prefetch`` at forward entry (the paper's timing);
       ours/ahead tierstore, the next batch's ``prefetch`` at forward entry (a
                  serving loop that knows its next batch: lookahead of one).
     Each forward ends with a synchronisation of the compute stream, as an
     inference step that returns its result. Ratios are ours / hbm.
"""
import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tierstore as ts
from tierstore.kernels.batch import dedupe
from tierstore.tiers.cuda import CudaMemory, _take_into
from tierstore.torch import EngramMemory, TieredEmbedding
from tierstore.workloads import zipf_ids

DEV = torch.device("cuda", 0)
HEADS, ROW_DIM = 16, 64          # rows a token (orders 2, 3 x 8 heads), values a row


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


# -- 1, 2: the tier's parts ------------------------------------------------------------------
def h2d(rows_n, dim, reps, table_rows=1 << 21):
    rng = np.random.default_rng(0)
    host_table = rng.standard_normal((table_rows, dim), dtype=np.float32).astype(np.float16)
    pos = np.sort(rng.choice(table_rows, rows_n, replace=False))
    up = CudaMemory(1, 0, dim, np.float16, str(DEV)).uploader
    nbytes = rows_n * dim * 2

    def ours():
        slot, _ = up.send([(np.float16, (rows_n, dim), _take_into(host_table, pos))])
        up.release(slot)

    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=DEV)

    def plain():
        dst.copy_(pinned, non_blocking=True)

    return nbytes, timed(ours, reps), timed(plain, reps)


def hot_gather(dim, slab_rows, batch, reps):
    mem = CudaMemory(slab_rows, 0, dim, np.float16, str(DEV))
    with torch.cuda.stream(mem.stream):
        mem.device.normal_()
    ids = zipf_ids(slab_rows, 1.05, batch, seed=1)          # ids == device slots here
    ids_gpu = torch.as_tensor(ids, device=DEV)

    def ours():
        uniq, inverse, _ = dedupe(ids)
        rows = np.empty((len(uniq), dim), dtype=np.float16)
        mem.gather(uniq, rows)
        return mem.deliver(mem.finish_lookup(rows, inverse, ids.shape))

    assert torch.equal(ours(), F.embedding(ids_gpu, mem.device))
    return timed(ours, reps), timed(lambda: F.embedding(ids_gpu, mem.device), reps)


# -- 3: the Engram model -------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.heads = hidden // 128
        self.norm1, self.norm2 = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.up = nn.Linear(hidden, 4 * hidden, bias=False)
        self.down = nn.Linear(4 * hidden, hidden, bias=False)

    def forward(self, x):
        b, t, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, h // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, h))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class EngramLM(nn.Module):
    """Token embedding, blocks, and an EngramMemory after block ``engram_after``."""

    def __init__(self, blocks, hidden, vocab, engram, engram_after=1):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(blocks))
        self.engram = engram
        self.engram_after = engram_after
        self.norm = nn.RMSNorm(hidden)
        self.vocab = vocab

    def forward(self, tokens):
        x = self.embed((tokens % self.vocab).to(DEV, non_blocking=True))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.engram_after:
                x = self.engram(x, tokens)
        return self.norm(x)


class StreamHasher:
    """The Engram hasher's face over a precomputed id stream: a "token" is a global
    position, and its 16 row ids are that position's row of ``bank``."""

    def __init__(self, bank, num_rows):
        self.bank, self.num_rows = bank, num_rows
        self.ids_per_token, self.max_ngram = bank.shape[1], 3

    def __call__(self, tokens):
        return self.bank[tokens]


class PinnedHostTable(nn.Module):
    """The Engram paper's offload: the table in pinned host memory, gathered by the GPU
    over PCIe (UVA zero-copy) on a side stream started by ``prefetch``."""

    def __init__(self, table):
        super().__init__()
        self.pinned = torch.from_numpy(table).pin_memory()
        self.view, self.how = uva_view(self.pinned)
        self.stream = torch.cuda.Stream(DEV)
        self.ahead = []

    @property
    def num_embeddings(self):
        return self.pinned.shape[0]

    @property
    def embedding_dim(self):
        return self.pinned.shape[1]

    def _gather(self, ids):
        ids_gpu = ids.pin_memory().to(DEV, non_blocking=True)
        if self.view is not None:
            return F.embedding(ids_gpu, self.view)
        rows = torch.empty(ids.shape + (self.embedding_dim,), dtype=self.pinned.dtype, pin_memory=True)
        torch.index_select(self.pinned, 0, ids.reshape(-1), out=rows.view(-1, self.embedding_dim))
        return rows.to(DEV, non_blocking=True)

    def prefetch(self, ids):
        with torch.cuda.stream(self.stream):
            rows = self._gather(ids)
            done = torch.cuda.Event()
            done.record(self.stream)
        self.ahead.append((ids, rows, done))

    def forward(self, ids):
        current = torch.cuda.current_stream(DEV)
        for k, (ahead_ids, rows, done) in enumerate(self.ahead):
            if torch.equal(ahead_ids, ids):
                del self.ahead[k]
                current.wait_event(done)
                rows.record_stream(current)
                return rows
        return self._gather(ids)


def uva_view(pinned):
    """A CUDA tensor over pinned host memory (the GPU reads it over PCIe), through CuPy;
    (None, why) where CuPy cannot, and the paper's method falls back to a host gather."""
    try:
        import cupy
        mem = cupy.cuda.UnownedMemory(pinned.data_ptr(), pinned.numel() * pinned.element_size(),
                                      pinned, device_id=DEV.index or 0)
        arr = cupy.ndarray(tuple(pinned.shape), dtype=cupy.float16,
                           memptr=cupy.cuda.MemoryPointer(mem, 0))
        view = torch.as_tensor(arr, device=DEV)
        probe = torch.arange(0, len(pinned), max(1, len(pinned) // 1000), device=DEV)
        assert torch.equal(F.embedding(probe, view).cpu(), pinned[probe.cpu()])
        return view, "UVA zero-copy gather"
    except Exception as e:  # noqa: BLE001  reported in the table
        return None, f"host gather + pinned copy (UVA view failed: {type(e).__name__})"


def make_bank(rows, alpha, tokens):
    """``tokens`` x 16 row ids: Zipf(alpha) within each head's table of rows // 16 rows."""
    per_head = rows // HEADS
    bank = np.empty((tokens, HEADS), dtype=np.int64)
    for h in range(HEADS):
        bank[:, h] = h * per_head + zipf_ids(per_head, alpha, tokens, seed=100 + h)
    return bank


def run_model(model, mode, tokens, warm):
    """Tokens/s over ``tokens[warm:]`` and the last output."""
    prefetch = model.engram.prefetch
    compute = torch.cuda.current_stream(DEV)
    if mode == "ahead":
        prefetch(tokens[0])
    for i, tok in enumerate(tokens):
        if i == warm:
            torch.cuda.synchronize()
            start = time.perf_counter()
        if mode == "entry":
            prefetch(tok)
        elif mode == "ahead" and i + 1 < len(tokens):
            prefetch(tokens[i + 1])
        out = model(tok)
        compute.synchronize()
    elapsed = time.perf_counter() - start
    return tok.numel() * (len(tokens) - warm) / elapsed, out


def engram_models(args, out):
    rows = args.rows // HEADS * HEADS
    device_rows, ram_rows = rows // args.ratio, int(rows * args.ram_fraction)
    n_tok = args.batch * args.seq
    n_batches = args.warm + args.batches
    t = time.perf_counter()
    rng = np.random.default_rng(7)
    table = rng.integers(-1024, 1024, size=(rows, ROW_DIM), dtype=np.int16).astype(np.float16)
    table *= np.float16(1 / 1024)
    bank = make_bank(rows, args.alpha, n_batches * n_tok)
    tokens = [torch.arange(i * n_tok, (i + 1) * n_tok).view(args.batch, args.seq)
              for i in range(n_batches)]
    hasher = StreamHasher(bank, rows)
    out(f"# table {rows} x {ROW_DIM} fp16 ({table.nbytes / 2**30:.2f} GiB), device tier {device_rows} "
        f"rows, RAM tier {ram_rows} rows, {args.partitions} partitions, Zipf {args.alpha}, {n_tok} tokens x {HEADS} rows a "
        f"batch; generated in {time.perf_counter() - t:.0f} s")
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        ts.create(f"{tmp}/t", rows, ROW_DIM, "float16", init=table,
                  config=ts.StoreConfig(device_rows=1024, ram_rows=1024)).close()
        out(f"# LMDB store written in {time.perf_counter() - t:.0f} s")
        config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows, device=str(DEV),
                                partitions=args.partitions)
        store = ts.open(f"{tmp}/t", config, readonly=True)
        hbm = nn.Embedding(rows, ROW_DIM, device=DEV, dtype=torch.float16)
        with torch.no_grad():
            hbm.weight.copy_(torch.from_numpy(table))
        pinned = PinnedHostTable(table)
        tables = {"hbm": hbm, "pinned": pinned, "ours": TieredEmbedding(store)}
        for spec in args.models:
            blocks, hidden = map(int, spec.split("x"))
            torch.manual_seed(0)
            engram = EngramMemory(hbm, hasher, hidden)
            model = EngramLM(blocks, hidden, 32000, engram).to(DEV, torch.bfloat16).eval()
            speeds, outs, hits = {}, {}, {}
            for name, table_name, mode in (("hbm", "hbm", "off"), ("pinned", "pinned", "entry"),
                                           ("ours/off", "ours", "off"), ("ours/entry", "ours", "entry"),
                                           ("ours/ahead", "ours", "ahead")):
                engram.table = tables[table_name]
                if table_name == "ours":
                    engram.table.to(DEV, torch.bfloat16)
                    before = store.stats()
                with torch.inference_mode():
                    speeds[name], outs[name] = run_model(model, mode, tokens, args.warm)
                if table_name == "ours":
                    hits[name] = tier_hits(before, store.stats())
            diffs = {n: (o.float() - outs["hbm"].float()).abs().max().item() for n, o in outs.items()}
            out(f"# model {spec}: largest difference from the all-in-HBM model's output: {diffs}")
            assert max(diffs.values()) == 0.0, "outputs differ from the all-in-HBM model's"
            results.append((spec, speeds, hits))
            del model, engram
        pinned_how = pinned.how
        store.close()
    return device_rows, ram_rows, results, pinned_how


def tier_hits(before, after):
    look = after["lookups"] - before["lookups"]
    dev = (after["device"]["hits"] - before["device"]["hits"]) / look
    ram = (after["ram"]["hits"] - before["ram"]["hits"]) / look
    return dev, ram, max(0.0, 1 - dev - ram)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=8_000_000, help="table rows")
    p.add_argument("--ratio", type=int, default=10, help="table rows / device-tier rows (>= 10)")
    p.add_argument("--ram-fraction", type=float, default=0.5, help="RAM-tier rows / table rows")
    p.add_argument("--partitions", type=int, default=4, help="StoreConfig.partitions")
    p.add_argument("--alpha", type=float, default=1.05)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warm", type=int, default=30)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--models", nargs="+", default=["12x2048", "4x1024"], help="BLOCKSxHIDDEN")
    p.add_argument("--tmp", default=None, help="directory for the LMDB store (local disk)")
    args = p.parse_args()
    out = print
    out(f"# {torch.cuda.get_device_name(DEV)}, torch {torch.__version__}, tierstore {ts.__version__}")
    lines = [("measure", "tierstore", "baseline", "ours/base")]
    for n in (16384, 262144):
        nbytes, t_ours, t_plain = h2d(n, ROW_DIM, reps=50)
        lines.append((f"1. H2D of {n} missed rows ({nbytes / 2**20:.1f} MiB), GB/s: staged vs plain pinned copy",
                      f"{nbytes / t_ours / 1e9:.2f}", f"{nbytes / t_plain / 1e9:.2f}", f"{t_plain / t_ours:.2f}"))
    for n in (16384, 131072):
        t_ours, t_emb = hot_gather(ROW_DIM, 1 << 20, n, reps=100)
        lines.append((f"2. hot gather of {n} ids from a 1M-row slab, us: tier path (host ids) vs F.embedding",
                      f"{t_ours * 1e6:.0f}", f"{t_emb * 1e6:.0f}", f"{t_emb / t_ours:.3f}"))
    device_rows, ram_rows, results, pinned_how = engram_models(args, out)
    for spec, speeds, hits in results:
        base = speeds["hbm"]
        lines.append((f"3. {spec} model: tokens/s, all-in-HBM nn.Embedding", f"{base:,.0f}", f"{base:,.0f}", "1.000"))
        lines.append((f"3. {spec} model: tokens/s, pinned host table ({pinned_how}) vs HBM",
                      f"{speeds['pinned']:,.0f}", f"{base:,.0f}", f"{speeds['pinned'] / base:.3f}"))
        for name in ("ours/off", "ours/entry", "ours/ahead"):
            d, r, m = hits[name]
            lines.append((f"3. {spec} model: tokens/s, {name} (hits: device {d:.3f} RAM {r:.3f} disk {m:.3f}) vs HBM",
                          f"{speeds[name]:,.0f}", f"{base:,.0f}", f"{speeds[name] / base:.3f}"))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    for r in lines:
        out(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
