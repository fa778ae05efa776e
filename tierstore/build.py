"""Building a new store beside its path, then swapping it in whole.

``create``, ``import`` and ``salvage`` write a new store in a hidden sibling folder
(``.NAME.tierstore-new.PID.XXXX``) and only once it is complete and synced put it at
``path``. Where a store already stood there (``overwrite``), the two folders are exchanged
with Linux's ``renameat2(RENAME_EXCHANGE)``, one atomic step, and the old one is deleted
afterwards. Where that call is missing (another OS, an old kernel, a file system without
it), two renames do it: ``path`` to ``.NAME.tierstore-old``, then the new folder to ``path``;
a process killed between the two leaves no store at ``path``, and the next open, create or
import of ``path`` puts the old one back (:func:`recover`). Whatever kills the process, the
old store or the new one opens whole at ``path``, never neither, and a failed build leaves
nothing behind (a killed one leaves its sibling folder, removed by the next build of
``path``).

The old store's writer lock is held from the start to the swap: a writer elsewhere makes
the overwrite fail with StoreLockedError before anything is written. The old table's
optimizer state in the default sibling (``PATH.adagrad``, see ``tierstore.optim``) is
deleted with it, just before the swap: it belongs to the old rows. A reader that has the
old store open keeps reading it (its files are unlinked, not changed) until it reopens.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import StoreLockedError
from .optim import STATE_SUFFIX
from .tiers.disk import LOCK_FILE, DiskTier, existing_store_error, open_in_process
from .table import TableFormat

NEW_TAG = ".tierstore-new."
OLD_TAG = ".tierstore-old"
# tests name a step here to have the process SIGKILL itself there (count events, not time)
KILL_AT_ENV = "TIERSTORE_KILL_AT"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _step(name: str):
    """Mark a step of a build; a test's ``TIERSTORE_KILL_AT=name`` kills the process here."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def parked_path(path: Path) -> Path:
    """Where the two-rename swap parks the old store."""
    return path.parent / f".{path.name}{OLD_TAG}"


