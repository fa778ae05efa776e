"""The replacement policies against naive Python caches, and their bookkeeping invariants."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import naive  # noqa: E402

from tierstore.kernels.sketch import sketch_estimate  # noqa: E402
from tierstore.policy import POLICIES  # noqa: E402
from tierstore.policy.planner import simulate_lookahead, simulate_trace  # noqa: E402
from tierstore.policy.queries import check_invariants  # noqa: E402
from tierstore.policy.state import (ADMISSIONS, AHEAD_LIVE, DISK_READS, DEVICE_HITS, EVICTIONS, MISSES,  # noqa: E402
                                    RAM_HITS, TICK, USED, CacheState)
from tierstore.policy.stamps import REBASE_AT  # noqa: E402

# numba compiles the planner on its first call: no per-example deadline
jit_settings = settings(deadline=None)

NAIVE = {"lru": naive.NaiveLRU, "lfu": naive.NaiveLFU}

traces = st.lists(st.integers(0, 15), max_size=150)


def _simulate(state, trace, batch):
    simulate_trace(state.arrays(), np.asarray(trace, dtype=np.int64), batch)


def _hits(state):
    return int(state.meta[RAM_HITS] + state.meta[DEVICE_HITS])


def _misses(state):
    return int(state.meta[MISSES])


def test_policies_listed():
    assert set(POLICIES) == {"adaptive", "wtinylfu", "lru", "lfu"}


# =========================================================================== exact references


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@jit_settings
@given(ram_rows=st.integers(1, 6), trace=traces)
def test_ram_only_batch1_matches_naive(policy, ram_rows, trace):
    """device_rows=0, batch=1: exactly the hits of a naive cache of ram_rows."""
    state = CacheState.new(0, ram_rows, policy)
    _simulate(state, trace, 1)
    ref = NAIVE[policy](ram_rows)
    hits, misses = naive.run_cache(ref, trace)
    assert (_hits(state), _misses(state)) == (hits, misses)
    assert state.meta[DEVICE_HITS] == 0
    assert set(state.resident()) == ref.resident()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@jit_settings
@given(device_rows=st.integers(0, 4), ram_rows=st.integers(0, 6), batch=st.integers(1, 8),
       chunks=st.lists(traces, min_size=1, max_size=4))
def test_batched_with_device_matches_naive(policy, device_rows, ram_rows, batch, chunks):
    """Where a row lies never changes who is resident: capacity device+ram, any batch.

    The planner takes a batch's unique ids once each in first-seen order and
    counts all of an id's accesses as hits iff it was resident as the batch began.
    """
    assume(device_rows + ram_rows >= 1)
    state = CacheState.new(device_rows, ram_rows, policy)
    ref = NAIVE[policy](device_rows + ram_rows)
    hits = misses = 0
    for trace in chunks:
        _simulate(state, trace, batch)
        h, m = naive.run_cache_batched(ref, trace, batch)
        hits += h
        misses += m
        assert (_hits(state), _misses(state)) == (hits, misses)
        assert set(state.resident()) == ref.resident()


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("seed", range(3))
def test_long_skewed_trace_matches_naive(policy, seed):
    rng = np.random.default_rng(seed)
    capacity = int(rng.integers(5, 60))
    trace = (rng.zipf(1.3, 4000) + rng.integers(0, 50, 4000) * (rng.random(4000) < 0.2)) % 500
    state = CacheState.new(0, capacity, policy)
    _simulate(state, trace, 1)
    ref = NAIVE[policy](capacity)
    assert (_hits(state), _misses(state)) == naive.run_cache(ref, trace)
    assert set(state.resident()) == ref.resident()


def test_lfu_evicts_least_frequent_then_oldest():
    state = CacheState.new(0, 2, "lfu")
    # 1 is used twice, 2 once; 3 must push out 2
    _simulate(state, [1, 1, 2, 3], 1)
    assert set(state.resident()) == {1, 3}
    # 1 (count 2) vs 3 (count 1) then 3 hit -> tie at 2; 1's last access is older
    _simulate(state, [3, 4], 1)
    assert set(state.resident()) == {3, 4}


def test_lru_evicts_least_recent():
    state = CacheState.new(0, 3, "lru")
    _simulate(state, [1, 2, 3, 1, 4], 1)
    assert set(state.resident()) == {1, 3, 4}
    assert (_hits(state), _misses(state)) == (1, 4)


@pytest.mark.parametrize("policy, kept", [("adaptive", True), ("wtinylfu", False)])
def test_row_used_again_in_the_window_enters_main(policy, kept):
    """``adaptive`` lets a row used again in its window into main whatever the sketch says;
    ``wtinylfu`` asks the sketch, which counts main's rows more often."""
    state = CacheState.new(0, 100, policy)    # a window of one row
    main = list(range(1000, 1100))
    _simulate(state, main * 3 + [7, 7, 8], 1)
    assert sketch_estimate(state.sketch, 7) < min(sketch_estimate(state.sketch, i) for i in main)
    assert (7 in state.resident()) == kept
    assert 8 in state.resident()


