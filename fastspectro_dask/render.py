"""The reference drawing: spectrogram panels as matplotlib QuadMeshes on a fresh figure.

* :func:`make_spectrogram` draws one time-energy spectrogram on any axes
  (mission-agnostic): one :class:`~matplotlib.collections.QuadMesh` per run of records
  with one energy table, every record's cells on edges computed from that record's own
  energies and accumulation time, so mode changes land at the right heights; gaps stay
  blank; on a log colour scale finite values <= 0 (measured zeros) draw in the lowest
  colour, only NaN is blank;
* the grid of axes it draws on (rows, zoom columns, colour bars; fixed geometry in
  inches), shared with the fast engine (:mod:`fastspectro_dask.draw`);
* (the mission-agnostic batch, :func:`~fastspectro_dask.generic.generic_batch_plot`, is in
  :mod:`fastspectro_dask.generic`).

The FAST products (instrument grid, pitch-angle grid, pad) are in
:mod:`fastspectro_dask.products`; cell geometry and norms in
:mod:`fastspectro_dask.geometry`; naming and saving in :mod:`fastspectro_dask.output`
(re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from fastspectro_dask.config import RenderStyle
from fastspectro_dask.errors import PlottingError
from fastspectro_dask.geometry import (  # noqa: F401 (re-exported for the engine and tests)
    _BELOW_LOG,
    _SCALES,
    _UTC,
    DEFAULT_COLORMAPS,
    DEFAULT_GAP_FACTOR,
    _check_scale,
    _colormap,
    _data_limits,
    _datetime_to_num,
    _durations_in_seconds,
    _energy_edges,
    _format_span,
    _is_datetime,
    _mask_values,
    _Panel,
    _panel_geometry,
    _resolve_norm,
    _same_table,
    _time_geometry,
    _to_datetime64,
)
from fastspectro_dask.output import (  # noqa: F401 (public names re-exported here)
    DEFAULT_COMPRESS_LEVEL,
    FORMATS,
    _png_metadata,
    _software,
    figure_path,
    read_figure_metadata,
    save_figure,
)
from fastspectro_dask.timeaxis import TimeAxis

__all__ = [
    "figure_path",
    "make_spectrogram",
    "read_figure_metadata",
    "save_figure",
]

logger = logging.getLogger(__name__)

DEFAULT_Y_LABEL = "Energy (eV)"
DEFAULT_DPI = 100
#: Above this many runs of one energy table, a row is drawn as one interleaved mesh.
_MAX_RUN_MESHES = 64
# Layout in inches (used when ``layout`` is None: no layout engine, fixed geometry).
_MARGIN_LEFT = 0.85
_MARGIN_RIGHT = 0.95  # colour-bar ticks and label
_MARGIN_TOP = 0.55
_MARGIN_BOTTOM = 0.6
_EPHEMERIS_HEIGHT = 0.5  # three more label rows (ALT, ILAT, MLT) under the UT ticks
_ROW_GAP = 0.38
_COL_GAP = 0.14
_CBAR_WIDTH = 0.16
_ZOOM_WIDTH = 2.6


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _date_axis(ax: Axes) -> None:
    """UT date ticks (concise, with the date) on the x axis."""
    locator = mdates.AutoDateLocator(tz=_UTC, minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=_UTC))


# --------------------------------------------------------------------------------------
# make_spectrogram
# --------------------------------------------------------------------------------------


def make_spectrogram(
    ax: Axes,
    times: np.ndarray,
    energies: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    percentile: tuple[float, float] = (1.0, 99.0),
    y_scale: str = "linear",
    z_scale: str = "log",
    y_min: float | None = None,
    y_max: float | None = None,
    colormap: str | Colormap | None = None,
    y_label: str | None = DEFAULT_Y_LABEL,
    z_label: str | None = None,
    colorbar: bool = True,
    cax: Axes | None = None,
    norm: Normalize | None = None,
    gap_factor: float = DEFAULT_GAP_FACTOR,
    rasterized: bool = False,
    durations: np.ndarray | None = None,
    time_axis: TimeAxis | None = None,
) -> list[QuadMesh]:
    """Draw a time-energy spectrogram on bin edges computed per record.

    Mission-agnostic: any instrument with per-record (or shared) channel energies.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Target axes; its y scale is set to ``y_scale``.
    times : array_like, shape (n,)
        Record centre times, ``datetime64`` (UT; the x axis gets date ticks) or float.
    energies : array_like, shape (m,) or (n, m)
        Channel energies shared by all records, or per record (NaN where a channel is not
        measured). Any channel order; channels <= 0 are dropped on a log axis.
    values : array_like, shape (n, m)
        The quantity per record and channel; NaN is blank.
    vmin, vmax : float, optional
        Colour limits; omitted ones come from ``percentile`` of the finite values (the
        positive finite values on a log colour scale).
    percentile : (float, float)
        Percentiles for the omitted colour limits.
    y_scale, z_scale : {"linear", "log"}
        Energy axis and colour scales. Bin edges are geometric on a log axis and
        arithmetic on a linear one. On a log colour scale finite values <= 0 (measured
        zeros) draw in the lowest colour; NaN (no measurement) is blank.
    y_min, y_max : float, optional
        Energy axis limits (default: the extent of the drawn cells).
    colormap : str or Colormap, optional
        Default by scale combination, see :data:`DEFAULT_COLORMAPS`.
    y_label, z_label : str, optional
        Axis and colour-bar labels.
    colorbar : bool
        Add a colour bar (in ``cax`` if given, else taking room from ``ax``).
    cax : Axes, optional
        Axes for the colour bar.
    norm : Normalize, optional
        Use this normalisation instead of ``vmin``/``vmax`` (e.g. to share one with
        another panel).
    gap_factor : float
        A step between records longer than ``gap_factor`` times the local cadence (median
        step of the records with that energy table) is a gap and stays blank.
    rasterized : bool
        Rasterize the meshes in vector outputs (no effect on PNG).
    durations : array_like, shape (n,), optional
        Each record's accumulation (integration) length; ``times`` are the centres of the
        accumulations, so a record spans ``time -+ duration / 2``. With ``datetime64``
        times: ``timedelta64`` or float seconds; with float times: the unit of ``times``.
        NaN, NaT or values <= 0 mean unknown. Where known, a record is drawn at its real
        width, also at the ends of a segment and when it is alone (e.g. a single record);
        two records not separated by a gap share one edge (their common edge when the
        accumulations are contiguous). Where unknown (and when omitted), cell edges come
        from the neighbouring records: midpoints, half an adjacent interval at the ends of
        a segment, the local cadence (1 s with ``datetime64`` times) for a lone record.
    time_axis : TimeAxis, optional
        Draw on this gap-squeezed UT axis (x in its coordinates; ``times`` must be
        ``datetime64``); the caller sets the ticks and limits.

    Returns
    -------
    list of QuadMesh
        One mesh per run of consecutive records with one energy table and no gap (or one
        interleaved mesh when there are very many runs); all share one norm and colormap,
        the colour bar (``meshes[0].colorbar``) belongs to the first. Empty when there is
        nothing to draw (the axes then says "no data").

    Raises
    ------
    ValueError
        Bad shapes or scales, or inconsistent explicit limits.
    """
    y_scale = _check_scale("y_scale", y_scale)
    z_scale = _check_scale("z_scale", z_scale)
    panel = _panel_geometry(
        times,
        energies,
        values,
        vmin=vmin,
        vmax=vmax,
        percentile=percentile,
        y_scale=y_scale,
        z_scale=z_scale,
        y_min=y_min,
        y_max=y_max,
        colormap=colormap,
        norm=norm,
        gap_factor=gap_factor,
        durations=durations,
        time_axis=time_axis,
    )
    _prepare_axes(ax, panel, y_scale, y_label, time_axis)
    if panel.norm is None:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        return []
    meshes = _draw_meshes(ax, panel, rasterized)
    if colorbar and meshes:
        _add_colorbar(ax, meshes[0], cax, z_label)
    logger.debug(
        "spectrogram: %d records, %d runs, %d gaps, %d meshes",
        panel.n,
        panel.starts.size,
        panel.gaps,
        len(meshes),
    )
    return meshes


def _prepare_axes(
    ax: Axes, panel: _Panel, y_scale: str, y_label: str | None, time_axis: TimeAxis | None
) -> None:
    """The y scale, UT date ticks (unless on a ``time_axis``) and y label, before any data."""
    ax.set_yscale(y_scale)
    if panel.dates and time_axis is None:
        ax.xaxis_date(tz=_UTC)
        _date_axis(ax)
    if y_label:
        ax.set_ylabel(y_label)


def _draw_meshes(ax: Axes, panel: _Panel, rasterized: bool) -> list[QuadMesh]:
    """Add the panel's meshes to ``ax`` and set its limits; returns the meshes as drawn."""
    meshes = _panel_meshes(panel, rasterized)
    for mesh in meshes:
        ax.add_collection(mesh, autolim=False)
    return _set_limits(ax, panel, meshes)


