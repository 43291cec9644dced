"""The one atomic writer of the package, the lock of a state file, and their clean-up.

Every file the package writes goes through :func:`atomic_open`: a temporary
``.<name>.<pid>.<12 hex>.tmp`` in the target's folder, created ``0666`` minus the umask,
flushed and ``fsync``-ed, then moved onto the target with :func:`os.replace`. A reader sees
the old file or the new one, never a mix; one a ``kill -9`` left behind is removed by
:func:`remove_stale_temporaries` at the next run. A corrupt state file is moved aside
(kept, never deleted) by :func:`load_json_state`; :class:`StateLock` refuses a second run
on the same state.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from fastspectro_dask.errors import FastSpectroError

__all__ = [
    "StateLock",
    "StateLockedError",
    "atomic_open",
    "atomic_write",
    "atomic_write_json",
    "load_json_state",
    "move_aside",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

#: Our temporaries (``.<name>.<pid>.<12 hex>.tmp``) and the ``tempfile`` naming of earlier
#: versions (``.<name>.<8 of [a-z0-9_]>.tmp``), after the ``.<name>`` prefix.
_TMP_SUFFIX = re.compile(r"\.(?:\d+\.[0-9a-f]{12}|[a-z0-9_]{8})\.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, sync_dir: bool = True) -> Iterator[IO[bytes]]:
    """Open a binary file whose content replaces ``path`` atomically when the block ends.

    On any error (or interrupt) the temporary is removed and the target is untouched.
    ``sync_dir`` also ``fsync``-s the folder after the rename, best effort (state files;
    figures skip it).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as fh:  # "x": O_EXCL, mode 0666 minus the umask
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_dir:  # so that the rename survives a power loss
        with contextlib.suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, sync_dir=sync_dir) as fh:
        fh.write(data)


