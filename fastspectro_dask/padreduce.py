"""Pitch-angle spectrograms (product ``pad``): the energy collapse, arrays in, arrays out.

Like IDL SPEDAS ``fa_esa_l2_pad``, one block of FAST ESA records ``(time, angle, energy)``
becomes a ``(time, angle)`` spectrogram whose y axis is pitch angle:

1. :func:`energy_window_weights` gives every energy channel a weight for an energy window
   ``[lo, hi]`` (eV): 1 inside, a fraction for the nearest channel beyond each edge.
2. :func:`collapse_energy` sums counts (``how="sum"``) or averages ``eflux`` with
   ``denergy`` weights (``how="mean"``) over energy, then sorts each record's angle bins by
   pitch angle.
3. :func:`pitch_edges` gives each record's periodic bin edges; :func:`periodic_cells` and
   :func:`sample_periodic` draw them on any 360-degree y range (0..360, or -90..270 for
   ``--pad-shift90``) so the bin that straddles 0/360 fills both ends.

Records of different modes (32 or 64 angle bins, 48 or 96 energies) live in one array:
unused bins are NaN and sort to the end. Fill values (below -1e29, i.e. FILLVAL -1e31)
count as NaN in every input. The sweep's retrace channel (channel 0) is dropped by the
caller by setting its values or energy to NaN before the call, as ``reduce.py`` does.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "collapse_energy",
    "energy_window_weights",
    "periodic_cells",
    "pitch_edges",
    "sample_periodic",
]

logger = logging.getLogger(__name__)

_FILL_BELOW = -1e29
#: ``_FILL_BELOW`` rounded to float32, and whether it rounded up: float32 ``x > -1e29`` is
#: then ``x >= _FILL_BELOW_F32`` (else ``x > _FILL_BELOW_F32``).
_FILL_BELOW_F32 = np.float32(_FILL_BELOW)
_F32_ROUNDS_UP = float(_FILL_BELOW_F32) > _FILL_BELOW


def _valid(x: np.ndarray) -> np.ndarray:
    """Finite and not a CDF fill value."""
    with np.errstate(invalid="ignore"):
        if x.dtype == np.float32:  # the same test in float32 arithmetic, exactly
            above = x >= _FILL_BELOW_F32 if _F32_ROUNDS_UP else x > _FILL_BELOW_F32
            return np.isfinite(x) & above
        return np.isfinite(x) & (x > _FILL_BELOW)


def _exists(e: np.ndarray) -> np.ndarray:
    """Channels that exist: a valid, positive energy."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(e) & (e > 0)


def _check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    if window is None:
        return None
    lo, hi = (float(v) for v in window)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"energy window must be finite, got {window!r}")
    if lo > hi:
        raise ValueError(f"energy window must have lo <= hi, got {window!r}")
    return lo, hi


