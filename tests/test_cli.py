"""The command line through its real entry point."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tierstore as ts

sys.path.insert(0, os.path.dirname(__file__))
from damage import corrupt_row  # noqa: E402


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tierstore", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_stat_and_check(tmp_path):
    path = tmp_path / "s"
    init = np.arange(40, dtype=np.float32).reshape(10, 4)
    ts.create(path, 10, 4, "float32", init=init).close()
    out = run_cli("stat", path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["num_rows"], info["dim"], info["dtype"], info["stored_records"]) == (10, 4, "float32", 10)
    ok = run_cli("check", path)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 10 stored rows")


def test_check_exits_nonzero_on_damage(tmp_path):
    path = tmp_path / "s"
    ts.create(path, 10, 4, "float32", init=np.ones((10, 4))).close()
    corrupt_row(path, 7)
    out = run_cli("check", path)
    assert out.returncode == 1
    assert "corrupt row ids: 7" in out.stdout


def test_missing_store_is_a_clear_error(tmp_path):
    out = run_cli("stat", tmp_path / "nothing")
    assert out.returncode == 2
    assert "no such store" in out.stderr and "nothing" in out.stderr


def test_bench_runs_end_to_end(tmp_path):
    out = run_cli("bench", "--rows", 20000, "--dim", 16, "--batch", 2048, "--warmup", 2,
                  "--timed", 3, "--alpha", 1.0, "--workdir", tmp_path)
    assert out.returncode == 0, out.stderr
    for title in ("Lookup throughput", "Combined (device + RAM) hit ratio", "cold (all misses)",
                  "Bytes on disk per row"):
        assert title in out.stdout


def test_salvage_copies_readable_rows_and_exits_1_on_loss(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    ts.create(src, 10, 4, "float32", init=table).close()
    corrupt_row(src, 3, byte=0)
    out = run_cli("salvage", src, dst)
    assert out.returncode == 1, out.stderr
    assert "3" in out.stdout
    with ts.open(dst, readonly=True) as s:
        kept = np.delete(np.arange(10), 3)
        np.testing.assert_array_equal(s.lookup(kept), table[kept])
        with pytest.raises(ts.CorruptRowError, match="row 3: its record is missing"):
            s.lookup([3])   # every row of the table had a record: the lost one is not zeros
