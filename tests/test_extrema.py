"""Global extrema: exact against pooled numpy, the energy rule, resume, staleness, cache."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastspectro_dask import extrema as ext
from fastspectro_dask import io as fio
from fastspectro_dask import ledger as led
from fastspectro_dask.discovery import discover
from fastspectro_dask.extrema import Y_MAX_FRACTION, compute_global_extrema, extrema_key
from fastspectro_dask.io import open_esa
from fastspectro_dask.reduce import DEFAULT_CATEGORIES, reduce_dataset
from fastspectro_dask.synth import write_esa_file, write_synthetic_dataset

INSTS = ("ees", "eeb", "ies", "ieb")


@pytest.fixture(scope="module")
def small_mission(tmp_path_factory) -> Path:
    """Six orbits plus the broken-file corpus; small files."""
    root = tmp_path_factory.mktemp("mission")
    write_synthetic_dataset(root, orbits=6, records=30, seed=5, bad_files=True)
    return root


@functools.lru_cache(maxsize=8)
def pooled_reference(root: Path, variable: str = "data"):
    """Pool every good file's reduced values in memory: the oracle (small data only)."""
    out = {}
    index = discover(root)
    for inst in INSTS:
        vals = {c: [] for c in DEFAULT_CATEGORIES}
        energies = {c: [] for c in DEFAULT_CATEGORIES}
        for files in index.values():
            if inst not in files:
                continue
            try:
                red = reduce_dataset(open_esa(files[inst]), variable=variable).compute()
            except fio.InvalidCDFError:
                continue
            v = red["values"].values.astype(np.float32)
            e = red["energy"].values.astype(np.float32)
            for k, c in enumerate(DEFAULT_CATEGORIES):
                vals[c].append(v[k].ravel())
                energies[c].append(np.broadcast_to(e, v[k].shape).ravel())
        out[inst] = {c: (np.concatenate(vals[c]), np.concatenate(energies[c])) for c in vals}
    return out


def expected_limits(values: np.ndarray, energies: np.ndarray, q: float = 95.0):
    pos = np.isfinite(values) & (values > 0)
    v = values[pos]
    e = energies[pos]
    e = np.sort(e[np.isfinite(e) & (e > 0)])
    k = int(np.ceil(Y_MAX_FRACTION * e.size))  # k-th smallest energy (1-based)
    return {
        "z_max": float(np.percentile(v, q)),
        "z_min": float(v.min()),
        "y_min": float(e[0]),
        "y_max": float(e[k - 1]),
        "n": int(v.size),
    }


def run(root: Path, out: Path, **kw):
    kw.setdefault("extrema_json_path", out / "extrema.json")
    return compute_global_extrema(root, "linear", "log", **kw)


def test_exact_against_pooled_numpy(small_mission, tmp_path):
    state = run(small_mission, tmp_path, flush_batch_size=2)
    ref = pooled_reference(small_mission)
    for inst in INSTS:
        for cat in DEFAULT_CATEGORIES:
            want = expected_limits(*ref[inst][cat])
            got = state["results"][inst][cat]
            assert got["n_samples"] == want["n"]
            for bound in ("z_max", "z_min", "y_min", "y_max"):
                # bit-identical: same float, not approximately equal
                assert got[bound] == want[bound], (inst, cat, bound, got[bound], want[bound])
            assert state[extrema_key(inst, "linear", "log", "z_max", cat)] == want["z_max"]
        assert state[f"{inst}_linear_log_z_max"] == state["results"][inst]["all"]["z_max"]
    # limits are usable on log axes
    for inst in INSTS:
        assert state[f"{inst}_linear_log_y_min"] > 0 and state[f"{inst}_linear_log_z_min"] > 0
    prov = state["provenance"]["ees"]
    assert prov["percentile"] == 95.0 and prov["sample_count"] > 0
    assert prov["orbits_covered"] >= 6 and "exact" in prov["method"]
    assert len(state["input_fingerprint"]) == 64
    on_disk = json.loads((tmp_path / "extrema.json").read_text())
    assert on_disk["ees_linear_log_z_max"] == state["ees_linear_log_z_max"]


