"""Checks of LMDB's files before LMDB maps them: damage that would crash the process.

LMDB trusts its meta pages and its lock file: a flipped byte in a meta page can send it
to a page past the map (a fault) or trip an assertion on the first write (an abort), and
a lock file cut short while another process has it open is mapped past its end (a fault).
What the two meta pages (pages 0 and 1 of ``data.mdb``) must hold, per LMDB 0.9's
``MDB_meta``, is checked here with plain reads; damage inside B-tree pages cannot be
found without walking them (``check()`` walks in a child process).
"""
from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from ..errors import CorruptStoreError, NotAStoreError

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1             # LMDB 0.9's data format
P_META = 0x08
P_INVALID = (1 << 64) - 1    # the root of an empty tree
# the trees' flags as tierstore's environments hold them: MDB_INTEGERKEY on the free-page
# tree (where LMDB also keeps the environment's persistent flags, none of which tierstore
# sets), none on the main tree
TREE_FLAGS = (0x08, 0x00)
MAX_DEPTH = 64               # a B-tree of 2**64 keys is far shallower
META_AT = 16                 # the page header, then MDB_meta
_HEADER = struct.Struct("<QHH")                  # mp_pgno, mp_pad, mp_flags
_META = struct.Struct("<IIQQ")                   # mm_magic, mm_version, mm_address, mm_mapsize
_DB = struct.Struct("<IHHQQQQQ")                 # md_pad, md_flags, md_depth, branch, leaf, overflow, entries, root
_TAIL = struct.Struct("<QQ")                     # mm_last_pg, mm_txnid
LOCK_HEADER_BYTES = 192      # MDB_txninfo on 64-bit Linux
LOCK_SLOT_BYTES = 64         # one MDB_reader


def check_meta_pages(data: Path):
    """Refuse a ``data.mdb`` whose meta pages LMDB would trust to its harm."""
    need = META_AT + _META.size + 2 * _DB.size + _TAIL.size
    with open(data, "rb") as f:
        first = f.read(need)
        psize = _DB.unpack_from(first, META_AT + _META.size)[0] if len(first) == need else 0
        valid_size = 512 <= psize <= 1 << 16 and not psize & (psize - 1)
        f.seek(psize if valid_size else 4096)
        second = f.read(need)
    magics = [len(raw) == need and _META.unpack_from(raw, META_AT)[0] == MAGIC
              for raw in (first, second)]
    if not any(magics):
        raise NotAStoreError(f"{data}: not an LMDB database (no LMDB magic number)")
    if not valid_size:
        raise CorruptStoreError(f"{data}: meta page 0 is damaged (page size {psize}); "
                                "salvage the store")
    t0, t1 = (_meta_fields(data, page, raw, psize) for page, raw in ((0, first), (1, second)))
    if not (t0 == t1 == 0 or abs(t0 - t1) == 1):
        raise CorruptStoreError(f"{data}: the meta pages' transaction ids {t0} and {t1} are not "
                                "consecutive: one of them is damaged; salvage the store")
    newest = first if t0 > t1 else second
    needed = (_TAIL.unpack_from(newest, META_AT + _META.size + 2 * _DB.size)[0] + 1) * psize
    size = data.stat().st_size
    if size < needed:   # a page past the end of the file is a fault, not an error
        raise CorruptStoreError(f"{data}: truncated ({size} bytes, LMDB needs {needed})")
    _check_roots(data, newest, psize, max(t0, t1))


def _check_roots(data: Path, meta: bytes, psize: int, txnid: int):
    """The newest meta page's two roots must be pages of their own trees: the free-page
    tree's keys are transaction ids (native integers up to ``txnid``), the main tree's the
    names of tables (``meta``, ``rows``). A root moved by a flipped bit to another tree's page
    would trip an assertion on the next write."""
    roots = [_DB.unpack_from(meta, META_AT + _META.size + k * _DB.size)[7] for k in range(2)]
    if roots[0] == roots[1] != P_INVALID:
        raise CorruptStoreError(f"{data}: both trees of the newest meta page have root page "
                                f"{roots[0]}; salvage the store")
    with open(data, "rb") as f:
        for tree, root in enumerate(roots):
            if root == P_INVALID:
                continue
            f.seek(root * psize)
            keys = _page_keys(f.read(psize), root, psize)
            # the main tree holds names (another program's LMDB may hold other names: not a
            # store, said later); 8-byte keys there are rows or transaction ids: damage
            if keys is None or not all(
                    len(k) == 8 and int.from_bytes(k, "little") <= txnid if tree == 0
                    else len(k) != 8 for k in keys if k):
                raise CorruptStoreError(f"{data}: the newest meta page's tree {tree} has root "
                                        f"page {root}, which is not a page of that tree; "
                                        "salvage the store")


