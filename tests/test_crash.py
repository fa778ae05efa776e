"""Crashes: a writer killed with SIGKILL at random moments loses no acknowledged flush.

The harness is tools/crash_test.py (see its docstring); CI runs 24 kills, the
``slow`` run 210 (``python tools/crash_test.py`` prints the same counts).
"""
from __future__ import annotations

import os
import signal
import sys
import time

import crash_tool
import numpy as np
import pytest

import tierstore as ts

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork and SIGKILL")

ct = crash_tool.load()


def assert_crash_run(result, kills):
    print(result.summary())
    assert result.failures == [], result.summary()
    assert result.kills == kills
    assert result.flushes_logged > 0 and result.rows_verified == kills * ct.NUM_ROWS
    # the aimed kills landed where they were aimed
    assert result.phases.get("writeback", 0) >= kills // 4, result.phases
    flush_kills = sum(result.phases.get(p, 0) for p in ("flush-encode", "flush-commit", "flush-sync"))
    assert flush_kills >= kills // 4, result.phases


def test_crash_quick(tmp_path):
    """CI: 24 kills (8 random, 8 during dirty write-backs, 8 inside flush)."""
    result = ct.run(kills=24, seed=20240611, workdir=tmp_path)
    assert_crash_run(result, 24)


@pytest.mark.slow
def test_crash_full(tmp_path):
    """The full run: 210 kills."""
    result = ct.run(kills=210, seed=1, workdir=tmp_path)
    assert_crash_run(result, 210)


def test_pattern_detects_torn_and_misplaced_rows():
    ids = np.arange(5)
    rows = ct.pattern(ids, [3, 4, 5, 6, 7])
    versions, torn = ct.read_versions(ids, rows)
    assert versions.tolist() == [3, 4, 5, 6, 7] and not torn.any()
    mixed = rows.copy()
    mixed[2, 5:] = ct.pattern([2], 9)[0, 5:]      # half of version 5, half of version 9
    moved = rows.copy()
    moved[3] = rows[4]                            # row 4's value under id 3
    assert ct.read_versions(ids, mixed)[1].tolist() == [False, False, True, False, False]
    assert ct.read_versions(ids, moved)[1].tolist() == [False, False, False, True, False]


def wait_until_openable(path, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ts.open(path, readonly=True).close()
            return
        except ts.NotAStoreError:
            time.sleep(0.02)
    raise AssertionError(f"{path}: the create did not finish in {timeout} s")


def test_kill_during_create_leaves_no_half_store(tmp_path):
    """A create killed part way leaves no openable store (its metadata is written last);
    create(overwrite=True) then works."""
    outcomes = []
    with ct.Zygote() as zygote:
        for k, delay in enumerate([0.0, 0.05, 0.15, 0.3, None]):  # None: once it is complete
            path = tmp_path / f"s{k}"
            pid = zygote.spawn("child_create", tmp_path / "err", path=str(path), num_rows=120_000,
                               dim=ct.DIM)
            if delay is None:
                wait_until_openable(path)
            else:
                time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            assert zygote.reap(pid) == -signal.SIGKILL, (tmp_path / "err").read_text()
            try:
                store = ts.open(path, readonly=True)
            except ts.NotAStoreError:
                outcomes.append("no store")
            else:
                with store:  # a finished create: every row is there
                    ids = np.arange(0, 120_000, 7)
                    versions, torn = ct.read_versions(ids, store.lookup(ids))
                    assert not torn.any() and (versions == 0).all()
                    assert store.check().ok
                outcomes.append("complete")
            with ts.create(path, 100, 4, overwrite=True) as s:
                assert s.lookup([5]).shape == (1, 4)
    assert "no store" in outcomes and outcomes[-1] == "complete", outcomes


UPDATE_THEN_DIE = '''
import os, signal, sys
import tierstore as ts
path, how = sys.argv[1], sys.argv[2]
store = ts.create(path, 64, DIM, "float64", init=lambda a, b: pattern(np.arange(a, b), 0),
                  config=ts.StoreConfig(device_rows=2, ram_rows=6, policy="lru"))
store.lookup(np.arange(8))                       # rows 0-7 in memory, 8-63 only on disk
if how == "inside":                              # die inside update(), after its disk write
    write_rows = store._disk.write_rows
    def write_then_die(ids, rows):
        write_rows(ids, rows)
        os.kill(os.getpid(), signal.SIGKILL)
    store._disk.write_rows = write_then_die
store.update(np.arange(64), pattern(np.arange(64), 1))
if how == "flushed":
    store.flush()
os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.mark.parametrize("how", ["inside", "after", "flushed"])
def test_what_one_update_promises_when_the_process_dies(tmp_path, how):
    """README: until flush(), each row of an update() is whole on disk, old or new, never torn;
    rows only on disk are written by the call itself, rows in memory wait for eviction or
    flush(), so one call can be split. flush() is the durability point."""
    import subprocess
    import textwrap

    from test_concurrency import PATTERN_SRC, child_env

    path = tmp_path / "s"
    done = subprocess.run([sys.executable, "-c", PATTERN_SRC + textwrap.dedent(UPDATE_THEN_DIE),
                           str(path), how], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with ts.open(path, readonly=True) as s:
        versions, torn = ct.read_versions(np.arange(64), s.lookup(np.arange(64)))
        assert s.check().ok
    assert not torn.any()
    if how == "flushed":
        assert (versions == 1).all()
    else:
        assert (versions[:8] == 0).all() and (versions[8:] == 1).all(), versions
