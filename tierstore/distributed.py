"""One table sharded row-wise over the ranks of a torch.distributed process group.

    import torch.distributed as dist
    import tierstore as ts
    from tierstore.distributed import create_sharded, open_sharded

    dist.init_process_group("gloo")            # or "nccl", after torch.cuda.set_device(local_rank)
    store = create_sharded("/data/table", num_rows=10**9, dim=64, dtype="float16",
                           config=ts.StoreConfig(device_rows=1 << 20, ram_rows=1 << 23))
    rows = store.lookup(ids)                   # collective: every rank calls it, with its own ids
    store.update(ids, new_rows)                # collective; rows travel to their owners
    store.close()                              # collective

**Sharding rule.** ``rule="mod"`` (the default): row ``i`` belongs to rank
``i % world_size`` and is row ``i // world_size`` of that rank's shard, so hashed
ids (Engram, recommendation features) spread evenly. ``rule="range"``: rank ``r``
holds one contiguous range, the ranges as even as possible (the first
``num_rows % world_size`` ranks hold one row more). Each rank's shard is a plain
tierstore :class:`~tierstore.Store` of its own rows (openable alone with
``tierstore.open``) at ``<path>/shard-{rank:05d}-of-{world:05d}``, or at
``path.format(rank=rank, world=world_size)`` when ``path`` contains ``{rank}``
(a disk per host, say). A shard record beside the store's metadata holds the
world size, the rank, the rule and the table's row count; opening with another
world size raises :class:`~tierstore.errors.ShardMismatchError` on every rank
(:func:`reshard` rewrites a table for a new world size).

**Collectives.** Every method but ``local`` access is collective: every rank of
the group calls it, in the same order, each with its own ids (possibly none).
``lookup`` dedupes the caller's ids, sends each unique id to its owner with an
all-to-all of variable split sizes (the counts first, in a fixed-size
all-to-all), the owners read the rows from their tiers and send them back the
same way; rows come back in the caller's order and shape. ``update`` keeps the
last row of an id within one rank's call, sends rows to their owners, and when
several ranks write the same id in one call the highest rank wins. Bad input on
one rank (an id out of range, rows of the wrong shape) makes that rank raise its
usual error and every other rank raise :class:`~tierstore.errors.ShardPeerError`,
before anything moved; no rank waits for one that gave up. A rank whose shard
cannot be opened makes every rank raise
:class:`~tierstore.errors.ShardOpenError` naming it. Collectives wait at most
the process group's ``timeout`` (``init_process_group(timeout=...)``).

**Devices.** gloo exchanges CPU tensors. NCCL exchanges CUDA tensors on
``torch.cuda.current_device()``, and a config with ``device="cuda"`` puts this
rank's device tier there. Torch ids give torch rows on :attr:`ShardedStore.device`;
numpy ids give numpy rows.
"""
from __future__ import annotations

import numbers
import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .tiers._torch import torch_dtype, torch_module

torch = torch_module()
dist = torch.distributed

from . import api
from .config import StoreConfig
from .errors import (
    ClosedStoreError,
    ConfigError,
    NotAStoreError,
    ReadOnlyError,
    RowShapeError,
    ShardMismatchError,
    ShardOpenError,
    ShardPeerError,
)
from .kernels.batch import dedupe, dedupe_last
from .prefetch import PrefetchHandle
from .store import CREATE_CHUNK, CheckReport, Store
from .table import check_shape
from .table_store import TableStore
from .tiers.format import SHARD_KEY, ShardMeta
from .validation import as_id_array, as_rows, is_torch_tensor

__all__ = ["RULES", "ShardedStore", "ShardingRule", "create_sharded", "open_sharded", "reshard",
           "shard_path"]

RULES = ("mod", "range")
SHARD_NAME = "shard-{rank:05d}-of-{world:05d}"
_SHARD_NAME_RE = re.compile(r"^shard-(\d{5,})-of-(\d{5,})$")


