"""The CLI against a real single-node SLURM (docs: shared/reference/SLURM_SINGLE_NODE.md).

Skipped unless ``sinfo`` answers with an idle node: ``bash .ci/slurm-up`` (run by
``.ci/run``) starts munged, slurmctld and slurmd. The node is held by an exclusive blocker
job, so the run's two worker jobs wait pending in the queue for longer than the orbit
timeout; the test then ends the blocker, the workers arrive late and get work at once, and
no orbit times out (the deadline starts on the worker, not at submission; the extrema are
computed beforehand, so the render tasks are what waits). Once the first figure is on disk
the test cancels one of the worker jobs with ``scancel``: the run logs the lost worker and
job, submits a new job, and still ends with every figure (the lost worker's tasks are
computed again on the other one).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from fastspectro_dask.extrema import compute_global_extrema
from fastspectro_dask.schedule import REFRESH_SECONDS
from fastspectro_dask.synth import write_synthetic_dataset
from tests._slurm import cli_command, cli_env, jobqueue_plot_args, slurm_ready, squeue_jobs

pytestmark = pytest.mark.slow

#: Enough that work is left when a worker job is cancelled after the first figure.
ORBITS = 8
#: Shorter than the time the worker jobs are held pending in the queue.
ORBIT_TIMEOUT = 30.0
#: The bound of every wait for a condition (seconds).
WAIT = 240.0
#: What a dask worker logs once it has joined the scheduler.
REGISTERED_LINE = re.compile(r"^(\S+ \S+),\d+ .* Registered to:", re.MULTILINE)
WORKER_NAME_LINE = re.compile(r"Worker name: +(\S+)")
#: A worker that joined this long ago has been seen by the run (it looks at the cluster
#: every REFRESH_SECONDS while tasks are in flight).
SEEN_AFTER = 4 * REFRESH_SECONDS + 1

T = TypeVar("T")


def _until(condition: Callable[[], T], what: str, run: subprocess.Popen | None = None) -> T:
    """Poll ``condition`` until it is true (returned), at most :data:`WAIT` seconds;
    fails at once when ``run`` ended meanwhile."""
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if value:
            return value
        if run is not None and run.poll() is not None:
            pytest.fail(f"the run ended (exit {run.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {WAIT:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def slurm():
    """Job names unique to this test (``blocker``, ``worker``); both cancelled at the end."""
    why = slurm_ready()
    if why is not None:
        pytest.skip(why)
    tag = f"fastspectro-{uuid.uuid4().hex[:8]}"
    names = {"blocker": f"{tag}-blocker", "worker": f"{tag}-worker"}
    yield names
    for name in names.values():
        subprocess.run(["scancel", "-n", name], timeout=15)


def _sbatch_blocker(name: str) -> str:
    """An exclusive job holding the node (until cancelled, at most 10 minutes)."""
    cmd = ["sbatch", "--parsable", "--exclusive", "-J", name, "-o", os.devnull]
    res = subprocess.run([*cmd, "--wrap", "sleep 600"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _registered_jobs(log_dir: Path, name: str) -> dict[str, tuple[float, str]]:
    """``{job id: (when, dask worker name)}`` of the worker jobs whose dask worker has
    joined the scheduler (``when`` in epoch seconds), from the job logs dask-jobqueue
    writes as ``{log_dir}/{name}-{job id}.err``."""
    jobs = {}
    for err in log_dir.glob(f"{name}-*.err"):
        text = err.read_text(errors="replace")
        found, worker = REGISTERED_LINE.search(text), WORKER_NAME_LINE.search(text)
        if found and worker:  # the worker's local time, as ours: same machine
            when = time.mktime(time.strptime(found[1], "%Y-%m-%d %H:%M:%S"))
            jobs[err.name[len(name) + 1 : -len(".err")]] = (when, worker[1])
    return jobs


def _seen_workers(log_dir: Path, name: str, count: int) -> dict[str, str]:
    """``{dask worker name: job id}`` once ``count`` workers joined long enough ago for
    the run to have seen them (:data:`SEEN_AFTER`), else empty."""
    seen = {
        worker: job
        for job, (when, worker) in _registered_jobs(log_dir, name).items()
        if time.time() - when > SEEN_AFTER
    }
    return seen if len(seen) == count else {}


@dataclass
class _Run:
    """A CLI plot run on two SLURM worker jobs (see :func:`_plot_behind_blocker`)."""

    run: subprocess.Popen
    out: Path
    job_logs: Path
    blocker: str
    stdout: Path
    stderr: Path

    def texts(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()


@contextlib.contextmanager
def _plot_behind_blocker(slurm, tmp_path: Path, orbits: int, *options: str) -> Iterator[_Run]:
    """``fastspectro plot`` with ``--jobs 2`` on ``orbits`` synthetic orbits, started while
    an exclusive blocker job holds the node, so its worker jobs wait pending in the queue;
    killed at the end if still running. The extrema are computed first (local threads):
    the run reuses them, so its render tasks are submitted while the jobs wait."""
    data, out, job_logs = tmp_path / "data", tmp_path / "out", tmp_path / "jobs"
    write_synthetic_dataset(data, orbits=orbits, records=20, seed=3)
    compute_global_extrema(data, extrema_json_path=out / "extrema.json")
    blocker = _sbatch_blocker(slurm["blocker"])
    _until(lambda: squeue_jobs(slurm["blocker"]).get(blocker) == "RUNNING", "running blocker")
    args = jobqueue_plot_args(
        data,
        out,
        *options,
        jobs=2,
        cluster_kw=(f"job_name={slurm['worker']}", f"log_directory={job_logs}"),
    )
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("w") as so, stderr.open("w") as se:
        run = subprocess.Popen(
            cli_command(*args), stdout=so, stderr=se, env=cli_env(), cwd=tmp_path
        )
    try:
        yield _Run(run, out, job_logs, blocker, stdout, stderr)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)


def _two_pending_worker_jobs(slurm, run: subprocess.Popen) -> dict[str, str]:
    """The run's two worker jobs, once both wait pending in the queue."""
    return _until(
        lambda: (
            (jobs := squeue_jobs(slurm["worker"]))
            and len(jobs) == 2
            and set(jobs.values()) == {"PENDING"}
            and jobs
        ),
        "two pending worker jobs",
        run,
    )


