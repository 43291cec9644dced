"""Clusters: an external scheduler, dask-jobqueue (SLURM/PBS with fake batch commands),
and the clear error when dask-jobqueue is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest

from fastspectro_dask.cli import main
from fastspectro_dask.cluster import (
    DAEMON_ENV_LINE,
    ClusterConfigError,
    JobqueueMissingError,
    expected_worker_threads,
    make_cluster,
)
from fastspectro_dask.synth import write_synthetic_dataset
from tests._slurm import cli, cli_env, jobqueue_plot_args

#: What the render sandbox logs when its worker is daemonic (no timeouts possible).
DAEMONIC_WARNING = "cannot start a sandbox child"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """One orbit, all four instruments, small files."""
    root = tmp_path_factory.mktemp("cluster_data")
    write_synthetic_dataset(root, orbits=1, records=12, seed=2)
    return root


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*_instruments_y-linear_z-log.png"))


# --------------------------------------------------------------------------------------
# dask-jobqueue missing
# --------------------------------------------------------------------------------------


def test_missing_jobqueue_is_a_clear_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import raises ImportError
    with pytest.raises(JobqueueMissingError, match=r"fastspectro_dask\[jobqueue\]"):
        with make_cluster("slurm", jobs=1, cluster_kwargs={"cores": 1, "memory": "1GB"}):
            pass
    (tmp_path / "in").mkdir()  # an existing input: the missing package is what is refused
    code = main(
        ["plot", str(tmp_path / "in"), str(tmp_path / "out"), "--cluster", "slurm", "--jobs", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "dask-jobqueue" in err and "pip install 'fastspectro_dask[jobqueue]'" in err
    assert not (tmp_path / "out").exists()  # nothing was started
    code = main(["extrema", str(tmp_path / "in"), "--cluster", "pbs"])
    assert code == 2 and "dask-jobqueue" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Fake SLURM / PBS
# --------------------------------------------------------------------------------------

_SUBMIT = r"""#!/usr/bin/env bash
# Fake {submit}: record the job script; unless FAKE_BATCH_NORUN is set, run it here in the
# background in its own session (its #SBATCH/#PBS lines are bash comments).
set -e
dir="${{FAKE_BATCH_DIR:?}}"
exec 9>"$dir/lock"
flock 9  # jobs are submitted concurrently: number them one at a time
n=$(( $(cat "$dir/counter" 2>/dev/null || echo 1000) + 1 ))
echo "$n" > "$dir/counter"
cp "$1" "$dir/job-$n.sh"
if [ -z "${{FAKE_BATCH_NORUN:-}}" ]; then
  setsid bash "$dir/job-$n.sh" > "$dir/job-$n.out" 2>&1 < /dev/null 9>&- &
  echo $! > "$dir/job-$n.pid"
