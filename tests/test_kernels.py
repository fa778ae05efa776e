"""The numba kernels against the slow references in ``naive.py``."""
from __future__ import annotations

import itertools
import os
import sys
import zlib

import numpy as np
import numpy.testing as npt
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

sys.path.insert(0, os.path.dirname(__file__))
import naive  # noqa: E402

from tierstore.codecs import Int8Codec, RawCodec, ZstdCodec  # noqa: E402
from tierstore.errors import ConfigError  # noqa: E402
from tierstore.kernels import batch, cache_hint, codec, entry_map, hashing, host_index, sketch, slotmap  # noqa: E402
from numba import njit  # noqa: E402
from tierstore.tiers.memory import HostMemory  # noqa: E402

I64 = np.iinfo(np.int64)

# numba compiles a kernel (per argument types) on its first call: no per-example deadline
jit_settings = settings(deadline=None)


# =========================================================================== hashing


@jit_settings
@given(key=st.integers(I64.min, I64.max), seed=st.integers(0, 8))
def test_mix64_matches_splitmix64(key, seed):
    assert int(hashing.mix64(key, seed)) == naive.mix64(key & naive.MASK64, seed)


def test_mix64_known_values():
    # splitmix64's first output for state 0 (gamma added once) is 0xE220A8397B1DCDAF
    assert naive.mix64(0, 1) == 0xE220A8397B1DCDAF
    assert int(hashing.mix64(0, 1)) == 0xE220A8397B1DCDAF


