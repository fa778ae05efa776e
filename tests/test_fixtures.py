"""Every recorded format version still opens and reads the rows it was written with.

tests/data/fixtures/vN holds tiny stores written by format version N's code (one per
codec, dtype and init kind) and the rows that code read back; see make_fixtures.py there.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

import tierstore as ts

FIXTURES = Path(__file__).parent / "data" / "fixtures"
VERSIONS = sorted(p.name for p in FIXTURES.glob("v*") if p.is_dir())
TINY = ts.StoreConfig(device_rows=2, ram_rows=6, map_size=1 << 20)


def unpack(version, tmp_path):
    with tarfile.open(FIXTURES / version / "stores.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    with np.load(FIXTURES / version / "rows.npz") as rows:
        return {name: rows[name] for name in rows.files}


@pytest.mark.parametrize("version", VERSIONS)
def test_fixture_reads_its_rows(version, tmp_path):
    expected = unpack(version, tmp_path)
    assert len(expected) >= 8
    for name, rows in expected.items():
        with ts.open(tmp_path / name, readonly=True, config=TINY) as store:
            assert (store.num_rows, store.dim, store.dtype) == (len(rows), rows.shape[1], rows.dtype)
            assert store.codec.codec_id == name.split("_")[0]
            assert store.format.every_row_stored == ("constant" not in name)
            if version != "v1":   # version 1 did not record the non-finite rule
                assert store.format.allow_nonfinite == ("nonfinite" in name)
            got = store.lookup(np.arange(store.num_rows))
            np.testing.assert_array_equal(got, rows, err_msg=name)
            assert store.check().ok, name


@pytest.mark.parametrize("version", VERSIONS)
def test_fixture_takes_writes(version, tmp_path):
    """Opened for writing, an old store keeps its rows and takes new ones."""
    expected = unpack(version, tmp_path)
    for name, rows in expected.items():
        with ts.open(tmp_path / name, config=TINY) as store:
            new = np.full((1, store.dim), 0.25, dtype=store.dtype)
            store.update([1], new)
        with ts.open(tmp_path / name, readonly=True, config=TINY) as store:
            got = store.lookup(np.arange(store.num_rows))
            np.testing.assert_array_equal(got[1], new[0], err_msg=name)
            np.testing.assert_array_equal(np.delete(got, 1, axis=0), np.delete(rows, 1, axis=0),
                                          err_msg=name)