def test_eflux_and_compute_mins(small_mission, tmp_path):
    state = run(small_mission, tmp_path, variable="eflux", compute_mins=True, max_percentile=99.0)
    ref = pooled_reference(small_mission, "eflux")
    v, _e = ref["ies"]["all"]
    pos = v[np.isfinite(v) & (v > 0)]
    assert state["ies_linear_log_z_max"] == float(np.percentile(pos, 99.0))
    assert state["ies_linear_log_z_min"] == float(np.percentile(pos, 1.0))


def test_bad_files_are_recorded_and_do_not_abort(small_mission, tmp_path):
    state = run(small_mission, tmp_path)
    statuses = {rel: e["status"] for rel, e in state["files"].items()}
    assert sum(s == "invalid-cdf" for s in statuses.values()) == 8
    assert all("InvalidCDFError" in msg for msg in state["errors"].values())
    assert state["provenance"]["ees"]["files_with_errors"] == 8


def test_reuse_and_new_scale_keys_without_reading(small_mission, tmp_path, monkeypatch):
    run(small_mission, tmp_path)
    opened = []
    monkeypatch.setattr(fio, "open_esa", lambda *a, **k: opened.append(a) or open_esa(*a, **k))
    state = compute_global_extrema(
        small_mission, "log", "linear", extrema_json_path=tmp_path / "extrema.json"
    )
    assert not opened
    assert state["ees_log_linear_z_max"] == state["ees_linear_log_z_max"]


def test_pass2_reads_the_cache_not_the_cdf(small_mission, tmp_path, monkeypatch):
    run(small_mission, tmp_path)
    decodes = []
    original = fio._RecordArray._read

    def counting(self, start, stop):
        decodes.append(self.name)
        return original(self, start, stop)

    monkeypatch.setattr(fio._RecordArray, "_read", counting)
    state = run(small_mission, tmp_path, max_percentile=90.0)  # new percentile: pass 2 only
    assert decodes == []
    ref = pooled_reference(small_mission)
    v, _ = ref["ees"]["all"]
    assert state["ees_linear_log_z_max"] == float(np.percentile(v[np.isfinite(v) & (v > 0)], 90))


def test_interrupted_run_resumes_to_identical_result(small_mission, tmp_path, monkeypatch):
    full = run(small_mission, tmp_path / "full")
    counted = []
    original = ext._pass1_file

    def counting(*args, **kwargs):
        counted.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(ext, "_pass1_file", counting)

    def stop_after(done, total):
        if done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(
            small_mission, tmp_path / "part", progress=stop_after, flush_batch_size=3, max_workers=1
        )
    partial = json.loads((tmp_path / "part" / "extrema.json").read_text())
    assert partial["complete"] is False
    assert "files" not in partial  # the ledger is in the journal beside the JSON
    ledger = led.committed_ledger(tmp_path / "part" / "extrema.json")
    done_first = {rel for rel, e in ledger.items() if e["status"] == "counted"}
    assert 1 <= len(done_first) <= 7
    counted.clear()
    resumed = run(small_mission, tmp_path / "part")
    assert resumed["results"] == full["results"]
    reread = {os.path.relpath(p, small_mission) for p in counted}
    assert not reread & done_first, "files counted before the interruption were read again"


def test_changed_removed_and_added_files(tmp_path):
    root = tmp_path / "data"
    write_synthetic_dataset(root, orbits=3, records=20, seed=9, instruments=("ees", "ies"))
    out = tmp_path / "out"
    first = run(root, out)
    index = discover(root)
    orbits = list(index)
    # change one file (new content, new size/mtime), remove one, add an orbit
    changed = index[orbits[0]]["ees"]
    changed.unlink()
    write_esa_file(root, "ees", orbits[0], records=25, seed=99, activity=80.0)
    os.remove(index[orbits[1]]["ies"])
    write_synthetic_dataset(
        root, orbits=1, records=20, seed=9, start_orbit=orbits[-1] + 1, instruments=("ees", "ies")
    )
    updated = run(root, out)
    fresh = run(root, tmp_path / "fresh")
    assert updated["results"] == fresh["results"]
    assert updated["results"] != first["results"]
    assert updated["input_fingerprint"] == fresh["input_fingerprint"]


