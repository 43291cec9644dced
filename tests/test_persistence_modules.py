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


def test_sorted_orbit_lists_match_a_sorted_set_through_adds_and_removals():
    """The blocks of cached text behind the progress lists: any order of additions and
    removals (blocks split and emptied) gives the sorted list, as JSON and as ints."""
    import random

    rng = random.Random(7)
    ints, ref = progress._SortedInts(), set()
    for x in range(0, 3000, 3):
        ints.add(x)
    ref.update(range(0, 3000, 3))
    for step in range(6000):
        x = rng.randrange(-50, 5000)
        if rng.random() < 0.3:
            ints.discard(x)
            ref.discard(x)
        else:
            ints.add(x)
            ref.add(x)
        if step % 500 == 0 or step == 5999:
            assert json.loads(ints.json()) == sorted(ref) == list(ints)
            assert len(ints) == len(ref) and all(v in ints for v in ref)
    for x in list(ref):
        ints.discard(x)
    assert ints.json() == "[]" and list(ints) == [] and len(ints) == 0
