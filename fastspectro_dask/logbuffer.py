"""Buffered file logging on the standard :mod:`logging` machinery.

The batch pipeline logs one or more records per orbit; writing each of them to
the log file separately costs a system call (and, on network file systems, a round
trip) per record. :func:`buffered_file_logging` attaches a
:class:`FlushCountingMemoryHandler` to the package logger that holds records in
memory and writes them to a timestamped file every ``capacity`` records, at exit
(normal or by exception) and whenever :meth:`BufferedLog.flush` is called (the
pipeline calls it from its SIGINT/SIGTERM handler).

:func:`forward_worker_logs` makes records that tasks log on Dask workers reach the
same logger (and therefore the same file) in the client process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import logging.handlers
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LOG_FORMAT",
    "BufferedLog",
    "FlushCountingMemoryHandler",
    "UTCFormatter",
    "buffered_file_logging",
    "forward_worker_logs",
    "unforward_worker_logs",
]

logger = logging.getLogger(__name__)

#: Format of a log-file line: ISO-8601 UTC time, level, logger name, message
#: (plus ``[worker <address>]`` for records forwarded from a Dask worker).
LOG_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


class UTCFormatter(logging.Formatter):
    """A formatter with ISO-8601 UTC timestamps (``2024-05-01T12:00:00.123Z``).

    Records forwarded from Dask workers carry a ``worker`` attribute; it is added
    to the line as ``[worker <address>]`` so the origin of a message is visible.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Format ``record.created`` as ISO-8601 UTC with milliseconds and a ``Z``."""
        stamp = _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc)
        if datefmt:
            return stamp.strftime(datefmt)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        """Format the record, tagging records forwarded from a worker."""
        text = super().format(record)
        worker = getattr(record, "worker", None)
        if worker:
            head, sep, tail = text.partition(": ")
            text = f"{head} [worker {worker}]{sep}{tail}" if sep else f"{text} [worker {worker}]"
        return text


class _BatchFileHandler(logging.FileHandler):
    """A :class:`logging.FileHandler` that does not flush after every record.

    :class:`FlushCountingMemoryHandler` hands it a whole batch and then calls
    :meth:`flush` once, so a batch is one write to the operating system (as far as
    the stream's buffer allows).
    """

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:  # delay=True, or reopened after close
            self.stream = self._open()
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:  # pragma: no cover - as in logging.StreamHandler
            raise
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class FlushCountingMemoryHandler(logging.handlers.MemoryHandler):
    """A :class:`~logging.handlers.MemoryHandler` that flushes on count and counts flushes.

    Records are buffered until ``capacity`` of them are held (or until a record at
    or above ``flush_level`` arrives, when one is given), then written to
    ``target`` in one batch. Unlike the standard class, the default is to flush
    **on count only**: the pipeline's contract is that log writes are batched every
    ``log_flush_batch_size`` records, and an error storm (thousands of invalid
    files, each logged at ERROR) would otherwise turn into one write per record.
    Errors are not lost by this: the progress JSON records every error, and the
    buffer is flushed at exit, on exceptions and from the signal handlers.

    Parameters
    ----------
    capacity : int
        Records per batch (>= 1).
    target : logging.Handler
        Where batches go (usually a file handler).
    flush_level : int or None, optional
        Also flush at once when a record of this level or above arrives.
        ``None`` (default) flushes on count only.

    Attributes
    ----------
    flushes : int
        Number of flushes that wrote at least one record (the number of batch
        writes to the file).
    records_written : int
        Total records handed to the target.
    """

    def __init__(
        self, capacity: int, target: logging.Handler, flush_level: int | None = None
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1: {capacity!r}")
        super().__init__(
            capacity,
            flushLevel=logging.CRITICAL + 1 if flush_level is None else flush_level,
            target=target,
            flushOnClose=True,
        )
        self.flush_level = flush_level
        self.flushes = 0
        self.records_written = 0

    def shouldFlush(self, record: logging.LogRecord) -> bool:
        """Whether the buffer is full (or ``record`` reaches ``flush_level``)."""
        if len(self.buffer) >= self.capacity:
            return True
        return self.flush_level is not None and record.levelno >= self.flush_level

    def flush(self) -> None:
        """Write the buffered records to the target as one batch (no-op when empty).

        The buffer is swapped out before writing, so a re-entrant call (e.g. from a
        signal handler that interrupts a flush) cannot write a record twice.
        """
        with self.lock if self.lock is not None else contextlib.nullcontext():
            if self.target is None or not self.buffer:
                return
            batch, self.buffer = self.buffer, []
            for record in batch:
                self.target.handle(record)
            self.target.flush()
            self.flushes += 1
            self.records_written += len(batch)


class BufferedLog:
    """Handle yielded by :func:`buffered_file_logging`.

    Attributes
    ----------
    path : pathlib.Path
        The log file.
    handler : FlushCountingMemoryHandler
        The buffering handler attached to the logger.
    logger : logging.Logger
        The logger it is attached to.
    """

    def __init__(
        self, path: Path, handler: FlushCountingMemoryHandler, logger_: logging.Logger
    ) -> None:
        self.path = path
        self.handler = handler
        self.logger = logger_

    def flush(self) -> None:
        """Write buffered records now (safe to call from a signal handler)."""
        self.handler.flush()

    @property
    def flushes(self) -> int:
        """Number of batch writes to the file so far."""
        return self.handler.flushes

    @property
    def records_written(self) -> int:
        """Number of records written to the file so far."""
        return self.handler.records_written

    @property
    def buffered(self) -> int:
        """Number of records held in memory, not yet written."""
        return len(self.handler.buffer)

    def __repr__(self) -> str:
        return (
            f"BufferedLog({str(self.path)!r}, capacity={self.handler.capacity}, "
            f"flushes={self.flushes}, buffered={self.buffered})"
        )


def _default_filename() -> str:
    return "fastspectro-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".log"


@contextlib.contextmanager
def buffered_file_logging(
    log_dir: str | os.PathLike[str],
    *,
    capacity: int = 10,
    level: int = logging.INFO,
    logger_name: str = "fastspectro_dask",
    filename: str | None = None,
    flush_level: int | None = None,
) -> Iterator[BufferedLog]:
    """Log ``logger_name`` (and its children) to a file, written in batches.

    Attaches a :class:`FlushCountingMemoryHandler` (``capacity`` records per
    batch) whose target is a file ``log_dir / filename`` (default
    ``fastspectro-YYYYmmddTHHMMSSZ.log``, UTC, opened for appending). Lines read
    ``<ISO UTC time> <LEVEL> <logger>: <message>`` (:data:`LOG_FORMAT`).

    The buffer is written whenever it holds ``capacity`` records, when
    :meth:`BufferedLog.flush` is called, and on leaving the block - normally or by
    an exception. On leaving, the handler is removed, the file closed and the
    logger's level restored.

    Parameters
    ----------
    log_dir : str or os.PathLike
        Folder of the log file (created when missing).
    capacity : int, optional
        Records per write (>= 1), i.e. the pipeline's ``log_flush_batch_size``.
    level : int, optional
        Lowest level written to the file (default ``logging.INFO``). If the
        logger's own level would drop such records, it is lowered to ``level``
        for the duration of the block (a more verbose level already set is kept).
    logger_name : str, optional
        The logger to capture (default the package logger ``"fastspectro_dask"``).
    filename : str or None, optional
        File name inside ``log_dir`` instead of the timestamped default.
    flush_level : int or None, optional
        Also write at once when a record at or above this level arrives.
        ``None`` (default) batches on count only; see
        :class:`FlushCountingMemoryHandler` for why.

    Yields
    ------
    BufferedLog
        With ``path``, ``flush()``, ``flushes`` and ``records_written``.

    Examples
    --------
    >>> with buffered_file_logging(out / "logs", capacity=50) as log:  # doctest: +SKIP
    ...     run_everything()  # a signal handler may call log.flush()
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / (filename or _default_filename())
    target = _BatchFileHandler(path, mode="a", encoding="utf-8")
    target.setFormatter(UTCFormatter(LOG_FORMAT))
    target.setLevel(level)
    try:
        handler = FlushCountingMemoryHandler(capacity, target, flush_level=flush_level)
    except BaseException:
        target.close()
        raise
    handler.setLevel(level)

    log = logging.getLogger(logger_name)
    old_level = log.level
    if log.getEffectiveLevel() > level:
        log.setLevel(level)
    log.addHandler(handler)
    logger.debug("Buffered logging of %r to %s (capacity %d)", logger_name, path, capacity)
    try:
        yield BufferedLog(path, handler, log)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        try:
            handler.flush()
        finally:
            handler.close()
            target.close()


# --------------------------------------------------------------------------------------
# Worker-side records
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _level_plugin_class() -> type:
    """A ``WorkerPlugin`` that lowers a worker-side logger's level (built lazily).

    Without it, INFO records logged by tasks are dropped on the worker (a logger
    there inherits the root's WARNING level) before ``forward_logging`` sees them.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class _WorkerLogLevel(WorkerPlugin):
        def __init__(self, logger_name: str, level: int) -> None:
            self.logger_name = logger_name
            self.level = level
            self._old: int | None = None

        def setup(self, worker: Any) -> None:
            log = logging.getLogger(self.logger_name)
            self._old = log.level
            if log.getEffectiveLevel() > self.level:
                log.setLevel(self.level)

        def teardown(self, worker: Any) -> None:
            if self._old is not None:
                logging.getLogger(self.logger_name).setLevel(self._old)

    return _WorkerLogLevel


def _level_plugin_name(logger_name: str) -> str:
    return f"fastspectro-log-level-{logger_name}"


def forward_worker_logs(
    client: Any, logger_name: str = "fastspectro_dask", level: int = logging.INFO
) -> bool:
    """Send records that tasks log on Dask workers to the client's logger of the same name.

    Uses :meth:`distributed.Client.forward_logging`: a worker plugin publishes each
    record handled by ``logger_name`` (or a child) on the worker, and the client
    re-handles it with its own logger, so :func:`buffered_file_logging` writes it to
    the log file (tagged ``[worker <address>]``). A second worker plugin sets the
    worker-side logger's level to ``level`` where it would otherwise drop the
    records (workers inherit WARNING from the root logger). Both plugins are
    registered with the scheduler, so workers that join later get them too.

    Parameters
    ----------
    client : distributed.Client
        The client of the run.
    logger_name : str, optional
        The logger to forward (default the package logger).
    level : int, optional
        Lowest level forwarded (default ``logging.INFO``).

    Returns
    -------
    bool
        ``True`` when forwarding is active; ``False`` when this version of
        ``distributed`` lacks ``Client.forward_logging`` (worker records then stay
        in the workers' own logs; a debug message says so).
    """
    if not callable(getattr(client, "forward_logging", None)):
        logger.debug(
            "distributed.Client.forward_logging is not available; worker log records "
            "of %r stay on the workers.",
            logger_name,
        )
        return False
    try:
        plugin = _level_plugin_class()(logger_name, level)
        client.register_plugin(plugin, name=_level_plugin_name(logger_name))
    except Exception as exc:  # forwarding still works for records at WARNING and above
        logger.debug("Could not set the worker-side level of %r: %s", logger_name, exc)
    client.forward_logging(logger_name, level=level)
    logger.debug("Forwarding worker log records of %r at level %s", logger_name, level)
    return True


def unforward_worker_logs(client: Any, logger_name: str = "fastspectro_dask") -> None:
    """Undo :func:`forward_worker_logs` (best effort; errors are logged at debug level).

    Parameters
    ----------
    client : distributed.Client
        The client given to :func:`forward_worker_logs`.
    logger_name : str, optional
        The logger that was forwarded.
    """
    for action in (
        lambda: client.unforward_logging(logger_name),
        lambda: client.unregister_worker_plugin(_level_plugin_name(logger_name)),
    ):
        try:
            action()
        except Exception as exc:
            logger.debug("Could not stop forwarding %r: %s", logger_name, exc)
