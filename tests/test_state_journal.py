"""JsonLinesJournal: append-only ledger committed through a small atomic JSON."""

from __future__ import annotations

import json
import logging
import os

import pytest

from fastspectro_dask import ledger as st
from fastspectro_dask.atomic import move_aside
from fastspectro_dask.ledger import JsonLinesJournal


def recs(start: int, n: int) -> list[dict]:
    return [
        {"op": "put", "path": f"f{i:06d}.cdf", "size": 1000 + i} for i in range(start, start + n)
    ]


def new_journal(tmp_path, *records: dict) -> tuple[JsonLinesJournal, dict]:
    j = JsonLinesJournal(tmp_path / "x.ledger.jsonl", kind="test ledger")
    j.create({"about": "test"})
    for r in records:
        j.add(r)
    return j, j.commit()


def test_create_add_commit_load_roundtrip(tmp_path):
    j, rec = new_journal(tmp_path, *recs(0, 5))
    assert rec["lines"] == 6 and rec["bytes"] == (tmp_path / "x.ledger.jsonl").stat().st_size
    assert (
        set(rec) == {"file", "id", "lines", "bytes", "sha256"} and rec["file"] == "x.ledger.jsonl"
    )
    j.close()
    k = JsonLinesJournal(tmp_path / "x.ledger.jsonl", kind="test ledger")
    assert k.load([rec]) == recs(0, 5)
    assert k.header["about"] == "test" and k.header["id"] == rec["id"]
    assert k.header["journal"] == "test ledger"
    # appending continues the same journal: the new record covers old and new lines
    k.add({"op": "del", "path": "f000001.cdf"})
    rec2 = k.commit()
    assert rec2["lines"] == 7 and rec2["id"] == rec["id"]
    k.close()
    assert JsonLinesJournal(k.path).load([rec2])[-1] == {"op": "del", "path": "f000001.cdf"}
    # one compact JSON object per line
    lines = k.path.read_bytes().splitlines()
    assert len(lines) == 7 and all(json.loads(x) for x in lines)


def test_commit_appends_only_the_batch(tmp_path):
    """The bytes a commit writes are those of its records, whatever the journal holds."""
    j, _ = new_journal(tmp_path, *recs(0, 20_000))
    size0 = j.path.stat().st_size
    batch = recs(20_000, 40)
    for r in batch:
        j.add(r)
    j.commit()
    expected = sum(len(JsonLinesJournal.encode(r)) for r in batch)
    assert j.last_commit_bytes == expected
    assert j.path.stat().st_size - size0 == expected
    assert j.commit()["lines"] == 20_041 and j.last_commit_bytes == 0  # nothing queued


@pytest.mark.parametrize(
    "tail", [b'{"op":"put","pa', b'{"op":"put","path":"late.cdf"}\n', b"\x00" * 7]
)
def test_uncommitted_tail_is_ignored_and_truncated(tmp_path, tail, caplog):
    """After a kill mid-flush (torn line) or between the append and the JSON write
    (whole lines), only the committed prefix counts; the tail is cut off."""
    j, rec = new_journal(tmp_path, *recs(0, 3))
    j.close()
    with open(j.path, "ab") as fh:
        fh.write(tail)
    k = JsonLinesJournal(j.path)
    with caplog.at_level(logging.INFO, logger="fastspectro_dask.ledger"):
        assert k.load([rec]) == recs(0, 3)
    assert "uncommitted" in caplog.text
    assert j.path.stat().st_size == rec["bytes"]
    assert not list(tmp_path.glob("*.corrupt-*"))
    k.add({"op": "put", "path": "next.cdf"})
    rec2 = k.commit()
    k.close()
    assert JsonLinesJournal(j.path).load([rec2])[-1] == {"op": "put", "path": "next.cdf"}


