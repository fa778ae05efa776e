"""The contract of a table store: what a ``Store`` and a ``ShardedStore`` both are.

A table store serves ``num_rows x dim`` rows of ``dtype``: every row a lookup returns is the
last value written to it. :class:`tierstore.Store` keeps one table in one process (its
tiers: device, RAM, disk); :class:`tierstore.distributed.ShardedStore` shards a table over a
process group, and every call on it is collective (each rank calls it, in the same order).
Code written against this class (``tierstore.torch.TieredEmbedding``, the optimizers)
works with both. Every implementation runs ``tierstore.testing.tier_tests.TableStoreTests``.

Attributes every table store sets: ``path`` (its files; a sharded store: this rank's shard),
``num_rows``, ``dim``, ``dtype`` (numpy), ``codec``, ``config`` (a ``StoreConfig``) and
``readonly``. A ``Store`` also runs whole lookups ahead (``lookup_async``); a sharded
store cannot (its ranks must call in step) and has none.
"""
from __future__ import annotations

from abc import ABC, abstractmethod


class TableStore(ABC):
    """A table of rows by id (see the module's doc). Bad input raises a named error from
    :mod:`tierstore.errors` and changes nothing."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has run."""

    @abstractmethod
    def lookup(self, ids):
        """Rows of ``ids`` (integers of any shape), shape ``ids.shape + (dim,)``: numpy for
        numpy ids, torch for torch ids."""

    @abstractmethod
    def prefetch(self, ids):
        """Start reading the rows of ``ids`` from disk in the background; a handle whose
        ``wait()`` blocks until done. A later lookup of these ids takes them from there."""

    @abstractmethod
    def update(self, ids, rows):
        """Overwrite the rows of ``ids`` (``rows``: shape ``ids.shape + (dim,)``); with
        duplicate ids the last one wins."""

    @abstractmethod
    def apply_gradients(self, ids, grads, optimizer, rows=None) -> int:
        """Train rows: ``optimizer`` (a :class:`tierstore.optim.RowOptimizer`) maps the rows
        of ``ids`` (unique) and their gradients ``grads`` (torch, ``(len(ids), dim)``) to new
        rows, which are stored; then ``optimizer.commit()``. Returns the rows written.

        ``rows``: the rows as the caller read them (a ``Store`` applies the optimizer to
        those, without reading them again; ``None``: it reads them now). A sharded store's
        owners sum every rank's gradients and read their current rows themselves; a rank
        without gradients still calls it, with ``ids=None``."""

    @abstractmethod
    def flush(self):
        """Make every write durable: after it returns, a crash loses nothing."""

    @abstractmethod
    def stats(self) -> dict:
        """Counters since the store was opened: ``lookups`` (ids looked up; a sharded store
        counts each call's unique ids), ``hit_ratio``, per tier ``device``, ``ram`` and
        ``disk``, the policy's moves."""

    @abstractmethod
    def check(self):
        """Verify every stored row; a :class:`tierstore.store.CheckReport`."""

    @abstractmethod
    def close(self):
        """Flush (unless read-only) and release everything. Closing twice is harmless."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
