"""The generic, mission-agnostic batch: any user's items, one figure each, on Dask.

:func:`generic_batch_plot` draws one figure per item, one spectrogram row per dataset dict
that ``build_datasets_fn(item)`` returns. It runs through the same machinery as the FAST
pipeline: the scheduling loop (:class:`~fastspectro_dask.schedule.TaskLoop`: an elastic
window of Dask tasks, a watchdog), one task per item whose work (``build_datasets_fn``,
drawing, saving) runs in the worker's persistent sandbox child with a timeout that really
stops it (:func:`~fastspectro_dask.sandbox.run_with_timeout`), a small progress JSON
written atomically every ``flush_batch_size`` items and at the end (so a second run skips
what is done), and buffered logs. ``serial=True`` keeps the plain in-process loop.

Rows are drawn by the fast engine by default: each worker process keeps the figure's
layout (axes, colour bars, labels: :mod:`fastspectro_dask.draw`) and writes every panel
as a raster straight into its pixels, from the same cell geometry as the reference
drawing (:func:`~fastspectro_dask.render.make_spectrogram`, ``engine="reference"``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap
from matplotlib.ticker import AutoLocator, ScalarFormatter

from fastspectro_dask.atomic import StateLock, atomic_write_json, load_json_state
from fastspectro_dask.config import RunConfig
from fastspectro_dask.errors import error_reason
from fastspectro_dask.geometry import _UTC, DEFAULT_GAP_FACTOR, _panel_geometry
from fastspectro_dask.output import _software
from fastspectro_dask.render import (
    DEFAULT_COMPRESS_LEVEL,
    DEFAULT_DPI,
    DEFAULT_Y_LABEL,
    _check_scale,
    _grid_axes,
    _grid_geometry,
    _keep_slivers_visible,
    _new_figure,
    _PlottingErrors,
    make_spectrogram,
    save_figure,
)

__all__ = ["PROGRESS_SCHEMA", "generic_batch_plot"]

logger = logging.getLogger(__name__)

#: The ``schema`` of the generic progress JSON (its ``version`` is :data:`PROGRESS_VERSION`).
PROGRESS_SCHEMA = "fastspectro_dask.generic-progress"
PROGRESS_VERSION = 1
#: Render engines of :func:`generic_batch_plot`.
ENGINES = ("fast", "reference")

_DATASET_KEYS = {
    "x",
    "y",
    "z",
    "y_label",
    "z_label",
    "vmin",
    "vmax",
    "y_min",
    "y_max",
    "label",
    "durations",
}


def _safe_name(item: Any) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(item)).strip("._")
    return name or "item"


# --------------------------------------------------------------------------------------
# One item: build its datasets, draw, save (in the sandbox child, or in-process)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    """How every figure of a batch is drawn and saved."""

    y_scale: str
    z_scale: str
    colormap: str | Colormap | None
    figsize: tuple[float, float] | None
    dpi: float
    compress_level: int
    percentile: tuple[float, float]
    engine: str


def _checked_datasets(item: Any, datasets: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = list(datasets)
    for i, d in enumerate(out):
        missing = {"x", "y", "z"} - set(d)
        unknown = set(d) - _DATASET_KEYS
        if missing or unknown:
            raise ValueError(
                f"item {item!r}, dataset {i}: "
                + (f"missing {sorted(missing)} " if missing else "")
                + (f"unknown keys {sorted(unknown)}" if unknown else "")
            )
    return out


def _row_options(d: Mapping[str, Any], style: _Style) -> dict[str, Any]:
    """A row's limits, scales, colours and durations, as both drawings take them."""
    return {
        "vmin": d.get("vmin"),
        "vmax": d.get("vmax"),
        "percentile": style.percentile,
        "y_scale": style.y_scale,
        "z_scale": style.z_scale,
        "y_min": d.get("y_min"),
        "y_max": d.get("y_max"),
        "colormap": style.colormap,
        "durations": d.get("durations"),
    }


