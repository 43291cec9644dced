"""The one scheduling loop: elastic window, deadlines from the start on a worker, watchdog."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import dask
import pytest

from fastspectro_dask.errors import NoWorkersError
from fastspectro_dask.schedule import Task, TaskLoop, ensure_orbit_clock

from . import _hooks

distributed = pytest.importorskip("distributed")


def _local(n: int, **kw):
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            dashboard_address=None,
            **{"processes": False, **kw},
        )
    return cluster, distributed.Client(cluster)


def test_window_follows_workers_that_arrive_mid_run(monkeypatch):
    """1 worker, then 4: the tasks in flight grow at once, without any completion."""
    _hooks.reset_gate()
    inflight: list[tuple[int, int]] = []  # (phase, tasks in flight after a submission)
    phase = [1]
    monkeypatch.setattr(TaskLoop, "_submitted_hook", lambda self, n: inflight.append((phase[0], n)))
    cluster, client = _local(1)
    try:
        loop = TaskLoop(client, _hooks.gated, worker_wait=None)
        results: list[int] = []
        errors: list[BaseException] = []
        tasks = (Task(f"gated-{i}", (i,), i) for i in range(40))

        def run() -> None:
            try:
                loop.run(
                    tasks, lambda t, r, e: results.append(r) if e is None else errors.append(e)
                )
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        runner = threading.Thread(target=run)
        runner.start()
        assert _hooks.wait_running(1)  # the one worker is busy; nothing has completed
        phase[0] = 2
        cluster.scale(4)
        client.wait_for_workers(4, timeout=120)
        # the three new workers get work although no task finished (gate still closed)
        assert _hooks.wait_running(4), f"in flight: {inflight}"
        _hooks.GATE.set()
        runner.join(120)
        assert not runner.is_alive() and not errors
        assert sorted(results) == list(range(40))
    finally:
        _hooks.GATE.set()
        client.close()
        cluster.close()
    before = max(n for p, n in inflight if p == 1)
    after = max(n for p, n in inflight if p == 2)
    assert before == 4  # 2 * 1 thread + 2
    assert after == 10 and loop.max_inflight == 10  # 2 * 4 threads + 2
    assert _hooks.RUNNING["max"] == 4


def test_a_callers_window_is_an_upper_bound(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(TaskLoop, "_submitted_hook", lambda self, n: seen.append(n))
    cluster, client = _local(2)
    try:
        loop = TaskLoop(client, _hooks.group_clock, window=1, worker_wait=None)
        got = []
        loop.run((Task(f"g-{i}", (None,), i) for i in range(5)), lambda t, r, e: got.append(t))
    finally:
        client.close()
        cluster.close()
    assert len(got) == 5 and set(seen) == {1} and loop.outcome == "done"


def test_results_come_straight_from_local_workers(monkeypatch):
    """On a local cluster the loop gathers results from the workers directly."""
    gathers: list[object] = []
    real_gather = distributed.Client.gather

    def spy(self, futures, *a, direct=None, **kw):
        gathers.append(direct)
        return real_gather(self, futures, *a, direct=direct, **kw)

    monkeypatch.setattr(distributed.Client, "gather", spy)
    cluster, client = _local(2, processes=True)
    try:
        loop = TaskLoop(client, _identity, worker_wait=None)
        seen: list[int] = []
        loop.run((Task(f"i-{i}", (i,), i) for i in range(12)), lambda t, r, e: seen.append(r))
    finally:
        client.close()
        cluster.close()
    assert sorted(seen) == list(range(12))
    assert loop.view.local and gathers and set(gathers) == {True}


def test_loopback_addresses():
    from fastspectro_dask.schedule import _on_loopback

    assert _on_loopback("tcp://127.0.0.1:4242") and _on_loopback("tcp://[::1]:1")
    assert _on_loopback("tls://localhost:5") and _on_loopback("inproc://10.0.0.1/1/2")
    assert not _on_loopback("tcp://10.0.0.3:4242") and not _on_loopback("ucx://node12:1")


def test_orbit_clock_starts_on_a_worker_not_at_submission():
    """Tasks of a group submitted while no worker exists: the clock starts with the first
    one on a worker, so the time pending does not count."""
    cluster, client = _local(0)
    try:
        assert ensure_orbit_clock(client) and ensure_orbit_clock(client)  # idempotent
        first = client.submit(_hooks.group_clock, "orbit-1", key="clock-a", pure=False)
        # pending with no worker: the scheduler holds it, nothing runs
        deadline = time.monotonic() + 60

        def state() -> str | None:  # a new task is "released" for a moment, then held
            ts = cluster.scheduler.tasks.get("clock-a")
            return None if ts is None else ts.state

        while state() not in ("queued", "no-worker") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state() in ("queued", "no-worker")
        time.sleep(1.0)  # pending time that must not count (what the test measures)
        cluster.scale(1)
        assert first.result(timeout=120) == 0.0  # the group's first start: 0 s elapsed
        second = client.submit(_hooks.group_clock, "orbit-1", pure=False).result(timeout=60)
        other = client.submit(_hooks.group_clock, "orbit-2", pure=False).result(timeout=60)
        assert 0.0 < second < 1.0 and other == 0.0
    finally:
        client.close()
        cluster.close()


def _job(tmp: Path, orbit: int):
    return _hooks.fake_job(
        orbit, tmp / "2000" / "01" / str(orbit) / f"{orbit}_instruments.png", tmp / "c.zarr"
    )


def _run_loop(client, tmp: Path, jobs, render_fn, **kw):
    from fastspectro_dask.pipeline import RunSummary, _loop, _Signals
    from fastspectro_dask.state import ProgressStore

    summary = RunSummary()
    with ProgressStore(tmp / "progress.json", "linear", "log", flush_batch_size=100) as store:
        store.set_orbits(list(jobs))
        try:
            _loop(
                client,
                store,
                _Signals(False),
                jobs,
                {o: {} for o in jobs},
                summary,
                window=None,
                instrument_timeout=60.0,
                progress_bar=False,
                y_scale="linear",
                z_scale="log",
                render_fn=render_fn,
                **kw,
            )
        finally:
            store.flush()
    return summary


def _orbit_jobs(tmp: Path, orbits, products=("instruments", "pa-ees", "pad")):
    """Per orbit, fake jobs of several products (for no-op render hooks)."""
    import dataclasses

    return {
        o: [
            dataclasses.replace(
                _job(tmp, o), product=p, output=str(tmp / "2000" / "01" / str(o) / f"{o}_{p}.png")
            )
            for p in products
        ]
        for o in orbits
    }


def test_an_orbit_is_one_task_until_the_runs_tail(tmp_path, task_sizes, caplog):
    """1 worker thread, 12 orbits of 3 figures: while 8 or more orbits are left after it,
    an orbit's figures are one Dask task; the last 8 orbits, one task per figure. A figure
    that fails inside an orbit's task is that figure's error only."""
    from fastspectro_dask.pipeline import _ORBITS_PER_THREAD

    assert _ORBITS_PER_THREAD == 8
    orbits = list(range(_hooks.VICTIM, _hooks.VICTIM + 12))  # the victim: a grouped orbit
    jobs = _orbit_jobs(tmp_path, orbits)
    sizes = task_sizes
    cluster, client = _local(1)
    try:
        client.wait_for_workers(1)
        caplog.set_level(logging.INFO, logger="fastspectro_dask")
        s = _run_loop(client, tmp_path, jobs, _hooks.fail_pa_of_victim, orbit_timeout=600.0)
    finally:
        client.close()
        cluster.close()
    assert sizes == [3] * 4 + [1] * 24
    assert s.figures_written == 35 and s.errors == {"generic": 1}
    assert s.orbits_processed == 12 and s.orbits_completed == 11
    state = json.loads((tmp_path / "progress.json").read_text())
    assert state["ees_linear_log_error-generic"] == [_hooks.VICTIM]
    assert any(f"orbit {_hooks.VICTIM} pa-ees: generic" in r.getMessage() for r in caplog.records)


def test_the_orbit_timeout_spans_the_figures_of_an_orbits_task(tmp_path, task_sizes):
    """The first figure of an orbit's task uses up the orbit's time (killed at the orbit
    timeout): the figures after it in the task are not started, and time out."""
    orbits = list(range(_hooks.VICTIM, _hooks.VICTIM + 9))  # only the victim grouped
    jobs = _orbit_jobs(tmp_path, orbits)
    sizes = task_sizes
    cluster, client = _local(1)
    try:
        client.wait_for_workers(1)
        # the orbit timeout leaves the orbits after the victim's (split, with the orbit
        # clock) room for the fresh sandbox child the kill makes them start
        s = _run_loop(client, tmp_path, jobs, _hooks.hang_instruments_of_victim, orbit_timeout=8.0)
    finally:
        client.close()
        cluster.close()
    assert sizes == [3] + [1] * 24
    assert s.figures_written == 24 and s.errors == {"timeout": 1}
    state = json.loads((tmp_path / "progress.json").read_text())
    assert state["ees_linear_log_error-timeout"] == [_hooks.VICTIM]
    assert state["linear_log_completed"] == orbits[1:]


def test_time_pending_before_a_worker_exists_is_not_an_orbit_timeout(tmp_path):
    """The render loop submits with no worker; one comes after longer than the orbit
    timeout: no orbit times out."""
    cluster, client = _local(0)
    jobs = {o: [_job(tmp_path, o)] for o in (1, 2)}
    try:

        def add_worker_later() -> None:
            deadline = time.monotonic() + 60
            while not cluster.scheduler.tasks and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(1.5)  # longer than the orbit timeout, pending (what is measured)
            cluster.scale(1)

        helper = threading.Thread(target=add_worker_later)
        helper.start()
        s = _run_loop(client, tmp_path, jobs, _hooks.noop, orbit_timeout=1.0)
        helper.join()
    finally:
        client.close()
        cluster.close()
    assert not s.errors and s.orbits_completed == 2
    assert json.loads((tmp_path / "progress.json").read_text())["linear_log_completed"] == [1, 2]


def test_watchdog_ends_the_run_when_every_worker_is_gone(tmp_path, caplog):
    """Every worker closed mid-run (orbits from the victim on stay busy): the loop ends
    with NoWorkersError after the wait, the state flushed, each lost worker logged once."""
    cluster, client = _local(2, processes=True)
    orbits = [_hooks.VICTIM - 1, *range(_hooks.VICTIM, _hooks.VICTIM + 8)]
    jobs = {o: [_job(tmp_path, o)] for o in orbits}
    try:

        def close_workers() -> None:
            # both workers busy with a victim: the first orbit is done, the rest waits
            deadline = time.monotonic() + 120
            while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            # and the first orbit's result handled (its future released by the loop), so
            # that closing the workers strands nothing already finished
            first = f"render-{_hooks.VICTIM - 1}-"
            while time.monotonic() < deadline and any(
                str(k).startswith(first) for k in list(client.futures)
            ):
                time.sleep(0.02)
            cluster.scale(0)

        helper = threading.Thread(target=close_workers)
        helper.start()
        caplog.set_level(logging.INFO, logger="fastspectro_dask")
        with (
            dask.config.set({"fastspectro.worker-wait": 1.0}),
            pytest.raises(NoWorkersError, match="no Dask worker for 1 s"),
        ):
            _run_loop(client, tmp_path, jobs, _hooks.block_from_victim_on, orbit_timeout=None)
        helper.join()
    finally:
        client.close()
        cluster.close()
    state = json.loads((tmp_path / "progress.json").read_text())
    assert state["linear_log_completed"] == [_hooks.VICTIM - 1]  # flushed before the end
    lost = [r for r in caplog.records if "left the cluster" in r.getMessage()]
    assert len(lost) == 2 and all(r.levelno == logging.WARNING for r in lost)
    assert len({r.getMessage().split(" (")[1] for r in lost}) == 2  # once per worker
    assert any("no Dask worker for" in r.getMessage() for r in caplog.records)


def test_cli_exit_code_3_when_no_worker_is_left(tmp_path, monkeypatch, capsys):
    import contextlib

    import fastspectro_dask.cluster as cluster_mod
    import fastspectro_dask.pipeline as pipeline_mod
    from fastspectro_dask.cli import main
    from fastspectro_dask.schedule import worker_wait_seconds

    waits = []

    @contextlib.contextmanager
    def fake_client_context(client=None, **kw):
        class FakeClient:
            dashboard_link = "http://127.0.0.1:1/status"

        yield FakeClient()

    def no_workers(input_dir, output_dir, **kw):
        waits.append(worker_wait_seconds())
        raise NoWorkersError("no Dask worker for 7 s and none pending")

    monkeypatch.setattr(cluster_mod, "client_context", fake_client_context)
    monkeypatch.setattr(pipeline_mod, "FAST_plot_spectrograms_directory", no_workers)
    code = main(["plot", str(tmp_path), str(tmp_path / "out"), "--worker-wait", "7"])
    assert code == 3 and waits == [7.0]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastspectro: no Dask worker for 7 s and none pending"]
    assert worker_wait_seconds() == 180.0  # the setting ends with the run


class _FakeJobqueue:
    """A dask-jobqueue cluster as ClusterView sees it: a spec of jobs (two worker processes
    each), ``requested`` names, ``scale(jobs=)`` that adds jobs named by
    ``new_worker_spec``, as SpecCluster does (the lowest number not in the spec from the
    last one used: a name dropped from the spec can come back)."""

    def __init__(self, jobs: int) -> None:
        from fastspectro_dask.cluster import JOBS_ATTR

        self.worker_spec: dict[str, dict] = {}
        self._i = 0
        self.scaled: list[int] = []
        self._adaptive = None
        setattr(self, JOBS_ATTR, jobs)
        self.scale(jobs=jobs)

    def new_worker_spec(self) -> dict[str, dict]:
        while f"job-{self._i}" in self.worker_spec:
            self._i += 1
        return {f"job-{self._i}": {"group": ["-0", "-1"]}}

    def scale(self, jobs: int) -> None:
        self.scaled.append(jobs)
        while len(self.worker_spec) < jobs:
            self.worker_spec.update(self.new_worker_spec())

    @property
    def requested(self) -> set[str]:
        return {f"{n}{g}" for n, s in self.worker_spec.items() for g in s["group"]}


class _FakeClient:
    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.connected: list[str] = []  # worker names connected now
        self.scheduler = self

    def identity(self, n_workers=-1):
        return {"workers": {f"tcp://{n}": {"name": n, "nthreads": 1} for n in self.connected}}

    def sync(self, fn, *a, **kw):
        return fn(*a, **kw)


def test_lost_jobs_are_resubmitted_and_pending_jobs_hold_the_watchdog(caplog):
    """--jobs 2: jobs pending at first hold the watchdog off; a job whose workers all left
    is dropped and submitted again (scale(jobs=2)), each lost worker logged once."""
    from fastspectro_dask.schedule import ClusterView

    cluster = _FakeJobqueue(jobs=2)
    client = _FakeClient(cluster)
    view = ClusterView(client, refresh=0.0)
    assert view.refresh() == 0 and view.pending_jobs() == 4 and view.idle_for() == 0.0
    client.connected = ["job-0-0", "job-0-1", "job-1-0", "job-1-1"]
    assert view.refresh() == 4 and view.pending_jobs() == 0
    caplog.set_level(logging.INFO, logger="fastspectro_dask.schedule")
    client.connected = ["job-1-0", "job-1-1"]  # job-0 cancelled in the batch system
    assert view.refresh() == 2
    assert sorted(cluster.worker_spec) == ["job-1", "job-2"] and cluster.scaled == [2, 2]
    assert view.pending_jobs() == 2 and view.resubmitted == 1  # job-2 waits in the queue
    view.refresh()  # nothing new: no second warning, no second resubmission
    lost = [r for r in caplog.records if "left the cluster" in r.getMessage()]
    assert len(lost) == 2 and cluster.scaled == [2, 2]
    assert any("1 lost job(s) (job-0) resubmitted" in r.getMessage() for r in caplog.records)
    client.connected = []  # job-1 gone too: resubmitted; no worker, but 2 jobs pending
    view.refresh()
    assert sorted(cluster.worker_spec) == ["job-2", "job-3"] and view.resubmitted == 2
    assert view.threads == 0 and view.pending_jobs() == 4 and view.idle_for() == 0.0


def test_a_lost_job_is_named_by_its_batch_job_id(caplog):
    """The resubmission's warning names the lost job as dask-jobqueue does and as the
    batch system does (the id ``squeue`` shows), read before ``scale`` closes the job."""
    from types import SimpleNamespace

    from fastspectro_dask.schedule import ClusterView

    cluster = _FakeJobqueue(jobs=2)
    cluster.workers = {"job-0": SimpleNamespace(job_id="4711"), "job-1": SimpleNamespace()}
    client = _FakeClient(cluster)
    view = ClusterView(client, refresh=0.0)
    client.connected = ["job-0-0", "job-0-1", "job-1-0", "job-1-1"]
    view.refresh()
    caplog.set_level(logging.WARNING, logger="fastspectro_dask.schedule")
    client.connected = []  # both jobs cancelled in the batch system
    view.refresh()
    (resubmitted,) = [r for r in caplog.records if "resubmitted" in r.getMessage()]
    assert resubmitted.getMessage() == (
        "2 lost job(s) (job-0: batch job 4711, job-1) resubmitted: scale(jobs=2)"
    )
    assert view.resubmitted == 2 and sorted(cluster.worker_spec) == ["job-2", "job-3"]


class _FakeSLURMJob:
    """A dask-jobqueue SLURM job as ClusterView sees it: its batch job id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


