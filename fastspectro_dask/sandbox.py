"""A killable place for work: a persistent child process with a per-call timeout.

A running Dask task cannot be stopped by the client (``Future.cancel`` only stops the
waiting), so a hung render (an infinite loop, a blocking read) would keep its worker
forever. Each worker thread therefore runs the work in its own persistent child process:
when a call exceeds its timeout the child is killed (SIGKILL), the call raises
:class:`~fastspectro_dask.errors.RenderTimeoutError`, the worker slot is free at once, and a
fresh child is started for the next call. A child that dies during a call (a crash, the OOM
killer) raises :class:`~fastspectro_dask.errors.WorkerLostError`.

Children are started with the ``spawn`` method (never ``fork``: Dask workers run threads).
Inside a Dask worker this needs the worker process to be non-daemonic, i.e. the dask config
``distributed.worker.daemon: False`` (the pipeline's own LocalCluster sets it). Where a
child cannot be started, work runs inline with a warning: the timeout is then not enforced.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from fastspectro_dask.errors import RenderTimeoutError, WorkerLostError

__all__ = ["Sandbox", "run_with_timeout"]

logger = logging.getLogger(__name__)


class _RemoteError(Exception):
    """Carries an exception that could not be pickled, as text."""


def _serve(conn) -> None:  # pragma: no cover - runs in the child process
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            result = (True, fn(*args, **kwargs))
        except BaseException as exc:
            exc.__remote_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            result = (False, exc)
        try:
            conn.send(result)
        except Exception:  # the exception itself was not picklable
            conn.send((False, _RemoteError(f"{type(result[1]).__name__}: {result[1]}")))


class Sandbox:
    """One persistent child process that runs calls with a timeout.

    Parameters
    ----------
    start_method : str
        multiprocessing start method (default ``"spawn"``).
    """

    def __init__(self, start_method: str = "spawn") -> None:
        self._ctx = mp.get_context(start_method)
        self._proc: Any = None
        self._conn: Any = None
        self.starts = 0  # children started (one, plus one after each kill or crash)
        self.inline = False  # True when children cannot be started here

    def _ensure(self) -> bool:
        if self._proc is not None and self._proc.is_alive():
            return True
        if self.inline:
            return False
        try:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=_serve, args=(child,), daemon=True, name="fastspectro-sandbox"
            )
            proc.start()
        except AssertionError as exc:  # "daemonic processes are not allowed to have children"
            logger.warning(
                "cannot start a sandbox child here (%s): timeouts are not "
                "enforced; set the dask config distributed.worker.daemon: False",
                exc,
            )
            self.inline = True
            return False
        child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1
        return True

    def run(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child; kill it after ``timeout`` seconds.

        ``fn`` must be picklable by reference (a module-level function).

        Raises
        ------
        RenderTimeoutError
            The call ran longer than ``timeout``; the child was killed.
        WorkerLostError
            The child died during the call.
        """
        if not self._ensure():
            return fn(*args, **kwargs)
        t0 = time.monotonic()
        try:
            self._conn.send((fn, args, kwargs))
        except (BrokenPipeError, EOFError, OSError) as exc:
            self._discard()
            raise WorkerLostError(f"sandbox process gone before the call: {exc}") from exc
        if not self._conn.poll(timeout):
            self._kill()
            raise RenderTimeoutError(
                f"stopped after {time.monotonic() - t0:.1f} s (timeout {timeout:g} s)"
            )
        try:
            ok, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            if self._proc is not None:
                self._proc.join(1)
            code = self._proc.exitcode if self._proc is not None else None
            self._discard()
            raise WorkerLostError(
                f"sandbox process died during the call (exit code {code})"
            ) from exc
        if ok:
            return payload
        raise payload

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        """Stop the child."""
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.close()
                self._proc.join(2)
            finally:
                if self._proc.is_alive():
                    self._proc.kill()
                    self._proc.join(2)
        self._discard()


_local = threading.local()


def run_with_timeout(
    fn: Callable[..., Any], *args: Any, timeout: float | None, **kwargs: Any
) -> Any:
    """Run in this thread's persistent sandbox (created on first use)."""
    box = getattr(_local, "sandbox", None)
    if box is None:
        box = _local.sandbox = Sandbox()
    return box.run(fn, *args, timeout=timeout, **kwargs)
