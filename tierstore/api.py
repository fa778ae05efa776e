"""Creating and opening stores."""
from __future__ import annotations

import numbers
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from .build import StoreBuild, recover
from .codecs import get_codec
from .config import StoreConfig
from .errors import ConfigError, RowShapeError, StorePermissionError, TierstoreError
from .progress import progress as progress_bar
from .salvage import SalvageReport, salvage  # noqa: F401  (tierstore.api.salvage)
from .store import CREATE_CHUNK, Store
from .table import DTYPES, TableFormat, check_shape
from .tier_sizes import check_fits, fitted_config
from .tiers.disk import DiskTier, existing_store_error
from .validation import as_rows

TRAIN_SAMPLE_ROWS = 4096


def create(path, num_rows: int, dim: int, dtype="float16", init=None,
           config: StoreConfig | None = None, overwrite: bool = False,
           progress: bool = False, *, codec="raw", allow_nonfinite: bool = False) -> Store:
    """Create a store of ``num_rows x dim`` rows at ``path`` and open it for writing.

    ``init`` gives every row's first value: ``None`` (zeros) or a number
    (nothing is written: such rows have no record), an ``(num_rows, dim)``
    array, or a callable ``(start, stop) -> rows`` called chunk by chunk; each
    chunk is validated and written before the next is asked for. The store is
    built beside ``path`` and put there once complete: with ``overwrite``, the
    old store stays until then. ``progress``: a bar on stderr (when a terminal).
    ``codec`` (a name, a config dict or a :class:`~tierstore.codecs.Codec`) and
    ``allow_nonfinite`` (rows may hold NaN and Inf) are properties of the table,
    saved with it (``store.format``); ``config`` says how this open caches it.
    """
    config = _check_config(config)
    num_rows, dim, dtype = check_shape(num_rows, dim, dtype)
    codec = get_codec(codec)
    constant = init is None or (isinstance(init, numbers.Real) and not isinstance(init, bool))
    table = TableFormat(num_rows=num_rows, dim=dim, dtype=dtype.name, codec=codec.get_config(),
                        allow_nonfinite=allow_nonfinite,
                        init_kind="constant" if constant else "stored",
                        init_value=float(0 if init is None else init) if constant else None)
    path = Path(path)
    if (path / "data.mdb").exists() and not overwrite:
        raise existing_store_error(path)
    check_fits(fitted_config(config, num_rows), dim * dtype.itemsize, path)
    chunks = _init_chunks(init, table, codec)
    if codec.needs_training():
        if chunks is None:
            raise ConfigError("a zstd dictionary is trained on the initial rows: "
                              "pass init as an array or a callable, or set dict_size=0")
        codec = codec.trained(_training_sample(init, table, codec))
    build = StoreBuild(path, table, getattr(codec, "dictionary", None), map_size=config.map_size,
                       max_map_size=config.max_map_size, overwrite=overwrite)
    try:
        with progress_bar(num_rows, f"create {path.name}",
                          enabled=progress and chunks is not None) as bar:
            build.append_chunks(chunks or (), on_written=bar.update)
    except BaseException:
        build.abort()
        raise
    disk = build.finish(reopen=True)
    try:
        return Store(disk, config)
    except BaseException:
        disk.close()
        raise


