"""The CUDA tier's lookup path: GPU index, gather from HBM and pinned RAM, misses through the
host, the planner's rounds off the lookup's path (GPU only)."""
import numpy as np
import pytest

import tierstore as ts
from tierstore.workloads import zipf_ids

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _store(tmp_path, table, device_rows=64, ram_rows=256, **kw):
    config = ts.StoreConfig(device_rows=device_rows, ram_rows=ram_rows, device="cuda", **kw)
    return ts.create(tmp_path / "s", len(table), table.shape[1], table.dtype, init=table,
                     config=config)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_lookup_over_all_tiers_matches_table(tmp_path, dtype):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(4000, 12)).astype(dtype)
    with _store(tmp_path, table) as store:
        ids = zipf_ids(len(table), 1.05, 40 * 500, seed=1).reshape(40, 500)
        for batch in ids:
            out = store.lookup(batch.reshape(20, 25))
            assert out.is_cuda and out.shape == (20, 25, 12) and out.dtype == getattr(torch, dtype)
            np.testing.assert_array_equal(out.cpu().numpy(), table[batch.reshape(20, 25)])
        s = store.stats()
        assert s["device"]["hits"] > 0 and s["ram"]["hits"] > 0 and s["misses"] > 0
        assert s["promotions"] > 0


def test_updates_reach_every_tier(tmp_path):
    rng = np.random.default_rng(2)
    table = rng.normal(size=(2000, 8)).astype(np.float32)
    ref = table.copy()
    with _store(tmp_path, table, device_rows=32, ram_rows=96) as store:
        for k in range(30):
            ids = zipf_ids(len(table), 1.1, 300, seed=k)
            np.testing.assert_array_equal(store.lookup(ids).cpu().numpy(), ref[ids])
            upd = np.unique(ids)[:50]
            new = rng.normal(size=(len(upd), 8)).astype(np.float32)
            store.update(upd, new)
            ref[upd] = new
        store.flush()
        np.testing.assert_array_equal(store.lookup(np.arange(2000)).cpu().numpy(), ref)


def test_lookup_path_never_synchronises_the_device(tmp_path, monkeypatch):
    table = np.random.default_rng(3).normal(size=(3000, 16)).astype(np.float16)
    with _store(tmp_path, table, device_rows=128, ram_rows=512) as store:
        store.lookup(np.arange(100))        # warm up: buffers allocated
        calls = []
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(a))
        outs = [store.lookup(zipf_ids(3000, 1.05, 2000, seed=k)) for k in range(10)]
        assert not calls
        monkeypatch.undo()
        for k, out in enumerate(outs):
            np.testing.assert_array_equal(out.cpu().numpy(), table[zipf_ids(3000, 1.05, 2000, seed=k)])


def test_lookups_ahead_on_a_worker_match_and_never_synchronise(tmp_path, monkeypatch):
    table = np.random.default_rng(6).normal(size=(3000, 16)).astype(np.float16)
    with _store(tmp_path, table, device_rows=128, ram_rows=512) as store:
        store.lookup(np.arange(100))
        calls = []
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(a))
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            handles = [store.lookup_async(zipf_ids(3000, 1.05, 2000, seed=k)) for k in range(10)]
            outs = [h.result() for h in handles]
            assert all(o.is_cuda for o in outs)
        assert not calls
        monkeypatch.undo()
        stream.synchronize()
        for k, out in enumerate(outs):
            np.testing.assert_array_equal(out.cpu().numpy(), table[zipf_ids(3000, 1.05, 2000, seed=k)])


def test_rows_never_come_back_from_the_gpu(tmp_path, monkeypatch):
    table = np.random.default_rng(7).normal(size=(2000, 8)).astype(np.float32)
    ref = table.copy()
    rng = np.random.default_rng(8)
    with _store(tmp_path, table, device_rows=32, ram_rows=96) as store:
        copies = []
        real_cpu, real_copy = torch.Tensor.cpu, torch.Tensor.copy_

        def cpu(t, *a, **k):
            copies.append(t.device)
            return real_cpu(t, *a, **k)

        def copy_(dst, src, *a, **k):   # only the lookups' miss lists (int64) come back
            if src.is_cuda and not dst.is_cuda and src.dtype != torch.int64:
                copies.append(src.dtype)
            return real_copy(dst, src, *a, **k)

        monkeypatch.setattr(torch.Tensor, "cpu", cpu)
        monkeypatch.setattr(torch.Tensor, "copy_", copy_)
        outs = []
        for k in range(30):         # lookups, promotions, demotions, dirty write-backs, flushes
            ids = zipf_ids(len(table), 1.1, 300, seed=k)
            outs.append((store.lookup(ids), ref[ids].copy()))
            upd = np.unique(ids)[:40]
            new = rng.normal(size=(len(upd), 8)).astype(np.float32)
            store.update(upd, new)
            ref[upd] = new
            if k % 10 == 9:
                store.flush()
        assert not copies and store.stats()["writebacks"] > 0
        monkeypatch.undo()
        for out, want in outs:
            np.testing.assert_array_equal(out.cpu().numpy(), want)
        np.testing.assert_array_equal(store._memory.device_snapshot(), store._memory.shadow)


