"""The FAST products of one orbit: rows, titles, limits, provenance, marked intervals.

* :func:`FAST_plot_instrument_grid`: one row per instrument (``ees``, ``eeb``, ``ies``,
  ``ieb``) on the orbit's shared time axis, with a labelled placeholder row for an
  instrument that is missing or has no data;
* :func:`FAST_plot_pitch_angle_grid`: one row per pitch-angle category of one instrument;
* :func:`FAST_plot_pad`: the pitch-angle spectrogram, one row per instrument;
* :func:`read_marked_intervals`: marked time intervals (shaded, with zoom columns).

Limits and labels of a row come, in increasing priority, from the data (percentiles),
from global ``extrema`` and from per-row ``overrides``. Each product is drawn by one of
two engines: ``reference`` (:mod:`fastspectro_dask.render`: a fresh figure of
QuadMeshes) or ``fast`` (:mod:`fastspectro_dask.draw`: cached layouts, raster panels).
Time axes squeeze long gaps (:mod:`fastspectro_dask.timeaxis`) and carry ephemeris label
rows; every figure carries its provenance (:func:`fastspectro_dask.output.save_figure`).
"""

from __future__ import annotations

import ast
import csv
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from fastspectro_dask.config import ENGINES, RenderStyle
from fastspectro_dask.draw import (
    _grid_time_axis,
    _span_of,
    _squeezed_ticks,
    render_grid,
)
from fastspectro_dask.geometry import (
    _UTC,
    _check_scale,
    _datetime_to_num,
    _to_datetime64,
)
from fastspectro_dask.output import _provenance_text
from fastspectro_dask.reduce import (
    DEFAULT_CATEGORIES,
    category_label,
    hemisphere_name,
    normalize_categories,
    reduce_dataset,
)
from fastspectro_dask.render import (
    _COL_GAP,
    _EPHEMERIS_HEIGHT,
    _MARGIN_BOTTOM,
    _ZOOM_WIDTH,
    DEFAULT_DPI,
    DEFAULT_Y_LABEL,
    _date_axis,
    _grid_axes,
    _grid_geometry,
    _keep_slivers_visible,
    _new_figure,
    _panel_kwargs,
    _placeholder,
    _PlottingErrors,
    make_spectrogram,
)
from fastspectro_dask.timeaxis import DEFAULT_SQUEEZE_MINUTES, TimeAxis

__all__ = [
    "FAST_plot_instrument_grid",
    "FAST_plot_pad",
    "FAST_plot_pitch_angle_grid",
    "read_marked_intervals",
]

logger = logging.getLogger(__name__)

#: Fields a row override (or an extrema entry) may set.
ROW_FIELDS: tuple[str, ...] = ("y_min", "y_max", "z_min", "z_max", "y_label", "z_label")
DEFAULT_INSTRUMENTS: tuple[str, ...] = ("ees", "eeb", "ies", "ieb")
_INSTRUMENT_TITLES = {
    "ees": "electrons, survey",
    "eeb": "electrons, burst",
    "ies": "ions, survey",
    "ieb": "ions, burst",
}


# --------------------------------------------------------------------------------------
# Row settings: data < extrema < overrides
# --------------------------------------------------------------------------------------


