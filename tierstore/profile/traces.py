"""Trace files: id traces (.npy or raw int64), token files and text made into Engram n-gram ids,
and libCacheSim's oracleGeneral format for cross-checks.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..policy.belady import dense_ids, next_use
from ..transfer import InputFileError

NPY_MAGIC = b"\x93NUMPY"


def load_trace(path, fmt: str = "npy") -> np.ndarray:
    """The ids of a trace file as a 1-D int64 array (memory-mapped where the file allows).

    ``fmt``: ``"npy"`` (a NumPy array of integers, any shape, read in C order) or ``"raw"``
    (little-endian int64, no header). Ids must be non-negative.
    """
    p = Path(path)
    _check_file(p)
    with open(p, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if fmt == "npy":
        if head != NPY_MAGIC:
            raise InputFileError(f"{p}: not a .npy file (no NumPy header); "
                                 "pass --format raw for little-endian int64 without a header")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - a garbled header raises anything
            raise InputFileError(f"{p}: a damaged .npy file ({exc})") from None
        if arr.dtype.kind not in "iu":
            raise InputFileError(f"{p}: holds {arr.dtype} values, not integer ids")
        ids = np.asarray(arr).reshape(-1)
    elif fmt == "raw":
        size = p.stat().st_size
        if size % 8:
            raise InputFileError(f"{p}: {size} bytes is not a whole number of int64 ids "
                                 "(--format raw reads little-endian int64)")
        ids = np.asarray(np.memmap(p, dtype="<i8", mode="r")) if size else np.empty(0, np.int64)
    else:
        raise ConfigError(f"trace format must be 'npy' or 'raw', got {fmt!r}")
    return _as_ids(ids, p)


def _check_file(p: Path):
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if not p.is_file():
        raise InputFileError(f"{p}: not a file")


def _as_ids(ids: np.ndarray, what) -> np.ndarray:
    if ids.size == 0:
        raise InputFileError(f"{what}: holds no ids")
    if ids.dtype == np.uint64 and ids.max() > np.iinfo(np.int64).max:
        k = int(np.argmax(ids > np.iinfo(np.int64).max))
        raise InputFileError(f"{what}: id {ids[k]} at position {k} does not fit in int64")
    if ids.dtype != np.int64 or not ids.dtype.isnative:
        ids = ids.astype(np.int64)
    low = int(ids.min())
    if low < 0:
        k = int(np.argmax(ids < 0))
        raise InputFileError(f"{what}: holds a negative id ({ids[k]} at position {k})")
    return np.ascontiguousarray(ids)


_WORD = re.compile(r"\w+|[^\w\s]")


def text_tokens(text: str) -> tuple[np.ndarray, int]:
    """Words and punctuation of ``text`` as token ids (1, 2, ... in first-seen order; 0 is the
    pad id), grouped by Engram's normal form where ``tierstore.hashing`` provides it."""
    try:
        from ..hashing import compression_key
    except ImportError:
        compression_key = str.lower
    ids: dict = {}
    tokens = [ids.setdefault(compression_key(w), len(ids) + 1) for w in _WORD.findall(text)]
    return np.asarray(tokens, dtype=np.int64), len(ids) + 1


def read_text_tokens(path) -> tuple[np.ndarray, int]:
    p = Path(path)
    _check_file(p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{p}: not UTF-8 text ({exc})") from None
    tokens, vocab = text_tokens(text)
    if tokens.size == 0:
        raise InputFileError(f"{p}: holds no words")
    return tokens, vocab


def load_tokens(path) -> np.ndarray:
    """Token ids from a .npy file: ``[seq]`` or ``[batch, seq]`` integers."""
    p = Path(path)
    _check_file(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a garbled header raises anything
        raise InputFileError(f"{p}: not a readable .npy file of token ids ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise InputFileError(f"{p}: holds {getattr(arr, 'dtype', type(arr).__name__)} values, "
                             "not integer token ids")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise InputFileError(f"{p}: token ids must be a non-empty [seq] or [batch, seq] array, "
                             f"got shape {arr.shape}")
    if int(arr.min()) < 0:
        raise InputFileError(f"{p}: holds a negative token id")
    return arr.astype(np.int64, copy=False)


def ngram_trace(tokens: np.ndarray, vocab_size: int | None = None, **options):
    """Engram row ids of ``tokens`` (``[seq]`` or ``[batch, seq]``), read row by row, each
    position's ``ids_per_token`` ids together; returns ``(trace, hasher)``.

    ``options`` go to ``tierstore.hashing.NgramHasher`` (max_ngram, heads, table_size,
    layer_id, seed, pad_id)."""
    try:
        from ..hashing import NgramHasher
    except ImportError as exc:
        raise ConfigError(f"--ngram needs tierstore.hashing, which this install lacks ({exc})") \
            from None
    top = int(tokens.max()) + 1
    pad = int(options.get("pad_id", 0))
    if vocab_size is None:
        vocab_size = max(top, pad + 1)
    elif top > vocab_size:
        raise ConfigError(f"token id {top - 1} is outside the vocabulary [0, {vocab_size})")
    options = {k: v for k, v in options.items() if v is not None}
    hasher = NgramHasher(vocab_size, **options)
    return np.ascontiguousarray(hasher(tokens).reshape(-1), dtype=np.int64), hasher


def write_oracle_general(trace: np.ndarray, path) -> None:
    """Write ``trace`` as a libCacheSim oracleGeneral file: one 24-byte record per access
    (u32 time, u64 id, u32 size = 1, i64 position of the id's next access or -1)."""
    trace = np.ascontiguousarray(trace, dtype=np.int64)
    n = len(trace)
    dense = np.empty(n, dtype=np.int64)
    u = dense_ids(trace, dense)
    nxt = np.empty(n, dtype=np.int64)
    next_use(dense, u, nxt)
    nxt[nxt == n] = -1
    rec = np.zeros(n, dtype=[("time", "<u4"), ("id", "<u8"), ("size", "<u4"), ("next", "<i8")])
    rec["time"] = np.arange(n, dtype=np.uint64) & 0xFFFFFFFF
    rec["id"] = trace
    rec["size"] = 1
    rec["next"] = nxt
    rec.tofile(os.fspath(path))
