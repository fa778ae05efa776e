"""prefetch.Staging against the copying reference in naive.py: the same rows found, copied
and left after any sequence of adds, takes and drops."""
from __future__ import annotations

import os
import sys

import numpy as np
import numpy.testing as npt
from hypothesis import given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import naive  # noqa: E402

from tierstore.prefetch import Staging  # noqa: E402

ops = st.lists(st.tuples(st.sampled_from(["add", "take", "keep", "peek", "drop"]),
                         st.lists(st.integers(0, 40), max_size=30, unique=True)), max_size=25)


@settings(deadline=None)
@given(ops=ops, limit=st.integers(1, 80))
def test_staging_matches_the_copying_reference(ops, limit):
    ours, ref = Staging(limit), naive.Staging(limit)
    stamp = 0
    for kind, ids in ops:
        ids = np.array(ids, dtype=np.int64)
        if kind == "add":
            stamp += 1
            rows = np.stack([ids, np.full(len(ids), stamp)], axis=1).astype(np.float32) \
                if len(ids) else np.zeros((0, 2), np.float32)
            ours.add(ids, rows.copy())
            ref.add(ids, rows.copy())
        elif kind == "drop":
            ours.drop(ids)
            ref.drop(ids)
        else:
            keep = kind == "keep"
            copy = kind != "peek"
            got = np.full((len(ids), 2), -1, np.float32)
            want = got.copy()
            positions = np.arange(len(ids))
            found = ours.take(ids, got if copy else None, positions if copy else None, keep=keep)
            expect = ref.take(ids, want if copy else None, positions if copy else None, keep=keep)
            npt.assert_array_equal(found, expect)
            npt.assert_array_equal(got, want)
        assert ours.rows == ref.rows
    everything = np.arange(41)
    got = np.full((41, 2), -1, np.float32)
    want = got.copy()
    npt.assert_array_equal(ours.take(everything, got, everything, keep=True),
                           ref.take(everything, want, everything, keep=True))
    npt.assert_array_equal(got, want)
