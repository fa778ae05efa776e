"""tierstore.torch: TieredEmbedding against nn.Embedding, the row optimizers against plain torch
references, checkpoints, prefetch, and the Engram block."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tierstore as ts
from tierstore.optim import RowAdagrad, RowSGD
from tierstore.torch import EngramMemory, TieredEmbedding, step_all, zero_grad_all

N, D = 23, 6
TINY = ts.StoreConfig(device_rows=2, ram_rows=3)
TINY_STATE = ts.StoreConfig(device_rows=1, ram_rows=2)     # Adagrad accumulators move too
ATOL = 1e-5          # float32 end to end; the observed differences are ~1e-7


def make_table(seed=0, n=N, d=D):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def make_store(tmp_path, table, name="table.ts", config=TINY, dtype="float32"):
    return ts.create(tmp_path / name, num_rows=table.shape[0], dim=table.shape[1], dtype=dtype,
                     init=table, config=config)


def all_rows(module):
    return torch.as_tensor(module.store.lookup(np.arange(module.num_embeddings)))


class Model(torch.nn.Module):
    """Embedding -> Linear -> tanh, for ids of any shape."""

    def __init__(self, emb, seed=0):
        super().__init__()
        self.emb = emb
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(D, 3)

    def forward(self, ids):
        return torch.tanh(self.lin(self.emb(ids)))


def loss_of(out, seed):
    w = torch.as_tensor(np.random.default_rng(seed).normal(size=3).astype(np.float32))
    return (out * w).sum() + out.pow(2).mean()


def batches():
    """Id batches of several shapes, with duplicates, covering every row over the run."""
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (9,), (2, 3, 2), (5, 4), (3,), (6, 2), (2, 2, 2, 2), (12,), (4, 5), (7,)]
    out = []
    for k, shape in enumerate(shapes):
        ids = rng.integers(0, N, size=shape)
        ids.reshape(-1)[:2] = k % N            # a duplicate in every batch
        out.append(torch.as_tensor(ids))
    out[0] = torch.as_tensor(np.arange(N).reshape(1, N) % N)
    return out


# -- reference optimizers, written directly in torch on a dense nn.Embedding weight ------------
class RefSGD:
    def __init__(self, weight, lr):
        self.w, self.lr = weight, lr

    @torch.no_grad()
    def step(self):
        self.w -= self.lr * self.w.grad


class RefRowAdagrad:
    """FBGEMM's exact row-wise Adagrad: state[r] += mean(g_r^2); w_r -= lr g_r / (sqrt(state)+eps)."""

    def __init__(self, weight, lr, eps, init):
        self.w, self.lr, self.eps = weight, lr, eps
        self.state = torch.full((weight.shape[0],), float(init))

    @torch.no_grad()
    def step(self):
        g = self.w.grad
        self.state += g.pow(2).mean(dim=1)
        self.w -= self.lr * g / (self.state.sqrt() + self.eps).unsqueeze(1)


def train_pair(tmp_path, make_opt, make_ref, steps=None, prefetch=True):
    table = make_table()
    store = make_store(tmp_path, table)
    tiered = Model(TieredEmbedding(store, optimizer=make_opt()))
    plain_emb = torch.nn.Embedding(N, D)
    with torch.no_grad():
        plain_emb.weight.copy_(torch.from_numpy(table))
    plain = Model(plain_emb)
    ref = make_ref(plain_emb.weight)
    dense_t = torch.optim.SGD(tiered.lin.parameters(), lr=0.1)
    dense_p = torch.optim.SGD(plain.lin.parameters(), lr=0.1)
    data = batches() if steps is None else batches()[:steps]
    losses = []
    for k, ids in enumerate(data):
        if prefetch and k + 1 < len(data):
            handle = tiered.emb.prefetch(data[k + 1])
        out_t, out_p = tiered(ids), plain(ids)
        assert out_t.shape == out_p.shape == ids.shape + (3,)
        torch.testing.assert_close(out_t, out_p, rtol=0, atol=ATOL)
        lt, lp = loss_of(out_t, k), loss_of(out_p, k)
        lt.backward()
        lp.backward()
        dense_t.step()
        dense_p.step()
        tiered.emb.step()
        ref.step()
        dense_t.zero_grad()
        dense_p.zero_grad()
        plain_emb.weight.grad = None
        losses.append((lt.item(), lp.item()))
        if prefetch and k + 1 < len(data):
            assert handle.wait(timeout=10) >= 0
    return tiered, plain, ref, losses