def _render_item(
    build_datasets_fn: Callable[[Any], Sequence[Mapping[str, Any]]],
    title_fn: Callable[[Any], str] | None,
    item: Any,
    path: str | os.PathLike,
    style: _Style,
) -> dict[str, Any]:
    """Build one item's datasets, draw its figure and save it; returns a small report.

    Errors of ``build_datasets_fn`` and bad dataset dicts (ValueError) propagate
    unchanged; errors while drawing or saving become PlottingError naming the item
    (divide-by-zero errors unchanged).
    """
    t0 = time.perf_counter()
    datasets = _checked_datasets(item, build_datasets_fn(item))
    n = max(len(datasets), 1)
    size = style.figsize or (12.0, 1.15 + 2.1 * n)
    _grid_geometry(size, n, 0)
    with _PlottingErrors(f"generic_batch_plot item {item!r}"):
        title = title_fn(item) if title_fn else str(item)
        fig = None
        if style.engine == "fast":
            fig = _draw_fast(datasets, title, size, style)
        if fig is None:
            fig = _draw_reference(datasets, title, size, style)
        written = save_figure(fig, path, dpi=style.dpi, compress_level=style.compress_level)
    logger.debug("generic_batch_plot: item %r -> %s", item, written)
    return {"path": str(written), "seconds": time.perf_counter() - t0}


def _draw_reference(
    datasets: Sequence[Mapping[str, Any]], title: str, size: tuple[float, float], style: _Style
):
    """A fresh matplotlib figure, one :func:`make_spectrogram` per row (the reference)."""
    fig = _new_figure(size, style.dpi, None)
    try:
        mains, _, caxes = _grid_axes(fig, max(len(datasets), 1), 0, None)
        for i, (ax, cax, d) in enumerate(zip(mains, caxes, datasets, strict=False)):
            label = str(d.get("label", f"row{i}"))
            ax.set_label(label)
            if "label" in d:
                ax.set_title(label, loc="left", fontsize="medium", y=1.0)
            meshes = make_spectrogram(
                ax,
                d["x"],
                d["y"],
                d["z"],
                **_row_options(d, style),
                y_label=d.get("y_label", DEFAULT_Y_LABEL),
                z_label=d.get("z_label"),
                cax=cax,
            )
            if not meshes:
                cax.set_visible(False)
        if datasets:
            lo = min(ax.get_xlim()[0] for ax in mains)
            hi = max(ax.get_xlim()[1] for ax in mains)
            for ax in mains:
                ax.set_xlim(lo, hi)
                _keep_slivers_visible(ax)
        fig.suptitle(title)
    except BaseException:
        fig.clear()
        raise
    return fig


# --------------------------------------------------------------------------------------
# The fast engine for generic rows (draw.py's layouts and raster panels)
# --------------------------------------------------------------------------------------

#: The reference layout's bottom margin (inches), as its grid uses it by default.
_BOTTOM = float(inspect.signature(_grid_axes).parameters["bottom"].default)


def _named_colormap(colormap: str | Colormap | None) -> bool:
    """Whether the layout can name the colormap (a cached layout is keyed by names)."""
    if colormap is None or isinstance(colormap, str):
        return True
    return colormaps.get(colormap.name) is colormap


