"""Synthetic id streams for benchmarks, demos and profiling.

Popularity follows Zipf(alpha) over ranks; ranks map to row ids through a
fixed random permutation, so hot rows are scattered over the table as hashed
n-gram ids are. A drifting stream moves from topic to topic: each topic
makes another random set of rows popular.
"""
from __future__ import annotations

import numpy as np


def _zipf_ranks(num_rows: int, alpha: float, size: int, rng) -> np.ndarray:
    weights = np.arange(1, num_rows + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size)), num_rows - 1)


def zipf_ids(num_rows: int, alpha: float, size: int, seed: int = 0) -> np.ndarray:
    """``size`` ids drawn by Zipf(alpha) popularity over ``num_rows`` scattered rows."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_rows)
    return perm[_zipf_ranks(num_rows, alpha, size, rng)].astype(np.int64)


def drifting_ids(num_rows: int, alpha: float, size: int, phase: int,
                 topic_rows: int | None = None, seed: int = 0) -> np.ndarray:
    """Topic after topic: every ``phase`` ids a new random set of ``topic_rows`` rows
    (default ``num_rows // 20``) becomes popular, Zipf(alpha) within the set."""
    rng = np.random.default_rng(seed)
    topic_rows = max(1, num_rows // 20 if topic_rows is None else min(topic_rows, num_rows))
    out = np.empty(size, dtype=np.int64)
    for start in range(0, size, phase):
        stop = min(start + phase, size)
        topic = rng.choice(num_rows, size=topic_rows, replace=False)
        out[start:stop] = topic[_zipf_ranks(topic_rows, alpha, stop - start, rng)]
    return out


def uniform_ids(num_rows: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_rows, size=size, dtype=np.int64)


def text_trace(path, tokens: int | None = None) -> np.ndarray:
    """The Engram row-id trace of a token file written by ``tools/make_trace.py``: each
    document's canonical tokens hashed as one sequence by the ``NgramHasher`` its config names,
    documents in order, each token's ids together. ``tokens``: stop after the document that
    reaches this many tokens (default: all)."""
    import json

    from .hashing import NgramHasher

    with np.load(path, allow_pickle=False) as z:
        toks, starts, config = z["tokens"].astype(np.int64), z["doc_starts"], json.loads(str(z["config"]))
    hasher = NgramHasher(config["vocab_size"], max_ngram=config["max_ngram"], heads=config["heads"],
                         table_size=config["table_size"], seed=config["seed"],
                         pad_id=config["pad_id"])
    bounds = np.append(starts, len(toks))
    if tokens is not None:
        bounds = bounds[:int(np.searchsorted(bounds, tokens)) + 1]
    return np.concatenate([hasher(toks[a:b]).reshape(-1) for a, b in zip(bounds[:-1], bounds[1:])])