def test_buffers_grown_under_inference_mode_serve_lookups_on_a_worker(tmp_path):
    table = np.random.default_rng(9).normal(size=(5000, 8)).astype(np.float16)
    with _store(tmp_path, table, device_rows=256, ram_rows=1024) as store:
        with torch.inference_mode():           # the index, outputs and staging grow in the mode
            for k in range(4):
                ids = zipf_ids(5000, 0.9, 3000, seed=k)
                np.testing.assert_array_equal(store.lookup(ids).cpu().numpy(), table[ids])
        for k in range(4, 8):                   # and are written outside it, on the worker
            ids = zipf_ids(5000, 0.9, 3000, seed=k)
            np.testing.assert_array_equal(store.lookup_async(ids).result().cpu().numpy(), table[ids])
        with store._exclusive():    # the worker may still be planning the last batch's moves
            np.testing.assert_array_equal(store._memory.device_snapshot(), store._memory.shadow)


def test_ram_slab_is_pinned_and_staging_reused(tmp_path):
    table = np.random.default_rng(4).normal(size=(1000, 8)).astype(np.float32)
    with _store(tmp_path, table, device_rows=16, ram_rows=64) as store:
        memory = store._memory
        assert memory.ram_tensor.is_pinned()
        assert memory.ram.ctypes.data == memory.ram_tensor.data_ptr()
        for k in range(20):
            store.lookup(zipf_ids(1000, 1.0, 200, seed=k))
        buffers = {id(slot.host) for slot in memory.uploader.ring if slot.host is not None}
        assert 0 < len(buffers) <= len(memory.uploader.ring)
        assert all(slot.host.is_pinned() for slot in memory.uploader.ring if slot.host is not None)


def test_lookup_on_a_side_stream_and_empty_batches(tmp_path):
    table = np.random.default_rng(5).normal(size=(500, 4)).astype(np.float32)
    with _store(tmp_path, table, device_rows=8, ram_rows=32) as store:
        assert store.lookup(np.empty((0, 3), dtype=np.int64)).shape == (0, 3, 4)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for k in range(5):
                ids = zipf_ids(500, 1.0, 100, seed=k)
                out = store.lookup(torch.as_tensor(ids))
                got = out.cpu().numpy()
                np.testing.assert_array_equal(got, table[ids])


def test_triton_lookup_matches_the_torch_probe_and_lists_every_miss():
    from tierstore.tiers.cuda import CudaMemory

    rng = np.random.default_rng(11)
    for dim, dtype in ((64, np.float16), (12, np.float32), (3, np.float16)):
        mem = CudaMemory(500, 1500, dim, dtype, "cuda")
        ids = rng.choice(10**9, 2000, replace=False)
        slots = rng.permutation(2000)
        rows = rng.normal(size=(2000, dim)).astype(dtype)
        mem.write(slots, rows)
        mem.retarget(ids[:0], ids[:0], ids, slots)
        mem.commit()
        mem.retarget(ids[:300], slots[:300], ids[:0], ids[:0])    # 300 leave again
        mem.commit()
        query = np.concatenate([ids, rng.integers(0, 10**9, 700)])[rng.permutation(2700)]
        query = np.concatenate([query] * 3)              # repeats, over the first copy's pairs
        pending = mem.issue(query.reshape(90, 90))
        positions, missed = mem.misses(pending)
        where = {int(i): k for k, i in enumerate(ids[300:])}
        want_miss = np.array([int(i) not in where for i in query])
        assert sorted(positions.tolist()) == np.flatnonzero(want_miss).tolist()
        np.testing.assert_array_equal(missed, query[positions])
        zeros = mem.missed_rows(len(positions), len(positions))
        zeros.rows[...], zeros.positions[...], zeros.which[...] = 0, positions, np.arange(len(positions))
        mem.fill(pending, zeros)
        out = mem.deliver(mem.ready(pending)).cpu().numpy().reshape(-1, dim)
        want = np.zeros((len(query), dim), dtype=dtype)
        hit = np.flatnonzero(~want_miss)
        want[hit] = rows[300:][[where[int(i)] for i in query[hit]]]
        np.testing.assert_array_equal(out, want)
        q = torch.as_tensor(query, device="cuda")
        probe_slots = mem.index.probe(q).cpu().numpy()
        np.testing.assert_array_equal(probe_slots >= 0, ~want_miss)


