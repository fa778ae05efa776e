"""Damaging a closed store on purpose, for tests of what notices it."""
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
