"""DeepSeek Engram's lookup ids: tokenizer compression and hashed suffix n-grams.

Engram ("Conditional Memory via Scalable Lookup", arXiv 2601.07372) reads, at every position,
one row per (n-gram order, head) from hashed embedding tables. This module computes those row
ids exactly as the reference demo ``engram_demo_v1.py`` (github.com/deepseek-ai/Engram) does,
so a table trained with the demo's ids can be served from a tierstore, and back (line numbers
below are those of ``engram_demo_v1.py`` at deepseek-ai/Engram commit 11a020e):

    from tierstore.hashing import TokenCompressor, NgramHasher

    comp = TokenCompressor.from_tokenizer(hf_tokenizer)      # raw token id -> canonical id
    hasher = NgramHasher(comp.num_canonical, max_ngram=3, heads=8, table_size=5 * 129280,
                         layer_id=1, layer_ids=[1, 15], pad_id=comp(raw_pad_id))
    store = tierstore.create(path, num_rows=hasher.num_rows, dim=64)
    rows = store.lookup(hasher(comp(raw_ids)))               # [batch, seq, 16, 64]

Compression (demo ``CompressedTokenizer``): each raw id's decoded text is normalised
NFKC -> NFD -> strip marks -> lowercase -> runs of ``[ \\t\\r\\n]`` to one space -> strip, with a
text that is one space after the collapse kept as ``" "``; an empty result keys by the decoded
text itself; a text holding U+FFFD (it did not decode) keys by the raw token. Equal keys share a
canonical id; canonical ids are handed out in first-seen order of raw ids.

Hashing (demo ``NgramHashMapping``), per layer: odd multipliers ``m = 2 * r + 1`` with
``r = default_rng(seed + 10007 * layer_id).integers(0, half_bound, size=max_ngram, dtype=int64)``
and ``half_bound = max(1, ((2**63 - 1) // vocab_size) // 2)``; the n-gram of order n at position t
mixes ``(x_t * m_0) XOR (x_{t-1} * m_1) XOR ... XOR (x_{t-n+1} * m_{n-1})`` (positions before the
sequence read the pad id); head k of order n takes ``mix mod P[n, k]``. Every (layer, order, head)
has its own prime: walking the layers of ``layer_ids`` in order, then orders, then heads, each
table takes the smallest prime not already taken that is at least its order's configured size
(the next head starts the search just past the previous head's prime). One layer's tables sit
one after another (order-major, then head) in one store; ``offsets`` turn local ids into rows.

Tokens given to ``NgramHasher`` are canonical ids (the output of ``TokenCompressor``), and
``vocab_size`` is ``comp.num_canonical``: the demo sizes the multipliers by the compressed
vocabulary, and maps its pad id through the compressor as well (``pad_id=comp(raw_pad_id)``).

Both take numpy arrays (hashed by the numba kernels) or torch tensors: a tensor is mapped and
hashed with torch ops on its own device, CUDA included, so token ids on the GPU never pass
through the host (only the range check's minimum and maximum do). Both paths give the same ids,
bit for bit.
"""
from __future__ import annotations

import numbers
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .errors import ConfigError, IdOutOfRangeError, IdTypeError, RowShapeError
from .kernels.batch import first_out_of_range
from .kernels.ngram import ngram_ids, ngram_step
from .validation import check_int

__all__ = ["NgramHasher", "TokenCompressor", "compression_key", "is_prime", "layer_multipliers",
           "normalize_text", "table_primes"]

INT64_MAX = (1 << 63) - 1
LAYER_SEED_STRIDE = 10007          # the demo's PRIME_1
SENTINEL = "\ue000"                # the demo's SENTINEL (a private-use character)
REPLACEMENT = "\ufffd"             # what a decoder puts where bytes are not valid UTF-8

# the demo's normalizer is a Hugging Face `tokenizers` Sequence; its Strip uses Rust's
# char::is_whitespace (Unicode White_Space), which differs from str.isspace (that one also
# strips U+001C..U+001F)
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_WS_RUN = re.compile(r"[ \t\r\n]+")


# =========================================================================== compression


