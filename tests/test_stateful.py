"""The store against a dict model, for every policy and codec, with tiers of a few rows."""
import pytest
from hypothesis import settings

import tierstore as ts
from tierstore.testing import run_store_machine

POLICIES = ["adaptive", "wtinylfu", "lru", "lfu"]


def examples(n: int) -> settings:
    """``n`` examples under the ci profile (60 by default), scaled with the profile loaded
    (dev: half, nightly: more)."""
    return settings(max_examples=max(5, n * settings.default.max_examples // 60))
TIERS = [(1, 1), (0, 3), (2, 3), (3, 0), (4, 8)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("tiers", TIERS, ids=lambda t: f"dev{t[0]}-ram{t[1]}")
def test_policies(policy, tiers):
    run_store_machine(ts.StoreConfig(device_rows=tiers[0], ram_rows=tiers[1], policy=policy),
                      settings=examples(25))


@pytest.mark.parametrize("codec", ["raw", "zstd", {"id": "zstd", "level": 5, "dict_size": 1024},
                                   "int8"], ids=["raw", "zstd", "zstd-dict", "int8"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_codecs(codec, dtype):
    init = "array" if isinstance(codec, dict) else "constant"
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=2), codec=codec, dtype=dtype,
                      init_kind=init, settings=examples(20))


def test_array_init_adaptive():
    run_store_machine(ts.StoreConfig(device_rows=1, ram_rows=2), init_kind="array", dim=3,
                      settings=examples(20))


@pytest.mark.parametrize("parts, tiers", [(2, (1, 1)), (2, (2, 3)), (3, (0, 3)), (3, (4, 2))],
                         ids=["p2-dev1-ram1", "p2-dev2-ram3", "p3-dev0-ram3", "p3-dev4-ram2"])
@pytest.mark.parametrize("policy", ["adaptive", "lru"])
def test_partitioned_memory(parts, tiers, policy):
    run_store_machine(ts.StoreConfig(device_rows=tiers[0], ram_rows=tiers[1], policy=policy,
                                     partitions=parts), settings=examples(25))


@pytest.mark.parametrize("parts", [1, 2])
def test_logged_lookups(monkeypatch, parts):
    """Every lookup through the tier's index (large batches' way), its planning on the planner
    thread, racing the next call."""
    import tierstore.store

    monkeypatch.setattr(tierstore.store, "LOGGED_LOOKUP_MIN_IDS", 1)
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=3, partitions=parts),
                      settings=examples(25))
