"""The worker-side render task: one figure, drawn in a sandbox child with a timeout.

:func:`run_job` is what a Dask worker runs for one (orbit, product): it works out the
tighter of the instrument and orbit timeouts and runs :func:`render_job` (or a custom
``render_fn``) in the worker's persistent sandbox child
(:mod:`fastspectro_dask.sandbox`), with the package's log records captured so they reach
the client. The child loads the orbit's reduced spectrograms (zarr cache, else decoded),
its ephemeris, draws the product (:mod:`fastspectro_dask.products`) and saves it.

This module imports neither :mod:`fastspectro_dask.pipeline` nor ``distributed`` (not even
transitively), so a sandbox child that renders never loads the scheduling stack. The
orbit clock (:func:`fastspectro_dask.schedule.group_elapsed`, which needs distributed) is
asked by the Dask task wrapper in :mod:`fastspectro_dask.pipeline` and handed in as a
callable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastspectro_dask.cache import ReducedCache, reduce_file
from fastspectro_dask.config import RenderStyle
from fastspectro_dask.errors import InvalidCDFError, PlottingError, RenderTimeoutError
from fastspectro_dask.reduce import PadSpec
from fastspectro_dask.sandbox import run_with_timeout

__all__ = ["RenderJob", "render_job", "run_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderJob:
    """One figure: an orbit and a product, with everything the worker needs."""

    orbit: int
    product: str  # "instruments", "pa-<inst>" or "pad"
    files: dict[str, str]  # instrument -> CDF path (the instruments this figure shows)
    entries: dict[str, str | None]  # instrument -> zarr cache entry (None: not cached)
    output: str
    cache_path: str
    variable: str
    categories: dict[str, tuple[tuple[float, float], ...]]
    instrument_order: tuple[str, ...]
    extrema: dict[str, dict[str, float]]
    retrace: bool  # keep channel 0 (the sweep's retrace step) in the reduction
    style: RenderStyle  # the run's drawing settings (fastspectro_dask.config)
    orb_file: str | None = None  # the orbit's fa_k0_orb ephemeris file, if any
    pad: PadSpec | None = None  # the pad reduction (cached with the rest), if made
    replaces: tuple[int, int] | None = None  # (inode, mtime_ns) of the figure overwritten

    @property
    def instruments(self) -> list[str]:
        """The instruments this figure shows, in the order of ``files``."""
        return list(self.files)


def _load_reduced(job: RenderJob, inst: str):
    """The reduced spectrogram of one instrument: from the zarr cache, else decoded."""
    entry = job.entries.get(inst)
    if entry:
        try:
            return ReducedCache(job.cache_path).read(entry)
        except KeyError:
            pass
    return reduce_file(job.files[inst], job.variable, job.categories, job.retrace, job.pad)


class _Capture(logging.Handler):
    """Keeps the package's INFO+ records of one render so the client can log them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, f"{record.name}: {record.getMessage()}"))


#: Prefix of the exception notes that carry a failed render's log records to the client.
_LOG_NOTE = "worker log "


def _render_logged(
    render_fn: Callable[[RenderJob], dict[str, Any]], job: RenderJob
) -> dict[str, Any]:
    """Runs in the sandbox child: ``render_fn(job)`` with the package's log records (INFO
    and above) captured. They travel back in the result's ``log``, or, when the render
    fails, as notes on the exception (``add_note``), so records logged before a failure
    reach the client's log too."""
    capture = _Capture()
    pkg_logger = logging.getLogger("fastspectro_dask")
    level = pkg_logger.level
    if not pkg_logger.isEnabledFor(logging.INFO):
        pkg_logger.setLevel(logging.INFO)
    pkg_logger.addHandler(capture)
    try:
        result = render_fn(job)
    except BaseException as exc:
        for levelno, line in capture.lines:
            exc.add_note(f"{_LOG_NOTE}{logging.getLevelName(levelno)}: {line}")
        raise
    finally:
        pkg_logger.removeHandler(capture)
        pkg_logger.setLevel(level)
    return {**result, "log": [*result.get("log", []), *capture.lines]}


