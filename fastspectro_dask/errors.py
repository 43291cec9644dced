"""Exception hierarchy and the mapping from exceptions to error categories.

Error categories are what the progress JSON records per instrument, as
``{instrument}_{y_scale}_{z_scale}_error-{reason}``. The category is chosen from
the exception *type*, never from its message text.
"""

from __future__ import annotations

from os import PathLike

__all__ = [
    "DASK_WORKER_LOST_ERRORS",
    "ERROR_REASONS",
    "EmptyDataError",
    "FastSpectroError",
    "InvalidCDFError",
    "NoWorkersError",
    "PlottingError",
    "RenderTimeoutError",
    "WorkerLostError",
    "error_reason",
]

#: Every reason that can appear in an ``..._error-{reason}`` key.
ERROR_REASONS: tuple[str, ...] = (
    "timeout",
    "invalid-cdf",
    "divide-by-zero",
    "plotting",
    "generic",
    "worker-lost",
)


#: Class names of Dask's own errors that mean the task's worker died or the cluster dropped
#: the task (``distributed.KilledWorker``, ``distributed.client.FutureCancelledError``,
#: ``asyncio``/``concurrent.futures`` ``CancelledError``). They are matched by name, so
#: this module does not import distributed (and does not depend on where it defines them).
DASK_WORKER_LOST_ERRORS: frozenset[str] = frozenset(
    {"KilledWorker", "FutureCancelledError", "CancelledError"}
)


class FastSpectroError(Exception):
    """Base class of every error raised on purpose by fastspectro_dask."""


class InvalidCDFError(FastSpectroError, ValueError):
    """A file is not a usable FAST ESA L2 CDF.

    Raised for files that are not CDF at all (an HTML page saved as ``.cdf``),
    empty or truncated files, missing required variables, wrong ranks or
    shapes, and inconsistent record counts.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file.
    cause : str
        What is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | PathLike[str], cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # keep the two-argument constructor picklable (Dask ships errors)
        return (type(self), (self.path, self.cause), dict(self.__dict__))  # and what was added


class EmptyDataError(FastSpectroError, ValueError):
    """A reduction (e.g. a percentile) was asked of data with no usable value."""


class PlottingError(FastSpectroError):
    """An error raised while drawing or saving a figure."""


class RenderTimeoutError(FastSpectroError, TimeoutError):
    """A render task ran longer than its timeout and was stopped."""


class WorkerLostError(FastSpectroError):
    """The process doing the work died (crash, OOM killer, lost Dask worker)."""


def error_reason(exc: BaseException) -> str:
    """Map an exception to its error category.

    The one classification of task errors: the progress JSON (pipeline) and the
    extrema ledger both use it, so one failure gets the same reason in both.

    Parameters
    ----------
    exc : BaseException
        The exception raised by a task, or by Dask for it.

    Returns
    -------
    str
        One of :data:`ERROR_REASONS`. Dask's own errors for a dead worker or a dropped
        task (:data:`DASK_WORKER_LOST_ERRORS`, matched by class name, subclasses too)
        are ``"worker-lost"``.

    Examples
    --------
    >>> error_reason(ZeroDivisionError())
    'divide-by-zero'
    >>> class KilledWorker(Exception): ...
    >>> error_reason(KilledWorker("task", "worker"))
    'worker-lost'
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, WorkerLostError) or _is_dask_worker_lost(exc):
        return "worker-lost"
    if isinstance(exc, InvalidCDFError):
        return "invalid-cdf"
    if isinstance(exc, (ZeroDivisionError, FloatingPointError)):
        return "divide-by-zero"
    if isinstance(exc, PlottingError):
        return "plotting"
    return "generic"


def _is_dask_worker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is (a subclass of) one of :data:`DASK_WORKER_LOST_ERRORS`."""
    return any(cls.__name__ in DASK_WORKER_LOST_ERRORS for cls in type(exc).__mro__)


class NoWorkersError(FastSpectroError, RuntimeError):
    """No Dask worker was left or coming for the configured wait (``--worker-wait``): the
    run stopped, with its state saved (CLI exit code 3)."""
