"""Integer mixing shared by the slot maps, the sketch and the dedupe tables, and the slot
maps' delete rule."""
import numpy as np
from numba import njit

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always", _nrt=False)
def mix64(key, seed):
    """splitmix64's finalizer of ``key + seed * golden``: well spread, cheap."""
    z = np.uint64(key) + np.uint64(seed) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always", _nrt=False)
def fills_hole(i, j, home):
    """Linear probing's backward-shift delete: may the key in bucket ``j`` (its home bucket
    ``home``) move into the hole at ``i``? Yes unless its home lies cyclically in ``(i, j]``."""
    return (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j))


def table_size(n: int, load: float = 0.5, minimum: int = 8) -> int:
    """The power of two that keeps ``n`` keys at or below ``load``."""
    size = minimum
    while size * load < n:
        size *= 2
    return size
