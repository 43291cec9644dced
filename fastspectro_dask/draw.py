"""The fast render engine: per-process layouts, raster panels, PNGs from the Agg buffer.

About 90 % of a fresh matplotlib figure's cost is building tick and text objects, and every
figure of a product has the same layout: the axes, their y scales and limits, the colour
bars (the colour limits are mission-wide) and the labels. So each worker process builds a
product's layout once (:class:`_Layout`, kept in a small LRU cache keyed by everything
static), draws it, and keeps the drawn pixels. Per figure it then:

1. restores those pixels (Agg ``restore_region``);
2. writes each spectrogram panel straight into the panel's pixels: every pixel centre looks
   up the record (exact time edges, non-uniform, gap-squeezed) and the channel (that
   record's own energy edges, log or linear) it falls in, and is colour-mapped with the
   row's norm; NaN and gaps stay transparent. This is what Agg does with the reference
   drawing's non-antialiased QuadMesh (a pixel takes the cell holding its centre), without
   building any mesh;
3. draws only what changes: the time ticks and their labels (UT and the ephemeris rows),
   the hatched breaks, the spines over the panels, the title;
4. encodes the RGBA buffer with Pillow (zlib level
   :data:`fastspectro_dask.output.DEFAULT_COMPRESS_LEVEL`, chosen by measurement,
   ``benchmarks/bench_render.py``), with the provenance text chunks.

Vector formats (``pdf``, ``svg``) get a fresh figure of the same layout whose panels are the
same rasters as images (text stays text). The reference drawing
(:func:`fastspectro_dask.products.FAST_plot_instrument_grid` & co. with ``engine="reference"``,
pcolormesh on a fresh figure) stays for fidelity tests.
"""

from __future__ import annotations

import io
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator

from fastspectro_dask.atomic import atomic_write
from fastspectro_dask.config import RenderStyle
from fastspectro_dask.errors import PlottingError
from fastspectro_dask.geometry import (
    DEFAULT_GAP_FACTOR,
    _format_span,
    _is_datetime,
    _panel_geometry,
)
from fastspectro_dask.output import DEFAULT_COMPRESS_LEVEL, _provenance_text, _software
from fastspectro_dask.render import (
    DEFAULT_Y_LABEL,
    _grid_axes,
    _grid_geometry,
    _new_figure,
    _panel_kwargs,
    _placeholder,
)
from fastspectro_dask.timeaxis import TimeAxis

__all__ = ["RasterFigure", "clear_layouts", "layout_cache_info"]

logger = logging.getLogger(__name__)

#: Layouts kept per process (least recently used dropped first).
MAX_LAYOUTS = 8

_LAYOUTS: OrderedDict[tuple, _Layout] = OrderedDict()

#: Row titles whose pixels a layout keeps (:meth:`_Layout.draw_row_title`).
MAX_TITLES = 32

#: Pixels around a row title's box that must match for its kept pixels to be pasted.
_TITLE_MARGIN = 4


def clear_layouts() -> None:
    """Drop every cached layout of this process."""
    while _LAYOUTS:
        _LAYOUTS.popitem(last=False)[1].close()


def layout_cache_info() -> dict[str, int]:
    """``{"layouts": cached, "max": MAX_LAYOUTS, "built": built since start}``."""
    return {"layouts": len(_LAYOUTS), "max": MAX_LAYOUTS, "built": _Layout.built}


@dataclass(frozen=True)
class _RowSpec:
    """What is static about one row of a grid (part of the layout key)."""

    key: str
    title: str
    kind: str  # "data", "placeholder" (no data at all) or "nodata" (nothing drawable)
    y_scale: str = "linear"
    y_lim: tuple[float, float] = (0.0, 1.0)
    y_label: str | None = None
    y_ticks: tuple[float, ...] | None = None
    z_label: str | None = None
    norm: tuple[str, float, float] | None = None  # (class name, vmin, vmax)
    cmap: str | None = None


