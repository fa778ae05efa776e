"""tierstore: huge embedding tables in three tiers (device, RAM, compressed disk).

    import tierstore as ts
    store = ts.create("table.ts", num_rows=10_000_000, dim=128)
    rows = store.lookup(ids)
"""
from .api import create, open, salvage
from .codecs import Codec, Int8Codec, RawCodec, ZstdCodec, get_codec
from .config import StoreConfig
from .errors import (ClosedStoreError, ConfigError, CorruptRowError, CorruptStoreError,
                     DiskFullError, FormatVersionError, IdOutOfRangeError, IdTypeError,
                     NonFiniteRowError, NotAStoreError, ReadOnlyError, RolledBackStoreError,
                     RowShapeError, ShardMismatchError, ShardOpenError, ShardPeerError,
                     StoreLockedError, StorePermissionError, TierstoreError, TiersTooLargeError)
from .store import CheckReport, Store
from .table import TableFormat
from .table_store import TableStore

__version__ = "0.1.0"

__all__ = [
    "create", "open", "salvage", "Store", "StoreConfig", "TableFormat", "CheckReport", "TableStore",
    "Codec", "RawCodec", "ZstdCodec", "Int8Codec", "get_codec",
    "TierstoreError", "IdOutOfRangeError", "IdTypeError", "RowShapeError", "NonFiniteRowError",
    "ReadOnlyError", "ClosedStoreError", "ConfigError", "NotAStoreError", "FormatVersionError",
    "CorruptRowError", "CorruptStoreError", "RolledBackStoreError", "StoreLockedError",
    "StorePermissionError", "DiskFullError",
    "TiersTooLargeError", "ShardOpenError", "ShardMismatchError", "ShardPeerError",
]
