"""GPU benchmark of the CUDA device tier and of an Engram model served from it. Needs CUDA.

    python tools/bench_gpu.py                     # both table setups (about 10 minutes)
    python tools/bench_gpu.py --setups recorded --json gpu.json   # the recorded setup alone
    python tools/bench_gpu.py --smoke             # every step at toy sizes (a minute)
    python tools/bench_gpu.py --smoke --device cpu   # the model part's logic, on a machine without CUDA

Prints one table, every figure from the same run (``--json PATH`` writes them too):
  1. missed rows (read by the store straight into the tier's pinned staging) into a
     lookup's output (one non-blocking copy on a side stream, one scatter kernel)
     against a plain pinned ``copy_(non_blocking=True)`` of the same bytes;
  2. hot-tier lookup (CUDA ids in, probe of the GPU index, gather, the miss list back
     to the host, CUDA tensor out) against ``F.embedding`` on the same slab;
  3. end to end, an Engram-style model: ``blocks`` transformer blocks of width
     ``hidden`` (bf16, causal attention, 4x MLP), ``EngramMemory`` after block 1,
     ``batch x seq`` tokens a forward (on the GPU unless ``--host-tokens``), 16 rows a
     token (2 orders x 8 heads) of 64 fp16 values each, Zipf(alpha) ids per head table,
     looked up by a hasher whose ids stay on the tokens' device. Two table setups:
       recorded  ``--rows`` rows (>= 10x the device tier), all in LMDB on local disk,
                 written first, then opened read-only; ``--warm`` forwards, then
                 ``--batches`` timed ones, every batch new;
       newuser   the issue's new-user run: a writable store made by ``ts.create`` in the
                 process (``--nu-rows`` rows, device tier 10%, RAM tier 30%, 4
                 partitions), a frozen ``TieredEmbedding``, ``--nu-distinct`` batches
                 replayed: ``--nu-warm`` passes to warm, ``--nu-timed`` passes timed.
     Inference forward tokens/s of
       hbm        the whole table in HBM as ``nn.Embedding`` (the ceiling);
       pinned     the Engram paper's method: the whole table in pinned host memory,
                  read by the GPU over PCIe (zero-copy through UVA) on a side stream
                  started at forward entry, overlapped with the blocks before it;
       colossal   a GPU software cache after ColossalAI's (``tools/software_cache.py``:
                  the table pinned on the host, the device tier's share of rows cached in
                  HBM, its id -> slot map on the GPU, LFU), called at the Engram layer;
       off        tierstore, the lookup done when the Engram layer runs;
       entry      tierstore, ``prefetch`` at forward entry (the paper's timing);
       ahead      tierstore, the next batch's ``prefetch`` at forward entry (a
                  serving loop that knows its next batch: lookahead of one).
     Each forward ends with a synchronisation of the compute stream, as an
     inference step that returns its result. Ratios are to hbm. With ``--repeat R``
     the variants are timed R times in turn (warm after the first) and the median run
     is reported, its hits with it: on the small model one pass is a fraction of a
     second, and runs drift.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tierstore as ts
from tierstore.tiers.cuda import CudaMemory
from tierstore.tiers.triton_lookup import lookup as triton_lookup
from tierstore.torch import EngramMemory, TieredEmbedding
from tierstore.workloads import zipf_ids

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from software_cache import SoftwareCacheEmbedding  # noqa: E402  (this folder's module)

DEV = torch.device("cuda", 0)    # --device cpu replaces it (the model part's logic, no timing worth reading)
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
def h2d(rows_n, dim, reps):
    """Missed rows into a lookup's output: the tier's ``fill`` (the store reads the rows
    straight into the tier's pinned staging, ``missed_rows``; the fill is one copy of it and
    one kernel that puts each row in place) vs a plain pinned copy of the same bytes. Timed:
    taking the staging, writing the positions, the fill; not the rows' reading, which the
    store does into the staging as it would into any array."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((rows_n, dim), dtype=np.float32).astype(np.float16)
    positions = rng.permutation(rows_n)
    which = np.arange(rows_n)
    mem = CudaMemory(1, 0, dim, np.float16, str(DEV))
    lookup = SimpleNamespace(out=torch.empty((rows_n, dim), dtype=torch.float16, device=DEV),
                             stream=torch.cuda.current_stream(DEV), filled=False)
    nbytes = rows.nbytes

    def ours():
        missed = mem.missed_rows(rows_n, rows_n)
        missed.positions[...] = positions
        missed.which[...] = which
        mem.fill(lookup, missed)

    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=DEV)

    def plain():
        dst.copy_(pinned, non_blocking=True)

    for _ in range(len(mem.uploader.ring)):      # every slot of the ring holds the rows
        missed = mem.missed_rows(rows_n, rows_n)
        missed.rows[...], missed.positions[...], missed.which[...] = rows, positions, which
        mem.fill(lookup, missed)
    torch.cuda.synchronize()
    assert torch.equal(lookup.out[torch.as_tensor(positions, device=DEV)].cpu(), torch.from_numpy(rows))
    return nbytes, timed(ours, reps), timed(plain, reps)


