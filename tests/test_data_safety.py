"""Data safety: no silent wrong rows from damaged or crafted stores (issue 14, items 1-4, 8-10).

Each case is in docs/BAD_INPUT.md ("Data safety").
"""
from __future__ import annotations

import json
import zlib

import lmdb
import numpy as np
import pytest
from damage import delete_record, meta_txnids, roll_back

import tierstore as ts
from tierstore.salvage import salvage

NUM_ROWS, DIM = 3000, 8
TINY = ts.StoreConfig(device_rows=2, ram_rows=6, map_size=1 << 22)


@pytest.fixture
def stored(tmp_path):
    """A closed store created from an array: every row has a record."""
    table = np.random.default_rng(14).standard_normal((NUM_ROWS, DIM)).astype(np.float32)
    path = tmp_path / "s"
    ts.create(path, NUM_ROWS, DIM, "float32", init=table, config=TINY).close()
    return path, table


# -- 1. a missing record where every row has one ---------------------------------------------
def test_missing_record_is_damage_where_every_row_was_written(stored, tmp_path):
    path, table = stored
    lost = [0, 1234, 1235, NUM_ROWS - 1]
    for row in lost:
        delete_record(path, row)
    with ts.open(path, TINY, readonly=True) as store:
        with pytest.raises(ts.CorruptRowError, match="corrupt row 1234: its record is missing") as info:
            store.lookup([5, 1234])
        assert info.value.row_ids == [1234]
        with pytest.raises(ts.CorruptRowError) as info:
            store.lookup(np.arange(NUM_ROWS))
        assert info.value.row_ids == lost
        kept = np.setdiff1d(np.arange(NUM_ROWS), lost)
        np.testing.assert_array_equal(store.lookup(kept), table[kept])
        report = store.check()
        assert not report.ok and report.missing_runs == [(0, 1), (1234, 1236), (NUM_ROWS - 1, NUM_ROWS)]
        assert "4 rows have no record (every row should): 0, 1234-1235, 2999" in str(report)
    report = salvage(path, tmp_path / "copy")
    assert report.unreadable_ids.tolist() == lost and not report.ok
    with ts.open(tmp_path / "copy", TINY, readonly=True) as copy:
        with pytest.raises(ts.CorruptRowError, match="record is missing"):
            copy.lookup([1234])


def test_absent_rows_of_a_constant_init_store_read_as_it(tmp_path):
    path = tmp_path / "c"
    with ts.create(path, 100, DIM, "float32", init=0.5, config=TINY) as store:
        store.update([3], np.ones((1, DIM), np.float32))
    with ts.open(path, TINY, readonly=True) as store:
        assert (store.lookup([4, 99]) == 0.5).all() and store.check().ok
    assert salvage(path, tmp_path / "copy").ok


# -- 2. a store rolled back to an older meta page ----------------------------------------------
def test_rolled_back_store_is_refused(stored, tmp_path):
    path, table = stored
    with ts.open(path, TINY) as store:
        store.update([7], np.full((1, DIM), 2.0, np.float32))
        store.flush()
    with ts.open(path, TINY, readonly=True) as store:
        assert (store.lookup([7]) == 2.0).all()
    before = meta_txnids(path)
    roll_back(path)
    assert meta_txnids(path) != before
    for readonly in (True, False):
        with pytest.raises(ts.RolledBackStoreError, match="older than its last acknowledged flush"):
            ts.open(path, TINY, readonly=readonly)
    with pytest.raises(ts.CorruptStoreError):   # RolledBackStoreError is one
        ts.open(path, TINY, readonly=True)
    report = salvage(path, tmp_path / "copy")   # what LMDB holds is copied, and the loss said
    assert not report.ok and "older than its last acknowledged flush" in str(report)


def test_a_commit_file_behind_the_data_is_fine(stored):
    """A writer killed between LMDB's sync and the file's rename leaves the file behind."""
    path, table = stored
    (path / "last_commit").write_text("0\n")
    with ts.open(path, TINY) as store:
        np.testing.assert_array_equal(store.lookup([1, 2]), table[[1, 2]])
        store.update([1], np.zeros((1, DIM), np.float32))
    assert int((path / "last_commit").read_text()) > 1


@pytest.mark.parametrize("text", [b"", b"x\n", b"12", b"-3\n", b"9" * 30 + b"\n"])
def test_a_damaged_commit_file(stored, text):
    path, _ = stored
    (path / "last_commit").write_bytes(text)
    with pytest.raises(ts.CorruptStoreError, match="last_commit: not a commit number"):
        ts.open(path, TINY, readonly=True)


def test_every_flush_advances_the_commit_number(stored):
    path, _ = stored
    with ts.open(path, TINY) as store:
        first = int((path / "last_commit").read_text())
        store.update([1], np.zeros((1, DIM), np.float32))
        store.flush()
        assert int((path / "last_commit").read_text()) == first + 1
        store.flush()   # nothing written: the number stays
        assert int((path / "last_commit").read_text()) == first + 1


# -- 3. values that overflow the store's dtype or its codec -----------------------------------
BEYOND_FLOAT32 = np.array([1e39, -2e39, 5e38, 1.0])


def test_constant_init_that_overflows_the_dtype(tmp_path):
    with pytest.raises(ts.NonFiniteRowError, match=r"init constant 10000000000.0 is not finite \(after the cast to float16\)"):
        ts.create(tmp_path / "s", 10, 4, "float16", init=1e10, config=TINY)
    assert not (tmp_path / "s" / "data.mdb").exists()
    with pytest.raises(ts.NonFiniteRowError, match="beyond the range of codec 'int8'"):
        ts.create(tmp_path / "s", 10, 4, "float64", init=1e39, config=TINY, codec="int8")
    ts.create(tmp_path / "s", 10, 4, "float16", init=65504.0, config=TINY).close()  # the largest finite


