"""The batch pipeline on a real local Dask cluster: outcomes, timeouts, resume, signals."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory
from fastspectro_dask.synth import write_synthetic_dataset

from . import _hooks

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def mission(tmp_path_factory) -> Path:
    """Three good orbits, every instrument where bursts exist."""
    root = tmp_path_factory.mktemp("good")
    write_synthetic_dataset(root, orbits=3, records=30, seed=5)
    return root


@pytest.fixture(scope="module")
def bad_mission(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    man = write_synthetic_dataset(root, orbits=2, records=20, seed=5, bad_files=True)
    (root / "expected.json").write_text(
        json.dumps({k: v["orbit"] for k, v in man.bad_files.items()})
    )
    return root


def plot(input_dir, output_dir, client, **kw):
    kw.setdefault("products", ("instruments",))
    kw.setdefault("progress_bar", False)
    return FAST_plot_spectrograms_directory(input_dir, output_dir, client=client, **kw)


def progress(out: Path) -> dict:
    return json.loads((out / "progress.json").read_text())


def test_full_run_bad_files_and_resume(bad_mission, tmp_path, client):
    out = tmp_path / "out"
    s = plot(bad_mission, out, client, products=("instruments", "pitch-angle"))
    expected = json.loads((bad_mission / "expected.json").read_text())
    invalid = sorted(
        o for k, o in expected.items() if k not in ("all-fill", "single-record", "duplicate-v01")
    )
    p = progress(out)
    assert p["ees_linear_log_error-invalid-cdf"] == invalid
    good = sorted(set(range(13616, 13616 + 2)) | {expected["all-fill"], expected["single-record"]})
    assert p["linear_log_completed"] == good
    assert s.orbits_total == len(invalid) + len(good)
    assert s.errors == {"invalid-cdf": len(invalid)}
    # the instrument grid of a bad orbit is still drawn (placeholder row for ees)
    for orbit in [*invalid, *good]:
        assert list(out.rglob(f"{orbit}/{orbit}_instruments_y-linear_z-log.png"))
    assert list(out.rglob("13616/13616_pa-ees_y-linear_z-log.png"))
    assert not list(out.rglob(f"{invalid[0]}/{invalid[0]}_pa-ees_*.png"))
    assert p["linear_log_last_orbit"] == max(invalid + good)
    assert (out / "extrema.json").exists() and (out / "logs").is_dir()
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == s.figures_written
    first = manifest[0]
    assert (out / first["figure"]).exists()
    assert first["y_scale"] == "linear" and first["variable"] == "data"
    assert first["retrace"] is False  # channel 0 dropped by default
    assert set(first["limits"]) <= {
        "ees",
        "eeb",
        "ies",
        "ieb",
        "all",
        "parallel",
        "antiparallel",
        "perpendicular",
    }
    # resume: nothing left to do (invalid-cdf is not retried while the file is unchanged)
    again = plot(bad_mission, out, client, products=("instruments", "pitch-angle"))
    assert again.orbits_skipped == again.orbits_total and again.figures_written == 0
    # a fresh pass keeps existing figures unless overwrite=True
    fresh = plot(bad_mission, out, client, ignore_progress_json=True)
    assert fresh.figures_written == 0 and fresh.figures_existing == fresh.orbits_total
    assert progress(out)["ees_linear_log_error-invalid-cdf"] == invalid  # still known
    forced = plot(bad_mission, out, client, ignore_progress_json=True, overwrite=True)
    assert forced.figures_written == forced.orbits_total


#: The timeout of the hung render in the timeout tests: the hang is certain (an infinite
#: loop), so the bound only has to be longer than any real render of the other orbits, which
#: run under the same timeout, even on a loaded machine (a few seconds of waiting).
HANG_TIMEOUT = 20


def _hung_render_stopped(out: Path) -> None:
    """The hung render's process was killed by its timeout, not abandoned."""
    import psutil

    (pid,) = (int(p.name.split("-")[1]) for p in out.glob("hung-*"))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_hanging_render_is_a_timeout_and_the_batch_goes_on(mission, tmp_path, client):
    out = tmp_path / "out"
    s = plot(
        mission,
        out,
        client,
        render_fn=_hooks.hang_on_victim_noting_pid,
        instrument_timeout_seconds=HANG_TIMEOUT,
        orbit_timeout_seconds=math.inf,  # no bound
    )
    p = progress(out)
    victim = _hooks.VICTIM
    assert p["ees_linear_log_error-timeout"] == [victim]
    assert victim not in p["linear_log_completed"]
    assert len(p["linear_log_completed"]) == 2
    assert s.errors["timeout"] >= 2  # every instrument of the orbit's grid
    _hung_render_stopped(out)
    # the worker slot was freed: a second run retries the timed-out orbit and succeeds
    again = plot(mission, out, client)
    assert again.orbits_processed == 1 and again.orbits_completed == 1
    assert victim in progress(out)["linear_log_completed"]
    assert (
        "ees_linear_log_error-timeout" not in progress(out)
        or not progress(out)["ees_linear_log_error-timeout"]
    )


