"""The extrema ledger: which files pass 1 counted, committed together with the extrema JSON.

Two files (schema 3), committed every ``flush_batch_size`` orbits and at the end:

* ``extrema.json``, written with :func:`~fastspectro_dask.atomic.atomic_write_json`: the
  results, the merged pass-1 histograms (:class:`Merged`, bounded whatever the mission size)
  and ``journal``, the *commit record* of the ledger (``id``, ``lines``, ``bytes``,
  ``sha256`` of its committed part);
* ``extrema.ledger.jsonl`` (:func:`journal_path`): a :class:`JsonLinesJournal` of
  ``{"op": "put", "path", ...entry}`` and ``{"op": "del", "path"}`` lines after a header.

A flush appends and ``fsync``-s the batch's lines, *then* replaces the JSON: that replace is
the commit point, and neither step costs more as the ledger grows. On load only the
committed prefix counts; a tail (torn line, or lines whose JSON was never written) is cut
off and those files counted again. A journal that does not match its record, or whose
counts disagree with the histograms, is moved aside with a warning and everything is
recounted. Compaction at the end of a run rewrites the journal while the JSON names both
the old and the new one (``journal_next``), so a crash at any step leaves a matching pair.
Older schemas are recounted: their parameters lack the reduction version (see extrema.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from fastspectro_dask.atomic import (
    _utc_now,
    atomic_open,
    atomic_write_json,
    fsync_dir,
    json_dumps,
    load_json_state,
    move_aside,
)
from fastspectro_dask.quantiles import Histogram

__all__ = ["SCHEMA", "JsonLinesJournal", "Ledger", "Merged", "committed_ledger", "journal_path"]

logger = logging.getLogger(__name__)

#: 3: the ledger in a journal beside the JSON (2 had it inline; recounted, never read)
SCHEMA = 3
#: Compact at the end of a complete run when at least this many lines are superseded, and
#: this fraction of the live entries.
_COMPACT_MIN_SUPERSEDED = 1024
_COMPACT_FRACTION = 0.25
_PASS1_ENCODING = (
    "zlib + base64 of little-endian arrays; hist: the uint16 differences of the ascending bin "
    "keys (float32 bits >> 16; the first difference is from 0), then their int64 counts; "
    "energy: the ascending float64 energies, then their int64 counts"
)
_ENTRY_FIELDS = frozenset({"orbit", "instrument", "size", "mtime_ns", "status"})
_COUNTED_FIELDS = _ENTRY_FIELDS | {"entry", "min_positive"}


class JsonLinesJournal:
    """An append-only JSON-lines file whose committed length is recorded elsewhere.

    :meth:`add` queues records; :meth:`commit` appends them, ``fsync``-s and returns the
    commit record ``{"file", "id", "lines", "bytes", "sha256"}`` that the caller stores in
    its JSON, written afterwards. :meth:`load` accepts the first candidate record that the
    file's prefix matches (the header line carries a random ``id``), truncates an
    uncommitted tail and moves a journal that matches none aside. A rewrite
    (:meth:`prepare_rewrite`, :meth:`finish_rewrite`) replaces the whole file.
    """

    def __init__(self, path: str | os.PathLike[str], *, kind: str = "journal") -> None:
        self.path = Path(path)
        self.kind = kind
        self.header: dict[str, Any] | None = None
        self._fh: IO[bytes] | None = None  # the append handle
        self._pending: list[bytes] = []
        self._next: tuple[Any, ...] | None = None  # a prepared rewrite: state and header
        self._state: tuple[Any, ...] | None = None  # committed (id, sha256, bytes, lines)
        #: Bytes appended by the last :meth:`commit`.
        self.last_commit_bytes = 0

    #: Where a rewrite is prepared (deterministic: a stale one is overwritten).
    tmp_path = property(lambda self: self.path.with_name(f".{self.path.name}.rewrite.tmp"))
    lines = property(
        lambda self: self._state[3] if self._state else 0, doc="Committed lines, header included."
    )
    size = property(lambda self: self._state[2] if self._state else 0, doc="Committed bytes.")
    pending = property(lambda self: len(self._pending), doc="Records queued, not committed.")

    def _record(self, state: tuple[Any, ...] | None) -> dict[str, Any] | None:
        if state is None:
            return None
        jid, h, nbytes, nlines = state[:4]
        return {
            "file": self.path.name,
            "id": jid,
            "lines": nlines,
            "bytes": nbytes,
            "sha256": h.hexdigest(),
        }

    @property
    def record(self) -> dict[str, Any] | None:
        """The commit record of what is committed now (``None`` before create/load)."""
        return self._record(self._state)

    @staticmethod
    def encode(record: Mapping[str, Any]) -> bytes:
        """One record as its line: compact JSON, sorted keys, ``\\n``-terminated."""
        return (json_dumps(record, separators=(",", ":")) + "\n").encode("utf-8")

    def _loaded(self) -> tuple[Any, ...]:
        if self._state is None:
            raise RuntimeError(f"{self.path}: create() or load() the journal first")
        return self._state

    def add(self, record: Mapping[str, Any]) -> None:
        """Queue one record (a mapping) for the next :meth:`commit`."""
        self._loaded()
        if not isinstance(record, Mapping):
            raise TypeError("a journal record must be a mapping")
        self._pending.append(self.encode(record))

    def discard_pending(self) -> None:
        """Forget the queued records."""
        self._pending = []

    def _append_fd(self) -> int:
        if self._fh is None:
            self._fh = open(self.path, "ab", buffering=0)  # closed by close() (or the GC)
        return self._fh.fileno()

    def commit(self) -> dict[str, Any]:
        """Append the queued records, ``fsync``, return the new commit record.

        On an error the file is cut back to the committed length and the records stay queued.
        """
        jid, h, nbytes, nlines = self._loaded()
        data = b"".join(self._pending)
        if data:
            fd = self._append_fd()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, nbytes)
                raise
            (h := h.copy()).update(data)
            self._state = (jid, h, nbytes + len(data), nlines + len(self._pending))
            self._pending = []
        self.last_commit_bytes = len(data)
        return self.record  # type: ignore[return-value]

    def prepare_rewrite(
        self, header: Mapping[str, Any] | None = None, records: Iterable[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """Write a whole new journal to :attr:`tmp_path`; returns its future commit record."""
        if self._pending:
            raise RuntimeError("commit or discard the queued records before a rewrite")
        jid = uuid.uuid4().hex
        head = {**(header or {}), "journal": self.kind, "id": jid, "created_utc": _utc_now()}
        h, nbytes, nlines = hashlib.sha256(), 0, 0
        with atomic_open(self.tmp_path, sync_dir=False) as fh:
            for line in map(self.encode, (head, *records)):
                fh.write(line)
                h.update(line)
                nbytes, nlines = nbytes + len(line), nlines + 1
        self._next = (jid, h, nbytes, nlines, head)
        return self._record(self._next)  # type: ignore[return-value]

    def finish_rewrite(self) -> dict[str, Any]:
        """Move the prepared journal onto :attr:`path`; returns its commit record."""
        if self._next is None:
            raise RuntimeError("no rewrite prepared")
        self.close()
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)
        self._state, self.header, self._next = self._next[:4], self._next[4], None
        return self.record  # type: ignore[return-value]

    def discard_rewrite(self) -> None:
        """Drop a prepared rewrite (the current journal stays)."""
        self._next = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)

    def create(
        self, header: Mapping[str, Any] | None = None, records: Iterable[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """Start a new journal at :attr:`path`; returns its commit record."""
        self.discard_pending()
        self.prepare_rewrite(header, records)
        return self.finish_rewrite()

    def load(
        self, commits: Iterable[Mapping[str, Any] | None], *, repair: bool = True
    ) -> list[dict[str, Any]] | None:
        """Open the journal at the first of ``commits`` it matches; return its records.

        Returns the committed records after the header (in :attr:`header`), or ``None``
        when there is no candidate, the file is missing (a warning) or it matches none
        (moved aside). ``repair=False`` only reads: no truncation, nothing moved.
        """
        self.close()
        self._state, self._pending, self.header = None, [], None
        if repair:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_path)  # a rewrite that was never put in place
        commits = [c for c in commits if isinstance(c, Mapping)]
        if not commits:
            return None
        try:
            raw = memoryview(self.path.read_bytes())
        except FileNotFoundError:
            logger.warning("%s journal %s is missing", self.kind, self.path)
            return None
        reason, records = "its commit record in the JSON is malformed", None
        for c in commits:
            try:
                jid, nbytes, nlines, sha = (
                    str(c["id"]),
                    int(c["bytes"]),
                    int(c["lines"]),
                    c["sha256"],
                )
            except (KeyError, TypeError, ValueError):
                continue
            h = hashlib.sha256(raw[:nbytes])
            if nbytes > len(raw):
                reason = f"{len(raw)} bytes, but {nbytes} were committed"
            elif h.hexdigest() != sha:
                reason = "its content does not match the committed checksum"
            else:
                try:
                    records = self._parse(bytes(raw[:nbytes]), jid, nlines)
                    self._state = (jid, h, nbytes, nlines)
                except ValueError as exc:
                    reason = str(exc)
                break
        if records is None:
            if repair:
                move_aside(self.path, kind=f"{self.kind} journal", reason=reason)
            return None
        if len(raw) > self.size and repair:
            logger.info(
                "%s: ignoring %d uncommitted bytes at the end (an interrupted flush); truncated",
                *(self.path, len(raw) - self.size),
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(self.size)
                os.fsync(fh.fileno())
        self.header = records.pop(0)
        return records

    @staticmethod
    def _parse(data: bytes, jid: str, nlines: int) -> list[dict[str, Any]]:
        if not data.endswith(b"\n"):
            raise ValueError("the committed part does not end with a full line")
        lines = data.split(b"\n")[:-1]
        if len(lines) != nlines:
            raise ValueError(f"{len(lines)} lines, but {nlines} were committed")
        out = []
        for n, line in enumerate(lines, start=1):
            try:
                out.append(json.loads(line))
            except (UnicodeDecodeError, ValueError) as exc:
                raise ValueError(f"line {n} is not valid JSON ({exc})") from None
            if not isinstance(out[-1], dict):
                raise ValueError(f"line {n} is not a JSON object")
        if out[0].get("id") != jid:
            raise ValueError("its header does not carry the committed journal id")
        return out

    def move_aside(self, reason: str) -> Path | None:
        """Close the journal and move its file aside, if it exists."""
        self.close()
        self._state, self._pending = None, []
        return move_aside(self.path, kind=f"{self.kind} journal", reason=reason)

    def close(self) -> None:
        """Close the append handle (queued records stay queued)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