def test_distributed_client_matches_threads(small_mission, tmp_path):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        on_cluster = run(small_mission, tmp_path / "c", client=client)
    local = run(small_mission, tmp_path / "l")
    assert on_cluster["results"] == local["results"]


def test_several_files_per_cluster_task_match_threads(
    small_mission, tmp_path, monkeypatch, task_sizes
):
    """Pass 1 on a cluster, 4 files per Dask task while enough are left (here: while one
    more per thread is): the same limits and the same per-file statuses (each broken file
    its own error, its task's other files counted) as local threads, in fewer tasks."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(ext, "_SEVERAL_WHILE_PER_THREAD", 1)
    sizes = task_sizes
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(1)
        on_cluster = run(small_mission, tmp_path / "c", client=client)
    local = run(small_mission, tmp_path / "l")
    n = len(local["files"])
    assert sum(sizes) == n and len(sizes) < n
    assert sizes[0] == ext._CALLS_PER_TASK and sizes[-2:] == [1, 1]  # the tail, one each
    assert on_cluster["results"] == local["results"]
    statuses = {rel: e["status"] for rel, e in on_cluster["files"].items()}
    assert statuses == {rel: e["status"] for rel, e in local["files"].items()}
    assert sum(s == "invalid-cdf" for s in statuses.values()) == 8


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(small_mission, tmp_path):
    """A run killed with SIGKILL leaves a parseable state; resuming gives the same numbers."""
    out = tmp_path / "killed"
    code = (
        "import sys, time\n"
        "from fastspectro_dask import extrema as ext\n"
        "orig = ext._pass1_file\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.3)\n"
        "    return orig(*a, **k)\n"
        "ext._pass1_file = slow\n"
        f"ext.compute_global_extrema({str(small_mission)!r}, extrema_json_path="
        f"{str(out / 'extrema.json')!r}, flush_batch_size=1, max_workers=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    state_file = out / "extrema.json"
    while time.time() < deadline and not state_file.exists():
        time.sleep(0.05)
    time.sleep(0.7)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads(state_file.read_text())  # always parseable
    assert partial["complete"] is False
    assert not list(out.glob(".extrema.json.*.tmp"))
    resumed = run(small_mission, out)
    full = run(small_mission, tmp_path / "full")
    assert resumed["results"] == full["results"]


def test_empty_mission_is_a_clear_error(tmp_path):
    with pytest.raises(ext.EmptyDataError, match="no positive finite"):
        run(tmp_path, tmp_path / "o")


def test_parameter_validation(small_mission, tmp_path):
    with pytest.raises(ValueError):
        run(small_mission, tmp_path, flush_batch_size=0)
    with pytest.raises(ValueError):
        run(small_mission, tmp_path, max_percentile=101)


def test_changed_parameters_start_afresh(small_mission, tmp_path, caplog):
    run(small_mission, tmp_path, categories={"all": [(0, 360)]})
    state = run(small_mission, tmp_path)
    assert set(state["results"]["ees"]) == set(DEFAULT_CATEGORIES)
    assert "other parameters" in caplog.text


def test_corrupt_state_is_moved_aside(small_mission, tmp_path):
    (tmp_path / "extrema.json").write_text("{ not json")
    state = run(small_mission, tmp_path)
    assert state["complete"]
    assert list(tmp_path.glob("extrema.json.corrupt-*"))


def test_cache_deleted_between_runs_still_exact(small_mission, tmp_path):
    first = run(small_mission, tmp_path)
    shutil.rmtree(tmp_path / "reduced.zarr")
    second = run(small_mission, tmp_path, max_percentile=95.0000001)
    ref = pooled_reference(small_mission)
    v, _ = ref["ies"]["all"]
    pos = v[np.isfinite(v) & (v > 0)]
    assert second["ies_linear_log_z_max"] == float(np.percentile(pos, 95.0000001))
    assert first["ies_linear_log_y_max"] == second["ies_linear_log_y_max"]


# --------------------------------------------------------------------------------------
# The ledger journal (schema 3): crash safety, corruption, compaction, flush cost
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_state(small_mission, tmp_path_factory):
    """An uninterrupted run's state: what every resumed run must reproduce exactly."""
    return run(small_mission, tmp_path_factory.mktemp("full"))


