"""Make or connect a Dask client: the given one, or a local cluster of processes.

Settings come from dask config (``dask.config``, ``~/.config/dask/*.yaml``,
``DASK_*`` environment variables), never re-invented here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

__all__ = ["client_context", "n_workers"]

logger = logging.getLogger(__name__)


def n_workers(client: Client) -> int:
    """Number of worker threads of a client's cluster (at least 1)."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


@contextlib.contextmanager
def client_context(
    client: Client | None = None,
    *,
    max_workers: int | None = None,
    dashboard_address: str | None = ":8787",
) -> Iterator[Client]:
    """Yield ``client``, or a new :class:`LocalCluster` client closed on exit.

    The local cluster has ``max_workers`` worker processes (default: the number of cores)
    with one thread each: matplotlib's ``Figure.draw`` takes a class-wide lock, so threads
    give no speed-up, and one thread per process keeps one render sandbox per worker.
    Workers are non-daemonic (``distributed.worker.daemon: False``) so that they can
    start the child processes in which renders run with a real timeout.
    """
    if client is not None:
        yield client
        return
    workers = max_workers or os.cpu_count() or 1
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard_address,
        )
        own = Client(cluster)
    try:
        logger.info("local Dask cluster: %d workers; dashboard %s", workers, own.dashboard_link)
        yield own
    finally:
        own.close()
        cluster.close()
