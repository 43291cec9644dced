"""The one scheduling loop: a bounded, elastic window of Dask futures over ``as_completed``.

Used by the extrema pass 1 (:mod:`fastspectro_dask.extrema`) and by the render phase
(:mod:`fastspectro_dask.pipeline`). What it does, and nothing else:

* **An elastic window.** At most ``per_thread * threads + extra`` tasks are in flight
  (never one giant graph: a mission is ~51,000 orbits), where ``threads`` is the cluster's
  *current* number of worker threads, read from the scheduler at every refill (at most
  every :data:`REFRESH_SECONDS`; the refill goes on with the last reading while the
  scheduler answers), so workers that arrive late (dask-jobqueue jobs leaving
  the batch queue, adaptive scaling) get work at once, whatever made the client
  (``LocalCluster``, ``client=``, ``--scheduler-address``/``--scheduler-file``,
  ``--cluster``). While no worker is there, ``floor`` tasks wait on the scheduler; a
  caller's ``window`` is an upper bound.
* **Client-side placement**: every task goes to one worker as a loose restriction (its
  layout group's worker, else the one with the fewest tasks in flight per thread; any
  worker may still run or steal it), so the scheduler sends it at once instead of
  queuing it as a root task and sending it one completion at a time.
* **Batched submission** (one ``client.map`` over the free slots) and **a wait that wakes on
  completion** (no polling); the results of a batch of completed tasks come in one
  ``gather``, up to :data:`MAX_FETCHING` batches at once, recorded oldest first.
* **One place for the client-side batched flushes**: ``on_idle`` (the interval flush)
  while waiting, ``on_exit`` (the final flush) always, also after an exception.
* **A watchdog**: no worker and no pending job for ``worker_wait`` seconds (the dask
  config ``fastspectro.worker-wait``, default in ``fastspectro.yaml``; CLI
  ``--worker-wait``) ends the loop with :class:`~fastspectro_dask.errors.NoWorkersError`
  after the final flush. Workers that leave are logged once each (WARNING); with a
  dask-jobqueue cluster of a fixed number of jobs (``--jobs N``), lost jobs are submitted
  again.
* **Several items per task**: :func:`call_each` (on the worker) runs a task's items in
  turn, each one's error its own; :func:`outcomes` (on the client) gives each item its
  result or error back.
* **Deadlines from the start on a worker**: :class:`OrbitClock`, a scheduler plugin, tells
  a task how long ago the first task of its group (an orbit) started on a worker
  (:func:`group_elapsed`), so time spent waiting for a worker never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import dask
from distributed.diagnostics.plugin import SchedulerPlugin

from fastspectro_dask.cluster import JOBS_ATTR
from fastspectro_dask.errors import NoWorkersError

__all__ = [
    "LINGER_SECONDS",
    "MAX_FETCHING",
    "REFRESH_SECONDS",
    "ClusterView",
    "OrbitClock",
    "Task",
    "TaskLoop",
    "call_each",
    "ensure_orbit_clock",
    "group_elapsed",
    "outcomes",
    "progress_bar",
    "worker_wait_seconds",
]

logger = logging.getLogger(__name__)

#: The cluster's threads are re-read at a refill at most this often (one scheduler
#: round trip), and the loop wakes at least this often to look for new workers.
REFRESH_SECONDS = 0.5
#: Seconds the loop may wait for a chunk of results to gather before handling a smaller
#: batch (only while the tasks not yet finished keep every worker thread busy).
LINGER_SECONDS = 0.02
#: Batches of results fetched at the same time at most (one ``gather`` each): the next
#: batches are submitted and recorded while a busy node answers the earlier ones.
MAX_FETCHING = 4
#: With no worker connected, the batch system is asked at most this often whether the
#: jobs still awaited are queued (seconds; SLURM only, see :meth:`ClusterView.pending_jobs`).
QUEUE_CHECK_SECONDS = 10.0
#: dask config key of the watchdog's wait.
WORKER_WAIT_KEY = "fastspectro.worker-wait"


def worker_wait_seconds() -> float | None:
    """The watchdog's wait: dask config ``fastspectro.worker-wait`` (seconds; ``None`` or
    a negative value: wait for ever; its default is in ``fastspectro.yaml``)."""
    value = dask.config.get(WORKER_WAIT_KEY)
    if value is None:
        return None
    value = float(value)
    return None if value < 0 else value


def progress_bar(total: int, enabled: bool | None, *, unit: str, desc: str):
    """A tqdm bar for one phase (shown only on a terminal unless ``enabled`` says)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        dynamic_ncols=True,
        disable=(not sys.stderr.isatty()) if enabled is None else not enabled,
    )


