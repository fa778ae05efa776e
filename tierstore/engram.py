"""DeepSeek Engram's conditional memory block (arXiv 2601.07372) with its table in a Store.

Import it explicitly (``import tierstore.engram``, or ``from tierstore.torch import
EngramMemory``, which re-exports it); ``import tierstore`` alone never imports torch.

    from tierstore.engram import EngramMemory
    block = EngramMemory(store, hasher, hidden_dim, optimizer=RowAdagrad(lr=0.05))
    out = block(hidden, tokens)            # hidden + engram(hidden, tokens)

The table is read through a :class:`tierstore.torch.TieredEmbedding`; this module holds
the block's dense parts (projections, gate, short convolution) and its token hashing.
"""
from __future__ import annotations

import math

import numpy as np

from .tiers._torch import torch_module

torch = torch_module()
nn = torch.nn
F = torch.nn.functional

from .errors import CheckpointError, ConfigError, TensorShapeError
from .optim import RowOptimizer
from .torch import TieredEmbedding, batch_key, same_batch, zero_grad_all

__all__ = ["EngramMemory", "RMSNorm", "ShortConv", "prefetch_all"]

MAX_HASHED_AHEAD = 4      # token batches hashed by prefetch a block keeps for its coming forwards


def prefetch_all(model: nn.Module, tokens):
    """``prefetch(tokens)`` on every EngramMemory in ``model``; the handles."""
    return [m.prefetch(tokens) for m in model.modules() if isinstance(m, EngramMemory)]


def _as_tokens(tokens):
    """Token ids as a tensor: a tensor as given (the same object, on its device: prefetch and
    forward know it again by identity), anything else on the CPU."""
    if torch.is_tensor(tokens):
        return tokens
    return torch.as_tensor(np.asarray(tokens, dtype=np.int64))


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension (``nn.RMSNorm`` is torch >= 2.4)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) \
            * self.weight


class ShortConv(nn.Module):
    """RMSNorm, then a depthwise causal convolution (``kernel_size`` taps spaced
    ``dilation`` apart, the latest at ``t``), then SiLU; on ``(batch, seq, dim)``."""

    def __init__(self, dim: int, kernel_size: int = 4, dilation: int = 1, eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False, dilation=dilation,
                              padding=(kernel_size - 1) * dilation)

    def forward(self, x):
        t = x.shape[1]
        y = self.conv(self.norm(x).transpose(1, 2))[..., :t]
        return F.silu(y).transpose(1, 2)


