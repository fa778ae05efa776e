"""Synthetic id streams for benchmarks, demos and profiling.

Popularity follows Zipf(alpha) over ranks; ranks map to row ids through a
fixed random permutation, so hot rows are scattered over the table as hashed
n-gram ids are. A drifting stream shifts the rank -> id map every ``phase``
ids, so the popular set changes from topic to topic.
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


def drifting_ids(num_rows: int, alpha: float, size: int, phase: int, seed: int = 0) -> np.ndarray:
    """Zipf ids whose popular set moves to other rows every ``phase`` ids."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_rows)
    ranks = _zipf_ranks(num_rows, alpha, size, rng)
    shifts = rng.integers(0, num_rows, size=(size + phase - 1) // phase)
    shift = np.repeat(shifts, phase)[:size]
    return perm[(ranks + shift) % num_rows].astype(np.int64)


def uniform_ids(num_rows: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_rows, size=size, dtype=np.int64)