def assert_same_weights(tiered, plain):
    torch.testing.assert_close(all_rows(tiered.emb), plain.emb.weight.detach(), rtol=0, atol=ATOL)
    torch.testing.assert_close(tiered.lin.weight, plain.lin.weight, rtol=0, atol=ATOL)
    torch.testing.assert_close(tiered.lin.bias, plain.lin.bias, rtol=0, atol=ATOL)


# -- forward -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 4), (2, 3, 4), (0,), (2, 0, 3)])
def test_forward_matches_nn_embedding_for_any_id_shape(tmp_path, shape):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table))
    ref = torch.nn.Embedding.from_pretrained(torch.from_numpy(table))
    ids = torch.as_tensor(np.random.default_rng(1).integers(0, N, size=shape))
    out = emb(ids)
    assert out.shape == ref(ids).shape == tuple(shape) + (D,)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, ref(ids), rtol=0, atol=0)
    assert emb.num_embeddings == N and emb.embedding_dim == D
    emb.store.close()


def test_forward_takes_numpy_and_int32_ids_and_rejects_floats(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table))
    ids = np.array([[1, 2], [2, 22]])
    torch.testing.assert_close(emb(ids), torch.from_numpy(table[ids]))
    torch.testing.assert_close(emb(torch.as_tensor(ids, dtype=torch.int32)),
                               torch.from_numpy(table[ids]))
    with pytest.raises(TypeError):
        emb(torch.tensor([1.0]))
    with pytest.raises(IndexError):
        emb(torch.tensor([N]))
    emb.store.close()


def test_output_follows_module_dtype(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table, dtype="float16"))
    ids = torch.tensor([[0, 5], [5, 9]])
    assert emb(ids).dtype == torch.float16
    emb.float()
    out = emb(ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.from_numpy(table.astype(np.float16)[ids.numpy()]).float())
    emb.store.close()


def test_frozen_without_optimizer(tmp_path):
    emb = TieredEmbedding(make_store(tmp_path, make_table()))
    out = emb(torch.tensor([1, 2]))
    assert not out.requires_grad and emb.pending_rows == 0
    with pytest.raises(RuntimeError, match="no optimizer"):
        emb.step()
    with pytest.raises(TypeError):
        TieredEmbedding(emb.store, optimizer=torch.optim.SGD([torch.zeros(1)], lr=1.0))
    emb.requires_grad_(True)
    emb(torch.tensor([3, 3])).sum().backward()
    ids, rows, grads = emb.row_gradients()
    assert ids.tolist() == [3] and torch.equal(grads, torch.full((1, D), 2.0))
    torch.testing.assert_close(rows, torch.from_numpy(make_table()[[3]]))
    emb.store.close()


# -- gradients and training equivalence ------------------------------------------------------------
def test_duplicate_ids_sum_gradients_like_nn_embedding(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table), optimizer=RowSGD(0.1))
    ref = torch.nn.Embedding.from_pretrained(torch.from_numpy(table), freeze=False)
    ids = torch.tensor([[4, 4, 4, 1], [1, 9, 4, 0]])
    w = torch.randn(2, 4, D)
    (emb(ids) * w).sum().backward()
    (emb(ids[:1]) * 3).sum().backward()         # a second forward/backward before the step
    (ref(ids) * w).sum().backward()
    (ref(ids[:1]) * 3).sum().backward()
    uniq, rows, grads = emb.row_gradients()
    assert uniq.tolist() == [0, 1, 4, 9]
    torch.testing.assert_close(grads, ref.weight.grad[uniq], rtol=0, atol=1e-6)
    torch.testing.assert_close(rows, torch.from_numpy(table)[uniq])
    assert emb.step() == 4 and emb.pending_rows == 0
    with torch.no_grad():
        expect = ref.weight - 0.1 * ref.weight.grad
    torch.testing.assert_close(all_rows(emb), expect, rtol=0, atol=1e-6)
    emb.store.close()