def _draw_fast(
    datasets: Sequence[Mapping[str, Any]], title: str, size: tuple[float, float], style: _Style
):
    """The figure drawn by the engine (:class:`~fastspectro_dask.draw.RasterFigure`), or
    ``None`` where the reference drawing serves the item: no rows, a row with nothing to
    draw, rows that mix datetime and numeric times, or an unnamed colormap object."""
    from fastspectro_dask import draw

    if not datasets or not _named_colormap(style.colormap):
        return None
    panels = []
    for d in datasets:
        panel = _panel_geometry(
            d["x"],
            d["y"],
            d["z"],
            **_row_options(d, style),
            norm=None,
            gap_factor=DEFAULT_GAP_FACTOR,
            time_axis=None,
        )
        if panel.norm is None:
            return None
        panels.append(panel)
    if len({p.dates for p in panels}) > 1:
        return None
    specs = tuple(
        draw._RowSpec(
            str(d.get("label", f"row{i}")),
            str(d["label"]) if "label" in d else "",
            "data",
            style.y_scale,
            (p.y_lo, p.y_hi),
            d.get("y_label", DEFAULT_Y_LABEL),
            None,
            d.get("z_label"),
            (type(p.norm).__name__, float(p.norm.vmin), float(p.norm.vmax)),
            p.cmap.name,
        )
        for i, (d, p) in enumerate(zip(datasets, panels, strict=True))
    )
    size = (float(size[0]), float(size[1]))
    key = ("generic", specs, size, float(style.dpi), _BOTTOM)
    layout = draw._layout(key, specs, size, float(style.dpi), _BOTTOM, ())
    canvas = layout.fig.canvas
    canvas.restore_region(layout.background)
    buf = np.asarray(canvas.buffer_rgba())
    lo = min(float(p.left.min()) for p in panels)
    hi = max(float(p.right.max()) for p in panels)
    _x_axis(layout.mains[0], panels[0].dates)  # the rows share x: ticker and limits
    layout.mains[0].set_xlim(lo, hi)
    for ax, panel in zip(layout.mains, panels, strict=True):
        rs, cs, xs, ys = draw._pixel_centres(ax, layout.height)
        rgba = draw.panel_rgba(panel, xs, ys, (hi - lo) / ax.bbox.width)
        region = buf[rs, cs]
        drawn = rgba[..., 3] > 0
        region[drawn] = rgba[drawn]
    for sp in layout.spines:
        sp.axes.draw_artist(sp)
    for ax in layout.mains:
        ax.tick_params(labelbottom=True)  # every row of the reference shows its time labels
        ax.draw_artist(ax.xaxis)
    layout.title.set_text(title)
    layout.fig.draw_artist(layout.title)
    texts = {
        "title": title,
        "row_titles": [ax.get_title(loc="left") for ax in layout.mains],
        "xticklabels": [[t.get_text() for t in ax.get_xticklabels()] for ax in layout.mains],
        "xlim": layout.mains[0].get_xlim(),
        "ylims": [ax.get_ylim() for ax in layout.mains],
        "ylabels": [ax.get_ylabel() for ax in layout.mains],
        "clims": [(float(p.norm.vmin), float(p.norm.vmax)) for p in panels],
    }
    return draw.RasterFigure(
        np.array(buf, copy=True), {"Software": _software()}, float(style.dpi), None, texts
    )


def _x_axis(ax: Any, dates: bool) -> None:
    """The time axis's ticker as the reference drawing sets it (UT dates, or numbers)."""
    if dates:
        locator = mdates.AutoDateLocator(tz=_UTC, minticks=4, maxticks=9)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=_UTC))
    else:
        ax.xaxis.set_major_locator(AutoLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())


# --------------------------------------------------------------------------------------
# Progress: the small resume file of a batch
# --------------------------------------------------------------------------------------


class _Progress:
    """Completed items and errors per scale combination, in a small JSON file.

    ``{"schema": PROGRESS_SCHEMA, "version": 1, "<y>_<z>": {"completed": [names],
    "errors": {reason: {name: message}}}}``, written with
    :func:`~fastspectro_dask.atomic.atomic_write_json` every ``flush_batch_size``
    recorded items (:meth:`maybe_flush`) and by :meth:`flush`. The caller holds the
    file's :class:`~fastspectro_dask.atomic.StateLock`.
    """

    def __init__(self, path: Path, y_scale: str, z_scale: str, flush_batch_size: int) -> None:
        self.path = path
        self.scales = f"{y_scale}_{z_scale}"
        self.flush_batch_size = flush_batch_size
        self.writes = 0
        self._pending = 0
        state = load_json_state(path, kind="generic progress")
        if state is not None and state.get("schema") != PROGRESS_SCHEMA:
            raise ValueError(
                f"{path} is not a generic_batch_plot progress file (schema "
                f"{state.get('schema')!r}); give another progress_json"
            )
        self.state: dict[str, Any] = state or {"schema": PROGRESS_SCHEMA}
        self.state["version"] = PROGRESS_VERSION
        own = self.state.setdefault(self.scales, {})
        self.completed: set[str] = set(own.get("completed", []))
        self.errors: dict[str, dict[str, str]] = {
            r: dict(v) for r, v in own.get("errors", {}).items()
        }

    def reset(self) -> None:
        """Forget this scale combination's progress (a fresh pass)."""
        self.completed.clear()
        self.errors.clear()
        self._pending += 1

    def _forget_error(self, name: str) -> None:
        for names in self.errors.values():
            names.pop(name, None)
        self.errors = {r: v for r, v in self.errors.items() if v}

    def record_success(self, name: str) -> None:
        self._forget_error(name)
        self.completed.add(name)
        self._pending += 1
        self.maybe_flush()

    def record_error(self, name: str, reason: str, message: str) -> None:
        self._forget_error(name)
        self.completed.discard(name)
        self.errors.setdefault(reason, {})[name] = message
        self._pending += 1
        self.maybe_flush()

    def maybe_flush(self) -> None:
        if self._pending >= self.flush_batch_size:
            self.flush()

    def flush(self) -> None:
        """Write the file when something changed since the last write."""
        if not self._pending:
            return
        self.state[self.scales] = {
            "completed": sorted(self.completed),
            "errors": {r: dict(sorted(v.items())) for r, v in sorted(self.errors.items())},
        }
        atomic_write_json(self.path, self.state)
        self.writes += 1
        self._pending = 0