def count_reads(monkeypatch) -> list[str]:
    """Paths that pass 1 processes (whether from the cache or by decoding)."""
    counted: list[str] = []
    original = ext._pass1_file

    def counting(*args, **kwargs):
        counted.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(ext, "_pass1_file", counting)
    return counted


def journal_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "extrema.ledger.jsonl").read_bytes().splitlines()]


def test_state_files_layout(small_mission, full_state, tmp_path):
    """The JSON holds the keys, provenance and a bounded pass-1 part; the ledger is a
    journal beside it whose committed part the JSON records."""
    out = tmp_path
    state = run(small_mission, out, flush_batch_size=2)
    doc = json.loads((out / "extrema.json").read_text())
    assert doc["schema"] == ext._SCHEMA == 3 and "files" not in doc
    assert doc["ees_linear_log_z_max"] == full_state["ees_linear_log_z_max"]
    assert doc["provenance"]["ees"]["percentile"] == 95.0
    raw = (out / "extrema.ledger.jsonl").read_bytes()
    assert doc["journal"]["bytes"] == len(raw) and doc["journal"]["lines"] == raw.count(b"\n")
    lines = journal_lines(out)
    assert lines[0]["id"] == doc["journal"]["id"] and lines[0]["extrema_json"] == "extrema.json"
    assert {x["path"] for x in lines[1:]} == set(state["files"])  # the returned ledger
    assert led.committed_ledger(out / "extrema.json") == state["files"]
    merged = doc["pass1"]["merged"]["ees"]["all"]
    assert merged["n"] == doc["results"]["ees"]["all"]["n_samples"]
    assert led.Merged.from_compact(merged).to_compact() == merged
    # another JSON name: the journal follows it
    assert led.journal_path(Path("a/b/x.json")) == Path("a/b/x.ledger.jsonl")
    assert led.journal_path(Path("state")) == Path("state.ledger.jsonl")


def _killing_child(root: Path, out: Path, when: str) -> str:
    """A run that SIGKILLs itself inside its third ledger flush."""
    return (
        "import os, signal\n"
        "from fastspectro_dask import extrema as ext\n"
        "from fastspectro_dask.ledger import Ledger\n"
        "orig = Ledger.commit\n"
        "n = [0]\n"
        "def commit(self):\n"
        "    if self.pending:\n"
        "        n[0] += 1\n"
        "    if n[0] == 3:\n"
        "        data = b''.join(self._pending)\n"
        "        if " + repr(when) + " == 'torn':\n"  # half the batch reaches the disk
        "            fd = self._append_fd()\n"
        "            os.write(fd, data[: len(data) // 2])\n"
        "            os.fsync(fd)\n"
        "        else:\n"  # the whole batch is appended, the JSON is never written
        "            orig(self)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(self)\n"
        "Ledger.commit = commit\n"
        f"ext.compute_global_extrema({str(root)!r}, extrema_json_path="
        f"{str(out / 'extrema.json')!r}, flush_batch_size=1, max_workers=1)\n"
    )


@pytest.mark.parametrize("when", ["torn", "appended-not-committed"])
def test_killed_mid_flush_journal_tail_is_ignored(small_mission, full_state, tmp_path, when):
    """SIGKILL inside a flush leaves bytes after the committed part of the journal (a torn
    line, or whole lines the JSON never recorded): they are dropped, those files are
    counted again, and the result is bit-identical."""
    out = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _killing_child(small_mission, out, when)], check=False
    )
    assert proc.returncode == -signal.SIGKILL
    doc = json.loads((out / "extrema.json").read_text())
    size = (out / "extrema.ledger.jsonl").stat().st_size
    assert size > doc["journal"]["bytes"]  # an uncommitted tail is there
    committed = led.committed_ledger(out / "extrema.json")
    assert committed and len(committed) == doc["journal"]["lines"] - 1
    with pytest.MonkeyPatch.context() as mp:
        reread = count_reads(mp)
        resumed = run(small_mission, out)
    assert resumed["results"] == full_state["results"]
    reread = {os.path.relpath(p, small_mission) for p in reread}
    assert reread == set(full_state["files"]) - set(committed)
    assert not list(out.glob("*.corrupt-*"))
    assert led.committed_ledger(out / "extrema.json") == resumed["files"]


