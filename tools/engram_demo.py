"""A small Engram language model trained on CPU, its n-gram table in tierstore.

    python tools/engram_demo.py

(300 steps: about 70 s on 2 quiet CPU cores, up to 5 minutes when other jobs share them;
``--steps 60`` for a quick look). Text: the Python reference documentation that ships with Python itself
(``pydoc_data.topics``, about 120k word tokens; nothing is downloaded), split into words,
numbers and punctuation; words seen once become ``<unk>``. Every tenth of 50 equal pieces of
the text is held out.

The model: token embedding, 4 pre-norm transformer blocks (causal self-attention, 4x MLP), tied
output head, with an ``EngramMemory`` block after the first transformer block (DeepSeek
Engram: hashed 2- and 3-grams of canonical tokens, 8 heads each, the 16 rows of a position
concatenated, gated by the hidden state, short causal convolution, residual). Token ids go
through a ``TokenCompressor`` (lowercasing merges "The" and "the") before hashing.

Two copies are trained from the same initial weights on the same batches, step by step in
turn (so both see the same machine load; each step is timed on its own):

- **tierstore**: the Engram table in a store whose device and RAM tiers hold 7% of its rows
  (the rest on disk, LMDB), rows updated by ``RowAdagrad`` (accumulators in a sibling store)
  through ``store.update``, the next batch's rows prefetched in the background during each
  step (the step waits for that read before it ends, so the timing includes it);
- **nn.Embedding**: the same table as an in-memory ``nn.Embedding(sparse=True)`` updated by
  the same row-wise Adagrad written in plain torch.

Dense weights use AdamW in both. It prints one markdown table: the training loss every
``--print-every`` steps (mean over those steps), held-out loss, tokens/s, and the stores'
hit ratios. The two loss columns agree to about 0.01: the same arithmetic, up to the order
of floating-point sums (tests/test_torch_adapter.py checks the equivalence exactly).
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np

import tierstore as ts
from tierstore.tiers._torch import torch_module

torch = torch_module()
import torch.nn.functional as F
from torch import nn

from tierstore.hashing import NgramHasher, TokenCompressor
from tierstore.optim import RowAdagrad
from tierstore.torch import EngramMemory, TieredEmbedding

TOKEN_RE = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")


# -- data ---------------------------------------------------------------------------------------
def load_corpus(min_count=2):
    from pydoc_data import topics

    text = "\n".join(topics.topics[k] for k in sorted(topics.topics))
    words = TOKEN_RE.findall(text)
    counts = collections.Counter(words)
    itos = ["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= min_count)
    stoi = {w: i for i, w in enumerate(itos)}
    ids = np.array([stoi.get(w, 1) for w in words], dtype=np.int64)
    return ids, itos


class Batches:
    """Random windows of a token array, from a seeded generator (same order for both runs)."""

    def __init__(self, ids, batch, seq, seed):
        self.ids, self.batch, self.seq = ids, batch, seq
        self.rng = np.random.default_rng(seed)

    def __call__(self):
        starts = self.rng.integers(0, len(self.ids) - self.seq - 1, size=self.batch)
        window = np.stack([self.ids[s:s + self.seq + 1] for s in starts])
        return torch.from_numpy(window[:, :-1].copy()), torch.from_numpy(window[:, 1:].copy())


# -- model --------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class EngramLM(nn.Module):
    def __init__(self, vocab, dim, layers, heads, seq, engram: EngramMemory, engram_after=0):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        nn.init.normal_(self.tok.weight, std=0.02)       # tied head: keep the first logits small
        self.pos = nn.Parameter(torch.zeros(seq, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.engram = engram
        self.engram_after = engram_after
        self.ln = nn.LayerNorm(dim)

    def forward(self, tokens):
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.engram_after:
                x = self.engram(x, tokens)
        return F.linear(self.ln(x), self.tok.weight)


class SparseRowAdagrad:
    """The baseline's table optimizer: row-wise Adagrad on nn.Embedding(sparse=True), in torch."""

    def __init__(self, weight, lr, eps, init):
        self.w, self.lr, self.eps = weight, lr, eps
        self.state = torch.full((weight.shape[0],), float(init))

    @torch.no_grad()
    def step(self):
        g = self.w.grad.coalesce()
        rows, values = g.indices()[0], g.values()
        acc = self.state[rows] + values.pow(2).mean(1)
        self.state[rows] = acc
        self.w[rows] -= self.lr * values / (acc.sqrt() + self.eps).unsqueeze(1)
        self.w.grad = None


