"""Make or connect a Dask client: the given one, a local cluster, a scheduler, dask-jobqueue.

Settings come from dask config (``dask.config``, ``~/.config/dask/*.yaml`` such as
``jobqueue.yaml``, ``DASK_*`` environment variables such as
``DASK_JOBQUEUE__SLURM__QUEUE``), never re-invented here: :func:`make_cluster` passes
to ``SLURMCluster``/``PBSCluster`` only the keywords the user gave.

Render tasks run in a child process of their worker (the killable sandbox), which needs
non-daemonic worker processes (``distributed.worker.daemon: False``). The local cluster
is made under that setting; a dask-jobqueue job script gets
``export DASK_DISTRIBUTED__WORKER__DAEMON=False`` in its prologue, which the
``dask worker`` command of the job reads when dask imports its config (the nanny reads
``distributed.worker.daemon`` when it starts the worker process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

__all__ = [
    "CLUSTER_KINDS",
    "DAEMON_ENV_LINE",
    "DEFAULT_DASHBOARD_ADDRESS",
    "MONITOR_INTERVALS",
    "ClusterConfigError",
    "JobqueueMissingError",
    "WorkerTerminalPlugin",
    "check_jobqueue",
    "client_context",
    "connect_client",
    "expected_worker_threads",
    "make_cluster",
    "n_workers",
    "parse_adapt",
    "parse_cluster_kwarg",
    "parse_cluster_kwargs",
    "performance_report_context",
]

logger = logging.getLogger(__name__)

#: The ``--cluster`` choices.
CLUSTER_KINDS: tuple[str, ...] = ("local", "slurm", "pbs")
#: dask-jobqueue cluster class per kind.
_JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}
#: Job-script line that makes the job's worker processes non-daemonic.
DAEMON_ENV_LINE = "export DASK_DISTRIBUTED__WORKER__DAEMON=False"
#: Set on a cluster made by :func:`make_cluster`: worker threads it will have at most.
_PLANNED_ATTR = "_fastspectro_planned_threads"
#: Set on a jobqueue cluster of a fixed number of jobs made by :func:`make_cluster`: that
#: number, which :class:`fastspectro_dask.schedule.ClusterView` keeps up (lost jobs resubmitted).
JOBS_ATTR = "_fastspectro_jobs"
#: Where the dashboard of a cluster we make listens: loopback only, unless the user opens
#: it (``dashboard_address=":8787"`` / ``--dashboard-address :8787`` for every interface).
DEFAULT_DASHBOARD_ADDRESS = "127.0.0.1:8787"


class JobqueueMissingError(ImportError):
    """``--cluster slurm|pbs`` was asked for but dask-jobqueue is not installed."""


class ClusterConfigError(ValueError):
    """The cluster cannot be made with the given options (unknown keyword, no cores...)."""


def n_workers(client: Client) -> int:
    """Number of worker threads of a client's cluster (at least 1)."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def expected_worker_threads(client: Client) -> int:
    """Worker threads the cluster has now, or will have once its jobs run (at least 1).

    A dask-jobqueue cluster starts with no worker: its jobs wait in the batch queue. For
    such a cluster made by :func:`make_cluster` this is the number of threads of all the
    jobs asked for (``--jobs``) or of the adaptive maximum (``--adapt``), so the caller
    can size its window of tasks in flight for the cluster it will get.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    int
    """
    planned = int(getattr(getattr(client, "cluster", None), _PLANNED_ATTR, 0) or 0)
    return max(n_workers(client), planned)