def test_resident_rows_are_served_without_the_host(tmp_path, monkeypatch):
    table = np.random.default_rng(12).normal(size=(4000, 16)).astype(np.float16)
    with _store(tmp_path, table, device_rows=200, ram_rows=800) as store:
        hot = np.arange(0, 4000, 4)[:900]             # fits the two tiers
        for _ in range(3):
            store.lookup(hot)
        store.flush()                                # waits for the planner's rounds
        assert len(store._state.resident()) >= 900
        host_reads = []
        monkeypatch.setattr(store, "_rows_of", lambda uniq, rows, lent: host_reads.append(uniq))
        ids = torch.as_tensor(np.random.default_rng(13).choice(hot, (64, 64)), device="cuda")
        outs = [store.lookup(ids) for _ in range(5)]
        assert host_reads == []
        for out in outs:
            np.testing.assert_array_equal(out.cpu().numpy(), table[ids.cpu().numpy()])
        s = store.stats()
        assert s["device"]["hits"] > 0 and s["ram"]["hits"] > 0


def test_cuda_ids_stay_on_the_gpu_and_bad_ones_raise(tmp_path):
    table = np.random.default_rng(15).normal(size=(1000, 4)).astype(np.float32)
    with _store(tmp_path, table, device_rows=16, ram_rows=64) as store:
        ids = torch.as_tensor(zipf_ids(1000, 1.0, 600, seed=3), device="cuda").view(20, 30)
        np.testing.assert_array_equal(store.lookup(ids).cpu().numpy(), table[ids.cpu().numpy()])
        before = store.stats()["lookups"]
        for bad in (1000, -1):
            wrong = ids.clone()
            wrong[3, 7] = bad
            with pytest.raises(ts.IdOutOfRangeError, match="position 97"):
                store.lookup(wrong)
        assert store.stats()["lookups"] == before
        with pytest.raises(ts.IdTypeError):
            store.lookup(ids.float())


def test_lookups_on_two_streams_see_every_commit_in_order(tmp_path):
    """Lookups run on their caller's stream, commits on the tier's: with tiny tiers, rows move
    at every lookup, and each lookup must still read the rows of the last write before it,
    whichever stream it ran on and whichever stream takes its result."""
    rng = np.random.default_rng(11)
    table = rng.normal(size=(800, 8)).astype(np.float32)
    ref = table.copy()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    with _store(tmp_path, table, device_rows=8, ram_rows=24) as store:
        outs = []
        for k in range(40):
            ids = zipf_ids(len(table), 1.0, 64, seed=k)
            with torch.cuda.stream(streams[k % 2]):
                if k % 3 == 0:
                    handle = store.lookup_async(torch.as_tensor(ids, device="cuda"))
                    with torch.cuda.stream(streams[(k + 1) % 2]):   # taken on the other stream
                        outs.append((handle.result(), ref[ids].copy()))
                else:
                    outs.append((store.lookup(torch.as_tensor(ids, device="cuda")), ref[ids].copy()))
            upd = np.unique(ids)[:5]
            ref[upd] = rng.normal(size=(len(upd), 8)).astype(np.float32)
            store.update(upd, ref[upd])
        torch.cuda.synchronize()
        for out, want in outs:
            np.testing.assert_array_equal(out.cpu().numpy(), want)
        assert store._memory._kernels and all(store._memory._kernels.values()), \
            "the lookup kernel is launched through its compiled form"


def test_ids_at_any_alignment(tmp_path):
    table = np.random.default_rng(12).normal(size=(300, 4)).astype(np.float32)
    with _store(tmp_path, table, device_rows=16, ram_rows=64) as store:
        ids = torch.as_tensor(zipf_ids(300, 1.0, 101, seed=3), device="cuda")
        for start in range(4):      # views 8 bytes apart: half of them not 16-byte aligned
            np.testing.assert_array_equal(store.lookup(ids[start:]).cpu().numpy(),
                                          table[ids[start:].cpu().numpy()])


def test_a_lookup_ahead_waits_for_ids_still_being_made(tmp_path):
    """A lookup ahead must read its ids as the caller's stream leaves them, not as they were
    when it was issued (the caller's stream is still busy making them)."""
    table = np.random.default_rng(13).normal(size=(500, 4)).astype(np.float32)
    with _store(tmp_path, table, device_rows=64, ram_rows=128) as store:
        want = zipf_ids(500, 1.0, 4096, seed=5)
        store.lookup(torch.as_tensor(want, device="cuda"))      # rows resident, kernels built
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            ids = torch.zeros(4096, dtype=torch.int64, device="cuda")
            torch.cuda._sleep(20_000_000)          # the caller's stream is busy for a while
            ids.copy_(torch.as_tensor(want).to("cuda", non_blocking=True))
            handle = store.lookup_async(ids)
            assert handle.future is not None
            out = handle.result()
        stream.synchronize()
        np.testing.assert_array_equal(out.cpu().numpy(), table[want])
