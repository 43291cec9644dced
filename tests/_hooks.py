"""Render functions for pipeline tests (module-level: they run in sandbox children)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from fastspectro_dask.config import RunConfig
from fastspectro_dask.render_task import RenderJob, render_job

#: The orbit these hooks misbehave on (the second orbit of the test mission).
VICTIM = 13617


def hang_on_victim(job: RenderJob) -> dict:
    if job.orbit == VICTIM and job.product == "instruments":
        while True:  # a hung render: an infinite loop
            time.sleep(0.01)
    return render_job(job)


def hang_on_victim_noting_pid(job: RenderJob) -> dict:
    """:func:`hang_on_victim` that first writes its process id to ``{out}/hung-{pid}``."""
    if job.orbit == VICTIM and job.product == "instruments":
        (_out_root(job) / f"hung-{os.getpid()}").write_text("")
    return hang_on_victim(job)


def crash_on_victim(job: RenderJob) -> dict:
    if job.orbit == VICTIM and job.product == "instruments":
        os._exit(11)  # the process doing the work dies
    return render_job(job)


def kill_worker_on_victim(job: RenderJob) -> dict:
    if job.orbit == VICTIM and job.product == "instruments":
        os.kill(os.getppid(), signal.SIGKILL)  # kill the Dask worker that runs this task
        time.sleep(30)
    return render_job(job)


def divide_on_victim(job: RenderJob) -> dict:
    if job.orbit == VICTIM and job.product == "instruments":
        return {"x": 1 / 0}
    return render_job(job)


#: The drawing settings of a default run (fastspectro.yaml), for jobs built by tests.
STYLE = RunConfig.resolve().style


def fake_job(orbit: int, output: Path, cache_path: Path) -> RenderJob:
    """An ``instruments`` job of one ``ees`` file that does not exist: for render hooks
    that never read it (:func:`noop`, :func:`block_from_victim_on`)."""
    return RenderJob(
        orbit=orbit,
        product="instruments",
        files={"ees": f"/nowhere/{orbit}.cdf"},
        entries={"ees": None},
        output=str(output),
        cache_path=str(cache_path),
        variable="data",
        categories={},
        instrument_order=("ees",),
        extrema={},
        retrace=False,
        style=STYLE,
    )


#: Modules a sandbox child that renders must never load (the scheduling stack).
SCHEDULING_MODULES = ("distributed", "fastspectro_dask.pipeline", "fastspectro_dask.schedule")


def render_and_list_modules(job: RenderJob) -> dict:
    """Renders the figure, then reports which :data:`SCHEDULING_MODULES` this process has
    loaded (in ``loaded``)."""
    result = render_job(job)
    return {**result, "loaded": [m for m in SCHEDULING_MODULES if m in sys.modules]}


def noop(job: RenderJob) -> dict:
    return {"path": job.output, "errors": {}, "seconds": 0.0, "log": []}


def sigint_on_victim(job: RenderJob) -> dict:
    """Sends SIGINT to the process named in ``<output>/sigint.pid`` when the victim's
    instrument grid renders (a deterministic Ctrl-C in the middle of a run)."""
    pid_file = Path(job.output).parents[3] / "sigint.pid"
    if job.orbit == VICTIM and job.product == "instruments" and pid_file.exists():
        os.kill(int(pid_file.read_text()), signal.SIGINT)
    return render_job(job)


def slow(job: RenderJob) -> dict:
    time.sleep(0.25)
    return render_job(job)


def chatty(job: RenderJob) -> dict:
    """Logs (INFO and WARNING) inside the sandbox child, then fails on the victim."""
    import logging

    log = logging.getLogger("fastspectro_dask.tests.hooks")
    log.info("orbit %d %s: info from the child", job.orbit, job.product)
    log.warning("orbit %d %s: warning from the child", job.orbit, job.product)
    if job.orbit == VICTIM:
        raise ValueError("the victim's render failed after logging")
    return render_job(job)


def _out_root(job: RenderJob) -> Path:
    return Path(job.output).parents[3]  # {out}/{YYYY}/{MM}/{orbit}/{file}.png


def _terminate_client_then_block(job: RenderJob) -> None:
    """SIGTERM to the process that runs the pipeline (its pid is in {out}/client.pid),
    then block as a render still busy would, until this process is killed."""
    root = _out_root(job)
    (root / f"victim-{os.getpid()}.pid").write_text(str(os.getpid()))
    os.kill(int((root / "client.pid").read_text()), signal.SIGTERM)
    parent = os.getppid()
    while os.getppid() == parent:  # ends if the worker dies without killing us
        time.sleep(0.05)


def write_then_terminate_on_victim(job: RenderJob) -> dict:
    """The victim's grid is written, then the run is terminated before the result is back."""
    result = render_job(job)
    if job.orbit == VICTIM and job.product == "instruments":
        _terminate_client_then_block(job)
    return result