@jit_settings
@given(n=st.integers(0, 5000), load=st.sampled_from([0.5, 1.0]))
def test_table_size(n, load):
    size = hashing.table_size(n, load)
    assert size == naive.table_size(n, load)
    assert size >= 8 and size & (size - 1) == 0
    assert size * load >= n
    assert size == 8 or (size // 2) * load < n


# =========================================================================== slot map


def _clustered_keys(size: int, count: int, homes) -> list[int]:
    """``count`` keys whose home bucket in a table of ``size`` lies in ``homes``."""
    homes = set(homes)
    out = []
    k = 0
    while len(out) < count:
        if naive.entry_map_home(k, size) in homes:
            out.append(k)
        k += 1
    return out


CAPACITIES = (1, 3, 4, 8, 20)
# per capacity: keys that pile into the last two and first two buckets, so runs wrap around
CLUSTERED = {}
for _cap in CAPACITIES:
    _size = len(slotmap.new_slotmap(_cap)[0])
    CLUSTERED[_cap] = _clustered_keys(_size, 2 * _cap + 4, {_size - 2, _size - 1, 0, 1})

slot_ops = st.lists(
    st.tuples(st.sampled_from(["put", "put", "delete", "get"]), st.integers(0, 10**9),
              st.integers(0, 2**31 - 1)),
    max_size=120,
)


def _check_slotmap(keys, vals, model, probe):
    assert naive.slotmap_contents(keys, vals) == model
    assert naive.slotmap_problems(keys, naive.entry_map_home) == []
    ids = np.array(probe, dtype=np.int64)
    out = [slotmap.slotmap_get(keys, vals, k) for k in ids]
    npt.assert_array_equal(out, [model.get(int(k), -1) for k in ids])


@jit_settings
@given(capacity=st.sampled_from(CAPACITIES), clustered=st.booleans(), ops=slot_ops)
def test_slotmap_matches_dict(capacity, clustered, ops):
    keys, vals = slotmap.new_slotmap(capacity)
    assert len(keys) == int(capacity / entry_map.LOAD) + 1
    assert keys.dtype == np.int64 and vals.dtype == np.int32 and (keys == -1).all()
    pool = CLUSTERED[capacity] if clustered else None
    model: dict[int, int] = {}
    for op, raw_key, val in ops:
        key = pool[raw_key % len(pool)] if pool else raw_key
        if op == "put":
            if key not in model and len(model) >= capacity:
                continue  # never more live keys than the capacity the table was sized for
            slotmap.slotmap_put(keys, vals, key, val)
            model[key] = val
        elif op == "delete":
            assert bool(slotmap.slotmap_delete(keys, vals, key)) == (key in model)
            model.pop(key, None)
        assert int(slotmap.slotmap_get(keys, vals, key)) == model.get(key, -1)
    _check_slotmap(keys, vals, model, (pool or []) + list(model) + [10**9 + 1, 0])


@pytest.mark.parametrize("capacity", [3, 4, 8])
def test_slotmap_backward_shift_every_deletion_order(capacity):
    """A full run that wraps past the table's end, emptied in every order."""
    size = len(slotmap.new_slotmap(capacity)[0])
    members = _clustered_keys(size, capacity, {size - 1, 0})[:capacity]
    orders = list(itertools.permutations(range(capacity)))
    if len(orders) > 200:
        rng = np.random.default_rng(capacity)
        orders = [tuple(rng.permutation(capacity)) for _ in range(200)]
    for order in orders:
        keys, vals = slotmap.new_slotmap(capacity)
        model = {}
        for n, k in enumerate(members):
            slotmap.slotmap_put(keys, vals, k, n)
            model[k] = n
        _check_slotmap(keys, vals, model, members)
        for idx in order:
            k = members[idx]
            assert slotmap.slotmap_delete(keys, vals, k)
            assert not slotmap.slotmap_delete(keys, vals, k)
            del model[k]
            _check_slotmap(keys, vals, model, members)
        assert (keys == -1).all()


def test_slotmap_put_overwrites():
    keys, vals = slotmap.new_slotmap(4)
    slotmap.slotmap_put(keys, vals, 42, 1)
    slotmap.slotmap_put(keys, vals, 42, 2)
    assert slotmap.slotmap_get(keys, vals, 42) == 2
    assert (keys == 42).sum() == 1


# =========================================================================== entry map


def _check_entry_map(buckets, ids, model, probe):
    assert naive.entry_map_contents(buckets, ids) == model
    keys = np.where(buckets >= 0, ids[np.maximum(buckets, 0)], -1)
    assert naive.slotmap_problems(keys, naive.entry_map_home) == []
    out = [entry_map.entry_map_get(buckets, ids, k) for k in probe]
    assert out == [model.get(int(k), -1) for k in probe]


@jit_settings
@given(capacity=st.sampled_from(CAPACITIES), clustered=st.booleans(), ops=slot_ops)
def test_entry_map_matches_dict(capacity, clustered, ops):
    """Keys live in ``ids`` at the index the map holds; puts take a free index, as the
    policy's admissions take an evicted entry."""
    buckets = entry_map.new_entry_map(capacity)
    assert buckets.dtype == np.int32 and len(buckets) == int(capacity / entry_map.LOAD) + 1
    assert (buckets == -1).all()
    ids = np.full(capacity, -1, dtype=np.int64)
    pool = _clustered_keys(len(buckets), 2 * capacity + 4, {len(buckets) - 1, 0}) if clustered else None
    model: dict[int, int] = {}
    for op, raw_key, _ in ops:
        key = pool[raw_key % len(pool)] if pool else raw_key
        if op == "put":
            if key in model or len(model) >= capacity:
                continue
            index = int(np.flatnonzero(ids == -1)[0])
            ids[index] = key
            entry_map.entry_map_put(buckets, ids, key, index)
            model[key] = index
        elif op == "delete":
            assert bool(entry_map.entry_map_delete(buckets, ids, key)) == (key in model)
            if key in model:
                ids[model.pop(key)] = -1
        assert int(entry_map.entry_map_get(buckets, ids, key)) == model.get(key, -1)
    _check_entry_map(buckets, ids, model, (pool or []) + list(model) + [10**9 + 1, 0])


@pytest.mark.parametrize("capacity", [3, 4, 8])
def test_entry_map_backward_shift_every_deletion_order(capacity):
    """A full run that wraps past the table's end (not a power of two), emptied in every order."""
    size = len(entry_map.new_entry_map(capacity))
    members = _clustered_keys(size, capacity, {size - 1, 0})
    orders = list(itertools.permutations(range(capacity)))
    if len(orders) > 200:
        rng = np.random.default_rng(capacity)
        orders = [tuple(rng.permutation(capacity)) for _ in range(200)]
    for order in orders:
        buckets = entry_map.new_entry_map(capacity)
        ids = np.array(members, dtype=np.int64)
        model = {}
        for n, k in enumerate(members):
            entry_map.entry_map_put(buckets, ids, k, n)
            model[k] = n
        _check_entry_map(buckets, ids, model, members)
        for idx in order:
            k = members[idx]
            assert entry_map.entry_map_delete(buckets, ids, k)
            assert not entry_map.entry_map_delete(buckets, ids, k)
            del model[k]
            ids[idx] = -1
            _check_entry_map(buckets, ids, model, members)
        assert (buckets == -1).all()


def test_entry_map_refuses_2_31_keys():
    with pytest.raises(ConfigError):
        entry_map.new_entry_map(1 << 31)


# =========================================================================== sketch

# the kernel's counter layout: one row per depth, or Caffeine-style 64-byte blocks
SKETCH_LAYOUT = "blocked" if hasattr(sketch, "BLOCK") else "rows"


def _sketch_pair(capacity, width, sample_size):
    table, state = sketch.new_sketch(capacity, width)
    ref = naive.NaiveCountMin(table.shape, SKETCH_LAYOUT, 0, int(state[1]), depth=sketch.DEPTH)
    if sample_size is not None:
        state[1] = sample_size
        ref.sample_size = sample_size
    return table, state, ref


def _expected_sketch_shape(capacity, width):
    if SKETCH_LAYOUT == "rows":
        cols = naive.table_size(max(capacity, 16) if width is None else width, load=1.0)
        return (sketch.DEPTH, cols)
    counters = sketch.DEPTH * (max(capacity, 16) if width is None else width)
    return (naive.table_size(counters // sketch.BLOCK, load=1.0, minimum=1), sketch.BLOCK)


@pytest.mark.parametrize("capacity,width", [(0, None), (16, None), (100, None), (1000, None),
                                            (5, 7), (5, 64), (5, 4096)])
def test_new_sketch_shape(capacity, width):
    table, state = sketch.new_sketch(capacity, width)
    assert table.shape == _expected_sketch_shape(capacity, width) and table.dtype == np.uint8
    assert table.flags.c_contiguous and not table.any()
    npt.assert_array_equal(state, [0, 10 * max(capacity, 16)])


@jit_settings
@given(
    capacity=st.sampled_from([16, 300]),
    width=st.sampled_from([None, 8, 16, 64]),
    sample_size=st.one_of(st.none(), st.integers(1, 60)),
    keys=st.lists(st.one_of(st.integers(0, 30), st.integers(0, 2**62)), max_size=300),
)
def test_sketch_matches_naive_count_min(capacity, width, sample_size, keys):
    table, state, ref = _sketch_pair(capacity, width, sample_size)
    for k in keys:
        sketch.sketch_add(table, state, k, 1)
        ref.increment(k)
        assert state[0] == ref.additions
    npt.assert_array_equal(table, ref.as_array())
    probe = np.array(sorted(set(keys)) + [123456789], dtype=np.int64)
    out = [sketch.sketch_estimate(table, k) for k in probe]
    npt.assert_array_equal(out, [ref.estimate(int(k)) for k in probe])
    for k in probe[:5]:
        assert sketch.sketch_estimate(table, k) == ref.estimate(int(k))


needs_sketch_add = pytest.mark.skipif(not hasattr(sketch, "sketch_add"), reason="no sketch_add kernel")


@needs_sketch_add
@jit_settings
@given(
    sample_size=st.one_of(st.none(), st.integers(1, 200)),
    adds=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 300)), max_size=60),
)
def test_sketch_add_matches_naive(sample_size, adds):
    table, state, ref = _sketch_pair(16, None, sample_size)
    for k, amount in adds:
        sketch.sketch_add(table, state, k, amount)
        ref.add(k, amount)
        assert state[0] == ref.additions
    npt.assert_array_equal(table, ref.as_array())


