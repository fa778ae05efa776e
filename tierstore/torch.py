"""PyTorch adapter: a store-backed ``nn.Embedding`` (DeepSeek's Engram block is in :mod:`tierstore.engram`).

Import it explicitly (``import tierstore.torch``); ``import tierstore`` alone
never imports torch.

    import tierstore as ts
    from tierstore.torch import TieredEmbedding, step_all, zero_grad_all
    from tierstore.optim import RowAdagrad

    store = ts.create("table.ts", num_rows=10_000_000, dim=64, config=ts.StoreConfig(...))
    emb = TieredEmbedding(store, optimizer=RowAdagrad(lr=0.05))
    dense_opt = torch.optim.AdamW(model.parameters())   # the table has no nn.Parameter

    for ids, next_ids in batches:
        emb.prefetch(next_ids)          # disk reads for the next batch, in the background
        loss = loss_fn(model(ids))
        loss.backward()
        dense_opt.step(); emb.step()    # emb.step(): row-wise update, written back to the store
        dense_opt.zero_grad(); emb.zero_grad()

**Gradient path.** The table is not an ``nn.Parameter``. ``forward`` looks the
ids up in the store, moves the rows to the module's device and dtype and
returns them as a fresh leaf tensor that requires grad; a hook on that leaf
keeps its gradient together with the ids and the rows as read. ``step()``
concatenates what every backward since the last step produced, sums the
gradients of duplicate ids (as ``nn.Embedding``'s backward does), hands the
unique ids, their rows and summed gradients to the row-wise optimizer
(:mod:`tierstore.optim`) and writes the new rows with ``store.update``. The
update is applied to the rows as read in ``forward``: do not write those rows
through the store yourself between ``forward`` and ``step``. ``step()`` and
``zero_grad()`` both clear what was kept (forward passes that saw no backward
are dropped then too). ``step_all(model)`` / ``zero_grad_all(model)`` call them
on every ``TieredEmbedding`` inside a model (``nn.Module.zero_grad`` does not
reach them).

**Checkpoints.** ``state_dict()`` flushes the store and the optimizer state and
records the store's path, config and the optimizer's config (never the rows):
the checkpoint names the live store, it is not a copy of it.
``load_state_dict`` reopens the recorded store (when it is not the one already
open); ``TieredEmbedding.from_state_dict(sd)`` builds a module from it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiers._torch import torch_dtype, torch_module

torch = torch_module()
nn = torch.nn

from . import api
from .config import StoreConfig
from .errors import CheckpointError, ConfigError, IdTypeError, NoOptimizerError, OptimizerTypeError
from .optim import RowAdagrad, RowOptimizer, RowSGD, optimizer_from_config

__all__ = [
    "RowAdagrad",
    "RowSGD",
    "TieredEmbedding",
    "config_to_dict",
    "step_all",
    "zero_grad_all",
]

_STATE_FORMAT = "tierstore.torch.TieredEmbedding/1"
MAX_LOOKUPS_AHEAD = 4     # prefetched lookups a module keeps for its coming forwards


def batch_key(batch):
    """What a module keeps to know a batch of ids (a tensor) again: on the CPU a copy; on a GPU
    the tensor itself and its version (no copy, and nothing read back to the host)."""
    if batch.device.type == "cpu":
        return batch.detach().clone(), None
    return batch, _version(batch)


def same_batch(key, batch) -> bool:
    """Whether ``batch`` holds what the batch behind ``key`` held when the key was made. On a
    GPU the very tensor, unwritten since, matches at no cost; an equal other tensor is compared
    there (a synchronisation, no copy)."""
    kept, version = key
    if version is None:
        return batch.device.type == "cpu" and kept.shape == batch.shape and torch.equal(kept, batch)
    if _version(kept) != version:                  # written in place since
        return False
    return kept is batch or (kept.device == batch.device and kept.shape == batch.shape
                             and torch.equal(kept, batch))


def _version(t) -> int:
    # inference tensors keep no version counter (and cannot be written outside inference mode)
    return -1 if t.is_inference() else t._version


def config_to_dict(config: StoreConfig) -> dict:
    """A StoreConfig as plain data (``StoreConfig(**d)`` rebuilds it)."""
    return config.to_dict()


class _Record:
    """One forward call's ids and rows, and the gradient its backward produced."""

    __slots__ = ("grad", "ids", "rows")

    def __init__(self, ids, rows):
        self.ids = ids        # int64, flat, CPU
        self.rows = rows      # (n, dim), the store's dtype, as read
        self.grad = None      # (n, dim), the output's dtype and device

    def add(self, grad):
        grad = grad.detach().reshape(self.rows.shape)
        self.grad = grad if self.grad is None else self.grad + grad