def terminate_then_hang_on_victim(job: RenderJob) -> dict:
    """The run is terminated while the victim's grid is being drawn; a render that went
    on after its task was cancelled would write it (it must be stopped first)."""
    if job.orbit == VICTIM and job.product == "instruments":
        _terminate_client_then_block(job)
    return render_job(job)


def ready_then_block_on_victim(job: RenderJob) -> dict:
    """The victim's grid announces itself ({out}/victim-ready) and stays busy until its
    process is stopped: the run is certainly mid-render when the test interrupts it."""
    if job.orbit == VICTIM and job.product == "instruments":
        root = _out_root(job)
        (root / f"victim-{os.getpid()}.pid").write_text(str(os.getpid()))
        (root / "victim-ready").write_text("")
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(0.05)
    return render_job(job)


# --- scheduling-loop hooks (tests/test_schedule.py) --------------------------------------
# In-process workers (LocalCluster(processes=False)) share this module with the test, so
# plain threading primitives coordinate the test and the tasks, without sleeps.

import threading  # noqa: E402

GATE = threading.Event()  # set: the gated tasks may finish
_running_lock = threading.Condition()
RUNNING: dict[str, int] = {"now": 0, "max": 0}


def gated(i: int) -> int:
    """A task that counts itself running and waits for :data:`GATE`."""
    with _running_lock:
        RUNNING["now"] += 1
        RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
        _running_lock.notify_all()
    try:
        if not GATE.wait(120):
            raise TimeoutError("the test never opened the gate")
    finally:
        with _running_lock:
            RUNNING["now"] -= 1
    return i


def wait_running(n: int, timeout: float = 120) -> bool:
    """In the test: until at least ``n`` gated tasks run at once."""
    with _running_lock:
        return _running_lock.wait_for(lambda: RUNNING["now"] >= n, timeout)


def reset_gate() -> None:
    GATE.clear()
    RUNNING.update(now=0, max=0)


def group_clock(group: str) -> float:
    """A task that reads its group's clock at its start (seconds since the group's first
    task started on a worker)."""
    from fastspectro_dask.schedule import group_elapsed

    return group_elapsed(group)


def block_from_victim_on(job: RenderJob) -> dict:
    """Orbits from the victim on announce themselves ({out}/ready-{orbit}) and stay busy
    until their process's parent (the worker) is gone; the others are no-ops."""
    if job.orbit >= VICTIM:
        root = _out_root(job)
        (root / f"ready-{job.orbit}").write_text("")
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(0.05)
    return noop(job)


def fail_pa_of_victim(job: RenderJob) -> dict:
    """The victim's ``pa-ees`` figure fails; every other figure is a no-op."""
    if job.orbit == VICTIM and job.product == "pa-ees":
        raise ValueError("the victim's pitch-angle figure failed")
    return noop(job)


def hang_instruments_of_victim(job: RenderJob) -> dict:
    """The victim's ``instruments`` figure never ends (until its timeout kills it); every
    other figure is a no-op."""
    if job.orbit == VICTIM and job.product == "instruments":
        while True:
            time.sleep(0.01)
    return noop(job)