@dataclass
class RasterFigure:
    """A figure drawn by the engine: its RGBA pixels and provenance, ready to save.

    Attributes
    ----------
    rgba : ndarray, shape (height, width, 4), uint8
    metadata : dict
        The provenance text chunks (as ``Figure.fastspectro_metadata``).
    dpi : float
    vector : callable or None
        Builds a matplotlib Figure of the same content (for ``pdf``/``svg``).
    """

    rgba: np.ndarray
    metadata: dict[str, str]
    dpi: float
    vector: Any = None
    texts: dict[str, Any] = field(default_factory=dict)

    def save(
        self,
        path: str | os.PathLike,
        *,
        fmt: str | None = None,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
    ) -> Path:
        """Write atomically as PNG (from the pixels, zlib ``compress_level``) or PDF/SVG
        (vector figure)."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".") or "png").lower()
        if fmt == "png":
            data = encode_png(self.rgba, self.metadata, self.dpi, compress_level)
        elif fmt in ("pdf", "svg"):
            fig = self.vector()
            buf = io.BytesIO()
            meta = {"Creator": self.metadata.get("Software")} if fmt == "pdf" else {}
            fig.savefig(buf, format=fmt, dpi=self.dpi, metadata=meta)
            fig.clear()
            data = buf.getvalue()
        else:
            raise ValueError(f"format must be png, pdf or svg, not {fmt!r}")
        return write_atomic(path, data)


def encode_png(
    rgba: np.ndarray,
    metadata: Mapping[str, str],
    dpi: float,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
) -> bytes:
    """PNG bytes of an RGBA buffer with text chunks (Pillow, deterministic)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in metadata.items():
        if v is None:
            continue
        try:
            str(v).encode("latin-1")
            info.add_text(str(k), str(v))
        except UnicodeEncodeError:
            info.add_itxt(str(k), str(v))
    im = Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1)
    out = io.BytesIO()
    im.save(out, format="PNG", pnginfo=info, compress_level=int(compress_level), dpi=(dpi, dpi))
    return out.getvalue()