# =========================================================================== invariants


def _check_state(state, device_rows, ram_rows, accesses, seen_ids):
    assert check_invariants(state.arrays()) == 0
    resident = state.resident()
    slots = list(resident.values())
    assert len(resident) <= device_rows + ram_rows
    assert len(resident) == state.meta[USED]
    assert set(resident) <= seen_ids
    assert len(set(slots)) == len(slots)
    assert all(0 <= s < device_rows + ram_rows for s in slots)
    assert sum(s < device_rows for s in slots) <= device_rows
    assert sum(s >= device_rows for s in slots) <= ram_rows
    assert _hits(state) + _misses(state) == accesses
    assert state.meta[ADMISSIONS] - state.meta[EVICTIONS] == state.meta[USED]
    if device_rows == 0:
        assert state.meta[DEVICE_HITS] == 0


@jit_settings
@given(policy=st.sampled_from(["adaptive", "wtinylfu", "lru", "lfu"]),
       device_rows=st.integers(0, 4), ram_rows=st.integers(0, 6), batch=st.integers(1, 9),
       chunks=st.lists(st.lists(st.integers(0, 20), max_size=80), min_size=1, max_size=5))
def test_invariants_hold(policy, device_rows, ram_rows, batch, chunks):
    assume(device_rows + ram_rows >= 1)
    state = CacheState.new(device_rows, ram_rows, policy)
    _check_state(state, device_rows, ram_rows, 0, set())
    accesses = 0
    seen = set()
    for trace in chunks:
        _simulate(state, trace, batch)
        accesses += len(trace)
        seen.update(trace)
        _check_state(state, device_rows, ram_rows, accesses, seen)


@jit_settings
@given(policy=st.sampled_from(["adaptive", "wtinylfu", "lru", "lfu"]),
       device_rows=st.integers(0, 4), ram_rows=st.integers(0, 6),
       trace=st.lists(st.integers(0, 12), min_size=1, max_size=40))
def test_last_access_is_resident(policy, device_rows, ram_rows, trace):
    """Every miss is admitted: after each single access the id is in memory."""
    assume(device_rows + ram_rows >= 1)
    state = CacheState.new(device_rows, ram_rows, policy)
    for k, key in enumerate(trace):
        _simulate(state, [key], 1)
        assert key in state.resident()
        assert _hits(state) + _misses(state) == k + 1
    assert state.meta[ADMISSIONS] == _misses(state)


@pytest.mark.parametrize("policy", ["adaptive", "wtinylfu", "lru", "lfu"])
@pytest.mark.parametrize("batch", [1, 2, 7, 64, 10_000])
def test_batch_size_keeps_access_total(policy, batch):
    """Long enough to move the adaptive window (its hill climber samples 256 requests)."""
    rng = np.random.default_rng(batch)
    trace = np.concatenate([rng.zipf(1.2, 3000) % 300, rng.integers(0, 1000, 2000)]).astype(np.int64)
    state = CacheState.new(8, 24, policy)
    simulate_trace(state.arrays(), trace, batch)
    assert _hits(state) + _misses(state) == len(trace)
    assert check_invariants(state.arrays()) == 0
    assert len(state.resident()) == 32
    if batch == 1:
        assert state.meta[ADMISSIONS] == _misses(state)


@pytest.mark.parametrize("policy", ["adaptive", "wtinylfu", "lru", "lfu"])
def test_stamp_rebase_changes_no_decision(policy):
    """4-byte stamps (policy/stamps.py): a run whose tick starts just under the rebase point
    (so it rebases mid-run) plans exactly as one started at zero."""
    rng = np.random.default_rng(7)
    trace = np.concatenate([rng.zipf(1.1, 6000) % 400, rng.integers(0, 2000, 3000)]).astype(np.int64)
    plain, rebased = CacheState.new(8, 56, policy), CacheState.new(8, 56, policy)
    rebased.meta[TICK] = REBASE_AT - 2000
    simulate_trace(plain.arrays(), trace, 16)
    simulate_trace(rebased.arrays(), trace, 16)
    assert rebased.meta[TICK] < REBASE_AT - 2000, "the run must cross the rebase point"
    others = np.arange(len(plain.meta)) != TICK
    np.testing.assert_array_equal(plain.meta[others], rebased.meta[others])
    assert plain.resident() == rebased.resident()
    used = int(plain.meta[USED])
    # the same ages, so the same order
    np.testing.assert_array_equal(plain.meta[TICK] - plain.stamp[:used].astype(np.int64),
                                  rebased.meta[TICK] - rebased.stamp[:used].astype(np.int64))
    assert check_invariants(rebased.arrays()) == 0


