"""Replacing a store (create/import/salvage over an existing one): built beside, swapped in.

A child process is SIGKILLed at a named step of the build (``TIERSTORE_KILL_AT``, see
tierstore/build.py), so each interruption point is hit exactly, with no timing: after
every one, the old or the new store opens whole at the path, never neither.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tierstore as ts
from tierstore import build, cli
from tierstore.store import CREATE_CHUNK

REPO = Path(__file__).resolve().parents[1]
NEW_ROWS = CREATE_CHUNK + 5000   # two chunks: a kill can fall between them
OLD_ROWS = 3000


def table(num_rows, version):
    ids = np.arange(num_rows, dtype=np.float32)
    return np.stack([ids, np.full(num_rows, version, np.float32)], axis=1)


def make_old(path):
    ts.create(path, OLD_ROWS, 2, "float32", init=table(OLD_ROWS, 1)).close()


def outcome(path) -> str:
    """'old' or 'new': which whole store stands at ``path`` (anything else fails)."""
    with ts.open(path, readonly=True) as s:
        rows = s.lookup(np.arange(s.num_rows))
        assert s.check().ok
    version = {OLD_ROWS: 1, NEW_ROWS: 2}[len(rows)]
    np.testing.assert_array_equal(rows, table(len(rows), version))
    return "old" if version == 1 else "new"


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


CHILD_CREATE = '''
import sys
import numpy as np
import tierstore as ts
from tierstore import build
path, rows, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if not exchange:
    build._exchange = lambda a, b: False     # as on a system without renameat2
ts.create(path, rows, 2, "float32", init=lambda a, b: np.stack(
    [np.arange(a, b, dtype=np.float32), np.full(b - a, 2, np.float32)], axis=1),
    overwrite=True).close()
'''


def run_child(code, *args, kill_at=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if kill_at is not None:
        env[build.KILL_AT_ENV] = kill_at
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("exchange, step, expected", [
    (True, "chunk", "old"),
    (True, "built", "old"),
    (True, "exchanged", "new"),
    (False, "built", "old"),
    (False, "parked", "old"),      # no store at the path: the next open puts the old one back
    (False, "renamed", "new"),
    (True, None, "new"),
])
def test_create_overwrite_killed_at_each_step(tmp_path, exchange, step, expected):
    path = tmp_path / "store"
    make_old(path)
    done = run_child(CHILD_CREATE, path, NEW_ROWS, int(exchange), kill_at=step)
    if step is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == -signal.SIGKILL, done.stderr
    if step == "parked":
        assert not path.exists()
    assert outcome(path) == expected
    # the next build sweeps what the killed one left, and leaves nothing itself
    ts.create(path, NEW_ROWS, 2, "float32", init=table(NEW_ROWS, 2), overwrite=True).close()
    assert outcome(path) == "new"
    assert siblings(path) == []


def test_create_overwrite_swaps_atomically_where_it_can(tmp_path):
    """This machine's file system has RENAME_EXCHANGE (Linux >= 3.15): the swap is one step."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").touch()
    if not build._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (b / "x").exists() and not (a / "x").exists()


def test_failed_create_over_a_store_keeps_it_and_leaves_nothing(tmp_path):
    path = tmp_path / "store"
    make_old(path)

    def bad(a, b):
        rows = table(NEW_ROWS, 2)[a:b]
        if b == NEW_ROWS:
            rows[-1, 0] = np.nan          # the last chunk fails, after the first was written
        return rows

    with pytest.raises(ts.NonFiniteRowError):
        ts.create(path, NEW_ROWS, 2, "float32", init=bad, overwrite=True)
    assert outcome(path) == "old" and siblings(path) == []


