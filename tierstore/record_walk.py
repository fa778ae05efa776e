"""Walking the records of a store's rows table in a child process.

A cursor walk visits only the records that exist (a sparse 2-billion-row table holds far
fewer than 2 billion), but LMDB's cursor asserts, aborting the process, when it steps onto
a damaged sibling page. So ``salvage`` walks in a child process, which streams batches of
records down a pipe: a damaged page ends the child, not the caller, and the caller knows
how far the walk got (it then probes the ids after that point one by one, and walks on).

The child runs this file (``ENV MAP_SIZE START BATCH LOCK``): it imports only the standard
library and lmdb. Its output is a sequence of batches, each
``<count:u32> <keys: count x 8 bytes> <lengths: count x u32 LE> <values>``, and a count of
0 once the table is walked to its end.
"""
from __future__ import annotations

import os
import struct
import sys

import lmdb

BATCH = 1 << 12          # records per batch: what a dying child loses at most
_COUNT = struct.Struct("<I")
EXIT_DAMAGED = 3         # the child met an LMDB error (damaged pages) and stopped


class RecordWalk:
    """The records of ``ROWS_DB`` with keys from ``start`` on, in key order, read by a
    child process. Iterate :meth:`batches`; afterwards ``complete`` says whether the walk
    reached the table's end (False: the child died or met damage after the last batch)."""

    def __init__(self, env_path, map_size: int, start: int, batch: int = BATCH,
                 lock: bool = False):
        """``lock``: take a reader slot in ``lock.mdb``, for a walk beside a writer that may
        commit meanwhile (salvage holds the writer lock, so it walks without one)."""
        self.complete = False
        self.error = ""   # what the child said when it stopped short
        # run_path, not ``python FILE``: that would put this package's folder first on
        # sys.path, where its modules shadow the standard library's (profile, codecs).
        # -S: no site module (its .pth files can cost several times the walk of a small
        # store); the child takes this process's sys.path instead, so it finds the same lmdb.
        # subprocess is imported here, not above, as the child (this file) would spend a
        # third of its start importing it
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", "import os, runpy, sys; "
             "sys.path[:0] = sys.argv.pop(1).split(os.pathsep); "
             "runpy.run_path(sys.argv[1], run_name='__main__')", os.pathsep.join(sys.path),
             os.path.abspath(__file__), os.fspath(env_path),
             str(map_size), str(start), str(batch), str(int(lock))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def batches(self):
        """Yield ``(keys, values)``: ``keys`` the batch's 8-byte keys in one bytes object,
        ``values`` a list of the records' values."""
        out = self._proc.stdout
        try:
            while True:
                head = out.read(_COUNT.size)
                if len(head) < _COUNT.size:
                    return                       # the child died part way
                (count,) = _COUNT.unpack(head)
                if count == 0:
                    self.complete = True
                    return
                keys = out.read(8 * count)
                lengths = struct.unpack(f"<{count}I", out.read(4 * count))
                blob = out.read(sum(lengths))
                if len(keys) < 8 * count or len(blob) < sum(lengths):
                    return
                values, at = [], 0
                for n in lengths:
                    values.append(blob[at:at + n])
                    at += n
                yield keys, values
        finally:
            self.close()

    def close(self):
        """Wait for the child (stopped first when the walk was left part way)."""
        if not self.complete and self._proc.poll() is None:
            self._proc.kill()
        err = self._proc.communicate()[1]
        if self._proc.returncode != 0:
            self.complete = False
            self.error = (err.decode(errors="replace").strip().splitlines() or [""])[-1] or \
                f"the walking process ended with status {self._proc.returncode}"


def _walk(env_path: str, map_size: int, start: int, batch: int, lock: bool) -> int:
    env = lmdb.open(env_path, map_size=map_size, max_dbs=2, readonly=True, lock=lock,
                    readahead=False, create=False)
    out = sys.stdout.buffer
    try:
        rows_db = env.open_db(b"rows", create=False)
        key = start.to_bytes(8, "big")
        after = False
        while True:
            keys, values = [], []
            try:
                txn = env.begin(db=rows_db)
            except lmdb.MapResizedError:   # a writer grew the file: adopt its size
                env.set_mapsize(0)
                txn = env.begin(db=rows_db)
            with txn:
                cursor = txn.cursor()
                found = cursor.set_range(key)
                if found and after and cursor.key() == key:
                    found = cursor.next()
                while found:
                    last = cursor.key()
                    if len(last) == 8:               # a row's key (others are not rows)
                        keys.append(last)
                        values.append(cursor.value())
                        if len(keys) == batch:
                            break
                    found = cursor.next()
            if keys:
                out.write(_COUNT.pack(len(keys)) + b"".join(keys)
                          + struct.pack(f"<{len(values)}I", *map(len, values)) + b"".join(values))
                out.flush()
            if not found:
                out.write(_COUNT.pack(0))
                out.flush()
                return 0
            key, after = last, True
    except lmdb.Error as exc:
        print(f"record walk stopped: {exc}", file=sys.stderr)
        return EXIT_DAMAGED
    finally:
        env.close()


if __name__ == "__main__":
    # argv: [this file, ENV, MAP_SIZE, START, BATCH, LOCK]
    sys.exit(_walk(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                   sys.argv[6] == "1"))
