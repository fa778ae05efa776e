"""Data safety: no silent wrong rows from damaged or crafted stores (issue 14, items 1-4, 8-10).

Each case is in docs/BAD_INPUT.md ("Data safety").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
from damage import delete_record, meta_txnids, roll_back

import tierstore as ts
from tierstore.salvage import salvage

REPO = Path(__file__).resolve().parents[1]
NUM_ROWS, DIM = 3000, 8
TINY = ts.StoreConfig(device_rows=2, ram_rows=6, map_size=1 << 22)


def child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


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


# -- 8. reader slots of readers killed inside a read --------------------------------------------
READER = r"""
import sys, time
import tierstore as ts
store = ts.open(sys.argv[1], ts.StoreConfig(device_rows=1, ram_rows=1), readonly=True)
txn = store.disk.env.begin()       # inside a read transaction
print("reading", flush=True)
time.sleep(600)
"""


def _killed_reader(path) -> int:
    """The pid of a reader SIGKILLed inside a read transaction (its slot left behind)."""
    proc = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE,
                            env=child_env())
    assert proc.stdout.readline().strip() == b"reading"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


READERS = r"""
import sys
import lmdb
env = lmdb.open(sys.argv[1], max_dbs=2, readonly=True)
print(" ".join(line.split()[0] for line in env.readers().splitlines()[1:] if line.strip()))
"""


def _reader_pids(path) -> set:
    """The pids in the store's reader table, read by another process (this one may have the
    environment open, and LMDB forbids a second one in a process)."""
    out = subprocess.run([sys.executable, "-c", READERS, str(path)], capture_output=True,
                         text=True, timeout=60, env=child_env())
    return set(map(int, out.stdout.split()))


def test_stale_readers_are_cleared_at_open_and_at_every_flush(stored):
    """A process that keeps the store open keeps LMDB from resetting its reader table, so a
    reader killed inside a read leaves its slot, pinning the pages of its snapshot."""
    path, table = stored
    holder = subprocess.Popen([sys.executable, "-c", LOCKED_OPEN, str(path)],
                              stdout=subprocess.PIPE, env=child_env())
    try:
        assert holder.stdout.readline().strip() == b"open"
        dead = _killed_reader(path)
        assert dead in _reader_pids(path)
        with ts.open(path, TINY) as store:                 # at open
            assert dead not in _reader_pids(path)
            dead = _killed_reader(path)                     # one killed while the writer runs
            assert dead in _reader_pids(path)
            store.update([3], np.zeros((1, DIM), np.float32))
            store.flush()                                   # at the flush
            assert dead not in _reader_pids(path)
    finally:
        holder.kill()
        holder.wait()


# -- 9. damaged LMDB files: a named error, never a crash of the process -----------------------
META_SWEEP = r"""
import sys
from pathlib import Path
import numpy as np
import tierstore as ts
path, mask = Path(sys.argv[1]), int(sys.argv[2])
cfg = ts.StoreConfig(device_rows=1, ram_rows=2, map_size=1 << 20)
data, commit = (path / "data.mdb").read_bytes(), (path / "last_commit").read_bytes()
for at in [page * 4096 + offset for page in (0, 1) for offset in range(160)]:
    damaged = bytearray(data)
    damaged[at] ^= mask
    (path / "data.mdb").write_bytes(bytes(damaged))
    (path / "last_commit").write_bytes(commit)
    (path / "lock.mdb").unlink(missing_ok=True)
    try:
        with ts.open(path, cfg) as store:
            store.lookup(np.arange(50))
            store.update([1], np.zeros((1, 4), np.float32))
            store.flush()
        print(at, "ok", flush=True)
    except ts.TierstoreError as exc:
        print(at, type(exc).__name__, flush=True)