class _TaskErrorsToLog(logging.Filter):
    """On a worker: distributed's multi-line "Compute Failed ... Traceback" record goes to
    the package log (INFO, which the run forwards to its log file), not to the terminal.

    The run reports each failed task itself, in one line; the traceback stays available
    in the log file.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Compute Failed")):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 5:  # key, state, task, exception text, traceback text
            key, _state, _task, exc_text, tb_text = args
            logging.getLogger(__name__).info(
                "task %s failed on a worker: %s\n%s", key, exc_text, str(tb_text).rstrip()
            )
        else:  # another version's layout: keep the whole message
            logging.getLogger(__name__).info("task failed on a worker: %s", record.getMessage())
        return False


class WorkerTerminalPlugin(WorkerPlugin):
    """Worker plugin for the clusters fastspectro makes on this machine.

    * The worker process ignores SIGINT: a Ctrl-C in a terminal reaches the whole process
      group, and the client, which handles it, stops the workers (no KeyboardInterrupt
      tracebacks from each worker).
    * distributed's per-task "Compute Failed" error blocks go to the package log (and so
      to the run's log file), not to the terminal.
    """

    name = "fastspectro-worker-terminal"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        log = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _TaskErrorsToLog) for f in log.filters):
            log.addFilter(_TaskErrorsToLog())


@contextlib.contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """While worker processes are spawned, SIGINT is ignored (a disposition children
    inherit, so the interpreter in each worker never installs its KeyboardInterrupt
    handler). Only from the main thread; restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


#: Least intervals of the local cluster's periodic monitors, which run in the client's
#: process (the scheduler and the nannies live there) and share its one event-loop thread
#: with the scheduling of every task: each nanny's memory monitor (distributed's default
#: 100 ms) and the scheduler's system monitor (500 ms; the dashboard's System page). Their
#: ``psutil`` reads took ~10 % of that thread in ``benchmarks/bench_pipeline.py``'s dry
#: run. A longer interval set in the user's dask config is kept.
MONITOR_INTERVALS = {
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


def _monitor_intervals() -> dict[str, str]:
    """:data:`MONITOR_INTERVALS`, or the user's dask config where it asks for longer."""
    return {
        key: least
        for key, least in MONITOR_INTERVALS.items()
        if parse_timedelta(dask.config.get(key, least)) < parse_timedelta(least)
    }


@contextlib.contextmanager
def client_context(
    client: Client | None = None,
    *,
    max_workers: int | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS,
) -> Iterator[Client]:
    """Yield ``client``, or a new :class:`LocalCluster` client closed on exit.

    The local cluster has ``max_workers`` worker processes (default: the number of cores)
    with one thread each: matplotlib's ``Figure.draw`` takes a class-wide lock, so threads
    give no speed-up, and one thread per process keeps one render sandbox per worker.
    Workers are non-daemonic (``distributed.worker.daemon: False``) so that they can
    start the child processes in which renders run with a real timeout. They ignore
    SIGINT (the client stops them; a Ctrl-C while they start takes no effect) and keep
    distributed's per-task error blocks out of the terminal
    (:class:`WorkerTerminalPlugin`). Its monitors poll at :data:`MONITOR_INTERVALS` at
    most. A given ``client`` is used as it is.

    Parameters
    ----------
    client : distributed.Client, optional
        Use this one (not closed on exit).
    max_workers : int, optional
        Worker processes of the local cluster (default: cores).
    dashboard_address : str or None
        Where the dashboard listens (default loopback, :data:`DEFAULT_DASHBOARD_ADDRESS`;
        ``":8787"`` opens it on every interface; ``None`` disables it).
    """
    if client is not None:
        yield client
        return
    workers = max_workers or os.cpu_count() or 1
    # held while the cluster lives: the nanny reads it again when it restarts a worker (a
    # killed one), which would otherwise come back daemonic, without render sandboxes
    daemon = dask.config.set({"distributed.worker.daemon": False, **_monitor_intervals()})
    with _sigint_ignored_by_children():
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard_address,
        )
        own = Client(cluster)
    try:
        try:  # also for workers that the nanny restarts later
            own.register_plugin(WorkerTerminalPlugin(), name=WorkerTerminalPlugin.name)
        except Exception as exc:  # pragma: no cover - cosmetic only
            logger.debug("could not register the worker terminal plugin: %s", exc)
        logger.info("local Dask cluster: %d workers; dashboard %s", workers, own.dashboard_link)
        yield own
    finally:
        own.close()
        cluster.close()
        daemon.__exit__(None, None, None)