def test_cli_on_real_slurm_jobs_pending_at_first_then_one_cancelled(slurm, tmp_path):
    pytest.importorskip("dask_jobqueue")
    options = ("--orbit-timeout", str(ORBIT_TIMEOUT), "--worker-wait", "300", "--no-report")
    with _plot_behind_blocker(slurm, tmp_path, ORBITS, *options) as r:
        run, out, job_logs = r.run, r.out, r.job_logs
        first_jobs = _two_pending_worker_jobs(slurm, run)
        held_from = time.monotonic()  # pending longer than an orbit's timeout
        _until(lambda: time.monotonic() - held_from > ORBIT_TIMEOUT + 2, "end of hold", run)
        subprocess.run(["scancel", r.blocker], check=True, timeout=15)
        _until(lambda: list(out.rglob("*.png")), "first figure", run)
        # the job of the last worker in the cluster's spec (``SLURMCluster-1``): its
        # name is the one a SpecCluster would give the next job
        seen = _until(lambda: _seen_workers(job_logs, slurm["worker"], 2), "workers", run)
        victim = seen[max(seen, key=lambda name: int(name.rsplit("-", 1)[1]))]
        assert victim in first_jobs
        subprocess.run(["scancel", victim], check=True, timeout=15)
        run.wait(timeout=WAIT)
    res_out, res_err = r.texts()
    assert run.returncode == 0, res_out[-2000:] + res_err[-4000:]
    assert "SLURM cluster: 2 job(s) submitted" in res_out
    pngs = sorted(out.rglob("*_instruments_y-linear_z-log.png"))
    assert len(pngs) == ORBITS
    progress = json.loads((out / "progress.json").read_text())
    assert not [k for k in progress if "error" in k and progress[k]], progress
    assert len(progress["linear_log_completed"]) == ORBITS  # none timed out while pending
    (log_file,) = (out / "logs").glob("*.log")
    log = log_file.read_text()
    # the lost worker and its job named (as Dask and as SLURM do), a job submitted again
    left = re.findall(r"worker (\S+) \(tcp://[^)]+\) left the cluster", log)
    assert len(left) == 1, log[-4000:]
    resubmitted = re.findall(r"1 lost job\(s\) \((\S+): batch job (\d+)\) resubmitted", log)
    assert resubmitted == [(left[0], victim)], log[-4000:]
    all_jobs = squeue_jobs(slurm["worker"], every_state=True)  # ended ones too
    assert len(all_jobs) == 3 and set(first_jobs) < set(all_jobs), all_jobs
    (new_job,) = set(all_jobs) - set(first_jobs)
    assert int(new_job) > int(victim) and all_jobs[victim] == "CANCELLED"
    # the late workers got work: both first jobs' workers joined, all orbits are done,
    # none timed out; the run cancelled its jobs at the end
    assert set(first_jobs) <= set(_registered_jobs(job_logs, slurm["worker"]))
    assert not squeue_jobs(slurm["worker"])


def test_cli_on_real_slurm_every_job_cancelled_while_pending_ends_the_run(slurm, tmp_path):
    """Both worker jobs cancelled in the queue before a worker connected: the watchdog no
    longer waits for them (squeue has dropped them), ends the run after --worker-wait with
    the documented exit code and message, and the log names each job."""
    pytest.importorskip("dask_jobqueue")
    from fastspectro_dask.cli import EXIT_NO_WORKERS
    from fastspectro_dask.schedule import QUEUE_CHECK_SECONDS

    with _plot_behind_blocker(slurm, tmp_path, 2, "--worker-wait", "3", "--no-report") as r:
        run, out = r.run, r.out
        jobs = _two_pending_worker_jobs(slurm, run)
        subprocess.run(["scancel", *jobs], check=True, timeout=15)
        run.wait(timeout=WAIT + QUEUE_CHECK_SECONDS)
    res_out, res_err = r.texts()
    assert run.returncode == EXIT_NO_WORKERS, res_out[-2000:] + res_err[-4000:]
    assert "no Dask worker for 3 s and none pending" in res_out + res_err
    assert "Traceback" not in res_out + res_err
    assert not list(out.rglob("*.png"))
    (log_file,) = (out / "logs").glob("*.log")
    gone = re.findall(
        r"batch job (\d+) left the batch queue before its workers", log_file.read_text()
    )
    assert sorted(gone) == sorted(jobs)
