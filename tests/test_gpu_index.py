"""The GPU index of the memory tiers, on CPU tensors: host mirror (no ids), changes, torch probe."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from tierstore.kernels import hashing
from tierstore.kernels.slot_index import MAX_SHIFT

torch = pytest.importorskip("torch")
from tierstore.tiers import gpu_index  # noqa: E402
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


def _sync(index):
    """The mirror's changes into the device copy; the positions sent."""
    cleared, pos, keys, vals = index.changes()
    assert (np.diff(pos) > 0).all()                     # each bucket once, in order
    index.load(cleared, torch.from_numpy(pos), torch.from_numpy(keys), torch.from_numpy(vals))
    return cleared, pos


def _small_journal(index):
    """The round's identity map at its least, so rounds make it grow (kernels stop and resume)."""
    index._journal_min = 1
    index._new_journal(1)


def _check(index, table: naive.KeySlotTable, model: dict[int, int]):
    """Mirror, device copy and probe against the plain key/slot table and the dict."""
    size = index.size
    assert index.vals.tolist() == table.vals                           # the mirror: the slots
    assert index.dev_vals.numpy().tolist() == table.vals                # the device copy, whole
    assert index.dev_keys.numpy().tolist() == table.keys
    assert int(index.meta[MAX_SHIFT]) == table.max_shift
    assert naive.slotmap_problems(np.array(table.keys)) == []
    assert index.placements() == {s: naive.home(k, size) for k, s in model.items()}
    ids = np.array(list(model), dtype=np.int64)
    assert index.homes(ids).tolist() == [naive.home(int(k), size) for k in ids]
    for pos in np.flatnonzero(np.array(table.keys) != -1):
        assert (pos - naive.home(table.keys[pos], size)) % size <= index.meta[MAX_SHIFT]
    queries = np.array(list(model) + [0, 2**62, 10**6 + 7], dtype=np.int64)
    want = [model.get(int(k), -1) for k in queries]
    assert index.probe(torch.from_numpy(queries)).tolist() == want


# a batch: slots emptied, then ids admitted (into any slot: its id before leaves), then
# promotions (a resident id to another slot, that slot's id back to the first)
batches = st.lists(st.tuples(st.lists(st.integers(0, 19), max_size=6),
                             st.lists(st.tuples(st.integers(0, 60), st.integers(0, 19)), max_size=8),
                             st.lists(st.tuples(st.integers(0, 19), st.integers(0, 19), st.booleans()),
                                      max_size=4)),
                   max_size=25)


@settings(deadline=None, max_examples=120)
@given(capacity=st.sampled_from([1, 4, 20]), clustered=st.booleans(), small=st.booleans(),
       rounds=batches, clear_at=st.integers(-1, 30))
def test_index_matches_a_key_slot_table_and_a_dict(capacity, clustered, small, rounds, clear_at):
    index = GpuIndex(capacity, "cpu", torch)
    if small:
        _small_journal(index)
    size = index.size
    assert size == hashing.table_size(capacity, 0.75) and size >= 4 * capacity / 3
    assert index.nbytes() <= 32 * capacity or size == 8     # 8 buckets at least
    table = naive.KeySlotTable(size)
    pool = _clustered(size, 61) if clustered else list(range(1000, 1061))
    model: dict[int, int] = {}                                  # id -> slot
    for r, (emptied, puts, swaps) in enumerate(rounds):
        if r == clear_at:
            index.clear()
            table = naive.KeySlotTable(size)
            model.clear()
        by_slot = {s: k for k, s in model.items()}
        emptied = [s % capacity for s in emptied]
        removed = [by_slot.get(s, -1) for s in emptied]
        for s in emptied:
            model.pop(by_slot.pop(s, None), None)
        put_ids, put_slots = [], []
        for key, slot in puts:
            key, slot = pool[key], slot % capacity
            if key in model:
                continue                       # admitted ids are not resident
            model.pop(by_slot.pop(slot, None), None)
            model[key] = slot
            by_slot[slot] = key
            put_ids.append(key)
            put_slots.append(slot)
        index.retarget(np.array(removed, dtype=np.int64), np.array(emptied, dtype=np.int64),
                       np.array(put_ids, dtype=np.int64), np.array(put_slots, dtype=np.int64))
        table.retarget(emptied, put_ids, put_slots)
        promoted, sw_from, sw_to, has_y = [], [], [], []
        for f, t, y in swaps:
            f, t = f % capacity, t % capacity
            if f == t or f not in by_slot or t in sw_from + sw_to or f in sw_from + sw_to:
                continue
            x = by_slot[f]
            y = y and t in by_slot
            if not y and t in by_slot:
                continue                       # a promotion into an occupied slot swaps
            promoted.append(x)
            sw_from.append(f)
            sw_to.append(t)
            has_y.append(y)
        if promoted:
            for x, f, t, y in zip(promoted, sw_from, sw_to, has_y):
                if y:
                    model[by_slot[t]] = f
                    by_slot[f] = by_slot[t]
                else:
                    del by_slot[f]
                model[x] = t
                by_slot[t] = x
            index.swap(np.array(promoted), np.array(sw_from), np.array(sw_to), np.array(has_y))
            table.swap(promoted, sw_from, sw_to, has_y)
        _sync(index)
        _check(index, table, model)