# --------------------------------------------------------------------------------------
# The merged pass-1 histograms of one (instrument, category), and their codec
# --------------------------------------------------------------------------------------


def _pack(*arrays: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(b"".join(a.tobytes() for a in arrays), 6)).decode()


def _unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))


class Merged:
    """Merged pass-1 summary of one (instrument, category): dense, exact integers."""

    def __init__(self) -> None:
        self.counts = np.zeros(1 << 16, np.int64)
        self.energy: dict[float, int] = {}

    def add(self, summary: Mapping[str, Any], sign: int = 1) -> None:
        h = Histogram.from_json(summary["hist"])
        self.counts[h.keys.astype(np.int64)] += sign * h.counts
        for e, c in zip(*summary["energy"], strict=True):
            total = self.energy.get(float(e), 0) + sign * int(c)
            if total:
                self.energy[float(e)] = total
            else:
                self.energy.pop(float(e), None)
        if (self.counts < 0).any() or any(c < 0 for c in self.energy.values()):
            raise ValueError("extrema state inconsistent: negative counts after subtraction")

    def histogram(self) -> Histogram:
        keys = np.flatnonzero(self.counts)
        return Histogram("float32", keys, self.counts[keys])

    def to_compact(self) -> dict[str, Any]:
        """The schema-3 form: one short line per array pair (:data:`_PASS1_ENCODING`)."""
        keys = np.flatnonzero(self.counts)
        es = sorted(self.energy)
        return {
            "n": int(self.counts.sum()),
            "bins": int(keys.size),
            "hist": _pack(np.diff(keys, prepend=0).astype("<u2"), self.counts[keys].astype("<i8")),
            "energies": len(es),
            "energy": _pack(np.asarray(es, "<f8"), np.asarray([self.energy[e] for e in es], "<i8")),
        }

    @classmethod
    def from_compact(cls, obj: Mapping[str, Any]) -> Merged:
        """Inverse of :meth:`to_compact`; ``ValueError`` on anything inconsistent."""
        try:
            nb, ne, n = int(obj["bins"]), int(obj["energies"]), int(obj["n"])
            raw, raw_e = _unpack(obj["hist"]), _unpack(obj["energy"])
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise ValueError(f"pass-1 histogram not readable: {exc}") from None
        if len(raw) != 10 * nb or len(raw_e) != 16 * ne:
            raise ValueError("pass-1 histogram: array lengths do not match")
        keys = np.cumsum(np.frombuffer(raw[: 2 * nb], "<u2").astype(np.int64))
        counts = np.frombuffer(raw[2 * nb :], "<i8")
        es, cs = np.frombuffer(raw_e[: 8 * ne], "<f8"), np.frombuffer(raw_e[8 * ne :], "<i8")
        if (
            (nb and (np.any(np.diff(keys) <= 0) or np.any(counts <= 0) or keys[-1] >= 1 << 16))
            or int(counts.sum()) != n
            or np.any(cs <= 0)
            or np.any(np.diff(es) <= 0)
        ):
            raise ValueError("pass-1 histogram: inconsistent content")
        m = cls()
        m.counts[keys] = counts
        m.energy = {float(e): int(c) for e, c in zip(es, cs, strict=True)}
        return m


