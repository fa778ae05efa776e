"""The disk tier: every row of the store in LMDB, one framed value per row.

In a store of constant init, rows never written (and rows equal to the constant)
have no record and read as the init value; in a store created from an array, a
callable or an import every row has a record, and a missing one is damage.
Every write transaction also rewrites the metadata with the next commit number;
after each sync that number goes to the file ``last_commit`` beside the data, and
an open refuses data older than it (LMDB rolled back to a stale meta page).
The map grows by doubling when full, up to the configured ceiling; a reader whose map another process outgrew adopts the new
size. A remap waits for the process's read transactions (a prefetch thread may
be reading) and holds new ones off, so no read ever sees a map being replaced.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from ..codecs import Codec, get_codec
from ..errors import (ConfigError, CorruptRowError, CorruptStoreError, DiskFullError,
                      NotAStoreError, RolledBackStoreError, StoreLockedError,
                      StorePermissionError, TierstoreError)
from ..kernels.codec import frame_rows, frame_word_rows, verify_frames, verify_raw_words
from ..table import TableFormat
from .lmdb_files import check_lock_file, check_meta_pages
from .format import (DICT_KEY, FORMAT_VERSION, META_DB, META_KEY, ROWS_DB, decode_meta, encode_meta,
                     frame, row_keys, unframe_record)

LOCK_FILE = "writer.lock"
COMMIT_FILE = "last_commit"   # the commit number of the last synced flush
_LITTLE_ENDIAN = sys.byteorder == "little"   # frame_word_rows, verify_raw_words: native words


MIN_FILE_BYTES = 2 * 4096  # LMDB's two meta pages
# below this many free bytes on the file system, a failed write is "disk full"
DISK_FULL_SLACK = 16 << 20
# the largest frames buffer a thread keeps for its next read (a fresh block of 16 MB, one
# 65,536-id batch's frames, page-faults: 5 ms a read, where the kept one takes 2)
SCRATCH_BYTES = 64 << 20
# gets in one C loop between two Python steps: py-lmdb holds the GIL through a get, and the
# interpreter hands the GIL to another thread (a lookup, the planner) only between steps. A
# run's values (2,048 of 260 bytes: 0.6 MB) fit in one of the interpreter's 1 MB arenas, which
# the next run reuses once the run is copied out (a read of 61,000 rows page-faulted about 24
# times in runs of 2,048, 1,100 to 2,100 in runs of 4,096)
GETS_AT_ONCE = 2048
_ENVS: dict[str, list] = {}  # real path -> [environment, readonly, users, MapGuard]
_ENVS_LOCK = threading.Lock()
# LMDB errors that mean damaged pages (a read of them raises CorruptStoreError)
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError)


def existing_store_error(path) -> FileExistsError:
    """The error for creating at ``path``, which holds a ``data.mdb``, without overwrite; it
    says what ``open`` says of it (a store, or files that are not one, such as those of a
    create or import killed part way)."""
    try:
        DiskTier(path, readonly=True, map_size=MIN_FILE_BYTES, max_map_size=None).close()
        what = "a store already exists"
    except TierstoreError as exc:
        what = (f"it holds files that do not open as a store ({exc}; a create or import "
                "killed part way leaves such files)")
    return FileExistsError(f"{path}: {what}; pass overwrite=True to replace it")


def acknowledged_commit(folder: Path) -> int | None:
    """The commit number of the store's last acknowledged flush (``last_commit``), or None
    when none was recorded (a version-1 store, or one copied without it)."""
    try:
        text = (folder / COMMIT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _open_error(folder / COMMIT_FILE, exc) from None
    if not text.endswith(b"\n") or not text[:-1].isdigit() or len(text) > 21:
        raise CorruptStoreError(f"{folder / COMMIT_FILE}: not a commit number ({text[:40]!r})")
    return int(text)


def rollback_problem(folder: Path, commit: int, acknowledged: int | None) -> str | None:
    """Why data at ``commit`` is older than the last acknowledged flush, or None."""
    if acknowledged is None or commit >= acknowledged:
        return None
    return (f"{folder}: the data is older than its last acknowledged flush (LMDB holds "
            f"commit {commit}, {COMMIT_FILE} says {acknowledged}): a meta page of data.mdb was "
            "damaged or the file was replaced by an older copy; salvage it or restore a backup")


def _open_error(path, exc) -> Exception:
    """What a failed open of ``path`` raises: a permission error where the user may not
    read or write the files LMDB needs, else CorruptStoreError."""
    denied = getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EROFS) or \
        "Permission denied" in str(exc) or "Read-only file system" in str(exc)
    if denied:
        return StorePermissionError(
            f"{path}: permission denied ({exc}); a read-only open still needs to write "
            "lock.mdb (LMDB's reader table): give the user write access to the folder")
    return CorruptStoreError(f"{path}: LMDB cannot open it ({exc})")


class MapGuard:
    """Read transactions share the memory map; a remap (``set_mapsize``) has it alone.

    py-lmdb invalidates every open transaction of the process when the map is
    replaced, so a prefetch thread reading while the writer grows the map would
    fail. Readers take the shared side; a remap waits for them to finish and
    holds new ones off (writers first: readers cannot starve it).
    """

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._remapping = False

    @contextmanager
    def reading(self):
        with self._cond:
            while self._remapping:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def remapping(self):
        with self._cond:
            while self._remapping:
                self._cond.wait()
            self._remapping = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._remapping = False
                self._cond.notify_all()


def _acquire_env(path: Path, map_size: int, readonly: bool, create: bool):
    """The process's one LMDB environment for ``path`` and its guard: LMDB forbids opening it twice."""
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is not None:
            if entry[1] and not readonly:
                raise StoreLockedError(
                    f"{path}: this process has the store open read-only; "
                    "close those handles before opening it for writing")
            entry[2] += 1
            return entry[0], entry[3]
        if not create:
            check_lock_file(Path(path))   # only here: the process has no descriptor of it open
        # a store being built commits without fsync: it is synced once, by commit_meta,
        # before anything can find it
        env = lmdb.open(str(path), map_size=map_size, max_dbs=2, readonly=readonly,
                        readahead=False, meminit=False, create=create, lock=True,
                        sync=not create)
        _ENVS[key] = [env, readonly, 1, MapGuard()]
        return env, _ENVS[key][3]