class TieredEmbedding(nn.Module):
    """A drop-in for ``nn.Embedding`` whose table lives in a :class:`tierstore.Store`.

    ``forward(ids)``: integer tensor (or array) of any shape -> rows of shape
    ``ids.shape + (embedding_dim,)`` on the module's device, in the module's
    dtype (the store's dtype until ``.to(dtype)``/``.half()``/``.float()``).
    ``optimizer``: a :class:`~tierstore.optim.RowOptimizer` used by :meth:`step`
    (``None``: the table is frozen and forward keeps nothing; ``requires_grad_(True)``
    keeps row gradients anyway, for :meth:`row_gradients`). ``padding_idx``: gradients of that row
    are ignored, as in ``nn.Embedding``. ``owns_store``: close the store with
    the module (set for stores the module opened itself).
    """

    def __init__(self, store, optimizer: RowOptimizer | None = None, *, padding_idx: int | None = None,
                 dtype=None, owns_store: bool = False):
        super().__init__()
        if optimizer is not None and not isinstance(optimizer, RowOptimizer):
            raise OptimizerTypeError(f"optimizer must be a tierstore.optim.RowOptimizer, got "
                            f"{type(optimizer).__name__} (torch optimizers cannot see the table)")
        self.store = store
        self.optimizer = optimizer
        self.owns_store = owns_store
        self.trainable = optimizer is not None   # requires_grad_(True) keeps gradients anyway
        if padding_idx is not None:
            if padding_idx < 0:
                padding_idx += store.num_rows
            if not 0 <= padding_idx < store.num_rows:
                raise ConfigError(f"padding_idx must be within num_embeddings ({store.num_rows})")
        self.padding_idx = padding_idx
        # an empty buffer that follows .to(device) / .half(): the output's device and dtype
        self.register_buffer("_probe", torch.empty(0, dtype=dtype or torch_dtype(store.dtype)),
                             persistent=False)
        self._records: list[_Record] = []
        self._ahead = []      # (batch_key(ids), handle) of lookups started by prefetch, oldest first
        if optimizer is not None:
            optimizer.bind(store)

    # -- nn.Embedding's face ---------------------------------------------------------------
    @property
    def num_embeddings(self) -> int:
        return self.store.num_rows

    @property
    def embedding_dim(self) -> int:
        return self.store.dim

    @property
    def device(self):
        return self._probe.device

    @property
    def dtype(self):
        return self._probe.dtype

    def extra_repr(self):
        extra = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}{extra}, store={str(self.store.path)!r}, "
                f"optimizer={self.optimizer!r}")

    def requires_grad_(self, requires_grad: bool = True):
        self.trainable = bool(requires_grad)
        return super().requires_grad_(requires_grad)

    def forward(self, ids):
        if torch.is_tensor(ids) and ids.is_floating_point():
            raise IdTypeError(f"ids must be integers, got a tensor of {ids.dtype}")
        ids = ids if torch.is_tensor(ids) else torch.as_tensor(np.asarray(ids))
        raw = self._prefetched_rows(ids)
        if raw is None:
            raw = self.store.lookup(ids)
        out = raw.to(device=self._probe.device, dtype=self._probe.dtype)
        if not (self.trainable and torch.is_grad_enabled()):
            return out
        record = _Record(ids.detach().reshape(-1).to("cpu", torch.int64),
                         raw.detach().reshape(-1, self.embedding_dim))
        out = out.detach().requires_grad_(True)
        out.register_hook(record.add)
        self._records.append(record)
        return out

    # -- training ----------------------------------------------------------------------------
    def row_gradients(self):
        """``(ids, rows, grads)`` of what backward produced since the last step, duplicates
        summed: unique ids (sorted, CPU int64), their rows as read and summed gradients (both
        on the gradients' device, float32 or wider). ``None`` if nothing has a gradient."""
        done = [r for r in self._records if r.grad is not None]
        if not done:
            return None
        grads = torch.cat([r.grad for r in done])
        compute = torch.promote_types(torch.promote_types(grads.dtype, torch.float32),
                                      torch_dtype(self.store.dtype))
        dev = grads.device
        ids = torch.cat([r.ids for r in done])
        rows = torch.cat([r.rows.to(dev) for r in done])
        uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        inverse = inverse.to(dev)
        summed = torch.zeros((len(uniq), self.embedding_dim), dtype=compute, device=dev)
        summed.index_add_(0, inverse, grads.to(compute))
        # the row of each unique id: its first occurrence (all occurrences hold the same value)
        first = torch.full((len(uniq),), len(ids), dtype=torch.int64, device=dev)
        first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=dev), reduce="amin")
        rows = rows[first].to(compute)
        if self.padding_idx is not None:
            keep = uniq != self.padding_idx
            uniq, rows, summed = uniq[keep], rows[keep.to(dev)], summed[keep.to(dev)]
        return uniq, rows, summed

    @torch.no_grad()
    def step(self):
        """Apply the row optimizer to the rows touched since the last step and store them.

        Returns the number of rows written. Clears the kept gradients."""
        if self.optimizer is None:
            raise NoOptimizerError("this TieredEmbedding has no optimizer: pass optimizer=RowSGD(...) "
                               "or RowAdagrad(...)")
        try:
            found = self.row_gradients()
            ids, rows, grads = (None, None, None) if found is None else found
            # on a sharded store, a collective every rank joins, even one without gradients
            return self.store.apply_gradients(ids, grads, self.optimizer, rows=rows)
        finally:
            self._records = []

    def zero_grad(self, set_to_none: bool = True):
        """Drop the kept row gradients (and zero any parameters' grads, as nn.Module does)."""
        self._records = []
        super().zero_grad(set_to_none)

    @property
    def pending_rows(self) -> int:
        """Looked-up rows kept for the next step (with or without a gradient yet)."""
        return sum(len(r.ids) for r in self._records)

    def prefetch(self, ids):
        """Start fetching the rows of a coming ``forward(ids)`` in the background; returns a handle
        (``wait()`` blocks until done).

        A frozen table (inference) runs the whole lookup ahead (:meth:`Store.lookup_async`:
        planning, disk reads, and on CUDA the copy and gather on the store's stream), and the
        next ``forward`` of equal ids takes its rows. A trained table only reads the disk ahead
        (:meth:`Store.prefetch`): the step before that forward may rewrite the rows."""
        lookup_async = getattr(self.store, "lookup_async", None)
        if self.trainable or lookup_async is None:
            return self.store.prefetch(ids)
        ids = ids if torch.is_tensor(ids) else torch.as_tensor(np.asarray(ids))
        handle = lookup_async(ids)
        self._ahead.append((batch_key(ids), handle))
        del self._ahead[:-MAX_LOOKUPS_AHEAD]
        return handle

    def _prefetched_rows(self, ids):
        """The rows of a lookup started by :meth:`prefetch` for these ids, unless an update
        made them stale; None if there is none."""
        for k, (key, handle) in enumerate(self._ahead):
            if same_batch(key, ids):
                del self._ahead[k]
                if handle.stale:
                    handle.wait_quietly()
                    return None
                try:
                    return handle.result()
                except Exception:  # noqa: BLE001  the lookup again raises it, where it belongs
                    return None
        return None

    def flush(self):
        """Make the table and the optimizer state durable."""
        if not self.store.readonly:
            self.store.flush()
        if self.optimizer is not None:
            self.optimizer.flush()

    def close(self):
        """Flush; close the optimizer state, and the store if the module opened it."""
        self._records = []
        if self.optimizer is not None:
            self.optimizer.close()
        if self.owns_store:
            self.store.close()
        elif not self.store.readonly and not self.store.closed:
            self.store.flush()

    # -- checkpoints -------------------------------------------------------------------------
    def get_extra_state(self):
        self.flush()
        return {"format": _STATE_FORMAT, "path": str(Path(self.store.path).resolve()),
                "config": config_to_dict(self.store.config), "num_rows": self.store.num_rows,
                "dim": self.store.dim, "dtype": np.dtype(self.store.dtype).name,
                "readonly": bool(self.store.readonly), "padding_idx": self.padding_idx,
                "optimizer": None if self.optimizer is None else self.optimizer.get_config()}

    def set_extra_state(self, state):
        _check_state(state)
        if (state["num_rows"], state["dim"]) != (self.store.num_rows, self.store.dim):
            raise CheckpointError(f"checkpoint table is {state['num_rows']}x{state['dim']}, this module's "
                             f"is {self.store.num_rows}x{self.store.dim}")
        same = Path(state["path"]).resolve() == Path(self.store.path).resolve()
        if not same:
            store = _open_recorded(state)
            if self.optimizer is not None:
                self.optimizer.close()
                self.optimizer = None
            if self.owns_store:
                self.store.close()
            self.store, self.owns_store = store, True
        self.padding_idx = state.get("padding_idx")
        self._records = []
        if state.get("optimizer") is not None:
            recorded = optimizer_from_config(state["optimizer"])
            if self.optimizer is None or self.optimizer.get_config() != recorded.get_config():
                if self.optimizer is not None:
                    self.optimizer.close()
                self.optimizer = recorded
            self.optimizer.bind(self.store)

    @classmethod
    def from_state_dict(cls, state_dict, prefix: str = "", **kwargs):
        """A module on the store a ``state_dict()`` recorded (the module owns that store).

        Close the store the checkpoint came from first: a store has one writer at a time."""
        state = state_dict.get(prefix + "_extra_state", state_dict)
        _check_state(state)
        store = _open_recorded(state)
        try:
            module = cls(store, optimizer=optimizer_from_config(state.get("optimizer")),
                         padding_idx=state.get("padding_idx"), owns_store=True, **kwargs)
        except BaseException:
            store.close()
            raise
        return module

    @classmethod
    def open(cls, path, config: StoreConfig | None = None, optimizer: RowOptimizer | None = None,
             readonly: bool = False, **kwargs):
        """Open the store at ``path`` and wrap it (the module owns the store)."""
        store = api.open(path, config, readonly=readonly)
        try:
            return cls(store, optimizer=optimizer, owns_store=True, **kwargs)
        except BaseException:
            store.close()
            raise


