"""``Store.lookup_async``: a lookup run ahead on the worker, ordered as if called at once."""
import threading

import numpy as np
import pytest

import tierstore as ts
from tierstore.errors import ClosedStoreError, IdOutOfRangeError
from tierstore.workloads import zipf_ids

N, D = 500, 6


@pytest.fixture
def store(tmp_path):
    table = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    config = ts.StoreConfig(device_rows=8, ram_rows=24)
    with ts.create(tmp_path / "s", N, D, "float32", init=table, config=config) as s:
        yield s, table


def test_results_equal_lookup_in_order_and_shape(store):
    s, table = store
    batches = [zipf_ids(N, 1.0, 120, seed=k).reshape(4, 30) for k in range(8)]
    handles = [s.lookup_async(b) for b in batches]
    for b, h in zip(batches, handles):
        np.testing.assert_array_equal(h.result(timeout=10), table[b])
    assert s.stats()["lookups"] == 8 * 120
    assert s.check().ok


def test_wait_counts_disk_reads(store):
    s, _ = store
    assert s.lookup_async(np.array([1, 2, 3, 2])).wait(timeout=10) == 3
    assert s.lookup_async(np.array([1, 2, 3])).wait(timeout=10) == 0      # now in memory


def test_an_update_waits_and_marks_what_it_overwrites(store):
    s, table = store
    ids = np.arange(40)
    handles = [s.lookup_async(ids[k::4]) for k in range(4)]
    s.update([5, 6], np.ones((2, D), dtype=np.float32))   # 5 is in handle 1, 6 in handle 2
    assert [h.stale for h in handles] == [False, True, True, False]
    for k, h in enumerate(handles):                        # each read the rows before the update
        np.testing.assert_array_equal(h.result(), table[ids[k::4]])
    np.testing.assert_array_equal(s.lookup([5, 6]), np.ones((2, D), dtype=np.float32))


def test_bad_ids_raise_at_the_call_and_change_nothing(store):
    s, _ = store
    before = s.stats()
    with pytest.raises(IdOutOfRangeError):
        s.lookup_async(np.array([1, N]))
    with pytest.raises(TypeError):
        s.lookup_async(np.array([1.5]))
    assert s.stats() == before


def test_closed_store(store):
    s, table = store
    h = s.lookup_async([1, 2])
    s.close()
    np.testing.assert_array_equal(h.result(), table[[1, 2]])   # close waited for it
    with pytest.raises(ClosedStoreError):
        s.lookup_async([1])


def test_flush_and_refresh_wait_for_lookups_ahead(store):
    s, table = store
    handles = [s.lookup_async(zipf_ids(N, 1.0, 200, seed=k)) for k in range(5)]
    s.flush()
    assert all(h.done() for h in handles)
    handles = [s.lookup_async(zipf_ids(N, 1.0, 200, seed=k)) for k in range(5)]
    s.refresh()
    assert all(h.done() for h in handles)
    for k, h in enumerate(handles):
        np.testing.assert_array_equal(h.result(), table[zipf_ids(N, 1.0, 200, seed=k)])


@pytest.fixture
def held_planning(monkeypatch):
    """(planning, release): a lookup's planning sets ``planning``, then waits for ``release``."""
    planning, release = threading.Event(), threading.Event()
    plan = ts.Store._plan_and_move

    def held_plan(self, *args):
        planning.set()
        assert release.wait(10)
        return plan(self, *args)

    monkeypatch.setattr(ts.Store, "_plan_and_move", held_plan)
    return planning, release


def test_rows_are_handed_over_before_the_planning_ends(store, held_planning):
    s, table = store
    planning, release = held_planning
    ids = zipf_ids(N, 1.0, 300, seed=3)
    handle = s.lookup_async(ids)
    np.testing.assert_array_equal(handle.result(timeout=10), table[ids])   # while planning waits
    assert planning.is_set() and not handle.future.done()
    release.set()
    handle.wait_quietly()
    assert handle.future.done() and s.stats()["lookups"] == 300
    np.testing.assert_array_equal(s.lookup(ids), table[ids])


def test_a_failed_lookup_ahead_raises_from_result(store, monkeypatch):
    s, _ = store

    def broken(self, *args):
        raise OSError("disk gone")

    monkeypatch.setattr(type(s), "_read_disk", broken)
    handle = s.lookup_async([1, 2, 3])
    with pytest.raises(OSError, match="disk gone"):
        handle.result(timeout=10)
    with pytest.raises(OSError, match="disk gone"):
        handle.wait(timeout=10)
    assert handle.done()


