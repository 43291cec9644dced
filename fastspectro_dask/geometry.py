"""Layout and geometry of a spectrogram panel: cell edges in time and energy, masks, norms.

Arrays in, arrays out (no axes, no figure): every record's cells on edges computed from
that record's own energies (geometric midpoints on a log axis, arithmetic on a linear one)
and its own accumulation time; gaps; the colour normalisation from explicit bounds,
completed from the data. Shared by the reference drawing
(:func:`fastspectro_dask.render.make_spectrogram`) and the fast engine
(:mod:`fastspectro_dask.draw`), which therefore draw the same cells.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import matplotlib.dates as mdates
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, LogNorm, Normalize

from fastspectro_dask.timeaxis import TimeAxis

logger = logging.getLogger(__name__)


_SCALES = ("linear", "log")


#: Default colormap per (y_scale, z_scale).
DEFAULT_COLORMAPS: dict[tuple[str, str], str] = {
    ("linear", "linear"): "viridis",
    ("linear", "log"): "cividis",
    ("log", "linear"): "plasma",
    ("log", "log"): "inferno",
}


#: A time step longer than this many local cadences is a gap (drawn blank).
DEFAULT_GAP_FACTOR = 3.0


_UTC = timezone.utc


def _check_scale(name: str, value: str) -> str:
    if value not in _SCALES:
        raise ValueError(f"{name} must be 'linear' or 'log', not {value!r}")
    return value


def _colormap(colormap: str | Colormap | None, y_scale: str, z_scale: str) -> Colormap:
    """The colormap, with masked (bad) cells fully transparent."""
    if colormap is None:
        colormap = DEFAULT_COLORMAPS[(y_scale, z_scale)]
    cmap = colormaps[colormap] if isinstance(colormap, str) else colormap
    return cmap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def _is_datetime(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.datetime64)


def _to_datetime64(value: Any) -> np.datetime64:
    """A scalar time (datetime64, datetime, ISO string, pandas Timestamp) as datetime64[ns]."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(_UTC).replace(tzinfo=None)
    if isinstance(value, str):
        value = value.strip()
        if value.endswith(("Z", "z")):
            value = value[:-1]
        value = value.replace(" ", "T", 1)
    if hasattr(value, "to_datetime64"):  # pandas Timestamp
        value = value.to_datetime64()
    out = np.datetime64(value, "ns")
    if np.isnat(out):
        raise ValueError(f"not a valid time: {value!r}")
    return out


def _format_span(t0: np.datetime64, t1: np.datetime64) -> str:
    """``2000-01-28 09:53:13 - 11:58:40 UT`` (the end date only when it differs)."""
    a = _to_datetime64(t0).astype("datetime64[s]").item()
    b = _to_datetime64(t1).astype("datetime64[s]").item()
    end = f"{b:%H:%M:%S}" if a.date() == b.date() else f"{b:%Y-%m-%d %H:%M:%S}"
    return f"{a:%Y-%m-%d %H:%M:%S} - {end} UT"


def _datetime_to_num(t: np.ndarray) -> np.ndarray:
    """datetime64 -> matplotlib date numbers (days since the matplotlib epoch)."""
    return mdates.date2num(np.asarray(t).astype("datetime64[ns]"))


