"""What the command line says: its own flags, row ids, the files it was given, help for every option."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import tierstore as ts
from tierstore import cli
from tierstore.store import CREATE_CHUNK


def fails(capsys, args, *needles, absent=()):
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    for word in absent:
        assert word not in err, (word, err)
    return err


def test_messages_name_flags_not_keyword_arguments(tmp_path, capsys):
    path = tmp_path / "s"
    assert cli.main(["create", str(path), "--rows", "10", "--dim", "2"]) == 0
    fails(capsys, ["create", path, "--rows", 10, "--dim", 2], "already exists", "pass --overwrite",
          absent=["overwrite=True"])
    assert cli.main(["create", str(tmp_path / "t"), "--rows", "10", "--dim", "2"]) == 0
    fails(capsys, ["salvage", path, tmp_path / "t"], "pass --overwrite", absent=["overwrite=True"])
    fails(capsys, ["create", tmp_path / "n", "--rows", 10, "--dim", 2, "--init", "nan"],
          "not finite", "--allow-nonfinite", absent=["allow_nonfinite", "StoreConfig"])
    nan = np.ones((5, 2), np.float32)
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    fails(capsys, ["import", tmp_path / "nan.npy", tmp_path / "i", "-q"], "--allow-nonfinite",
          absent=["allow_nonfinite"])


def test_nonfinite_rows_are_named_by_row_id(tmp_path, capsys):
    rows = np.ones((250, 2), np.float32)
    rows[230, 0] = np.inf
    np.save(tmp_path / "t.npy", rows)
    fails(capsys, ["import", tmp_path / "t.npy", tmp_path / "s", "--chunk-rows", 100, "-q"],
          "t.npy rows 200:250: row 230 holds NaN or Inf")
    # into an existing store from row 1000: the file's rows, then the store's row id
    assert cli.main(["create", str(tmp_path / "big"), "--rows", "2000", "--dim", "2"]) == 0
    fails(capsys, ["import", tmp_path / "t.npy", tmp_path / "big", "--start", 1000,
                   "--chunk-rows", 100, "-q"], "t.npy rows 200:250", "row id 1230 (rows[30])")
    with ts.open(tmp_path / "big", readonly=True) as store:   # the chunks before it landed
        assert np.all(store.lookup(np.arange(1000, 1200)) == 1)
        assert np.all(store.lookup(np.arange(1200, 1250)) == 0)
    # the API: past the first chunk of a create, and in an update
    init = np.zeros((CREATE_CHUNK + 10, 1), np.float32)
    init[CREATE_CHUNK + 3] = np.nan
    with pytest.raises(ts.NonFiniteRowError,
                       match=f"init rows {CREATE_CHUNK}:{CREATE_CHUNK + 10}: row {CREATE_CHUNK + 3} "):
        ts.create(tmp_path / "c", CREATE_CHUNK + 10, 1, "float32", init=init)
    with ts.create(tmp_path / "u", 100, 2, "float32") as store:
        with pytest.raises(ts.NonFiniteRowError, match=r"rows: row id 42 \(rows\[1\]\) holds"):
            store.update([7, 42], np.array([[1, 1], [np.nan, 1]], np.float32))


def test_bench_rows_too_few(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--rows", "0"])
    assert "argument --rows: must be at least 1" in capsys.readouterr().err
    fails(capsys, ["bench", "--rows", 5], "--rows 5 leaves the memory tiers no rows", "--rows 10")


def test_export_into_a_missing_folder(tmp_path, capsys):
    ts.create(tmp_path / "s", 10, 2, "float32").close()
    out = tmp_path / "no" / "such" / "out.npy"
    fails(capsys, ["export", tmp_path / "s", out, "-q"], f"the folder {out.parent} does not exist",
          absent=["partial"])
    assert not (tmp_path / "no").exists()


def test_every_option_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, command in sub.choices.items() for action in command._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "trace.npy"
    np.save(path, np.random.default_rng(0).zipf(1.3, 20_000) % 3000)
    return path


def profile_json(capsys, *args):
    assert cli.main(["profile", *map(str, args), "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def test_profile_row_size_from_dim_dtype_store_or_row_bytes(tmp_path, trace, capsys):
    bw = profile_json(capsys, trace)["bandwidth"]
    assert bw["row_bytes"] == 256 and bw["row_bytes_from"].startswith("assumed")
    bw = profile_json(capsys, trace, "--dim", 32, "--dtype", "float32")["bandwidth"]
    assert (bw["row_bytes"], bw["row_bytes_from"]) == (128, "32 float32")
    assert profile_json(capsys, trace, "--dim", 32)["bandwidth"]["row_bytes"] == 64   # float16
    ts.create(tmp_path / "s", 5000, 8, "float64").close()
    rep = profile_json(capsys, trace, "--store", tmp_path / "s")
    assert rep["bandwidth"]["row_bytes"] == 64 and rep["trace"]["id_space"] == 5000
    assert profile_json(capsys, trace, "--row-bytes", 100)["bandwidth"]["row_bytes"] == 100
    fails(capsys, ["profile", trace, "--dim", 4, "--row-bytes", 8], "one way")
    fails(capsys, ["profile", trace, "--dtype", "float32"], "--dtype gives the row size with --dim")
    text_out = cli.main(["profile", str(trace), "--dim", "16", "-q"])
    assert text_out == 0 and "of 32-byte rows (16 float16; policy adaptive)" in capsys.readouterr().out


def test_profile_sizes_tiers_under_the_policies_given(trace, capsys):
    rep = profile_json(capsys, trace, "--policies", "lru")
    assert set(rep["simulation"]["results"]) == {"lru", "static optimum", "Belady MIN"}
    assert rep["recommendation"]["policy"] == "lru" and rep["bandwidth"]["policy"] == "lru"
    rep = profile_json(capsys, trace, "--policies", "lfu", "adaptive")
    assert rep["recommendation"]["policy"] == "adaptive"