def open_in_process(path) -> bool:
    """Whether this process has the store at ``path`` open (any mode)."""
    with _ENVS_LOCK:
        return os.path.realpath(path) in _ENVS


def _release_env(path: Path):
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] == 0:
            entry[0].close()
            del _ENVS[key]


@dataclass(frozen=True)
class FramedRows:
    """Consecutive rows ready to append: their keys, and their framed values (one bytes
    object of ``width``-byte values, or a list of values of varying length)."""

    first_id: int
    count: int
    keys: bytes
    values: bytes | list
    width: int
    nbytes: int

    def items(self):
        """(key, value) pairs, made afresh on each call (a write retried after the map grew)."""
        keys, values, width = self.keys, self.values, self.width
        if width:
            return ((keys[8 * i:8 * i + 8], values[width * i:width * (i + 1)])
                    for i in range(self.count))
        return ((keys[8 * i:8 * i + 8], v) for i, v in enumerate(values))


class DiskTier:
    """An open LMDB environment holding one store's rows and metadata.

    Open an existing store with ``DiskTier(path, ...)``; make a new one with
    :meth:`DiskTier.create`, write its rows, then :meth:`commit_meta`: a store
    whose creation failed half way has no metadata and no files left.
    """

    def __init__(self, path, *, readonly: bool, map_size: int, max_map_size: int | None,
                 _create: tuple | None = None, lock_fd: int | None = None):
        """``lock_fd``: the store's writer lock, already taken (a build hands it over)."""
        self.path = Path(path)
        self.commit = 0          # the commit number of the newest committed write
        self._meta_live = False  # writes rewrite the metadata (not while a store is created)
        self.readonly = readonly
        self.max_map_size = max_map_size
        self.env = None
        self._guard = None
        self._lock_fd = lock_fd
        self.bytes_read = 0
        self.bytes_written = 0
        self._scratch = threading.local()   # per reading thread: its frames buffer
        try:
            if _create is None:
                self._check_files()
                check_meta_pages(self.path / "data.mdb")
            if not readonly and self._lock_fd is None:
                self._take_writer_lock()
            if _create is not None:
                self._clear_for_create(overwrite=_create[2])
                self.format, self._dictionary = _create[0], _create[1]
                self.version = FORMAT_VERSION
                self._open_env(map_size, create=True)
                self.codec = self.codec_for(self.format, self._dictionary)
            else:
                acknowledged = self._read_commit_file()   # first: it never runs ahead of LMDB
                self._open_env(map_size, create=False)
                self.format, self.version, self.commit, self.codec = self._read_meta()
                self._refuse_rollback(acknowledged)
                self._meta_live = not readonly
            self.dtype = self.format.np_dtype
            self.row_bytes = self.format.dim * self.dtype.itemsize
            # raw rows a whole number of 8-byte steps: checked and copied in one pass of words
            self._raw_words = (self.codec.codec_id == "raw" and self.row_bytes % 8 == 0
                               and _LITTLE_ENDIAN)
            constant = self.format.constant
            self.fill_row = np.full(self.format.dim, 0 if constant is None else constant,
                                    dtype=self.dtype)
        except BaseException:
            self.close()
            raise

    @classmethod
    def create(cls, path, table: TableFormat, dictionary: bytes | None, *, map_size: int,
               max_map_size: int | None, overwrite: bool) -> "DiskTier":
        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(path, readonly=False, map_size=map_size, max_map_size=max_map_size,
                   _create=(table, dictionary, overwrite))

    def commit_meta(self):
        """Write the metadata record: from now on the path is a store."""
        def put(txn):
            if self._dictionary is not None:
                txn.put(DICT_KEY, frame(DICT_KEY, self._dictionary), db=self.meta_db)
        self._meta_live = True
        self.write(put)
        self.sync()

    def adopt_format(self, table: TableFormat):
        """Take ``table`` as this store's format (a version-1 store, which did not record
        ``allow_nonfinite``); it is saved with the next write."""
        self.format = table

    def destroy(self):
        """Close and delete the files of a store whose creation failed."""
        self.close(release_lock=False)
        self._remove_files()
        self._release_lock()

    # -- opening ---------------------------------------------------------------------------
    def _check_files(self):
        data = self.path / "data.mdb"
        if not self.path.exists():
            raise NotAStoreError(f"{self.path}: no such store")
        if not data.is_file():
            raise NotAStoreError(f"{self.path}: not a tierstore (no data.mdb inside)")
        if data.stat().st_size < MIN_FILE_BYTES:
            raise NotAStoreError(f"{data}: too short to be an LMDB database "
                                 f"({data.stat().st_size} bytes)")

    def _clear_for_create(self, overwrite: bool):
        if (self.path / "data.mdb").exists():
            if not overwrite:
                raise existing_store_error(self.path)
            self._remove_files()

    def _remove_files(self):
        for name in ("data.mdb", "lock.mdb", COMMIT_FILE):
            (self.path / name).unlink(missing_ok=True)

    def _open_env(self, map_size, create):
        if not create:
            map_size = max(map_size, (self.path / "data.mdb").stat().st_size)
        try:
            self.env, self._guard = _acquire_env(self.path, map_size, self.readonly, create)
            self.env.reader_check()   # slots of readers that died inside a read pin pages
            if not create:
                # before any page is touched: open_db reads the root pages, and a page past
                # the end of a truncated file is a SIGBUS, not an exception
                self._check_length()
            self.rows_db = self.env.open_db(ROWS_DB, create=create)
            self.meta_db = self.env.open_db(META_DB, create=create)
        except lmdb.InvalidError as exc:
            raise NotAStoreError(f"{self.path}: not an LMDB database ({exc})") from None
        except (lmdb.NotFoundError, lmdb.IncompatibleError):
            raise NotAStoreError(f"{self.path}: an LMDB database without tierstore tables") from None
        except lmdb.Error as exc:
            raise _open_error(self.path, exc) from None

    def _check_length(self):
        """A truncated data file would crash the process (SIGBUS) on first touch: refuse it."""
        info = self.env.info()
        needed = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        actual = (self.path / "data.mdb").stat().st_size
        if actual < needed:
            raise CorruptStoreError(
                f"{self.path / 'data.mdb'}: truncated ({actual} bytes, LMDB needs {needed})")

    def _take_writer_lock(self):
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(
                    f"{self.path}: another writer has this store open; "
                    "open it with readonly=True or close the other writer") from None
            raise
        self._lock_fd = fd

    def _release_lock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _read_meta(self) -> tuple[TableFormat, int, int, Codec]:
        with self.reading(self.meta_db) as txn:
            table, version, commit = decode_meta(txn.get(META_KEY), self.path)
            raw_dict = txn.get(DICT_KEY)
        dictionary = None
        if raw_dict is not None:
            dictionary = unframe_record(DICT_KEY, raw_dict, "zstd dictionary")
        elif table.codec.get("id") == "zstd" and table.codec.get("dict_size", 0) > 0:
            raise CorruptStoreError(f"{self.path}: the zstd dictionary record is missing")
        try:
            return table, version, commit, self.codec_for(table, dictionary)
        except ConfigError as exc:
            raise CorruptStoreError(f"{self.path}: metadata names a bad codec ({exc})") from None

    @staticmethod
    def codec_for(table: TableFormat, dictionary: bytes | None) -> Codec:
        """The codec a table's format names, with its trained dictionary (when it has one)."""
        config = dict(table.codec)
        if dictionary is not None:
            config["dictionary"] = dictionary
        return get_codec(config)

    # -- the commit number -----------------------------------------------------------------
    def _read_commit_file(self) -> int | None:
        return acknowledged_commit(self.path)

    def _refuse_rollback(self, acknowledged: int | None):
        problem = rollback_problem(self.path, self.commit, acknowledged)
        if problem:
            raise RolledBackStoreError(problem)

    def _write_commit_file(self):
        """``last_commit`` := the synced commit number: temp file, fsync, rename, fsync folder."""
        tmp = self.path / f".{COMMIT_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"%d\n" % self.commit)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / COMMIT_FILE)
        folder = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def close(self, release_lock: bool = True):
        if self.env is not None:
            self.env = None
            _release_env(self.path)
        if release_lock:
            self._release_lock()

    # -- writing ---------------------------------------------------------------------------
    def write(self, body):
        """Run ``body(txn)`` in one write transaction, growing the map while it is full.

        The transaction commits all or nothing: when it fails, what was committed
        before is intact. A full disk raises DiskFullError; another failure of the
        disk an OSError; never a bare ``lmdb.Error``, so callers can keep the rows.
        """
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    body(txn)
                    if self._meta_live:
                        txn.put(META_KEY, encode_meta(self.format, self.commit + 1), db=self.meta_db)
                if self._meta_live:
                    self.commit += 1
                    self.version = FORMAT_VERSION   # a version-1 store is upgraded by its first write
                return
            except lmdb.MapFullError:
                self._grow()
            except (lmdb.Error, OSError) as exc:
                raise self._write_error(exc) from None

    def _write_error(self, exc) -> OSError:
        """The error to raise for a failed write: LMDB reports a full disk as EIO (a short write)."""
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            return exc
        try:
            st = os.statvfs(self.path)
            free = st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)
        except OSError:
            free = None
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
                (free is not None and free < DISK_FULL_SLACK):
            return DiskFullError(f"{self.path}: no space left on the disk "
                                 f"({free} bytes free; {exc}); nothing of this write was stored")
        return OSError(errno.EIO, f"{self.path}: the disk failed the write ({exc}); "
                       "nothing of this write was stored")

    def _grow(self):
        current = self.env.info()["map_size"]
        target = current * 2
        if self.max_map_size is not None:
            if current >= self.max_map_size:
                raise DiskFullError(
                    f"{self.path}: LMDB map is full at its ceiling max_map_size={self.max_map_size}")
            target = min(target, self.max_map_size)
        with self._guard.remapping():
            self.env.set_mapsize(target)

    @contextmanager
    def reading(self, db=None):
        """A read transaction (on ``db``, default the rows table), safe from remaps.

        A map another process outgrew is adopted first; damaged pages raise
        CorruptStoreError.
        """
        db = self.rows_db if db is None else db
        for _ in range(8):
            with self._guard.reading():
                try:
                    txn = self.env.begin(db=db)
                except lmdb.MapResizedError:
                    txn = None
                except _DAMAGE as exc:
                    raise CorruptStoreError(f"{self.path}: LMDB pages are damaged ({exc})") from None
                if txn is not None:
                    try:
                        with txn:
                            yield txn
                    except _DAMAGE as exc:
                        raise CorruptStoreError(
                            f"{self.path}: LMDB pages are damaged ({exc})") from None
                    return
            with self._guard.remapping():  # a writer grew the file past our map: adopt its size
                self.env.set_mapsize(0)
        raise CorruptStoreError(f"{self.path}: the LMDB map keeps outgrowing this reader")

    def encode(self, ids: np.ndarray, rows: np.ndarray):
        """(key, framed value or None) per row; None marks a row equal to the constant init."""
        keys = row_keys(ids)
        payloads = self.codec.encode(np.ascontiguousarray(rows))
        constant = self.format.constant
        if constant is None:
            skip = np.zeros(len(ids), dtype=bool)
        else:
            skip = np.all(rows == self.fill_row, axis=1)
        return [(k, None if s else frame(k, p)) for k, p, s in zip(keys, payloads, skip)]

    def put_encoded(self, txn, records):
        put = txn.put
        delete = txn.delete
        written = 0
        for key, value in records:
            if value is None:
                delete(key, db=self.rows_db)
            else:
                put(key, value, db=self.rows_db)
                written += len(value)
        self.bytes_written += written

    def append_rows(self, first_id: int, rows: np.ndarray):
        """Store ``rows`` as rows ``first_id, first_id + 1, ...`` of a store being built, in
        one transaction; their keys must follow every key stored so far."""
        self.append_framed(self.frame_for_append(first_id, rows))

    def frame_for_append(self, first_id: int, rows: np.ndarray) -> "FramedRows":
        """Encode and frame rows ``first_id, ...`` for :meth:`append_framed` (no LMDB access:
        a bulk load frames the next chunk on a thread while this one is written).
        Fixed-width payloads are framed in one pass, with no per-row Python work."""
        n = len(rows)
        keybuf = np.arange(first_id, first_id + n, dtype=np.int64).astype(">u8").view(np.uint8)
        keys = keybuf.tobytes()
        payloads = self.codec.encode_fixed(rows)
        if payloads is None:
            values = [frame(keys[8 * i:8 * i + 8], p) for i, p in enumerate(self.codec.encode(rows))]
            return FramedRows(first_id, n, keys, values, 0, sum(map(len, values)))
        framed = np.empty((n, payloads.shape[1] + 4), dtype=np.uint8)
        if payloads.shape[1] % 8 == 0 and payloads.flags.c_contiguous and _LITTLE_ENDIAN:
            frame_word_rows(keybuf, payloads.view(np.uint32), payloads, framed)
        else:
            frame_rows(keybuf, payloads, framed)
        return FramedRows(first_id, n, keys, framed.tobytes(), framed.shape[1], framed.size)

    def append_framed(self, framed: "FramedRows"):
        """Write rows framed by :meth:`frame_for_append` in one transaction, appended after
        the last stored key (LMDB fills its last page: no search, no page splits)."""
        if framed.count == 0:
            return

        def put(txn):
            added = txn.cursor(self.rows_db).putmulti(framed.items(), append=True)[1]
            if added != framed.count:
                raise CorruptStoreError(
                    f"{self.path}: rows {framed.first_id}.. do not follow the stored keys: "
                    f"{framed.count - added} of {framed.count} could not be appended")
        self.write(put)
        self.bytes_written += framed.nbytes

    def write_rows(self, ids: np.ndarray, rows: np.ndarray):
        """Durably store ``rows`` under ``ids`` in one transaction."""
        if len(ids) == 0:
            return
        records = self.encode(ids, rows)
        self.write(lambda txn: self.put_encoded(txn, records))

    # -- reading ---------------------------------------------------------------------------
    def read_rows(self, ids: np.ndarray, out: np.ndarray, positions: np.ndarray):
        """Fill ``out[positions[k]]`` with row ``ids[k]``; raises CorruptRowError naming bad rows.

        Keys are read in sorted order (LMDB's page order). Sorted ``ids`` read into the whole of
        ``out`` in order (``positions`` = 0..n-1) decode straight into it."""
        n = len(ids)
        if n == 0:
            return
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        keys = row_keys(sorted_ids)
        framed = self.row_bytes + 4
        # raw rows of the framed length go into this thread's frames buffer a run of gets at a
        # time: each run's values are freed before the next run's are made, in the memory they
        # leave (all of a batch's values at once took fresh memory: 4,000+ page faults a batch)
        frames = self._frames(n, framed) if self._raw_words and out.flags.c_contiguous else None
        values = []      # the values of any other read, all kept for ``decode_into``
        with self.reading() as txn:
            get = txn.get
            for start in range(0, n, GETS_AT_ONCE):
                run = list(map(get, keys[start:start + GETS_AT_ONCE]))
                if frames is not None and None not in run and set(map(len, run)) == {framed}:
                    frames[start:start + len(run)] = run
                    continue
                if frames is not None:     # a missing or odd value: the frames so far as values
                    values, frames = frames[:start].tolist(), None
                values += run
        if frames is not None:
            self._verify_raw_frames(sorted_ids, frames, out, positions[order])
            return
        if None not in values:     # list.__contains__ tests identity first: one C loop
            self.decode_into(sorted_ids, values, out, positions[order])
            return
        found = np.fromiter((v is not None for v in values), dtype=bool, count=n)
        if self.format.every_row_stored:
            raise CorruptRowError(sorted_ids[~found], "its record is missing (every row of "
                                  "this store was written at create)")
        out[positions[order[~found]]] = self.fill_row
        if not found.any():
            return
        present = [v for v in values if v is not None]
        self.decode_into(sorted_ids[found], present, out, positions[order[found]])

    def decode_into(self, ids, values, out, positions):
        """Verify and decode framed ``values`` of rows ``ids`` into ``out[positions]``."""
        n = len(values)
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        framed = self.row_bytes + 4
        if self._raw_words and out.flags.c_contiguous and bool((lengths == framed).all()):
            # the frames copied into a kept numpy buffer, not joined (a fresh 16 MB bytes object
            # page-faults 4,096 times: 5 to 9 ms a batch)
            frames = self._frames(n, framed)
            frames[:] = values
            self._verify_raw_frames(ids, frames, out, positions)
            return
        keybytes = np.ascontiguousarray(ids, dtype=">u8").view(np.uint8)
        ok = np.empty(n, dtype=np.bool_)
        stops = np.cumsum(lengths)
        starts = stops - lengths
        buf = np.frombuffer(b"".join(values), dtype=np.uint8)
        self.bytes_read += len(buf)
        verify_frames(keybytes, buf, starts, stops, ok)
        if not ok.all():
            raise CorruptRowError(ids[~ok], "checksum mismatch")
        # rows for the whole of ``out``, in order: decoded in place, not through a copy
        whole = (len(positions) == len(out) and out.flags.c_contiguous
                 and bool((positions == np.arange(len(out))).all()))
        decoded = out if whole else np.empty((n, self.format.dim), dtype=self.dtype)
        ok = self.codec.decode(buf, starts, stops, decoded)
        if not ok.all():
            raise CorruptRowError(ids[~ok], f"payload does not decode with codec {self.codec.codec_id!r}")
        if not whole:
            out[positions] = decoded

    def _verify_raw_frames(self, ids, frames, out, positions):
        """Raw frames of rows ``ids``, all of the framed length: each CRC checked and its
        payload copied straight to ``out[positions[k]]`` in one pass (no decoded copy to
        scatter)."""
        n = len(frames)
        self.bytes_read += frames.nbytes
        ok = np.empty(n, dtype=np.bool_)
        verify_raw_words(np.ascontiguousarray(ids, dtype=">u8").view(np.uint8),
                         frames.view(np.uint32).reshape(n, frames.dtype.itemsize // 4),
                         out.view(np.uint8).view(np.uint32), np.asarray(positions, dtype=np.int64), ok)
        if not ok.all():
            raise CorruptRowError(ids[~ok], "checksum mismatch")

    def _frames(self, n: int, framed: int) -> np.ndarray:
        """A buffer for ``n`` frames of ``framed`` bytes, this thread's own, kept for its
        next read up to ``SCRATCH_BYTES``."""
        kept = getattr(self._scratch, "frames", None)
        if kept is not None and len(kept) >= n and kept.dtype.itemsize == framed:
            return kept[:n]
        buf = np.empty(n, dtype=np.dtype((np.void, framed)))
        if n * framed <= SCRATCH_BYTES:
            self._scratch.frames = buf
        return buf

    def stored_rows(self) -> int:
        with self.reading() as txn:
            return txn.stat(self.rows_db)["entries"]

    def sync(self):
        """Make every committed write durable, then record its commit number beside the data.

        Stale reader slots (of readers killed inside a read) are cleared first: they would
        keep LMDB from reusing the pages they pin, and the file would grow without bound."""
        try:
            self.env.reader_check()
            self.env.sync(True)
            if self._meta_live:
                self._write_commit_file()
        except (lmdb.Error, OSError) as exc:
            raise self._write_error(exc) from None

    def file_bytes(self) -> int:
        return (self.path / "data.mdb").stat().st_size

    def used_bytes(self) -> int:
        info = self.env.info()
        stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]
