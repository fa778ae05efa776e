"""The write-back buffer: rows evicted dirty from memory, newer than disk, not yet written.

The store adds a batch's dirty evictions, writes the whole buffer to disk in one transaction
once it holds ``limit`` rows (and at ``flush``), and lays it over every disk read, so the
buffer is never older than what a lookup returns. A failed write leaves the rows here.
"""
from __future__ import annotations

import numpy as np


class WriteBackBuffer:
    """Rows by id, kept sorted by id, each id once (the latest row added wins)."""

    def __init__(self, dim: int, dtype, limit: int):
        self.limit = limit
        self.ids = np.empty(0, dtype=np.int64)
        self.rows = np.empty((0, dim), dtype=dtype)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def full(self) -> bool:
        """Holds ``limit`` rows or more: time to write it to disk."""
        return len(self.ids) >= self.limit

    def add(self, ids, rows):
        """Keep ``rows`` of unique ``ids``, replacing what is held for those ids."""
        keep = ~np.isin(self.ids, ids)
        all_ids = np.concatenate([self.ids[keep], ids])
        all_rows = np.concatenate([self.rows[keep], rows])
        order = np.argsort(all_ids)
        self.ids, self.rows = all_ids[order], all_rows[order]

    def drop(self, ids):
        """Forget the rows of ``ids`` (written to disk since, by other means)."""
        if len(self.ids):
            keep = ~np.isin(self.ids, ids)
            self.ids, self.rows = self.ids[keep], self.rows[keep]

    def clear(self):
        """Forget every row (all written to disk)."""
        self.ids, self.rows = self.ids[:0], self.rows[:0]

    def overlay(self, ids, rows, positions=None):
        """Put the held rows of ``ids`` over ``rows[positions]`` (``rows`` in ``ids``' order
        when ``positions`` is None): they are newer than what disk returned."""
        if not len(self.ids) or not len(ids):
            return
        positions = np.arange(len(ids)) if positions is None else positions
        where = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        hit = self.ids[where] == ids
        rows[positions[hit]] = self.rows[where[hit]]
