"""Row codecs: how a row becomes the bytes of one LMDB value and back.

A codec is ``encode``/``decode`` plus a JSON-serialisable config, in the
manner of numcodecs, but batch-shaped: ``encode`` takes ``(n, dim)`` rows and
returns ``n`` payloads; ``decode`` reads ``n`` payloads that lie in one buffer. Checksums are not a codec's business: the disk tier frames them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .errors import ConfigError
from .kernels.codec import decode_int8_rows, decode_raw_rows
from .validation import check_int


def _bytes(rows: np.ndarray) -> np.ndarray:
    return rows.view(np.uint8).reshape(len(rows), rows.shape[1] * rows.dtype.itemsize)


class Codec(ABC):
    """Encodes rows of one dtype and width into per-row payloads."""

    codec_id: ClassVar[str]
    lossless: ClassVar[bool] = True

    @abstractmethod
    def encode(self, rows: np.ndarray) -> list[bytes]:
        """Encode C-contiguous ``(n, dim)`` rows into ``n`` payloads."""

    @abstractmethod
    def decode(self, buf: np.ndarray, starts: np.ndarray, stops: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode payload ``i`` (``buf[starts[i]:stops[i]]``) into ``out[i]``.

        Returns a bool array, False where a payload is malformed.
        """

    def encode_fixed(self, rows: np.ndarray) -> np.ndarray | None:
        """The payloads of ``rows`` as one ``(n, width)`` uint8 array when every payload
        has the same width (bulk loading frames them in one pass), else None."""
        return None

    def get_config(self) -> dict:
        return {"id": self.codec_id}

    def max_abs_error(self, rows: np.ndarray) -> np.ndarray:
        """Largest absolute error ``decode(encode(rows))`` may show, per row."""
        return np.zeros(len(rows), dtype=np.float64)

    def needs_training(self) -> bool:
        return False

    def first_unencodable(self, rows: np.ndarray) -> int:
        """The index of the first row whose values this codec cannot represent, or -1."""
        return -1


@dataclass(frozen=True)
class RawCodec(Codec):
    """The row's little-endian bytes, unchanged."""

    codec_id: ClassVar[str] = "raw"

    def encode(self, rows):
        raw = np.ascontiguousarray(rows)
        width = raw.shape[1] * raw.dtype.itemsize
        flat = raw.view(np.uint8).reshape(-1)
        return [flat[i * width:(i + 1) * width].tobytes() for i in range(len(raw))]

    def encode_fixed(self, rows):
        return _bytes(np.ascontiguousarray(rows))

    def decode(self, buf, starts, stops, out):
        ok = np.empty(len(out), dtype=np.bool_)
        decode_raw_rows(buf, starts, stops, _bytes(out), ok)
        return ok


@dataclass(frozen=True)
class ZstdCodec(Codec):
    """zstd over the raw row bytes, optionally with a dictionary.

    With ``dict_size > 0`` the store trains a dictionary of that many bytes on
    the rows it is created with and keeps it in the database.
    """

    level: int = 3
    dict_size: int = 0
    dictionary: bytes | None = field(default=None, repr=False)
    codec_id: ClassVar[str] = "zstd"

    def __post_init__(self):
        object.__setattr__(self, "level", check_int("zstd level", self.level, 1, 22,
                                                    expected="an int in 1..22"))
        object.__setattr__(self, "dict_size", check_int("zstd dict_size", self.dict_size, 0,
                                                        expected="a non-negative int"))

    def get_config(self):
        return {"id": self.codec_id, "level": self.level, "dict_size": self.dict_size}

    def needs_training(self):
        return self.dict_size > 0 and self.dictionary is None

    def trained(self, sample_rows: np.ndarray) -> "ZstdCodec":
        """A copy with a dictionary trained on ``sample_rows``."""
        import zstandard

        samples = RawCodec().encode(sample_rows)
        zdict = zstandard.train_dictionary(self.dict_size, samples, level=self.level)
        return ZstdCodec(self.level, self.dict_size, zdict.as_bytes())

    def _zdict(self):
        import zstandard

        if self.dictionary is None:
            return None
        return zstandard.ZstdCompressionDict(self.dictionary)

    def encode(self, rows):
        import zstandard

        cctx = zstandard.ZstdCompressor(level=self.level, dict_data=self._zdict(), write_checksum=False)
        return [cctx.compress(p) for p in RawCodec().encode(rows)]

    def decode(self, buf, starts, stops, out):
        import zstandard

        dctx = zstandard.ZstdDecompressor(dict_data=self._zdict())
        raw = _bytes(out)
        width = raw.shape[1]
        ok = np.ones(len(out), dtype=np.bool_)
        data = buf.tobytes()
        for i in range(len(out)):
            try:
                plain = dctx.decompress(data[starts[i]:stops[i]], max_output_size=width,
                                        allow_extra_data=False)
            except zstandard.ZstdError:
                ok[i] = False
                continue
            if len(plain) != width:
                ok[i] = False
                continue
            raw[i] = np.frombuffer(plain, dtype=np.uint8)
        return ok


