"""A killable place for work: a persistent child process with a per-call timeout.

A running Dask task cannot be stopped by the client (``Future.cancel`` only stops the
waiting), so a hung render (an infinite loop, a blocking read) would keep its worker
forever. Each call therefore runs in a persistent child process of the worker: when a
call exceeds its timeout the child is killed (SIGKILL), the call raises
:class:`~fastspectro_dask.errors.RenderTimeoutError`, the worker slot is free at once, and a
fresh child is started for the next call. A child that dies during a call (a crash, the OOM
killer) raises :class:`~fastspectro_dask.errors.WorkerLostError`.

The timeout of a call is measured from the moment its child is ready: the child confirms
that it has received and unpickled the call (which imports the function's module) before
the clock starts, so the start-up of a fresh child (a Python interpreter and its imports,
seconds on a busy node) never counts against the call that follows a killed one.

Children are started with the ``spawn`` method (never ``fork``: Dask workers run threads)
and ignore SIGINT: the process that owns them stops them (a Ctrl-C in a terminal reaches
the whole process group, and the client, not each child, decides what happens). Inside a
Dask worker this needs the worker process to be non-daemonic, i.e. the dask config
``distributed.worker.daemon: False`` (the pipeline's own LocalCluster sets it). Where a
child cannot be started, work runs inline, with one warning per process: the timeout is
then not enforced.

Children are kept in a per-process pool, so a worker whose executor threads come and go
keeps reusing warm children. :func:`stop_calls` kills the children running given calls
(the client's cancellation of render tasks), so cancelled work cannot write anything
afterwards.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.reduction import ForkingPickler
from typing import Any

from fastspectro_dask.errors import RenderTimeoutError, WorkerLostError

__all__ = ["DEFAULT_STARTUP_TIMEOUT", "Sandbox", "run_with_timeout", "stop_calls"]

logger = logging.getLogger(__name__)

#: Seconds a child may take to become ready for a call (interpreter start-up, imports,
#: unpickling the call); not counted against the call's own timeout.
DEFAULT_STARTUP_TIMEOUT = 300.0

_STARTED, _OK, _ERROR = "started", "ok", "error"


class _RemoteError(Exception):
    """Carries an exception that could not be pickled, as text."""


def _serve(conn) -> None:  # pragma: no cover - runs in the child process
    # The owner of this child stops it (kill on timeout, close, cancellation); a Ctrl-C
    # sent to the whole process group must not interrupt the work with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args, kwargs = pickle.loads(raw)
        except BaseException as exc:
            exc.__remote_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            if not _send_result(conn, (_ERROR, exc)):
                return
            continue
        if not _send(conn, (_STARTED, None)):  # ready: the caller's clock starts now
            return
        try:
            result = (_OK, fn(*args, **kwargs))
        except BaseException as exc:
            exc.__remote_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            result = (_ERROR, exc)
        if not _send_result(conn, result):
            return


def _send(conn, message: Any) -> bool:  # pragma: no cover - child side
    """Send; ``False`` when the owner is gone (it closed the pipe): the child just ends."""
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return False
    return True


def _send_result(conn, result: tuple[str, Any]) -> bool:  # pragma: no cover - child side
    try:
        return _send(conn, result)
    except Exception:  # the result or the exception itself was not picklable
        what = result[1]
        return _send(conn, (_ERROR, _RemoteError(f"{type(what).__name__}: {what}")))


# Process-wide bookkeeping: every sandbox of this process, the tags of cancelled calls,
# and whether children can be started here at all (decided once, warned about once).
_registry_lock = threading.Lock()
_registry: weakref.WeakSet[Sandbox] = weakref.WeakSet()
_cancelled: dict[str, None] = {}  # insertion-ordered set, bounded by _CANCELLED_KEEP
_CANCELLED_KEEP = 100_000
_inline_reason: str | None = None


class Sandbox:
    """One persistent child process that runs calls with a timeout.

    Parameters
    ----------
    start_method : str
        multiprocessing start method (default ``"spawn"``).
    startup_timeout : float or None
        Seconds the child may take to be ready for a call (start-up, imports, unpickling
        the call), not counted against the call's timeout (default
        :data:`DEFAULT_STARTUP_TIMEOUT`). A child that is not ready by then is killed
        and the call raises :class:`~fastspectro_dask.errors.WorkerLostError`.
    """

    def __init__(
        self, start_method: str = "spawn", startup_timeout: float | None = DEFAULT_STARTUP_TIMEOUT
    ) -> None:
        self._ctx = mp.get_context(start_method)
        self._proc: Any = None
        self._conn: Any = None
        self.startup_timeout = startup_timeout
        self.starts = 0  # children started (one, plus one after each kill or crash)
        self.inline = False  # True when children cannot be started here
        self.tag: str | None = None  # the tag of the call running now
        with _registry_lock:
            _registry.add(self)

    def _ensure(self) -> bool:
        global _inline_reason
        if self._proc is not None and self._proc.is_alive():
            return True
        if self.inline or _inline_reason is not None:
            self.inline = True
            return False
        try:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=_serve, args=(child,), daemon=True, name="fastspectro-sandbox"
            )
            proc.start()
        except AssertionError as exc:  # "daemonic processes are not allowed to have children"
            self.inline = True
            with _registry_lock:
                first = _inline_reason is None
                _inline_reason = str(exc)
            if first:  # once per process, not once per task
                logger.warning(
                    "cannot start a sandbox child here (%s): timeouts are not "
                    "enforced; set the dask config distributed.worker.daemon: False",
                    exc,
                )
            return False
        child.close()
        self._proc, self._conn = proc, parent
        self.starts += 1
        return True

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        tag: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` in the child; kill it after ``timeout`` seconds.

        ``fn`` must be picklable by reference (a module-level function). ``timeout`` is
        counted from the moment the child has the call in hand (see the module notes).

        Parameters
        ----------
        fn : callable
        *args, **kwargs
            Its arguments (picklable).
        timeout : float or None
            Seconds the call may run; ``None``: no limit.
        tag : str, optional
            A name of the call for :func:`stop_calls` (e.g. the Dask task key).

        Raises
        ------
        RenderTimeoutError
            The call ran longer than ``timeout``; the child was killed.
        WorkerLostError
            The child died during the call (or was killed by :func:`stop_calls`), or it
            did not become ready within ``startup_timeout``.
        """
        if not self._ensure():
            return fn(*args, **kwargs)
        payload = bytes(ForkingPickler.dumps((fn, args, kwargs)))  # as Connection.send
        with _registry_lock:
            if tag is not None and tag in _cancelled:
                raise WorkerLostError(f"call {tag} was cancelled before it started")
            self.tag = tag
        try:
            return self._call(payload, timeout)
        finally:
            self.tag = None

    def _call(self, payload: bytes, timeout: float | None) -> Any:
        try:
            self._conn.send_bytes(payload)
        except (BrokenPipeError, EOFError, OSError) as exc:
            self._discard()
            raise WorkerLostError(f"sandbox process gone before the call: {exc}") from exc
        if not self._conn.poll(self.startup_timeout):
            self._kill()
            raise WorkerLostError(
                f"sandbox process not ready for the call after {self.startup_timeout:g} s"
            )
        kind, payload_in = self._receive()
        if kind == _STARTED:
            t0 = time.monotonic()  # the call's clock starts when the child is ready
            if not self._conn.poll(timeout):
                self._kill()
                raise RenderTimeoutError(
                    f"stopped after {time.monotonic() - t0:.1f} s (timeout {timeout:g} s)"
                )
            kind, payload_in = self._receive()
        if kind == _OK:
            return payload_in
        raise payload_in

    def _receive(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as exc:
            if self._proc is not None:
                self._proc.join(1)
            code = self._proc.exitcode if self._proc is not None else None
            self._discard()
            raise WorkerLostError(
                f"sandbox process died during the call (exit code {code})"
            ) from exc

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


_idle: list[Sandbox] = []


def run_with_timeout(
    fn: Callable[..., Any], *args: Any, timeout: float | None, tag: str | None = None, **kwargs: Any
) -> Any:
    """Run in one of this process's persistent sandboxes (created on first use).

    Sandboxes are pooled per process: a call takes an idle one (or starts one) and gives
    it back, so warm children are reused whatever thread runs the call.

    Parameters
    ----------
    fn : callable
        A module-level function.
    *args, **kwargs
        Its arguments.
    timeout : float or None
        Seconds the call may run, from the moment its child is ready.
    tag : str, optional
        A name of the call, for :func:`stop_calls`.
    """
    with _registry_lock:
        box = _idle.pop() if _idle else None
    if box is None:
        box = Sandbox()
    try:
        return box.run(fn, *args, timeout=timeout, tag=tag, **kwargs)
    finally:
        with _registry_lock:
            _idle.append(box)


def stop_calls(tags: Iterable[str], wait: float = 30.0) -> int:
    """Kill the sandbox children running the calls named ``tags``, in this process.

    Calls with these tags that have not started yet are refused when they try. Returns
    once the killed children are gone (or after ``wait`` seconds), so that nothing they
    were doing can still write a file. Their callers raise
    :class:`~fastspectro_dask.errors.WorkerLostError`; fresh children replace them on the
    next call. Meant to be run on every worker (``Client.run``) when the client cancels
    tasks that use the sandbox.

    Parameters
    ----------
    tags : iterable of str
        The tags given to :func:`run_with_timeout`.
    wait : float
        Seconds to wait for the killed children to be gone.

    Returns
    -------
    int
        Number of children killed.
    """
    wanted = set(tags)
    with _registry_lock:
        for t in wanted:
            _cancelled[t] = None
        while len(_cancelled) > _CANCELLED_KEEP:
            del _cancelled[next(iter(_cancelled))]
        victims = [
            box._proc for box in list(_registry) if box.tag in wanted and box._proc is not None
        ]
    sentinels = []
    for proc in victims:
        try:
            proc.kill()
            sentinels.append(proc.sentinel)
        except (OSError, ValueError, AttributeError):  # already gone or closed
            continue
    deadline = time.monotonic() + wait
    while sentinels and time.monotonic() < deadline:
        ready = mp.connection.wait(sentinels, timeout=max(0.0, deadline - time.monotonic()))
        sentinels = [s for s in sentinels if s not in ready]
    return len(victims)