def _same_table(e: np.ndarray) -> np.ndarray:
    """``(n-1,)`` True where record i+1 has the same energy table as record i."""
    if e.shape[0] < 2:
        return np.zeros(0, bool)
    a, b = e[:-1], e[1:]
    fa, fb = np.isfinite(a), np.isfinite(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= 1e-6 * np.maximum(np.abs(a), np.abs(b))
    return np.all((fa == fb) & (close | ~fa), axis=1)


def _time_geometry(
    t: np.ndarray,
    same: np.ndarray,
    gap_factor: float,
    default_dt: float,
    durations: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Record time edges and gap flags from sorted centre times (float, any unit).

    Parameters
    ----------
    t : ndarray (n,)
        Sorted record centre times.
    same : ndarray (n-1,) bool
        Record i+1 has the same energy table (mode) as record i.
    gap_factor : float
        A step longer than ``gap_factor`` local cadences is a gap.
    default_dt : float
        Cell width when no interval is known (a single isolated record).
    durations : ndarray (n,), optional
        Each record's accumulation length, in the unit of ``t``; NaN (or <= 0) where
        unknown. A record is centred on its time, so it spans ``t -+ duration / 2``.

    Returns
    -------
    left, right : ndarray (n,)
        Cell edges. Where a record's duration is known, its edges are ``t -+ duration/2``:
        at the ends of a gap-free segment and for an isolated record. Between two records
        that are not separated by a gap the edge is shared: the mean of the edges the two
        durations give (exactly their common edge for contiguous accumulations), or the
        one known duration's edge, or else the midpoint; always between the two centres.
        Where durations are unknown: midpoints between neighbours, half an adjacent
        interval at the ends of a gap-free segment, the local cadence for an isolated
        record. An edge facing a gap never passes the gap's midpoint.
    gap : ndarray (n-1,) bool
        True where the step from record i to i+1 is a gap.
    """
    n = t.size
    dt = np.diff(t)
    run = np.concatenate([[0], np.cumsum(~same)]) if n else np.zeros(0, int)
    n_runs = int(run[-1]) + 1 if n else 0
    pos = dt[dt > 0]
    global_dt = float(np.median(pos)) if pos.size else float(default_dt)
    # Cadence of each mode run: the median step inside it.
    cad = np.full(n_runs, global_dt)
    inner = same  # steps inside one run
    if inner.any():
        r_of_step = run[:-1][inner]
        steps = dt[inner]
        order = np.argsort(r_of_step, kind="stable")
        r_sorted, s_sorted = r_of_step[order], steps[order]
        bounds = np.flatnonzero(np.diff(r_sorted)) + 1
        for rs, ss in zip(
            np.split(r_sorted, bounds), np.split(s_sorted, bounds), strict=True
        ):  # loops over runs, not records
            med = float(np.median(ss))
            if med <= 0:
                continue
            # Few steps cannot tell a cadence from a gap: do not trust them alone.
            cad[rs[0]] = med if ss.size >= 3 else min(med, global_dt)
    ref = np.maximum(cad[run[:-1]], cad[run[1:]]) if n > 1 else np.zeros(0)
    gap = dt > gap_factor * ref
    half = dt / 2.0
    mid = t[:-1] + half
    left = np.empty(n)
    right = np.empty(n)
    if n:
        half_w = np.full(n, np.nan)
        if durations is not None:
            d = np.asarray(durations, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                known = np.isfinite(d) & (d > 0)
            half_w[known] = d[known] / 2.0
        known = np.isfinite(half_w)
        # Shared edge between record i and i+1 (used where the step is not a gap).
        edge = mid.copy()
        if known.any() and n > 1:
            from_prev = t[:-1] + half_w[:-1]  # right edge that record i's duration gives
            from_next = t[1:] - half_w[1:]  # left edge that record i+1's duration gives
            kp, kn = known[:-1], known[1:]
            edge = np.where(
                kp & kn,
                (from_prev + from_next) / 2.0,
                np.where(kp, from_prev, np.where(kn, from_next, mid)),
            )
            edge = np.clip(edge, t[:-1], t[1:])
        ok_prev = np.concatenate([[False], ~gap])  # record i joins record i-1
        ok_next = np.concatenate([~gap, [False]])  # record i joins record i+1
        half_prev = np.concatenate([[np.nan], half])
        half_next = np.concatenate([half, [np.nan]])
        own = cad[run] / 2.0
        # Unknown durations: half an adjacent interval, else the local cadence.
        w_left = np.where(ok_prev, half_prev, np.where(ok_next, half_next, own))
        w_right = np.where(ok_next, half_next, np.where(ok_prev, half_prev, own))
        # Known durations: the record's own half-width (centre stamps).
        w_left = np.where(known, half_w, w_left)
        w_right = np.where(known, half_w, w_right)
        left = t - w_left
        right = t + w_right
        # Never across the middle of a gap (a duration longer than the gap).
        left[1:][gap] = np.maximum(left[1:][gap], mid[gap])
        right[:-1][gap] = np.minimum(right[:-1][gap], mid[gap])
        # Shared edges are the exact same number on both sides.
        left[1:][~gap] = edge[~gap]
        right[:-1][~gap] = edge[~gap]
    return left, right, gap


def _channel_order(e: np.ndarray, y_scale: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per record: its usable channels sorted by energy, ascending (unusable ones last).

    Returns the channel indices ``(n, k)`` (``np.take_along_axis`` takes a record's
    values to them), their energies ``(n, k)``, NaN-padded at the end, and the count of
    usable channels per record (``k`` is the largest).
    """
    e = np.array(e, dtype=np.float64)
    usable = np.isfinite(e)
    if y_scale == "log":
        with np.errstate(invalid="ignore"):
            usable &= e > 0
    e[~usable] = np.nan
    order = np.argsort(e, axis=1, kind="stable")  # NaN last
    count = usable.sum(axis=1)
    k = int(count.max()) if count.size else 0
    order = order[:, :k]
    return order, np.take_along_axis(e, order, axis=1), count


def _energy_edges(e_sorted: np.ndarray, count: np.ndarray, y_scale: str) -> np.ndarray:
    """Cell edges ``(n, k+1)`` from ascending, NaN-padded channel energies ``(n, k)``.

    Inner edges are midpoints (geometric on a log axis, arithmetic on a linear one); the
    outer edges sit half a neighbouring step beyond the outer channels (in log space on a
    log axis; on a linear axis not below zero when the lowest channel is positive). A
    single channel spans a factor sqrt(2) each way (log) or +-50 % (linear).
    Padding columns repeat the top edge, so every coordinate is finite.
    """
    n, k = e_sorted.shape
    x = np.log(e_sorted) if y_scale == "log" else e_sorted.copy()
    edges = np.full((n, k + 1), np.nan)
    if k == 0:
        return np.zeros((n, 1))
    rows = np.arange(n)
    # Inner edges: midpoints of finite neighbours.
    edges[:, 1:k] = (x[:, :-1] + x[:, 1:]) / 2.0
    c = np.maximum(count, 1)
    lo_step = np.where(count >= 2, x[:, 1] - x[:, 0] if k >= 2 else 0.0, np.nan)
    hi_idx = c - 1
    top = x[rows, hi_idx]
    prev = x[rows, np.maximum(hi_idx - 1, 0)]
    hi_step = np.where(count >= 2, top - prev, np.nan)
    if y_scale == "log":
        single = np.log(np.sqrt(2.0))
        lo_step = np.where(count >= 2, lo_step, 2 * single)
        hi_step = np.where(count >= 2, hi_step, 2 * single)
    else:
        w = np.maximum(np.abs(x[:, 0]), 1e-12)
        lo_step = np.where(count >= 2, lo_step, w)
        hi_step = np.where(count >= 2, hi_step, w)
    edges[:, 0] = x[:, 0] - lo_step / 2.0
    if y_scale == "linear":  # positive channels (energies) never reach below zero
        edges[:, 0] = np.where(x[:, 0] > 0, np.maximum(edges[:, 0], 0.0), edges[:, 0])
    edges[rows, c] = top + hi_step / 2.0
    # Pad: every column beyond a record's channels repeats its top edge.
    col = np.arange(k + 1)[None, :]
    edges = np.where(col > c[:, None], edges[rows, c][:, None], edges)
    out = np.exp(edges) if y_scale == "log" else edges
    # Records without any usable channel: harmless finite coordinates (cells are masked).
    empty = count == 0
    if empty.any():
        fill = out[~empty][0, 0] if (~empty).any() else (1.0 if y_scale == "log" else 0.0)
        out[empty] = fill
    return out


def _durations_in_seconds(durations: Any, n: int) -> np.ndarray:
    """Per-record durations as float (``timedelta64`` -> seconds), NaN where unknown."""
    d = np.asarray(durations)
    if d.shape != (n,):
        raise ValueError(f"durations must have one value per record, ({n},); got {d.shape}")
    if np.issubdtype(d.dtype, np.timedelta64):
        td = d.astype("timedelta64[ns]")
        out = td.astype(np.int64) / 1e9
        out[np.isnat(td)] = np.nan
        return out
    try:
        out = d.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"durations must be numbers or timedelta64, not {d.dtype}") from None
    with np.errstate(invalid="ignore"):
        out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


#: Where a log colour scale puts finite values <= 0 (measured zeros): below any z_min, so
#: they draw in the colormap's lowest colour (its "under" colour), as IDL's plots do.
_BELOW_LOG = float(np.finfo(np.float64).tiny)


def _mask_values(v: np.ndarray, z_scale: str) -> np.ma.MaskedArray:
    """Only NaN (no measurement) is blank; on a log scale values <= 0 get the lowest colour."""
    bad = ~np.isfinite(v)
    if z_scale == "log":
        with np.errstate(invalid="ignore"):
            v = np.where(v <= 0, _BELOW_LOG, v)
    return np.ma.masked_array(np.where(bad, 0.0, v), mask=bad)


def _data_limits(
    values: np.ndarray, z_scale: str, percentile: tuple[float, float]
) -> tuple[float, float] | None:
    v = values[np.isfinite(values)]
    if z_scale == "log":
        v = v[v > 0]
    if v.size == 0:
        return None
    lo, hi = (float(x) for x in np.percentile(v, percentile))
    if not hi > lo:  # constant data: a decade (log) or a small pad (linear) around it
        if z_scale == "log":
            lo, hi = hi / np.sqrt(10.0), hi * np.sqrt(10.0)
        else:
            pad = max(abs(hi) * 0.05, 0.5)
            lo, hi = lo - pad, hi + pad
    return lo, hi


def _resolve_norm(
    values: np.ndarray,
    vmin: float | None,
    vmax: float | None,
    z_scale: str,
    percentile: tuple[float, float],
) -> Normalize | None:
    """The colour normalisation from explicit bounds, completed from the data."""
    if vmin is not None and vmax is not None:
        lo, hi = float(vmin), float(vmax)
        if not hi > lo:
            raise ValueError(f"colour limits must satisfy z_min < z_max, got {lo} and {hi}")
    else:
        auto = _data_limits(values, z_scale, percentile)
        if auto is None:
            if vmin is None and vmax is None:
                return None
            given = float(vmin if vmin is not None else vmax)
            auto = (given / 10.0, given * 10.0) if z_scale == "log" else (given - 1, given + 1)
        lo = float(vmin) if vmin is not None else auto[0]
        hi = float(vmax) if vmax is not None else auto[1]
        if not hi > lo:  # one bound given, the data's other bound on the wrong side of it
            if vmin is None:
                lo = hi / 10.0 if z_scale == "log" else hi - 1.0
            else:
                hi = lo * 10.0 if z_scale == "log" else lo + 1.0
    if z_scale == "log":
        if lo <= 0:
            raise ValueError(f"a log colour scale needs z_min > 0, got {lo}")
        return LogNorm(vmin=lo, vmax=hi)
    return Normalize(vmin=lo, vmax=hi)


@dataclass
class _Panel:
    """One spectrogram panel's geometry and colours, before drawing (shared by the
    reference drawing, :func:`make_spectrogram`, and the fast engine, :mod:`draw`)."""

    dates: bool
    n: int
    left: np.ndarray | None = None  # (n,) cell edges in axis x units
    right: np.ndarray | None = None
    gaps: int = 0
    starts: np.ndarray | None = None  # runs: one energy table, no gap
    stops: np.ndarray | None = None
    edges: np.ndarray | None = None  # (n, k+1) energy edges per record, ascending
    count: np.ndarray | None = None  # (n,) usable channels per record
    cells: np.ma.MaskedArray | None = None  # (n, k) values, masked where not drawn
    cmap: Colormap | None = None
    norm: Normalize | None = None  # None: nothing to draw ("no data")
    y_lo: float = 0.0
    y_hi: float = 1.0
    records: _Records | None = None  # shared by the panels drawn on the same records


@dataclass
class _Records:
    """The records of a panel in drawing order and the edges of their cells: all that
    depends on the times, energies and durations alone, so the rows drawn on the same
    records (the categories of a pitch-angle grid) compute it once.

    ``keep`` (records with a time) then ``order`` (a time sort; None: already sorted)
    take an input row's values to the drawn records; ``channels`` takes each record's
    usable channels, ascending in energy (one row for all records when they share one
    energy table, ``shared``).
    """

    dates: bool
    secs: np.ndarray  # (n,) sorted record times: seconds after ``t0`` (dates) or as given
    keep: np.ndarray | None
    order: np.ndarray | None
    channels: np.ndarray  # (n, k), or (k,) when ``shared``
    shared: bool
    e_sorted: np.ndarray  # (n, k) energies of the usable channels, ascending, NaN-padded
    count: np.ndarray  # (n,) usable channels per record
    durations: np.ndarray | None
    t0: int
    base: float
    scale: float
    default_dt: float
    y_scale: str
    gap_factor: float
    time_axis: TimeAxis | None

    def arrange(self, values: np.ndarray) -> np.ndarray:
        """One row's values ``(records, channels)`` in drawing order: ``(n, k)``."""
        v = values
        if self.keep is not None:
            v = v[self.keep]
        if self.order is not None:
            v = v[self.order]
        if self.shared:
            return v[:, self.channels]
        return np.take_along_axis(v, self.channels, axis=1)

    @cached_property
    def cells(self) -> tuple[np.ndarray, ...]:
        """``left, right`` (axis x units), ``gap``, run ``starts, stops`` and energy
        ``edges`` of the records' cells."""
        secs, e_s, count = self.secs, self.e_sorted, self.count
        n = secs.size
        if self.shared:
            same = np.ones(max(n - 1, 0), bool)  # what _same_table finds for equal rows
        else:
            same = _same_table(e_s)
        left, right, gap = _time_geometry(
            secs, same, self.gap_factor, self.default_dt, self.durations
        )
        if self.time_axis is not None:
            left = self.time_axis.to_axis(self.t0 / 1e9 + left)
            right = self.time_axis.to_axis(self.t0 / 1e9 + right)
        else:
            left = self.base + left * self.scale
            right = self.base + right * self.scale
        breaks = np.flatnonzero(~same | gap) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [n]])
        if self.shared and n:  # equal rows have equal edges: one row, broadcast
            one = _energy_edges(e_s[:1], count[:1], self.y_scale)
            edges = np.broadcast_to(one, (n, one.shape[1]))
        else:
            edges = _energy_edges(e_s, count, self.y_scale)
        return left, right, gap, starts, stops, edges


