"""Engram lookup ids (``tierstore.hashing``) against the slow reference in ``naive_hashing.py``.

Golden vectors: ``tests/data/engram_golden.json`` was written by ``python tests/naive_hashing.py``
(the naive implementation, which follows ``engram_demo_v1.py`` of deepseek-ai/Engram line by
line). When it was generated, every value in it was also reproduced by running the demo's own
``CompressedTokenizer`` / ``NgramHashMapping`` code (with the real ``tokenizers`` 0.23.3
normalizer and a stand-in tokenizer); that run is not part of the suite, which needs neither
``transformers`` nor ``tokenizers``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, os.path.dirname(__file__))
import naive_hashing as naive  # noqa: E402

from tierstore.errors import (ConfigError, IdOutOfRangeError, IdTypeError,  # noqa: E402
                              RowShapeError)
from tierstore.hashing import (NgramHasher, TokenCompressor, compression_key,  # noqa: E402
                               is_prime, normalize_text, table_primes)

try:
    import torch
except ImportError:                       # torch is optional: its tests skip
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
# the torch path runs on every device here: CPU always (CI), CUDA where there is one (the H200)
TORCH_DEVICES = ([] if torch is None else
                 ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))

with open(naive.GOLDEN_PATH, encoding="utf-8") as _f:
    GOLDEN = json.load(_f)

# numba compiles on first call: no per-example deadline; example counts come from the
# hypothesis profile (tests/conftest.py)
jit_settings = settings(deadline=None)


# =========================================================================== strategies


@st.composite
def hasher_configs(draw, big_vocab=True):
    vocab = draw(st.one_of(st.integers(1, 2000), st.integers(1, 1 << 62))
                 if big_vocab else st.integers(1, 2000))
    max_ngram = draw(st.integers(2, 5))
    heads = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 400), min_size=max_ngram - 1, max_size=max_ngram - 1))
    layer_ids = draw(st.lists(st.integers(0, 60), min_size=1, max_size=3, unique=True))
    layer_id = draw(st.sampled_from(layer_ids))
    seed = draw(st.integers(0, 2**32))
    pad_id = draw(st.integers(0, vocab - 1))
    return dict(vocab_size=vocab, max_ngram=max_ngram, heads=heads, table_size=sizes,
                layer_id=layer_id, seed=seed, pad_id=pad_id, layer_ids=layer_ids)


@st.composite
def config_and_tokens(draw, min_len=0, max_len=12):
    cfg = draw(hasher_configs())
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(min_len, max_len))
    tok = st.integers(0, cfg["vocab_size"] - 1)
    tokens = draw(st.lists(st.lists(tok, min_size=length, max_size=length),
                           min_size=batch, max_size=batch))
    return cfg, np.array(tokens, dtype=np.int64).reshape(batch, length)


def naive_ids(cfg, tokens):
    return naive.naive_hash(tokens.tolist(), cfg["vocab_size"], cfg["max_ngram"], cfg["heads"],
                            list(cfg["table_size"]), cfg["layer_id"], cfg["seed"], cfg["pad_id"],
                            cfg["layer_ids"])


# =========================================================================== golden vectors


GOLDEN_LAYERS = [(i, layer) for i, case in enumerate(GOLDEN["hash"]) for layer in case["layers"]]


@pytest.mark.parametrize("case_index,layer", GOLDEN_LAYERS)
def test_golden_hash(case_index, layer):
    case = GOLDEN["hash"][case_index]
    want = case["layers"][layer]
    h = NgramHasher(case["vocab_size"], case["max_ngram"], case["heads"], case["table_size"],
                    layer_id=int(layer), seed=case["seed"], pad_id=case["pad_id"],
                    layer_ids=case["layer_ids"])
    assert h.multipliers.tolist() == want["multipliers"]
    assert h.primes.tolist() == want["primes"]
    assert h.offsets.reshape(-1).tolist() == want["offsets"]
    assert h.num_rows == want["num_rows"]
    tokens = np.array(case["tokens"], dtype=np.int64)
    ids = h(tokens)
    assert ids.dtype == np.int64 and ids.tolist() == want["ids"]
    # the streaming form gives the last position; the naive reference still agrees
    window = tokens[:, -case["max_ngram"]:]
    if window.shape[1] == case["max_ngram"]:
        assert h.step(window).tolist() == [row[-1] for row in want["ids"]]
    cfg = dict(case, layer_id=int(layer))
    assert naive_ids(cfg, tokens) == {k: want[k] for k in naive_ids(cfg, tokens)}


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("case_index,layer", GOLDEN_LAYERS)
def test_golden_hash_torch(case_index, layer, device):
    # the torch path (tensors hashed on their own device) gives the golden ids bit for bit
    case = GOLDEN["hash"][case_index]
    want = case["layers"][layer]
    h = NgramHasher(case["vocab_size"], case["max_ngram"], case["heads"], case["table_size"],
                    layer_id=int(layer), seed=case["seed"], pad_id=case["pad_id"],
                    layer_ids=case["layer_ids"])
    tokens = torch.tensor(case["tokens"], dtype=torch.int64, device=device)
    ids = h(tokens)
    assert ids.device == tokens.device and ids.dtype == torch.int64
    assert ids.cpu().tolist() == want["ids"]
    window = tokens[:, -case["max_ngram"]:]
    if window.shape[1] == case["max_ngram"]:
        assert h.step(window).cpu().tolist() == [row[-1] for row in want["ids"]]


def test_golden_demo_default_layout():
    # the demo's EngramConfig: [129280*5]*2, 8 heads, layers [1, 15]: 32 distinct primes,
    # the first the smallest prime >= 646400
    case = GOLDEN["hash"][0]
    assert case["table_size"] == [129280 * 5] * 2 and case["layer_ids"] == [1, 15]
    primes = [p for layer in case["layers"].values() for order in layer["primes"] for p in order]
    assert len(set(primes)) == 32 and primes[0] == 646403 and primes == sorted(primes)


@pytest.mark.parametrize("text,key", GOLDEN["normalize"])
def test_golden_normalize(text, key):
    assert normalize_text(text) == key
    assert naive.naive_normalize(text) == key


def test_golden_compress():
    for case in GOLDEN["compress"]:
        comp = TokenCompressor.build(case["texts"].__getitem__, len(case["texts"]),
                                     id_to_token=case["tokens"].__getitem__)
        assert comp.map.tolist() == case["map"]
        assert comp.num_canonical == case["num_canonical"] == len(comp)
        assert naive.naive_compress(case["texts"], case["tokens"]) == (case["map"],
                                                                       case["num_canonical"])


# =========================================================================== kernel vs naive


@jit_settings
@given(config_and_tokens())
def test_matches_naive(ct):
    cfg, tokens = ct
    h = NgramHasher(**cfg)
    want = naive_ids(cfg, tokens)
    assert h.multipliers.tolist() == want["multipliers"]
    assert h.primes.tolist() == want["primes"]
    assert h.offsets.reshape(-1).tolist() == want["offsets"]
    assert h.num_rows == want["num_rows"]
    assert h(tokens).tolist() == want["ids"]


@needs_torch
@jit_settings
@given(config_and_tokens(), st.sampled_from(TORCH_DEVICES or ["cpu"]), st.booleans())
def test_torch_matches_kernel(ct, device, int32):
    # tokens drawn over the whole range (vocabularies up to 2**62, pad ids as large): the torch
    # ops equal the numba kernel and the naive reference, position by position
    cfg, tokens = ct
    h = NgramHasher(**cfg)
    want = h(tokens)
    t = torch.from_numpy(tokens).to(device)
    if int32 and cfg["vocab_size"] <= 1 << 31:
        t = t.to(torch.int32)
    got = h(t)
    assert got.device == t.device and got.dtype == torch.int64 and got.shape == want.shape
    assert np.array_equal(got.cpu().numpy(), want)
    assert got.cpu().tolist() == naive_ids(cfg, tokens)["ids"]
    if tokens.shape[1]:
        assert np.array_equal(h(t[0]).cpu().numpy(), want[0])            # [seq] form


@jit_settings
@given(st.integers(1, (1 << 63) - 1))
def test_products_fit_in_int64(vocab):
    # the largest multiplier times the largest token never overflows, so the kernel's int64
    # arithmetic equals the exact one (the demo's numpy int64 arithmetic never wraps either)
    half_bound = max(1, ((1 << 63) - 1) // vocab // 2)
    assert (2 * (half_bound - 1) + 1) * (vocab - 1) <= (1 << 63) - 1


def test_largest_values_exact():
    vocab = 1000
    h = NgramHasher(vocab, 3, 2, 50, seed=5)
    tokens = np.full((1, 4), vocab - 1)
    m = [int(v) for v in h.multipliers]
    mix2 = ((vocab - 1) * m[0]) ^ ((vocab - 1) * m[1])          # Python ints: exact
    mix3 = mix2 ^ ((vocab - 1) * m[2])
    assert mix3 < 1 << 63
    want = [mix2 % int(p) + int(o) for p, o in zip(h.primes[0], h.offsets[0])]
    want += [mix3 % int(p) + int(o) for p, o in zip(h.primes[1], h.offsets[1])]
    assert h(tokens)[0, 3].tolist() == want


# =========================================================================== properties


@jit_settings
@given(config_and_tokens())
def test_deterministic_and_in_range(ct):
    cfg, tokens = ct
    h = NgramHasher(**cfg)
    a = h(tokens)
    assert np.array_equal(a, h(tokens))
    assert np.array_equal(a, NgramHasher(**cfg)(tokens))
    assert np.array_equal(a, NgramHasher.from_config(json.loads(json.dumps(h.get_config())))(tokens))
    assert a.shape == tokens.shape + (h.ids_per_token,)
    assert h.ids_per_token == (cfg["max_ngram"] - 1) * cfg["heads"]
    assert ((a >= 0) & (a < h.num_rows)).all()
    lo = h.offsets.reshape(-1)
    hi = lo + h.primes.reshape(-1)
    assert ((a >= lo) & (a < hi)).all()            # column j only ever reads table j
    assert h.offsets.shape == h.primes.shape == (cfg["max_ngram"] - 1, cfg["heads"])


@jit_settings
@given(config_and_tokens(min_len=1), st.integers(0, 4))
def test_left_padding(ct, extra):
    cfg, tokens = ct
    h = NgramHasher(**cfg)
    ids = h(tokens)
    pad = cfg["pad_id"]
    # pad tokens in front of a sequence are exactly what it sees before its start
    padded = np.concatenate([np.full((tokens.shape[0], extra), pad), tokens], axis=1)
    assert np.array_equal(h(padded)[:, extra:], ids)
    # position 0: every earlier token is the pad id; by the formula, order 2, head k:
    m = [int(v) for v in h.multipliers]
    x0 = tokens[:, 0].tolist()
    for b in range(tokens.shape[0]):
        mix = (x0[b] * m[0]) ^ (pad * m[1])
        for k in range(cfg["heads"]):
            assert ids[b, 0, k] == mix % int(h.primes[0, k]) + int(h.offsets[0, k])


@jit_settings
@given(config_and_tokens(min_len=2), st.data())
def test_causal(ct, data):
    cfg, tokens = ct
    h = NgramHasher(**cfg)
    ids = h(tokens)
    t = data.draw(st.integers(0, tokens.shape[1] - 2))
    changed = tokens.copy()
    changed[:, t + 1:] = data.draw(st.integers(0, cfg["vocab_size"] - 1))
    assert np.array_equal(h(changed)[:, :t + 1], ids[:, :t + 1])
    # and local: position t reads only tokens t - max_ngram + 1 .. t
    far = t - cfg["max_ngram"] + 1
    if far > 0:
        changed = tokens.copy()
        changed[:, :far] = data.draw(st.integers(0, cfg["vocab_size"] - 1))
        assert np.array_equal(h(changed)[:, t], ids[:, t])


@jit_settings
@given(config_and_tokens(min_len=1), st.booleans() if torch is not None else st.just(False))
def test_step_equals_last_position(ct, use_torch):
    cfg, tokens = ct
    h = NgramHasher(**cfg)
    n = cfg["max_ngram"]
    full = h(tokens)
    pad = np.full((tokens.shape[0], n), cfg["pad_id"])
    for t in range(tokens.shape[1]):
        window = np.concatenate([pad, tokens[:, :t + 1]], axis=1)[:, -n:]
        if use_torch:
            got = h.step(torch.from_numpy(window))
            assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
            got = got.numpy()
        else:
            got = h.step(window)
        assert np.array_equal(got, full[:, t])
        assert np.array_equal(h.step(window[0]), full[0, t])


@jit_settings
@given(hasher_configs(big_vocab=False))
def test_primes_distinct_and_next_unused(cfg):
    layers = cfg["layer_ids"]
    hashers = [NgramHasher(**dict(cfg, layer_id=layer)) for layer in layers]
    walk = [(int(p), size) for h in hashers for order, size in zip(h.primes, h.table_sizes)
            for p in order]                                          # the demo's walk order
    primes = [p for p, _ in walk]
    assert len(set(primes)) == len(primes) == len(layers) * (cfg["max_ngram"] - 1) * cfg["heads"]
    taken: set = set()
    for p, size in walk:
        assert naive.naive_is_prime(p) and p >= size
        # every prime between the configured size and p was taken by an earlier table, and
        # within an order each head searches on from the previous head's prime
        assert all(q in taken for q in range(size, p) if naive.naive_is_prime(q))
        taken.add(p)
    for h in hashers:
        for order in h.primes:
            assert list(order) == sorted(order)
    assert table_primes(cfg["table_size"], cfg["heads"], layers) == naive.naive_primes(
        cfg["table_size"], cfg["max_ngram"], cfg["heads"], layers)


def test_multipliers_odd_and_per_layer():
    a = NgramHasher(5000, 3, 8, 100, layer_id=1, layer_ids=[1, 15])
    b = NgramHasher(5000, 3, 8, 100, layer_id=15, layer_ids=[1, 15])
    assert (a.multipliers % 2 == 1).all() and (b.multipliers % 2 == 1).all()
    assert a.multipliers.tolist() != b.multipliers.tolist()
    assert not set(a.primes.reshape(-1).tolist()) & set(b.primes.reshape(-1).tolist())
    tokens = np.arange(20).reshape(2, 10)
    assert not np.array_equal(a(tokens) - a.offsets.reshape(-1), b(tokens) - b.offsets.reshape(-1))


def test_is_prime_small():
    assert [n for n in range(20000) if is_prime(n)] == [
        n for n in range(20000) if naive.naive_is_prime(n)]


def test_is_prime_large():
    # Carmichael numbers, strong pseudoprimes to several bases, big primes
    for n in (561, 1105, 1729, 2047, 3215031751, 3825123056546413051, 318665857834031151167461):
        assert not is_prime(n)
    for n in (2_147_483_647, 1_000_000_007, 2_305_843_009_213_693_951, (1 << 61) - 1):
        assert is_prime(n)
    sympy = pytest.importorskip("sympy")
    rng = np.random.default_rng(0)
    for n in rng.integers(1, 1 << 62, size=2000).tolist() + list(range(10**12, 10**12 + 300)):
        assert is_prime(n) == bool(sympy.isprime(n))


# =========================================================================== shapes, kinds, errors


@needs_torch
def test_shapes_and_kinds():
    h = NgramHasher(100, 3, 2, 30, pad_id=5)
    seq = np.array([1, 2, 3, 4])
    assert h(seq).shape == (4, 4)
    assert np.array_equal(h(seq), h(seq[None])[0])
    assert h(np.zeros((3, 0), dtype=np.int64)).shape == (3, 0, 4)
    assert h([[1, 2], [3, 4]]).tolist() == h(np.array([[1, 2], [3, 4]])).tolist()
    assert np.array_equal(h(seq.astype(np.uint8)), h(seq))
    out = h(torch.tensor([[1, 2, 3]], dtype=torch.int32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.shape == (1, 3, 4)
    assert out.tolist() == h(np.array([[1, 2, 3]])).tolist()
    assert h(np.asfortranarray(np.arange(12).reshape(3, 4))).tolist() == h(
        np.arange(12).reshape(3, 4)).tolist()


@needs_torch
def test_bad_tokens():
    h = NgramHasher(100, 3, 2, 30)
    with pytest.raises(IdOutOfRangeError, match="100"):
        h([[1, 100]])
    with pytest.raises(IndexError):
        h([[-1, 2]])
    with pytest.raises(IdOutOfRangeError):
        h(np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(IdOutOfRangeError):
        h([[1, 2**70]])
    with pytest.raises(IdTypeError):
        h(np.array([[1.0, 2.0]]))
    with pytest.raises(TypeError):
        h([[1, 2.5]])
    with pytest.raises(IdTypeError):
        h(torch.tensor([1.0]))
    with pytest.raises(IdTypeError):
        h(np.array([True, False]))
    with pytest.raises(RowShapeError):
        h(np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError):
        h.step(np.zeros((2, 2), dtype=np.int64))          # needs max_ngram = 3 columns
    with pytest.raises(RowShapeError):
        h.step(np.zeros((1, 1, 3), dtype=np.int64))
    with pytest.raises(IdOutOfRangeError):
        h.step([[0, 0, 100]])



@needs_torch
@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_bad_tokens_torch(device):
    # a tensor is checked on its device with the same named errors as an array
    h = NgramHasher(100, 3, 2, 30)

    def t(values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype, device=device)

    with pytest.raises(IdOutOfRangeError, match="token id 100 at position 1"):
        h(t([[1, 100]]))
    with pytest.raises(IdOutOfRangeError, match="token id -1 at position 0"):
        h(t([[-1, 2]]))
    with pytest.raises(IdOutOfRangeError, match="position 2"):
        h(t([3, 4, 2**40], torch.int64))
    with pytest.raises(IdTypeError):
        h(t([1.0, 2.0], torch.float32))
    with pytest.raises(IdTypeError):
        h(t([True, False], torch.bool))
    with pytest.raises(RowShapeError):
        h(torch.zeros((2, 2, 2), dtype=torch.int64, device=device))
    with pytest.raises(RowShapeError):
        h.step(torch.zeros((2, 2), dtype=torch.int64, device=device))
    with pytest.raises(IdOutOfRangeError):
        h.step(t([[0, 0, 100]]))
    assert h(torch.zeros((3, 0), dtype=torch.int64, device=device)).shape == (3, 0, 4)
    assert h(t([7, 8, 9], torch.uint8)).cpu().tolist() == h(np.array([7, 8, 9])).tolist()
    assert h(t([7, 8, 9], torch.uint64)).cpu().tolist() == h(np.array([7, 8, 9])).tolist()
    with pytest.raises(IdOutOfRangeError, match=f"token id {2**64 - 1} at position 1"):
        h(t([7, 2**64 - 1], torch.uint64))                  # not wrapped to -1


@pytest.mark.parametrize("kwargs", [
    dict(vocab_size=0),
    dict(vocab_size=10, pad_id=10),
    dict(vocab_size=10, pad_id=-1),
    dict(vocab_size=10, max_ngram=1),
    dict(vocab_size=10, heads=0),
    dict(vocab_size=10, heads=True),
    dict(vocab_size=10, table_size=0),
    dict(vocab_size=10, table_size=[10]),                 # two orders need two sizes
    dict(vocab_size=10, table_size=[10, 10, 10]),
    dict(vocab_size=10, table_size=12.5),
    dict(vocab_size=10, table_size=1 << 60),
    dict(vocab_size=10, seed=-1),
    dict(vocab_size=10, layer_id=-2),
    dict(vocab_size=10, layer_id=3, layer_ids=[1, 2]),
    dict(vocab_size=10, layer_id=1, layer_ids=[1, 1]),
    dict(vocab_size="10"),
])
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        NgramHasher(**kwargs)
    with pytest.raises(ValueError):
        NgramHasher(**kwargs)


def test_config_round_trip():
    h = NgramHasher(1234, 4, 3, [100, 200, 300], layer_id=7, seed=9, pad_id=11,
                    layer_ids=[2, 7])
    cfg = json.loads(json.dumps(h.get_config()))
    assert cfg["table_size"] == [100, 200, 300] and cfg["layer_ids"] == [2, 7]
    h2 = NgramHasher.from_config(cfg)
    assert h2 == h and np.array_equal(h2.primes, h.primes) and h2.num_rows == h.num_rows
    assert NgramHasher(1234, table_size=50) == NgramHasher(1234, table_size=[50, 50])
    with pytest.raises(ConfigError, match="multipliers"):
        NgramHasher.from_config(dict(cfg, multipliers=[1, 3, 5, 7]))
    with pytest.raises(ConfigError, match="rows"):
        NgramHasher.from_config(dict(cfg, num_rows=5))
    with pytest.raises(ConfigError, match="unknown"):
        NgramHasher.from_config(dict(cfg, dim=64))
    with pytest.raises(ConfigError):
        NgramHasher.from_config([1, 2])
    # the default table size: five times the vocabulary, per order
    assert NgramHasher(100).table_sizes == [500, 500]


# =========================================================================== compression

texts = st.text(alphabet=st.sampled_from(list("aAéÉe\u0301 \n\t\x0bß") + ["\ufffd", "\ue000"]),
                max_size=4)


@jit_settings
@given(st.lists(texts, min_size=1, max_size=40))
def test_compressor_surjective_first_seen(vocab):
    tokens = [f"<{i % 3}>" for i in range(len(vocab))]
    comp = TokenCompressor.build(lambda i: vocab[i], len(vocab), id_to_token=lambda i: tokens[i])
    m = comp.map.tolist()
    assert (m, comp.num_canonical) == naive.naive_compress(vocab, tokens)
    assert set(m) == set(range(comp.num_canonical))                       # onto
    firsts = [m.index(c) for c in range(comp.num_canonical)]
    assert firsts == sorted(firsts) and m[0] == 0                         # first-seen order
    keys = [tokens[i] if "\ufffd" in t else compression_key(t) for i, t in enumerate(vocab)]
    for i in range(len(vocab)):                                           # same key, same id
        for j in range(len(vocab)):
            assert (m[i] == m[j]) == (keys[i] == keys[j])
    assert comp(np.arange(len(vocab))).tolist() == m


@jit_settings
@given(st.text(max_size=8))
def test_normalize_matches_naive(text):
    assert normalize_text(text) == naive.naive_normalize(text)


def test_normalization_examples():
    vocab = ["Café", "cafe", "CAFÉ", "cafe\u0301", " Hello", "hello", "HELLO\n", "\n\n", " ",
             "\t", "\u3000", "", "x  y", "x\ty", "ΟΔΟΣ", "οδοσ", "οδος"]
    comp = TokenCompressor.build(lambda i: vocab[i], len(vocab))
    c = dict(zip(vocab, comp.map.tolist()))
    assert c["Café"] == c["cafe"] == c["CAFÉ"] == c["cafe\u0301"] == 0      # accents, case
    assert c[" Hello"] == c["hello"] == c["HELLO\n"]                        # case, strip
    assert c["\n\n"] == c[" "] == c["\t"] == c["\u3000"]                    # whitespace: " "
    assert normalize_text("\n\n") == " " and normalize_text("\u3000") == " "
    assert c[""] not in (c[" "], c["hello"])                                # "" keys as itself
    assert c["x  y"] == c["x\ty"] and normalize_text("x\ty") == "x y"       # runs -> one space
    assert c["ΟΔΟΣ"] == c["οδοσ"] != c["οδος"]            # per-char lowercase: no final sigma
    assert comp.num_canonical == 7
    assert normalize_text("\x1cA\x1c") == "\x1ca\x1c"     # Unicode White_Space, not str.isspace


def test_normalize_against_tokenizers():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, normalizers
    sentinel = "\uE000"
    demo = normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(),
        normalizers.Lowercase(), normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
        normalizers.Replace(Regex(r"^ $"), sentinel), normalizers.Strip(),
        normalizers.Replace(sentinel, " ")])
    assert tokenizers is not None
    rng = np.random.default_rng(0)
    pool = [t for t, _ in GOLDEN["normalize"]]
    for _ in range(3000):
        text = "".join(rng.choice(pool, size=rng.integers(0, 4)))
        assert normalize_text(text) == demo.normalize_str(text), repr(text)


def test_undecodable():
    raw = {0: "a", 1: "\ufffd", 2: "x\ufffd", 3: b"\xe2\x82", 4: b"\xe2\x82", 5: None, 6: None,
           7: b"A", 8: "A\ufffd"}
    comp = TokenCompressor.build(raw.get, len(raw))
    m = comp.map.tolist()
    assert m[7] == m[0]                          # valid bytes decode as UTF-8
    assert m[3] == m[4]                          # undecodable bytes key by the raw bytes
    assert len({m[1], m[2], m[5], m[6], m[8], m[0], m[3]}) == 7   # strings/None: own class
    # with token strings, the demo's way: they share the key space with normalised texts
    toks = ["a", "a", "<x>", "<b>", "<b>", "<n>", "<n>", "A", "<z>"]
    comp = TokenCompressor.build(raw.get, len(raw), id_to_token=toks.__getitem__)
    m = comp.map.tolist()
    assert m[1] == m[0] and m[3] == m[4] and m[5] == m[6] and m[2] != m[8]
    with pytest.raises(ConfigError):
        TokenCompressor.build(lambda i: 5, 3)


@needs_torch
def test_compressor_call_kinds_and_errors():
    comp = TokenCompressor.build(lambda i: ["a", "A", "b", "B"][i], 4)
    assert comp.map.dtype == np.int64 and comp.map.tolist() == [0, 0, 1, 1]
    assert comp(3) == 1 and isinstance(comp(np.int64(3)), int)
    assert comp(np.array([[0, 1], [2, 3]])).tolist() == [[0, 0], [1, 1]]
    for device in TORCH_DEVICES:
        # mapped on the tensor's device through a copy of the map kept there
        t = comp(torch.tensor([[3, 2, 1]], dtype=torch.int32, device=device))
        assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.device.type == device
        assert t.cpu().tolist() == [[1, 1, 0]]
        assert comp.map_on(device) is comp.map_on(device)
        for bad in ([0, 4], [-1]):
            with pytest.raises(IdOutOfRangeError, match=f"token id {bad[-1]}"):
                comp(torch.tensor(bad, device=device))
        with pytest.raises(IdTypeError):
            comp(torch.tensor([0.5], device=device))
    for bad in (4, -1, [0, 4], np.array([-1])):
        with pytest.raises(IdOutOfRangeError):
            comp(bad)
    with pytest.raises(IdTypeError):
        comp(np.array([0.5]))
    with pytest.raises(ConfigError):
        TokenCompressor([1, 0])                 # not first-seen
    with pytest.raises(ConfigError):
        TokenCompressor([0, 2])                 # not onto
    with pytest.raises(ConfigError):
        TokenCompressor.build(lambda i: "a", 0)


def test_compressor_save_load(tmp_path):
    comp = TokenCompressor.build(lambda i: ["x", "X", "y", "\n", " "][i], 5)
    path = tmp_path / "comp.npz"
    comp.save(path)
    again = TokenCompressor.load(path)
    assert again == comp and again.num_canonical == comp.num_canonical == 3
    assert os.listdir(tmp_path) == ["comp.npz"]
    (tmp_path / "junk").write_bytes(b"not a file of ours")
    with pytest.raises(ConfigError):
        TokenCompressor.load(tmp_path / "junk")
    with pytest.raises(ConfigError):
        TokenCompressor.load(tmp_path / "missing.npz")
    with open(tmp_path / "bad.npz", "wb") as f:
        np.savez(f, format=np.array(TokenCompressor.FORMAT), version=np.array(1),
                 map=np.array([0, 2, 1]), num_canonical=np.array(3))
    with pytest.raises(ConfigError):
        TokenCompressor.load(tmp_path / "bad.npz")


class FakeTransformersTokenizer:
    def __init__(self, texts):
        self.texts = texts

    def __len__(self):
        return len(self.texts)

    def decode(self, ids, skip_special_tokens=True):
        assert skip_special_tokens is False and len(ids) == 1
        return self.texts[ids[0]]

    def convert_ids_to_tokens(self, tid):
        return f"tok{tid}"


class FakeTokenizersTokenizer:
    """The parts of a ``tokenizers.Tokenizer`` the compressor uses (no len, no convert_ids_to_tokens)."""

    def __init__(self, texts):
        self.texts = texts

    def decode(self, ids, skip_special_tokens=True):
        assert skip_special_tokens is False and len(ids) == 1
        return self.texts[ids[0]]

    def get_vocab_size(self, with_added_tokens=False):
        assert with_added_tokens
        return len(self.texts)

    def id_to_token(self, tid):
        return f"tok{tid}"


def test_from_tokenizer():
    # undecodable ids key by their token string, in the same key space as normalised texts
    # (as in the demo): "tok4" decodes to a text whose key equals id 4's token string
    texts = ["<s>", "Hello", " hello", "\ufffd", "\ufffd", "tok4", "Ünïcode"]
    want = [0, 1, 1, 2, 3, 3, 4]
    assert TokenCompressor.from_tokenizer(FakeTransformersTokenizer(texts)).map.tolist() == want
    assert TokenCompressor.from_tokenizer(FakeTokenizersTokenizer(texts)).map.tolist() == want
    with pytest.raises(ConfigError):
        TokenCompressor.from_tokenizer(object())


def test_from_tokenizer_name_needs_transformers():
    try:
        import transformers  # noqa: F401
        pytest.skip("transformers is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install transformers"):
        TokenCompressor.from_tokenizer("deepseek-ai/DeepSeek-V3")


def test_compress_then_hash():
    # the demo's pipeline: raw ids -> canonical ids -> hash, the pad id mapped too
    vocab = ["<pad>", "The", "the", " the", "cat", "Cat", "\n"]
    comp = TokenCompressor.build(lambda i: vocab[i], len(vocab))
    h = NgramHasher(comp.num_canonical, 3, 4, 50, pad_id=comp(0))
    raw = np.array([[1, 4, 6, 2, 5]])
    same = np.array([[3, 5, 6, 1, 4]])               # equal after compression
    assert np.array_equal(h(comp(raw)), h(comp(same)))
