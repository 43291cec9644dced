"""The one error classification: same reason in the progress JSON and the extrema ledger."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from types import SimpleNamespace

import pytest
from distributed import KilledWorker
from distributed.client import FutureCancelledError

from fastspectro_dask import errors
from fastspectro_dask import extrema as ext
from fastspectro_dask.errors import (
    ERROR_REASONS,
    InvalidCDFError,
    PlottingError,
    RenderTimeoutError,
    WorkerLostError,
    error_reason,
)
from fastspectro_dask.extrema import compute_global_extrema
from fastspectro_dask.pipeline import _classify
from fastspectro_dask.synth import write_synthetic_dataset

#: What the scheduler gives KilledWorker as the last worker (only its address is used).
WORKER = SimpleNamespace(address="tcp://10.0.0.7:40123")

CASES = [
    (KilledWorker("task-1", WORKER, 3), "worker-lost"),
    (FutureCancelledError("task-1", "lost", "scheduler restarted"), "worker-lost"),
    (concurrent.futures.CancelledError(), "worker-lost"),
    (asyncio.CancelledError(), "worker-lost"),
    (WorkerLostError("segfault"), "worker-lost"),
    (RenderTimeoutError("slow"), "timeout"),
    (TimeoutError(), "timeout"),
    (InvalidCDFError("/x.cdf", "empty file"), "invalid-cdf"),
    (ZeroDivisionError(), "divide-by-zero"),
    (FloatingPointError(), "divide-by-zero"),
    (PlottingError("bad"), "plotting"),
    (ValueError("KilledWorker worker-lost timeout"), "generic"),  # never from the text
]


@pytest.mark.parametrize(("exc", "reason"), CASES, ids=lambda v: type(v).__name__)
def test_pipeline_and_extrema_classify_alike(exc, reason):
    assert error_reason(exc) == reason
    assert _classify(exc) == reason  # the pipeline's progress JSON
    assert reason in ERROR_REASONS


def test_dask_errors_by_class_name_subclasses_too():
    class KilledWorkerAgain(KilledWorker):
        pass

    assert error_reason(KilledWorkerAgain("t", WORKER, 1)) == "worker-lost"


def test_errors_module_does_not_import_distributed():
    lines = Path(errors.__file__).read_text(encoding="utf-8").splitlines()
    imported = {ln.split()[1].split(".")[0] for ln in lines if ln.startswith(("import ", "from "))}
    assert imported and "distributed" not in imported and "dask" not in imported


def test_killed_worker_is_worker_lost_in_the_extrema_ledger(tmp_path, monkeypatch):
    """The review's bug: a KilledWorker was "generic" in the ledger, "worker-lost" in
    progress. A pass-1 task that Dask reports as killed is now "worker-lost" in both."""
    root = tmp_path / "data"
    write_synthetic_dataset(root, orbits=2, records=16, seed=5)
    real = ext._pass1_file

    def killed_for_ees(path, key, instrument, *args, **kw):
        if instrument == "ees":
            raise KilledWorker(f"extrema-pass1-{instrument}", WORKER, 3)
        return real(path, key, instrument, *args, **kw)

    monkeypatch.setattr(ext, "_pass1_file", killed_for_ees)
    state = compute_global_extrema(
        root, "linear", "log", extrema_json_path=tmp_path / "out" / "extrema.json"
    )
    statuses = {e["instrument"]: e["status"] for e in state["files"].values()}
    assert statuses["ees"] == "worker-lost"
    assert {s for i, s in statuses.items() if i != "ees"} == {"counted"}
    assert all("KilledWorker" in m for m in state["errors"].values())
