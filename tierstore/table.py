"""What a table is, apart from how it is opened: a frozen, validated TableFormat.

The format is fixed when a store is created and saved in its metadata; every open
reads it back (``store.format``). How a store is cached and opened is a
:class:`~tierstore.config.StoreConfig`, which cannot change what the table is.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .codecs import get_codec
from .errors import ConfigError, NonFiniteRowError
from .validation import check_int

DTYPES = ("float16", "float32", "float64")
INIT_KINDS = ("constant", "stored")
MAX_ROWS = 1 << 62   # ids are int64 and keys 8 bytes; kernels index with int64
MAX_DIM = 1 << 20


@dataclass(frozen=True)
class TableFormat:
    """A table's shape, dtype, codec, rule for non-finite values and how its rows began.

    ``codec`` is a codec's config (``{"id": "raw"}``, ``{"id": "zstd", "level": 3,
    "dict_size": 0}``, ``{"id": "int8"}``; a name is accepted and expanded). With
    ``allow_nonfinite`` rows may hold NaN and Inf (a lossless codec only).
    ``init_kind`` is ``"constant"``: rows never written have no record and read as
    ``init_value``; or ``"stored"`` (``init_value`` None): the store was created from
    an array, a callable or an import and every row has a record, so a missing record
    is damage.
    """

    num_rows: int
    dim: int
    dtype: str
    codec: dict = field(default_factory=lambda: {"id": "raw"})
    allow_nonfinite: bool = False
    init_kind: str = "constant"
    init_value: float | None = 0.0

    def __post_init__(self):
        for name, top in (("num_rows", MAX_ROWS), ("dim", MAX_DIM)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), 1, top))
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        codec = get_codec(self.codec)
        if getattr(codec, "dictionary", None) is not None and not isinstance(self.codec, dict):
            raise ConfigError("codec: give the codec's config; a trained zstd dictionary is "
                              "made at create and kept beside the format")
        object.__setattr__(self, "codec", codec.get_config())
        if not isinstance(self.allow_nonfinite, bool):
            raise ConfigError(f"allow_nonfinite must be True or False, got {self.allow_nonfinite!r}")
        if self.allow_nonfinite and not codec.lossless:
            raise ConfigError(f"allow_nonfinite: codec {codec.codec_id!r} cannot store NaN or Inf: "
                              "allow_nonfinite needs a lossless codec")
        if self.init_kind not in INIT_KINDS:
            raise ConfigError(f"init must be of kind {INIT_KINDS}, got {self.init_kind!r}")
        if self.init_kind == "stored":
            if self.init_value is not None:
                raise ConfigError(f"init: a stored init has no value, got {self.init_value!r}")
            return
        value = self.init_value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"init value must be a number, got {value!r}")
        object.__setattr__(self, "init_value", float(value))
        row = np.full((1, self.dim), value, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            cast = row.astype(self.dtype)
        if not self.allow_nonfinite and not np.isfinite(cast).all():
            where = f" (after the cast to {self.dtype})" if np.isfinite(value) else ""
            raise NonFiniteRowError(f"init constant {value!r} is not finite{where}; "
                                    "create the store with allow_nonfinite=True to allow it")
        if codec.first_unencodable(cast) >= 0:
            raise NonFiniteRowError(f"init constant {value!r} lies beyond the range of codec "
                                    f"{codec.codec_id!r}")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def constant(self) -> float | None:
        """The value of rows without a record, or None when every row has one."""
        return self.init_value if self.init_kind == "constant" else None

    @property
    def every_row_stored(self) -> bool:
        return self.init_kind == "stored"


def check_shape(num_rows, dim, dtype) -> tuple[int, int, np.dtype]:
    """The shape and dtype a table is created with, checked: ``(num_rows, dim, np.dtype)``,
    else a ConfigError."""
    num_rows = check_int("num_rows", num_rows, 1, expected="a positive int")
    dim = check_int("dim", dim, 1, expected="a positive int")
    try:
        if dtype is None:
            raise TypeError
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}") from None
    if dt.name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return num_rows, dim, dt