def test_padding_idx_gets_no_update(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table), optimizer=RowSGD(1.0), padding_idx=0)
    emb(torch.tensor([0, 0, 5])).sum().backward()
    assert emb.step() == 1
    rows = all_rows(emb).numpy()
    np.testing.assert_array_equal(rows[0], table[0])
    np.testing.assert_allclose(rows[5], table[5] - 1.0, atol=1e-6)
    emb.store.close()


def test_sgd_training_matches_nn_embedding(tmp_path):
    tiered, plain, _, losses = train_pair(tmp_path, lambda: RowSGD(0.05),
                                          lambda w: RefSGD(w, 0.05))
    for lt, lp in losses:
        assert lt == pytest.approx(lp, abs=1e-5)
    assert_same_weights(tiered, plain)
    stats = tiered.emb.store.stats()
    assert stats["evictions"] > 0 and stats["writebacks"] > 0      # rows moved and were written
    assert stats["prefetch"]["prefetches"] > 0 and stats["prefetch"]["rows_used"] > 0
    assert not np.allclose(all_rows(tiered.emb).numpy(), make_table())
    tiered.emb.store.close()


def test_rowwise_adagrad_training_matches_reference(tmp_path):
    lr, eps, init = 0.2, 1e-8, 0.1
    tiered, plain, ref, losses = train_pair(
        tmp_path, lambda: RowAdagrad(lr, eps, init, state_config=TINY_STATE),
        lambda w: RefRowAdagrad(w, lr, eps, init))
    for lt, lp in losses:
        assert lt == pytest.approx(lp, abs=1e-5)
    assert_same_weights(tiered, plain)
    opt = tiered.emb.optimizer
    np.testing.assert_allclose(opt.accumulators(np.arange(N)), ref.state.numpy(), rtol=1e-6, atol=1e-7)
    assert opt.state_path == tmp_path / "table.ts.adagrad"
    assert opt.state.stats()["evictions"] > 0
    tiered.emb.close()
    tiered.emb.store.close()


def test_adagrad_state_survives_reopen_and_reset(tmp_path):
    table = make_table()
    store = make_store(tmp_path, table)
    emb = TieredEmbedding(store, optimizer=RowAdagrad(0.1, initial_accumulator_value=0.5))
    emb(torch.tensor([1, 2, 2])).sum().backward()
    emb.step()
    acc = emb.optimizer.accumulators([0, 1, 2])
    np.testing.assert_allclose(acc, [0.5, 1.5, 4.5])
    emb.close()
    store.close()
    again = TieredEmbedding.open(tmp_path / "table.ts", TINY, optimizer=RowAdagrad(0.1))
    np.testing.assert_allclose(again.optimizer.accumulators([0, 1, 2]), [0.5, 1.5, 4.5])
    again.close()
    fresh = TieredEmbedding.open(tmp_path / "table.ts", TINY,
                                 optimizer=RowAdagrad(0.1, 0.1, 0.25, reset_state=True))
    np.testing.assert_allclose(fresh.optimizer.accumulators([0, 1, 2]), [0.25] * 3)
    fresh.close()


def test_a_table_created_afresh_starts_its_adagrad_afresh(tmp_path):
    """create(overwrite=True) replaces the table's PATH.adagrad too: two identical runs give
    the same accumulators (the second used to continue from the first's: 5, then 10)."""
    def one_run():
        store = ts.create(tmp_path / "table.ts", *make_table().shape, "float32",
                          init=make_table(), config=TINY, overwrite=True)
        emb = TieredEmbedding(store, optimizer=RowAdagrad(0.1))
        emb(torch.tensor([1, 2, 2])).sum().backward()
        emb.step()
        acc = emb.optimizer.accumulators([0, 1, 2])
        emb.close()
        store.close()
        return acc

    first = one_run()
    np.testing.assert_allclose(first, [0.0, 1.0, 4.0])
    np.testing.assert_allclose(one_run(), first)