# --------------------------------------------------------------------------------------
# The ledger: the extrema JSON and its journal, committed together
# --------------------------------------------------------------------------------------


def journal_path(json_path: Path) -> Path:
    """``extrema.json`` -> ``extrema.ledger.jsonl`` (any other name: ``<name>.ledger.jsonl``)."""
    name = json_path.name
    return json_path.with_name(f"{name.removesuffix('.json')}.ledger.jsonl")


def replay(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ledger (relative path -> entry) that journal records describe (consumed)."""
    ledger: dict[str, dict[str, Any]] = {}
    for n, rec in enumerate(records, start=2):  # line 1 is the header
        op, rel = rec.pop("op", None), rec.pop("path", None)
        if not isinstance(rel, str):
            raise ValueError(f"ledger line {n}: no path")
        counted = rec.get("status") == "counted"
        if op == "put" and (
            not rec.keys() >= (_COUNTED_FIELDS if counted else _ENTRY_FIELDS)
            or (counted and not isinstance(rec["min_positive"], dict))
        ):
            raise ValueError(f"ledger line {n}: incomplete entry for {rel}")
        if op == "put":
            ledger[rel] = rec
        elif op != "del":
            raise ValueError(f"ledger line {n}: unknown op {op!r}")
        elif ledger.pop(rel, None) is None:
            raise ValueError(f"ledger line {n}: removes {rel}, which is not there")
    return ledger


def committed_ledger(json_path: str | os.PathLike[str]) -> dict[str, dict[str, Any]] | None:
    """The committed ledger of an extrema JSON, read only (no repair); ``None`` if none."""
    json_path = Path(json_path)
    try:
        state = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return None
    journal = JsonLinesJournal(journal_path(json_path))
    records = journal.load([state.get("journal"), state.get("journal_next")], repair=False)
    return None if records is None else replay(records)


class Ledger:
    """The extrema JSON and its ledger journal (module docstring).

    ``ledger`` (relative path -> entry) and ``merged`` (instrument -> category ->
    :class:`Merged`) are the state in memory; :meth:`put`/:meth:`delete` change the ledger
    and queue its journal line; :meth:`flush` commits. The caller keeps ``merged`` equal to
    the sum of the counted files' summaries.
    """

    def __init__(
        self,
        json_path: Path,
        params: Mapping[str, Any],
        input_root: str,
        instruments: Sequence[str],
        cats: Sequence[str],
    ) -> None:
        self.json_path = json_path
        self.params = dict(params)
        self.input_root = input_root
        self.instruments, self.cats = list(instruments), list(cats)
        self.journal = JsonLinesJournal(journal_path(json_path), kind="extrema ledger")
        self.ledger: dict[str, dict[str, Any]] = {}
        self.merged = self._zeros()
        #: ``{"journal_bytes", "json_bytes"}`` written by the last flush.
        self.last_flush: dict[str, int] = {}

    def _zeros(self) -> dict[str, dict[str, Merged]]:
        return {i: {c: Merged() for c in self.cats} for i in self.instruments}

    def _header(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "extrema_json": self.json_path.name,
            "input_root": self.input_root,
        }

    def _put_records(self) -> Iterator[dict[str, Any]]:
        return ({"op": "put", "path": rel, **self.ledger[rel]} for rel in sorted(self.ledger))

    def open(self) -> dict[str, Any]:
        """Load the committed state; returns the JSON document (``{}``: start afresh)."""
        existed = self.json_path.exists()
        state = load_json_state(self.json_path, kind="extrema") or {}
        if existed and not state and self.journal.path.exists():
            self.journal.move_aside("its extrema JSON was corrupt")
        if state and state.get("params") != self.params:
            logger.warning(
                "%s: computed for other parameters (%s); starting afresh",
                *(self.json_path, state.get("params")),
            )
            state = {}
        if state and not state.get("journal"):
            logger.info("%s: no committed ledger; starting afresh", self.json_path)
            state = {}
        if state and not self._load(state):
            state = {}
        if not state:
            if self.journal.path.exists():
                logger.info("%s: replacing the previous ledger", self.journal.path)
            self.journal.create(self._header())
        return state

    def _load(self, state: Mapping[str, Any]) -> bool:
        records = self.journal.load([state.get("journal"), state.get("journal_next")])
        if records is None:
            logger.warning(
                "%s: its ledger %s is unusable; recounting every file",
                *(self.json_path, self.journal.path),
            )
            return False
        try:
            self.ledger, self.merged = replay(records), self._zeros()
            got = state.get("pass1")
            if not isinstance(got, Mapping) or not isinstance(got.get("merged"), Mapping):
                raise ValueError("no merged pass-1 histograms")
            for inst, cm in self.merged.items():
                for cat in cm:
                    if (obj := got["merged"].get(inst, {}).get(cat)) is not None:
                        cm[cat] = Merged.from_compact(obj)
            # the ledger's sample counts must add up to the merged histograms' (exact ints)
            for inst, cm in self.merged.items():
                total = sum(
                    int(e.get("n", 0))
                    for e in self.ledger.values()
                    if e["status"] == "counted" and e["instrument"] == inst
                )
                if (have := int(cm[self.cats[0]].counts.sum())) != total:
                    raise ValueError(f"{inst}: ledger counts {total} samples, histograms {have}")
        except ValueError as exc:
            self.journal.move_aside(f"it does not match {self.json_path.name}: {exc}")
            self.ledger, self.merged = {}, self._zeros()
            return False
        return True

    def put(self, rel: str, entry: dict[str, Any]) -> None:
        """Record a file's outcome (replacing any earlier one)."""
        self.journal.add({"op": "put", "path": rel, **entry})
        self.ledger[rel] = entry

    def delete(self, rel: str) -> None:
        """Forget a file (the caller subtracted its contribution)."""
        self.journal.add({"op": "del", "path": rel})
        del self.ledger[rel]

    def restart(self) -> None:
        """Forget everything: an empty ledger and histograms, committed at once."""
        self.journal.discard_pending()
        self.ledger.clear()
        for cm in self.merged.values():
            for m in cm.values():
                m.counts[:] = 0
                m.energy.clear()
        # the JSON first: from here a crash means "start afresh", never a mismatch
        atomic_write_json(self.json_path, self._doc({}, False, None))
        self.journal.create(self._header())

    def _doc(
        self, fields: Mapping[str, Any], complete: bool, journal: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        merged = {i: {c: m.to_compact() for c, m in cm.items()} for i, cm in self.merged.items()}
        return {
            **fields,
            "schema": SCHEMA,
            "params": self.params,
            "complete": complete,
            "updated_utc": _utc_now(),
            "input_root": self.input_root,
            "journal": journal,
            "pass1": {"encoding": _PASS1_ENCODING, "merged": merged},
        }

    def flush(
        self, complete: bool, results: dict | None = None, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Commit the queued ledger lines, then write the JSON; returns the JSON document."""
        fields = {**({} if results is None else {"results": results}), **(extra or {})}
        doc = self._doc(fields, complete, self.journal.commit())
        atomic_write_json(self.json_path, doc)
        self.last_flush = {
            "journal_bytes": self.journal.last_commit_bytes,
            "json_bytes": self.json_path.stat().st_size,
        }
        return doc

    def rewrite_json(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``doc`` (a loaded state with new fields) back, as :meth:`flush` would."""
        extra = {k: v for k, v in doc.items() if k not in ("files", "journal_next")}
        return self.flush(bool(doc.get("complete")), None, extra)

    def maybe_compact(self, doc: dict[str, Any]) -> bool:
        """Rewrite the journal without superseded lines if there are many (end of a run).

        ``doc`` is the JSON just written by :meth:`flush`; its ``journal`` is updated.
        """
        live, before = len(self.ledger), self.journal.lines
        superseded = before - 1 - live
        if superseded < max(_COMPACT_MIN_SUPERSEDED, _COMPACT_FRACTION * live):
            return False
        nxt = self.journal.prepare_rewrite(self._header(), self._put_records())
        try:  # both records valid while the new journal is moved into place
            atomic_write_json(self.json_path, {**doc, "journal_next": nxt})
            self.journal.finish_rewrite()
        except BaseException:
            self.journal.discard_rewrite()
            raise
        doc["journal"] = self.journal.record
        atomic_write_json(self.json_path, doc)
        logger.info(
            "%s: compacted, %d lines -> %d (%d superseded)",
            *(self.journal.path, before, self.journal.lines, superseded),
        )
        return True

    def close(self) -> None:
        """Close the journal's append handle."""
        self.journal.close()