# --------------------------------------------------------------------------------------
# The Dask task
# --------------------------------------------------------------------------------------


def _render_blobs(blobs: tuple[bytes, bytes]) -> dict[str, Any]:
    """In the sandbox child: :func:`_render_item` of the batch's functions and one item
    (``(build_datasets_fn, title_fn)`` and ``(item, path, style)``, cloudpickled: user
    functions may be lambdas, which plain pickle, the sandbox's, cannot carry)."""
    import cloudpickle

    build_datasets_fn, title_fn = cloudpickle.loads(blobs[0])
    item, path, style = cloudpickle.loads(blobs[1])
    return _render_item(build_datasets_fn, title_fn, item, path, style)


def _run_item(fn_blob: bytes, item_blob: bytes, timeout: float | None, tag: str) -> dict[str, Any]:
    """The Dask task: one item in this worker's sandbox child, stopped after ``timeout``."""
    from fastspectro_dask.render_task import _render_logged
    from fastspectro_dask.sandbox import run_with_timeout

    blobs = (fn_blob, item_blob)
    return run_with_timeout(_render_logged, _render_blobs, blobs, timeout=timeout, tag=tag)


@dataclass(frozen=True)
class _Planned:
    """One item of the batch on the client: its position, name and figure path."""

    index: int
    name: str
    path: Path


def _log_failure(planned: _Planned, reason: str, exc: BaseException) -> None:
    from fastspectro_dask.render_task import log_notes as _log_notes

    for level, line in _log_notes(exc):
        logger.log(level, "worker: %s", line)
    logger.error(
        "generic_batch_plot item %s: %s (%s: %s)", planned.name, reason, type(exc).__name__, exc
    )
    remote_tb = getattr(exc, "__remote_traceback__", None)
    if remote_tb:  # the log file keeps the detail; the terminal, one line
        logger.info(
            "generic_batch_plot item %s: traceback in the sandbox:\n%s",
            planned.name,
            str(remote_tb).rstrip(),
        )


def _stop_inflight(client: Any, loop: Any) -> None:
    """After an exception in the client (e.g. Ctrl-C): cancel the tasks in flight and
    kill their sandbox children, so nothing is written after the run ended."""
    from fastspectro_dask.pipeline import _stop_renders

    keys = list(loop.inflight)
    if not keys:
        return
    with contextlib.suppress(Exception):
        client.cancel([f for _t, f in loop.inflight.values()])
    _stop_renders(client, keys)


def _run_on_dask(
    client: Any,
    planned: Iterator[tuple[_Planned, Any]],
    progress: _Progress,
    *,
    fn_blob: bytes,
    style: _Style,
    timeout: float | None,
    window: int | None,
    written: dict[int, Path],
) -> int:
    """Every planned item through the scheduling loop; outcomes into ``progress`` and
    ``written``. Returns the number of items that failed."""
    import cloudpickle

    from fastspectro_dask.schedule import Task, TaskLoop

    failed = 0

    run_id = f"{os.getpid()}-{time.monotonic_ns()}"
    loop = TaskLoop(
        client,
        _run_item,
        window=window,
        on_exit=progress.flush,  # the final flush, whatever ends the loop
        phase="generic_batch_plot",
    )

    def failure(p: _Planned, exc: BaseException) -> None:
        nonlocal failed
        failed += 1
        reason = error_reason(exc)
        progress.record_error(p.name, reason, f"{type(exc).__name__}: {exc}")
        _log_failure(p, reason, exc)

    def tasks() -> Iterator[Task]:
        for k, (p, item) in enumerate(planned):
            key = f"generic-{_safe_name(p.name)[:60]}-{run_id}-{k}"
            try:
                item_blob = cloudpickle.dumps((item, str(p.path), style))
            except Exception as exc:  # an item that cannot travel fails alone
                failure(p, exc)
                continue
            yield Task(key, (fn_blob, item_blob, timeout, key), p)

    def handle(task: Task, result: Any, exc: BaseException | None) -> None:
        p: _Planned = task.item
        if exc is not None:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise exc
            failure(p, exc)
            return
        for level, line in result.get("log", ()):
            logger.log(level, "worker: %s", line)
        written[p.index] = Path(result["path"])
        progress.record_success(p.name)
        logger.info("generic_batch_plot item %s written in %.2f s", p.name, result["seconds"])

    try:
        loop.run(tasks(), handle)
    except BaseException:
        _stop_inflight(client, loop)
        raise
    return failed


