"""The console script, through a subprocess like a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

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


@pytest.mark.slow
def test_ctrl_c_on_the_plot_command_exits_130_with_state_flushed(tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group (the client and
    the local cluster's worker processes alike). Exit 130, progress and log flushed."""
    data, out = tmp_path / "d", tmp_path / "out"
    write_synthetic_dataset(data, orbits=6, records=80, seed=4, instruments=("ees", "ies"))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "fastspectro_dask.cli", "plot", str(data), str(out)),
            *("--max-workers", "1", "--flush-batch-size", "1", "--products", "instruments"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )

    def completed() -> list[int]:
        try:
            return json.loads((out / "progress.json").read_text())["linear_log_completed"]
        except (OSError, ValueError, KeyError):
            return []

    deadline = time.time() + 240
    while time.time() < deadline and not completed() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    progress = json.loads((out / "progress.json").read_text())  # flushed, valid
    done = set(progress.get("linear_log_completed", []))
    drawn = {int(f.parent.name) for f in out.rglob("*_instruments_*.png")}
    assert done and done <= drawn and len(drawn) < 6
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "SIGINT" in logs  # the buffered log reached the disk on the way out
    # `status` reads what was flushed; the next run resumes and finishes the rest
    status = run("status", str(out))
    assert status.returncode == 0 and f"{len(done)}" in status.stdout
    res = run("plot", str(data), str(out), "--max-workers", "1", "--products", "instruments")
    assert res.returncode == 0, res.stderr
    assert len(json.loads((out / "progress.json").read_text())["linear_log_completed"]) == 6