def connect_client(
    scheduler_address: str | None = None,
    scheduler_file: str | os.PathLike[str] | None = None,
) -> Client | None:
    """A client of a running scheduler, or ``None`` when neither is given.

    Parameters
    ----------
    scheduler_address : str, optional
        ``tcp://host:8786``.
    scheduler_file : path-like, optional
        A scheduler file written by ``dask scheduler --scheduler-file``.

    Returns
    -------
    distributed.Client or None
        The caller closes it.
    """
    if scheduler_address and scheduler_file:
        raise ValueError("give scheduler_address or scheduler_file, not both")
    if scheduler_file:
        return Client(scheduler_file=os.fspath(scheduler_file))
    if scheduler_address:
        return Client(scheduler_address)
    return None


# --------------------------------------------------------------------------------------
# --cluster-kw and --adapt parsing
# --------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.strip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} looks like JSON but is not valid: {exc}") from exc
    return text


def parse_cluster_kwarg(item: str) -> tuple[str, Any]:
    """Parse one ``key=value`` of ``--cluster-kw``.

    The key's dashes become underscores (``job-cpu`` is ``job_cpu``, as in
    ``jobqueue.yaml``). The value becomes a bool (``true``/``false``/``yes``/``no``/
    ``on``/``off``), ``None`` (``none``/``null``), an int, a float, a JSON list or object
    (text starting with ``[`` or ``{``), or else stays a string (``16GB``, ``01:00:00``).

    Parameters
    ----------
    item : str

    Returns
    -------
    tuple of (str, object)

    Raises
    ------
    ValueError
        No ``=``, an empty or invalid key, or malformed JSON.

    Examples
    --------
    >>> parse_cluster_kwarg("cores=8")
    ('cores', 8)
    >>> parse_cluster_kwarg("memory=16GB")
    ('memory', '16GB')
    >>> parse_cluster_kwarg('job-extra-directives=["--gres=gpu:1"]')
    ('job_extra_directives', ['--gres=gpu:1'])
    """
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise ValueError(f"expected key=value (e.g. cores=8), got {item!r}")
    return key, _parse_value(value)