def _check_state(state):
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise CheckpointError("not a TieredEmbedding state (expected a dict with "
                         f"format={_STATE_FORMAT!r})")


def _open_recorded(state):
    config = StoreConfig.from_dict(state["config"])
    return api.open(state["path"], config, readonly=state.get("readonly", False),
                    dim=state["dim"], dtype=state["dtype"])


def tiered_modules(model: nn.Module):
    """Every TieredEmbedding inside ``model`` (itself included)."""
    return [m for m in model.modules() if isinstance(m, TieredEmbedding)]


def step_all(model: nn.Module) -> int:
    """``step()`` every TieredEmbedding in ``model`` that has an optimizer (and clear the
    others' kept gradients); returns the number of rows written."""
    written = 0
    for m in tiered_modules(model):
        if m.optimizer is not None:
            written += m.step()
        else:
            m._records = []
    return written


def zero_grad_all(model: nn.Module):
    """Drop the kept row gradients of every TieredEmbedding in ``model``."""
    for m in tiered_modules(model):
        m._records = []


def __getattr__(name):
    # EngramMemory and prefetch_all live in tierstore.engram, which builds on this module:
    # re-exported on first use, so importing either module first works
    if name in ("EngramMemory", "prefetch_all"):
        from . import engram
        return getattr(engram, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
