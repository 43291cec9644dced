"""Tests of the persistent-state layer: atomic JSON, corrupt files, lock, progress store."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fastspectro_dask.atomic import (
    StateLock,
    StateLockedError,
    atomic_write_json,
    load_json_state,
)
from fastspectro_dask.errors import ERROR_REASONS, FastSpectroError
from fastspectro_dask.progress import (
    PROGRESS_SCHEMA,
    PROGRESS_VERSION,
    ProgressStore,
    file_fingerprint,
)


class FakeClock:
    """A manual monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- atomic


def test_atomic_write_roundtrip_numpy_and_sorted_keys(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    obj = {
        "b": np.int64(3),
        "a": np.arange(3, dtype=np.int32),
        "c": {"z": np.float32(1.5), "y": (1, 2)},
        np.int64(7): np.bool_(True),
    }
    atomic_write_json(target, obj)
    text = target.read_text()
    assert json.loads(text) == {"7": True, "a": [0, 1, 2], "b": 3, "c": {"y": [1, 2], "z": 1.5}}
    keys = [line.split('"')[1] for line in text.splitlines() if line.startswith(' "')]
    assert keys == sorted(keys)
    assert leftovers(tmp_path) == []


def test_atomic_write_crash_before_replace_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "progress.json"
    atomic_write_json(target, {"old": [1, 2, 3]})

    def boom(src, dst):
        # the new content is fully written and synced at this point
        assert json.loads(Path(src).read_text()) == {"new": 1}
        raise OSError("simulated crash between temp write and replace")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"new": 1})
    assert read(target) == {"old": [1, 2, 3]}
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]


def test_atomic_write_serialisation_error_never_touches_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_json(target, {"ok": 1})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"nan": math.nan})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ----------------------------------------------------------------------------- corrupt


