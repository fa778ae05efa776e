"""Warm start: counts files, rows loaded at open, and a warmed store that reads exactly the
rows written."""
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierstore as ts
from tierstore import cli
from tierstore import warmstart as W
from tierstore.kernels.batch import partition_of
from tierstore.kernels.sketch import sketch_estimate
from tierstore.workloads import zipf_ids

ROWS, DIM = 2000, 4


def _table(seed=0, rows=ROWS):
    return np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)


@pytest.fixture
def made(tmp_path):
    table = _table()
    ts.create(tmp_path / "s", ROWS, DIM, "float32", init=table).close()
    return tmp_path / "s", table


def _open(path, device_rows=8, ram_rows=56, **kw):
    config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows,
                            **{k: v for k, v in kw.items() if k in ("policy", "partitions")})
    return ts.open(path, config, **{k: v for k, v in kw.items() if k in ("readonly", "warm")})


def _descending(n, start=0):
    """ids start.., counts n..1: hottest first."""
    return np.arange(start, start + n), np.arange(n, 0, -1)


# -- counts ---------------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=300), st.integers(1, 50))
def test_hot_counts_match_a_counter(trace, rows):
    ids, counts, accesses = W.hot_counts(np.array(trace, dtype=np.int64), rows)
    counted = Counter(trace)
    first = {i: trace.index(i) for i in counted}
    want = sorted(counted, key=lambda i: (-counted[i], first[i]))[:rows]
    assert ids.tolist() == want
    assert counts.tolist() == [counted[i] for i in want]
    assert accesses == len(trace)


def test_counts_file_round_trip_and_bad_files(tmp_path):
    path = W.save_counts(tmp_path / "hot", np.array([5, 3]), np.array([9, 2]), 20)
    assert path.name == "hot.npz"
    ids, counts, accesses = W.load_counts(path)
    assert ids.tolist() == [5, 3] and counts.tolist() == [9, 2] and accesses == 20
    np.savez(tmp_path / "other.npz", ids=np.arange(3))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for bad in ("other.npz", "junk.npz"):
        with pytest.raises(ts.errors.ConfigError, match="not a tierstore counts file"):
            W.load_counts(tmp_path / bad)
    with pytest.raises(FileNotFoundError):
        W.load_counts(tmp_path / "missing.npz")


def test_profile_writes_counts_that_warm_a_store(tmp_path, made, capsys):
    path, table = made
    trace = zipf_ids(ROWS, 1.0, 20_000, seed=3)
    np.save(tmp_path / "trace.npy", trace)
    out = tmp_path / "hot.npz"
    assert cli.main(["profile", str(tmp_path / "trace.npy"), "--policies", "adaptive",
                     "--device-rows", "8", "--ram-rows", "56", "--write-counts", str(out),
                     "-q"]) == 0
    ids, _, accesses = W.load_counts(out)
    assert accesses == len(trace) and len(ids) == 64 and ids.tolist() == W.hot_counts(trace, 64)[0].tolist()
    with _open(path, warm=out) as s:
        assert s.warming.wait() == 64
        assert set(s._state.resident()) == set(ids.tolist())
        np.testing.assert_array_equal(s.lookup(ids), table[ids])
    assert cli.main(["profile", str(tmp_path / "trace.npy"), "--counts-rows", "5"]) == 2
    assert cli.main(["profile", str(tmp_path / "trace.npy"), "--write-counts",
                     str(tmp_path / "no" / "hot.npz")]) == 2
    assert "no such folder" in capsys.readouterr().err