fi
echo "{reply}"
"""

_CANCEL = r"""#!/usr/bin/env bash
dir="${FAKE_BATCH_DIR:?}"
for id in "$@"; do
  id="${id%%.*}"
  echo "$id" >> "$dir/cancelled"
  pid=$(cat "$dir/job-$id.pid" 2>/dev/null) || continue
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
done
"""


@pytest.fixture
def fake_batch(tmp_path, monkeypatch):
    """Fake sbatch/scancel/squeue and qsub/qdel/qstat on PATH; yields the record folder."""
    bin_dir, rec = tmp_path / "fakebin", tmp_path / "batch"
    bin_dir.mkdir()
    rec.mkdir()
    scripts = {
        "sbatch": _SUBMIT.format(submit="sbatch", reply="Submitted batch job $n"),
        "qsub": _SUBMIT.format(submit="qsub", reply="$n.fakepbs"),
        "scancel": _CANCEL,
        "qdel": _CANCEL,
        "squeue": "#!/usr/bin/env bash\necho 'JOBID PARTITION NAME USER ST TIME NODES'\n",
        "qstat": "#!/usr/bin/env bash\ntrue\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_BATCH_DIR", str(rec))
    yield rec
    for pid_file in rec.glob("job-*.pid"):  # jobs never cancelled (a failed test)
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _job_scripts(rec: Path) -> list[str]:
    return [p.read_text() for p in sorted(rec.glob("job-*.sh"))]


def test_slurm_job_script_from_kwargs_and_config(fake_batch, monkeypatch):
    """Only the given keywords are passed; the rest comes from dask config; daemon off."""
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("FAKE_BATCH_NORUN", "1")
    config = {
        "jobqueue.slurm.walltime": "02:30:00",
        "jobqueue.slurm.account": "from-config",
        "jobqueue.slurm.job-script-prologue": ["module load python"],
    }
    with dask.config.set(config):
        with make_cluster(
            "slurm",
            jobs=2,
            cluster_kwargs={
                "cores": 4,
                "memory": "16GB",
                "processes": 2,
                "queue": "normal",
                "interface": "lo",
            },
        ) as client:
            assert expected_worker_threads(client) == 8  # 2 jobs x 4 cores
            deadline = time.monotonic() + 120  # a bound on a hang
            while len(_job_scripts(fake_batch)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    scripts = _job_scripts(fake_batch)
    assert len(scripts) == 2
    script = scripts[0]
    lines = script.splitlines()
    assert "#SBATCH --cpus-per-task=4" in lines
    assert "#SBATCH --mem=15G" in lines  # 16 GB in GiB, rounded up
    assert "#SBATCH -p normal" in lines
    assert "#SBATCH -t 02:30:00" in lines  # from the config
    assert "#SBATCH -A from-config" in lines
    # the config's prologue is kept, the daemon setting follows it, before the worker
    worker = next(i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line)
    assert lines.index("module load python") < lines.index(DAEMON_ENV_LINE) < worker
    cmd = lines[worker]
    assert cmd.startswith(f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:")
    assert "--nthreads 2" in cmd and "--nworkers 2" in cmd and "--interface lo" in cmd
    assert "--nanny" in cmd
    assert sorted((fake_batch / "cancelled").read_text().split()) == ["1001", "1002"]


def test_pbs_job_script_and_adapt(fake_batch, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.setenv("FAKE_BATCH_NORUN", "1")
    with make_cluster(
        "pbs",
        adapt=(1, 3),
        cluster_kwargs={"cores": 2, "memory": "4GB", "interface": "lo", "walltime": "01:00:00"},
    ) as client:
        assert expected_worker_threads(client) == 6  # adaptive maximum: 3 jobs x 2 cores
        deadline = time.monotonic() + 120  # a bound on a hang
        while not _job_scripts(fake_batch) and time.monotonic() < deadline:
            time.sleep(0.05)  # adapt keeps the minimum of 1 job
    script = _job_scripts(fake_batch)[0]
    assert "#PBS -l select=1:ncpus=2:mem=" in script
    assert "#PBS -l walltime=01:00:00" in script
    assert DAEMON_ENV_LINE in script.splitlines()


def test_bad_cluster_keyword_is_a_usage_error(capsys, tmp_path):
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ClusterConfigError, match=r"jobqueue\.slurm"):
        with make_cluster("slurm", cluster_kwargs={"cores": 1, "memory": "1GB", "bogus": 3}):
            pass
    code = main(
        [
            "plot",
            str(tmp_path),
            str(tmp_path / "out"),
            "--cluster",
            "slurm",
            "--cluster-kw",
            "cores=1",
            "--cluster-kw",
            "memory=1GB",
            "--cluster-kw",
            "no_such_option=1",
        ]
    )
    assert code == 2 and "no_such_option" in capsys.readouterr().err


def _slurm_run(small_data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = cli_env(DASK_JOBQUEUE__SLURM__ACCOUNT="envproject")
    return cli(*jobqueue_plot_args(small_data, out, *extra), env=env)


def test_slurm_run_end_to_end(small_data, tmp_path, fake_batch):
    """fastspectro plot --cluster slurm: the fake sbatch runs the job script on loopback."""
    pytest.importorskip("dask_jobqueue")
    out = tmp_path / "out"
    res = _slurm_run(small_data, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "SLURM cluster: 1 job(s) submitted" in res.stdout
    assert len(_pngs(out)) == 1 and (out / "index.html").exists()
    # the worker was non-daemonic: the render sandbox could start its child process
    assert DAEMONIC_WARNING not in res.stderr
    (script,) = _job_scripts(fake_batch)
    lines = script.splitlines()
    assert "#SBATCH --cpus-per-task=1" in lines and "#SBATCH --mem=2G" in lines
    assert "#SBATCH -A envproject" in lines  # DASK_JOBQUEUE__SLURM__ACCOUNT
    assert DAEMON_ENV_LINE in lines
    cmd = lines[-1]
    assert "-m distributed.cli.dask_worker tcp://127.0.0.1:" in cmd
    assert "--nthreads 1" in cmd and "--interface lo" in cmd
    assert (fake_batch / "cancelled").read_text().split() == ["1001"]  # scancel at the end
    log = (fake_batch / "job-1001.out").read_text()
    assert "Starting Worker" in log or "Start worker" in log


@pytest.mark.slow
def test_pbs_run_end_to_end(small_data, tmp_path, fake_batch):
    """fastspectro plot --cluster pbs: the fake qsub runs the PBS job script on loopback."""
    pytest.importorskip("dask_jobqueue")
    out = tmp_path / "out"
    args = jobqueue_plot_args(small_data, out, cluster="pbs")
    res = cli(*args, env=cli_env(DASK_JOBQUEUE__PBS__QUEUE="envqueue"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PBS cluster: 1 job(s) submitted" in res.stdout
    assert len(_pngs(out)) == 1 and (out / "index.html").exists()
    assert DAEMONIC_WARNING not in res.stderr
    (script,) = _job_scripts(fake_batch)
    lines = script.splitlines()
    assert "#PBS -q envqueue" in lines  # DASK_JOBQUEUE__PBS__QUEUE
    assert any(line.startswith("#PBS -l select=1:ncpus=1:mem=") for line in lines)
    assert DAEMON_ENV_LINE in lines
    assert "-m distributed.cli.dask_worker tcp://127.0.0.1:" in lines[-1]
    assert (fake_batch / "cancelled").read_text().split() == ["1001"]  # qdel at the end


@pytest.mark.slow
def test_slurm_daemonic_worker_control(small_data, tmp_path, fake_batch):
    """Control for the daemon assertion: a prologue forcing daemonic workers is kept (not
    overridden) and the sandbox then says it cannot start children."""
    pytest.importorskip("dask_jobqueue")
    res = _slurm_run(
        small_data,
        tmp_path / "out",
        "--cluster-kw",
        'job_script_prologue=["export DASK_DISTRIBUTED__WORKER__DAEMON=True"]',
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert DAEMONIC_WARNING in res.stderr
    (script,) = _job_scripts(fake_batch)
    assert DAEMON_ENV_LINE not in script


# --------------------------------------------------------------------------------------
# External scheduler
# --------------------------------------------------------------------------------------


@pytest.fixture
def external_scheduler(tmp_path):
    """A ``dask scheduler`` and one non-daemonic ``dask worker`` on 127.0.0.1."""
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(sched_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    try:
        deadline = time.monotonic() + 120  # a bound on a hang
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sched_file.exists(), "the scheduler did not start"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(sched_file),
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        )
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=120, set_as_default=False) as c:
            c.wait_for_workers(1, timeout=120)
        yield sched_file
    finally:
        if sched_file.exists():  # a clean, quick stop of the scheduler and its worker
            from distributed import Client

            try:
                with Client(scheduler_file=str(sched_file), timeout=10, set_as_default=False) as c:
                    c.shutdown()
            except Exception:
                pass
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def test_plot_and_extrema_on_external_scheduler(small_data, tmp_path, external_scheduler):
    out = tmp_path / "out"
    res = cli(
        "plot",
        str(small_data),
        str(out),
        "--products",
        "instruments",
        "--scheduler-file",
        str(external_scheduler),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_pngs(out)) == 1
    assert DAEMONIC_WARNING not in res.stderr
    assert "Dask dashboard: http://127.0.0.1:" in res.stdout
    address = json.loads(external_scheduler.read_text())["address"]
    assert address.startswith("tcp://127.0.0.1:")
    res = cli(
        "extrema",
        str(small_data),
        "--output",
        str(tmp_path / "e.json"),
        "--scheduler-address",
        address,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "e.json").exists() and "ees" in res.stdout
    # a jobqueue cluster cannot be combined with an external scheduler
    res = cli("plot", str(small_data), str(out), "--cluster", "slurm", "--scheduler-file", "x")
    assert res.returncode == 2 and "--scheduler" in res.stderr


# --------------------------------------------------------------------------------------
# Our own local cluster: loopback dashboard, workers that ignore SIGINT and keep task
# tracebacks out of the terminal (issue 13.3, 13.6)
# --------------------------------------------------------------------------------------


def _fail_on_worker(x: int) -> int:
    raise ValueError(f"deliberate failure {x}")


def _listening_ips(port: int) -> set[str]:
    import psutil

    conns = psutil.Process().net_connections(kind="inet")
    return {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_own_local_cluster_loopback_dashboard_quiet_workers(tmp_path, capfd):
    from urllib.parse import urlparse

    from fastspectro_dask.cluster import client_context
    from fastspectro_dask.logbuffer import buffered_file_logging, forward_worker_logs

    with (
        buffered_file_logging(tmp_path / "logs", capacity=1) as log,
        client_context(None, max_workers=1) as client,
    ):
        port = urlparse(client.dashboard_link).port
        assert _listening_ips(port) == {"127.0.0.1"}  # not 0.0.0.0: not the whole network
        forward_worker_logs(client)
        # workers ignore SIGINT: the client stops them
        (pid,) = client.run(os.getpid).values()
        (handler,) = client.run(signal.getsignal, signal.SIGINT).values()
        assert handler == signal.SIG_IGN
        os.kill(pid, signal.SIGINT)
        assert list(client.run(os.getpid).values()) == [pid]  # still the same, alive
        # a failing task: no "Compute Failed" block on the terminal, traceback in the log
        fut = client.submit(_fail_on_worker, 7, pure=False)
        with pytest.raises(ValueError, match="deliberate failure 7"):
            fut.result()
        client.run(lambda: None)  # the worker's forwarded log record has been sent
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    text = log.path.read_text()
    assert "failed on a worker: ValueError('deliberate failure 7')" in text
    assert "_fail_on_worker" in text  # the traceback


def test_dashboard_opened_deliberately(tmp_path):
    from urllib.parse import urlparse

    from fastspectro_dask.cluster import client_context

    with client_context(None, max_workers=1, dashboard_address=":0") as client:
        ips = _listening_ips(urlparse(client.dashboard_link).port)
    assert ips and ips <= {"0.0.0.0", "::"}


def test_jobqueue_dashboard_on_loopback_unless_set(monkeypatch):
    from fastspectro_dask.cluster import _with_dashboard_address

    assert _with_dashboard_address("slurm", {"cores": 1}, "127.0.0.1:8787") == {
        "cores": 1,
        "scheduler_options": {"dashboard_address": "127.0.0.1:8787"},
    }
    given = {"scheduler_options": {"dashboard_address": ":9999", "host": "h"}}
    assert _with_dashboard_address("slurm", given, "127.0.0.1:8787") == given
    with dask.config.set({"jobqueue.pbs.scheduler-options": {"dashboard_address": ":1"}}):
        assert _with_dashboard_address("pbs", {}, "127.0.0.1:8787") == {}  # the config's
    with dask.config.set({"jobqueue.pbs.scheduler-options": {"interface": "ib0"}}):
        assert _with_dashboard_address("pbs", {}, ":8787") == {
            "scheduler_options": {"interface": "ib0", "dashboard_address": ":8787"}
        }


def _pid_and_daemon():
    import multiprocessing

    return os.getpid(), multiprocessing.current_process().daemon


def test_a_worker_restarted_by_the_nanny_can_still_start_render_sandboxes():
    """A killed worker of the local cluster comes back non-daemonic (it was daemonic, so
    its renders ran inline, without timeouts, and a cancelled render could not be stopped)."""
    from fastspectro_dask.cluster import client_context

    with client_context(None, max_workers=1, dashboard_address=None) as client:
        ((_addr, (pid, daemon)),) = client.run(_pid_and_daemon).items()
        assert daemon is False
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        now: dict = {}
        while time.monotonic() < deadline:
            try:  # the dying worker may still be listed
                now = dict(client.run(_pid_and_daemon))
            except Exception:
                now = {}
            if now and all(p != pid for p, _d in now.values()):
                break
            time.sleep(0.1)
        assert [d for _p, d in now.values()] == [False]
    assert dask.config.get("distributed.worker.daemon") is True  # restored after the run


def test_local_cluster_monitors_poll_at_most_as_often_as_monitor_intervals():
    from dask.utils import parse_timedelta

    from fastspectro_dask.cluster import MONITOR_INTERVALS, _monitor_intervals

    mem, system = MONITOR_INTERVALS
    with dask.config.set({mem: "100ms", system: "500ms"}):  # distributed's defaults
        assert _monitor_intervals() == MONITOR_INTERVALS
    with dask.config.set({mem: "5s", system: "500ms"}):  # a longer one of the user's is kept
        assert _monitor_intervals() == {system: MONITOR_INTERVALS[system]}
    assert all(parse_timedelta(v) >= 1 for v in MONITOR_INTERVALS.values())