def test_corrupt_committed_part_is_moved_aside(tmp_path, caplog):
    j, rec = new_journal(tmp_path, *recs(0, 10))
    j.close()
    raw = bytearray(j.path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a flipped bit inside the committed part
    j.path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        assert JsonLinesJournal(j.path).load([rec]) is None
    assert not j.path.exists()
    aside = list(tmp_path.glob("x.ledger.jsonl.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)  # kept, not deleted
    assert "Corrupt" in caplog.text and "checksum" in caplog.text


@pytest.mark.parametrize("damage", ["short", "other-journal", "bad-record"])
def test_journal_not_matching_its_record_is_moved_aside(tmp_path, damage):
    j, rec = new_journal(tmp_path, *recs(0, 4))
    j.close()
    if damage == "short":
        with open(j.path, "r+b") as fh:
            fh.truncate(rec["bytes"] - 5)
    elif damage == "other-journal":  # same content, another run: another id
        JsonLinesJournal(j.path).create({"about": "test"}, recs(0, 4))
    else:
        rec = {"id": rec["id"], "bytes": "many"}
    assert JsonLinesJournal(j.path).load([rec]) is None
    assert len(list(tmp_path.glob("x.ledger.jsonl.corrupt-*"))) == 1


def test_missing_journal_or_no_record(tmp_path, caplog):
    j = JsonLinesJournal(tmp_path / "none.jsonl")
    assert j.load([None]) is None  # no record: nothing to check, nothing logged
    with caplog.at_level(logging.WARNING):
        assert j.load([{"id": "a", "bytes": 1, "lines": 1, "sha256": "0"}]) is None
    assert "missing" in caplog.text
    with pytest.raises(RuntimeError):
        j.add({"op": "put"})


def test_read_only_load_changes_nothing(tmp_path):
    j, rec = new_journal(tmp_path, *recs(0, 2))
    j.close()
    with open(j.path, "ab") as fh:
        fh.write(b'{"torn')
    size = j.path.stat().st_size
    assert JsonLinesJournal(j.path).load([rec], repair=False) == recs(0, 2)
    assert j.path.stat().st_size == size
    assert JsonLinesJournal(j.path).load([{**rec, "sha256": "0" * 64}], repair=False) is None
    assert j.path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_rewrite_is_safe_at_every_step(tmp_path):
    """Compaction: with both records in the JSON, a crash before or after the move
    leaves a journal that one of them matches."""
    j, old = new_journal(tmp_path, *recs(0, 6), {"op": "del", "path": "f000000.cdf"})
    compact = recs(1, 5)
    new = j.prepare_rewrite({"about": "test"}, compact)
    assert j.tmp_path.exists() and new["lines"] == 6 and new["id"] != old["id"]
    # killed before the move: the old journal is current; the stale temp file goes
    k = JsonLinesJournal(j.path)
    assert k.load([old, new])[-1] == {"op": "del", "path": "f000000.cdf"}
    assert not j.tmp_path.exists()
    # killed after the move, before the JSON named only the new journal
    j.prepare_rewrite({"about": "test"}, compact)
    new = j.finish_rewrite()
    assert j.record == new
    k = JsonLinesJournal(j.path)
    assert k.load([old, new]) == compact
    assert not list(tmp_path.glob("*.corrupt-*"))
    j.discard_rewrite()  # nothing prepared: a no-op


def test_failed_append_rolls_back_and_keeps_the_records(tmp_path, monkeypatch):
    j, rec = new_journal(tmp_path, *recs(0, 2))
    j.add({"op": "put", "path": "a.cdf"})
    real_fsync = os.fsync

    def failing(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st.os, "fsync", failing)
    with pytest.raises(OSError):
        j.commit()
    monkeypatch.setattr(st.os, "fsync", real_fsync)
    assert j.path.stat().st_size == rec["bytes"] and j.record == rec and j.pending == 1
    rec2 = j.commit()
    assert rec2["lines"] == 4
    j.close()
    assert JsonLinesJournal(j.path).load([rec2])[-1] == {"op": "put", "path": "a.cdf"}


def test_records_must_be_json(tmp_path):
    j, _ = new_journal(tmp_path)
    with pytest.raises(ValueError):
        j.add({"x": float("nan")})
    with pytest.raises(TypeError):
        j.add(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert j.pending == 0
    line = JsonLinesJournal.encode({"b": "multi\nline", "a": 1})
    assert line.count(b"\n") == 1 and line.startswith(b'{"a":1,')


def test_move_aside(tmp_path, caplog):
    p = tmp_path / "f.jsonl"
    assert move_aside(p) is None
    p.write_text("x")
    with caplog.at_level(logging.WARNING):
        first = move_aside(p, kind="k", reason="why")
    p.write_text("y")
    second = move_aside(p, kind="k", reason="why")
    assert first != second and first.read_text() == "x" and second.read_text() == "y"
    assert "why" in caplog.text and not p.exists()


@pytest.mark.parametrize(("line", "why"), [(b"not json", "not valid JSON"), (b"[1]", "object")])
def test_malformed_committed_line_is_named(tmp_path, line, why, caplog):
    """A line that is not a JSON object, even with a matching checksum (a writer bug),
    makes the journal unusable: moved aside, the line named in the warning."""
    import hashlib

    j, rec = new_journal(tmp_path, *recs(0, 2))
    j.close()
    with open(j.path, "ab") as fh:
        fh.write(line + b"\n")
    raw = j.path.read_bytes()
    forged = {**rec, "bytes": len(raw), "lines": 4, "sha256": hashlib.sha256(raw).hexdigest()}
    with caplog.at_level(logging.WARNING):
        assert JsonLinesJournal(j.path).load([forged]) is None
    assert "line 4" in caplog.text and why in caplog.text
    assert list(tmp_path.glob("x.ledger.jsonl.corrupt-*"))
