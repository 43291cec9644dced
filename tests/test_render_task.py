"""The worker-side render task: no scheduling stack in the render process, timeouts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastspectro_dask.errors import RenderTimeoutError
from fastspectro_dask.reduce import DEFAULT_CATEGORIES
from fastspectro_dask.render_task import RenderJob, _render_logged, run_job
from fastspectro_dask.sandbox import Sandbox

from . import _hooks

_REPO = Path(__file__).resolve().parent.parent


def test_importing_render_task_loads_no_scheduling_module():
    """A fresh interpreter: the render task pulls in neither distributed nor the pipeline."""
    code = (
        "import sys, fastspectro_dask.render_task; "
        f"print([m for m in {_hooks.SCHEDULING_MODULES!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=_REPO,
        timeout=300,
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_the_sandbox_child_that_renders_loads_no_scheduling_module(
    tmp_path, good_files, synth_dataset
):
    """What a worker sends its sandbox child (``_render_logged`` with the render function
    and the job) draws and writes the figure (ephemeris included) without ever importing
    distributed, the pipeline or the scheduling loop."""
    orbit = min(good_files)
    files = {i: str(p) for i, p in sorted(good_files[orbit].items())}
    job = RenderJob(
        orbit=orbit,
        product="instruments",
        files=files,
        entries={i: None for i in files},
        output=str(tmp_path / f"{orbit}_instruments.png"),
        cache_path=str(tmp_path / "reduced.zarr"),
        variable="data",
        categories=dict(DEFAULT_CATEGORIES),
        instrument_order=tuple(files),
        extrema={},
        retrace=False,
        style=_hooks.STYLE,
        orb_file=str(synth_dataset.orb_files[orbit]),
    )
    box = Sandbox()
    try:
        result = box.run(_render_logged, _hooks.render_and_list_modules, job, timeout=300)
        assert not box.inline  # it really ran in a child process
    finally:
        box.close()
    assert result["errors"] == {}
    assert Path(job.output).stat().st_size > 0
    assert result["loaded"] == []


def test_an_orbit_that_used_its_time_fails_before_rendering(tmp_path):
    job = _hooks.fake_job(1, tmp_path / "1.png", tmp_path / "c.zarr")
    with pytest.raises(RenderTimeoutError, match="orbit timeout reached before instruments"):
        run_job(job, 60.0, 5.0, _hooks.noop, orbit_elapsed=lambda: 5.0)
    assert not (tmp_path / "1.png").exists()


def test_the_tighter_of_both_timeouts_stops_the_render(tmp_path):
    """Instrument timeout 300 s, orbit timeout 100 s of which 99.5 s are used: the render
    (a hang) is stopped after what the orbit has left."""
    job = _hooks.fake_job(_hooks.VICTIM, tmp_path / "v.png", tmp_path / "c.zarr")
    with pytest.raises(RenderTimeoutError, match=r"\(timeout 0.5 s\)"):
        run_job(job, 300.0, 100.0, _hooks.hang_on_victim, orbit_elapsed=lambda: 99.5)
