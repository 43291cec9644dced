"""The batch pipeline: every orbit's figures on Dask, resumable, with timeouts that stop work.

:func:`FAST_plot_spectrograms_directory` runs, in order:

1. discovery of the input folder (orbit -> instrument -> file);
2. the exact global extrema (:func:`~fastspectro_dask.extrema.compute_global_extrema`),
   reusing a current extrema JSON, which also fills the zarr cache of reduced spectrograms;
3. the figures of each (orbit, product) — the instrument grid (``instruments``), one
   pitch-angle grid per instrument (``pa-ees``, ...), the pitch-angle distribution
   (``pad``) — one Dask task per orbit (per figure at the run's tail, to spread the last
   orbits over the workers), submitted through a **bounded window** of futures, so client
   memory and graph size stay flat for any number of orbits;
4. an ``as_completed`` loop on the client that handles results in batches, records each
   outcome in the progress JSON (flushed every ``flush_batch_size`` completed orbits, and
   every ``flush_interval_seconds``), writes buffered logs every ``log_flush_batch_size``
   records, and flushes both at the end, on exceptions and on SIGINT/SIGTERM.

Each render runs in a persistent child process of its worker (:mod:`fastspectro_dask.sandbox`)
so that ``instrument_timeout_seconds`` (from the moment the figure's sandbox child is ready:
a fresh child's start-up after a killed figure is not counted) and ``orbit_timeout_seconds``
(from the start on a worker of the orbit's first task: time waiting for a worker is not
counted) really stop the work and free the worker.
On SIGINT/SIGTERM the renders in flight are cancelled and their sandbox children killed;
figures they wrote before that are counted (the summary counts what is on disk).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any

from fastspectro_dask.cluster import client_context
from fastspectro_dask.config import PRODUCTS, RunConfig
from fastspectro_dask.discovery import discover
from fastspectro_dask.errors import (
    InvalidCDFError,
    NoWorkersError,
    error_reason,
)
from fastspectro_dask.extrema import compute_global_extrema, extrema_for_rows
from fastspectro_dask.logbuffer import (
    buffered_file_logging,
    forward_worker_logs,
    unforward_worker_logs,
)
from fastspectro_dask.render_task import RenderJob, render_job, run_job
from fastspectro_dask.render_task import log_notes as _log_notes
from fastspectro_dask.sandbox import stop_calls
from fastspectro_dask.schedule import call_each, group_elapsed, outcomes
from fastspectro_dask.state import (
    ProgressStore,
    StateLock,
    file_fingerprint,
    remove_stale_temporaries,
)

__all__ = ["PRODUCTS", "FAST_plot_spectrograms_directory", "RunSummary"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# The render task (the work itself is in fastspectro_dask.render_task)
# --------------------------------------------------------------------------------------


def _run_jobs(
    jobs: Sequence[RenderJob],
    instrument_timeout: float | None,
    orbit_timeout: float | None,
    render_fn: Callable[[RenderJob], dict[str, Any]] = render_job,
    tag: str | None = None,
    orbit_group: str | None = None,
) -> list[dict[str, Any] | Exception]:
    """The Dask task: figures of one orbit, one after the other, each rendered by
    :func:`~fastspectro_dask.render_task.run_job` in the sandbox with its own timeout;
    each one's report, or its error, in order.

    One task for several figures costs the scheduler, the workers and the client one
    task's handling instead of one per figure. Timeouts count from the start on a worker,
    never from the submission: the instrument timeout from the moment the sandbox child is
    ready for the figure, the orbit timeout from this task's start, or, when the orbit is
    split over several tasks, from the start on a worker of its first task
    (``orbit_group``, on the scheduler's :class:`~fastspectro_dask.schedule.OrbitClock`).
    ``tag`` (the task key) lets the client stop the render when it cancels the task
    (:func:`~fastspectro_dask.sandbox.stop_calls`); the figures not started by then are
    refused.
    """
    t0 = time.monotonic()

    def elapsed() -> float:
        if orbit_group is None:
            return time.monotonic() - t0
        return group_elapsed(orbit_group)

    # each figure's error its own: the orbit's other figures go on
    args = (instrument_timeout, orbit_timeout, render_fn, tag, elapsed)
    return call_each(run_job, [(job, *args) for job in jobs])


# --------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------


class _Signals:
    """SIGINT/SIGTERM: the first asks to stop, the second exits at once."""

    def __init__(self, install: bool) -> None:
        self.install = install and threading.current_thread() is threading.main_thread()
        self.stop = threading.Event()
        self.received: int | None = None
        self.raise_now = False  # raise KeyboardInterrupt at the first signal (extrema phase)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.stop.is_set():
            self.restore()
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.received = signum
        self.stop.set()
        if self.raise_now:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        logger.warning(
            "%s received: stopping submission, cancelling work in flight and "
            "flushing state (send it again to exit at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> _Signals:
        if self.install:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self.restore()


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did."""

    scales: str = ""  # "y-linear z-log"
    orbits_total: int = 0
    orbits_skipped: int = 0  # already done in an earlier run
    orbits_processed: int = 0
    orbits_completed: int = 0
    figures_written: int = 0
    figures_existing: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # reason -> (orbit, instrument) count
    wall_seconds: float = 0.0
    interrupted: bool = False
    signal: str | None = None
    output_dir: str = ""
    progress_json: str = ""
    extrema_json: str = ""
    log_file: str = ""
    dashboard_link: str | None = None
    progress_writes: int = 0  # progress JSON writes of this run
    log_writes: int = 0  # buffered log flushes that wrote records
    log_records: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the resolved settings (to_dict)

    @property
    def figures_per_second(self) -> float:
        return self.figures_written / self.wall_seconds if self.wall_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "figures_per_second": self.figures_per_second}