def _add_colorbar(ax: Axes, mesh: QuadMesh, cax: Axes | None, z_label: str | None) -> None:
    """The colour bar of ``mesh``: in ``cax`` if given, else taking room from ``ax``."""
    fig = ax.get_figure()
    cb = fig.colorbar(mesh, cax=cax) if cax is not None else fig.colorbar(mesh, ax=ax)
    if z_label:
        cb.set_label(z_label)


def _panel_meshes(panel: _Panel, rasterized: bool) -> list[QuadMesh]:
    """The QuadMeshes of a panel's cells: one per run of consecutive records with one
    energy table and no gap, or, with very many runs (per-record tables: drifting
    energies), one interleaved mesh with blank columns between records."""
    vm, count, edges_rows = panel.cells, panel.count, panel.edges
    left, right = panel.left, panel.right
    meshes: list[QuadMesh] = []
    mesh_kw = dict(antialiased=False, shading="flat")
    if panel.starts.size <= _MAX_RUN_MESHES:
        for a, b in zip(panel.starts.tolist(), panel.stops.tolist(), strict=True):
            k = int(count[a])
            cells = vm[a:b, :k]
            if k == 0 or cells.mask.all():
                continue
            x = np.concatenate([left[a:b], right[b - 1 : b]])
            y = edges_rows[a, : k + 1]
            coords = np.empty((k + 1, b - a + 1, 2))
            coords[..., 0] = x[None, :]
            coords[..., 1] = y[:, None]
            mesh = QuadMesh(coords, **mesh_kw)
            mesh.set_array(cells.T)
            meshes.append(mesh)
    else:
        n, k = vm.shape
        x = np.empty(2 * n)
        x[0::2], x[1::2] = left, right
        y = np.repeat(edges_rows.T, 2, axis=1)  # (k+1, 2n)
        coords = np.empty((k + 1, 2 * n, 2))
        coords[..., 0] = x[None, :]
        coords[..., 1] = y
        cells = np.ma.masked_all((k, 2 * n - 1))
        cells[:, 0::2] = vm.T
        mesh = QuadMesh(coords, **mesh_kw)
        mesh.set_array(cells)
        meshes.append(mesh)
    for mesh in meshes:
        mesh.set_cmap(panel.cmap)
        mesh.set_norm(panel.norm)
        mesh.set_rasterized(rasterized)
    return meshes


