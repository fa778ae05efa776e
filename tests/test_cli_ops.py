"""Store operations on the command line: create, import, export, stat, check."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np

import tierstore as ts

sys.path.insert(0, os.path.dirname(__file__))
from damage import corrupt_row  # noqa: E402
from tierstore import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tierstore", *map(str, args)],
                          capture_output=True, text=True, timeout=600, check=False)


def write_safetensors(path, tensors: dict, metadata=None, pad=True):
    """A safetensors file by hand: u64 header length, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    codes = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64"}
    for name, arr in tensors.items():
        if isinstance(arr, tuple):                      # ("BF16", uint16 array)
            code, arr = arr
        else:
            code = codes[arr.dtype.name]
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def tricky_rows(n, dim, dtype, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, dim)).astype(dtype)
    rows[0] = -0.0                                        # equal to 0.0, not the same bits
    rows[1] = np.finfo(dtype).tiny / 4                    # subnormal
    rows[2, 0] = np.finfo(dtype).max
    return rows


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and \
        np.array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


def test_create_stat_check(tmp_path):
    path = tmp_path / "s"
    out = run_cli("create", path, "--rows", 1000, "--dim", 8, "--dtype", "float32",
                  "--init", 0.5)
    assert out.returncode == 0, out.stderr
    assert "1,000 rows x 8 float32" in out.stdout
    out = run_cli("stat", path, "--json", "--device-rows", 10, "--ram-rows", 90)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["num_rows"], info["dim"], info["dtype"]) == (1000, 8, "float32")
    assert info["init"] == {"kind": "constant", "value": 0.5} and info["stored_records"] == 0
    assert info["tiers"]["device"] == {"rows": 10, "bytes": 320}
    assert info["tiers"]["ram"] == {"rows": 90, "bytes": 2880}
    assert info["tiers"]["bookkeeping"]["bytes"] > 0
    out = run_cli("check", path)
    assert out.returncode == 0 and out.stdout.startswith("ok: 0 stored rows")
    with ts.open(path, readonly=True) as store:
        assert np.all(store.lookup([0, 999]) == 0.5)
    again = run_cli("create", path, "--rows", 10, "--dim", 2)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_import_export_npy_round_trip(tmp_path):
    rows = tricky_rows(3000, 8, np.float16)
    src = tmp_path / "table.npy"
    np.save(src, rows)
    store = tmp_path / "s"
    out = run_cli("import", src, store, "--chunk-rows", 700)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""   # no progress bar when stderr is not a terminal
    assert "3,000 rows x 8 float16" in out.stdout
    back = tmp_path / "back.npy"
    out = run_cli("export", store, back, "--chunk-rows", 1024)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert same_bits(np.load(back), rows)
    out = run_cli("stat", store)
    assert out.returncode == 0 and "stored_records" in out.stdout and "3000" in out.stdout


def test_import_fortran_order_with_zstd(tmp_path):
    rows = np.asfortranarray(tricky_rows(500, 16, np.float32, seed=1))
    src = tmp_path / "f.npy"
    np.save(src, rows)
    assert cli.main(["import", str(src), str(tmp_path / "s"), "--codec", "zstd", "-q"]) == 0
    assert cli.main(["export", str(tmp_path / "s"), str(tmp_path / "b.npy"), "-q"]) == 0
    assert same_bits(np.load(tmp_path / "b.npy"), np.ascontiguousarray(rows))
    with ts.open(tmp_path / "s", readonly=True) as store:
        assert store.codec.codec_id == "zstd"


def test_import_safetensors(tmp_path):
    emb = tricky_rows(300, 4, np.float32, seed=2)
    other = np.arange(6, dtype=np.int64).reshape(2, 3)
    src = tmp_path / "model.safetensors"
    write_safetensors(src, {"other": other, "embed.weight": emb}, metadata={"format": "pt"})
    out = run_cli("import", src, tmp_path / "s", "--tensor", "embed.weight")
    assert out.returncode == 0, out.stderr
    out = run_cli("export", tmp_path / "s", tmp_path / "b.npy")
    assert out.returncode == 0, out.stderr
    assert same_bits(np.load(tmp_path / "b.npy"), emb)
    # bf16: the top half of a float32, so it becomes float32 exactly
    full = np.random.default_rng(3).standard_normal((64, 8)).astype(np.float32)
    bf16 = (full.view(np.uint32) >> 16).astype(np.uint16)
    write_safetensors(tmp_path / "bf.safetensors", {"w": ("BF16", bf16)}, pad=False)
    assert cli.main(["import", str(tmp_path / "bf.safetensors"), str(tmp_path / "bf"), "-q"]) == 0
    with ts.open(tmp_path / "bf", readonly=True) as store:
        got = store.lookup(np.arange(64))
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), bf16.astype(np.uint32) << 16)


