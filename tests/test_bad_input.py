"""Bad input at every public entry point.

Each case asserts three things: the error's type (the tierstore class *and*
the builtin it derives from), that its message names the problem, and that
the store is unchanged afterwards (same logical table, same ``stats()``
counters for errors raised before any row is touched, ``check().ok``, and the
same table again from a fresh read-only open after the writer closes).

Stores are small (60 x 4) with tiers of 2 + 3 rows, so rows really move
between device, RAM and disk, and some rows are dirty in memory when the bad
call arrives.

"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest

import tierstore as ts

NUM_ROWS = 60
DIM = 4
TINY = {"device_rows": 2, "ram_rows": 3}
REPO = Path(__file__).resolve().parents[1]


def tiny(**kw) -> ts.StoreConfig:
    return ts.StoreConfig(**{**TINY, **kw})


# -- helpers ----------------------------------------------------------------------------------
def expect(exc_cls, builtin, match, fn, *args, **kwargs):
    """Call ``fn``; it must raise ``exc_cls`` (a TierstoreError and a ``builtin``) matching ``match``."""
    with pytest.raises(exc_cls, match=match or None) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, builtin), type(info.value).__mro__
    assert isinstance(info.value, ts.TierstoreError), type(info.value).__mro__
    return info.value


def read_all(store) -> np.ndarray:
    """The whole logical table, read in a scrambled order through the tiers."""
    order = np.random.default_rng(7).permutation(store.num_rows)
    out = np.empty((store.num_rows, store.dim), dtype=store.dtype)
    for chunk in np.array_split(order, 4):
        out[chunk] = store.lookup(chunk)
    return out


def verify_readonly(path, expected, config=None):
    """A fresh read-only open sees exactly ``expected`` and a healthy store."""
    with ts.open(path, config=config or tiny(), readonly=True) as ro:
        np.testing.assert_array_equal(read_all(ro), expected)
        report = ro.check()
        assert report.ok, str(report)


def lmdb_env(path):
    return lmdb.open(str(path), max_dbs=2)


def row_key(rid: int) -> bytes:
    return int(rid).to_bytes(8, "big")


def frame(key: bytes, payload: bytes) -> bytes:
    """The store's value framing (tiers/format.py): payload + CRC-32(key, payload), little-endian."""
    return payload + zlib.crc32(payload, zlib.crc32(key)).to_bytes(4, "little")


def edit_record(path, db_name: bytes, key: bytes, change):
    """Replace (or delete, when ``change`` returns None) one LMDB value of a closed store."""
    env = lmdb_env(path)
    try:
        db = env.open_db(db_name)
        with env.begin(write=True, db=db) as txn:
            new = change(txn.get(key))
            if new is None:
                txn.delete(key)
            else:
                txn.put(key, new)
    finally:
        env.close()


def read_record(path, db_name: bytes, key: bytes) -> bytes:
    env = lmdb_env(path)
    try:
        db = env.open_db(db_name)
        with env.begin(db=db) as txn:
            return bytes(txn.get(key))
    finally:
        env.close()


def flip(value: bytes, index: int, mask: int = 0x40) -> bytes:
    b = bytearray(value)
    b[index] ^= mask
    return bytes(b)


def meta_with(doc_change, path):
    """A correctly framed metadata record built from the store's own, after ``doc_change(doc)``."""
    raw = read_record(path, b"meta", b"meta")
    doc = json.loads(raw[:-4])
    doc_change(doc)
    return frame(b"meta", json.dumps(doc, sort_keys=True).encode())


def assert_no_store(path):
    """Nothing at ``path`` that ts.open would accept."""
    path = Path(path)
    if path.exists():
        assert not (path / "data.mdb").exists(), sorted(os.listdir(path))
    with pytest.raises(ts.NotAStoreError):
        ts.open(path, config=tiny(), readonly=True)


class Harness:
    """A writable store, a numpy model of its table, and checks that the two agree."""

    def __init__(self, path, store, model):
        self.path = path
        self.store = store
        self.model = model

    def stats(self):
        return self.store.stats()

    def assert_unchanged(self, stats_before=None):
        """Counters untouched (if given), same table, healthy; call right after the bad call."""
        if stats_before is not None:
            assert self.store.stats() == stats_before
        np.testing.assert_array_equal(read_all(self.store), self.model)
        report = self.store.check()
        assert report.ok, str(report)

    def close_and_verify(self):
        self.store.close()
        verify_readonly(self.path, self.model)

    def close(self):
        self.store.close()


@pytest.fixture
def h(tmp_path):
    rng = np.random.default_rng(1234)
    path = tmp_path / "store"
    init = rng.standard_normal((NUM_ROWS, DIM)).astype(np.float32)
    store = ts.create(path, NUM_ROWS, DIM, "float32", init=init, config=tiny())
    model = init.copy()
    # move rows through the tiers, then leave some resident rows dirty (1, 2) and
    # some non-resident rows updated straight on disk (8, 9)
    for ids in ([1, 2, 3], [1, 2], [4, 5, 6, 1], [7, 1, 2]):
        store.lookup(ids)
    ids = np.array([1, 2, 8, 9])
    rows = rng.standard_normal((4, DIM)).astype(np.float32)
    store.update(ids, rows)
    model[ids] = rows
    store.lookup([1, 2, 10, 11, 1, 2])
    harness = Harness(path, store, model)
    yield harness
    store.close()


def test_fixture_spreads_rows_over_tiers(h):
    st = h.stats()
    assert st["device"]["rows"] == 2 and st["ram"]["rows"] == 3
    assert st["evictions"] > 0 and st["admissions"] > 0
    h.assert_unchanged()
    h.close_and_verify()


def ones_for(ids, dtype=np.float32):
    return np.ones(np.shape(ids) + (DIM,), dtype=dtype)


def call(h, op, ids):
    if op == "lookup":
        return h.store.lookup(ids)
    if op == "prefetch":
        return h.store.prefetch(ids)
    return h.store.update(ids, ones_for(ids))


OPS = ["lookup", "update", "prefetch"]


# -- ids out of range -------------------------------------------------------------------------
I64 = np.iinfo(np.int64)

