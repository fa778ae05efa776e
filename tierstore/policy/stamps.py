"""Access stamps in 4 bytes: the tick is rebased before it outgrows them.

``stamp[entry]`` is the tick of the entry's last move to the front (``residency``): W-TinyLFU
compares its age with ``capacity >> RECENT_SHIFT``, LFU breaks frequency ties by it. Only
ages matter, so when the tick reaches ``REBASE_AT`` every stamp and the tick move down by
``tick - KEEP``; a stamp older than ``KEEP`` ticks is raised to the new zero. That map is
monotone, so LFU's heap stays ordered, and every age below ``KEEP`` (a billion accesses) is
unchanged, so W-TinyLFU, whose threshold is below ``2**28`` (capacity < 2**31), decides
exactly as with 8-byte stamps. A batch (or touch) adds at most two ticks per id, so the tick
stays under ``2**32`` between rebases for any batch under ``2**30`` ids.
"""
import numpy as np
from numba import njit

from .state import TICK, USED

REBASE_AT = 1 << 31
KEEP = 1 << 30


@njit(cache=True, _nrt=False)
def keep_stamps_narrow(meta, stamp):
    """Rebase the tick and the resident entries' stamps when the tick reaches ``REBASE_AT``;
    call before each batch or touch (they advance the tick)."""
    if meta[TICK] < REBASE_AT:
        return
    shift = meta[TICK] - KEEP
    for e in range(meta[USED]):
        s = np.int64(stamp[e])
        stamp[e] = s - shift if s > shift else 0
    meta[TICK] = KEEP
