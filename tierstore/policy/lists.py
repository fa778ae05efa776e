"""Intrusive doubly linked lists over slot indices (front = most recent)."""
from numba import njit

from .state import HEAD0, SIZE0


@njit(cache=True, _nrt=False)
def list_push_front(meta, prev, nxt, lst, s):
    head = meta[HEAD0 + 2 * lst]
    prev[s] = -1
    nxt[s] = head
    if head >= 0:
        prev[head] = s
    else:
        meta[HEAD0 + 2 * lst + 1] = s
    meta[HEAD0 + 2 * lst] = s
    meta[SIZE0 + lst] += 1


@njit(cache=True, _nrt=False)
def list_remove(meta, prev, nxt, lst, s):
    p = prev[s]
    n = nxt[s]
    if p >= 0:
        nxt[p] = n
    else:
        meta[HEAD0 + 2 * lst] = n
    if n >= 0:
        prev[n] = p
    else:
        meta[HEAD0 + 2 * lst + 1] = p
    prev[s] = -1
    nxt[s] = -1
    meta[SIZE0 + lst] -= 1


@njit(cache=True, _nrt=False)
def list_back(meta, lst):
    return meta[HEAD0 + 2 * lst + 1]


@njit(cache=True, _nrt=False)
def list_size(meta, lst):
    return meta[SIZE0 + lst]
