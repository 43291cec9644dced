"""FAST ESA's flight count compressor: 16->8 bit (survey) and 14->8 bit (burst) codes.

The ``data`` variable of a FAST ESA L2 file holds 8-bit codes, not counts. The flight
compressor is a piecewise floating-point code (FAST_ESA_L2_FORMAT.md §4.5): the position
of the count's highest set bit picks a segment (the byte's high bits), the next 3 to 6
bits below it are kept as the mantissa (the byte's low bits), and the lower bits are
dropped (truncated). A byte therefore stands for a range of counts ``[lo, lo + step - 1]``:

=============  =========================  ==========================
bytes          survey (16-bit) lo, step   burst (14-bit) lo, step
=============  =========================  ==========================
0-15           b, 1 (exact)               b, 1 (exact)
16-23          16 + 2(b-16), 2            same
24-31          32 + 4(b-24), 4            same
32-47          64 + 4(b-32), 4            same
48-63          128 + 8(b-48), 8           same
64-79          256 + 16(b-64), 16         same
80-95          512 + 32(b-80), 32         same
96-111         1024 + 64(b-96), 64        (96-127) 1024 + 32(b-96), 32
112-127        2048 + 128(b-112), 128
128-159        4096 + 128(b-128), 128     2048 + 64(b-128), 64
160-191        8192 + 256(b-160), 256     4096 + 128(b-160), 128
192-223        16384 + 512(b-192), 512    (192-255) 8192 + 128(b-192), 128
224-255        32768 + 1024(b-224), 1024
=============  =========================  ==========================

:func:`decode_counts` returns the range midpoint ``lo + (step - 1) / 2`` (exact for
bytes below 16): the instrument's ground tables (``byteto16_map``, ``byteto14_map``) are
not public, so the midpoint is the honest estimate. :func:`encode_counts` is the flight
encoder (truncating); counts beyond the range saturate at 255.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BURST_INSTRUMENTS",
    "COUNT_MAX",
    "code_ranges",
    "count_midpoints",
    "decode_counts",
    "encode_counts",
]

#: Instruments whose ``data`` codes come from the burst (14->8 bit) compressor; the others'
#: from the survey (16->8 bit) one.
BURST_INSTRUMENTS = ("eeb", "ieb")
#: Largest count each compressor represents (survey: 16 bit, burst: 14 bit).
COUNT_MAX = {False: 65535, True: 16383}

# (first byte, last byte, lo of the first byte, step) per segment.
_SEGMENTS = {
    False: (
        (0, 15, 0, 1),
        (16, 23, 16, 2),
        (24, 31, 32, 4),
        (32, 47, 64, 4),
        (48, 63, 128, 8),
        (64, 79, 256, 16),
        (80, 95, 512, 32),
        (96, 111, 1024, 64),
        (112, 127, 2048, 128),
        (128, 159, 4096, 128),
        (160, 191, 8192, 256),
        (192, 223, 16384, 512),
        (224, 255, 32768, 1024),
    ),
    True: (
        (0, 15, 0, 1),
        (16, 23, 16, 2),
        (24, 31, 32, 4),
        (32, 47, 64, 4),
        (48, 63, 128, 8),
        (64, 79, 256, 16),
        (80, 95, 512, 32),
        (96, 127, 1024, 32),
        (128, 159, 2048, 64),
        (160, 191, 4096, 128),
        (192, 255, 8192, 128),
    ),
}


def _tables(burst: bool) -> tuple[np.ndarray, np.ndarray]:
    lo = np.empty(256, np.int64)
    step = np.empty(256, np.int64)
    for first, last, start, width in _SEGMENTS[bool(burst)]:
        b = np.arange(first, last + 1)
        lo[b] = start + width * (b - first)
        step[b] = width
    return lo, step


_LO = {b: _tables(b)[0] for b in (False, True)}
_STEP = {b: _tables(b)[1] for b in (False, True)}
_MID = {b: (_LO[b] + (_STEP[b] - 1) / 2.0).astype(np.float32) for b in (False, True)}
for _table in _MID.values():
    _table.setflags(write=False)


def count_midpoints(*, burst: bool) -> np.ndarray:
    """The 256-entry decoding table: ``table[code]`` is :func:`decode_counts` of a code.

    Parameters
    ----------
    burst : bool
        Burst (14->8 bit) or survey (16->8 bit) code.

    Returns
    -------
    ndarray of float32, shape (256,)
        Read-only; gather with it (``table[codes]``) to decode uint8 codes in one pass.
    """
    return _MID[bool(burst)]


def code_ranges(*, burst: bool) -> tuple[np.ndarray, np.ndarray]:
    """The count range of every byte: ``lo`` and ``hi`` (inclusive), each of shape (256,).

    Parameters
    ----------
    burst : bool
        Burst (14->8 bit, ``eeb``/``ieb``) or survey (16->8 bit, ``ees``/``ies``) code.
    """
    lo, step = _LO[bool(burst)], _STEP[bool(burst)]
    return lo.copy(), lo + step - 1


def decode_counts(codes: np.ndarray, *, burst: bool) -> np.ndarray:
    """Counts from 8-bit ``data`` codes: the midpoint of each code's count range.

    Parameters
    ----------
    codes : array_like
        Codes 0-255 (any numeric dtype); NaN (not measured) stays NaN. Non-integral or
        out-of-range codes are not codes: they give NaN.
    burst : bool
        Burst (14->8 bit) or survey (16->8 bit) code.

    Returns
    -------
    ndarray of float32
        ``lo + (step - 1) / 2`` per code, exact for codes below 16.
    """
    c = np.asarray(codes)
    mid = _MID[bool(burst)]
    if c.dtype == np.uint8:
        return mid[c]
    # one 256-entry gather on the codes cast to bytes; a value that the cast does not
    # keep (NaN, non-integral, out of range: no byte equals it) is not a code -> NaN
    f = np.asarray(c, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        byte = f.astype(np.uint8)
    return np.where(byte == f, mid[byte], np.float32(np.nan))


def encode_counts(counts: np.ndarray, *, burst: bool) -> np.ndarray:
    """The flight encoder: counts to 8-bit codes, truncating; beyond the range -> 255.

    Parameters
    ----------
    counts : array_like of int
        Non-negative counts.
    burst : bool
        Burst (14->8 bit) or survey (16->8 bit) code.

    Returns
    -------
    ndarray of uint8
        The code whose range holds each count (255 for counts above ``COUNT_MAX``: the
        caller flags saturation in ``data_quality``).
    """
    c = np.asarray(counts, dtype=np.int64)
    if np.any(c < 0):
        raise ValueError("counts must be non-negative")
    code = np.searchsorted(_LO[bool(burst)], c, side="right") - 1
    return code.astype(np.uint8)
