"""tierstore.distributed: a table sharded over gloo processes equals one plain store.

Each spawn costs a few seconds of imports per process, so the multi-process checks
share one spawn of 3 ranks; each worker asserts on its own rank and a failure in any
rank fails the test.
"""
import datetime
import os
import shutil
import sys
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tierstore as ts
from tierstore.errors import (
    CorruptRowError,
    IdOutOfRangeError,
    IdTypeError,
    NonFiniteRowError,
    RowShapeError,
    ShardMismatchError,
    ShardOpenError,
    ShardPeerError,
)
from tierstore.tiers.format import ShardMeta

sys.path.insert(0, os.path.dirname(__file__))
from damage import corrupt_row

torch = pytest.importorskip("torch")
dist = torch.distributed
mp = torch.multiprocessing
tsd = pytest.importorskip("tierstore.distributed")

TIMEOUT_S = 120          # the process group's timeout for the ordinary collectives
SHORT_TIMEOUT_S = 3      # the group on which a rank never shows up


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels(tmp_path_factory):
    """Compile the store's kernels here once, so the ranks load them instead of racing to."""
    with ts.create(tmp_path_factory.mktemp("warm") / "s", 64, 4, "float32",
                   config=ts.StoreConfig(device_rows=2, ram_rows=2)) as store:
        store.lookup(np.arange(64))
        store.update(np.arange(8), np.ones((8, 4)))
        store.prefetch(np.arange(64)).wait()
        store.lookup(np.arange(64))
        store.check()


def _spawn(worker, nprocs, tmp_path, *args, backend="gloo"):
    mp.spawn(_entry, args=(nprocs, backend, str(tmp_path / "rendezvous"), worker, tmp_path) + args,
             nprocs=nprocs, join=True)


def _entry(rank, world, backend, rendezvous, worker, tmp_path, *args):
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    try:
        worker(rank, world, tmp_path, *args)
    finally:
        dist.destroy_process_group()


# -- one process ------------------------------------------------------------------------------
@given(kind=st.sampled_from(tsd.RULES), world=st.integers(1, 9), extra=st.integers(0, 40))
def test_rule_is_a_bijection_onto_the_shards(kind, world, extra):
    rule = tsd.ShardingRule(kind, world + extra, world)
    ids = np.arange(rule.num_rows)
    owners = rule.owner(ids)
    local = rule.local_ids(ids, owners)
    for rank in range(world):
        mine = np.sort(local[owners == rank])
        np.testing.assert_array_equal(mine, np.arange(rule.local_rows(rank)))
        np.testing.assert_array_equal(rule.global_ids(rank, mine), ids[owners == rank])
    sizes = [rule.local_rows(r) for r in range(world)]
    assert sum(sizes) == rule.num_rows and max(sizes) - min(sizes) <= 1


def test_rule_layouts_are_the_documented_ones():
    mod, rng = tsd.ShardingRule("mod", 10, 3), tsd.ShardingRule("range", 10, 3)
    ids = np.arange(10)
    assert mod.owner(ids).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert mod.local_ids(ids, mod.owner(ids)).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert rng.owner(ids).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rng.local_ids(ids, rng.owner(ids)).tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2]
    with pytest.raises(ts.ConfigError, match="rule"):
        tsd.ShardingRule("hash", 10, 3)
    with pytest.raises(ts.ConfigError, match="cannot give each"):
        tsd.ShardingRule("mod", 2, 3)


def test_shard_paths(tmp_path):
    assert tsd.shard_path(tmp_path, 2, 4) == tmp_path / "shard-00002-of-00004"
    assert tsd.shard_path("/disk{rank}/t-{world}", 1, 2) == tsd.Path("/disk1/t-2")