def normalize_text(text: str) -> str:
    """The demo's ``normalizer.normalize_str(text)`` (``engram_demo_v1.py`` lines 67-77).

    NFKC, NFD, drop every combining mark (general category M*, as ``StripAccents``),
    lowercase character by character (``Lowercase`` maps each char on its own: no final-sigma
    rule), runs of space/tab/CR/LF to one space, a lone space protected by the sentinel,
    strip Unicode White_Space at both ends, then the sentinel back to a space.
    """
    s = unicodedata.normalize("NFKC", text)
    s = unicodedata.normalize("NFD", s)
    s = "".join(c for c in s if unicodedata.category(c)[0] != "M")
    s = "".join(c.lower() for c in s)
    s = _WS_RUN.sub(" ", s)
    if s == " ":                    # Replace(Regex("^ $"), SENTINEL): no newline is left
        s = SENTINEL
    start, end = 0, len(s)
    while start < end and s[start] in _WHITE_SPACE:
        start += 1
    while end > start and s[end - 1] in _WHITE_SPACE:
        end -= 1
    return s[start:end].replace(SENTINEL, " ")


def compression_key(text: str):
    """The key a decodable text is grouped by (demo lines 96-97): its normal form, or the text
    itself when the normal form is empty."""
    norm = normalize_text(text)
    return norm if norm else text


