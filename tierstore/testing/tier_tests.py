"""Shared test suites for the two contracts: for a memory tier
(:class:`tierstore.tiers.base.MemoryTier`) ``HostLookupTierTests`` or ``DeviceLookupTierTests``
(each with ``MemoryTierTests``, what every tier does), and ``TableStoreTests`` for a table
store (:class:`tierstore.table_store.TableStore`). Subclass one in a pytest module, named
``Test...``, and give it the factory it asks for; every test then runs against that
implementation::

    class TestHostMemory(HostLookupTierTests):
        def make_tier(self, device_rows, ram_rows, dim, dtype):
            return HostMemory(device_rows, ram_rows, dim, dtype)
"""
from __future__ import annotations

import numpy as np
import pytest


def _host(out) -> np.ndarray:
    """A lookup's output as a numpy array (torch tensors are copied to the host)."""
    if isinstance(out, np.ndarray):
        return out
    return out.detach().cpu().numpy()


def _pattern(n: int, dim: int, dtype, base: int = 0) -> np.ndarray:
    """Rows that differ from each other in every value: row k holds base + k*dim + j."""
    return (base + np.arange(n * dim).reshape(n, dim)).astype(dtype)


class MemoryTierTests:
    """What every memory tier does (slabs by slot), run against ``make_tier``."""

    device_rows = 3
    ram_rows = 5
    dim = 4
    dtypes = ("float16", "float32")

    def make_tier(self, device_rows: int, ram_rows: int, dim: int, dtype):
        raise NotImplementedError("a MemoryTierTests subclass gives make_tier")

    def _filled(self, dtype, device_rows=None, ram_rows=None):
        d = self.device_rows if device_rows is None else device_rows
        r = self.ram_rows if ram_rows is None else ram_rows
        tier = self.make_tier(d, r, self.dim, dtype)
        rows = _pattern(d + r, self.dim, dtype, base=1)
        tier.write(np.arange(d + r, dtype=np.int64), rows)
        tier.commit()
        return tier, rows

    @pytest.mark.parametrize("dtype", dtypes)
    def test_attributes(self, dtype):
        tier = self.make_tier(self.device_rows, self.ram_rows, self.dim, dtype)
        assert (tier.device_rows, tier.dim, tier.dtype) == (self.device_rows, self.dim,
                                                            np.dtype(dtype))
        assert tier.nbytes() >= (self.device_rows + self.ram_rows) * self.dim * np.dtype(dtype).itemsize

    @pytest.mark.parametrize("dtype", dtypes)
    def test_write_then_read_in_every_slot(self, dtype):
        tier, rows = self._filled(dtype)
        order = np.array([6, 0, 3, 2, 7, 1, 5, 4], dtype=np.int64)
        got = tier.read(order)
        assert got.dtype == np.dtype(dtype) and got.shape == (8, self.dim)
        np.testing.assert_array_equal(got, rows[order])
        got[:] = 0        # a copy: the tier's rows stay
        np.testing.assert_array_equal(tier.read(order), rows[order])

    def test_overwrite_keeps_the_other_slots(self):
        tier, rows = self._filled("float32")
        new = _pattern(2, self.dim, "float32", base=1000)
        tier.write(np.array([1, 4], dtype=np.int64), new)
        tier.commit()
        rows[[1, 4]] = new
        np.testing.assert_array_equal(tier.read(np.arange(8, dtype=np.int64)), rows)


