"""tools/bench_gpu.py's logic on CPU at toy sizes: both setups, every variant but the CUDA-only
paper's method, outputs equal to the all-in-memory model's (the script asserts it), the JSON."""
import json

import pytest

from tool_loader import load_tool

pytest.importorskip("torch")


def load():
    return load_tool("bench_gpu.py")


def test_setups_follow_the_issue():
    bench = load()
    recorded, newuser = bench.setups(bench.parse_args([]))
    assert (recorded.rows, recorded.device_rows, recorded.ram_rows, recorded.partitions) == (
        8_000_000, 800_000, 4_000_000, 4)
    assert not recorded.writable and (recorded.warm, recorded.timed, recorded.distinct) == (30, 40, 70)
    # the new-user run: 16M rows, device 10%, RAM 30%, 4 partitions, 23 batches replayed
    assert (newuser.rows, newuser.device_rows, newuser.ram_rows, newuser.partitions) == (
        16_000_000, 1_600_000, 4_800_000, 4)
    assert newuser.writable and newuser.distinct == 23 and newuser.warm % 23 == newuser.timed % 23 == 0
    smoke = bench.parse_args(["--smoke", "--models", "2x128"])
    assert smoke.models == ["2x128"] and smoke.rows == bench.SMOKE["rows"]
    for bad in ("1x128", "2x100", "12"):           # the Engram layer follows block 1
        with pytest.raises(SystemExit):
            bench.parse_args(["--models", bad])


def test_runs_on_cpu_and_writes_json(tmp_path, capsys):
    bench = load()
    path = tmp_path / "gpu.json"
    bench.main(["--smoke", "--device", "cpu", "--models", "2x128", "--batch", "1", "--seq", "64",
                "--rows", "32000", "--nu-rows", "32000", "--warm", "2", "--batches", "2",
                "--nu-distinct", "2", "--repeat", "3", "--tmp", str(tmp_path), "--json", str(path)])
    record = json.loads(path.read_text())
    assert record["command"].startswith("python tools/bench_gpu.py --smoke --device cpu")
    assert "--repeat 3" in record["command"]      # the median run and its hits
    assert set(record["models"]) == {"2x128", "2x128/newuser"}
    assert set(record["setups"]) == {"recorded", "newuser"}
    assert record["setups"]["newuser"]["writable"] and not record["setups"]["recorded"]["writable"]
    for result in record["models"].values():
        for variant in ("hbm", "colossal", "off", "entry", "ahead"):
            assert result[variant] > 0
        assert "pinned" not in result                       # the paper's method needs CUDA
        for hits in result["hits"].values():
            assert hits["device"] + hits["ram"] + hits["disk"] == pytest.approx(1.0)
            assert hits["at_lookup"] is None            # a host store looks nothing up on a GPU
        assert 0 <= result["colossal_miss_ratio"] <= 1
    # replayed batches: after a warm-up pass, the timed pass finds every row in memory
    assert record["models"]["2x128/newuser"]["hits"]["entry"]["disk"] == 0.0
    assert "ours/ahead" in capsys.readouterr().out