# =========================================================================== lookahead


@jit_settings
@given(device_rows=st.integers(0, 3), ram_rows=st.integers(1, 6), batch=st.integers(1, 5),
       window=st.integers(0, 3), trace=st.lists(st.integers(0, 12), max_size=120))
def test_lru_lookahead_matches_naive(device_rows, ram_rows, batch, window, trace):
    """Evictions spare the rows the next ``window`` batches use; rows read count once per
    unique missing id and batch."""
    state = CacheState.new(device_rows, ram_rows, "lru", lookahead_ids=window * batch)
    simulate_lookahead(state.arrays(), np.asarray(trace, dtype=np.int64), batch, window)
    ref = naive.NaiveLRU(device_rows + ram_rows)
    hits, misses, reads = naive.run_lru_lookahead(ref, trace, batch, window)
    assert (_hits(state), _misses(state), int(state.meta[DISK_READS])) == (hits, misses, reads)
    assert set(state.resident()) == ref.resident()
    assert state.meta[AHEAD_LIVE] == 0          # every submitted batch left the window
    assert check_invariants(state.arrays()) == 0


def test_lookahead_spares_the_row_the_next_batch_uses():
    trace = np.array([1, 2, 3, 1], dtype=np.int64)
    plain = CacheState.new(0, 2, "lru")
    simulate_trace(plain.arrays(), trace, 1)
    ahead = CacheState.new(0, 2, "lru", lookahead_ids=1)
    simulate_lookahead(ahead.arrays(), trace, 1, 1)
    assert (_hits(plain), _hits(ahead)) == (0, 1)   # 3 evicts 2, not 1, which comes next


@pytest.mark.parametrize("policy", ["adaptive", "wtinylfu", "lfu"])
def test_lookahead_keeps_invariants_and_counts(policy):
    rng = np.random.default_rng(3)
    trace = np.concatenate([rng.zipf(1.2, 3000) % 300, rng.integers(0, 1000, 2000)]).astype(np.int64)
    state = CacheState.new(8, 24, policy, lookahead_ids=4 * 16)
    simulate_lookahead(state.arrays(), trace, 16, 4)
    assert _hits(state) + _misses(state) == len(trace)
    assert state.meta[AHEAD_LIVE] == 0
    assert check_invariants(state.arrays()) == 0


def test_lookahead_counts_saturate():
    """An id submitted more often than a byte counts stays in the window until that many of
    its lookups are planned; the others' counts are exact, and the map empties."""
    from tierstore.policy.lookahead import ahead_add, ahead_remove
    from tierstore.policy.state import AHEAD_COUNT_MAX

    state = CacheState.new(0, 8, "lru", lookahead_ids=4)
    hot, once = np.array([7], dtype=np.int64), np.array([7, 9], dtype=np.int64)
    for _ in range(AHEAD_COUNT_MAX + 44):
        ahead_add(state.arrays(), hot)
    ahead_add(state.arrays(), once)
    assert state.meta[AHEAD_LIVE] == 2
    assert naive.slotmap_contents(state.ahead_keys, state.ahead_vals) == {7: AHEAD_COUNT_MAX, 9: 1}
    ahead_remove(state.arrays(), once)
    assert naive.slotmap_contents(state.ahead_keys, state.ahead_vals) == {7: AHEAD_COUNT_MAX - 1}
    for _ in range(AHEAD_COUNT_MAX - 1):
        ahead_remove(state.arrays(), hot)
    assert state.meta[AHEAD_LIVE] == 0 and (state.ahead_keys == -1).all()
    ahead_remove(state.arrays(), hot)
    assert state.meta[AHEAD_LIVE] == 0


@pytest.mark.parametrize("parts", [1, 3])
def test_partitions_spare_submitted_ids_until_planned(parts):
    from tierstore.policy.partitions import PartitionedState

    state = PartitionedState(0, 3 * parts, "lru", parts)

    def lookup(ids):
        uniq = np.asarray(ids, dtype=np.int64)
        entries, start = state.probe(uniq)
        state.plan(uniq, np.ones(len(uniq), dtype=np.int64), entries, start)

    for k in range(100):
        lookup([k])                                  # memory full of the last ids looked up
    resident = [k for k in range(100) if state.probe(np.array([k]))[1][0] >= 0]
    # the oldest row, next to go; the others stay evictable (were every row submitted,
    # a newcomer would still have to evict one)
    submitted = np.array(resident[:1], dtype=np.int64)
    state.ahead_add(submitted)
    for k in range(100, 400):                        # enough newcomers to evict them all
        lookup([k])
    assert all(state.probe(submitted)[1] >= 0)
    state.ahead_remove(submitted)
    assert sum(int(s.meta[AHEAD_LIVE]) for s in state.states) == 0
    for k in range(400, 700):
        lookup([k])
    assert all(state.probe(submitted)[1] < 0)