def test_import_into_an_existing_store(tmp_path):
    path = tmp_path / "s"
    assert cli.main(["create", str(path), "--rows", "100", "--dim", "4", "--dtype", "float32"]) == 0
    part = np.full((10, 4), 7.0, dtype=np.float32)
    np.save(tmp_path / "part.npy", part)
    assert cli.main(["import", str(tmp_path / "part.npy"), str(path), "--start", "90", "-q"]) == 0
    with ts.open(path, readonly=True) as store:
        got = store.lookup(np.arange(100))
    assert np.all(got[90:] == 7.0) and np.all(got[:90] == 0.0)
    assert cli.main(["import", str(tmp_path / "part.npy"), str(path), "--start", "95", "-q"]) == 2


def test_import_errors_name_the_file_and_problem(tmp_path, capsys):
    def fails(args, *needles):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, (needle, err)

    store = str(tmp_path / "s")
    fails(["import", str(tmp_path / "missing.npy"), store], "missing.npy: no such file")
    garbled = tmp_path / "garbled.npy"
    garbled.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage")
    fails(["import", str(garbled), store], "garbled.npy", "damaged .npy")
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(3, 4))
    fails(["import", str(tmp_path / "ints.npy"), store], "ints.npy", "int64 values")
    np.save(tmp_path / "flat.npy", np.ones(5))
    fails(["import", str(tmp_path / "flat.npy"), store], "flat.npy", "2-D")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff" * 40)
    fails(["import", str(junk), store], "junk.bin", "not a .npy or .safetensors file")
    st = tmp_path / "m.safetensors"
    write_safetensors(st, {"a": np.ones((4, 2), np.float32), "b": np.ones((3, 2), np.float32)})
    fails(["import", str(st), store], "m.safetensors", "holds 2 tensors", "--tensor")
    fails(["import", str(st), store, "--tensor", "c"], "no tensor named 'c'")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(st.read_bytes()[:-5])
    fails(["import", str(truncated), store, "--tensor", "b"], "t.safetensors", "truncated")
    badjson = tmp_path / "j.safetensors"
    badjson.write_bytes(struct.pack("<Q", 8) + b"{not jso")
    fails(["import", str(badjson), store], "j.safetensors", "not valid JSON")
    ints = tmp_path / "i.safetensors"
    write_safetensors(ints, {"w": np.arange(6, dtype=np.int64).reshape(3, 2)})
    fails(["import", str(ints), store], "i.safetensors", "I64")
    nan = np.ones((5, 2), np.float32)
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    fails(["import", str(tmp_path / "nan.npy"), store, "-q"], "nan.npy rows 0:5", "NaN",
          "--allow-nonfinite")
    assert not (tmp_path / "s").exists()      # a failed import leaves nothing (it left s/writer.lock)
    np.save(tmp_path / "ok.npy", np.ones((5, 2), np.float32))
    assert cli.main(["import", str(tmp_path / "ok.npy"), store, "-q"]) == 0
    fails(["import", str(tmp_path / "ok.npy"), store, "-q"], "already exists")
    assert cli.main(["import", str(tmp_path / "ok.npy"), store, "-q", "--overwrite"]) == 0


def test_export_errors(tmp_path, capsys):
    out = run_cli("export", tmp_path / "nothing", tmp_path / "o.npy")
    assert out.returncode == 2 and "no such store" in out.stderr and "nothing" in out.stderr
    path = tmp_path / "s"
    ts.create(path, 10, 4, "float32", init=np.ones((10, 4))).close()
    corrupt_row(path, 7)
    assert cli.main(["export", str(path), str(tmp_path / "o.npy"), "-q"]) == 2
    assert "corrupt row 7" in capsys.readouterr().err
    assert list(tmp_path.glob("*.npy")) == [] and list(tmp_path.glob(".*partial*")) == []