def test_orbit_timeout_bounds_all_tasks_of_an_orbit(mission, tmp_path, client):
    out = tmp_path / "out"
    plot(
        mission,
        out,
        client,
        render_fn=_hooks.hang_on_victim_noting_pid,
        instrument_timeout_seconds=math.inf,  # no bound
        orbit_timeout_seconds=HANG_TIMEOUT,
    )
    assert progress(out)["ies_linear_log_error-timeout"] == [_hooks.VICTIM]
    _hung_render_stopped(out)


def test_crash_in_render_is_worker_lost(mission, tmp_path, client):
    out = tmp_path / "out"
    plot(mission, out, client, render_fn=_hooks.crash_on_victim)
    p = progress(out)
    assert p["ees_linear_log_error-worker-lost"] == [_hooks.VICTIM]
    assert len(p["linear_log_completed"]) == 2


def test_killed_worker_is_worker_lost(mission, tmp_path, client):
    out = tmp_path / "out"
    plot(mission, out, client, render_fn=_hooks.kill_worker_on_victim)
    p = progress(out)
    assert p["ees_linear_log_error-worker-lost"] == [_hooks.VICTIM]
    assert len(p["linear_log_completed"]) == 2
    client.wait_for_workers(2, timeout=120)


def test_divide_by_zero_category(mission, tmp_path, client):
    out = tmp_path / "out"
    plot(mission, out, client, render_fn=_hooks.divide_on_victim)
    assert progress(out)["ies_linear_log_error-divide-by-zero"] == [_hooks.VICTIM]


def test_flushes_happen_when_the_contract_says(mission, tmp_path, client):
    out = tmp_path / "out"
    s = plot(mission, out, client, flush_batch_size=2, log_flush_batch_size=3)
    n = s.orbits_processed
    assert n == 3
    assert s.progress_writes == math.ceil(n / 2)
    assert s.log_records > 0
    assert s.log_writes == math.ceil(s.log_records / 3)
    lines = Path(s.log_file).read_text().splitlines()
    assert len(lines) >= s.log_records
    assert " INFO " in lines[0] and lines[0][:4].isdigit()
    (finished,) = [x for x in lines if "run finished: " in x]
    logged = json.loads(finished.split("run finished: ", 1)[1])
    assert logged["progress_writes"] == s.progress_writes > 0  # not 0 (issue 13.11)


def test_manifest_lines_are_on_disk_before_the_progress_write_of_their_orbits(
    mission, tmp_path, client, monkeypatch
):
    """The manifest is buffered, and written before each progress write: an orbit that
    the progress file records done has its figures' lines in the manifest."""
    import fastspectro_dask.progress as progress_mod

    out = tmp_path / "out"
    seen: list[tuple[set[int], set[int]]] = []
    real = progress_mod.atomic_write

    def spy(path, data, **kw):
        if Path(path).name == "progress.json":
            done = set(json.loads(data)["linear_log_completed"])
            lines = (out / "manifest.jsonl").read_text().splitlines()
            seen.append((done, {json.loads(x)["orbit"] for x in lines}))
        return real(path, data, **kw)

    monkeypatch.setattr(progress_mod, "atomic_write", spy)
    s = plot(mission, out, client, flush_batch_size=2)
    assert s.orbits_completed == 3 and len(seen) == s.progress_writes == 2
    for done, in_manifest in seen:
        assert done and done <= in_manifest


