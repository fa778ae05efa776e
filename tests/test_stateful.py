"""The store against a dict model, for every policy and codec, with tiers of a few rows."""
import pytest
from machine_runs import long_runs, machine_runs

import tierstore as ts
from tierstore.testing import run_store_machine

POLICIES = ["adaptive", "wtinylfu", "lru", "lfu"]
TIERS = [(1, 1), (0, 3), (2, 3), (3, 0), (4, 8)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("tiers", TIERS, ids=lambda t: f"dev{t[0]}-ram{t[1]}")
def test_policies(policy, tiers):
    run_store_machine(ts.StoreConfig(device_rows=tiers[0], ram_rows=tiers[1], policy=policy),
                      settings=machine_runs(10))


@pytest.mark.parametrize("codec", ["raw", "zstd", {"id": "zstd", "level": 5, "dict_size": 1024},
                                   "int8"], ids=["raw", "zstd", "zstd-dict", "int8"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_codecs(codec, dtype):
    init = "array" if isinstance(codec, dict) else "constant"
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=2), codec=codec, dtype=dtype,
                      init_kind=init, settings=machine_runs(8))


def test_array_init_adaptive():
    run_store_machine(ts.StoreConfig(device_rows=1, ram_rows=2), init_kind="array", dim=3,
                      settings=machine_runs(8))


@pytest.mark.parametrize("parts, tiers", [(2, (1, 1)), (2, (2, 3)), (3, (0, 3)), (3, (4, 2))],
                         ids=["p2-dev1-ram1", "p2-dev2-ram3", "p3-dev0-ram3", "p3-dev4-ram2"])
@pytest.mark.parametrize("policy", ["adaptive", "lru"])
def test_partitioned_memory(parts, tiers, policy):
    run_store_machine(ts.StoreConfig(device_rows=tiers[0], ram_rows=tiers[1], policy=policy,
                                     partitions=parts), settings=machine_runs(10))


@pytest.mark.parametrize("parts", [1, 2])
def test_logged_lookups(monkeypatch, parts):
    """Every lookup through the tier's index (large batches' way), its planning on the planner
    thread, racing the next call."""
    import tierstore.store

    monkeypatch.setattr(tierstore.store, "LOGGED_LOOKUP_MIN_IDS", 1)
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=3, partitions=parts),
                      settings=machine_runs(10))


LONG_RUNS = [
    pytest.param(ts.StoreConfig(device_rows=2, ram_rows=3), {}, id="adaptive-dev2-ram3"),
    pytest.param(ts.StoreConfig(device_rows=1, ram_rows=1, policy="wtinylfu"), {}, id="wtinylfu-dev1-ram1"),
    pytest.param(ts.StoreConfig(device_rows=0, ram_rows=3, policy="lfu"),
                 {"codec": "int8", "dtype": "float16"}, id="lfu-dev0-ram3-int8-float16"),
    pytest.param(ts.StoreConfig(device_rows=3, ram_rows=2, policy="lru", partitions=2),
                 {"codec": {"id": "zstd", "level": 5, "dict_size": 1024}, "init_kind": "array"},
                 id="lru-p2-dev3-ram2-zstd-dict"),
]


@pytest.mark.slow
@pytest.mark.parametrize("config, shape", LONG_RUNS)
def test_long_runs(config, shape):
    """Runs of up to 200 steps: sequences the default run's 50 rarely reach (many moves,
    flushes and reopens in one store, long queues of lookups ahead)."""
    run_store_machine(config, settings=long_runs(25), **shape)