def write_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to ``path`` atomically: a temporary file of our naming, then rename.

    The temporary honours the umask (not ``mkstemp``'s 0600) and is removed on failure.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, sync_dir=False)
    except OSError as exc:
        raise PlottingError(f"saving figure to {path} failed: {type(exc).__name__}: {exc}") from exc
    return path


class _Layout:
    """A product's figure with everything static drawn once; per figure only the rest."""

    built = 0

    def __init__(
        self,
        specs: tuple[_RowSpec, ...],
        figsize: tuple[float, float],
        dpi: float,
        bottom: float,
        label_rows: tuple[str, ...],
    ) -> None:
        self.specs = specs
        fig = _new_figure(figsize, dpi, None)
        mains, _zooms, caxes = _grid_axes(fig, len(specs), 0, None, bottom)
        self.row_titles = []
        for spec, ax, cax in zip(specs, mains, caxes, strict=True):
            ax.set_label(spec.key)
            self.row_titles.append(ax.set_title(spec.title, loc="left", fontsize="medium", y=1.0))
            if spec.kind == "placeholder":
                _placeholder(ax, spec.key, cax)
                continue
            ax.set_yscale(spec.y_scale)
            if spec.y_label:
                ax.set_ylabel(spec.y_label)
            if spec.kind == "nodata":
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
                continue
            ax.set_ylim(*spec.y_lim)
            if spec.y_ticks is not None:
                ax.set_yticks(spec.y_ticks)
            cb = fig.colorbar(ScalarMappable(_norm_of(spec.norm), spec.cmap), cax=cax)
            if spec.z_label:
                cb.set_label(spec.z_label)
        for ax in (*mains, *caxes):
            if ax.get_visible():
                _minor_tick_marks(ax.yaxis)
        for ax in mains[:-1]:
            ax.tick_params(labelbottom=False)
        for ax in mains:
            ax.set_xticks([])  # the time ticks change per figure: not in the background
        mains[-1].xaxis.set_tick_params(labelsize="small")
        # per figure, the time ticks are drawn as one marker line per axis (the axis's own
        # tick mark, at every tick) and the bottom axis's tick label texts: no Tick objects
        # to update, no locator, formatter or axis-label placement
        self.xmarks = []
        for ax in mains:
            tick = ax.xaxis.get_major_ticks(1)[0]
            sides = [sd for sd in (tick.tick1line, tick.tick2line) if sd.get_visible()]
            self.xmarks.append([(_marks_like(sd), sd) for sd in sides])
        _label_row_names(mains[-1], list(label_rows))
        self.title = fig.suptitle("", fontsize="large")
        # spines go over the panels: drawn per figure after the rasters, not in the background
        self.spines = [sp for ax in mains for sp in ax.spines.values() if sp.get_visible()]
        for sp in self.spines:
            sp.set_visible(False)
        fig.canvas.draw()
        self.background = fig.canvas.copy_from_bbox(fig.bbox)
        for sp in self.spines:
            sp.set_visible(True)
        self.fig, self.mains = fig, mains
        self.height = np.asarray(fig.canvas.buffer_rgba()).shape[0]
        self._title_pixels: OrderedDict[tuple[int, str], tuple] = OrderedDict()
        _Layout.built += 1

    def close(self) -> None:
        self.fig.clear()
        self._title_pixels.clear()

    def draw_row_title(self, row: int, text: str, buf: np.ndarray) -> None:
        """Draw row ``row``'s title ``text`` into ``buf`` (the canvas buffer).

        A row title repeats from orbit to orbit (an instrument, a category), yet its
        glyphs cost some milliseconds to render. So the pixels it changes are kept, with
        the pixels they were drawn over: where those are the same again, the kept pixels
        are pasted, which is exactly what drawing would give; otherwise it is drawn.
        """
        title = self.row_titles[row]
        title.set_text(text)
        key = (row, text)
        kept = self._title_pixels.get(key)
        if kept is not None:
            where, under, over = kept
            if np.array_equal(buf[where], under):
                buf[where] = over
                return
        before = np.array(buf, copy=True) if kept is None else None
        self.mains[row].draw_artist(title)
        if before is None:
            return
        changed = np.nonzero((buf != before).any(axis=-1))
        if changed[0].size == 0:
            return
        # the changed pixels and the text's box, with a margin: the region that must be
        # the same (under) for the kept pixels (over) to be what drawing gives
        box = title.get_window_extent(self.fig.canvas.get_renderer())
        h, w = buf.shape[:2]
        r0 = min(int(changed[0].min()), int(np.floor(h - box.y1))) - _TITLE_MARGIN
        r1 = max(int(changed[0].max()) + 1, int(np.ceil(h - box.y0))) + _TITLE_MARGIN
        c0 = min(int(changed[1].min()), int(np.floor(box.x0))) - _TITLE_MARGIN
        c1 = max(int(changed[1].max()) + 1, int(np.ceil(box.x1))) + _TITLE_MARGIN
        where = (slice(max(r0, 0), min(r1, h)), slice(max(c0, 0), min(c1, w)))
        self._title_pixels[key] = (where, before[where].copy(), buf[where].copy())
        while len(self._title_pixels) > MAX_TITLES:
            self._title_pixels.popitem(last=False)


def _marks_like(side: Line2D) -> Line2D:
    """An empty marker line drawn like one tick's mark (``tick1line``/``tick2line``): the
    same marker, size, width, colour, transform and clipping, for many positions at once."""
    marks = Line2D([], [])
    marks.update_from(side)
    marks.set_zorder(side.get_zorder())
    return marks


def _set_marks(marks: Line2D, side: Line2D, axis: Any, locs: np.ndarray) -> None:
    """Put ``marks`` at ``locs`` along ``axis``, on the side of the tick mark ``side``."""
    if axis.axis_name == "y":
        marks.set_data(np.full(locs.size, side.get_xdata()[0]), locs)
    else:
        marks.set_data(locs, np.full(locs.size, side.get_ydata()[0]))


def _in_view(axis: Any, locs: np.ndarray) -> np.ndarray:
    """Mask of the positions matplotlib would draw a tick at (inside the view interval)."""
    tr = axis.get_transform()
    a, b = sorted(tr.transform(np.asarray(axis.get_view_interval(), dtype=float)))
    tol = (b - a) * 1e-10  # as matplotlib's own test (transforms._interval_contains_close)
    t = tr.transform(np.asarray(locs, dtype=float))
    with np.errstate(invalid="ignore"):
        return (a - tol <= t) & (t <= b + tol)


def _minor_tick_marks(axis: Any) -> None:
    """Draw an axis's unlabelled minor ticks as one marker line per side, not as Ticks.

    A log colour bar has some 70 minor ticks; matplotlib builds each as a Tick (two marker
    lines, a grid line, two texts), which was about a third of a layout's cost. The marks
    are the same: the lines copy the properties of the axis's own minor tick and sit at
    the positions the axis would draw. Minor ticks with labels or grid lines are left to
    matplotlib.
    """
    if isinstance(axis.get_minor_locator(), NullLocator):
        return
    locs = np.asarray(axis.get_minorticklocs(), dtype=float)
    if locs.size == 0:
        return
    tick = axis.get_minor_ticks(1)[0]
    if tick.gridline.get_visible() or (
        (tick.label1.get_visible() or tick.label2.get_visible())
        and any(axis.minor.formatter.format_ticks(locs))
    ):
        return
    locs = locs[_in_view(axis, locs)]
    axis.set_minor_locator(NullLocator())
    for side in (tick.tick1line, tick.tick2line):
        if side.get_visible() and locs.size:
            marks = _marks_like(side)
            _set_marks(marks, side, axis, locs)
            axis.axes.add_artist(marks)
            # ticks are not clipped; add_artist clipped the line to the axes: undo
            marks.set_clip_box(side.get_clip_box())
            marks.set_clip_path(side.get_clip_path())


def _norm_of(spec: tuple[str, float, float] | None) -> Normalize | None:
    if spec is None:
        return None
    from matplotlib.colors import LogNorm

    kind, lo, hi = spec
    return LogNorm(vmin=lo, vmax=hi) if kind == "LogNorm" else Normalize(vmin=lo, vmax=hi)


def _layout(key: tuple, *args: Any) -> _Layout:
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _Layout(*args)
        _LAYOUTS[key] = layout
        while len(_LAYOUTS) > MAX_LAYOUTS:
            _LAYOUTS.popitem(last=False)[1].close()
    else:
        _LAYOUTS.move_to_end(key)
    return layout


# --------------------------------------------------------------------------------------
# Raster panels
# --------------------------------------------------------------------------------------


def _pixel_centres(ax: Any, height: int) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Buffer rows/columns of the pixels whose centres lie inside the axes, and the data
    coordinates of those centres (x per column, y per row, top row first)."""
    bb = ax.bbox
    c0, c1 = int(np.ceil(bb.x0 - 0.5)), int(np.floor(bb.x1 - 0.5))
    # buffer row j has its centre at display y = height - j - 0.5
    r0 = int(np.ceil(height - bb.y1 - 0.5))
    r1 = int(np.floor(height - bb.y0 - 0.5))
    cols = np.arange(c0, c1 + 1) + 0.5
    rows = height - (np.arange(r0, r1 + 1) + 0.5)
    inv = ax.transData.inverted()
    xs = inv.transform(np.column_stack([cols, np.full(cols.size, bb.y0)]))[:, 0]
    ys = inv.transform(np.column_stack([np.full(rows.size, bb.x0), rows]))[:, 1]
    return slice(r0, r1 + 1), slice(c0, c1 + 1), xs, ys


def _widen_lone_runs(
    left: np.ndarray,
    right: np.ndarray,
    starts: np.ndarray,
    stops: np.ndarray,
    min_w: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference drawing's aid (``render._keep_slivers_visible``) on record edges: a run
    narrower than ``min_w`` with no other run within ``min_w`` is stretched to ``min_w``
    about its centre."""
    a = left[starts]
    b = right[stops - 1]
    narrow = np.flatnonzero(b - a < min_w)
    if narrow.size == 0:
        return left, right
    left, right = left.copy(), right.copy()
    for k in narrow.tolist():
        near = (a - min_w < b[k]) & (a[k] < b + min_w)
        near[k] = False
        if near.any():
            continue
        s, e = starts[k], stops[k]
        centre = (a[k] + b[k]) / 2.0
        if b[k] > a[k]:
            f = min_w / (b[k] - a[k])
            left[s:e] = centre + (left[s:e] - centre) * f
            right[s:e] = centre + (right[s:e] - centre) * f
        else:
            edges = np.linspace(centre - min_w / 2, centre + min_w / 2, e - s + 1)
            left[s:e], right[s:e] = edges[:-1], edges[1:]
    return left, right


def panel_rgba(
    panel: Any, xs: np.ndarray, ys: np.ndarray, min_w: float, cells: np.ndarray | None = None
) -> np.ndarray:
    """RGBA (uint8) at every pixel centre: rows ``ys`` (top first) by columns ``xs``.

    Each pixel takes the cell that holds it (:func:`pixel_cells`, or ``cells``, its
    result), colour-mapped with the panel's norm and colormap;
    masked cells and NaN get the colormap's "bad" colour, transparent. Pixels outside
    every cell stay transparent. Only the cells that some pixel shows are colour-mapped.
    """
    if cells is None:
        cells = pixel_cells(panel, xs, ys, min_w)
    values = panel.cells
    n_cells = values.shape[0] * values.shape[1]
    shown = np.zeros(n_cells + 1, bool)
    shown[cells] = True
    shown = np.flatnonzero(shown[:n_cells])
    picked = np.ma.masked_array(
        np.ma.getdata(values).ravel()[shown], np.ma.getmaskarray(values).ravel()[shown]
    )
    table = np.zeros((n_cells + 1, 4), np.uint8)  # the cells' colours, + transparent at -1
    table[shown] = panel.cmap(panel.norm(picked), bytes=True)
    return table.view(np.uint32)[cells, 0].view(np.uint8).reshape(*cells.shape, 4)


def paste_rgba(region: np.ndarray, rgba: np.ndarray) -> None:
    """Copy the pixels of ``rgba`` that are not fully transparent onto ``region`` (a view
    of the canvas buffer); the rest of ``region`` keeps its pixels."""
    np.copyto(region.view(np.uint32)[..., 0], rgba.view(np.uint32)[..., 0], where=rgba[..., 3] > 0)


def pixel_cells(panel: Any, xs: np.ndarray, ys: np.ndarray, min_w: float) -> np.ndarray:
    """The cell (flat index into ``panel.cells``) that holds each pixel centre, rows
    ``ys`` (top first) by columns ``xs``; -1 where no cell does.

    The record whose time edges (lone runs narrower than ``min_w`` widened,
    :func:`_widen_lone_runs`) hold the pixel's x, the channel whose energy edges (that
    record's own) hold its y. This is what Agg does with the reference drawing's
    non-antialiased QuadMesh (a pixel takes the cell holding its centre).
    """
    left, right = _widen_lone_runs(panel.left, panel.right, panel.starts, panel.stops, min_w)
    out = np.full((ys.size, xs.size), -1, np.intp)
    rec = np.searchsorted(left, xs, side="right") - 1
    ok = rec >= 0
    ok[ok] &= xs[ok] < right[rec[ok]]
    if not ok.any():
        return out
    run_of = np.repeat(np.arange(panel.starts.size), panel.stops - panel.starts)
    cols = np.flatnonzero(ok)
    col_rec = rec[cols]
    runs, col_run = np.unique(run_of[col_rec], return_inverse=True)
    channel = np.full((ys.size, runs.size), -1, np.intp)  # per run: the channel of each row
    for j, r in enumerate(runs.tolist()):
        a = panel.starts[r]
        k = int(panel.count[a])
        if k == 0:
            continue
        idx = np.searchsorted(panel.edges[a, : k + 1], ys, side="right") - 1
        channel[:, j] = np.where((idx >= 0) & (idx < k), idx, -1)
    ch = channel[:, col_run]
    out[:, cols] = np.where(ch >= 0, col_rec * panel.cells.shape[1] + ch, -1)
    return out


# --------------------------------------------------------------------------------------
# One grid figure
# --------------------------------------------------------------------------------------


def render_grid(
    rows: Sequence[Any],
    time_axis: TimeAxis,
    *,
    style: RenderStyle,
    settings: Mapping[str, Mapping[str, Any]],
    title: str,
    context: str,
    colormap: Any,
    percentile: tuple[float, float],
    ephemeris: Any | None,
    bottom: float,
    y_ticks: Sequence[float] | None = None,
) -> RasterFigure:
    """Draw a grid of rows (``products._Row``) on ``time_axis`` with a cached layout.

    ``style`` is the figure's :class:`~fastspectro_dask.config.RenderStyle` (scales, dpi,
    and the figure size, resolved); ``bottom`` the bottom margin (inches). See the module
    doc.
    """
    figsize, dpi = style.figsize, style.dpi
    main_w, _ = _grid_geometry(figsize, len(rows), 0, bottom)
    pos, labels, names = _time_ticks(time_axis, main_w, ephemeris, context)

    specs, panels = _row_specs(rows, time_axis, style, settings, colormap, percentile, y_ticks)
    # row titles are drawn per figure (they name the hemisphere's downgoing/upgoing rows,
    # which change from orbit to orbit): one cached layout serves both hemispheres
    static = tuple(replace(spec, title="") for spec in specs)
    key = (static, tuple(figsize), float(dpi), bottom, tuple(names))
    layout = _layout(key, static, tuple(figsize), float(dpi), bottom, tuple(names))
    fig, canvas = layout.fig, layout.fig.canvas
    canvas.restore_region(layout.background)
    buf = np.asarray(canvas.buffer_rgba())
    for row, spec in enumerate(specs):
        layout.draw_row_title(row, spec.title, buf)
    rasters = _draw_panels(layout, panels, time_axis, buf)
    _draw_time_ticks(layout, pos, labels)
    layout.title.set_text(f"{title}  {_span_of(rows)}")
    fig.draw_artist(layout.title)
    rgba_out = np.array(buf, copy=True)
    texts = {
        "title": layout.title.get_text(),
        "xticklabels": list(labels),
        "xticks": [float(p) for p in pos],
        "row_titles": [ax.get_title(loc="left") for ax in layout.mains],
        "ylims": [ax.get_ylim() for ax in layout.mains],
    }
    limits = {
        spec.key: {
            "y_min": float(spec.y_lim[0]),
            "y_max": float(spec.y_lim[1]),
            "z_min": float(spec.norm[1]),
            "z_max": float(spec.norm[2]),
        }
        for spec in specs
        if spec.kind == "data"
    }
    metadata = {
        "Software": _software(),
        **_provenance_text(list(rows), limits, time_axis.drawn_ranges(), names),
    }

    def vector() -> Figure:
        return _vector_figure(
            specs, rasters, figsize, dpi, bottom, names, time_axis, pos, labels, texts["title"]
        )

    return RasterFigure(rgba_out, metadata, float(dpi), vector, texts)


def _row_specs(
    rows: Sequence[Any],
    time_axis: TimeAxis,
    style: RenderStyle,
    settings: Mapping[str, Mapping[str, Any]],
    colormap: Any,
    percentile: tuple[float, float],
    y_ticks: Sequence[float] | None,
) -> tuple[list[_RowSpec], list[Any]]:
    """Each row's layout spec (what its cached axes look like) and its panel geometry
    (None for a placeholder or a row without data)."""
    y_scale = style.y_scale
    specs, panels = [], []
    shared: dict[tuple, tuple] = {}  # rows on the same records share their geometry
    for row in rows:
        if row.empty:
            specs.append(_RowSpec(row.key, row.title, "placeholder"))
            panels.append(None)
            continue
        s = settings[row.key]
        panel = _panel_geometry(
            **_panel_kwargs(row, s, style, percentile, colormap, time_axis),
            norm=None,
            gap_factor=DEFAULT_GAP_FACTOR,
            shared=shared,
        )
        y_label = s.get("y_label", DEFAULT_Y_LABEL)
        if panel.norm is None:
            specs.append(_RowSpec(row.key, row.title, "nodata", y_scale, y_label=y_label))
            panels.append(None)
            continue
        specs.append(
            _RowSpec(
                row.key,
                row.title,
                "data",
                y_scale,
                (panel.y_lo, panel.y_hi),
                y_label,
                None if y_ticks is None else tuple(float(t) for t in y_ticks),
                s.get("z_label"),
                (type(panel.norm).__name__, float(panel.norm.vmin), float(panel.norm.vmax)),
                panel.cmap.name,
            )
        )
        panels.append(panel)
    return specs, panels


def _draw_panels(
    layout: _Layout, panels: Sequence[Any], time_axis: TimeAxis, buf: np.ndarray
) -> list[np.ndarray | None]:
    """Colour-map each panel straight into its pixels of ``buf``; then the spines and the
    hatched breaks over them. Returns each panel's RGBA raster (None where none)."""
    x_lo, x_hi = time_axis.extent
    rasters = []
    for ax, panel in zip(layout.mains, panels, strict=True):
        ax.set_xlim(x_lo, x_hi)
        if panel is None:
            rasters.append(None)
            continue
        rs, cs, xs, ys = _pixel_centres(ax, layout.height)
        rgba = panel_rgba(panel, xs, ys, (x_hi - x_lo) / ax.bbox.width)
        paste_rgba(buf[rs, cs], rgba)
        rasters.append(rgba)
    for sp in layout.spines:
        sp.axes.draw_artist(sp)
    for ax in layout.mains:
        for a, b in time_axis.breaks:
            ax.draw_artist(_break_patch(ax, a, b))
    return rasters


def _draw_time_ticks(layout: _Layout, pos: Sequence[float], labels: Sequence[str]) -> None:
    """The time tick marks of every panel and the tick labels of the lowest one."""
    shown = _in_view(layout.mains[-1].xaxis, pos)
    for ax, marks in zip(layout.mains, layout.xmarks, strict=True):
        for line, side in marks:
            _set_marks(line, side, ax.xaxis, np.asarray(pos, dtype=float)[shown])
            ax.draw_artist(line)
    low = layout.mains[-1]  # the axis with the tick labels
    texts_drawn = [lab for lab, on in zip(labels, shown, strict=True) if on]
    ticks = low.xaxis.get_major_ticks(len(texts_drawn))
    for tick, x, text in zip(ticks, np.asarray(pos, dtype=float)[shown], texts_drawn, strict=True):
        for label in (tick.label1, tick.label2):
            if label.get_visible():
                label.set_x(x)
                label.set_text(text)
                low.draw_artist(label)


def _span_of(rows: Sequence[Any]) -> str:
    """The UT span of the rows' known times, for the title."""
    t_known = [r.times[~np.isnat(r.times)] for r in rows if not r.empty]
    t_known = [t for t in t_known if t.size]
    if not t_known:
        return "(no data)"
    return _format_span(min(t.min() for t in t_known), max(t.max() for t in t_known))


def _vector_figure(specs, rasters, figsize, dpi, bottom, names, time_axis, pos, labels, title):
    """A fresh figure of the layout with the raster panels as images (PDF/SVG)."""
    layout = _Layout(tuple(specs), tuple(figsize), float(dpi), bottom, tuple(names))
    x_lo, x_hi = time_axis.extent
    for ax, rgba in zip(layout.mains, rasters, strict=True):
        ax.set_xlim(x_lo, x_hi)
        if rgba is not None:
            _panel_image(ax, rgba)
        for a, b in time_axis.breaks:
            ax.axvspan(a, b, **_BREAK_STYLE)
        ax.set_xticks(pos)
    layout.mains[-1].set_xticklabels(labels, fontsize="small")
    layout.title.set_text(title)
    return layout.fig


def _panel_image(ax: Any, rgba: np.ndarray) -> None:
    """The raster over the whole axes (axes coordinates: right for log and linear y)."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    ax.imshow(
        rgba,
        extent=(0, 1, 0, 1),
        transform=ax.transAxes,
        aspect="auto",
        interpolation="nearest",
        zorder=1,
    )
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


# --------------------------------------------------------------------------------------
# The gap-squeezed UT axis (shared with the reference grid of fastspectro_dask.products)
# --------------------------------------------------------------------------------------


def _unix_seconds(t: np.ndarray) -> np.ndarray:
    return np.asarray(t).astype("datetime64[ns]").astype(np.int64) / 1e9


def _grid_time_axis(rows: Sequence[Any], squeeze_seconds: float | None) -> TimeAxis | None:
    """The figure's shared UT axis, squeezed around gaps (None: a plain date axis).

    Built from the extent of every record that holds a finite value, in every row, so
    all rows share its segments.
    """
    if squeeze_seconds is None:
        return None
    intervals = []
    for row in rows:
        if row.times is None or row.values is None or not _is_datetime(row.times):
            continue
        measured = np.isfinite(row.values).any(axis=1) & ~np.isnat(row.times)
        if not measured.any():
            continue
        t = _unix_seconds(row.times[measured])
        d = np.full(t.size, np.nan) if row.durations is None else row.durations[measured]
        steps = np.diff(np.sort(t))
        steps = steps[steps > 0]
        cadence = float(np.median(steps)) if steps.size else 1.0
        half = np.where(np.isfinite(d) & (d > 0), d / 2.0, cadence / 2.0)
        intervals.append(np.column_stack([t - half, t + half]))
    if not intervals:
        return None
    return TimeAxis.from_intervals(np.concatenate(intervals), squeeze_seconds)


def _time_ticks(
    time_axis: TimeAxis, width_in: float, ephemeris: Any | None, context: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Tick positions (axis units), their labels (UT, then ephemeris rows) and row names."""
    ticks = time_axis.ticks(width_in)
    pos = time_axis.to_axis(ticks)
    labels = time_axis.tick_labels(ticks)
    names = ["UT"]
    if ephemeris is not None:
        try:
            rows = ephemeris_label_rows(ephemeris, ticks)
        except Exception as exc:  # a bad orbit file never fails a figure
            logger.warning("%s: ephemeris not drawn: %s", context, exc)
            rows = {}
        for name, texts in rows.items():
            names.append(name)
            labels = [f"{a}\n{b}" for a, b in zip(labels, texts, strict=True)]
    return pos, labels, names


_BREAK_STYLE = dict(facecolor="0.82", edgecolor="0.45", hatch="////", lw=0.4, zorder=3)


def _break_patch(ax: Axes, a: float, b: float) -> Rectangle:
    """The hatched rectangle ``ax.axvspan(a, b, **_BREAK_STYLE)`` draws, not added to the
    axes (drawn once with ``draw_artist``): no data limits or autoscale to update."""
    patch = Rectangle((a, 0.0), b - a, 1.0, **_BREAK_STYLE)
    patch.set_transform(ax.get_xaxis_transform(which="grid"))
    patch.set_figure(ax.get_figure(root=False))
    patch.axes = ax
    patch.set_clip_path(ax.patch)
    return patch


def _label_row_names(ax: Axes, names: list[str]) -> None:
    """The names of the label rows (``UT``, ``ALT (km)``, ...) left of the tick labels."""
    from fastspectro_dask.ephemeris import ROW_TITLES

    ax.annotate(
        "\n".join(ROW_TITLES.get(n, n) for n in names),
        xy=(0, 0),
        xycoords="axes fraction",
        xytext=(-6, -(ax.xaxis.get_tick_padding() + 3.5)),
        textcoords="offset points",
        ha="right",
        va="top",
        fontsize="small",
    )


def _squeezed_ticks(
    mains: list[Axes], time_axis: TimeAxis, ephemeris: Any | None, context: str
) -> list[str]:
    """UT ticks on every segment, marked breaks, and ephemeris label rows under the axis.

    Returns the names of the label rows drawn (``UT`` and, with an orbit file, ``ALT``,
    ``ILAT``, ``MLT``).
    """
    ax0 = mains[-1]
    width_in = ax0.get_position().width * ax0.get_figure().get_figwidth()
    pos, labels, names = _time_ticks(time_axis, width_in, ephemeris, context)
    for ax in mains:
        ax.set_xticks(pos)
        for a, b in time_axis.breaks:
            ax.axvspan(a, b, **_BREAK_STYLE)
    ax0.set_xticklabels(labels, fontsize="small")
    _label_row_names(ax0, names)
    return names


def ephemeris_label_rows(ephemeris: Any, ticks: np.ndarray) -> dict[str, list[str]]:
    """ALT/ILAT/MLT label text at each tick time (unix seconds), blank where unknown."""
    from fastspectro_dask.ephemeris import format_rows

    return format_rows(ephemeris.at(np.asarray(ticks, dtype=np.float64)))