def _records(
    t: np.ndarray,
    e: np.ndarray,
    durations: Any,
    y_scale: str,
    gap_factor: float,
    time_axis: TimeAxis | None,
) -> _Records:
    """The :class:`_Records` of times ``t`` (n,) and energies ``e``: (n, m), or (m,) for
    one energy table shared by all records."""
    dur = None if durations is None else _durations_in_seconds(durations, t.size)
    # Time to axis units, sorted, without NaT/NaN.
    dates = _is_datetime(t)
    t0, base, scale, default_dt = 0, 0.0, 1.0, 1.0
    if dates:
        tn = t.astype("datetime64[ns]")
        keep = ~np.isnat(tn)
        ns = tn.astype(np.int64)
        t0 = ns[keep][0] if keep.any() else 0
        secs = (ns - t0) / 1e9
        base = float(_datetime_to_num(np.array([t0]).astype("datetime64[ns]"))[0])
        scale = 1.0 / 86400.0
    else:
        secs = t.astype(np.float64)
        keep = np.isfinite(secs)
    shared = e.ndim == 1
    if keep.all():
        keep = None
    else:
        secs = secs[keep]
        e = e if shared else e[keep]
        dur = None if dur is None else dur[keep]
    order = None
    if secs.size > 1 and np.any(np.diff(secs) < 0):
        order = np.argsort(secs, kind="stable")
        secs = secs[order]
        e = e if shared else e[order]
        dur = None if dur is None else dur[order]

    if time_axis is not None and not dates:
        raise ValueError("a squeezed time axis needs datetime64 times")

    if shared:  # one table: sorted once, the same for every record
        channels, e_one, count_one = _channel_order(e[None, :], y_scale)
        channels = channels[0]
        e_s = np.broadcast_to(e_one, (secs.size, e_one.shape[1]))
        count = np.broadcast_to(count_one, (secs.size,))
    else:
        channels, e_s, count = _channel_order(e, y_scale)
    return _Records(
        dates=dates,
        secs=secs,
        keep=keep,
        order=order,
        channels=channels,
        shared=shared,
        e_sorted=e_s,
        count=count,
        durations=dur,
        t0=t0,
        base=base,
        scale=scale,
        default_dt=default_dt,
        y_scale=y_scale,
        gap_factor=gap_factor,
        time_axis=time_axis,
    )