def _set_limits(ax: Axes, panel: _Panel, meshes: list[QuadMesh]) -> list[QuadMesh]:
    """Axes limits of a drawn panel: the drawn records and the energy range; records
    narrower than a pixel widened (:func:`_keep_slivers_visible`) and kept inside.
    Returns the meshes, the widened ones replaced."""
    ax.set_xlim(float(panel.left.min()), float(panel.right.max()))
    ax.set_ylim(panel.y_lo, panel.y_hi)
    widened = _keep_slivers_visible(ax)
    if widened:  # a widened record at either end stays inside the axes
        xs = [m.get_coordinates()[..., 0] for m in widened.values()]
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, *(float(x.min()) for x in xs)), max(hi, *(float(x.max()) for x in xs)))
        meshes = [widened.get(m, m) for m in meshes]
    return meshes


#: A lone run of records narrower than this many pixels is drawn this wide (centred).
MIN_VISIBLE_PIXELS = 1.0


def _keep_slivers_visible(
    ax: Axes, min_pixels: float = MIN_VISIBLE_PIXELS
) -> dict[QuadMesh, QuadMesh]:
    """Widen isolated sub-pixel meshes to ``min_pixels`` at the axes' current x scale.

    A lone record (a one-record file, or a record isolated by gaps) drawn at its real
    accumulation time can be a fraction of a pixel wide on an orbit-long axis, and Agg then
    draws nothing. A drawing aid: such a mesh, if no other mesh of the axes lies within
    ``min_pixels`` of it, is redrawn ``min_pixels`` wide around its centre. Wider meshes and
    the data are untouched. Call after the final x limits are set. Returns
    ``{replaced mesh: its wider replacement}``.
    """
    lo, hi = ax.get_xlim()
    width_px = ax.bbox.width
    if not (hi > lo and width_px > 0):
        return {}
    min_w = min_pixels * (hi - lo) / width_px
    meshes = [c for c in ax.collections if isinstance(c, QuadMesh)]
    spans = [
        (float(m.get_coordinates()[..., 0].min()), float(m.get_coordinates()[..., 0].max()))
        for m in meshes
    ]
    widened: dict[QuadMesh, QuadMesh] = {}
    for k, (mesh, (a, b)) in enumerate(zip(meshes, spans, strict=True)):
        if b - a >= min_w:
            continue
        near = any(j != k and c - min_w < b and a < d + min_w for j, (c, d) in enumerate(spans))
        if near:
            continue
        coords = np.array(mesh.get_coordinates(), dtype=np.float64)
        centre = (a + b) / 2.0
        if b > a:  # stretch about the centre, keeping the columns' proportions
            coords[..., 0] = centre + (coords[..., 0] - centre) * (min_w / (b - a))
        else:  # zero width: spread the columns evenly
            n = coords.shape[1]
            coords[..., 0] = np.linspace(centre - min_w / 2, centre + min_w / 2, n)[None, :]
        new = QuadMesh(coords, antialiased=False, shading="flat")
        new.set_array(mesh.get_array())
        new.set_cmap(mesh.get_cmap())
        new.set_norm(mesh.norm)
        new.set_rasterized(mesh.get_rasterized())
        new.set_label(mesh.get_label())
        mesh.remove()
        ax.add_collection(new, autolim=False)
        widened[mesh] = new
    return widened