def test_zero_grad_drops_kept_gradients(tmp_path):
    table = make_table()
    model = Model(TieredEmbedding(make_store(tmp_path, table), optimizer=RowSGD(1.0)))
    loss_of(model(torch.tensor([1, 2])), 0).backward()
    model.emb(torch.tensor([3]))                   # a forward with no backward is dropped too
    assert model.emb.pending_rows == 3
    zero_grad_all(model)
    assert model.emb.pending_rows == 0 and step_all(model) == 0
    np.testing.assert_array_equal(all_rows(model.emb).numpy(), table)
    loss_of(model(torch.tensor([1, 2])), 0).backward()
    assert step_all(model) == 2
    model.emb.store.close()


# -- checkpoints ---------------------------------------------------------------------------------
def test_state_dict_round_trip_resumes_training(tmp_path):
    lr, eps, init = 0.2, 1e-8, 0.1
    # uninterrupted run (10 batches) vs one stopped after 5, checkpointed, reopened, resumed
    _, plain, _, _ = train_pair(tmp_path / "a", lambda: RowAdagrad(lr, eps, init),
                                lambda w: RefRowAdagrad(w, lr, eps, init))
    tiered, _, _, _ = train_pair(tmp_path / "b",
                                 lambda: RowAdagrad(lr, eps, init, state_config=TINY_STATE),
                                 lambda w: RefRowAdagrad(w, lr, eps, init), steps=5)
    sd = tiered.state_dict()
    extra = sd["emb._extra_state"]
    assert extra["path"] == str((tmp_path / "b" / "table.ts").resolve())
    assert extra["config"]["device_rows"] == 2 and extra["config"]["ram_rows"] == 3
    assert extra["optimizer"]["type"] == "RowAdagrad" and extra["optimizer"]["lr"] == lr
    assert not any(torch.is_tensor(v) and v.numel() >= N * D for v in sd.values())  # no rows
    torch.save(sd, tmp_path / "ckpt.pt")
    before = all_rows(tiered.emb)
    tiered.emb.close()
    tiered.emb.store.close()

    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    # (1) the classmethod
    emb = TieredEmbedding.from_state_dict(loaded, prefix="emb.")
    torch.testing.assert_close(all_rows(emb), before, rtol=0, atol=0)
    assert emb.store.config == TINY and emb.owns_store
    emb.close()
    # (2) load_state_dict into a model built on another store: it switches to the recorded one
    other = make_store(tmp_path, make_table(seed=3), name="other.ts")
    resumed = Model(TieredEmbedding(other, optimizer=RowSGD(1.0)), seed=99)
    resumed.load_state_dict(loaded)
    assert resumed.emb.store.path == (tmp_path / "b" / "table.ts").resolve()
    assert isinstance(resumed.emb.optimizer, RowAdagrad)
    torch.testing.assert_close(all_rows(resumed.emb), before, rtol=0, atol=0)
    other.close()
    dense = torch.optim.SGD(resumed.lin.parameters(), lr=0.1)
    for k, ids in enumerate(batches()[5:], start=5):
        loss_of(resumed(ids), k).backward()
        dense.step()
        dense.zero_grad()
        step_all(resumed)
    assert_same_weights(resumed, plain)
    resumed.emb.close()


def test_load_state_dict_into_same_store_keeps_it(tmp_path):
    emb = TieredEmbedding(make_store(tmp_path, make_table()), optimizer=RowSGD(0.5))
    store = emb.store
    emb.load_state_dict(emb.state_dict())
    assert emb.store is store and not emb.owns_store
    bad = dict(emb.state_dict())
    bad["_extra_state"] = dict(bad["_extra_state"], dim=D + 1)
    with pytest.raises(ValueError):
        emb.load_state_dict(bad)
    store.close()


