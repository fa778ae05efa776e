"""Corruption, foreign files, salvage and full disks.

Damage is done the way it happens: bytes flipped in ``data.mdb`` itself (not
through LMDB), files cut short, LMDB pages zeroed, metadata records rewritten.
Every case must give a named error (never a crash of the process), ``check()``
must list every corrupt row, and ``salvage()`` must copy every readable row.
tests/test_bad_input.py covers the metadata record field by field, other
non-stores, and the contradicting dim/dtype cases.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest

import tierstore as ts
from tierstore.salvage import SalvageReport, salvage

REPO = Path(__file__).resolve().parents[1]
NUM_ROWS, DIM = 3000, 16
TINY = {"device_rows": 2, "ram_rows": 6}
PAGE = 4096


def tiny(**kw):
    return ts.StoreConfig(**{**TINY, **kw})


def child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_py(code, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=child_env())


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tierstore", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=child_env())


@pytest.fixture(scope="module")
def table():
    return np.random.default_rng(42).standard_normal((NUM_ROWS, DIM)).astype(np.float32)


@pytest.fixture
def store_path(tmp_path, table):
    """A closed store whose every row was written once (each value lies once in data.mdb)."""
    path = tmp_path / "store"
    ts.create(path, NUM_ROWS, DIM, "float32", init=table, config=tiny()).close()
    return path


@pytest.fixture
def mature_path(tmp_path, table):
    """A closed store after many update/flush cycles: LMDB has reused freed pages, so the
    newest B-tree root is not the last page of the file. Returns (path, table)."""
    path = tmp_path / "mature"
    model = table.copy()
    rng = np.random.default_rng(7)
    with ts.create(path, NUM_ROWS, DIM, "float32", init=table, config=tiny()) as s:
        for _ in range(150):
            ids = rng.integers(0, NUM_ROWS, 40)
            rows = rng.standard_normal((40, DIM)).astype(np.float32)
            s.update(ids, rows)
            model[ids] = rows
            s.flush()
    return path, model


def read_all(store):
    return store.lookup(np.arange(store.num_rows))


def live_offset(blob: bytes, needle: bytes) -> int:
    """Where ``needle`` lies in a live node of an LMDB leaf page.

    LMDB leaves stale copies of moved nodes in a page's free gap (we open it with
    meminit=False): a live node lies at or above the page's ``mp_upper`` (page
    header: pgno u64, pad u16, flags u16 at 10, lower u16 at 12, upper u16 at 14).
    """
    live, at = [], blob.find(needle)
    while at >= 0:
        page = at // PAGE * PAGE
        flags, upper = (int.from_bytes(blob[page + o:page + o + 2], "little") for o in (10, 14))
        if flags & 0x02 and at - page >= upper:
            live.append(at)
        at = blob.find(needle, at + 1)
    assert len(live) == 1, f"{len(live)} live copies"
    return live[0]


def flip_in_file(path, needle: bytes, offset: int, mask: int = 0x10):
    """Flip one byte of the live copy of ``needle`` in data.mdb: bit rot, under LMDB's feet."""
    data = path / "data.mdb"
    at = live_offset(data.read_bytes(), needle)
    with open(data, "r+b") as f:
        f.seek(at + offset)
        byte = f.read(1)[0]
        f.seek(at + offset)
        f.write(bytes([byte ^ mask]))


def assert_salvaged(src, dst, expected, lost, report):
    """``dst`` holds ``expected`` except the ``lost`` rows, which have no record: they read as
    the constant init, or, in a store where every row had a record, raise CorruptRowError."""
    assert isinstance(report, SalvageReport)
    np.testing.assert_array_equal(report.unreadable_ids, np.asarray(sorted(lost), dtype=np.int64))
    lost = sorted(lost)
    with ts.open(dst, readonly=True, config=tiny()) as out:
        keep = np.setdiff1d(np.arange(len(expected)), lost)
        np.testing.assert_array_equal(out.lookup(keep), expected[keep])
        check = out.check()
        if not lost:
            assert check.ok
        elif out.format.every_row_stored:
            with pytest.raises(ts.CorruptRowError, match="record is missing") as info:
                out.lookup(lost)
            assert info.value.row_ids == lost
            missing = [i for a, b in check.missing_runs for i in range(a, b)]
            assert missing == lost and not check.corrupt_ids
        else:
            assert (out.lookup(lost) == out.format.init_value).all() and check.ok