# --------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """The user's functions, the output folder and the style of a batch."""

    build_datasets_fn: Callable[[Any], Sequence[Mapping[str, Any]]]
    title_fn: Callable[[Any], str] | None
    filename_fn: Callable[[Any], str] | None
    out_dir: Path
    style: _Style

    def path_of(self, item: Any) -> tuple[str, Path]:
        """The item's name (``filename_fn`` or file-name safe ``str``) and figure path."""
        name = self.filename_fn(item) if self.filename_fn else _safe_name(item)
        return name, self.out_dir / f"{name}_y-{self.style.y_scale}_z-{self.style.z_scale}.png"

    def render(self, item: Any) -> Path:
        """Draw and save one item in this process (``serial=True``); errors propagate."""
        _name, path = self.path_of(item)
        result = _render_item(self.build_datasets_fn, self.title_fn, item, path, self.style)
        return Path(result["path"])


def generic_batch_plot(
    items: Iterable[Any],
    build_datasets_fn: Callable[[Any], Sequence[Mapping[str, Any]]],
    output_dir: str | os.PathLike,
    *,
    y_scale: str = "linear",
    z_scale: str = "log",
    colormap: str | Colormap | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = DEFAULT_DPI,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    percentile: tuple[float, float] = (1.0, 99.0),
    filename_fn: Callable[[Any], str] | None = None,
    title_fn: Callable[[Any], str] | None = None,
    client: Any = None,
    max_workers: int | None = None,
    item_timeout_seconds: float | None = None,
    flush_batch_size: int | None = None,
    progress_json: str | os.PathLike | None = None,
    ignore_progress_json: bool = False,
    engine: str | None = None,
    serial: bool = False,
) -> list[Path]:
    """Render one figure per item, one spectrogram row per dataset dict, and save them.

    By default every item is a Dask task (on ``client``, or on a local cluster made for
    the batch) whose work runs in its worker's sandbox child, stopped after
    ``item_timeout_seconds``; a failing item is recorded under its error category
    (``timeout``, ``plotting``, ``divide-by-zero``, ``generic``, ``worker-lost``) in the
    progress JSON, logged in one line, and does not stop the others. Items completed by an
    earlier run (recorded in the progress JSON, figure on disk) are skipped. Settings left
    ``None`` come from the dask config ``fastspectro.*`` (defaults in brackets, from the
    packaged ``fastspectro.yaml``).

    Parameters
    ----------
    items : iterable
        Anything; each is passed to ``build_datasets_fn``. With Dask, items (and the
        functions below) travel to the workers with cloudpickle, so lambdas work.
    build_datasets_fn : callable
        ``item -> [dict, ...]``, each dict with ``x`` (times), ``y`` (energies, 1-D or
        per record), ``z`` (values, (time, energy)) and optionally ``y_label``,
        ``z_label``, ``vmin``, ``vmax``, ``y_min``, ``y_max``, ``label`` and
        ``durations`` (per-record accumulation lengths, see :func:`make_spectrogram`).
        It runs inside the item's task, on the worker.
    output_dir : str or os.PathLike
        Figures go to ``{output_dir}/{name}_y-{y}_z-{z}.png``, ``name`` from
        ``filename_fn(item)`` or ``str(item)`` (made file-name safe); logs of a Dask run
        to ``{output_dir}/logs/``.
    y_scale, z_scale, colormap, percentile
        As for :func:`make_spectrogram`.
    figsize, dpi, compress_level
        Figure size (default 12 wide, 2.1 inches per row) and the PNG's zlib level
        (both engines).
    filename_fn, title_fn : callable, optional
        File name stem and figure title per item (default ``str(item)``).
    client : distributed.Client, optional
        Run on this cluster; by default a local cluster of ``max_workers`` processes is
        made for the batch and closed at the end.
    max_workers : int, optional
        Worker processes of that local cluster [cores].
    item_timeout_seconds : float, optional
        Bound on one item (building its datasets, drawing, saving), from the moment its
        sandbox child is ready; the work is stopped [``instrument-timeout-seconds``,
        120]; ``math.inf``: no bound.
    flush_batch_size : int, optional
        Write the progress JSON every this many finished items, and at the end [10].
    progress_json : str or os.PathLike, optional
        The progress file [``{output_dir}/generic-progress.json``]; a second run on it at
        the same time is refused (:class:`~fastspectro_dask.atomic.StateLockedError`).
    ignore_progress_json : bool
        Forget earlier progress of this scale combination: render every item again.
    engine : {"fast", "reference"}, optional
        ``fast``: cached layouts, raster panels (:mod:`fastspectro_dask.draw`; items with
        no rows, a row without data, mixed datetime and numeric times or an unnamed
        colormap object are drawn by the reference); ``reference``: a fresh matplotlib
        figure per item [fast].
    serial : bool
        Draw in this process, one item after the other, without Dask, progress file or
        timeouts; errors propagate (see Raises).

    Returns
    -------
    list of pathlib.Path
        The figures of the items completed (in this run or an earlier one), in item order.

    Raises
    ------
    ValueError
        Bad settings; with ``serial=True`` also a dataset dict without ``x``/``y``/``z``
        or with unknown keys.
    PlottingError
        ``serial=True``: drawing or saving an item failed (chained; the message names the
        item). ZeroDivisionError and FloatingPointError propagate unchanged, as do the
        errors of ``build_datasets_fn``.
    NoWorkersError
        No Dask worker left or coming for the configured wait (progress saved first).
    """
    _check_scale("y_scale", y_scale)
    _check_scale("z_scale", z_scale)
    cfg = RunConfig.resolve(
        flush_batch_size=flush_batch_size,
        max_workers=max_workers,
        instrument_timeout_seconds=item_timeout_seconds,
        engine=engine,
    )
    style = _Style(
        y_scale,
        z_scale,
        colormap,
        figsize,
        float(dpi),
        int(compress_level),
        tuple(percentile),
        cfg.style.engine,
    )
    batch = _Batch(build_datasets_fn, title_fn, filename_fn, Path(output_dir), style)
    if serial:
        return [batch.render(item) for item in items]
    return _batch_on_dask(
        batch,
        items,
        cfg,
        client=client,
        progress_json=Path(progress_json or batch.out_dir / "generic-progress.json"),
        ignore_progress_json=ignore_progress_json,
    )