class EngramMemory(nn.Module):
    """DeepSeek Engram's conditional memory block (arXiv 2601.07372), its table in a Store.

    ``forward(hidden, tokens)``: ``hidden`` (batch, seq, hidden_dim), ``tokens``
    (batch, seq) integer ids (raw ids when ``compressor`` is given, else the
    hasher's canonical ids) -> ``hidden + engram(hidden, tokens)``. ``store`` is a
    :class:`tierstore.Store` (wrapped in a :class:`TieredEmbedding` with ``optimizer``)
    or a ready table module (a ``TieredEmbedding``, or an ``nn.Embedding`` for an
    all-in-memory baseline). Per position:

    1. ``hasher(tokens)``: the suffix n-grams of orders 2..N, each hashed by K
       heads into its own prime-sized table -> ``(N-1)*K`` global row ids;
    2. those rows, looked up in the store through a :class:`TieredEmbedding`,
       concatenated into ``e`` of width ``(N-1)*K*store.dim``;
    3. ``k = W_k e``, ``v = W_v e``; gate ``g = sigmoid(ssqrt(<RMSNorm(k), RMSNorm(h)> /
       sqrt(hidden_dim)))`` with ``ssqrt(x) = sign(x) sqrt(|x|)``;
    4. ``u = g * v``; ``out = u + SiLU(conv(RMSNorm(u)))``, a depthwise causal
       convolution of ``kernel_size`` taps at dilation N (the max n-gram order);
    5. the residual: ``hidden + out`` (``residual=False`` returns ``out`` alone).

    Train the table with ``self.table.step()`` (or :func:`step_all`); the dense
    projections are ordinary parameters. ``prefetch(tokens)`` hashes a coming
    batch and starts its row reads in the background.
    """

    def __init__(self, store, hasher, hidden_dim: int, *, optimizer: RowOptimizer | None = None,
                 compressor=None, kernel_size: int = 4, dilation: int | None = None,
                 residual: bool = True, eps: float = 1e-6):
        super().__init__()
        if isinstance(store, nn.Module):        # a ready table: a TieredEmbedding or nn.Embedding
            if optimizer is not None:
                raise ConfigError("give the optimizer to the TieredEmbedding itself")
            self.table = store
        else:
            self.table = TieredEmbedding(store, optimizer=optimizer)
        num_rows, row_dim = self.table.num_embeddings, self.table.embedding_dim
        if num_rows < hasher.num_rows:
            raise ConfigError(f"the hasher addresses {hasher.num_rows} rows; the table has "
                             f"only {num_rows}")
        self.hasher = hasher
        self.compressor = compressor
        self.hidden_dim = hidden_dim
        self.residual = residual
        self.memory_dim = hasher.ids_per_token * row_dim
        self.key_proj = nn.Linear(self.memory_dim, hidden_dim)
        self.value_proj = nn.Linear(self.memory_dim, hidden_dim)
        self.key_norm = RMSNorm(hidden_dim, eps)
        self.query_norm = RMSNorm(hidden_dim, eps)
        self.short_conv = ShortConv(hidden_dim, kernel_size, dilation or int(hasher.max_ngram))
        self._hashed_ahead = []   # (batch_key(tokens), ids) hashed by prefetch, for the coming forwards

    @property
    def store(self):
        """The table's store (None when the table is a plain ``nn.Embedding``)."""
        return getattr(self.table, "store", None)

    def row_ids(self, tokens):
        """Global row ids ``(batch, seq, ids_per_token)`` of ``tokens``, an int64 tensor hashed
        where the tokens are: CUDA tokens give CUDA ids, and never pass through the host
        (arrays and lists are hashed on the CPU). Tokens ``prefetch`` hashed give its ids."""
        tokens = _as_tokens(tokens)
        for k, (key, ids) in enumerate(self._hashed_ahead):
            if same_batch(key, tokens):
                del self._hashed_ahead[k]        # hashed by prefetch already
                return ids
        canonical = tokens if self.compressor is None else self.compressor(tokens)
        ids = self.hasher(canonical)
        return ids if torch.is_tensor(ids) else torch.as_tensor(np.asarray(ids, dtype=np.int64))

    def prefetch(self, tokens):
        """Hash ``tokens`` and start fetching their rows in the background (see
        :meth:`TieredEmbedding.prefetch`); returns the handle (None when the table has no
        ``prefetch``, as a plain ``nn.Embedding``). Call it at forward entry, or earlier: the
        rows are on their way while the blocks before this one run. The forward of the same
        tokens (on a GPU: the same tensor, unwritten since) reuses the ids hashed here."""
        prefetch = getattr(self.table, "prefetch", None)
        if prefetch is None:
            return None
        tokens = _as_tokens(tokens)
        ids = self.row_ids(tokens)
        self._hashed_ahead.append((batch_key(tokens), ids))
        del self._hashed_ahead[:-MAX_HASHED_AHEAD]
        return prefetch(ids)

    def memory(self, hidden, tokens):
        """The Engram block's output (without the residual)."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.hidden_dim:
            raise TensorShapeError(f"hidden must be (batch, seq, {self.hidden_dim}), got {tuple(hidden.shape)}")
        if tuple(tokens.shape) != tuple(hidden.shape[:2]):
            raise TensorShapeError(f"tokens {tuple(tokens.shape)} do not match hidden {tuple(hidden.shape[:2])}")
        ids = self.row_ids(tokens)
        if isinstance(self.table, nn.Embedding):
            ids = ids.to(self.table.weight.device)
        rows = self.table(ids)                                  # (B, T, ids_per_token, d)
        e = rows.flatten(-2).to(hidden.dtype)
        key = self.key_norm(self.key_proj(e))
        query = self.query_norm(hidden)
        gate = (key * query).sum(-1, keepdim=True) / math.sqrt(self.hidden_dim)
        gate = torch.sigmoid(gate.sign() * gate.abs().clamp_min(1e-6).sqrt())
        value = gate * self.value_proj(e)
        return value + self.short_conv(value)

    def forward(self, hidden, tokens):
        out = self.memory(hidden, tokens)
        return hidden + out if self.residual else out

    def step(self) -> int:
        """Update the table's touched rows (:meth:`TieredEmbedding.step`)."""
        return self.table.step()

    def zero_grad(self, set_to_none: bool = True):
        zero_grad_all(self)
        super().zero_grad(set_to_none)

    def get_extra_state(self):
        get = getattr(self.hasher, "get_config", None)
        return {"hasher": get() if get is not None else None}

    def set_extra_state(self, state):
        config = (state or {}).get("hasher")
        get = getattr(self.hasher, "get_config", None)
        if config is None or get is None or repr(get()) == repr(config):
            return
        hasher = type(self.hasher).from_config(config)
        if hasher.ids_per_token != self.hasher.ids_per_token or hasher.num_rows > self.table.num_embeddings:
            raise CheckpointError("the checkpoint's hasher does not fit this block's table")
        self.hasher = hasher