class HostLookupTierTests(MemoryTierTests):
    """The lookup steps of a :class:`~tierstore.tiers.base.HostLookupTier`."""

    def _lookup(self, tier, slots, inverse, shape, as_torch=False):
        """Steps 1, 2 and 4 of a lookup (no moves): the delivered output, on the host."""
        slots = np.asarray(slots, dtype=np.int64)
        rows = np.full((len(slots), self.dim), -7, dtype=tier.dtype)
        tier.gather(slots, rows)
        ready = tier.finish_lookup(rows, np.asarray(inverse, dtype=np.int64), shape, as_torch)
        tier.end_lookup()
        return rows, _host(tier.deliver(ready))

    @pytest.mark.parametrize("as_torch", [False, True])
    def test_lookup_expands_unique_rows(self, as_torch):
        if as_torch:
            pytest.importorskip("torch")
        tier, rows = self._filled("float32")
        slots = np.array([4, -1, 0, 7], dtype=np.int64)     # RAM, on disk, device, RAM
        inverse = np.array([2, 0, 0, 3, 1, 2], dtype=np.int64)
        host = np.full((4, self.dim), -7, dtype=np.float32)
        tier.gather(slots, host)
        assert (host[1] == -7).all(), "gather wrote the row of slot -1"
        host[1] = 99.0    # the store reads a missing row from disk into its place
        ready = tier.finish_lookup(host, inverse, (2, 3), as_torch)
        tier.end_lookup()
        out = tier.deliver(ready)
        expected = np.stack([rows[4], host[1], rows[0], rows[7]])[inverse].reshape(2, 3, self.dim)
        np.testing.assert_array_equal(_host(out), expected)
        if as_torch:
            assert not isinstance(out, np.ndarray)

    def test_gather_gives_ram_rows_and_fill_rows_the_rest(self):
        tier, rows = self._filled("float32")
        slots = np.array([5, 1, -1, 2], dtype=np.int64)
        host = np.full((4, self.dim), -7, dtype=np.float32)
        tier.gather(slots, host)
        np.testing.assert_array_equal(host[0], rows[5])
        tier.fill_rows(host, np.array([1, 3], dtype=np.int64), slots)
        np.testing.assert_array_equal(host[[1, 3]], rows[[1, 2]])
        assert (host[2] == -7).all()
        tier.finish_lookup(host, np.arange(4, dtype=np.int64), (4,), False)
        tier.end_lookup()

    def test_moves_during_a_lookup_leave_its_output_alone(self):
        """The output is the rows where they were when the batch began, even when the
        planned moves overwrite their slots before it is delivered."""
        tier, rows = self._filled("float32")
        slots = np.array([0, 6], dtype=np.int64)
        host = np.full((2, self.dim), -7, dtype=np.float32)
        tier.gather(slots, host)
        tier.fill_rows(host, np.array([0, 1], dtype=np.int64), slots)
        ready = tier.finish_lookup(host, np.array([0, 1], dtype=np.int64), (2,), False)
        # the planned moves: slot 0 (device) and slot 6 (RAM) take other rows
        demoted = tier.read(np.array([0], dtype=np.int64))
        tier.write(np.array([6], dtype=np.int64), demoted)
        tier.write(np.array([0], dtype=np.int64), _pattern(1, self.dim, "float32", base=500))
        tier.end_lookup()
        np.testing.assert_array_equal(_host(tier.deliver(ready)), rows[[0, 6]])
        np.testing.assert_array_equal(tier.read(np.array([0, 6], dtype=np.int64)),
                                      np.stack([_pattern(1, self.dim, "float32", base=500)[0],
                                                rows[0]]))

    def test_a_tier_without_device_rows(self):
        tier, rows = self._filled("float32", device_rows=0, ram_rows=4)
        _, out = self._lookup(tier, [3, 0], [1, 0], (2,))
        np.testing.assert_array_equal(out, rows[[0, 3]])

    def test_an_empty_lookup(self):
        tier, _ = self._filled("float32")
        _, out = self._lookup(tier, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), (0,))
        assert out.shape == (0, self.dim)


