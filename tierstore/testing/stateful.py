"""A hypothesis state machine that checks a Store against a plain dict.

Run it on your own configuration::

    from tierstore.testing import run_store_machine
    run_store_machine(ts.StoreConfig(device_rows=2, ram_rows=3, policy="lru"))

Rules look rows up (at once, or ahead with ``lookup_async``, whose result must
be the rows as they were when it started), prefetch them, update them
(duplicate ids included), flush, close and reopen, and run the integrity
check; with tiers of a few rows, rows move between device, RAM and disk at
almost every step. After every step the bookkeeping invariants must hold: no
tier above its capacity, each resident id in exactly one slot, and on CUDA
the device slab equal to its host shadow and the GPU's index (and its host
mirror) equal to the policy's map of resident rows.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from .. import api
from ..config import StoreConfig
from ..policy import state as S


class StoreMachine(RuleBasedStateMachine):
    """Store vs dict. Subclass or build with :func:`machine_for` to pick the store's shape."""

    config: StoreConfig = StoreConfig(device_rows=2, ram_rows=3)
    num_rows: int = 40
    dim: int = 4
    dtype: str = "float32"
    init_kind: str = "constant"
    codec = "raw"

    def __init__(self):
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="tierstore-machine-"))
        self.path = self.root / "store"
        self.store = None
        self.checked = False
        self.ahead = []   # (handle, ids, rows expected, ids updated since)

    @initialize()
    def create(self):
        if self.init_kind == "array":
            init = (np.arange(self.num_rows * self.dim).reshape(self.num_rows, self.dim) % 97) / 4
            self.model = {i: init[i].astype(self.dtype) for i in range(self.num_rows)}
        else:
            init = 1.5
            self.model = {}
        self.fill = np.full(self.dim, 0 if self.init_kind == "array" else init, dtype=self.dtype)
        self.store = api.create(self.path, self.num_rows, self.dim, self.dtype, init=init,
                                config=self.config, codec=self.codec)

    def expected(self, ids):
        rows = [self.model.get(int(i), self.fill) for i in np.ravel(ids)]
        flat = np.stack(rows) if rows else np.empty((0, self.dim), dtype=self.dtype)
        return flat.reshape(np.shape(ids) + (self.dim,))

    def assert_rows(self, got, ids):
        self.assert_rows_equal(got, self.expected(ids))

    def assert_rows_equal(self, got, want):
        if hasattr(got, "cpu"):  # a torch tensor (device="cuda" returns CUDA tensors)
            got = got.cpu().numpy()
        assert got.shape == want.shape, (got.shape, want.shape)
        codec = self.store.codec
        if codec.lossless:
            np.testing.assert_array_equal(got, want)
        else:
            bound = codec.max_abs_error(want.reshape(-1, self.dim)).reshape(want.shape[:-1] + (1,))
            err = np.abs(got.astype(np.float64) - want.astype(np.float64))
            assert np.all(err <= bound), f"lossy error {err.max()} above its bound"

    ids_1d = st.lists(st.integers(0, 39), min_size=0, max_size=12)

    @rule(ids=ids_1d, two_d=st.booleans())
    def lookup(self, ids, two_d):
        arr = np.asarray(ids, dtype=np.int64)
        if two_d and len(arr) % 2 == 0:
            arr = arr.reshape(2, -1)
        self.assert_rows(self.store.lookup(arr), arr)

    @rule(ids=st.lists(st.integers(0, 39), min_size=1, max_size=8), seed=st.integers(0, 2**16))
    def update(self, ids, seed):
        rng = np.random.default_rng(seed)
        rows = (rng.integers(-400, 400, size=(len(ids), self.dim)) / 8).astype(self.dtype)
        self.store.update(np.asarray(ids), rows)
        for i, row in zip(ids, rows):
            self.model[i] = row
        for _, _, _, updated in self.ahead:
            updated.update(ids)

    @rule(ids=ids_1d)
    def lookup_ahead(self, ids):
        arr = np.asarray(ids, dtype=np.int64)
        self.ahead.append((self.store.lookup_async(arr), arr, self.expected(arr), set()))

    @rule()
    def collect_ahead(self):
        for handle, arr, want, updated in self.ahead:
            self.assert_rows_equal(handle.result(), want)
            assert handle.stale == bool(updated & set(arr.tolist()))
        self.ahead = []

    @rule(ids=ids_1d, wait=st.booleans())
    def prefetch(self, ids, wait):
        handle = self.store.prefetch(np.asarray(ids, dtype=np.int64))
        if wait:
            handle.wait()

    @rule()
    def flush(self):
        self.store.flush()

    @rule()
    def reopen(self):
        self.collect_ahead()
        self.store.close()
        self.store = api.open(self.path, config=self.config)

    # once a run: check() walks the records in a child process (a tenth of a second), which
    # at every few steps made it most of the machine's time; the invariant below checks the
    # bookkeeping after every step, and every lookup decodes (and verifies) what it reads
    @precondition(lambda self: not self.checked)
    @rule()
    def check(self):
        self.checked = True
        report = self.store.check()
        assert report.ok, str(report)

    @invariant()
    def bookkeeping_holds(self):
        if self.store is None:
            return
        with self.store._exclusive():   # a lookup ahead, or a deferred planning, may be running
            self.check_bookkeeping()

    def check_bookkeeping(self):
        state = self.store._state
        assert state.check_invariants() == 0
        resident = state.resident()
        assert len(resident) <= self.config.device_rows + self.config.ram_rows
        assert sum(1 for slot in resident.values() if slot < self.config.device_rows) \
            <= self.config.device_rows
        assert len(set(resident.values())) == len(resident)
        assert int(state.meta()[S.USED]) == len(resident)
        shadow = getattr(self.store._memory, "shadow", None)
        if shadow is not None:
            np.testing.assert_array_equal(self.store._memory.device_snapshot(), shadow)
        contents = getattr(self.store._memory, "index_contents", None)
        if contents is not None:  # the host tier's index, as last committed
            assert contents() == resident
        index = getattr(self.store._memory, "index", None)
        if index is not None:    # the GPU's index of the memory tiers, its host mirror, the policy's
            ids = np.fromiter(resident, dtype=np.int64, count=len(resident))
            assert index.placements() == dict(zip(resident.values(), index.homes(ids).tolist()))
            assert self.store._memory.index_snapshot() == resident

    def teardown(self):
        if self.store is not None:
            self.collect_ahead()
            self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)


def machine_for(config: StoreConfig, *, num_rows: int = 40, dim: int = 4, dtype: str = "float32",
                init_kind: str = "constant", codec="raw") -> type[StoreMachine]:
    """A StoreMachine subclass for one store shape, codec and configuration."""
    return type("StoreMachineFor", (StoreMachine,), {
        "config": config, "num_rows": num_rows, "dim": dim, "dtype": dtype,
        "init_kind": init_kind, "codec": codec})


def run_store_machine(config: StoreConfig, settings: hsettings | None = None, **shape):
    """Run the state machine on ``config`` (raises on the first discrepancy)."""
    run_state_machine_as_test(machine_for(config, **shape), settings=settings)