def _batch_on_dask(
    batch: _Batch,
    items: Iterable[Any],
    cfg: RunConfig,
    *,
    client: Any,
    progress_json: Path,
    ignore_progress_json: bool,
) -> list[Path]:
    """:func:`generic_batch_plot` through the scheduling loop; see there."""
    import cloudpickle

    from fastspectro_dask.cluster import client_context
    from fastspectro_dask.logbuffer import buffered_file_logging

    fn_blob = cloudpickle.dumps((batch.build_datasets_fn, batch.title_fn))
    out_dir, style = batch.out_dir, batch.style
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[int, Path] = {}
    skipped = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(StateLock(progress_json))  # a second run at once is refused
        stack.enter_context(buffered_file_logging(out_dir / "logs", capacity=cfg.log_batch))
        progress = _Progress(progress_json, style.y_scale, style.z_scale, cfg.flush_batch_size)
        stack.callback(progress.flush)  # also when the cluster cannot be made
        if ignore_progress_json:
            progress.reset()

        def planned() -> Iterator[tuple[_Planned, Any]]:
            nonlocal skipped
            for k, item in enumerate(items):
                name, path = batch.path_of(item)
                if name in progress.completed and path.exists():
                    written[k] = path
                    skipped += 1
                    continue
                yield _Planned(k, name, path), item

        dask_client = stack.enter_context(client_context(client, max_workers=cfg.max_workers))
        failed = _run_on_dask(
            dask_client,
            planned(),
            progress,
            fn_blob=fn_blob,
            style=style,
            timeout=cfg.instrument_timeout_seconds,
            window=cfg.window,
            written=written,
        )
        progress.flush()
        logger.info(
            "generic_batch_plot: %d figure(s) written, %d done by an earlier run, %d failed; "
            "progress JSON written %d time(s)",
            len(written) - skipped,
            skipped,
            failed,
            progress.writes,
        )
    return [written[k] for k in sorted(written)]