def test_int8_codec_refuses_rows_beyond_float32(tmp_path):
    rows = np.ones((5, 4))
    rows[3] = BEYOND_FLOAT32
    with pytest.raises(ts.NonFiniteRowError, match="row 3 holds values beyond the range of codec 'int8'"):
        ts.create(tmp_path / "s", 5, 4, "float64", init=rows, config=TINY, codec="int8")
    assert not (tmp_path / "s" / "data.mdb").exists()
    with ts.create(tmp_path / "s", 5, 4, "float64", init=np.ones((5, 4)), config=TINY,
                   codec="int8") as store:
        with pytest.raises(ts.NonFiniteRowError, match="row id 2 .* beyond the range of codec 'int8'"):
            store.update([2], BEYOND_FLOAT32[None])
        np.testing.assert_array_equal(store.lookup([2]), np.ones((1, 4)))
        store.update([2], np.array([[3e38, -3e38, 1.0, 0.0]]))   # within float32: stored
        assert np.isfinite(store.lookup([2])).all()
    np.save(tmp_path / "big.npy", rows)
    from tierstore.transfer import import_table, open_source
    with pytest.raises(ts.NonFiniteRowError, match="beyond the range of codec 'int8'"):
        import_table(open_source(tmp_path / "big.npy"), tmp_path / "i", codec="int8", progress=False)
    assert not (tmp_path / "i" / "data.mdb").exists()


# -- 4. crafted metadata with a valid checksum -------------------------------------------------
def _rewrite_meta(path, change):
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        doc = json.loads(bytes(txn.get(b"meta"))[:-4])
        payload = change(doc)
        payload = payload if isinstance(payload, bytes) else json.dumps(doc).encode()
        txn.put(b"meta", payload + zlib.crc32(payload, zlib.crc32(b"meta")).to_bytes(4, "little"))
    env.close()


def _set(**fields):
    return lambda doc: doc.update(fields)


CRAFTED = [
    pytest.param(_set(dtype="int32"), ts.CorruptStoreError, "field dtype must be one of", id="dtype-int32"),
    pytest.param(_set(dtype="U1"), ts.CorruptStoreError, "field dtype must be one of", id="dtype-U1"),
    pytest.param(_set(dtype=None), ts.CorruptStoreError, "field dtype", id="dtype-null"),
    pytest.param(_set(num_rows=1e30), ts.CorruptStoreError, "field num_rows must be an int", id="num_rows-1e30"),
    pytest.param(_set(num_rows=2 ** 70), ts.CorruptStoreError, "field num_rows must be an int from 1", id="num_rows-2**70"),
    pytest.param(_set(num_rows=0), ts.CorruptStoreError, "field num_rows", id="num_rows-0"),
    pytest.param(_set(num_rows=True), ts.CorruptStoreError, "field num_rows", id="num_rows-true"),
    pytest.param(_set(dim=-4), ts.CorruptStoreError, "field dim", id="dim-negative"),
    pytest.param(_set(dim="8"), ts.CorruptStoreError, "field dim", id="dim-str"),
    pytest.param(_set(codec={"id": "lz4"}), ts.CorruptStoreError, "unknown codec", id="codec-unknown"),
    pytest.param(_set(codec={"id": "zstd", "level": 99}), ts.CorruptStoreError, "zstd level", id="codec-level"),
    pytest.param(_set(codec="raw"), ts.CorruptStoreError, "field codec must be", id="codec-str"),
    pytest.param(_set(init={"kind": "bogus"}), ts.CorruptStoreError, "field init must be of kind", id="init-kind"),
    pytest.param(_set(init={"kind": "constant", "value": "x"}), ts.CorruptStoreError, "field init value", id="init-value-str"),
    pytest.param(_set(init={"kind": "constant", "value": 1e300}), ts.CorruptStoreError, "field init constant", id="init-overflow"),
    pytest.param(_set(init={"kind": "stored", "value": 1.0}), ts.CorruptStoreError, "field init", id="init-stored-value"),
    pytest.param(_set(init=[1]), ts.CorruptStoreError, "field init must be", id="init-list"),
    pytest.param(_set(allow_nonfinite="yes"), ts.CorruptStoreError, "field allow_nonfinite", id="allow_nonfinite-str"),
    pytest.param(_set(commit=-1), ts.CorruptStoreError, "field commit", id="commit-negative"),
    pytest.param(_set(commit=1.5), ts.CorruptStoreError, "field commit", id="commit-float"),
    pytest.param(_set(version=0), ts.FormatVersionError, "format version 0 is not a version", id="version-0"),
    pytest.param(_set(version="2"), ts.FormatVersionError, "format version '2'", id="version-str"),
    pytest.param(_set(extra=1), ts.CorruptStoreError, "unknown field 'extra'", id="unknown-field"),
    pytest.param(lambda doc: b'{"format": "tierstore", "codec": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                 ts.CorruptStoreError, "nested too deeply", id="deep-nesting"),
]


@pytest.mark.parametrize("change, exc, fragment", CRAFTED)
def test_crafted_metadata_is_refused_naming_the_field(stored, change, exc, fragment):
    path, table = stored
    _rewrite_meta(path, change)
    for readonly in (True, False):
        with pytest.raises(exc, match=fragment):
            ts.open(path, TINY, readonly=readonly)