class DeviceLookupTierTests(MemoryTierTests):
    """The lookups of a :class:`~tierstore.tiers.base.DeviceLookupTier`: it finds rows by id
    in its own index, which follows ``retarget`` and ``swap_index`` from ``commit`` on."""

    def _indexed(self, dtype="float32", device_rows=None, ram_rows=None):
        """A filled tier whose slot ``k`` holds the row of id ``100 + 3 * k``."""
        tier, rows = self._filled(dtype, device_rows, ram_rows)
        slots = np.arange(len(rows), dtype=np.int64)
        tier.retarget(slots[:0], slots[:0], 100 + 3 * slots, slots)
        tier.commit()
        return tier, rows

    def _lookup(self, tier, ids, fill_with=None):
        """A whole lookup of numpy ``ids``: (its misses' positions and ids, the output on the
        host), the misses filled with ``fill_with`` (one row per miss)."""
        pending = tier.issue(np.asarray(ids, dtype=np.int64))
        positions, missed = tier.misses(pending)
        if len(positions):
            rows = tier.missed_rows(len(positions), len(positions))
            rows.rows[...] = fill_with[:len(positions)]
            rows.positions[...] = positions
            rows.which[...] = np.arange(len(positions))
            tier.fill(pending, rows)
        return positions, missed, _host(tier.deliver(tier.ready(pending)))

    def test_lookup_finds_resident_rows_and_lists_the_others(self):
        tier, rows = self._indexed()
        ids = np.array([[112, 5, 100], [121, 112, 7]])             # slots 4, -, 0, 7, 4, -
        fill = _pattern(2, self.dim, "float32", base=900)
        positions, missed, out = self._lookup(tier, ids, fill)
        assert sorted(positions.tolist()) == [1, 5]
        np.testing.assert_array_equal(missed, ids.reshape(-1)[positions])
        want = np.stack([rows[4], rows[4], rows[0], rows[7], rows[4], rows[4]])
        want[positions] = fill[:len(positions)]
        np.testing.assert_array_equal(out.reshape(6, self.dim), want)
        assert out.shape == (2, 3, self.dim)

    def test_fill_puts_each_unique_row_wherever_its_id_missed(self):
        tier, rows = self._indexed()
        ids = np.array([7, 100, 7, 8, 7, 8], dtype=np.int64)       # 7 and 8 miss, 100 is slot 0
        pending = tier.issue(ids)
        positions, missed = tier.misses(pending)
        assert sorted(positions.tolist()) == [0, 2, 3, 4, 5]
        uniq, which = np.unique(missed, return_inverse=True)
        given = tier.missed_rows(len(uniq), len(positions))
        given.rows[...] = _pattern(len(uniq), self.dim, "float32", base=700)
        given.positions[...] = positions
        given.which[...] = which
        tier.fill(pending, given)
        out = _host(tier.deliver(tier.ready(pending)))
        want = _pattern(2, self.dim, "float32", base=700)[[0, 0, 0, 1, 0, 1]]
        want[1] = rows[0]
        np.testing.assert_array_equal(out, want)

    def test_moves_reach_lookups_issued_after_their_commit_only(self):
        tier, rows = self._indexed()
        before = tier.issue(np.array([100, 115, 121], dtype=np.int64))     # slots 0, 5, 7
        # a round of moves: 100 leaves, 115 is promoted into device slot 1 (whose row moves
        # to slot 5), and a new id 500 takes slot 0
        new = _pattern(1, self.dim, "float32", base=500)
        tier.write(np.array([5, 1, 0], dtype=np.int64), np.stack([rows[1], rows[5], new[0]]))
        tier.retarget(np.array([100]), np.array([0]), np.array([500]), np.array([0]))
        tier.swap_index(np.array([115]), np.array([5]), np.array([1]), np.array([True]))
        tier.commit()
        assert not len(tier.misses(before)[0])
        np.testing.assert_array_equal(_host(tier.deliver(tier.ready(before))), rows[[0, 5, 7]])
        positions, missed, out = self._lookup(tier, [100, 115, 103, 500, 121],
                                              _pattern(1, self.dim, "float32", base=800))
        assert positions.tolist() == [0] and missed.tolist() == [100]
        np.testing.assert_array_equal(out[1:], np.stack([rows[5], rows[1], new[0], rows[7]]))
        np.testing.assert_array_equal(tier.read(np.array([0, 1, 5])), np.stack([new[0], rows[5], rows[1]]))

    def test_clear_empties_the_index(self):
        tier, rows = self._indexed()
        tier.clear()
        tier.commit()
        positions, _, _ = self._lookup(tier, [100, 103], np.zeros((2, self.dim), dtype=np.float32))
        assert sorted(positions.tolist()) == [0, 1]

    def test_a_tier_without_device_rows(self):
        tier, rows = self._indexed(device_rows=0, ram_rows=4)
        _, _, out = self._lookup(tier, [109, 100])
        np.testing.assert_array_equal(out, rows[[3, 0]])

    def test_an_empty_lookup(self):
        tier, _ = self._indexed()
        positions, _, out = self._lookup(tier, np.empty((0, 2), dtype=np.int64))
        assert not len(positions) and out.shape == (0, 2, self.dim)

    def test_fill_rows_gives_the_rows_of_resident_slots(self):
        """The planner's rows of ids about to move, which the lookup served on the device."""
        tier, rows = self._filled("float32")
        host = np.full((4, self.dim), -7, dtype=np.float32)
        start = np.array([5, 1, -1, 2], dtype=np.int64)
        host[0] = rows[5]
        tier.fill_rows(host, np.array([1, 2, 3], dtype=np.int64), start)
        np.testing.assert_array_equal(host[[0, 1, 3]], rows[[5, 1, 2]])
        assert (host[2] == -7).all()