# --------------------------------------------------------------------------------------
# The cluster as the loop sees it
# --------------------------------------------------------------------------------------


def _scheduler_workers(client) -> dict[str, tuple[str, int]]:
    """``{address: (name, nthreads)}`` of the workers connected now (one round trip).

    Asks the scheduler directly: ``Client.scheduler_info()`` returns the client's cached
    identity, which its periodic refresh may replace at the same moment with one that
    lists no worker.
    """
    try:
        info = client.sync(client.scheduler.identity, n_workers=-1)
    except TypeError:  # a distributed without n_workers
        info = client.sync(client.scheduler.identity)
    return _workers_of(info)


def _workers_of(info: dict) -> dict[str, tuple[str, int]]:
    """``{address: (name, nthreads)}`` from the scheduler's identity."""
    return {
        addr: (str(w.get("name", addr)), int(w.get("nthreads", 1) or 1))
        for addr, w in info.get("workers", {}).items()
    }


def _least_per_thread(workers: dict[str, tuple[str, int]], counts: Counter[str]) -> str:
    """The worker with the fewest ``counts`` per thread (ties: the first address)."""
    return min(workers, key=lambda a: (counts[a] / workers[a][1], a))


def _on_loopback(address: str) -> bool:
    """Whether a worker address (``tcp://127.0.0.1:4242``, ``inproc://...``) is local."""
    host = urlsplit(address).hostname or ""
    return (
        address.startswith("inproc://")
        or host == "localhost"
        or host.startswith("127.")
        or host == "::1"
    )