def _start_time(index, orbit: int):
    return min(index.start_times[(orbit, i)] for i in index[orbit])


def _progress_bar(total: int, enabled: bool | None):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="orbit",
        desc="orbits",
        dynamic_ncols=True,
        disable=(not sys.stderr.isatty()) if enabled is None else not enabled,
    )


def FAST_plot_spectrograms_directory(
    input_dir: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    flush_batch_size: int | None = None,
    log_flush_batch_size: int | None = None,
    max_workers: int | None = None,
    orbit_timeout_seconds: float | None = None,
    instrument_timeout_seconds: float | None = None,
    ignore_progress_json: bool | None = None,
    max_processing_percentile: float | None = None,
    y_scale: str | None = None,
    z_scale: str | None = None,
    *,
    config: RunConfig | None = None,
    instrument_order: Sequence[str] | None = None,
    flush_interval_seconds: float | None = None,
    variable: str | None = None,
    client: Any = None,
    install_signal_handlers: bool = True,
    overwrite: bool | None = None,
    progress_json_path: str | os.PathLike[str] | None = None,
    extrema_json_path: str | os.PathLike[str] | None = None,
    categories: Mapping[str, Any] | None = None,
    products: Sequence[str] | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    window: int | None = None,
    progress_bar: bool | None = None,
    render_fn: Callable[[RenderJob], dict[str, Any]] | None = None,
    directory_path: str | os.PathLike[str] | None = None,
    output_base: str | os.PathLike[str] | None = None,
    retrace: bool | None = None,
    squeeze_gaps_minutes: float | None = None,
    pad_energy: tuple[float, float] | None = None,
    pad_shift90: bool | None = None,
    engine: str | None = None,
    dpi: float | None = None,
    figsize: tuple[float, float] | None = None,
    figure_format: str | None = None,
) -> RunSummary:
    """Plot every orbit of a folder of FAST ESA L2 files, on Dask; resumable.

    Every setting left ``None`` (not given) comes from ``config``, by default from the dask
    config ``fastspectro.*``: the packaged ``fastspectro.yaml`` defaults (shown in
    brackets below), the user's dask config files and ``DASK_FASTSPECTRO__*`` environment
    variables (:class:`fastspectro_dask.config.RunConfig`). All of them are validated
    before any cluster, file or folder is touched.

    Parameters
    ----------
    input_dir : path-like
        Folder of CDF files (any layout). ``directory_path`` is an alias.
    output_dir : path-like
        Where figures go (``{YYYY}/{MM}/{orbit}/{orbit}_{product}_y-{y}_z-{z}.png``) and,
        by default, ``progress.json``, ``extrema.json``, ``logs/`` and ``reduced.zarr``.
        ``output_base`` is an alias.
    flush_batch_size : int
        Write the progress (and extrema) JSON every this many completed orbits; at most
        ``flush_batch_size - 1`` finished orbits are lost to a SIGKILL [10].
    log_flush_batch_size : int, optional
        Write buffered log records every this many records [``flush_batch_size``].
    max_workers : int, optional
        Workers of the local cluster made when no ``client`` is given [cores].
    orbit_timeout_seconds : float
        Bound on all of an orbit's figures, from the start of its first one on a
        worker (time waiting for a worker, e.g. in a batch queue, is not counted) [600];
        ``math.inf`` (or ``null`` in the config): no bound.
    instrument_timeout_seconds : float
        Bound on one figure, from the moment its sandbox child is ready for it (the
        start-up of a fresh child is not counted) [120]; ``math.inf``: no bound.
    ignore_progress_json : bool
        Forget earlier progress of this scale combination: a fresh pass [False].
    max_processing_percentile : float
        Percentile of the colour-scale maximum (exact, mission-wide) [95.0].
    y_scale, z_scale : {"linear", "log"}
        Axis scales of energy and colour [linear, log].
    config : RunConfig, optional
        The settings to start from instead of the dask config; the arguments above and
        below still override them.
    instrument_order : sequence of str
        Instruments, in row order [ees, eeb, ies, ieb].
    flush_interval_seconds : float, optional
        Also write the progress JSON this often when something changed [never].
    variable : {"data", "eflux", "rate"}
        Counts or calibrated energy flux [data].
    client : distributed.Client, optional
        Run on this cluster; by default a LocalCluster of processes (one thread each) is
        made and closed at the end.
    install_signal_handlers : bool
        Handle SIGINT/SIGTERM: stop submitting, cancel work in flight, flush, restore the
        previous handlers; a second signal exits at once.
    overwrite : bool
        Re-render figures that already exist [False].
    progress_json_path, extrema_json_path, cache_path : path-like, optional
        Move the state files.
    categories : mapping, optional
        Pitch-angle categories [``reduce.DEFAULT_CATEGORIES``].
    products : sequence of {"instruments", "pitch-angle", "pad"}
        Which figures to make [all three].
    window : int, optional
        At most this many render tasks in flight [no bound]: the window follows the
        cluster's current worker threads (``2 * threads + 32``, re-read as workers come
        and go). The dask config ``fastspectro.worker-wait`` (seconds, default 180; CLI
        ``--worker-wait``) ends the run with :class:`~fastspectro_dask.errors.NoWorkersError`
        when no worker is connected and no job pending for that long.
    progress_bar : bool, optional
        Show a tqdm progress bar [only when stderr is a terminal].
    render_fn : callable, optional
        Module-level function ``(RenderJob) -> report`` that draws one figure (default
        :func:`fastspectro_dask.render_task.render_job`); for custom products and for tests.
    pad_energy : (lo, hi), optional
        Energy window in eV of the ``pad`` product [all valid channels, the retrace
        channel dropped unless ``retrace``]; as ``fa_esa_l2_pad``'s ``energy=``.
    pad_shift90 : bool
        Draw the ``pad`` product over -90..270 deg, so 0 and 180 deg are off the edges
        [False].
    engine : {"fast", "reference"}
        ``fast``: layouts built once per worker process, panels as rasters
        (:mod:`fastspectro_dask.draw`); ``reference``: a fresh matplotlib figure per figure,
        pcolormesh panels (slow; the fidelity reference) [fast].
    dpi : float
        Dots per inch of the figures [100].
    figsize : (width, height), optional
        Inches [12 wide and 2.1 per row].
    figure_format : {"png", "pdf", "svg"}
        File format; vector formats embed the raster panels and keep text as text [png].
    squeeze_gaps_minutes : float
        Data gaps longer than this (minutes) are cut out of every figure's UT axis and
        drawn as narrow breaks [5]; 0 keeps one axis from the first to the last record.
        With an orbit's ``fa_k0_orb`` file in the folder, ALT/ILAT/MLT label rows sit
        under the UT tick labels.
    retrace : bool
        Keep energy channel 0, the sweep's high-voltage retrace step, in the figures and
        the extrema. By default it is dropped, as the FAST user guide advises [False].

    Returns
    -------
    RunSummary
        Counts per outcome, figures written, wall time; ``interrupted`` after a signal.
    """
    t_start = time.perf_counter()
    input_dir = _alias(input_dir, directory_path, "input_dir", "directory_path")
    output_dir = _alias(output_dir, output_base, "output_dir", "output_base")
    # every setting, validated before anything is touched
    cfg = RunConfig.resolve(
        config,
        flush_batch_size=flush_batch_size,
        log_flush_batch_size=log_flush_batch_size,
        max_workers=max_workers,
        orbit_timeout_seconds=orbit_timeout_seconds,
        instrument_timeout_seconds=instrument_timeout_seconds,
        ignore_progress_json=ignore_progress_json,
        max_processing_percentile=max_processing_percentile,
        y_scale=y_scale,
        z_scale=z_scale,
        instrument_order=instrument_order,
        flush_interval_seconds=flush_interval_seconds,
        variable=variable,
        overwrite=overwrite,
        categories=categories,
        products=products,
        window=window,
        progress_bar=progress_bar,
        retrace=retrace,
        squeeze_gaps_minutes=squeeze_gaps_minutes,
        pad_energy=pad_energy,
        pad_shift90=pad_shift90,
        engine=engine,
        dpi=dpi,
        figsize=figsize,
        figure_format=figure_format,
    )
    out, progress_path, extrema_path, cache_dir = _state_paths(
        output_dir, progress_json_path, extrema_json_path, cache_path
    )
    summary = RunSummary(
        scales=f"y-{cfg.style.y_scale} z-{cfg.style.z_scale}",
        config=cfg.to_dict(),
        output_dir=str(out),
        progress_json=str(progress_path),
        extrema_json=str(extrema_path),
    )
    with contextlib.ExitStack() as stack:
        store, logs = _open_state(stack, cfg, out, progress_path, extrema_path, summary)
        signals = stack.enter_context(_Signals(install_signal_handlers))
        dask_client = _connect(stack, cfg, client, summary, input_dir, out)
        if cfg.ignore_progress_json:
            store.reset()
        index, todo = _discover_todo(input_dir, cfg, store, summary)
        if todo:
            opts = _Options(
                config=cfg,
                input_dir=input_dir,
                out=out,
                extrema_path=extrema_path,
                cache_dir=cache_dir,
                render_fn=render_fn or render_job,
            )
            _extrema_then_render(opts, summary, store, signals, dask_client, index, todo)
        else:
            logger.info("nothing to do: all %d orbits are done", summary.orbits_total)
        _finish_run(summary, store, signals, t_start)
    # the state store and the log buffer are flushed and closed: count what they wrote
    summary.progress_writes = store.writes
    summary.log_writes, summary.log_records = logs.flushes, logs.records_written
    return summary