# -- prefetch ------------------------------------------------------------------------------------
def test_prefetch_of_a_frozen_table_runs_the_lookup_ahead(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table, config=ts.StoreConfig(device_rows=1, ram_rows=1)))
    ids = torch.tensor([[3, 4, 5], [6, 7, 3]])
    handle = emb.prefetch(ids)
    assert handle.wait(timeout=10) == 5 and handle.done()
    torch.testing.assert_close(emb(ids), torch.from_numpy(table[ids.numpy()]))
    stats = emb.store.stats()
    assert stats["lookups"] == 6 and stats["prefetch"]["lookups_ahead"] == 1   # looked up once
    torch.testing.assert_close(emb(ids), torch.from_numpy(table[ids.numpy()]))
    assert emb.store.stats()["lookups"] == 12                                   # used once only
    emb.store.close()


def test_prefetched_rows_made_stale_by_an_update_are_looked_up_again(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table, config=ts.StoreConfig(device_rows=2, ram_rows=2)))
    ids = torch.tensor([1, 2, 9, 2])
    untouched = torch.tensor([5, 6])
    handle, other = emb.prefetch(ids), emb.prefetch(untouched)
    new = np.full((1, D), 7.0, dtype=np.float32)
    emb.store.update([9], new)                  # waits for both lookups, which read the old row
    assert handle.stale and not other.stale
    np.testing.assert_array_equal(handle.result().numpy()[2], table[9])
    expected = table[ids.numpy()].copy()
    expected[2] = new[0]
    torch.testing.assert_close(emb(ids), torch.from_numpy(expected))
    torch.testing.assert_close(emb(untouched), torch.from_numpy(table[[5, 6]]))
    emb.store.close()


def test_prefetch_of_a_trained_table_reads_the_disk_ahead(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table, config=ts.StoreConfig(device_rows=1, ram_rows=1)),
                          optimizer=RowSGD(0.1))
    ids = torch.tensor([[3, 4, 5], [6, 7, 3]])
    handle = emb.prefetch(ids)
    assert handle.wait(timeout=10) == 5 and handle.done()
    torch.testing.assert_close(emb(ids), torch.from_numpy(table[ids.numpy()]))
    assert emb.store.stats()["prefetch"]["rows_used"] == 5
    emb.store.close()


# -- Engram ----------------------------------------------------------------------------------------
VOCAB, HIDDEN = 40, 16


def make_engram(tmp_path, optimizer=None, config=TINY):
    hashing = pytest.importorskip("tierstore.hashing")
    hasher = hashing.NgramHasher(VOCAB, max_ngram=3, heads=2, table_size=[29, 31], seed=1)
    table = np.random.default_rng(2).normal(size=(hasher.num_rows, 4)).astype(np.float32)
    store = ts.create(tmp_path / "engram.ts", num_rows=hasher.num_rows, dim=4, dtype="float32",
                      init=table, config=config)
    torch.manual_seed(0)
    return EngramMemory(store, hasher, HIDDEN, optimizer=optimizer), hasher, table