def _panel_geometry(
    times: np.ndarray,
    energies: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float | None,
    vmax: float | None,
    percentile: tuple[float, float],
    y_scale: str,
    z_scale: str,
    y_min: float | None,
    y_max: float | None,
    colormap: str | Colormap | None,
    norm: Normalize | None,
    gap_factor: float,
    durations: np.ndarray | None,
    time_axis: TimeAxis | None,
    shared: dict | None = None,
) -> _Panel:
    """Cell edges in time and energy, masked values, norm and limits of one panel.

    ``shared``: a dict in which rows drawn on the same ``times``, ``energies`` and
    ``durations`` objects (one figure's rows) share their :class:`_Records`.
    """
    t = np.asarray(times)
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(energies, dtype=np.float64)
    if t.ndim != 1 or v.ndim != 2 or v.shape[0] != t.size:
        raise ValueError(f"times must be (n,) and values (n, m); got {t.shape} and {v.shape}")
    if e.ndim == 1:
        if e.size != v.shape[1]:
            raise ValueError(f"energies {e.shape} do not match values {v.shape}")
    elif e.shape != v.shape:
        raise ValueError(f"energies {e.shape} do not match values {v.shape}")
    key = (id(times), id(energies), id(durations), y_scale, gap_factor, id(time_axis))
    held = None if shared is None else shared.get(key)
    if held is None:
        rec = _records(t, e, durations, y_scale, gap_factor, time_axis)
        if shared is not None:  # the objects held with it: their ids stay theirs
            shared[key] = (rec, times, energies, durations, time_axis)
    else:
        rec = held[0]

    v_s = rec.arrange(v)
    count = rec.count
    vm = _mask_values(v_s, z_scale)
    has_data = bool((~vm.mask).any()) if vm.size else False
    if has_data and norm is None:
        norm = _resolve_norm(v_s, vmin, vmax, z_scale, percentile)
    if not has_data or norm is None:
        return _Panel(dates=rec.dates, n=int(rec.secs.size))
    cmap = _colormap(colormap, y_scale, z_scale)

    left, right, gap, starts, stops, edges_rows = rec.cells
    # Energy limits: the extent of the drawn cells unless given (checked before drawing).
    drawn = np.flatnonzero(count > 0)
    y_lo = float(edges_rows[drawn, 0].min()) if y_min is None else float(y_min)
    y_hi = float(edges_rows[drawn, count[drawn]].max()) if y_max is None else float(y_max)
    if y_scale == "log" and y_lo <= 0:
        raise ValueError(f"a log energy axis needs y_min > 0, got {y_lo}")
    if not y_hi > y_lo:
        raise ValueError(f"energy limits must satisfy y_min < y_max, got {y_lo} and {y_hi}")
    return _Panel(
        dates=rec.dates,
        n=int(rec.secs.size),
        left=left,
        right=right,
        gaps=int(gap.sum()),
        starts=starts,
        stops=stops,
        edges=edges_rows,
        count=count,
        cells=vm,
        cmap=cmap,
        norm=norm,
        y_lo=y_lo,
        y_hi=y_hi,
        records=rec,
    )