def _panel_kwargs(
    row: Any,
    settings: Mapping[str, Any],
    style: RenderStyle,
    percentile: tuple[float, float],
    colormap: str | Colormap | None,
    time_axis: TimeAxis | None,
) -> dict[str, Any]:
    """The panel keywords of one grid row, shared by :func:`make_spectrogram` (reference)
    and :func:`~fastspectro_dask.geometry._panel_geometry` (fast engine).

    ``row`` has ``times``, ``energies``, ``values`` and ``durations``; ``settings`` its
    limits (``z_min``/``z_max`` are the colour limits, ``y_min``/``y_max`` the axis);
    ``style`` (a :class:`~fastspectro_dask.config.RenderStyle`) gives the scales.
    """
    return {
        "times": row.times,
        "energies": row.energies,
        "values": row.values,
        "durations": row.durations,
        "vmin": settings.get("z_min"),
        "vmax": settings.get("z_max"),
        "y_min": settings.get("y_min"),
        "y_max": settings.get("y_max"),
        "percentile": percentile,
        "y_scale": style.y_scale,
        "z_scale": style.z_scale,
        "colormap": colormap,
        "time_axis": time_axis,
    }


# --------------------------------------------------------------------------------------
# The grid of axes (shared with the fast engine)
# --------------------------------------------------------------------------------------


