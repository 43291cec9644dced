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
