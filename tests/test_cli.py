"""The console script, through a subprocess like a user runs it."""

from __future__ import annotations

import subprocess
import sys

from fastspectro_dask.cli import main


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
    assert (tmp_path / "e.json").exists()
