"""The old logarithmic count decoding against the flight compressor's segment table.

Prints, per segment of the 8-bit code, how far the old formula
``32 * (cmax / 32) ** ((code - 32) / 223)`` (codes >= 32) was from the range midpoint that
:func:`fastspectro_dask.compression.decode_counts` returns now. Run:
``python benchmarks/compare_decoding.py``.
"""

from __future__ import annotations

import numpy as np

from fastspectro_dask.compression import _SEGMENTS, COUNT_MAX, code_ranges, decode_counts


def old_decode(codes: np.ndarray, cmax: float) -> np.ndarray:
    c = np.asarray(codes, dtype=np.float64)
    return np.where(c < 32, c, 32.0 * np.exp((c - 32.0) * np.log(cmax / 32.0) / 223.0))


def main() -> None:
    for burst in (False, True):
        name = "burst (14->8 bit)" if burst else "survey (16->8 bit)"
        codes = np.arange(256)
        new = decode_counts(codes.astype(np.float64), burst=burst).astype(np.float64)
        old = old_decode(codes, float(COUNT_MAX[burst]))
        lo, hi = code_ranges(burst=burst)
        print(f"\n{name}")
        print(f"{'bytes':>9} | {'counts':>13} | old/new min..max | old in range")
        for first, last, _, _ in _SEGMENTS[burst]:
            s = slice(first, last + 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(new[s] > 0, old[s] / new[s], 1.0)
            inside = np.mean((old[s] >= lo[s]) & (old[s] <= hi[s] + 1))
            print(
                f"{first:>4}-{last:<4} | {lo[first]:>5}-{hi[last]:<7} | "
                f"{r.min():6.2f} .. {r.max():5.2f}   | {inside:5.0%}"
            )


if __name__ == "__main__":
    main()
