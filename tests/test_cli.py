"""The console script, through a subprocess like a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastspectro_dask.cli import main
from fastspectro_dask.synth import write_synthetic_dataset


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastspectro_dask.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_and_usage_errors():
    out = run("--help")
    assert out.returncode == 0 and "synth" in out.stdout and "Exit codes" in out.stdout
    out = run("synth", "--help")
    assert out.returncode == 0 and "--bad-files" in out.stdout
    assert run().returncode == 2  # no subcommand
    assert run("synth").returncode == 2  # missing OUT
    assert run("synth", "x", "--orbits", "many").returncode == 2


def test_synth_then_info(tmp_path):
    out = run(
        "synth",
        str(tmp_path / "d"),
        "--orbits",
        "2",
        "--records",
        "12",
        "--bad-files",
        "--orb-files",
        "--seed",
        "3",
    )
    assert out.returncode == 0, out.stderr
    assert "broken-file corpus" in out.stdout
    info = run("info", str(tmp_path / "d"))
    assert info.returncode == 0, info.stderr
    assert "13616" in info.stdout and "2 orbit files" in info.stdout
    assert "1 duplicate(s) superseded" in info.stdout


def test_info_missing_folder_is_usage_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_demo_status_and_exit_codes(tmp_path):
    """The README's main job, small: synthetic data with broken files -> exit code 1."""
    out = tmp_path / "demo"
    res = run(
        "demo",
        str(out),
        "--orbits",
        "2",
        "--records",
        "16",
        "--bad-files",
        "--max-workers",
        "1",
        "--products",
        "instruments",
    )
    assert res.returncode == 1, res.stderr  # finished, with recorded invalid-cdf errors
    assert "Dask dashboard:" in res.stdout and "invalid-cdf" in res.stdout
    assert list((out / "figures").rglob("*_instruments_y-linear_z-log.png"))
    status = run("status", str(out / "figures"))
    assert status.returncode == 0, status.stderr
    assert "ees_linear_log_error-invalid-cdf: 8 orbit(s)" in status.stdout
    # resuming: nothing left to do, no new error -> exit 0
    again = run(
        "plot",
        str(out / "data"),
        str(out / "figures"),
        "--max-workers",
        "1",
        "--products",
        "instruments",
    )
    assert again.returncode == 0, again.stderr
    assert run("status", str(tmp_path / "nowhere")).returncode == 2


def test_extrema_command(tmp_path):
    data = tmp_path / "d"
    assert run("synth", str(data), "--orbits", "1", "--records", "12").returncode == 0
    res = run("extrema", str(data), "--output", str(tmp_path / "e.json"))
    assert res.returncode == 0, res.stderr
    assert "ees" in res.stdout and "z_max" in res.stdout
    assert json.loads((tmp_path / "e.json").read_text())["params"]["retrace"] is False
    res = run("extrema", str(data), "--output", str(tmp_path / "k.json"), "--keep-retrace")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "k.json").read_text())["params"]["retrace"] is True


# --------------------------------------------------------------------------------------
# Cluster options, performance report, run report
# --------------------------------------------------------------------------------------


def test_cluster_kw_parsing():
    import pytest

    from fastspectro_dask.cluster import parse_adapt, parse_cluster_kwarg, parse_cluster_kwargs

    assert parse_cluster_kwarg("cores=8") == ("cores", 8)
    assert parse_cluster_kwarg("memory=16GB") == ("memory", "16GB")
    assert parse_cluster_kwarg("queue=normal") == ("queue", "normal")
    assert parse_cluster_kwarg("walltime=01:30:00") == ("walltime", "01:30:00")
    assert parse_cluster_kwarg("death-timeout=2.5") == ("death_timeout", 2.5)
    assert parse_cluster_kwarg("nanny=false") == ("nanny", False)
    assert parse_cluster_kwarg("nanny=True") == ("nanny", True)
    assert parse_cluster_kwarg("local_directory=none") == ("local_directory", None)
    assert parse_cluster_kwarg("account=") == ("account", "")
    assert parse_cluster_kwarg("name=a=b") == ("name", "a=b")  # only the first = splits
    assert parse_cluster_kwarg('job_extra_directives=["--gres=gpu:1", "-C v100"]') == (
        "job_extra_directives",
        ["--gres=gpu:1", "-C v100"],
    )
    assert parse_cluster_kwarg('scheduler_options={"host": "127.0.0.1"}') == (
        "scheduler_options",
        {"host": "127.0.0.1"},
    )
    for bad in ("cores", "=8", "co res=8", "x=[1,", "1x=2"):
        with pytest.raises(ValueError):
            parse_cluster_kwarg(bad)
    assert parse_cluster_kwargs(["cores=8", ("memory", "1GB"), "cores=4"]) == {
        "cores": 4,
        "memory": "1GB",
    }
    assert parse_adapt("0:10") == (0, 10)
    for bad in ("10", "3:2", "-1:2", "0:0", "a:b"):
        with pytest.raises(ValueError):
            parse_adapt(bad)