def reference_engram(block, table, hidden, tokens):
    """The block's formulas written out with a plain table, for comparison."""
    ids = block.hasher(tokens.numpy())
    e = torch.from_numpy(table[ids]).flatten(-2)

    def rms(x, w, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    k = rms(block.key_proj(e), block.key_norm.weight, block.key_norm.eps)
    q = rms(hidden, block.query_norm.weight, block.query_norm.eps)
    dot = (k * q).sum(-1, keepdim=True) / math.sqrt(HIDDEN)
    gate = torch.sigmoid(torch.sign(dot) * dot.abs().clamp_min(1e-6).sqrt())
    v = gate * block.value_proj(e)
    conv = block.short_conv
    x = rms(v, conv.norm.weight, conv.norm.eps)
    w = conv.conv.weight[:, 0, :]                      # (HIDDEN, kernel)
    dil, kernel, t_len = conv.conv.dilation[0], w.shape[1], v.shape[1]
    y = torch.zeros_like(x)
    for t in range(t_len):
        for j in range(kernel):                         # tap j reads position t - (kernel-1-j)*dil
            src = t - (kernel - 1 - j) * dil
            if src >= 0:
                y[:, t] += w[:, j] * x[:, src]
    return hidden + v + torch.nn.functional.silu(y)


def test_engram_output_shape_and_formula(tmp_path):
    block, hasher, table = make_engram(tmp_path)
    assert block.short_conv.conv.dilation == (3,) and block.short_conv.conv.kernel_size == (4,)
    assert block.memory_dim == hasher.ids_per_token * 4 == 16
    tokens = torch.as_tensor(np.random.default_rng(3).integers(0, VOCAB, size=(2, 11)))
    hidden = torch.randn(2, 11, HIDDEN)
    out = block(hidden, tokens)
    assert out.shape == (2, 11, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(out, reference_engram(block, table, hidden, tokens),
                                   rtol=1e-5, atol=1e-5)
    block.store.close()


def test_engram_on_plain_nn_embedding_matches(tmp_path):
    block, hasher, table = make_engram(tmp_path)
    plain = EngramMemory(torch.nn.Embedding.from_pretrained(torch.from_numpy(table)), hasher, HIDDEN)
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if "table" not in k},
                          strict=False)
    assert plain.store is None and plain.prefetch(torch.zeros(1, 3, dtype=torch.long)) is None
    tokens = torch.as_tensor(np.random.default_rng(6).integers(0, VOCAB, size=(2, 7)))
    hidden = torch.randn(2, 7, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(plain(hidden, tokens), block(hidden, tokens), rtol=0, atol=0)
    block.store.close()


def test_engram_is_causal(tmp_path):
    block, _, _ = make_engram(tmp_path)
    rng = np.random.default_rng(4)
    tokens = torch.as_tensor(rng.integers(0, VOCAB, size=(3, 16)))
    hidden = torch.randn(3, 16, HIDDEN)
    with torch.no_grad():
        base = block(hidden, tokens)
        for t in (0, 5, 14):
            later_tokens, later_hidden = tokens.clone(), hidden.clone()
            later_tokens[:, t + 1:] = torch.as_tensor(rng.integers(0, VOCAB, size=(3, 15 - t)))
            later_hidden[:, t + 1:] = torch.randn(3, 15 - t, HIDDEN)
            out = block(later_hidden, later_tokens)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=0)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])
    block.store.close()


def test_engram_gradients_reach_projections_hidden_and_table(tmp_path):
    block, hasher, table = make_engram(tmp_path, optimizer=RowAdagrad(0.5))
    tokens = torch.as_tensor(np.random.default_rng(5).integers(0, VOCAB, size=(2, 9)))
    hidden = torch.randn(2, 9, HIDDEN, requires_grad=True)
    handle = block.prefetch(tokens)
    handle.wait(timeout=10)
    block(hidden, tokens).pow(2).sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    for name in ("key_proj", "value_proj"):
        assert getattr(block, name).weight.grad.abs().sum() > 0
    assert block.short_conv.conv.weight.grad.abs().sum() > 0
    uniq, _, grads = block.table.row_gradients()
    touched = np.unique(hasher(tokens.numpy()))
    np.testing.assert_array_equal(uniq.numpy(), touched)
    assert grads.abs().sum() > 0
    assert step_all(block) == len(touched)
    after = block.store.lookup(np.arange(hasher.num_rows))
    changed = np.flatnonzero(np.any(after != table, axis=1))
    assert set(changed) <= set(touched) and len(changed) > 0
    sd = block.state_dict()
    assert sd["_extra_state"]["hasher"] == hasher.get_config()
    block.table.close()
    block.store.close()