class TableStoreTests:
    """The TableStore contract, run against ``make_store``: a writable store of
    ``num_rows x dim`` rows of ``dtype`` whose row ``k`` starts as ``init[k]``."""

    num_rows = 40
    dim = 4
    dtype = "float32"

    def make_store(self, path, num_rows: int, dim: int, dtype, init):
        raise NotImplementedError("a TableStoreTests subclass gives make_store")

    def _store(self, tmp_path):
        init = _pattern(self.num_rows, self.dim, self.dtype)
        return self.make_store(tmp_path / "table", self.num_rows, self.dim, self.dtype, init), init

    def test_declares_the_contract(self, tmp_path):
        from tierstore.table_store import TableStore

        store, _ = self._store(tmp_path)
        with store:
            assert isinstance(store, TableStore)
            assert (store.num_rows, store.dim, np.dtype(store.dtype)) == (self.num_rows, self.dim,
                                                                           np.dtype(self.dtype))
            assert not store.readonly and not store.closed

    def test_lookup_gives_the_rows_in_the_ids_shape(self, tmp_path):
        store, init = self._store(tmp_path)
        with store:
            ids = np.array([[3, 0, 3], [39, 7, 1]])
            out = store.lookup(ids)
            assert isinstance(out, np.ndarray) and out.shape == (2, 3, self.dim)
            np.testing.assert_array_equal(out, init[ids])
            assert store.stats()["lookups"] >= len(np.unique(ids))   # sharded: unique ids count

    def test_torch_ids_give_torch_rows(self, tmp_path):
        torch = pytest.importorskip("torch")
        store, init = self._store(tmp_path)
        with store:
            out = store.lookup(torch.tensor([5, 2, 5]))
            assert torch.is_tensor(out)
            np.testing.assert_array_equal(_host(out), init[[5, 2, 5]])

    def test_every_lookup_returns_the_last_write(self, tmp_path):
        store, init = self._store(tmp_path)
        expected = init.copy()
        rng = np.random.default_rng(0)
        with store:
            for step in range(6):
                ids = rng.integers(0, self.num_rows, size=12)
                rows = _pattern(12, self.dim, self.dtype, base=1000 * (step + 1))
                store.update(ids, rows)
                for k, i in enumerate(ids):    # duplicates: the last one wins
                    expected[i] = rows[k]
                np.testing.assert_array_equal(store.lookup(np.arange(self.num_rows)), expected)
            store.flush()
            np.testing.assert_array_equal(store.lookup(np.arange(self.num_rows)), expected)
            assert store.check().ok

    def test_prefetched_rows_are_the_rows(self, tmp_path):
        store, init = self._store(tmp_path)
        with store:
            store.update(np.array([9]), np.full((1, self.dim), -1, dtype=self.dtype))
            store.prefetch(np.arange(20)).wait()
            expected = init[:20].copy()
            expected[9] = -1
            np.testing.assert_array_equal(store.lookup(np.arange(20)), expected)

    def test_bad_ids_raise_a_named_error_and_change_nothing(self, tmp_path):
        from tierstore.errors import IdOutOfRangeError

        store, init = self._store(tmp_path)
        with store:
            with pytest.raises(IdOutOfRangeError):
                store.update(np.array([1, self.num_rows]), np.zeros((2, self.dim), self.dtype))
            with pytest.raises(IdOutOfRangeError):
                store.lookup(np.array([-1]))
            np.testing.assert_array_equal(store.lookup(np.arange(self.num_rows)), init)

    def test_apply_gradients_steps_the_rows(self, tmp_path):
        torch = pytest.importorskip("torch")
        from tierstore.optim import RowSGD

        store, init = self._store(tmp_path)
        with store:
            ids = torch.tensor([2, 11, 30])
            grads = torch.ones((3, self.dim), dtype=torch.float32)
            assert store.apply_gradients(ids, grads, RowSGD(lr=0.5)) == 3
            expected = init.copy()
            expected[[2, 11, 30]] -= 0.5
            np.testing.assert_array_equal(store.lookup(np.arange(self.num_rows)), expected)
            assert store.apply_gradients(None, None, RowSGD(lr=0.5)) == 0
            np.testing.assert_array_equal(store.lookup(np.arange(self.num_rows)), expected)

    def test_close_is_final_and_harmless_twice(self, tmp_path):
        from tierstore.errors import ClosedStoreError

        store, _ = self._store(tmp_path)
        store.update(np.array([0]), np.zeros((1, self.dim), self.dtype))
        store.close()
        assert store.closed
        store.close()
        with pytest.raises(ClosedStoreError):
            store.lookup(np.array([0]))
