"""The pieces issue 12.4 introduced: atomic_open, the progress-key parser, the write path."""

from __future__ import annotations

import json

import pytest

from fastspectro_dask import progress
from fastspectro_dask.atomic import atomic_open, atomic_write
from fastspectro_dask.progress import ProgressKey, ProgressStore, error_key, parse_key


def test_atomic_open_replaces_only_when_the_block_completes(tmp_path):
    target = tmp_path / "fig.png"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"half")
        raise RuntimeError("drawing failed")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with atomic_open(target, sync_dir=False) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("linear_log_completed", ProgressKey("completed", "linear", "log")),
        ("log_log_last_orbit", ProgressKey("last_orbit", "log", "log")),
        ("ees_linear_log_error-timeout", ProgressKey("error", "linear", "log", "ees", "timeout")),
        (
            "eeb_log_linear_error-invalid-cdf_files",
            ProgressKey("files", "log", "linear", "eeb", "invalid-cdf"),
        ),
        ("schema", None),
        ("updated_utc", None),
        ("ees_linear_log_completed", None),  # completed keys carry no instrument
        ("linear_log_error-timeout", None),  # error keys do
        ("user_note", None),
    ],
)
def test_parse_key(key, parsed):
    assert parse_key(key) == parsed
    if parsed is not None and parsed.kind == "error":
        assert error_key(parsed.instrument, parsed.y_scale, parsed.z_scale, parsed.reason) == key
        assert parsed.scales == f"{parsed.y_scale}_{parsed.z_scale}"


def test_a_write_rereads_the_file_only_when_another_writer_replaced_it(tmp_path, monkeypatch):
    target = tmp_path / "progress.json"
    reads = []
    real = progress.load_json_state
    monkeypatch.setattr(
        progress, "load_json_state", lambda *a, **k: reads.append(1) or real(*a, **k)
    )
    with ProgressStore(target, "linear", "log", flush_batch_size=1) as store:
        for orbit in range(5):
            store.record_success(orbit)
        assert store.writes == 5 and len(reads) == 1  # the load only
        doc = json.loads(target.read_text())
        atomic_write(target, json.dumps({**doc, "log_log_completed": [9]}).encode())
        store.record_success(5)
        assert len(reads) == 2
    doc = json.loads(target.read_text())
    assert doc["log_log_completed"] == [9] and doc["linear_log_completed"] == list(range(6))
