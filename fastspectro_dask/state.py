"""Persistent state: atomic JSON writes, corrupt-file handling, lock, progress store.

Every state file of the pipeline (progress JSON, extrema JSON) is written with
:func:`atomic_write_json` (temp file in the same folder, ``fsync``, ``os.replace``,
directory ``fsync``) and read with :func:`load_json_state`, which moves a corrupt
file aside (kept, never deleted) and lets the caller start fresh.

:class:`StateLock` refuses a second concurrent run on the same state file, and
:class:`ProgressStore` is the progress JSON of one scale combination, with batched
flushes, a true watermark and the resume rules.

:class:`JsonLinesJournal` is an append-only JSON-lines file for state that grows with
the input (the extrema's per-file ledger): each flush appends and ``fsync``-s only its
new records and the small JSON, written after it, records the committed length and
checksum, so a torn tail after a crash is ignored and the flush cost does not grow.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import fcntl
import hashlib
import itertools
import json
import logging
import operator
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastspectro_dask.errors import ERROR_REASONS, FastSpectroError

__all__ = [
    "PROGRESS_SCHEMA",
    "PROGRESS_VERSION",
    "RETRYABLE_REASONS",
    "JsonLinesJournal",
    "ProgressStore",
    "StateLock",
    "StateLockedError",
    "atomic_write_json",
    "file_fingerprint",
    "load_json_state",
    "move_aside",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)


def _to_builtin(obj: Any) -> Any:
    """Convert numpy scalars/arrays, paths, sets and tuples to plain JSON types.

    Mapping keys are converted to ``str`` (numpy integer keys become their decimal
    text) so that ``sort_keys`` never compares mixed key types.
    """
    if isinstance(obj, Mapping):
        return {_key_to_str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [_to_builtin(v) for v in sorted(obj)]
    if isinstance(obj, np.ndarray):
        return _to_builtin(obj.tolist())
    if isinstance(obj, np.generic):
        return _to_builtin(obj.item())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _json_default(obj: Any) -> Any:
    """``json.dumps`` hook for the non-JSON values :func:`_to_builtin` also converts."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (np.ndarray, np.generic)):
        return _to_builtin(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _key_to_str(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, os.PathLike):
        return os.fspath(key)
    return str(key)


def _fsync_dir(directory: Path) -> None:
    """Best-effort ``fsync`` of a directory, so a rename survives a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _dumps(obj: Any, indent: int | None, one_line_per_key: bool, convert: bool = True) -> str:
    """JSON text with sorted keys; NaN refused; non-JSON types converted."""
    try:  # fast path: plain data (the common case) needs no conversion pass
        if one_line_per_key and isinstance(obj, Mapping):
            lines = [
                f" {json.dumps(k)}: "
                + json.dumps(obj[k], sort_keys=True, allow_nan=False, default=_json_default)
                for k in sorted(obj)
            ]
            return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"
        return json.dumps(
            obj, indent=indent, sort_keys=True, allow_nan=False, default=_json_default
        )
    except TypeError:  # e.g. numpy or mixed-type mapping keys: convert everything first
        if not convert:
            raise
        return _dumps(_to_builtin(obj), indent, one_line_per_key, convert=False)


def atomic_write_json(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int | None = 1,
    one_line_per_key: bool = False,
) -> None:
    """Write ``obj`` as JSON to ``path`` atomically.

    The object is serialised first (so a serialisation error never touches the
    file), written to a temporary file in the same folder, flushed and
    ``fsync``-ed, then moved onto ``path`` with :func:`os.replace`; finally the
    folder is ``fsync``-ed (best effort). A reader therefore sees either the old
    file or the new one, never a mix, and a crash at any point never leaves a
    truncated target. On any error the temporary file is removed.

    Parameters
    ----------
    path : str or os.PathLike
        The target file. Its folder must exist.
    obj : object
        A JSON-serialisable object; numpy scalars and arrays, sets, tuples and
        paths are converted to plain Python types. Keys are sorted.
    indent : int or None, optional
        Passed to :func:`json.dumps` (default 1).
    one_line_per_key : bool, optional
        For a mapping: one top-level key per line, each value written compactly on its
        line (``indent`` is then not used). Still easy to read for a document of long
        lists (the progress JSON), and several times faster to write, since the
        standard library's C encoder only serves unindented output.

    Raises
    ------
    TypeError, ValueError
        If ``obj`` cannot be serialised (the target is left untouched). NaN and
        infinities are refused, since they are not valid JSON.
    OSError
        If writing or renaming fails (the target is left untouched).

    Notes
    -----
    The file is created with mode ``0666`` minus the process umask (as ``open()``
    does), not ``0600``. The temporary is ``.<name>.<pid>.<12 hex>.tmp``; a
    ``kill -9`` between its creation and the rename leaves it behind, and
    :func:`remove_stale_temporaries` removes it at the start of the next run.
    """
    path = Path(path)
    text = _dumps(obj, indent, one_line_per_key) + "\n"
    data = text.encode("utf-8")
    directory = path.parent if str(path.parent) else Path(".")
    # Not NamedTemporaryFile/mkstemp: their 0600 mode would survive the rename. Created
    # 0666 minus the umask, like the figures, so a group sharing results can read them.
    tmp_name = str(directory / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(
            tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
        )
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)


#: Temporaries of :func:`atomic_write_json` (``.<name>.<pid>.<12 hex>.tmp``) and of the
#: ``tempfile`` naming it used before (``.<name>.<8 of [a-z0-9_]>.tmp``).
_TMP_SUFFIX = re.compile(r"\.(?:\d+\.[0-9a-f]{12}|[a-z0-9_]{8})\.tmp")


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that :func:`atomic_write_json` left beside ``path``.

    Only files named exactly like this module's temporaries of *this* file
    (``.<name>.<pid>.<12 hex>.tmp``, or the ``.<name>.<8 chars>.tmp`` of earlier
    versions) are removed, only in ``path``'s folder. A temporary exists only between
    its creation and the rename, so one found while the caller holds the state's lock
    was left by a killed run. Call it only under that lock (a live writer's temporary
    would be removed under its feet otherwise).

    Parameters
    ----------
    path : str or os.PathLike
        The state file (``progress.json``, ``extrema.json``...).

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}"
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not _TMP_SUFFIX.fullmatch(name[len(prefix) :]):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            os.unlink(entry.path)
        except OSError as exc:
            logger.warning("could not remove the stale temporary %s: %s", entry.path, exc)
            continue
        removed.append(Path(entry.path))
    if removed:
        logger.info(
            "removed %d stale temporary file(s) of %s left by an interrupted run",
            len(removed),
            path,
        )
    return removed


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def load_json_state(path: str | os.PathLike[str], *, kind: str = "state") -> dict[str, Any] | None:
    """Read a JSON state file, moving a corrupt one aside.

    Parameters
    ----------
    path : str or os.PathLike
        The state file.
    kind : str, optional
        What the file is (``"progress"``, ``"extrema"``...), used in the warning.

    Returns
    -------
    dict or None
        The parsed JSON object; ``None`` when the file does not exist, or when it
        was corrupt (not UTF-8 JSON, truncated, empty, or not a JSON object). A
        corrupt file is renamed to ``<name>.corrupt-<UTC timestamp>`` in the same
        folder (kept for inspection, never deleted) and a WARNING naming both
        paths is logged; the caller then starts fresh.

    Raises
    ------
    OSError
        If the file exists but cannot be read (e.g. permissions) - that is not
        corruption and is not hidden.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        reason = f"not valid JSON ({exc})" if raw.strip() else "empty file"
    else:
        if isinstance(obj, dict):
            return obj
        reason = f"JSON {type(obj).__name__}, not an object"
    move_aside(path, kind=kind, reason=reason)
    return None


# --------------------------------------------------------------------------------------
# Lock
# --------------------------------------------------------------------------------------


class StateLockedError(FastSpectroError):
    """Another run holds the lock of a state file.

    Parameters
    ----------
    lock_path : str or os.PathLike
        The lock file.
    holder : dict or None
        What the holder wrote into the lock file (``pid``, ``host``,
        ``started_utc``, ``target``), or ``None`` when it could not be read.
    """

    def __init__(self, lock_path: str | os.PathLike[str], holder: Mapping[str, Any] | None) -> None:
        self.lock_path = str(lock_path)
        self.holder = dict(holder) if holder else None
        if self.holder:
            who = (
                f"PID {self.holder.get('pid', '?')} on host {self.holder.get('host', '?')}, "
                f"started {self.holder.get('started_utc', '?')}"
            )
        else:
            who = "an unknown process (holder information not readable yet)"
        super().__init__(
            f"Another run is using the same state files: lock {self.lock_path} is held by "
            f"{who}. Wait for it to finish, or point this run at another output folder / "
            f"progress file. (The lock is released automatically when the holder exits, "
            f"even if it is killed.)"
        )

    def __reduce__(self):  # picklable with its two-argument constructor
        return (type(self), (self.lock_path, self.holder))


class StateLock:
    """An exclusive, non-blocking lock on ``<target>.lock`` (Linux ``flock``).

    The lock is taken with ``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open file
    description, so it conflicts with another process *and* with a second
    :class:`StateLock` on the same target in the same process. The kernel drops it
    when the holder's file is closed or the process dies (including ``SIGKILL``),
    so a killed run never leaves a stale lock. The lock file itself is kept (only
    emptied on release): deleting it would open a race where two runs lock two
    different inodes.

    The holder writes its PID, host name and start time (UTC) into the lock file,
    and a refused run names them in :class:`StateLockedError`.

    Works on Linux and other POSIX systems with ``fcntl.flock``. On NFS, Linux
    emulates ``flock`` with POSIX byte-range locks, which work across clients only
    when the NFS lock service is available.

    Parameters
    ----------
    target : str or os.PathLike
        The state file to protect; the lock file is ``<target>.lock``.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.lock_path = self.target.with_name(self.target.name + ".lock")
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StateLockedError` at once.

        Raises
        ------
        StateLockedError
            If another run (or another lock object in this process) holds it.
        RuntimeError
            If this object already holds it.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_path} is already held by this StateLock")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError) as exc:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateLockedError(self.lock_path, holder) from exc
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "target": str(self.target),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except OSError:  # the lock is held; holder information is only a courtesy
            logger.debug("Could not write holder information into %s", self.lock_path)
        self._fd = fd
        logger.debug("Locked %s", self.lock_path)

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        logger.debug("Released %s", self.lock_path)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - safety net only
        with contextlib.suppress(Exception):
            if self._fd is not None:
                os.close(self._fd)


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


# --------------------------------------------------------------------------------------
# File fingerprints
# --------------------------------------------------------------------------------------


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity of a file as recorded for ``invalid-cdf`` errors.

    Parameters
    ----------
    path : str or os.PathLike
        An existing file.

    Returns
    -------
    dict
        ``{"path": absolute path, "size": bytes, "mtime_ns": int}``.

    Raises
    ------
    OSError
        If the file cannot be ``stat``-ed.
    """
    p = Path(path)
    st = p.stat()
    return {"path": os.path.abspath(p), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


_fingerprint_file = file_fingerprint  # alias: a parameter of record_error shadows the name


def _same_file_version(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Compare two fingerprints by file *name*, size and mtime (not by folder).

    Comparing the name rather than the full path keeps a moved (or re-mounted)
    data folder from forcing a retry of every invalid file, while a new version of
    a file (``_v02``) or a re-downloaded file (new size/mtime) still counts as a
    change.
    """
    try:
        return (
            Path(str(old["path"])).name == Path(str(new["path"])).name
            and int(old["size"]) == int(new["size"])
            and int(old["mtime_ns"]) == int(new["mtime_ns"])
        )
    except (KeyError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# Progress store
# --------------------------------------------------------------------------------------

#: ``"schema"`` value of a progress file.
PROGRESS_SCHEMA = "fastspectro_dask.progress"
#: ``"version"`` value written by this module.
PROGRESS_VERSION = 1
#: Error reasons whose orbits a resumed run processes again by default.
RETRYABLE_REASONS: tuple[str, ...] = ("timeout", "worker-lost", "generic")

_FILES_SUFFIX = "_files"


class ProgressStore:
    """The progress JSON of one scale combination, shared with the other combinations.

    Use it as a context manager: entering takes the exclusive lock
    (:class:`StateLock` on ``<path>.lock``) and loads the file; leaving flushes
    pending changes and releases the lock, also when the block raises.

    Parameters
    ----------
    path : str or os.PathLike
        The progress JSON (created with its folder when missing).
    y_scale, z_scale : str
        The scale combination, e.g. ``"linear"`` and ``"log"``.
    flush_batch_size : int, optional
        Processed orbits per write (>= 1, default 10).
    flush_interval_seconds : float or None, optional
        Also write when this much time passed since the last write and something
        changed (checked whenever :meth:`maybe_flush` runs). ``None`` (default)
        disables it.
    instrument_order : sequence of str, optional
        The instruments, for error keys (others are accepted too).
    retry_reasons : iterable of str, optional
        Reasons a resumed run retries, default :data:`RETRYABLE_REASONS`
        (``timeout``, ``worker-lost``, ``generic``). ``plotting`` and
        ``divide-by-zero`` are deterministic for a given file and code, so they
        are not retried by default; ``invalid-cdf`` is retried only when the file
        changed.
    clock : callable, optional
        Monotonic clock in seconds, injectable for tests.

    Attributes
    ----------
    writes : int
        How many times this store wrote the progress file.

    Notes
    -----
    **Keys** (``y``/``z`` are the scales): ``{y}_{z}_completed`` and
    ``{y}_{z}_last_orbit`` (always written); ``{instrument}_{y}_{z}_error-{reason}``
    (sorted orbit lists, written only when non-empty);
    ``{instrument}_{y}_{z}_error-invalid-cdf_files`` (orbit -> ``{"path", "size",
    "mtime_ns"}`` of the offending file); and the shared ``schema``, ``version`` and
    ``updated_utc``.

    **Vocabulary**

    *completed*
        The orbit was processed and no instrument recorded an error
        (``{y}_{z}_completed``).
    *processed*
        The pipeline finished the orbit: every instrument either succeeded or
        recorded an error (:meth:`mark_orbit_done` / :meth:`record_success`). An
        orbit with errors for some instruments is processed but not completed; it
        appears in the ``{instrument}_{y}_{z}_error-{reason}`` lists instead.
    *done* (:meth:`is_done`)
        Completed, or processed with only non-retryable errors (reasons not in
        ``retry_reasons``; ``invalid-cdf`` counts as non-retryable here because the
        store cannot see files - :meth:`should_retry` checks them).
    *watermark* (``{y}_{z}_last_orbit``)
        The largest orbit ``W`` of the run's orbit list (:meth:`set_orbits`) such
        that every listed orbit ``<= W`` is done; ``null`` when the first listed
        orbit is not done or no orbit list was given. It can go down (an orbit
        below it is re-processed, or the list gained a smaller orbit): it is
        recomputed, never carried over. It is a fast-path hint; :meth:`should_retry`
        is authoritative.

    **Batching and durability**

    The unit of batching is a processed orbit. :meth:`mark_orbit_done` and
    :meth:`record_success` call :meth:`maybe_flush`, which writes once
    ``flush_batch_size`` orbits were processed since the last write, or once
    ``flush_interval_seconds`` have passed since the last write and something
    changed. Hence at most ``flush_batch_size - 1`` processed orbits are ever
    unrecorded on disk. Errors of an orbit still in progress are held in memory and
    written only when the orbit is processed, so a crash mid-orbit leaves that orbit
    looking unprocessed (it is simply redone) rather than half-recorded.

    Every write is a read-modify-write under the lock: the file is re-read, the
    keys of this ``(y_scale, z_scale)`` are replaced, every other key (other scale
    combinations, unknown keys) is preserved, and the result is written with
    :func:`atomic_write_json`. A corrupt file is moved aside by
    :func:`load_json_state` and the run starts fresh.

    Outcomes recorded in this session for an orbit replace what earlier runs
    recorded for it: the first :meth:`record_error` / :meth:`record_success` /
    :meth:`mark_orbit_done` of an orbit removes it from the completed and error
    lists of this scale combination.

    Examples
    --------
    >>> with ProgressStore(out / "progress.json", "linear", "log") as store:  # doctest: +SKIP
    ...     store.set_orbits(orbits)
    ...     todo = [o for o in orbits if store.should_retry(o, index[o])]
    ...     for orbit, outcome in results:
    ...         for inst, reason in outcome.errors.items():
    ...             store.record_error(orbit, inst, reason)
    ...         store.mark_orbit_done(orbit)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        y_scale: str,
        z_scale: str,
        *,
        flush_batch_size: int = 10,
        flush_interval_seconds: float | None = None,
        instrument_order: Sequence[str] = ("ees", "eeb", "ies", "ieb"),
        retry_reasons: Iterable[str] = RETRYABLE_REASONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("y_scale", y_scale), ("z_scale", z_scale)):
            if not isinstance(value, str) or not value or "_" in value:
                raise ValueError(f"{name} must be a non-empty string without '_': {value!r}")
        if isinstance(flush_batch_size, bool) or int(flush_batch_size) != flush_batch_size:
            raise ValueError(f"flush_batch_size must be an integer >= 1: {flush_batch_size!r}")
        if flush_batch_size < 1:
            raise ValueError(f"flush_batch_size must be an integer >= 1: {flush_batch_size!r}")
        if flush_interval_seconds is not None and not flush_interval_seconds > 0:
            raise ValueError(
                f"flush_interval_seconds must be > 0 or None: {flush_interval_seconds!r}"
            )
        self.retry_reasons = frozenset(retry_reasons)
        unknown = self.retry_reasons - set(ERROR_REASONS)
        if unknown:
            raise ValueError(f"unknown retry reasons {sorted(unknown)}; use {ERROR_REASONS}")
        for inst in instrument_order:
            _check_instrument(inst)

        self.path = Path(path)
        self.y_scale = y_scale
        self.z_scale = z_scale
        self.flush_batch_size = int(flush_batch_size)
        self.flush_interval_seconds = flush_interval_seconds
        self.instrument_order = tuple(instrument_order)
        self.clock = clock
        #: Number of times the progress file was written by this store.
        self.writes = 0

        self._prefix = f"{y_scale}_{z_scale}"
        self._own_key_re = re.compile(
            rf"^(?:{re.escape(self._prefix)}_(?:completed|last_orbit)"
            rf"|(?P<inst>[^_]+)_{re.escape(self._prefix)}_error-(?P<reason>[a-z0-9-]+)"
            rf"(?P<files>{_FILES_SUFFIX})?)$"
        )
        self._lock = StateLock(self.path)
        self._mutex = threading.RLock()
        self._open = False
        self._reset_memory()
        self._others: dict[str, Any] = {}
        self._orbits: list[int] | None = None
        self._wm_idx = 0
        self._dirty = False
        self._since_flush: set[int] = set()
        self._last_flush = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def _reset_memory(self) -> None:
        self._completed: set[int] = set()
        #: orbit -> instrument -> set of reasons (processed orbits only)
        self._errors: dict[int, dict[str, set[str]]] = {}
        #: (orbit, instrument) -> fingerprint, for invalid-cdf errors
        self._fingerprints: dict[tuple[int, str], dict[str, Any]] = {}
        #: orbits touched in this session and not yet processed -> instrument -> (reason, fp)
        self._pending: dict[int, dict[str, tuple[str, dict[str, Any] | None]]] = {}
        #: orbits whose entries from earlier runs were already replaced in this session
        self._touched: set[int] = set()
        self._wm_idx = 0

    def open(self) -> ProgressStore:
        """Take the lock and load the file (what ``with`` does on entry).

        Returns
        -------
        ProgressStore
            ``self``.

        Raises
        ------
        StateLockedError
            If another run holds the lock.
        """
        with self._mutex:
            if self._open:
                raise RuntimeError(f"{self!r} is already open")
            self.acquire_lock()
            try:
                self._load()
            except BaseException:
                self._lock.release()
                raise
            self._open = True
            self._last_flush = self.clock()
        return self

    def acquire_lock(self) -> None:
        """Take the lock only, without reading the file (a no-op when already held).

        A run calls it before it writes anything or starts a cluster, so that a second
        run on the same state is refused at once; :meth:`open` then loads the file under
        the lock it holds, and :meth:`close` releases it.

        Raises
        ------
        StateLockedError
            If another run holds the lock.
        """
        with self._mutex:
            if self._lock.locked:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()

    def close(self) -> None:
        """Flush pending changes and release the lock (idempotent)."""
        with self._mutex:
            if not self._open:
                self._lock.release()  # held by acquire_lock() alone, or not at all
                return
            try:
                self.flush()
            finally:
                self._open = False
                self._lock.release()

    def __enter__(self) -> ProgressStore:
        return self.open()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # do not mask the original error
            logger.exception("Could not flush %s while handling another error", self.path)

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return (
            f"ProgressStore({str(self.path)!r}, {self.y_scale!r}, {self.z_scale!r}, "
            f"flush_batch_size={self.flush_batch_size}, {state})"
        )

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager")

    # -- loading and saving ------------------------------------------------------------

    def _load(self) -> None:
        self._reset_memory()
        data = load_json_state(self.path, kind="progress") or {}
        version = data.get("version")
        if "version" in data and (not isinstance(version, int) or version > PROGRESS_VERSION):
            logger.warning(
                "%s has progress schema version %r; this version of fastspectro_dask "
                "writes version %d and reads it as best it can.",
                self.path,
                version,
                PROGRESS_VERSION,
            )
        self._others = {}
        for key, value in data.items():
            m = self._own_key_re.match(key)
            if m is None:
                if key not in ("schema", "version", "updated_utc"):
                    self._others[key] = value
                continue
            if key == f"{self._prefix}_completed":
                self._completed.update(self._orbit_list(key, value))
            elif key == f"{self._prefix}_last_orbit":
                continue  # recomputed, never carried over
            elif m.group("files"):
                if not isinstance(value, dict):
                    logger.warning("%s: ignoring malformed %s", self.path, key)
                    continue
                for orbit_text, fp in value.items():
                    try:
                        orbit = int(orbit_text)
                    except (TypeError, ValueError):
                        logger.warning("%s: ignoring orbit %r in %s", self.path, orbit_text, key)
                        continue
                    if isinstance(fp, dict):
                        self._fingerprints[(orbit, m.group("inst"))] = dict(fp)
            else:
                inst, reason = m.group("inst"), m.group("reason")
                if reason not in ERROR_REASONS:
                    logger.warning("%s: keeping unknown error reason key %s", self.path, key)
                for orbit in self._orbit_list(key, value):
                    self._errors.setdefault(orbit, {}).setdefault(inst, set()).add(reason)
        # keep only fingerprints that belong to a recorded invalid-cdf error
        self._fingerprints = {
            (o, i): fp
            for (o, i), fp in self._fingerprints.items()
            if "invalid-cdf" in self._errors.get(o, {}).get(i, ())
        }
        logger.debug(
            "Loaded %s (%s): %d completed, %d with errors",
            self.path,
            self._prefix,
            len(self._completed),
            len(self._errors),
        )

    def _orbit_list(self, key: str, value: Any) -> list[int]:
        if not isinstance(value, list):
            logger.warning("%s: ignoring malformed %s (not a list)", self.path, key)
            return []
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                logger.warning("%s: ignoring non-integer orbit %r in %s", self.path, v, key)
                continue
            out.append(v)
        return out

    def _own_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            f"{self._prefix}_completed": sorted(self._completed),
            f"{self._prefix}_last_orbit": self.last_orbit,
        }
        lists: dict[str, list[int]] = {}
        files: dict[str, dict[str, Any]] = {}
        for orbit, per_inst in self._errors.items():
            for inst, reasons in per_inst.items():
                for reason in reasons:
                    lists.setdefault(f"{inst}_{self._prefix}_error-{reason}", []).append(orbit)
                fp = self._fingerprints.get((orbit, inst))
                if fp is not None and "invalid-cdf" in reasons:
                    key = f"{inst}_{self._prefix}_error-invalid-cdf{_FILES_SUFFIX}"
                    files.setdefault(key, {})[str(orbit)] = fp
        for key, orbits in lists.items():
            payload[key] = sorted(orbits)
        payload.update(files)
        return payload

    def _write(self) -> None:
        on_disk = load_json_state(self.path, kind="progress")
        if on_disk is None:
            data = dict(self._others)
        else:
            data = {
                k: v
                for k, v in on_disk.items()
                if self._own_key_re.match(k) is None
                and k not in ("schema", "version", "updated_utc")
            }
            self._others = dict(data)
        data.update(self._own_payload())
        data["schema"] = PROGRESS_SCHEMA
        data["version"] = PROGRESS_VERSION
        data["updated_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(self.path, data, one_line_per_key=True)
        self.writes += 1
        self._dirty = False
        self._since_flush.clear()
        self._last_flush = self.clock()
        logger.debug("Wrote %s (%s), write #%d", self.path, self._prefix, self.writes)

    def flush(self) -> bool:
        """Write now if anything changed since the last write.

        Returns
        -------
        bool
            Whether the file was written.
        """
        with self._mutex:
            self._require_open()
            if not self._dirty:
                return False
            self._write()
            return True

    def maybe_flush(self) -> bool:
        """Write if a batch is full or the flush interval has elapsed.

        Returns
        -------
        bool
            Whether the file was written.
        """
        with self._mutex:
            self._require_open()
            if not self._dirty:
                return False
            if len(self._since_flush) >= self.flush_batch_size or (
                self.flush_interval_seconds is not None
                and self.clock() - self._last_flush >= self.flush_interval_seconds
            ):
                self._write()
                return True
            return False

    @property
    def dirty(self) -> bool:
        """Whether there are changes not yet written."""
        return self._dirty

    @property
    def pending_orbits(self) -> int:
        """Processed orbits not yet written (always < ``flush_batch_size`` after a flush check)."""
        return len(self._since_flush)

    # -- recording ---------------------------------------------------------------------

    def _touch(self, orbit: int) -> None:
        """First outcome of ``orbit`` in this session: forget earlier runs' entries."""
        if orbit in self._touched:
            return
        self._touched.add(orbit)
        changed = orbit in self._completed or orbit in self._errors
        self._completed.discard(orbit)
        per_inst = self._errors.pop(orbit, {})
        for inst in per_inst:
            self._fingerprints.pop((orbit, inst), None)
        self._pending.setdefault(orbit, {})
        self._invalidate_watermark(orbit)
        if changed:
            self._dirty = True

    def record_error(
        self,
        orbit: int,
        instrument: str,
        reason: str,
        *,
        file_fingerprint: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    ) -> None:
        """Record that ``instrument`` failed for ``orbit`` with error category ``reason``.

        The error is held in memory until the orbit is processed
        (:meth:`mark_orbit_done`), then lands in
        ``{instrument}_{y}_{z}_error-{reason}``. Recording an error for an orbit
        already processed in this session updates the lists at once. A later error
        for the same orbit and instrument replaces the earlier one.

        Parameters
        ----------
        orbit : int
            The orbit number.
        instrument : str
            E.g. ``"ees"``.
        reason : str
            One of :data:`fastspectro_dask.errors.ERROR_REASONS`.
        file_fingerprint : mapping, path or None, optional
            For ``invalid-cdf``: the offending file's fingerprint
            (:func:`file_fingerprint`) or its path (fingerprinted now), so that a
            resumed run retries the orbit when the file changed. Ignored for
            other reasons.

        Raises
        ------
        ValueError
            For an unknown reason or a malformed instrument name.
        """
        orbit = _as_orbit(orbit)
        _check_instrument(instrument)
        if reason not in ERROR_REASONS:
            raise ValueError(f"unknown error reason {reason!r}; expected one of {ERROR_REASONS}")
        fp: dict[str, Any] | None = None
        if reason == "invalid-cdf" and file_fingerprint is not None:
            if isinstance(file_fingerprint, Mapping):
                fp = {k: _to_builtin(v) for k, v in file_fingerprint.items()}
            else:
                try:
                    fp = _fingerprint_file(file_fingerprint)
                except OSError as exc:
                    logger.debug("Cannot fingerprint %s: %s", file_fingerprint, exc)
        with self._mutex:
            self._require_open()
            self._touch(orbit)
            if orbit in self._pending:
                self._pending[orbit][instrument] = (reason, fp)
                return
            # already processed in this session: update the committed state directly
            self._completed.discard(orbit)
            self._errors.setdefault(orbit, {})[instrument] = {reason}
            self._fingerprints.pop((orbit, instrument), None)
            if fp is not None:
                self._fingerprints[(orbit, instrument)] = fp
            self._invalidate_watermark(orbit)
            self._dirty = True

    def mark_orbit_done(self, orbit: int) -> bool:
        """Record that the pipeline finished ``orbit`` (every instrument succeeded or failed).

        Without errors recorded for it in this session the orbit becomes
        *completed*; otherwise its errors are committed to the error lists. Then
        :meth:`maybe_flush` runs.

        Parameters
        ----------
        orbit : int
            The orbit number.

        Returns
        -------
        bool
            Whether the progress file was written.
        """
        orbit = _as_orbit(orbit)
        with self._mutex:
            self._require_open()
            self._touch(orbit)
            pending = self._pending.pop(orbit, None)
            if pending is not None:
                if pending:
                    per_inst = self._errors.setdefault(orbit, {})
                    for inst, (reason, fp) in pending.items():
                        per_inst[inst] = {reason}
                        if fp is not None:
                            self._fingerprints[(orbit, inst)] = fp
                else:
                    self._completed.add(orbit)
                self._dirty = True
            self._since_flush.add(orbit)
            return self.maybe_flush()

    def record_success(self, orbit: int) -> bool:
        """Record that every product of ``orbit`` was made: the orbit is completed.

        Removes the orbit from every error list of this scale combination (a
        successful retry) and discards errors recorded for it in this session,
        then counts it as processed like :meth:`mark_orbit_done`.

        Parameters
        ----------
        orbit : int
            The orbit number.

        Returns
        -------
        bool
            Whether the progress file was written.
        """
        orbit = _as_orbit(orbit)
        with self._mutex:
            self._require_open()
            self._touch(orbit)
            dropped = self._pending.pop(orbit, None)
            if dropped:
                logger.debug("Orbit %d succeeded; discarding its errors %s", orbit, dropped)
            per_inst = self._errors.pop(orbit, {})
            for inst in per_inst:
                self._fingerprints.pop((orbit, inst), None)
            if orbit not in self._completed or per_inst or dropped is not None:
                self._dirty = True
            self._completed.add(orbit)
            self._since_flush.add(orbit)
            return self.maybe_flush()

    def reset(self) -> None:
        """Forget this scale combination's progress (``ignore_progress_json=True``).

        Drops this ``(y_scale, z_scale)``'s completed, watermark and error keys,
        in memory and in the file (written at once, other keys preserved), so a
        run killed before its first flush cannot resume from the old progress.
        """
        with self._mutex:
            self._require_open()
            self._reset_memory()
            self._since_flush.clear()
            self._dirty = True
            self._write()
            logger.info("Progress of %s in %s reset", self._prefix, self.path)

    # -- queries -----------------------------------------------------------------------

    def set_orbits(self, orbits: Iterable[int]) -> None:
        """Give the store the run's full orbit list (used for the watermark).

        Parameters
        ----------
        orbits : iterable of int
            Every orbit of the run; sorted and de-duplicated here.
        """
        new = sorted({_as_orbit(o) for o in orbits})
        with self._mutex:
            if new != self._orbits:
                self._orbits = new
                self._wm_idx = 0
                if self._open:
                    self._dirty = True

    def _invalidate_watermark(self, orbit: int) -> None:
        if self._orbits is not None:
            self._wm_idx = min(self._wm_idx, bisect.bisect_left(self._orbits, orbit))

    def is_completed(self, orbit: int) -> bool:
        """Whether ``orbit`` is in the completed list (processed, no error)."""
        with self._mutex:
            return _as_orbit(orbit) in self._completed

    def is_done(self, orbit: int) -> bool:
        """Whether ``orbit`` is done: completed, or processed with only non-retryable errors.

        An orbit in progress in this session is not done. ``invalid-cdf`` counts as
        non-retryable here; use :meth:`should_retry` to check the files.
        """
        orbit = _as_orbit(orbit)
        with self._mutex:
            if orbit in self._pending:
                return False
            if orbit in self._completed:
                return True
            per_inst = self._errors.get(orbit)
            if not per_inst:
                return False
            return not any(r in self.retry_reasons for rs in per_inst.values() for r in rs)

    def orbit_errors(self, orbit: int) -> dict[str, list[str]]:
        """The recorded (processed) errors of ``orbit``: instrument -> sorted reasons."""
        with self._mutex:
            per_inst = self._errors.get(_as_orbit(orbit), {})
            return {inst: sorted(rs) for inst, rs in per_inst.items()}

    def should_retry(
        self,
        orbit: int,
        instrument_files: Mapping[str, str | os.PathLike[str]] | None = None,
    ) -> bool:
        """Whether a (resumed) run must process ``orbit``.

        Rules: a completed orbit is skipped; an orbit never processed is
        processed; an orbit with a ``timeout``, ``worker-lost`` or ``generic``
        error (``retry_reasons``) is retried; an ``invalid-cdf`` error is retried
        only when the instrument's current file differs from the recorded
        fingerprint (file name, size or mtime changed, or the file is gone);
        ``plotting`` and ``divide-by-zero`` are not retried by default.

        Parameters
        ----------
        orbit : int
            The orbit number.
        instrument_files : mapping or None, optional
            The orbit's current files, instrument -> path (from discovery). With
            ``None`` the files are not checked and ``invalid-cdf`` is not retried.
            An ``invalid-cdf`` error recorded without a fingerprint is not retried.

        Returns
        -------
        bool
            ``True`` when the orbit should be submitted.
        """
        orbit = _as_orbit(orbit)
        with self._mutex:
            if not self.is_done(orbit):
                return True
            if orbit in self._completed or instrument_files is None:
                return False
            for inst, reasons in self._errors.get(orbit, {}).items():
                if "invalid-cdf" not in reasons:
                    continue
                old = self._fingerprints.get((orbit, inst))
                if old is None:
                    continue
                path = instrument_files.get(inst)
                if path is None:
                    logger.info(
                        "Orbit %d: %s file is gone since invalid-cdf; retrying", orbit, inst
                    )
                    return True
                try:
                    new = file_fingerprint(path)
                except OSError:
                    return True
                if not _same_file_version(old, new):
                    logger.info(
                        "Orbit %d: %s file changed since invalid-cdf; retrying", orbit, inst
                    )
                    return True
            return False

    @property
    def completed(self) -> list[int]:
        """Sorted completed orbits (including unwritten changes)."""
        with self._mutex:
            return sorted(self._completed)

    @property
    def last_orbit(self) -> int | None:
        """The watermark (see the class docstring); ``None`` when undefined."""
        with self._mutex:
            if self._orbits is None:
                return None
            n = len(self._orbits)
            while self._wm_idx < n and self.is_done(self._orbits[self._wm_idx]):
                self._wm_idx += 1
            return self._orbits[self._wm_idx - 1] if self._wm_idx > 0 else None


def _as_orbit(orbit: Any) -> int:
    if isinstance(orbit, bool):
        raise TypeError(f"orbit must be an integer, not {orbit!r}")
    try:
        value = operator.index(orbit)
    except TypeError:
        raise TypeError(f"orbit must be an integer, not {orbit!r}") from None
    return int(value)


def _check_instrument(instrument: Any) -> None:
    if not isinstance(instrument, str) or not instrument or "_" in instrument:
        raise ValueError(f"instrument must be a non-empty string without '_': {instrument!r}")


# --------------------------------------------------------------------------------------
# Append-only JSON-lines journal, committed through a small atomic JSON
# --------------------------------------------------------------------------------------


def move_aside(
    path: str | os.PathLike[str], *, kind: str = "state", reason: str = "corrupt"
) -> Path | None:
    """Rename a bad state file to ``<name>.corrupt-<UTC timestamp>`` (kept, never deleted).

    :func:`load_json_state` moves a corrupt JSON aside with it.

    Parameters
    ----------
    path : str or os.PathLike
        The file to move.
    kind : str, optional
        What the file is, used in the warning.
    reason : str, optional
        Why it is moved, used in the warning.

    Returns
    -------
    pathlib.Path or None
        The new path, or ``None`` when ``path`` does not exist.
    """
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{_utc_stamp()}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{_utc_stamp()}-{n}")
        n += 1
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    logger.warning(
        "Corrupt %s file %s (%s): moved aside to %s; starting fresh.", kind, path, reason, aside
    )
    return aside


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class JsonLinesJournal:
    """An append-only JSON-lines file whose committed length lives in another file.

    The journal is the large, growing part of a state whose small part is a JSON written
    with :func:`atomic_write_json`. Records are added in memory (:meth:`add`) and written
    by :meth:`commit`, which appends them (one compact JSON object per line), ``fsync``-s
    the journal and returns a *commit record* ``{"file", "id", "lines", "bytes",
    "sha256"}``. The caller stores that record in its JSON, written **after** the commit:
    the JSON replace is the single commit point. A crash before it leaves bytes after the
    committed length (a torn line, or whole lines of an unfinished flush); :meth:`load`
    ignores them and truncates them away, so they never reach the state. The committed
    prefix is checked by length, line count and SHA-256 (the first line is a header with
    a random ``id``, so a journal of another run never matches); a journal that does not
    match is moved aside like a corrupt JSON (:func:`move_aside`) and :meth:`load` returns
    ``None``.

    A journal is only ever rewritten whole (:meth:`create`, or :meth:`prepare_rewrite`
    then :meth:`finish_rewrite` for compaction): the new file is written and
    ``fsync``-ed beside the old one, then moved onto it. For a crash-safe compaction,
    store both commit records in the JSON between the two steps; :meth:`load` accepts
    the first record that matches the file.

    The cost of a commit is that of the records added since the last one: it does not
    grow with the journal.

    Parameters
    ----------
    path : str or os.PathLike
        The journal file (its folder must exist).
    kind : str, optional
        What the journal is, for the header and messages.
    """

    def __init__(self, path: str | os.PathLike[str], *, kind: str = "journal") -> None:
        self.path = Path(path)
        self.kind = kind
        self.header: dict[str, Any] | None = None
        self._fd: int | None = None
        self._id: str | None = None
        self._hash: Any = None
        self._bytes = 0
        self._lines = 0
        self._pending: list[bytes] = []
        self._next: tuple[str, Any, int, int, dict[str, Any]] | None = None
        #: Bytes appended by the last :meth:`commit`.
        self.last_commit_bytes = 0
        #: Bytes appended by all commits of this object.
        self.bytes_appended = 0

    # -- properties --------------------------------------------------------------------

    @property
    def tmp_path(self) -> Path:
        """Where a rewrite is prepared (deterministic: a stale one is overwritten)."""
        return self.path.with_name(f".{self.path.name}.rewrite.tmp")

    @property
    def record(self) -> dict[str, Any] | None:
        """The commit record of what is committed now (``None`` before create/load)."""
        if self._id is None:
            return None
        return self._record(self._id, self._hash, self._bytes, self._lines)

    def _record(self, jid: str, h: Any, nbytes: int, nlines: int) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "id": jid,
            "lines": nlines,
            "bytes": nbytes,
            "sha256": h.hexdigest(),
        }

    @property
    def lines(self) -> int:
        """Committed lines, the header included."""
        return self._lines

    @property
    def size(self) -> int:
        """Committed bytes."""
        return self._bytes

    @property
    def pending(self) -> int:
        """Records added and not yet committed."""
        return len(self._pending)

    # -- writing -----------------------------------------------------------------------

    @staticmethod
    def encode(record: Mapping[str, Any]) -> bytes:
        """One record as its journal line (compact JSON, sorted keys, ``\\n``-terminated)."""
        try:
            text = json.dumps(
                record,
                sort_keys=True,
                separators=(",", ":"),
                allow_nan=False,
                default=_json_default,
            )
        except TypeError:
            text = json.dumps(
                _to_builtin(record), sort_keys=True, separators=(",", ":"), allow_nan=False
            )
        return (text + "\n").encode("utf-8")

    def add(self, record: Mapping[str, Any]) -> None:
        """Queue one record (a JSON object) for the next :meth:`commit`.

        Raises
        ------
        RuntimeError
            Before :meth:`create` or :meth:`load`.
        TypeError, ValueError
            If the record cannot be serialised (nothing is queued).
        """
        if self._id is None:
            raise RuntimeError(f"{self.path}: create() or load() the journal first")
        if not isinstance(record, Mapping):
            raise TypeError("a journal record must be a mapping")
        self._pending.append(self.encode(record))

    def discard_pending(self) -> int:
        """Forget the queued records; returns how many there were."""
        n = len(self._pending)
        self._pending = []
        return n

    def _append_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        return self._fd

    def commit(self) -> dict[str, Any]:
        """Append the queued records, ``fsync``, and return the new commit record.

        On an error (or an interrupt) while writing, the file is cut back to the last
        committed length (best effort; :meth:`load` would ignore the tail anyway) and
        the records stay queued.

        Returns
        -------
        dict
            ``{"file", "id", "lines", "bytes", "sha256"}``; store it in the JSON.
        """
        if self._id is None:
            raise RuntimeError(f"{self.path}: create() or load() the journal first")
        data = b"".join(self._pending)
        if data:
            h = self._hash.copy()
            h.update(data)
            nbytes, nlines = self._bytes + len(data), self._lines + len(self._pending)
            fd = self._append_fd()
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._bytes)
                raise
            self._hash, self._bytes, self._lines, self._pending = h, nbytes, nlines, []
        self.last_commit_bytes = len(data)
        self.bytes_appended += len(data)
        return self.record  # type: ignore[return-value]

    def prepare_rewrite(
        self, header: Mapping[str, Any] | None = None, records: Iterable[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """Write a whole new journal (header + records) to :attr:`tmp_path`, ``fsync``-ed.

        Nothing changes at :attr:`path` until :meth:`finish_rewrite`.

        Parameters
        ----------
        header : mapping, optional
            Extra fields of the header line (``journal``, ``id`` and ``created_utc``
            are set here).
        records : iterable of mapping
            The records of the new journal.

        Returns
        -------
        dict
            The commit record the new journal will have.
        """
        if self._pending:
            raise RuntimeError("commit or discard the queued records before a rewrite")
        jid = uuid.uuid4().hex
        head = {
            **(header or {}),
            "journal": self.kind,
            "id": jid,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        h = hashlib.sha256()
        nbytes = nlines = 0
        tmp = self.tmp_path
        try:
            with open(tmp, "wb") as fh:
                for rec in itertools.chain([head], records):
                    line = self.encode(rec)
                    fh.write(line)
                    h.update(line)
                    nbytes += len(line)
                    nlines += 1
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._next = (jid, h, nbytes, nlines, head)
        return self._record(jid, h, nbytes, nlines)

    def finish_rewrite(self) -> dict[str, Any]:
        """Move the prepared journal onto :attr:`path`; returns its commit record."""
        if self._next is None:
            raise RuntimeError("no rewrite prepared")
        self.close()
        os.replace(self.tmp_path, self.path)
        _fsync_dir(self.path.parent)
        jid, h, nbytes, nlines, head = self._next
        self._next = None
        self._id, self._hash, self._bytes, self._lines = jid, h, nbytes, nlines
        self.header = head
        return self.record  # type: ignore[return-value]

    def discard_rewrite(self) -> None:
        """Drop a prepared rewrite (the current journal stays)."""
        self._next = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)

    def create(
        self, header: Mapping[str, Any] | None = None, records: Iterable[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """Start a new journal at :attr:`path` (atomically replacing any file there).

        Returns
        -------
        dict
            Its commit record.
        """
        self.discard_pending()
        self.prepare_rewrite(header, records)
        return self.finish_rewrite()

    # -- reading -----------------------------------------------------------------------

    def load(
        self, commits: Iterable[Mapping[str, Any] | None], *, repair: bool = True
    ) -> list[dict[str, Any]] | None:
        """Open the journal at the first of ``commits`` that matches it; return its records.

        Parameters
        ----------
        commits : iterable of mapping or None
            Candidate commit records from the JSON (``None`` entries are skipped), e.g.
            the current one and the one of an unfinished compaction.
        repair : bool, optional
            Truncate an uncommitted tail, move a journal that matches no record aside
            (:func:`move_aside`, with a warning) and remove a stale rewrite file. With
            ``False`` the files are only read.

        Returns
        -------
        list of dict or None
            The committed records after the header (the header is in :attr:`header`);
            ``None`` when there is no candidate, the file is missing (a warning), or it
            matches no candidate or is malformed (moved aside).

        Raises
        ------
        OSError
            If the file exists but cannot be read.
        """
        self.close()
        self._id, self._hash, self._bytes, self._lines = None, None, 0, 0
        self._pending, self.header = [], None
        if repair:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_path)  # a rewrite that was never put in place
        cands = [dict(c) for c in commits if isinstance(c, Mapping)]
        if not cands:
            return None
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            logger.warning("%s journal %s is missing", self.kind, self.path)
            return None
        want = []
        for c in cands:
            try:
                want.append((str(c["id"]), int(c["bytes"]), int(c["lines"]), str(c["sha256"])))
            except (KeyError, TypeError, ValueError):
                continue
        with open(self.path, "rb") as fh:
            raw = fh.read(max((w[1] for w in want), default=0))
        reason = "its commit record in the JSON is malformed"
        chosen = None
        for jid, nbytes, nlines, sha in want:
            if nbytes > len(raw):
                reason = f"{len(raw)} bytes, but {nbytes} were committed"
                continue
            h = hashlib.sha256(memoryview(raw)[:nbytes])
            if h.hexdigest() != sha:
                reason = "its content does not match the committed checksum"
                continue
            chosen = (jid, nbytes, nlines, h)
            break
        records: list[dict[str, Any]] = []
        if chosen is not None:
            jid, nbytes, nlines, h = chosen
            try:
                records = self._parse(raw[:nbytes], jid, nlines)
            except ValueError as exc:
                reason, chosen = str(exc), None
        if chosen is None:
            if repair:
                move_aside(self.path, kind=f"{self.kind} journal", reason=reason)
            return None
        jid, nbytes, nlines, h = chosen
        if size > nbytes and repair:
            logger.info(
                "%s: ignoring %d uncommitted bytes at the end (an interrupted flush); truncated",
                self.path,
                size - nbytes,
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(nbytes)
                fh.flush()
                os.fsync(fh.fileno())
        self.header = records.pop(0)
        self._id, self._hash, self._bytes, self._lines = jid, h, nbytes, nlines
        return records

    @staticmethod
    def _parse(data: bytes, jid: str, nlines: int) -> list[dict[str, Any]]:
        if data and not data.endswith(b"\n"):
            raise ValueError("the committed part does not end with a full line")
        lines = data.split(b"\n")[:-1]
        if len(lines) != nlines or not lines:
            raise ValueError(f"{len(lines)} lines, but {nlines} were committed")
        out: Any = None
        if b"" not in lines:
            try:  # fast path: one parse of all lines as a JSON array
                out = json.loads(b"[" + b",".join(lines) + b"]")
            except (UnicodeDecodeError, ValueError):
                out = None
        if out is None or len(out) != nlines:  # find the line at fault
            out = []
            for n, line in enumerate(lines, start=1):
                try:
                    out.append(json.loads(line.decode("utf-8")))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise ValueError(f"line {n} is not valid JSON ({exc})") from None
        for n, rec in enumerate(out, start=1):
            if not isinstance(rec, dict):
                raise ValueError(f"line {n} is not a JSON object")
        if out[0].get("id") != jid:
            raise ValueError("its header does not carry the committed journal id")
        return out

    # -- misc --------------------------------------------------------------------------

    def move_aside(self, reason: str) -> Path | None:
        """Close the journal and move its file aside (:func:`move_aside`), if it exists."""
        self.close()
        self._id, self._hash, self._bytes, self._lines = None, None, 0, 0
        self._pending = []
        return move_aside(self.path, kind=f"{self.kind} journal", reason=reason)

    def close(self) -> None:
        """Close the append handle (queued records stay queued)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> JsonLinesJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net only
        with contextlib.suppress(Exception):
            self.close()
