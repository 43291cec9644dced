"""The extrema ledger: which files pass 1 counted, committed together with the extrema JSON.

Two files (schema 3), committed every ``flush_batch_size`` orbits and at the end:

* ``extrema.json``, written with :func:`~fastspectro_dask.atomic.atomic_write_json`: the
  results, the merged pass-1 histograms (:class:`Merged`, bounded whatever the mission size)
  and ``journal``, the *commit record* of the ledger (``id``, ``lines``, ``bytes``,
  ``sha256`` of its committed part);
* ``extrema.ledger.jsonl`` (:func:`journal_path`): an append-only journal of
  ``{"op": "put", "path", ...entry}`` and ``{"op": "del", "path"}`` lines (:func:`encode`)
  after a header that carries the journal's random ``id``.

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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from fastspectro_dask.atomic import (
    _utc_now,
    atomic_write,
    atomic_write_json,
    json_dumps,
    load_json_state,
    move_aside,
    remove_stale_temporaries,
)
from fastspectro_dask.quantiles import Histogram

__all__ = ["SCHEMA", "Ledger", "Merged", "committed_ledger", "encode", "journal_path"]

logger = logging.getLogger(__name__)

#: 3: the ledger in a journal beside the JSON (2 had it inline; recounted, never read)
SCHEMA = 3
#: Compact at the end of a complete run when at least this many lines are superseded, and
#: this fraction of the live entries.
_COMPACT_MIN_SUPERSEDED = 1024
_COMPACT_FRACTION = 0.25
_KIND = "extrema ledger journal"  # in the warning of a file moved aside
_PASS1_ENCODING = (
    "zlib + base64 of little-endian arrays; hist: the uint16 differences of the ascending bin "
    "keys (float32 bits >> 16; the first difference is from 0), then their int64 counts; "
    "energy: the ascending float64 energies, then their int64 counts"
)


def encode(record: Mapping[str, Any]) -> bytes:
    """One journal line: compact JSON, sorted keys, ``\\n``-terminated."""
    return (json_dumps(record, separators=(",", ":")) + "\n").encode("utf-8")


def _read_journal(
    path: Path, commits: Iterable[Any]
) -> tuple[dict[str, dict[str, Any]], dict, Any]:
    """The ledger (relative path -> entry) in the committed part of the journal at ``path``,
    the commit record of the first of ``commits`` that part matches and its running sha256.

    ``ValueError`` saying why none matches (or that there is no journal); ``KeyError`` or
    ``ValueError`` on a line that is neither a put nor the del of a path that is there.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    reason = "its commit record in the JSON is malformed"
    for c in commits:
        try:
            nbytes, nlines, sha = int(c["bytes"]), int(c["lines"]), str(c["sha256"])
        except (KeyError, TypeError, ValueError):
            continue
        h = hashlib.sha256(raw[:nbytes])
        if nbytes > len(raw):
            reason = f"{len(raw)} bytes, but {nbytes} were committed"
        elif h.hexdigest() != sha:
            reason = "its content does not match the committed checksum"
        else:
            lines = raw[:nbytes].split(b"\n")
            if lines.pop() or len(lines) != nlines or not nlines:
                raise ValueError(f"{len(lines)} full lines, but {nlines} were committed")
            records = []
            for n, line in enumerate(lines, start=1):
                try:
                    records.append(json.loads(line))
                except ValueError as exc:  # UnicodeDecodeError included
                    raise ValueError(f"line {n} is not valid JSON ({exc})") from None
                if not isinstance(records[-1], dict):
                    raise ValueError(f"line {n} is not a JSON object")
            if records[0].get("id") != c.get("id"):
                raise ValueError("its header does not carry the committed journal id")
            ledger: dict[str, dict[str, Any]] = {}
            for entry in records[1:]:
                op, rel = entry.pop("op", None), entry.pop("path")
                if op == "put":
                    ledger[rel] = entry
                elif op == "del":
                    del ledger[rel]
                else:
                    raise ValueError(f"ledger: unknown op {op!r} for {rel}")
            rec = {"file": path.name, "id": c["id"], "lines": nlines, "bytes": nbytes}
            return ledger, {**rec, "sha256": sha}, h
    raise ValueError(reason)


def _pack(*arrays: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(b"".join(a.tobytes() for a in arrays), 6)).decode()


