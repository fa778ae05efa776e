"""Moving whole tables in and out of a store: ``.npy`` and safetensors in, ``.npy`` out.

Sources are memory-mapped and copied chunk by chunk, so a table larger than RAM imports in
bounded memory. A new store is written the way ``tierstore.create`` writes one (rows first,
metadata last, every row stored): an import that fails half way leaves no store behind, and
``export`` gives back the imported array bit for bit.

safetensors files are read here directly (an 8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the raw little-endian data), so the
``safetensors`` package is not needed and nothing is loaded whole. BF16 tensors become float32
(exactly: bfloat16 is the top half of a float32).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .config import DTYPES, StoreConfig
from .errors import ConfigError, NonFiniteRowError, RowShapeError, TierstoreError
from .progress import progress as progress_bar

CHUNK_ROWS = 1 << 16
TRAIN_SAMPLE_ROWS = 4096
NPY_MAGIC = b"\x93NUMPY"
MAX_SAFETENSORS_HEADER = 100 << 20

# safetensors dtype -> (numpy dtype of the stored bytes, row dtype it becomes)
_SAFETENSORS_DTYPES = {
    "F64": ("<f8", "float64"),
    "F32": ("<f4", "float32"),
    "F16": ("<f2", "float16"),
    "BF16": ("<u2", "float32"),
}


class InputFileError(TierstoreError, ValueError):
    """A file given to the command line is missing, unreadable, or not what it claims."""


# =========================================================================== sources


@dataclass
class ArraySource:
    """A 2-D table of rows to import, read a slice at a time."""

    path: Path
    description: str
    num_rows: int
    dim: int
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.read(start, stop)


def open_source(path, tensor: str | None = None) -> ArraySource:
    """A ``.npy`` array (memory-mapped) or one tensor of a ``.safetensors`` file."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file")
    if not p.is_file():
        raise InputFileError(f"{p}: not a file")
    with open(p, "rb") as f:
        head = f.read(8)
    if head[:len(NPY_MAGIC)] == NPY_MAGIC:
        if tensor is not None:
            raise ConfigError(f"{p}: --tensor names a tensor of a safetensors file; "
                              "a .npy file holds one array")
        return _npy_source(p)
    if p.suffix == ".npy":
        raise InputFileError(f"{p}: not a .npy file (no NumPy header)")
    return _safetensors_source(p, tensor)


def _check_table(p: Path, shape, dtype: np.dtype, what: str):
    if len(shape) != 2:
        raise RowShapeError(f"{p}: {what} has shape {tuple(shape)}; a table is 2-D "
                            "(num_rows, dim)")
    if shape[0] < 1 or shape[1] < 1:
        raise RowShapeError(f"{p}: {what} is empty (shape {tuple(shape)})")
    if dtype.kind != "f":
        raise RowShapeError(f"{p}: {what} holds {dtype} values; tierstore stores floating point "
                            f"rows ({', '.join(DTYPES)})")


def _npy_source(p: Path) -> ArraySource:
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a garbled header raises anything
        raise InputFileError(f"{p}: a damaged .npy file ({exc})") from None
    _check_table(p, arr.shape, arr.dtype, "the array")
    dtype = np.dtype(arr.dtype.newbyteorder("="))
    return ArraySource(p, f"{p} ({arr.shape[0]} x {arr.shape[1]} {dtype})", int(arr.shape[0]),
                       int(arr.shape[1]), dtype, lambda a, b: arr[a:b])


