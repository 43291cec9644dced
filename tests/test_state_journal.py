"""The extrema ledger's journal: append-only lines committed through a small atomic JSON."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import pytest

from fastspectro_dask import ledger as st
from fastspectro_dask.atomic import atomic_write_json, move_aside
from fastspectro_dask.ledger import Ledger, committed_ledger, encode


def entry(i: int) -> dict:
    return {"orbit": i, "instrument": "ees", "size": 1000 + i, "mtime_ns": i, "status": "bad"}


def entries(start: int, n: int) -> dict[str, dict]:
    return {f"f{i:06d}.cdf": entry(i) for i in range(start, start + n)}


def new_ledger(tmp_path, name: str = "x.json") -> Ledger:
    return Ledger(tmp_path / name, {"p": 1}, "/data", ["ees"], ["all"])


def committed(tmp_path, n: int, name: str = "x.json") -> tuple[Ledger, dict]:
    """A ledger of ``n`` files, committed; its commit record."""
    led = new_ledger(tmp_path, name)
    assert led.open() == {}
    for rel, e in entries(0, n).items():
        led.put(rel, e)
    return led, led.flush(False)["journal"]


def reopen(tmp_path) -> tuple[Ledger, dict]:
    led = new_ledger(tmp_path)
    return led, led.open()


def test_put_flush_reopen_roundtrip(tmp_path):
    led, rec = committed(tmp_path, 5)
    path = tmp_path / "x.ledger.jsonl"
    assert rec["lines"] == 6 and rec["bytes"] == path.stat().st_size
    assert set(rec) == {"file", "id", "lines", "bytes", "sha256"} and rec["file"] == path.name
    led.close()
    again, doc = reopen(tmp_path)
    assert doc["journal"] == rec and again.ledger == entries(0, 5)
    header = json.loads(path.read_bytes().split(b"\n")[0])
    assert header["id"] == rec["id"] and header["journal"] == "extrema ledger"
    assert header["extrema_json"] == "x.json" and header["input_root"] == "/data"
    # appending continues the same journal: the new record covers old and new lines
    again.delete("f000001.cdf")
    rec2 = again.flush(False)["journal"]
    assert rec2["lines"] == 7 and rec2["id"] == rec["id"]
    again.close()
    expected = entries(0, 5)
    del expected["f000001.cdf"]
    assert reopen(tmp_path)[0].ledger == expected
    # one compact JSON object per line
    lines = path.read_bytes().splitlines()
    assert len(lines) == 7 and json.loads(lines[-1]) == {"op": "del", "path": "f000001.cdf"}


def test_flush_appends_only_the_batch(tmp_path):
    """The bytes a flush appends are those of its lines, whatever the journal holds."""
    led, _ = committed(tmp_path, 20_000)
    size0 = (tmp_path / "x.ledger.jsonl").stat().st_size
    batch = entries(20_000, 40)
    for rel, e in batch.items():
        led.put(rel, e)
    led.flush(False)
    expected = sum(len(encode({"op": "put", "path": rel, **e})) for rel, e in batch.items())
    assert led.last_flush["journal_bytes"] == expected
    assert (tmp_path / "x.ledger.jsonl").stat().st_size - size0 == expected
    assert led.flush(False)["journal"]["lines"] == 20_041  # nothing queued
    assert led.last_flush["journal_bytes"] == 0


@pytest.mark.parametrize(
    "tail", [b'{"op":"put","pa', b'{"op":"put","path":"late.cdf"}\n', b"\x00" * 7]
)
def test_uncommitted_tail_is_ignored_and_truncated(tmp_path, tail, caplog):
    """After a kill mid-flush (torn line) or between the append and the JSON write
    (whole lines), only the committed prefix counts; the tail is cut off."""
    led, rec = committed(tmp_path, 3)
    led.close()
    path = tmp_path / "x.ledger.jsonl"
    with open(path, "ab") as fh:
        fh.write(tail)
    with caplog.at_level(logging.INFO, logger="fastspectro_dask.ledger"):
        again, _ = reopen(tmp_path)
    assert again.ledger == entries(0, 3)
    assert "uncommitted" in caplog.text
    assert path.stat().st_size == rec["bytes"]
    assert not list(tmp_path.glob("*.corrupt-*"))
    again.put("next.cdf", entry(9))
    again.flush(False)
    again.close()
    assert reopen(tmp_path)[0].ledger == {**entries(0, 3), "next.cdf": entry(9)}


def test_corrupt_committed_part_is_moved_aside(tmp_path, caplog):
    led, rec = committed(tmp_path, 10)
    led.close()
    path = tmp_path / "x.ledger.jsonl"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a flipped bit inside the committed part
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        again, doc = reopen(tmp_path)
    assert doc == {} and again.ledger == {}  # everything is counted again
    aside = list(tmp_path.glob("x.ledger.jsonl.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)  # kept, not deleted
    assert "Corrupt" in caplog.text and "checksum" in caplog.text
    assert json.loads(path.read_bytes())["id"] != rec["id"]  # a fresh, empty journal


@pytest.mark.parametrize("damage", ["short", "other-journal", "bad-record"])
def test_journal_not_matching_its_record_is_moved_aside(tmp_path, damage):
    led, rec = committed(tmp_path, 4)
    led.close()
    path = tmp_path / "x.ledger.jsonl"
    if damage == "short":
        with open(path, "r+b") as fh:
            fh.truncate(rec["bytes"] - 5)
    elif damage == "other-journal":  # same content, another run: another id
        (tmp_path / "y").mkdir()
        committed(tmp_path / "y", 4)[0].close()
        shutil.copyfile(tmp_path / "y" / "x.ledger.jsonl", path)
    else:
        doc = json.loads((tmp_path / "x.json").read_text())
        atomic_write_json(
            tmp_path / "x.json", {**doc, "journal": {"id": rec["id"], "bytes": "many"}}
        )
    again, doc = reopen(tmp_path)
    assert doc == {} and again.ledger == {}
    assert len(list(tmp_path.glob("x.ledger.jsonl.corrupt-*"))) == 1


def test_missing_journal_or_no_record(tmp_path, caplog):
    led, _ = committed(tmp_path, 2)
    led.close()
    os.unlink(tmp_path / "x.ledger.jsonl")
    with caplog.at_level(logging.WARNING):
        again, doc = reopen(tmp_path)
    assert doc == {} and "missing" in caplog.text and "recounting" in caplog.text
    again.close()
    doc = json.loads((tmp_path / "x.json").read_text())
    atomic_write_json(tmp_path / "x.json", {**doc, "journal": None})
    assert committed_ledger(tmp_path / "x.json") is None
    with caplog.at_level(logging.INFO):
        assert reopen(tmp_path)[1] == {}  # the JSON names no journal: nothing to check
    assert "no committed ledger" in caplog.text and not list(tmp_path.glob("*.corrupt-*"))


def test_read_only_load_changes_nothing(tmp_path):
    led, rec = committed(tmp_path, 2)
    led.close()
    path = tmp_path / "x.ledger.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"torn')
    size = path.stat().st_size
    assert committed_ledger(tmp_path / "x.json") == entries(0, 2)
    assert path.stat().st_size == size
    doc = json.loads((tmp_path / "x.json").read_text())
    atomic_write_json(tmp_path / "x.json", {**doc, "journal": {**rec, "sha256": "0" * 64}})
    assert committed_ledger(tmp_path / "x.json") is None
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_rewrite_is_safe_at_every_step(tmp_path):
    """Compaction: with both records in the JSON, a crash before or after the move
    leaves a journal that one of them matches."""
    led, old = committed(tmp_path, 6)
    led.delete("f000000.cdf")
    doc = led.flush(False)
    old = doc["journal"]
    data, new = led._rewrite()
    assert new["lines"] == 6 and new["id"] != old["id"]
    atomic_write_json(tmp_path / "x.json", {**doc, "journal_next": new})
    # killed before the move: the old journal is current
    again, _ = reopen(tmp_path)
    assert again.record == old and again.ledger == entries(1, 5)
    again.close()
    # killed after the move, before the JSON named only the new journal
    led._replace(data, new)
    again, _ = reopen(tmp_path)
    assert again.record == new and again.ledger == entries(1, 5)
    assert (tmp_path / "x.ledger.jsonl").read_bytes() == data
    assert not list(tmp_path.glob("*.corrupt-*")) and not list(tmp_path.glob(".*.tmp"))


def test_failed_append_rolls_back_and_keeps_the_lines(tmp_path, monkeypatch):
    led, rec = committed(tmp_path, 2)
    led.put("a.cdf", entry(7))
    real_fsync = os.fsync

    def failing(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st.os, "fsync", failing)
    with pytest.raises(OSError):
        led.flush(False)
    monkeypatch.setattr(st.os, "fsync", real_fsync)
    path = tmp_path / "x.ledger.jsonl"
    assert path.stat().st_size == rec["bytes"] and led.record == rec and led.pending == 1
    assert led.flush(False)["journal"]["lines"] == 4
    led.close()
    assert reopen(tmp_path)[0].ledger == {**entries(0, 2), "a.cdf": entry(7)}


def test_lines_must_be_json(tmp_path):
    led, _ = committed(tmp_path, 0)
    with pytest.raises(ValueError):
        led.put("x.cdf", {"x": float("nan")})
    with pytest.raises(TypeError):
        led.put("y.cdf", ["not", "a", "mapping"])  # type: ignore[arg-type]
    assert led.pending == 0 and led.ledger == {}
    line = encode({"b": "multi\nline", "a": 1})
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
    led, rec = committed(tmp_path, 2)
    led.close()
    path = tmp_path / "x.ledger.jsonl"
    with open(path, "ab") as fh:
        fh.write(line + b"\n")
    raw = path.read_bytes()
    forged = {**rec, "bytes": len(raw), "lines": 4, "sha256": hashlib.sha256(raw).hexdigest()}
    doc = json.loads((tmp_path / "x.json").read_text())
    atomic_write_json(tmp_path / "x.json", {**doc, "journal": forged})
    with caplog.at_level(logging.WARNING):
        assert reopen(tmp_path)[1] == {}
    assert "line 4" in caplog.text and why in caplog.text
    assert list(tmp_path.glob("x.ledger.jsonl.corrupt-*"))


def test_open_removes_temporaries_a_killed_writer_left(tmp_path):
    """A kill -9 inside an atomic write of the JSON or of a compacted journal leaves a
    temporary beside it: the next open (under the lock) removes ours, nothing else."""
    led, _ = committed(tmp_path, 3)
    led.close()
    ours = [".x.json.4242.0123456789ab.tmp", ".x.ledger.jsonl.4242.ba9876543210.tmp"]
    other = tmp_path / ".y.json.4242.0123456789ab.tmp"
    for name in [*ours, other.name]:
        (tmp_path / name).write_bytes(b"partial")
    again, doc = reopen(tmp_path)
    assert doc["complete"] is False and again.ledger == entries(0, 3)
    assert not any((tmp_path / name).exists() for name in ours) and other.exists()