def test_uncommitted_lines_never_count(small_mission, full_state, tmp_path, monkeypatch):
    """A complete-looking line after the committed part claims a file is counted; it is
    ignored (the merged histograms in the JSON do not hold that file)."""
    out = tmp_path

    def stop_after(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(small_mission, out, progress=stop_after, flush_batch_size=100, max_workers=1)
    committed = led.committed_ledger(out / "extrema.json")
    missing = sorted(set(full_state["files"]) - set(committed))
    fake = {**full_state["files"][missing[0]], "op": "put", "path": missing[0]}
    with open(out / "extrema.ledger.jsonl", "ab") as fh:
        fh.write(json.dumps(fake).encode() + b"\n" + b'{"op": "put", "path": "2000/0')
    reread = count_reads(monkeypatch)
    resumed = run(small_mission, out)
    assert resumed["results"] == full_state["results"]
    assert {os.path.relpath(p, small_mission) for p in reread} == set(missing)


def test_corrupt_journal_is_moved_aside_and_recounted(
    small_mission, full_state, tmp_path, monkeypatch, caplog
):
    out = tmp_path
    run(small_mission, out)
    path = out / "extrema.ledger.jsonl"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] = ord("#")
    path.write_bytes(bytes(raw))
    reread = count_reads(monkeypatch)
    state = run(small_mission, out)
    assert state["results"] == full_state["results"] and state["complete"]
    assert len(reread) == len(full_state["files"])  # everything counted again
    aside = list(out.glob("extrema.ledger.jsonl.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)
    assert "Corrupt extrema ledger journal" in caplog.text and "recounting" in caplog.text
    assert led.committed_ledger(out / "extrema.json") == state["files"]


def test_corrupt_json_moves_its_journal_aside_too(small_mission, full_state, tmp_path):
    run(small_mission, tmp_path)
    (tmp_path / "extrema.json").write_text('{"schema": 3, "journ')
    state = run(small_mission, tmp_path)
    assert state["results"] == full_state["results"]
    assert list(tmp_path.glob("extrema.json.corrupt-*"))
    assert list(tmp_path.glob("extrema.ledger.jsonl.corrupt-*"))
    # a journal without its JSON (the JSON deleted by hand) is simply replaced
    (tmp_path / "extrema.json").unlink()
    state = run(small_mission, tmp_path)
    assert state["results"] == full_state["results"]
    assert led.committed_ledger(tmp_path / "extrema.json") == state["files"]


def test_ledger_inconsistent_with_histograms_is_recounted(
    small_mission, full_state, tmp_path, monkeypatch, caplog
):
    """A journal that verifies but disagrees with the JSON's histograms (e.g. an old
    journal restored by hand with its checksum) is not trusted."""
    run(small_mission, tmp_path)
    doc = json.loads((tmp_path / "extrema.json").read_text())
    doc["pass1"]["merged"]["ees"] = {}  # histograms of ees lost
    (tmp_path / "extrema.json").write_text(json.dumps(doc))
    reread = count_reads(monkeypatch)
    state = run(small_mission, tmp_path)
    assert state["results"] == full_state["results"]
    assert len(reread) == len(full_state["files"])
    assert "ledger counts" in caplog.text


def _touch(paths, ns: int) -> None:
    for p in paths:
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + ns))