class ClusterView:
    """Threads, arrivals, departures and pending jobs of a client's cluster.

    Parameters
    ----------
    client : distributed.Client
    refresh : float
        Re-read the scheduler at most this often (seconds).
    """

    def __init__(self, client, refresh: float = REFRESH_SECONDS) -> None:
        self.client = client
        self.refresh_seconds = refresh
        self.workers: dict[str, tuple[str, int]] = {}
        self.threads = 0
        #: Every connected worker listens on this host's loopback (a local cluster).
        self.local = False
        self.seen_names: set[str] = set()
        self.lost: set[str] = set()
        self.resubmitted = 0
        self._read_at = -float("inf")
        self._empty_since: float | None = None
        self._asking: Any = None  # a reading of the workers under way (wait=False)
        self._blocking = False  # readings without waiting failed here: always wait
        self.left_queue: set[str] = set()  # worker names of jobs gone before connecting
        self._queue_read_at = -float("inf")

    def refresh(self, force: bool = False, wait: bool = True) -> int:
        """Re-read the workers (at most every ``refresh`` seconds); returns the threads.

        ``wait=False``: do not wait for the scheduler's answer; it is taken in by the
        next call after it came (the scheduling loop's refills: a round trip on a busy
        node is tens of milliseconds the loop would otherwise not submit or record)."""
        now = time.monotonic()
        asking = self._asking
        if asking is not None and asking.done():
            self._asking = None
            try:
                self._take(_workers_of(asking.result()), now)
            except Exception as exc:  # e.g. a distributed without n_workers: ask blocking
                logger.debug("could not read the scheduler's workers: %s", exc)
                self._blocking = True
        if not force and now - self._read_at < self.refresh_seconds:
            return self.threads
        self._read_at = now
        if not wait and self.threads and self._ask():
            return self.threads
        self._asking = None  # an older reading still out is not taken in after this one
        try:
            workers = _scheduler_workers(self.client)
        except Exception as exc:  # the scheduler unreachable for a moment: keep the last view
            logger.debug("could not read the scheduler's workers: %s", exc)
            return self.threads
        self._take(workers, now)
        return self.threads

    def _ask(self) -> bool:
        """Start reading the workers without waiting (``False``: cannot be done here)."""
        if self._asking is not None:
            return True  # the last question is still out
        if self._blocking:
            return False
        try:
            coro = self.client.scheduler.identity(n_workers=-1)
            self._asking = asyncio.run_coroutine_threadsafe(coro, self.client.loop.asyncio_loop)
        except Exception:  # not a real client (or no event loop): read it the blocking way
            self._blocking = True
            return False
        return True

    def _take(self, workers: dict[str, tuple[str, int]], now: float) -> None:
        """Take in a reading of the workers: departures logged (and lost jobs submitted
        again), arrivals counted, the threads and the time without any worker updated."""
        left = self.workers.keys() - workers.keys()
        for addr in left:
            if addr not in self.lost:
                self.lost.add(addr)
                name = self.workers[addr][0]
                logger.warning(
                    "worker %s (%s) left the cluster; %d worker thread(s) left",
                    name,
                    addr,
                    sum(t for _n, t in workers.values()),
                )
        arrived = workers.keys() - self.workers.keys()
        if arrived and self.workers:
            logger.info("%d worker(s) joined the cluster", len(arrived))
        self.workers = workers
        self.local = bool(workers) and all(_on_loopback(a) for a in workers)
        self.seen_names.update(n for n, _t in workers.values())
        self.threads = sum(t for _n, t in workers.values())
        if self.threads:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        if left:
            self._resubmit_lost_jobs()

    def _cluster(self):
        return getattr(self.client, "cluster", None)

    def pending_jobs(self) -> int:
        """Workers asked for (a dask-jobqueue or other ``SpecCluster``) that never
        connected: jobs still in the batch queue. 0 when the cluster is not ours to see
        (an external scheduler). A SLURM job that left the queue before its workers
        connected (cancelled, failed: ``squeue`` no longer lists it, asked at most every
        :data:`QUEUE_CHECK_SECONDS`) is not pending any more."""
        cluster = self._cluster()
        try:
            requested = set(cluster.requested) if cluster is not None else set()
        except Exception:  # not a SpecCluster
            return 0
        waiting = {str(n) for n in requested} - self.seen_names
        now = time.monotonic()
        if waiting - self.left_queue and now - self._queue_read_at >= QUEUE_CHECK_SECONDS:
            self._queue_read_at = now
            self._check_queue(cluster, waiting)
        return len(waiting - self.left_queue)

    def _check_queue(self, cluster, waiting: set[str]) -> None:
        """Ask the batch system about the jobs whose workers are all still awaited."""
        for name, job in list((getattr(cluster, "workers", None) or {}).items()):
            members = _spec_members(cluster, name)
            if not members <= waiting or members <= self.left_queue or _in_batch_queue(job):
                continue
            self.left_queue |= members
            logger.warning(
                "%s left the batch queue before its workers connected (cancelled or "
                "failed): not waited for",
                _job_label(cluster, name),
            )

    def _resubmit_lost_jobs(self) -> None:
        """A dask-jobqueue cluster asked for a fixed number of jobs (``--jobs N``): a job
        whose workers all left is replaced in the cluster's spec by a new job under a new
        name, and ``scale(jobs=N)`` submits it (and cancels the lost one in the batch
        system). The new name is taken while the lost one is still in the spec: a
        ``SpecCluster`` names the next job after the lowest free number, so a lost job
        dropped first gave its own name back, and a spec entry whose job object still
        exists is not started again (nothing was submitted, and the lost name counted as
        a pending job for ever)."""
        cluster = self._cluster()
        jobs = getattr(cluster, JOBS_ATTR, None)
        if not jobs or getattr(cluster, "_adaptive", None) is not None:
            return
        spec = getattr(cluster, "worker_spec", None)
        new_job = getattr(cluster, "new_worker_spec", None)
        if spec is None or new_job is None:
            return
        now_names = {n for n, _t in self.workers.values()}
        gone = []
        for name in list(spec):
            members = _spec_members(cluster, name)
            if members & self.seen_names and not members & now_names:
                gone.append(name)  # connected once, none of its workers is here now
        if not gone:
            return
        lost = ", ".join(_job_label(cluster, name) for name in gone)  # before scale closes them
        try:
            for _name in gone:
                spec.update(new_job())  # a name that is not a lost one
            for name in gone:
                self.seen_names -= _spec_members(cluster, name)
                spec.pop(name, None)
            cluster.scale(jobs=jobs)
        except Exception as exc:
            logger.warning("could not resubmit %d lost job(s) (%s): %s", len(gone), lost, exc)
            return
        self.resubmitted += len(gone)
        logger.warning("%d lost job(s) (%s) resubmitted: scale(jobs=%d)", len(gone), lost, jobs)

    def idle_for(self) -> float:
        """Seconds with no worker and no pending job (0 when there is one of them)."""
        if self._empty_since is None or self.pending_jobs():
            return 0.0
        return time.monotonic() - self._empty_since