def _check_fields(where: str, fields: Mapping[str, Any]) -> None:
    unknown = sorted(set(fields) - set(ROW_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown {where} field(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(ROW_FIELDS)}"
        )


def _validate_overrides(
    overrides: Mapping[str, Mapping[str, Any]] | None, row_keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, fields in (overrides or {}).items():
        if not isinstance(fields, Mapping):
            raise ValueError(f"overrides[{key!r}] must be a mapping of {', '.join(ROW_FIELDS)}")
        _check_fields(f"override (row {key!r})", fields)
        if key not in row_keys:
            logger.warning("override for %r ignored: no such row (rows: %s)", key, row_keys)
        out[str(key)] = dict(fields)
    return out


def _row_settings(
    key: str,
    extrema: Mapping[str, Mapping[str, Any]] | None,
    overrides: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """``defaults`` updated by ``extrema[key]`` then by ``overrides[key]`` (None skipped)."""
    out = dict(defaults)
    ext = dict((extrema or {}).get(key) or {})
    extra = sorted(set(ext) - set(ROW_FIELDS))
    if extra:
        logger.debug("extrema[%r]: ignoring fields %s", key, extra)
    for source in ({k: ext[k] for k in ext if k in ROW_FIELDS}, overrides.get(key, {})):
        out.update({k: v for k, v in source.items() if v is not None})
    return out


def _check_settings(key: str, s: dict[str, Any], y_scale: str, z_scale: str) -> dict[str, Any]:
    """Numbers as floats, positive on log scales, ordered; a ValueError names the row."""
    for name in ("y_min", "y_max", "z_min", "z_max"):
        if s.get(name) is None:
            continue
        try:
            s[name] = float(s[name])
        except (TypeError, ValueError):
            raise ValueError(f"row {key!r}: {name} must be a number, not {s[name]!r}") from None
        if not np.isfinite(s[name]):
            raise ValueError(f"row {key!r}: {name} must be finite, not {s[name]}")
    for axis, scale in (("y", y_scale), ("z", z_scale)):
        lo, hi = s.get(f"{axis}_min"), s.get(f"{axis}_max")
        if scale == "log" and lo is not None and lo <= 0:
            raise ValueError(f"row {key!r}: a log scale needs {axis}_min > 0, got {lo}")
        if scale == "log" and hi is not None and hi <= 0:
            raise ValueError(f"row {key!r}: a log scale needs {axis}_max > 0, got {hi}")
        if lo is not None and hi is not None and not hi > lo:
            raise ValueError(f"row {key!r}: {axis}_min {lo} must be below {axis}_max {hi}")
    return s


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


def _is_reduced(ds: xr.Dataset) -> bool:
    return "values" in ds.data_vars and "energy" in ds.data_vars


def _reduced(ds: xr.Dataset, variable: str, categories: Mapping | None = None) -> xr.Dataset:
    """A reduced Dataset (computed), from a reduced or an ``open_esa`` Dataset."""
    if not _is_reduced(ds):
        ds = reduce_dataset(ds, variable=variable, categories=categories)
    elif categories is not None:
        have = [str(c) for c in ds["category"].values]
        missing = [c for c in categories if c not in have]
        if missing:
            raise ValueError(
                f"reduced dataset has no category {', '.join(map(repr, missing))} "
                f"(it has {', '.join(have)})"
            )
        ds = ds.sel(category=list(categories))
    keep = ["values", "energy"] + (["time_delta"] if "time_delta" in ds.data_vars else [])
    return ds[keep].compute()  # one pass over a dask-backed source


def _durations_of(red: xr.Dataset) -> np.ndarray | None:
    """A reduced Dataset's per-record accumulation lengths (s), or None if it has none."""
    if "time_delta" not in red.data_vars:
        return None
    return np.asarray(red["time_delta"].values, dtype=np.float64)


def _category_ranges(ds: xr.Dataset, categories: Mapping | None) -> dict[str, tuple]:
    if categories is not None:
        return normalize_categories(categories)
    ranges: dict[str, tuple] = {}
    text = ds["category"].attrs.get("ranges") if "category" in ds.coords else None
    if isinstance(text, str):
        try:
            ranges = dict(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            ranges = {}
    return {**DEFAULT_CATEGORIES, **ranges}


def _z_label_for(variable: str, units: str) -> str:
    if variable == "data":
        return "Counts"
    if variable == "rate":
        return "Counts/s"
    return units or variable


def _sources_of(*datasets: xr.Dataset) -> tuple[str, ...]:
    """File names a row was drawn from (the ``source`` attribute), for provenance."""
    for ds in datasets:
        src = ds.attrs.get("source") if ds is not None else None
        if src:
            return (Path(str(src)).name,)
    return ()


def _has_data(values: np.ndarray) -> bool:
    """Any measurement at all (a measured zero counts; only NaN is no measurement)."""
    return bool(np.isfinite(values).any())


def _orbit_of(datasets: Iterable[xr.Dataset | None]) -> int | None:
    for ds in datasets:
        if ds is not None and "orbit" in ds.attrs:
            try:
                return int(ds.attrs["orbit"])
            except (TypeError, ValueError):
                continue
    return None


# --------------------------------------------------------------------------------------
# Marked intervals
# --------------------------------------------------------------------------------------

Interval = tuple[np.datetime64, np.datetime64, str]


def read_marked_intervals(csv_path: str | os.PathLike) -> dict[int, list[Interval]]:
    """Read marked time intervals per orbit from a CSV file.

    Parameters
    ----------
    csv_path : str or os.PathLike
        Rows ``orbit,start_utc,end_utc[,label]`` with ISO-8601 UTC times (a trailing
        ``Z`` is allowed). A header row, blank lines and ``#`` comments are skipped.

    Returns
    -------
    dict
        orbit -> list of ``(start, end, label)``, times as ``datetime64[ns]``, sorted by
        start.

    Raises
    ------
    ValueError
        A malformed row (the message names the file and line), or ``end < start``.
    """
    path = Path(csv_path)
    out: dict[int, list[Interval]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if lineno == 1 and not re.fullmatch(r"[+-]?\d+", cells[0]):
                continue  # header
            if len(cells) < 3:
                raise ValueError(f"{path}:{lineno}: expected orbit,start_utc,end_utc[,label]")
            try:
                orbit = int(cells[0])
                start, end = _to_datetime64(cells[1]), _to_datetime64(cells[2])
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
            if end < start:
                raise ValueError(f"{path}:{lineno}: end {cells[2]} is before start {cells[1]}")
            label = ",".join(cells[3:]).strip() if len(cells) > 3 else ""
            out.setdefault(orbit, []).append((start, end, label))
    for lst in out.values():
        lst.sort(key=lambda iv: iv[0])
    return out


def _intervals_for(
    intervals: Mapping[int, Sequence] | Sequence | None, orbit: int | None
) -> list[Interval]:
    if not intervals:
        return []
    if isinstance(intervals, Mapping):
        chosen = intervals.get(orbit, []) if orbit is not None else []
    else:
        chosen = intervals
    out = []
    for item in chosen:
        start, end, *rest = item
        out.append((_to_datetime64(start), _to_datetime64(end), str(rest[0]) if rest else ""))
    return out


# --------------------------------------------------------------------------------------
# Grid figures
# --------------------------------------------------------------------------------------


@dataclass
class _Row:
    key: str
    title: str
    times: np.ndarray | None = None
    energies: np.ndarray | None = None
    values: np.ndarray | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    durations: np.ndarray | None = None  # accumulation length per record (s), NaN unknown
    sources: tuple[str, ...] = ()  # the input files (names) the row was drawn from

    @property
    def empty(self) -> bool:
        return self.values is None or not _has_data(self.values)


@dataclass(frozen=True)
class _Grid:
    """How one grid figure is drawn, passed whole from the products to the engines: the
    style (:class:`~fastspectro_dask.config.RenderStyle`: scales, gap squeeze, engine, dpi,
    figsize) and the options of a ``FAST_plot_*`` call. Checked when made."""

    style: RenderStyle
    overrides: Mapping[str, Mapping[str, Any]] | None = None
    extrema: Mapping[str, Mapping[str, Any]] | None = None
    colormap: str | Colormap | None = None
    layout: str | None = None
    intervals: Mapping[int, Sequence] | Sequence | None = None
    zoom_duration_minutes: float = 6.0
    percentile: tuple[float, float] = (1.0, 99.0)
    ephemeris: Any | None = None

    def __post_init__(self) -> None:
        _check_scales(self.style.y_scale, self.style.z_scale)
        if self.style.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.style.engine!r}")
        object.__setattr__(self, "layout", _check_layout(self.layout))

    @classmethod
    def of(cls, call: Mapping[str, Any]) -> _Grid:
        """From the keywords of a ``FAST_plot_*`` call (its ``locals()``, taken first):
        the style (``y_scale`` linear where the product has none, ``shift90`` as
        ``pad_shift90``) and the options, by name."""
        style = RenderStyle(
            y_scale=call.get("y_scale", "linear"),
            z_scale=call["z_scale"],
            squeeze_gaps_minutes=call["squeeze_gaps_minutes"],
            pad_shift90=call.get("shift90", False),
            engine=call["engine"],
            dpi=call["dpi"],
            figsize=call["figsize"],
            figure_format="png",
        )
        options = {f.name: call[f.name] for f in dataclass_fields(cls) if f.name != "style"}
        return cls(style, **options)


def _render_grid(
    rows: list[_Row],
    grid: _Grid,
    settings: dict[str, dict[str, Any]],
    *,
    time_axis: TimeAxis | None,
    title: str,
    context: str,
    intervals: list[Interval],
    bottom: float,
) -> Figure:
    """The reference drawing of a grid (:func:`make_spectrogram` per row, zoom columns
    for marked ``intervals``); ``time_axis`` None: a plain date axis."""
    style = grid.style
    fig = _new_figure(style.figsize, style.dpi, grid.layout)
    mains, zooms, caxes = _grid_axes(fig, len(rows), len(intervals), grid.layout, bottom)
    spans: list[tuple[float, float]] = []
    for row, ax, cax, zax in zip(rows, mains, caxes, zooms, strict=True):
        span = _reference_row(row, ax, cax, zax, settings, grid, time_axis)
        if span is not None:
            spans.append(span)
    _shared_time_limits(mains, rows, spans, time_axis)
    label_rows = ["UT"]
    if time_axis is not None:
        label_rows = _squeezed_ticks(mains, time_axis, grid.ephemeris, context)
    else:
        mains[-1].set_xlabel("UT")
    for k, interval in enumerate(intervals):
        _mark_interval(mains, [zr[k] for zr in zooms], interval, grid, time_axis)
    fig.suptitle(f"{title}  {_span_of(rows)}", fontsize="large")
    fig.fastspectro_metadata = _provenance(rows, mains, time_axis, label_rows)
    if all(r.empty for r in rows):
        logger.warning("%s: no row has data", context)
    return fig


def _reference_row(
    row: _Row,
    ax: Axes,
    cax: Axes,
    zax: list[Axes],
    settings: dict[str, dict[str, Any]],
    grid: _Grid,
    time_axis: TimeAxis | None,
) -> tuple[float, float] | None:
    """Draw one row (and its zoom axes) the reference way; the x span of its data, if
    any was drawn."""
    style = grid.style
    ax.set_label(row.key)
    ax.set_title(row.title, loc="left", fontsize="medium", y=1.0)
    if time_axis is None:
        _date_axis(ax)
    for z in zax:
        z.set_label(f"{row.key}-zoom")
    if row.empty:
        _placeholder(ax, row.key, cax)
        for z in zax:
            z.set_facecolor("0.94")
            z.tick_params(left=False, labelleft=False)
        return None
    s = settings[row.key]
    meshes = make_spectrogram(
        ax,
        **_panel_kwargs(row, s, style, grid.percentile, grid.colormap, time_axis),
        y_label=s.get("y_label", DEFAULT_Y_LABEL),
        z_label=s.get("z_label"),
        cax=cax,
    )
    y_lim = ax.get_ylim()
    for z in zax:  # the zoom axes share y with the row: same limits and norm
        make_spectrogram(
            z,
            row.times,
            row.energies,
            row.values,
            y_scale=style.y_scale,
            z_scale=style.z_scale,
            y_min=y_lim[0],
            y_max=y_lim[1],
            colormap=grid.colormap,
            y_label=None,
            colorbar=False,
            norm=meshes[0].norm if meshes else None,
            durations=row.durations,
        )
        z.tick_params(labelleft=False)
    return ax.get_xlim() if meshes else None


def _shared_time_limits(
    mains: list[Axes],
    rows: list[_Row],
    spans: list[tuple[float, float]],
    time_axis: TimeAxis | None,
) -> None:
    """The shared time limits of the rows: the squeezed axis' extent, else the drawn
    spans, else the orbit's time span if known; tick labels on the lowest row only."""
    if time_axis is not None:
        spans = [time_axis.extent]
    elif not spans:  # no row has data: still show the orbit's time span if known
        known = [r.times[~np.isnat(r.times)] for r in rows if r.times is not None]
        known = [t for t in known if t.size]
        if known:
            t_all = np.concatenate(known)
            a, b = _datetime_to_num(np.array([t_all.min(), t_all.max()]))
            spans = [(a, b) if b > a else (a - 0.5 / 1440, b + 0.5 / 1440)]
    if spans:
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        mains[0].set_xlim(lo, hi)
        for ax in mains:  # the shared axis is final now: lone records stay visible
            _keep_slivers_visible(ax)
    else:
        mains[-1].tick_params(labelbottom=False)
    for ax in mains[:-1]:
        ax.tick_params(labelbottom=False)


def _mark_interval(
    mains: list[Axes],
    column: list[Axes],
    interval: Interval,
    grid: _Grid,
    time_axis: TimeAxis | None,
) -> None:
    """A marked interval: shaded on every row, and a zoomed ``column`` of its own."""
    start, end, label = interval
    a, b = _datetime_to_num(np.array([start, end]))
    if time_axis is not None:
        a, b = time_axis.to_axis(
            np.array([start, end]).astype("datetime64[ns]").astype(np.int64) / 1e9
        )
    for ax in mains:  # a bar along the top and dashed bounds; the data stay visible
        ax.axvspan(a, b, ymin=0.95, ymax=1.0, color="k", alpha=0.7, lw=0)
        ax.axvline(a, color="k", lw=0.8, ls="--")
        ax.axvline(b, color="k", lw=0.8, ls="--")
    centre = start + (end - start) / 2
    half = np.timedelta64(int(grid.zoom_duration_minutes * 30e9), "ns")
    z0, z1 = _datetime_to_num(np.array([centre - half, centre + half]))
    column[0].set_xlim(z0, z1)
    for z in column:
        _date_axis(z)
        z.axvline(a, color="k", lw=0.8, ls="--")
        z.axvline(b, color="k", lw=0.8, ls="--")
    for z in column[:-1]:
        z.tick_params(labelbottom=False)
    a_s, b_s = (str(x.astype("datetime64[s]"))[11:] for x in (start, end))
    column[0].set_title(f"{label}  {a_s}\N{EN DASH}{b_s}".strip(), fontsize="small", y=1.0)


def _provenance(
    rows: list[_Row], mains: list[Axes], time_axis: TimeAxis | None, label_rows: list[str]
) -> dict[str, str]:
    """The text chunks :func:`save_figure` writes into the PNG (see its docstring)."""
    limits = {}
    for row, ax in zip(rows, mains, strict=True):
        meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
        if not meshes:
            continue
        y0, y1 = ax.get_ylim()
        limits[row.key] = {
            "y_min": float(y0),
            "y_max": float(y1),
            "z_min": float(meshes[0].norm.vmin),
            "z_max": float(meshes[0].norm.vmax),
        }
    if time_axis is not None:
        ranges = time_axis.drawn_ranges()
    else:
        lo, hi = mains[0].get_xlim()
        ranges = [[d.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for d in mdates.num2date([lo, hi], tz=_UTC)]]
    return _provenance_text(rows, limits, ranges, label_rows)


def _check_layout(layout: str | None) -> str | None:
    if layout in (None, "none"):
        return None
    if layout not in ("constrained", "compressed"):
        raise ValueError(f"layout must be None, 'constrained' or 'compressed', not {layout!r}")
    return layout


def _check_scales(y_scale: str, z_scale: str) -> None:
    _check_scale("y_scale", y_scale)
    _check_scale("z_scale", z_scale)


def _prepare_grid(
    rows: list[_Row], grid: _Grid, *, n_zoom: int, bottom: float
) -> tuple[dict[str, dict[str, Any]], tuple[float, float]]:
    """Everything a caller can get wrong, checked before drawing (plain ValueErrors):
    the settings per row and the figure size (default: from the rows and columns)."""
    y_scale, z_scale, figsize = grid.style.y_scale, grid.style.z_scale, grid.style.figsize
    keys = [row.key for row in rows]
    checked = _validate_overrides(grid.overrides, keys)
    settings = {
        row.key: _check_settings(
            row.key, _row_settings(row.key, grid.extrema, checked, row.defaults), y_scale, z_scale
        )
        for row in rows
    }
    if figsize is None:
        figsize = (
            12.0 + n_zoom * (_ZOOM_WIDTH + _COL_GAP),
            1.15 + (bottom - _MARGIN_BOTTOM) + 2.1 * len(rows),
        )
    _grid_geometry(figsize, len(rows), n_zoom, bottom)
    return settings, (float(figsize[0]), float(figsize[1]))


def FAST_plot_instrument_grid(
    orbit: Mapping[str, xr.Dataset | None],
    *,
    y_scale: str = "linear",
    z_scale: str = "log",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    variable: str = "data",
    colormap: str | Colormap | None = None,
    instrument_order: Sequence[str] = DEFAULT_INSTRUMENTS,
    category: str = "all",
    extrema: Mapping[str, Mapping[str, Any]] | None = None,
    orbit_number: int | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = DEFAULT_DPI,
    layout: str | None = None,
    intervals: Mapping[int, Sequence] | Sequence | None = None,
    zoom_duration_minutes: float = 6.0,
    percentile: tuple[float, float] = (1.0, 99.0),
    squeeze_gaps_minutes: float | None = DEFAULT_SQUEEZE_MINUTES,
    ephemeris: Any | None = None,
    engine: str = "reference",
) -> Figure:
    """One orbit's spectrograms, one row per instrument, on a shared UT axis.

    Parameters
    ----------
    orbit : mapping
        Instrument -> an :func:`~fastspectro_dask.open_esa` Dataset (reduced here with
        :func:`~fastspectro_dask.reduce.reduce_dataset`) or an already reduced Dataset
        (``values``/``energy``, optionally ``time_delta``; numpy or dask backed), or None.
        Records are drawn ``time_delta`` wide (centred on their time) where it is known,
        else as wide as the spacing of their neighbours.
    y_scale, z_scale : {"linear", "log"}
        Energy axis and colour scales.
    overrides : mapping, optional
        Instrument -> any of ``y_min, y_max, z_min, z_max, y_label, z_label``; wins over
        ``extrema``, which wins over the data-driven defaults.
    variable : {"data", "eflux"}
        What to reduce from raw Datasets (counts summed over angle, or ``domega``-averaged
        flux). Reduced Datasets plot what they hold.
    colormap : str or Colormap, optional
        Default by (y_scale, z_scale): viridis, cividis, plasma, inferno.
    instrument_order : sequence of str
        The rows, top to bottom. A missing instrument, or one without a finite positive
        value, gets a labelled placeholder row so layouts stay stable.
    category : str
        The pitch-angle category to plot (``"all"`` by default).
    extrema : mapping, optional
        Instrument -> global limits with the same field names as ``overrides``.
    orbit_number : int, optional
        For the title; default from the Datasets' ``orbit`` attribute.
    figsize : (float, float), optional
        Inches; default 12 wide, 2.1 per row (wider with intervals).
    dpi : float
        Dots per inch of the figure (and of :func:`save_figure` by default).
    layout : {None, "constrained"}
        None (default) places the axes with a fixed geometry, which is fastest.
    intervals : mapping or sequence, optional
        Marked intervals, as returned by :func:`read_marked_intervals` (this orbit's are
        used) or a list of ``(start, end[, label])``: shaded on every row, plus a zoomed
        column per interval.
    zoom_duration_minutes : float
        Width of each zoomed column, centred on its interval.
    percentile : (float, float)
        Percentiles of the data for colour limits that nothing else sets.
    squeeze_gaps_minutes : float or None
        Data gaps (in all rows at once) longer than this are cut out of the UT axis and
        drawn as narrow hatched breaks, so the passes fill the width; tick labels stay
        true UT on every segment. ``0`` keeps one segment from the first to the last
        record; None draws a plain matplotlib date axis.
    ephemeris : Ephemeris, optional
        The orbit's ``fa_k0_orb`` ephemeris (:func:`fastspectro_dask.ephemeris.read_ephemeris`):
        label rows ALT (km), ILAT (deg), MLT (h) under the UT tick labels (blank beyond the
        file's span), and the hemisphere for the pitch-angle row names.
    engine : {"reference", "fast"}
        ``reference`` (default here): a fresh matplotlib Figure (QuadMesh panels) that the
        caller may still change. ``fast``: the engine of :mod:`fastspectro_dask.draw` (the
        layout built once per process and reused, panels written as rasters; 5-6x faster,
        what the batch pipeline uses) returning a :class:`~fastspectro_dask.draw.RasterFigure`
        for :func:`save_figure`; figures with marked intervals fall back to ``reference``.

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas. Spectrogram axes are labelled with their instrument
        (``ax.get_label()``), as are placeholder rows.

    Raises
    ------
    ValueError
        Bad scale, unknown override field, unknown category.
    PlottingError
        Drawing failed (chained to the cause; the message names the orbit).
    """
    grid = _Grid.of(locals())  # first: the call's keywords only
    return _instrument_grid(orbit, grid, variable, instrument_order, category, orbit_number)


def _instrument_grid(
    orbit: Mapping[str, xr.Dataset | None],
    grid: _Grid,
    variable: str,
    instrument_order: Sequence[str],
    category: str,
    orbit_number: int | None,
) -> Figure | Any:
    """:func:`FAST_plot_instrument_grid` with its drawing options as one object."""
    keys = [str(k) for k in instrument_order]
    if orbit_number is None:
        orbit_number = _orbit_of(orbit.get(k) for k in keys)
    unused = sorted(set(orbit) - set(keys))
    if unused:
        logger.debug("orbit %s: instruments %s not in instrument_order", orbit_number, unused)
    rows: list[_Row] = []
    for inst in keys:
        ds = orbit.get(inst)
        title = f"{inst}  {_INSTRUMENT_TITLES.get(inst, '')}".rstrip()
        if ds is None:
            rows.append(_Row(inst, title))
            continue
        if _is_reduced(ds):
            red = _reduced(ds, variable)
        elif category in DEFAULT_CATEGORIES:  # reduce only the category shown
            red = _reduced(ds, variable, {category: DEFAULT_CATEGORIES[category]})
        else:
            raise ValueError(
                f"{inst}: category {category!r} is not one of {list(DEFAULT_CATEGORIES)}; "
                "pass a reduced Dataset for other categories"
            )
        cats = [str(c) for c in red["category"].values]
        if category not in cats:
            raise ValueError(f"{inst}: no pitch-angle category {category!r} (has {cats})")
        var = str(red.attrs.get("variable", variable))
        units = str(red.attrs.get("units", ""))
        values = np.asarray(red["values"].sel(category=category).values, dtype=np.float64)
        rows.append(
            _Row(
                inst,
                f"{title}  ({category})" if category != "all" else title,
                np.asarray(red["time"].values),
                np.asarray(red["energy"].values, dtype=np.float64),
                values,
                {"y_label": DEFAULT_Y_LABEL, "z_label": _z_label_for(var, units)},
                _durations_of(red),
                _sources_of(ds, red),
            )
        )
    return _grid_figure(
        rows,
        grid,
        title=f"FAST orbit {orbit_number if orbit_number is not None else '?'}",
        context=f"orbit {orbit_number} instrument grid",
        orbit_number=orbit_number,
    )


def _grid_figure(
    rows: list[_Row],
    grid: _Grid,
    *,
    title: str,
    context: str,
    orbit_number: int | None,
    y_ticks: Sequence[float] | None = None,
) -> Figure | Any:
    """Limits per row (overrides > extrema > data), then draw: shared by all grids.

    ``engine="fast"`` draws with :mod:`fastspectro_dask.draw` (a cached layout and raster
    panels; returns a :class:`~fastspectro_dask.draw.RasterFigure`) unless there are
    marked intervals (zoom columns) or no time axis, which the reference drawing serves.
    """
    marks = _intervals_for(grid.intervals, orbit_number)
    bottom = _MARGIN_BOTTOM + (_EPHEMERIS_HEIGHT if grid.ephemeris is not None else 0.0)
    settings, figsize = _prepare_grid(rows, grid, n_zoom=len(marks), bottom=bottom)
    grid = replace(grid, style=replace(grid.style, figsize=figsize))
    minutes = grid.style.squeeze_gaps_minutes
    squeeze_seconds = None if minutes is None else 60.0 * float(minutes)
    if grid.style.engine == "fast" and not marks:
        # the engine always draws a squeezed axis (0: one segment)
        time_axis = _grid_time_axis(rows, squeeze_seconds or 0.0)
        if time_axis is not None:
            with _PlottingErrors(context):
                return render_grid(
                    rows,
                    time_axis,
                    style=grid.style,
                    settings=settings,
                    title=title,
                    context=context,
                    colormap=grid.colormap,
                    percentile=grid.percentile,
                    ephemeris=grid.ephemeris,
                    bottom=bottom,
                    y_ticks=y_ticks,
                )
    with _PlottingErrors(context):
        return _render_grid(
            rows,
            grid,
            settings,
            time_axis=_grid_time_axis(rows, squeeze_seconds),
            title=title,
            context=context,
            intervals=marks,
            bottom=bottom,
        )


def _hemisphere(ephemeris: Any | None, times: np.ndarray, context: str) -> str | None:
    """``"north"``/``"south"`` from the orbit file if all the drawn data (records at
    ``times``) lie in that hemisphere, else None (rows then named by pitch angle only)."""
    t = np.asarray(times)
    t = t[~np.isnat(t)] if t.size else t
    if ephemeris is None or t.size == 0:
        return None
    try:
        hemisphere = ephemeris.hemisphere_of(t)
        if hemisphere is None:
            ilat = ephemeris.at(t)["ILAT"]
            if (ilat > 0).any() and (ilat < 0).any():
                logger.info(
                    "%s: the data lie in both hemispheres (ILAT %+.1f to %+.1f deg): "
                    "pitch-angle rows named by angle only, not downgoing/upgoing",
                    context,
                    np.nanmin(ilat),
                    np.nanmax(ilat),
                )
        return hemisphere
    except Exception as exc:  # a bad orbit file never fails a figure
        logger.warning("hemisphere unknown: %s", exc)
        return None


def _category_title(
    instrument: str, key: str, ranges: Sequence[tuple[float, float]] | None, hemisphere: str | None
) -> str:
    """``ees  0±30° downgoing  (330-30°)``: by pitch angle, hemisphere name where known."""
    if ranges is None:
        return f"{instrument} {key}"
    label = category_label(ranges)
    name = hemisphere_name(ranges, hemisphere)
    head = f"{instrument}  {key if key == 'all' else label}"
    return f"{head}{'  ' + name if name else ''}  ({_format_ranges(ranges)})"


def _format_ranges(ranges: Sequence[tuple[float, float]]) -> str:
    return ", ".join(f"{lo:g}\N{EN DASH}{hi:g}\N{DEGREE SIGN}" for lo, hi in ranges)


def FAST_plot_pitch_angle_grid(
    dataset: xr.Dataset,
    *,
    categories: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    y_scale: str = "linear",
    z_scale: str = "log",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    variable: str = "data",
    colormap: str | Colormap | None = None,
    extrema: Mapping[str, Mapping[str, Any]] | None = None,
    orbit_number: int | None = None,
    instrument: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = DEFAULT_DPI,
    layout: str | None = None,
    intervals: Mapping[int, Sequence] | Sequence | None = None,
    zoom_duration_minutes: float = 6.0,
    percentile: tuple[float, float] = (1.0, 99.0),
    squeeze_gaps_minutes: float | None = DEFAULT_SQUEEZE_MINUTES,
    ephemeris: Any | None = None,
    engine: str = "reference",
) -> Figure:
    """One instrument's spectrograms, one row per pitch-angle category.

    Parameters
    ----------
    dataset : xarray.Dataset
        An :func:`~fastspectro_dask.open_esa` Dataset (reduced here) or a reduced one.
    categories : mapping, optional
        Category key -> ``[(lo, hi), ...]`` degrees; default
        :data:`~fastspectro_dask.reduce.DEFAULT_CATEGORIES` (all, downgoing, upgoing,
        perpendicular). With a reduced Dataset it selects (and orders) the rows.
    y_scale, z_scale : {"linear", "log"}
    overrides : mapping, optional
        Category key -> any of ``y_min, y_max, z_min, z_max, y_label, z_label``.
    variable : {"data", "eflux"}
        What to reduce from a raw Dataset.
    colormap : str or Colormap, optional
    extrema : mapping, optional
        Category key -> global limits (same fields as ``overrides``, lower priority).
    orbit_number, instrument : optional
        For the title; default from the Dataset attributes.
    figsize, dpi, layout, intervals, zoom_duration_minutes, percentile
        As for :func:`FAST_plot_instrument_grid`.
    squeeze_gaps_minutes, ephemeris, engine
        As for :func:`FAST_plot_instrument_grid`. With an ephemeris, the rows centred on
        0 and 180 deg are also named downgoing/upgoing for the hemisphere, when ILAT has
        one sign at every record drawn (data on both sides of the magnetic equator: rows
        named by pitch angle only).

    Returns
    -------
    matplotlib.figure.Figure
        Each row's axes is labelled with its category key; titles give degree ranges.

    Raises
    ------
    ValueError
        Bad scale, unknown override field, unknown category.
    PlottingError
        Drawing failed (chained; the message names the orbit and instrument).
    """
    grid = _Grid.of(locals())  # first: the call's keywords only
    return _pitch_angle_grid(dataset, grid, categories, variable, orbit_number, instrument)


def _pitch_angle_grid(
    dataset: xr.Dataset,
    grid: _Grid,
    categories: Mapping[str, Sequence[tuple[float, float]]] | None,
    variable: str,
    orbit_number: int | None,
    instrument: str | None,
) -> Figure | Any:
    """:func:`FAST_plot_pitch_angle_grid` with its drawing options as one object."""
    instrument = instrument or str(dataset.attrs.get("instrument", "")) or "?"
    if orbit_number is None:
        orbit_number = _orbit_of([dataset])
    red = _reduced(dataset, variable, categories)
    ranges = _category_ranges(dataset, categories)
    keys = [str(c) for c in red["category"].values]
    var = str(red.attrs.get("variable", variable))
    units = str(red.attrs.get("units", ""))
    times = np.asarray(red["time"].values)
    energies = np.asarray(red["energy"].values, dtype=np.float64)
    values = np.asarray(red["values"].values, dtype=np.float64)
    durations = _durations_of(red)
    drawn = red["values"].notnull().any([d for d in red["values"].dims if d != "time"])
    hemisphere = _hemisphere(grid.ephemeris, times[drawn.values], f"orbit {orbit_number}")
    rows = []
    for i, key in enumerate(keys):
        rows.append(
            _Row(
                key,
                _category_title(instrument, key, ranges.get(key), hemisphere),
                times,
                energies,
                values[i],
                {"y_label": DEFAULT_Y_LABEL, "z_label": _z_label_for(var, units)},
                durations,
                _sources_of(dataset, red),
            )
        )
    return _grid_figure(
        rows,
        grid,
        title=f"FAST orbit {orbit_number if orbit_number is not None else '?'}  "
        f"{instrument} pitch angle",
        context=f"orbit {orbit_number} {instrument} pitch-angle grid",
        orbit_number=orbit_number,
    )


#: Pitch-angle raster step of the ``pad`` product (degrees): each record's bins, with
#: their own edges, are sampled at this step on the y axis.
PAD_STEP_DEGREES = 1.0
PAD_Y_LABEL = "Pitch angle (deg)"


def FAST_plot_pad(
    orbit: Mapping[str, xr.Dataset | None],
    *,
    z_scale: str = "log",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    variable: str = "data",
    colormap: str | Colormap | None = None,
    instrument_order: Sequence[str] = DEFAULT_INSTRUMENTS,
    extrema: Mapping[str, Mapping[str, Any]] | None = None,
    orbit_number: int | None = None,
    pad_energy: tuple[float, float] | None = None,
    shift90: bool = False,
    figsize: tuple[float, float] | None = None,
    dpi: float = DEFAULT_DPI,
    layout: str | None = None,
    intervals: Mapping[int, Sequence] | Sequence | None = None,
    zoom_duration_minutes: float = 6.0,
    percentile: tuple[float, float] = (1.0, 99.0),
    squeeze_gaps_minutes: float | None = DEFAULT_SQUEEZE_MINUTES,
    ephemeris: Any | None = None,
    engine: str = "reference",
) -> Figure:
    """One orbit's pitch-angle spectrograms (product ``pad``), one row per instrument.

    As IDL SPEDAS ``fa_esa_l2_pad``: y is pitch angle over one full turn (0-360 deg, or
    -90-270 deg with ``shift90`` so that 0 and 180 deg are off the edges), z the counts
    summed (``data``), ``eflux`` averaged with ``denergy`` weights, or the ``rate``, over
    the energy channels inside an energy window (fractional weights at its edges; see
    :func:`fastspectro_dask.padreduce.energy_window_weights`). Each record's angle bins
    keep their own edges (mode changes inside an orbit: 32 or 64 bins), periodic, so the
    bin across 0/360 deg fills both ends; they are drawn as a raster of
    :data:`PAD_STEP_DEGREES` on the y axis.

    Parameters
    ----------
    orbit : mapping
        Instrument -> an :func:`~fastspectro_dask.open_esa` Dataset (reduced here with
        ``pad_energy``) or a reduced Dataset holding ``pad_values`` and ``pad_pitch``;
        None (or no pad data) gives a placeholder row.
    z_scale : {"linear", "log"}
    overrides, extrema : mapping, optional
        Instrument -> ``z_min``, ``z_max``, ``z_label`` (y is always the full turn:
        ``y_min``/``y_max`` there are ignored).
    variable : {"data", "eflux", "rate"}
        What to reduce from raw Datasets.
    pad_energy : (lo, hi), optional
        Energy window in eV for raw Datasets (default: all valid channels).
    shift90 : bool
        Draw -90..270 deg instead of 0..360 deg.
    colormap, instrument_order, orbit_number, figsize, dpi, layout, intervals
        As for :func:`FAST_plot_instrument_grid`.
    zoom_duration_minutes, percentile, squeeze_gaps_minutes, ephemeris, engine
        As for :func:`FAST_plot_instrument_grid`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    grid = _Grid.of(locals())  # first: the call's keywords only
    return _pad(orbit, grid, variable, instrument_order, orbit_number, pad_energy)


def _without_y_limits(
    per_row: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]] | None:
    """Row settings without ``y_min``/``y_max``."""
    if per_row is None:
        return None
    return {
        k: {f: v for f, v in (row or {}).items() if f not in ("y_min", "y_max")}
        for k, row in per_row.items()
    }


def _pad(
    orbit: Mapping[str, xr.Dataset | None],
    grid: _Grid,
    variable: str,
    instrument_order: Sequence[str],
    orbit_number: int | None,
    pad_energy: tuple[float, float] | None,
) -> Figure | Any:
    """:func:`FAST_plot_pad` with its drawing options as one object (y is always linear)."""
    from fastspectro_dask.padreduce import pitch_edges, sample_periodic
    from fastspectro_dask.reduce import PadSpec

    # y is the full turn whatever the limits say (an instrument's energy limits are not
    # pitch angles): only the colour limits and labels of extrema and overrides apply
    grid = replace(
        grid,
        style=replace(grid.style, y_scale="linear"),
        extrema=_without_y_limits(grid.extrema),
        overrides=_without_y_limits(grid.overrides),
    )
    keys = [str(k) for k in instrument_order]
    if orbit_number is None:
        orbit_number = _orbit_of(orbit.get(k) for k in keys)
    y0 = -90.0 if grid.style.pad_shift90 else 0.0
    y = y0 + (np.arange(round(360 / PAD_STEP_DEGREES)) + 0.5) * PAD_STEP_DEGREES
    window_text = None
    rows: list[_Row] = []
    for inst in keys:
        ds = orbit.get(inst)
        title = f"{inst}  {_INSTRUMENT_TITLES.get(inst, '')}".rstrip()
        if ds is not None and "pad_values" not in ds.variables:
            if _is_reduced(ds):
                raise ValueError(f"{inst}: the reduced Dataset has no pad_values")
            ds = reduce_dataset(
                ds, variable=variable, categories={"all": ((0.0, 360.0),)}, pad=PadSpec(pad_energy)
            ).compute()
        if ds is None:
            rows.append(_Row(inst, title))
            continue
        window_text = window_text or ds.attrs.get("pad_energy")
        pad = np.asarray(ds["pad_values"].values, dtype=np.float64)
        edges = pitch_edges(np.asarray(ds["pad_pitch"].values, dtype=np.float64))
        var = str(ds.attrs.get("variable", variable))
        rows.append(
            _Row(
                inst,
                title,
                np.asarray(ds["time"].values),
                y,
                sample_periodic(edges, pad, y),
                {
                    "y_label": PAD_Y_LABEL,
                    "z_label": _z_label_for(var, str(ds.attrs.get("units", ""))),
                    "y_min": y0,
                    "y_max": y0 + 360.0,
                },
                _durations_of(ds),
                _sources_of(ds),
            )
        )
    energy = _pad_window_label(window_text if window_text else pad_energy)
    fig = _grid_figure(
        rows,
        grid,
        title=f"FAST orbit {orbit_number if orbit_number is not None else '?'}  "
        f"pitch angle, {energy}",
        context=f"orbit {orbit_number} pad",
        orbit_number=orbit_number,
        y_ticks=np.arange(y0, y0 + 361.0, 90.0),
    )
    if isinstance(fig, Figure):
        for ax in fig.axes:
            if ax.get_label() in keys and ax.get_ylabel() == PAD_Y_LABEL:
                ax.set_yticks(np.arange(y0, y0 + 361.0, 90.0))
    return fig


def _pad_window_label(window: Any) -> str:
    """``50-5000 eV`` or ``all energies``, from a (lo, hi) pair or its JSON text."""
    import json

    if isinstance(window, str):
        window = json.loads(window)
    if not window:
        return "all energies"
    lo, hi = window
    return f"{lo:g}\N{EN DASH}{hi:g} eV"


def plot_product(
    product: str,
    data: Mapping[str, Any],
    style: RenderStyle,
    *,
    variable: str,
    categories: Mapping[str, Sequence[tuple[float, float]]] | None,
    instrument_order: Sequence[str],
    extrema: Mapping[str, Mapping[str, Any]] | None,
    orbit: int,
    ephemeris: Any | None,
) -> Figure | Any:
    """One product of one orbit drawn in a run's style (the batch render task's call).

    Parameters
    ----------
    product : str
        ``instruments``, ``pad`` or ``pa-<instrument>``.
    data : mapping
        Instrument -> reduced Dataset (None: missing or invalid, a placeholder row).
    style : RenderStyle
        The run's scales, gap squeeze, pad shift, engine, dpi and figure size.
    variable, categories, instrument_order, extrema, orbit, ephemeris
        As for :func:`FAST_plot_instrument_grid` and :func:`FAST_plot_pitch_angle_grid`.

    Returns
    -------
    matplotlib.figure.Figure or fastspectro_dask.draw.RasterFigure
        For :func:`~fastspectro_dask.output.save_figure`.
    """
    grid = _Grid(style, extrema=extrema, ephemeris=ephemeris)
    if product == "instruments":
        return _instrument_grid(data, grid, variable, instrument_order, "all", orbit)
    if product == "pad":
        return _pad(data, grid, variable, instrument_order, orbit, None)
    inst = product.removeprefix("pa-")
    return _pitch_angle_grid(data[inst], grid, categories, variable, orbit, inst)