class TokenCompressor:
    """A surjective map from raw token ids to canonical ids, numbered in first-seen order.

    ``map[raw] = canonical``; ``num_canonical`` ids in all. Build it with ``build`` (any
    ``id -> text`` function) or ``from_tokenizer``; ``save``/``load`` keep only the map.
    """

    FORMAT = "tierstore.TokenCompressor"
    VERSION = 1

    def __init__(self, mapping, keys: list | None = None):
        arr = np.asarray(mapping)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ConfigError(f"a compressor map is a 1-D integer array, got {arr.dtype} "
                              f"of shape {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.int64)
        if arr.size == 0:
            raise ConfigError("a compressor map needs at least one token")
        # first-seen order: map[0] == 0 and every id is at most one above all ids before it,
        # which also makes the map onto [0, num_canonical)
        prev_max = np.maximum.accumulate(np.concatenate(([-1], arr[:-1])))
        bad = np.flatnonzero((arr < 0) | (arr > prev_max + 1))
        if bad.size:
            k = int(bad[0])
            raise ConfigError(
                f"compressor map is not in first-seen order: map[{k}] = {int(arr[k])} "
                f"(canonical ids must appear as 0, 1, 2, ... by raw id)")
        arr.setflags(write=False)
        self.map = arr
        self.num_canonical = int(arr.max()) + 1
        self.vocab_size = int(arr.size)
        self.keys = keys
        self._device_maps = {}     # torch device -> the map there

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, id_to_text: Callable[[int], str | bytes | None], vocab_size: int,
              id_to_token: Callable[[int], object] | None = None) -> TokenCompressor:
        """Group the ids ``0 .. vocab_size - 1`` by the key of their text (demo lines 84-110).

        ``id_to_text(tid)`` is the decoded text of the one-token sequence ``[tid]`` (a
        ``str``), its raw bytes (decoded here as UTF-8, bad bytes becoming U+FFFD), or None.
        A text holding U+FFFD, or None, did not decode: it keys by ``id_to_token(tid)`` when
        given (the demo's ``convert_ids_to_tokens``, so two such ids merge only if their token
        strings match a key), else by its raw bytes, else it gets a class of its own.
        """
        n = check_int("vocab_size", vocab_size, 1)
        if not callable(id_to_text):
            raise ConfigError("id_to_text must be a callable int -> str | bytes | None")
        key2new: dict = {}
        keys: list = []
        mapping = np.empty(n, dtype=np.int64)
        for tid in range(n):
            raw = id_to_text(tid)
            if isinstance(raw, (bytes, bytearray, memoryview)):
                raw = bytes(raw)
                text = raw.decode("utf-8", errors="replace")
            elif raw is None or isinstance(raw, str):
                text = raw
            else:
                raise ConfigError(f"id_to_text({tid}) returned {type(raw).__name__}, "
                                  "expected str, bytes or None")
            if text is None or REPLACEMENT in text:
                if id_to_token is not None:
                    key = id_to_token(tid)
                elif isinstance(raw, bytes):
                    key = raw
                else:
                    key = ("undecodable", tid)
            else:
                key = compression_key(text)
            nid = key2new.get(key)
            if nid is None:
                nid = len(keys)
                key2new[key] = nid
                keys.append(key)
            mapping[tid] = nid
        return cls(mapping, keys=keys)

    @classmethod
    def from_tokenizer(cls, tokenizer, **from_pretrained_kwargs) -> TokenCompressor:
        """Build from a Hugging Face tokenizer, as the demo does (``decode([tid],
        skip_special_tokens=False)`` and ``convert_ids_to_tokens``).

        ``tokenizer``: a ``transformers`` tokenizer, a ``tokenizers.Tokenizer``, the path of a
        ``tokenizer.json`` (needs ``pip install tokenizers``) or a name for
        ``transformers.AutoTokenizer.from_pretrained`` (needs ``pip install transformers``;
        keyword arguments go to it).
        """
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(os.fspath(tokenizer), from_pretrained_kwargs)
        decode = getattr(tokenizer, "decode", None)
        if decode is None:
            raise ConfigError(f"{type(tokenizer).__name__} has no decode(); pass a transformers "
                              "tokenizer, a tokenizers.Tokenizer, or an id_to_text function "
                              "to TokenCompressor.build")
        if hasattr(tokenizer, "convert_ids_to_tokens"):          # transformers
            vocab_size = len(tokenizer)
            to_token = tokenizer.convert_ids_to_tokens
        elif hasattr(tokenizer, "get_vocab_size"):                # tokenizers.Tokenizer
            vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
            to_token = tokenizer.id_to_token
        else:
            raise ConfigError(f"cannot tell the vocabulary size of {type(tokenizer).__name__}")
        return cls.build(lambda tid: decode([tid], skip_special_tokens=False), vocab_size,
                         id_to_token=to_token)

    # ------------------------------------------------------------------ use

    def __len__(self) -> int:
        return self.num_canonical

    def __call__(self, raw_ids):
        """Canonical ids of ``raw_ids`` (any shape; numpy, torch or Python ints), same kind back."""
        if isinstance(raw_ids, numbers.Integral) and not isinstance(raw_ids, bool):
            if not 0 <= raw_ids < self.vocab_size:
                raise IdOutOfRangeError(
                    f"token id {raw_ids} is outside the vocabulary [0, {self.vocab_size})")
            return int(self.map[raw_ids])
        if _is_torch(raw_ids):
            raw = _checked_tensor(raw_ids, self.vocab_size, "token id", "the vocabulary")
            return self.map_on(raw.device)[raw]
        return self.map[_as_index_array(raw_ids, self.vocab_size, "token id", "the vocabulary")]

    def map_on(self, device):
        """The map as an int64 torch tensor on ``device`` (copied there once, then kept)."""
        device = _torch().device(device)
        cached = self._device_maps.get(device)
        if cached is None:
            cached = _torch().from_numpy(self.map.copy()).to(device)
            self._device_maps[device] = cached
        return cached

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenCompressor) and np.array_equal(self.map, other.map)

    def __repr__(self) -> str:
        return f"TokenCompressor(vocab_size={self.vocab_size}, num_canonical={self.num_canonical})"

    def save(self, path) -> None:
        """Write the map to ``path`` (an ``.npz`` file; written whole or not at all)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, format=np.array(self.FORMAT), version=np.array(self.VERSION),
                         map=self.map, num_canonical=np.array(self.num_canonical))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path) -> TokenCompressor:
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                fmt, version = str(z["format"]), int(z["version"])
                mapping, num = z["map"], int(z["num_canonical"])
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{path} is not a saved TokenCompressor ({e})") from None
        if fmt != cls.FORMAT:
            raise ConfigError(f"{path} holds {fmt!r}, not a {cls.FORMAT}")
        if version > cls.VERSION:
            raise ConfigError(f"{path} was written by a newer version ({version}) of "
                              f"{cls.FORMAT}; this one reads up to {cls.VERSION}")
        comp = cls(mapping)
        if comp.num_canonical != num:
            raise ConfigError(f"{path}: map has {comp.num_canonical} canonical ids, "
                              f"header says {num}")
        return comp


def _load_tokenizer(name: str, kwargs: dict):
    if name.endswith(".json") and os.path.isfile(name):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("reading a tokenizer.json needs the `tokenizers` package: "
                              "pip install tokenizers") from None
        return Tokenizer.from_file(name)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError(f"loading the tokenizer {name!r} needs the `transformers` package: "
                          "pip install transformers (or pass a tokenizer object, or a "
                          "tokenizer.json path with `tokenizers` installed)") from None
    return AutoTokenizer.from_pretrained(name, **kwargs)


# =========================================================================== hashing


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin (the prime bases up to 41): exact for every n < 3.3 * 10**24."""
    n = int(n)
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x == 1 or x == n - 1:
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def table_primes(table_sizes: Sequence[int], heads: int, layer_ids: Sequence[int]) -> dict:
    """``{layer_id: [[prime per head] per order]}``, as the demo's
    ``calculate_vocab_size_across_layers`` (lines 181-186, 235-258): one set of taken primes
    across all layers; each order's search starts at its configured size (``find_next_prime``
    tries ``start + 1`` first, with ``start = size - 1``), each next head just past the last."""
    seen: set = set()
    out = {}
    for layer in layer_ids:
        per_order = []
        for size in table_sizes:
            candidate = int(size)
            row = []
            for _ in range(heads):
                while not is_prime(candidate) or candidate in seen:
                    candidate += 1
                seen.add(candidate)
                row.append(candidate)
                candidate += 1
            per_order.append(row)
        out[int(layer)] = per_order
    return out