def parse_cluster_kwargs(items: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """Parse ``--cluster-kw`` items (``key=value`` strings or parsed pairs) into a dict.

    A key given twice keeps its last value (with a warning).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_cluster_kwarg(item) if isinstance(item, str) else item
        if key in out:
            logger.warning("--cluster-kw %s given twice; using %r", key, value)
        out[key] = value
    return out


def parse_adapt(text: str) -> tuple[int, int]:
    """Parse ``--adapt MIN:MAX`` (numbers of jobs) into ``(MIN, MAX)``.

    Raises
    ------
    ValueError
        Not two integers, a negative one, ``MIN > MAX`` or ``MAX == 0``.
    """
    lo, sep, hi = text.partition(":")
    try:
        mn, mx = int(lo), int(hi)
    except ValueError:
        raise ValueError(f"expected MIN:MAX numbers of jobs (e.g. 0:10), got {text!r}") from None
    if not sep or mn < 0 or mx < 1 or mn > mx:
        raise ValueError(f"expected 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return mn, mx


# --------------------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------------------


def _jobqueue_class(kind: str):
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise JobqueueMissingError(
            f"--cluster {kind} needs dask-jobqueue, which is not installed. Install it with "
            "pip install 'fastspectro_dask[jobqueue]' (or: pip install dask-jobqueue, "
            "conda install -c conda-forge dask-jobqueue)."
        ) from exc
    return getattr(dask_jobqueue, _JOBQUEUE_CLASSES[kind])


def check_jobqueue(kind: str) -> None:
    """Raise :class:`JobqueueMissingError` (with the line to install it) when the
    dask-jobqueue cluster class of ``kind`` (``"slurm"``, ``"pbs"``) cannot be imported."""
    _jobqueue_class(kind)


def _with_daemon_prologue(kind: str, kwargs: dict[str, Any]) -> list[str]:
    """The job-script prologue: the user's (or the config's) plus the daemon setting."""
    if "job_script_prologue" in kwargs:
        prologue = kwargs["job_script_prologue"]
    elif "env_extra" in kwargs:  # the deprecated keyword: taken over, not lost
        prologue = kwargs.pop("env_extra")
    else:
        prologue = dask.config.get(f"jobqueue.{kind}.job-script-prologue", None)
        if not prologue:  # the deprecated spelling, still honoured by dask-jobqueue
            prologue = dask.config.get(f"jobqueue.{kind}.env-extra", None)
    if isinstance(prologue, str):
        prologue = [prologue]
    prologue = list(prologue or [])
    if not any("DASK_DISTRIBUTED__WORKER__DAEMON" in line for line in prologue):
        prologue.append(DAEMON_ENV_LINE)
    return prologue


def _with_dashboard_address(
    kind: str, cluster_kwargs: Mapping[str, Any], dashboard_address: str | None
) -> dict[str, Any]:
    """``cluster_kwargs`` with the dashboard address in ``scheduler_options``, unless the
    user's keyword or dask config already sets it (dask-jobqueue's own default is
    ``":8787"``, every interface)."""
    kwargs = dict(cluster_kwargs)
    options = kwargs.get("scheduler_options")
    if options is None:
        options = dask.config.get(f"jobqueue.{kind}.scheduler-options", None) or {}
    options = dict(options)
    if "dashboard_address" not in options and dashboard_address is not None:
        options["dashboard_address"] = dashboard_address
        kwargs["scheduler_options"] = options
    return kwargs


def _jobqueue_cluster(kind: str, cluster_kwargs: Mapping[str, Any]):
    cls = _jobqueue_class(kind)
    kwargs = dict(cluster_kwargs)
    kwargs["job_script_prologue"] = _with_daemon_prologue(kind, kwargs)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ClusterConfigError(
            f"cannot make a {cls.__name__} with {dict(cluster_kwargs)}: {exc} "
            f"(defaults come from the jobqueue.{kind} section of the dask config, "
            "e.g. ~/.config/dask/jobqueue.yaml)"
        ) from exc


@contextlib.contextmanager
def make_cluster(
    kind: str = "local",
    *,
    jobs: int | None = None,
    adapt: tuple[int, int] | None = None,
    cluster_kwargs: Mapping[str, Any] | None = None,
    max_workers: int | None = None,
    dashboard_address: str | None = DEFAULT_DASHBOARD_ADDRESS,
) -> Iterator[Client]:
    """Make a cluster of the given kind and yield a client of it; both closed on exit.

    Parameters
    ----------
    kind : {"local", "slurm", "pbs"}
        ``local``: a :class:`~distributed.LocalCluster` of ``max_workers`` processes with one
        thread each (see :func:`client_context`). ``slurm``/``pbs``: a dask-jobqueue
        ``SLURMCluster``/``PBSCluster`` whose jobs each run ``dask worker``.
    jobs : int, optional
        Batch jobs to ask for (``cluster.scale(jobs=jobs)``). Default 1 when ``adapt`` is
        not given either.
    adapt : (int, int), optional
        Adaptive scaling between ``MIN`` and ``MAX`` jobs
        (``cluster.adapt(minimum_jobs=MIN, maximum_jobs=MAX)``).
    cluster_kwargs : mapping, optional
        Keywords of ``SLURMCluster``/``PBSCluster`` (``cores``, ``memory``, ``processes``,
        ``queue``, ``account``, ``walltime``, ``interface``, ``job_extra_directives``...).
        Only these are passed: everything else comes from the ``jobqueue.<kind>`` section
        of the dask config. ``job_script_prologue`` (the user's or the config's) gets
        :data:`DAEMON_ENV_LINE` appended, so the job's workers are non-daemonic and can
        start render sandboxes, unless it already sets that variable.
    max_workers : int, optional
        Worker processes of the local cluster (default: cores).
    dashboard_address : str, optional
        Where the dashboard listens: loopback by default
        (:data:`DEFAULT_DASHBOARD_ADDRESS`), ``":8787"`` for every interface. For a
        jobqueue cluster it goes into ``scheduler_options`` unless those (the keyword or
        the ``jobqueue.<kind>.scheduler-options`` config) already name one.

    Yields
    ------
    distributed.Client

    Raises
    ------
    JobqueueMissingError
        ``slurm``/``pbs`` without dask-jobqueue installed (an :class:`ImportError`).
    ClusterConfigError
        The jobqueue cluster refused the keywords (a :class:`ValueError`).
    ValueError
        Unknown ``kind``, or options that do not apply to it.
    """
    if kind not in CLUSTER_KINDS:
        raise ValueError(f"unknown cluster kind {kind!r}; use one of {CLUSTER_KINDS}")
    if jobs is not None and adapt is not None:
        raise ValueError("give jobs or adapt, not both")
    if kind == "local":
        if jobs is not None or adapt is not None or cluster_kwargs:
            raise ValueError("jobs, adapt and cluster_kwargs are for slurm/pbs clusters")
        with client_context(
            None, max_workers=max_workers, dashboard_address=dashboard_address
        ) as client:
            yield client
        return
    if jobs is not None and jobs < 1:
        raise ValueError("jobs must be >= 1")
    cluster = _jobqueue_cluster(
        kind, _with_dashboard_address(kind, cluster_kwargs or {}, dashboard_address)
    )
    try:
        logger.info("%s job script:\n%s", type(cluster).__name__, cluster.job_script())
        threads = _threads_per_job(cluster)
        if adapt is not None:
            cluster.adapt(minimum_jobs=adapt[0], maximum_jobs=adapt[1])
            setattr(cluster, _PLANNED_ATTR, threads * adapt[1])
            logger.info("%s: adaptive, %d to %d jobs", type(cluster).__name__, *adapt)
        else:
            cluster.scale(jobs=jobs or 1)
            setattr(cluster, _PLANNED_ATTR, threads * (jobs or 1))
            # the scheduling loop submits lost jobs again up to this number (--jobs N)
            setattr(cluster, JOBS_ATTR, jobs or 1)
            logger.info("%s: %d job(s) submitted", type(cluster).__name__, jobs or 1)
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    try:
        logger.info("dashboard %s", client.dashboard_link)
        yield client
    finally:
        client.close()
        cluster.close()


def _threads_per_job(cluster: Any) -> int:
    """Worker threads one job of a jobqueue cluster provides (its ``cores``)."""
    try:
        return max(1, int(cluster._dummy_job.worker_cores))
    except Exception:  # pragma: no cover - a jobqueue version without it
        return 1


@contextlib.contextmanager
def performance_report_context(filename: str | os.PathLike[str] | None) -> Iterator[None]:
    """Wrap a block in :func:`distributed.performance_report` (a no-op for ``None``).

    The report (task stream, worker profile, bandwidth, the scheduler's system
    monitor, as one static HTML file) is written when the block exits, also after an
    exception. A Dask client must be current (made before entering).

    Parameters
    ----------
    filename : path-like or None
        Where to write the HTML file; its folder is created.
    """
    if filename is None:
        yield
        return
    from distributed import performance_report

    path = Path(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    with performance_report(filename=os.fspath(path)):
        yield
    logger.info("performance report written to %s", path)