def _page_keys(page: bytes, pgno: int, psize: int) -> list | None:
    """The keys of the nodes of a branch or leaf page, or None when it is not one."""
    if len(page) < psize:
        return None
    number, _, flags = _HEADER.unpack_from(page, 0)
    lower, upper = struct.unpack_from("<HH", page, 12)
    if number != pgno or flags & 0x03 == 0 or flags & 0x3C or \
            not META_AT <= lower <= upper <= psize or (lower - META_AT) % 2:
        return None
    keys = []
    for at in struct.unpack_from(f"<{(lower - META_AT) // 2}H", page, META_AT):
        if not upper <= at <= psize - 8:
            return None
        size = struct.unpack_from("<H", page, at + 6)[0]
        if at + 8 + size > psize:
            return None
        keys.append(page[at + 8:at + 8 + size])
    return keys


def _meta_fields(data: Path, page: int, raw: bytes, psize: int) -> int:
    """Check meta page ``page``; its transaction id."""
    def damaged(what):
        return CorruptStoreError(f"{data}: meta page {page} is damaged ({what}); salvage the store")

    pgno, _, flags = _HEADER.unpack_from(raw, 0)
    magic, version, _, _ = _META.unpack_from(raw, META_AT)
    if magic != MAGIC or version != DATA_VERSION:
        raise damaged(f"magic {magic:#x}, version {version}")
    if pgno != page or not flags & P_META:
        raise damaged(f"page number {pgno}, flags {flags:#x}")
    last_pg, txnid = _TAIL.unpack_from(raw, META_AT + _META.size + 2 * _DB.size)
    if txnid and txnid % 2 != page:
        raise damaged(f"transaction {txnid} belongs in the other meta page")
    for k in range(2):
        pad, tree_flags, depth, branch, leaf, overflow, _, root = _DB.unpack_from(
            raw, META_AT + _META.size + k * _DB.size)
        if k == 0 and pad != psize:
            raise damaged(f"page size {pad}, not {psize}")
        if tree_flags != TREE_FLAGS[k]:
            raise damaged(f"tree {k}: flags {tree_flags:#x}")
        if root == P_INVALID:
            if depth or branch or leaf or overflow:
                raise damaged(f"an empty tree of depth {depth}")
            continue
        if not 2 <= root <= last_pg or not 1 <= depth <= MAX_DEPTH or \
                branch + leaf + overflow > last_pg + 1:
            raise damaged(f"tree {k}: root page {root} of {last_pg}, depth {depth}")
    return txnid


def check_lock_file(folder: Path):
    """Refuse to map a ``lock.mdb`` cut short while another process uses it.

    LMDB resizes a short lock file itself when it is the only process with it open; when
    another process has it open, it trusts the file's size and would fault. Call it only
    when this process does not have the store open: closing the probe's descriptor drops
    every fcntl lock the process holds on the file."""
    lock = folder / "lock.mdb"
    try:
        size = lock.stat().st_size
    except FileNotFoundError:
        return
    if size >= LOCK_HEADER_BYTES and (size - LOCK_HEADER_BYTES) % LOCK_SLOT_BYTES == 0:
        return
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        fd = None
    if fd is not None:
        try:
            # LMDB's own rule: whoever can lock byte 0 exclusively is alone, and reinitialises
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            return
        except OSError:
            pass
        finally:
            os.close(fd)   # closing drops this process's fcntl locks on the file: LMDB's too
    raise CorruptStoreError(
        f"{lock}: cut short ({size} bytes) while another process has the store open; close "
        "every process using the store (LMDB then rebuilds the file), or delete lock.mdb "
        "once none is running")