def test_cluster_option_usage_errors(tmp_path, capsys):
    base = ["plot", str(tmp_path / "in"), str(tmp_path / "out")]
    assert main([*base, "--cluster-kw", "cores"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main([*base, "--adapt", "5:1"]) == 2
    assert main([*base, "--cluster", "lsf"]) == 2
    assert main([*base, "--jobs", "2", "--adapt", "0:2", "--cluster", "slurm"]) == 2
    assert main([*base, "--jobs", "2"]) == 2  # local cluster
    assert "--cluster slurm or --cluster pbs" in capsys.readouterr().err
    assert main([*base, "--cluster", "pbs", "--max-workers", "2"]) == 2
    assert "--max-workers is for the local cluster" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_performance_report_and_report_command(tmp_path):
    data, out = tmp_path / "d", tmp_path / "out"
    assert run("synth", str(data), "--orbits", "1", "--records", "12").returncode == 0
    res = run(
        "plot",
        str(data),
        str(out),
        "--max-workers",
        "1",
        "--products",
        "instruments",
        "--performance-report",
        str(out / "dask-report.html"),
    )
    assert res.returncode == 0, res.stderr
    perf = (out / "dask-report.html").read_text()
    assert "Dask Performance Report" in perf and "Task Stream" in perf
    # the summary table and the run report
    assert "fig/s" in res.stdout and "y-linear z-log" in res.stdout
    assert f"run report (open in a browser): {out / 'index.html'}" in res.stdout
    page = (out / "index.html").read_text()
    assert "_instruments_y-linear_z-log.png" in page and "href='dask-report.html'" in page
    # `fastspectro report` rewrites it from the folder alone, with the last run's summary
    (out / "index.html").unlink()
    res = run("report", str(out), "--thumb-width", "200")
    assert res.returncode == 0, res.stderr
    page = (out / "index.html").read_text()
    assert "width='200'" in page and "href='dask-report.html'" in page
    assert "<table class='runs'>" in page and "finished" in page
    assert run("report", str(tmp_path / "nowhere")).returncode == 2


def test_report_written_after_an_interruption(tmp_path, monkeypatch, capsys):
    """A run stopped by a second Ctrl-C still leaves an index.html of what it wrote."""
    import contextlib

    import fastspectro_dask.cluster as cluster_mod
    import fastspectro_dask.pipeline as pipeline_mod

    out = tmp_path / "out"

    @contextlib.contextmanager
    def fake_client_context(client=None, **kw):
        class FakeClient:
            dashboard_link = "http://127.0.0.1:1/status"

        yield FakeClient()

    def interrupted_run(input_dir, output_dir, **kw):
        fig = output_dir / "2000" / "01" / "13616" / "13616_instruments_y-linear_z-log.png"
        fig.parent.mkdir(parents=True)
        fig.write_bytes(b"\x89PNG\r\n\x1a\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster_mod, "client_context", fake_client_context)
    monkeypatch.setattr(pipeline_mod, "FAST_plot_spectrograms_directory", interrupted_run)
    assert main(["plot", str(tmp_path), str(out)]) == 130
    page = (out / "index.html").read_text()
    assert "2000/01/13616/13616_instruments_y-linear_z-log.png" in page
    assert main(["plot", str(tmp_path), str(tmp_path / "out2"), "--no-report"]) == 130
    assert not (tmp_path / "out2" / "index.html").exists()


#: ``fastspectro`` with the render of the second orbit replaced by a hook (tests/_hooks.py)
#: that announces itself and stays busy: the run is mid-render when the test acts.
_HOOKED_CLI = (
    "import sys; import fastspectro_dask.pipeline as p; from tests import _hooks; "
    "p.render_job = _hooks.ready_then_block_on_victim; "
    "from fastspectro_dask.cli import main; sys.exit(main(sys.argv[1:]))"
)
_REPO = Path(__file__).resolve().parent.parent


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 240) -> None:
    """Wait for the hook's announcement (a file), or the process's end."""
    deadline = time.time() + limit
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the hooked render never started"


@pytest.mark.slow
def test_ctrl_c_on_the_plot_command_exits_130_with_state_flushed(tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group (the client and
    the local cluster's worker processes alike). Exit 130, progress and log flushed; no
    KeyboardInterrupt traceback from the workers, no "Compute Failed" block for the
    invalid file (its traceback is in the log file), our one line for it stays."""
    data, out = tmp_path / "d", tmp_path / "out"
    write_synthetic_dataset(data, orbits=6, records=80, seed=4, instruments=("ees", "ies"))
    bad = data / "2000" / "01" / "fa_esa_l2_ees_20000102000000_13630_v01.cdf"
    bad.write_text("<html><body>404 Not Found</body></html>\n")  # an error page saved as .cdf
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", _HOOKED_CLI, "plot", str(data), str(out)),
            *("--max-workers", "1", "--flush-batch-size", "1", "--products", "instruments"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(_REPO), *sys.path])},
    )
    _wait_for(out / "victim-ready", proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "KeyboardInterrupt" not in stderr and "Traceback" not in stderr, stderr
    assert "Compute Failed" not in stderr, stderr
    assert "SIGINT received" in stderr  # our one line for the signal
    progress = json.loads((out / "progress.json").read_text())  # flushed, valid
    done = set(progress.get("linear_log_completed", []))
    drawn = {int(f.parent.name) for f in out.rglob("*_instruments_*.png")}
    assert done <= drawn and 13617 not in drawn and len(drawn) < 7
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "SIGINT" in logs  # the buffered log reached the disk on the way out
    assert "not a CDF file" in logs and "failed on a worker" in logs  # with its traceback
    # `status` reads what was flushed; the next run resumes and finishes the rest
    status = run("status", str(out))
    assert status.returncode == 0 and f"{len(done)}" in status.stdout
    res = run("plot", str(data), str(out), "--max-workers", "1", "--products", "instruments")
    assert res.returncode == 1, res.stderr  # finished, with the invalid file recorded
    assert "Compute Failed" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(json.loads((out / "progress.json").read_text())["linear_log_completed"]) == 6


# --------------------------------------------------------------------------------------
# Issue 13: the lock before the cluster, one-line usage errors
# --------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file but the lock files (which the holder itself writes)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".lock"
    }


@pytest.mark.parametrize("held", ["progress.json", "extrema.json"])
def test_a_locked_output_is_refused_at_once_and_nothing_is_written(tmp_path, held):
    """A second run on the same output folder: one line naming the holder, exit 75, no
    cluster, and the first run's report, summary and logs untouched (issue 13.2)."""
    from fastspectro_dask.cli import EXIT_LOCKED
    from fastspectro_dask.state import StateLock

    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    (out / "logs").mkdir(parents=True)
    (out / "index.html").write_text("<html>the first run's report</html>")
    (out / "run-summary.json").write_text('{"summaries": [{"scales": "y-linear z-log"}]}')
    (out / "logs" / "fastspectro-first.log").write_text("first run\n")
    before = _files(out)
    with StateLock(out / held):  # the first run, still going
        res = run("plot", str(data), str(out), "--max-workers", "1")
    assert res.returncode == EXIT_LOCKED == 75
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert f"PID {os.getpid()}" in line and "since 20" in line and held + ".lock" in line
    assert "another output folder" in line and str(out) in line
    assert "Dask dashboard" not in res.stdout  # no cluster was started
    assert _files(out) == before  # nothing written, nothing overwritten


def test_exit_codes_documented():
    for args in (("--help",), ("plot", "--help")):
        out = run(*args)
        assert out.returncode == 0 and "75 output folder in use by another run" in " ".join(
            out.stdout.split()
        )


@pytest.mark.parametrize(
    "args",
    [
        ("plot", "IN", "OUT", "--cluster", "slurm", "--jobs", "0"),
        ("plot", "IN", "OUT", "--cluster", "slurm", "--jobs", "-2"),
        ("plot", "IN", "OUT", "--max-workers", "0"),
        ("plot", "IN", "OUT", "--flush-batch-size", "0"),
        ("plot", "IN", "OUT", "--log-flush-batch-size", "-1"),
        ("plot", "IN", "OUT", "--instrument-timeout", "0"),
        ("plot", "IN", "OUT", "--orbit-timeout", "-5"),
        ("plot", "IN", "OUT", "--flush-interval", "nan"),
        ("plot", "IN", "OUT", "--percentile", "101"),
        ("extrema", "IN", "--percentile", "-1"),
        ("synth", "OUT", "--orbits", "0"),
        ("demo", "OUT", "--records", "many"),
        ("report", "OUT", "--page-size", "0"),
        ("plot", "IN", "OUT", "--scheduler-address", "tcp://x:1", "--dashboard-address", ":1"),
    ],
)
def test_bad_numeric_usage_is_exit_2_with_one_line(tmp_path, capsys, args):
    """Bad usage is exit 2 with one line and no traceback; nothing is created (13.11)."""
    argv = [str(tmp_path / a) if a in ("IN", "OUT") else a for a in args]
    (tmp_path / "IN").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "OUT").exists()
