"""The store's GPU lookup path (``DeviceLookupTier``: rows found by the tier's own index, the
planner on its thread over a sampled access log) on CI, through a host double of the CUDA tier
(tests/host_indexed_tier.py): the state machine with tiny tiers, the index against the
policy's map after every step, and the sampled log against the tiers' hit counts."""
import numpy as np
import pytest
from machine_runs import long_runs, machine_runs

import tierstore as ts
import tierstore.store
import tierstore.tiers.cuda
from tierstore.testing import run_store_machine
from tierstore.workloads import zipf_ids

pytest.importorskip("torch")
from host_indexed_tier import HostIndexedMemory  # noqa: E402


@pytest.fixture
def host_indexed(monkeypatch):
    """Stores made in the test keep their memory in a HostIndexedMemory."""
    monkeypatch.setattr(tierstore.store, "_memory_for",
                        lambda config, dim, dtype: HostIndexedMemory(config.device_rows,
                                                                     config.ram_rows, dim, dtype))


@pytest.mark.parametrize("policy", ["adaptive", "lfu"])
@pytest.mark.parametrize("device_rows,ram_rows,partitions", [
    (100_000, 900_000, 1), (0, 1_048_592, 1), (0, 1_100_000, 1), (1_000_000, 4_000_000, 1),
    (0, 4_194_320, 1), (640_000, 5_760_000, 1), (1_000_000, 5_400_000, 4)])
def test_bookkeeping_at_most_64_bytes_a_cached_row(host_indexed, tmp_path, policy, device_rows,
                                                  ram_rows, partitions):
    """tests/test_store.py's capacities on the GPU path: the policy's arrays and the host
    mirror of the GPU index (the double keeps CudaMemory's ``GpuIndex``)."""
    config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows, policy=policy,
                            partitions=partitions)
    with ts.create(tmp_path / "s", 50_000_000, 8, config=config) as store:
        stats = store.stats()
        assert stats["bookkeeping"]["index_bytes"] == store._memory.index.host_nbytes() > 0
        assert stats["bookkeeping_bytes"] <= 64 * (device_rows + ram_rows)


@pytest.mark.parametrize("policy", ["adaptive", "lru", "lfu"])
@pytest.mark.parametrize("tiers", [(2, 3), (0, 3), (3, 0), (1, 1)], ids=lambda t: f"dev{t[0]}-ram{t[1]}")
def test_state_machine(host_indexed, policy, tiers):
    run_store_machine(ts.StoreConfig(device_rows=tiers[0], ram_rows=tiers[1], policy=policy),
                      settings=machine_runs(8))


@pytest.mark.parametrize("parts", [2, 3])
def test_state_machine_with_partitions(host_indexed, parts):
    run_store_machine(ts.StoreConfig(device_rows=3, ram_rows=4, partitions=parts),
                      settings=machine_runs(8))


def test_state_machine_with_a_sampled_log(host_indexed, monkeypatch):
    """Lookups of more than two ids log a strided sample plus their misses."""
    monkeypatch.setattr(tierstore.tiers.cuda, "LOG_SAMPLE_IDS", 2)
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=3), settings=machine_runs(10))


@pytest.mark.slow
def test_long_runs(host_indexed):
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=3, partitions=2), settings=long_runs(25))


def _at_lookup_miss_ratio(path, config, table, sample_ids):
    """Share of ids a lookup found in neither tier, over batches 20-39 of a Zipf stream, the
    planner's rounds done before each next lookup (so only the sampling differs); and the
    accesses the planner counted against the ids looked up."""
    tierstore.tiers.cuda.LOG_SAMPLE_IDS = sample_ids
    with ts.create(path, len(table), 4, "float32", init=table, config=config) as store:
        for k in range(40):
            if k == 20:
                before = store.stats()
            ids = zipf_ids(len(table), 1.1, 1024, seed=k)
            np.testing.assert_array_equal(store.lookup(ids), table[ids])
            store.stats()                        # waits for the planner's round
        after = store.stats()
    gpu = {k: after["indexed_lookup"][k] - before["indexed_lookup"][k] for k in ("ids", "through_host")}
    assert after["indexed_lookup"]["unplanned"] == 0
    return gpu["through_host"] / gpu["ids"], (after["lookups"] - before["lookups"]) / gpu["ids"]