# -- flipped bytes in values ---------------------------------------------------------------------
BAD_ROWS = [0, 1, 2, 3, 77, 78, 500, 1234, 2047, 2048, 2999]


def test_bit_rot_in_values(store_path, table, tmp_path):
    for k, rid in enumerate(BAD_ROWS):
        # payload bytes (k even) or the CRC itself right after the payload (k odd)
        flip_in_file(store_path, table[rid].tobytes(), 5 if k % 2 == 0 else DIM * 4 + 1)
    with ts.open(store_path, config=tiny()) as s:
        for rid in BAD_ROWS:
            with pytest.raises(ts.CorruptRowError, match=rf"corrupt row {rid}\b.*checksum") as info:
                s.lookup([rid])
            assert info.value.row_ids == [rid]
        with pytest.raises(ts.CorruptRowError) as info:  # a batch names all of its bad rows
            s.lookup(np.arange(NUM_ROWS))
        assert sorted(info.value.row_ids) == BAD_ROWS
        good = np.setdiff1d(np.arange(NUM_ROWS), BAD_ROWS)
        np.testing.assert_array_equal(s.lookup(good), table[good])
        report = s.check()
        assert report.corrupt_ids == BAD_ROWS and not report.ok
        assert "corrupt row ids: 0-3, 77-78, 500, 1234, 2047-2048, 2999" in str(report)
    out = run_cli("check", store_path)
    assert out.returncode == 1, out.stderr
    assert "11 corrupt rows" in out.stdout and "0-3, 77-78, 500, 1234, 2047-2048, 2999" in out.stdout
    before = (store_path / "data.mdb").read_bytes()
    report = salvage(store_path, tmp_path / "rescued")
    assert (store_path / "data.mdb").read_bytes() == before, "salvage wrote to its source"
    assert report.rows_copied == NUM_ROWS - len(BAD_ROWS) and not report.ok
    assert "unreadable row ids: 0-3, 77-78, 500, 1234, 2047-2048, 2999" in str(report)
    assert_salvaged(store_path, tmp_path / "rescued", table, BAD_ROWS, report)


def test_values_of_the_wrong_length_are_corrupt(store_path, table):
    """A raw value with bytes after a valid frame, or cut short, is damage: the one-pass check
    of fixed-width frames leaves such a batch to the general one, which names the row."""
    env = lmdb.open(str(store_path), max_dbs=2)
    with env.begin(write=True) as txn:
        db = env.open_db(b"rows", txn=txn)
        for rid, cut in ((7, None), (2100, -1)):
            key = rid.to_bytes(8, "big")
            value = txn.get(key, db=db)
            txn.put(key, value + b"\0\0\0\0" if cut is None else value[:cut], db=db)
    env.close()
    with ts.open(store_path, config=tiny()) as s:
        for rid in (7, 2100):
            with pytest.raises(ts.CorruptRowError) as info:
                s.lookup([rid])
            assert info.value.row_ids == [rid]
        with pytest.raises(ts.CorruptRowError) as info:
            s.lookup(np.arange(NUM_ROWS))
        assert sorted(info.value.row_ids) == [7, 2100]
        good = np.setdiff1d(np.arange(NUM_ROWS), [7, 2100])
        np.testing.assert_array_equal(s.lookup(good), table[good])


