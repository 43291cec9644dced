"""The CLI against a real single-node SLURM (docs: shared/reference/SLURM_SINGLE_NODE.md).

Skipped unless ``sinfo`` answers with an idle node: start slurmctld/slurmd (and munged)
first, as the reference describes. The node is held by an exclusive blocker job, so the
run's worker job waits pending in the queue for longer than the orbit timeout; when the
blocker ends, the worker arrives late, gets work at once, and no orbit times out (the
deadline starts on the worker, not at submission; the extrema are computed beforehand, so
the render tasks are what waits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastspectro_dask.extrema import compute_global_extrema
from fastspectro_dask.synth import write_synthetic_dataset

pytestmark = pytest.mark.slow

_REPO = Path(__file__).resolve().parent.parent
BLOCK_SECONDS = 25  # the blocker's run: our job is pending at least this long


def _slurm_ready() -> str | None:
    """None when a SLURM controller answers with an idle node, else why not."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "SLURM client commands (sinfo, sbatch) are not installed"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0:
        return f"slurmctld is not available (sinfo: {out.stderr.strip() or out.returncode})"
    if "idle" not in out.stdout.split():
        return f"no idle SLURM node (sinfo states: {out.stdout.split()})"
    return None


def _squeue_states(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%T"], capture_output=True, text=True, timeout=15
    )
    return out.stdout.split()


@pytest.fixture
def slurm():
    why = _slurm_ready()
    if why is not None:
        pytest.skip(why)
    yield
    subprocess.run(["scancel", "-n", "fastspectro-blocker"], timeout=15)


def test_cli_on_real_slurm_with_jobs_pending_at_first(slurm, tmp_path):
    pytest.importorskip("dask_jobqueue")
    data, out = tmp_path / "data", tmp_path / "out"
    write_synthetic_dataset(data, orbits=2, records=20, seed=3)
    # the extrema first (local threads): the run reuses them, so its render tasks are
    # submitted while the worker job still waits in the queue
    compute_global_extrema(data, extrema_json_path=out / "extrema.json")
    blocker = subprocess.run(
        [
            "sbatch",
            "--exclusive",
            "-J",
            "fastspectro-blocker",
            "-o",
            os.devnull,
            "--wrap",
            f"sleep {BLOCK_SECONDS}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert blocker.returncode == 0, blocker.stderr
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])
    )
    t0 = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastspectro_dask.cli",
            "plot",
            str(data),
            str(out),
            "--products",
            "instruments",
            "pitch-angle",
            "--cluster",
            "slurm",
            "--jobs",
            "1",
            "--cluster-kw",
            "cores=1",
            "--cluster-kw",
            "memory=2GB",
            "--cluster-kw",
            "processes=1",
            "--cluster-kw",
            "interface=lo",
            "--cluster-kw",
            "job_name=fastspectro-worker",
            "--orbit-timeout",
            "15",  # shorter than the time the job waits pending in the queue
            "--worker-wait",
            "300",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert wall > BLOCK_SECONDS  # the worker could only start after the blocker
    assert "SLURM cluster: 1 job(s) submitted" in res.stdout
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 2 + sum(1 for _ in data.rglob("fa_esa_l2_*.cdf"))  # grids + PA grids
    progress = json.loads((out / "progress.json").read_text())
    assert not [k for k in progress if "error" in k and progress[k]], progress
    assert len(progress["linear_log_completed"]) == 2  # no orbit timed out while pending
    assert not _squeue_states("fastspectro-worker")  # the job was cancelled at the end
