"""Engram n-gram lookup ids: multiplicative-XOR hashing of suffix n-grams.

The formulas are DeepSeek Engram's (``engram_demo_v1.py``, ``NgramHashMapping._get_ngram_hashes``,
lines 262-296), written as one pass over the tokens instead of the demo's shifted copies:

    mix_t(2)   = (x_t * m_0) XOR (x_{t-1} * m_1)
    mix_t(n)   = mix_t(n - 1) XOR (x_{t-n+1} * m_{n-1})          n = 3 .. max_ngram
    id(n, k)   = mix_t(n) mod primes[n - 2, k] + offsets[n - 2, k]

where ``x_s`` for ``s < 0`` is the pad id (the demo shifts right and pads on the left), and the
output column of (order n, head k) is ``(n - 2) * heads + k`` (order-major, as the demo stacks them).

Every product fits in int64 for tokens in ``[0, vocab)``: the multipliers are below
``(2**63 - 1) // vocab`` (see ``tierstore.hashing``), so ``mix`` is never negative and ``mod``
needs no sign fix. The caller validates tokens, the pad id and the shapes; the kernels raise
nothing (``error_model="numpy"``: no division-by-zero branch; the primes are never zero).
"""
from numba import njit


@njit(cache=True, error_model="numpy")
def ngram_ids(tokens, multipliers, primes, offsets, pad_id, out):
    """Fill ``out[b, t, :]`` with the global row ids of position ``t`` of ``tokens[b]``.

    tokens: int64 [B, T]; multipliers: int64 [max_ngram]; primes, offsets: int64
    [max_ngram - 1, heads]; out: int64 [B, T, (max_ngram - 1) * heads].
    """
    n_batch, n_pos = tokens.shape
    n_orders, n_heads = primes.shape
    for b in range(n_batch):
        for t in range(n_pos):
            mix = tokens[b, t] * multipliers[0]
            col = 0
            for k in range(1, n_orders + 1):
                s = t - k
                tok = tokens[b, s] if s >= 0 else pad_id
                mix = mix ^ (tok * multipliers[k])
                o = k - 1
                for h in range(n_heads):
                    out[b, t, col] = mix % primes[o, h] + offsets[o, h]
                    col += 1
    return out


@njit(cache=True, error_model="numpy")
def ngram_step(last, multipliers, primes, offsets, out):
    """The ids of the newest position only: ``last[b, -1]`` is x_t, ``last[b, -1 - k]`` is x_{t-k}.

    last: int64 [B, max_ngram]; out: int64 [B, (max_ngram - 1) * heads]. Equal to
    ``ngram_ids(last, ...)[:, -1]``: the window holds every token the last position reads.
    """
    n_batch, width = last.shape
    n_orders, n_heads = primes.shape
    for b in range(n_batch):
        mix = last[b, width - 1] * multipliers[0]
        col = 0
        for k in range(1, n_orders + 1):
            mix = mix ^ (last[b, width - 1 - k] * multipliers[k])
            o = k - 1
            for h in range(n_heads):
                out[b, col] = mix % primes[o, h] + offsets[o, h]
                col += 1
    return out