def test_compaction_at_the_end_of_a_run(tmp_path, monkeypatch, caplog):
    root = tmp_path / "data"
    write_synthetic_dataset(root, orbits=3, records=20, seed=9, instruments=("ees", "ies"))
    out = tmp_path / "out"
    first = run(root, out, flush_batch_size=1)
    files = sorted(p for orbit in discover(root).values() for p in orbit.values())
    n_files = len(files)
    assert len(journal_lines(out)) == n_files + 1
    # files re-counted (new mtime): below the threshold the superseded lines stay
    _touch(files[:2], 10**9)
    run(root, out)
    ops = [x.get("op") for x in journal_lines(out)[1:]]
    assert ops.count("del") == 2 and len(ops) == n_files + 4
    # above it, the journal is rewritten with one line per file, atomically
    monkeypatch.setattr(led, "_COMPACT_MIN_SUPERSEDED", 3)
    monkeypatch.setattr(led, "_COMPACT_FRACTION", 0.0)
    old_id = journal_lines(out)[0]["id"]
    _touch(files[2:4], 10**9)
    writes: list[dict] = []
    real_write = led.atomic_write_json
    monkeypatch.setattr(led, "atomic_write_json", lambda p, d: writes.append(d) or real_write(p, d))
    with caplog.at_level(logging.INFO, logger="fastspectro_dask.ledger"):
        state = run(root, out)
    assert "compacted" in caplog.text
    lines = journal_lines(out)
    assert lines[0]["id"] != old_id and len(lines) == n_files + 1
    assert all(x["op"] == "put" for x in lines[1:])
    assert sorted(x["path"] for x in lines[1:]) == sorted(state["files"])
    doc = json.loads((out / "extrema.json").read_text())
    assert doc["journal"] == state["journal"] and "journal_next" not in doc
    assert doc["journal"]["bytes"] == (out / "extrema.ledger.jsonl").stat().st_size
    # the intermediate JSON named both journals
    assert writes[-2]["journal_next"] == writes[-1]["journal"]
    assert writes[-2]["journal"]["id"] == old_id
    fresh = run(root, tmp_path / "fresh")
    assert state["results"] == fresh["results"]
    assert state["results"] == first["results"]  # same content, only mtimes changed
    # and the compacted state is reused as is
    reread = count_reads(monkeypatch)
    assert run(root, out)["results"] == fresh["results"] and not reread


def test_kill_during_compaction_resumes_either_journal(tmp_path, monkeypatch):
    """Killed after the compacted journal replaced the old one but before the JSON named
    only it: the JSON's ``journal_next`` matches, nothing is recounted or moved aside."""
    root = tmp_path / "data"
    write_synthetic_dataset(root, orbits=2, records=20, seed=9, instruments=("ees",))
    out = tmp_path / "out"
    run(root, out)
    files = sorted(p for orbit in discover(root).values() for p in orbit.values())
    _touch(files, 10**9)
    monkeypatch.setattr(led, "_COMPACT_MIN_SUPERSEDED", 1)
    real_write = led.atomic_write_json

    def killed_at_last_write(path, doc):
        if "journal_next" not in doc and doc["journal"]["lines"] == len(files) + 1:
            if doc.get("complete") and journal_lines(out)[0]["id"] == doc["journal"]["id"]:
                raise KeyboardInterrupt  # stands for the kill: the JSON is not written
        real_write(path, doc)

    monkeypatch.setattr(led, "atomic_write_json", killed_at_last_write)
    with pytest.raises(KeyboardInterrupt):
        run(root, out)
    monkeypatch.setattr(led, "atomic_write_json", real_write)
    doc = json.loads((out / "extrema.json").read_text())
    assert doc["journal_next"]["id"] == journal_lines(out)[0]["id"] != doc["journal"]["id"]
    reread = count_reads(monkeypatch)
    state = run(root, out)
    assert not reread and state["complete"]
    assert not list(out.glob("*.corrupt-*"))
    assert len(state["files"]) == len(files)


