"""The TableStore contract (tierstore.testing.tier_tests.TableStoreTests) on a Store and
on a ShardedStore of one gloo rank."""
import datetime

import pytest

import tierstore as ts
from tierstore.testing.tier_tests import TableStoreTests

CONFIG = ts.StoreConfig(device_rows=4, ram_rows=8)   # most rows on disk: every tier in play


class TestStore(TableStoreTests):
    def make_store(self, path, num_rows, dim, dtype, init):
        return ts.create(path, num_rows, dim, dtype, init=init, config=CONFIG)


class TestShardedStore(TableStoreTests):
    @pytest.fixture(autouse=True)
    def process_group(self, tmp_path):
        torch = pytest.importorskip("torch")
        dist = torch.distributed
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                                world_size=1, timeout=datetime.timedelta(seconds=60))
        yield
        dist.destroy_process_group()

    def make_store(self, path, num_rows, dim, dtype, init):
        from tierstore.distributed import create_sharded

        return create_sharded(path, num_rows, dim, dtype, init=init, config=CONFIG)
