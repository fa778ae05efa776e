"""Row-wise optimizers for tables served by a Store (used by ``tierstore.torch``).

A row-wise optimizer turns the summed gradient of each touched row into that
row's new value; :class:`tierstore.torch.TieredEmbedding` then writes the new
rows back with ``store.update``. Rows no batch touched are never read or
written, so an update costs in proportion to the batch, not the table.

- :class:`RowSGD`: ``row -= lr * grad``.
- :class:`RowAdagrad`: row-wise Adagrad as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``
  defines it, one accumulator per row::

      state[row] += mean(grad ** 2)
      row -= lr * grad / (sqrt(state[row]) + eps)

  The accumulators live in a sibling store (``dim=1``, float32) at
  ``f"{store.path}.adagrad"`` unless ``state_path`` says otherwise, so the
  state scales with the table and pages through the same three tiers. A
  sibling store is created on first use with every accumulator at
  ``initial_accumulator_value`` (a constant init writes nothing), and reopened
  when it exists: state survives a restart. Replacing the table (``create``,
  ``import`` or ``salvage`` with overwrite) deletes the default sibling with it; with
  a ``state_path`` of your own, pass ``reset_state=True`` when the table was created afresh.

Both work on torch tensors (torch is imported on first use); ``apply`` takes
unique row ids (numpy int64), the rows as they were read and their summed
gradients, and returns the new rows.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

from .errors import ConfigError, OptimizerStateError, UnboundOptimizerError
from .tiers._torch import torch_module

__all__ = ["RowAdagrad", "RowOptimizer", "RowSGD", "default_state_config", "optimizer_from_config"]

# the default sibling of a table that holds its optimizer state; replacing the table
# (create/import/salvage with overwrite) replaces this too
STATE_SUFFIX = ".adagrad"


def _check_number(name, value, minimum=0.0, strict=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


class RowOptimizer:
    """Base class: ``apply(ids, rows, grads) -> new rows``, one call per step."""

    def bind(self, store) -> None:
        """Attach to the table's store (called by the module before the first step)."""

    def apply(self, ids: np.ndarray, rows, grads):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def commit(self) -> None:
        """Write the state the last ``apply`` computed; called after the new rows are stored."""

    def flush(self) -> None:
        """Make optimizer state durable (no-op for stateless optimizers)."""

    def close(self) -> None:
        """Release optimizer state (no-op for stateless optimizers)."""

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({params})"


class RowSGD(RowOptimizer):
    """Plain SGD on the touched rows: ``row -= lr * grad``."""

    def __init__(self, lr: float = 0.01):
        self.lr = _check_number("lr", lr)

    def apply(self, ids, rows, grads):
        return rows - self.lr * grads

    def get_config(self):
        return {"type": "RowSGD", "lr": self.lr}