def layer_multipliers(vocab_size: int, max_ngram: int, layer_id: int, seed: int) -> np.ndarray:
    """The demo's odd multipliers of one layer (lines 214-231), int64 [max_ngram]."""
    m_max = INT64_MAX // int(vocab_size)
    half_bound = max(1, m_max // 2)
    g = np.random.default_rng(int(seed + LAYER_SEED_STRIDE * int(layer_id)))
    r = g.integers(low=0, high=half_bound, size=(max_ngram,), dtype=np.int64)
    return r * 2 + 1


class NgramHasher:
    """Global row ids of one Engram layer's hashed n-gram tables.

    NgramHasher(vocab_size, max_ngram=3, heads=8, table_size=None, layer_id=0, seed=0,
                pad_id=0, layer_ids=None)

    - ``vocab_size``: the number of canonical token ids (``TokenCompressor.num_canonical``);
      tokens must lie in ``[0, vocab_size)``.
    - ``max_ngram``: orders 2 .. max_ngram are hashed (the demo: 3).
    - ``heads``: hash heads per order (the demo: 8).
    - ``table_size``: the configured size of each order's tables: one int for every order, or
      one per order (the demo's ``engram_vocab_size``); each table's size is the next free
      prime at or above it. Default: ``5 * vocab_size`` (the demo's default is 5 x its
      backbone vocabulary).
    - ``layer_id``, ``seed``: pick the multipliers (``default_rng(seed + 10007 * layer_id)``).
    - ``pad_id``: the canonical id that fills positions before the sequence.
    - ``layer_ids``: every Engram layer of the model, in the demo's order; primes are unique
      across all of them, so a layer's primes depend on the layers before it. Default:
      ``[layer_id]``.

    ``num_rows`` rows in all; ``primes`` and ``offsets`` are int64 [orders, heads]; the ids of a
    position are order-major: column ``(n - 2) * heads + k`` is order n, head k.
    """

    def __init__(self, vocab_size: int, max_ngram: int = 3, heads: int = 8,
                 table_size: int | Sequence[int] | None = None, layer_id: int = 0,
                 seed: int = 0, pad_id: int = 0, layer_ids: Iterable[int] | None = None):
        self.vocab_size = check_int("vocab_size", vocab_size, 1)
        self.max_ngram = check_int("max_ngram", max_ngram, 2)
        self.heads = check_int("heads", heads, 1)
        self.layer_id = check_int("layer_id", layer_id, 0)
        self.seed = check_int("seed", seed, 0)
        self.pad_id = check_int("pad_id", pad_id, 0)
        if self.pad_id >= self.vocab_size:
            raise ConfigError(f"pad_id {self.pad_id} is outside the vocabulary "
                              f"[0, {self.vocab_size}) (pass the canonical pad id)")
        self.orders = self.max_ngram - 1
        if table_size is None:
            sizes = [5 * self.vocab_size] * self.orders
        elif isinstance(table_size, (numbers.Integral, np.integer)) and not isinstance(
                table_size, bool):
            sizes = [table_size] * self.orders
        else:
            try:
                sizes = list(table_size)
            except TypeError:
                raise ConfigError(f"table_size must be an int or one int per order, "
                                  f"got {table_size!r}") from None
            if len(sizes) != self.orders:
                raise ConfigError(f"table_size lists {len(sizes)} sizes; orders 2..{self.max_ngram}"
                                  f" need {self.orders}")
        self.table_sizes = [check_int("table_size", s, 1) for s in sizes]
        if max(self.table_sizes) > 1 << 56:
            raise ConfigError(f"table_size {max(self.table_sizes)} is too large (at most 2**56)")
        if layer_ids is None:
            layers = [self.layer_id]
        else:
            layers = [check_int("layer_ids", x, 0) for x in layer_ids]
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layer_ids repeats a layer: {layers}")
        if self.layer_id not in layers:
            raise ConfigError(f"layer_id {self.layer_id} is not in layer_ids {layers}")
        self.layer_ids = layers

        self.multipliers = layer_multipliers(self.vocab_size, self.max_ngram, self.layer_id,
                                             self.seed)
        primes = np.array(table_primes(self.table_sizes, self.heads, layers)[self.layer_id],
                          dtype=np.int64)
        flat = primes.reshape(-1)
        offsets = np.concatenate(([0], np.cumsum(flat)[:-1])).astype(np.int64)
        total = sum(int(p) for p in flat)
        if total > INT64_MAX:
            raise ConfigError(f"the tables hold {total} rows, more than int64 can address")
        self.primes = primes
        self.offsets = offsets.reshape(primes.shape)
        self.num_rows = total
        self.ids_per_token = self.orders * self.heads
        for a in (self.multipliers, self.primes, self.offsets):
            a.setflags(write=False)
        self._device_constants = {}    # torch device -> (multipliers, primes, offsets) there

    # ------------------------------------------------------------------ hashing

    def __call__(self, tokens):
        """``[batch, seq]`` (or ``[seq]``) canonical ids -> ``[batch, seq, ids_per_token]``
        int64 global row ids in ``[0, num_rows)``; numpy or torch, the same kind back (a tensor
        is hashed on its own device)."""
        if _is_torch(tokens):
            x = _checked_tensor(tokens, self.vocab_size, "token id", "the canonical vocabulary")
            if x.dim() not in (1, 2):
                raise RowShapeError(f"tokens must be [batch, seq] or [seq], got shape "
                                    f"{tuple(x.shape)}")
            out = self._torch_ids(x.reshape(1, -1) if x.dim() == 1 else x)
            return out[0] if x.dim() == 1 else out
        arr = _as_index_array(tokens, self.vocab_size, "token id", "the canonical vocabulary")
        if arr.ndim not in (1, 2):
            raise RowShapeError(f"tokens must be [batch, seq] or [seq], got shape {arr.shape}")
        flat = arr.ndim == 1
        x = np.ascontiguousarray(arr.reshape(1, -1) if flat else arr)
        out = np.empty(x.shape + (self.ids_per_token,), dtype=np.int64)
        ngram_ids(x, self.multipliers, self.primes, self.offsets, self.pad_id, out)
        return out[0] if flat else out

    def step(self, last_tokens):
        """Streaming decode: ``[batch, max_ngram]`` (or ``[max_ngram]``) most recent tokens,
        newest last, -> ``[batch, ids_per_token]``; equal to the last position of ``self`` over
        the whole sequence. Left-pad with ``pad_id`` while fewer than max_ngram tokens exist."""
        if _is_torch(last_tokens):
            x = _checked_tensor(last_tokens, self.vocab_size, "token id",
                                "the canonical vocabulary")
            if x.dim() not in (1, 2) or x.shape[-1] != self.max_ngram:
                raise RowShapeError(f"step takes the last max_ngram={self.max_ngram} tokens as "
                                    f"[batch, {self.max_ngram}] or [{self.max_ngram}], got shape "
                                    f"{tuple(x.shape)}")
            # the window holds every token its last position reads: no pad is ever used
            out = self._torch_ids(x.reshape(1, -1) if x.dim() == 1 else x)[:, -1]
            return out[0] if x.dim() == 1 else out
        arr = _as_index_array(last_tokens, self.vocab_size, "token id",
                              "the canonical vocabulary")
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.max_ngram:
            raise RowShapeError(f"step takes the last max_ngram={self.max_ngram} tokens as "
                                f"[batch, {self.max_ngram}] or [{self.max_ngram}], got shape "
                                f"{arr.shape}")
        flat = arr.ndim == 1
        x = np.ascontiguousarray(arr.reshape(1, -1) if flat else arr)
        out = np.empty((x.shape[0], self.ids_per_token), dtype=np.int64)
        ngram_step(x, self.multipliers, self.primes, self.offsets, out)
        return out[0] if flat else out

    def _torch_ids(self, x):
        """The kernel's formula in torch ops on ``x``'s device; ``x``: int64 [B, T], checked.

        The demo's form: order n mixes ``x`` shifted right by 0 .. n-1 positions (the pad id
        filling in from the left). Products never exceed int64 (see ``kernels/ngram.py``), so
        ``mix`` is never negative and torch's floor ``%`` equals numpy's and numba's."""
        torch = _torch()
        mult, primes, offsets = self._constants_on(x.device)
        n_batch, n_pos = x.shape
        # the pad id as a tensor fill, never a float (F.pad's value would round ids > 2**53)
        padded = torch.cat([torch.full((n_batch, self.orders), self.pad_id, dtype=torch.int64,
                                       device=x.device), x], dim=1)
        mix = x * mult[0]
        columns = []
        for k in range(1, self.orders + 1):
            shifted = padded[:, self.orders - k:self.orders - k + n_pos]
            mix = mix ^ (shifted * mult[k])
            columns.append(mix.unsqueeze(-1) % primes[k - 1] + offsets[k - 1])
        return torch.cat(columns, dim=-1)

    def _constants_on(self, device):
        found = self._device_constants.get(device)
        if found is None:
            torch = _torch()
            found = tuple(torch.from_numpy(a.copy()).to(device)
                          for a in (self.multipliers, self.primes, self.offsets))
            self._device_constants[device] = found
        return found

    # ------------------------------------------------------------------ config

    def get_config(self) -> dict:
        """The constructor's arguments (JSON-serialisable), plus ``multipliers`` and
        ``num_rows``, which ``from_config`` checks: a numpy whose generator stream changed would
        otherwise silently map every n-gram to other rows."""
        return {
            "vocab_size": self.vocab_size, "max_ngram": self.max_ngram, "heads": self.heads,
            "table_size": list(self.table_sizes), "layer_id": self.layer_id, "seed": self.seed,
            "pad_id": self.pad_id, "layer_ids": list(self.layer_ids),
            "multipliers": [int(m) for m in self.multipliers], "num_rows": self.num_rows,
        }

    @classmethod
    def from_config(cls, config: dict) -> NgramHasher:
        if not isinstance(config, dict):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        config = dict(config)
        expect_mult = config.pop("multipliers", None)
        expect_rows = config.pop("num_rows", None)
        known = {"vocab_size", "max_ngram", "heads", "table_size", "layer_id", "seed",
                 "pad_id", "layer_ids"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown NgramHasher config keys: {unknown}")
        if "vocab_size" not in config:
            raise ConfigError("NgramHasher config needs vocab_size")
        hasher = cls(**config)
        if expect_mult is not None and [int(m) for m in expect_mult] != [
                int(m) for m in hasher.multipliers]:
            raise ConfigError(
                "the multipliers drawn here differ from the saved ones (numpy's default_rng "
                f"stream changed?): saved {list(expect_mult)}, drawn "
                f"{[int(m) for m in hasher.multipliers]}; the row ids would not match the table")
        if expect_rows is not None and int(expect_rows) != hasher.num_rows:
            raise ConfigError(f"the tables hold {hasher.num_rows} rows here, the saved config "
                              f"says {expect_rows}")
        return hasher

    def __eq__(self, other) -> bool:
        return isinstance(other, NgramHasher) and self.get_config() == other.get_config()

    def __repr__(self) -> str:
        return (f"NgramHasher(vocab_size={self.vocab_size}, max_ngram={self.max_ngram}, "
                f"heads={self.heads}, table_size={self.table_sizes}, layer_id={self.layer_id}, "
                f"seed={self.seed}, pad_id={self.pad_id}, layer_ids={self.layer_ids}; "
                f"num_rows={self.num_rows})")


# =========================================================================== the public edge


def _torch():
    from .tiers._torch import torch_module
    return torch_module()


def _checked_tensor(ids, upper: int, what: str, where: str):
    """``ids`` (a torch tensor) as int64 on its own device, each checked in ``[0, upper)``.

    The check reads back two numbers (the minimum and the maximum), never the ids."""
    torch = _torch()
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise IdTypeError(f"{what}s must be integers, got a tensor of {ids.dtype}")
    x = ids.detach()
    if x.dtype == torch.uint64:
        # above INT64_MAX would wrap to negative ids; so would nothing valid
        x = x.to(torch.int64)
        big = x < 0
        if x.numel() and bool(big.any()):
            k = int(torch.nonzero(big.reshape(-1))[0])
            raise IdOutOfRangeError(f"{what} {ids.reshape(-1)[k].item()} at position {k} is "
                                    f"outside {where} [0, {upper})")
    x = x.to(torch.int64)
    if x.numel():
        lo, hi = (int(v) for v in torch.stack(torch.aminmax(x)).tolist())
        if lo < 0 or hi >= upper:
            flat = x.reshape(-1)
            k = int(torch.nonzero((flat < 0) | (flat >= upper))[0])
            raise IdOutOfRangeError(f"{what} {int(flat[k])} at position {k} is outside "
                                    f"{where} [0, {upper})")
    return x


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _as_index_array(ids, upper: int, what: str, where: str):
    """``ids`` (anything but a torch tensor) as an int64 numpy array, each in ``[0, upper)``."""
    try:
        arr = np.asarray(ids)
    except ValueError:
        raise IdTypeError(f"{what}s must form a rectangular array of integers") from None
    if arr.dtype == object or (arr.dtype.kind == "f" and not isinstance(ids, np.ndarray)):
        if arr.dtype.kind == "f" and arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            flat = np.array(ids, dtype=object).reshape(-1)
            for k, value in enumerate(flat):
                if isinstance(value, (bool, np.bool_)) or not isinstance(
                        value, (numbers.Integral, np.integer)):
                    raise IdTypeError(f"{what}s must be integers, got {type(value).__name__} "
                                      f"at position {k}")
                if not 0 <= value < upper:
                    raise IdOutOfRangeError(f"{what} {value} at position {k} is outside "
                                            f"{where} [0, {upper})")
            arr = np.array(ids, dtype=object).astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise IdTypeError(f"{what}s must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > INT64_MAX:
        k = int(np.argmax(arr.reshape(-1) > INT64_MAX))
        raise IdOutOfRangeError(f"{what} {arr.reshape(-1)[k]} at position {k} is outside "
                                f"{where} [0, {upper})")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    bad = first_out_of_range(out.reshape(-1), upper)
    if bad >= 0:
        raise IdOutOfRangeError(f"{what} {out.reshape(-1)[bad]} at position {bad} is outside "
                                f"{where} [0, {upper})")
    return out