def log_notes(exc: BaseException) -> list[tuple[int, str]]:
    """The log records a failed render carried back as exception notes."""
    out = []
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, str) and note.startswith(_LOG_NOTE):
            name, _, line = note.removeprefix(_LOG_NOTE).partition(": ")
            level = logging.getLevelName(name)
            out.append((level if isinstance(level, int) else logging.WARNING, line))
    return out


def _load_ephemeris(job: RenderJob):
    """The orbit's ephemeris, or None (no orbit file; a bad one is a warning, UT only)."""
    if not job.orb_file:
        return None
    from fastspectro_dask.ephemeris import EphemerisError, read_ephemeris

    try:
        return read_ephemeris(job.orb_file)
    except EphemerisError as exc:
        logger.warning("orbit %s: %s; the figure gets UT only", job.orbit, exc)
        return None


def render_job(job: RenderJob) -> dict[str, Any]:
    """Draw and save one figure (runs in the sandbox child). Returns a small report.

    In the instrument grid and the pad product, an instrument whose file is invalid
    becomes a placeholder row and is reported in ``errors``; for a pitch-angle grid the
    InvalidCDFError is raised. Errors while drawing or saving are raised as PlottingError
    (divide-by-zero errors unchanged).

    Parameters
    ----------
    job : RenderJob

    Returns
    -------
    dict
        ``path`` (the figure written), ``errors`` (instrument -> ``(reason, message)``)
        and ``seconds`` (the time taken).
    """
    from fastspectro_dask import output, products

    t0 = time.perf_counter()
    ephemeris = _load_ephemeris(job)
    errors: dict[str, tuple[str, str]] = {}
    data: dict[str, Any] = {}
    for inst in job.instruments:
        try:
            data[inst] = _load_reduced(job, inst)
        except InvalidCDFError as exc:
            if job.product not in ("instruments", "pad"):  # one-row-per-instrument products
                raise
            errors[inst] = ("invalid-cdf", str(exc))
            data[inst] = None
    try:
        fig = products.plot_product(
            job.product,
            data,
            job.style,
            variable=job.variable,
            categories=job.categories,
            instrument_order=job.instrument_order,
            extrema=job.extrema,
            orbit=job.orbit,
            ephemeris=ephemeris,
        )
        output.save_figure(fig, job.output)
    except (ZeroDivisionError, FloatingPointError, PlottingError, InvalidCDFError):
        raise
    except Exception as exc:
        raise PlottingError(
            f"orbit {job.orbit} {job.product}: {type(exc).__name__}: {exc}"
        ) from exc
    return {
        "path": job.output,
        "errors": errors,
        "seconds": time.perf_counter() - t0,
    }


def run_job(
    job: RenderJob,
    instrument_timeout: float | None,
    orbit_timeout: float | None,
    render_fn: Callable[[RenderJob], dict[str, Any]] = render_job,
    tag: str | None = None,
    orbit_elapsed: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Render in this process's sandbox with the tighter of both timeouts.

    Parameters
    ----------
    job : RenderJob
    instrument_timeout : float or None
        Seconds for this figure, from the moment the sandbox child is ready for it (a
        fresh child's start-up is not the figure's time); None: no bound.
    orbit_timeout : float or None
        Seconds for all of the orbit's figures; None: no bound.
    render_fn : callable
        A module-level ``(RenderJob) -> report`` run in the sandbox child.
    tag : str, optional
        A name of the call (the task key), so the client can stop the render when it
        cancels the task (:func:`~fastspectro_dask.sandbox.stop_calls`).
    orbit_elapsed : callable, optional
        Seconds the orbit has already used (e.g. since its first task started on a
        worker); None: none, the orbit timeout counts from now.

    Raises
    ------
    RenderTimeoutError
        The orbit's time was used up before this figure started, or the render ran
        longer than the tighter timeout.
    """
    timeout = instrument_timeout
    if orbit_timeout is not None:
        left = orbit_timeout - (orbit_elapsed() if orbit_elapsed is not None else 0.0)
        if left <= 0:
            raise RenderTimeoutError(
                f"orbit {job.orbit}: orbit timeout reached before {job.product} started"
            )
        timeout = left if timeout is None else min(timeout, left)
    return run_with_timeout(_render_logged, render_fn, job, timeout=timeout, tag=tag)