def test_schema2_state_is_recounted(small_mission, tmp_path, monkeypatch, caplog):
    """An extrema JSON of schema 2 (ledger and plain-list histograms inline, written before
    the parameters carried the reduction version) is stale: every file is counted again,
    with one warning, and the new state is schema 3."""
    kept = run(small_mission, tmp_path / "kept")
    doc = json.loads((tmp_path / "kept" / "extrema.json").read_text())
    old = {k: v for k, v in doc.items() if k not in ("journal", "pass1")}
    old["schema"] = 2
    old["params"] = {
        k: v for k, v in doc["params"].items() if k not in ("retrace", "reduction")
    } | {"schema": 2}
    old["files"] = kept["files"]
    old["pass1"] = {"ees": {"all": {"hist": {}, "energy": [[], []]}}}
    (tmp_path / "extrema.json").write_text(json.dumps(old, indent=1))
    reread = count_reads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="fastspectro_dask.ledger"):
        state = run(small_mission, tmp_path)
    assert "other parameters" in caplog.text and len(reread) == len(kept["files"])
    assert state["results"] == kept["results"]
    new = json.loads((tmp_path / "extrema.json").read_text())
    assert new["schema"] == 3 and "files" not in new and new["complete"]
    assert led.committed_ledger(tmp_path / "extrema.json") == kept["files"]


def _synthetic_entry(i: int, cats) -> dict:
    return {
        "orbit": 1000 + i // 4,
        "instrument": "ees",
        "size": 421504 + i,
        "mtime_ns": 1795924317334182826 + i,
        "status": "counted",
        "entry": f"ees-{1000 + i // 4}-6b289f1d3147215ed0a9",
        "n": 1642,
        "min_positive": dict.fromkeys(cats, 1.0),
    }


def test_flush_cost_does_not_grow_with_the_ledger(tmp_path):
    """Bytes written per flush: the batch's journal lines plus a JSON of constant size,
    whether 40 or 4000 files are already counted (the old JSON grew ~310 B per file)."""
    cats = list(DEFAULT_CATEGORIES)
    params = {"variable": "data", "categories": {}, "schema": ext._SCHEMA}
    store = led.Ledger(tmp_path / "extrema.json", params, "/data", INSTS, cats)
    assert store.open() == {}
    batch, per_flush = 40, []
    for b in range(100):
        lines = 0
        for i in range(b * batch, (b + 1) * batch):
            entry = _synthetic_entry(i, cats)
            rel = f"2000/01/fa_esa_l2_ees_{i:014d}_{1000 + i // 4}_v02.cdf"
            store.put(rel, entry)
            store.merged["ees"]["all"].counts[0x3F80] += 1642
            lines += len(led.encode({"op": "put", "path": rel, **entry}))
        store.flush(False)
        per_flush.append((store.last_flush["journal_bytes"], store.last_flush["json_bytes"]))
        # the journal append is exactly the batch's lines
        assert store.last_flush["journal_bytes"] == lines
    journal = [j for j, _ in per_flush]
    json_sizes = [s for _, s in per_flush]
    assert max(journal) == min(journal)  # 40 files each time, 40..4000 already counted
    assert max(json_sizes) - min(json_sizes) <= 32  # only counters' digits change
    assert max(json_sizes) < 20_000
    total = store.size
    assert total > 50 * per_flush[-1][0]  # the journal is far larger than one flush
    store.close()
    again = led.Ledger(tmp_path / "extrema.json", params, "/data", INSTS, cats)
    assert again.open()["journal"]["lines"] == 4001 and len(again.ledger) == 4000
    again.close()


def test_flushes_of_a_real_run_append_only_their_orbits(small_mission, tmp_path, monkeypatch):
    flushes: list[tuple[int, int, int]] = []
    real_flush = led.Ledger.flush

    def spy(self, *a, **k):
        pending = self.pending
        doc = real_flush(self, *a, **k)
        flushes.append((pending, self.last_flush["journal_bytes"], self.last_flush["json_bytes"]))
        return doc

    monkeypatch.setattr(led.Ledger, "flush", spy)
    state = run(small_mission, tmp_path, flush_batch_size=1, max_workers=1)
    assert len(flushes) >= 14
    for pending, nbytes, _ in flushes:
        assert nbytes <= 600 * pending  # a few hundred bytes per file of the batch, no more
        assert pending <= 4  # one orbit: at most its four instruments
    on_disk = (tmp_path / "extrema.ledger.jsonl").stat().st_size
    header = len((tmp_path / "extrema.ledger.jsonl").read_bytes().split(b"\n")[0]) + 1
    assert sum(n for _, n, _ in flushes) == on_disk - header  # every byte appended once
    assert "files" not in json.loads((tmp_path / "extrema.json").read_text())
    assert len(state["files"]) == len(journal_lines(tmp_path)) - 1