# -- what a warm loads, and where ------------------------------------------------------------------
@pytest.mark.parametrize("partitions", [1, 3])
def test_warm_loads_the_hottest_hottest_on_device_counting_no_lookups(made, partitions):
    path, table = made
    rng = np.random.default_rng(1)
    ids = rng.permutation(ROWS)[:500]
    counts = 1_000_000 // (1 + rng.permutation(500))   # Zipf-like
    with _open(path, partitions=partitions) as s:
        handle = s.warm((ids, counts), progress=False)
        assert handle.wait() == 64 == handle.total and s.warming is handle
        hottest = ids[np.lexsort((ids, -counts))]
        resident = s._state.resident()
        assert len(resident) == 64
        # each partition holds its own hottest: a warm id left out has only hotter ones there
        part = partition_of(hottest, partitions)
        rank = {int(i): r for r, i in enumerate(hottest)}
        for p in range(partitions):
            ranks = [rank[i] for i in resident if part[rank[i]] == p]
            assert sorted(ranks) == [r for r in range(len(hottest)) if part[r] == p][:len(ranks)]
        stats = s.stats()
        assert stats["lookups"] == 0 and stats["misses"] == 0 and stats["admissions"] == 64
        assert stats["disk"]["reads"] == 0         # the warm's reads are not lookups' reads
        assert stats["device"]["rows"] == 8
        if partitions == 1:       # one cache: exactly the 8 hottest hold the device slots
            assert {i for i, slot in resident.items() if slot < 8} == set(hottest[:8].tolist())
        assert s.check().ok
        np.testing.assert_array_equal(s.lookup(list(resident)), table[list(resident)])
        assert s.stats()["hit_ratio"] == 1.0


def test_warm_seeds_the_sketch_so_newcomers_seen_twice_do_not_displace_it(made):
    path, _ = made
    warm_ids, counts = _descending(64)
    with _open(path) as s:
        s.warm((warm_ids, counts * 1000), progress=False).wait()
        sketch = s._state.states[0].sketch
        assert sketch_estimate(sketch, 0) > 2
        newcomers = np.arange(1000, 1064)
        for _ in range(2):
            for i in newcomers:
                s.lookup([i])
        kept = len(set(s._state.resident()) & set(warm_ids.tolist()))
        assert kept >= 48


def test_warm_rows_are_ordered_for_recency_policies(made):
    """Under lru the coldest warm rows leave first."""
    path, _ = made
    warm_ids, counts = _descending(64)
    with _open(path, policy="lru") as s:
        s.warm((warm_ids, counts), progress=False).wait()
        for i in range(1000, 1010):
            s.lookup([i])
        assert set(s._state.resident()) & set(warm_ids.tolist()) == set(range(54))


def test_warm_is_bounded_and_skips_rows_already_in_memory(made):
    path, table = made
    with _open(path) as s:
        s.lookup(np.arange(10))
        s.update([3], np.full((1, DIM), 7.0))
        handle = s.warm(_descending(ROWS), progress=False)
        assert handle.total == 64 and handle.wait() == 54
        assert set(s._state.resident()) == set(range(64))
        assert s.lookup([3])[0, 0] == 7.0
        np.testing.assert_array_equal(s.lookup(np.arange(4, 64)), table[4:64])


def test_readonly_store_warms_and_writes_nothing(made):
    path, table = made
    with _open(path, readonly=True, warm=_descending(100)) as s:
        assert s.warming.wait() == 64
        np.testing.assert_array_equal(s.lookup(np.arange(100)), table[:100])
        assert s.stats()["disk"]["bytes_written"] == 0


BAD_WARM = {
    "id-out-of-range": ((np.array([1, ROWS]), np.array([1, 1])), ts.errors.IdOutOfRangeError,
                        "row id 2000 at position 1 is outside"),
    "float-ids": ((np.array([1.5]), np.array([1])), ts.errors.IdTypeError, "must be integers"),
    "lengths-differ": ((np.array([1, 2]), np.array([1])), ts.errors.ConfigError,
                       "1-D of one length"),
    "2-d-ids": ((np.array([[1, 2]]), np.array([[1, 1]])), ts.errors.ConfigError,
                "1-D of one length"),
    "negative-count": ((np.array([1, 2]), np.array([1, -1])), ts.errors.ConfigError,
                       "finite non-negative"),
    "nan-count": ((np.array([1, 2]), np.array([1, np.nan])), ts.errors.ConfigError,
                  "finite non-negative"),
    "text-counts": ((np.array([1, 2]), np.array(["a", "b"])), ts.errors.ConfigError,
                    "finite non-negative"),
    "not-a-pair": ([1, 2], ts.errors.ConfigError, "a counts file's path or an (ids, counts) pair"),
    "not-a-counts-file": ("data.mdb", ts.errors.ConfigError, "not a tierstore counts file"),
    "missing-file": ("missing.npz", FileNotFoundError, "missing.npz"),
}


