"""Store behaviour beyond the state machine: scale, durability, threads, torch ids."""
import threading

import numpy as np
import pytest

import tierstore as ts


def test_bookkeeping_follows_capacity_not_rows(tmp_path):
    config = ts.StoreConfig(device_rows=64, ram_rows=512)
    small = ts.create(tmp_path / "small", 1000, 8, config=config)
    huge = ts.create(tmp_path / "huge", 100_000_000, 8, config=config)  # constant init: instant
    assert huge.stats()["bookkeeping_bytes"] == small.stats()["bookkeeping_bytes"]
    ids = np.array([0, 99_999_999, 12_345_678])
    assert huge.lookup(ids).shape == (3, 8)
    assert huge.disk.stored_rows() == 0
    small.close()
    huge.close()


@pytest.mark.parametrize("policy", ["adaptive", "lfu"])
@pytest.mark.parametrize("device_rows,ram_rows,partitions", [
    (100_000, 900_000, 1), (0, 1_048_592, 1), (0, 1_100_000, 1), (1_000_000, 4_000_000, 1),
    (0, 4_194_320, 1), (640_000, 5_760_000, 1), (1_000_000, 5_400_000, 4)])
def test_bookkeeping_at_most_64_bytes_a_cached_row(tmp_path, policy, device_rows, ram_rows,
                                                  partitions):
    """The policy's arrays and the tier's index together, at capacities of 1M to 6.4M rows;
    at 2**20 + 16 and 2**22 + 16 the sketch's blocks round up most (8 bytes a row, not 4)."""
    config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows, policy=policy,
                            partitions=partitions)
    with ts.create(tmp_path / "s", 50_000_000, 8, config=config) as store:
        stats = store.stats()
        assert stats["bookkeeping"]["index_bytes"] > 0
        assert stats["bookkeeping_bytes"] <= 64 * (device_rows + ram_rows)


def test_rows_equal_to_constant_init_are_not_stored(tmp_path):
    with ts.create(tmp_path / "s", 100, 4, init=2.0, config=ts.StoreConfig(device_rows=1, ram_rows=1)) as s:
        s.update([1, 2], np.array([[2.0] * 4, [3.0] * 4]))
        s.flush()
        for i in range(3, 20):  # push 1 and 2 out of memory
            s.lookup([i])
        s.flush()
        assert s.disk.stored_rows() == 1
        np.testing.assert_array_equal(s.lookup([1, 2])[:, 0], [2.0, 3.0])


def test_a_read_whose_later_rows_have_no_record(tmp_path):
    """Raw rows go to the frames buffer a run of gets at a time; a row without a record in a
    later run turns the frames read so far back into values for the general path."""
    rows = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float16)
    rows[4500] = 0.0
    config = ts.StoreConfig(device_rows=16, ram_rows=16)
    with ts.create(tmp_path / "s", 5000, 64, "float16", init=0.0, config=config) as s:
        s.update(np.arange(5000), rows)
        s.flush()
        assert s.disk.stored_rows() == 4999
    with ts.open(tmp_path / "s", config=config) as s:
        np.testing.assert_array_equal(s.lookup(np.arange(5000)), rows)


