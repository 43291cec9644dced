"""The progress JSON: its key grammar (one parser for every reader) and the store a run writes.

Keys, ``y``/``z`` being the scales and ``inst`` an instrument:

* ``{y}_{z}_completed``: sorted orbits processed without error;
* ``{y}_{z}_last_orbit``: the watermark, every orbit of the run's list up to it is done;
* ``{inst}_{y}_{z}_error-{reason}``: sorted orbits where ``inst`` failed with ``reason``;
* ``{inst}_{y}_{z}_error-invalid-cdf_files``: orbit -> fingerprint of the offending file;
* ``schema``, ``version``, ``updated_utc``, shared by every scale combination.

The file has one top-level key per line (sorted), each value compact on its line.
"""

from __future__ import annotations

import bisect
import json
import logging
import operator
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from fastspectro_dask.atomic import StateLock, _to_builtin, _utc_now, atomic_write, load_json_state
from fastspectro_dask.errors import ERROR_REASONS

__all__ = [
    "PROGRESS_SCHEMA",
    "PROGRESS_VERSION",
    "RETRYABLE_REASONS",
    "ProgressKey",
    "ProgressStore",
    "error_key",
    "file_fingerprint",
    "parse_key",
]

logger = logging.getLogger(__name__)

#: ``"schema"`` value of a progress file.
PROGRESS_SCHEMA = "fastspectro_dask.progress"
#: ``"version"`` value written by this module.
PROGRESS_VERSION = 1
#: Error reasons whose orbits a resumed run processes again by default.
RETRYABLE_REASONS: tuple[str, ...] = ("timeout", "worker-lost", "generic")
_KEY_RE = re.compile(
    r"(?P<y>[^_]+)_(?P<z>[^_]+)_(?P<kind>completed|last_orbit)"
    r"|(?P<inst>[^_]+)_(?P<ey>[^_]+)_(?P<ez>[^_]+)_error-(?P<reason>[a-z0-9-]+)(?P<files>_files)?"
)


class ProgressKey(NamedTuple):
    """A parsed progress key; ``kind`` is ``completed``, ``last_orbit``, ``error`` or ``files``."""

    kind: str
    y_scale: str
    z_scale: str
    instrument: str | None = None
    reason: str | None = None

    @property
    def scales(self) -> str:
        """``{y}_{z}``."""
        return f"{self.y_scale}_{self.z_scale}"


def parse_key(key: str) -> ProgressKey | None:
    """The meaning of a progress JSON key, or ``None`` for other keys (``schema``...)."""
    m = _KEY_RE.fullmatch(key)
    if m is None:
        return None
    if m["kind"]:
        return ProgressKey(m["kind"], m["y"], m["z"])
    return ProgressKey("files" if m["files"] else "error", m["ey"], m["ez"], m["inst"], m["reason"])


def error_key(instrument: str, y_scale: str, z_scale: str, reason: str) -> str:
    """``{instrument}_{y}_{z}_error-{reason}``."""
    return f"{instrument}_{y_scale}_{z_scale}_error-{reason}"


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path": absolute path, "size", "mtime_ns"}`` of a file (``OSError`` if missing)."""
    st = Path(path).stat()
    return {"path": os.path.abspath(path), "size": int(st.st_size), "mtime_ns": st.st_mtime_ns}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _same_file_version(old: Mapping[str, Any], path: str | os.PathLike[str]) -> bool:
    """Same file *name*, size and mtime: a moved data folder is not a change, ``_v02`` is."""
    try:
        new = file_fingerprint(path)
        return Path(str(old["path"])).name == Path(path).name and all(
            int(old[k]) == new[k] for k in ("size", "mtime_ns")
        )
    except (OSError, KeyError, TypeError, ValueError):
        return False


def _as_orbit(orbit: Any) -> int:
    if isinstance(orbit, bool) or not hasattr(orbit, "__index__"):
        raise TypeError(f"orbit must be an integer, not {orbit!r}")
    return operator.index(orbit)