def _lock(folder: Path, create: bool = True) -> int | None:
    """An exclusive, non-blocking writer lock on ``folder``; None when another holds it."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = os.open(folder / LOCK_FILE, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def recover(path) -> None:
    """Put back an old store that a two-rename swap, killed half way, left parked.

    Only when nothing stands at ``path`` and the parked store's lock is free (a live swap
    holds it). Without the right to rename (a read-only medium), nothing is done.
    """
    path = Path(path)
    parked = parked_path(path)
    if path.exists() or not (parked / "data.mdb").exists():
        return
    try:
        fd = _lock(parked)
    except OSError:
        return
    if fd is None:
        return
    try:
        os.rename(parked, path)
        _sync_dir(path.parent)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _sync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep(path: Path):
    """Remove the sibling folders of builds of ``path`` whose process died."""
    for stale in path.parent.glob(f".{path.name}{NEW_TAG}*"):
        try:
            fd = _lock(stale, create=False)
        except OSError:
            fd = -1  # no lock file: killed before it took one
        if fd is None:
            continue  # a live build
        shutil.rmtree(stale, ignore_errors=True)
        if fd >= 0:
            os.close(fd)


class StoreBuild:
    """A new store written beside ``path`` and swapped in by :meth:`finish`.

    Use as ``build = StoreBuild(...)``; write rows through ``build.disk``; then
    ``build.finish()``, or ``build.abort()`` on failure (which removes every file it made).
    """

    def __init__(self, path, table: TableFormat, dictionary: bytes | None, *, map_size: int,
                 max_map_size: int | None, overwrite: bool):
        self.path = Path(path)
        self._map_size = map_size
        self._old_lock = self._state_lock = None
        recover(self.path)
        if (self.path / "data.mdb").exists():
            if not overwrite:
                raise existing_store_error(self.path)
            if open_in_process(self.path):
                raise StoreLockedError(f"{self.path}: another writer or reader in this process has "
                                       "the store open; "
                                       "close it before replacing it")
            self._old_lock = _lock(self.path)
            if self._old_lock is None:
                raise StoreLockedError(f"{self.path}: another writer has this store open; "
                                       "close it before replacing it")
            shutil.rmtree(parked_path(self.path), ignore_errors=True)  # a finished swap's leftover
            self._state_lock = self._lock_state()
        # an existing folder that holds no store is built in (it may hold the user's other
        # files, which a swap would take away); anything else is built beside and renamed
        self.in_place = self.path.is_dir() and self._old_lock is None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _sweep(self.path)
            self.folder = self.path if self.in_place else self.path.parent / (
                f".{self.path.name}{NEW_TAG}{os.getpid()}.{secrets.token_hex(4)}")
            self.disk = DiskTier.create(self.folder, table, dictionary, map_size=map_size,
                                        max_map_size=max_map_size, overwrite=False)
        except BaseException:
            self._release_old()
            if not self.in_place and hasattr(self, "folder"):
                shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def append_chunks(self, chunks, on_written=None):
        """Append chunks in id order: ``chunks`` yields ``(first_id, prepare)`` where
        ``prepare()`` gives the chunk's validated rows. Preparing and framing run on a
        worker thread (the checks and the CRC kernel release the GIL) while the chunk
        before is written, so at most two chunks are held at once. ``on_written(count)``
        follows each chunk's write (a progress bar)."""
        def framed(first_id, prepare):
            return self.disk.frame_for_append(first_id, prepare())

        def write(future):
            rows = future.result()
            self.disk.append_framed(rows)
            if on_written is not None:
                on_written(rows.count)

        with ThreadPoolExecutor(1, thread_name_prefix="tierstore-build") as pool:
            pending = None
            for first_id, prepare in chunks:
                framing = pool.submit(framed, first_id, prepare)
                if pending is not None:
                    write(pending)
                    _step("chunk")
                pending = framing
            if pending is not None:
                write(pending)

    def finish(self, reopen: bool = False) -> DiskTier | None:
        """Commit the metadata, sync, and put the store at ``path``; with ``reopen``, the
        store open for writing there (its writer lock held throughout), else None."""
        try:
            self.disk.commit_meta()
            _step("built")
            self.disk.close(release_lock=False)   # reopened below as a store, synced commits
            _sync_dir(self.folder)                # data.mdb's name in its folder, durable
            if not self.in_place:
                self._swap()
        except BaseException:
            self.abort()
            raise
        self._release_old()
        lock_fd, self.disk._lock_fd = self.disk._lock_fd, None
        if not reopen:
            os.close(lock_fd)
            return None
        return DiskTier(self.path, readonly=False, map_size=self._map_size,
                        max_map_size=self.disk.max_map_size, lock_fd=lock_fd)

    def _lock_state(self) -> int | None:
        """The writer lock of the old table's optimizer state (the default sibling), which
        goes with it; None when there is none."""
        state = self.state_path
        if not (state / "data.mdb").exists():
            return None
        fd = None if open_in_process(state) else _lock(state)
        if fd is None:
            self._release_old()
            raise StoreLockedError(f"{state}: the optimizer state of the store being replaced "
                                   "is open; close it first")
        return fd

    @property
    def state_path(self) -> Path:
        return Path(f"{self.path}{STATE_SUFFIX}")

    def _swap(self):
        if self._state_lock is not None:
            # before the swap: killed in between, the old table loses its optimizer state
            # (reset, as for a new table) rather than the new one inheriting stale state
            shutil.rmtree(self.state_path, ignore_errors=True)
            _step("state-removed")
        if self._old_lock is None:
            os.rename(self.folder, self.path)
        elif _exchange(self.folder, self.path):
            _step("exchanged")
            shutil.rmtree(self.folder, ignore_errors=True)   # now the old store
        else:
            parked = parked_path(self.path)
            shutil.rmtree(parked, ignore_errors=True)        # a finished swap's leftover
            os.rename(self.path, parked)
            _step("parked")
            try:
                os.rename(self.folder, self.path)
            except BaseException:
                os.rename(parked, self.path)
                raise
            _step("renamed")
            shutil.rmtree(parked, ignore_errors=True)
        _sync_dir(self.path.parent)

    def abort(self):
        """Remove everything the build wrote; ``path`` is as it was."""
        if self.in_place:
            self.disk.destroy()
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        else:
            self.disk.close()
            shutil.rmtree(self.folder, ignore_errors=True)
        self._release_old()

    def _release_old(self):
        for name in ("_old_lock", "_state_lock"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
