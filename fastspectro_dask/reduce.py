"""Pitch-angle categories and the collapse of the angle axis: arrays in, arrays out.

A FAST ESA record is an ``(angle, energy)`` array with a pitch angle per bin. For each
pitch-angle category (a set of ``[lo, hi)`` degree ranges) the angle axis collapses into a
``(time, energy)`` spectrogram:

* counts (``data``, stored as 8-bit pseudo-log codes, decompressed first by
  :func:`decompress_counts`) are **summed** over the bins of the category;
* calibrated flux (``eflux``) is **averaged with solid-angle (``domega``) weights**;
* a record with no valid bin in the category is NaN, not 0.

Energies are per record (modes change inside an orbit): the reduced energy of a channel is
the median over the record's valid angle bins of ``energy_full`` (robust to the
unreliable retrace step of channel 0, whose energy varies from angle to angle).

Channel 0, the first step of every sweep, is the analyser's high-voltage retrace: its
energy is unreliable and the FAST user guide says to ignore it. The reduction drops it
(NaN values and energy) unless ``retrace=True``.

Each record's accumulation length (the CDF ``time_delta``, ``time_end - time_start`` in
seconds; the record's time stamp is the centre of that interval) travels along as
``time_delta``, so that plots can draw every record at its real width. Fill, non-finite and
non-positive values, or a source without the variable, give NaN (unknown).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from fastspectro_dask.compression import BURST_INSTRUMENTS, decode_counts

__all__ = [
    "DEFAULT_CATEGORIES",
    "REDUCTION_VERSION",
    "RETRACE_CHANNEL",
    "SOURCE_VARIABLE",
    "Categories",
    "PadSpec",
    "category_label",
    "category_mask",
    "category_weights",
    "collapse_angle",
    "decompress_counts",
    "hemisphere_name",
    "normalize_categories",
    "record_durations",
    "reduce_dataset",
    "reduced_energy",
]

logger = logging.getLogger(__name__)

#: Category key -> ranges of pitch angle in degrees, each ``(lo, hi)``; ``lo > hi`` wraps
#: through 0 deg. 0 deg is field-aligned, 180 deg anti-field-aligned (which of them is
#: downgoing depends on the hemisphere: :func:`hemisphere_name`). Rows are labelled by
#: pitch angle (:func:`category_label`): all, 0±30°, 180±30°, 90±50°.
Categories = Mapping[str, Sequence[tuple[float, float]]]

DEFAULT_CATEGORIES: dict[str, tuple[tuple[float, float], ...]] = {
    "all": ((0.0, 360.0),),
    "parallel": ((330.0, 30.0),),
    "antiparallel": ((150.0, 210.0),),
    "perpendicular": ((40.0, 140.0), (220.0, 320.0)),
}

#: How each variable collapses over angle: counts summed, flux averaged with ``domega``
#: weights, ``rate`` (counts per second per angle bin) the weighted counts over the
#: accumulation time and the weight sum.
_HOW = {"data": "sum", "eflux": "mean", "rate": "rate"}
#: The CDF variable each plotted variable is read from.
SOURCE_VARIABLE = {"data": "data", "eflux": "eflux", "rate": "data"}

#: Version of the decoding and reduction: part of every cache key and extrema state, so
#: that nothing computed by an older decoding or reduction is ever reused. 2: counts
#: decoded with the flight compressor's segment table; fractional category edge weights.
#: 3: records flagged ``valid == 0`` blanked in the per-file read too (as in the lazy one).
REDUCTION_VERSION = 3

#: Index (along ``energy_channel``) of the sweep's high-voltage retrace step.
RETRACE_CHANNEL = 0


def decompress_counts(codes: np.ndarray, *, burst: bool) -> np.ndarray:
    """Counts from FAST ESA's 8-bit compressed ``data`` codes (flight compressor).

    The midpoint of each code's count range in the flight compressor's segment table
    (:mod:`fastspectro_dask.compression`; FAST_ESA_L2_FORMAT.md §4.5): exact below 16,
    ``lo + (step - 1) / 2`` above. NaN stays NaN.

    Parameters
    ----------
    codes : ndarray
        The ``data`` values (float, NaN where not measured).
    burst : bool
        Burst (``eeb``, ``ieb``: 14->8 bit) or survey (``ees``, ``ies``: 16->8 bit).

    Returns
    -------
    ndarray of float32
    """
    return decode_counts(codes, burst=burst)


def normalize_categories(
    categories: Categories | None,
) -> dict[str, tuple[tuple[float, float], ...]]:
    """Validate categories (``None`` -> the defaults).

    Each range is ``(lo, hi)`` in degrees within [0, 360]; ``lo > hi`` is a range that
    wraps through 0 deg (e.g. ``(330, 30)``, the 60 deg around 0 deg).
    """
    if categories is None:
        return dict(DEFAULT_CATEGORIES)
    out: dict[str, tuple[tuple[float, float], ...]] = {}
    for key, ranges in categories.items():
        if str(key) == "pad":
            raise ValueError("'pad' names the pitch-angle spectrogram: choose another name")
        if isinstance(ranges, tuple) and len(ranges) == 2 and np.isscalar(ranges[0]):
            ranges = (ranges,)  # a single (lo, hi) pair
        checked = []
        for lo, hi in ranges:
            lo, hi = float(lo), float(hi)
            if not (0.0 <= lo <= 360.0 and 0.0 <= hi <= 360.0 and lo != hi):
                raise ValueError(
                    f"pitch-angle category {key!r}: range ({lo:g}, {hi:g}) must have both "
                    "ends within [0, 360] and lo != hi (lo > hi wraps through 0)"
                )
            checked.append((lo, hi))
        if not checked:
            raise ValueError(f"pitch-angle category {key!r} has no range")
        out[str(key)] = tuple(checked)
    if not out:
        raise ValueError("no pitch-angle category given")
    return out


def _unwrapped(lo: float, hi: float) -> tuple[float, float]:
    """A range as ``a <= b`` with ``a`` in [0, 360) and ``b - a`` in (0, 360]."""
    a = lo % 360.0
    b = hi if hi > lo else hi + 360.0
    return a, b + (a - lo)


def category_label(ranges: Sequence[tuple[float, float]]) -> str:
    """A category named by pitch angle: ``"0±30°"``, ``"90±50°"``, else its ranges.

    A single range is its centre and half width; two ranges mirrored about 180 deg (the
    two sides of the field line, as ``perpendicular`` is) are named by the first.
    """
    deg = "\N{DEGREE SIGN}"
    rs = [_unwrapped(lo, hi) for lo, hi in ranges]
    if len(rs) == 2:
        (a1, b1), (a2, b2) = rs
        if abs((a1 + b1) / 2 + (a2 + b2) / 2 - 360.0) < 1e-9 and abs((b1 - a1) - (b2 - a2)) < 1e-9:
            rs = rs[:1]
    if len(rs) == 1:
        a, b = rs[0]
        if b - a >= 360.0:
            return f"0\N{EN DASH}360{deg}"
        return f"{((a + b) / 2) % 360:g}\N{PLUS-MINUS SIGN}{(b - a) / 2:g}{deg}"
    return ", ".join(f"{lo:g}\N{EN DASH}{hi:g}{deg}" for lo, hi in ranges)


def hemisphere_name(ranges: Sequence[tuple[float, float]], hemisphere: str | None) -> str:
    """``"downgoing"``/``"upgoing"`` for a category centred on 0 or 180 deg, else ``""``.

    In the northern hemisphere the magnetic field points down, so 0 deg (field-aligned)
    is downgoing; in the southern hemisphere 180 deg is. ``hemisphere`` is ``"north"``,
    ``"south"`` or None (unknown: no name).
    """
    if hemisphere not in ("north", "south"):
        return ""
    rs = [_unwrapped(lo, hi) for lo, hi in ranges]
    if len(rs) != 1 or rs[0][1] - rs[0][0] >= 180.0:
        return ""
    centre = ((rs[0][0] + rs[0][1]) / 2) % 360.0
    along = min(centre, 360.0 - centre) < 1e-9
    against = abs(centre - 180.0) < 1e-9
    if not (along or against):
        return ""
    return "downgoing" if along == (hemisphere == "north") else "upgoing"


def _shifted_copies(p_sorted: np.ndarray) -> np.ndarray:
    """``(rows, 4 n)``: the centres shifted by -360, 0, +360 and +720 deg, side by side."""
    return np.concatenate([p_sorted - 360.0, p_sorted, p_sorted + 360.0, p_sorted + 720.0], axis=1)


def _range_weights(
    p_sorted: np.ndarray, a: float, b: float, x: np.ndarray | None = None
) -> np.ndarray:
    """Weights of sorted, finite centres ``(rows, n)`` for the range ``[a, b]``.

    Returns the weights of shape ``(rows, 4, n)``: of every copy of every centre
    (shifted by -360, 0, +360, +720 deg; ``x``, :func:`_shifted_copies` of ``p_sorted``,
    if the caller has it).
    """
    rows, n = p_sorted.shape
    if x is None:
        x = _shifted_copies(p_sorted)
    w = ((x >= a) & (x <= b)).astype(np.float64)
    r = np.arange(rows)
    i_lo = (x < a).sum(axis=1) - 1  # last centre below the range (exists: x[0] < 0 <= a)
    i_hi = (x <= b).sum(axis=1)  # first centre above it (exists: x[-1] >= 720 > b)
    x_lo, x_lo1 = x[r, i_lo], x[r, i_lo + 1]
    x_hi, x_hi0 = x[r, i_hi], x[r, i_hi - 1]
    some = i_hi > i_lo + 1  # a centre lies inside
    # Edge bins: the share of the gap to the inside neighbour that lies inside.
    f_lo = np.where(some, (x_lo1 - a) / (x_lo1 - x_lo), (x_lo1 - (a + b) / 2) / (x_lo1 - x_lo))
    f_hi = np.where(some, (b - x_hi0) / (x_hi - x_hi0), 1.0 - f_lo)
    w[r, i_lo] += f_lo
    w[r, i_hi] += np.where(some, f_hi, 0.0)
    w[r, i_lo + 1] += np.where(some, 0.0, f_hi)  # no centre inside: interpolate at the midpoint
    return w.reshape(rows, 4, n)


def category_weights(pitch: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """Fractional weights of angle bins in a pitch-angle category, as IDL SPEDAS does.

    Per column (one record and energy channel: a set of bins with pitch-angle centres),
    with the centres sorted and the wrap handled by shifted copies (±360 deg): a bin
    whose centre lies inside a range weighs 1; the one bin beyond each edge weighs the
    fraction of the gap between it and its inside neighbour that lies inside the range;
    if no centre lies inside, the range's midpoint is interpolated between its two
    neighbours (weights summing to 1), so a category is never empty. Ranges of a
    category add up; every weight is capped at 1.

    Parameters
    ----------
    pitch : ndarray, shape (..., angle)
        Pitch angles in degrees, angle bins along the last axis; NaN marks a bin that is
        not measured (weight 0).
    ranges : sequence of (lo, hi)
        Degrees; ``lo > hi`` wraps through 0.

    Returns
    -------
    ndarray of float64, the shape of ``pitch``
    """
    pa = np.asarray(pitch, dtype=np.float64)
    shape = pa.shape
    cols = pa.reshape(-1, shape[-1])
    if cols.size == 0:
        return np.zeros(shape)
    uniq, inverse, valid = _distinct_columns(cols)
    out = _unique_weights(uniq, ranges)[inverse]
    out[~valid] = 0.0
    return out.reshape(shape)


def _distinct_columns(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of ``cols`` (mod 360, NaN as inf), the inverse map, and validity.

    Columns repeat (one table per mode and theta_shift): the weights are computed once
    per distinct column. Rows are grouped by a random projection (fast), then checked
    exactly; on a hash collision the exact (slower) ``np.unique`` decides.
    """
    cols = cols % 360.0
    valid = np.isfinite(cols)
    filled = np.where(valid, cols, np.inf)
    probe = np.where(valid, cols, -1.0) @ np.random.default_rng(0).random(cols.shape[1])
    _, first, inverse = np.unique(probe, return_index=True, return_inverse=True)
    uniq = filled[first]
    inverse = inverse.reshape(-1)
    if not np.array_equal(uniq[inverse], filled):  # a collision: exact grouping
        uniq, inverse = np.unique(filled, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
    return uniq, inverse, valid


def _unique_weights(uniq: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """Category weights of distinct columns (NaN bins as inf: weight 0)."""
    return _unique_weights_all(uniq, [ranges])[0]


def _unique_weights_all(
    uniq: np.ndarray, categories: Sequence[Sequence[tuple[float, float]]]
) -> list[np.ndarray]:
    """:func:`_unique_weights` of several categories, the columns sorted once."""
    out = [np.zeros(uniq.shape) for _ in categories]
    nv = np.isfinite(uniq).sum(axis=1)
    for n in (int(v) for v in np.unique(nv)):
        if n == 0:
            continue
        sel = np.flatnonzero(nv == n)
        cols = uniq[sel]
        order = np.argsort(cols, axis=1, kind="stable")[:, :n]  # finite bins, sorted
        p_sorted = np.take_along_axis(cols, order, axis=1)
        x = _shifted_copies(p_sorted)  # shared by every range
        for uw, ranges in zip(out, categories, strict=True):
            acc = np.zeros((sel.size, n))
            for lo, hi in ranges:
                w = _range_weights(p_sorted, *_unwrapped(lo, hi), x=x)
                for copy in range(4):  # copy by copy: the sums of np.add.at, bit for bit
                    acc += w[:, copy]
            block = np.zeros((sel.size, uniq.shape[1]))
            np.put_along_axis(block, order, np.minimum(acc, 1.0), axis=1)
            uw[sel] = block
    return out


def category_mask(pitch_angle: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """Boolean mask of the bins whose pitch angle lies inside any range (closed ends).

    NaN pitch angles (bins outside the valid block) are never in a category. The
    reduction itself uses the fractional :func:`category_weights`.
    """
    pa = np.asarray(pitch_angle, dtype=np.float64)
    mask = np.zeros(pa.shape, bool)
    with np.errstate(invalid="ignore"):
        for lo, hi in ranges:
            a, b = _unwrapped(lo, hi)
            p = pa % 360.0
            mask |= ((p >= a) & (p <= b)) | ((p + 360.0 >= a) & (p + 360.0 <= b))
    return mask


def collapse_angle(
    values: np.ndarray,
    pitch_angle: np.ndarray,
    domega: np.ndarray | None,
    ranges: Sequence[tuple[float, float]],
    how: str = "sum",
    integ: np.ndarray | None = None,
) -> np.ndarray:
    """Collapse ``(time, angle, energy)`` to ``(time, energy)`` over one category.

    Bins weigh as :func:`category_weights` says (fractional at the category's edges).

    Parameters
    ----------
    values : ndarray, shape (time, angle, energy)
        Counts or flux, NaN where not measured.
    pitch_angle : ndarray, same shape
        Degrees in [0, 360), NaN outside the valid block.
    domega : ndarray, same shape, or None
        Solid angle per bin (sr); required for ``how="mean"``.
    ranges : sequence of (lo, hi)
        The category.
    how : {"sum", "mean", "rate"}
        ``"sum"``: ``Σ counts·w``; ``"mean"``: ``Σ v·domega·w / Σ domega·w``;
        ``"rate"``: ``Σ counts·w / (integ · Σ w)``, counts per second per angle bin.
    integ : ndarray, shape (time,), optional
        Seconds of accumulation per sample; required for ``how="rate"``.

    Returns
    -------
    ndarray, shape (time, energy), float64
        NaN where a record has no valid bin of the category at that energy.
    """
    return _collapse_categories(values, pitch_angle, domega, integ, cats={"c": ranges}, how=how)[0]


def reduced_energy(energy_full: np.ndarray) -> np.ndarray:
    """Per-record channel energy: median over the valid angle bins (NaN if none)."""
    return _reduced_energy(energy_full)


def _reduced_energy(energy_full: np.ndarray, skip: Sequence[int] = ()) -> np.ndarray:
    """:func:`reduced_energy`; the channels in ``skip`` (set to NaN by the caller) may
    hold any value: their median is not computed where that saves a sort."""
    e = np.asarray(energy_full)
    out = np.full((e.shape[0], e.shape[2]), np.nan)
    valid = np.isfinite(e)
    n_ang = valid.any(axis=2).sum(axis=1)  # valid angle rows per record
    n_en = valid.any(axis=1).sum(axis=1)  # valid energy columns per record
    for nb, ne in {(int(a), int(b)) for a, b in zip(n_ang, n_en, strict=True)}:
        if nb == 0 or ne == 0:
            continue
        sel = (n_ang == nb) & (n_en == ne)
        block = e[sel, :nb, :ne]
        if np.isfinite(block).all():  # the usual [:nbins, :nenergy] block: plain median
            out[sel, :ne] = _median_of_runs(block, [c for c in skip if c < ne])
        else:  # irregular holes: slower, NaN-aware
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    full = np.nanmedian(e[sel], axis=1)
            out[sel] = full
    return out


def _median_of_runs(block: np.ndarray, skip: Sequence[int] = ()) -> np.ndarray:
    """:func:`_median_over_angle` computed once per run of identical records.

    A record's ``energy_full`` is its mode's table, so consecutive records repeat it:
    the median of a repeated record is the median of its first copy, bit for bit.
    """
    if block.shape[0] < 2 or block.dtype.kind != "f":
        return _median_over_angle(block, skip)
    bits = np.ascontiguousarray(block).view(f"u{block.dtype.itemsize}")  # -0.0 != 0.0
    starts = np.flatnonzero(np.concatenate(([True], ~(bits[1:] == bits[:-1]).all(axis=(1, 2)))))
    if starts.size == block.shape[0]:
        return _median_over_angle(block, skip)
    run = np.repeat(np.arange(starts.size), np.diff(np.append(starts, block.shape[0])))
    return _median_over_angle(block[starts], skip)[run]


def _median_over_angle(block: np.ndarray, skip: Sequence[int] = ()) -> np.ndarray:
    """``np.median(block, axis=1)`` of finite ``(time, angle, energy)``, bit for bit
    (for energies below 1e38: the median's mean of two equal values does not overflow).

    A channel whose energy is the same (and not 0) in every angle bin of every record
    has that energy as median; only the others (the retrace step) are sorted. Channels
    in ``skip`` are never sorted (their value is then arbitrary).
    """
    first = block[:, 0, :]
    odd = ~((block == first[:, None, :]).all(axis=1) & (first != 0)).all(axis=0)
    odd[list(skip)] = False
    out = first.copy()
    if odd.any():
        out[:, odd] = np.median(block[:, :, odd], axis=1)
    return out


def record_durations(time_delta: np.ndarray) -> np.ndarray:
    """Accumulation lengths as float64 seconds, NaN where unknown.

    Parameters
    ----------
    time_delta : ndarray, shape (time,)
        The CDF ``time_delta`` (``time_end - time_start``, seconds), NaN or the CDF fill
        value (-1e31) where not known.

    Returns
    -------
    ndarray of float64, shape (time,)
        The same values; non-finite and non-positive ones (fill) are NaN.
    """
    d = np.array(time_delta, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        d[~(np.isfinite(d) & (d > 0))] = np.nan
    return d


def _durations_of(ds: xr.Dataset) -> Any:
    """``record_durations`` of the source's ``time_delta`` (lazy if it is), NaN if absent."""
    n = ds.sizes["time"]
    if "time_delta" not in ds.variables or ds["time_delta"].dims != ("time",):
        if "time_delta" in ds.variables:
            logger.warning(
                "%s: time_delta has dims %s, expected ('time',); record widths unknown",
                ds.attrs.get("source", "dataset"),
                ds["time_delta"].dims,
            )
        return np.full(n, np.nan)
    raw = ds["time_delta"].data
    if isinstance(raw, np.ndarray):
        return record_durations(raw)
    import dask.array as da

    return da.asarray(raw).map_blocks(record_durations, dtype=np.float64, token="reduce-time-delta")


#: Records per block in :func:`_collapse_categories`: its float64 temporaries
#: (``block x category x angle x energy`` for ``mean``) stay in the CPU cache.
_BLOCK_RECORDS = 32
#: More groups of records of distinct valid extents than this: one group (the largest
#: extent) instead, so that ragged input does not cost a Python loop per record.
_MAX_EXTENT_GROUPS = 8


def _collapse_categories(
    values: np.ndarray,
    pitch: np.ndarray,
    domega: np.ndarray | None,
    integ: np.ndarray | None = None,
    *,
    cats: Mapping[str, Sequence[tuple[float, float]]],
    how: str,
    finite_values: np.ndarray | None = None,
) -> np.ndarray:
    """(category, time, energy) for one block of records; shared work done once.

    ``integ`` (time, 1, 1), seconds, is each sample's accumulation time (for ``rate``).
    ``finite_values``: ``np.isfinite(values)`` of float32 ``values`` if the caller has it.

    Records are grouped by the extent of their valid bins (the ``[:nbins, :nenergy]``
    block of their mode), and each group is reduced on that block only
    (:func:`_collapse_group`). Every sum over angle runs in float64 and in angle order,
    so every bit of the result is that of plain float64 sums in angle order with a
    weight per bin (the reference in the tests).
    """
    if how not in ("sum", "mean", "rate"):
        raise ValueError(f"how must be 'sum', 'mean' or 'rate', not {how!r}")
    values = np.asarray(values, dtype=np.float32)
    pitch = np.asarray(pitch)
    if pitch.dtype != np.float32:
        pitch = pitch.astype(np.float64, copy=False)
    finite = np.isfinite(values) if finite_values is None else finite_values
    finite = finite & np.isfinite(pitch)  # a new array: finite_values stays the caller's
    if how == "mean":
        if domega is None:
            raise ValueError("how='mean' needs domega weights")
        domega = np.asarray(domega)
        if domega.dtype != np.float32:
            domega = domega.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            finite &= np.isfinite(domega) & (domega > 0)
    if how == "rate":
        if integ is None:
            raise ValueError("how='rate' needs the accumulation time")
        integ = np.asarray(integ, dtype=np.float64).reshape(-1)
    t_n, e_n = values.shape[0], values.shape[2]
    out = np.full((len(cats), t_n, e_n), np.nan)
    ranges = list(cats.values())
    for sel, a_n, ne in _extent_groups(finite):
        take = (sel, slice(0, a_n), slice(0, ne))
        out[:, sel, :ne] = _collapse_group(
            values[take],
            pitch[take],
            None if how != "mean" else domega[take],
            finite[take],
            None if integ is None else integ[sel],
            ranges=ranges,
            how=how,
        )
    return out


def _extent_groups(finite: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """Records grouped by the extent of their valid bins: ``(records, n_angle, n_energy)``.

    A record's extent is one past its last angle and last energy with a valid bin
    (records with none are left out: their values stay NaN). Beyond it nothing is valid,
    so a group can be reduced on ``[:n_angle, :n_energy]`` alone.
    """
    _, a_n, e_n = finite.shape
    if a_n == 0 or e_n == 0:  # nothing finite in the file (an all-fill or quiet file)
        return []
    by_angle = finite.any(axis=2)
    by_energy = finite.any(axis=1)
    a_ext = a_n - np.argmax(by_angle[:, ::-1], axis=1)
    e_ext = e_n - np.argmax(by_energy[:, ::-1], axis=1)
    some = by_angle.any(axis=1)
    keys = np.where(some, a_ext * (e_n + 1) + e_ext, -1)
    found = [int(k) for k in np.unique(keys) if k >= 0]
    if len(found) > _MAX_EXTENT_GROUPS:
        sel = np.flatnonzero(some)
        return [(sel, int(a_ext[sel].max()), int(e_ext[sel].max()))]
    return [(np.flatnonzero(keys == k), k // (e_n + 1), k % (e_n + 1)) for k in found]


def _collapse_group(
    values: np.ndarray,
    pitch: np.ndarray,
    domega: np.ndarray | None,
    finite: np.ndarray,
    integ: np.ndarray | None,
    *,
    ranges: Sequence[Sequence[tuple[float, float]]],
    how: str,
) -> np.ndarray:
    """(category, time, energy) of records ``(time, angle, energy)``, float64.

    Usually every valid column (record, energy) of a record has the same valid bins and
    pitch angles as the record's first valid column: its weights are then the record's
    (one weight row per record and category, computed once per distinct row), and the
    sums over angle are one ``einsum`` over the block. The other columns are reduced
    one by one with their own weights. A column without a valid bin is NaN.
    """
    t_n, _, e_n = values.shape
    col_any = finite.any(axis=1)  # (t, e)
    ref_e = np.argmax(col_any, axis=1)
    r = np.arange(t_n)
    ref_fin = finite[r, :, ref_e]  # (t, a)
    ref_pitch = pitch[r, :, ref_e]
    same = (finite == ref_fin[:, :, None]) & ((pitch == ref_pitch[:, :, None]) | ~finite)
    regular = same.all(axis=1) & col_any
    irregular = col_any & ~regular
    # category weights per record (0 on invalid bins), computed once per distinct row
    uniq, inverse, _ = _distinct_columns(np.where(ref_fin, ref_pitch.astype(np.float64), np.nan))
    weights = np.stack([uw[inverse] for uw in _unique_weights_all(uniq, ranges)], axis=1)
    filled = np.where(finite, values, np.float32(0))
    res = np.full((len(ranges), t_n, e_n), np.nan)
    for t0 in range(0, t_n, _BLOCK_RECORDS):
        sl = slice(t0, min(t0 + _BLOCK_RECORDS, t_n))
        _collapse_regular(
            res[:, sl],
            filled[sl],
            weights[sl],
            None if domega is None else np.where(finite[sl], domega[sl], 0.0),
            regular[sl],
            None if integ is None else integ[sl],
            how=how,
        )
    if irregular.any():
        ti, ei = np.nonzero(irregular)
        cols = [None if a is None else a[ti, :, ei] for a in (filled, pitch, domega, finite)]
        res[:, ti, ei] = _collapse_columns(
            cols, None if integ is None else integ[ti], ranges=ranges, how=how
        )
    return res


def _collapse_regular(
    res: np.ndarray,
    filled: np.ndarray,
    weights: np.ndarray,
    base: np.ndarray | None,
    regular: np.ndarray,
    integ: np.ndarray | None,
    *,
    how: str,
) -> None:
    """Fill ``res`` (category, time, energy) at the regular columns of a record block.

    ``filled`` (time, angle, energy) holds the values, 0 on invalid bins; ``weights``
    (time, category, angle) the weights of each record's columns; ``base`` the ``domega``
    weights (0 on invalid bins) for ``mean``.
    """
    e_n = filled.shape[2]
    if e_n == 1:
        # over a single channel einsum (and the sum over angle of ``w``) add the angles
        # pairwise, in an order set by their number: an empty second channel keeps the
        # angle order of every other block
        filled = np.concatenate([filled, np.zeros_like(filled)], axis=2)
        if base is not None:
            base = np.concatenate([base, np.zeros_like(base)], axis=2)
    # products and sums in float64: a float32 product would underflow (tiny values) or
    # round before the division
    if how == "mean":
        w = weights[:, :, :, None] * base[:, None, :, :]  # (t, k, a, e)
        total = np.einsum("tae,tkae->tke", filled, w, dtype=np.float64)
        den = w.sum(axis=2)[:, :, :e_n]
    else:
        total = np.einsum("tae,tka->tke", filled, weights, dtype=np.float64)
        den = np.ascontiguousarray(weights.transpose(2, 0, 1)).sum(axis=0)[:, :, None]
    total = total[:, :, :e_n]
    rate = None if integ is None else integ.reshape(-1, 1, 1)
    _finish(res.transpose(1, 0, 2), total, den, regular[:, None, :], rate, how)


def _finish(
    out: np.ndarray,
    total: np.ndarray,
    den: np.ndarray,
    keep: np.ndarray | bool,
    integ: np.ndarray | None,
    how: str,
) -> None:
    """Write the weighted sums (``sum``) or means into ``out`` where ``keep`` and den > 0."""
    ok = (den > 0) & keep
    if how == "sum":
        np.copyto(out, total, where=ok)
        return
    if how == "rate":
        den = den * integ
    np.divide(total, den, out=out, where=ok)


def _collapse_columns(
    cols: Sequence[np.ndarray | None],
    integ: np.ndarray | None,
    *,
    ranges: Sequence[Sequence[tuple[float, float]]],
    how: str,
) -> np.ndarray:
    """(category, column) of columns with their own weights.

    ``cols`` are ``(filled, pitch, domega, finite)``, each ``(column, angle)``
    (``domega`` None unless ``how="mean"``); ``integ`` (column,) for ``rate``.
    """
    filled, pitch, domega, finite = cols
    uniq, inverse, valid = _distinct_columns(np.where(finite, pitch.astype(np.float64), np.nan))
    # angle first: the sums over angle run in angle order, as in _collapse_regular
    filled_t = np.ascontiguousarray(filled.T)
    base = np.where(finite, domega, 0.0).T if how == "mean" else None
    res = np.full((len(ranges), filled.shape[0]), np.nan)
    for k, uw in enumerate(_unique_weights_all(uniq, ranges)):
        w = uw[inverse]
        w[~valid] = 0.0
        w = np.ascontiguousarray(w.T)
        if base is not None:
            w *= base
        total, den = np.zeros(w.shape[1]), np.zeros(w.shape[1])
        for f_a, w_a in zip(filled_t, w, strict=True):  # in angle order, as einsum sums
            total += f_a * w_a
            den += w_a
        _finish(res[k], total, den, True, integ, how)
    return res


def accumulation_times(ds: xr.Dataset) -> Any:
    """Each record's per-sample accumulation time in seconds, NaN where unknown.

    The CDF ``time_integ`` where it is valid, else ``time_delta / nenergy`` (the sweep's
    steps share the record's accumulation).
    """
    durations = _durations_of(ds)
    if "nenergy" in ds.variables and ds["nenergy"].dims == ("time",):
        nen = ds["nenergy"].astype(np.float64)
        nen = nen.where((nen > 0) & (nen < 255)).data
        integ = durations / nen
    else:
        integ = durations * np.nan
    if "time_integ" in ds.variables and ds["time_integ"].dims == ("time",):
        own = ds["time_integ"].data
        own = (
            own.map_blocks(record_durations, dtype=np.float64)
            if hasattr(own, "map_blocks")
            else record_durations(own)
        )
        integ = np.where(np.isfinite(own), own, integ)
    return integ


@dataclass(frozen=True)
class PadSpec:
    """How the pitch-angle spectrogram (product ``pad``) collapses the energy channels.

    Parameters
    ----------
    energy : (lo, hi) or None
        Energy window in eV, as ``fa_esa_l2_pad``'s ``energy=``: channels inside weigh 1,
        the nearest channel beyond each edge a fraction
        (:func:`fastspectro_dask.padreduce.energy_window_weights`). None: every valid
        channel (the retrace channel dropped unless ``retrace``).
    """

    energy: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.energy is not None:
            lo, hi = (float(v) for v in self.energy)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
                raise ValueError(f"pad energy window must be 0 <= lo < hi (eV), not {self.energy}")
            object.__setattr__(self, "energy", (lo, hi))

    def to_json(self) -> dict[str, Any]:
        return {"energy": None if self.energy is None else list(self.energy)}


def _pad_block(
    values: np.ndarray,
    energy: np.ndarray,
    denergy: np.ndarray,
    pitch: np.ndarray,
    integ: np.ndarray | None = None,
    *,
    window: tuple[float, float] | None,
    how: str,
    drop_channels: tuple[int, ...],
    seen: np.ndarray | None = None,
) -> np.ndarray:
    """``(2, time, angle)``: the pad values and their sorted pitch angles, one block.

    ``seen``: the ``(angle, energy)`` map of bins where ``values`` is finite in some
    record, if the caller has it.
    """
    from fastspectro_dask.padreduce import _collapse_energy

    # the block of angle bins and channels where any input is finite: beyond it nothing
    # enters a sum, a weight or a pitch angle, and the sorted bins end with NaN anyway
    if seen is None:
        inputs = {id(a): a for a in (values, energy, denergy, pitch)}.values()
        a_x, e_x = _finite_extent(*inputs)
    else:
        seen = seen.copy()
        for a in {id(a): a for a in (energy, denergy, pitch)}.values():
            seen |= np.isfinite(a).any(axis=0)
        a_x, e_x = _extent_of(seen)
    crop = (slice(None), slice(0, a_x), slice(0, e_x))
    pad, pitch_sorted, *wsum = _collapse_energy(
        values[crop],
        energy[crop],
        denergy[crop],
        pitch[crop],
        window,
        "mean" if how == "mean" else "sum",
        weight_sum=how == "rate",  # only a rate divides by the weight sum
        drop=drop_channels,  # as NaN values
    )
    if how == "rate":
        den = wsum[0] * np.asarray(integ, dtype=np.float64).reshape(-1, 1)
        pad = np.divide(pad, den, out=np.full_like(pad, np.nan), where=den > 0)
    out = np.full((2, *np.shape(values)[:2]), np.nan)
    out[0, :, :a_x] = pad
    out[1, :, :a_x] = pitch_sorted
    return out


def _finite_extent(*arrays: np.ndarray) -> tuple[int, int]:
    """One past the last angle bin and the last energy channel where any array is finite.

    ``arrays`` are ``(time, angle, energy)`` of one shape. At least 2 channels where
    there are (as :func:`_extent_groups`).
    """
    seen = np.isfinite(arrays[0]).any(axis=0)  # (angle, energy)
    for a in arrays[1:]:
        seen |= np.isfinite(a).any(axis=0)
    return _extent_of(seen)


def _extent_of(seen: np.ndarray) -> tuple[int, int]:
    """:func:`_finite_extent` of the ``(angle, energy)`` map of bins finite somewhere."""
    angles, energies = seen.any(axis=1), seen.any(axis=0)
    if not angles.any():
        return 0, 0
    return (
        angles.size - int(np.argmax(angles[::-1])),
        max(energies.size - int(np.argmax(energies[::-1])), min(energies.size, 2)),
    )


def _reduce_eager(
    values: np.ndarray,
    pitch: np.ndarray,
    domega: np.ndarray,
    integ: np.ndarray | None,
    *,
    cats: Mapping[str, Sequence[tuple[float, float]]],
    how: str,
    decode: bool,
    burst: bool,
    full: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The category spectrograms of NumPy arrays, and the (decoded) values.

    Works on the block of angle bins and energy channels that holds finite values (the
    rest is NaN in every record: nothing there enters a sum), decoding counts there only.
    Returns ``(category, time, energy)`` float64 and the values as the pad reduction
    reads them: with ``decode`` and ``full``, the counts in the shape of ``values``
    (decoded in the block, NaN elsewhere); else ``values`` itself; and the ``(angle,
    energy)`` map of bins where those values are finite in some record (None for
    decoded counts).
    """
    t_n, _, e_n = values.shape
    finite = np.isfinite(values)  # whole (contiguous): faster than on the crop
    seen = finite.any(axis=0)
    a_x, e_x = _extent_of(seen)
    crop = (slice(None), slice(0, a_x), slice(0, e_x))
    part = values[crop]
    if decode:
        part = decompress_counts(part, burst=burst)
    out = np.full((len(cats), t_n, e_n), np.nan)
    out[:, :, :e_x] = _collapse_categories(
        part,
        pitch[crop],
        domega[crop],
        integ,
        cats=cats,
        how=how,
        # where the values reduced are these float32 values, their finite mask
        finite_values=finite[crop] if not decode and values.dtype == np.float32 else None,
    )
    if full and decode:
        whole = np.full(values.shape, np.nan, np.float32)
        whole[crop] = part
        return out, whole, None
    return out, values, seen


def reduce_dataset(
    ds: xr.Dataset,
    *,
    variable: str = "data",
    categories: Categories | None = None,
    decompress: bool = True,
    retrace: bool = False,
    pad: PadSpec | None = None,
) -> xr.Dataset:
    """Reduce an ``open_esa`` Dataset to ``(category, time, energy_channel)`` spectrograms.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`fastspectro_dask.open_esa` (dask or numpy backed).
    variable : {"data", "eflux", "rate"}
        ``data`` (counts) is summed over the category's bins (fractional weights at its
        edges, :func:`category_weights`); ``eflux`` is averaged with ``domega`` weights;
        ``rate`` is counts per second per angle bin (the weighted counts over the
        accumulation time, :func:`accumulation_times`, and the weight sum), which does
        not jump where the survey mode changes.
    categories : mapping, optional
        Key -> ``[(lo, hi), ...]`` in degrees; default :data:`DEFAULT_CATEGORIES`.
    decompress : bool
        For ``data``: turn the 8-bit compressed codes into counts before summing
        (:func:`decompress_counts`; default). ``False`` sums the codes as stored.
    retrace : bool
        Keep channel 0, the sweep's high-voltage retrace step (:data:`RETRACE_CHANNEL`).
        By default it is dropped (NaN values and energy), as the FAST user guide advises:
        its energy is unreliable, and kept it would stretch the energy axis and ``y_max``
        beyond the instrument's range (to ~60 keV).
    pad : PadSpec, optional
        Also reduce the pitch-angle spectrogram (``pad``, ``(time, pitch_bin)``): the
        energy channels inside ``pad.energy`` collapsed per angle bin as ``fa_esa_l2_pad``
        does (counts summed, eflux averaged with ``denergy_full`` weights, rate over the
        accumulation time and the weight sum), angle bins sorted by pitch angle per
        record (``pad_pitch``, NaN where a record has fewer bins). Needs ``denergy_full``
        for ``eflux``.

    Returns
    -------
    xarray.Dataset
        ``values`` (category, time, energy_channel) float64, ``energy`` (time,
        energy_channel) in eV and ``time_delta`` (time) float64, each record's accumulation
        length in seconds from the source's ``time_delta`` (NaN where it is fill or the
        source has none; the ``time`` stamps are the accumulation centres). Lazily computed
        when the input is dask-backed (one task per input chunk). Attributes:
        ``variable``, ``units`` (the CDF ``UNITS``), and the source's ``instrument``,
        ``orbit``, ``source``.
    """
    return _reduce(
        ds,
        variable=variable,
        categories=categories,
        decompress=decompress,
        retrace=retrace,
        pad=pad,
        decoded=False,
    )


def _reduce(
    ds: xr.Dataset,
    *,
    variable: str,
    categories: Categories | None,
    decompress: bool,
    retrace: bool,
    pad: PadSpec | None,
    decoded: bool,
) -> xr.Dataset:
    """:func:`reduce_dataset`; ``decoded``: the NumPy ``data`` already holds counts
    (``io`` decoded the codes while reading them), so they are not decoded again."""
    if variable not in _HOW:
        raise ValueError(f"variable must be one of {sorted(_HOW)}, not {variable!r}")
    cats = normalize_categories(categories)
    how = _HOW[variable]
    source = SOURCE_VARIABLE[variable]
    arrays = [ds[source].data, ds["pitch_angle"].data, ds["domega"].data, ds["energy_full"].data]
    integ = accumulation_times(ds) if how == "rate" else None
    decode = source == "data" and decompress  # sum counts, not compressed codes
    if decoded and source == "data" and not decompress:
        raise ValueError("decompress=False needs the codes, not decoded counts")
    burst = str(ds.attrs.get("instrument", "")) in BURST_INSTRUMENTS
    drop = (
        ()
        if retrace
        else tuple(int(i) for i in np.flatnonzero(ds["energy_channel"].values == RETRACE_CHANNEL))
    )
    eager = all(isinstance(a, np.ndarray) for a in arrays)
    seen = None  # where the values are finite (angle, energy), if known
    if eager:
        values, arrays[0], seen = _reduce_eager(
            *arrays[:3],
            integ,
            cats=cats,
            how=how,
            decode=decode and not decoded,
            burst=burst,
            full=pad is not None,
        )
        energy = _reduced_energy(arrays[3], drop)
        if decoded and decode and pad is not None:
            # the pad sums read counts in C order, as _reduce_eager's decoded copy has it
            # (a file stored (energy, angle) gives transposed arrays; float sums depend
            # on the memory order)
            arrays[0] = np.ascontiguousarray(arrays[0])
        values[:, :, list(drop)] = np.nan  # the retrace channel (by label: slicing-safe)
        energy[:, list(drop)] = np.nan
    else:
        values, energy = _reduce_lazy(
            arrays, integ, cats=cats, how=how, decode=decode, burst=burst, variable=variable
        )
    pad_arrays = None
    if pad is not None:
        denergy = ds["denergy_full"].data if how == "mean" else arrays[3]
        block = [arrays[0], arrays[3], denergy, arrays[1]]
        pad_arrays = _pad_arrays(
            block, integ, window=pad.energy, how=how, drop=drop, seen=seen, variable=variable
        )
    units = "Counts/s" if how == "rate" else ds[source].attrs.get("UNITS", "")
    out = _reduced_dataset(ds, values, energy, cats, variable=variable, how=how, units=units)
    if pad_arrays is not None:
        out["pad_values"] = (
            ("time", "pitch_bin"),
            pad_arrays[0],
            {"long_name": f"{variable} ({how} over the energy window)", "units": units},
        )
        out["pad_pitch"] = (
            ("time", "pitch_bin"),
            pad_arrays[1],
            {"long_name": "pitch angle of the sorted bins", "units": "degrees"},
        )
        out.attrs["pad_energy"] = json.dumps(pad.to_json()["energy"])
    out.attrs["retrace"] = int(bool(retrace))
    if not retrace and not eager:
        measured = out["energy_channel"] != RETRACE_CHANNEL  # by label: slicing-safe
        for name in ("values", "energy"):
            out[name] = out[name].where(measured).assign_attrs(out[name].attrs)
    return out


def _reduce_lazy(
    arrays: list,
    integ: Any,
    *,
    cats: Categories,
    how: str,
    decode: bool,
    burst: bool,
    variable: str,
) -> tuple[Any, Any]:
    """The category values and channel energies of Dask arrays: one task per chunk of
    records (``arrays``: source values, pitch angles, solid angles, full energies)."""
    import dask.array as da

    if decode:
        arrays[0] = arrays[0].map_blocks(decompress_counts, burst=burst, dtype=np.float32)
    arrays[:] = [da.asarray(a).rechunk({1: -1, 2: -1}) for a in arrays]
    extra = []
    if integ is not None:
        extra = [da.asarray(integ).rechunk((arrays[0].chunks[0],))[:, None, None]]
    values = da.map_blocks(
        _collapse_categories,
        *arrays[:3],
        *extra,
        cats=cats,
        how=how,
        dtype=np.float64,
        drop_axis=1,
        new_axis=0,
        chunks=((len(cats),), arrays[0].chunks[0], arrays[0].chunks[2]),
        token=f"reduce-{variable}",  # a prefix: keys stay unique
    )
    energy = da.map_blocks(
        reduced_energy,
        arrays[3],
        dtype=np.float64,
        drop_axis=1,
        chunks=(arrays[3].chunks[0], arrays[3].chunks[2]),
        token="reduce-energy",
    )
    return values, energy


def _pad_arrays(
    block: list,
    integ: Any,
    *,
    window: Any,
    how: str,
    drop: tuple[int, ...],
    seen: Any,
    variable: str,
) -> Any:
    """The pad product's (values, pitch) of ``block`` (source values, full energies,
    energy widths, pitch angles): at once for NumPy arrays, one task per chunk of records
    for Dask arrays."""
    kw = dict(window=window, how=how, drop_channels=drop)
    if all(isinstance(a, np.ndarray) for a in block):
        return _pad_block(*block, integ, **kw, seen=seen)
    import dask.array as da

    block = [da.asarray(a).rechunk({1: -1, 2: -1}) for a in block]
    extra = []
    if integ is not None:
        extra = [da.asarray(integ).rechunk((block[0].chunks[0],))[:, None, None]]
    return da.map_blocks(
        _pad_block,
        *block,
        *extra,
        **kw,
        dtype=np.float64,
        drop_axis=2,
        new_axis=0,
        chunks=((2,), block[0].chunks[0], block[0].chunks[1]),
        token=f"reduce-pad-{variable}",
    )


def _reduced_dataset(
    ds: xr.Dataset,
    values: Any,
    energy: Any,
    cats: Categories,
    *,
    variable: str,
    how: str,
    units: str,
) -> xr.Dataset:
    """The reduced dataset of ``values`` (category, time, channel) and ``energy``."""
    out = xr.Dataset(
        {
            "values": (
                ("category", "time", "energy_channel"),
                values,
                {"long_name": f"{variable} ({how} over pitch angle)", "units": units},
            ),
            "energy": (
                ("time", "energy_channel"),
                energy,
                {"long_name": "channel energy (median over angle bins)", "units": "eV"},
            ),
            "time_delta": (
                ("time",),
                _durations_of(ds),
                {
                    "long_name": "accumulation length (time_end - time_start), centred on time",
                    "units": "s",
                },
            ),
        },
        coords={
            "category": list(cats),
            "time": ds["time"].values,
            "energy_channel": ds["energy_channel"].values,
        },
        attrs={
            "variable": variable,
            "units": units,
            **{k: ds.attrs[k] for k in ("instrument", "orbit", "source") if k in ds.attrs},
        },
    )
    out["category"].attrs["ranges"] = repr(cats)
    return out
