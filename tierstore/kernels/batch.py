"""Batch kernels on the lookup path: range checks, dedupe, finiteness."""
import numpy as np
from numba import njit

from .hashing import mix64


@njit(nogil=True, cache=True)
def first_out_of_range(ids, num_rows):
    """Index of the first id outside ``[0, num_rows)``, or -1."""
    for k in range(len(ids)):
        if ids[k] < 0 or ids[k] >= num_rows:
            return k
    return -1


@njit(nogil=True, cache=True)
def _dedupe(ids, keep_last):
    n = len(ids)
    size = 8
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    table_key = np.empty(size, dtype=np.int64)
    table_pos = np.full(size, -1, dtype=np.int64)
    uniq = np.empty(n, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    where = np.empty(n, dtype=np.int64)
    m = 0
    for k in range(n):
        key = ids[k]
        i = np.int64(mix64(key, 0) & mask)
        while table_pos[i] != -1 and table_key[i] != key:
            i = (i + 1) & (size - 1)
        if table_pos[i] == -1:
            table_key[i] = key
            table_pos[i] = m
            uniq[m] = key
            where[m] = k
            m += 1
        u = table_pos[i]
        inverse[k] = u
        counts[u] += 1
        if keep_last:
            where[u] = k
    return uniq[:m], inverse, counts[:m], where[:m]


@njit(nogil=True, cache=True)
def dedupe(ids):
    """Unique ids in first-seen order, the inverse map and each id's count."""
    uniq, inverse, counts, _ = _dedupe(ids, False)
    return uniq, inverse, counts


@njit(nogil=True, cache=True)
def dedupe_last(ids):
    """Unique ids in first-seen order and the position of each one's last occurrence."""
    uniq, _, _, last = _dedupe(ids, True)
    return uniq, last


@njit(cache=True)
def any_nonfinite_row(rows):
    """Index of the first row holding NaN or Inf, or -1 (float32/64 rows)."""
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            if not np.isfinite(rows[i, j]):
                return i
    return -1


@njit(nogil=True, cache=True)
def any_nonfinite_half_row(bits):
    """``any_nonfinite_row`` for float16 rows given as their uint16 bits: NaN and Inf are
    the values whose five exponent bits are all ones (no conversion to float32)."""
    for i in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            if bits[i, j] & np.uint16(0x7C00) == np.uint16(0x7C00):
                return i
    return -1


@njit(nogil=True, cache=True)
def gather_tiered(device, ram, device_rows, slots, out):
    """``out[k]`` = the row in physical slot ``slots[k]`` (left alone where -1).

    Rows are viewed as machine words (see ``tiers.memory.words``), so each
    copy moves 8 bytes a step.
    """
    for k in range(len(slots)):
        s = slots[k]
        if s < 0:
            continue
        if s < device_rows:
            out[k, :] = device[s, :]
        else:
            out[k, :] = ram[s - device_rows, :]


@njit(nogil=True, cache=True)
def partition_of(ids, parts):
    """The cache partition of each id: a hash of the id, modulo ``parts``."""
    out = np.empty(len(ids), dtype=np.int64)
    for k in range(len(ids)):
        out[k] = np.int64(mix64(ids[k], 3) % np.uint64(parts))
    return out