def test_manifest_appender_ends_a_torn_line_and_writes_whole_lines(tmp_path):
    from fastspectro_dask.pipeline import _Appender

    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"orbit": 1}\n{"orb')  # a run killed in the middle of a line
    app = _Appender(path)
    app.write('{"orbit": 2}\n')
    assert path.read_bytes().endswith(b'{"orb')  # buffered until a flush
    app.flush()
    app.write('{"orbit": 3}\n')
    app.close()
    assert path.read_text().splitlines() == [
        '{"orbit": 1}',
        '{"orb',
        '{"orbit": 2}',
        '{"orbit": 3}',
    ]
    empty = tmp_path / "none.jsonl"
    _Appender(empty).close()
    assert not empty.exists()  # nothing to write: no file


@pytest.mark.parametrize(
    "hook", [_hooks.write_then_terminate_on_victim, _hooks.terminate_then_hang_on_victim]
)
def test_sigterm_summary_counts_what_is_on_disk(mission, tmp_path, client, hook):
    """A render in flight when SIGTERM arrives is stopped (it cannot write later) and a
    figure written before its result came back is counted (issue 13.8)."""
    import psutil

    out = tmp_path / "out"
    out.mkdir()
    (out / "client.pid").write_text(str(os.getpid()))
    s = plot(mission, out, client, products=("instruments", "pitch-angle"), render_fn=hook)
    assert s.interrupted and s.signal == "SIGTERM"
    victims = [int(p.read_text()) for p in out.glob("victim-*.pid")]
    assert victims
    for pid in victims:  # the busy render's process is gone: it cannot write any more
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    on_disk = sorted(out.rglob("*.png"))
    assert s.figures_written == len(on_disk)
    victim_grid = list(out.rglob(f"{_hooks.VICTIM}_instruments_*.png"))
    written_first = hook is _hooks.write_then_terminate_on_victim
    assert len(victim_grid) == (1 if written_first else 0)
    manifest = (out / "manifest.jsonl").read_text().splitlines() if s.figures_written else []
    assert len(manifest) == s.figures_written
    # the next run finishes the rest, and keeps the figure written before the signal
    rest = plot(mission, out, client, products=("instruments", "pitch-angle"))
    assert not rest.interrupted and len(progress(out)["linear_log_completed"]) == 3
    assert rest.figures_written + rest.figures_existing >= len(on_disk)


def test_render_log_records_reach_the_client_log_even_when_the_render_fails(
    mission, tmp_path, client
):
    s = plot(mission, tmp_path / "out", client, render_fn=_hooks.chatty)
    assert set(s.errors) == {"generic"} and s.orbits_completed == 2
    log = Path(s.log_file).read_text()
    prefix = "fastspectro_dask.pipeline: worker: fastspectro_dask.tests.hooks: orbit"
    for orbit in (13616, _hooks.VICTIM, 13618):
        assert f"INFO     {prefix} {orbit} instruments: info from the child" in log
        assert f"WARNING  {prefix} {orbit} instruments: warning from the child" in log
    assert "the victim's render failed after logging" in log


def test_sigint_stops_flushes_and_restores_handlers(mission, tmp_path, client):
    """A Ctrl-C while the second orbit renders (sent by the render hook, not a timer): the
    run stops, what was done is flushed, the handlers are restored, a re-run finishes."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sigint.pid").write_text(str(os.getpid()))
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    s = plot(
        mission,
        out,
        client,
        render_fn=_hooks.sigint_on_victim,
        flush_batch_size=1,
        products=("instruments", "pitch-angle"),
        window=1,
    )
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert s.interrupted and s.signal == "SIGINT"
    done = progress(out)["linear_log_completed"]
    assert len(done) == s.orbits_completed and _hooks.VICTIM + 1 not in done
    assert len(done) < 3
    (out / "sigint.pid").unlink()
    rest = plot(mission, out, client, products=("instruments", "pitch-angle"))
    assert rest.orbits_skipped == len(done)
    assert len(progress(out)["linear_log_completed"]) == 3


def test_no_signal_handlers_when_asked(mission, tmp_path, client, monkeypatch):
    calls = []
    monkeypatch.setattr(signal, "signal", lambda *a: calls.append(a))
    plot(mission, tmp_path / "out", client, install_signal_handlers=False)
    assert calls == []


def test_aliases_and_validation(mission, tmp_path, client):
    s = FAST_plot_spectrograms_directory(
        directory_path=mission,
        output_base=tmp_path / "o",
        client=client,
        products=("instruments",),
        progress_bar=False,
    )
    assert s.orbits_completed == 3
    with pytest.raises(TypeError):
        FAST_plot_spectrograms_directory(mission, tmp_path / "a", directory_path=tmp_path)
    with pytest.raises(ValueError):
        FAST_plot_spectrograms_directory(mission, tmp_path / "b", flush_batch_size=0)


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file but the lock files (which the holder itself writes) with mtime and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".lock"
    }


@pytest.mark.parametrize("held", ["progress.json", "extrema.json"])
def test_second_concurrent_run_is_refused(mission, tmp_path, client, monkeypatch, held):
    """Refused before it writes anything (no log file, no state) or starts a cluster."""
    import fastspectro_dask.pipeline as pipeline_mod
    from fastspectro_dask.state import StateLock, StateLockedError

    out = tmp_path / "out"
    plot(mission, out, client)  # the first run's folder
    before = _snapshot(out)

    def no_cluster(*a, **kw):
        raise AssertionError("a cluster was started for a refused run")

    monkeypatch.setattr(pipeline_mod, "client_context", no_cluster)
    with StateLock(out / held), pytest.raises(StateLockedError) as info:
        FAST_plot_spectrograms_directory(mission, out, progress_bar=False)
    assert info.value.holder["pid"] == os.getpid()
    assert _snapshot(out) == before  # nothing written, nothing removed


def test_stale_temporaries_of_ours_removed_at_start(mission, tmp_path, client):
    out = tmp_path / "out"
    plot(mission, out, client)
    fig = next(out.rglob("*_instruments_y-linear_z-log.png"))
    ours = [
        fig.parent / f".{fig.name}.4242.0123456789ab.tmp",  # a figure's, left by kill -9
        out / ".progress.json.4242.0123456789ab.tmp",
        out / ".extrema.json.k3_x9q0z.tmp",  # earlier versions' state temporaries
    ]
    others = [
        fig.parent / f".{fig.name}.tmp",
        fig.parent / "notes.png.4242.0123456789ab.tmp",
        out / ".index.html.4242.0123456789ab.tmp",
        out / "reduced.zarr" / f".{fig.name}.4242.0123456789ab.tmp",
        mission / f".{fig.name}.4242.0123456789ab.tmp",  # never in the input folder
    ]
    for p in ours + others:
        p.write_text("partial")
    s = plot(mission, out, client)
    assert s.orbits_skipped == 3
    assert [p for p in ours if p.exists()] == []
    assert all(p.exists() for p in others)
    assert "removed 3 stale temporary file(s)" in Path(s.log_file).read_text()
    for p in others:
        p.unlink()


_KILL_SCRIPT = """
import sys
from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory
from tests import _hooks
FAST_plot_spectrograms_directory(sys.argv[1], sys.argv[2], max_workers=2,
    flush_batch_size=3, products=("instruments",), render_fn=_hooks.slow,
    progress_bar=False, window=2)
"""


@pytest.mark.slow
def test_kill9_of_the_whole_run_then_resume(tmp_path, client):
    """SIGKILL the run's process group at random moments; the state stays valid."""
    data = tmp_path / "data"
    write_synthetic_dataset(data, orbits=10, records=12, seed=2, instruments=("ees", "ies"))
    reference = tmp_path / "ref"
    plot(data, reference, client)
    out = tmp_path / "out"
    rng = random.Random(1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT, str(data), str(out)],
            start_new_session=True,
            env=env,
        )
        deadline = time.time() + 180  # a bound on a hang, not a timing assumption
        while time.time() < deadline and not (out / "progress.json").exists():
            time.sleep(0.1)
        assert (out / "progress.json").exists(), "the run never flushed its progress"
        time.sleep(rng.uniform(0.0, 2.0))  # a random moment after the first flush
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        p = progress(out)  # always parses
        done = set(p.get("linear_log_completed", []))
        drawn = {int(f.parent.name) for f in out.rglob("*_instruments_*.png")}
        assert done <= drawn
        # unrecorded: at most flush_batch_size - 1 handled orbits, plus the (window=2)
        # tasks in flight whose figures were written but whose results were not handled
        assert len(drawn - done) <= (3 - 1) + 2
    resumed = plot(data, out, client)
    assert len(progress(out)["linear_log_completed"]) == 10
    assert resumed.orbits_total == 10
    for ref in reference.rglob("*.png"):
        assert (out / ref.relative_to(reference)).read_bytes() == ref.read_bytes()


