"""Tests of buffered file logging and of forwarding worker log records."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from fastspectro_dask.logbuffer import (
    FlushCountingMemoryHandler,
    buffered_file_logging,
    forward_worker_logs,
    unforward_worker_logs,
)

LINE_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) +"
    r"(?P<name>[\w.]+)(?: \[worker [^\]]+\])?: (?P<msg>.*)$"
)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def pkg_logger():
    """The package logger, with its level restored afterwards."""
    log = logging.getLogger("fastspectro_dask")
    old = log.level
    yield log
    log.setLevel(old)


def test_written_only_every_capacity_records(tmp_path: Path, pkg_logger) -> None:
    child = logging.getLogger("fastspectro_dask.pipeline")
    with buffered_file_logging(tmp_path, capacity=4, filename="run.log") as log:
        assert log.path == tmp_path / "run.log"
        for i in range(1, 11):
            child.info("record %d", i)
            assert log.flushes == i // 4
            assert len(lines(log.path)) == 4 * (i // 4)
            assert log.buffered == i % 4
        # an ERROR does not force a write (count-only batching)
        child.error("an error")
        assert log.flushes == 2 and log.buffered == 3
        log.flush()
        assert log.flushes == 3
        assert len(lines(log.path)) == 11
        log.flush()  # empty buffer: not a write
        assert log.flushes == 3
    assert log.records_written == 11


def test_flush_level_option(tmp_path: Path, pkg_logger) -> None:
    child = logging.getLogger("fastspectro_dask.x")
    with buffered_file_logging(
        tmp_path, capacity=100, filename="f.log", flush_level=logging.ERROR
    ) as log:
        child.info("a")
        assert log.flushes == 0
        child.error("b")
        assert log.flushes == 1
        assert len(lines(log.path)) == 2


def test_flushed_at_exit_and_format(tmp_path: Path, pkg_logger) -> None:
    with buffered_file_logging(tmp_path, capacity=50) as log:
        logging.getLogger("fastspectro_dask.state").info("hello %s", "state")
        logging.getLogger("fastspectro_dask").warning("careful")
        logging.getLogger("fastspectro_dask.x").debug("not at INFO")
        logging.getLogger("other").error("other logger")
        assert lines(log.path) == []
    assert re.fullmatch(r"fastspectro-\d{8}T\d{6}Z\.log", log.path.name)
    got = lines(log.path)
    assert len(got) == 2
    matches = [LINE_RE.match(line) for line in got]
    assert all(matches), got
    assert [m.group(1) for m in matches] == ["INFO", "WARNING"]
    assert [m.group("name") for m in matches] == ["fastspectro_dask.state", "fastspectro_dask"]
    assert [m.group("msg") for m in matches] == ["hello state", "careful"]
    assert log.flushes == 1


def test_flushed_on_exception_and_cleanup(tmp_path: Path, pkg_logger) -> None:
    pkg_logger.setLevel(logging.NOTSET)
    before = list(pkg_logger.handlers)
    with pytest.raises(RuntimeError, match="boom"):
        with buffered_file_logging(tmp_path, capacity=10, filename="e.log") as log:
            assert pkg_logger.level == logging.INFO
            assert any(isinstance(h, FlushCountingMemoryHandler) for h in pkg_logger.handlers)
            logging.getLogger("fastspectro_dask.pipeline").info("before the crash")
            raise RuntimeError("boom")
    assert [LINE_RE.match(line).group("msg") for line in lines(log.path)] == ["before the crash"]
    assert pkg_logger.handlers == before
    assert pkg_logger.level == logging.NOTSET
    assert log.handler.target is None  # closed
    # records after exit do not reach the file
    logging.getLogger("fastspectro_dask.pipeline").warning("after")
    assert len(lines(log.path)) == 1


def test_more_verbose_level_kept(tmp_path: Path, pkg_logger) -> None:
    pkg_logger.setLevel(logging.DEBUG)
    with buffered_file_logging(tmp_path, capacity=10, filename="d.log", level=logging.WARNING):
        assert pkg_logger.level == logging.DEBUG
        logging.getLogger("fastspectro_dask.a").info("dropped by the handler level")
        logging.getLogger("fastspectro_dask.a").warning("kept")
    assert len(lines(tmp_path / "d.log")) == 1
    assert pkg_logger.level == logging.DEBUG


def test_bad_capacity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="capacity"):
        with buffered_file_logging(tmp_path, capacity=0, filename="z.log"):
            pass  # pragma: no cover


def test_forward_worker_logs_missing_api(caplog: pytest.LogCaptureFixture) -> None:
    class OldClient:
        pass

    with caplog.at_level(logging.DEBUG, logger="fastspectro_dask.logbuffer"):
        assert forward_worker_logs(OldClient()) is False
    assert "forward_logging is not available" in caplog.text


def _log_on_worker(text: str) -> int:
    import logging
    import os

    logging.getLogger("fastspectro_dask.something").info("%s from pid %d", text, os.getpid())
    return os.getpid()


def test_worker_logs_forwarded_to_file(tmp_path: Path, pkg_logger) -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        with buffered_file_logging(tmp_path, capacity=100, filename="w.log") as log:
            assert forward_worker_logs(client) is True
            pid = client.submit(_log_on_worker, "hello", pure=False).result(timeout=120)
            deadline = time.monotonic() + 120  # a bound on a hang
            while log.buffered == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # records arrive asynchronously on the event stream
            assert log.flushes == 0
            log.flush()
            assert log.flushes == 1
            unforward_worker_logs(client)
    got = lines(log.path)
    assert len(got) == 1, got
    m = LINE_RE.match(got[0])
    assert m and m.group(1) == "INFO"
    assert m.group("name") == "fastspectro_dask.something"
    assert m.group("msg") == f"hello from pid {pid}"
    assert "[worker tcp://" in got[0]


def _worker_plugins(dask_worker) -> list[str]:
    return sorted(dask_worker.plugins)


def test_pipeline_undoes_forwarding_on_a_users_client(
    tmp_path: Path, pkg_logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline forwards worker logs for its run; on a client the user gave it (which
    outlives the run) it undoes that at the end: no plugin of ours is left on the workers
    (so they publish no record for it), and the client stays open."""
    distributed = pytest.importorskip("distributed")
    import dask

    from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory
    from fastspectro_dask.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", orbits=1, records=16, seed=5, instruments=("ees",))
    ours = {"forward-logging-fastspectro_dask", "fastspectro-log-level-fastspectro_dask"}
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=1,
            processes=True,
            threads_per_worker=1,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        before = client.run(_worker_plugins)
        assert not ours & {p for ps in before.values() for p in ps}

        forwarded_during_run = []

        def spy(c: object) -> bool:
            ok = forward_worker_logs(c)
            forwarded_during_run.append(set(client.run(_worker_plugins).popitem()[1]))
            return ok

        monkeypatch.setattr("fastspectro_dask.pipeline.forward_worker_logs", spy)
        summary = FAST_plot_spectrograms_directory(
            tmp_path / "data",
            tmp_path / "out",
            products=("instruments",),
            client=client,
            progress_bar=False,
            install_signal_handlers=False,
        )
        assert summary.figures_written == 1
        assert forwarded_during_run and ours <= forwarded_during_run[0]  # it did forward
        after = client.run(_worker_plugins)
        assert after == before  # and undid it
        assert client.status == "running"  # the user's client stays open
