"""The prefetch staging's take: one pass per chunk that finds each id and copies its row."""
from numba import njit


@njit(nogil=True, cache=True)
def take_staged(chunk_ids, chunk_rows, live, ids, out, positions, found, keep):
    """For each ``ids[k]`` not ``found`` yet and live in the chunk (``chunk_ids`` sorted and
    unique, ``chunk_rows`` its rows as words): the row into ``out[positions[k]]`` (unless
    ``out`` has no rows), ``found[k]`` set and, unless ``keep``, the chunk's copy no longer
    ``live``. Returns how many copies left the chunk.

    One pass in place of numpy's search, masks, gather and scatter (each a temporary, and
    each a release and retake of the GIL that the prefetch worker's reads contend for).
    Sorted ``ids``, as the store passes them, search on from the last match (a
    gallop: a batch's ids are dense among a chunk's)."""
    n = len(chunk_ids)
    copy = out.shape[0] > 0
    gone = 0
    lo = 0
    for k in range(len(ids)):
        key = ids[k]
        if k and key < ids[k - 1]:
            lo = 0
        # gallop from ``lo`` to bracket the first chunk id >= key, then bisect the bracket
        hi, step = lo, 1
        while hi < n and chunk_ids[hi] < key:
            lo = hi + 1
            hi += step
            step *= 2
        hi = min(hi, n)
        while lo < hi:
            mid = (lo + hi) >> 1
            if chunk_ids[mid] < key:
                lo = mid + 1
            else:
                hi = mid
        if found[k] or lo == n or chunk_ids[lo] != key or not live[lo]:
            continue
        found[k] = True
        if copy:
            p = positions[k]
            for w in range(chunk_rows.shape[1]):
                out[p, w] = chunk_rows[lo, w]
        if not keep:
            live[lo] = False
            gone += 1
    return gone