def test_check_lists_every_corrupt_row_across_scan_chunks(tmp_path):
    """More rows than one check() chunk (65536), a thousand of them damaged: all are listed."""
    n = 70_000
    path = tmp_path / "big"
    ts.create(path, n, 2, "float32", init=np.ones((n, 2), np.float32), config=tiny()).close()
    bad = np.sort(np.random.default_rng(1).choice(n, 1000, replace=False))
    env = lmdb.open(str(path), max_dbs=2)
    db = env.open_db(b"rows")
    with env.begin(write=True, db=db) as txn:
        for rid in bad:
            key = int(rid).to_bytes(8, "big")
            value = bytearray(txn.get(key))
            value[2] ^= 0x01
            txn.put(key, bytes(value))
    env.close()
    with ts.open(path, readonly=True, config=tiny()) as ro:
        report = ro.check()
    assert report.rows_checked == n and report.corrupt_ids == bad.tolist()
    listed = []  # the text names every one of them too, runs as a-b
    for part in str(report).splitlines()[1].removeprefix("corrupt row ids: ").split(", "):
        a, _, b = part.partition("-")
        listed += range(int(a), int(b or a) + 1)
    assert listed == bad.tolist()


def test_an_update_repairs_a_corrupt_row(store_path, table):
    """Writing a row replaces its corrupt record: the store is healthy again."""
    flip_in_file(store_path, table[10].tobytes(), 3)
    with ts.open(store_path, config=tiny()) as s:
        s.update([10], np.full((1, DIM), 2.5, np.float32))  # not resident: written at once
        np.testing.assert_array_equal(s.lookup([10]), np.full((1, DIM), 2.5, np.float32))
        assert s.check().ok


# -- truncated data files ------------------------------------------------------------------------------
TRUNCATION_PROBE = r'''
import json, shutil, sys
import numpy as np
import tierstore as ts
src, work = sys.argv[1], sys.argv[2]
size = __import__("os").path.getsize(src + "/data.mdb")
results = {}
for cut in [0, 100, 8191, 8192, 8192 + 100, 3 * 4096, size // 3, size // 2, size - 4096, size - 1]:
    for readonly in (True, False):
        d = f"{work}/cut{cut}-{readonly}"
        shutil.copytree(src, d)
        with open(d + "/data.mdb", "r+b") as f:
            f.truncate(cut)
        try:
            with ts.open(d, readonly=readonly) as s:
                s.lookup(np.arange(s.num_rows))
                outcome = ["opened", s.check().ok]
        except ts.TierstoreError as exc:
            outcome = [type(exc).__name__, str(exc)]
        results[f"{cut}-{readonly}"] = outcome
print(json.dumps(results))
'''


def test_truncated_data_file_is_a_named_error_not_sigbus(store_path, tmp_path):
    """Reading a page past the end of a cut-short file would be SIGBUS: it is refused at open.
    (Run in a child process: a SIGBUS would kill the test runner.)"""
    work = tmp_path / "work"
    work.mkdir()
    out = run_py(TRUNCATION_PROBE, store_path, work)
    assert out.returncode == 0, f"the process died (rc {out.returncode}): {out.stderr[-2000:]}"
    results = json.loads(out.stdout)
    size = (store_path / "data.mdb").stat().st_size
    for key, (kind, message) in results.items():
        cut = int(key.split("-")[0])
        if cut < 8192:
            assert kind == "NotAStoreError" and "too short to be an LMDB database" in message, key
        else:
            assert kind == "CorruptStoreError", (key, kind, message)
            assert f"truncated ({cut} bytes, LMDB needs {size})" in message, (key, message)
    cli = run_cli("check", work / f"cut{size // 2}-True")
    assert cli.returncode == 2 and "truncated" in cli.stderr