def _new_figure(figsize: tuple[float, float], dpi: float, layout: str | None) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _grid_geometry(
    figsize: tuple[float, float], n_rows: int, n_zoom: int, bottom: float = _MARGIN_BOTTOM
) -> tuple[float, float]:
    """Main column width and row height (inches); ValueError if the figure is too small."""
    w, h = figsize
    main_w = w - _MARGIN_LEFT - _MARGIN_RIGHT - _CBAR_WIDTH - (n_zoom + 1) * _COL_GAP
    main_w -= n_zoom * _ZOOM_WIDTH
    row_h = (h - _MARGIN_TOP - bottom - (n_rows - 1) * _ROW_GAP) / max(n_rows, 1)
    if n_rows < 1 or main_w < 1.0 or row_h < 0.4:
        raise ValueError(
            f"figsize {tuple(figsize)} is too small for {n_rows} rows and {n_zoom} zoom columns"
        )
    return main_w, row_h


def _grid_axes(
    fig: Figure, n_rows: int, n_zoom: int, layout: str | None, bottom: float = _MARGIN_BOTTOM
) -> tuple[list[Axes], list[list[Axes]], list[Axes]]:
    """Main axes per row, zoom axes per row and interval, colour-bar axes per row."""
    w, h = fig.get_size_inches()
    main_w, row_h = _grid_geometry((w, h), n_rows, n_zoom, bottom)
    widths = [main_w, *([_ZOOM_WIDTH] * n_zoom), _CBAR_WIDTH]
    n_cols = len(widths)
    inner_w = sum(widths) + (n_cols - 1) * _COL_GAP
    gs_kw: dict[str, Any] = dict(width_ratios=widths)
    if layout is None:
        gs_kw.update(
            left=_MARGIN_LEFT / w,
            right=(_MARGIN_LEFT + inner_w) / w,
            bottom=bottom / h,
            top=1.0 - _MARGIN_TOP / h,
            wspace=_COL_GAP / (sum(widths) / n_cols),
            hspace=_ROW_GAP / row_h,
        )
    gs = fig.add_gridspec(n_rows, n_cols, **gs_kw)
    mains: list[Axes] = []
    zooms: list[list[Axes]] = []
    caxes: list[Axes] = []
    for r in range(n_rows):
        ax = fig.add_subplot(gs[r, 0], sharex=mains[0] if mains else None)
        mains.append(ax)
        row_z = []
        for z in range(n_zoom):
            share_x = zooms[0][z] if zooms else None
            row_z.append(fig.add_subplot(gs[r, 1 + z], sharex=share_x, sharey=ax))
        zooms.append(row_z)
        caxes.append(fig.add_subplot(gs[r, n_cols - 1]))
    return mains, zooms, caxes


def _placeholder(ax: Axes, key: str, cax: Axes) -> None:
    ax.set_facecolor("0.94")
    ax.text(
        0.5,
        0.5,
        f"{key}: no data",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize="large",
        color="0.35",
    )
    ax.tick_params(left=False, labelleft=False)
    cax.set_visible(False)


class _PlottingErrors:
    """Turn errors while drawing into PlottingError (chained), naming the context.

    ZeroDivisionError/FloatingPointError (divide-by-zero) and timeouts propagate
    unchanged, so the pipeline can categorize them; a PlottingError gets the context.
    """

    _PASS = (ZeroDivisionError, FloatingPointError, TimeoutError)

    def __init__(self, context: str) -> None:
        self.context = context

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, self._PASS):
            return False
        if isinstance(exc, PlottingError):  # add the context, keep the original cause
            raise PlottingError(f"{self.context}: {exc}") from (exc.__cause__ or exc)
        raise PlottingError(f"{self.context}: {type(exc).__name__}: {exc}") from exc
