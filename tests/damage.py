"""Damaging a closed store on purpose, for tests of what notices it."""
from pathlib import Path

import lmdb


def corrupt_row(path, row: int, byte: int = 3):
    """Flip every bit of one byte of row ``row``'s stored value."""
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"rows")) as txn:
        key = int(row).to_bytes(8, "big")
        value = bytearray(txn.get(key))
        value[byte] ^= 0xFF
        txn.put(key, bytes(value))
    env.close()


# LMDB's two meta pages (pages 0 and 1): the newest by txnid is the database's state
PAGE = 4096
TXNID_AT = 16 + 128   # page header, then magic .. mm_last_pg; mm_txnid is little-endian u64


def meta_txnids(path) -> list:
    data = (Path(path) / "data.mdb").read_bytes()
    return [int.from_bytes(data[p * PAGE + TXNID_AT:p * PAGE + TXNID_AT + 8], "little") for p in (0, 1)]


def roll_back(path):
    """Make the older meta page look the newest, as a flipped bit in its txnid can: LMDB
    then serves the database as it was one transaction before the last."""
    txnids = meta_txnids(path)
    older = txnids.index(min(txnids))
    with open(Path(path) / "data.mdb", "r+b") as f:
        f.seek(older * PAGE + TXNID_AT)
        f.write((max(txnids) + 1).to_bytes(8, "little"))


def delete_record(path, row: int):
    """Remove row ``row``'s record, as a flipped bit in its key loses it."""
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True, db=env.open_db(b"rows")) as txn:
        assert txn.delete(int(row).to_bytes(8, "big"))
    env.close()