class Merged:
    """Merged pass-1 summary of one (instrument, category): dense, exact integers."""

    def __init__(self) -> None:
        self.counts = np.zeros(1 << 16, np.int64)
        self.energy: dict[float, int] = {}

    def add(self, summary: Mapping[str, Any], sign: int = 1) -> None:
        """Add (``sign=-1``: subtract) one file's pass-1 summary."""
        h = Histogram.from_json(summary["hist"])
        self.counts[h.keys.astype(np.int64)] += sign * h.counts
        for e, c in zip(*summary["energy"], strict=True):
            if total := self.energy.get(float(e), 0) + sign * int(c):
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
        keys, es = np.flatnonzero(self.counts), sorted(self.energy)
        return {
            "n": int(self.counts.sum()),
            "bins": int(keys.size),
            "hist": _pack(np.diff(keys, prepend=0).astype("<u2"), self.counts[keys].astype("<i8")),
            "energies": len(es),
            "energy": _pack(np.asarray(es, "<f8"), np.asarray([self.energy[e] for e in es], "<i8")),
        }

    @classmethod
    def from_compact(cls, obj: Mapping[str, Any]) -> Merged:
        """Inverse of :meth:`to_compact`; ``ValueError`` if it does not decode to ``n``."""
        m = cls()
        try:
            nb, ne = int(obj["bins"]), int(obj["energies"])
            raw, raw_e = (
                zlib.decompress(base64.b64decode(obj[k], validate=True)) for k in ("hist", "energy")
            )
            keys = np.cumsum(np.frombuffer(raw[: 2 * nb], "<u2").astype(np.int64))
            counts = np.frombuffer(raw[2 * nb :], "<i8")
            m.counts[keys] = counts
            es, cs = np.frombuffer(raw_e[: 8 * ne], "<f8"), np.frombuffer(raw_e[8 * ne :], "<i8")
            m.energy = dict(zip(es.tolist(), cs.tolist(), strict=True))
            if keys.size != nb or es.size != ne or int(counts.sum()) != int(obj["n"]):
                raise ValueError("array lengths or sum do not match")
        except (KeyError, TypeError, ValueError, IndexError, zlib.error) as exc:
            raise ValueError(f"pass-1 histogram not readable: {exc}") from None
        return m


def journal_path(json_path: Path) -> Path:
    """``extrema.json`` -> ``extrema.ledger.jsonl`` (any other name: ``<name>.ledger.jsonl``)."""
    return json_path.with_name(f"{json_path.name.removesuffix('.json')}.ledger.jsonl")