def _check_name(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value or "_" in value:
        raise ValueError(f"{what} must be a non-empty string without '_': {value!r}")


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _SortedInts:
    """A set of ints, JSON-encoded sorted, by buckets of 512 values whose text is cached.

    Orbits finish roughly in order, so a flush re-encodes a bucket or two and joins the
    cached texts: its cost is a copy of the list's text, not a sort and an encode of it.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, set[int]] = {}  # x >> 9 -> its members
        self._texts: dict[int, str] = {}  # the buckets unchanged since their last encoding

    def __len__(self) -> int:
        return sum(map(len, self._buckets.values()))

    def __contains__(self, x: object) -> bool:
        return isinstance(x, int) and x in self._buckets.get(x >> 9, ())

    def __iter__(self) -> Iterator[int]:
        for b in sorted(self._buckets):
            yield from sorted(self._buckets[b])

    def add(self, x: int) -> None:
        self._buckets.setdefault(x >> 9, set()).add(x)
        self._texts.pop(x >> 9, None)

    def discard(self, x: int) -> None:
        if x in self:
            self._buckets[x >> 9].remove(x)
            self._texts.pop(x >> 9, None)
            if not self._buckets[x >> 9]:
                del self._buckets[x >> 9]

    def json(self) -> str:
        """``[1,2,3]``: the JSON list, re-encoding only the buckets changed since last time."""
        for b in self._buckets.keys() - self._texts.keys():
            self._texts[b] = ",".join(map(str, sorted(self._buckets[b])))
        return f"[{','.join(self._texts[b] for b in sorted(self._buckets))}]"


class ProgressStore:
    """The progress JSON of one scale combination, shared with the other combinations.

    Use it as a context manager: entering takes :class:`~fastspectro_dask.atomic.StateLock`
    on ``<path>.lock`` and loads the file (a corrupt one is moved aside, the run starts
    fresh); leaving flushes and releases the lock, also when the block raises.

    Vocabulary: an orbit is *processed* when every instrument succeeded or recorded an error
    (:meth:`mark_orbit_done`, :meth:`record_success`); *completed* when processed without
    error; *done* (:meth:`is_done`) when completed or processed with only errors not in
    ``retry_reasons`` (default :data:`RETRYABLE_REASONS`; ``invalid-cdf`` counts as done
    here, :meth:`should_retry` checks the file). The watermark (:attr:`last_orbit`) is the
    largest orbit of :meth:`set_orbits`' list up to which every orbit is done; it is
    recomputed, never carried over, and can go down.

    Durability: processed orbits are written in batches of ``flush_batch_size`` (or after
    ``flush_interval_seconds`` with changes), so at most ``flush_batch_size - 1`` processed
    orbits are ever unrecorded. Errors of an orbit in progress stay in memory until it is
    processed: a crash leaves it unprocessed, never half-recorded. A write keeps every key
    of the other scale combinations (re-read first only when another writer replaced the
    file). The first outcome of an orbit in a session replaces what earlier runs recorded.

    Cost: the orbit lists are kept as :class:`_SortedInts` and the other combinations' keys
    as text: a write encodes what changed, then one atomic write.
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
        for what, name in [("y_scale", y_scale), ("z_scale", z_scale)]:
            _check_name(what, name)
        if isinstance(flush_batch_size, bool) or not int(flush_batch_size) == flush_batch_size >= 1:
            raise ValueError(f"flush_batch_size must be an integer >= 1: {flush_batch_size!r}")
        if flush_interval_seconds is not None and not flush_interval_seconds > 0:
            raise ValueError(
                f"flush_interval_seconds must be > 0 or None: {flush_interval_seconds!r}"
            )
        self.retry_reasons = frozenset(retry_reasons)
        if self.retry_reasons - set(ERROR_REASONS):
            raise ValueError(
                f"unknown retry reasons {sorted(self.retry_reasons)}; use {ERROR_REASONS}"
            )
        self.path = Path(path)
        self.y_scale, self.z_scale = y_scale, z_scale
        self.flush_batch_size = int(flush_batch_size)
        self.flush_interval_seconds = flush_interval_seconds
        self.instrument_order = tuple(instrument_order)
        self.clock = clock
        #: How many times this store wrote the progress file.
        self.writes = 0
        #: Called before each write: what must be on disk before the orbits it records
        #: (the render loop's buffered manifest lines).
        self.before_write: Callable[[], Any] | None = None
        self._prefix = f"{y_scale}_{z_scale}"
        self._lock = StateLock(self.path)
        self._open = self._dirty = False
        self._orbits: list[int] | None = None
        self._others: dict[str, str] = {}  # every key that is not ours -> its JSON text
        self._disk: tuple[int, int, int] | None = None  # the file as we last read or wrote it
        self._since_flush: set[int] = set()
        self._last_flush = 0.0
        self._forget()

    def _forget(self) -> None:
        self._completed = _SortedInts()
        #: progress key -> its orbits (the completed list and one per instrument and reason)
        self._lists: dict[str, _SortedInts] = {f"{self._prefix}_completed": self._completed}
        #: processed orbits -> instrument -> (reason, invalid-cdf fingerprint or None); and
        #: the same for orbits in progress in this session, held until they are processed
        self._errors: dict[int, dict[str, tuple[str, dict[str, Any] | None]]] = {}
        self._pending: dict[int, dict[str, tuple[str, dict[str, Any] | None]]] = {}
        self._touched: set[int] = set()  # orbits whose earlier outcomes were replaced
        self._wm_idx = 0

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> ProgressStore:
        """Take the lock (:class:`StateLockedError` if held) and load the file."""
        if self._open:
            raise RuntimeError(f"{self!r} is already open")
        self.acquire_lock()
        try:
            self._load()
        except BaseException:
            self._lock.release()
            raise
        self._open, self._last_flush = True, self.clock()
        return self

    def acquire_lock(self) -> None:
        """Take the lock only, before anything is written (a no-op when held)."""
        if not self._lock.locked:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()

    def close(self) -> None:
        """Flush pending changes and release the lock (idempotent)."""
        try:
            if self._open:
                self.flush()
        finally:
            self._open = False
            self._lock.release()

    def __enter__(self) -> ProgressStore:
        return self.open()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            return self.close()
        try:
            self.close()
        except Exception:  # do not mask the original error
            logger.exception("Could not flush %s while handling another error", self.path)

    def __repr__(self) -> str:
        return (
            f"ProgressStore({str(self.path)!r}, {self.y_scale!r}, {self.z_scale!r}, "
            f"flush_batch_size={self.flush_batch_size}, {'open' if self._open else 'closed'})"
        )

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager")

    # -- the file ----------------------------------------------------------------------

    def _own(self, key: str) -> ProgressKey | None:
        k = parse_key(key)
        return k if k is not None and k.scales == self._prefix else None

    def _keep_others(self, data: Mapping[str, Any]) -> None:
        meta = ("schema", "version", "updated_utc")
        self._others = {
            k: _compact(v) for k, v in data.items() if k not in meta and not self._own(k)
        }

    def _load(self) -> None:
        self._forget()
        data = load_json_state(self.path, kind="progress") or {}
        self._disk = _identity(self.path)
        version = data.get("version", PROGRESS_VERSION)
        if not isinstance(version, int) or version > PROGRESS_VERSION:
            logger.warning(
                "%s has progress schema version %r; this version writes %d and reads it as "
                "best it can.",
                *(self.path, version, PROGRESS_VERSION),
            )
        self._keep_others(data)
        own = [(k, key, v) for key, v in data.items() if (k := self._own(key))]
        own.sort(key=lambda t: t[0].kind == "files")
        for k, key, value in own:  # the fingerprints last: of recorded invalid-cdf errors only
            if k.kind == "files":
                if not isinstance(value, dict):
                    logger.warning("%s: ignoring malformed %s", self.path, key)
                    continue
                for text, fp in value.items():
                    per_inst = self._errors.get(int(text) if text.isdigit() else None, {})
                    if (
                        isinstance(fp, dict)
                        and per_inst.get(k.instrument, ("",))[0] == "invalid-cdf"
                    ):
                        per_inst[k.instrument] = ("invalid-cdf", dict(fp))
            elif k.kind != "last_orbit":  # the watermark is recomputed, never read
                if not isinstance(value, list):
                    logger.warning("%s: ignoring malformed %s (not a list)", self.path, key)
                    continue
                bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int)]
                if bad:
                    logger.warning(
                        "%s: ignoring non-integer orbits %r in %s", self.path, bad[:5], key
                    )
                orbits = [v for v in value if not isinstance(v, bool) and isinstance(v, int)]
                if k.kind == "completed":
                    for orbit in orbits:
                        self._completed.add(orbit)
                    continue
                if k.reason not in ERROR_REASONS:
                    logger.warning("%s: keeping unknown error reason key %s", self.path, key)
                for orbit in orbits:
                    self._set_error(orbit, k.instrument, k.reason, None)

    def _encode(self) -> bytes:
        """The whole file: sorted keys, one per line; cached texts for what did not change."""
        p = self._prefix
        text = dict(self._others)
        text[f"{p}_last_orbit"] = _compact(self.last_orbit)
        text.update({k: v.json() for k, v in self._lists.items() if v or k == f"{p}_completed"})
        files: dict[str, dict[str, Any]] = {}
        for orbit, per_inst in self._errors.items():
            for inst, (reason, fp) in per_inst.items():
                if fp is not None:
                    key = error_key(inst, self.y_scale, self.z_scale, reason) + "_files"
                    files.setdefault(key, {})[str(orbit)] = fp
        meta = {"schema": PROGRESS_SCHEMA, "version": PROGRESS_VERSION, "updated_utc": _utc_now()}
        text.update({k: _compact(v) for k, v in {**files, **meta}.items()})
        body = ",\n".join(f"{json.dumps(k)}:{text[k]}" for k in sorted(text))
        return f"{{\n{body}\n}}\n".encode()

    def _write(self) -> None:
        if self.before_write is not None:
            self.before_write()
        if _identity(self.path) != self._disk:  # another writer replaced it: keep its keys
            on_disk = load_json_state(self.path, kind="progress")
            if on_disk is not None:
                self._keep_others(on_disk)
        atomic_write(self.path, self._encode())
        self._disk = _identity(self.path)
        self.writes += 1
        self._dirty = False
        self._since_flush.clear()
        self._last_flush = self.clock()

    def flush(self) -> bool:
        """Write now if anything changed since the last write; whether it wrote."""
        self._require_open()
        if self._dirty:
            self._write()
            return True
        return False

    def maybe_flush(self) -> bool:
        """Write if a batch is full or the flush interval elapsed; whether it wrote."""
        self._require_open()
        due = len(self._since_flush) >= self.flush_batch_size or (
            self.flush_interval_seconds is not None
            and self.clock() - self._last_flush >= self.flush_interval_seconds
        )
        return self.flush() if due else False

    @property
    def pending_orbits(self) -> int:
        """Processed orbits not yet written (< ``flush_batch_size`` after a flush check)."""
        return len(self._since_flush)

    # -- recording ---------------------------------------------------------------------

    def _touch(self, orbit: int) -> None:
        """First outcome of ``orbit`` in this session: forget earlier runs' entries."""
        if orbit in self._touched:
            return
        self._touched.add(orbit)
        if orbit in self._completed or orbit in self._errors:
            self._dirty = True
        self._completed.discard(orbit)
        self._drop_errors(orbit)
        self._pending[orbit] = {}
        self._lower_watermark(orbit)

    def _drop_errors(self, orbit: int) -> dict[str, tuple[str, dict[str, Any] | None]]:
        per_inst = self._errors.pop(orbit, {})
        for inst, (reason, _) in per_inst.items():
            self._lists[error_key(inst, self.y_scale, self.z_scale, reason)].discard(orbit)
        return per_inst

    def _set_error(self, orbit: int, inst: str, reason: str, fp: dict[str, Any] | None) -> None:
        per_inst = self._errors.setdefault(orbit, {})
        if inst in per_inst:
            self._lists[error_key(inst, self.y_scale, self.z_scale, per_inst[inst][0])].discard(
                orbit
            )
        per_inst[inst] = (reason, fp)
        self._lists.setdefault(
            error_key(inst, self.y_scale, self.z_scale, reason), _SortedInts()
        ).add(orbit)

    def record_error(
        self,
        orbit: int,
        instrument: str,
        reason: str,
        *,
        file_fingerprint: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that ``instrument`` failed for ``orbit`` with ``reason`` (of ``ERROR_REASONS``).

        Held in memory until the orbit is processed (:meth:`mark_orbit_done`); for an orbit
        already processed in this session the lists change at once. A later error of the
        same orbit and instrument replaces the earlier one. For ``invalid-cdf``,
        ``file_fingerprint`` (a :func:`file_fingerprint`) lets a resumed run retry the orbit
        when the file changed.
        """
        orbit = _as_orbit(orbit)
        _check_name("instrument", instrument)
        if reason not in ERROR_REASONS:
            raise ValueError(f"unknown error reason {reason!r}; expected one of {ERROR_REASONS}")
        fp = (
            _to_builtin(file_fingerprint)
            if reason == "invalid-cdf" and file_fingerprint is not None
            else None
        )
        self._require_open()
        self._touch(orbit)
        if orbit in self._pending:
            self._pending[orbit][instrument] = (reason, fp)
            return
        self._completed.discard(orbit)  # processed in this session already
        self._set_error(orbit, instrument, reason, fp)
        self._lower_watermark(orbit)
        self._dirty = True

    def mark_orbit_done(self, orbit: int) -> bool:
        """``orbit`` is processed: completed without errors, else its errors are committed.

        Returns whether the progress file was written (:meth:`maybe_flush`).
        """
        orbit = _as_orbit(orbit)
        self._require_open()
        self._touch(orbit)
        pending = self._pending.pop(orbit, None)
        for inst, (reason, fp) in (pending or {}).items():
            self._set_error(orbit, inst, reason, fp)
        if orbit not in self._errors and orbit not in self._completed:
            self._completed.add(orbit)
            self._dirty = True
        self._dirty = self._dirty or pending is not None
        self._since_flush.add(orbit)
        return self.maybe_flush()

    def record_success(self, orbit: int) -> bool:
        """Every product of ``orbit`` was made: completed, its errors dropped (a retry).

        Returns whether the progress file was written (:meth:`maybe_flush`).
        """
        orbit = _as_orbit(orbit)
        self._require_open()
        self._touch(orbit)
        if orbit in self._pending:
            self._pending[orbit] = {}
        elif self._drop_errors(orbit):
            self._dirty = True
        return self.mark_orbit_done(orbit)

    def reset(self) -> None:
        """Forget this scale combination's progress (``ignore_progress_json``), written at once."""
        self._require_open()
        self._forget()
        self._write()
        logger.info("Progress of %s in %s reset", self._prefix, self.path)

    # -- queries -----------------------------------------------------------------------

    def set_orbits(self, orbits: Iterable[int]) -> None:
        """The run's full orbit list, for the watermark."""
        new = sorted({_as_orbit(o) for o in orbits})
        if new != self._orbits:
            self._orbits, self._wm_idx = new, 0
            self._dirty = self._dirty or self._open

    def _lower_watermark(self, orbit: int) -> None:
        if self._orbits is not None:
            self._wm_idx = min(self._wm_idx, bisect.bisect_left(self._orbits, orbit))

    def is_completed(self, orbit: int) -> bool:
        """Whether ``orbit`` is in the completed list."""
        return _as_orbit(orbit) in self._completed

    def is_done(self, orbit: int) -> bool:
        """Completed, or processed with only non-retryable errors (see the class docstring)."""
        orbit = _as_orbit(orbit)
        if orbit in self._pending:
            return False
        if orbit in self._completed:
            return True
        reasons = {r for r, _ in self._errors.get(orbit, {}).values()}
        return bool(reasons) and not self.retry_reasons & reasons

    def orbit_errors(self, orbit: int) -> dict[str, list[str]]:
        """The recorded (processed) errors of ``orbit``: instrument -> reasons."""
        return {i: [r] for i, (r, _) in self._errors.get(_as_orbit(orbit), {}).items()}

    def should_retry(
        self, orbit: int, instrument_files: Mapping[str, str | os.PathLike[str]] | None = None
    ) -> bool:
        """Whether a (resumed) run must process ``orbit``.

        Not done: yes. An ``invalid-cdf`` error is retried only when the instrument's file
        in ``instrument_files`` (from discovery) differs from the recorded fingerprint (name,
        size or mtime changed, or the file is gone); without ``instrument_files`` or a
        fingerprint it is not.
        """
        orbit = _as_orbit(orbit)
        if not self.is_done(orbit):
            return True
        if orbit in self._completed or instrument_files is None:
            return False
        for inst, (reason, old) in self._errors.get(orbit, {}).items():
            path = instrument_files.get(inst)
            if reason == "invalid-cdf" and old is not None:
                if path is None or not _same_file_version(old, path):
                    logger.info(
                        "Orbit %d: %s file changed since invalid-cdf; retrying", orbit, inst
                    )
                    return True
        return False

    @property
    def completed(self) -> list[int]:
        """Sorted completed orbits (including unwritten changes)."""
        return list(self._completed)

    @property
    def last_orbit(self) -> int | None:
        """The watermark; ``None`` without an orbit list or when its first orbit is not done."""
        if self._orbits is None:
            return None
        while self._wm_idx < len(self._orbits) and self.is_done(self._orbits[self._wm_idx]):
            self._wm_idx += 1
        return self._orbits[self._wm_idx - 1] if self._wm_idx else None