# -- CUDA (run where a GPU exists; skipped elsewhere) ----------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("store_device", ["cuda", "cpu"])
def test_training_on_cuda_matches_nn_embedding(tmp_path, store_device):
    lr, eps, init = 0.2, 1e-8, 0.1
    table = make_table()
    config = ts.StoreConfig(device_rows=2, ram_rows=3, device=store_device)
    emb = TieredEmbedding(make_store(tmp_path, table, config=config),
                          optimizer=RowAdagrad(lr, eps, init, state_config=TINY_STATE)).cuda()
    ref = torch.nn.Embedding.from_pretrained(torch.from_numpy(table), freeze=False).cuda()
    ref_opt = RefRowAdagrad(ref.weight, lr, eps, init)
    ref_opt.state = ref_opt.state.cuda()
    for k, ids in enumerate(batches()):
        ids = ids.cuda()
        handle = emb.prefetch(ids)
        handle.wait(timeout=10)
        out = emb(ids)
        assert out.is_cuda and out.shape == ids.shape + (D,)
        torch.testing.assert_close(out, ref(ids), rtol=0, atol=ATOL)
        w = torch.as_tensor(np.random.default_rng(k).normal(size=D).astype(np.float32)).cuda()
        (out.tanh() * w).sum().backward()
        (ref(ids).tanh() * w).sum().backward()
        emb.step()
        ref_opt.step()
        ref.weight.grad = None
    torch.testing.assert_close(all_rows(emb).cuda() if store_device == "cpu" else all_rows(emb),
                               ref.weight.detach(), rtol=0, atol=ATOL)
    emb.close()
    emb.store.close()


def test_empty_batch_trains_nothing(tmp_path):
    table = make_table()
    emb = TieredEmbedding(make_store(tmp_path, table), optimizer=RowSGD(1.0))
    out = emb(torch.zeros((2, 0), dtype=torch.long))
    assert out.shape == (2, 0, D) and out.requires_grad
    out.sum().backward()
    assert emb.step() == 0
    np.testing.assert_array_equal(all_rows(emb).numpy(), table)
    emb.store.close()


def test_engram_prefetch_at_forward_entry_gives_the_same_output(tmp_path):
    block, hasher, table = make_engram(tmp_path)
    rng = np.random.default_rng(11)
    with torch.no_grad():
        for _ in range(6):
            tokens = torch.as_tensor(rng.integers(0, VOCAB, size=(2, 12)))
            hidden = torch.randn(2, 12, HIDDEN)
            handle = block.prefetch(tokens)
            out = block(hidden, tokens)
            assert handle.done()
            torch.testing.assert_close(out, reference_engram(block, table, hidden, tokens),
                                       rtol=1e-5, atol=1e-5)
    stats = block.store.stats()
    assert stats["prefetch"]["lookups_ahead"] == 6 and stats["lookups"] == 6 * 2 * 12 * hasher.ids_per_token
    assert not block._hashed_ahead and not block.table._ahead
    block.store.close()


def test_engram_tokens_written_after_prefetch_are_hashed_again(tmp_path):
    # prefetch keeps a copy of CPU tokens: tokens written in place after it are not taken for
    # the prefetched ones, and the forward reads the rows of what the tokens hold then
    block, hasher, table = make_engram(tmp_path)
    rng = np.random.default_rng(12)
    tokens = torch.as_tensor(rng.integers(0, VOCAB, size=(2, 10)))
    hidden = torch.randn(2, 10, HIDDEN)
    with torch.no_grad():
        block.prefetch(tokens)
        tokens[:, 3] = (tokens[:, 3] + 1) % VOCAB
        torch.testing.assert_close(block(hidden, tokens), reference_engram(block, table, hidden, tokens),
                                   rtol=1e-5, atol=1e-5)
        assert len(block._hashed_ahead) == 1                     # the stale batch, unused
        # arrays and lists hash as tensors do, on the CPU
        ids = block.row_ids(tokens.tolist())
        assert ids.dtype == torch.int64 and np.array_equal(ids.numpy(), hasher(tokens.numpy()))
    block.store.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_engram_hashes_cuda_tokens_on_the_gpu(tmp_path, monkeypatch):
    hashing = pytest.importorskip("tierstore.hashing")
    block, hasher, table = make_engram(tmp_path, config=ts.StoreConfig(device_rows=8, ram_rows=16,
                                                                        device="cuda"))
    block.to("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)     # the short conv, exact-ish
    comp = hashing.TokenCompressor(np.arange(VOCAB + 7) % VOCAB)      # raw ids 40.. map to 0..
    rng = np.random.default_rng(13)
    raw = torch.as_tensor(rng.integers(0, VOCAB + 7, size=(2, 12)), device="cuda")
    want = hasher(comp(raw.cpu().numpy()))
    # neither the tokens nor the ids are read back to the host (the range checks read a min and
    # a max through tolist)
    with monkeypatch.context() as m:
        for name in ("cpu", "numpy"):
            m.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("read back to the host"))
        block.compressor = comp
        ids = block.row_ids(raw)
        block.compressor = None
        canonical = comp(raw)
        assert canonical.is_cuda
        key_ids = block.row_ids(canonical)
    assert ids.is_cuda and key_ids.is_cuda and ids.dtype == torch.int64
    assert np.array_equal(ids.cpu().numpy(), want) and torch.equal(ids, key_ids)
    # prefetch and forward: the same tensor is known again by identity, the output as on the CPU
    hidden = torch.randn(2, 12, HIDDEN, device="cuda")
    with torch.no_grad():
        block.prefetch(canonical)
        assert block._hashed_ahead[0][0][0] is canonical
        out = block(hidden, canonical)
        assert not block._hashed_ahead and not block.table._ahead
        cpu_block = block.to("cpu")
        torch.testing.assert_close(out.cpu(), reference_engram(cpu_block, table, hidden.cpu(),
                                                               canonical.cpu()), rtol=1e-5, atol=1e-5)
    block.store.close()