def hot_gather(dim, slab_rows, batch, reps):
    """A lookup of CUDA ids whose rows are all in the device tier (probe, gather, the miss
    list back to the host, the output handed to the caller's stream) vs ``F.embedding``."""
    mem = CudaMemory(slab_rows, 0, dim, np.float16, str(DEV))
    slots = np.arange(slab_rows)
    rows = np.random.default_rng(2).standard_normal((slab_rows, dim), dtype=np.float32).astype(np.float16)
    ids = slab_rows * 7 + slots * 3                      # ids unlike their slots
    mem.write(slots, rows)
    mem.retarget(ids[:0], ids[:0], ids, slots)
    mem.commit()
    pick = zipf_ids(slab_rows, 1.05, batch, seed=1)
    ids_gpu = torch.as_tensor(ids[pick], device=DEV)
    slots_gpu = torch.as_tensor(pick, device=DEV)

    def ours():
        pending = mem.issue(mem.caller_ids(ids_gpu))
        positions, _ = mem.misses(pending)
        assert not len(positions)
        return mem.deliver(mem.ready(pending))

    assert torch.equal(ours(), F.embedding(slots_gpu, mem.device))
    out = torch.empty((batch, dim), dtype=torch.float16, device=DEV)
    scratch = torch.zeros(1 + 1 + 2 * batch, dtype=torch.int64, device=DEV)

    def kernel_alone():      # the tier's lookup kernel, launched back to back as F.embedding is
        triton_lookup(ids_gpu, mem.index.dev_keys, mem.index.dev_vals, mem.index.rounds, mem.slab,
                      mem._ram_pointer, mem.device_rows, out, scratch, 0, batch, 1, mem._kernels)

    return (timed(ours, reps), timed(lambda: F.embedding(slots_gpu, mem.device), reps),
            timed(kernel_alone, reps))


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
        x = self.embed((tokens % self.vocab).to(self.embed.weight.device, non_blocking=True))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.engram_after:
                x = self.engram(x, tokens)
        return self.norm(x)


class StreamHasher:
    """The Engram hasher's face over a precomputed id stream: a "token" is a global
    position, and its 16 row ids are that position's row of ``bank``; tokens on a device
    read a copy of the bank there, so their ids never pass through the host."""

    def __init__(self, bank, num_rows):
        self.bank, self.num_rows = torch.from_numpy(bank), num_rows
        self.ids_per_token, self.max_ngram = bank.shape[1], 3
        self._banks = {torch.device("cpu"): self.bank}

    def __call__(self, tokens):
        tokens = torch.as_tensor(tokens)
        bank = self._banks.get(tokens.device)
        if bank is None:
            bank = self._banks[tokens.device] = self.bank.to(tokens.device)
        return bank[tokens]


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
        if self.view is not None:
            ids_gpu = ids if ids.is_cuda else ids.pin_memory().to(DEV, non_blocking=True)
            return F.embedding(ids_gpu, self.view)
        rows = torch.empty(ids.shape + (self.embedding_dim,), dtype=self.pinned.dtype, pin_memory=True)
        torch.index_select(self.pinned, 0, ids.reshape(-1).cpu(), out=rows.view(-1, self.embedding_dim))
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
            if ahead_ids is ids or (ahead_ids.device == ids.device and torch.equal(ahead_ids, ids)):
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