def test_shard_record_round_trips_and_plain_stores_have_none(tmp_path):
    record = ShardMeta(rank=1, world_size=3, rule="mod", num_rows=100)
    assert ShardMeta.from_bytes(record.to_bytes(), "p") == record
    assert ShardMeta.from_bytes(None, "p") is None
    damaged = bytearray(record.to_bytes())
    damaged[5] ^= 1
    with pytest.raises(ts.CorruptStoreError, match="shard record"):
        ShardMeta.from_bytes(bytes(damaged), "p")
    with ts.create(tmp_path / "plain", 10, 2) as store:
        assert tsd._read_shard_record(store) is None


def test_errors_are_builtins_too():
    assert issubclass(ShardOpenError, RuntimeError)
    assert issubclass(ShardMismatchError, ShardOpenError) and issubclass(ShardMismatchError, ValueError)
    assert issubclass(ShardPeerError, RuntimeError)
    assert ShardPeerError("x", [2]).ranks == [2]


def test_needs_an_initialised_process_group(tmp_path):
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        tsd.create_sharded(tmp_path / "t", 10, 2)


# -- three ranks: both rules, bad input, training, resharding, bad shards, an absent rank -------
def test_ranks_equal_one_store_train_like_nn_embedding_and_refuse_bad_shards(tmp_path):
    _spawn(_worker, 3, tmp_path)


def _worker(rank, world, tmp_path):
    _check_equivalence(rank, world, tmp_path / "mod", "mod", seed=11)
    _check_equivalence(rank, world, tmp_path / "range", "range", seed=12)
    _check_bad_input(rank, world, tmp_path)
    _check_training(rank, world, tmp_path)
    _check_world_size_mismatch_and_reshard(rank, world, tmp_path)
    _check_bad_shards(rank, world, tmp_path)
    _check_absent_rank_times_out(rank, world, tmp_path)


def _random_ids(rng, num_rows):
    """Ids of a random shape (0 to 3 dims, sometimes empty), many of them repeated."""
    shape = tuple(int(n) for n in rng.integers(0, 5, size=rng.integers(0, 4)))
    pool = rng.integers(0, num_rows, size=rng.integers(1, 12))
    ids = rng.choice(pool, size=shape) if rng.random() < 0.6 else rng.integers(0, num_rows, size=shape)
    return np.asarray(ids, dtype=np.int64)


def _check_equivalence(rank, world, tmp_path, rule, seed):
    """Random lookups and updates from every rank; every rank replays all ranks' updates in
    rank order (the highest rank wins) into its own plain store and compares."""
    num_rows, dim = 257, 5
    table = np.random.default_rng(seed).standard_normal((num_rows, dim)).astype(np.float32)
    config = ts.StoreConfig(device_rows=4, ram_rows=12, writeback_rows=3)
    store = tsd.create_sharded(tmp_path / "table", num_rows, dim, "float32", init=table,
                               config=config, rule=rule)
    assert (store.rank, store.world_size, store.num_rows, store.local.num_rows) == \
        (rank, world, num_rows, tsd.ShardingRule(rule, num_rows, world).local_rows(rank))
    reference = ts.create(tmp_path / f"reference-{rank}", num_rows, dim, "float32", init=table,
                          config=config)
    rngs = [np.random.default_rng([seed, r]) for r in range(world)]   # every rank's ops, everywhere
    own = np.random.default_rng([seed, world, rank])                   # this rank's alone
    for step in range(40):
        ids = [_random_ids(g, num_rows) for g in rngs]
        as_torch = step % 3 == 0
        mine = torch.from_numpy(ids[rank]) if as_torch else ids[rank]
        got = store.lookup(mine)
        assert torch.is_tensor(got) == as_torch and tuple(got.shape) == ids[rank].shape + (dim,)
        np.testing.assert_array_equal(np.asarray(got), reference.lookup(ids[rank]))
        writes = [_random_ids(g, num_rows) for g in rngs]
        rows = [g.standard_normal(w.shape + (dim,)).astype(np.float32) for g, w in zip(rngs, writes)]
        store.update(writes[rank], torch.from_numpy(rows[rank]) if as_torch else rows[rank])
        for w, r in zip(writes, rows):
            reference.update(w, r)
        if step % 10 == 9:
            store.flush()
        if step % 7 == 3:
            ahead = _random_ids(own, num_rows)
            store.prefetch(ahead).wait()
            np.testing.assert_array_equal(store.lookup(ahead), reference.lookup(ahead))
    stats = store.stats()
    assert stats["world_size"] == world and stats["lookups"] > 0
    assert 0 < stats["hit_ratio"] <= 1 and stats["local"]["lookups"] <= stats["lookups"]
    assert stats["exchange"]["bytes_sent"] == stats["exchange"]["bytes_received"] > 0
    assert store.check().ok
    store.close()
    store.close()  # harmless
    with pytest.raises(ts.ClosedStoreError):
        store.lookup([1])

    everything = np.arange(num_rows)
    with tsd.open_sharded(tmp_path / "table", config=config, readonly=True) as reopened:
        assert reopened.rule.kind == rule and reopened.readonly
        np.testing.assert_array_equal(reopened.lookup(everything[::-1]),
                                      reference.lookup(everything[::-1]))
        with pytest.raises(ts.ReadOnlyError):
            reopened.update([0], np.zeros((1, dim)))
    # a shard is a plain store too, of its own rows
    layout = tsd.ShardingRule(rule, num_rows, world)
    with ts.open(tsd.shard_path(tmp_path / "table", rank, world), readonly=True) as alone:
        local = np.arange(alone.num_rows)
        np.testing.assert_array_equal(alone.lookup(local),
                                      reference.lookup(layout.global_ids(rank, local)))
    reference.close()
    dist.barrier()


