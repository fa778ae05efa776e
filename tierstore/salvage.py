"""Salvage: copy every readable row of a damaged store into a new one.

    from tierstore.salvage import salvage        # also tierstore.api.salvage
    report = salvage("damaged.ts", "rescued.ts")
    print(report)                  # rows copied, ids that could not be read
    report.unreadable_ids          # those rows have no record in the copy

It walks the records that exist (a child process streams them: LMDB's cursor aborts
the process on a damaged page, so the walk must not run in the caller's), so a sparse
table costs its records, not its ids. What it survives: records that fail their checksum
or do not decode (row values with flipped bytes), damaged LMDB pages (where the walk
stops short, the ids after it are probed on their own, so only the ids that really
cannot be read are lost), a
truncated ``data.mdb`` (salvaged from a zero-extended temporary copy made next
to the destination: the missing pages read as damaged), and a damaged metadata
record when the caller says what it held (``num_rows``, ``dim``, ``dtype``,
``codec``).

Readable records are copied byte for byte (no decode/encode round trip, so an
``int8`` store loses nothing more), after their checksum and decoding are
verified. Rows with no readable record get no record in the copy: in a store of
constant ``init`` they read as it; in a store created from an array, a callable or an
import (where every row had a record, so a missing one is reported as lost) a lookup
of them raises CorruptRowError until they are written again.

The copy is built beside ``dst`` and swapped in whole (:mod:`tierstore.build`): a store
already at ``dst`` (``overwrite=True``) stays until the copy is complete. The source is
never written to. Its writer lock is taken for the duration, so a
store open for writing elsewhere is refused with StoreLockedError.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from .build import StoreBuild
from .config import DTYPES
from .errors import (ConfigError, CorruptRowError, CorruptStoreError, FormatVersionError,
                     NotAStoreError, StoreLockedError)
from .progress import progress as progress_bar
from .record_walk import BATCH, RecordWalk
from .tiers.disk import (LOCK_FILE, MIN_FILE_BYTES, DiskTier, FramedRows, acknowledged_commit,
                         existing_store_error, rollback_problem)
from .table import TableFormat
from .tiers.format import DICT_KEY, META_DB, META_KEY, ROWS_DB, decode_meta, row_keys, unframe_record
from .validation import check_int

CHUNK = 1 << 14           # records read (and written) per transaction
DEST_MAP_SIZE = 1 << 24   # the copy's map starts here and grows as needed
_LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError, lmdb.BadTxnError)


@dataclass
class SalvageReport:
    """What :func:`salvage` copied and what it could not read."""

    src: str
    dst: str
    num_rows: int
    rows_copied: int = 0
    # runs [start, stop) of row ids that could not be read (damaged record or page)
    unreadable_runs: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def unreadable_ids(self) -> np.ndarray:
        """Every row id that could not be read (sorted); it has no record in ``dst``."""
        if not self.unreadable_runs:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in self.unreadable_runs])

    @property
    def unreadable_count(self) -> int:
        return sum(b - a for a, b in self.unreadable_runs)

    @property
    def ok(self) -> bool:
        """True when nothing was lost."""
        return not self.unreadable_runs and not self.problems

    def _add_unreadable(self, start: int, stop: int):
        """Add the run [start, stop), keeping the runs sorted and merged (a batch's missing
        records and its corrupt ones are found in separate passes)."""
        runs = self.unreadable_runs
        k = bisect.bisect_left(runs, (start, stop))
        runs.insert(k, (start, stop))
        k = max(k - 1, 0)
        while k + 1 < len(runs):
            if runs[k][1] >= runs[k + 1][0]:
                runs[k:k + 2] = [(runs[k][0], max(runs[k][1], runs[k + 1][1]))]
            elif runs[k][0] > stop:
                break
            else:
                k += 1

    def __str__(self):
        lines = [(f"salvaged {self.src} -> {self.dst}: {self.rows_copied} records copied, "
                  f"{self.unreadable_count} rows unreadable (no record in the copy)")]
        if self.unreadable_runs:
            shown = ", ".join(str(a) if b == a + 1 else f"{a}-{b - 1}" for a, b in self.unreadable_runs)
            lines.append("unreadable row ids: " + shown)
        lines.extend(self.problems)
        return "\n".join(lines)


def salvage(src, dst, *, overwrite: bool = False, num_rows: int | None = None,
            dim: int | None = None, dtype=None, codec=None,
            progress: bool = False) -> SalvageReport:
    """Copy every readable row of the store at ``src`` into a new store at ``dst``.

    Returns a :class:`SalvageReport` naming the row ids that could not be read;
    in ``dst`` they have no record (see the module's docstring). ``num_rows``, ``dim``, ``dtype`` and
    ``codec`` describe the store when its metadata record is damaged (when it is
    readable they must agree with it). Raises NotAStoreError when ``src`` holds
    no LMDB database, CorruptStoreError when nothing at all can be read,
    StoreLockedError while a writer has ``src`` open, FileExistsError when ``dst``
    holds a store and ``overwrite`` is False.
    """
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst, overwrite)
    lock_fd = _take_writer_lock(src)
    workdir = None
    try:
        env, workdir, truncated = _open_source(src, dst)
        try:
            meta, dictionary, rolled_back = _source_meta(env, src, num_rows, dim, dtype, codec)
            report = SalvageReport(str(src), str(dst), meta.num_rows)
            for problem in (truncated, rolled_back):
                if problem:
                    report.problems.append(problem)
            build = StoreBuild(dst, meta, dictionary, map_size=_dest_map_size(src),
                               max_map_size=None, overwrite=overwrite)
            try:
                with progress_bar(meta.num_rows, f"salvage {src.name}", enabled=progress) as bar:
                    _copy_rows(env, build.disk, meta.num_rows, report, bar)
            except BaseException:
                build.abort()
                raise
            build.finish()
            return report
        finally:
            env.close()
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)


# -- the source ------------------------------------------------------------------------------
def _check_paths(src: Path, dst: Path, overwrite: bool):
    data = src / "data.mdb"
    if not src.exists():
        raise NotAStoreError(f"{src}: no such store")
    if not data.is_file():
        raise NotAStoreError(f"{src}: not a tierstore (no data.mdb inside)")
    if data.stat().st_size < MIN_FILE_BYTES:
        raise NotAStoreError(f"{data}: too short to be an LMDB database ({data.stat().st_size} bytes)")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise ConfigError(f"salvage needs a new destination, not the source itself ({dst})")
    if (dst / "data.mdb").exists() and not overwrite:
        raise existing_store_error(dst)


def _take_writer_lock(src: Path):
    """Keep a writer out while we copy; None where the folder cannot hold a lock file."""
    try:
        fd = os.open(src / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None  # a read-only medium: no writer can be changing it either
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise StoreLockedError(f"{src}: a writer has this store open; close it before salvaging") from None
        raise
    return fd


def _open_env(path: Path, map_size: int) -> lmdb.Environment:
    try:
        # lock=False: nothing else writes (we hold the writer lock), and the source's
        # lock.mdb may itself be damaged or on a read-only medium
        return lmdb.open(str(path), map_size=map_size, max_dbs=2, readonly=True, lock=False,
                         readahead=False, create=False)
    except lmdb.InvalidError as exc:
        raise NotAStoreError(f"{path}: not an LMDB database ({exc})") from None
    except lmdb.Error as exc:
        raise CorruptStoreError(f"{path}: LMDB cannot open it ({exc})") from None


def _needed_bytes(env) -> int:
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def _open_source(src: Path, dst: Path):
    """The source environment; a truncated data file is read from a zero-extended copy."""
    size = (src / "data.mdb").stat().st_size
    env = _open_env(src, size)
    needed = _needed_bytes(env)  # from the meta pages (read with pread, not the map)
    if size >= needed:
        return env, None, None
    env.close()
    parent = dst.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".salvage-", dir=parent))
    try:
        shutil.copyfile(src / "data.mdb", workdir / "data.mdb")
        with open(workdir / "data.mdb", "r+b") as f:
            f.truncate(needed)  # the missing pages read as zeros: LMDB reports them as damaged
        env = _open_env(workdir, needed)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    problem = (f"data.mdb is truncated ({size} of {needed} bytes): rows on the "
               f"{(needed - size) // env.stat()['psize']} missing pages are lost")
    return env, workdir, problem


def _source_meta(env, src: Path, num_rows, dim, dtype, codec):
    """The source's metadata and zstd dictionary, or one built from the caller's description,
    and why the data is older than its last acknowledged flush (or None)."""
    hints = {"num_rows": num_rows, "dim": dim, "dtype": dtype, "codec": codec}
    meta, dictionary, why = None, None, None
    try:
        env.open_db(ROWS_DB, create=False)
    except _LMDB_DAMAGE as exc:
        raise CorruptStoreError(
            f"{src}: LMDB's table of tables is damaged ({exc}): no row can be reached, "
            "nothing can be salvaged") from None
    except lmdb.Error:
        pass  # a missing rows table: the copy reports every row unreadable
    try:
        meta_db = env.open_db(META_DB, create=False)
        with env.begin(db=meta_db) as txn:
            raw, raw_dict = txn.get(META_KEY), txn.get(DICT_KEY)
        meta, _, commit = decode_meta(raw, src)
        if raw_dict is not None:
            dictionary = unframe_record(DICT_KEY, raw_dict, "zstd dictionary")
        DiskTier.codec_for(meta, dictionary)
    except FormatVersionError:
        raise
    except (NotAStoreError, CorruptStoreError, ConfigError, lmdb.Error) as exc:
        meta, why = None, str(exc)
    if meta is not None:
        for name, want in (("num_rows", num_rows), ("dim", dim)):
            if want is not None and want != getattr(meta, name):
                raise ConfigError(f"{src}: the store has {name} {getattr(meta, name)}, not {want!r}")
        if dtype is not None and _dtype_name(dtype) != meta.dtype:
            raise ConfigError(f"{src}: the store's dtype is {meta.dtype}, not {dtype!r}")
        return meta, dictionary, rollback_problem(src, commit, acknowledged_commit(src))
    missing = [k for k in ("num_rows", "dim", "dtype") if hints[k] is None]
    if missing:
        raise CorruptStoreError(
            f"{src}: the metadata record cannot be read ({why}); to salvage the rows anyway "
            f"pass {', '.join(missing)} (and codec, if not 'raw') as they were at creation")
    from .codecs import get_codec

    codec_obj = get_codec("raw" if codec is None else codec)
    if codec_obj.needs_training():
        raise ConfigError("a zstd store with a trained dictionary cannot be salvaged without "
                          "its dictionary record")
    for name in ("num_rows", "dim"):
        check_int(name, hints[name], 1, expected="a positive int")
    meta = TableFormat(num_rows=num_rows, dim=dim, dtype=_dtype_name(dtype),
                       codec=codec_obj.get_config(), init_kind="constant", init_value=0.0)
    return meta, getattr(codec_obj, "dictionary", None), None


def _dtype_name(dtype) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def _dest_map_size(src: Path) -> int:
    size = (src / "data.mdb").stat().st_size
    return max(DEST_MAP_SIZE, 1 << max(20, (size - 1).bit_length()))


# -- copying ----------------------------------------------------------------------------------
def _copy_rows(env, out: DiskTier, num_rows: int, report: SalvageReport, bar):
    """Walk the records that exist and copy those that verify.

    The walk runs in a child process (:mod:`tierstore.record_walk`): LMDB's cursor aborts
    the process when it steps onto a damaged sibling page. Where the child stops short,
    the ids from there are probed one by one (point lookups are safe: LMDB checks the
    pages a lookup descends through), over a window that doubles while the walk keeps
    failing, and the walk resumes after it. Memory: one batch of records at a time.
    """
    try:
        rows_db = env.open_db(ROWS_DB, create=False)
    except (lmdb.NotFoundError, lmdb.IncompatibleError):
        report.problems.append("the rows table is missing: no row could be read")
        report._add_unreadable(0, num_rows)
        return
    scratch = np.empty((max(CHUNK, BATCH), out.format.dim), dtype=out.dtype)
    next_id, window = 0, CHUNK
    while next_id < num_rows:
        walk = RecordWalk(env.path(), env.info()["map_size"], next_id)
        past_the_table = False
        for keys, values in walk.batches():
            ids = np.frombuffer(keys, dtype=">u8")
            inside = int(np.searchsorted(ids, num_rows))    # keys past the table: not rows
            if inside:
                if out.format.every_row_stored:
                    _report_gaps(ids[:inside], next_id, report)
                _copy_verified(out, ids[:inside].astype(np.int64), values[:inside], scratch,
                               report)
                bar.update(int(ids[inside - 1]) + 1 - next_id)
                next_id, window = int(ids[inside - 1]) + 1, CHUNK
            if inside < len(ids):
                past_the_table = True
                break
        walk.close()
        if walk.complete or past_the_table or next_id >= num_rows:
            break
        stop = min(next_id + window, num_rows)   # the walk stopped short: probe, then resume
        ids = np.arange(next_id, stop, dtype=np.int64)
        found, reached, values = _read_ids(env, rows_db, ids, report)
        if out.format.every_row_stored:   # every row had a record: a missing one was lost
            for k in np.flatnonzero(reached & ~found):
                report._add_unreadable(int(ids[k]), int(ids[k]) + 1)
        if values:
            _copy_verified(out, ids[found], values, scratch, report)
        bar.update(stop - next_id)
        next_id, window = stop, 2 * window
    if out.format.every_row_stored and next_id < num_rows:
        report._add_unreadable(next_id, num_rows)
    bar.update(num_rows - next_id)


def _report_gaps(ids, expected: int, report: SalvageReport):
    """Ids from ``expected`` up to the last of sorted ``ids`` that have no record: lost."""
    starts = np.concatenate([[expected], ids[:-1].astype(np.int64) + 1])
    for k in np.flatnonzero(ids.astype(np.int64) > starts):
        report._add_unreadable(int(starts[k]), int(ids[k]))


def _read_ids(env, rows_db, ids, report):
    """Records of ``ids``: (mask of ids with a record, mask of ids whose lookup worked, their
    values); unreachable ids are reported."""
    keys = row_keys(ids)
    found = np.zeros(len(ids), dtype=bool)
    reached = np.ones(len(ids), dtype=bool)
    values = []
    k = 0
    while k < len(keys):
        try:
            with env.begin(db=rows_db) as txn:
                get = txn.get
                while k < len(keys):
                    value = get(keys[k])
                    if value is not None:
                        found[k] = True
                        values.append(value)
                    k += 1
        except _LMDB_DAMAGE:  # the transaction is spoilt: the next id gets a fresh one
            report._add_unreadable(int(ids[k]), int(ids[k]) + 1)
            reached[k] = False
            k += 1
    return found, reached, values


def _copy_verified(out: DiskTier, ids, values, scratch, report):
    """Verify checksums and decoding; copy the good records verbatim, report the others."""
    good = np.ones(len(ids), dtype=bool)
    try:
        out.decode_into(ids, values, scratch, np.arange(len(ids)))
    except CorruptRowError:
        for k in range(len(ids)):
            try:
                out.decode_into(ids[k:k + 1], values[k:k + 1], scratch, np.zeros(1, dtype=np.int64))
            except CorruptRowError:
                good[k] = False
                report._add_unreadable(int(ids[k]), int(ids[k]) + 1)
    kept_ids = ids[good]
    kept = [v for v, g in zip(values, good) if g]
    if kept:   # ids ascend through the whole copy: appended, verbatim
        out.append_framed(FramedRows(int(kept_ids[0]), len(kept),
                                     kept_ids.astype(">u8").tobytes(), kept, 0,
                                     sum(map(len, kept))))
    report.rows_copied += len(kept)
