"""Concurrency: reader processes beside one writer process, and threads sharing one Store.

Rows carry a self-checking pattern (tools/crash_test.py ``pattern``): every
element derives from one version number and the row id, so a torn, mixed or
misplaced row is detected wherever it is read.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import crash_tool
import numpy as np
import pytest

import tierstore as ts

REPO = Path(__file__).resolve().parents[1]
_tool = crash_tool.load()
pattern, read_versions, DIM = _tool.pattern, _tool.read_versions, _tool.DIM


# the same two functions for the child processes
PATTERN_SRC = f"import numpy as np\n\nDIM = {DIM}\n\n" + inspect.getsource(pattern) + "\n" + inspect.getsource(read_versions)


def child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def python(code: str, *args, **popen_kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PATTERN_SRC + textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(), **popen_kwargs)


def make_store(path, num_rows, **config):
    return ts.create(path, num_rows, DIM, "float64", init=lambda a, b: pattern(np.arange(a, b), 0),
                     config=ts.StoreConfig(**config))


# -- processes: one writer, several readers ---------------------------------------------------------
WRITER = '''
import json, os, sys, time
from pathlib import Path
import tierstore as ts
path, work, seed, readers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = ts.open(path, config=ts.StoreConfig(device_rows=4, ram_rows=28, map_size=1 << 20))
n = store.num_rows
map0 = store.disk.env.info()["map_size"]
rng = np.random.default_rng(seed)
latest = np.zeros(n)

def publish(name, array):
    np.save(work / (name + ".tmp.npy"), array)
    os.replace(work / (name + ".tmp.npy"), work / (name + ".npy"))

def rounds_done():
    """Rounds each reader has finished, as it reported them (they count events, not time)."""
    counts = []
    for f in work.glob("rounds-*"):
        try:
            counts.append(int(f.read_text() or 0))
        except (OSError, ValueError):
            counts.append(0)
    return counts

def enough():
    """What the test needs to have happened: flushes, a grown map, readers' rounds (each
    alternates refresh and reopen: 4 rounds are 2 of each) all seen while writing."""
    counts = rounds_done()
    return (flushes >= 10 and store._disk.env.info()["map_size"] > map0
            and len(counts) == readers and min(counts) >= 4)

(work / "writer-ready").touch()
version, flushes = 0, 0
while not (version % 4 == 0 and enough()):
    version += 1
    ids = np.concatenate([rng.integers(0, 64, 16), rng.integers(0, n, 48)])
    store.update(ids, pattern(ids, version))
    latest[ids] = version
    store.lookup(rng.integers(0, n, 64))           # evicts dirty rows: write-backs
    if version % 4 == 0:
        store.flush()
        flushes += 1
        publish("floor", latest)                   # only after flush() returned
store.flush()
publish("floor", latest)
publish("final", latest)
stats = {"versions": version, "flushes": flushes + 1, "map_grew": store.disk.env.info()["map_size"] > map0,
         "writebacks": store.stats()["writebacks"]}
store.close()
(work / "done").touch()
print(json.dumps(stats))
'''

READER = '''
import json, os, sys, time
from pathlib import Path
import tierstore as ts
path, work, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
config = ts.StoreConfig(device_rows=4, ram_rows=60, map_size=1 << 20)
rng = np.random.default_rng(seed)
stats = {"refreshes": 0, "reopens": 0, "rows_checked": 0, "stale_rows_seen": 0, "rounds": 0}

def floor():
    try:
        return np.load(work / "floor.npy")
    except (FileNotFoundError, ValueError, EOFError, OSError):
        return None

def check_all(store, minimum):
    ids = rng.permutation(store.num_rows)
    for chunk in np.array_split(ids, 8):
        versions, torn = read_versions(chunk, store.lookup(chunk))
        assert not torn.any(), f"torn rows {chunk[torn][:10]}"
        if minimum is not None:
            behind = versions < minimum[chunk]
            assert not behind.any(), (f"rows {chunk[behind][:10]} miss flushed updates: "
                                      f"{versions[behind][:5]} < {minimum[chunk][behind][:5]}")
    stats["rows_checked"] += len(ids)

store = ts.open(path, readonly=True, config=config)
last_floor = None
while not (work / "done").exists():
    stats["rounds"] += 1
    for _ in range(4):                          # cached reads: never torn, maybe stale
        ids = rng.integers(0, store.num_rows, 64)
        versions, torn = read_versions(ids, store.lookup(ids))
        assert not torn.any(), f"torn rows {ids[torn][:10]}"
        if last_floor is not None:
            stats["stale_rows_seen"] += int((versions < last_floor[ids]).sum())
        if rng.random() < 0.3:
            store.prefetch(rng.integers(0, store.num_rows, 128))
    minimum = last_floor = floor()              # read before refreshing: flushed by then
    if stats["rounds"] % 2:
        store.refresh()
        stats["refreshes"] += 1
    else:
        store.close()
        store = ts.open(path, readonly=True, config=config)
        stats["reopens"] += 1
    check_all(store, minimum)
    assert store.check().ok
    (work / f"rounds-{seed}.tmp").write_text(str(stats["rounds"]))
    os.replace(work / f"rounds-{seed}.tmp", work / f"rounds-{seed}")
store.refresh()
final = np.load(work / "final.npy")
ids = np.arange(store.num_rows)
versions, torn = read_versions(ids, store.lookup(ids))
assert not torn.any() and np.array_equal(versions, final), "the final state differs"
store.close()
print(json.dumps(stats))
'''


def test_readers_beside_a_writer(tmp_path):
    """Three reader processes look up while a writer updates and flushes: never a torn row;
    after refresh() or a reopen, every flushed update is seen; a second writer is refused.
    The writer goes on until each reader reports 4 rounds (2 refreshes, 2 reopens) and it
    has flushed 10 times and grown the map: events counted, not seconds (a fixed 6 s was
    too short for the readers on a busy 2-core machine about half the time)."""
    path, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    num_rows = 20_000
    make_store(path, num_rows, device_rows=4, ram_rows=28).close()
    writer = python(WRITER, path, work, 1, 3)
    readers = [python(READER, path, work, 10 + k) for k in range(3)]
    try:
        while not (work / "writer-ready").exists():
            assert writer.poll() is None, writer.communicate()
            threading.Event().wait(0.05)
        with pytest.raises(ts.StoreLockedError, match="another writer"):
            ts.open(path)
        hang_guard = time.monotonic() + 600
        while writer.poll() is None:       # a reader that fails would keep the writer waiting
            for r in readers:
                assert r.poll() in (None, 0), r.communicate()
            assert time.monotonic() < hang_guard, "the writer never saw the readers' rounds"
            threading.Event().wait(0.05)
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        wstats = json.loads(out)
        rstats = []
        for r in readers:
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            rstats.append(json.loads(out))
    finally:
        for p in [writer, *readers]:
            if p.poll() is None:
                p.kill()
                p.communicate()
    print("writer:", wstats)
    print("readers:", rstats)
    assert wstats["flushes"] >= 10 and wstats["writebacks"] > 0
    assert wstats["map_grew"], "the writer never grew the map: readers never had to adopt it"
    for s in rstats:
        assert s["refreshes"] >= 2 and s["reopens"] >= 2, s
    with ts.open(path, readonly=True) as ro:
        versions, torn = read_versions(np.arange(num_rows), ro.lookup(np.arange(num_rows)))
        assert not torn.any()
        np.testing.assert_array_equal(versions, np.load(work / "final.npy"))
        assert ro.check().ok


READER_WAITING = '''
import sys
import tierstore as ts
store = ts.open(sys.argv[1], readonly=True, config=ts.StoreConfig(device_rows=2, ram_rows=2, map_size=1 << 20))
n = store.num_rows
print(read_versions([0], store.lookup([0]))[0][0], flush=True)
sys.stdin.readline()  # meanwhile the writer grows the file far past this reader's map
store.refresh()       # row 0 is cached at version 0
versions, torn = read_versions(np.arange(n), store.lookup(np.arange(n)))
report = store.check()
print(int(torn.sum()), int(versions.min()), report.ok, report.rows_checked, flush=True)
'''


def test_reader_adopts_a_map_the_writer_grew(tmp_path):
    """A reader maps the file as it was at open; after the writer grew it, LMDB says
    MDB_MAP_RESIZED, and the reader adopts the new size (before, lookups failed)."""
    path = tmp_path / "store"
    n = 20_000
    make_store(path, n, device_rows=2, ram_rows=2, map_size=1 << 20).close()
    size0 = (path / "data.mdb").stat().st_size
    reader = python(READER_WAITING, path, stdin=subprocess.PIPE)
    try:
        assert reader.stdout.readline().strip() == "0.0", reader.stderr.read()
        with ts.open(path, config=ts.StoreConfig(device_rows=2, ram_rows=2, map_size=1 << 20)) as w:
            w.update(np.arange(n), pattern(np.arange(n), 5))  # one transaction rewrites every row
        assert (path / "data.mdb").stat().st_size > 1.5 * size0, "the file did not grow"
        out, err = reader.communicate("\n", timeout=60)
        assert reader.returncode == 0, err
        assert out.split() == ["0", "5", "True", str(n)]
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()


# -- one process: read-only caching and refresh() --------------------------------------------------
def test_readonly_store_caches_until_refresh(tmp_path):
    path = tmp_path / "store"
    cfg = ts.StoreConfig(device_rows=16, ram_rows=64)  # room for every row it reads: no evictions
    with make_store(path, 500, device_rows=4, ram_rows=12) as w:
        ro = ts.open(path, readonly=True, config=cfg)  # shares the writer's LMDB environment
        cached = np.arange(10)
        ro.lookup(cached)                              # now in ro's memory tiers
        staged = np.arange(100, 110)
        assert ro.prefetch(staged).wait(timeout=30) == 10   # now in ro's staging area
        fresh = np.arange(200, 210)
        everything = np.concatenate([cached, staged, fresh])
        w.update(everything, pattern(everything, 7))
        w.flush()
        # rows ro never read: the newest flushed state at once
        assert (read_versions(fresh, ro.lookup(fresh))[0] == 7).all()
        # rows ro holds: the old ones until refresh()
        assert (read_versions(cached, ro.lookup(cached))[0] == 0).all()
        assert (read_versions(staged, ro.lookup(staged))[0] == 0).all()
        counters = ro.stats()["lookups"]
        ro.refresh()
        assert ro.stats()["lookups"] == counters and ro.stats()["device"]["rows"] == 0
        assert ro.stats()["prefetch"]["staged_rows"] == 0
        for ids in (cached, staged, fresh):
            versions, torn = read_versions(ids, ro.lookup(ids))
            assert not torn.any() and (versions == 7).all()
        assert ro.check().ok
        ro.close()
        with pytest.raises(ts.ClosedStoreError):
            ro.refresh()


def test_refresh_on_a_writable_store_flushes_and_empties_the_tiers(tmp_path):
    path = tmp_path / "store"
    with make_store(path, 300, device_rows=4, ram_rows=12) as w:
        ids = np.arange(16)
        w.lookup(ids)
        w.update(ids, pattern(ids, 3))                 # dirty in memory
        w.prefetch(np.arange(100, 140))
        before = w.stats()
        w.refresh()
        after = w.stats()
        assert after["device"]["rows"] == 0 and after["ram"]["rows"] == 0
        assert after["lookups"] == before["lookups"] and after["evictions"] == before["evictions"]
        with ts.open(path, readonly=True) as ro:      # flushed by refresh()
            assert (read_versions(ids, ro.lookup(ids))[0] == 3).all()
        assert (read_versions(ids, w.lookup(ids))[0] == 3).all()
        assert w.check().ok


# -- threads sharing one Store ----------------------------------------------------------------------
def test_threads_lookup_update_prefetch_flush_refresh(tmp_path):
    """Four threads share one store (tiny tiers): each updates its own rows and looks up
    everyone's, with prefetches, flushes, refreshes and checks mixed in. Each lookup sees
    every update that returned before it began, its own exactly; no row is ever torn."""
    n, threads = 3000, 4
    path = tmp_path / "store"
    store = make_store(path, n, device_rows=4, ram_rows=28)
    latest = np.zeros(n)   # version of each row's last *completed* update
    errors = []

    def worker(t):
        rng = np.random.default_rng(t)
        mine = np.arange(t, n, threads)
        try:
            for version in range(1, 151):
                own = rng.choice(mine, 12)
                store.update(own, pattern(own, version))
                latest[own] = version
                ids = np.concatenate([rng.integers(0, 48, 16), rng.integers(0, n, 48)])
                floor = latest[ids].copy()
                versions, torn = read_versions(ids, store.lookup(ids))
                assert not torn.any(), f"torn rows {ids[torn][:10]}"
                assert (versions >= floor).all(), f"stale rows {ids[versions < floor][:10]}"
                owned = ids % threads == t
                assert np.array_equal(versions[owned], latest[ids[owned]]), "lost my own update"
                if rng.random() < 0.3:
                    handle = store.prefetch(rng.integers(0, n, 64))
                    if rng.random() < 0.5:
                        handle.wait(timeout=60)
                roll = rng.random()
                if roll < 0.05:
                    store.flush()
                elif roll < 0.08:
                    store.refresh()
                elif roll < 0.1:
                    assert store.check().ok
        except Exception as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=300)
    assert not errors, errors
    ids = np.arange(n)
    versions, torn = read_versions(ids, store.lookup(ids))
    assert not torn.any()
    np.testing.assert_array_equal(versions, latest)
    assert store.stats()["writebacks"] > 0
    store.close()
    with ts.open(path, readonly=True) as ro:
        np.testing.assert_array_equal(read_versions(ids, ro.lookup(ids))[0], latest)
        assert ro.check().ok


def test_reads_on_other_threads_survive_map_growth(tmp_path):
    """A prefetch reads on a worker thread, outside the store's lock, while the writer may
    grow the map. py-lmdb invalidates every open transaction of the process on a remap, so
    those reads used to fail ('Attempt to operate on closed/deleted/dropped object'); now a
    remap waits for them. Here a thread reads while the map is regrown about a thousand times."""
    import time

    n = 20_000
    store = ts.create(tmp_path / "s", n, 16, "float32", init=np.ones((n, 16), np.float32),
                      config=ts.StoreConfig(device_rows=4, ram_rows=8, map_size=1 << 20))
    disk = store.disk
    errors, reads, stop = [], [0], threading.Event()

    def reader():
        rng = np.random.default_rng(0)
        out = np.empty((2000, 16), np.float32)
        while not stop.is_set():
            try:
                disk.read_rows(rng.integers(0, n, 2000), out, np.arange(2000))
                assert (out == 1).all()
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    base, remaps = disk.env.info()["map_size"], 0
    end = time.monotonic() + 1.0
    try:
        while time.monotonic() < end:
            time.sleep(0.0002)
            with disk._guard.remapping():
                disk.env.set_mapsize(base)  # back down, so that _grow really remaps
            disk._grow()
            remaps += 1
    finally:
        stop.set()
        thread.join()
    store.close()
    assert not errors, (len(errors), errors[:3])
    assert remaps > 100 and reads[0] > 10, (remaps, reads)


def test_prefetch_while_updates_grow_the_map(tmp_path):
    n = 60_000
    store = ts.create(tmp_path / "s", n, 16, "float32",
                      config=ts.StoreConfig(device_rows=4, ram_rows=8, map_size=1 << 20))
    rng = np.random.default_rng(3)
    handles = []
    with store:
        map0 = store.disk.env.info()["map_size"]
        for start in range(0, n, 2000):
            handles += [store.prefetch(rng.integers(0, n, 3000)) for _ in range(2)]
            store.update(np.arange(start, start + 2000), np.full((2000, 16), 1.0, np.float32))
        for h in handles:
            h.wait(timeout=120)
        assert store.disk.env.info()["map_size"] >= 4 * map0
        np.testing.assert_array_equal(store.lookup(rng.integers(0, n, 1000)), 1.0)