class RowAdagrad(RowOptimizer):
    """Row-wise Adagrad (one float32 accumulator per row, kept in a sibling store).

    ``state_path``: where the accumulators live (default ``f"{store.path}.adagrad"``).
    ``state_config``: the sibling's :class:`~tierstore.StoreConfig` (default
    :func:`default_state_config`: as many bytes as the table's tiers, so ``dim`` times
    the rows, in host memory, raw codec, the table's policy).
    ``reset_state``: recreate the sibling store on bind, dropping old state.
    """

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, initial_accumulator_value: float = 0.0,
                 *, state_path=None, state_config=None, reset_state: bool = False):
        self.lr = _check_number("lr", lr)
        self.eps = _check_number("eps", eps)
        self.initial_accumulator_value = _check_number("initial_accumulator_value",
                                                       initial_accumulator_value)
        if self.eps == 0 and self.initial_accumulator_value == 0:
            raise ConfigError("eps and initial_accumulator_value cannot both be 0 (division by zero)")
        self.state_path = None if state_path is None else Path(state_path)
        if isinstance(state_config, dict):
            from .config import StoreConfig

            state_config = StoreConfig.from_dict(state_config)
        self.state_config = state_config
        self.reset_state = bool(reset_state)
        self.state = None          # the sibling Store, once bound
        self._pending = None       # (ids, accumulators) of the last apply, until commit
        self._table_path = None

    # -- state store ---------------------------------------------------------------------
    def bind(self, store) -> None:
        if self.state is not None:
            if Path(store.path).resolve() != self._table_path:
                raise OptimizerStateError(f"this RowAdagrad keeps state for {self._table_path}; "
                                          f"make one optimizer per table (got {store.path})")
            return
        from . import api

        path = self.state_path or Path(f"{store.path}{STATE_SUFFIX}")
        config = self.state_config or default_state_config(store)
        if (path / "data.mdb").exists() and not self.reset_state:
            state = api.open(path, config, readonly=store.readonly)
            if state.num_rows != store.num_rows or state.dim != 1 or state.dtype != np.float32:
                state.close()
                raise OptimizerStateError(
                    f"{path}: optimizer state of shape {state.num_rows}x{state.dim} {state.dtype} "
                    f"does not fit a {store.num_rows}-row table (want Nx1 float32); pass "
                    "reset_state=True to recreate it")
        else:
            state = api.create(path, num_rows=store.num_rows, dim=1, dtype="float32",
                               init=self.initial_accumulator_value, config=config, overwrite=True)
        self.state = state
        self.state_path = Path(path)
        self.reset_state = False        # reset once, not at every rebind after a reload
        self._table_path = Path(store.path).resolve()

    def accumulators(self, ids):
        """The accumulators of ``ids`` (numpy float32 of ``ids``' shape); for inspection."""
        acc = self._bound_state().lookup(np.asarray(ids, dtype=np.int64))[..., 0]
        return acc if isinstance(acc, np.ndarray) else acc.cpu().numpy()

    def _bound_state(self):
        if self.state is None:
            raise UnboundOptimizerError("RowAdagrad is not bound to a table yet: pass it to a "
                                        "TieredEmbedding, or call bind(store)")
        return self.state

    # -- the update ----------------------------------------------------------------------
    def apply(self, ids, rows, grads):
        torch = torch_module()
        raw = self._bound_state().lookup(ids)        # numpy, or a CUDA tensor on a CUDA store
        acc = (raw if torch.is_tensor(raw) else torch.from_numpy(raw))[:, 0].to(grads.device,
                                                                              grads.dtype)
        acc = acc + grads.pow(2).mean(dim=1)
        new_rows = rows - self.lr * grads / (acc.sqrt() + self.eps).unsqueeze(1)
        self._pending = (ids, acc)
        return new_rows

    def commit(self):
        """Write the accumulators computed by the last ``apply`` (after the rows were written)."""
        pending = self._pending
        if pending is not None:
            ids, acc = pending
            self._pending = None
            self.state.update(ids, acc.detach().float().cpu().numpy()[:, None])

    def get_config(self):
        return {"type": "RowAdagrad", "lr": self.lr, "eps": self.eps,
                "initial_accumulator_value": self.initial_accumulator_value,
                "state_path": None if self.state_path is None else str(self.state_path),
                "state_config": None if self.state_config is None else self.state_config.to_dict()}

    def flush(self):
        if self.state is not None and not self.state.readonly:
            self.state.flush()

    def close(self):
        if self.state is not None:
            self.state.close()
            self.state = None


def default_state_config(store):
    """Tiers for a table's ``dim=1`` accumulators: the memory budget of the table's tiers.

    An accumulator is ``dim`` times smaller than a row, so the same bytes cache ``dim``
    times as many rows (capped at the table's row count); host memory, raw codec, the
    table's policy."""
    from .config import StoreConfig

    dim, n = store.dim, store.num_rows
    device_rows = min(n, store.config.device_rows * dim)
    ram_rows = min(n - device_rows, store.config.ram_rows * dim)
    if device_rows + ram_rows == 0:
        ram_rows = 1
    return StoreConfig(device_rows=device_rows, ram_rows=ram_rows, device="cpu",
                       policy=store.config.policy)


_OPTIMIZERS = {"RowSGD": RowSGD, "RowAdagrad": RowAdagrad}


def optimizer_from_config(config: dict | None) -> RowOptimizer | None:
    """The optimizer a ``get_config()`` dict describes (``None`` gives ``None``)."""
    if config is None:
        return None
    params = dict(config)
    kind = params.pop("type", None)
    if kind not in _OPTIMIZERS:
        raise ConfigError(f"unknown row optimizer {kind!r}; known: {sorted(_OPTIMIZERS)}")
    return _OPTIMIZERS[kind](**params)