def test_training_errors_are_named_and_builtins_too(tmp_path):
    from tierstore import errors as E
    from tierstore.optim import optimizer_from_config

    def expect(named, builtin, fragment, call, *args, **kwargs):
        with pytest.raises(named, match=fragment) as info:
            call(*args, **kwargs)
        assert isinstance(info.value, builtin) and isinstance(info.value, E.TierstoreError)

    store = make_store(tmp_path, make_table())
    expect(E.OptimizerTypeError, TypeError, "RowOptimizer", TieredEmbedding, store,
           optimizer=torch.optim.SGD([torch.zeros(1)], lr=1.0))
    expect(E.ConfigError, ValueError, "padding_idx", TieredEmbedding, store, padding_idx=N)
    emb = TieredEmbedding(store)
    expect(E.IdTypeError, TypeError, "integers", emb, torch.tensor([1.0]))
    expect(E.NoOptimizerError, RuntimeError, "no optimizer", emb.step)
    bad = dict(emb.state_dict())
    bad["_extra_state"] = dict(bad["_extra_state"], dim=D + 1)
    expect(E.CheckpointError, ValueError, "checkpoint table", emb.load_state_dict, bad)
    expect(E.CheckpointError, ValueError, "not a TieredEmbedding state",
           TieredEmbedding.from_state_dict, {"format": "other"})
    expect(E.ConfigError, ValueError, "lr", RowSGD, lr=-1.0)
    expect(E.ConfigError, ValueError, "cannot both be 0", RowAdagrad, eps=0.0,
           initial_accumulator_value=0.0)
    expect(E.ConfigError, ValueError, "unknown row optimizer", optimizer_from_config, {"type": "Adam"})
    expect(E.UnboundOptimizerError, RuntimeError, "not bound", RowAdagrad().apply,
           np.array([0]), torch.zeros((1, D)), torch.zeros((1, D)))
    adagrad = RowAdagrad()
    adagrad.bind(store)
    other = make_store(tmp_path, make_table(), name="other.ts")
    expect(E.OptimizerStateError, ValueError, "keeps state for", adagrad.bind, other)
    other.close()
    adagrad.close()
    store.close()
    block, hasher, _ = make_engram(tmp_path)
    hidden = torch.zeros((1, 5, HIDDEN))
    expect(E.TensorShapeError, ValueError, "hidden must be", block, hidden[0], torch.zeros((1, 5)))
    expect(E.TensorShapeError, ValueError, "do not match", block, hidden,
           torch.zeros((1, 4), dtype=torch.int64))
    expect(E.ConfigError, ValueError, "give the optimizer", EngramMemory, block.table, hasher,
           HIDDEN, optimizer=RowSGD(0.1))
    block.store.close()