@dataclass(frozen=True)
class Setup:
    """One table setup of the model part; ``replay``: the ``distinct`` batches are played
    over and over (``warm`` and ``timed`` count forwards either way)."""
    name: str
    rows: int
    device_rows: int
    ram_rows: int
    partitions: int
    distinct: int
    warm: int
    timed: int
    writable: bool            # made by ts.create in the process and used as is; else reopened read-only

    @property
    def suffix(self):
        return "" if self.name == "recorded" else f"/{self.name}"


def setups(args):
    """The setups ``args`` asks for, in order."""
    found = []
    for name in args.setups:
        if name == "recorded":
            rows = args.rows // HEADS * HEADS
            found.append(Setup("recorded", rows, rows // args.ratio, int(rows * args.ram_fraction),
                               args.partitions, args.warm + args.batches, args.warm, args.batches,
                               writable=False))
        else:
            rows = args.nu_rows // HEADS * HEADS
            found.append(Setup("newuser", rows, rows // 10, rows * 3 // 10, 4, args.nu_distinct,
                               args.nu_warm * args.nu_distinct, args.nu_timed * args.nu_distinct,
                               writable=True))
    return found


def sync(device):
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def run_model(model, mode, tokens, warm, timed, mark):
    """Tokens/s over the last ``timed`` of ``warm + timed`` forwards (batch ``i`` is
    ``tokens[i % len(tokens)]``) and the last output; ``mark()`` is called as the timing starts."""
    prefetch = model.engram.prefetch
    n = warm + timed
    if mode == "ahead":
        prefetch(tokens[0])
    for i in range(n):
        tok = tokens[i % len(tokens)]
        if i == warm:
            sync(DEV)
            mark()
            start = time.perf_counter()
        if mode == "entry":
            prefetch(tok)
        elif mode == "ahead" and i + 1 < n:
            prefetch(tokens[(i + 1) % len(tokens)])
        out = model(tok)
        sync(DEV)
    elapsed = time.perf_counter() - start
    return tok.numel() * timed / elapsed, out


# (name, table, mode): the variants of part 3, in the order they run
VARIANTS = (("hbm", "hbm", "off"), ("pinned", "pinned", "entry"), ("colossal", "colossal", "off"),
            ("off", "ours", "off"), ("entry", "ours", "entry"), ("ahead", "ours", "ahead"))