_SIGNAL_SCRIPT = """
import logging
import sys
import time
from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory
from tests import _hooks


class HoldTheFirstSignal(logging.Handler):
    # Reached from inside the run's handler of the first signal (its log line): says so on
    # stdout, then stays in that handler, so the second signal certainly comes while the
    # run is still stopping (a signal handler can be interrupted by the next one).
    def emit(self, record):
        if "received: stopping submission" in record.getMessage():
            print("FIRST SIGNAL HANDLED", flush=True)
            while True:
                time.sleep(0.05)


if sys.argv[3:] == ["--hold-first-signal"]:
    logging.getLogger().addHandler(HoldTheFirstSignal())
s = FAST_plot_spectrograms_directory(sys.argv[1], sys.argv[2], max_workers=1,
    flush_batch_size=1, products=("instruments", "pitch-angle"),
    render_fn=_hooks.ready_then_block_on_victim, progress_bar=False, window=1)
print("INTERRUPTED" if s.interrupted else "FINISHED", s.signal, flush=True)
"""


def _wait_for_the_victim(out: Path, proc: subprocess.Popen) -> None:
    """Until the victim's render announces itself (and stays busy), or the process ends."""
    deadline = time.time() + 240  # a bound on a hang, not a timing assumption
    while not (out / "victim-ready").exists() and proc.poll() is None:
        assert time.time() < deadline, "the victim's render never started"
        time.sleep(0.05)
    assert (out / "victim-ready").exists(), f"the run ended first (exit {proc.returncode})"