def test_flush_is_durable_across_processes(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s"
    ts.create(path, 50, 4, "float32").close()
    code = (
        "import numpy as np, os, tierstore as ts\n"
        f"s = ts.open({str(path)!r}, config=ts.StoreConfig(device_rows=4, ram_rows=4))\n"
        "s.update(np.arange(8), np.full((8, 4), 5.0))\n"
        "s.flush()\n"
        "s.update(np.arange(8), np.full((8, 4), 6.0))\n"
        "os._exit(0)\n"  # no close: unflushed updates may be lost, flushed ones may not
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with ts.open(path, readonly=True) as s:
        got = s.lookup(np.arange(8))[:, 0]
    assert set(np.unique(got)) <= {5.0, 6.0}


def test_threads_share_a_store(tmp_path):
    table = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    store = ts.create(tmp_path / "s", 500, 8, "float32", init=table,
                      config=ts.StoreConfig(device_rows=8, ram_rows=16))
    errors = []

    def reader(seed):
        rng = np.random.default_rng(seed)
        for _ in range(200):
            ids = rng.integers(0, 500, size=32)
            if not np.array_equal(store.lookup(ids), table[ids]):
                errors.append(seed)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert not errors


def test_torch_ids_give_torch_rows(tmp_path):
    torch = pytest.importorskip("torch")
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    with ts.create(tmp_path / "s", 10, 4, "float32", init=table) as s:
        out = s.lookup(torch.tensor([[1, 2], [3, 1]]))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 4)
        assert torch.equal(out[0, 0], torch.tensor(table[1]))
        s.update(torch.tensor([0]), torch.ones(1, 4))
        assert s.lookup([0]).tolist() == [[1.0] * 4]


def test_prefetched_rows_come_without_disk_reads(tmp_path):
    table = np.random.default_rng(1).standard_normal((1000, 8)).astype(np.float32)
    with ts.create(tmp_path / "s", 1000, 8, "float32", init=table,
                   config=ts.StoreConfig(device_rows=4, ram_rows=16)) as store:
        ids = np.arange(100, 164)
        assert store.prefetch(ids).wait(timeout=60) == 64
        before = store.stats()["disk"]["reads"], store.disk.bytes_read
        np.testing.assert_array_equal(store.lookup(ids), table[ids])
        assert store.disk.bytes_read == before[1]  # nothing read from LMDB by the lookup
        assert store.stats()["prefetch"]["rows_used"] == 64


def test_overlapping_prefetches_each_keep_their_rows_until_their_lookup(tmp_path, monkeypatch):
    # lookups through the index (planned on the planner thread): the planning of the first
    # lookup must leave the second prefetch's copies of the rows both batches hold
    monkeypatch.setattr(ts.store, "LOGGED_LOOKUP_MIN_IDS", 1)
    table = np.random.default_rng(2).standard_normal((1000, 8)).astype(np.float32)
    with ts.create(tmp_path / "s", 1000, 8, "float32", init=table,
                   config=ts.StoreConfig(device_rows=4, ram_rows=16)) as store:
        first, second = np.arange(100, 300), np.arange(200, 400)
        assert store.prefetch(first).wait(timeout=60) == 200
        assert store.prefetch(second).wait(timeout=60) == 100   # 200-299 were staged already
        np.testing.assert_array_equal(store.lookup(first), table[first])
        through_host = store.stats()["indexed_lookup"]["through_host"]   # its planning is done
        before = store.disk.bytes_read
        np.testing.assert_array_equal(store.lookup(second), table[second])
        assert store.disk.bytes_read == before        # nothing read from LMDB by the lookup
        stats = store.stats()
        # every row the second lookup found outside memory was staged
        assert stats["prefetch"]["rows_used"] == 200 + stats["indexed_lookup"]["through_host"] - through_host


def test_update_during_prefetch_never_leaves_a_stale_row(tmp_path):
    table = np.zeros((5000, 4), dtype=np.float32)
    with ts.create(tmp_path / "s", 5000, 4, "float32", init=table,
                   config=ts.StoreConfig(device_rows=2, ram_rows=2)) as store:
        rng = np.random.default_rng(2)
        model = table.copy()
        for step in range(60):
            ids = rng.integers(0, 5000, size=200)
            handles = [store.prefetch(ids) for _ in range(2)]
            upd = ids[rng.integers(0, 200, size=20)]
            store.update(upd, np.full((20, 4), float(step + 1), dtype=np.float32))
            model[upd] = step + 1
            if step % 3 == 0:
                handles[0].wait()
            np.testing.assert_array_equal(store.lookup(ids), model[ids])


def test_partitions_keep_the_hit_ratio_and_the_rows(tmp_path):
    """Hash partitions are caches of a quarter the size each: on a Zipf stream they hit
    about as often as one cache of the whole size, and return the same rows."""
    from tierstore.workloads import zipf_ids

    table = np.random.default_rng(0).normal(size=(20_000, 4)).astype(np.float32)
    ts.create(tmp_path / "s", 20_000, 4, "float32", init=table).close()
    ratios = {}
    for parts in (1, 4):
        config = ts.StoreConfig(device_rows=500, ram_rows=1500, partitions=parts)
        with ts.open(tmp_path / "s", config, readonly=True) as store:
            for k in range(40):
                ids = zipf_ids(20_000, 1.0, 4096, seed=k)
                np.testing.assert_array_equal(store.lookup(ids), table[ids])
            stats = store.stats()
            assert stats["device"]["rows"] == 500 and stats["ram"]["rows"] == 1500
            ratios[parts] = (stats["device"]["hit_ratio"], stats["hit_ratio"])
            assert store.check().ok
    assert abs(ratios[4][0] - ratios[1][0]) < 0.02 and abs(ratios[4][1] - ratios[1][1]) < 0.02, ratios


def test_create_holds_one_chunk_at_a_time(tmp_path, monkeypatch):
    """create(init=callable) validates and writes chunk by chunk: its peak memory is a few
    chunks whatever the table's size (it used to keep every validated chunk to the end)."""
    import tracemalloc

    from tierstore import api

    chunk, dim = 4096, 16
    monkeypatch.setattr(api, "CREATE_CHUNK", chunk)

    def init(a, b):
        return np.broadcast_to(np.arange(a, b, dtype=np.float32)[:, None], (b - a, dim))

    def peak_of_create(chunks):
        tracemalloc.start()
        try:
            ts.create(tmp_path / f"s{chunks}", chunks * chunk, dim, "float32", init=init,
                      config=ts.StoreConfig(device_rows=0, ram_rows=16)).close()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_of_create(12), peak_of_create(60)
    assert large < 1.5 * small, (small, large)
    assert large < 60 * chunk * dim * 4 / 3, large
    with ts.open(tmp_path / "s60", readonly=True) as s:
        ids = np.array([0, chunk - 1, chunk, 60 * chunk - 1])
        np.testing.assert_array_equal(s.lookup(ids)[:, -1], ids.astype(np.float32))
        assert s.disk.stored_rows() == 60 * chunk


def test_tiers_are_clamped_to_the_table(tmp_path):
    """ram_rows far beyond num_rows allocates only num_rows slots (it allocated 10**8: 36 s)."""
    with ts.create(tmp_path / "s", 1000, 64, config=ts.StoreConfig(device_rows=600,
                                                                   ram_rows=10**8)) as s:
        assert (s.config.device_rows, s.config.ram_rows) == (600, 400)
        assert s.stats()["ram"]["capacity"] == 400
        assert s._memory.nbytes() <= 1000 * (64 * 2 + 40)     # slabs, and an index of 40 B a row
        s.lookup(np.arange(1000))
        assert s.stats()["misses"] == 1000 and s.lookup(np.arange(1000)).shape == (1000, 64)
        assert s.stats()["misses"] == 1000               # every row now in memory


def test_disk_reads_count_rows_read_not_accesses(tmp_path):
    """A lookup reads a missing row once however often it holds the id; every access is
    still served by one tier."""
    with ts.create(tmp_path / "s", 100, 4, "float32",
                   config=ts.StoreConfig(device_rows=2, ram_rows=8)) as store:
        store.lookup(np.array([5, 5, 5, 7]))
        s = store.stats()
        assert (s["lookups"], s["misses"], s["disk"]["accesses"], s["disk"]["reads"]) == (4, 4, 4, 2)
        assert (s["hit_ratio"], s["read_hit_ratio"]) == (0.0, 0.5)
        store.lookup(np.array([7, 5, 9, 9]))
        s = store.stats()
        assert s["device"]["hits"] + s["ram"]["hits"] == 2
        assert (s["lookups"], s["disk"]["accesses"], s["disk"]["reads"]) == (8, 6, 3)
        assert s["read_hit_ratio"] == 1 - 3 / 8


def test_resident_ids_are_the_rows_in_memory(tmp_path):
    with ts.create(tmp_path / "s", 1000, 4, config=ts.StoreConfig(device_rows=3, ram_rows=5)) as s:
        assert len(s.resident_ids()) == 0
        s.lookup(np.array([7, 8, 9]))
        assert sorted(s.resident_ids().tolist()) == [7, 8, 9]
        s.lookup(np.arange(100, 200))
        resident = s.resident_ids()
        assert len(resident) == 8 and set(resident.tolist()) <= set(range(7, 10)) | set(range(100, 200))
        assert s.stats()["misses"] == 103
