"""Lookups already submitted: their ids are known before they are planned.

A ``prefetch``, a ``lookup_async`` or a frozen ``TieredEmbedding``'s lookups run ahead say
which rows the next batches will use. The state keeps those ids, with how many submitted
batches use each, in a map of at most ``lookahead_ids`` ids (``CacheState.new``), filled by
``ahead_add`` when a batch is submitted and emptied by ``ahead_remove`` once it is planned.
Eviction (``residency.pick_victim``) then passes over resident rows in the map, as Belady's MIN
would within the window it can see: a row about to be used is never evicted by the batch
before it, unless every row near the end of the order is about to be used. The planner's
interface is unchanged: it still plans one batch of unique ids and counts
(``planner.simulate_lookahead`` replays a trace so).

The counts are bytes, saturating at ``AHEAD_COUNT_MAX``: an id that more lookups than that
use leaves the window once that many of them are planned, as a hint may (1.3 bytes a cached
row less than 4-byte counts).
"""
from numba import njit

from ..kernels.slotmap import slotmap_delete, slotmap_get, slotmap_put
from .state import AHEAD_CAP, AHEAD_COUNT_MAX, AHEAD_LIVE


@njit(cache=True, _nrt=False)
def is_ahead(meta, ahead_keys, ahead_vals, key):
    """Whether a submitted batch not yet planned uses ``key``."""
    return meta[AHEAD_LIVE] > 0 and slotmap_get(ahead_keys, ahead_vals, key) > 0


@njit(nogil=True, cache=True)
def ahead_add(st, uniq):
    """A batch of unique ids was submitted. Ids beyond the map's room are left out (the
    window is a hint: a row it misses is only evicted as it would be without lookahead)."""
    meta = st.meta
    for k in range(len(uniq)):
        n = slotmap_get(st.ahead_keys, st.ahead_vals, uniq[k])
        if n > 0:
            slotmap_put(st.ahead_keys, st.ahead_vals, uniq[k], min(n + 1, AHEAD_COUNT_MAX))
        elif meta[AHEAD_LIVE] < meta[AHEAD_CAP]:
            slotmap_put(st.ahead_keys, st.ahead_vals, uniq[k], 1)
            meta[AHEAD_LIVE] += 1


@njit(nogil=True, cache=True)
def ahead_remove(st, uniq):
    """A submitted batch of unique ids was planned (or dropped): its ids leave the window."""
    meta = st.meta
    for k in range(len(uniq)):
        n = slotmap_get(st.ahead_keys, st.ahead_vals, uniq[k])
        if n > 1:
            slotmap_put(st.ahead_keys, st.ahead_vals, uniq[k], n - 1)
        elif n == 1:
            slotmap_delete(st.ahead_keys, st.ahead_vals, uniq[k])
            meta[AHEAD_LIVE] -= 1