def open(path, config: StoreConfig | None = None, readonly: bool = False, *,
         dim: int | None = None, dtype=None, codec=None, allow_nonfinite: bool | None = None,
         warm=None) -> Store:
    """Open an existing store; its format (``store.format``) is what it was created with.

    ``dim``, ``dtype``, ``codec`` and ``allow_nonfinite``, when given, are what the
    caller expects: a store that differs raises ConfigError. ``codec`` is compared in
    what it names (``"zstd"`` matches any zstd store; a dict, the keys it gives). A
    version-1 store did not record ``allow_nonfinite``: there the value given is taken
    (and saved by the first write).

    ``warm``: a counts file (``tierstore profile TRACE --write-counts hot.npz``) or an
    ``(ids, counts)`` pair; its hottest rows are loaded into memory in the background
    (``store.warming.wait()`` waits for them; see :meth:`Store.warm`)."""
    config = _check_config(config)
    try:
        recover(path)
        disk = DiskTier(path, readonly=readonly, map_size=config.map_size,
                        max_map_size=config.max_map_size)
    except PermissionError as exc:
        if isinstance(exc, TierstoreError):
            raise
        raise StorePermissionError(f"{path}: permission denied ({exc})") from None
    try:
        table = disk.format
        if dim is not None and (isinstance(dim, bool) or dim != table.dim):
            raise ConfigError(f"{path}: the store's rows have dim {table.dim}, not {dim!r}")
        if dtype is not None and _as_dtype(dtype) != disk.dtype:
            raise ConfigError(f"{path}: the store's dtype is {disk.dtype}, not {np.dtype(dtype)}")
        if codec is not None:
            _check_codec(path, codec, table.codec)
        if allow_nonfinite is not None and allow_nonfinite != table.allow_nonfinite:
            if disk.version != 1 or not isinstance(allow_nonfinite, bool):
                raise ConfigError(
                    f"{path}: the store was created with allow_nonfinite={table.allow_nonfinite}, "
                    f"not {allow_nonfinite!r} (it is a property of the table, fixed at create)")
            disk.adopt_format(replace(table, allow_nonfinite=allow_nonfinite))
        store = Store(disk, config)
    except BaseException:
        disk.close()
        raise
    if warm is not None:
        try:
            store.warm(warm)
        except BaseException:
            store.close()
            raise
    return store


def _check_config(config) -> StoreConfig:
    config = StoreConfig() if config is None else config
    if not isinstance(config, StoreConfig):
        raise ConfigError(f"config must be a StoreConfig, got {type(config).__name__}")
    return config


def _check_codec(path, expected, stored: dict):
    """``expected`` (a name, a dict of some of the config's keys, or a codec) against the store's."""
    if isinstance(expected, str):
        asked = {"id": expected}
    elif isinstance(expected, dict):
        asked = dict(expected)
    else:
        asked = get_codec(expected).get_config()
    get_codec(asked)  # an unknown codec or parameter is a ConfigError of its own
    differ = {k: v for k, v in asked.items() if k != "dictionary" and stored.get(k) != v}
    if differ:
        raise ConfigError(f"{path}: the store's codec is {stored}, not {asked} "
                          "(a property of the table, fixed at create)")


def _as_dtype(dtype) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None


def _init_chunks(init, table: TableFormat, codec):
    """None for a constant init (checked by the TableFormat); else an iterator of (start, validated rows)."""
    if table.init_kind == "constant":
        return None
    num_rows, dim, dtype = table.num_rows, table.dim, table.np_dtype
    if callable(init):
        def source(start, stop):
            return init(start, stop)
    elif hasattr(init, "shape") or isinstance(init, (list, tuple)):
        array = init if hasattr(init, "shape") else np.asarray(init)
        if tuple(array.shape) != (num_rows, dim):
            raise RowShapeError(f"init array must have shape {(num_rows, dim)}, got {tuple(array.shape)}")

        def source(start, stop):
            return array[start:stop]
    else:
        raise ConfigError(f"init must be None, a number, an array or a callable, got {type(init).__name__}")
    return _checked_chunks(source, num_rows, dim, dtype, table.allow_nonfinite, codec)


def _checked_chunks(source, num_rows, dim, dtype, allow_nonfinite, codec):
    """``(start, prepare)`` per chunk: ``source`` is called here, in order, and
    ``prepare()`` validates its rows as they are written (on the build's worker thread).
    A bad chunk aborts the build, which leaves nothing behind; a chunk at a time is held."""
    for start in range(0, num_rows, CREATE_CHUNK):
        stop = min(start + CREATE_CHUNK, num_rows)
        yield start, partial(as_rows, source(start, stop), (stop - start, dim), dtype,
                             allow_nonfinite, what=f"init rows {start}:{stop}", row_ids=start,
                             codec=codec)


def _training_sample(init, table: TableFormat, codec):
    if not callable(init):
        return np.asarray(init)[:TRAIN_SAMPLE_ROWS].astype(table.np_dtype)
    sample = replace(table, num_rows=min(table.num_rows, TRAIN_SAMPLE_ROWS))
    chunks = _init_chunks(init, sample, codec)
    return np.concatenate([prepare() for _, prepare in chunks]).astype(table.np_dtype)