# -- the two runs, in lockstep ------------------------------------------------------------------
class Trainer:
    """One model and its optimizers; ``train_step`` is timed by the caller."""

    def __init__(self, kind, args, vocab, comp, hasher, init_table, workdir):
        self.kind, self.args = kind, args
        self.store = None
        if kind == "tierstore":
            config = ts.StoreConfig(device_rows=args.device_rows, ram_rows=args.ram_rows)
            self.store = ts.create(os.path.join(workdir, "engram.ts"), num_rows=hasher.num_rows,
                                   dim=args.head_dim, dtype="float32", init=init_table,
                                   config=config, overwrite=True)
            table = TieredEmbedding(self.store, optimizer=RowAdagrad(args.table_lr, 1e-8, 0.0,
                                                                     reset_state=True))
            self.table_opt = table
        else:
            table = nn.Embedding(hasher.num_rows, args.head_dim, sparse=True)
            with torch.no_grad():
                table.weight.copy_(torch.from_numpy(init_table))
            self.table_opt = SparseRowAdagrad(table.weight, args.table_lr, 1e-8, 0.0)
        self.table = table
        torch.manual_seed(args.seed)             # the same dense weights in both runs
        self.engram = EngramMemory(table, hasher, args.dim, compressor=comp)
        self.model = EngramLM(vocab, args.dim, args.layers, args.heads, args.seq, self.engram)
        dense = [p for n, p in self.model.named_parameters() if not n.startswith("engram.table.")]
        self.opt = torch.optim.AdamW(dense, lr=args.lr, weight_decay=0.01, foreach=True)
        self.losses, self.seconds = [], 0.0

    def loss(self, x, y):
        logits = self.model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def train_step(self, step, x, y, next_x):
        args = self.args
        handle = None
        if self.store is not None and args.prefetch and next_x is not None:
            handle = self.engram.prefetch(next_x)     # next batch's rows, read in the background
        lr = args.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss = self.loss(x, y)
        loss.backward()
        self.opt.step()
        self.table_opt.step()
        self.opt.zero_grad(set_to_none=True)
        if handle is not None:
            handle.wait()          # inside the timed step: the read-ahead overlaps only this step
        return loss.item()

    @torch.no_grad()
    def evaluate(self, batches):
        return float(np.mean([self.loss(x, y).item() for x, y in batches]))

    def close(self):
        if self.store is not None:
            self.table.close()
            self.store.close()


def train_both(args, corpus, vocab, comp, hasher, init_table, workdir):
    """Both models step by step, alternating, so both see the same machine load."""
    train_ids, held_ids = split_corpus(corpus)
    train = Batches(train_ids, args.batch, args.seq, args.seed)
    batches = [train() for _ in range(args.steps)]
    held = Batches(held_ids, args.batch, args.seq, args.seed + 1)
    held_batches = [held() for _ in range(args.eval_batches)]
    trainers = [Trainer(kind, args, vocab, comp, hasher, init_table, workdir)
                for kind in ("tierstore", "nn.Embedding")]
    try:
        for step, (x, y) in enumerate(batches):
            next_x = batches[step + 1][0] if step + 1 < len(batches) else None
            for t in trainers:
                t0 = time.perf_counter()
                t.losses.append(t.train_step(step, x, y, next_x))
                if step >= args.warmup:
                    t.seconds += time.perf_counter() - t0
            if (step + 1) % args.print_every == 0:
                print(f"step {step + 1}: " + ", ".join(
                    f"{t.kind} {np.mean(t.losses[-args.print_every:]):.3f}" for t in trainers),
                    file=sys.stderr)
        results = {}
        for t in trainers:
            results[t.kind] = {
                "losses": t.losses, "val": t.evaluate(held_batches),
                "tokens_per_s": (args.steps - args.warmup) * args.batch * args.seq / t.seconds}
            if t.store is not None:
                results[t.kind]["stats"] = t.store.stats()
                results[t.kind]["state_stats"] = t.table.optimizer.state.stats()
        return results
    finally:
        for t in trainers:
            t.close()