def committed_ledger(json_path: str | os.PathLike[str]) -> dict[str, dict[str, Any]] | None:
    """The committed ledger of an extrema JSON, read only (no repair); ``None`` if none."""
    try:
        state = json.loads(Path(json_path).read_text())
        commits = (state.get("journal"), state.get("journal_next"))
        return _read_journal(journal_path(Path(json_path)), commits)[0]
    except (OSError, ValueError, AttributeError):
        return None


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
        self.json_path, self.params, self.input_root = json_path, dict(params), input_root
        self.instruments, self.cats = list(instruments), list(cats)
        self.journal_path = journal_path(json_path)
        self.ledger: dict[str, dict[str, Any]] = {}
        self.merged = self._zeros()
        #: The journal's commit record (``None`` before :meth:`open`).
        self.record: dict[str, Any] | None = None
        #: ``{"journal_bytes", "json_bytes"}`` written by the last flush.
        self.last_flush: dict[str, int] = {}
        self._sha: Any = None  # the running sha256 of the journal's committed part
        self._pending: list[bytes] = []  # journal lines queued for the next commit
        self._fh: IO[bytes] | None = None  # the journal's append handle

    size = property(lambda self: self.record["bytes"] if self.record else 0, doc="Journal bytes.")
    pending = property(lambda self: len(self._pending), doc="Journal lines not committed.")

    def _zeros(self) -> dict[str, dict[str, Merged]]:
        return {i: {c: Merged() for c in self.cats} for i in self.instruments}

    def open(self) -> dict[str, Any]:
        """Load the committed state; returns the JSON document (``{}``: start afresh).

        Call it under the state's :class:`~fastspectro_dask.atomic.StateLock`: it removes
        the temporaries a killed writer left beside the JSON and the journal.
        """
        for path in (self.json_path, self.journal_path):
            remove_stale_temporaries(path)
        existed = self.json_path.exists()
        state = load_json_state(self.json_path, kind="extrema") or {}
        if existed and not state:
            move_aside(self.journal_path, kind=_KIND, reason="its extrema JSON was corrupt")
        if state and state.get("params") != self.params:
            logger.warning(
                "%s: computed for other parameters (%s); starting afresh",
                *(self.json_path, state.get("params")),
            )
        elif state and not state.get("journal"):
            logger.info("%s: no committed ledger; starting afresh", self.json_path)
        elif state and self._load(state):
            return state
        if self.journal_path.exists():
            logger.info("%s: replacing the previous ledger", self.journal_path)
        self._replace(*self._rewrite())
        return {}

    def _load(self, state: Mapping[str, Any]) -> bool:
        """Read the journal ``state`` names and the merged histograms; False: recount."""
        try:
            commits = (state.get("journal"), state.get("journal_next"))
            self.ledger, record, sha = _read_journal(self.journal_path, commits)
            merged = state["pass1"]["merged"]
            for inst, cm in self.merged.items():
                for cat in cm:
                    if (obj := merged.get(inst, {}).get(cat)) is not None:
                        cm[cat] = Merged.from_compact(obj)
                # the ledger's sample counts must add up to the merged histograms' (exact ints)
                total = sum(
                    int(e.get("n", 0))
                    for e in self.ledger.values()
                    if e["status"] == "counted" and e["instrument"] == inst
                )
                if (have := int(cm[self.cats[0]].counts.sum())) != total:
                    raise ValueError(f"{inst}: ledger counts {total} samples, histograms {have}")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else repr(exc)
            move_aside(self.journal_path, kind=_KIND, reason=why)
            logger.warning(
                "%s: its ledger is unusable (%s); recounting every file", *(self.json_path, why)
            )
            self.ledger, self.merged = {}, self._zeros()
            return False
        self.record, self._sha = record, sha
        if (size := self.journal_path.stat().st_size) > self.size:
            logger.info(
                "%s: ignoring %d uncommitted bytes at the end (an interrupted flush); truncated",
                *(self.journal_path, size - self.size),
            )
            with open(self.journal_path, "r+b") as fh:
                fh.truncate(self.size)
                os.fsync(fh.fileno())
        return True

    def _rewrite(self) -> tuple[bytes, dict[str, Any]]:
        """A new journal (a new ``id``) of the ledger now: its content and commit record."""
        jid, root = uuid.uuid4().hex, self.input_root
        head = {"schema": SCHEMA, "extrema_json": self.json_path.name, "input_root": root}
        head |= {"journal": "extrema ledger", "id": jid, "created_utc": _utc_now()}
        puts = ({"op": "put", "path": rel, **self.ledger[rel]} for rel in sorted(self.ledger))
        data = b"".join(map(encode, (head, *puts)))
        rec = {"file": self.journal_path.name, "id": jid, "lines": data.count(b"\n")}
        return data, {**rec, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def _replace(self, data: bytes, record: dict[str, Any]) -> dict[str, Any]:
        """Put a :meth:`_rewrite` in place (atomically); queued lines are dropped."""
        self.close()
        atomic_write(self.journal_path, data)
        self._pending, self._sha, self.record = [], hashlib.sha256(data), record
        return record

    def put(self, rel: str, entry: dict[str, Any]) -> None:
        """Record a file's outcome (replacing any earlier one)."""
        self._pending.append(encode({"op": "put", "path": rel, **entry}))
        self.ledger[rel] = entry

    def delete(self, rel: str) -> None:
        """Forget a file (the caller subtracted its contribution)."""
        self._pending.append(encode({"op": "del", "path": rel}))
        del self.ledger[rel]

    def restart(self) -> None:
        """Forget everything: an empty ledger and histograms, committed at once."""
        self.ledger, self.merged = {}, self._zeros()
        # the JSON first: from here a crash means "start afresh", never a mismatch
        atomic_write_json(self.json_path, self._doc({}, False, None))
        self._replace(*self._rewrite())

    def _append_fd(self) -> int:
        if self._fh is None:
            self._fh = open(self.journal_path, "ab", buffering=0)  # closed by close()
        return self._fh.fileno()

    def commit(self) -> dict[str, Any]:
        """Append the queued journal lines, ``fsync``; returns the new commit record.

        On an error the file is cut back to the committed length and the lines stay queued.
        """
        data, rec = b"".join(self._pending), self.record
        if data:
            fd = self._append_fd()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, rec["bytes"])
                raise
            self._sha.update(data)
            lines, nbytes = rec["lines"] + len(self._pending), rec["bytes"] + len(data)
            self.record = {**rec, "lines": lines, "bytes": nbytes, "sha256": self._sha.hexdigest()}
            self._pending = []
        return self.record

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
        before = self.size
        doc = self._doc(fields, complete, self.commit())
        atomic_write_json(self.json_path, doc)
        self.last_flush = {
            "journal_bytes": self.size - before,
            "json_bytes": self.json_path.stat().st_size,
        }
        return doc

    def rewrite_json(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``doc`` (a loaded state with new fields) back, as :meth:`flush` would."""
        extra = {k: v for k, v in doc.items() if k not in ("files", "journal_next")}
        return self.flush(bool(doc.get("complete")), None, extra)

    def maybe_compact(self, doc: dict[str, Any]) -> None:
        """Rewrite the journal without superseded lines if there are many (end of a run).

        ``doc`` is the JSON just written by :meth:`flush`; its ``journal`` is updated.
        """
        live, before = len(self.ledger), self.record["lines"]
        superseded = before - 1 - live
        if superseded < max(_COMPACT_MIN_SUPERSEDED, _COMPACT_FRACTION * live):
            return
        data, nxt = self._rewrite()
        # both records valid while the new journal is moved into place
        atomic_write_json(self.json_path, {**doc, "journal_next": nxt})
        doc["journal"] = self._replace(data, nxt)
        atomic_write_json(self.json_path, doc)
        logger.info(
            "%s: compacted, %d lines -> %d (%d superseded)",
            *(self.journal_path, before, nxt["lines"], superseded),
        )

    def close(self) -> None:
        """Close the journal's append handle."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()