def _state_paths(
    output_dir, progress_json_path, extrema_json_path, cache_path
) -> tuple[Path, Path, Path, Path]:
    """The output folder (made if missing) and the paths of the progress JSON, the extrema
    JSON and the zarr cache (by default inside it)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress_path = Path(progress_json_path or out / "progress.json")
    extrema_path = Path(extrema_json_path or out / "extrema.json")
    cache_dir = Path(cache_path or out / "reduced.zarr")
    return out, progress_path, extrema_path, cache_dir


def _open_state(
    stack: contextlib.ExitStack,
    cfg: RunConfig,
    out: Path,
    progress_path: Path,
    extrema_path: Path,
    summary: RunSummary,
) -> tuple[ProgressStore, Any]:
    """The progress store (locked, then loaded) and the buffered log file, both closed by
    ``stack``. First the lock: a second run on this output is refused before it writes
    anything (no log file, no temporaries removed) or starts a cluster."""
    store = ProgressStore(
        progress_path,
        cfg.style.y_scale,
        cfg.style.z_scale,
        flush_batch_size=cfg.flush_batch_size,
        flush_interval_seconds=cfg.flush_interval_seconds,
        instrument_order=cfg.instrument_order,
    )
    store.acquire_lock()
    stack.callback(store.close)
    stale = _remove_stale_temporaries(out, progress_path, extrema_path)
    logs = stack.enter_context(buffered_file_logging(out / "logs", capacity=cfg.log_batch))
    summary.log_file = str(logs.path)
    if stale:
        logger.info("removed %d stale temporary file(s) left by an interrupted run", stale)
    stack.enter_context(store)  # loads the progress JSON under the lock taken above
    return store, logs


def _connect(
    stack: contextlib.ExitStack, cfg: RunConfig, client, summary: RunSummary, input_dir, out
):
    """The Dask client (the user's, or a local cluster closed by ``stack``), with the
    workers' log records forwarded to this process for the run."""
    dask_client = stack.enter_context(client_context(client, max_workers=cfg.max_workers))
    summary.dashboard_link = getattr(dask_client, "dashboard_link", None)
    logger.info(
        "run %s -> %s (y=%s, z=%s, variable=%s); dashboard %s",
        input_dir,
        out,
        cfg.style.y_scale,
        cfg.style.z_scale,
        cfg.reduction.variable,
        summary.dashboard_link,
    )
    logger.info("configuration: %s", json.dumps(summary.config))
    if forward_worker_logs(dask_client) and client is not None:
        stack.callback(unforward_worker_logs, dask_client)  # the user's client outlives us
    return dask_client


def _discover_todo(input_dir, cfg: RunConfig, store: ProgressStore, summary: RunSummary):
    """Phase 1: the orbit index of ``input_dir`` and the orbits still to do (in order)."""
    index = discover(input_dir, instruments=cfg.instrument_order)
    orbits = list(index)
    store.set_orbits(orbits)
    summary.orbits_total = len(orbits)
    without = [o for o in orbits if o not in index.orbit_files]
    if without:
        logger.info(
            "%d of %d orbits have no fa_k0_orb orbit file: their figures show UT only "
            "(no ALT/ILAT/MLT, no hemisphere names)%s",
            len(without),
            len(orbits),
            f", e.g. orbit {without[0]}" if len(without) < len(orbits) else "",
        )
    todo = [o for o in orbits if store.should_retry(o, index[o])]
    summary.orbits_skipped = len(orbits) - len(todo)
    return index, todo


def _finish_run(
    summary: RunSummary, store: ProgressStore, signals: _Signals, t_start: float
) -> None:
    """The run's last progress write and its summary line (inside the run's log)."""
    if signals.received is not None:
        summary.signal = signal.Signals(signals.received).name
    summary.wall_seconds = time.perf_counter() - t_start
    store.flush()  # the last progress write (a no-op when clean), counted below
    summary.progress_writes = store.writes
    # the log counters cannot count the write of this line: they are in the summary
    done = {k: v for k, v in summary.to_dict().items() if not k.startswith("log_")}
    logger.info("run finished: %s", json.dumps(done))


@dataclass(frozen=True)
class _Options:
    """One run after discovery: its settings, and what is not a setting (paths, hook)."""

    config: RunConfig
    input_dir: Any
    out: Path
    extrema_path: Path
    cache_dir: Path
    render_fn: Callable[[RenderJob], dict[str, Any]]


def _extrema_then_render(opts: _Options, summary, store, signals, dask_client, index, todo) -> None:
    """Phase 2 (extrema, interruptible at once: it keeps what it counted) and phase 3."""
    cfg = opts.config
    signals.raise_now = True
    try:
        state = compute_global_extrema(
            opts.input_dir,
            extrema_json_path=opts.extrema_path,
            config=cfg,
            client=dask_client,
            cache_path=opts.cache_dir,
            index=index,  # already discovered: do not walk the folder twice
            pad=cfg.pad,
        )
    except KeyboardInterrupt:
        if not signals.stop.is_set():
            raise  # a real Ctrl-C without our handlers
        summary.interrupted = True
        logger.warning("interrupted during the extrema; what was counted is saved")
        return
    finally:
        signals.raise_now = False
    jobs = _plan(opts, todo, index, state, summary)
    del state  # the per-file ledger (~1 kB per file) is not needed while rendering
    _loop(
        dask_client,
        store,
        signals,
        jobs,
        index,
        summary,
        window=cfg.window,
        instrument_timeout=cfg.instrument_timeout_seconds,
        orbit_timeout=cfg.orbit_timeout_seconds,
        progress_bar=cfg.progress_bar,
        y_scale=cfg.style.y_scale,
        z_scale=cfg.style.z_scale,
        render_fn=opts.render_fn,
        manifest=opts.out / "manifest.jsonl",
        total=len(todo),
    )


def _alias(value, alias, name: str, alias_name: str):
    if value is not None and alias is not None and Path(value) != Path(alias):
        raise TypeError(f"give {name} or {alias_name}, not both")
    value = value if value is not None else alias
    if value is None:
        raise TypeError(f"{name} is required")
    return value


#: A figure's temporary as :func:`fastspectro_dask.output.save_figure` names it:
#: ``.<orbit>_<product>_y-<y>_z-<z>.png.<pid>.<12 hex>.tmp``.
_FIGURE_TMP = re.compile(r"\.\d+_[A-Za-z0-9-]+_y-[a-z]+_z-[a-z]+\.png\.\d+\.[0-9a-f]{12}\.tmp")
#: Folder names of the figure layout ``{YYYY}/{MM}/{orbit}/``.
_FIGURE_DIR = re.compile(r"\d+")


def _remove_stale_figure_temporaries(out: Path) -> int:
    """Remove figure temporaries that a killed run left in ``out/{YYYY}/{MM}/{orbit}/``.

    Only files named exactly like :func:`~fastspectro_dask.output.save_figure`'s
    temporaries, only in the figure folders of the layout (number-named, three deep).
    """
    removed = 0
    level = [out]
    for _depth in range(3):
        nxt = []
        for folder in level:
            with contextlib.suppress(OSError), os.scandir(folder) as it:
                nxt.extend(
                    Path(e.path)
                    for e in it
                    if _FIGURE_DIR.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
                )
        level = nxt
    for folder in level:
        stale: list[str] = []
        with contextlib.suppress(OSError), os.scandir(folder) as it:
            stale = [
                e.path
                for e in it
                if _FIGURE_TMP.fullmatch(e.name) and e.is_file(follow_symlinks=False)
            ]
        for path in stale:
            try:
                os.unlink(path)
            except OSError as exc:
                logger.warning("could not remove the stale temporary %s: %s", path, exc)
            else:
                removed += 1
    return removed


def _remove_stale_temporaries(out: Path, progress_path: Path, extrema_path: Path) -> int:
    """Temporaries of our own naming that a killed run left: the state files' (beside
    them) and the figures'. Runs under the progress lock; the extrema JSON's lock is taken
    for its part, so a run still computing extrema there refuses this one at once
    (:class:`~fastspectro_dask.state.StateLockedError`)."""
    removed = len(remove_stale_temporaries(progress_path))
    with StateLock(extrema_path):
        removed += len(remove_stale_temporaries(extrema_path))
    return removed + _remove_stale_figure_temporaries(out)


def _absolute(path: str | os.PathLike[str]) -> str:
    """``str(Path(path).absolute())``, without building a Path for one already absolute
    (the orbit index's): planning does this for every file of a mission."""
    if isinstance(path, PurePath) and path.is_absolute():
        return str(path)
    return str(Path(path).absolute())


def _under(root: str, rel: str) -> str:
    """``str(Path(root) / rel)`` for an absolute ``root``; a normalised POSIX ``rel`` (as
    the extrema ledger writes them) is joined as a string, at a fraction of the cost."""
    if os.sep == "/" and rel not in ("", ".") and rel[0] != "/" and posixpath.normpath(rel) == rel:
        return f"{root.rstrip('/')}/{rel}"
    return str(Path(root) / rel)


def _invalid_files(state: Mapping[str, Any], input_dir) -> dict[str, str]:
    """Absolute CDF path -> error message of the files the extrema found invalid."""
    root = str(Path(input_dir).absolute())
    return {
        _under(root, rel): e.get("error", "invalid CDF")
        for rel, e in state.get("files", {}).items()
        if e.get("status") == "invalid-cdf"
    }


def _cache_entries(state: Mapping[str, Any], input_dir) -> dict[str, str]:
    """Absolute CDF path -> zarr cache entry of the files counted by the extrema."""
    root = str(Path(input_dir).absolute())
    return {
        _under(root, rel): e["entry"]
        for rel, e in state.get("files", {}).items()
        if e.get("status") == "counted"
    }


def _plan(
    opts: _Options, todo, index, state: Mapping[str, Any], summary: RunSummary
) -> Iterator[tuple[int, list[RenderJob], dict[str, tuple[str, str]]]]:
    """The lazy job source of phase 3. Takes from the extrema ``state`` only what rendering
    needs (row limits, cache entry and error per file), so that the caller can drop the
    state's per-file ledger, the largest thing a mission-sized run holds."""
    cfg = opts.config
    y_scale, z_scale = cfg.style.y_scale, cfg.style.z_scale
    order = cfg.instrument_order
    grid_extrema = extrema_for_rows(state, y_scale, z_scale, instruments=order)
    pad_extrema = extrema_for_rows(state, y_scale, z_scale, instruments=order, category="pad")
    pa_extrema = {i: extrema_for_rows(state, y_scale, z_scale, instrument=i) for i in order}
    return _iter_jobs(
        opts,
        todo,
        index,
        summary,
        entries=_cache_entries(state, opts.input_dir),
        invalid=_invalid_files(state, opts.input_dir),
        grid_extrema=grid_extrema,
        pa_extrema=pa_extrema,
        pad_extrema=pad_extrema,
    )


def _iter_jobs(
    opts: _Options,
    todo,
    index,
    summary: RunSummary,
    *,
    entries: Mapping[str, str],
    invalid: Mapping[str, str],
    grid_extrema: Mapping[str, Any],
    pa_extrema: Mapping[str, Any],
    pad_extrema: Mapping[str, Any],
) -> Iterator[tuple[int, list[RenderJob], dict[str, tuple[str, str]]]]:
    """Per orbit, lazily: its render jobs and the errors already known (invalid files).

    An instrument whose file is known to be invalid gets no pitch-angle figure; it is a
    placeholder row in the instrument grid and is recorded as ``invalid-cdf``.
    """
    from fastspectro_dask.output import figure_path

    cfg, style, reduction = opts.config, opts.config.style, opts.config.reduction
    y_scale, z_scale = style.y_scale, style.z_scale
    pad = cfg.pad
    categories = dict(reduction.categories)  # one per run, shared (read only) by its jobs
    cache_path = str(opts.cache_dir)
    for orbit in todo:
        files = {i: _absolute(p) for i, p in index[orbit].items()}
        known = {i: ("invalid-cdf", invalid[p]) for i, p in files.items() if p in invalid}
        start = _start_time(index, orbit)
        orb = index.orbit_files.get(orbit)
        orb_file = _absolute(orb) if orb is not None else None
        wanted: list[tuple[str, dict[str, str], dict]] = []
        if "instruments" in cfg.products:
            wanted.append(("instruments", files, grid_extrema))
        if "pitch-angle" in cfg.products:
            for inst, path in files.items():
                if inst in known:
                    continue
                wanted.append((f"pa-{inst}", {inst: path}, pa_extrema[inst]))
        if "pad" in cfg.products:
            wanted.append(("pad", files, pad_extrema))
        orbit_jobs = []
        for product, fs, ext in wanted:
            # the pad product's y axis is pitch angle: always linear
            y_name = "linear" if product == "pad" else y_scale
            path = figure_path(
                opts.out, orbit, start, product, y_name, z_scale, fmt=style.figure_format
            )
            before = _file_identity(str(path))  # one stat per figure, at planning
            if before is not None and not cfg.overwrite:
                summary.figures_existing += 1
                continue
            orbit_jobs.append(
                RenderJob(
                    orbit=orbit,
                    product=product,
                    files=fs,
                    entries={i: entries.get(p) for i, p in fs.items()},
                    output=str(path),
                    cache_path=cache_path,
                    variable=reduction.variable,
                    categories=categories,
                    instrument_order=cfg.instrument_order,
                    extrema=ext,
                    retrace=reduction.retrace,
                    style=style,
                    orb_file=orb_file,
                    pad=pad,
                    replaces=before,
                )
            )
        yield orbit, orbit_jobs, known


def _append_manifest(manifest: _Appender, job: RenderJob, result: Mapping[str, Any]) -> None:
    """One JSON line per figure: what was drawn, with which limits and options."""
    line = json.dumps(
        {
            "figure": os.path.relpath(job.output, manifest.path.parent),
            "orbit": job.orbit,
            "product": job.product,
            "y_scale": job.style.y_scale,
            "z_scale": job.style.z_scale,
            "variable": job.variable,
            "retrace": job.retrace,
            "pad_energy": None if job.pad is None else job.pad.energy,
            "limits": job.extrema,  # global extrema per row; overrides none in batch runs
            "instruments": job.instruments,
            "missing_or_invalid": sorted(result.get("errors", {})),
            "seconds": round(float(result.get("seconds", 0.0)), 3),
            "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        sort_keys=True,
    )
    manifest.write(line + "\n")


def _file_identity(path: str) -> tuple[int, int] | None:
    """``(inode, mtime_ns)`` of a file, or ``None`` when it does not exist: a figure
    replaced by ``os.replace`` gets a new identity."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _stop_renders(client, keys: list[str]) -> None:
    """Kill the sandbox children that run these (cancelled) render tasks, on every worker,
    and wait until they are gone: a cancelled render must not write a figure later."""
    if not keys:
        return
    try:
        killed = client.run(stop_calls, keys)
    except Exception as exc:  # a worker gone, a closing cluster: nothing more to stop
        logger.info("could not stop every render in flight: %s", exc)
        return
    logger.info("stopped %d render(s) in flight", sum(int(n or 0) for n in dict(killed).values()))


def _classify(exc: BaseException) -> str:
    """Error category of a task's exception: :func:`~fastspectro_dask.errors.error_reason`,
    the one classification, also used by the extrema ledger."""
    return error_reason(exc)


def _blame(job: RenderJob, exc: BaseException) -> list[str]:
    """Instruments an error of this job is recorded against."""
    if isinstance(exc, InvalidCDFError):
        hit = [i for i, p in job.files.items() if os.path.abspath(p) == os.path.abspath(exc.path)]
        if hit:
            return hit
    return job.instruments


#: An orbit's figures go in one Dask task while at least this many orbits per worker
#: thread are still to plan: a long run's client, scheduler and workers then handle one
#: task per orbit instead of one per figure. At a run's tail, and in a run of fewer
#: orbits, one task per figure: the last orbits' figures spread over the workers, and the
#: figures of one layout keep to one worker (a layout costs about a fresh figure, ~1 s,
#: once per worker process; an orbit's task needs all of them on every worker).
_ORBITS_PER_THREAD = 8


def _task_split(jobs: Sequence[RenderJob], left: int | None, threads: int) -> list[list[RenderJob]]:
    """An orbit's figures as Dask tasks: all in one while enough orbits are left to keep
    every worker thread busy (``left``: orbits still to plan after this one; ``None``:
    unknown, taken as many; ``threads``: connected now, at least one is counted while
    none is), else one task each."""
    if left is None or left >= _ORBITS_PER_THREAD * max(threads, 1):
        return [list(jobs)]
    return [[job] for job in jobs]


def _loop(
    client,
    store: ProgressStore,
    signals: _Signals,
    jobs: Mapping[int, list[RenderJob]] | Iterable[tuple[int, list[RenderJob], dict]],
    index,
    summary: RunSummary,
    *,
    window: int | None,
    instrument_timeout: float | None,
    orbit_timeout: float | None,
    progress_bar: bool | None,
    y_scale: str,
    z_scale: str,
    render_fn: Callable[[RenderJob], dict[str, Any]] = render_job,
    known_errors: Mapping[int, Mapping[str, tuple[str, str]]] | None = None,
    manifest: Path | None = None,
    total: int | None = None,
) -> None:
    """Render through the scheduling loop (:class:`~fastspectro_dask.schedule.TaskLoop`:
    elastic window, batched results, watchdog) and record every outcome.

    ``jobs`` is a mapping orbit -> jobs, or (to keep client memory flat for any mission)
    an iterable of ``(orbit, jobs, known_errors)`` consumed only as the window has room.
    ``window`` bounds the tasks in flight (default: from the cluster's current threads).

    Raises
    ------
    NoWorkersError
        No worker left or coming for the configured wait (state flushed first).
    """
    from fastspectro_dask.schedule import Task, TaskLoop, ensure_orbit_clock

    if isinstance(jobs, Mapping):
        known_map = known_errors or {}
        total = len(jobs) if total is None else total
        source = iter([(o, js, dict(known_map.get(o, {}))) for o, js in jobs.items()])
    else:
        source = iter(jobs)
    bar = _progress_bar(total or 0, progress_bar)
    clock = orbit_timeout is not None and ensure_orbit_clock(client)
    run_id = f"{os.getpid()}-{time.monotonic_ns()}"
    loop = TaskLoop(
        client,
        _run_jobs,
        window=window,
        extra=_PIPELINE_DEPTH,
        stop=signals.stop,
        on_idle=store.maybe_flush,  # the interval flush, while waiting
        on_exit=store.flush,  # the final flush, whatever ends the loop
        phase="rendering",
    )

    book = _OrbitBook(store, summary, index, bar)

    def tasks() -> Iterator[Task]:
        """Orbits planned only as the window has room: memory stays flat for any mission."""
        left = total
        for orbit, orbit_jobs, known in source:
            if left is not None:
                left -= 1
            if not book.begin(orbit, len(orbit_jobs), known):
                continue  # nothing to render (figures exist): done at once
            for jobs in _task_split(orbit_jobs, left, loop.view.threads):
                # one task for the orbit: its own start is the orbit's; more: the
                # scheduler's orbit clock
                group = f"{run_id}-{orbit}" if clock and len(jobs) < len(orbit_jobs) else None
                what = jobs[0].product if len(jobs) == 1 else f"{len(jobs)}-figures"
                key = f"render-{orbit}-{what}-y{y_scale}-z{z_scale}-{time.monotonic_ns()}"
                args = (jobs, instrument_timeout, orbit_timeout, render_fn, key, group)
                # figures of one layout prefer one worker: each layout built once, not
                # once per worker (an orbit's figures together have every layout)
                layout = (jobs[0].product, *jobs[0].instruments) if len(jobs) == 1 else None
                yield Task(key, args, jobs, layout)

    with contextlib.ExitStack() as stack:
        if manifest is not None:  # one append handle for the loop, flushed before the
            manifest = _Appender(manifest)  # progress file records the orbits of its lines
            stack.callback(manifest.close)
            store.before_write = manifest.flush
            stack.callback(setattr, store, "before_write", None)
            book.manifest = manifest
        try:
            outcome = loop.run(tasks(), book.handle)
        except NoWorkersError:
            _count_abandoned(client, loop.abandoned, book.orbit_errors, manifest, summary)
            summary.interrupted = True
            raise
        finally:
            bar.close()
            for reason, n in book.reasons.items():
                summary.errors[reason] = summary.errors.get(reason, 0) + n
        if outcome == "stopped":
            summary.interrupted = True
            _count_abandoned(client, loop.abandoned, book.orbit_errors, manifest, summary)
            if loop.abandoned:
                logger.warning(
                    "cancelled %d render tasks in flight; their orbits will be redone by the "
                    "next run",
                    len(loop.abandoned),
                )


class _OrbitBook:
    """The loop's account of the orbits in progress: tasks left and errors per orbit,
    recorded in the progress store (and the run summary, the progress bar) once an
    orbit's last task is back."""

    def __init__(self, store: ProgressStore, summary: RunSummary, index, bar) -> None:
        self.store, self.summary, self.index, self.bar = store, summary, index, bar
        self.manifest: _Appender | None = None  # the figures' lines, when kept
        self.log_info = logger.isEnabledFor(logging.INFO)
        self.left: dict[int, int] = {}
        self.orbit_errors: dict[int, dict[str, tuple[str, str]]] = {}
        self.reasons: Counter[str] = Counter()

    def begin(self, orbit: int, n_tasks: int, known: dict[str, tuple[str, str]]) -> bool:
        """An orbit enters the loop with ``n_tasks`` tasks and the errors already known;
        False (and recorded at once) when it has no task."""
        self.orbit_errors[orbit] = dict(known)
        self.left[orbit] = n_tasks
        if not n_tasks:
            self.finish(orbit)
        return bool(n_tasks)

    def handle(self, task: Any, result: Any, exc: BaseException | None) -> None:
        """A task's outcome (:meth:`~fastspectro_dask.schedule.TaskLoop.run`): its error
        for each of its figures, else each figure's own report or error, in turn."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        for job, report, error in outcomes(task.item, result, exc):
            if error is not None:
                self.failed(job, error)
            else:
                self.written(job, report)
            self.task_done(job.orbit)

    def failed(self, job: RenderJob, exc: BaseException) -> None:
        """A task's error: classified, blamed on its instruments, logged (one line; the
        worker's traceback in the log file only)."""
        reason = _classify(exc)
        for inst in _blame(job, exc):
            self.orbit_errors[job.orbit].setdefault(inst, (reason, str(exc)))
        for level, line in _log_notes(exc):
            logger.log(level, "worker: %s", line)
        logger.error(
            "orbit %d %s: %s (%s: %s)", job.orbit, job.product, reason, type(exc).__name__, exc
        )
        remote_tb = getattr(exc, "__remote_traceback__", None)
        if remote_tb:  # the log file keeps the detail; the terminal, one line
            logger.info(
                "orbit %d %s: traceback on the worker (or its render sandbox):\n%s",
                job.orbit,
                job.product,
                str(remote_tb).rstrip(),
            )

    def written(self, job: RenderJob, result: dict) -> None:
        """A figure written: the manifest line, the instruments' own errors, the worker's
        log lines."""
        self.summary.figures_written += 1
        if self.manifest is not None:
            _append_manifest(self.manifest, job, result)
        for inst, (reason, msg) in result["errors"].items():
            self.orbit_errors[job.orbit].setdefault(inst, (reason, msg))
            logger.error("orbit %d %s: %s (%s)", job.orbit, inst, reason, msg)
        for level, line in result.get("log", ()):
            logger.log(level, "worker: %s", line)
        if self.log_info:
            logger.info("orbit %d %s written in %.2f s", job.orbit, job.product, result["seconds"])

    def task_done(self, orbit: int) -> None:
        self.left[orbit] -= 1
        if self.left[orbit] == 0:
            self.finish(orbit)

    def finish(self, orbit: int) -> None:
        """Record an orbit whose tasks are all back: its errors, else its success."""
        self.left.pop(orbit, None)
        errs = self.orbit_errors.pop(orbit)
        store, summary = self.store, self.summary
        if errs:
            for inst, (reason, _msg) in errs.items():
                fp = None
                if reason == "invalid-cdf" and inst in self.index[orbit]:
                    with contextlib.suppress(OSError):
                        fp = file_fingerprint(self.index[orbit][inst])
                store.record_error(orbit, inst, reason, file_fingerprint=fp)
                self.reasons[reason] += 1
            store.mark_orbit_done(orbit)
        else:
            store.record_success(orbit)
            summary.orbits_completed += 1
        summary.orbits_processed += 1
        self.bar.update(1)
        if errs:
            self.bar.set_postfix(
                errors=sum(self.reasons.values()), timeouts=self.reasons["timeout"], refresh=False
            )


#: Render tasks in flight beyond two per worker thread: they cover the client's round trip
#: (submission, result, bookkeeping), so short tasks do not wait for the client.
_PIPELINE_DEPTH = 32


class _Appender:
    """Lines for a text file, appended at :meth:`flush` (before each progress write: an
    orbit recorded done has its lines on disk) and at :meth:`close`, in one write each;
    every line whole, after a torn one too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        self._fh: Any = None

    def write(self, text: str) -> None:
        self._lines.append(text)

    def flush(self) -> None:
        if not self._lines:
            return
        if self._fh is None:
            self._fh = open(self.path, "a+b", buffering=0)  # writes go to the end
            if self._fh.seek(0, os.SEEK_END):  # a line a killed run left torn: ended first
                self._fh.seek(-1, os.SEEK_END)
                if self._fh.read(1) != b"\n":
                    self._lines.insert(0, "\n")
        text, self._lines = "".join(self._lines), []
        self._fh.write(text.encode("utf-8"))

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _count_abandoned(client, abandoned, orbit_errors, manifest, summary: RunSummary) -> None:
    """Stop the renders of cancelled tasks (their sandbox children), then count the
    figures they wrote before that: they are on disk."""
    if not abandoned:
        return
    _stop_renders(client, [t.key for t in abandoned])
    for job in (job for task in abandoned for job in task.item):
        if _file_identity(job.output) not in (None, job.replaces):
            summary.figures_written += 1
            if manifest is not None:
                _append_manifest(manifest, job, {"errors": orbit_errors.get(job.orbit, {})})
            logger.info(
                "orbit %d %s was written before its task was cancelled", job.orbit, job.product
            )