def test_a_large_lookup_returns_before_its_planning(store, held_planning, monkeypatch):
    import tierstore.store

    s, table = store
    monkeypatch.setattr(tierstore.store, "LOGGED_LOOKUP_MIN_IDS", 100)
    planning, release = held_planning
    ids = np.arange(N)                        # 500 ids: logged, planned on the planner thread
    np.testing.assert_array_equal(s.lookup(ids), table)
    assert planning.wait(10) and not s._log_planning.done()
    threading.Timer(0.2, release.set).start()
    assert s.stats()["lookups"] == N          # waited for the planning
    planned = s._log_planning
    np.testing.assert_array_equal(s.lookup(ids[:50]), table[:50])   # small: planned at once
    assert s._log_planning is planned and s.stats()["lookups"] == N + 50


def test_a_submitted_lookup_keeps_its_rows_from_eviction(tmp_path, monkeypatch):
    """Rows a lookup_async will use are not evicted by the lookups planned before it."""
    released = threading.Event()
    run_ahead = ts.Store._lookup_ahead

    def held(self, *args):
        assert released.wait(10)
        return run_ahead(self, *args)

    monkeypatch.setattr(ts.Store, "_lookup_ahead", held)
    table = np.arange(N * D, dtype=np.float32).reshape(N, D)
    config = ts.StoreConfig(device_rows=1, ram_rows=3, policy="lru")
    with ts.create(tmp_path / "s", N, D, "float32", init=table, config=config) as s:
        for k in range(4):
            s.lookup(np.array([k]))                  # memory: 0 1 2 3, row 0 the oldest
        handle = s.lookup_async(np.array([0, 9]))
        np.testing.assert_array_equal(s.lookup(np.array([4])), table[[4]])
        assert s._state.probe(np.array([0, 1]))[1].tolist()[0] >= 0   # 0 spared: 1 went
        assert s._state.probe(np.array([1]))[1][0] < 0
        released.set()
        np.testing.assert_array_equal(handle.result(timeout=10), table[[0, 9]])
        assert s.stats()["disk"]["reads"] == 4 + 1 + 1     # 0-3, then 4, then 9 (0 a hit)


# -- the handle's last step, run by the first thread to ask (the GPU path's misses) ---------------
def _handle_with(finish):
    from tierstore.prefetch import NOTHING_TO_WAIT_FOR, LookupHandle

    handle = LookupHandle(lambda ready: ready)
    handle.finish_by_first(lambda: finish(handle))
    handle.attach(NOTHING_TO_WAIT_FOR)
    return handle


class _SignallingLock:
    """A lock that says when a thread starts to wait for it."""

    def __init__(self):
        self.lock, self.waited = threading.Lock(), threading.Event()

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.waited.set()
            self.lock.acquire()
        return self

    def __exit__(self, *exc):
        self.lock.release()


def test_the_last_step_runs_once_and_every_asker_returns_after_it():
    started, release, order = threading.Event(), threading.Event(), []

    def finish(handle):
        order.append("finish starts")
        started.set()
        release.wait()
        handle.publish("rows", 0)
        order.append("finish ends")

    handle = _handle_with(finish)
    handle._claim = claim = _SignallingLock()
    first = threading.Thread(target=handle.run_finish)
    first.start()
    started.wait()
    results = []
    second = threading.Thread(target=lambda: results.append(handle.result()))
    second.start()
    # result() asked while the step runs: it waits for it (and does not give up without rows)
    assert claim.waited.wait(timeout=30)
    release.set()
    first.join()
    second.join()
    order.append("both returned")
    assert order == ["finish starts", "finish ends", "both returned"]
    assert results == ["rows"] and handle.result() == "rows"


def test_an_error_in_the_last_step_reaches_every_thread_that_asks():
    calls = []

    def finish(handle):
        calls.append(1)
        raise IdOutOfRangeError("row id 9 is outside [0, 5)")

    handle = _handle_with(finish)
    seen = []

    def worker():
        try:
            handle.run_finish()
        except IdOutOfRangeError as e:
            seen.append(str(e))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    with pytest.raises(IdOutOfRangeError, match="row id 9"):
        handle.result()
    handle.wait_quietly()                 # says nothing, as its callers expect
    assert calls == [1] and seen == ["row id 9 is outside [0, 5)"]


def test_a_handle_with_nothing_to_wait_for_is_done_and_finished_by_result():
    handle = _handle_with(lambda h: h.publish("rows", 3))
    assert handle.done()
    assert handle.wait() == 3 and handle.result() == "rows"