def test_a_job_cancelled_before_connecting_stops_holding_the_watchdog(
    tmp_path, monkeypatch, caplog
):
    """Jobs pending in SLURM hold the watchdog off; one cancelled in the queue before its
    workers connected (squeue no longer lists it) does not: with every job gone the
    watchdog counts again, each job named once in a warning."""
    import fastspectro_dask.schedule as sched

    queued = tmp_path / "queued"
    queued.write_text("4711\n4712\n")
    squeue = tmp_path / "bin" / "squeue"
    squeue.parent.mkdir()
    squeue.write_text(  # prints the asked job id while it is listed in `queued`
        f'#!/bin/sh\nid=${{3#--jobs=}}\ngrep -qx "$id" {queued} && echo "$id"\nexit 0\n'
    )
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{squeue.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(sched, "QUEUE_CHECK_SECONDS", 0.0)
    cluster = _FakeJobqueue(jobs=2)
    cluster.workers = {"job-0": _FakeSLURMJob("4711"), "job-1": _FakeSLURMJob("4712")}
    view = sched.ClusterView(_FakeClient(cluster), refresh=0.0)
    caplog.set_level(logging.WARNING, logger="fastspectro_dask.schedule")
    assert view.refresh() == 0 and view.pending_jobs() == 4 and view.idle_for() == 0.0
    queued.write_text("4712\n")  # scancel 4711 while it was pending
    assert view.pending_jobs() == 2 and view.idle_for() == 0.0
    queued.write_text("")  # and 4712
    assert view.pending_jobs() == 0 and view.idle_for() > 0.0
    gone = [r.getMessage() for r in caplog.records if "left the batch queue" in r.getMessage()]
    assert gone == [
        "job-0: batch job 4711 left the batch queue before its workers connected "
        "(cancelled or failed): not waited for",
        "job-1: batch job 4712 left the batch queue before its workers connected "
        "(cancelled or failed): not waited for",
    ]


class _HeldScheduler:
    """A scheduler whose ``identity`` answers only once ``gate`` is open, on a real event
    loop in a thread (as a client's)."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.asyncio_loop = self.loop  # the client's ``loop.asyncio_loop``
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gate = threading.Event()
        self.names: list[str] = []
        self.asked = 0

    def identity(self, n_workers=-1):
        self.asked += 1
        return self._answer(list(self.names))  # the workers when asked

    async def _answer(self, names: list[str]) -> dict:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        return {"workers": {f"tcp://{n}": {"name": n, "nthreads": 1} for n in names}}

    def close(self) -> None:
        self.gate.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


class _HeldClient:
    def __init__(self, scheduler: _HeldScheduler) -> None:
        import asyncio

        self.scheduler = scheduler
        self.loop = scheduler
        self._asyncio = asyncio

    def sync(self, fn, *a, **kw):
        coro = fn(*a, **kw)
        return self._asyncio.run_coroutine_threadsafe(coro, self.scheduler.loop).result(60)


def test_a_refill_does_not_wait_for_the_schedulers_answer():
    """``refresh(wait=False)`` (the loop's refills) asks and goes on with the last
    reading; the answer is taken in by a later call. The first reading waits."""
    from fastspectro_dask.schedule import ClusterView

    held = _HeldScheduler()
    try:
        view = ClusterView(_HeldClient(held), refresh=0.0)
        held.names = ["a"]
        held.gate.set()
        assert view.refresh(wait=False) == 1  # no reading yet: it waits for this one
        held.gate.clear()
        held.names = ["a", "b", "c"]
        got: list[int] = []
        asker = threading.Thread(target=lambda: got.append(view.refresh(wait=False)))
        asker.start()
        asker.join(30)
        assert not asker.is_alive() and got == [1]  # went on while the question is out
        assert view.refresh(wait=False) == 1 and held.asked == 2  # one question at a time
        held.gate.set()
        view._asking.result(30)  # the answer is in
        assert view.refresh(wait=False) == 3
        assert view.seen_names == {"a", "b", "c"}
    finally:
        held.close()


def test_the_last_job_lost_is_replaced_by_a_new_job():
    """The job with the highest number lost: SpecCluster would name the next job after the
    lowest free number, the lost job's own (a spec entry whose job object still exists is
    not started: nothing was submitted, found by the real-SLURM test). A new name is
    taken; the lost one is gone from the spec."""
    from fastspectro_dask.schedule import ClusterView

    cluster = _FakeJobqueue(jobs=2)
    client = _FakeClient(cluster)
    view = ClusterView(client, refresh=0.0)
    client.connected = ["job-0-0", "job-0-1", "job-1-0", "job-1-1"]
    view.refresh()
    client.connected = ["job-0-0", "job-0-1"]  # job-1 cancelled in the batch system
    assert view.refresh() == 2
    assert sorted(cluster.worker_spec) == ["job-0", "job-2"] and view.resubmitted == 1
    assert view.pending_jobs() == 2  # job-2's two workers, waiting in the queue
    client.connected += ["job-2-0", "job-2-1"]
    assert view.refresh() == 4 and view.pending_jobs() == 0


# --------------------------------------------------------------------------------------
# Batches: submissions and results by chunks, one clock question per group and worker
# --------------------------------------------------------------------------------------


class _FakeFuture:
    def __init__(self, key: str) -> None:
        self.key = key


class _MapRecorder:
    """Records ``map`` calls (the number of tasks of each submission)."""

    def __init__(self) -> None:
        self.maps: list[int] = []

    def map(self, fn, *iterables, key, pure, retries):
        self.maps.append(len(key))
        return [_FakeFuture(k) for k in key]


class _FakeCompleted:
    """The part of ``as_completed`` the loop uses: ``update``, a thread condition and a
    queue of ready futures."""

    def __init__(self) -> None:
        import queue

        self.thread_condition = threading.Condition()
        self.queue: queue.Queue = queue.Queue()

    def update(self, futures) -> None:
        pass

    def has_ready(self) -> bool:
        return not self.queue.empty()

    def ready(self, n: int) -> None:
        with self.thread_condition:
            for _ in range(n):
                self.queue.put_nowait(None)
            self.thread_condition.notify_all()


def _fake_loop(threads: int, extra: int, **kw) -> TaskLoop:
    loop = TaskLoop(_MapRecorder(), _hooks.group_clock, extra=extra, worker_wait=None, **kw)
    loop.view.threads = threads
    loop.view.refresh = lambda force=False, wait=True: threads  # type: ignore[method-assign]
    return loop


def _complete(loop: TaskLoop, n: int) -> None:
    for key in list(loop.inflight)[:n]:
        del loop.inflight[key]


def test_the_window_is_refilled_by_chunks_while_the_workers_have_enough():
    loop = _fake_loop(threads=1, extra=10)  # window 2 * 1 + 10 = 12, chunk (12 - 1) // 2 = 5
    source = (Task(f"t-{i}", (None,), i) for i in range(100))
    ac = _FakeCompleted()
    loop._fill(source, ac)
    assert loop.client.maps == [12]
    _complete(loop, 4)
    loop._fill(source, ac)  # 4 free slots < a chunk, 8 tasks left for 1 thread: wait
    assert loop.client.maps == [12]
    _complete(loop, 1)
    loop._fill(source, ac)  # a chunk is free: one submission of 5
    assert loop.client.maps == [12, 5] and len(loop.inflight) == 12
    _complete(loop, 11)
    loop._fill(source, ac)  # the thread would run short: refilled at once
    assert loop.client.maps == [12, 5, 11] and len(loop.inflight) == 12
    _complete(loop, 1)
    loop._fill(source, ac)  # 1 free slot, 11 left: not worth a submission
    assert loop.client.maps == [12, 5, 11]


def test_a_batch_of_results_waits_for_a_chunk_only_while_the_workers_are_busy():
    loop = _fake_loop(threads=1, extra=10, linger=60.0)  # chunk 5
    ac = _FakeCompleted()
    loop.inflight = {f"t-{i}": (None, None) for i in range(12)}
    ac.ready(1)
    more = threading.Thread(target=ac.ready, args=(4,))
    t0 = time.monotonic()
    with ac.thread_condition:  # the results arrive once the loop waits for them
        more.start()
    loop._wait(ac, 60.0)
    more.join()
    assert ac.queue.qsize() == 5 and time.monotonic() - t0 < 30  # not the 60 s linger

    ac = _FakeCompleted()
    loop.inflight = {f"t-{i}": (None, None) for i in range(2)}
    ac.ready(1)  # 1 task left for 1 thread: no waiting for more
    t0 = time.monotonic()
    loop._wait(ac, 60.0)
    assert ac.queue.qsize() == 1 and time.monotonic() - t0 < 30


def test_a_group_clock_is_asked_once_per_worker_process():
    cluster, client = _local(1)
    try:
        assert ensure_orbit_clock(client)
        from fastspectro_dask.schedule import _CLOCK_HANDLER

        asked: list[str] = []
        handler = cluster.scheduler.handlers[_CLOCK_HANDLER]

        def counting(group: str) -> float:
            asked.append(group)
            return handler(group)

        cluster.scheduler.handlers[_CLOCK_HANDLER] = counting
        got = [
            client.submit(_hooks.group_clock, g, pure=False).result(timeout=60)
            for g in ("orbit-a", "orbit-a", "orbit-a", "orbit-b")
        ]
    finally:
        client.close()
        cluster.close()
    assert asked == ["orbit-a", "orbit-b"]
    assert got[0] == 0.0 and 0.0 < got[1] <= got[2] < 60.0 and got[3] == 0.0


def _identity(i: int) -> int:
    return i


class _Restrictions(distributed.diagnostics.plugin.SchedulerPlugin):
    """Records the worker restrictions the scheduler receives with each task."""

    def __init__(self) -> None:
        self.got: dict[str, tuple[frozenset, bool]] = {}

    def update_graph(self, scheduler, *, keys, annotations=None, **kw) -> None:
        annotations = annotations or {}
        for key in keys:
            self.got[key] = (
                frozenset(annotations.get("workers", {}).get(key) or ()),
                bool(annotations.get("allow_other_workers", {}).get(key)),
            )


def test_every_task_is_placed_loosely_and_groups_prefer_one_worker():
    """Every task reaches the scheduler with one connected worker as a loose restriction
    (any worker may still run or steal it; not queued as a root task): its group's worker
    (one figure layout) once two groups per worker are known, groups spread over the
    workers; otherwise the worker with the fewest tasks in flight per thread. A group whose
    worker left gets another."""
    cluster, client = _local(2)
    try:
        client.wait_for_workers(2, timeout=120)
        spy = _Restrictions()
        cluster.scheduler.add_plugin(spy, name="restrictions-spy")
        loop = TaskLoop(client, _identity, worker_wait=None)  # window 2 * 2 + 2 = 6
        # one group for the first 10 tasks (the dry run's shape: no preference), then four
        groups = {i: "a" if i < 10 else ("a", "b", "c", "d", None)[i % 5] for i in range(40)}
        got: list[int] = []
        loop.run(
            (Task(f"t-{i}", (i,), i, groups[i]) for i in range(40)),
            lambda t, r, e: got.append(r),
        )
        workers = set(cluster.scheduler.workers)
        assert sorted(got) == list(range(40))
        assert not loop._placed and not loop._load  # every placement given back
        assert set(loop.homes) == {"a", "b", "c", "d"} and set(loop.homes.values()) == workers
        assert sorted(Counter(loop.homes.values()).values()) == [2, 2]
        for i in range(40):
            where, loose = spy.got[f"t-{i}"]
            assert len(where) == 1 and where <= workers and loose
        # the first fill (nothing in flight yet): three tasks per worker
        first = Counter(next(iter(spy.got[f"t-{i}"][0])) for i in range(6))
        assert sorted(first.values()) == [3, 3]
        # groups b, c, d are first seen by tasks 11, 12, 13: four groups for two workers
        for i in range(13, 40):
            if groups[i] is not None:
                assert spy.got[f"t-{i}"][0] == {loop.homes[groups[i]]}
        # the worker of group "a" leaves: "a" is given the one left
        gone = loop.homes["a"]
        loop.view.workers = {a: w for a, w in loop.view.workers.items() if a != gone}
        assert loop._home("a") == loop._home("b") != gone
    finally:
        client.close()
        cluster.close()


def test_tasks_without_a_home_go_to_the_least_loaded_worker_by_threads():
    loop = _fake_loop(threads=4, extra=0)
    loop.view.workers = {"w1": ("one", 1), "w3": ("three", 3)}
    placed = {f"t-{i}": loop._place(None) for i in range(8)}
    loop._placed.update(placed)
    assert Counter(placed.values()) == {"w1": 2, "w3": 6}  # in flight per thread: 2 each
    for key in [k for k, w in placed.items() if w == "w3"][:3]:
        loop._unplace(key)  # three of w3's tasks finished: the next ones go to w3
    assert [loop._place(None) for _ in range(3)] == ["w3", "w3", "w3"]
    loop.view.workers = {"w1": ("one", 1)}  # w3 left: everything to w1
    assert loop._place(None) == "w1"
    loop.view.workers = {}  # no worker known: no placement
    assert loop._place(None) is None


def test_task_split_groups_an_orbit_while_enough_orbits_are_left():
    from fastspectro_dask.pipeline import _ORBITS_PER_THREAD, _task_split

    jobs = ["instruments", "pa-ees", "pad"]  # stand-ins: the split only counts them
    assert _task_split(jobs, None, 4) == [jobs]  # unknown total: many
    assert _task_split(jobs, _ORBITS_PER_THREAD * 4, 4) == [jobs]
    assert _task_split(jobs, _ORBITS_PER_THREAD * 4 - 1, 4) == [[j] for j in jobs]
    # no worker yet: one thread counted, so a small run is spread as it was
    assert _task_split(jobs, _ORBITS_PER_THREAD - 1, 0) == [[j] for j in jobs]
    assert _task_split(jobs, _ORBITS_PER_THREAD, 0) == [jobs]
