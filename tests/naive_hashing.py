"""Slow, literal reference of DeepSeek Engram's lookup ids, for the tests of ``tierstore.hashing``.

Written step by step from the reference demo ``engram_demo_v1.py`` (github.com/deepseek-ai/Engram;
line numbers below are that file's), independently of ``tierstore/hashing.py`` and its numba
kernel: pure Python ints with explicit int64 wrap-around where the demo computes in numpy
int64, trial division for primes, nested lists for arrays, the demo's shifted copies of the
sequence instead of a sliding window.

``python tests/naive_hashing.py`` rewrites ``tests/data/engram_golden.json`` from this file.
"""
from __future__ import annotations

import json
import os
import re
import sys
import unicodedata

import numpy as np

TWO_63 = 1 << 63
TWO_64 = 1 << 64


def wrap_int64(value: int) -> int:
    """What numpy int64 arithmetic keeps of an exact integer result (two's complement)."""
    return (value + TWO_63) % TWO_64 - TWO_63


# =========================================================================== normalizer (lines 67-77)

# Rust's char::is_whitespace (Unicode White_Space), which tokenizers' Strip uses
WHITE_SPACE_RANGES = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                      (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                      (0x3000, 0x3000)]


def rust_is_whitespace(ch: str) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in WHITE_SPACE_RANGES)


def naive_normalize(text: str) -> str:
    sentinel = "\uE000"
    steps = [
        lambda s: unicodedata.normalize("NFKC", s),                                  # NFKC()
        lambda s: unicodedata.normalize("NFD", s),                                   # NFD()
        lambda s: "".join(c for c in s if not unicodedata.category(c).startswith("M")),  # StripAccents
        lambda s: "".join(c.lower() for c in s),                                    # Lowercase (per char)
        lambda s: re.sub(r"[ \t\r\n]+", " ", s),                                    # Replace(Regex, " ")
        lambda s: re.sub(r"\A \Z", sentinel, s),                                    # Replace("^ $"): no \n left
        naive_strip,                                                                # Strip()
        lambda s: s.replace(sentinel, " "),                                         # Replace(SENTINEL, " ")
    ]
    for step in steps:
        text = step(text)
    return text


def naive_strip(s: str) -> str:
    chars = list(s)
    while chars and rust_is_whitespace(chars[0]):
        chars.pop(0)
    while chars and rust_is_whitespace(chars[-1]):
        chars.pop()
    return "".join(chars)


# =========================================================================== compression (lines 84-110)


def naive_compress(texts: list, tokens: list) -> tuple[list[int], int]:
    """``texts[tid]`` is ``tokenizer.decode([tid])``, ``tokens[tid]`` ``convert_ids_to_tokens(tid)``."""
    old2new = {}
    key2new = {}
    new_tokens = []
    for tid in range(len(texts)):
        text = texts[tid]
        if "\ufffd" in text:
            key = tokens[tid]
        else:
            norm = naive_normalize(text)
            key = norm if norm else text
        if key not in key2new:
            key2new[key] = len(new_tokens)
            new_tokens.append(key)
        old2new[tid] = key2new[key]
    return [old2new[tid] for tid in range(len(texts))], len(new_tokens)


# =========================================================================== primes (lines 181-186, 235-258)


def naive_is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def naive_find_next_prime(start: int, seen: set) -> int:
    candidate = start + 1
    while not (naive_is_prime(candidate) and candidate not in seen):
        candidate += 1
    return candidate


def naive_primes(table_sizes: list[int], max_ngram: int, heads: int, layer_ids: list[int]) -> dict:
    seen: set = set()
    result = {}
    for layer in layer_ids:
        layer_sizes = []
        for ngram in range(2, max_ngram + 1):
            sizes = []
            start = table_sizes[ngram - 2] - 1
            for _ in range(heads):
                p = naive_find_next_prime(start, seen)
                seen.add(p)
                sizes.append(p)
                start = p
            layer_sizes.append(sizes)
        result[layer] = layer_sizes
    return result


# =========================================================================== multipliers (lines 214-231)


def naive_multipliers(vocab_size: int, max_ngram: int, layer_id: int, seed: int) -> list[int]:
    max_long = TWO_63 - 1
    m_max = max_long // vocab_size
    half_bound = max(1, m_max // 2)
    g = np.random.default_rng(seed + 10007 * layer_id)
    r = g.integers(low=0, high=half_bound, size=(max_ngram,), dtype=np.int64)
    return [int(v) * 2 + 1 for v in r]


# =========================================================================== hashes (lines 262-296; offsets 342-359)


def naive_local_hashes(x: list[list[int]], multipliers: list[int], primes: list[list[int]],
                       max_ngram: int, pad_id: int) -> list[list[list[int]]]:
    """``[B][T][orders * heads]`` local ids (before offsets), as ``_get_ngram_hashes``."""
    T = len(x[0]) if x else 0

    def shift(k):
        return [[pad_id] * min(k, T) + row[:T - k] if k < T else [pad_id] * T for row in x]

    shifts = [shift(k) for k in range(max_ngram)]
    columns = []                                   # one [B][T] grid per (order, head)
    for n in range(2, max_ngram + 1):
        grids = shifts[:n]
        mix = [[wrap_int64(v * multipliers[0]) for v in row] for row in grids[0]]
        for k in range(1, n):
            mix = [[wrap_int64(a ^ wrap_int64(v * multipliers[k])) for a, v in zip(mrow, row)]
                   for mrow, row in zip(mix, grids[k])]
        for p in primes[n - 2]:
            columns.append([[a % p for a in row] for row in mix])   # numpy % on int64: floor mod
    return [[[col[b][t] for col in columns] for t in range(T)] for b in range(len(x))]


def naive_hash(tokens: list[list[int]], vocab_size: int, max_ngram: int, heads: int,
               table_sizes: list[int], layer_id: int, seed: int, pad_id: int,
               layer_ids: list[int] | None = None) -> dict:
    """Everything about one layer: multipliers, primes, offsets and global ids ``[B][T][K*orders]``."""
    layer_ids = list(layer_ids) if layer_ids is not None else [layer_id]
    multipliers = naive_multipliers(vocab_size, max_ngram, layer_id, seed)
    primes = naive_primes(table_sizes, max_ngram, heads, layer_ids)[layer_id]
    flat = [p for order in primes for p in order]
    offsets = [0]
    for p in flat[:-1]:
        offsets.append(offsets[-1] + p)
    local = naive_local_hashes(tokens, multipliers, primes, max_ngram, pad_id)
    ids = [[[v + offsets[j] for j, v in enumerate(pos)] for pos in row] for row in local]
    return {"multipliers": multipliers, "primes": primes, "offsets": offsets,
            "num_rows": sum(flat), "ids": ids}


# =========================================================================== golden vectors

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "data", "engram_golden.json")