# -- the rule --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardingRule:
    """Which rank owns each row of a ``num_rows``-row table, and where in its shard."""

    kind: str
    num_rows: int
    world_size: int

    def __post_init__(self):
        if self.kind not in RULES:
            raise ConfigError(f"rule must be one of {RULES}, got {self.kind!r}")
        if self.num_rows < self.world_size:
            raise ConfigError(f"a {self.num_rows}-row table cannot give each of "
                              f"{self.world_size} ranks a row")
        base, extra = divmod(self.num_rows, self.world_size)
        sizes = np.full(self.world_size, base, dtype=np.int64)
        sizes[:extra] += 1
        # range rule: rank r holds [starts[r], starts[r + 1])
        object.__setattr__(self, "_starts", np.concatenate([[0], np.cumsum(sizes)]))

    def local_rows(self, rank: int) -> int:
        """How many rows rank ``rank``'s shard holds."""
        if self.kind == "mod":
            return (self.num_rows - rank + self.world_size - 1) // self.world_size
        return int(self._starts[rank + 1] - self._starts[rank])

    def owner(self, ids: np.ndarray) -> np.ndarray:
        if self.kind == "mod":
            return ids % self.world_size
        return np.searchsorted(self._starts, ids, side="right") - 1

    def local_ids(self, ids: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Row numbers inside the owners' shards of global ``ids`` owned by ``owners``."""
        if self.kind == "mod":
            return ids // self.world_size
        return ids - self._starts[owners]

    def global_ids(self, rank: int, local: np.ndarray) -> np.ndarray:
        """Global ids of rows ``local`` of rank ``rank``'s shard."""
        if self.kind == "mod":
            return local * self.world_size + rank
        return local + self._starts[rank]


def shard_path(path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` keeps its shard (see the module's doc)."""
    text = str(path)
    if "{rank" in text:
        return Path(text.format(rank=rank, world=world_size))
    return Path(path) / SHARD_NAME.format(rank=rank, world=world_size)


# -- creating and opening --------------------------------------------------------------------
def create_sharded(path, num_rows: int, dim: int, dtype="float16", init=None,
                   config: StoreConfig | None = None, overwrite: bool = False, *,
                   rule: str = "mod", group=None, codec="raw",
                   allow_nonfinite: bool = False) -> ShardedStore:
    """Create a ``num_rows x dim`` table sharded over ``group`` (collective; see :func:`tierstore.create`).

    Every rank creates its own shard. ``init`` is what :func:`tierstore.create`
    takes, in global row ids: ``None`` or a number, an ``(num_rows, dim)`` array,
    or a callable ``(start, stop) -> rows``. Under the ``mod`` rule the callable is
    asked for a span of ``world_size`` times a shard's chunk, of which the rank keeps
    every ``world_size``-th row. If any rank fails, every rank raises
    :class:`~tierstore.errors.ShardOpenError` and the shards created hold no shard
    record (:func:`open_sharded` refuses them).
    """
    comm = _Comm(group)
    num_rows, dim, dtype = check_shape(num_rows, dim, dtype)  # the same on every rank
    layout = ShardingRule(rule, num_rows, comm.world_size)
    config = _local_config(config, comm)
    where = shard_path(path, comm.rank, comm.world_size)

    def create():
        return api.create(where, layout.local_rows(comm.rank), dim, dtype,
                          _local_init(init, layout, comm.rank, num_rows, dim), config, overwrite,
                          codec=codec, allow_nonfinite=allow_nonfinite)

    local = _open_together(comm, create, "create")
    try:
        # the record goes last: a creation that failed anywhere leaves shards without one
        record = ShardMeta(comm.rank, comm.world_size, rule, layout.num_rows)
        _open_together(comm, lambda: _write_shard_record(local, record), "create")
    except BaseException:
        local.close()
        raise
    return ShardedStore(local, layout, comm)


def open_sharded(path, config: StoreConfig | None = None, readonly: bool = False, *,
                 dim: int | None = None, dtype=None, group=None) -> ShardedStore:
    """Open a sharded table, each rank its own shard (collective; see :func:`tierstore.open`).

    Raises :class:`~tierstore.errors.ShardMismatchError` on every rank when the
    shards were written for another world size or rank, or belong to different
    tables, and :class:`~tierstore.errors.ShardOpenError` when a rank cannot open
    its shard (missing, damaged, locked by another writer).
    """
    comm = _Comm(group)
    config = _local_config(config, comm)
    where = shard_path(path, comm.rank, comm.world_size)

    def open_shard():
        if not (where / "data.mdb").exists():
            raise _missing_shard(path, where, comm.world_size)
        local = api.open(where, config, readonly, dim=dim, dtype=dtype)
        try:
            record = _read_shard_record(local)
            _check_record(record, where, comm.rank, comm.world_size, local.num_rows)
        except BaseException:
            local.close()
            raise
        return local, record

    local, record = _open_together(comm, open_shard, "open")
    return ShardedStore(local, ShardingRule(record.rule, record.num_rows, comm.world_size), comm)


def _open_together(comm: _Comm, attempt, what: str):
    """Run ``attempt()`` on every rank; return its result, or raise on every rank if any failed.

    Every rank reports success or its error in one collective, so a rank that fails
    never leaves the others waiting in a later collective. Ranks that succeeded
    close what they opened before raising. The report also compares the tables the
    shards belong to.
    """
    result, error = None, None
    try:
        result = attempt()
        local = result[0] if isinstance(result, tuple) else result
        report = {"error": None, "table": (local.dim, np.dtype(local.dtype).name,
                                           _shard_of(result))}
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised below
        error = exc
        report = {"error": f"{type(exc).__name__}: {exc}",
                  "mismatch": isinstance(exc, ShardMismatchError)}
    try:
        reports = comm.gather_objects(report)
    except Exception as exc:  # noqa: BLE001 - a timeout or a rank that died
        _close_result(result)
        raise ShardOpenError(
            f"rank {comm.rank}: the ranks did not all report how {what} of their shards went "
            f"within the process group's timeout (a rank died or hangs): {exc}") from error or exc
    failures = {r: rep["error"] for r, rep in enumerate(reports) if rep["error"] is not None}
    if failures:
        _close_result(result)
        cls = ShardMismatchError if all(reports[r]["mismatch"] for r in failures) \
            else ShardOpenError
        lines = "; ".join(f"rank {r}: {reason}" for r, reason in sorted(failures.items()))
        raise cls(f"{what} of the sharded store failed on rank(s) {sorted(failures)}: {lines}",
                  failures) from error
    if len({rep["table"] for rep in reports}) > 1:
        _close_result(result)
        tables = {r: _describe(rep["table"]) for r, rep in enumerate(reports)}
        shown = "; ".join(f"rank {r}: {table}" for r, table in tables.items())
        raise ShardMismatchError(f"the ranks' shards belong to different tables: {shown}", tables)
    return result


def _shard_of(result):
    """The (rule, global rows) a just-opened shard belongs to, for the cross-rank check."""
    if isinstance(result, tuple):
        record = result[1]
        return record.rule, record.num_rows
    return None  # a fresh shard: every rank was given the same arguments


def _describe(table) -> str:
    dim, dtype, shard = table
    table = "" if shard is None else f"{shard[1]} rows, rule {shard[0]!r}, "
    return f"{table}dim {dim}, {dtype}"


def _close_result(result):
    local = result[0] if isinstance(result, tuple) else result
    if isinstance(local, Store):
        local.close()


def _missing_shard(path, where: Path, world_size: int) -> Exception:
    """The error for an absent shard: a mismatch when ``path`` holds another world's shards."""
    if "{rank" not in str(path) and Path(path).is_dir():
        worlds = sorted({int(m.group(2)) for m in map(_SHARD_NAME_RE.match,
                                                      (p.name for p in Path(path).iterdir()))
                         if m is not None} - {world_size})
        if worlds:
            return ShardMismatchError(
                f"{path} holds a table sharded over {' or '.join(map(str, worlds))} ranks, not "
                f"{world_size}: open it with that many ranks, or rewrite it with "
                f"tierstore.distributed.reshard(src, dst, world_size={world_size})")
    return NotAStoreError(f"{where}: no such shard")


def _check_record(record: ShardMeta | None, where: Path, rank: int, world_size: int,
                  local_rows: int):
    if record is None:
        raise ShardMismatchError(
            f"{where}: a plain store, not a shard (no shard record; a sharded creation that "
            "failed on some rank leaves its shards so)")
    if record.world_size != world_size:
        raise ShardMismatchError(
            f"{where}: a shard of a table sharded over {record.world_size} ranks, opened by a "
            f"group of {world_size}: open it with {record.world_size} ranks, or rewrite it with "
            f"tierstore.distributed.reshard(src, dst, world_size={world_size})")
    if record.rank != rank:
        raise ShardMismatchError(f"{where}: rank {record.rank}'s shard, opened by rank {rank}")
    try:
        expected = ShardingRule(record.rule, record.num_rows, world_size).local_rows(rank)
    except ConfigError as exc:
        raise ShardMismatchError(f"{where}: the shard record names an unknown layout ({exc})") \
            from None
    if expected != local_rows:
        raise ShardMismatchError(f"{where}: the shard holds {local_rows} rows; its record says "
                                 f"{expected}")


def _read_shard_record(local: Store) -> ShardMeta | None:
    disk = local.disk  # the record sits in the store's own LMDB metadata table
    with disk.reading(disk.meta_db) as txn:
        return ShardMeta.from_bytes(txn.get(SHARD_KEY), local.path)


def _write_shard_record(local: Store, record: ShardMeta):
    disk = local.disk
    disk.write(lambda txn: txn.put(SHARD_KEY, record.to_bytes(), db=disk.meta_db))
    disk.sync()
    return local


def _local_init(init, layout: ShardingRule, rank: int, num_rows: int, dim: int):
    """``init`` in global rows, turned into this rank's shard's init (local rows)."""
    if init is None or isinstance(init, numbers.Real) and not isinstance(init, bool):
        return init
    if callable(init):
        if layout.kind == "range":
            first = int(layout.global_ids(rank, np.int64(0)))
            return lambda start, stop: init(first + start, first + stop)
        world = layout.world_size

        def strided(start, stop):
            span = init(start * world + rank, (stop - 1) * world + rank + 1)
            return (span if hasattr(span, "shape") else np.asarray(span))[::world]
        return strided
    if hasattr(init, "shape") or isinstance(init, (list, tuple)):
        array = init if hasattr(init, "shape") else np.asarray(init)
        if tuple(array.shape) != (num_rows, dim):
            raise RowShapeError(f"init array must have shape {(num_rows, dim)}, "
                                f"got {tuple(array.shape)}")
        return lambda start, stop: array[layout.global_ids(rank, np.arange(start, stop))]
    return init  # tierstore.create names what is wrong with it


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _local_config(config, comm: _Comm) -> StoreConfig:
    """The shard's config: under NCCL a CUDA device tier goes on this rank's current GPU."""
    config = StoreConfig() if config is None else config
    if not isinstance(config, StoreConfig):
        raise ConfigError(f"config must be a StoreConfig, got {type(config).__name__}")
    if comm.device.type != "cuda" or config.device == "cpu":
        return config
    current = f"cuda:{comm.device.index}"
    if config.device not in ("cuda", current):
        raise ConfigError(f"this rank's GPU is {current} (torch.cuda.current_device()), "
                          f"the config asks for {config.device}: use device='cuda'")
    return replace(config, device=current)


# -- the transport ---------------------------------------------------------------------------
class _Comm:
    """The group's collectives, counting the bytes this rank's all-to-alls send to the others.

    Tensors travel on ``device``: the CPU for gloo, this rank's GPU for NCCL.
    """

    def __init__(self, group):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call "
                               "torch.distributed.init_process_group first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group))
        if "nccl" in backend and "gloo" not in backend:
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.bytes_sent = 0
        self.bytes_received = 0

    def counts(self, send: np.ndarray) -> np.ndarray:
        """Send ``send[r]`` to rank ``r``; the number each rank sent here, by rank."""
        out = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        dist.all_to_all_single(out, torch.from_numpy(send).to(self.device), group=self.group)
        self._tally(8 * (self.world_size - 1), 8 * (self.world_size - 1))
        return out.cpu().numpy()

    def exchange(self, send, send_counts: np.ndarray, recv_counts: np.ndarray):
        """All-to-all of ``send``'s rows: ``send_counts[r]`` rows to rank ``r`` (in rank
        order), ``recv_counts[r]`` rows from it. Returns the rows received, in rank order."""
        send = send.to(self.device)
        out = torch.empty((int(recv_counts.sum()),) + tuple(send.shape[1:]), dtype=send.dtype,
                          device=self.device)
        dist.all_to_all_single(out, send, recv_counts.tolist(), send_counts.tolist(),
                               group=self.group)
        row_bytes = send.element_size() * int(np.prod(send.shape[1:], dtype=np.int64))
        me = self.rank
        self._tally(row_bytes * int(send_counts.sum() - send_counts[me]),
                    row_bytes * int(recv_counts.sum() - recv_counts[me]))
        return out

    def failed_ranks(self, failed: bool) -> list[int]:
        """Every rank says whether it failed; the ranks that did, on every rank."""
        flags = torch.zeros(self.world_size, dtype=torch.int32, device=self.device)
        flags[self.rank] = int(failed)
        dist.all_reduce(flags, group=self.group)
        return np.flatnonzero(flags.cpu().numpy()).tolist()

    def sum(self, values: np.ndarray) -> np.ndarray:
        total = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(self.device)
        dist.all_reduce(total, group=self.group)
        return total.cpu().numpy()

    def gather_objects(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def _tally(self, sent: int, received: int):
        self.bytes_sent += sent
        self.bytes_received += received


def _done_handle(rows_read: int = 0) -> PrefetchHandle:
    future = Future()
    future.set_result(rows_read)
    return PrefetchHandle(future)


# -- the store -------------------------------------------------------------------------------
class _Caught:
    """``with caught:`` keeps the first error of a step every rank must get past, so that
    this rank tells the others (``_agree_counts``, ``_raise_if_any_failed``) before it
    raises it: no rank is left waiting in a collective. BaseExceptions (an interrupt) pass."""

    def __init__(self):
        self.error = None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, Exception):
            if self.error is None:
                self.error = exc
            return True
        return False


class ShardedStore(TableStore):
    """A table whose rows are sharded over a process group, each shard a tiered Store.

    Use :func:`create_sharded` or :func:`open_sharded`. The methods mirror
    :class:`tierstore.Store` and are collective (see the module's doc); ``local`` is
    this rank's shard, a plain Store of local row numbers. Calls from several
    threads of one rank are serialised, but the ranks must issue their collectives
    in the same order, so drive a sharded store from one thread per rank.
    """

    def __init__(self, local: Store, rule: ShardingRule, comm: _Comm):
        self.local = local
        self.rule = rule
        self._comm = comm
        self.group = comm.group
        self.rank = comm.rank
        self.world_size = comm.world_size
        self.num_rows = rule.num_rows
        self.dim = local.dim
        self.dtype = local.dtype
        self.codec = local.codec
        self.format = local.format   # this rank's shard's (num_rows: the shard's)
        self.config = local.config
        self.readonly = local.readonly
        self.path = local.path  # this rank's shard: per-rank siblings (optimizer state) go beside it
        self.device = (torch.device(self.config.device) if self.config.device != "cpu"
                       else comm.device)
        self._torch_dtype = torch_dtype(self.dtype)
        self._lock = threading.RLock()
        self._closed = False
        self._requests = {"lookups": 0, "ids": 0, "unique_ids": 0}

    # -- routing ---------------------------------------------------------------------------
    def _route(self, uniq: np.ndarray):
        """Unique global ids grouped by owner: (order, ids per owner, local ids in that order)."""
        owners = self.rule.owner(uniq)
        order = np.argsort(owners, kind="stable")
        counts = np.bincount(owners, minlength=self.world_size).astype(np.int64)
        return order, counts, self.rule.local_ids(uniq[order], owners[order])

    def _agree_counts(self, send_counts, error, what: str) -> np.ndarray:
        """Exchange the per-owner counts; a rank whose input was bad sends -1s instead, so
        that it raises its own error and every other rank raises ShardPeerError, before
        any row moves."""
        send = np.full(self.world_size, -1, dtype=np.int64) if error is not None else send_counts
        recv = self._comm.counts(send)
        if error is not None:
            raise error
        failed = np.flatnonzero(recv < 0).tolist()
        if failed:
            raise ShardPeerError(f"rank(s) {failed} refused their part of {what} (their own "
                                 "error says why); nothing was exchanged", failed)
        return recv

    def _raise_if_any_failed(self, error, what: str):
        failed = self._comm.failed_ranks(error is not None)
        if error is not None:
            raise error
        if failed:
            raise ShardPeerError(f"rank(s) {failed} failed their part of {what} (their own error "
                                 "says why)", failed)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    # -- reading ---------------------------------------------------------------------------
    def lookup(self, ids):
        """Rows of ``ids`` (integers of any shape), shape ``ids.shape + (dim,)``. Collective.

        numpy ids give numpy rows; torch ids give a tensor on :attr:`device`.
        """
        with self._lock:
            self._check_open()
            as_torch = is_torch_tensor(ids)
            caught, send_counts = _Caught(), None
            with caught:
                id_array = as_id_array(ids, self.num_rows)
                uniq, inverse, _ = dedupe(id_array.reshape(-1))
                order, send_counts, send_ids = self._route(uniq)
            recv_counts = self._agree_counts(send_counts, caught.error, "lookup")
            self._requests["lookups"] += 1
            self._requests["ids"] += id_array.size
            self._requests["unique_ids"] += len(uniq)
            wanted = self._comm.exchange(torch.from_numpy(send_ids), send_counts, recv_counts)
            rows, error = self._serve(wanted)
            # Each reply to a rank ends with a status row (first value 1: this owner failed),
            # so an owner that cannot read its rows still sends, and nobody waits for it.
            status = torch.zeros((self.world_size, self.dim), dtype=rows.dtype, device=rows.device)
            status[:, 0] = error is not None
            pieces = torch.split(rows, recv_counts.tolist())
            reply = torch.cat([part for k in range(self.world_size)
                               for part in (pieces[k], status[k:k + 1])])
            got = self._comm.exchange(reply, recv_counts + 1, send_counts + 1)
            ends = torch.from_numpy(np.cumsum(send_counts + 1) - 1).to(got.device)
            failed = np.flatnonzero(got[ends, 0].cpu().numpy()).tolist()
            if error is not None:
                raise error
            if failed:
                raise ShardPeerError(f"rank(s) {failed} could not read their rows of this lookup "
                                     "(their own error says why)", failed)
            # sorted position i (owner d) arrived at got[i + d]: one status row per earlier owner
            position = np.empty(len(uniq), dtype=np.int64)
            position[order] = np.arange(len(uniq)) + self.rule.owner(uniq[order])
            index = torch.from_numpy(position[inverse]).to(got.device)
            out = got.index_select(0, index).reshape(id_array.shape + (self.dim,))
            return out.to(self.device) if as_torch else out.cpu().numpy()

    def _serve(self, wanted):
        """This shard's rows of the local ids other ranks asked for (and the error, if any)."""
        if not len(wanted):
            return torch.empty((0, self.dim), dtype=self._torch_dtype,
                               device=self._comm.device), None
        try:
            return self.local.lookup(wanted).to(self._comm.device), None
        except Exception as exc:  # noqa: BLE001 - raised once every rank has its reply
            return torch.zeros((len(wanted), self.dim), dtype=self._torch_dtype,
                               device=self._comm.device), exc

    def prefetch(self, ids) -> PrefetchHandle:
        """Send ``ids`` to their owners, which start reading them in the background. Collective.

        The handle's ``wait()`` waits for this rank's shard's reads (the rows any rank
        asked of it); a later ``lookup`` of the ids takes the staged rows on every owner.
        """
        with self._lock:
            self._check_open()
            caught, send_counts = _Caught(), None
            with caught:
                uniq = dedupe(as_id_array(ids, self.num_rows).reshape(-1))[0]
                _, send_counts, send_ids = self._route(uniq)
            recv_counts = self._agree_counts(send_counts, caught.error, "prefetch")
            wanted = self._comm.exchange(torch.from_numpy(send_ids), send_counts, recv_counts)
            if not len(wanted):
                return _done_handle()
            return self.local.prefetch(wanted.cpu().numpy())

    # -- writing ---------------------------------------------------------------------------
    def update(self, ids, rows):
        """Overwrite rows, each at its owner. Collective.

        Duplicate ids in one rank's call: the last one wins. The same id from several
        ranks in one call: the highest rank wins. Rows owned by ranks that succeed are
        written even when another owner fails (every rank raises then).
        """
        with self._lock:
            self._check_open()
            caught, send_counts = _Caught(), None
            with caught:
                if self.readonly:
                    raise ReadOnlyError(f"sharded store {self.path} is open read-only")
                id_array = as_id_array(ids, self.num_rows)
                new_rows = as_rows(rows, id_array.shape + (self.dim,), self.dtype,
                                   self.format.allow_nonfinite, row_ids=id_array,
                                   codec=self.codec)
                uniq, last = dedupe_last(id_array.reshape(-1))
                order, send_counts, send_ids = self._route(uniq)
                send_rows = new_rows.reshape(-1, self.dim)[last[order]]
            recv_counts = self._agree_counts(send_counts, caught.error, "update")
            got_ids = self._comm.exchange(torch.from_numpy(send_ids), send_counts, recv_counts)
            got_rows = self._comm.exchange(torch.from_numpy(send_rows), send_counts, recv_counts)
            with caught:
                if len(got_ids):  # in rank order, so Store.update's last-wins is highest-rank-wins
                    self.local.update(got_ids.cpu().numpy(), got_rows.cpu().numpy())
            self._raise_if_any_failed(caught.error, "update")

    def apply_gradients(self, ids, grads, optimizer, rows=None) -> int:
        """Train rows: each owner sums every rank's gradients of its rows, applies the row
        optimizer to its current rows and stores them. Collective (call it with ``ids=None``
        when this rank has no gradients). Returns the rows this rank's shard wrote.
        ``rows`` (the rows as this rank read them) is not used: the owners read their own.

        ``ids``: unique global ids (int64), ``grads``: their gradients (torch, ``(n, dim)``).
        :meth:`tierstore.torch.TieredEmbedding.step` calls this for a sharded store: rows
        touched by several ranks get the sum of their gradients, as one process training on
        the union of the ranks' batches would. The optimizer sees global ids, so its state
        (RowAdagrad's sibling store beside this rank's shard) is kept by each row's owner.
        """
        with self._lock:
            self._check_open()
            grad_dtype = torch.promote_types(torch.float32, self._torch_dtype)
            caught, send_counts = _Caught(), None
            with caught:
                if self.readonly:
                    raise ReadOnlyError(f"sharded store {self.path} is open read-only")
                if ids is None:
                    ids = np.empty(0, dtype=np.int64)
                    grads = torch.empty((0, self.dim), dtype=grad_dtype)
                id_array = as_id_array(ids, self.num_rows).reshape(-1)
                if tuple(grads.shape) != (len(id_array), self.dim):
                    raise RowShapeError(f"gradients must have shape {(len(id_array), self.dim)}, "
                                        f"got {tuple(grads.shape)}")
                order, send_counts, send_ids = self._route(id_array)
                send_grads = grads.detach().to(self._comm.device, grad_dtype)[
                    torch.from_numpy(order).to(self._comm.device)]
            recv_counts = self._agree_counts(send_counts, caught.error, "apply_gradients")
            got_ids = self._comm.exchange(torch.from_numpy(send_ids), send_counts, recv_counts)
            got_grads = self._comm.exchange(send_grads, send_counts, recv_counts)
            written = 0
            with caught:
                if len(got_ids):
                    written = self._apply_here(got_ids.cpu().numpy(), got_grads, optimizer)
            self._raise_if_any_failed(caught.error, "apply_gradients")
            return written

    def _apply_here(self, local_ids: np.ndarray, grads, optimizer) -> int:
        uniq, inverse = np.unique(local_ids, return_inverse=True)
        summed = torch.zeros((len(uniq), self.dim), dtype=grads.dtype, device=grads.device)
        summed.index_add_(0, torch.from_numpy(inverse.reshape(-1)).to(grads.device), grads)
        rows = self.local.lookup(torch.from_numpy(uniq)).to(grads.device, grads.dtype)
        new_rows = optimizer.apply(self.rule.global_ids(self.rank, uniq), rows, summed)
        self.local.update(uniq, new_rows)
        optimizer.commit()
        return len(uniq)

    def flush(self):
        """Every shard writes its dirty rows and syncs. Collective."""
        with self._lock:
            self._check_open()
            caught = _Caught()
            with caught:
                self.local.flush()
            self._raise_if_any_failed(caught.error, "flush")

    # -- inspecting ------------------------------------------------------------------------
    _SUMMED = ("lookups", "device_hits", "ram_hits", "disk_reads", "admissions", "evictions",
               "promotions", "demotions", "writebacks", "disk_bytes_read", "disk_bytes_written",
               "requests", "ids_requested", "unique_ids_requested", "bytes_sent",
               "bytes_received")

    def stats(self) -> dict:
        """The whole table's counters, summed over the shards, and ``local``: this shard's
        ``Store.stats()``. Collective.

        ``lookups`` and the hit counts are the shards' (each rank's unique ids count once
        per call at their owner); ``exchange`` counts the caller-side requests and the
        bytes the all-to-alls sent between ranks (payload only: ids, rows, counts and
        status rows; a rank's own part is not counted).
        """
        with self._lock:
            self._check_open()
            local = self.local.stats()
            mine = {"lookups": local["lookups"], "device_hits": local["device"]["hits"],
                    "ram_hits": local["ram"]["hits"], "disk_reads": local["disk"]["reads"],
                    "admissions": local["admissions"], "evictions": local["evictions"],
                    "promotions": local["promotions"], "demotions": local["demotions"],
                    "writebacks": local["writebacks"], "disk_bytes_read": local["disk"]["bytes_read"],
                    "disk_bytes_written": local["disk"]["bytes_written"],
                    "requests": self._requests["lookups"], "ids_requested": self._requests["ids"],
                    "unique_ids_requested": self._requests["unique_ids"],
                    "bytes_sent": self._comm.bytes_sent,
                    "bytes_received": self._comm.bytes_received}
            total = dict(zip(self._SUMMED,
                             map(int, self._comm.sum(np.array([mine[k] for k in self._SUMMED])))))
            lookups = total["lookups"]

            def ratio(x):
                return x / lookups if lookups else 0.0

            return {
                "rank": self.rank, "world_size": self.world_size, "rule": self.rule.kind,
                "lookups": lookups,
                "hit_ratio": ratio(total["device_hits"] + total["ram_hits"]),
                "device": {"hits": total["device_hits"], "hit_ratio": ratio(total["device_hits"])},
                "ram": {"hits": total["ram_hits"], "hit_ratio": ratio(total["ram_hits"])},
                "disk": {"reads": total["disk_reads"], "read_ratio": ratio(total["disk_reads"]),
                         "bytes_read": total["disk_bytes_read"],
                         "bytes_written": total["disk_bytes_written"]},
                **{k: total[k] for k in ("admissions", "evictions", "promotions", "demotions",
                                         "writebacks")},
                "exchange": {k: total[k] for k in ("requests", "ids_requested",
                                                   "unique_ids_requested", "bytes_sent",
                                                   "bytes_received")},
                "local": dict(local, exchange={"bytes_sent": mine["bytes_sent"],
                                               "bytes_received": mine["bytes_received"]}),
            }

    def check(self) -> CheckReport:
        """Every shard verifies its stored rows; one report for the table, global ids. Collective."""
        with self._lock:
            self._check_open()
            report = self.local.check()
            corrupt = self.rule.global_ids(self.rank, np.asarray(report.corrupt_ids, dtype=np.int64))
            mine = (report.rows_checked, corrupt.tolist(),
                    [f"rank {self.rank} ({self.path}): {p}" for p in report.problems])
            reports = self._comm.gather_objects(mine)
            return CheckReport(rows_checked=sum(r[0] for r in reports),
                               corrupt_ids=sorted(i for r in reports for i in r[1]),
                               problems=[p for r in reports for p in r[2]])

    # -- life cycle ------------------------------------------------------------------------
    def close(self):
        """Every shard flushes (unless read-only) and closes. Collective; twice is harmless."""
        with self._lock:
            if self._closed:
                return
            caught = _Caught()
            with caught:
                self.local.close()
            self._closed = True
            self._raise_if_any_failed(caught.error, "close")

    def __repr__(self):
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return (f"<tierstore.distributed.ShardedStore {self.num_rows}x{self.dim} {self.dtype} "
                f"rule={self.rule.kind} rank {self.rank}/{self.world_size} "
                f"shard={str(self.path)!r} {state}>")

    def _check_open(self):
        if self._closed:
            raise ClosedStoreError(f"sharded store {self.path} is closed")


# -- resharding ------------------------------------------------------------------------------
def reshard(src, dst, world_size: int, *, rule: str | None = None,
            config: StoreConfig | None = None, overwrite: bool = False,
            src_world_size: int | None = None) -> dict:
    """Rewrite the sharded table at ``src`` as ``world_size`` shards at ``dst``, in one process.

    No process group is needed: run it once, offline, where every source shard is
    readable (copy the shards of all hosts to one place first). ``src`` and ``dst``
    are directories or ``{rank}`` templates (see :func:`shard_path`); ``rule``
    defaults to the source's. The source's world size is read from its shard
    records (``src_world_size`` is needed only for a template with ``{world}``). The new shards keep the source's dtype, codec and constant init.
    Returns ``{"rows": ..., "world_size": ..., "rule": ...}``.
    """
    world_size = _positive_int("world_size", world_size)
    config = StoreConfig(device_rows=0, ram_rows=1) if config is None else config
    sources = _open_sources(src, config, src_world_size)
    try:
        first, record = sources[0]
        old = ShardingRule(record.rule, record.num_rows, record.world_size)
        new = ShardingRule(rule or record.rule, record.num_rows, world_size)
        constant = first.format.constant  # rows without a record read as it: keep it
        targets = []
        try:
            for rank in range(world_size):
                where = shard_path(dst, rank, world_size)
                target = api.create(where, new.local_rows(rank), first.dim, first.dtype,
                                    init=constant, config=config, overwrite=overwrite,
                                    codec=first.codec,
                                    allow_nonfinite=first.format.allow_nonfinite)
                targets.append(target)
            for rank, (source, _) in enumerate(sources):
                for start in range(0, source.num_rows, CREATE_CHUNK):
                    local = np.arange(start, min(start + CREATE_CHUNK, source.num_rows))
                    ids = old.global_ids(rank, local)
                    rows = source.lookup(local)
                    owners = new.owner(ids)
                    for owner in np.unique(owners):
                        mask = owners == owner
                        targets[owner].update(new.local_ids(ids[mask], owners[mask]), rows[mask])
            for rank, target in enumerate(targets):
                target.flush()
                _write_shard_record(target, ShardMeta(rank, world_size, new.kind, new.num_rows))
        finally:
            for target in targets:
                target.close()
        return {"rows": new.num_rows, "world_size": world_size, "rule": new.kind}
    finally:
        for source, _ in sources:
            source.close()


def _open_sources(src, config: StoreConfig, world_size: int | None):
    """Every shard of the sharded table at ``src``, read-only, checked against each other."""
    where = _find_first_shard(src, world_size)
    if not (where / "data.mdb").exists():
        raise NotAStoreError(f"{where}: no such shard (rank 0)")
    first = api.open(where, config, readonly=True)
    try:
        record = _read_shard_record(first)
        expected_world = world_size or (record.world_size if record else 0)
        _check_record(record, first.path, 0, expected_world, first.num_rows)
    except BaseException:
        first.close()
        raise
    sources = [(first, record)]
    try:
        for rank in range(1, record.world_size):
            where = shard_path(src, rank, record.world_size)
            if not (where / "data.mdb").exists():
                raise NotAStoreError(f"{where}: no such shard (rank {rank} of {record.world_size})")
            shard = api.open(where, config, readonly=True)
            sources.append((shard, _read_shard_record(shard)))
            _check_record(sources[-1][1], where, rank, record.world_size, shard.num_rows)
            if (sources[-1][1].rule, sources[-1][1].num_rows, shard.dim, shard.dtype) != \
                    (record.rule, record.num_rows, first.dim, first.dtype):
                raise ShardMismatchError(f"{where}: a shard of another table than {first.path}")
    except BaseException:
        for shard, _ in sources:
            shard.close()
        raise
    return sources


def _find_first_shard(src, world_size: int | None) -> Path:
    """Rank 0's shard of the table at ``src``."""
    if world_size is not None:
        return shard_path(src, 0, world_size)
    if "{world" in str(src):
        raise ConfigError(f"{src}: pass src_world_size, the template's {{world}} is not known")
    if "{rank" in str(src):
        return shard_path(src, 0, 0)
    found = sorted(p for p in Path(src).glob("shard-*-of-*")
                   if (m := _SHARD_NAME_RE.match(p.name)) and int(m.group(1)) == 0)
    if len(found) != 1:
        raise NotAStoreError(f"{src}: expected one rank-0 shard, found {len(found)}")
    return found[0]