@pytest.mark.parametrize("case", BAD_WARM)
def test_bad_warm_input_changes_nothing(made, case):
    path, table = made
    hot, error, message = BAD_WARM[case]
    if isinstance(hot, str):
        hot = str(path / hot)
    with _open(path) as s:
        s.lookup(np.arange(5))
        before, resident = s.stats(), s._state.resident()
        with pytest.raises(error, match=re.escape(message)):
            s.warm(hot)
        assert s.warming is None and not s._warms
        assert s.stats() == before and s._state.resident() == resident
        np.testing.assert_array_equal(s.lookup(np.arange(5)), table[:5])
    with pytest.raises(error):
        _open(path, warm=hot)
    _open(path).close()                     # the failed open let the store go


def test_warm_on_a_closed_store(made):
    path, _ = made
    s = _open(path)
    s.close()
    with pytest.raises(ts.errors.ClosedStoreError, match="is closed"):
        s.warm(_descending(3))


def test_duplicate_ids_sum_their_counts(made):
    path, _ = made
    with _open(path, device_rows=1, ram_rows=1) as s:
        s.warm((np.array([5, 6, 7, 5]), np.array([2, 3, 1, 2])), progress=False).wait()
        assert s._state.resident() == {5: 0, 6: 1}


# -- last write wins ---------------------------------------------------------------------------------
def _during_first_read(monkeypatch, store, act):
    """Run ``act(ids)`` on the warm's thread right after its first chunk read the disk."""
    read = store._disk.read_rows
    calls = []

    def read_then_act(ids, rows, positions):
        read(ids, rows, positions)
        if not calls:
            calls.append(ids.copy())
            act(ids)

    monkeypatch.setattr(store._disk, "read_rows", read_then_act)
    return calls


def test_rows_waiting_in_the_write_back_buffer_are_warmed_with_their_new_values(tmp_path):
    table = _table()
    store = ts.create(tmp_path / "s", ROWS, DIM, "float32", init=table,
                      config=ts.StoreConfig(device_rows=4, ram_rows=12, writeback_rows=8,
                                            policy="lru"))
    with store as s:
        s.lookup(np.arange(3))
        s.update(np.arange(3), np.full((3, DIM), 9.0))        # dirty in memory
        s.lookup(np.arange(100, 116))                          # evicted: buffered, not on disk
        assert s.stats()["pending_writebacks"] == 3
        s.warm((np.arange(3), np.ones(3)), progress=False).wait()
        assert set(range(3)) <= set(s._state.resident())
        np.testing.assert_array_equal(s.lookup(np.arange(3)), np.full((3, DIM), 9.0))


def test_update_racing_the_warm_read_wins(made, monkeypatch):
    path, table = made
    with _open(path) as s:
        new = np.full((5, DIM), 42.0, dtype=np.float32)
        calls = _during_first_read(monkeypatch, s, lambda ids: s.update(ids[:5], new))
        s.warm(_descending(64), progress=False).wait()
        assert calls and calls[0][:5].tolist() == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(s.lookup(np.arange(64)),
                                      np.concatenate([new, table[5:64]]))


def test_row_admitted_and_updated_during_the_warm_read_wins(made, monkeypatch):
    path, table = made

    def admit_and_update(ids):
        s.lookup(ids[:3])                                   # now in memory: update is in place
        s.update(ids[:3], np.full((3, DIM), -1.0))

    with _open(path) as s:
        _during_first_read(monkeypatch, s, admit_and_update)
        assert s.warm(_descending(64), progress=False).wait() == 61
        np.testing.assert_array_equal(s.lookup(np.arange(3)), np.full((3, DIM), -1.0))
        np.testing.assert_array_equal(s.lookup(np.arange(3, 64)), table[3:64])