def _check_bad_input(rank, world, tmp_path):
    """A rank with bad input raises its own error; the others raise ShardPeerError; nothing
    moved, and the next collective works."""
    num_rows, dim = 20, 3
    table = np.arange(num_rows * dim, dtype=np.float32).reshape(num_rows, dim)
    store = tsd.create_sharded(tmp_path / "bad", num_rows, dim, "float32", init=table)
    cases = [
        (lambda: store.lookup([1, 25] if rank == 1 else [2]), IdOutOfRangeError),
        (lambda: store.lookup(np.array([1.5]) if rank == 0 else [3]), IdTypeError),
        (lambda: store.update([4], np.ones((2, dim)) if rank == 0 else np.ones((1, dim))),
         RowShapeError),
        (lambda: store.update([5], np.full((1, dim), np.nan) if rank == 1 else np.ones((1, dim))),
         NonFiniteRowError),
        (lambda: store.prefetch([-1] if rank == 0 else [1]), IdOutOfRangeError),
    ]
    for k, (call, error) in enumerate(cases):
        culprit = 1 if k in (0, 3) else 0
        with pytest.raises(error if rank == culprit else ShardPeerError) as caught:
            call()
        if rank != culprit:
            assert caught.value.ranks == [culprit]
    np.testing.assert_array_equal(store.lookup(np.arange(num_rows)), table)  # nothing written
    assert store.lookup(np.zeros((0, 2), dtype=np.int64)).shape == (0, 2, dim)
    # the same id from both ranks in one call: the highest rank wins
    store.update([7, 7], np.full((2, dim), 10.0 + rank))
    np.testing.assert_array_equal(store.lookup([7]), np.full((1, dim), 10.0 + world - 1))
    store.close()
    # an owner that cannot read a row still answers: it raises, the asking rank too
    owner = 3 % world
    if rank == owner:
        corrupt_row(tsd.shard_path(tmp_path / "bad", rank, world), 3 // world)
    dist.barrier()
    with tsd.open_sharded(tmp_path / "bad") as store:
        with pytest.raises(CorruptRowError if rank == owner else ShardPeerError):
            store.lookup([3] if rank != owner else [0])
        np.testing.assert_array_equal(store.lookup([0, 1]), table[[0, 1]])
        assert store.check().corrupt_ids == [3]


def _check_training(rank, world, tmp_path):
    """TieredEmbedding over the sharded store, each rank training on its own batches, equals
    one process training on the union of the batches (gradients of a row summed)."""
    from tierstore.optim import RowAdagrad, RowSGD
    from tierstore.torch import TieredEmbedding

    num_rows, dim, lr = 40, 4, 0.1
    table = np.random.default_rng(3).standard_normal((num_rows, dim)).astype(np.float32)
    config = ts.StoreConfig(device_rows=2, ram_rows=6)
    sgd = TieredEmbedding(tsd.create_sharded(tmp_path / "sgd", num_rows, dim, "float32",
                                             init=table, config=config),
                          optimizer=RowSGD(lr), owns_store=True)
    adagrad = TieredEmbedding(tsd.create_sharded(tmp_path / "adagrad", num_rows, dim, "float32",
                                                 init=table, config=config),
                              optimizer=RowAdagrad(lr), owns_store=True)
    dense = torch.nn.Embedding(num_rows, dim, _weight=torch.from_numpy(table.copy()))
    dense_opt = torch.optim.SGD(dense.parameters(), lr=lr)
    one_process = TieredEmbedding(ts.create(tmp_path / f"one-{rank}", num_rows, dim, "float32",
                                            init=table, config=config),
                                  optimizer=RowAdagrad(lr), owns_store=True)
    rng = np.random.default_rng(5)
    for step in range(6):
        # rank 1 has no batch at step 2: it still joins the collective step
        batches = [torch.from_numpy(rng.integers(0, num_rows, size=(0 if (r, step) == (1, 2) else 3, 5)))
                   for r in range(world)]
        weights = [torch.from_numpy(rng.standard_normal(tuple(b.shape) + (dim,)).astype(np.float32))
                   for b in batches]
        for module in (sgd, adagrad):
            (module(batches[rank]) * weights[rank]).sum().backward()
            module.step()
        sum((dense(b) * w).sum() for b, w in zip(batches, weights)).backward()
        dense_opt.step()
        dense_opt.zero_grad()
        sum((one_process(b) * w).sum() for b, w in zip(batches, weights)).backward()
        one_process.step()
    everything = torch.arange(num_rows)
    with torch.no_grad():
        torch.testing.assert_close(sgd(everything), dense(everything), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(adagrad(everything), one_process(everything), rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(sgd(everything).detach().numpy(), table)
    for module in (sgd, adagrad, one_process):
        module.close()


def _check_world_size_mismatch_and_reshard(rank, world, tmp_path):
    """A table written by two ranks, opened by three: every rank raises ShardMismatchError;
    after reshard() three ranks open it and read the same rows."""
    num_rows, dim = 31, 4
    table = np.random.default_rng(7).standard_normal((num_rows, dim)).astype(np.float32)
    pair = dist.new_group([0, 1])
    if rank < 2:
        with tsd.create_sharded(tmp_path / "two", num_rows, dim, "float32", init=table,
                                group=pair) as store:
            store.update([3, 4], np.ones((2, dim)))
    table[[3, 4]] = 1
    dist.barrier()
    with pytest.raises(ShardMismatchError, match="2 ranks") as caught:
        tsd.open_sharded(tmp_path / "two")
    assert sorted(caught.value.failures) == [0, 1, 2] and "reshard" in str(caught.value)
    if rank == 0:
        assert tsd.reshard(tmp_path / "two", tmp_path / "three", 3, rule="range")["rule"] == "range"
    dist.barrier()
    with tsd.open_sharded(tmp_path / "three") as store:
        assert store.rule.kind == "range" and store.local.num_rows == (11 if rank == 0 else 10)
        np.testing.assert_array_equal(store.lookup(np.arange(num_rows)), table)


def _check_bad_shards(rank, world, tmp_path):
    """A missing, damaged, plain or foreign shard on one rank: every rank raises, naming it."""
    for name, num_rows in (("good", 30), ("other", 33)):
        tsd.create_sharded(tmp_path / name, num_rows, 2, "float32", init=1.0).close()
    good = tmp_path / "good"

    def shard(root, r):
        return tsd.shard_path(root, r, world)

    def missing():
        shutil.move(shard(good, 1), tmp_path / "aside")

    def damaged():
        (shard(good, 2) / "data.mdb").write_bytes(b"\x5a" * 65536)

    def plain():
        ts.create(shard(good, 0), 10, 2, "float32", overwrite=True).close()

    def foreign():
        shutil.rmtree(shard(good, 1))
        shutil.copytree(shard(tmp_path / "other", 1), shard(good, 1))

    for damage, culprit, error in ((missing, 1, ShardOpenError), (damaged, 2, ShardOpenError),
                                   (plain, 0, ShardMismatchError),
                                   (foreign, None, ShardMismatchError)):
        if rank == 0:
            shutil.rmtree(tmp_path / "backup", ignore_errors=True)
            shutil.copytree(good, tmp_path / "backup")
            damage()
        dist.barrier()
        started = time.monotonic()
        with pytest.raises(error) as caught:
            tsd.open_sharded(good)
        assert time.monotonic() - started < 30
        assert type(caught.value) is error
        if culprit is not None:
            assert list(caught.value.failures) == [culprit]
            assert f"rank {culprit}" in str(caught.value)
        else:
            assert "different tables" in str(caught.value)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(good)
            shutil.rmtree(tmp_path / "aside", ignore_errors=True)
            shutil.move(tmp_path / "backup", good)
        dist.barrier()
    with tsd.open_sharded(good) as store:  # restored, it opens again
        np.testing.assert_array_equal(store.lookup([0, 29]), np.ones((2, 2)))


def _check_absent_rank_times_out(rank, world, tmp_path):
    """Rank 2 never calls open_sharded: the others raise ShardOpenError within the group's
    timeout instead of waiting forever. (Last: a timed-out group is not used again.)"""
    short = dist.new_group(timeout=datetime.timedelta(seconds=SHORT_TIMEOUT_S))

    def done(r):
        return tmp_path / f"timeout-checked-{r}"

    if rank == world - 1:
        while not all(done(r).exists() for r in range(world - 1)):
            time.sleep(0.1)
        return
    started = time.monotonic()
    with pytest.raises(ShardOpenError, match="timeout"):
        tsd.open_sharded(tmp_path / "good", group=short)
    assert time.monotonic() - started < SHORT_TIMEOUT_S + 20
    done(rank).touch()


# -- NCCL -------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_nccl_one_rank_serves_from_its_gpu(tmp_path):
    _spawn(_nccl_worker, 1, tmp_path, backend="nccl")


def _nccl_worker(rank, world, tmp_path):
    from tierstore.optim import RowSGD
    from tierstore.torch import TieredEmbedding

    num_rows, dim = 100, 8
    table = np.random.default_rng(1).standard_normal((num_rows, dim)).astype(np.float32)
    config = ts.StoreConfig(device_rows=16, ram_rows=32, device="cuda")
    store = tsd.create_sharded(tmp_path / "gpu", num_rows, dim, "float32", init=table,
                               config=config)
    assert store.config.device == f"cuda:{torch.cuda.current_device()}"
    ids = torch.tensor([[1, 2, 2], [99, 0, 1]], device="cuda")
    for _ in range(3):
        out = store.lookup(ids)
    assert out.is_cuda and out.shape == (2, 3, dim)
    np.testing.assert_array_equal(out.cpu().numpy(), table[ids.cpu().numpy()])
    np.testing.assert_array_equal(store.lookup(np.array([5])), table[[5]])
    store.update(ids[0], torch.ones((3, dim), device="cuda"))
    np.testing.assert_array_equal(store.lookup([1, 2]), np.ones((2, dim)))
    emb = TieredEmbedding(store, optimizer=RowSGD(0.5), owns_store=True).cuda()
    emb(torch.tensor([3], device="cuda")).sum().backward()
    emb.step()
    np.testing.assert_allclose(store.lookup([3]), table[[3]] - 0.5, rtol=1e-6)
    assert store.stats()["lookups"] > 0
    emb.close()