def energy_window_weights(
    energy: np.ndarray, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """Weights of energy channels for the window ``[lo, hi]`` eV, as ``fa_esa_l2_pad``.

    Parameters
    ----------
    energy : ndarray, shape (..., energy)
        Channel energies (eV) of each record (or of each ``(record, angle)`` row), in any
        order. Channels whose energy is NaN, fill (< -1e29) or not positive do not exist.
    lo, hi : float or None
        The window in eV, ``lo <= hi``. Both None: every existing channel weighs 1.

    Returns
    -------
    ndarray, float64, shape of ``energy``
        Per row, with the existing channels sorted by energy ``e_0 < e_1 < ...``:

        * a channel with ``lo <= e <= hi`` weighs 1;
        * if some channel is inside, the nearest channel below ``lo`` weighs
          ``(e_in - lo) / (e_in - e_below)``, the share of the gap between it and its
          inside neighbour ``e_in`` that lies inside the window, and likewise the
          nearest channel above ``hi`` weighs ``(hi - e_in) / (e_above - e_in)``
          (linear in energy, as IDL);
        * if no channel is inside but channels exist on both sides (the window lies in
          one gap), the window's midpoint ``m`` is interpolated: the two neighbours weigh
          ``(e_above - m) / gap`` and ``(m - e_below) / gap`` (sum 1);
        * if the window lies entirely below or above all channels, every weight is 0
          (IDL refuses such a window; here the record collapses to NaN);
        * an edge beyond the last channel on its side adds no fractional channel;
        * weights are in [0, 1]; channels that do not exist weigh 0.

        Channels of equal energy are all inside or all outside; when several share the
        energy of the nearest channel beyond an edge, only one of them (in sort order)
        gets the fraction.

    Raises
    ------
    ValueError
        Only one of ``lo``/``hi`` given, a non-finite bound, or ``lo > hi``.
    """
    e = np.asarray(energy, dtype=np.float64)
    if e.ndim == 0:
        raise ValueError("energy must have an energy axis (last)")
    exists = _exists(e)
    if lo is None and hi is None:
        return exists.astype(np.float64)
    if lo is None or hi is None:
        raise ValueError("give both lo and hi, or neither")
    window = _check_window((lo, hi))
    assert window is not None
    lo, hi = window

    key = np.where(exists, e, np.inf)
    order = np.argsort(key, axis=-1, kind="stable")
    es = np.take_along_axis(key, order, axis=-1)
    n = exists.sum(axis=-1, keepdims=True)  # existing channels, sorted to the front
    below = (es < lo).sum(axis=-1, keepdims=True)  # index of the first channel >= lo
    upto = (es <= hi).sum(axis=-1, keepdims=True)  # index of the first channel > hi
    idx = np.arange(es.shape[-1])
    ws = ((idx >= below) & (idx < upto)).astype(np.float64)

    def at(i: np.ndarray) -> np.ndarray:
        return np.take_along_axis(es, np.clip(i, 0, es.shape[-1] - 1), axis=-1)

    inside = upto > below
    with np.errstate(divide="ignore", invalid="ignore"):
        # lower edge: channel below-1 beyond it, channel `below` is the lowest inside
        has_lo = inside & (below > 0)
        e_in, e_out = at(below), at(below - 1)
        f_lo = np.where(has_lo, (e_in - lo) / (e_in - e_out), 0.0)
        # upper edge: channel `upto` beyond it, channel upto-1 is the highest inside
        has_hi = inside & (upto < n)
        e_in, e_out = at(upto - 1), at(upto)
        f_hi = np.where(has_hi, (hi - e_in) / (e_out - e_in), 0.0)
        # window inside one gap: interpolate at its midpoint
        in_gap = ~inside & (below > 0) & (below < n)
        e_dn, e_up = at(below - 1), at(below)
        mid = 0.5 * (lo + hi)
        g_up = np.where(in_gap, (mid - e_dn) / (e_up - e_dn), 0.0)
    f_lo = np.where(has_lo, f_lo, 0.0)
    f_hi = np.where(has_hi, f_hi, 0.0)
    g_up = np.where(in_gap, g_up, 0.0)
    ws += (idx == below - 1) * (f_lo + np.where(in_gap, 1.0 - g_up, 0.0))
    ws += (idx == upto) * f_hi
    ws += (idx == below) * g_up
    ws = np.clip(ws, 0.0, 1.0)
    ws[~np.take_along_axis(exists, order, axis=-1)] = 0.0
    out = np.empty_like(ws)
    np.put_along_axis(out, order, ws, axis=-1)
    return out


def _pitch_per_bin(pitch: np.ndarray) -> np.ndarray:
    """Per-(time, angle) pitch angle: the circular nanmedian over energy, in [0, 360)."""
    p = np.asarray(pitch)
    if p.dtype != np.float32:  # float32 is compared as is: exactly as its float64 copy
        p = p.astype(np.float64, copy=False)
    if p.ndim == 2:
        p = p.astype(np.float64, copy=False)
        return np.where(_valid(p), np.mod(p, 360.0), np.nan)
    ok = _valid(p)
    # reference: the first valid value along energy; offsets in [-180, 180) around it,
    # so a bin at 359.9 / 0.1 deg does not average to 180
    first = np.argmax(ok, axis=-1)[..., None]
    ref = np.where(
        np.take_along_axis(ok, first, axis=-1)[..., 0],
        np.take_along_axis(p, first, axis=-1)[..., 0],
        np.nan,
    )
    # fast path: a bin whose valid values all equal its first one has that median
    odd = (ok & (p != ref[..., None])).any(axis=-1)
    ref = ref.astype(np.float64, copy=False)
    med = np.zeros(ref.shape)
    if odd.any():
        sub_ok = ok[odd]
        off = np.mod(p[odd].astype(np.float64) - ref[odd][:, None] + 180.0, 360.0) - 180.0
        sub = np.sort(np.where(sub_ok, off, np.inf), axis=-1)  # invalid last
        n = sub_ok.sum(axis=-1)
        lo = np.take_along_axis(sub, ((n - 1) // 2)[:, None], axis=-1)[:, 0]
        hi = np.take_along_axis(sub, (n // 2)[:, None], axis=-1)[:, 0]
        med[odd] = 0.5 * (lo + hi)
    return np.mod(ref + med, 360.0)


def _weights_block(e: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """:func:`energy_window_weights` of ``(time, angle, energy)``, once per distinct row.

    Energy tables repeat: one per mode and angle bin (the retrace channel's energy
    differs from bin to bin), so the rows ``(time, angle)`` hold few distinct tables.
    """
    if window is None:
        return energy_window_weights(e)
    lo, hi = window
    if e.ndim == 3 and e.shape[0] > 1:
        # consecutive records of one mode hold the same table: weigh each run once
        e = np.ascontiguousarray(e)
        bits = e.view(f"u{e.dtype.itemsize}")
        starts = np.flatnonzero(np.concatenate(([True], ~(bits[1:] == bits[:-1]).all(axis=(1, 2)))))
        if starts.size < e.shape[0]:
            run = np.repeat(np.arange(starts.size), np.diff(np.append(starts, e.shape[0])))
            return _weights_block(e[starts], window)[run]
    rows = e.reshape(-1, e.shape[-1])
    return _rowwise_once(rows, lambda r: energy_window_weights(r, lo, hi)).reshape(e.shape)


def _rowwise_once(rows: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn(rows)`` for a row-wise ``fn``, computed once per distinct row.

    Rows repeat (one energy table per mode and angle bin): they are grouped by a random
    projection, the grouping checked exactly (NaN equal to NaN); on a collision ``fn``
    runs on every row.
    """
    probe = np.where(np.isnan(rows), -1.0, rows) @ np.random.default_rng(0).random(rows.shape[1])
    _, first, inverse = np.unique(probe, return_index=True, return_inverse=True)
    uniq = rows[first]
    if not np.array_equal(uniq[inverse.reshape(-1)], rows, equal_nan=True):
        return fn(rows)
    return fn(uniq)[inverse.reshape(-1)]


def collapse_energy(
    values: np.ndarray,
    energy: np.ndarray,
    denergy: np.ndarray | None,
    pitch: np.ndarray,
    window: Sequence[float] | None = None,
    how: str = "sum",
    *,
    weight_sum: bool = False,
) -> tuple[np.ndarray, ...]:
    """Collapse ``(time, angle, energy)`` over the energy window to ``(time, angle)``.

    Parameters
    ----------
    values : ndarray, shape (time, angle, energy)
        Counts (``how="sum"``) or eflux (``how="mean"``); NaN (or fill) where not
        measured. Finite zeros and negatives are kept as values.
    energy : ndarray, shape (time, angle, energy)
        Channel energies, eV. Weights are computed per ``(time, angle)`` row from the
        row's own energies (see :func:`energy_window_weights`).
    denergy : ndarray, shape (time, angle, energy), or None
        Channel widths (eV); required for ``how="mean"``, ignored for ``"sum"``.
    pitch : ndarray, shape (time, angle, energy) or (time, angle)
        Pitch angles in degrees, [0, 360). A bin's pitch angle is the circular nanmedian
        of its values over energy (they agree within fill tolerance).
    window : (lo, hi) or None
        Energy window in eV; None keeps every existing channel with weight 1.
    how : {"sum", "mean"}
        ``"sum"``: ``Σ values·w`` over energy. ``"mean"``:
        ``Σ values·denergy·w / Σ denergy·w``.
    weight_sum : bool
        Also return ``Σ w`` over the channels that entered the sum, sorted like ``pad``
        (for a rate: counts / (accumulation time · Σ w), or to see partial windows).

    Returns
    -------
    pad : ndarray, float64, shape (time, angle)
        Angle bins of each record sorted by pitch angle (stable), bins without a pitch
        angle at the end. NaN where the ``(record, angle)`` has no channel with a valid
        value and positive weight (and, for ``"mean"``, a positive finite ``denergy``),
        and where the bin has no pitch angle. Never 0 for "no data".
    pitch_sorted : ndarray, float64, shape (time, angle)
        The bins' pitch angles in [0, 360), ascending per record, NaN at the end.
    wsum : ndarray, float64, shape (time, angle)
        Only with ``weight_sum=True``; 0 where ``pad`` is NaN.

    Raises
    ------
    ValueError
        Wrong shapes, an unknown ``how``, ``how="mean"`` without ``denergy``, or a bad
        window.
    """
    return _collapse_energy(values, energy, denergy, pitch, window, how, weight_sum=weight_sum)


#: Records per block in :func:`_collapse_energy`: its float64 temporaries (``block x angle
#: x energy``) stay in the CPU cache instead of costing a fresh allocation per pass.
_PAD_BLOCK_RECORDS = 32


def _table_runs(*tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First record of each run of records whose ``tables`` rows are all identical (bits),
    and each record's run index."""
    n = tables[0].shape[0]
    if n == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    same = np.ones(n - 1, bool)
    for x in tables:
        if x.dtype.kind == "f":
            bits = x.view(f"u{x.dtype.itemsize}")
            if x.dtype.itemsize == 4 and x.shape[-1] % 2 == 0 and x.strides[-1] == 4:
                bits = bits.view(np.uint64)  # pairs of values: half the comparisons
        else:
            bits = x
        same &= (bits[1:] == bits[:-1]).all(axis=tuple(range(1, x.ndim)))
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    run = np.repeat(np.arange(starts.size), np.diff(np.append(starts, n)))
    return starts, run


def _record_blocks(starts: np.ndarray, run: np.ndarray) -> list[tuple[slice, int | np.ndarray]]:
    """Blocks of at most :data:`_PAD_BLOCK_RECORDS` records, each with the index of its
    run (an int: the block lies in one run) or, when runs are short, each record's."""
    n = run.size
    if starts.size * 4 > n:  # short runs: blocks of records, the tables gathered
        return [
            (slice(t0, min(t0 + _PAD_BLOCK_RECORDS, n)), run[t0 : t0 + _PAD_BLOCK_RECORDS])
            for t0 in range(0, n, _PAD_BLOCK_RECORDS)
        ]
    bounds = [*starts.tolist(), n]
    return [
        (slice(t0, min(t0 + _PAD_BLOCK_RECORDS, stop)), k)
        for k, (start, stop) in enumerate(itertools.pairwise(bounds))
        for t0 in range(start, stop, _PAD_BLOCK_RECORDS)
    ]


def _collapse_energy(
    values: np.ndarray,
    energy: np.ndarray,
    denergy: np.ndarray | None,
    pitch: np.ndarray,
    window: Sequence[float] | None,
    how: str,
    *,
    weight_sum: bool,
    drop: Sequence[int] = (),
) -> tuple[np.ndarray, ...]:
    """:func:`collapse_energy`; the channels in ``drop`` count as NaN values.

    The weights depend on the energy tables alone, which repeat over runs of records
    (one table per mode): they are computed once per run. The values are then reduced
    in blocks of records, every element as :func:`collapse_energy` defines it, bit for
    bit (each record's sums over energy run over its own contiguous row).
    """
    if how not in ("sum", "mean"):
        raise ValueError(f"how must be 'sum' or 'mean', got {how!r}")
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"values must be (time, angle, energy), got shape {values.shape}")
    energy = np.asarray(energy)
    if energy.shape != values.shape:
        raise ValueError(f"energy has shape {energy.shape}, values {values.shape}")
    pitch = np.asarray(pitch)
    if pitch.shape not in (values.shape, values.shape[:2]):
        raise ValueError(
            f"pitch has shape {pitch.shape}, expected {values.shape} or {values.shape[:2]}"
        )
    win = _check_window(window)
    tables = [energy]
    if how == "mean":
        if denergy is None:
            raise ValueError("how='mean' needs denergy")
        denergy = np.asarray(denergy)
        if denergy.shape != values.shape:
            raise ValueError(f"denergy has shape {denergy.shape}, values {values.shape}")
        tables.append(denergy)
    starts, run = _table_runs(*tables)
    # per run: the weights, the channels that may enter (w > 0, a denergy), their weights
    w_r = _weights_block(np.asarray(energy[starts], dtype=np.float64), win)
    ok_r = w_r > 0
    if how == "mean":
        de_r = np.asarray(denergy[starts], dtype=np.float64)
        ok_r &= _exists(de_r)
        dw_r = np.where(ok_r, de_r * w_r, 0.0)
    else:
        dw_r = w_r
    drop = [c for c in drop if c < values.shape[2]]
    t_n, a_n = values.shape[:2]
    pad = np.empty((t_n, a_n))
    has = np.empty((t_n, a_n), bool)
    pa = np.empty((t_n, a_n))
    ws = np.empty((t_n, a_n)) if weight_sum else None
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    zero = np.float64(0.0)  # a float64 scalar: float32 values are summed in float64
    for sl, r in _record_blocks(starts, run):
        v = values[sl]
        ok = _valid(v)
        if drop:
            ok[:, :, drop] = False  # dropped channels count as NaN values
        ok &= ok_r[r]
        dw = np.where(ok, dw_r[r], zero)
        num = np.where(ok, v, zero)
        num *= dw
        if how == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(num.sum(axis=-1), dw.sum(axis=-1), out=pad[sl])
        else:
            num.sum(axis=-1, out=pad[sl])
        ok.any(axis=-1, out=has[sl])
        pa[sl] = _pitch_per_bin(pitch[sl])
        if ws is not None:
            (dw if how == "sum" else np.where(ok, w_r[r], 0.0)).sum(axis=-1, out=ws[sl])
    has &= np.isfinite(pa)
    pad = np.where(has, pad, np.nan)

    order = np.argsort(np.where(np.isfinite(pa), pa, np.inf), axis=-1, kind="stable")
    pad_s = np.take_along_axis(pad, order, axis=-1)
    pa_s = np.take_along_axis(pa, order, axis=-1)
    if ws is None:
        return pad_s, pa_s
    ws = np.where(has, ws, 0.0)
    return pad_s, pa_s, np.take_along_axis(ws, order, axis=-1)


def pitch_edges(pitch_sorted: np.ndarray) -> np.ndarray:
    """Periodic bin edges of each record's sorted pitch-angle centres.

    Parameters
    ----------
    pitch_sorted : ndarray, shape (time, n)
        Per record ``m <= n`` finite centres in ascending order (degrees, within one
        360-degree turn, e.g. [0, 360)), then NaN, as returned by
        :func:`collapse_energy`. Records may have different ``m`` (mode changes).

    Returns
    -------
    edges : ndarray, float64, shape (time, n + 1)
        For a record with ``m`` centres ``c_0 <= ... <= c_{m-1}``: ``edges[:m+1]`` are
        ``(c_{m-1} - 360 + c_0) / 2``, the midpoints ``(c_{i-1} + c_i) / 2``, and
        ``(c_{m-1} + c_0 + 360) / 2`` (so ``edges[m] = edges[0] + 360``); bin ``i`` is
        ``[edges[i], edges[i+1])``. The rest is NaN (all NaN when ``m == 0``; one
        centre gives one bin ``c_0 ± 180``).

    Notes
    -----
    ``edges[0]`` may be below 0 and ``edges[m]`` above 360: the first and last bins
    straddle 0/360. Modulo 360 the ``m`` bins tile one turn exactly, so to draw on a
    0..360 axis (or -90..270 with ``--pad-shift90``) each bin is also drawn shifted by
    ±360: :func:`periodic_cells` lists such clipped cells for one record (patches),
    :func:`sample_periodic` resamples a whole block onto a y pixel grid (rasters).

    Raises
    ------
    ValueError
        Not 2-D, or a record's finite centres are not ascending, do not come first, or
        span 360 degrees or more.
    """
    c = np.asarray(pitch_sorted, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"pitch_sorted must be (time, n), got shape {c.shape}")
    t, n = c.shape
    fin = np.isfinite(c)
    m = fin.sum(axis=1)
    if not (fin == (np.arange(n) < m[:, None])).all():
        raise ValueError("pitch_sorted: NaN centres must come after the finite ones")
    with np.errstate(invalid="ignore"):
        if (np.diff(c, axis=1) < 0).any():
            raise ValueError("pitch_sorted must be ascending in each record")
    edges = np.full((t, n + 1), np.nan)
    if n == 0:
        return edges
    rows = np.arange(t)
    first = c[:, 0]
    last = c[rows, np.maximum(m - 1, 0)]
    if (last - first >= 360.0).any():
        raise ValueError("pitch_sorted: a record's centres span 360 degrees or more")
    edges[:, 1:n] = 0.5 * (c[:, :-1] + c[:, 1:])  # NaN beyond m-1 automatically
    lo = 0.5 * (last - 360.0 + first)
    edges[:, 0] = lo
    has = m > 0
    edges[rows[has], m[has]] = lo[has] + 360.0
    edges[~has] = np.nan
    return edges


def _shifts(lo: float, hi: float, y_lo: float, y_hi: float) -> range:
    k0 = math.floor((y_lo - hi) / 360.0)
    k1 = math.ceil((y_hi - lo) / 360.0)
    return range(k0, k1 + 1)


def periodic_cells(
    edges: np.ndarray, values: np.ndarray, y_lo: float = 0.0, y_hi: float = 360.0
) -> list[tuple[float, float, float]]:
    """The cells of one record on a periodic y axis, clipped into ``[y_lo, y_hi)``.

    Parameters
    ----------
    edges : ndarray, shape (n + 1,)
        One record's row of :func:`pitch_edges` (NaN padded).
    values : ndarray, shape (n,)
        The matching row of ``pad`` (NaN padded).
    y_lo, y_hi : float
        The y range drawn, e.g. (0, 360), or (-90, 270) for ``--pad-shift90``; any
        width is allowed (copies repeat every 360 degrees).

    Returns
    -------
    list of (lo, hi, value)
        Every copy ``[edges[i] + 360k, edges[i+1] + 360k)`` of every bin that overlaps
        ``[y_lo, y_hi)``, clipped to it, sorted by ``lo``. The bin straddling 0/360
        appears at both ends. Cells with a NaN value are included (draw them blank).
    """
    e = np.asarray(edges, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if e.size != v.size + 1:
        raise ValueError(f"edges must have one more element than values ({e.size}, {v.size})")
    cells: list[tuple[float, float, float]] = []
    for i in range(v.size):
        a, b = float(e[i]), float(e[i + 1])
        if not (math.isfinite(a) and math.isfinite(b)) or b <= a:
            continue
        for k in _shifts(a, b, y_lo, y_hi):
            lo, hi = max(a + 360.0 * k, y_lo), min(b + 360.0 * k, y_hi)
            if hi > lo:
                cells.append((lo, hi, float(v[i])))
    cells.sort(key=lambda c: c[0])
    return cells


def sample_periodic(edges: np.ndarray, values: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Resample a block of pitch-angle spectra onto y positions (periodic in 360°).

    Parameters
    ----------
    edges : ndarray, shape (time, n + 1)
        From :func:`pitch_edges`.
    values : ndarray, shape (time, n)
        ``pad`` from :func:`collapse_energy`.
    y : ndarray, shape (ny,)
        Pixel-centre positions in degrees, any range (0..360, -90..270, ...).

    Returns
    -------
    ndarray, float64, shape (time, ny)
        The value of the bin containing ``y`` modulo 360 (``[edges[i], edges[i+1])``),
        NaN for records without bins. The bin straddling 0/360 fills both ends.
    """
    e = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64).ravel()
    t, n1 = e.shape
    if v.shape != (t, n1 - 1):
        raise ValueError(f"values must have shape {(t, n1 - 1)}, got {v.shape}")
    out = np.full((t, yy.size), np.nan)
    if t == 0 or n1 < 2 or yy.size == 0:
        return out
    has = np.isfinite(e[:, 0])
    e0 = np.where(has, e[:, 0], 0.0)[:, None]
    rel = np.where(np.isfinite(e), e - e0, np.inf)  # in [0, 360] for existing edges
    q = np.mod(yy[None, :] - e0, 360.0)
    q = np.where(q >= 360.0, 0.0, q)  # mod rounding
    # one searchsorted over all records: offset record r by r * 1000 degrees
    off = 1000.0 * np.arange(t)[:, None]
    flat = np.where(np.isfinite(rel), rel, 360.0 + 1e-6) + off
    pos = np.searchsorted(flat.ravel(), (q + off).ravel(), side="right").reshape(t, yy.size)
    j = pos - 1 - n1 * np.arange(t)[:, None]
    j = np.clip(j, 0, n1 - 2)
    out = np.take_along_axis(v, j, axis=1)
    out[~has] = np.nan
    return out