def test_second_concurrent_run_is_refused(small_mission, tmp_path):
    """One writer per extrema JSON: the journal is append-only. The error is public."""
    from fastspectro_dask import FastSpectroError, StateLockedError
    from fastspectro_dask.state import StateLock

    assert issubclass(StateLockedError, FastSpectroError)
    with StateLock(tmp_path / "extrema.json"), pytest.raises(StateLockedError, match="PID"):
        run(small_mission, tmp_path)
    assert not (tmp_path / "extrema.json").exists()


def test_retrace_channel_is_dropped_unless_kept(small_mission, full_state, tmp_path):
    """Channel 0 is the sweep's high-voltage retrace (unreliable energy, up to ~3x the top
    of the range in the synthetic files, as in the real ones). Dropped by default, y_max
    stays within the instruments' range (electrons to 30 keV, ions to 25 keV)."""
    top = {"ees": 30e3, "eeb": 30e3, "ies": 25e3, "ieb": 25e3}
    for inst, cats in full_state["results"].items():
        assert cats["all"]["y_max"] <= top[inst] * 1.02, inst
    assert full_state["params"]["retrace"] is False
    kept = run(small_mission, tmp_path, retrace=True)
    assert kept["params"]["retrace"] is True
    assert any(
        kept["results"][i]["all"]["y_max"] > top[i] * 1.02 for i in kept["results"]
    )  # the retrace counts pull y_max beyond the range
    assert (
        kept["results"]["ees"]["all"]["n_samples"]
        > full_state["results"]["ees"]["all"]["n_samples"]
    )


def _listing(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` with its kind, size, mtime and mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[path.relative_to(root).as_posix()] = (
                path.is_dir(),
                st.st_size,
                st.st_mtime_ns,
                st.st_mode,
            )
    return out


def _chmod_tree(root: Path, dir_mode: int, file_mode: int) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(Path(dirpath) / name, file_mode)
        os.chmod(dirpath, dir_mode)


def test_default_paths_keep_the_input_folder_untouched(tmp_path, monkeypatch):
    """Without paths, extrema.json, its lock and ledger and reduced.zarr go in the current
    directory (as the original FAST_calculated_extrema.json), never in the input folder,
    which may be a read-only archive."""
    data = tmp_path / "archive"
    write_synthetic_dataset(data, orbits=2, records=16, seed=5)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _chmod_tree(data, 0o555, 0o444)  # (root ignores the modes: the listing is the check)
    try:
        before = _listing(data)
        state = compute_global_extrema(data)
        assert _listing(data) == before
    finally:
        _chmod_tree(data, 0o755, 0o644)
    assert state["ees_linear_log_z_max"] > 0
    assert (work / "extrema.json").is_file() and (work / "extrema.ledger.jsonl").is_file()
    assert (work / "reduced.zarr" / "zarr.json").is_file()
    assert json.loads((work / "extrema.json").read_text())["complete"]
    assert not discover(data).unrecognized  # the next discover sees only the data


def test_default_paths_inside_the_input_folder_are_refused(tmp_path, monkeypatch):
    data = tmp_path / "archive"
    write_synthetic_dataset(data, orbits=1, records=16, seed=5)
    inside = next(p for p in data.rglob("*") if p.is_dir())
    for cwd in (data, inside):
        monkeypatch.chdir(cwd)
        before = _listing(data)
        with pytest.raises(ValueError, match="never written"):
            compute_global_extrema(data)
        assert _listing(data) == before
    state = compute_global_extrema(data, extrema_json_path=tmp_path / "elsewhere" / "e.json")
    assert state["complete"] and (tmp_path / "elsewhere" / "reduced.zarr").is_dir()