def _to_builtin(obj: Any) -> Any:
    """numpy scalars/arrays, paths, sets and tuples as plain JSON types; keys as ``str``."""
    if isinstance(obj, Mapping):
        return {
            k if isinstance(k, str) else str(_to_builtin(k)): _to_builtin(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_to_builtin(v) for v in (sorted(obj) if isinstance(obj, (set, frozenset)) else obj)]
    if isinstance(obj, (np.ndarray, np.generic)):
        return _to_builtin(obj.tolist()) if isinstance(obj, np.ndarray) else obj.item()
    return os.fspath(obj) if isinstance(obj, os.PathLike) else obj


def json_dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` with sorted keys, NaN refused, numpy/sets/paths as plain JSON.

    The C encoder first; only a ``TypeError`` (a numpy value or key...) costs a conversion.
    """
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False, **kw)
    except TypeError:
        return json.dumps(_to_builtin(obj), sort_keys=True, allow_nan=False, **kw)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (:func:`json_dumps`, ``indent=1``) to ``path`` atomically.

    Serialised first, so a ``TypeError``/``ValueError`` (NaN, an unknown type) never
    touches the target.
    """
    atomic_write(path, (json_dumps(obj, indent=1) + "\n").encode("utf-8"))


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of :func:`atomic_open` that a killed run left beside ``path``.

    Only those of this very file (:data:`_TMP_SUFFIX`), only in its folder. Call it under
    the state's lock only: a live writer's temporary would be removed under its feet
    otherwise. Returns what was removed.
    """
    path = Path(path)
    prefix, removed = f".{path.name}", []
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            if p.name.startswith(prefix) and _TMP_SUFFIX.fullmatch(p.name[len(prefix) :]):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError as exc:
                    logger.warning("could not remove the stale temporary %s: %s", p, exc)
    if removed:
        n = len(removed)
        logger.info("removed %d stale temporary file(s) of %s left by an interrupted run", n, path)
    return removed


def _utc_now(fmt: str | None = None) -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime(fmt) if fmt else now.isoformat(timespec="seconds")


def move_aside(
    path: str | os.PathLike[str], *, kind: str = "state", reason: str = "corrupt"
) -> Path | None:
    """Rename a bad file to ``<name>.corrupt-<UTC stamp>`` (kept), with a warning.

    Returns the new path, or ``None`` when ``path`` does not exist.
    """
    path, n = Path(path), 0
    aside = stamp = path.with_name(f"{path.name}.corrupt-{_utc_now('%Y%m%dT%H%M%S.%fZ')}")
    while aside.exists():
        n += 1
        aside = stamp.with_name(f"{stamp.name}-{n}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    logger.warning(
        "Corrupt %s file %s (%s): moved aside to %s; starting fresh.", kind, path, reason, aside
    )
    return aside


def load_json_state(path: str | os.PathLike[str], *, kind: str = "state") -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` if there is none or it was corrupt.

    A file that is not a UTF-8 JSON object (truncated, empty, garbage, a list) is moved
    aside with :func:`move_aside`, and the caller starts fresh. A file that exists but
    cannot be read raises ``OSError``: that is not corruption.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
        reason = f"JSON {type(obj).__name__}, not an object"
    except ValueError as exc:  # UnicodeDecodeError included
        obj, reason = None, f"not valid JSON ({exc})" if raw.strip() else "empty file"
    if isinstance(obj, dict):
        return obj
    move_aside(path, kind=kind, reason=reason)
    return None


class StateLockedError(FastSpectroError):
    """Another run holds the lock of a state file; ``holder`` is what it wrote there."""

    def __init__(self, lock_path: str | os.PathLike[str], holder: Mapping[str, Any] | None) -> None:
        self.lock_path, self.holder = str(lock_path), dict(holder) if holder else None
        h = self.holder or {}
        who = "an unknown process (holder information not readable yet)"
        if h:
            who = f"PID {h.get('pid', '?')} on host {h.get('host', '?')}, started "
            who += f"{h.get('started_utc', '?')}"
        super().__init__(
            f"Another run is using the same state files: lock {self.lock_path} is held by "
            f"{who}. Wait for it to finish, or point this run at another output folder / "
            f"progress file. (The lock is released automatically when the holder exits, "
            f"even if it is killed.)"
        )

    def __reduce__(self):  # picklable with its two-argument constructor
        return (type(self), (self.lock_path, self.holder))


class StateLock:
    """An exclusive, non-blocking ``flock`` on ``<target>.lock``.

    It conflicts with other processes and with another :class:`StateLock` of the same
    target in this process; the kernel drops it when the holder dies (even by SIGKILL), so
    no stale lock is ever left. The lock file is kept (emptied on release): deleting it
    would let two runs lock two inodes. The holder writes its PID, host and start time
    into it for :class:`StateLockedError`. On NFS, ``flock`` works across clients only
    with the NFS lock service.
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.lock_path = self.target.with_name(self.target.name + ".lock")
        self._fh: IO[bytes] | None = None  # closed (the lock dropped) if garbage-collected

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fh is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateLockedError` at once."""
        if self._fh is not None:
            raise RuntimeError(f"{self.lock_path} is already held by this StateLock")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.lock_path, "a+b")  # held until release()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError) as exc:
            holder = None
            with fh, contextlib.suppress(OSError, ValueError):
                fh.seek(0)
                holder = json.loads(fh.read(4096))
            raise StateLockedError(
                self.lock_path, holder if isinstance(holder, dict) else None
            ) from exc
        except BaseException:
            fh.close()
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": _utc_now()}
        try:  # a courtesy only: the lock is held either way
            fh.truncate(0)
            fh.write(
                (json.dumps({**info, "target": str(self.target)}, sort_keys=True) + "\n").encode()
            )
            fh.flush()
            os.fsync(fh.fileno())
        except OSError:
            logger.debug("Could not write holder information into %s", self.lock_path)
        self._fh = fh

    def release(self) -> None:
        """Release the lock (a no-op when not held)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with fh:
                with contextlib.suppress(OSError):
                    fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)  # not only closed: a forked child shares it

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