def test_create_into_a_new_path_fails_without_debris(tmp_path):
    path = tmp_path / "fresh"
    with pytest.raises(ts.NonFiniteRowError):
        ts.create(path, 10, 2, "float32", init=np.full((10, 2), np.inf, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_import_overwrite_that_fails_keeps_the_old_store(tmp_path, capsys):
    path = tmp_path / "store"
    make_old(path)
    bad = table(NEW_ROWS, 2)
    bad[-1, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    assert cli.main(["import", str(tmp_path / "bad.npy"), str(path), "--overwrite", "-q"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert outcome(path) == "old" and siblings(path) == ["bad.npy"]
    np.save(tmp_path / "good.npy", table(NEW_ROWS, 2))
    assert cli.main(["import", str(tmp_path / "good.npy"), str(path), "--overwrite", "-q"]) == 0
    assert outcome(path) == "new" and siblings(path) == ["bad.npy", "good.npy"]


def test_import_killed_mid_way_keeps_the_old_store(tmp_path):
    path = tmp_path / "store"
    make_old(path)
    np.save(tmp_path / "new.npy", table(NEW_ROWS, 2))
    done = run_child("from tierstore.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
                     "import", tmp_path / "new.npy", path, "--overwrite", "-q", kill_at="chunk")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert outcome(path) == "old"


def test_import_start_failure_says_how_far_it_got(tmp_path, capsys):
    path = tmp_path / "store"
    ts.create(path, 300_000, 2, "float32").close()
    rows = table(200_000, 2)
    rows[150_000, 0] = np.inf
    np.save(tmp_path / "part.npy", rows)
    assert cli.main(["import", str(tmp_path / "part.npy"), str(path), "--start", "1000",
                     "-q", "--chunk-rows", "65536"]) == 2
    err = capsys.readouterr().err
    assert "131,072 of the 200,000 rows were written" in err, err
    assert "store rows 1,000..132,071" in err, err
    with ts.open(path, readonly=True) as s:
        np.testing.assert_array_equal(s.lookup(np.arange(1000, 132_072)), rows[:131_072])
        assert not s.lookup(np.arange(132_072, 201_000)).any()


def test_salvage_over_an_existing_store_replaces_it_whole(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    ts.create(src, NEW_ROWS, 2, "float32", init=table(NEW_ROWS, 2)).close()
    make_old(dst)
    with pytest.raises(FileExistsError):
        ts.salvage(src, dst)
    done = run_child("import sys, tierstore as ts; ts.salvage(sys.argv[1], sys.argv[2], "
                     "overwrite=True)", src, dst, kill_at="built")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert outcome(dst) == "old"
    assert ts.salvage(src, dst, overwrite=True).ok
    assert outcome(dst) == "new" and siblings(dst) == ["src"]


def test_overwrite_replaces_the_optimizer_state(tmp_path):
    """The default RowAdagrad sibling (PATH.adagrad) belongs to the old table: it goes too."""
    path = tmp_path / "store"
    make_old(path)
    ts.create(f"{path}.adagrad", OLD_ROWS, 1, "float32", init=5.0).close()
    with ts.open(f"{path}.adagrad") as state:
        with pytest.raises(ts.StoreLockedError, match="optimizer state"):
            ts.create(path, NEW_ROWS, 2, "float32", overwrite=True)
    ts.create(path, NEW_ROWS, 2, "float32", init=table(NEW_ROWS, 2), overwrite=True).close()
    assert not Path(f"{path}.adagrad").exists()
    assert state is not None and outcome(path) == "new"


def test_salvage_walks_the_records_that_exist(tmp_path, monkeypatch):
    """A sparse table of 2 billion rows with 3 records: salvage visits the 3 (it read all
    2 billion ids one at a time); no id is probed on its own when no page is damaged."""
    import importlib

    salvage_module = importlib.import_module("tierstore.salvage")  # the module, not the function

    probed = []
    read_ids = salvage_module._read_ids
    monkeypatch.setattr(salvage_module, "_read_ids",
                        lambda env, db, ids, report: probed.append(len(ids)) or
                        read_ids(env, db, ids, report))
    src = tmp_path / "sparse"
    with ts.create(src, 2_000_000_000, 2, "float32") as s:
        s.update([5, 1_000_000_007, 1_999_999_999], np.ones((3, 2), np.float32))
    report = ts.salvage(src, tmp_path / "copy")
    assert report.ok and report.rows_copied == 3 and probed == []
    with ts.open(tmp_path / "copy", readonly=True) as c:
        assert c.lookup([5, 1_000_000_007, 1_999_999_999]).tolist() == [[1.0, 1.0]] * 3
        assert not c.lookup([6, 1_999_999_998]).any()