def read_safetensors_header(p: Path) -> tuple[dict, int]:
    """(header without ``__metadata__``, offset of the data) of a safetensors file."""
    size = p.stat().st_size
    with open(p, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InputFileError(f"{p}: not a .npy or .safetensors file ({size} bytes, "
                                 "too short for either header)")
        n = int.from_bytes(raw, "little")
        if n < 2 or n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise InputFileError(f"{p}: not a .npy or .safetensors file (the first 8 bytes give "
                                 f"a header of {n} bytes in a file of {size})")
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputFileError(f"{p}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputFileError(f"{p}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + n
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str)
              and isinstance(info.get("shape"), list)
              and all(isinstance(x, int) and x >= 0 for x in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(x, int) and x >= 0 for x in info["data_offsets"]))
        if not ok:
            raise InputFileError(f"{p}: the safetensors entry {name!r} lacks a dtype, shape or "
                                 "data_offsets")
        begin, end = info["data_offsets"]
        if end < begin or data_start + end > size:
            raise InputFileError(f"{p}: tensor {name!r} claims bytes {begin}..{end} of the data, "
                                 f"but the file holds {size - data_start} (truncated?)")
    return header, data_start


def _safetensors_source(p: Path, tensor: str | None) -> ArraySource:
    header, data_start = read_safetensors_header(p)
    if not header:
        raise InputFileError(f"{p}: the safetensors file holds no tensors")
    if tensor is None:
        if len(header) > 1:
            raise ConfigError(f"{p}: holds {len(header)} tensors; pick one with --tensor "
                              f"({', '.join(sorted(header)[:20])})")
        tensor = next(iter(header))
    if tensor not in header:
        raise ConfigError(f"{p}: no tensor named {tensor!r} (it holds "
                          f"{', '.join(sorted(header)[:20])})")
    info = header[tensor]
    code = info["dtype"]
    shape = tuple(info["shape"])
    if code not in _SAFETENSORS_DTYPES:
        raise RowShapeError(f"{p}: tensor {tensor!r} holds {code} values; tierstore imports "
                            f"floating point tensors ({', '.join(_SAFETENSORS_DTYPES)})")
    stored, row_dtype = (np.dtype(x) for x in _SAFETENSORS_DTYPES[code])
    _check_table(p, shape, row_dtype, f"tensor {tensor!r}")
    begin, end = info["data_offsets"]
    if end - begin != math.prod(shape) * stored.itemsize:
        raise InputFileError(f"{p}: tensor {tensor!r} of shape {shape} and dtype {code} needs "
                             f"{math.prod(shape) * stored.itemsize} bytes, its data_offsets give "
                             f"{end - begin}")
    arr = np.memmap(p, dtype=stored, mode="r", offset=data_start + begin, shape=shape)
    if code == "BF16":
        def read(a, b):
            return (arr[a:b].astype(np.uint32) << 16).view(np.float32)
    else:
        def read(a, b):
            return arr[a:b]
    return ArraySource(p, f"{p}:{tensor} ({shape[0]} x {shape[1]} {code})", shape[0], shape[1],
                       row_dtype, read)


# =========================================================================== import / export