@pytest.mark.parametrize(
    "content",
    [b'{"linear_log_completed": [1, 2', b"\x00\xff garbage", b"", b"[1, 2, 3]", b'"text"'],
    ids=["truncated", "garbage", "empty", "list", "string"],
)
def test_corrupt_file_moved_aside_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    target = tmp_path / "progress.json"
    target.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="fastspectro_dask.atomic"):
        assert load_json_state(target, kind="progress") is None
    assert not target.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("progress.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content  # kept, not deleted
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert str(target) in msg and str(aside[0]) in msg and "progress" in msg


def test_load_missing_and_valid(tmp_path: Path) -> None:
    assert load_json_state(tmp_path / "nope.json") is None
    atomic_write_json(tmp_path / "ok.json", {"a": 1})
    assert load_json_state(tmp_path / "ok.json") == {"a": 1}


def test_store_starts_fresh_on_corrupt_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "progress.json"
    target.write_text('{"linear_log_completed": [1, 2, 3')
    with caplog.at_level(logging.WARNING), ProgressStore(target, "linear", "log") as store:
        assert store.completed == []
        store.record_success(5)
    assert read(target)["linear_log_completed"] == [5]
    assert any(p.name.startswith("progress.json.corrupt-") for p in tmp_path.iterdir())
    assert "moved aside" in caplog.text


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize(("n", "batch"), [(0, 3), (1, 3), (9, 3), (10, 3), (25, 10), (7, 1)])
def test_batching_write_count(tmp_path: Path, n: int, batch: int) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log", flush_batch_size=batch) as store:
        for i in range(n):
            store.record_success(100 + i)
            # never more than batch - 1 processed orbits unrecorded
            assert store.pending_orbits <= batch - 1
            on_disk = read(target)["linear_log_completed"] if target.exists() else []
            assert (i + 1) - len(on_disk) <= batch - 1
        store.flush()
        assert store.writes == math.ceil(n / batch)
        assert store.flush() is False  # nothing changed: no write
        assert store.writes == math.ceil(n / batch)
    assert store.writes == math.ceil(n / batch)  # close adds no write either
    if n:
        assert read(target)["linear_log_completed"] == list(range(100, 100 + n))
    else:
        assert not target.exists()


def test_errors_plus_mark_done_count_as_processed(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log", flush_batch_size=2) as store:
        store.record_error(1, "ees", "timeout")
        store.record_error(1, "ies", "plotting")
        assert store.writes == 0
        assert store.mark_orbit_done(1) is False
        assert store.mark_orbit_done(2) is True  # second processed orbit: batch full
        assert store.writes == 1
    data = read(target)
    assert data["linear_log_completed"] == [2]
    assert data["ees_linear_log_error-timeout"] == [1]
    assert data["ies_linear_log_error-plotting"] == [1]


def test_interval_flush_with_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    target = tmp_path / "progress.json"
    with ProgressStore(
        target, "linear", "log", flush_batch_size=100, flush_interval_seconds=5.0, clock=clock
    ) as store:
        store.record_success(1)
        assert store.writes == 0
        clock.now += 4.9
        assert store.maybe_flush() is False
        clock.now += 0.2
        assert store.maybe_flush() is True
        assert store.writes == 1
        clock.now += 60
        assert store.maybe_flush() is False  # elapsed, but nothing changed
        store.record_success(2)  # interval elapsed since the last write: written at once
        assert store.writes == 2
        store.record_success(3)
        assert store.writes == 2
    assert store.writes == 3  # final flush at exit
    assert read(target)["linear_log_completed"] == [1, 2, 3]


def test_no_write_when_nothing_changed(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log") as store:
        assert store.flush() is False
        assert store.maybe_flush() is False
    assert store.writes == 0
    assert not target.exists()


def test_pending_errors_not_written_until_orbit_done(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log", flush_batch_size=1) as store:
        store.record_error(7, "ees", "plotting")  # orbit 7 still in progress
        store.record_success(1)  # forces a write
        data = read(target)
        assert "ees_linear_log_error-plotting" not in data  # 7 looks unprocessed
        assert store.should_retry(7)
        store.mark_orbit_done(7)
        assert read(target)["ees_linear_log_error-plotting"] == [7]


# ----------------------------------------------------------------------------- keys


def test_key_format_schema_and_fingerprints(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    cdf = tmp_path / "fa_esa_l2_ees_19970101000000_01234_v01.cdf"
    cdf.write_bytes(b"not a cdf")
    with ProgressStore(target, "linear", "log") as store:
        store.record_error(1234, "ees", "timeout")
        store.record_error(1234, "eeb", "invalid-cdf", file_fingerprint=file_fingerprint(cdf))
        store.mark_orbit_done(1234)
        for i, reason in enumerate(ERROR_REASONS):
            store.record_error(2000 + i, "ies", reason)
            store.mark_orbit_done(2000 + i)
    data = read(target)
    assert data["schema"] == PROGRESS_SCHEMA
    assert data["version"] == PROGRESS_VERSION
    assert data["updated_utc"].endswith("+00:00")
    assert data["ees_linear_log_error-timeout"] == [1234]
    assert data["eeb_linear_log_error-invalid-cdf"] == [1234]
    for i, reason in enumerate(ERROR_REASONS):
        assert data[f"ies_linear_log_error-{reason}"] == [2000 + i]
    fp = data["eeb_linear_log_error-invalid-cdf_files"]["1234"]
    assert fp == file_fingerprint(cdf)
    assert set(fp) == {"path", "size", "mtime_ns"}
    assert data["linear_log_completed"] == []
    assert data["linear_log_last_orbit"] is None  # no orbit list given


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ProgressStore(tmp_path / "p.json", "linear", "log", flush_batch_size=0)
    with pytest.raises(ValueError):
        ProgressStore(tmp_path / "p.json", "lin_ear", "log")
    with pytest.raises(ValueError):
        ProgressStore(tmp_path / "p.json", "linear", "log", flush_interval_seconds=0)
    with ProgressStore(tmp_path / "p.json", "linear", "log") as store:
        with pytest.raises(ValueError, match="unknown error reason"):
            store.record_error(1, "ees", "oops")
        with pytest.raises(TypeError):
            store.record_success(1.5)
    with pytest.raises(RuntimeError, match="not open"):
        store.record_success(1)


def test_other_scale_combinations_preserved(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    atomic_write_json(
        target,
        {
            "log_log_completed": [1, 2],
            "log_log_last_orbit": 2,
            "ees_log_log_error-timeout": [3],
            "linear_log_completed": [99],
            "ees_linear_log_error-generic": [98],
            "user_note": "keep me",
        },
    )
    with ProgressStore(target, "linear", "log", flush_batch_size=1) as store:
        assert store.completed == [99]
        assert store.orbit_errors(98) == {"ees": ["generic"]}
        store.record_success(98)  # successful retry
        # another writer (e.g. a previous pass) changed another combination meanwhile:
        data = read(target)
        data["log_linear_completed"] = [5]
        atomic_write_json(target, data)
        store.record_success(100)
    data = read(target)
    assert data["log_log_completed"] == [1, 2]
    assert data["log_log_last_orbit"] == 2
    assert data["ees_log_log_error-timeout"] == [3]
    assert data["log_linear_completed"] == [5]  # read-modify-write
    assert data["user_note"] == "keep me"
    assert data["linear_log_completed"] == [98, 99, 100]
    assert "ees_linear_log_error-generic" not in data  # moved to completed


def test_reset_drops_only_own_keys(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    atomic_write_json(
        target,
        {
            "log_log_completed": [1],
            "linear_log_completed": [1, 2],
            "ees_linear_log_error-timeout": [3],
            "linear_log_last_orbit": 2,
        },
    )
    with ProgressStore(target, "linear", "log") as store:
        store.reset()
        assert store.writes == 1
        assert store.completed == []
        assert read(target) == {
            "log_log_completed": [1],
            "linear_log_completed": [],
            "linear_log_last_orbit": None,
            "schema": PROGRESS_SCHEMA,
            "version": PROGRESS_VERSION,
            "updated_utc": read(target)["updated_utc"],
        }
        store.record_success(4)
    assert read(target)["linear_log_completed"] == [4]
    assert read(target)["log_log_completed"] == [1]


# ----------------------------------------------------------------------------- watermark


def test_watermark_out_of_order(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    orbits = [10, 11, 12, 15, 20]
    with ProgressStore(target, "linear", "log", flush_batch_size=1) as store:
        store.set_orbits(reversed(orbits))
        store.record_success(12)
        store.record_success(11)
        assert store.last_orbit is None
        assert read(target)["linear_log_last_orbit"] is None
        store.record_success(10)
        assert store.last_orbit == 12
        assert read(target)["linear_log_last_orbit"] == 12
        store.record_success(20)
        assert store.last_orbit == 12  # 15 still missing
        store.record_error(15, "ees", "timeout")
        store.mark_orbit_done(15)
        assert store.last_orbit == 12  # a retryable error is not done
        store.record_success(15)
        assert store.last_orbit == 20
        assert read(target)["linear_log_last_orbit"] == 20


def test_watermark_non_retryable_errors_count_as_done(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log") as store:
        store.set_orbits([1, 2, 3])
        store.record_success(1)
        store.record_error(2, "ees", "plotting")
        store.record_error(2, "ies", "invalid-cdf")
        assert store.last_orbit == 1  # orbit 2 still in progress
        store.mark_orbit_done(2)
        assert store.last_orbit == 2
        store.record_error(3, "eeb", "worker-lost")
        store.mark_orbit_done(3)
        assert store.last_orbit == 2
    assert read(target)["linear_log_last_orbit"] == 2


def test_watermark_recomputed_on_resume_and_can_drop(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log") as store:
        store.set_orbits([5, 6, 7])
        for o in (5, 6, 7):
            store.record_success(o)
    assert read(target)["linear_log_last_orbit"] == 7
    with ProgressStore(target, "linear", "log") as store:
        store.set_orbits([3, 5, 6, 7])  # a smaller orbit appeared
        assert store.last_orbit is None
        store.record_success(3)
        assert store.last_orbit == 7
        store.record_error(6, "ees", "timeout")  # re-processing 6 in this session
        assert store.last_orbit == 5
        store.mark_orbit_done(6)
    assert read(target)["linear_log_last_orbit"] == 5


# ----------------------------------------------------------------------------- retry rules


def test_retry_rules(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log") as store:
        store.record_success(1)
        for orbit, reason in [
            (2, "timeout"),
            (3, "worker-lost"),
            (4, "generic"),
            (5, "plotting"),
            (6, "divide-by-zero"),
        ]:
            store.record_error(orbit, "ees", reason)
            store.mark_orbit_done(orbit)
        store.record_error(7, "ees", "plotting")  # a mix: one retryable reason wins
        store.record_error(7, "ies", "timeout")
        store.mark_orbit_done(7)
    with ProgressStore(target, "linear", "log") as store:
        assert store.should_retry(1) is False  # completed
        assert store.should_retry(2) is True
        assert store.should_retry(3) is True
        assert store.should_retry(4) is True
        assert store.should_retry(5) is False
        assert store.should_retry(6) is False
        assert store.should_retry(7) is True
        assert store.should_retry(8) is True  # never processed
        assert [store.is_done(o) for o in range(1, 9)] == [1, 0, 0, 0, 1, 1, 0, 0]
    with ProgressStore(target, "linear", "log", retry_reasons=("plotting",)) as store:
        assert store.should_retry(5) is True
        assert store.should_retry(2) is False


def test_invalid_cdf_retried_only_when_file_changed(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    bad = data_dir / "fa_esa_l2_ees_19970101000000_01000_v01.cdf"
    bad.write_bytes(b"<html>not a cdf</html>")
    good = data_dir / "fa_esa_l2_ies_19970101000000_01000_v01.cdf"
    good.write_bytes(b"fine")
    with ProgressStore(target, "linear", "log") as store:
        store.record_error(1000, "ees", "invalid-cdf", file_fingerprint=file_fingerprint(bad))
        store.mark_orbit_done(1000)
        store.record_error(1001, "ees", "invalid-cdf")  # no fingerprint
        store.mark_orbit_done(1001)
    files = {"ees": bad, "ies": good}
    with ProgressStore(target, "linear", "log") as store:
        assert store.should_retry(1000, files) is False  # unchanged
        assert store.should_retry(1000) is False  # files not given: not checked
        assert store.should_retry(1001, files) is False  # nothing to compare with
        # same file in another folder (data moved): still the same version
        moved = tmp_path / "moved"
        moved.mkdir()
        shutil.copy2(bad, moved / bad.name)  # same name, size and mtime
        assert store.should_retry(1000, {"ees": moved / bad.name}) is False
        # re-downloaded: new content and mtime
        bad.write_bytes(b"a real cdf now, longer")
        st = bad.stat()
        os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert store.should_retry(1000, files) is True
        assert store.should_retry(1000, {"ees": moved / bad.name}) is False  # old copy
        # a new version superseding the bad one (same size and mtime, new name)
        v02 = data_dir / bad.name.replace("_v01", "_v02")
        v02.write_bytes(b"<html>not a cdf</html>")
        os.utime(v02, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert store.should_retry(1000, {"ees": v02}) is True
        # the file disappeared
        assert store.should_retry(1000, {"ies": good}) is True


def test_successful_retry_moves_orbit_to_completed(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log") as store:
        store.record_error(42, "ees", "timeout")
        store.record_error(42, "ies", "invalid-cdf", file_fingerprint={"path": "/x", "size": 1})
        store.mark_orbit_done(42)
    assert read(target)["ees_linear_log_error-timeout"] == [42]
    with ProgressStore(target, "linear", "log") as store:
        assert store.should_retry(42)
        store.record_success(42)
        assert store.orbit_errors(42) == {}
    data = read(target)
    assert data["linear_log_completed"] == [42]
    assert not any("error" in k for k in data)


def test_new_session_outcome_replaces_old_errors(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log") as store:
        store.record_error(9, "ees", "timeout")
        store.mark_orbit_done(9)
    with ProgressStore(target, "linear", "log") as store:
        store.record_error(9, "ees", "plotting")  # the retry failed differently
        store.mark_orbit_done(9)
    data = read(target)
    assert "ees_linear_log_error-timeout" not in data
    assert data["ees_linear_log_error-plotting"] == [9]


# ----------------------------------------------------------------------------- lock


def test_lock_refuses_second_store_in_same_process(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with ProgressStore(target, "linear", "log"):
        with pytest.raises(StateLockedError) as info:
            ProgressStore(target, "log", "log").open()
        err = info.value
        assert isinstance(err, FastSpectroError)
        assert str(target) + ".lock" in str(err)
        assert f"PID {os.getpid()}" in str(err)
        assert err.holder["pid"] == os.getpid()
        assert "host" in err.holder and "started_utc" in err.holder
    # released on exit
    with ProgressStore(target, "log", "log") as store:
        store.record_success(1)
    assert read(target)["log_log_completed"] == [1]


def test_lock_released_when_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with pytest.raises(KeyError), ProgressStore(target, "linear", "log") as store:
        store.record_success(3)
        raise KeyError("boom")
    assert read(target)["linear_log_completed"] == [3]  # flushed on the way out
    with StateLock(target) as lock:
        assert lock.locked


HOLDER = textwrap.dedent(
    """
    import sys, time
    from fastspectro_dask.progress import ProgressStore
    store = ProgressStore(sys.argv[1], "linear", "log").open()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _start_holder(target: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.strip() == "locked", line
    return proc


def test_lock_held_by_subprocess_then_released_by_sigkill(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    proc = _start_holder(target)
    try:
        with pytest.raises(StateLockedError) as info:
            with ProgressStore(target, "linear", "log"):
                pass  # pragma: no cover
        assert f"PID {proc.pid}" in str(info.value)
        assert info.value.holder["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while True:  # the kernel drops the lock with the process
        try:
            with ProgressStore(target, "linear", "log") as store:
                store.record_success(1)
            break
        except StateLockedError:  # pragma: no cover - only if the kernel is slow
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert read(target)["linear_log_completed"] == [1]


# ----------------------------------------------------------------------------- issue 13


def test_state_files_are_created_with_the_process_umask(tmp_path: Path) -> None:
    """Like the figures (0666 minus the umask), not 0600: a group sharing results can
    read progress.json and extrema.json (issue 13.7)."""
    old = os.umask(0o002)
    try:
        atomic_write_json(tmp_path / "extrema.json", {"a": 1})
        with ProgressStore(tmp_path / "progress.json", "linear", "log") as store:
            store.record_success(1)
    finally:
        os.umask(old)
    for name in ("extrema.json", "progress.json", "progress.json.lock"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664, name
    old = os.umask(0o077)
    try:
        atomic_write_json(tmp_path / "private.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_remove_stale_temporaries_only_ours_by_exact_name(tmp_path: Path) -> None:
    from fastspectro_dask.atomic import remove_stale_temporaries

    target = tmp_path / "progress.json"
    atomic_write_json(target, {"ok": 1})
    ours = [
        ".progress.json.4242.0123456789ab.tmp",  # this version's naming
        ".progress.json.k3_x9q0z.tmp",  # the tempfile naming of earlier versions
    ]
    others = [
        ".progress.json.4242.0123456789AB.tmp",  # not our hex
        ".progress.json.tmp",
        ".progress.json.4242.0123456789ab.tmp.keep",
        ".extrema.json.4242.0123456789ab.tmp",  # another state file's: not asked for
        "progress.json.4242.0123456789ab.tmp",  # not hidden
        ".progress.json.rewrite.tmp",
        "notes.tmp",
    ]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ours[0]).write_text("x")  # only the state file's own folder
    removed = remove_stale_temporaries(target)
    assert sorted(p.name for p in removed) == sorted(ours)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*others, "progress.json", "sub"])
    assert (tmp_path / "sub" / ours[0]).exists() and read(target) == {"ok": 1}
    assert remove_stale_temporaries(tmp_path / "missing" / "x.json") == []


def test_acquire_lock_before_open_refuses_early_and_open_reuses_it(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    atomic_write_json(target, {"linear_log_completed": [5]})
    store = ProgressStore(target, "linear", "log")
    store.acquire_lock()
    store.acquire_lock()  # idempotent
    with pytest.raises(StateLockedError):
        ProgressStore(target, "linear", "log").acquire_lock()
    with store:  # loads under the lock it already holds
        assert store.is_completed(5)
    with StateLock(target) as lock:  # released by close()
        assert lock.locked
    other = ProgressStore(target, "linear", "log")
    other.acquire_lock()
    other.close()  # releases a lock taken without open()
    with StateLock(target):
        pass