def split_corpus(ids, chunks=50, every=10):
    """Every ``every``-th of ``chunks`` equal pieces is held out (about 10% of the text)."""
    pieces = np.array_split(ids, chunks)
    held = [p for k, p in enumerate(pieces) if k % every == every - 1]
    train = [p for k, p in enumerate(pieces) if k % every != every - 1]
    return np.concatenate(train), np.concatenate(held)


def fmt_ratio(x):
    return f"{100 * x:.1f}%"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--engram-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=16, help="dims of one Engram row")
    p.add_argument("--table-size", type=int, nargs=2, default=[20000, 40000],
                   help="per-head table size of 2-grams and 3-grams (rounded up to primes)")
    p.add_argument("--device-rows", type=int, default=4096)
    p.add_argument("--ram-rows", type=int, default=28672)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW, dense weights")
    p.add_argument("--table-lr", type=float, default=0.05, help="row-wise Adagrad, Engram table")
    p.add_argument("--print-every", type=int, default=25)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of tokens/s")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                   help="do not prefetch the next batch's rows")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the store goes (default: a temp folder)")
    args = p.parse_args(argv)
    args.warmup = min(args.warmup, args.steps - 1)

    torch.set_num_threads(args.threads)
    corpus, itos = load_corpus()
    comp = TokenCompressor.build(lambda i: itos[i], len(itos))
    hasher = NgramHasher(comp.num_canonical, max_ngram=3, heads=args.engram_heads,
                         table_size=args.table_size, layer_id=1, seed=args.seed, pad_id=comp(0))
    init_table = (np.random.default_rng(args.seed).standard_normal(
        (hasher.num_rows, args.head_dim)) * 0.5).astype(np.float32)
    print(f"corpus: pydoc_data.topics, {len(corpus)} tokens, vocabulary {len(itos)} "
          f"({comp.num_canonical} canonical); Engram table {hasher.num_rows} rows x "
          f"{args.head_dim} float32 ({hasher.num_rows * args.head_dim * 4 / 2**20:.1f} MiB), "
          f"{hasher.ids_per_token} rows a token; tiers: device {args.device_rows} + RAM "
          f"{args.ram_rows} rows; torch threads {torch.get_num_threads()}", file=sys.stderr)

    workdir = args.dir or tempfile.mkdtemp(prefix="engram_demo_")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    try:
        results = train_both(args, corpus, len(itos), comp, hasher, init_table, workdir)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"both runs: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    a, b = results["tierstore"], results["nn.Embedding"]
    st = a["stats"]
    memory_rows = args.device_rows + args.ram_rows
    rows = []
    n = args.print_every
    for end in range(n, args.steps + 1, n):
        rows.append((f"train loss, steps {end - n + 1}-{end}", f"{np.mean(a['losses'][end - n:end]):.3f}",
                     f"{np.mean(b['losses'][end - n:end]):.3f}"))
    rows.append((f"held-out loss ({args.eval_batches} batches)", f"{a['val']:.3f}", f"{b['val']:.3f}"))
    rows.append((f"tokens/s (steps {args.warmup + 1}-{args.steps})", f"{a['tokens_per_s']:.0f}",
                 f"{b['tokens_per_s']:.0f}"))
    in_memory = f"{memory_rows} of {hasher.num_rows} ({fmt_ratio(memory_rows / hasher.num_rows)})"
    rows.append(("table rows in memory", in_memory, f"{hasher.num_rows} (all)"))
    rows.append(("row lookups", f"{st['lookups']}", f"{st['lookups']}"))
    rows.append(("device tier hit ratio", fmt_ratio(st["device"]["hit_ratio"]), "-"))
    rows.append(("RAM tier hit ratio", fmt_ratio(st["ram"]["hit_ratio"]), "-"))
    rows.append(("disk (misses)", fmt_ratio(st["disk"]["read_ratio"]), "-"))
    pf = st["prefetch"]
    rows.append(("misses served by prefetch", fmt_ratio(pf["rows_used"] / max(1, st["misses"])), "-"))
    ss = a["state_stats"]
    rows.append(("Adagrad state hit ratio (sibling store)", fmt_ratio(ss["hit_ratio"]), "-"))
    print()
    print(f"| {args.steps} steps x {args.batch}x{args.seq} tokens | Engram table in tierstore "
          f"| Engram table in nn.Embedding |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