def test_salvage_a_truncated_store(mature_path, tmp_path):
    """When the cut spares LMDB's table of tables, salvage copies every row still reachable."""
    path, model = mature_path
    size = (path / "data.mdb").stat().st_size
    with open(path / "data.mdb", "r+b") as f:
        f.truncate(size - 2 * PAGE)
    with pytest.raises(ts.CorruptStoreError, match="truncated"):
        ts.open(path, readonly=True)
    report = salvage(path, tmp_path / "rescued")
    assert (path / "data.mdb").stat().st_size == size - 2 * PAGE  # the source is untouched
    assert "truncated" in report.problems[0] and "2 missing pages" in report.problems[0]
    lost = report.unreadable_ids
    assert 0 < len(lost) <= 2 * PAGE // (DIM * 4)  # at most the rows of two leaf pages
    assert_salvaged(path, tmp_path / "rescued", model, lost.tolist(), report)
    assert not any(p.name.startswith(".salvage-") for p in tmp_path.iterdir())  # temp copy gone


def test_salvage_when_the_table_of_tables_is_gone(store_path, tmp_path):
    size = (store_path / "data.mdb").stat().st_size
    with open(store_path / "data.mdb", "r+b") as f:
        f.truncate(size // 2)  # a fresh store's newest pages are its last ones
    with pytest.raises(ts.CorruptStoreError, match="nothing can be salvaged"):
        salvage(store_path, tmp_path / "rescued")
    assert not (tmp_path / "rescued" / "data.mdb").exists()


# -- damaged LMDB pages -------------------------------------------------------------------------------
def leaf_page_of(path, needle: bytes) -> int:
    return live_offset((path / "data.mdb").read_bytes(), needle) // PAGE


def zero_page(path, page: int):
    with open(path / "data.mdb", "r+b") as f:
        f.seek(page * PAGE)
        f.write(bytes(PAGE))


def test_zeroed_btree_page(store_path, table, tmp_path):
    """A leaf page of the rows table zeroed: its rows give CorruptStoreError, the rest read;
    salvage copies every other row and names exactly the rows of that page."""
    page = leaf_page_of(store_path, table[1500].tobytes())
    blob = (store_path / "data.mdb").read_bytes()
    on_page = [r for r in range(NUM_ROWS) if live_offset(blob, table[r].tobytes()) // PAGE == page]
    zero_page(store_path, page)
    with ts.open(store_path, readonly=True, config=tiny()) as ro:
        with pytest.raises(ts.CorruptStoreError, match="LMDB pages are damaged"):
            ro.lookup([1500])
        others = np.setdiff1d(np.arange(NUM_ROWS), on_page)
        np.testing.assert_array_equal(ro.lookup(others), table[others])
    report = salvage(store_path, tmp_path / "rescued")
    assert report.unreadable_ids.tolist() == on_page
    assert_salvaged(store_path, tmp_path / "rescued", table, on_page, report)


CHECK_ZEROED = r'''
import sys
import tierstore as ts
with ts.open(sys.argv[1], readonly=True) as ro:
    try:
        report = ro.check()
    except ts.CorruptStoreError as exc:
        print("error", exc)
    else:
        print("report", report.ok)
'''


def test_check_on_a_zeroed_btree_page_reports_instead_of_aborting(store_path, table):
    """LMDB's cursor asserts (aborts) stepping onto a zeroed sibling page: check() walks in a
    child process, so the caller lives and reports the damage."""
    zero_page(store_path, leaf_page_of(store_path, table[1500].tobytes()))
    out = run_py(CHECK_ZEROED, store_path)
    assert out.returncode == 0, f"check() killed the process (rc {out.returncode}): {out.stderr[-300:]}"
    assert out.stdout.startswith("report False"), out.stdout


# -- metadata --------------------------------------------------------------------------------------------
def rewrite_meta(path, change):
    env = lmdb.open(str(path), max_dbs=2)
    try:
        db = env.open_db(b"meta")
        with env.begin(write=True, db=db) as txn:
            txn.put(b"meta", change(bytes(txn.get(b"meta"))))
    finally:
        env.close()


def framed(doc) -> bytes:
    payload = json.dumps(doc, sort_keys=True).encode()
    return payload + zlib.crc32(payload, zlib.crc32(b"meta")).to_bytes(4, "little")


def test_salvage_with_damaged_metadata_needs_the_shape(store_path, table, tmp_path):
    rewrite_meta(store_path, lambda v: v[:10] + bytes([v[10] ^ 1]) + v[11:])
    with pytest.raises(ts.CorruptStoreError, match="metadata record is damaged"):
        ts.open(store_path, readonly=True)
    with pytest.raises(ts.CorruptStoreError, match="pass num_rows, dim, dtype"):
        salvage(store_path, tmp_path / "rescued")
    with pytest.raises(ts.ConfigError, match="dtype must be one of"):
        salvage(store_path, tmp_path / "rescued", num_rows=NUM_ROWS, dim=DIM, dtype="int32")
    report = salvage(store_path, tmp_path / "rescued", num_rows=NUM_ROWS, dim=DIM, dtype="float32")
    assert report.ok and report.rows_copied == NUM_ROWS
    assert_salvaged(store_path, tmp_path / "rescued", table, [], report)


def test_salvage_checks_hints_against_readable_metadata(store_path, tmp_path):
    with pytest.raises(ts.ConfigError, match="dim 16, not 8"):
        salvage(store_path, tmp_path / "rescued", dim=8)
    with pytest.raises(ts.ConfigError, match="dtype is float32"):
        salvage(store_path, tmp_path / "rescued", dtype="float16")
    assert not (tmp_path / "rescued" / "data.mdb").exists()


@pytest.mark.parametrize("version", [0, -3])
def test_metadata_with_an_unknown_older_version_is_refused(store_path, version):
    rewrite_meta(store_path, lambda v: framed({**json.loads(v[:-4]), "version": version}))
    with pytest.raises(ts.FormatVersionError):
        ts.open(store_path, readonly=True).close()


def test_damaged_zstd_dictionary(tmp_path, table):
    path = tmp_path / "z"
    ts.create(path, NUM_ROWS, DIM, "float32", init=table, config=tiny(),
              codec={"id": "zstd", "level": 3, "dict_size": 4096}).close()
    env = lmdb.open(str(path), max_dbs=2)
    db = env.open_db(b"meta")
    with env.begin(write=True, db=db) as txn:
        value = bytearray(txn.get(b"zstd_dict"))
        value[100] ^= 0x04
        txn.put(b"zstd_dict", bytes(value))
    env.close()
    for readonly in (True, False):
        with pytest.raises(ts.CorruptStoreError, match="zstd dictionary record fails its checksum"):
            ts.open(path, readonly=readonly)
    env = lmdb.open(str(path), max_dbs=2)
    db = env.open_db(b"meta")
    with env.begin(write=True, db=db) as txn:
        txn.delete(b"zstd_dict")
    env.close()
    with pytest.raises(ts.CorruptStoreError, match="zstd dictionary record is missing"):
        ts.open(path, readonly=True)


# -- salvage in general -----------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["raw", "int8", {"id": "zstd", "level": 3, "dict_size": 4096}],
                         ids=["raw", "int8", "zstd-dict"])
def test_salvage_of_a_healthy_store_is_exact(tmp_path, table, codec):
    src = tmp_path / "src"
    with ts.create(src, NUM_ROWS, DIM, "float32", init=table, config=tiny(), codec=codec) as s:
        s.update([5, 6], np.full((2, DIM), 3.0, np.float32))
        expected = read_all(s)  # int8 is lossy: what the store gives back
    report = salvage(src, tmp_path / "dst")
    assert report.ok and report.rows_copied == NUM_ROWS and "0 rows unreadable" in str(report)
    with ts.open(tmp_path / "dst", readonly=True) as out:
        assert out.codec.get_config() == ts.open(src, readonly=True).codec.get_config()
        np.testing.assert_array_equal(read_all(out), expected)


def test_salvage_keeps_a_constant_init(tmp_path):
    src = tmp_path / "src"
    with ts.create(src, 10_000, 4, "float32", init=1.5, config=tiny()) as s:
        s.update([3, 9000], np.full((2, 4), 7.0, np.float32))
    report = salvage(src, tmp_path / "dst")
    assert report.rows_copied == 2 and report.ok
    with ts.open(tmp_path / "dst", readonly=True) as out:
        rows = read_all(out)
    assert (rows[[3, 9000]] == 7.0).all() and (np.delete(rows, [3, 9000], axis=0) == 1.5).all()


def test_salvage_refusals(store_path, tmp_path):
    with pytest.raises(ts.NotAStoreError, match="no such store"):
        salvage(tmp_path / "nothing", tmp_path / "dst")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(np.random.default_rng(0).bytes(3 * PAGE))
    with pytest.raises(ts.NotAStoreError, match="not an LMDB database"):
        salvage(tmp_path / "junk", tmp_path / "dst")
    with pytest.raises(ts.ConfigError, match="not the source itself"):
        salvage(store_path, store_path)
    ts.create(tmp_path / "taken", 10, 4).close()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        salvage(store_path, tmp_path / "taken")
    with ts.open(store_path, config=tiny()):
        with pytest.raises(ts.StoreLockedError, match="a writer has this store open"):
            salvage(store_path, tmp_path / "dst")
    assert not (tmp_path / "dst" / "data.mdb").exists()
    report = salvage(store_path, tmp_path / "taken", overwrite=True)
    assert report.ok


# -- full disks ---------------------------------------------------------------------------------------------
FULL_N, FULL_DIM = 3000, 64


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (root only); the test is skipped where it cannot be mounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill_disk(folder: Path) -> Path:
    """Write a file until the file system has no room left; returns it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    f.write(bytes(block))
            except OSError as exc:
                assert exc.errno in (errno.ENOSPC, errno.EDQUOT), exc
    return filler


def full_disk_scenario(path, cfg, fill, free):
    """Fill the disk under an open store: nothing flushed is lost, dirty rows evicted while the
    disk is full wait in memory, flush() raises DiskFullError, and after ``free`` it succeeds.
    (``cfg`` has the lru policy, so a scan of new rows surely evicts the dirty ones.)"""
    rng = np.random.default_rng(5)
    table = rng.standard_normal((FULL_N, FULL_DIM)).astype(np.float32)
    s = ts.create(path, FULL_N, FULL_DIM, "float32", init=table, config=cfg)
    model = table.copy()
    early = np.arange(100, 140)
    model[early] = 2.0
    s.update(early, model[early])
    s.flush()
    flushed = model.copy()
    fill(s)
    # a write straight to disk fails whole, and changes nothing
    before = s.stats()
    with pytest.raises(ts.DiskFullError, match="no space left|max_map_size"):
        s.update(np.arange(1000, 1200), np.ones((200, FULL_DIM), np.float32))
    assert s.stats()["writebacks"] == before["writebacks"]
    # rows updated in memory, then evicted: the write-back fails, the rows wait in memory
    dirty = np.arange(10, 16)
    s.lookup(dirty)
    s.lookup(dirty)
    assert set(dirty.tolist()) <= set(s._state.resident()), "the rows to dirty must be in memory"
    s.update(dirty, np.full((len(dirty), FULL_DIM), 3.0, np.float32))
    model[dirty] = 3.0
    s.lookup(np.arange(2000, 2050))                     # evicts every dirty row
    assert s.stats()["pending_writebacks"] == len(dirty)
    assert not set(dirty.tolist()) & set(s._state.resident())
    np.testing.assert_array_equal(s.lookup(np.arange(FULL_N)), model)  # served from memory
    with pytest.raises(ts.DiskFullError):
        s.flush()
    with pytest.raises(ts.DiskFullError):
        s.flush()                                       # and again: nothing was dropped
    with ts.open(path, readonly=True, config=cfg) as ro:  # what is on disk: the last flush, whole
        np.testing.assert_array_equal(read_all(ro), flushed)
        assert ro.check().ok
    # a close that cannot write keeps the store open with every row (it used to drop them)
    with pytest.raises(ts.DiskFullError):
        s.close()
    with pytest.raises(ts.DiskFullError):
        with s:                                         # the end of a with block: the same
            np.testing.assert_array_equal(s.lookup(np.arange(FULL_N)), model)
    assert "closed" not in repr(s) and s.stats()["pending_writebacks"] == len(dirty)
    np.testing.assert_array_equal(s.lookup(np.arange(FULL_N)), model)
    free(s)
    s.close()                                           # persists them, then closes
    with pytest.raises(ts.ClosedStoreError):
        s.lookup([0])
    with ts.open(path, readonly=True, config=cfg) as ro:
        np.testing.assert_array_equal(read_all(ro), model)
        assert ro.check().ok


def test_full_file_system(small_fs):
    holder = {}

    def fill(store):
        holder["filler"] = fill_disk(small_fs)

    def free(store):
        holder["filler"].unlink()

    full_disk_scenario(small_fs / "store", tiny(map_size=1 << 20, policy="lru"), fill, free)


def test_full_map_at_its_ceiling(tmp_path):
    """Where no small file system can be mounted: the map's ceiling stands in for the disk. A
    read transaction held open pins every page a write frees, so rewrites use up the map."""
    cfg = tiny(map_size=3 << 20, max_map_size=3 << 20, policy="lru")  # no remap: it would end the pin
    holder = {}

    def fill(store):
        holder["pin"] = store.disk.env.begin()
        rows = np.empty((500, FULL_DIM), np.float32)  # rewritten unchanged: the table stays
        store.disk.read_rows(np.arange(2500, 3000), rows, np.arange(500))
        for k in (500, 50, 5, 1):  # smaller and smaller writes, until not one row fits
            with pytest.raises(ts.DiskFullError, match="max_map_size"):
                for _ in range(1000):
                    store.disk.write_rows(np.arange(2500, 2500 + k), rows[:k])

    def free(store):
        holder["pin"].abort()
        store.disk.max_map_size = None  # as if the operator gave the disk more room

    full_disk_scenario(tmp_path / "store", cfg, fill, free)


def test_any_failed_writeback_keeps_the_rows(tmp_path):
    """Whatever error a write-back meets, the lookup completes and the rows wait in memory.
    (A bare lmdb.Error used to escape mid-move: the admitted rows' slots kept the evicted
    rows' bytes, so rows 50-52 read as rows 1-3 and rows 1-3 lost their update.)"""
    table = np.arange(400, dtype=np.float32).reshape(100, 4)
    path = tmp_path / "s"
    with ts.create(path, 100, 4, "float32", init=table, config=tiny(device_rows=1, ram_rows=2,
                                                                     policy="lru")) as s:
        s.lookup([1, 2, 3])
        s.update([1, 2, 3], np.full((3, 4), -1.0, np.float32))
        write = s.disk.write

        def broken(body):
            raise RuntimeError("the disk tier broke")
        s.disk.write = broken
        np.testing.assert_array_equal(s.lookup([50, 51, 52]), table[[50, 51, 52]])
        assert s.stats()["pending_writebacks"] == 3
        with pytest.raises(RuntimeError, match="broke"):
            s.flush()
        np.testing.assert_array_equal(s.lookup([50, 51, 52]), table[[50, 51, 52]])
        np.testing.assert_array_equal(s.lookup([1, 2, 3]), np.full((3, 4), -1.0, np.float32))
        s.disk.write = write
        s.flush()
        assert s.stats()["pending_writebacks"] == 0
    with ts.open(path, readonly=True) as ro:
        np.testing.assert_array_equal(ro.lookup([1, 2, 3, 50]),
                                      np.concatenate([np.full((3, 4), -1.0), table[[50]]]))