def _in_batch_queue(job) -> bool:
    """Whether the batch system still holds a dask-jobqueue ``job`` (pending or running).

    Asked of SLURM only (``squeue --jobs=ID``: not listed, or "Invalid job id", once it
    has ended); True for other systems and whenever the answer is unclear."""
    job_id = getattr(job, "job_id", None)
    if not job_id or "slurm" not in type(job).__name__.lower():
        return True
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--format=%i", f"--jobs={job_id}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("squeue about batch job %s: %s", job_id, exc)
        return True
    if out.returncode == 0:
        return str(job_id) in out.stdout.split()
    return "invalid job id" not in out.stderr.lower()


def _job_label(cluster, name: str) -> str:
    """A spec entry's name and, for a dask-jobqueue job, its id in the batch system (what
    ``squeue``/``qstat`` show), e.g. ``SLURMCluster-0: batch job 4711``."""
    job = (getattr(cluster, "workers", None) or {}).get(name)
    job_id = getattr(job, "job_id", None)
    return f"{name}: batch job {job_id}" if job_id else str(name)


def _spec_members(cluster, name: str) -> set[str]:
    """Worker names of one spec entry of a SpecCluster (a job may run several workers)."""
    spec = cluster.worker_spec.get(name, {})
    group = spec.get("group") if isinstance(spec, dict) else None
    if group:
        return {f"{name}{suffix}" for suffix in group}
    return {str(name)}


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Task:
    """One submission: the task's ``key``, the arguments of the loop's function,
    ``item``, whatever the caller wants back with the outcome, and ``group``: tasks of one
    group share per-process state worth keeping warm (a figure layout), so they prefer
    one worker (``None``: any)."""

    key: str
    args: tuple
    item: Any = None
    group: Hashable | None = None


