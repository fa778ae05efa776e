"""Decoding and framing kernels for the disk tier's values."""
import numpy as np
from numba import njit


def _crc_tables():
    """Slicing-by-8 tables for zlib's CRC-32 (reflected polynomial 0xEDB88320)."""
    tables = np.zeros((8, 256), dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        tables[0, n] = c
    for n in range(256):
        c = int(tables[0, n])
        for t in range(1, 8):
            c = int(tables[0, c & 0xFF]) ^ (c >> 8)
            tables[t, n] = c
    return tables


CRC_TABLES = _crc_tables()


@njit(nogil=True, cache=True)
def crc32_update(crc, buf, start, stop):
    """zlib's CRC-32 continued over ``buf[start:stop]``, eight bytes a step."""
    t = CRC_TABLES
    c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
    k = start
    while k + 8 <= stop:
        lo = c ^ (np.uint32(buf[k]) | (np.uint32(buf[k + 1]) << np.uint32(8))
                  | (np.uint32(buf[k + 2]) << np.uint32(16)) | (np.uint32(buf[k + 3]) << np.uint32(24)))
        c = (t[7, lo & np.uint32(0xFF)] ^ t[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
             ^ t[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ t[4, lo >> np.uint32(24)]
             ^ t[3, buf[k + 4]] ^ t[2, buf[k + 5]] ^ t[1, buf[k + 6]] ^ t[0, buf[k + 7]])
        k += 8
    while k < stop:
        c = t[0, (c ^ np.uint32(buf[k])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
        k += 1
    return c ^ np.uint32(0xFFFFFFFF)


@njit(nogil=True, cache=True)
def verify_frames(keybuf, buf, starts, stops, ok):
    """Check each value's trailing CRC-32 of (key, payload); strip it from ``stops``.

    Value ``i`` is ``buf[starts[i]:stops[i]]`` and its 8-byte key is
    ``keybuf[8*i:8*i+8]``. On return ``stops[i]`` ends the payload.
    """
    for i in range(len(starts)):
        if stops[i] - starts[i] < 4:
            ok[i] = False
            continue
        end = stops[i] - 4
        c = crc32_update(0, keybuf, 8 * i, 8 * i + 8)
        c = crc32_update(c, buf, starts[i], end)
        stored = (np.uint32(buf[end]) | (np.uint32(buf[end + 1]) << np.uint32(8))
                  | (np.uint32(buf[end + 2]) << np.uint32(16)) | (np.uint32(buf[end + 3]) << np.uint32(24)))
        ok[i] = stored == c
        stops[i] = end


@njit(nogil=True, cache=True)
def decode_raw_rows(buf, starts, stops, out, ok):
    width = out.shape[1]
    for i in range(len(starts)):
        if stops[i] - starts[i] != width:
            ok[i] = False
            continue
        out[i, :] = buf[starts[i]:stops[i]]
        ok[i] = True


@njit(nogil=True, cache=True)
def decode_int8_rows(buf, starts, stops, out, ok):
    """Payload: float32 scale (little-endian), then one int8 per element."""
    dim = out.shape[1]
    for i in range(len(starts)):
        s = starts[i]
        if stops[i] - s != 4 + dim:
            ok[i] = False
            continue
        scale = buf[s:s + 4].copy().view(np.float32)[0]
        q = buf[s + 4:s + 4 + dim].view(np.int8)
        for j in range(dim):
            out[i, j] = np.float32(q[j]) * scale
        ok[i] = True


@njit(nogil=True, cache=True)
def frame_rows(keybuf, payloads, out):
    """Frame fixed-width payloads: ``out[i]`` = ``payloads[i]`` + CRC-32 of (key i, payload),
    little-endian, where key ``i`` is ``keybuf[8*i:8*i+8]`` (the bulk-load path)."""
    width = payloads.shape[1]
    for i in range(payloads.shape[0]):
        c = crc32_update(0, keybuf, 8 * i, 8 * i + 8)
        row = payloads[i]
        c = crc32_update(c, row, 0, width)
        out[i, :width] = row
        out[i, width] = np.uint8(c & np.uint32(0xFF))
        out[i, width + 1] = np.uint8((c >> np.uint32(8)) & np.uint32(0xFF))
        out[i, width + 2] = np.uint8((c >> np.uint32(16)) & np.uint32(0xFF))
        out[i, width + 3] = np.uint8(c >> np.uint32(24))


@njit(nogil=True, cache=True)
def crc32_words(crc, words, row):
    """``crc32_update`` continued over row ``row`` of ``words``: the bytes as little-endian
    uint32 words, an even number a row, eight bytes a step (half the loads of bytes)."""
    t = CRC_TABLES
    c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
    for k in range(0, words.shape[1], 2):
        lo = c ^ words[row, k]
        hi = words[row, k + 1]
        c = (t[7, lo & np.uint32(0xFF)] ^ t[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
             ^ t[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ t[4, lo >> np.uint32(24)]
             ^ t[3, hi & np.uint32(0xFF)] ^ t[2, (hi >> np.uint32(8)) & np.uint32(0xFF)]
             ^ t[1, (hi >> np.uint32(16)) & np.uint32(0xFF)] ^ t[0, hi >> np.uint32(24)])
    return c ^ np.uint32(0xFFFFFFFF)


@njit(nogil=True, cache=True)
def frame_word_rows(keybuf, words, payloads, out):
    """``frame_rows`` for payloads a multiple of 8 bytes wide: ``words`` is ``payloads``
    viewed as little-endian uint32, which the CRC reads (the copy reads ``payloads``)."""
    width = payloads.shape[1]
    for i in range(payloads.shape[0]):
        c = crc32_words(crc32_update(0, keybuf, 8 * i, 8 * i + 8), words, i)
        out[i, :width] = payloads[i]
        out[i, width] = np.uint8(c & np.uint32(0xFF))
        out[i, width + 1] = np.uint8((c >> np.uint32(8)) & np.uint32(0xFF))
        out[i, width + 2] = np.uint8((c >> np.uint32(16)) & np.uint32(0xFF))
        out[i, width + 3] = np.uint8(c >> np.uint32(24))


@njit(nogil=True, cache=True, inline="always")
def _slice8(c, lo_word, hi_word):
    """One slicing-by-8 step of the register ``c`` (inverted) over two little-endian words."""
    t = CRC_TABLES
    lo = c ^ lo_word
    return (t[7, lo & np.uint32(0xFF)] ^ t[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
            ^ t[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ t[4, lo >> np.uint32(24)]
            ^ t[3, hi_word & np.uint32(0xFF)] ^ t[2, (hi_word >> np.uint32(8)) & np.uint32(0xFF)]
            ^ t[1, (hi_word >> np.uint32(16)) & np.uint32(0xFF)] ^ t[0, hi_word >> np.uint32(24)])


@njit(nogil=True, cache=True)
def verify_raw_words(keybuf, frames, out, dest, ok):
    """Check and copy fixed-width raw frames in one pass (the disk tier's cold reads).

    Frame ``i`` is row ``i`` of ``frames`` (little-endian uint32 words): the payload,
    ``out.shape[1]`` words (an even number), then the CRC-32 of (key ``i``, payload), key
    ``i`` being ``keybuf[8*i:8*i+8]``. ``out[dest[i]]`` := the payload, ``ok[i]`` := its CRC
    matched. Rows go four at a time: each CRC is a chain of dependent table loads, and four
    chains side by side keep the core busy (61,000 256-byte rows: 5 ms, 7 with two chains, 15
    for ``verify_frames`` then ``decode_raw_rows``)."""
    n = frames.shape[0]
    w = out.shape[1]
    inv = np.uint32(0xFFFFFFFF)
    p = 0
    while p + 4 <= n:
        a = crc32_update(0, keybuf, 8 * p, 8 * p + 8) ^ inv
        b = crc32_update(0, keybuf, 8 * p + 8, 8 * p + 16) ^ inv
        c = crc32_update(0, keybuf, 8 * p + 16, 8 * p + 24) ^ inv
        d = crc32_update(0, keybuf, 8 * p + 24, 8 * p + 32) ^ inv
        for k in range(0, w, 2):
            a = _slice8(a, frames[p, k], frames[p, k + 1])
            b = _slice8(b, frames[p + 1, k], frames[p + 1, k + 1])
            c = _slice8(c, frames[p + 2, k], frames[p + 2, k + 1])
            d = _slice8(d, frames[p + 3, k], frames[p + 3, k + 1])
        ok[p] = frames[p, w] == a ^ inv
        ok[p + 1] = frames[p + 1, w] == b ^ inv
        ok[p + 2] = frames[p + 2, w] == c ^ inv
        ok[p + 3] = frames[p + 3, w] == d ^ inv
        for q in range(p, p + 4):
            out[dest[q], :] = frames[q, :w]
        p += 4
    while p < n:
        a = crc32_update(0, keybuf, 8 * p, 8 * p + 8) ^ inv
        for k in range(0, w, 2):
            a = _slice8(a, frames[p, k], frames[p, k + 1])
        ok[p] = frames[p, w] == a ^ inv
        out[dest[p], :] = frames[p, :w]
        p += 1