@needs_sketch_add
@jit_settings
@given(adds=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=40))
def test_sketch_add_equals_repeated_increments_without_halving(adds):
    t1, s1, _ = _sketch_pair(16, None, 10**9)
    t2, s2, _ = _sketch_pair(16, None, 10**9)
    for k, amount in adds:
        sketch.sketch_add(t1, s1, k, amount)
        for _ in range(amount):
            sketch.sketch_add(t2, s2, k, 1)
    npt.assert_array_equal(t1, t2)
    npt.assert_array_equal(s1, s2)


def test_sketch_saturates_at_255():
    table, state, ref = _sketch_pair(16, 16, 10**9)
    for _ in range(300):
        sketch.sketch_add(table, state, 7, 1)
        ref.increment(7)
    assert sketch.sketch_estimate(table, 7) == 255
    assert state[0] == 300
    npt.assert_array_equal(table, ref.as_array())
    assert table.max() == 255 and (table == 255).sum() == sketch.DEPTH


def test_sketch_halves_on_sample_size():
    table, state, ref = _sketch_pair(16, 16, 10)
    for _ in range(9):
        sketch.sketch_add(table, state, 3, 1)
    assert sketch.sketch_estimate(table, 3) == 9 and state[0] == 9
    sketch.sketch_add(table, state, 3, 1)  # the 10th addition triggers halving
    assert sketch.sketch_estimate(table, 3) == 5 and state[0] == 5


@jit_settings
@given(table=hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), st.sampled_from([8, 16, 64]))),
       additions=st.integers(0, 10**6))
def test_sketch_halve(table, additions):
    expect = table >> 1
    state = np.array([additions, 10], dtype=np.int64)
    sketch.sketch_halve(table, state)
    npt.assert_array_equal(table, expect)
    assert state[0] == additions // 2 and state[1] == 10


@jit_settings
@given(capacity=st.sampled_from([16, 64]),
       keys=st.lists(st.integers(0, 200), max_size=400))
def test_sketch_never_underestimates_without_halving(capacity, keys):
    table, state, _ = _sketch_pair(capacity, None, 10**9)
    true = {}
    for k in keys:
        sketch.sketch_add(table, state, k, 1)
        true[k] = true.get(k, 0) + 1
    for k, c in true.items():
        est = sketch.sketch_estimate(table, k)
        assert min(c, 255) <= est <= 255
    assert sketch.sketch_estimate(table, 10**6) >= 0


# =========================================================================== batch

id_arrays = hnp.arrays(np.int64, st.integers(0, 60),
                       elements=st.one_of(st.integers(-3, 12), st.integers(I64.min + 1, I64.max)))


@jit_settings
@given(ids=id_arrays, num_rows=st.integers(0, 15))
def test_first_out_of_range(ids, num_rows):
    assert batch.first_out_of_range(ids, num_rows) == naive.first_out_of_range(ids, num_rows)


@jit_settings
@given(ids=id_arrays)
def test_dedupe(ids):
    uniq, inverse, counts = batch.dedupe(ids)
    r_uniq, r_inverse, r_counts = naive.dedupe(ids)
    npt.assert_array_equal(uniq, r_uniq)
    npt.assert_array_equal(inverse, r_inverse)
    npt.assert_array_equal(counts, r_counts)
    npt.assert_array_equal(uniq[inverse], ids)
    assert counts.sum() == len(ids)
    assert len(set(uniq.tolist())) == len(uniq)


@jit_settings
@given(ids=id_arrays, parts=st.integers(1, 17))
def test_partition_of(ids, parts):
    npt.assert_array_equal(batch.partition_of(ids, parts), naive.partition_of(ids, parts))


@jit_settings
@given(ids=id_arrays)
def test_dedupe_last(ids):
    uniq, last = batch.dedupe_last(ids)
    r_uniq, r_last = naive.dedupe_last(ids)
    npt.assert_array_equal(uniq, r_uniq)
    npt.assert_array_equal(last, r_last)
    npt.assert_array_equal(ids[last], uniq)
    for u, pos in zip(uniq, last):
        assert u not in ids[pos + 1:]


def _memory(device, ram):
    """HostMemory holding these two slabs."""
    memory = HostMemory(len(device), len(ram), device.shape[1], device.dtype)
    memory.device[...] = device
    memory.ram[...] = ram
    return memory


@jit_settings
@given(data=st.data(), d=st.integers(0, 5), r=st.integers(0, 6), width=st.integers(1, 8),
       m=st.integers(0, 15))
def test_gather_tiered(data, d, r, width, m):
    device = data.draw(hnp.arrays(np.uint8, (d, width)))
    ram = data.draw(hnp.arrays(np.uint8, (r, width)))
    slots = data.draw(hnp.arrays(np.int64, m, elements=st.integers(-1, d + r - 1)))
    out = data.draw(hnp.arrays(np.uint8, (m, width)))
    expect = naive.gather_tiered(device, ram, d, slots, out.copy())
    _memory(device, ram).gather(slots, out)
    npt.assert_array_equal(out, expect)