def call_each(fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
    """On a worker, a task of several items: ``fn(*args)`` for each ``args`` in turn; each
    one's result, or its error (one item's error is not its neighbours'), with its
    traceback text for the log file (``__remote_traceback__``, as the render sandbox sets
    it), which a raised error has in distributed's "Compute Failed" record instead."""
    out: list[Any] = []
    for args in calls:
        try:
            out.append(fn(*args))
        except Exception as exc:
            if getattr(exc, "__remote_traceback__", None) is None:
                exc.__remote_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            out.append(exc)
    return out


def outcomes(
    items: Sequence[Any], result: Any, error: BaseException | None
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """On the client, a :func:`call_each` task's outcome per item, in order:
    ``(item, result, None)`` or ``(item, None, its error)``; the task's own ``error``
    (cancelled, worker lost) is every item's."""
    for k, item in enumerate(items):
        got = error if error is not None else result[k]
        if isinstance(got, BaseException):
            yield item, None, got
        else:
            yield item, got, None


def _release(futures: list) -> None:
    for fut in futures:
        fut.release()


def _fetched(started: tuple[list, Any]) -> bool:
    """Whether a batch's results are in (or there is nothing to wait for)."""
    fetch = started[1][1]
    return fetch is None or fetch.done()


class _StrandedError(Exception):
    """No worker left while results were being fetched (the watchdog's verdict)."""

    def __init__(self, tasks: list) -> None:
        super().__init__(f"{len(tasks)} result(s) stranded")
        self.tasks = tasks


class TaskLoop:
    """A bounded elastic window of ``fn(*task.args)`` futures, results handled on the client.

    Parameters
    ----------
    client : distributed.Client
    fn : callable
        Module-level function run for every task.
    window : int, optional
        Upper bound of the tasks in flight (default: none but the elastic one).
    per_thread, extra, floor : int
        The window is ``max(floor, per_thread * threads + extra)`` (bounded by ``window``),
        ``threads`` being the worker threads connected now.
    stop : threading.Event, optional
        Set (a signal): stop submitting; what is in flight is cancelled and given back in
        :attr:`abandoned`.
    on_idle : callable, optional
        Called while waiting for results (the interval flush).
    on_exit : callable, optional
        Called once when the loop ends, whatever the reason (the final flush).
    worker_wait : float, optional
        Seconds with no worker and no pending job before :class:`NoWorkersError`
        (default: :func:`worker_wait_seconds`); ``None``: wait for ever.
    phase : str
        Name of the phase in log messages.
    linger : float
        Seconds a batch of results may wait for more to complete (only while the
        workers stay busy meanwhile; default :data:`LINGER_SECONDS`).
    """

    def __init__(
        self,
        client,
        fn: Callable[..., Any],
        *,
        window: int | None = None,
        per_thread: int = 2,
        extra: int = 2,
        floor: int = 4,
        stop: threading.Event | None = None,
        on_idle: Callable[[], Any] | None = None,
        on_exit: Callable[[], Any] | None = None,
        worker_wait: float | str | None = "config",
        phase: str = "tasks",
        linger: float = LINGER_SECONDS,
    ) -> None:
        self.client = client
        self.fn = fn
        self.cap = window
        self.per_thread, self.extra, self.floor = per_thread, extra, floor
        self.stop = stop or threading.Event()
        self.on_idle, self.on_exit = on_idle, on_exit
        self.worker_wait = worker_wait_seconds() if worker_wait == "config" else worker_wait
        self.phase = phase
        self.linger = linger
        self.view = ClusterView(client)
        self.inflight: dict[str, tuple[Task, Any]] = {}
        self.abandoned: list[Task] = []  # in flight when a stop or the watchdog ended it
        self.max_inflight = 0
        self.submitted = 0
        self.exhausted = False
        self.homes: dict[Hashable, str] = {}  # task group -> the worker it prefers
        self.groups: set[Hashable] = set()  # the task groups seen
        self._placed: dict[str, str | None] = {}  # task in flight -> the worker it was given
        self._load: Counter[str] = Counter()  # worker -> tasks in flight given to it
        self.outcome = "running"

    # -- the window ----------------------------------------------------------------------

    def window(self) -> int:
        """Tasks allowed in flight now (re-reads the cluster's threads, throttled)."""
        threads = self.view.refresh(wait=False)
        size = max(self.floor, self.per_thread * threads + self.extra)
        return size if self.cap is None else max(1, min(size, self.cap))

    def chunk(self, size: int) -> int:
        """Fewest free slots worth a submission, for a window of ``size``: half of what
        the window holds beyond one task per worker thread. Refilled in chunks, the
        window never holds fewer than the threads' worth of tasks, and each submission
        (one graph update, one scheduler message) and each batch of results (one
        ``gather``) carries several tasks instead of one."""
        return max(1, (size - self.view.threads) // 2)

    def _fill(self, source, ac) -> None:
        if self.exhausted or self.stop.is_set():
            return
        size = self.window()
        room = size - len(self.inflight)
        if room <= 0:
            return
        # a partial refill only while the workers would otherwise run short of tasks
        if room < self.chunk(size) and len(self.inflight) > self.view.threads:
            return
        batch = list(itertools.islice(source, room))
        if len(batch) < room:
            self.exhausted = True
        if not batch:
            return
        keys = [t.key for t in batch]
        homes = [self._place(t.group) for t in batch]  # all None while no worker is known
        # every task loosely placed, each on its own worker, in one graph update: the
        # scheduler sends it at once instead of queuing it as a root task
        placed = {k: [h] for k, h in zip(keys, homes, strict=True) if h is not None}
        with (
            dask.annotate(workers=placed.__getitem__, allow_other_workers=True)
            if placed
            else contextlib.nullcontext()
        ):
            futures = self.client.map(
                self.fn,
                *zip(*(t.args for t in batch), strict=True),
                key=keys,
                pure=False,
                retries=0,
            )
        for task, fut in zip(batch, futures, strict=True):
            self.inflight[fut.key] = (task, fut)
        self._placed.update(zip(keys, homes, strict=True))
        self._on_loop(ac.update, futures)
        self.submitted += len(batch)
        self.max_inflight = max(self.max_inflight, len(self.inflight))
        self._submitted_hook(len(self.inflight))

    def _home(self, group: Hashable | None) -> str | None:
        """The worker a group of tasks prefers, loosely (any other may still run or steal
        them): given on first sight to the connected worker with the fewest groups per
        thread, and again when that worker has left. ``None`` below two workers, and while
        fewer than two groups per worker are known: fewer would leave workers without a
        group, or one worker with half as much again as another, to wait for stealing."""
        workers = self.view.workers
        if group is None or len(workers) < 2:
            return None
        self.groups.add(group)
        if len(self.groups) < 2 * len(workers):
            return None
        home = self.homes.get(group)
        if home not in workers:
            home = _least_per_thread(
                workers, Counter(h for h in self.homes.values() if h in workers)
            )
            self.homes[group] = home
        return home

    def _place(self, group: Hashable | None) -> str | None:
        """The worker a task is given, loosely: its group's home (:meth:`_home`), else
        the connected worker with the fewest tasks in flight per thread (counted here, by
        placement). ``None`` while no worker is connected."""
        workers = self.view.workers
        if not workers:
            return None
        home = self._home(group)
        if home is None:
            home = _least_per_thread(workers, self._load)
        self._load[home] += 1
        return home

    def _unplace(self, key: str) -> None:
        home = self._placed.pop(key, None)
        if home is not None:
            self._load[home] -= 1
            if not self._load[home]:
                del self._load[home]

    def _on_loop(self, fn: Callable[[list], Any], futures: list) -> None:
        """``fn(futures)`` on the client's event loop: what it does per future there (a
        callback each) costs no wake-up of the loop from this thread per future."""
        loop = getattr(self.client, "loop", None)
        if loop is None:  # not a real client
            fn(futures)
        else:
            loop.add_callback(fn, futures)

    def _submitted_hook(self, inflight: int) -> None:
        """Called after each submission with the number of tasks in flight (for tests)."""

    # -- waiting -------------------------------------------------------------------------

    def _wait(self, ac, timeout: float) -> None:
        """Until a result is ready or ``timeout``; woken by ``as_completed`` at once.

        Then, for at most :attr:`linger` seconds, until a chunk's worth of results is
        ready, as long as the tasks not yet finished keep every worker thread busy: one
        batch (one ``gather``, one refill) for several results instead of one each,
        while no worker waits for it."""
        want = self.chunk(self.window())
        threads = self.view.threads
        cond = ac.thread_condition
        with cond:
            if not ac.has_ready():
                cond.wait(timeout)
            if want <= 1 or not ac.has_ready():
                return
            end = time.monotonic() + self.linger
            while True:
                ready = ac.queue.qsize()
                left = end - time.monotonic()
                if ready >= want or len(self.inflight) - ready <= threads or left <= 0:
                    return
                cond.wait(left)

    def _abandon(self) -> None:
        futures = [f for _t, f in self.inflight.values()]
        if futures:
            self.client.cancel(futures)
        self.abandoned = [t for t, _f in self.inflight.values()]
        self.inflight.clear()
        self._placed.clear()
        self._load.clear()

    def _watchdog(self) -> bool:
        if self.worker_wait is None:
            return False
        idle = self.view.idle_for()
        if idle < self.worker_wait:
            return False
        logger.info(
            "%s: no Dask worker for %.0f s and no job pending (worker wait %g s): ending the run",
            self.phase,
            idle,
            self.worker_wait,
        )
        return True

    def _start_batch(self, batch) -> tuple[list, Any]:
        """Take a batch of completed futures out of the window and start fetching the
        results of the finished ones in one ``gather`` (one round trip for the batch),
        without waiting: the caller submits and records meanwhile."""
        done = []
        for fut in batch:
            entry = self.inflight.pop(fut.key, None)
            self._unplace(fut.key)
            if entry is not None:
                done.append((entry[0], fut))
        finished = [f for _t, f in done if f.status == "finished"]
        fetch = None
        if finished:
            try:
                # straight from the workers when they are on this host (no hop through
                # the scheduler, which shares this process's event loop with the client)
                coro = self.client.gather(finished, asynchronous=True, direct=self.view.local)
                fetch = asyncio.run_coroutine_threadsafe(coro, self.client.loop.asyncio_loop)
            except Exception:  # fetched one by one in _finish_batch
                fetch = None
        return done, (finished, fetch)

    def _patiently(self, fut: Any, pending: list) -> Any:
        """``fut.result()`` once ``fut`` is done, looking at the cluster meanwhile: a result
        whose worker left is recomputed, and with no worker left that would wait for ever;
        the watchdog ends the wait (:class:`_StrandedError`, with the ``pending`` tasks).
        Woken by the future's done callback, not by polling (and not ``result(timeout=...)``:
        a task's own error may be a TimeoutError)."""
        if not fut.done():
            done = threading.Event()
            fut.add_done_callback(lambda _f: done.set())
            while not done.wait(self.view.refresh_seconds):  # woken at once by the result
                self.view.refresh()
                if self._watchdog():
                    raise _StrandedError(pending)
        return fut.result()

    def _finish_batch(self, started: tuple[list, Any], handle) -> None:
        """Wait for a batch's results and hand each outcome to ``handle``."""
        done, (finished, fetch) = started
        results: dict[str, Any] = {}
        if fetch is not None:
            try:
                got = self._patiently(fetch, [t for t, _f in done])
                results = dict(zip([f.key for f in finished], got, strict=True))
            except _StrandedError:
                raise
            except Exception:  # e.g. a worker holding a result died: one by one
                results = {}
        for k, (task, fut) in enumerate(done):
            if fut.key in results:
                handle(task, results[fut.key], None)
            else:
                try:
                    result = self._patiently(fut, [t for t, _f in done[k:]])
                except _StrandedError:
                    raise
                except BaseException as exc:  # the task's error, also CancelledError
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    handle(task, None, exc)
                else:
                    handle(task, result, None)
        self._on_loop(_release, [fut for _t, fut in done])

    # -- the run -------------------------------------------------------------------------

    def run(
        self,
        source: Iterable[Task],
        handle: Callable[[Task, Any, BaseException | None], Any],
    ) -> str:
        """Submit ``source``'s tasks through the window; ``handle(task, result, error)``
        each outcome as it arrives (``error`` is the task's exception, also
        ``CancelledError``; ``result`` is then ``None``).

        Returns ``"done"`` or ``"stopped"`` (``stop`` was set: the tasks in flight were
        cancelled and are in :attr:`abandoned`). Raises :class:`NoWorkersError` (the
        watchdog; tasks in flight abandoned). ``on_exit`` runs before it returns or raises.
        """
        from distributed import as_completed

        it = iter(source)
        ac = as_completed(loop=self.client.loop)
        no_workers = False
        stranded: list = []  # tasks whose results were being fetched when no worker was left
        fetching: deque = deque()  # batches whose results are being fetched, oldest first
        try:
            try:
                self._fill(it, ac)
                while self.inflight or not (self.exhausted or self.stop.is_set()):
                    if self.stop.is_set():
                        break
                    if ac.has_ready():  # a chunk's worth, while the workers stay busy
                        self._wait(ac, 0.0)
                    batch = ac.next_batch(block=False)
                    if not batch:
                        if fetching:  # nothing new: record what is being fetched
                            self._finish_batch(fetching.popleft(), handle)
                            continue
                        if self.on_idle is not None:
                            self.on_idle()
                        self._wait(ac, self.view.refresh_seconds)
                        if not ac.has_ready():  # nothing came: a look at the cluster
                            self.view.refresh()
                            if self._watchdog():
                                no_workers = True
                                break
                        self._fill(it, ac)
                        continue
                    # pipelined: this batch's results are fetched while new tasks are
                    # submitted and the batches fetched before it are recorded
                    fetching.append(self._start_batch(batch))
                    self._fill(it, ac)
                    while fetching and (len(fetching) > MAX_FETCHING or _fetched(fetching[0])):
                        self._finish_batch(fetching.popleft(), handle)
                while fetching and not no_workers:
                    self._finish_batch(fetching.popleft(), handle)
            except _StrandedError as exc:
                no_workers = True
                stranded = list(exc.tasks)
            for started in fetching:  # their results are stranded with the rest
                stranded.extend(t for t, _f in started[0])
            if self.stop.is_set() and (self.inflight or not self.exhausted):
                self.outcome = "stopped"
                self._abandon()
            elif no_workers:
                self.outcome = "no-workers"
                self._abandon()
                self.abandoned.extend(stranded)
            else:
                self.outcome = "done"
        finally:
            if self.on_exit is not None:
                self.on_exit()
        if no_workers:
            raise NoWorkersError(
                f"no Dask worker for {self.worker_wait:g} s and none pending: the run "
                f"stopped during {self.phase} with {len(self.abandoned)} task(s) waiting; "
                "what was done is saved; start workers (or check the batch jobs) and run "
                "again to resume (--worker-wait sets the wait)"
            )
        return self.outcome


# --------------------------------------------------------------------------------------
# Deadlines measured from the start on a worker
# --------------------------------------------------------------------------------------

#: Name of the scheduler plugin and of its handler.
_CLOCK_NAME = "fastspectro-orbit-clock"
_CLOCK_HANDLER = "fastspectro_group_elapsed"


class OrbitClock(SchedulerPlugin):
    """Scheduler plugin: the first start on a worker of each group of tasks (an orbit).

    A task calls :func:`group_elapsed` when it starts on a worker; the first call of a
    group starts the group's clock on the scheduler (its monotonic clock: no clock skew
    between nodes), every call returns the seconds since. At most ``keep`` groups are
    remembered (the oldest are forgotten: a window holds far fewer orbits).
    """

    name = _CLOCK_NAME

    def __init__(self, keep: int = 200_000) -> None:
        self.keep = keep
        self.starts: dict[str, float] = {}

    async def start(self, scheduler) -> None:
        scheduler.handlers[_CLOCK_HANDLER] = self.elapsed

    def elapsed(self, group: str) -> float:
        now = time.monotonic()
        first = self.starts.setdefault(group, now)
        if len(self.starts) > self.keep:
            for old in list(itertools.islice(self.starts, len(self.starts) - self.keep)):
                del self.starts[old]
        return now - first


def _has_clock(dask_scheduler=None) -> bool:
    return _CLOCK_HANDLER in dask_scheduler.handlers


def ensure_orbit_clock(client) -> bool:
    """Install :class:`OrbitClock` on the client's scheduler (once); ``False`` if it
    cannot be (e.g. the scheduler cannot import this package): deadlines then count from
    each task's own start."""
    try:
        if client.run_on_scheduler(_has_clock):
            return True
        client.register_plugin(OrbitClock(), name=_CLOCK_NAME)
        return bool(client.run_on_scheduler(_has_clock))
    except Exception as exc:
        logger.warning(
            "the scheduler has no orbit clock (%s): an orbit's timeout counts from each "
            "task's own start on a worker",
            exc,
        )
        return False


#: Per worker process: (scheduler address, group) -> this process's monotonic time of
#: the group's first start on a worker, learnt from the scheduler's clock once.
_group_starts: dict[tuple[str, str], float] = {}
_group_lock = threading.Lock()
#: Groups remembered per worker process (the oldest are forgotten: a window holds far
#: fewer orbits, and a forgotten group is just asked for again).
_GROUPS_KEPT = 4096


def group_elapsed(group: str | None) -> float:
    """On a worker, at a task's start: seconds since the first task of ``group`` started
    (0 for the first; 0 without a group or outside a worker).

    The scheduler's :class:`OrbitClock` is asked once per group and worker process (one
    round trip); the group's later tasks on this worker count from the answer with the
    local monotonic clock (the clocks of two nodes differ in origin, not in rate)."""
    if group is None:
        return 0.0
    now = time.monotonic()
    try:
        from distributed import get_worker
        from distributed.utils import sync

        worker = get_worker()
        name = (str(worker.scheduler.address), group)
        with _group_lock:
            start = _group_starts.get(name)
        if start is not None:
            return now - start
        got = float(sync(worker.loop, getattr(worker.scheduler, _CLOCK_HANDLER), group=group) or 0)
    except Exception:
        return 0.0
    with _group_lock:  # ``now`` precedes the answer: the start is never placed too late
        _group_starts.setdefault(name, now - got)
        while len(_group_starts) > _GROUPS_KEPT:
            del _group_starts[next(iter(_group_starts))]
    return got