def import_table(src: ArraySource, path, *, dtype=None, codec="raw", overwrite: bool = False,
                 allow_nonfinite: bool = False, start: int | None = None,
                 chunk_rows: int = CHUNK_ROWS, progress: bool = True) -> dict:
    """Copy ``src`` into a new store at ``path`` (or, with ``start``, into rows
    ``start .. start + src.num_rows`` of an existing one). Returns a summary."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if start is not None:
        return _import_into(src, path, start, chunk_rows, progress)
    from .build import StoreBuild
    from .codecs import get_codec
    from .table import TableFormat
    from .validation import as_rows

    dt = np.dtype(dtype if dtype is not None else src.dtype)
    if dt.name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dt}")
    config = StoreConfig()
    codec_obj = get_codec(codec)
    table = TableFormat(num_rows=src.num_rows, dim=src.dim, dtype=dt.name,
                        codec=codec_obj.get_config(), allow_nonfinite=allow_nonfinite,
                        init_kind="stored", init_value=None)
    what = src.description

    def chunk(a, b):
        return as_rows(src.rows(a, b), (b - a, src.dim), dt, allow_nonfinite,
                       what=f"{src.path} rows {a}:{b}", row_ids=a, codec=codec_obj)

    if codec_obj.needs_training():
        codec_obj = codec_obj.trained(chunk(0, min(src.num_rows, TRAIN_SAMPLE_ROWS)))
    t0 = time.perf_counter()

    def chunks():   # each checked on the build's worker thread, as it is written
        for a in range(0, src.num_rows, chunk_rows):
            yield a, partial(chunk, a, min(a + chunk_rows, src.num_rows))

    build = StoreBuild(path, table, getattr(codec_obj, "dictionary", None),
                       map_size=config.map_size, max_map_size=config.max_map_size,
                       overwrite=overwrite)
    try:
        with progress_bar(src.num_rows, f"import {src.path.name}", enabled=progress) as bar:
            build.append_chunks(chunks(), on_written=bar.update)
    except BaseException:
        build.abort()
        raise
    build.finish()
    return {"path": str(path), "source": what, "rows": src.num_rows, "dim": src.dim,
            "dtype": dt.name, "codec": codec_obj.get_config(),
            "seconds": time.perf_counter() - t0}


def _import_into(src: ArraySource, path, start: int, chunk_rows: int, progress: bool) -> dict:
    from . import api

    t0 = time.perf_counter()
    with api.open(path) as store:
        if src.dim != store.dim:
            raise RowShapeError(f"{src.description}: rows of dim {src.dim}, the store at {path} "
                                f"holds rows of dim {store.dim}")
        if start < 0 or start + src.num_rows > store.num_rows:
            raise ConfigError(f"rows {start}..{start + src.num_rows} do not fit in the store's "
                              f"{store.num_rows} rows")
        written = 0
        try:
            with progress_bar(src.num_rows, f"import {src.path.name}", enabled=progress) as bar:
                for a in range(0, src.num_rows, chunk_rows):
                    b = min(a + chunk_rows, src.num_rows)
                    with np.errstate(over="ignore"):
                        rows = np.asarray(src.rows(a, b)).astype(store.dtype)
                    try:
                        store.update(np.arange(start + a, start + b, dtype=np.int64), rows)
                    except NonFiniteRowError as exc:
                        raise NonFiniteRowError(f"{src.path} rows {a}:{b}: {exc}") from None
                    written = b
                    bar.update(b - a)
        except BaseException as exc:
            exc.add_note(f"{written:,} of the {src.num_rows:,} rows were written before this "
                         + (f"(store rows {start:,}..{start + written - 1:,}; they are kept)"
                            if written else "(the store is unchanged)"))
            raise
        dtype = store.dtype.name
    return {"path": str(path), "source": src.description, "rows": src.num_rows, "dim": src.dim,
            "dtype": dtype, "start": start, "seconds": time.perf_counter() - t0}


def export_npy(path, out, *, chunk_rows: int = CHUNK_ROWS, progress: bool = True) -> dict:
    """Write every row of the store at ``path`` to the ``.npy`` file ``out``, verifying each
    stored row's checksum on the way (written whole or not at all)."""
    from . import api

    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    out = Path(out)
    if out.is_dir():
        raise InputFileError(f"{out}: is a folder; give the .npy file to write")
    if not out.parent.is_dir():
        raise InputFileError(f"{out}: the folder {out.parent} does not exist")
    t0 = time.perf_counter()
    with api.open(path, readonly=True) as store:
        disk = store.disk
        n, dim, dtype = store.num_rows, store.dim, store.dtype
        tmp = out.with_name(f".{out.name}.partial{os.getpid()}")
        try:
            try:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim))
            except OSError as exc:   # named by ``out``: the partial file is ours, not the caller's
                raise InputFileError(f"{out}: cannot write ({exc.strerror or exc})") from None
            positions = np.arange(min(chunk_rows, n), dtype=np.int64)
            with progress_bar(n, f"export {Path(path).name}", enabled=progress) as bar:
                for a in range(0, n, chunk_rows):
                    b = min(a + chunk_rows, n)
                    disk.read_rows(np.arange(a, b, dtype=np.int64), arr[a:b], positions[:b - a])
                    bar.update(b - a)
            arr.flush()
            del arr
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    return {"path": str(path), "out": str(out), "rows": n, "dim": dim, "dtype": dtype.name,
            "seconds": time.perf_counter() - t0}