def _host_index(d, r, resident, slots):
    """A host index (kernels/host_index.py) of ``d + r`` slots holding ``resident[k]`` in
    ``slots[k]``: its buckets and ``owner``."""
    buckets, owner = host_index.new_host_index(d + r, 0.75)
    host_index.index_retarget(buckets, owner, np.empty(0, dtype=np.int64),
                              np.array(resident, dtype=np.int64), np.array(slots, dtype=np.int64))
    return buckets, owner


def _check_host_index(buckets, owner, model):
    """The index holds exactly ``model`` (slot -> id), soundly probed: a gather of rows that
    hold their own slot finds each id's slot, and no other id."""
    assert owner.tolist() == list(model)
    keys = naive.host_index_keys(buckets, owner)
    assert naive.slotmap_problems(keys, naive.entry_map_home) == []
    expect = {x: s for s, x in enumerate(model) if x >= 0}
    assert {int(k) for k in keys if k >= 0} == set(expect)
    probe = np.array(list(expect) + [10**9 + 1, 0], dtype=np.int64)
    rows = np.arange(len(model), dtype=np.uint64)[:, None]
    out = np.full((len(probe), 1), 99, dtype=np.uint64)
    missed = np.empty(len(probe), dtype=np.int64)
    n = host_index.index_gather(buckets, owner, rows, probe, out, missed, np.empty_like(probe))
    found = {int(k): int(out[i, 0]) for i, k in enumerate(probe) if i not in set(missed[:n].tolist())}
    assert found == expect


@jit_settings
@given(data=st.data(), d=st.integers(0, 5), r=st.integers(0, 6), width=st.integers(1, 8),
       m=st.integers(0, 15))
def test_index_gather(data, d, r, width, m):
    """Probe the index and copy each found row; list the positions of the others; keep a copy
    of the ids."""
    device = data.draw(hnp.arrays(np.uint8, (d, width)))
    ram = data.draw(hnp.arrays(np.uint8, (r, width)))
    resident = data.draw(st.lists(st.integers(0, 40), unique=True, max_size=d + r))
    slots = data.draw(st.permutations(range(d + r)))[:len(resident)]
    buckets, owner = _host_index(d, r, resident, slots)
    ids = data.draw(hnp.arrays(np.int64, m, elements=st.integers(0, 40)))
    out = data.draw(hnp.arrays(np.uint8, (m, width)))
    expect, expect_missed = naive.index_gather(dict(zip(resident, slots)), device, ram, d, ids, out)
    missed = np.full(m, -1, dtype=np.int64)
    slab = np.concatenate([device, ram])       # the device tier's rows first, as HostMemory's
    kept = np.full(m, -1, dtype=np.int64)
    n = host_index.index_gather(buckets, owner, slab, ids, out, missed, kept)
    npt.assert_array_equal(out, expect)
    assert missed[:n].tolist() == expect_missed
    npt.assert_array_equal(kept, ids)


@njit
def _copy_with_hints(flat, rows, out_flat, out_rows):
    """Copies that ask for each line a few steps ahead (cache_hint): the hints compile for
    1-D and 2-D arrays of any dtype and change nothing."""
    for i in range(len(flat)):
        cache_hint.prefetch(flat, min(i + 3, len(flat) - 1))
        out_flat[i] = flat[i]
    for r in range(rows.shape[0]):
        cache_hint.prefetch_row(rows, min(r + 3, rows.shape[0] - 1))
        cache_hint.prefetch(rows, (r, 0))
        out_rows[r] = rows[r]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.uint64, np.float32])
def test_cache_hints_change_nothing(dtype):
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 100, 37).astype(dtype)
    rows = rng.integers(0, 100, (11, 70)).astype(dtype)
    out_flat, out_rows = np.zeros_like(flat), np.zeros_like(rows)
    _copy_with_hints(flat, rows, out_flat, out_rows)
    npt.assert_array_equal(out_flat, flat)
    npt.assert_array_equal(out_rows, rows)


