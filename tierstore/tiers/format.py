"""The on-disk format: keys, framed values and the metadata record."""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptStoreError, FormatVersionError, NotAStoreError

FORMAT_NAME = "tierstore"
FORMAT_VERSION = 1
META_KEY = b"meta"
DICT_KEY = b"zstd_dict"
SHARD_KEY = b"shard"  # only in a shard of a sharded store (tierstore.distributed)
SHARD_FORMAT = "tierstore.shard"
SHARD_VERSION = 1
ROWS_DB = b"rows"
META_DB = b"meta"


def row_keys(ids: np.ndarray) -> list[bytes]:
    """8-byte big-endian keys, so LMDB's byte order is the ids' order."""
    packed = np.asarray(ids, dtype=">u8").tobytes()
    return [packed[i:i + 8] for i in range(0, len(packed), 8)]


def frame(key: bytes, payload: bytes) -> bytes:
    """payload + CRC-32 of (key, payload), little-endian: misplaced values fail too."""
    return payload + zlib.crc32(payload, zlib.crc32(key)).to_bytes(4, "little")


def unframe_record(key: bytes, value: bytes | None, what: str) -> bytes:
    if value is None or len(value) < 4:
        raise CorruptStoreError(f"{what} record is missing or truncated")
    payload = value[:-4]
    if zlib.crc32(payload, zlib.crc32(key)).to_bytes(4, "little") != value[-4:]:
        raise CorruptStoreError(f"{what} record fails its checksum")
    return payload


@dataclass(frozen=True)
class StoreMeta:
    """What the metadata record holds."""

    num_rows: int
    dim: int
    dtype: str
    codec: dict
    init: dict  # {"kind": "constant", "value": float} or {"kind": "stored"}
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT_NAME, "version": self.version, "num_rows": self.num_rows,
               "dim": self.dim, "dtype": self.dtype, "codec": self.codec, "init": self.init}
        return frame(META_KEY, json.dumps(doc, sort_keys=True).encode())

    @classmethod
    def from_bytes(cls, value: bytes | None, path) -> "StoreMeta":
        if value is None:
            raise NotAStoreError(f"{path}: an LMDB database without tierstore metadata")
        doc, version = _versioned_doc(
            value, path, META_KEY, "metadata", FORMAT_NAME, FORMAT_VERSION, "format version",
            NotAStoreError(f"{path}: metadata does not describe a tierstore"))
        try:
            return cls(int(doc["num_rows"]), int(doc["dim"]), str(doc["dtype"]),
                       dict(doc["codec"]), dict(doc["init"]), version)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"{path}: metadata record lacks a field ({exc})") from None

    @property
    def constant(self) -> float | None:
        return self.init["value"] if self.init.get("kind") == "constant" else None


@dataclass(frozen=True)
class ShardMeta:
    """The shard record: which part of a sharded table this store holds.

    A separate record beside the metadata (key ``shard`` in the ``meta`` table), so
    a shard is also a plain store that ``tierstore.open`` reads as it is, and a
    plain store has no such record. ``num_rows`` is the whole table's row count;
    the store's own metadata holds the shard's.
    """

    rank: int
    world_size: int
    rule: str
    num_rows: int
    version: int = SHARD_VERSION

    def to_bytes(self) -> bytes:
        doc = {"format": SHARD_FORMAT, "version": self.version, "rank": self.rank,
               "world_size": self.world_size, "rule": self.rule, "num_rows": self.num_rows}
        return frame(SHARD_KEY, json.dumps(doc, sort_keys=True).encode())

    @classmethod
    def from_bytes(cls, value: bytes | None, path) -> ShardMeta | None:
        """The record, or None when ``value`` is None (a plain store)."""
        if value is None:
            return None
        doc, version = _versioned_doc(
            value, path, SHARD_KEY, "shard", SHARD_FORMAT, SHARD_VERSION, "shard record version",
            CorruptStoreError(f"{path}: shard record does not describe a shard"))
        try:
            return cls(int(doc["rank"]), int(doc["world_size"]), str(doc["rule"]),
                       int(doc["num_rows"]), version)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(f"{path}: shard record lacks a field ({exc})") from None


def _versioned_doc(value: bytes, path, key: bytes, what: str, format_name: str, newest: int,
                   version_label: str, foreign: Exception):
    """The JSON document of a framed record and its version, checked: a damaged frame is
    CorruptStoreError, another format raises ``foreign``, a newer version FormatVersionError."""
    try:
        doc = json.loads(unframe_record(key, value, what))
    except (CorruptStoreError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(f"{path}: {what} record is damaged ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise foreign
    version = doc.get("version")
    if not isinstance(version, int) or version > newest:
        raise FormatVersionError(
            f"{path}: {version_label} {version!r} is newer than this tierstore "
            f"(reads up to {newest}); upgrade tierstore")
    return doc, version