def engram_models(setup, args, out):
    """Part 3 for one setup: ``{model spec: {variant: tokens/s, "hits": ..., ...}}``."""
    rows, n_tok = setup.rows, args.batch * args.seq
    t = time.perf_counter()
    rng = np.random.default_rng(7)
    table = rng.integers(-1024, 1024, size=(rows, ROW_DIM), dtype=np.int16).astype(np.float16)
    table *= np.float16(1 / 1024)
    bank = make_bank(rows, args.alpha, setup.distinct * n_tok)
    token_device = torch.device("cpu") if args.host_tokens else DEV
    tokens = [torch.arange(i * n_tok, (i + 1) * n_tok, device=token_device).view(args.batch, args.seq)
              for i in range(setup.distinct)]
    hasher = StreamHasher(bank, rows)
    out(f"# setup {setup.name}: table {rows} x {ROW_DIM} fp16 ({table.nbytes / 2**30:.2f} GiB), device tier "
        f"{setup.device_rows} rows, RAM tier {setup.ram_rows} rows, {setup.partitions} partitions, Zipf "
        f"{args.alpha}, {n_tok} tokens x {HEADS} rows a batch on {token_device.type}, {setup.distinct} distinct "
        f"batches, {setup.warm} warm-up + {setup.timed} timed forwards; generated in {time.perf_counter() - t:.0f} s")
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t = time.perf_counter()
        config = ts.StoreConfig(device_rows=setup.device_rows, ram_rows=setup.ram_rows, device=str(DEV),
                                partitions=setup.partitions)
        if setup.writable:
            store = ts.create(f"{tmp}/t", rows, ROW_DIM, "float16", init=table, config=config)
        else:
            ts.create(f"{tmp}/t", rows, ROW_DIM, "float16", init=table,
                      config=ts.StoreConfig(device_rows=1024, ram_rows=1024)).close()
            store = ts.open(f"{tmp}/t", config, readonly=True)
        out(f"# LMDB store written in {time.perf_counter() - t:.0f} s"
            f"{'' if setup.writable else ', reopened read-only'}")
        hbm = nn.Embedding(rows, ROW_DIM, device=DEV, dtype=torch.float16)
        with torch.no_grad():
            hbm.weight.copy_(torch.from_numpy(table))
        tables = {"hbm": hbm, "ours": TieredEmbedding(store)}     # no optimizer: frozen
        if DEV.type == "cuda":
            tables["pinned"] = PinnedHostTable(table)
            host = tables["pinned"].pinned
        else:
            host = torch.from_numpy(table)
        for spec in args.models:
            blocks, hidden = map(int, spec.split("x"))
            torch.manual_seed(0)
            engram = EngramMemory(hbm, hasher, hidden)
            model = EngramLM(blocks, hidden, 32000, engram).to(DEV, torch.bfloat16).eval()
            # a cold cache a model, as tierstore's tiers are warm only from the first model on
            tables["colossal"] = SoftwareCacheEmbedding(host, setup.device_rows, DEV)
            speeds, outs, hits, before = {}, {}, {}, {}
            for rep, (name, table_name, mode) in ((r, v) for r in range(args.repeat) for v in VARIANTS):
                if table_name not in tables:
                    continue
                engram.table = tables[table_name]
                if table_name == "ours":
                    engram.table.to(DEV, torch.bfloat16)

                def mark(table_name=table_name, before=before):   # hits, misses: timed forwards only
                    if table_name == "ours":
                        before["stats"] = store.stats()
                    elif table_name == "colossal":
                        tables["colossal"].reset_counts()
                with torch.inference_mode():
                    speed, outs[name] = run_model(model, mode, tokens, setup.warm if rep == 0 else 3,
                                                  setup.timed, mark)
                speeds.setdefault(name, []).append(speed)
                if table_name == "ours":
                    hits.setdefault(name, []).append(tier_hits(before["stats"], store.stats()))
            # each variant's median run, and the hits of that run (ours/off's first run, on
            # cold tiers, is rarely it)
            middle = {name: int(np.argsort(runs)[len(runs) // 2]) for name, runs in speeds.items()}
            hits = {name: runs[middle[name]] for name, runs in hits.items()}
            speeds = {name: runs[middle[name]] for name, runs in speeds.items()}
            diffs = {n: (o.float() - outs["hbm"].float()).abs().max().item() for n, o in outs.items()}
            out(f"# model {spec}: largest difference from the all-in-HBM model's output: {diffs}")
            assert max(diffs.values()) == 0.0, "outputs differ from the all-in-HBM model's"
            results[spec] = dict(speeds, hits=hits,
                                 colossal_miss_ratio=tables["colossal"].miss_ratio())
            if spec == args.models[0]:        # ours/off ran on cold tiers: the same stream, planned in step
                results[spec]["sync_planner_miss_ratio"] = synchronous_miss_ratio(
                    f"{tmp}/t", setup, hasher, tokens)
            del model, engram, tables["colossal"]
        pinned_how = tables["pinned"].how if "pinned" in tables else "not run (no CUDA)"
        store.close()
    return results, pinned_how


def tier_hits(before, after):
    """Shares of the timed lookups by tier as the planner counted them, and (``at_lookup``)
    the share that the GPU found in neither tier when it looked them up."""
    look = after["lookups"] - before["lookups"]
    gpu_ids = after["indexed_lookup"]["ids"] - before["indexed_lookup"]["ids"]
    through_host = after["indexed_lookup"]["through_host"] - before["indexed_lookup"]["through_host"]
    return {"device": (after["device"]["hits"] - before["device"]["hits"]) / look,
            "ram": (after["ram"]["hits"] - before["ram"]["hits"]) / look,
            "disk": (after["misses"] - before["misses"]) / look,
            "at_lookup": through_host / gpu_ids if gpu_ids else None,
            "unplanned": after["indexed_lookup"]["unplanned"] - before["indexed_lookup"]["unplanned"]}


def synchronous_miss_ratio(path, setup, hasher, tokens):
    """The same stream as ours/off's (cold tiers, ``warm + timed`` forwards) through a host
    store whose planner runs before each next lookup: the share of timed ids it read from
    disk, against which ours/off's share missed at lookup time shows what planning off the
    lookup's path costs."""
    config = ts.StoreConfig(device_rows=setup.device_rows, ram_rows=setup.ram_rows,
                            partitions=setup.partitions)
    with ts.open(path, config, readonly=True) as store:
        for i in range(setup.warm + setup.timed):
            if i == setup.warm:
                before = store.stats()
            store.lookup(hasher(tokens[i % len(tokens)].cpu()).numpy())
        after = store.stats()
    return (after["misses"] - before["misses"]) / (after["lookups"] - before["lookups"])


def model_lines(setup, spec, result, pinned_how):
    """The table's rows of one model in one setup."""
    base = result["hbm"]
    label = f"3. {setup.name}: {spec} model, tokens/s"
    lines = [(f"{label}, all-in-HBM nn.Embedding", f"{base:,.0f}", f"{base:,.0f}", "1.000")]
    if "pinned" in result:
        lines.append((f"{label}, pinned host table ({pinned_how}) vs HBM",
                      f"{result['pinned']:,.0f}", f"{base:,.0f}", f"{result['pinned'] / base:.3f}"))
    lines.append((f"{label}, colossal-style GPU cache (misses {result['colossal_miss_ratio']:.3f}) vs HBM",
                  f"{result['colossal']:,.0f}", f"{base:,.0f}", f"{result['colossal'] / base:.3f}"))
    for name in ("off", "entry", "ahead"):
        h = result["hits"][name]
        at_lookup = "" if h["at_lookup"] is None else f", missed at lookup {h['at_lookup']:.4f}"
        lines.append((f"{label}, ours/{name} (hits: device {h['device']:.3f} RAM {h['ram']:.3f} "
                      f"disk {h['disk']:.3f}{at_lookup}) vs HBM",
                      f"{result[name]:,.0f}", f"{base:,.0f}", f"{result[name] / base:.3f}"))
    if "sync_planner_miss_ratio" in result and result["hits"]["off"]["at_lookup"] is not None:
        lines.append((f"3. {setup.name}: ids missed at lookup, ours/off (planner on its own thread) vs a "
                      "planner in step (host store, same stream)",
                      f"{result['hits']['off']['at_lookup']:.4f}", f"{result['sync_planner_miss_ratio']:.4f}",
                      f"{result['hits']['off']['at_lookup'] - result['sync_planner_miss_ratio']:+.4f}"))
    return lines


def report(machine, command, parts, runs):
    """The JSON record: ``runs`` is ``[(setup, {spec: result}, pinned_how)]``; a model's key is
    its spec, with ``/<setup>`` added for setups other than the recorded one."""
    models, described = {}, {}
    for setup, results, pinned_how in runs:
        described[setup.name] = dict(asdict(setup), pinned=pinned_how)
        for spec, result in results.items():
            models[spec + setup.suffix] = result
    return {"machine": machine, "command": command, "setups": described, "models": models,
            "parts": parts}


SMOKE = {"rows": 160_000, "nu_rows": 320_000, "models": ["2x256"], "batch": 2, "seq": 256, "warm": 3,
         "batches": 4, "nu_distinct": 3, "nu_warm": 1, "nu_timed": 1}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", nargs="+", choices=["recorded", "newuser"], default=["recorded", "newuser"])
    p.add_argument("--rows", type=int, default=8_000_000, help="recorded: table rows")
    p.add_argument("--ratio", type=int, default=10, help="recorded: table rows / device-tier rows (>= 10)")
    p.add_argument("--ram-fraction", type=float, default=0.5, help="recorded: RAM-tier rows / table rows")
    p.add_argument("--partitions", type=int, default=4, help="recorded: StoreConfig.partitions")
    p.add_argument("--warm", type=int, default=30, help="recorded: warm-up forwards")
    p.add_argument("--batches", type=int, default=40, help="recorded: timed forwards")
    p.add_argument("--nu-rows", type=int, default=16_000_000, help="newuser: table rows")
    p.add_argument("--nu-distinct", type=int, default=23, help="newuser: distinct batches, replayed")
    p.add_argument("--nu-warm", type=int, default=2, help="newuser: warm-up passes over them")
    p.add_argument("--nu-timed", type=int, default=2, help="newuser: timed passes over them")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed runs of every variant, in turn (the median run is reported, with its hits)")
    p.add_argument("--alpha", type=float, default=1.05)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--models", nargs="+", default=["12x2048", "4x1024"], help="BLOCKSxHIDDEN")
    p.add_argument("--host-tokens", action="store_true",
                   help="tokens (and so the hashed ids) on the host, as before the GPU hasher")
    p.add_argument("--tmp", default=None, help="directory for the LMDB store (local disk)")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure there too")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a logic check)")
    p.add_argument("--smoke", action="store_true", help="toy sizes (flags given still apply): " + ", ".join(
        f"{k}={v}" for k, v in SMOKE.items()))
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)             # flags given still win
    args = p.parse_args(argv)
    for spec in args.models:
        blocks, _, hidden = spec.partition("x")
        if not (blocks.isdigit() and hidden.isdigit() and int(blocks) >= 2 and int(hidden) % 128 == 0):
            p.error(f"--models {spec}: BLOCKSxHIDDEN with at least 2 blocks (the Engram layer follows "
                    "block 1) and HIDDEN a multiple of 128 (the attention heads' width)")
    return args


def tier_parts(smoke, out):
    """Parts 1 and 2: (table lines, JSON record)."""
    lines, parts = [], {"h2d": [], "hot_gather": []}
    reps = 5 if smoke else None
    for n in ((4096,) if smoke else (16384, 262144)):
        nbytes, t_ours, t_plain = h2d(n, ROW_DIM, reps=reps or 50)
        parts["h2d"].append({"rows": n, "bytes": nbytes, "fill_GBps": nbytes / t_ours / 1e9,
                             "plain_pinned_GBps": nbytes / t_plain / 1e9})
        lines.append((f"1. {n} missed rows ({nbytes / 2**20:.1f} MiB) into a lookup's output, GB/s: "
                      "tier's fill vs plain pinned copy",
                      f"{nbytes / t_ours / 1e9:.2f}", f"{nbytes / t_plain / 1e9:.2f}", f"{t_plain / t_ours:.2f}"))
    for n in ((4096,) if smoke else (16384, 131072)):
        t_ours, t_emb, t_kernel = hot_gather(ROW_DIM, 1 << (16 if smoke else 20), n, reps=reps or 100)
        parts["hot_gather"].append({"ids": n, "tier_us": t_ours * 1e6, "embedding_us": t_emb * 1e6,
                                    "kernel_us": t_kernel * 1e6})
        slab = '64k' if smoke else '1M'
        lines.append((f"2. hot gather of {n} ids from a {slab}-row slab, us: tier path "
                      "(CUDA ids, GPU index, miss list read back) vs F.embedding",
                      f"{t_ours * 1e6:.0f}", f"{t_emb * 1e6:.0f}", f"{t_emb / t_ours:.3f}"))
        lines.append(("2. the same, the tier's lookup kernel alone (back to back, as F.embedding runs)",
                      f"{t_kernel * 1e6:.0f}", f"{t_emb * 1e6:.0f}", f"{t_emb / t_kernel:.3f}"))
    return lines, parts


def main(argv=None):
    global DEV
    args = parse_args(argv)
    DEV = torch.device(args.device if args.device != "cuda" else "cuda:0")
    out = print
    if DEV.type == "cuda":
        machine = f"{torch.cuda.get_device_name(DEV)}, {os.cpu_count()} host cores"
    else:
        machine = f"CPU only ({os.cpu_count()} cores): a logic check, no figure worth reading"
    machine += f", torch {torch.__version__}, tierstore {ts.__version__}"
    command = "python tools/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out(f"# {machine}")
    out(f"# {command.strip()}")
    lines = [("measure", "tierstore", "baseline", "ours/base")]
    if DEV.type == "cuda":
        part_lines, parts = tier_parts(args.smoke, out)
        lines += part_lines
    else:
        parts = {}
        out("# parts 1 and 2 need CUDA: not run")
    runs = []
    for setup in setups(args):
        results, pinned_how = engram_models(setup, args, out)
        runs.append((setup, results, pinned_how))
        for spec, result in results.items():
            lines += model_lines(setup, spec, result, pinned_how)
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    for r in lines:
        out(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report(machine, command.strip(), parts, runs), f, indent=1)
            f.write("\n")
        out(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