OUT_OF_RANGE = [
    pytest.param([0, 1, NUM_ROWS], NUM_ROWS, 2, id="num_rows"),
    pytest.param(np.array([3, -1, 5]), -1, 1, id="minus-one"),
    pytest.param(np.array([2, 10**15]), 10**15, 1, id="huge"),
    pytest.param(np.array([2, I64.max]), I64.max, 1, id="int64-max"),
    pytest.param(np.array([2, I64.min]), I64.min, 1, id="int64-min"),
    pytest.param(np.array([1, 2**63 + 7], dtype=np.uint64), 2**63 + 7, 1, id="uint64-above-int64-max"),
    pytest.param(np.array([4, 2**64 - 1], dtype=np.uint64), 2**64 - 1, 1, id="uint64-max"),
    pytest.param(np.array([5, NUM_ROWS], dtype=np.uint64), NUM_ROWS, 1, id="uint64-num_rows"),
    pytest.param(np.array([5, 200], dtype=np.uint8), 200, 1, id="uint8"),
    pytest.param(np.array([5, -3], dtype=np.int8), -3, 1, id="int8-negative"),
    pytest.param(np.array([5, NUM_ROWS], dtype=np.int32), NUM_ROWS, 1, id="int32"),
    pytest.param([0, 2**70], 2**70, 1, id="python-int-2**70"),
    pytest.param([0, -(2**70)], -(2**70), 1, id="python-int-minus-2**70"),
    pytest.param(NUM_ROWS, NUM_ROWS, 0, id="scalar"),
    pytest.param(2**70, 2**70, 0, id="scalar-2**70"),
    pytest.param(np.array([[0, 1], [2, NUM_ROWS + 5]]), NUM_ROWS + 5, 3, id="2d-flat-position"),
    pytest.param([5, NUM_ROWS + 10, -1, NUM_ROWS], NUM_ROWS + 10, 1, id="first-of-several"),
    pytest.param(
        [-1, 2**63], -1, 0, id="python-ints-mixing-negative-and-above-int64"),
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ids, bad, pos", OUT_OF_RANGE)
def test_id_out_of_range(h, op, ids, bad, pos):
    before = h.stats()
    msg = re.escape(f"row id {bad} at position {pos} is outside [0, {NUM_ROWS})")
    expect(ts.IdOutOfRangeError, IndexError, msg, call, h, op, ids)
    h.assert_unchanged(before)
    h.close_and_verify()


def test_id_out_of_range_through_the_index(h, monkeypatch):
    """A lookup through the tier's index checks the range among the ids it missed (an id
    outside the table always misses): the same error, the same first position, nothing
    changed."""
    monkeypatch.setattr(ts.store, "LOGGED_LOOKUP_MIN_IDS", 1)
    for ids, bad, pos in (case.values for case in OUT_OF_RANGE):
        before = h.stats()
        msg = re.escape(f"row id {bad} at position {pos} is outside [0, {NUM_ROWS})")
        expect(ts.IdOutOfRangeError, IndexError, msg, h.store.lookup, ids)
        h.assert_unchanged(before)
    h.close_and_verify()


# -- ids that are not integers ----------------------------------------------------------------
NON_INTEGER = [
    pytest.param(np.array([1.0, 2.0]), "dtype float64", id="float64-array"),
    pytest.param(np.array([1.0, 2.0], dtype=np.float16), "dtype float16", id="float16-array"),
    pytest.param(np.array([1.0], dtype=np.float32), "dtype float32", id="float32-array"),
    pytest.param([1.0, 2.0], "got float at position 0", id="float-list"),
    pytest.param([1, 2.5], "got float at position 1", id="int-float-list"),
    pytest.param(3.0, "got float at position 0", id="float-scalar"),
    pytest.param(np.array([True, False]), "dtype bool", id="bool-array"),
    pytest.param([True, False], "dtype bool", id="bool-list"),
    pytest.param(True, "dtype bool", id="bool-scalar"),
    pytest.param(np.array([1 + 0j]), "dtype complex128", id="complex-array"),
    pytest.param("abc", "dtype <U3", id="string"),
    pytest.param(["1", "2"], "dtype <U1", id="string-list"),
    pytest.param([1, "2"], "dtype <U", id="int-string-list"),
    pytest.param(b"ab", "dtype |S2", id="bytes"),
    pytest.param(None, "got NoneType at position 0", id="None"),
    pytest.param([None], "got NoneType at position 0", id="None-list"),
    pytest.param([1, None], "got NoneType at position 1", id="int-None-list"),
    pytest.param(np.array([1, 2.5], dtype=object), "got float at position 1", id="object-float"),
    pytest.param(np.array([3, True], dtype=object), "got bool at position 1", id="object-bool"),
    pytest.param(np.array(["2020-01-01"], dtype="datetime64[D]"), "dtype datetime64", id="datetime"),
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ids, fragment", NON_INTEGER)
def test_id_not_integer(h, op, ids, fragment):
    before = h.stats()
    err = expect(ts.IdTypeError, TypeError, "row ids must be integers", call, h, op, ids)
    assert fragment in str(err)
    h.assert_unchanged(before)
    h.close_and_verify()


@pytest.mark.parametrize("op", OPS)
def test_ragged_ids(h, op):
    before = h.stats()
    with pytest.raises(ts.IdTypeError, match="rectangular array of integers"):
        if op == "update":
            h.store.update([[1, 2], [3]], np.ones((3, DIM), np.float32))
        else:
            call(h, op, [[1, 2], [3]])
    h.assert_unchanged(before)


def test_empty_id_list_is_not_an_error(h):
    assert h.store.lookup(np.array([], dtype=np.int64)).shape == (0, DIM)  # works
    assert h.store.lookup([]).shape == (0, DIM)
    # np.array([]) is float64: an empty array holds no ids, whatever numpy's default dtype
    assert h.store.lookup(np.array([])).shape == (0, DIM)
    assert h.store.lookup(np.empty((2, 0))).shape == (2, 0, DIM)
    h.store.prefetch(np.array([])).wait()
    h.store.update([], np.empty((0, DIM), np.float32))
    h.store.update(np.array([]), np.empty((0, DIM), np.float32))
    for empty_bool in (np.array([], dtype=bool), np.array([], dtype=np.complex64)):
        expect(ts.IdTypeError, TypeError, "row ids must be integers", h.store.lookup, empty_bool)
    h.assert_unchanged()


def test_empty_float_tensor_is_no_ids(h):
    torch = pytest.importorskip("torch")
    got = h.store.lookup(torch.tensor([]))
    assert torch.is_tensor(got) and tuple(got.shape) == (0, DIM)
    expect(ts.IdTypeError, TypeError, "row ids must be integers", h.store.lookup,
           torch.tensor([], dtype=torch.bool))
    expect(ts.IdTypeError, TypeError, "row ids must be integers", h.store.lookup,
           torch.tensor([1.0]))
    h.assert_unchanged()


# -- rows of the wrong shape or dtype ---------------------------------------------------------
IDS3 = [3, 4, 5]

BAD_SHAPE = [
    pytest.param(IDS3, np.ones(3 * DIM), "(3, 4), got (12,)", id="flat"),
    pytest.param(IDS3, np.ones(3), "(3, 4), got (3,)", id="missing-dim"),
    pytest.param(IDS3, np.ones((3, DIM, 1)), "(3, 4), got (3, 4, 1)", id="extra-trailing-axis"),
    pytest.param(IDS3, np.ones((1, 3, DIM)), "(3, 4), got (1, 3, 4)", id="extra-leading-axis"),
    pytest.param(IDS3, np.ones((3, DIM + 1)), "(3, 4), got (3, 5)", id="wrong-dim"),
    pytest.param(IDS3, np.ones((3, DIM - 1)), "(3, 4), got (3, 3)", id="short-dim"),
    pytest.param(IDS3, np.ones((2, DIM)), "(3, 4), got (2, 4)", id="too-few-rows"),
    pytest.param(IDS3, np.ones((4, DIM)), "(3, 4), got (4, 4)", id="too-many-rows"),
    pytest.param(IDS3, np.ones(DIM), "(3, 4), got (4,)", id="one-row-no-broadcast"),
    pytest.param(IDS3, np.ones((0, DIM)), "(3, 4), got (0, 4)", id="empty"),
    pytest.param(IDS3, 1.5, "(3, 4), got ()", id="scalar"),
    pytest.param(7, np.ones((1, DIM)), "(4,), got (1, 4)", id="scalar-id"),
    pytest.param([[3, 4], [5, 6]], np.ones((4, DIM)), "(2, 2, 4), got (4, 4)", id="2d-ids"),
]

BAD_DTYPE = [
    pytest.param(np.ones((3, DIM), np.int64), "int64", id="int64"),
    pytest.param(np.ones((3, DIM), np.int8), "int8", id="int8"),
    pytest.param(np.ones((3, DIM), np.uint8), "uint8", id="uint8"),
    pytest.param(np.ones((3, DIM), bool), "bool", id="bool"),
    pytest.param(np.ones((3, DIM), object), "object", id="object"),
    pytest.param(np.ones((3, DIM), np.complex64), "complex64", id="complex64"),
    pytest.param(np.ones((3, DIM), np.complex128), "complex128", id="complex128"),
    pytest.param([[1, 2, 3, 4]] * 3, "int64", id="int-list"),
    pytest.param(np.full((3, DIM), "x"), "<U1", id="str"),
    pytest.param(None, "object", id="None"),
]


@pytest.mark.parametrize("ids, rows, fragment", BAD_SHAPE)
def test_rows_wrong_shape(h, ids, rows, fragment):
    before = h.stats()
    err = expect(ts.RowShapeError, ValueError, "rows must have shape", h.store.update, ids, rows)
    assert fragment in str(err)
    h.assert_unchanged(before)
    h.close_and_verify()


@pytest.mark.parametrize("rows, dtype_name", BAD_DTYPE)
def test_rows_not_float(h, rows, dtype_name):
    before = h.stats()
    err = expect(ts.RowShapeError, ValueError, "rows must be floating point", h.store.update, IDS3, rows)
    assert f"dtype {dtype_name}" in str(err)
    h.assert_unchanged(before)
    h.close_and_verify()


def test_rows_ragged_list(h):
    before = h.stats()
    with pytest.raises(ts.RowShapeError):
        h.store.update([1, 2], [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]])
    h.assert_unchanged(before)


def test_rows_other_float_dtypes_are_accepted(h):
    # sanity: the dtype check is about kind, not exact dtype
    for dtype in (np.float16, np.float64):
        rows = np.full((3, DIM), 0.5, dtype)
        h.store.update(IDS3, rows)
        h.model[IDS3] = rows.astype(np.float32)
    h.assert_unchanged()
    h.close_and_verify()


# -- NaN / Inf ---------------------------------------------------------------------------------
def with_value(shape, where, value, dtype=np.float32):
    rows = np.ones(shape, dtype)
    rows[where] = value
    return rows


NONFINITE = [
    pytest.param(IDS3, with_value((3, DIM), (1, 2), np.nan), "rows: row id 4 (rows[1]) holds NaN or Inf", id="nan"),
    pytest.param(IDS3, with_value((3, DIM), (2, 0), np.inf), "rows: row id 5 (rows[2]) holds NaN or Inf", id="inf"),
    pytest.param(IDS3, with_value((3, DIM), (0, 3), -np.inf), "rows: row id 3 (rows[0]) holds NaN or Inf", id="-inf"),
    pytest.param(IDS3, with_value((3, DIM), (2, 1), 1e300, np.float64),
                 "row id 5 (rows[2]) holds NaN or Inf (after casting float64 to float32)", id="float64-overflow"),
    pytest.param([[3, 4], [5, 6]], with_value((2, 2, DIM), (1, 1, 0), np.nan),
                 "rows: row id 6 (rows[1, 1]) holds NaN or Inf", id="2d-ids"),
]


@pytest.mark.parametrize("ids, rows, fragment", NONFINITE)
def test_nonfinite_rows_rejected(h, ids, rows, fragment):
    before = h.stats()
    err = expect(ts.NonFiniteRowError, ValueError, re.escape(fragment), h.store.update, ids, rows)
    assert "allow_nonfinite=True" in str(err)
    h.assert_unchanged(before)
    h.close_and_verify()


def test_float32_overflowing_float16_rejected(tmp_path):
    path = tmp_path / "f16"
    init = np.random.default_rng(3).standard_normal((NUM_ROWS, DIM)).astype(np.float16)
    with ts.create(path, NUM_ROWS, DIM, "float16", init=init, config=tiny()) as s:
        s.lookup([1, 2, 3, 4, 5, 6])
        before = s.stats()
        for big in (1e6, 7e4, -1e5):
            rows = np.ones((3, DIM), np.float32)
            rows[1, 2] = big  # finite in float32, inf in float16
            expect(ts.NonFiniteRowError, ValueError,
                   re.escape("row id 4 (rows[1]) holds NaN or Inf (after casting float32 to float16)"),
                   s.update, IDS3, rows)
        assert s.stats() == before
        np.testing.assert_array_equal(read_all(s), init)
        assert s.check().ok
        # the largest finite float16 is fine
        s.update([3], np.full((1, DIM), 65504.0, np.float32))
        init[3] = 65504.0
    verify_readonly(path, init)


def test_nonfinite_create_init_rejected(tmp_path):
    init = np.ones((NUM_ROWS, DIM), np.float32)
    init[40, 1] = np.nan
    path = tmp_path / "s"
    expect(ts.NonFiniteRowError, ValueError, re.escape(f"init rows 0:{NUM_ROWS}: row 40 holds NaN"),
           ts.create, path, NUM_ROWS, DIM, "float32", init=init, config=tiny())
    assert_no_store(path)
    big = np.ones((NUM_ROWS, DIM), np.float32)
    big[7, 0] = 1e5
    expect(ts.NonFiniteRowError, ValueError, "row 7 holds NaN or Inf .after casting float32 to float16",
           ts.create, path, NUM_ROWS, DIM, "float16", init=big, config=tiny())
    assert_no_store(path)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_nonfinite_allowed_when_configured(tmp_path, dtype):
    path = tmp_path / "s"
    cfg = tiny()
    init = np.ones((NUM_ROWS, DIM), np.float32)
    init[5, 0], init[6, 1], init[7, 2] = np.nan, np.inf, -np.inf
    model = init.astype(dtype)
    with ts.create(path, NUM_ROWS, DIM, dtype, init=init, config=cfg, allow_nonfinite=True) as s:
        rows = np.ones((3, DIM), np.float32)
        rows[0, 0], rows[1, 1], rows[2, 2] = np.nan, np.inf, 1e6  # 1e6 is inf in float16
        s.update(IDS3, rows)
        with np.errstate(over="ignore"):
            model[IDS3] = rows.astype(dtype)
        s.lookup([3, 4, 5, 3, 4, 5, 6, 7])
        s.update([5], np.full((1, DIM), np.nan, np.float32))  # possibly resident now
        model[5] = np.nan
        np.testing.assert_array_equal(read_all(s), model)
        assert s.check().ok
    verify_readonly(path, model, config=cfg)
    # the rule is the table's: a plain reopen still takes them
    with ts.open(path, config=cfg) as s:
        assert s.format.allow_nonfinite
        s.update([9], np.full((1, DIM), -np.inf, np.float32))
        model[9] = -np.inf
    verify_readonly(path, model)


# -- read-only stores --------------------------------------------------------------------------
def test_update_on_readonly_store(h):
    h.close()
    with ts.open(h.path, config=tiny(), readonly=True) as ro:
        ro.lookup([1, 2, 3, 4, 5, 6, 1, 2])
        before = ro.stats()
        expect(ts.ReadOnlyError, PermissionError, "read-only", ro.update, [1], np.ones((1, DIM), np.float32))
        # the write check comes first, whatever else is wrong with the call
        expect(ts.ReadOnlyError, PermissionError, "read-only", ro.update, [NUM_ROWS], np.ones((1, DIM)))
        expect(ts.ReadOnlyError, PermissionError, "read-only", ro.update, [1.5], "junk")
        assert ro.stats() == before
        ro.flush()  # a no-op, not an error
        np.testing.assert_array_equal(read_all(ro), h.model)
        assert ro.check().ok
    verify_readonly(h.path, h.model)
    with ts.open(h.path, config=tiny()) as w:  # the read-only store held no writer lock
        np.testing.assert_array_equal(read_all(w), h.model)


# -- closed stores -----------------------------------------------------------------------------
CLOSED_CALLS = {
    "lookup": lambda s: s.lookup([1]),
    "lookup-bad-ids": lambda s: s.lookup([NUM_ROWS]),
    "update": lambda s: s.update([1], np.ones((1, DIM), np.float32)),
    "flush": lambda s: s.flush(),
    "check": lambda s: s.check(),
    "prefetch": lambda s: s.prefetch([1, 2]),
    "refresh": lambda s: s.refresh(),
}


@pytest.mark.parametrize("what", sorted(CLOSED_CALLS))
@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_closed_store(h, what, readonly):
    if readonly:
        h.close()
        store = ts.open(h.path, config=tiny(), readonly=True)
    else:
        store = h.store
    store.close()
    store.close()  # twice is fine
    err = expect(ts.ClosedStoreError, ValueError, "is closed", CLOSED_CALLS[what], store)
    assert str(h.path) in str(err)
    store.close()
    assert "closed" in repr(store)
    verify_readonly(h.path, h.model)  # closing flushed the dirty rows


def test_closed_by_context_manager(tmp_path):
    path = tmp_path / "s"
    with ts.create(path, NUM_ROWS, DIM, "float32", config=tiny()) as s:
        s.lookup([1, 2, 3])
        s.update([1, 2], np.full((2, DIM), 3.0, np.float32))  # dirty, in memory
        s.flush()
        flushed = s.stats()
    # stats() after close is not an error: the counters as the store closed (nothing was
    # left to write back), to read after the block
    assert s.stats() == flushed and s.stats()["lookups"] == 3
    expect(ts.ClosedStoreError, ValueError, "closed", s.lookup, [1])
    expect(ts.ClosedStoreError, ValueError, "closed", s.update, [1], np.ones((1, DIM), np.float32))
    s.close()
    model = np.zeros((NUM_ROWS, DIM), np.float32)
    model[[1, 2]] = 3.0
    verify_readonly(path, model)


# -- bad configuration -------------------------------------------------------------------------
BAD_CONFIG = [
    pytest.param({"device_rows": -1}, "device_rows must be a non-negative int", id="negative-device_rows"),
    pytest.param({"ram_rows": -5}, "ram_rows must be a non-negative int", id="negative-ram_rows"),
    pytest.param({"device_rows": 2.0}, "device_rows must be a non-negative int, got 2.0", id="float-device_rows"),
    pytest.param({"device_rows": "2"}, "device_rows must be a non-negative int", id="str-device_rows"),
    pytest.param({"ram_rows": True}, "ram_rows must be a non-negative int, got True", id="bool-ram_rows"),
    pytest.param({"ram_rows": None}, "ram_rows must be a non-negative int", id="None-ram_rows"),
    pytest.param({"device_rows": 0, "ram_rows": 0}, "device_rows + ram_rows must be at least 1", id="no-memory"),
    pytest.param({"device": "tpu"}, "device must be 'cpu' or 'cuda[:n]', got 'tpu'", id="tpu"),
    pytest.param({"device": "cuda:x"}, "device must be", id="cuda-x"),
    pytest.param({"device": None}, "device must be", id="device-None"),
    pytest.param({"policy": "fifo"}, "policy must be one of", id="policy"),
    pytest.param({"policy": None}, "policy must be one of", id="policy-None"),
    pytest.param({"map_size": (1 << 20) - 1}, "map_size must be an int of at least 1 MiB", id="map_size-small"),
    pytest.param({"map_size": 0}, "map_size must be", id="map_size-0"),
    pytest.param({"map_size": float(1 << 30)}, "map_size must be", id="map_size-float"),
    pytest.param({"map_size": 1 << 21, "max_map_size": 1 << 20}, "max_map_size must be None or an int >= map_size",
                 id="max_map_size-below-map_size"),
    pytest.param({"max_map_size": 1 << 20}, "max_map_size must be", id="max_map_size-below-default"),
    pytest.param({"max_map_size": float(1 << 40)}, "max_map_size must be", id="max_map_size-float"),
    pytest.param({"sketch_width": 3}, "sketch_width must be", id="sketch_width"),
    pytest.param({"partitions": 0}, "partitions must be an int from 1 to", id="partitions-0"),
    pytest.param({"device_rows": 1, "ram_rows": 2, "partitions": 4},
                 "partitions must be an int from 1 to device_rows + ram_rows (3), got 4", id="partitions-above-memory"),
    pytest.param({"partitions": True}, "partitions must be", id="partitions-bool"),
    pytest.param({"partitions": 2.0}, "partitions must be", id="partitions-float"),
]


@pytest.mark.parametrize("kwargs, fragment", BAD_CONFIG)
def test_bad_config(kwargs, fragment):
    expect(ts.ConfigError, ValueError, re.escape(fragment), ts.StoreConfig, **{**TINY, **kwargs})


BAD_FORMAT = [
    pytest.param({"codec": "lz4"}, "unknown codec", id="codec-name"),
    pytest.param({"codec": {"id": "brotli"}}, "unknown codec", id="codec-dict"),
    pytest.param({"codec": 5}, "unknown codec", id="codec-int"),
    pytest.param({"codec": {"id": "zstd", "level": 0}}, "zstd level must be an int in 1..22, got 0", id="zstd-level-0"),
    pytest.param({"codec": {"id": "zstd", "level": 23}}, "zstd level", id="zstd-level-23"),
    pytest.param({"codec": {"id": "zstd", "dict_size": -1}}, "dict_size", id="zstd-dict-size"),
    pytest.param({"codec": {"id": "zstd", "bogus": 1}}, "bad parameters for codec 'zstd'", id="zstd-unknown-param"),
    pytest.param({"codec": "int8", "allow_nonfinite": True}, "allow_nonfinite needs a lossless codec",
                 id="nonfinite-with-lossy-codec"),
    pytest.param({"allow_nonfinite": 1}, "allow_nonfinite must be True or False", id="nonfinite-int"),
]


@pytest.mark.parametrize("kwargs, fragment", BAD_FORMAT)
def test_bad_table_format(tmp_path, kwargs, fragment):
    """What a table is goes to create (and TableFormat), not to the StoreConfig."""
    expect(ts.ConfigError, ValueError, re.escape(fragment), ts.create, tmp_path / "s", 10, DIM,
           config=tiny(), **kwargs)
    assert_no_store(tmp_path / "s")
    expect(ts.ConfigError, ValueError, re.escape(fragment), ts.TableFormat, 10, DIM, "float32",
           **kwargs)


def test_zstd_codec_level_0_direct():
    expect(ts.ConfigError, ValueError, "zstd level", ts.ZstdCodec, level=0)


def test_config_edge_values_are_accepted():
    ts.StoreConfig(device_rows=0, ram_rows=1)
    ts.StoreConfig(device_rows=1, ram_rows=0)
    ts.StoreConfig(device="cuda:1", **TINY)  # only a name check until a store is built
    ts.StoreConfig(map_size=1 << 20, max_map_size=1 << 20, **TINY)


def test_config_that_is_not_a_store_config(tmp_path):
    path = tmp_path / "s"
    expect(ts.ConfigError, ValueError, "config must be a StoreConfig", ts.create, path, 10, DIM,
           config={"device_rows": 2})
    assert_no_store(path)
    ts.create(path, 10, DIM, config=tiny()).close()
    expect(ts.ConfigError, ValueError, "config must be a StoreConfig", ts.open, path, config=TINY)
    ts.open(path, config=tiny()).close()  # no writer lock left behind


# -- bad create arguments ----------------------------------------------------------------------
BAD_CREATE = [
    pytest.param({"num_rows": 0}, ts.ConfigError, "num_rows must be a positive int, got 0", id="num_rows-0"),
    pytest.param({"num_rows": -5}, ts.ConfigError, "num_rows must be a positive int", id="num_rows-negative"),
    pytest.param({"num_rows": 10.0}, ts.ConfigError, "num_rows must be a positive int", id="num_rows-float"),
    pytest.param({"num_rows": True}, ts.ConfigError, "num_rows must be a positive int", id="num_rows-bool"),
    pytest.param({"num_rows": "10"}, ts.ConfigError, "num_rows must be a positive int", id="num_rows-str"),
    pytest.param({"num_rows": None}, ts.ConfigError, "num_rows must be a positive int", id="num_rows-None"),
    pytest.param({"dim": 0}, ts.ConfigError, "dim must be a positive int, got 0", id="dim-0"),
    pytest.param({"dim": -2}, ts.ConfigError, "dim must be a positive int", id="dim-negative"),
    pytest.param({"dim": 4.0}, ts.ConfigError, "dim must be a positive int", id="dim-float"),
    pytest.param({"dtype": "int32"}, ts.ConfigError, "dtype must be one of", id="dtype-int32"),
    pytest.param({"dtype": "bfloat16"}, ts.ConfigError, "dtype must be one of", id="dtype-bfloat16"),
    pytest.param({"dtype": "complex64"}, ts.ConfigError, "dtype must be one of", id="dtype-complex64"),
    pytest.param({"dtype": np.int16}, ts.ConfigError, "dtype must be one of", id="dtype-np-int16"),
    pytest.param({"dtype": "nonsense"}, ts.ConfigError, "dtype must be one of", id="dtype-nonsense"),
    pytest.param({"init": np.ones((NUM_ROWS, DIM + 1), np.float32)}, ts.RowShapeError,
                 re.escape(f"init array must have shape ({NUM_ROWS}, {DIM}), got ({NUM_ROWS}, {DIM + 1})"),
                 id="init-wrong-dim"),
    pytest.param({"init": np.ones((NUM_ROWS - 1, DIM), np.float32)}, ts.RowShapeError,
                 "init array must have shape", id="init-too-few-rows"),
    pytest.param({"init": np.ones(NUM_ROWS * DIM, np.float32)}, ts.RowShapeError,
                 "init array must have shape", id="init-flat"),
    pytest.param({"init": np.ones((NUM_ROWS, DIM, 1), np.float32)}, ts.RowShapeError,
                 "init array must have shape", id="init-extra-axis"),
    pytest.param({"init": [[1.0] * DIM] * (NUM_ROWS + 1)}, ts.RowShapeError,
                 "init array must have shape", id="init-list-too-long"),
    pytest.param({"init": np.ones((NUM_ROWS, DIM), np.int32)}, ts.RowShapeError,
                 "must be floating point, got dtype int32", id="init-int"),
    pytest.param({"init": lambda a, b: np.ones((b - a, DIM + 1))}, ts.RowShapeError,
                 re.escape(f"init rows 0:{NUM_ROWS} must have shape"), id="init-callable-wrong-shape"),
    pytest.param({"init": lambda a, b: np.full((b - a, DIM), np.inf)}, ts.NonFiniteRowError,
                 "holds NaN or Inf", id="init-callable-inf"),
    pytest.param({"init": with_value((NUM_ROWS, DIM), (33, 3), np.nan)}, ts.NonFiniteRowError,
                 "init rows 0:60: row 33 holds NaN or Inf", id="init-nan"),
    pytest.param({"init": float("nan")}, ts.NonFiniteRowError, "init constant nan is not finite", id="init-constant-nan"),
    pytest.param({"init": float("inf")}, ts.NonFiniteRowError, "is not finite", id="init-constant-inf"),
    pytest.param({"init": "zeros"}, ts.ConfigError, "init must be None, a number", id="init-str"),
    pytest.param({"init": True}, ts.ConfigError, "init must be None, a number", id="init-bool"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_CREATE)
def test_bad_create(tmp_path, kwargs, exc, match):
    path = tmp_path / "s"
    args = {"num_rows": NUM_ROWS, "dim": DIM, "dtype": "float32", "config": tiny(), **kwargs}
    expect(exc, ValueError, match, ts.create, path, **args)
    assert_no_store(path)
    with pytest.raises(ts.NotAStoreError):
        ts.open(path, config=tiny())


def test_tiers_larger_than_memory_are_refused_before_allocating(tmp_path):
    """A configuration whose tiers cannot fit the machine's memory is a named error (also a
    MemoryError) raised before anything is allocated or written (it was a bare numpy
    MemoryError part way through allocating, or swapping)."""
    from tierstore.tier_sizes import available_bytes

    if available_bytes() is None:
        pytest.skip("this system does not say how much memory is available")
    huge = ts.StoreConfig(ram_rows=10**12)
    path = tmp_path / "s"
    expect(ts.TiersTooLargeError, MemoryError, "ram_rows=1000000000000", ts.create, path,
           10**13, 64, config=huge)
    assert_no_store(path)
    ts.create(path, 10**13, 4).close()
    expect(ts.TiersTooLargeError, MemoryError, "GiB is available", ts.open, path, config=huge)
    with ts.open(path) as s:                  # the failed open released the store
        assert s.lookup([10**13 - 1]).shape == (1, 4)


def test_create_over_existing_store(h):
    h.close()
    size = (h.path / "data.mdb").stat().st_size
    for kwargs in ({}, {"num_rows": 10, "dim": 2}, {"init": np.zeros((NUM_ROWS, DIM), np.float32)}):
        args = {"num_rows": NUM_ROWS, "dim": DIM, "config": tiny(), **kwargs}
        with pytest.raises(FileExistsError, match="overwrite=True"):
            ts.create(h.path, **args)
    assert (h.path / "data.mdb").stat().st_size == size
    verify_readonly(h.path, h.model)


def test_create_overwrite_replaces(h):
    h.close()
    with ts.create(h.path, 10, 2, "float64", init=2.0, config=tiny(), overwrite=True) as s:
        assert (s.num_rows, s.dim, s.dtype) == (10, 2, np.float64)
    verify_readonly(h.path, np.full((10, 2), 2.0))


def test_create_overwrite_with_bad_init_keeps_old_store(h):
    h.close()
    bad = with_value((NUM_ROWS, DIM), (7, 1), np.nan)
    expect(ts.NonFiniteRowError, ValueError, "row 7 holds NaN", ts.create, h.path, NUM_ROWS, DIM,
           "float32", init=bad, config=tiny(), overwrite=True)
    verify_readonly(h.path, h.model)


def test_create_overwrite_while_writer_open(h):
    h.store.flush()
    expect(ts.StoreLockedError, BlockingIOError, "another writer", ts.create, h.path, NUM_ROWS, DIM,
           "float32", config=tiny(), overwrite=True)
    h.store.update([20], np.full((1, DIM), 5.0, np.float32))
    h.model[20] = 5.0
    h.close_and_verify()


# -- opening things that are not (good) stores ----------------------------------------------------
def make_plain_lmdb(path, named_dbs: bool, keys=()):
    env = lmdb.open(str(path), max_dbs=2 if named_dbs else 0)
    try:
        if named_dbs:
            env.open_db(b"rows")
            env.open_db(b"meta")
        with env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, b"some value")
    finally:
        env.close()


NOT_A_STORE = {  # kind -> fragment of the message
    "missing": "no such store",
    "empty-dir": "no data.mdb inside",
    "a-file": "no data.mdb inside",
    "random-bytes": "not an LMDB database",
    "empty-data.mdb": "too short to be an LMDB database",
    "plain-lmdb": "without tierstore tables",
    "plain-lmdb-with-tables": "without tierstore metadata",
}


def make_not_a_store(path, kind):
    if kind in ("empty-dir", "random-bytes", "empty-data.mdb"):
        path.mkdir()
    if kind == "random-bytes":
        (path / "data.mdb").write_bytes(np.random.default_rng(5).bytes(8192))
    elif kind == "empty-data.mdb":
        (path / "data.mdb").write_bytes(b"")
    elif kind == "plain-lmdb":
        make_plain_lmdb(path, named_dbs=False, keys=[b"hello"])
    elif kind == "plain-lmdb-with-tables":
        make_plain_lmdb(path, named_dbs=True, keys=[b"hello"])
    elif kind == "a-file":
        path.write_bytes(b"not a directory")


@pytest.mark.parametrize("kind, readonly", [
    pytest.param(kind, ro, id=f"{kind}-{'readonly' if ro else 'writable'}")
    for kind in NOT_A_STORE for ro in (False, True)])
def test_open_not_a_store(tmp_path, kind, readonly):
    path = tmp_path / "thing"
    make_not_a_store(path, kind)
    err = expect(ts.NotAStoreError, ValueError, re.escape(NOT_A_STORE[kind]), ts.open, path,
                 config=tiny(), readonly=readonly)
    assert str(path) in str(err)


@pytest.mark.parametrize("kind", NOT_A_STORE)
def test_failed_open_leaves_data_alone(tmp_path, kind):
    path = tmp_path / "thing"
    make_not_a_store(path, kind)
    data = path / "data.mdb"
    before = data.read_bytes() if data.is_file() else None
    for readonly in (True, False):
        with pytest.raises(ValueError):  # the type is test_open_not_a_store's business
            ts.open(path, config=tiny(), readonly=readonly)
        assert (data.read_bytes() if data.is_file() else None) == before, f"readonly={readonly}"
    if kind in ("missing", "empty-dir", "a-file"):
        assert not data.exists()


@pytest.mark.parametrize("kind", NOT_A_STORE)
def test_failed_open_releases_everything(tmp_path, kind):
    """A failed open holds no writer lock and no LMDB environment: retrying fails the same way."""
    path = tmp_path / "thing"
    make_not_a_store(path, kind)
    fragment = re.escape(NOT_A_STORE[kind])
    first = expect(ts.NotAStoreError, ValueError, fragment, ts.open, path, config=tiny())
    again = expect(ts.NotAStoreError, ValueError, fragment, ts.open, path, config=tiny())
    assert str(again) == str(first)
    expect(ts.NotAStoreError, ValueError, fragment, ts.open, path, config=tiny(), readonly=True)


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_plain_lmdb_with_clashing_keys(tmp_path, readonly):
    path = tmp_path / "plain"
    make_plain_lmdb(path, named_dbs=False, keys=[b"rows"])
    expect(ts.NotAStoreError, ValueError, None, ts.open, path, config=tiny(), readonly=readonly)


@pytest.fixture
def closed_store(tmp_path):
    """A closed store of stored rows, and its table."""
    path = tmp_path / "store"
    init = np.random.default_rng(99).standard_normal((NUM_ROWS, DIM)).astype(np.float32)
    ts.create(path, NUM_ROWS, DIM, "float32", init=init, config=tiny()).close()
    return path, init


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_newer_format_version(closed_store, readonly):
    path, init = closed_store
    good = read_record(path, b"meta", b"meta")
    newer = meta_with(lambda d: d.update(version=99), path)
    edit_record(path, b"meta", b"meta", lambda _: newer)
    err = expect(ts.FormatVersionError, ValueError, "format version 99 is newer", ts.open, path,
                 config=tiny(), readonly=readonly)
    assert "upgrade tierstore" in str(err)
    expect(ts.FormatVersionError, ValueError, "99", ts.open, path, config=tiny())  # lock was released
    edit_record(path, b"meta", b"meta", lambda _: good)
    verify_readonly(path, init)


META_DAMAGE = [
    pytest.param(lambda v: flip(v, 5), ts.CorruptStoreError, "fails its checksum", id="payload-byte"),
    pytest.param(lambda v: flip(v, len(v) - 1), ts.CorruptStoreError, "fails its checksum", id="crc-byte"),
    pytest.param(lambda v: flip(v, len(v) // 2, 0x01), ts.CorruptStoreError, "fails its checksum", id="middle-bit"),
    pytest.param(lambda v: v[:-1], ts.CorruptStoreError, "metadata record is damaged", id="truncated"),
    pytest.param(lambda v: v[:3], ts.CorruptStoreError, "missing or truncated", id="three-bytes"),
    pytest.param(lambda v: b"", ts.CorruptStoreError, "missing or truncated", id="empty"),
    pytest.param(lambda v: frame(b"meta", b"{not json"), ts.CorruptStoreError, "damaged", id="not-json"),
    pytest.param(lambda v: frame(b"meta", b"\xff\xfe"), ts.CorruptStoreError, "damaged", id="not-utf8"),
    pytest.param(lambda v: frame(b"meta", json.dumps({"format": "tierstore", "version": 1}).encode()),
                 ts.CorruptStoreError, "lacks a field", id="missing-fields"),
    pytest.param(lambda v: frame(b"meta", json.dumps({"format": "other", "version": 1}).encode()),
                 ts.NotAStoreError, "does not describe a tierstore", id="other-format"),
    pytest.param(lambda v: frame(b"meta", b"[1, 2]"), ts.NotAStoreError, "does not describe", id="json-list"),
    pytest.param(lambda v: None, ts.NotAStoreError, "without tierstore metadata", id="deleted"),
]


@pytest.mark.parametrize("damage, exc, fragment", META_DAMAGE)
@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_damaged_metadata(closed_store, damage, exc, fragment, readonly):
    path, init = closed_store
    good = read_record(path, b"meta", b"meta")
    edit_record(path, b"meta", b"meta", damage)
    expect(exc, ValueError, fragment, ts.open, path, config=tiny(), readonly=readonly)
    expect(exc, ValueError, fragment, ts.open, path, config=tiny())  # no lock left behind
    edit_record(path, b"meta", b"meta", lambda _: good)
    verify_readonly(path, init)


@pytest.mark.parametrize("kwargs, fragment", [
    pytest.param({"dim": DIM + 1}, f"rows have dim {DIM}, not {DIM + 1}", id="dim"),
    pytest.param({"dtype": "float16"}, "dtype is float32, not float16", id="dtype-float16"),
    pytest.param({"dtype": np.float64}, "dtype is float32, not float64", id="dtype-float64"),
    pytest.param({"dim": DIM * 2, "dtype": "float32"}, f"not {DIM * 2}", id="dim-with-right-dtype"),
    pytest.param({"dim": str(DIM)}, f"rows have dim {DIM}, not '{DIM}'", id="dim-str"),
    pytest.param({"dim": True}, f"rows have dim {DIM}, not True", id="dim-bool"),
    pytest.param({"dtype": "int32"}, "dtype is float32, not int32", id="dtype-int32"),
    pytest.param({"dtype": "nonsense"}, "dtype must be one of", id="dtype-nonsense"),
])
@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_contradicting_dim_dtype(closed_store, kwargs, fragment, readonly):
    path, init = closed_store
    expect(ts.ConfigError, ValueError, re.escape(fragment), ts.open, path, config=tiny(),
           readonly=readonly, **kwargs)
    with ts.open(path, config=tiny(), dim=DIM, dtype="float32") as s:  # lock released; matching is fine
        np.testing.assert_array_equal(read_all(s), init)
    verify_readonly(path, init)


# -- corrupted row values --------------------------------------------------------------------------
BAD_ROW = 17


def corrupt_row(path, rid, how):
    if how == "swap":  # a value moved under another key: the CRC covers the key
        env = lmdb_env(path)
        try:
            db = env.open_db(b"rows")
            with env.begin(write=True, db=db) as txn:
                txn.put(row_key(rid), bytes(txn.get(row_key(rid + 1))))
        finally:
            env.close()
        return
    change = {
        "payload-byte": lambda v: flip(v, 3),
        "first-byte": lambda v: flip(v, 0, 0x01),
        "crc-byte": lambda v: flip(v, len(v) - 2),
        "truncated": lambda v: v[:-1],
        "extended": lambda v: v + b"\x00",
        "three-bytes": lambda v: v[:3],
        "empty": lambda v: b"",
        "garbage-with-valid-crc": lambda v: frame(row_key(rid), b"garbage"),
    }[how]
    edit_record(path, b"rows", row_key(rid), change)


CORRUPTIONS = ["payload-byte", "first-byte", "crc-byte", "truncated", "extended", "three-bytes",
               "empty", "garbage-with-valid-crc", "swap"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_row_value(closed_store, how):
    path, init = closed_store
    corrupt_row(path, BAD_ROW, how)
    reason = "does not decode" if how == "garbage-with-valid-crc" else "checksum mismatch"
    with ts.open(path, config=tiny()) as s:
        s.lookup([1, 2, 3, 1, 2, 3, 4])  # some rows resident
        counters = {k: v for k, v in s.stats().items() if k != "disk"}
        err = expect(ts.CorruptRowError, ValueError, rf"corrupt row {BAD_ROW}\b.*{reason}",
                     s.lookup, [BAD_ROW])
        assert err.row_ids == [BAD_ROW]
        # in a batch with good rows (resident and not), only the bad one is named
        err = expect(ts.CorruptRowError, ValueError, rf"corrupt row {BAD_ROW}\b", s.lookup,
                     np.array([[1, 30], [BAD_ROW, 2]]))
        assert err.row_ids == [BAD_ROW]
        # a failed lookup admits nothing and counts nothing
        assert {k: v for k, v in s.stats().items() if k != "disk"} == counters
        others = np.setdiff1d(np.arange(NUM_ROWS), [BAD_ROW])
        np.testing.assert_array_equal(s.lookup(others), init[others])
        report = s.check()
        assert report.corrupt_ids == [BAD_ROW], str(report)
        assert report.problems == [] and not report.ok
        assert str(BAD_ROW) in str(report)
        # still the same after more traffic; then a write repairs the row
        np.testing.assert_array_equal(s.lookup(others[::-1]), init[others[::-1]])
        assert s.check().corrupt_ids == [BAD_ROW]
        fixed = np.full((1, DIM), 4.25, np.float32)
        s.update([BAD_ROW], fixed)
        s.flush()
        assert s.check().ok
        np.testing.assert_array_equal(s.lookup([BAD_ROW]), fixed)
    init[BAD_ROW] = fixed
    verify_readonly(path, init)


def test_corrupt_row_seen_by_readonly_open(closed_store):
    path, init = closed_store
    corrupt_row(path, BAD_ROW, "payload-byte")
    with ts.open(path, config=tiny(), readonly=True) as ro:
        err = expect(ts.CorruptRowError, ValueError, rf"corrupt row {BAD_ROW}\b", ro.lookup, BAD_ROW)
        assert err.row_ids == [BAD_ROW]
        assert ro.check().corrupt_ids == [BAD_ROW]


def test_two_corrupt_rows(closed_store):
    path, init = closed_store
    corrupt_row(path, 9, "payload-byte")
    corrupt_row(path, 41, "crc-byte")
    with ts.open(path, config=tiny()) as s:
        err = expect(ts.CorruptRowError, ValueError, "corrupt row 9, 41", s.lookup, [41, 0, 9, 41])
        assert sorted(err.row_ids) == [9, 41]
        assert s.check().corrupt_ids == [9, 41]
        others = np.setdiff1d(np.arange(NUM_ROWS), [9, 41])
        np.testing.assert_array_equal(s.lookup(others), init[others])


@pytest.mark.parametrize("codec", ["zstd", "int8"])
def test_corrupt_row_other_codecs(tmp_path, codec):
    path = tmp_path / "s"
    init = np.random.default_rng(4).standard_normal((NUM_ROWS, DIM)).astype(np.float32)
    with ts.create(path, NUM_ROWS, DIM, "float32", init=init, config=tiny(), codec=codec) as s:
        baseline = read_all(s)  # int8 is lossy: compare against what the store gave back
    corrupt_row(path, BAD_ROW, "payload-byte")
    with ts.open(path, config=tiny()) as s:
        err = expect(ts.CorruptRowError, ValueError, rf"corrupt row {BAD_ROW}\b", s.lookup, [BAD_ROW])
        assert err.row_ids == [BAD_ROW]
        others = np.setdiff1d(np.arange(NUM_ROWS), [BAD_ROW])
        np.testing.assert_array_equal(s.lookup(others), baseline[others])
        assert s.check().corrupt_ids == [BAD_ROW]


# -- a second writer ---------------------------------------------------------------------------------
def test_second_writer_in_process(h):
    h.store.flush()
    for _ in range(2):  # a failed attempt must not release the first writer's lock
        expect(ts.StoreLockedError, BlockingIOError, "another writer has this store open",
               ts.open, h.path, config=tiny())
    with pytest.raises(FileExistsError):
        ts.create(h.path, NUM_ROWS, DIM, config=tiny())
    h.store.update([20], np.full((1, DIM), 6.0, np.float32))  # the first writer is unharmed
    h.model[20] = 6.0
    h.assert_unchanged()
    h.close()
    with ts.open(h.path, config=tiny()) as w:  # once closed, a writer may open
        np.testing.assert_array_equal(read_all(w), h.model)


def test_readonly_open_while_writer_open_in_process(h):
    h.store.flush()
    with ts.open(h.path, config=tiny(), readonly=True) as ro:
        np.testing.assert_array_equal(read_all(ro), h.model)


def test_writer_open_while_readonly_open_in_process(h):
    h.close()
    with ts.open(h.path, config=tiny(), readonly=True) as ro:
        for _ in range(2):
            expect(ts.StoreLockedError, BlockingIOError, "close those handles before opening it for writing",
                   ts.open, h.path, config=tiny())
        np.testing.assert_array_equal(read_all(ro), h.model)
        assert ro.check().ok
    with ts.open(h.path, config=tiny()) as w:  # once the reader closed, a writer may open
        np.testing.assert_array_equal(read_all(w), h.model)


WRITER_CHILD = """
import sys
import numpy as np
import tierstore as ts
s = ts.open(sys.argv[1], config=ts.StoreConfig(device_rows=2, ram_rows=3))
s.update([20], np.full((1, s.dim), 6.0, dtype=s.dtype))
s.flush()
print("ready", flush=True)
sys.stdin.readline()
s.close()
"""


def test_second_writer_other_process(h):
    h.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(h.path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", line + child.stdout.read()
        h.model[20] = 6.0
        for _ in range(2):
            expect(ts.StoreLockedError, BlockingIOError, "another writer", ts.open, h.path, config=tiny())
        verify_readonly(h.path, h.model)  # readers are welcome
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.communicate(timeout=60)
    assert child.returncode == 0
    with ts.open(h.path, config=tiny()) as w:
        np.testing.assert_array_equal(read_all(w), h.model)


# -- the LMDB map ------------------------------------------------------------------------------------
BIG_ROWS, BIG_DIM = 20000, 64


@pytest.mark.parametrize("how", ["init", "update"])
def test_map_grows_when_full(tmp_path, how):
    path = tmp_path / "big"
    rows = np.random.default_rng(8).standard_normal((BIG_ROWS, BIG_DIM)).astype(np.float32)
    cfg = tiny(map_size=1 << 20)
    if how == "init":
        s = ts.create(path, BIG_ROWS, BIG_DIM, "float32", init=rows, config=cfg)
    else:
        s = ts.create(path, BIG_ROWS, BIG_DIM, "float32", config=cfg)
        s.update(np.arange(BIG_ROWS), rows)
    with s:
        np.testing.assert_array_equal(s.lookup(np.arange(BIG_ROWS)), rows)
        assert s.check().ok
    assert (path / "data.mdb").stat().st_size > 4 << 20
    with ts.open(path, config=cfg, readonly=True) as ro:
        np.testing.assert_array_equal(ro.lookup(np.arange(BIG_ROWS)), rows)


def test_map_full_at_ceiling(tmp_path):
    path = tmp_path / "full"
    cfg = tiny(map_size=1 << 20, max_map_size=1 << 20)
    rng = np.random.default_rng(9)
    model = np.zeros((BIG_ROWS, BIG_DIM), np.float32)
    with ts.create(path, BIG_ROWS, BIG_DIM, "float32", config=cfg) as s:
        early = rng.standard_normal((1000, BIG_DIM)).astype(np.float32)
        s.update(np.arange(1000), early)
        model[:1000] = early
        s.flush()
        s.lookup([0, 1, 2, 5000, 5001])
        before = s.stats()
        err = expect(ts.DiskFullError, OSError, "max_map_size=1048576", s.update,
                     np.arange(1000, BIG_ROWS), rng.standard_normal((BIG_ROWS - 1000, BIG_DIM)).astype(np.float32))
        assert str(path) in str(err)
        assert {k: v for k, v in s.stats().items() if k != "disk"} == \
            {k: v for k, v in before.items() if k != "disk"}
        np.testing.assert_array_equal(s.lookup(np.arange(BIG_ROWS)), model)  # nothing half-written
        assert s.check().ok
        s.update([5], np.full((1, BIG_DIM), 2.0, np.float32))  # small writes still fit
        model[5] = 2.0
    with ts.open(path, config=cfg, readonly=True) as ro:
        np.testing.assert_array_equal(ro.lookup(np.arange(BIG_ROWS)), model)
        assert ro.check().ok


def test_create_that_hits_map_ceiling_leaves_no_store(tmp_path):
    path = tmp_path / "full"
    cfg = tiny(map_size=1 << 20, max_map_size=1 << 20)
    rows = np.random.default_rng(10).standard_normal((BIG_ROWS, BIG_DIM)).astype(np.float32)
    expect(ts.DiskFullError, OSError, "max_map_size", ts.create, path, BIG_ROWS, BIG_DIM, "float32",
           init=rows, config=cfg)
    try:
        s = ts.open(path, config=cfg, readonly=True)
    except ts.NotAStoreError:
        return
    with s:
        raise AssertionError(f"a failed create left an openable store; row 0 reads {s.lookup(0)[:3]}")


# -- torch ids and rows --------------------------------------------------------------------------------
def test_torch_bad_ids_and_rows(h):
    torch = pytest.importorskip("torch")
    before = h.stats()
    for ids, fragment in ((torch.tensor([1.0, 2.0]), "torch.float32"),
                          (torch.tensor([True]), "torch.bool"),
                          (torch.tensor([1 + 0j]), "torch.complex")):
        for op in ("lookup", "update"):
            err = expect(ts.IdTypeError, TypeError, "row ids must be integers",
                         (lambda i: h.store.lookup(i)) if op == "lookup"
                         else (lambda i: h.store.update(i, torch.ones(tuple(i.shape) + (DIM,)))), ids)
            assert fragment in str(err)
    for ids, bad, pos in ((torch.tensor([1, NUM_ROWS]), NUM_ROWS, 1),
                          (torch.tensor([3, -1], dtype=torch.int32), -1, 1),
                          (torch.tensor([[0, 1], [2, 10**12]]), 10**12, 3),
                          (torch.tensor([5, 2**63 + 5], dtype=torch.uint64), 2**63 + 5, 1)):
        msg = re.escape(f"row id {bad} at position {pos} ")
        expect(ts.IdOutOfRangeError, IndexError, msg, h.store.lookup, ids)
        expect(ts.IdOutOfRangeError, IndexError, msg, h.store.update, ids,
               torch.ones(tuple(ids.shape) + (DIM,)))
    ids = torch.tensor(IDS3)
    expect(ts.RowShapeError, ValueError, "floating point", h.store.update, ids, torch.ones((3, DIM), dtype=torch.int64))
    expect(ts.RowShapeError, ValueError, "shape", h.store.update, ids, torch.ones((3, DIM + 1)))
    expect(ts.NonFiniteRowError, ValueError, re.escape("row id 5 (rows[2]) holds NaN"), h.store.update, ids,
           torch.tensor(with_value((3, DIM), (2, 1), np.nan)))
    h.assert_unchanged(before)
    h.close_and_verify()


def test_torch_float32_overflowing_float16(tmp_path):
    torch = pytest.importorskip("torch")
    with ts.create(tmp_path / "s", NUM_ROWS, DIM, "float16", config=tiny()) as s:
        for dtype in (torch.float32, torch.bfloat16):
            rows = torch.ones((3, DIM), dtype=dtype)
            rows[1, 0] = 1e6
            expect(ts.NonFiniteRowError, ValueError,
                   re.escape("row id 4 (rows[1]) holds NaN or Inf (after casting float32 to float16)"),
                   s.update, torch.tensor(IDS3), rows)
        np.testing.assert_array_equal(read_all(s), np.zeros((NUM_ROWS, DIM), np.float16))
        assert s.check().ok


# -- docs/BAD_INPUT.md lists every case ------------------------------------------------------------
def test_bad_input_doc_lists_every_case():
    """Each case of the lists above appears (by its pytest id) in docs/BAD_INPUT.md."""
    doc = (REPO / "docs" / "BAD_INPUT.md").read_text()
    cases = [p.id for table in (OUT_OF_RANGE, NON_INTEGER, BAD_SHAPE, BAD_DTYPE, NONFINITE, BAD_CONFIG, BAD_FORMAT,
                                BAD_CREATE, META_DAMAGE) for p in table]
    cases += list(NOT_A_STORE) + CORRUPTIONS + sorted(CLOSED_CALLS)
    missing = [c for c in cases if f"`{c}`" not in doc]
    assert not missing, f"docs/BAD_INPUT.md lacks {missing}"
    tests = re.findall(r"^def (test_\w+)", (REPO / "tests" / "test_bad_input.py").read_text(), re.M)
    undocumented = [t for t in tests if t not in doc and t != "test_bad_input_doc_lists_every_case"
                    and t != "test_fixture_spreads_rows_over_tiers"]
    assert not undocumented, f"docs/BAD_INPUT.md names no row for {undocumented}"
