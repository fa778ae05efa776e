"""The CUDA device tier (run where a GPU exists; skipped elsewhere)."""
import numpy as np
import pytest
from hypothesis import settings

import tierstore as ts
from tierstore.testing import run_store_machine

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("policy", ["adaptive", "lru"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_state_machine_on_cuda(policy, dtype):
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=3, device="cuda", policy=policy),
                      dtype=dtype, settings=settings(max_examples=20))


def test_state_machine_on_cuda_with_partitions():
    run_store_machine(ts.StoreConfig(device_rows=3, ram_rows=3, device="cuda", partitions=2),
                      settings=settings(max_examples=20))


def test_lookup_returns_cuda_tensors(tmp_path):
    table = np.arange(400, dtype=np.float32).reshape(100, 4)
    config = ts.StoreConfig(device_rows=8, ram_rows=8, device="cuda")
    with ts.create(tmp_path / "s", 100, 4, "float32", init=table, config=config) as store:
        for _ in range(3):
            out = store.lookup(np.array([[1, 2], [3, 1]]))
        assert out.is_cuda and out.shape == (2, 2, 4)
        np.testing.assert_array_equal(out.cpu().numpy(), table[[[1, 2], [3, 1]]])
        assert store.stats()["device"]["rows"] > 0
