"""The killable sandbox that makes render timeouts real."""

from __future__ import annotations

import os
import time

import pytest

from fastspectro_dask.errors import RenderTimeoutError, WorkerLostError, error_reason
from fastspectro_dask.sandbox import Sandbox


def add(a, b):
    return a + b


def hang():
    while True:
        pass


def boom():
    raise ZeroDivisionError("deliberate")


def die():
    os._exit(3)


def pid():
    return os.getpid()


@pytest.fixture(scope="module")
def box():
    b = Sandbox()
    yield b
    b.close()


def test_runs_in_a_persistent_child(box):
    assert box.run(add, 2, 3, timeout=60) == 5
    first = box.run(pid, timeout=60)
    assert first != os.getpid() and box.run(pid, timeout=60) == first


def test_timeout_kills_and_next_call_works(box):
    t0 = time.monotonic()
    with pytest.raises(RenderTimeoutError) as info:
        box.run(hang, timeout=1.0)
    assert 1.0 <= time.monotonic() - t0 < 10
    assert error_reason(info.value) == "timeout"
    starts = box.starts
    assert box.run(add, 1, 1, timeout=60) == 2
    assert box.starts == starts + 1  # a fresh child replaced the killed one


def test_exceptions_come_back_with_their_type(box):
    with pytest.raises(ZeroDivisionError, match="deliberate"):
        box.run(boom, timeout=60)
    assert box.run(add, 1, 2, timeout=60) == 3  # the child survived


def test_dead_child_is_worker_lost(box):
    with pytest.raises(WorkerLostError) as info:
        box.run(die, timeout=60)
    assert error_reason(info.value) == "worker-lost"
    assert box.run(add, 4, 4, timeout=60) == 8


def sigint_self():
    import signal

    os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C to the whole process group would
    return "still here"


def block_until_killed(marker):
    from pathlib import Path

    Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


def test_child_ignores_sigint(box):
    """The owner stops the child; a Ctrl-C to the process group must not interrupt it."""
    assert box.run(sigint_self, timeout=60) == "still here"


def test_startup_of_a_fresh_child_is_not_counted_against_the_timeout():
    """After a hung call is killed, the next call's fresh child starts (interpreter,
    imports): that start-up must not make an ordinary call time out (issue 13.5)."""
    b = Sandbox()
    try:
        with pytest.raises(RenderTimeoutError):
            b.run(hang, timeout=1.0)
        from tests import _slow_import  # the parent has it; the fresh child must import it

        # the import alone takes longer than the timeout; the call itself is instant (the
        # timeout leaves it room on a loaded machine)
        assert _slow_import.IMPORT_SECONDS > 3.0
        assert b.run(_slow_import.quick, timeout=3.0) == 42
        assert b.starts == 2
    finally:
        b.close()


def test_a_child_that_never_gets_ready_is_worker_lost():
    from tests import _slow_import

    b = Sandbox(startup_timeout=0.5)  # shorter than the slow import
    try:
        with pytest.raises(WorkerLostError, match="not ready"):
            b.run(_slow_import.quick, timeout=60)
    finally:
        b.close()


def test_inline_fallback_warns_once_per_process(monkeypatch, caplog):
    """Where children cannot start (daemonic Dask workers), the warning is logged once per
    process, not once per task (issue 13.11)."""
    import multiprocessing as mp

    from fastspectro_dask import sandbox

    real = mp.get_context("spawn")

    class DaemonicContext:
        Pipe = staticmethod(real.Pipe)

        class Process:
            def __init__(self, *a, **kw):
                pass

            def start(self):
                raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(sandbox.mp, "get_context", lambda method: DaemonicContext)
    monkeypatch.setattr(sandbox, "_inline_reason", None)
    with caplog.at_level("WARNING", logger="fastspectro_dask.sandbox"):
        results = [Sandbox().run(add, k, 1, timeout=5) for k in range(5)]
    assert results == [1, 2, 3, 4, 5]  # ran inline
    warnings = [r for r in caplog.records if "cannot start a sandbox child" in r.getMessage()]
    assert len(warnings) == 1


def test_stop_calls_kills_the_running_call_and_refuses_it_later(tmp_path):
    import threading

    from fastspectro_dask.sandbox import run_with_timeout, stop_calls

    marker = tmp_path / "running"
    outcome: list[BaseException | object] = []

    def call():
        try:
            outcome.append(
                run_with_timeout(block_until_killed, str(marker), timeout=None, tag="job-1")
            )
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    while not marker.exists() and t.is_alive():  # the child is inside the call
        time.sleep(0.01)
    child = int(marker.read_text())
    assert stop_calls(["job-1"]) == 1
    t.join(60)
    assert not t.is_alive() and isinstance(outcome[0], WorkerLostError)
    with pytest.raises(ProcessLookupError):  # the child is gone: it cannot write anything
        os.kill(child, 0)
    with pytest.raises(WorkerLostError, match="cancelled"):
        run_with_timeout(add, 1, 1, timeout=60, tag="job-1")
    assert run_with_timeout(add, 1, 1, timeout=60, tag="job-2") == 2
