"""``tierstore profile``: the replay is the store's planner, the bounds are exact, libCacheSim
agrees, and the command works end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tierstore as ts
from tierstore import cli
from tierstore import profile as P
from tierstore.policy import POLICIES, CacheState
from tierstore.policy import planner as _planner
from tierstore.policy.belady import belady_hit_counts, dense_ids
from tierstore.workloads import uniform_ids, zipf_ids


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tierstore", *map(str, args)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def zipf_trace():
    return zipf_ids(20_000, 1.0, 200_000, seed=5)


# =========================================================================== the replay


@pytest.mark.parametrize("policy", POLICIES)
def test_sequential_replay_is_simulate_trace(policy):
    """The batch-1 loop leaves every bookkeeping array as simulate_trace(batch=1) does."""
    trace = zipf_ids(3000, 1.0, 30_000, seed=1)
    for device, ram in ((20, 180), (0, 64), (64, 0)):
        ours = CacheState.new(device, ram, policy)
        P.SEQUENTIAL.run(ours.arrays(), trace)
        ref = CacheState.new(device, ram, policy)
        _planner.simulate_trace(ref.arrays(), trace, 1)
        for a, b in zip(ref.arrays(), ours.arrays()):
            np.testing.assert_array_equal(a, b)


def test_replay_matches_a_real_store(tmp_path):
    """Hit ratios per tier of a profile equal what a Store reports for the same lookups."""
    trace = zipf_ids(2000, 1.0, 8000, seed=2)
    config = ts.StoreConfig(device_rows=20, ram_rows=180)
    with ts.create(tmp_path / "s", 2000, 4, "float32", config=config) as store:
        for start in range(0, len(trace), 16):
            store.lookup(trace[start:start + 16])
        stats = store.stats()
    sim = P.simulate(trace, 20, 180, config.policy, batch=16)
    assert sim.accesses == stats["lookups"] == len(trace)
    assert (sim.device_hits, sim.ram_hits, sim.misses) == \
        (stats["device"]["hits"], stats["ram"]["hits"], stats["misses"]), \
        "if this fails only in a working tree, numba's on-disk cache of the planner may be " \
        "older than the policy modules: retry with NUMBA_CACHE_DIR set to an empty folder"


def test_warmup_is_not_counted(zipf_trace):
    whole = P.simulate(zipf_trace, 50, 450, "lru")
    first = P.simulate(zipf_trace[:50_000], 50, 450, "lru")
    warm = P.simulate(zipf_trace, 50, 450, "lru", start=50_000)
    assert warm.accesses == 150_000
    for name in P.COUNTERS:
        assert getattr(warm, name) == getattr(whole, name) - getattr(first, name), name


# =========================================================================== bounds


def naive_min_hits(trace, capacity):
    """Belady's MIN by the book: on a miss with a full cache, evict the resident whose next
    use lies farthest ahead (never again counts as farthest)."""
    def next_use(y, i):
        later = [j for j in range(i + 1, len(trace)) if trace[j] == y]
        return later[0] if later else len(trace)

    cache, hits = set(), 0
    for i, x in enumerate(trace):
        if x in cache:
            hits += 1
            continue
        if len(cache) >= capacity:
            cache.remove(max(cache, key=lambda y, i=i: next_use(y, i)))
        cache.add(x)
    return hits


@settings(max_examples=60, deadline=None)
@given(trace=st.lists(st.integers(0, 12), min_size=1, max_size=80), capacity=st.integers(1, 6))
def test_belady_matches_naive(trace, capacity):
    arr = np.asarray(trace, dtype=np.int64) * 1_000_003     # sparse ids: dense_ids renumbers
    dense = np.empty(len(arr), dtype=np.int64)
    u = dense_ids(arr, dense)
    assert belady_hit_counts(dense, u, [capacity])[0] == naive_min_hits(trace, capacity)


def test_bounds_hold(zipf_trace):
    stats = P.trace_stats(zipf_trace)
    best = P.belady(stats, 50, 450)
    static = P.static_optimum(stats, 50, 450)
    assert static.device_hits == stats.counts_sorted[:50].sum()
    assert static.device_hits + static.ram_hits == stats.counts_sorted[:500].sum()
    for policy in POLICIES:
        r = P.simulate(zipf_trace, 50, 450, policy)
        assert best.device_hits >= r.device_hits and best.combined >= r.combined, policy


def test_zipf_fit_and_coverage():
    for alpha in (0.8, 1.2):
        stats = P.trace_stats(zipf_ids(100_000, alpha, 1_000_000, seed=3))
        assert abs(P.zipf_fit(stats.counts_sorted)["alpha"] - alpha) < 0.05
    stats = P.trace_stats(uniform_ids(10_000, 500_000, seed=4), 10_000)
    rows, share = stats.coverage(0.10)
    assert rows == 1000 and 0.10 < share < 0.15     # the top tenth by count


def test_recommendation_reaches_the_target(zipf_trace):
    # LRU: its hit ratio grows smoothly with memory, so the search's precision shows (the
    # adaptive window's hit ratio can jump half a point between sizes 3% apart)
    stats = P.trace_stats(zipf_trace)
    anchor = (50, 450, P.simulate(zipf_trace, 50, 450, "lru"))
    rec = P.recommend(zipf_trace, stats, 0.8, 0.1, "lru", anchor=anchor, sample_accesses=50_000)
    assert rec.reachable and rec.met and rec.sample_rate == 0.25
    assert rec.verified.combined >= 0.8
    assert rec.device_rows == round(0.1 * rec.memory_rows)
    again = P.simulate(zipf_trace, rec.device_rows, rec.ram_rows, "lru")
    assert again.combined == rec.verified.combined
    short = [t for t, h in rec.tried if h < 0.8]
    # within 2% of memory of a size that falls short, or at most 0.2 points over the target
    assert rec.verified.combined - 0.8 <= 0.002 or (short and rec.memory_rows <= max(short) * 1.02)
    dev = P.recommend(zipf_trace, stats, 0.8, 0.1, device_target=0.5, sample_accesses=50_000)
    assert dev.met and dev.verified.device >= 0.5 and dev.verified.combined >= 0.8
    out = P.recommend(zipf_trace, stats, 0.99, 0.1)
    assert not out.reachable and out.best_possible < 0.99


# =========================================================================== libCacheSim


def test_agrees_with_libcachesim(tmp_path, zipf_trace):
    lcs = pytest.importorskip("libcachesim")
    path = tmp_path / "zipf.oracleGeneral.bin"
    P.write_oracle_general(zipf_trace, path)
    n = len(zipf_trace)
    stats = P.trace_stats(zipf_trace)
    for capacity in (200, 2000):                  # 1% and 10% of the ids
        for name, policy in (("LRU", "lru"), ("LFU", "lfu")):
            reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
            theirs = 1.0 - getattr(lcs, name)(cache_size=capacity).process_trace(reader)[0]
            ours = P.simulate(zipf_trace, capacity // 10, capacity - capacity // 10, policy)
            assert abs(ours.combined - theirs) <= 0.005, (name, capacity, ours.combined, theirs)
        reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
        theirs = 1.0 - lcs.Belady(cache_size=capacity).process_trace(reader)[0]
        ours = P.belady(stats, 0, capacity)
        assert ours.device_hits + ours.ram_hits == round(theirs * n)


# =========================================================================== the command


def test_profile_command_json(tmp_path, zipf_trace):
    path = tmp_path / "trace.npy"
    np.save(path, zipf_trace.reshape(400, 500))            # any shape: read in C order
    out = run_cli("profile", path, "--device-rows", 50, "--ram-rows", 450, "--target", 0.8,
                  "--lookup-rate", 2e6, "--row-bytes", 512, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    t = rep["trace"]
    assert (t["accesses"], t["unique_ids"]) == (200_000, len(np.unique(zipf_trace)))
    assert abs(rep["zipf"]["alpha"] - 1.0) < 0.1
    res = rep["simulation"]["results"]
    assert set(res) == set(POLICIES) | {"static optimum", "Belady MIN"}
    for name, r in res.items():
        assert r["device_hits"] + r["ram_hits"] + r["misses"] == 200_000, name
        assert r["combined_hit_ratio"] <= res["Belady MIN"]["combined_hit_ratio"] or \
            name == "static optimum"
    lru = P.simulate(zipf_trace, 50, 450, "lru")
    assert (res["lru"]["device_hits"], res["lru"]["ram_hits"]) == (lru.device_hits, lru.ram_hits)
    rec = rep["recommendation"]
    assert rec["met"] and rec["verified"]["combined_hit_ratio"] >= 0.8
    assert rec["memory_rows"] == rec["device_rows"] + rec["ram_rows"]
    bw = rep["bandwidth"]["given"]
    adaptive = res["adaptive"]
    assert bw["disk_reads"]["rows_per_s"] == pytest.approx(2e6 * adaptive["read_ratio"])
    assert bw["ram_reads"]["bytes_per_s"] == pytest.approx(2e6 * adaptive["ram_hit_ratio"] * 512)


def test_batched_replay_reads_each_row_once_a_batch(zipf_trace):
    one = P.simulate(zipf_trace, 50, 450, "lru", batch=1)
    big = P.simulate(zipf_trace, 50, 450, "lru", batch=1024)
    assert one.disk_reads == one.misses
    # a batch's repeats of a missing id are served by the disk, from one read
    assert big.disk_reads < big.misses
    assert big.read_hit > big.combined


def test_profile_command_lookahead(tmp_path, zipf_trace):
    path = tmp_path / "trace.npy"
    np.save(path, zipf_trace[:20_000])
    out = run_cli("profile", path, "--policies", "lru", "--batch", 16, "--lookahead", 2,
                  "--device-rows", 10, "--ram-rows", 90, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["simulation"]["lookahead"] == 2
    lru = rep["simulation"]["results"]["lru"]
    ahead = P.simulate(zipf_trace[:20_000], 10, 90, "lru", batch=16, lookahead=2)
    plain = P.simulate(zipf_trace[:20_000], 10, 90, "lru", batch=16)
    assert lru["disk_reads"] == ahead.disk_reads < plain.disk_reads


def test_profile_command_text_raw(tmp_path, zipf_trace):
    path = tmp_path / "trace.bin"
    zipf_trace[:50_000].astype("<i8").tofile(path)
    out = run_cli("profile", path, "--format", "raw", "--policies", "lru", "lfu",
                  "--batch", 64, "--warmup", 0.5, "--target", 0.6)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("accesses        50,000", "Zipf exponent", "top 1% of rows",
                   "batches of 64 ids", "| lru ", "| lfu ", "| Belady MIN", "| static optimum",
                   "Sizing for a combined hit ratio of 0.6", "Bandwidth at 1.00 M lookups/s",
                   "| disk reads"):
        assert needle in text, needle


def test_profile_bad_traces(tmp_path, capsys):
    cases = {}
    cases["missing.npy"] = (None, "no such file")
    garbled = tmp_path / "garbled.npy"
    garbled.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage")
    cases["garbled.npy"] = (garbled, "damaged .npy")
    floats = tmp_path / "floats.npy"
    np.save(floats, np.ones(10))
    cases["floats.npy"] = (floats, "not integer ids")
    negative = tmp_path / "negative.npy"
    np.save(negative, np.array([3, -1, 2]))
    cases["negative.npy"] = (negative, "negative id")
    headerless = tmp_path / "headerless.npy"
    np.arange(10).tofile(headerless)
    cases["headerless.npy"] = (headerless, "--format raw")
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros(0, dtype=np.int64))
    cases["empty.npy"] = (empty, "holds no ids")
    for name, (path, problem) in cases.items():
        assert cli.main(["profile", str(path or tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and problem in err, err
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 13)
    assert cli.main(["profile", str(odd), "--format", "raw"]) == 2
    err = capsys.readouterr().err
    assert "odd.bin" in err and "13 bytes" in err
    out = run_cli("profile", tmp_path / "nothing.npy")            # through the real entry point
    assert out.returncode == 2 and "nothing.npy: no such file" in out.stderr


def test_profile_plot(tmp_path, capsys):
    trace = tmp_path / "t.npy"
    np.save(trace, zipf_ids(2000, 1.0, 20_000, seed=6))
    png = tmp_path / "mrc.png"
    code = cli.main(["profile", str(trace), "--policies", "lru", "--plot", str(png), "--json"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2 and "pip install 'tierstore[plot]'" in capsys.readouterr().err
        return
    assert code == 0 and png.stat().st_size > 1000
    rep = json.loads(capsys.readouterr().out)
    curves = rep["curves"]["miss_ratio"]
    assert set(curves) == {"lru", "Belady MIN", "static optimum"}
    for lru, best in zip(curves["lru"], curves["Belady MIN"]):
        assert best <= lru


def test_ngram_path_with_a_stub_hasher(tmp_path, capsys, monkeypatch):
    """The --ngram plumbing, whatever tierstore.hashing holds: the hasher's ids are the trace."""
    class Stub:
        def __init__(self, vocab_size, max_ngram=3, heads=8, table_size=None, layer_id=0,
                     seed=0, pad_id=0):
            self.vocab_size, self.max_ngram, self.heads = vocab_size, max_ngram, heads
            self.layer_id, self.seed, self.pad_id = layer_id, seed, pad_id
            self.ids_per_token = (max_ngram - 1) * heads
            self.num_rows = 97 * self.ids_per_token

        def __call__(self, tokens):
            t = np.atleast_2d(tokens)
            k = np.arange(self.ids_per_token)
            return (t[..., None] * 31 + k * 97) % self.num_rows

    monkeypatch.setitem(sys.modules, "tierstore.hashing", types.SimpleNamespace(
        NgramHasher=Stub, compression_key=str.lower))
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(0, 40, size=(4, 250)))
    assert cli.main(["profile", str(tokens), "--ngram", "--heads", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trace"]["accesses"] == 1000 * 4
    assert rep["trace"]["id_space"] == 97 * 4
    assert rep["trace"]["ngram"]["ids_per_token"] == 4
    text = tmp_path / "words.txt"
    text.write_text("the cat sat on the mat . The cat !\n" * 50, encoding="utf-8")
    assert cli.main(["profile", "--text", str(text), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["trace"]["accesses"] == 10 * 50 * 16
    assert rep["trace"]["ngram"]["vocab_size"] == 8                  # 7 words + the pad id
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert cli.main(["profile", "--text", str(bad)]) == 2
    assert "latin1.txt: not UTF-8" in capsys.readouterr().err


def test_ngram_command_with_engram_hashing(tmp_path):
    hashing = pytest.importorskip("tierstore.hashing")
    tokens = np.random.default_rng(1).integers(0, 60, size=(2, 500))
    path = tmp_path / "tokens.npy"
    np.save(path, tokens)
    out = run_cli("profile", path, "--ngram", "--max-ngram", 3, "--heads", 2, "--table-size",
                  101, 211, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    hasher = hashing.NgramHasher(60, max_ngram=3, heads=2, table_size=[101, 211])
    ids = np.asarray(hasher(tokens)).reshape(-1)
    assert rep["trace"]["accesses"] == ids.size == 1000 * 4
    assert rep["trace"]["unique_ids"] == len(np.unique(ids))
    assert rep["trace"]["id_space"] == hasher.num_rows
