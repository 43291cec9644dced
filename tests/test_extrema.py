"""Global extrema: exact against pooled numpy, the energy rule, resume, staleness, cache."""

from __future__ import annotations

import functools
import json
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
    done_first = {rel for rel, e in partial["files"].items() if e["status"] == "counted"}
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