"""


# 0xFF (the flip that once aborted) in the default run; the other masks under -m slow
@pytest.mark.parametrize("mask", [0xFF, pytest.param(0x40, marks=pytest.mark.slow),
                                  pytest.param(0x04, marks=pytest.mark.slow)])
def test_every_byte_of_the_meta_pages_flipped(tmp_path, mask):
    """Each byte of LMDB's two meta pages flipped in turn, then open, read, write, flush:
    a named error or a working store, and the process lives (one flip of 0xFF in the
    free-page tree's flags used to abort it on the first write)."""
    path = tmp_path / "s"
    ts.create(path, 50, 4, "float32", init=np.ones((50, 4)), config=TINY).close()
    with ts.open(path, TINY) as store:
        store.update([2], np.zeros((1, 4), np.float32))
    out = subprocess.run([sys.executable, "-c", META_SWEEP, str(path), str(mask)],
                         capture_output=True, text=True, timeout=300, env=child_env())
    lines = out.stdout.splitlines()
    assert out.returncode == 0, f"died after {lines[-1:]}: {out.stderr[-300:]}"
    assert len(lines) == 320
    outcomes = {line.split()[1] for line in lines}
    assert outcomes <= {"ok", "CorruptStoreError", "NotAStoreError", "RolledBackStoreError"}
    assert "CorruptStoreError" in outcomes and "ok" in outcomes


LOCKED_OPEN = r"""
import sys, time
import tierstore as ts
store = ts.open(sys.argv[1], ts.StoreConfig(device_rows=1, ram_rows=1), readonly=True)
print("open", flush=True)
time.sleep(600)
"""


def test_a_lock_file_cut_short_beside_an_open_process(stored):
    path, table = stored
    proc = subprocess.Popen([sys.executable, "-c", LOCKED_OPEN, str(path)], stdout=subprocess.PIPE,
                            env=child_env())
    try:
        assert proc.stdout.readline().strip() == b"open"
        os.truncate(path / "lock.mdb", 100)
        with pytest.raises(ts.CorruptStoreError, match="lock.mdb: cut short .100 bytes. while another"):
            ts.open(path, TINY, readonly=True)
    finally:
        proc.kill()
        proc.wait()
    with ts.open(path, TINY, readonly=True) as store:   # alone, LMDB rebuilds it
        np.testing.assert_array_equal(store.lookup([4]), table[[4]])


def test_check_survives_a_flipped_byte_in_a_leaf_page(stored):
    """check() walks in a child process: a fault there is reported as damage."""
    path, table = stored
    blob = bytearray((path / "data.mdb").read_bytes())
    at = blob.find(table[1500].tobytes())
    page = at // 4096 * 4096
    blob[page + 12] ^= 0x40     # the page's lower bound: LMDB reads nodes from garbage offsets
    (path / "data.mdb").write_bytes(bytes(blob))
    out = subprocess.run([sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True,
                         timeout=120, env=child_env())
    assert out.returncode == 0, out.stderr[-300:]
    assert out.stdout.startswith("report False"), out.stdout


CHECK = r"""
import sys
import tierstore as ts
with ts.open(sys.argv[1], readonly=True) as ro:
    print("report", ro.check().ok)
"""


# -- 10. a failed open releases everything; permission; a killed build -------------------------
def test_a_failed_open_leaves_no_lock_behind(stored):
    path, table = stored
    good = _read_meta(path)
    _rewrite_meta(path, _set(dtype="U1"))
    for readonly in (False, True, False):
        with pytest.raises(ts.CorruptStoreError, match="field dtype"):
            ts.open(path, TINY, readonly=readonly)
    _rewrite_meta(path, lambda doc: good)
    with ts.open(path, TINY) as store:                # the same process: no StoreLockedError
        np.testing.assert_array_equal(store.lookup([9]), table[[9]])
    out = subprocess.run([sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True,
                         timeout=120, env=child_env())
    assert out.stdout.startswith("report True"), out.stderr[-300:]


def _read_meta(path) -> bytes:
    env = lmdb.open(str(path), max_dbs=2, readonly=True)
    with env.begin(db=env.open_db(b"meta", create=False)) as txn:
        value = bytes(txn.get(b"meta"))[:-4]
    env.close()
    return value


AS_NOBODY = r"""
import contextlib, importlib, os, sys
import tierstore as ts
with contextlib.suppress(ImportError):   # lmdb loads it lazily, from where nobody may not read
    importlib.import_module("lmdb._envid")
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
for readonly in (True, False):
    try:
        ts.open(sys.argv[1], ts.StoreConfig(device_rows=1, ram_rows=1), readonly=readonly).close()
        print("opened")
    except ts.StorePermissionError as exc:
        print("StorePermissionError", isinstance(exc, PermissionError), exc)
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def test_a_store_the_user_may_not_write_says_permission(tmp_path):
    """Read-only files in a read-only folder: an open, read-only or not, says permission (it
    said CorruptStoreError). As root the child runs as nobody (root may write anything)."""
    root = Path(tempfile.mkdtemp(prefix="tierstore-perm-"))   # outside pytest's 0700 folder
    os.chmod(root, 0o755)
    path = root / "s"
    ts.create(path, 10, 4, "float32", config=TINY).close()
    os.chmod(path, 0o555)
    for name in os.listdir(path):
        os.chmod(path / name, 0o444)
    try:
        out = subprocess.run([sys.executable, "-c", AS_NOBODY, str(path)], capture_output=True,
                             text=True, timeout=120, env=child_env())
    finally:
        os.chmod(path, 0o755)
        shutil.rmtree(root)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stderr[-300:]
    assert all(line.startswith("StorePermissionError True") for line in lines), lines
    assert "permission denied" in lines[0]


def test_open_and_a_rerun_agree_after_a_killed_import(tmp_path):
    """An import into an existing empty folder, SIGKILLed part way: ``open`` said "not a
    store" while a re-run without --overwrite said "a store already exists"."""
    np.save(tmp_path / "src.npy", np.ones((3 * 65536, 4), np.float32))
    dst = tmp_path / "dst"
    dst.mkdir()

    def cli(*args, **env):
        return subprocess.run([sys.executable, "-m", "tierstore", *map(str, args)], text=True,
                              capture_output=True, timeout=300, env={**child_env(), **env})

    killed = cli("import", tmp_path / "src.npy", dst, "-q", TIERSTORE_KILL_AT="chunk")
    assert killed.returncode == -signal.SIGKILL
    with pytest.raises(ts.NotAStoreError, match="without tierstore metadata") as opened:
        ts.open(dst, TINY, readonly=True)
    rerun = cli("import", tmp_path / "src.npy", dst, "-q")
    assert rerun.returncode != 0
    assert "do not open as a store" in rerun.stderr and str(opened.value) in rerun.stderr
    assert "a store already exists" not in rerun.stderr
    assert cli("import", tmp_path / "src.npy", dst, "-q", "--overwrite").returncode == 0
    with ts.open(dst, TINY, readonly=True) as store:
        assert store.num_rows == 3 * 65536