@pytest.mark.slow
def test_sigterm_then_double_sigint_in_a_real_process(mission, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_SCRIPT, str(mission), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    _wait_for_the_victim(out, proc)  # mid-run, certainly: the victim's render is busy
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "INTERRUPTED SIGTERM" in stdout
    p = progress(out)  # flushed on the way out
    drawn = {int(f.parent.name) for f in out.rglob("*_instruments_*.png")}
    assert set(p.get("linear_log_completed", [])) <= drawn
    # two signals: the second one exits at once, with KeyboardInterrupt, state intact
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", _SIGNAL_SCRIPT),
            *(str(mission), str(tmp_path / "out2"), "--hold-first-signal"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _wait_for_the_victim(tmp_path / "out2", proc)
    proc.send_signal(signal.SIGINT)
    # the second signal only once the first one is handled (two signals sent before the
    # process runs its handler would count as one), while the run is still stopping
    lines = iter(proc.stdout.readline, "")
    assert "FIRST SIGNAL HANDLED\n" in lines, "the first SIGINT was not handled"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr, stderr
    json.loads((tmp_path / "out2" / "progress.json").read_text())  # still valid JSON


def test_a_signal_between_batches_with_nothing_in_flight_still_counts_as_interrupted(
    client, tmp_path
):
    """The race CI hit once: SIGTERM landed after a result was handled and before the next
    submission, so nothing was in flight and the loop ended as if finished."""
    from fastspectro_dask.pipeline import RunSummary, _loop, _Signals
    from fastspectro_dask.state import ProgressStore

    def job(orbit: int):
        return _hooks.fake_job(orbit, tmp_path / f"{orbit}.png", tmp_path / "c.zarr")

    signals = _Signals(False)
    with ProgressStore(tmp_path / "progress.json", "linear", "log") as store:
        real = store.record_success

        def record_then_signal(orbit):  # the signal arrives right as the orbit is recorded
            real(orbit)
            signals.stop.set()

        store.record_success = record_then_signal
        summary = RunSummary()
        jobs = {o: [job(o)] for o in (1, 2, 3)}
        _loop(
            client,
            store,
            signals,
            jobs,
            {o: {} for o in jobs},
            summary,
            window=1,
            instrument_timeout=60.0,
            orbit_timeout=None,
            progress_bar=False,
            y_scale="linear",
            z_scale="log",
            render_fn=_hooks.noop,
        )
    assert summary.orbits_completed == 1 and summary.interrupted


def test_pad_product_with_orbit_files_end_to_end(tmp_path, client):
    """products=pad: the pitch-angle spectrogram per orbit (y linear, pitch angle), its
    exact colour limits from the extrema pass, provenance with the ephemeris rows."""
    from fastspectro_dask.render import read_figure_metadata

    data = tmp_path / "data"
    write_synthetic_dataset(data, orbits=1, records=30, seed=5, orb_files=True)
    out = tmp_path / "out"
    s = plot(
        data,
        out,
        client,
        products=("instruments", "pad"),
        y_scale="log",
        pad_energy=(50.0, 5000.0),
        pad_shift90=True,
    )
    assert not s.errors and s.figures_written == 2
    (pad,) = out.rglob("13616_pad_y-linear_z-log.png")  # the pad's y axis is pitch angle
    meta = read_figure_metadata(pad)
    assert meta["fastspectro:ephemeris"] == "UT,ALT,ILAT,MLT"
    assert "fa_esa_l2_ees_" in meta["Source"]
    state = json.loads((out / "extrema.json").read_text())
    assert state["params"]["pad"] == {"energy": [50.0, 5000.0]}
    limits = json.loads(meta["fastspectro:limits"])
    assert limits["ees"]["z_max"] == pytest.approx(state["ees_pad_log_log_z_max"])
    assert limits["ees"]["y_min"] == -90.0 and limits["ees"]["y_max"] == 270.0
    line = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["product"] for m in line} == {"instruments", "pad"}
    assert next(m for m in line if m["product"] == "pad")["pad_energy"] == [50.0, 5000.0]


@pytest.mark.parametrize("root", ["/", "/data/fast", "/data/fast/"])
def test_planned_paths_are_the_paths_pathlib_gives(root, tmp_path, monkeypatch):
    """The planner's string joins name every file exactly as ``pathlib`` does (the cache
    entries and invalid files are looked up by these names)."""
    from fastspectro_dask.pipeline import _absolute, _under

    rels = [
        "1996/09/fa_esa_l2_ees_19960901000000_00001_v02.cdf",
        "flat.cdf",
        "./1996/x.cdf",
        "1996//09/x.cdf",
        "1996/../x.cdf",
        "1996/09/",
        ".",
        "/abs/x.cdf",
        "a b/ü.cdf",
    ]
    for rel in rels:
        assert _under(root, rel) == str(Path(root) / rel), rel
    monkeypatch.chdir(tmp_path)
    for p in [Path("/data/x.cdf"), Path("rel/x.cdf"), "rel/./y.cdf", "/data//z.cdf"]:
        assert _absolute(p) == str(Path(p).absolute()), p