@pytest.mark.parametrize("capacity,small", [(5000, False), (5000, True), (300_000, False)])
def test_large_random_rounds_match_a_build_from_scratch(capacity, small):
    """Rounds of a store's size (evictions, admissions into their slots, promotions): the
    device copy, sent only its changed buckets, equals the copy of an index built in one go
    from the final contents, bucket for bucket (keys inserted in table order land where they
    were)."""
    rng = np.random.default_rng(capacity + small)
    index = GpuIndex(capacity, "cpu", torch)
    if small:
        _small_journal(index)
    slot_id = rng.choice(1 << 40, capacity, replace=False).astype(np.int64)
    empty = np.empty(0, dtype=np.int64)
    index.retarget(empty, empty, slot_id, np.arange(capacity))
    _sync(index)
    fresh = iter(rng.choice(1 << 40, 40 * capacity, replace=False).astype(np.int64) + (1 << 41))
    device_rows = capacity // 10
    for _ in range(6):
        out = rng.choice(capacity, capacity // 5, replace=False)
        new = np.array([next(fresh) for _ in out], dtype=np.int64)
        index.retarget(slot_id[out], out, new, out)
        slot_id[out] = new
        f = rng.choice(np.arange(device_rows, capacity), capacity // 50, replace=False)
        t = rng.choice(device_rows, len(f), replace=False)
        index.swap(slot_id[f], f, t, np.ones(len(f), dtype=bool))
        slot_id[f], slot_id[t] = slot_id[t].copy(), slot_id[f].copy()
        keys_before = index.dev_keys.numpy().copy()
        vals_before = index.dev_vals.numpy().copy()
        _, pos = _sync(index)
        changed = np.flatnonzero((index.dev_keys.numpy() != keys_before)
                                 | (index.dev_vals.numpy() != vals_before))
        assert np.isin(changed, pos).all() and len(pos) < index.size // 2
    # the same contents inserted in table order, after an empty bucket, into a new index
    vals = index.vals
    first_empty = int(np.flatnonzero(vals == -1)[0])
    order = np.roll(np.arange(index.size), -first_empty)
    slots = vals[order][vals[order] != -1].astype(np.int64)
    scratch = GpuIndex(capacity, "cpu", torch)
    scratch.retarget(empty, empty, slot_id[slots], slots)
    _sync(scratch)
    assert np.array_equal(scratch.vals, index.vals)
    assert torch.equal(scratch.dev_keys, index.dev_keys)
    assert torch.equal(scratch.dev_vals, index.dev_vals)
    assert index.probe(torch.from_numpy(slot_id)).tolist() == list(range(capacity))
    if small:
        assert index.meta[gpu_index.ROOM] == 1          # back to its least after each round


def test_only_written_buckets_travel():
    index = GpuIndex(1000, "cpu", torch)
    assert index.dev_keys.eq(-1).all() and len(_sync(index)[1]) == 0    # nothing yet
    ids = np.arange(0, 3000, 7, dtype=np.int64)[:400]
    index.retarget(ids[:0], ids[:0], ids, np.arange(400))
    cleared, pos = _sync(index)
    assert not cleared and len(pos) == 400                 # one bucket per insert
    index.retarget(ids[:10], np.arange(10), ids[:0], ids[:0])
    _, pos = _sync(index)
    assert 10 <= len(pos) < 60                             # the holes, and the keys shifted back
    assert index.probe(torch.from_numpy(ids)).tolist() == [-1] * 10 + list(range(10, 400))
    index.clear()
    cleared, pos = _sync(index)
    assert cleared and len(pos) == 0 and (index.dev_keys == -1).all() and (index.dev_vals == -1).all()
