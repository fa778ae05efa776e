"""Creating and opening stores."""
from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from .config import DTYPES, StoreConfig
from .errors import ConfigError, NonFiniteRowError, RowShapeError
from .build import StoreBuild, recover
from .progress import progress as progress_bar
from .salvage import SalvageReport, salvage  # noqa: F401  (tierstore.api.salvage)
from .store import CREATE_CHUNK, Store
from .tier_sizes import check_fits, fitted_config
from .tiers.disk import DiskTier
from .tiers.format import StoreMeta
from .validation import as_rows

TRAIN_SAMPLE_ROWS = 4096


def create(path, num_rows: int, dim: int, dtype="float16", init=None,
           config: StoreConfig | None = None, overwrite: bool = False,
           progress: bool = False) -> Store:
    """Create a store of ``num_rows x dim`` rows at ``path`` and open it for writing.

    ``init`` gives every row's first value: ``None`` (zeros) or a number
    (nothing is written: such rows have no record), an ``(num_rows, dim)``
    array, or a callable ``(start, stop) -> rows`` called chunk by chunk; each
    chunk is validated and written before the next is asked for. The store is
    built beside ``path`` and put there once complete: with ``overwrite``, the
    old store stays until then. ``progress``: a bar on stderr (when a terminal).
    """
    config = StoreConfig() if config is None else config
    if not isinstance(config, StoreConfig):
        raise ConfigError(f"config must be a StoreConfig, got {type(config).__name__}")
    num_rows, dim, dtype = _check_shape(num_rows, dim, dtype)
    path = Path(path)
    if (path / "data.mdb").exists() and not overwrite:
        raise FileExistsError(f"{path}: a store already exists; pass overwrite=True to replace it")
    check_fits(fitted_config(config, num_rows), dim * dtype.itemsize, path)
    chunks = _init_chunks(init, num_rows, dim, dtype, config)
    codec = config.codec_obj
    if codec.needs_training():
        if chunks is None:
            raise ConfigError("a zstd dictionary is trained on the initial rows: "
                              "pass init as an array or a callable, or set dict_size=0")
        codec = codec.trained(_training_sample(init, num_rows, dim, dtype, config))
    constant = None if chunks is not None else float(0 if init is None else init)
    meta = StoreMeta(num_rows=num_rows, dim=dim, dtype=dtype.name, codec=codec.get_config(),
                     init={"kind": "stored"} if chunks is not None else
                     {"kind": "constant", "value": constant})
    build = StoreBuild(path, meta, getattr(codec, "dictionary", None), map_size=config.map_size,
                       max_map_size=config.max_map_size, overwrite=overwrite)
    try:
        with progress_bar(num_rows, f"create {path.name}",
                          enabled=progress and chunks is not None) as bar:
            build.append_chunks(_counted(chunks or (), bar))
    except BaseException:
        build.abort()
        raise
    disk = build.finish(reopen=True)
    try:
        return Store(disk, config)
    except BaseException:
        disk.close()
        raise


def _counted(chunks, bar):
    for start, rows in chunks:
        yield start, rows
        bar.update(len(rows))


def open(path, config: StoreConfig | None = None, readonly: bool = False, *,
         dim: int | None = None, dtype=None, warm=None) -> Store:
    """Open an existing store. ``dim``/``dtype``, when given, must match the store's.

    ``warm``: a counts file (``tierstore profile TRACE --write-counts hot.npz``) or an
    ``(ids, counts)`` pair; its hottest rows are loaded into memory in the background
    (``store.warming.wait()`` waits for them; see :meth:`Store.warm`)."""
    config = StoreConfig() if config is None else config
    if not isinstance(config, StoreConfig):
        raise ConfigError(f"config must be a StoreConfig, got {type(config).__name__}")
    recover(path)
    disk = DiskTier(path, readonly=readonly, map_size=config.map_size,
                    max_map_size=config.max_map_size)
    try:
        if dim is not None and (isinstance(dim, bool) or dim != disk.meta.dim):
            raise ConfigError(f"{path}: the store's rows have dim {disk.meta.dim}, not {dim!r}")
        if dtype is not None and _as_dtype(dtype) != disk.dtype:
            raise ConfigError(f"{path}: the store's dtype is {disk.dtype}, not {np.dtype(dtype)}")
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


def _as_dtype(dtype) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None


def _check_shape(num_rows, dim, dtype):
    for name, value in (("num_rows", num_rows), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    try:
        if dtype is None:
            raise TypeError
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None
    if dt.name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return int(num_rows), int(dim), dt


def _init_chunks(init, num_rows, dim, dtype, config):
    """None for a constant init; else an iterator of (start, validated rows)."""
    if init is None or (isinstance(init, numbers.Real) and not isinstance(init, bool)):
        if init is not None and not np.isfinite(init) and not config.allow_nonfinite:
            raise NonFiniteRowError(f"init constant {init!r} is not finite; "
                                    "StoreConfig(allow_nonfinite=True) allows it")
        return None
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
    return _checked_chunks(source, num_rows, dim, dtype, config.allow_nonfinite)


def _checked_chunks(source, num_rows, dim, dtype, allow_nonfinite):
    """Each chunk validated as it is written: a bad one aborts the build, which leaves
    nothing behind, and only one chunk is held at a time."""
    for start in range(0, num_rows, CREATE_CHUNK):
        stop = min(start + CREATE_CHUNK, num_rows)
        yield start, as_rows(source(start, stop), (stop - start, dim), dtype, allow_nonfinite,
                             what=f"init rows {start}:{stop}", row_ids=start)


def _training_sample(init, num_rows, dim, dtype, config):
    chunks = list(_init_chunks(init, min(num_rows, TRAIN_SAMPLE_ROWS), dim, dtype, config)) \
        if callable(init) else [(0, np.asarray(init)[:TRAIN_SAMPLE_ROWS])]
    return np.concatenate([rows for _, rows in chunks]).astype(dtype)
