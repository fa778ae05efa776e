"""tools/software_cache.py (bench_gpu.py's ColossalAI-style baseline), checked on CPU tensors:
rows exact through evictions, LFU victims, the batch's own rows kept, bookkeeping consistent."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tool_loader import load_tool

torch = pytest.importorskip("torch")


def load():
    return load_tool("software_cache.py")


def make(num_rows=50, cache_rows=8, dim=3):
    table = torch.arange(num_rows * dim, dtype=torch.float32).view(num_rows, dim)
    return load().SoftwareCacheEmbedding(table, cache_rows, "cpu"), table


def check_bookkeeping(cache):
    occupied = torch.nonzero(cache.id_of >= 0).squeeze(1)
    assert cache.free == cache.id_of.numel() - occupied.numel()
    assert torch.equal(cache.slot_of[cache.id_of[occupied]], occupied)      # the maps agree
    assert int((cache.slot_of >= 0).sum()) == occupied.numel()
    assert torch.equal(cache.cache[occupied], cache.host[cache.id_of[occupied]])
    assert bool((cache.uses[cache.id_of < 0] == load().FREE).all())


@settings(deadline=None)
@given(st.lists(st.lists(st.integers(0, 49), min_size=1, max_size=12), min_size=1, max_size=25),
       st.integers(1, 6))
def test_rows_exact_through_evictions(batches, extra):
    cache, table = make(cache_rows=6 + extra)
    missed = seen = 0
    for batch in batches:
        ids = torch.tensor(batch).view(-1, 1) if len(batch) % 2 else torch.tensor(batch)
        if len(set(batch)) > cache.cache.shape[0]:
            with pytest.raises(ValueError, match="does not fit"):
                cache(ids)
            continue
        cached_before = {i for i in set(batch) if int(cache.slot_of[i]) >= 0}
        out = cache(ids)
        assert out.shape == ids.shape + (3,) and torch.equal(out, table[ids])
        seen += len(batch)
        missed += sum(1 for i in batch if i not in cached_before)
        assert all(int(cache.slot_of[i]) >= 0 for i in batch)               # all admitted
        check_bookkeeping(cache)
    assert (int(cache.ids_seen), int(cache.ids_missed)) == (seen, missed)
    assert cache.miss_ratio() == missed / max(1, seen)


def test_lfu_victims_and_protected_batch():
    cache, table = make(cache_rows=4)
    cache(torch.tensor([0, 0, 0, 1, 1, 2, 3, 3]))           # uses: 0:3 1:2 2:1 3:2
    assert cache.free == 0
    cache(torch.tensor([7]))                                # the least used row goes: 2
    assert int(cache.slot_of[2]) == -1 and all(int(cache.slot_of[i]) >= 0 for i in (0, 1, 3, 7))
    # 7 has one use, 1 and 3 two, 0 three; 7 is read by this batch, so 1 or 3 goes, not 7
    cache(torch.tensor([7, 9]))
    assert int(cache.slot_of[7]) >= 0 and int(cache.slot_of[9]) >= 0 and int(cache.slot_of[0]) >= 0
    assert [int(cache.slot_of[i]) >= 0 for i in (1, 3)].count(True) == 1
    check_bookkeeping(cache)
    assert torch.equal(cache(torch.tensor([9, 7, 0])), table[[9, 7, 0]])


def test_uses_count_every_occurrence():
    cache, _ = make(cache_rows=4)
    cache(np.array([5, 5, 6]))
    cache(torch.tensor([[5], [6]]))
    assert int(cache.uses[cache.slot_of[5]]) == 3 and int(cache.uses[cache.slot_of[6]]) == 2
    assert (int(cache.ids_seen), int(cache.ids_missed)) == (5, 3)


def test_bad_sizes():
    sc = load()
    with pytest.raises(ValueError):
        sc.SoftwareCacheEmbedding(torch.zeros(4, 2), 0, "cpu")
    with pytest.raises(ValueError):
        sc.SoftwareCacheEmbedding(torch.zeros(4, 2), 5, "cpu")