@dataclass(frozen=True)
class Int8Codec(Codec):
    """Lossy: a float32 scale per row, then one int8 per element.

    Each element is rounded to the nearest multiple of ``max|row| / 127``, so
    the error is at most half that step (plus the store dtype's own rounding).
    """

    codec_id: ClassVar[str] = "int8"
    lossless: ClassVar[bool] = False

    @staticmethod
    def _scales(rows):
        """float32 steps, rounded toward zero so ``127 * step`` never overflows."""
        peak = np.max(np.abs(rows.astype(np.float64)), axis=1, initial=0.0)
        exact = peak / 127.0
        step = exact.astype(np.float32)
        return np.where(step.astype(np.float64) > exact, np.nextafter(step, np.float32(0)), step)

    def encode(self, rows):
        return [bytes(row) for row in self.encode_fixed(rows)]

    def encode_fixed(self, rows):
        values = rows.astype(np.float32)
        scale = self._scales(values)
        safe = np.where(scale > 0, scale, np.float32(1.0))
        with np.errstate(over="ignore"):
            quant = np.clip(np.rint(values / safe[:, None]), -127, 127).astype(np.int8)
        return np.concatenate([scale.view(np.uint8).reshape(-1, 4), quant.view(np.uint8)], axis=1)

    def decode(self, buf, starts, stops, out):
        ok = np.empty(len(out), dtype=np.bool_)
        wide = np.zeros(out.shape, dtype=np.float32)
        decode_int8_rows(buf, starts, stops, wide, ok)
        out[ok] = wide[ok]
        return ok

    def first_unencodable(self, rows):
        """Rows are encoded as float32: a finite float64 beyond its range would read back NaN."""
        if rows.dtype.itemsize <= 4 or not len(rows):
            return -1
        over = np.max(np.abs(rows), axis=1, initial=0.0) > np.finfo(np.float32).max
        return int(np.argmax(over)) if over.any() else -1

    def max_abs_error(self, rows):
        step = self._scales(np.asarray(rows)).astype(np.float64)
        out_eps = np.finfo(rows.dtype).eps if rows.dtype.kind == "f" else 0.0
        peak = step * 127.0
        return step / 2 + peak * out_eps + 1e-30


_CODECS = {c.codec_id: c for c in (RawCodec, ZstdCodec, Int8Codec)}


def get_codec(spec) -> Codec:
    """A codec from a name, a config dict, or a codec instance."""
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, str):
        spec = {"id": spec}
    if not isinstance(spec, dict) or spec.get("id") not in _CODECS:
        raise ConfigError(f"unknown codec {spec!r}; known: {sorted(_CODECS)}")
    params = {k: v for k, v in spec.items() if k != "id"}
    try:
        return _CODECS[spec["id"]](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for codec {spec['id']!r}: {exc}") from None
