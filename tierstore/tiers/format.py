"""The on-disk format: keys, framed values and the metadata record (a TableFormat and a commit number)."""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, CorruptStoreError, FormatVersionError, NonFiniteRowError, NotAStoreError
from ..table import TableFormat

FORMAT_NAME = "tierstore"
FORMAT_VERSION = 2   # 2: allow_nonfinite and the commit number in the metadata
META_KEY = b"meta"
DICT_KEY = b"zstd_dict"
SHARD_KEY = b"shard"  # only in a shard of a sharded store (tierstore.distributed)
SHARD_FORMAT = "tierstore.shard"
SHARD_VERSION = 1
ROWS_DB = b"rows"
META_DB = b"meta"


def row_keys(ids: np.ndarray) -> list[bytes]:
    """8-byte big-endian keys, so LMDB's byte order is the ids' order."""
    # an 8-byte void item becomes bytes in numpy's own loop, not a slice per key in Python
    return np.ascontiguousarray(ids, dtype=">u8").view("V8").tolist()


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


def encode_meta(table: TableFormat, commit: int) -> bytes:
    """The framed metadata record (the newest format version): the table and its commit number."""
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "num_rows": table.num_rows,
           "dim": table.dim, "dtype": table.dtype, "codec": table.codec,
           "init": {"kind": table.init_kind, "value": table.init_value}
           if table.init_kind == "constant" else {"kind": "stored"},
           "allow_nonfinite": table.allow_nonfinite, "commit": commit}
    return frame(META_KEY, json.dumps(doc, sort_keys=True).encode())


def decode_meta(value: bytes | None, path) -> tuple[TableFormat, int, int]:
    """(table, format version, commit number) of a metadata record; every field is checked.

    Version 1 recorded neither ``allow_nonfinite`` (it was a per-open choice: read as
    False) nor a commit number (read as 0)."""
    if value is None:
        raise NotAStoreError(f"{path}: an LMDB database without tierstore metadata")
    doc, version = _versioned_doc(
        value, path, META_KEY, "metadata", FORMAT_NAME, FORMAT_VERSION, "format version",
        NotAStoreError(f"{path}: metadata does not describe a tierstore"))
    fields = _META_FIELDS[version]
    missing = sorted(fields - doc.keys())
    extra = sorted(doc.keys() - fields)
    if missing or extra:
        raise CorruptStoreError(f"{path}: metadata record " + (
            f"lacks a field {missing[0]!r}" if missing else f"has an unknown field {extra[0]!r}"))
    init = doc["init"]
    if not isinstance(init, dict) or not ({"kind"} <= init.keys() <= {"kind", "value"}):
        raise CorruptStoreError(f"{path}: metadata field init must be {{'kind': ..., 'value': ...}}, "
                                f"got {init!r}")
    commit = doc.get("commit", 0)
    if type(commit) is not int or not 0 <= commit < 1 << 63:
        raise CorruptStoreError(f"{path}: metadata field commit must be a non-negative int, "
                                f"got {commit!r}")
    if not isinstance(doc["codec"], dict):
        raise CorruptStoreError(f"{path}: metadata field codec must be a codec's config (a dict), "
                                f"got {doc['codec']!r}")
    for name in ("num_rows", "dim"):   # JSON numbers: 1e30 is a float, not an int
        if type(doc[name]) is not int:
            raise CorruptStoreError(f"{path}: metadata field {name} must be an int, got {doc[name]!r}")
    try:
        table = TableFormat(num_rows=doc["num_rows"], dim=doc["dim"], dtype=doc["dtype"],
                            codec=doc["codec"], allow_nonfinite=doc.get("allow_nonfinite", False),
                            init_kind=init["kind"], init_value=init.get("value"))
    except (ConfigError, NonFiniteRowError) as exc:
        raise CorruptStoreError(f"{path}: metadata field {exc}") from None
    return table, version, commit


_V1_FIELDS = frozenset({"format", "version", "num_rows", "dim", "dtype", "codec", "init"})
_META_FIELDS = {1: _V1_FIELDS, 2: _V1_FIELDS | {"allow_nonfinite", "commit"}}


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
    except RecursionError:
        raise CorruptStoreError(f"{path}: {what} record is nested too deeply") from None
    except (CorruptStoreError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(f"{path}: {what} record is damaged ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        raise foreign
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise FormatVersionError(f"{path}: {version_label} {version!r} is not a version number")
    if version > newest:
        raise FormatVersionError(
            f"{path}: {version_label} {version!r} is newer than this tierstore "
            f"(reads up to {newest}); upgrade tierstore")
    return doc, version