def _tag_twins(slots, load, count):
    """``count`` keys with one home bucket and one tag in a host index of ``slots`` slots: each
    probe passes the others' buckets, their tags matching, so only ``owner`` tells them apart."""
    size = host_index.index_buckets(slots, load)
    bits = max(1, (slots - 1).bit_length())
    keys = np.arange(1 << 22, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (keys ^ (keys >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = z ^ (z >> np.uint64(31))
        home = ((h >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32)
    group = home.astype(np.int64) << (31 - bits) | (h & np.uint64((1 << (31 - bits)) - 1)).astype(np.int64)
    values, first, counts = np.unique(group, return_index=True, return_counts=True)
    twins = np.flatnonzero(group == values[np.argmax(counts)])
    assert len(twins) >= count
    for k in twins[:count]:
        assert naive.entry_map_home(int(k), size) == int(home[twins[0]])
    return [int(k) for k in twins[:count]]


def test_host_index_tag_twins():
    """Keys whose tags and home buckets agree: each finds its own slot, an absent twin none,
    and deleting the first keeps the others reachable."""
    a, b, absent = _tag_twins(8, 0.75, 3)
    c = 5
    buckets, owner = _host_index(3, 5, [a, b, c], [6, 1, 4])
    model = [-1, b, -1, -1, c, -1, a, -1]
    _check_host_index(buckets, owner, model)
    rows = np.arange(8, dtype=np.uint64)[:, None]
    out = np.zeros((1, 1), dtype=np.uint64)
    missed = np.empty(1, dtype=np.int64)
    probe = np.array([absent], dtype=np.int64)
    assert host_index.index_gather(buckets, owner, rows, probe, out, missed,
                                   np.empty_like(probe)) == 1
    host_index.index_retarget(buckets, owner, np.array([6]), np.empty(0, dtype=np.int64),
                              np.empty(0, dtype=np.int64))
    model[6] = -1
    _check_host_index(buckets, owner, model)


@pytest.mark.parametrize("present", [0, 3, 4, 5, 9])
def test_index_gather_runs_longer_than_its_window(present):
    """Keys sharing one home bucket form a run longer than the probe's branch-free window
    (``host_index.WINDOW``): each is found past it, and an absent one of the same home is
    missed; runs that wrap past the last bucket too."""
    slots = 16
    size = host_index.index_buckets(slots, 0.75)
    keys = np.arange(1 << 16, dtype=np.int64)
    homes = np.array([naive.entry_map_home(int(k), size) for k in keys])
    # a run inside the table, one that wraps after a full window, one that wraps within it
    for home in (3, size - host_index.WINDOW, size - 2):
        same = keys[homes == home][:present + 1]
        absent = int(same[-1])
        resident = same[:-1].tolist()
        buckets, owner = _host_index(4, slots - 4, resident, list(range(present)))
        probe = np.array(resident + [absent], dtype=np.int64)
        rows = np.arange(slots, dtype=np.uint64)[:, None]
        out = np.full((len(probe), 1), 99, dtype=np.uint64)
        missed = np.empty(len(probe), dtype=np.int64)
        n = host_index.index_gather(buckets, owner, rows, probe, out, missed,
                                    np.empty_like(probe))
        assert missed[:n].tolist() == [present]
        assert out[:present, 0].tolist() == list(range(present))


@jit_settings
@given(data=st.data(), d=st.integers(0, 4), r=st.integers(1, 7), rounds=st.integers(1, 8))
def test_host_index_moves(data, d, r, rounds):
    """Retargets (evictions, admissions, ids moved, slots taken over) and promotions' swaps
    leave the index holding what the reference's slot -> id says, and soundly probed."""
    n = d + r
    buckets, owner = _host_index(d, r, [], [])
    model = [-1] * n
    for _ in range(rounds):
        if data.draw(st.booleans()):
            removed = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
            puts = data.draw(st.lists(st.tuples(st.integers(0, 12), st.integers(0, n - 1)),
                                      max_size=n))
            args = (np.array(removed, dtype=np.int64), np.array([p[0] for p in puts], dtype=np.int64),
                    np.array([p[1] for p in puts], dtype=np.int64))
            model = naive.index_retarget(model, *args)
            host_index.index_retarget(buckets, owner, *args)
        else:
            ram_held = [s for s in range(d, n) if model[s] >= 0]
            pairs = min(len(ram_held), d)
            k = data.draw(st.integers(0, pairs))
            sw_from = np.array(data.draw(st.permutations(ram_held))[:k], dtype=np.int64)
            sw_to = np.array(data.draw(st.permutations(range(d)))[:k], dtype=np.int64)
            args = (np.array([model[s] for s in sw_from], dtype=np.int64), sw_from, sw_to,
                    np.array([model[s] >= 0 for s in sw_to], dtype=np.bool_))
            model = naive.index_swap(model, *args)
            host_index.index_swap(buckets, owner, *args)
        _check_host_index(buckets, owner, model)


@jit_settings
@given(data=st.data(), d=st.integers(0, 5), r=st.integers(0, 6), width=st.integers(1, 8),
       m=st.integers(0, 15))
def test_scatter_tiered(data, d, r, width, m):
    assume(d + r > 0)
    device = data.draw(hnp.arrays(np.uint8, (d, width)))
    ram = data.draw(hnp.arrays(np.uint8, (r, width)))
    slots = data.draw(hnp.arrays(np.int64, m, elements=st.integers(0, d + r - 1)))
    rows = data.draw(hnp.arrays(np.uint8, (m, width)))
    e_device, e_ram = naive.scatter_tiered(rows, slots, device.copy(), ram.copy(), d)
    memory = _memory(device, ram)
    memory.write(slots, rows)
    memory.commit()
    npt.assert_array_equal(memory.device, e_device)
    npt.assert_array_equal(memory.ram, e_ram)


def test_gather_tiered_float_rows():
    """float32 slabs, a row left alone where the slot is -1."""
    device = np.arange(6, dtype=np.float32).reshape(2, 3)
    ram = -np.arange(9, dtype=np.float32).reshape(3, 3) - 1
    out = np.full((4, 3), 99.0, dtype=np.float32)
    slots = np.array([4, -1, 1, 2], dtype=np.int64)
    _memory(device, ram).gather(slots, out)
    npt.assert_array_equal(out, [ram[2], [99, 99, 99], device[1], ram[0]])


@jit_settings
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]))
def test_any_nonfinite_row(data, dtype):
    rows = data.draw(hnp.arrays(dtype, st.tuples(st.integers(0, 8), st.integers(0, 6)),
                                elements=st.floats(width=np.dtype(dtype).itemsize * 8)))
    assert batch.any_nonfinite_row(rows) == naive.any_nonfinite_row(rows)


@jit_settings
@given(data=st.data())
def test_any_nonfinite_half_row(data):
    rows = data.draw(hnp.arrays(np.float16, st.tuples(st.integers(0, 8), st.integers(0, 6)),
                                elements=st.floats(width=16)))
    assert batch.any_nonfinite_half_row(rows.view(np.uint16)) == naive.any_nonfinite_row(rows)


def test_any_nonfinite_row_examples():
    rows = np.zeros((4, 3), dtype=np.float32)
    assert batch.any_nonfinite_row(rows) == -1
    rows[2, 1] = np.inf
    rows[3, 0] = np.nan
    assert batch.any_nonfinite_row(rows) == 2
    rows[1, 2] = -np.inf
    assert batch.any_nonfinite_row(rows) == 1


# =========================================================================== codec kernels

byte_strings = st.binary(max_size=300)


def _crc_tables():
    """The kernel's lookup tables as (k, 256): one table, or slicing-by-k tables."""
    tables = codec.CRC_TABLES if hasattr(codec, "CRC_TABLES") else codec.CRC_TABLE
    return np.atleast_2d(tables)


def test_crc_tables_match_bitwise():
    # a zeroed register fed byte n then t zero bytes ends at tables[t][n]:
    # crc32(bytes([n]) + bytes(t), ~0) == ~tables[t][n]
    tables = _crc_tables()
    assert tables.shape[1] == 256 and tables.dtype == np.uint32
    for t in range(tables.shape[0]):
        for n in range(256):
            data = bytes([n]) + bytes(t)
            assert int(tables[t, n]) == zlib.crc32(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
            if n % 37 == 0:
                assert int(tables[t, n]) == naive.crc32_bitwise(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert naive.crc32_bitwise(b"123456789") == 0xCBF43926 == zlib.crc32(b"123456789")
    assert int(codec.crc32_update(0, np.frombuffer(b"123456789", np.uint8), 0, 9)) == 0xCBF43926


@jit_settings
@given(data=byte_strings, crc=st.integers(0, 2**32 - 1), cut=st.integers(0, 300))
def test_crc32_update_matches_zlib(data, crc, cut):
    buf = np.frombuffer(data, dtype=np.uint8)  # read-only, as the disk tier passes it
    n = len(data)
    cut = min(cut, n)
    assert int(codec.crc32_update(0, buf, 0, n)) == zlib.crc32(data)
    assert int(codec.crc32_update(crc, buf, 0, n)) == zlib.crc32(data, crc)
    assert int(codec.crc32_update(np.uint32(crc), buf, 0, n)) == zlib.crc32(data, crc)
    # continued over two pieces
    first = codec.crc32_update(crc, buf, 0, cut)
    assert int(codec.crc32_update(first, buf, cut, n)) == zlib.crc32(data, crc)
    # a window in the middle
    assert int(codec.crc32_update(0, buf, cut // 2, cut)) == zlib.crc32(data[cut // 2:cut])


@jit_settings
@given(first=st.integers(0, 2**40), rows=st.integers(0, 6), width=st.integers(0, 40),
       seed=st.integers(0, 2**32 - 1))
def test_frame_rows(first, rows, width, seed):
    payloads = np.random.default_rng(seed).integers(0, 256, (rows, width), dtype=np.uint8)
    keybuf = np.arange(first, first + rows, dtype=np.int64).astype(">u8").view(np.uint8)
    out = np.empty((rows, width + 4), dtype=np.uint8)
    codec.frame_rows(keybuf, payloads, out)
    for i in range(rows):
        assert out[i].tobytes() == naive.frame(first + i, payloads[i].tobytes())
    if width % 8 == 0:
        words = np.zeros((rows, width + 4), dtype=np.uint8)
        codec.frame_word_rows(keybuf, payloads.view("<u4"), payloads, words)
        npt.assert_array_equal(words, out)


frame_specs = st.lists(
    st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=40),
              st.sampled_from(["good", "good", "flip_payload", "flip_crc", "wrong_key", "short"]),
              st.integers(0, 10**6)),
    max_size=12,
)


@jit_settings
@given(specs=frame_specs)
def test_verify_frames(specs):
    values = []
    ids = []
    for key, payload, kind, noise in specs:
        value = bytearray(naive.frame(key, payload))
        if kind == "flip_payload" and payload:
            value[noise % len(payload)] ^= 1 << (noise % 8)
        elif kind == "flip_crc":
            value[len(payload) + noise % 4] ^= 1 << (noise % 8)
        elif kind == "wrong_key":
            value = bytearray(naive.frame(key ^ (1 << (noise % 64)), payload))
        elif kind == "short":
            value = value[:noise % 4]
        values.append(bytes(value))
        ids.append(key)
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    stops = np.cumsum(lengths)
    starts = stops - lengths
    buf = np.frombuffer(b"".join(values), dtype=np.uint8)
    keybuf = np.ascontiguousarray(np.array(ids, dtype=np.uint64), dtype=">u8").view(np.uint8)
    exp_ok, exp_stops = naive.verify_frames(keybuf.tobytes(), buf.tobytes(), starts, stops)
    ok = np.zeros(len(values), dtype=np.bool_)
    got_stops = stops.copy()
    codec.verify_frames(keybuf, buf, starts, got_stops, ok)
    npt.assert_array_equal(ok, exp_ok)
    npt.assert_array_equal(got_stops, exp_stops)
    for (_key, payload, kind, _), good, a, b in zip(specs, ok, starts, got_stops):
        if kind == "good":
            assert good
            assert buf[a:b].tobytes() == payload
        if kind == "short":
            assert not good


@jit_settings
@given(rows=st.integers(0, 11), words=st.sampled_from([2, 4, 16, 64]),
       damage=st.lists(st.tuples(st.integers(0, 10), st.sampled_from(["payload", "crc", "key"]),
                                 st.integers(0, 10**6)), max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_verify_raw_words(rows, words, damage, seed):
    """Frames checked and copied to their rows four at a time (the rest one by one), against zlib."""
    rng = np.random.default_rng(seed)
    width = 4 * words
    keys = np.sort(rng.choice(2**40, rows, replace=False)) if rows else np.zeros(0, np.int64)
    payloads = rng.integers(0, 256, (rows, width), dtype=np.uint8)
    frames = [bytearray(naive.frame(int(k), p.tobytes())) for k, p in zip(keys, payloads)]
    for row, kind, noise in damage:
        if row >= rows:
            continue
        if kind == "payload":
            frames[row][noise % width] ^= 1 << (noise % 8)
        elif kind == "crc":
            frames[row][width + noise % 4] ^= 1 << (noise % 8)
        else:
            frames[row] = bytearray(naive.frame(int(keys[row]) ^ (1 << (noise % 40)),
                                                payloads[row].tobytes()))
    frames = [bytes(f) for f in frames]
    want_rows, want_ok = naive.verify_raw_rows(keys, frames, width)
    packed = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
    out = np.zeros((rows + 2, words), dtype=np.uint32)   # two rows no frame goes to
    dest = rng.permutation(rows + 2)[:rows]
    ok = np.zeros(rows, dtype=np.bool_)
    codec.verify_raw_words(keys.astype(">u8").view(np.uint8), packed.view("<u4").reshape(rows, words + 1),
                           out, dest, ok)
    npt.assert_array_equal(ok, want_ok)
    npt.assert_array_equal(out.view(np.uint8).reshape(rows + 2, width)[dest], want_rows)
    untouched = np.setdiff1d(np.arange(rows + 2), dest)
    assert not out[untouched].any()


def _pack(payloads):
    lengths = np.array([len(p) for p in payloads], dtype=np.int64)
    stops = np.cumsum(lengths) if len(payloads) else np.zeros(0, dtype=np.int64)
    starts = stops - lengths
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    return buf, starts, stops


@jit_settings
@given(width=st.integers(0, 12), payloads=st.lists(st.binary(max_size=14), max_size=8),
       fill=st.integers(0, 255))
def test_decode_raw_rows(width, payloads, fill):
    buf, starts, stops = _pack(payloads)
    out = np.full((len(payloads), width), fill, dtype=np.uint8)
    exp_out, exp_ok = naive.decode_raw_rows(buf.tobytes(), starts, stops, out)
    ok = np.zeros(len(payloads), dtype=np.bool_)
    codec.decode_raw_rows(buf, starts, stops, out, ok)
    npt.assert_array_equal(ok, exp_ok)
    npt.assert_array_equal(out, exp_out)


int8_payloads = st.tuples(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.binary(max_size=12),
    st.booleans(),
)


@jit_settings
@given(dim=st.integers(0, 8), specs=st.lists(int8_payloads, max_size=8))
def test_decode_int8_rows(dim, specs):
    payloads = []
    for scale, body, well_formed in specs:
        if well_formed:
            body = (body + bytes(dim))[:dim]
        payloads.append(np.float32(scale).astype("<f4").tobytes() + body)
    buf, starts, stops = _pack(payloads)
    out = np.full((len(payloads), dim), -3.5, dtype=np.float32)
    exp_out, exp_ok = naive.decode_int8_rows(buf.tobytes(), starts, stops, out)
    ok = np.zeros(len(payloads), dtype=np.bool_)
    codec.decode_int8_rows(buf, starts, stops, out, ok)
    npt.assert_array_equal(ok, exp_ok)
    npt.assert_array_equal(out, exp_out)  # NaN positions must agree too


def test_decode_int8_rows_example():
    payload = np.float32(0.5).astype("<f4").tobytes() + np.array([1, -2, 127, -128], np.int8).tobytes()
    buf, starts, stops = _pack([payload, payload[:-1]])
    out = np.zeros((2, 4), dtype=np.float32)
    ok = np.zeros(2, dtype=np.bool_)
    codec.decode_int8_rows(buf, starts, stops, out, ok)
    npt.assert_array_equal(ok, [True, False])
    npt.assert_array_equal(out, [[0.5, -1.0, 63.5, -64.0], [0, 0, 0, 0]])


# =========================================================================== codecs


def _roundtrip(c, rows):
    payloads = c.encode(rows)
    assert len(payloads) == len(rows) and all(isinstance(p, bytes) for p in payloads)
    buf, starts, stops = _pack(payloads)
    out = np.zeros_like(rows)
    ok = c.decode(buf, starts, stops, out)
    assert ok.dtype == np.bool_ and ok.shape == (len(rows),)
    return ok, out


def _finite_rows(dtype, max_rows=6, max_dim=10):
    info = np.finfo(dtype)
    # keep |x| well inside float16's range so a float32 scale and int8 stay finite
    # (float32 rows within an ulp of float32's max overflow: see the xfail test below)
    bound = float(info.max) / 2 if dtype == np.float16 else 2.0**100
    return hnp.arrays(
        dtype, st.tuples(st.integers(1, max_rows), st.integers(1, max_dim)),
        elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                           width=info.bits),
    )


rows_any = st.sampled_from([np.float16, np.float32]).flatmap(_finite_rows)


@jit_settings
@given(rows=rows_any)
def test_raw_codec_roundtrip(rows):
    ok, out = _roundtrip(RawCodec(), rows)
    assert ok.all()
    npt.assert_array_equal(out.view(np.uint8), rows.view(np.uint8))


@settings(max_examples=30, deadline=None)
@given(rows=rows_any, level=st.sampled_from([1, 3, 19]))
def test_zstd_codec_roundtrip(rows, level):
    ok, out = _roundtrip(ZstdCodec(level=level), rows)
    assert ok.all()
    npt.assert_array_equal(out.view(np.uint8), rows.view(np.uint8))


@pytest.fixture(scope="module")
def trained_zstd():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16).astype(np.float32)
    sample = (base + rng.integers(0, 4, (400, 16)) * 0.5).astype(np.float32)
    c = ZstdCodec(level=3, dict_size=1024)
    assert c.needs_training()
    t = c.trained(sample)
    assert not t.needs_training() and t.dictionary
    assert t.get_config() == {"id": "zstd", "level": 3, "dict_size": 1024}
    return t, sample


def test_zstd_trained_dictionary_roundtrip(trained_zstd):
    c, sample = trained_zstd
    rows = sample[:50]
    ok, out = _roundtrip(c, rows)
    assert ok.all()
    npt.assert_array_equal(out, rows)
    # other rows of the same width and dtype decode too
    other = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    ok, out = _roundtrip(c, other)
    assert ok.all()
    npt.assert_array_equal(out, other)
    # payloads made with the dictionary do not decode without it: ok=False, no exception
    buf, starts, stops = _pack(c.encode(rows))
    out = np.zeros_like(rows)
    assert not ZstdCodec().decode(buf, starts, stops, out).any()


@jit_settings
@given(rows=rows_any)
def test_int8_codec_roundtrip_within_error_bound(rows):
    c = Int8Codec()
    ok, out = _roundtrip(c, rows)
    assert ok.all()
    assert out.dtype == rows.dtype
    err = np.abs(out.astype(np.float64) - rows.astype(np.float64)).max(axis=1)
    bound = c.max_abs_error(rows)
    assert bound.shape == (len(rows),)
    assert (err <= bound).all(), (err, bound)
    # zero rows stay exactly zero
    assert not out[~rows.any(axis=1)].any()


def test_int8_codec_roundtrip_float32_max():
    big = np.finfo(np.float32).max
    rows = np.array([[big, -big, big / 3]], dtype=np.float32)
    c = Int8Codec()
    ok, out = _roundtrip(c, rows)
    assert ok.all()
    assert np.isfinite(out).all(), out
    err = np.abs(out.astype(np.float64) - rows.astype(np.float64)).max(axis=1)
    assert (err <= c.max_abs_error(rows)).all()


def test_int8_codec_payload_layout():
    rows = np.array([[1.0, -0.5, 0.25, 0.0], [0, 0, 0, 0]], dtype=np.float32)
    p = Int8Codec().encode(rows)
    assert len(p[0]) == 4 + 4
    assert np.frombuffer(p[0][:4], "<f4")[0] == np.float32(1.0) / np.float32(127.0)
    npt.assert_array_equal(np.frombuffer(p[0][4:], np.int8), [127, -64, 32, 0])
    assert p[1] == bytes(8)


@pytest.mark.parametrize("c", [RawCodec(), Int8Codec(), ZstdCodec()], ids=lambda c: c.codec_id)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_codec_zero_width_rows(c, dtype):
    rows = np.zeros((3, 0), dtype=dtype)
    ok, out = _roundtrip(c, rows)
    assert ok.all() and out.shape == (3, 0)


# Int8Codec.decode leaves rows it rejects as np.empty garbage, which may overflow float16
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("c", [RawCodec(), Int8Codec(), ZstdCodec()], ids=lambda c: c.codec_id)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_codec_wrong_length_payloads_not_ok(c, dtype):
    rows = np.linspace(-1, 1, 3 * 8, dtype=np.float32).reshape(3, 8).astype(dtype)
    good = c.encode(rows)
    # (zstd: a frame with bytes after it is covered by an xfail test below)
    longer = good[2] + b"\x00" if c.codec_id != "zstd" else ZstdCodec().encode(rows[:, :4].copy())[0]
    payloads = [good[0], good[1][:-1], longer, b"", good[0]]
    buf, starts, stops = _pack(payloads)
    out = np.zeros((5, 8), dtype=dtype)
    ok = c.decode(buf, starts, stops, out)
    npt.assert_array_equal(ok, [True, False, False, False, True])
    npt.assert_array_equal(out[0], out[4])


def test_zstd_frame_with_trailing_bytes_not_ok():
    rows = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    payload = ZstdCodec().encode(rows)[0] + b"\x00junk"
    buf, starts, stops = _pack([payload])
    out = np.zeros((1, 8), dtype=np.float32)
    npt.assert_array_equal(ZstdCodec().decode(buf, starts, stops, out), [False])


def test_zstd_valid_frame_of_wrong_width_not_ok():
    import zstandard

    c = ZstdCodec()
    payloads = [zstandard.ZstdCompressor().compress(bytes(100)),
                zstandard.ZstdCompressor(write_content_size=False).compress(bytes(100)),
                zstandard.ZstdCompressor().compress(bytes(8))]
    buf, starts, stops = _pack(payloads)
    out = np.zeros((3, 16), dtype=np.uint8)
    npt.assert_array_equal(c.decode(buf, starts, stops, out), [False, False, False])


@jit_settings
@given(garbage=st.lists(st.binary(max_size=64), min_size=1, max_size=6))
def test_zstd_garbage_not_ok(garbage):
    buf, starts, stops = _pack(garbage)
    out = np.zeros((len(garbage), 4), dtype=np.float32)
    ok = ZstdCodec().decode(buf, starts, stops, out)
    assert ok.dtype == np.bool_ and not ok.any()


@pytest.mark.parametrize("c", [RawCodec(), ZstdCodec()], ids=lambda c: c.codec_id)
def test_codec_decode_empty_batch(c):
    out = np.zeros((0, 4), dtype=np.float32)
    ok = c.decode(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), out)
    assert ok.shape == (0,)


def test_int8_codec_decode_empty_batch():
    out = np.zeros((0, 4), dtype=np.float32)
    ok = Int8Codec().decode(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), out)
    assert ok.shape == (0,)