def test_a_sampled_log_hits_as_often_and_counts_every_lookup(host_indexed, monkeypatch, tmp_path):
    monkeypatch.setattr(tierstore.tiers.cuda, "LOG_SAMPLE_IDS", tierstore.tiers.cuda.LOG_SAMPLE_IDS)
    table = np.random.default_rng(0).normal(size=(5000, 4)).astype(np.float32)
    config = ts.StoreConfig(device_rows=500, ram_rows=2000)
    every, every_counted = _at_lookup_miss_ratio(tmp_path / "a", config, table, 1 << 20)
    sampled, sampled_counted = _at_lookup_miss_ratio(tmp_path / "b", config, table, 64)  # 1 in 17
    assert every_counted == 1.0
    assert abs(sampled_counted - 1.0) < 0.02
    assert abs(sampled - every) < 0.01


def test_a_lookup_ahead_is_finished_by_the_worker_only_when_it_missed(host_indexed, tmp_path):
    """A lookup ahead that missed nothing is left to ``result()`` (or to the next update,
    flush or close), never lost; one with misses is finished by the worker, its rows read.
    After a lookup that missed nothing, the next lookup ahead is not given to the worker at
    all: if it misses, ``result()`` reads its rows, and the lookups after it go to the
    worker again."""
    table = np.arange(64, dtype=np.float32).reshape(16, 4)
    with ts.create(tmp_path / "s", 16, 4, "float32", init=table,
                   config=ts.StoreConfig(device_rows=4, ram_rows=4)) as store:
        store.lookup(np.array([1, 2]))
        counted = store.stats()["indexed_lookup"]["ids"]
        hit = store.lookup_async(np.array([1, 2, 2]))        # after a miss: the worker looks
        hit.future.result()
        assert store.stats()["indexed_lookup"]["ids"] == counted      # the worker left it
        np.testing.assert_array_equal(hit.result(), table[[1, 2, 2]])
        assert store.stats()["indexed_lookup"]["ids"] == counted + 3

        through_host = store.stats()["indexed_lookup"]["through_host"]
        unasked = store.lookup_async(np.array([7, 1]))       # after a hit: no worker task
        assert unasked.future.done()
        assert store.stats()["indexed_lookup"]["through_host"] == through_host
        np.testing.assert_array_equal(unasked.result(), table[[7, 1]])   # read by result()
        assert store.stats()["indexed_lookup"]["through_host"] == through_host + 1

        missed = store.lookup_async(np.array([9, 1]))        # after a miss: the worker again
        missed.future.result()
        assert store.stats()["indexed_lookup"]["through_host"] == through_host + 2
        assert store.stats()["indexed_lookup"]["ids"] == counted + 7   # finished by the worker
        np.testing.assert_array_equal(missed.result(), table[[9, 1]])

        never_asked = store.lookup_async(np.array([1]))
        never_asked.future.result()
        store.update(np.array([3]), np.full((1, 4), -1, dtype=np.float32))
        assert store.stats()["indexed_lookup"]["ids"] == counted + 8   # the update finished it
        np.testing.assert_array_equal(never_asked.result(), table[[1]])


def test_a_lookup_ahead_whose_last_step_failed_in_an_update_raises_that_error(host_indexed,
                                                                              tmp_path):
    """A lookup ahead that missed nothing, its last step run (and failed) by the next update's
    wait: ``result()`` raises that step's error, not a bare "ended without rows"."""
    table = np.arange(64, dtype=np.float32).reshape(16, 4)
    with ts.create(tmp_path / "s", 16, 4, "float32", init=table,
                   config=ts.StoreConfig(device_rows=4, ram_rows=4)) as store:
        store.lookup(np.array([1, 2]))
        store.stats()                              # rows 1 and 2 admitted
        handle = store.lookup_async(np.array([1, 2]))
        handle.future.result()                     # the worker left it (nothing missed)
        assert handle._finish is not None

        class Broken(Exception):
            pass

        def broken(pending):
            raise Broken("the miss list could not be read")

        store._memory.misses = broken
        store.update(np.array([3]), np.full((1, 4), -1, dtype=np.float32))
        del store._memory.misses
        with pytest.raises(Broken):
            handle.result()
