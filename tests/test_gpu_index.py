"""The GPU index of the memory tiers, on CPU tensors: host mirror, change log, torch probe."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from tierstore.kernels import hashing
from tierstore.kernels.slot_index import MAX_SHIFT

torch = pytest.importorskip("torch")
from tierstore.tiers.gpu_index import GpuIndex, mix64  # noqa: E402


def _clustered(size: int, count: int) -> list[int]:
    """Keys whose home buckets are the table's last two and first two: runs wrap around."""
    out, k = [], 0
    while len(out) < count:
        if naive.home(k, size) in {size - 2, size - 1, 0, 1}:
            out.append(k)
        k += 1
    return out


@settings(deadline=None)
@given(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50))
def test_torch_mix64_is_bit_identical_to_the_kernels(keys):
    got = mix64(torch.tensor(keys, dtype=torch.int64)).numpy().view(np.uint64)
    assert got.tolist() == [naive.mix64(k, 0) for k in keys]
    assert got.tolist() == [int(hashing.mix64(k, 0)) for k in keys]


def _device_table(index):
    return index.dev_keys.numpy(), index.dev_vals.numpy()


def _sync(index):
    pos, keys, vals = index.changes()
    index.load(None if pos is None else torch.from_numpy(pos), torch.from_numpy(keys.copy()),
               torch.from_numpy(vals.copy()))
    return pos


ops = st.lists(st.tuples(st.lists(st.integers(0, 60), max_size=6),               # removed
                         st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), max_size=8)),
               max_size=25)


@settings(deadline=None, max_examples=80)
@given(capacity=st.sampled_from([1, 4, 20]), clustered=st.booleans(), batches=ops)
def test_index_matches_a_dict_on_host_and_device(capacity, clustered, batches):
    index = GpuIndex(capacity, "cpu", torch)
    size = len(index.keys)
    assert size == hashing.table_size(capacity, 0.75) and size >= 4 * capacity / 3
    assert index.nbytes() <= 32 * capacity or size == 8     # 8 buckets at least
    pool = _clustered(size, 61) if clustered else list(range(1000, 1061))
    model: dict[int, int] = {}
    for removed, puts in batches:
        removed = [pool[k] for k in removed]
        for k in removed:
            model.pop(k, None)
        put_ids, put_slots = [], []
        for key, slot in puts:
            key = pool[key]
            if key not in model and len(model) >= capacity:
                continue           # never more live keys than the tiers hold
            model[key] = slot
            put_ids.append(key)
            put_slots.append(slot)
        index.apply(np.array(removed, dtype=np.int64), np.array(put_ids, dtype=np.int64),
                    np.array(put_slots, dtype=np.int64))
        assert index.contents() == model
        assert naive.slotmap_problems(index.keys) == []
        _sync(index)
        dev_keys, dev_vals = _device_table(index)
        assert naive.slotmap_contents(dev_keys, dev_vals) == model
        # every key lies within the tracked bound of its home, so the probe's rounds suffice
        for pos in np.flatnonzero(index.keys != -1):
            assert (pos - naive.home(int(index.keys[pos]), size)) % size <= index.meta[MAX_SHIFT]
        queries = np.array(pool + [0, 2**62], dtype=np.int64)
        want = [model.get(int(k), -1) for k in queries]
        assert index.probe(torch.from_numpy(queries)).tolist() == want
        assert index.get(queries).tolist() == want


def test_only_written_buckets_travel():
    index = GpuIndex(1000, "cpu", torch)
    assert _sync(index) is None                        # first: the whole table
    ids = np.arange(0, 3000, 7, dtype=np.int64)[:400]
    index.apply(ids[:0], ids, np.arange(400))
    pos = _sync(index)
    assert pos is not None and len(pos) == 400          # one bucket per insert
    index.apply(ids[:10], ids[:0], ids[:0])
    pos = _sync(index)
    assert 10 <= len(pos) < 60                           # the holes, and the keys shifted back
    assert index.probe(torch.from_numpy(ids)).tolist() == [-1] * 10 + list(range(10, 400))
    index.clear()
    assert _sync(index) is None and (index.dev_keys == -1).all()