def test_close_during_the_warm_ends_it(made, monkeypatch):
    import threading

    path, _ = made
    monkeypatch.setattr(W, "WARM_CHUNK", 16)
    s = _open(path)
    closing = []

    def close_meanwhile(ids):
        closer = threading.Thread(target=s.close)
        closer.start()
        closing.append(closer)
        while not s.closed:             # close() has marked the store: this chunk is dropped
            closer.join(0.001)

    _during_first_read(monkeypatch, s, close_meanwhile)
    handle = s.warm(_descending(64), progress=False)
    assert handle.wait(timeout=60) == 0 and handle.total == 64 and handle.done()
    closing[0].join()
    assert s._prefetcher is None


def test_a_warm_advances_at_each_store_call_while_the_caller_keeps_the_lock(made, monkeypatch):
    """A caller that never leaves the lock free (back-to-back lookups) still lets a background
    warm advance: each call's start admits the chunk read since."""
    path, table = made
    monkeypatch.setattr(W, "WARM_CHUNK", 16)
    with _open(path) as s:
        with s._lock:                        # the worker can never take it meanwhile
            handle = s.warm(_descending(64), progress=False)
            for chunk in range(1, 5):
                while handle._pending is None:     # the worker has read the chunk
                    handle._done.wait(0.001)
                np.testing.assert_array_equal(s.lookup([1000]), table[[1000]])
                assert handle.loaded == 16 * chunk
        assert handle.wait() == 64 and s.stats()["lookups"] == 4 and s.check().ok


# -- a warmed store reads exactly the rows written ---------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.data())
def test_a_warmed_store_reads_exactly_the_rows_written(tmp_path_factory, data):
    rows = 300
    path = tmp_path_factory.mktemp("w") / "s"
    table = _table(data.draw(st.integers(0, 9)), rows)
    model = table.copy()
    store = ts.create(path, rows, DIM, "float32", init=table,
                      config=ts.StoreConfig(device_rows=4, ram_rows=12, writeback_rows=8))
    ids = st.lists(st.integers(0, rows - 1), min_size=1, max_size=20)
    try:
        for _ in range(data.draw(st.integers(0, 6))):       # dirty rows, some evicted
            if data.draw(st.booleans()):
                batch = np.array(data.draw(ids))
                value = np.float32(data.draw(st.integers(-50, 50)))
                store.update(batch, np.full((len(batch), DIM), value))
                model[batch] = value
            else:
                store.lookup(np.array(data.draw(ids)))
        if data.draw(st.booleans()):
            store.close()
            store = ts.open(path, ts.StoreConfig(device_rows=4, ram_rows=12))
        hot = np.array(data.draw(ids))
        store.warm((hot, np.arange(len(hot), 0, -1)), progress=False).wait()
        assert store.check().ok
        everything = np.arange(rows)
        np.testing.assert_array_equal(store.lookup(everything), model)
    finally:
        store.close()


# -- tools/bench_warm.py -------------------------------------------------------------------------------
def test_bench_warm_tool_prints_warm_beside_cold(monkeypatch, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "bench_warm.py"
    spec = importlib.util.spec_from_file_location("tierstore_bench_warm", tool)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_warm.py", "--streams", "zipf", "--zipf-rows", "20000",
                                      "--batches", "20", "--dim", "4"])
    bench.main()
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 10 |")]
    cold, warm = (float(cell.split()[0]) for cell in table[0].split("|")[2:4])
    assert warm > cold + 0.05        # the first batches: the warm store holds the hot rows


def test_warm_on_a_cuda_store_serves_its_rows_from_the_device(made):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path, table = made
    config = ts.StoreConfig(device_rows=8, ram_rows=56, device="cuda")
    with ts.open(path, config, warm=_descending(64)) as s:
        assert s.warming.wait() == 64
        s.update([70, 3], np.full((2, DIM), 5.0))
        out = s.lookup(np.arange(72))
        assert out.is_cuda
        want = table[:72].copy()
        want[[70, 3]] = 5.0
        np.testing.assert_array_equal(out.cpu().numpy(), want)
        assert s.stats()["device"]["hits"] == 8 and s.check().ok