# normalisation examples; each result was also checked against the demo's own normalizer
# (tokenizers 0.23.3) when this file was written
NORMALIZE_EXAMPLES = [
    "Hello", "HELLO", " Hello", "Hello ", "  hello  world ", "Café", "CAFÉ", "cafe\u0301",
    "Ñandú", "Straße", "ẞ", "ΟΔΟΣ", "İstanbul", "ﬁne", "Ⅻ", "①", "ｶﾞ", "x²", "½",
    "\u0915\u093e", " ", "  ", "\n", "\n\n", "\t \r\n", "\u3000", "\xa0", "\u2003",
    "\x0b", " \x0b", "\x1ca\x1c", "\u200b", "a\tb\nc", "a \u3000 b", "\ue000", " \ue000 ",
    "\u0301", "\u20dd", "", "Ǆemal", "Ω", "K", "Å", "😀", "中文", "-",
]

COMPRESS_CASES = [
    {"texts": ["<pad>", "Hello", "hello", " Hello", "HELLO", "\n", "\n\n", " ", "é", "e",
               "\ufffd", "\ufffd\ufffd", "Ｈｅｌｌｏ", "", "\x0b"],
     "tokens": ["<pad>", "Hello", "hello", "ĠHello", "HELLO", "Ċ", "ĊĊ", "Ġ", "Ã©", "e",
                "<0xE2>", "hello", "ï¼¨", "<empty>", "<vt>"]},
]

HASH_CASES = [
    # the demo's default configuration (engram_vocab_size [129280*5]*2, 3-grams, 8 heads,
    # layers [1, 15], seed 0) over a made-up compressed vocabulary of 100000 ids, pad 2
    {"vocab_size": 100000, "max_ngram": 3, "heads": 8, "table_size": [646400, 646400],
     "layer_ids": [1, 15], "seed": 0, "pad_id": 2,
     "tokens": [[17, 523, 99999, 2, 0, 42, 42, 42, 7000, 31337, 1, 65536],
                [2, 2, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13]]},
    {"vocab_size": 50, "max_ngram": 4, "heads": 2, "table_size": [7, 11, 13],
     "layer_ids": [0], "seed": 7, "pad_id": 3,
     "tokens": [[0, 49, 3, 3, 10, 20], [1, 2, 3, 4, 5, 6], [49, 48, 47, 46, 45, 44]]},
    {"vocab_size": 1, "max_ngram": 2, "heads": 3, "table_size": [2],
     "layer_ids": [4], "seed": 0, "pad_id": 0, "tokens": [[0, 0, 0]]},
    # a vocabulary so large that half_bound is 1: every multiplier is 1
    {"vocab_size": (1 << 62) + 1, "max_ngram": 3, "heads": 2, "table_size": [1000, 1000],
     "layer_ids": [0, 1], "seed": 3, "pad_id": 1 << 62,
     "tokens": [[1 << 62, (1 << 62) - 1, 12345, 0]]},
    {"vocab_size": 129280, "max_ngram": 5, "heads": 4, "table_size": [1000, 2000, 3000, 4000],
     "layer_ids": [2, 15, 27], "seed": 123, "pad_id": 0,
     "tokens": [[129279, 1, 2, 3, 4, 5, 6, 129279]]},
]


def golden() -> dict:
    out = {
        "source": "tests/naive_hashing.py (python tests/naive_hashing.py), written line by line "
                  "from deepseek-ai/Engram engram_demo_v1.py; checked against the demo's own "
                  "code and its tokenizers normalizer when generated",
        "numpy": np.__version__,
        "normalize": [[t, naive_normalize(t)] for t in NORMALIZE_EXAMPLES],
        "compress": [],
        "hash": [],
    }
    for case in COMPRESS_CASES:
        mapping, count = naive_compress(case["texts"], case["tokens"])
        out["compress"].append(dict(case, map=mapping, num_canonical=count))
    for case in HASH_CASES:
        layers = {}
        for layer in case["layer_ids"]:
            layers[str(layer)] = naive_hash(case["tokens"], case["vocab_size"], case["max_ngram"],
                                            case["heads"], case["table_size"], layer,
                                            case["seed"], case["pad_id"], case["layer_ids"])
        out["hash"].append(dict(case, layers=layers))
    return out


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else GOLDEN_PATH
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(golden(), f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}")
