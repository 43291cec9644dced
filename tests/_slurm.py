"""SLURM helpers shared by the fake-batch tests (``test_cluster.py``) and the real-SLURM
test (``test_slurm_real.py``): the CLI as a subprocess, the arguments of a run on a
dask-jobqueue ``SLURMCluster`` of one-core jobs on loopback, and what ``sinfo`` and
``squeue`` say about a real SLURM controller.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

#: The repository root: the CLI subprocesses import the package from here.
REPO = Path(__file__).resolve().parent.parent

#: One job = one worker process with one thread and 2 GB, scheduler and workers on
#: loopback (``--cluster-kw`` pairs of every SLURM run of the tests).
ONE_CORE_JOB = ("cores=1", "memory=2GB", "processes=1", "interface=lo")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: ours, the repository first on ``PYTHONPATH``,
    plus ``extra`` variables."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def cli_command(*args: str) -> list[str]:
    """The command line of ``fastspectro args...`` with this interpreter."""
    return [sys.executable, "-m", "fastspectro_dask.cli", *args]


def cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``fastspectro args...`` to its end; output captured as text."""
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env() if env is None else env,
        cwd=cwd,
    )


def jobqueue_plot_args(
    data: Path,
    out: Path,
    *extra: str,
    cluster: str = "slurm",
    jobs: int = 1,
    products: Iterable[str] = ("instruments",),
    cluster_kw: Iterable[str] = (),
) -> list[str]:
    """``plot data out`` on ``--cluster slurm`` (or ``cluster``) ``--jobs N`` of
    :data:`ONE_CORE_JOB` jobs, more ``--cluster-kw`` pairs from ``cluster_kw``, then
    ``extra`` arguments."""
    args = ["plot", str(data), str(out), "--products", *products]
    args += ["--cluster", cluster, "--jobs", str(jobs)]
    for pair in (*ONE_CORE_JOB, *cluster_kw):
        args += ["--cluster-kw", pair]
    return [*args, *extra]


# --------------------------------------------------------------------------------------
# A real SLURM controller
# --------------------------------------------------------------------------------------


def slurm_ready() -> str | None:
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


def squeue_jobs(name: str, *, every_state: bool = False) -> dict[str, str]:
    """``{job id: state}`` of the jobs called ``name`` (``every_state``: also the jobs
    that ended a short while ago, which the controller still knows)."""
    cmd = ["squeue", "-h", "-n", name, "-o", "%i %T"]
    if every_state:
        cmd += ["-t", "all"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=True)
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())
