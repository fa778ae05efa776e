"""Every error tierstore raises.

Each class also derives from the builtin a caller would naturally catch, so
``except IndexError`` or ``except ValueError`` keeps working.
"""
from __future__ import annotations


class TierstoreError(Exception):
    """Base class of every tierstore error."""


class IdOutOfRangeError(TierstoreError, IndexError):
    """A row id lies outside ``[0, num_rows)``."""


class IdTypeError(TierstoreError, TypeError):
    """Row ids are not integers."""


class RowShapeError(TierstoreError, ValueError):
    """Rows have the wrong shape or dtype for the store or the ids."""


class NonFiniteRowError(TierstoreError, ValueError):
    """A row holds NaN or Inf where the config forbids it."""


class ReadOnlyError(TierstoreError, PermissionError):
    """A write was attempted on a store opened read-only."""


class ClosedStoreError(TierstoreError, ValueError):
    """The store was used after ``close()``."""


class ConfigError(TierstoreError, ValueError):
    """A configuration value is invalid, or contradicts the store on disk."""


class NotAStoreError(TierstoreError, ValueError):
    """The path holds no tierstore, or something else entirely."""


class FormatVersionError(TierstoreError, ValueError):
    """The store was written by a newer, unknown format version."""


class CorruptRowError(TierstoreError, ValueError):
    """A stored row failed its checksum or could not be decoded."""

    def __init__(self, row_ids, reason: str = "checksum mismatch"):
        self.row_ids = [int(r) for r in row_ids]
        shown = ", ".join(str(r) for r in self.row_ids[:10])
        more = f" (+{len(self.row_ids) - 10} more)" if len(self.row_ids) > 10 else ""
        super().__init__(f"corrupt row {shown}{more}: {reason}")


class CorruptStoreError(TierstoreError, ValueError):
    """Store metadata is damaged."""


class RolledBackStoreError(CorruptStoreError):
    """The store's data is older than its last acknowledged flush (a stale LMDB meta page)."""


class StorePermissionError(TierstoreError, PermissionError):
    """The user may not read, or open for reading, the store's files."""


class StoreLockedError(TierstoreError, BlockingIOError):
    """Another process holds the store open for writing."""


class DiskFullError(TierstoreError, OSError):
    """The disk or the configured map ceiling left no room for a write."""


class ShardOpenError(TierstoreError, RuntimeError):
    """A rank could not open or create its shard of a sharded store; every rank raises it.

    ``failures`` maps each failing rank to its reason.
    """

    def __init__(self, message: str, failures: dict | None = None):
        self.failures = dict(failures or {})
        super().__init__(message)


class ShardMismatchError(ShardOpenError, ValueError):
    """A shard belongs to another layout: world size, rank, sharding rule or table."""


class ShardPeerError(TierstoreError, RuntimeError):
    """Another rank failed its part of a collective call; this rank raises too, so none waits.

    ``ranks`` lists the ranks that failed; each of them raised its own error.
    """

    def __init__(self, message: str, ranks=()):
        self.ranks = [int(r) for r in ranks]
        super().__init__(message)


class TiersTooLargeError(TierstoreError, MemoryError):
    """The memory tiers asked for do not fit in the machine's available memory."""


# -- training (tierstore.torch, tierstore.engram, tierstore.optim) ---------------------------
class OptimizerTypeError(TierstoreError, TypeError):
    """An optimizer that is not a :class:`tierstore.optim.RowOptimizer` (torch optimizers
    cannot see a table that has no ``nn.Parameter``)."""


class NoOptimizerError(TierstoreError, RuntimeError):
    """``step()`` on a table module built without a row optimizer."""


class UnboundOptimizerError(TierstoreError, RuntimeError):
    """A row optimizer used before it was bound to its table."""


class OptimizerStateError(TierstoreError, ValueError):
    """A row optimizer's state belongs to another table, or has another shape."""


class CheckpointError(TierstoreError, ValueError):
    """A checkpoint (``state_dict``) that is not this module's kind, or does not fit it."""


class TensorShapeError(TierstoreError, ValueError):
    """A model input (hidden states, tokens) of the wrong shape."""
