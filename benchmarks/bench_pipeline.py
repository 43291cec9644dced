"""Batch pipeline: end-to-end figures/s, overhead vs serial rendering, bookkeeping at scale.

Four measurements, each printed as a plain-text table (medians over ``--rounds``):

0. **The whole CLI run vs the naive loop** (``--cli-orbits 12 --cli-records 800``, the
   issue's setting): ``fastspectro plot DATA OUT --max-workers 2`` in a subprocess, cold
   (from nothing: cluster start, extrema, cache, every product) and warm (``--ignore-progress
   --overwrite``: extrema and cache reused), against the naive loop most scripts use (in this
   process, no reading at all: a fresh figure, ``pcolormesh`` + colour bar per panel,
   ``savefig``) drawing as many 4-panel figures at the same pixel size. Prints the medians
   and the ratios naive/cold and naive/warm (higher is better for us).

1. **End to end, 1 and 2 workers.** Synthetic data (``write_synthetic_dataset(orbits=N,
   records=R, seed=1)``) through :func:`FAST_plot_spectrograms_directory` with
   ``client=None`` (the function makes and closes its own LocalCluster), products
   ``instruments`` + ``pitch-angle``, into a fresh output folder: wall time, figures
   written, figures/s, and the 2-vs-1 speed-up. Each fresh run is followed by a re-run
   into the same folder with ``ignore_progress_json=True, overwrite=True``, which reuses the
   extrema JSON and the zarr cache (same figures, no extrema work). Both runs are split into
   phases with the timestamps of the package's own INFO log records: cluster start (call ->
   ``local Dask cluster``), discovery + extrema (``run ...`` -> ``extrema: ...``), render
   (-> ``run finished``) and cluster close (-> return). A bare ``LocalCluster`` + ``Client``
   start/close is also timed on its own.
2. **Pipeline vs serial rendering without Dask.** The same RenderJobs (planned with the
   pipeline's own ``_plan`` from its extrema JSON, reading its zarr cache) are rendered
   in this process by calling :func:`fastspectro_dask.render_task.render_job` one after the
   other (warm: imports and font cache loaded). Compared to the 1-worker pipeline's render
   phase (same work, one render process): overhead ratio and overhead per figure. The cold
   import of the render stack (paid once by every sandbox child) is timed in a subprocess.
3. **Bookkeeping dry run.** The pipeline's phase 3 as it runs it: the planner
   (:func:`fastspectro_dask.pipeline._plan`, lazy, figure paths checked on disk) over a
   fake mission of N orbits x 4 files (an index and an extrema ledger shaped like real
   ones), the products of ``--dry-products`` (default: a default run's, ``instruments
   pitch-angle pad``, 6 figures per orbit; ``instruments`` alone is one figure per
   orbit), feeding :func:`fastspectro_dask.pipeline._loop` with :func:`noop_render`
   (defined here; workers import it as ``bench_pipeline.noop_render``, the benchmarks
   folder is put on ``sys.path``/``PYTHONPATH``), a real
   ``ProgressStore(flush_batch_size=10)``, the manifest, ``_Signals(False)``, the
   pipeline's own 2-worker local cluster, default window and timeouts (120 s / 600 s).
   Reports figures/s and Dask tasks/s (an orbit's figures are one task but at the run's
   tail), client CPU per figure, the RSS
   of this process (which also hosts the LocalCluster's scheduler) sampled every 20 ms from a
   thread (start, after building the jobs, peak, end), progress JSON writes and the seconds
   spent in them, and the final progress.json size. Sizes run in order (default 10,000 then
   50,000 orbits); when a size is predicted to exceed ``--budget`` seconds (model: per-task
   cost linear in N plus progress writes quadratic in N, fitted on the previous size) the
   largest multiple of 5,000 that fits is run instead and the requested size is
   extrapolated (labelled as such). The ProgressStore alone (no Dask) is then timed over
   ``--store-orbits`` orbits (default 50,000: the writes are measured, not extrapolated),
   with the cost of one write split into its parts. Then, at ``--ipc-tasks`` tasks (0: not),
   interleaved: ``_loop``
   with and without progress writes, and a minimal loop with the same window and 20 ms poll
   with the task in the sandbox (``_run_jobs``) or run directly in the worker (no sandbox),
   and both with a blocking wait instead of the poll: the cost of the sandbox's IPC, of the
   poll, and of the bookkeeping.

    python benchmarks/bench_pipeline.py [--orbits 12] [--records 400] [--rounds 3]
        [--dry-sizes 10000,50000] [--dry-products instruments,pitch-angle,pad]
        [--budget 360] [--ipc-tasks 2000] [--store-orbits 50000]
        [--cli-orbits 12] [--cli-records 800] [--only-cli] [--skip-cli] [--skip-e2e]
        [--skip-dry]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # so that workers and sandbox children import this module
    sys.path.insert(0, str(HERE))

PRODUCTS = ("instruments", "pitch-angle")
FLUSH = 10  # flush_batch_size of the dry run
LOOP_FRACTIONS = (0.05, 0.25, 0.5, 0.75, 1.0)  # where the loop's RSS is reported


# --------------------------------------------------------------------------------------
# The no-op render function (imported by reference in the sandbox children)
# --------------------------------------------------------------------------------------


def noop_render(job) -> dict[str, Any]:
    """A render that does nothing: the report ``_loop`` expects, at once."""
    return {"path": job.output, "errors": {}, "seconds": 0.0, "log": []}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds from a thread; keeps the peak
    and the series of ``(time.perf_counter(), rss)`` samples."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = self.end = rss_bytes()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = rss_bytes()
            self.samples.append((time.perf_counter(), rss))
            self.peak = max(self.peak, rss)

    def at(self, t: float) -> int:
        """The RSS sampled nearest to time ``t`` (perf_counter seconds)."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1] if self.samples else 0

    def __enter__(self) -> RssSampler:
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = rss_bytes()
        self.peak = max(self.peak, self.end)


def cpu_all() -> float:
    """CPU seconds of this process plus its reaped children (cluster workers and their
    sandbox children count once the cluster is closed)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def machine_header() -> str:
    import dask
    import distributed
    import matplotlib
    import numpy

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except ImportError:
        mem = "RAM ?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
            f"{cores} cores usable ({os.cpu_count()} logical), {mem}, load average {load}",
            f"python {platform.python_version()}, dask {dask.__version__}, distributed "
            f"{distributed.__version__}, matplotlib {matplotlib.__version__}, numpy "
            f"{numpy.__version__}",
        ]
    )


def make_cluster(workers: int, dashboard_address: str | None = ":0"):
    """A LocalCluster like the pipeline's own (processes, 1 thread each, non-daemonic)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard_address,
        )
        client = Client(cluster)
    return cluster, client


# --------------------------------------------------------------------------------------
# Part 1: end to end
# --------------------------------------------------------------------------------------


class PhaseMarks(logging.Handler):
    """Timestamps (time.time) of the pipeline's own INFO records that end each phase."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "worker", None):
            return  # forwarded from a worker
        msg = record.getMessage()
        name = None
        if record.name == "fastspectro_dask.cluster" and msg.startswith("local Dask cluster"):
            name = "cluster"
        elif record.name == "fastspectro_dask.pipeline" and msg.startswith("run "):
            name = "run-finished" if msg.startswith("run finished") else "run-start"
        elif record.name == "fastspectro_dask.extrema" and msg.startswith("extrema: "):
            if "files counted" in msg or "reused" in msg:
                name = "extrema"
        if name and name not in self.marks:
            self.marks[name] = record.created


@contextlib.contextmanager
def capture_loop():
    """Wrap ``pipeline._loop`` (looked up at call time): record the RenderJobs the pipeline
    planned and the seconds spent in the submit/collect loop."""
    from fastspectro_dask import pipeline as pl

    rec: dict[str, Any] = {"jobs": [], "loop": float("nan")}
    real = pl._loop

    def wrapped(*a: Any, **kw: Any) -> Any:
        jobs = a[3] if len(a) > 3 else kw["jobs"]
        if isinstance(jobs, dict):
            rec["jobs"] = [j for o in jobs for j in jobs[o]]
        else:  # the pipeline plans orbits lazily: (orbit, jobs, known) triples
            jobs = list(jobs)
            rec["jobs"] = [j for _o, js, _k in jobs for j in js]
            a = (*a[:3], jobs, *a[4:]) if len(a) > 3 else a
            if "jobs" in kw:
                kw["jobs"] = jobs
        t = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            rec["loop"] = time.perf_counter() - t

    pl._loop = wrapped
    try:
        yield rec
    finally:
        pl._loop = real


def timed_run(data: Path, out: Path, workers: int, **kw: Any) -> dict[str, Any]:
    """One FAST_plot_spectrograms_directory run on its own cluster, split into phases."""
    from fastspectro_dask import FAST_plot_spectrograms_directory

    marks = PhaseMarks()
    pkg = logging.getLogger("fastspectro_dask")
    pkg.addHandler(marks)
    try:
        with capture_loop() as rec:
            c0, t0 = cpu_all(), time.time()
            summary = FAST_plot_spectrograms_directory(
                data,
                out,
                max_workers=workers,
                products=PRODUCTS,
                progress_bar=False,
                **kw,
            )
            t1, c1 = time.time(), cpu_all()
    finally:
        pkg.removeHandler(marks)
    m = marks.marks
    nan = float("nan")
    phases = {
        "cluster": m.get("cluster", nan) - t0,
        "setup": m.get("run-start", nan) - m.get("cluster", nan),
        "extrema": m.get("extrema", nan) - m.get("run-start", nan),
        "render": m.get("run-finished", nan) - m.get("extrema", nan),
        "close": t1 - m.get("run-finished", nan),
    }
    if summary.errors or summary.interrupted:
        print(f"  !! run {out.name}: errors {summary.errors}, interrupted {summary.interrupted}")
    return {
        "wall": t1 - t0,
        "cpu": c1 - c0,
        "summary_wall": summary.wall_seconds,
        "figures": summary.figures_written,
        "phases": phases,
        "loop": rec["loop"],
        "jobs": rec["jobs"],
        "summary": summary,
    }


def cluster_start_times(workers: int, rounds: int) -> tuple[list[float], list[float]]:
    starts, closes = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        cluster, client = make_cluster(workers, dashboard_address=":8787")
        client.wait_for_workers(workers)
        t1 = time.perf_counter()
        client.close()
        cluster.close()
        starts.append(t1 - t0)
        closes.append(time.perf_counter() - t1)
    return starts, closes


def end_to_end(tmp: Path, args) -> dict[str, Any]:
    from fastspectro_dask.synth import write_synthetic_dataset

    data = tmp / "data"
    t0 = time.perf_counter()
    man = write_synthetic_dataset(data, orbits=args.orbits, records=args.records, seed=1)
    n_files = sum(map(len, man.files.values()))
    print(
        f"\n[1] end to end: {args.orbits} orbits x {args.records} records, {n_files} files "
        f"({sum(p.stat().st_size for f in man.files.values() for p in f.values()) / 1e6:.1f} "
        f"MB), written in {time.perf_counter() - t0:.1f} s; products {', '.join(PRODUCTS)}; "
        f"{args.rounds} rounds, 1 and 2 workers interleaved"
    )
    fresh: dict[int, list[dict]] = {1: [], 2: []}
    rerun: dict[int, list[dict]] = {1: [], 2: []}
    outs: dict[int, Path] = {}
    for r in range(args.rounds):
        for w in (1, 2):
            out = tmp / f"out-w{w}-r{r}"
            fresh[w].append(timed_run(data, out, w))
            rerun[w].append(timed_run(data, out, w, ignore_progress_json=True, overwrite=True))
            outs.setdefault(w, out)
            f, g = fresh[w][-1], rerun[w][-1]
            print(
                f"  round {r + 1} workers {w}: fresh {f['wall']:.2f} s ({f['figures']} fig), "
                f"re-render {g['wall']:.2f} s ({g['figures']} fig); {load()}"
            )
    cstart = {w: cluster_start_times(w, args.rounds) for w in (1, 2)}

    lines = [
        "",
        "End to end (fresh output folder; wall = call to return, cluster start/close included)",
        f"{'workers':>7} {'wall s':>8} {'figures':>8} {'fig/s':>7} {'speed-up':>9}"
        f" {'summary.wall_seconds':>21} {'CPU s (all procs)':>18}",
        "-" * 83,
    ]
    base = median([x["wall"] for x in fresh[1]])
    for w in (1, 2):
        wall = median([x["wall"] for x in fresh[w]])
        figs = fresh[w][0]["figures"]
        sw = median([x["summary_wall"] for x in fresh[w]])
        cpu = median([x["cpu"] for x in fresh[w]])
        lines.append(
            f"{w:>7} {wall:8.2f} {figs:>8} {figs / wall:7.2f} {base / wall:8.2f}x {sw:21.2f}"
            f" {cpu:18.2f}"
        )

    lines += [
        "",
        "Phases, median s (from the pipeline's log timestamps)",
        f"{'run':<22} {'cluster':>8} {'setup':>6} {'disc+extrema':>13} {'render':>7}"
        f" {'(_loop)':>8} {'close':>6} {'total':>7} {'render fig/s':>13} {'CPU s':>6}",
        "-" * 104,
    ]
    render_med: dict[tuple[str, int], float] = {}
    loop_med: dict[tuple[str, int], float] = {}
    for label, runs in (("fresh", fresh), ("re-render (reuse)", rerun)):
        for w in (1, 2):
            ph = {k: median([x["phases"][k] for x in runs[w]]) for k in runs[w][0]["phases"]}
            tot = median([x["wall"] for x in runs[w]])
            cpu = median([x["cpu"] for x in runs[w]])
            loop_s = median([x["loop"] for x in runs[w]])
            loop_med[(label, w)] = loop_s
            figs = runs[w][0]["figures"]
            render_med[(label, w)] = ph["render"]
            lines.append(
                f"{label + f', {w}w':<22} {ph['cluster']:8.2f} {ph['setup']:6.2f} "
                f"{ph['extrema']:13.2f} {ph['render']:7.2f} {loop_s:8.2f} {ph['close']:6.2f} "
                f"{tot:7.2f} "
                f"{figs / ph['render']:13.2f} {cpu:6.1f}"
            )
    lines.append(
        f"render-phase speed-up 2 vs 1 worker: fresh "
        f"{render_med[('fresh', 1)] / render_med[('fresh', 2)]:.2f}x, re-render "
        f"{render_med[('re-render (reuse)', 1)] / render_med[('re-render (reuse)', 2)]:.2f}x"
    )
    lines.append(
        "(render = extrema done -> run finished: job planning + _loop + final flush; (_loop) = "
        "time inside pipeline._loop)"
    )
    extrema_cost = {
        w: median([x["phases"]["extrema"] for x in fresh[w]])
        - median([x["phases"]["extrema"] for x in rerun[w]])
        for w in (1, 2)
    }
    lines.append(
        "extrema work (fresh minus re-render disc+extrema phase): "
        + ", ".join(f"{w}w {extrema_cost[w]:.2f} s" for w in (1, 2))
    )
    lines += [
        "",
        "Bare LocalCluster + Client (processes, 1 thread each, non-daemonic), median s",
        f"{'workers':>7} {'start':>7} {'close':>7}",
        "-" * 23,
    ]
    for w in (1, 2):
        s, c = cstart[w]
        lines.append(f"{w:>7} {median(s):7.2f} {median(c):7.2f}")
    print("\n".join(lines))
    return {
        "data": data,
        "out1": outs[1],
        "fresh": fresh,
        "rerun": rerun,
        "render": render_med,
        "loop": loop_med,
    }


# --------------------------------------------------------------------------------------
# Part 2: pipeline vs serial rendering in one process
# --------------------------------------------------------------------------------------


COLD = """
import pickle, sys, time
t0 = time.perf_counter()
from fastspectro_dask.render_task import render_job
t1 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    job = pickle.load(f)
t2 = time.perf_counter()
render_job(job)
t3 = time.perf_counter()
render_job(job)
t4 = time.perf_counter()
print(t1 - t0, t3 - t2, t4 - t3)
"""


def cold_start(job, tmp: Path, rounds: int) -> tuple[float, float, float]:
    """In a fresh interpreter, like a new sandbox child: import, first figure, second figure."""
    import pickle

    path = tmp / "cold-job.pkl"
    path.write_bytes(pickle.dumps(job))
    rows = []
    for _ in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", COLD, str(path)], capture_output=True, text=True, check=True
        )
        rows.append([float(x) for x in out.stdout.strip().splitlines()[-1].split()])
    return tuple(median([r[k] for r in rows]) for k in range(3))  # type: ignore[return-value]


def serial_vs_pipeline(tmp: Path, e2e: dict[str, Any], args) -> None:
    import dataclasses

    from fastspectro_dask.render_task import render_job

    out1 = e2e["out1"]  # the first 1-worker output folder; its re-render's RenderJobs:
    jobs = [
        dataclasses.replace(j, output=str(tmp / "serial" / Path(j.output).relative_to(out1)))
        for j in e2e["rerun"][1][0]["jobs"]
    ]
    n = len(jobs)
    if n != e2e["rerun"][1][0]["figures"]:
        print(f"  !! captured {n} jobs, the run wrote {e2e['rerun'][1][0]['figures']} figures")
    render_job(jobs[0])  # warm: imports, font cache
    walls, cpus = [], []
    for _ in range(args.rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        for job in jobs:
            render_job(job)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    serial = median(walls)
    imp, first, second = cold_start(jobs[0], tmp, args.rounds)
    lines = [
        "",
        f"[2] {load()}\npipeline vs serial rendering: the pipeline's {n} RenderJobs "
        f"(reduced data from its zarr cache)",
        f"{'variant':<44} {'median s':>9} {'ms/figure':>10} {'vs serial':>10}",
        "-" * 76,
        f"{'serial render_job() loop, warm, no Dask':<44} {serial:9.2f} {1e3 * serial / n:10.1f}"
        f" {1.0:9.2f}x",
        f"{'  (its CPU time)':<44} {median(cpus):9.2f} {1e3 * median(cpus) / n:10.1f}",
    ]
    for label, key in (
        ("pipeline render phase, 1 worker, re-render", ("re-render (reuse)", 1)),
        ("pipeline render phase, 1 worker, fresh", ("fresh", 1)),
        ("pipeline render phase, 2 workers, re-render", ("re-render (reuse)", 2)),
        ("pipeline._loop alone, 1 worker, re-render", ("re-render (reuse)", 1, "loop")),
    ):
        t = e2e["loop"][key[:2]] if len(key) > 2 else e2e["render"][key]
        lines.append(f"{label:<44} {t:9.2f} {1e3 * t / n:10.1f} {t / serial:9.2f}x")
    wall1 = median([x["wall"] for x in e2e["rerun"][1]])
    lines.append(
        f"{'whole re-render run, 1 worker (call->return)':<44} {wall1:9.2f} "
        f"{1e3 * wall1 / n:10.1f} {wall1 / serial:9.2f}x"
    )
    t1 = e2e["render"][("re-render (reuse)", 1)]
    cpu1 = median([x["cpu"] for x in e2e["rerun"][1]])
    scpu = median(cpus)
    lines += [
        f"overhead of the pipeline's render phase (1 worker, re-render) over serial: "
        f"{t1 / serial:.2f}x, {1e3 * (t1 - serial) / n:+.1f} ms per figure "
        f"({t1 - serial:+.2f} s in all)",
        f"CPU (load-independent): whole re-render run, 1 worker, all processes {cpu1:.2f} s vs "
        f"serial {scpu:.2f} s: {cpu1 / scpu:.2f}x, {1e3 * (cpu1 - scpu) / n:+.1f} ms per figure "
        f"(includes cluster start/close and the sandbox child's cold start)",
        f"fresh interpreter (like a new sandbox child), figure of {jobs[0].orbit} "
        f"{jobs[0].product}: import pipeline {imp:.2f} s, first figure {first:.2f} s (imports "
        f"render/matplotlib), second {second:.2f} s -> cold start ~{imp + first - second:.2f} s, "
        f"paid once per worker's sandbox child = {1e3 * (imp + first - second) / n:.0f} ms per "
        f"figure of this run at 1 worker",
    ]
    print("\n".join(lines))


# --------------------------------------------------------------------------------------
# Part 3: bookkeeping dry run
# --------------------------------------------------------------------------------------


def fake_jobs(n: int, start: int = 10_000) -> dict[int, list]:
    """One no-op ``instruments`` RenderJob per orbit, shaped like the pipeline's."""
    from fastspectro_dask.config import RunConfig
    from fastspectro_dask.reduce import normalize_categories
    from fastspectro_dask.render_task import RenderJob

    cats = normalize_categories(None)
    order = ("ees", "eeb", "ies", "ieb")
    style = RunConfig.resolve().style  # a default run's (fastspectro.yaml)
    extrema = {
        i: {"y_min": 4.0, "y_max": 3.2e4, "z_min": 1.0, "z_max": 1e6} for i in order
    }  # shared, like the grid extrema of _plan
    jobs = {}
    for o in range(start, start + n):
        files = {i: f"/fake/{i}/fa_esa_l2_{i}_{o:05d}_v02.cdf" for i in order}
        jobs[o] = [
            RenderJob(
                orbit=o,
                product="instruments",
                files=files,
                entries={i: f"{i}-{o}-0123456789abcdef" for i in order},
                output=f"/fake/out/2000/01/{o}/{o}_instruments_y-linear_z-log.png",
                cache_path="/fake/reduced.zarr",
                variable="data",
                categories=cats,
                instrument_order=order,
                extrema=extrema,
                retrace=False,
                style=style,
            )
        ]
    return jobs


def run_loop(
    client,
    jobs: dict[int, list] | None,
    tmp: Path,
    flush_batch_size: int = FLUSH,
    render_fn: Callable | None = None,
    *,
    orbits: list[int] | None = None,
    index: Any = None,
    plan: Callable[[Path, Any], Any] | None = None,
) -> dict[str, Any]:
    """``_loop`` as the pipeline calls it, with a real ProgressStore; timed.

    Either ``jobs`` (orbit -> jobs, built beforehand), or ``orbits``, ``index`` and
    ``plan(out_dir, summary)`` returning the lazy job source (then a manifest is written
    too, as in the pipeline)."""
    from fastspectro_dask.pipeline import RunSummary, _loop, _Signals
    from fastspectro_dask.state import ProgressStore

    if jobs is not None:
        orbits, index = list(jobs), {o: {} for o in jobs}
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        path = Path(d) / "progress.json"
        write_s = [0.0]
        with ProgressStore(path, "linear", "log", flush_batch_size=flush_batch_size) as store:
            store.set_orbits(orbits)
            real_write = store._write

            def timed_write() -> None:
                t = time.perf_counter()
                real_write()
                write_s[0] += time.perf_counter() - t

            store._write = timed_write  # instance attribute: maybe_flush/flush call it
            summary = RunSummary()
            c0, t0 = time.process_time(), time.perf_counter()
            source = jobs if plan is None else plan(Path(d), summary)
            tasks = _count_tasks()
            _loop(
                client,
                store,
                _Signals(False),
                source,
                index,
                summary,
                window=None,
                instrument_timeout=120.0,
                orbit_timeout=600.0,
                progress_bar=False,
                y_scale="linear",
                z_scale="log",
                render_fn=render_fn or _noop(),
                manifest=None if plan is None else Path(d) / "manifest.jsonl",
                total=len(orbits),
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            sizes = {
                "store._completed": len(store._completed),
                "store._touched": len(store._touched),
            }
        size = path.stat().st_size
        writes = store.writes
    return {
        "t0": t0,
        "wall": wall,
        "cpu": cpu,
        "writes": writes,
        "write_s": write_s[0],
        "size": size,
        "figures": summary.figures_written,
        "tasks": tasks[0],
        "errors": dict(summary.errors),
        "sizes": sizes,
    }


def _per_figure_tasks(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()`` with every figure its own Dask task (the pipeline's split before an
    orbit's figures were one task): the baseline of the dry run."""
    import fastspectro_dask.pipeline as pipeline

    kept = pipeline._ORBITS_PER_THREAD
    pipeline._ORBITS_PER_THREAD = 10**12  # never enough orbits left to group
    try:
        return run()
    finally:
        pipeline._ORBITS_PER_THREAD = kept


def _count_tasks() -> list[int]:
    """``[n]``: the Dask tasks the next ``TaskLoop.run`` submits (filled when it returns)."""
    from fastspectro_dask.schedule import TaskLoop

    count = [0]
    real_run = TaskLoop.run

    def run(self, source, handle):
        try:
            return real_run(self, source, handle)
        finally:
            count[0] = self.submitted
            TaskLoop.run = real_run

    TaskLoop.run = run
    return count


def ledger_template(tmp: Path, client) -> dict[str, Any]:
    """A real extrema state (one synthetic orbit, every instrument), as the pipeline gets it:
    its per-file ledger entries are the templates of the dry run's mission."""
    from fastspectro_dask.extrema import compute_global_extrema
    from fastspectro_dask.synth import write_synthetic_dataset

    data = tmp / "template-data"
    write_synthetic_dataset(data, orbits=1, records=20, seed=1)
    return compute_global_extrema(
        data, "linear", "log", extrema_json_path=tmp / "template-extrema.json", client=client
    )


def fake_mission(n: int, template: dict[str, Any], start: int = 10_000):
    """(index, state) for ``n`` orbits x 4 instruments, shaped like the real ones: an
    ``OrbitIndex`` built from parsed file names, and the extrema state with one ledger
    entry per file copied from ``template`` (round-tripped through JSON, like a state
    loaded from disk)."""
    import datetime as dt
    import json

    from fastspectro_dask.discovery import OrbitIndex, parse_esa_filename

    root = Path("/fake/mission")
    by_inst = {e["instrument"]: e for e in template["files"].values()}
    files, ledger = [], {}
    t0 = dt.datetime(1996, 9, 1)
    for k, orbit in enumerate(range(start, start + n)):
        ts = t0 + dt.timedelta(minutes=133 * k)
        for inst, entry in by_inst.items():
            rel = f"{ts:%Y/%m}/fa_esa_l2_{inst}_{ts:%Y%m%d%H%M%S}_{orbit:05d}_v02.cdf"
            files.append(parse_esa_filename(root / rel))
            ledger[rel] = {
                **entry,
                "orbit": orbit,
                "entry": f"{inst}-{orbit}-{entry.get('entry', '')[-20:]}",
            }
    index = OrbitIndex(root, files)
    state = json.loads(json.dumps({**template, "files": ledger}))
    return index, state


def run_planned(
    client, mission: dict[str, Any], tmp: Path, products: tuple[str, ...]
) -> dict[str, Any]:
    """The pipeline's phase 3 as it runs it: ``_plan`` (lazy planning from the index and
    the extrema state, figure paths checked on disk; the state is then dropped, as the
    pipeline does) feeding ``_loop`` with a real ProgressStore and the manifest; no-op
    renders. ``mission`` is ``{"index": ..., "state": ...}``; the state is taken out of it.
    Timed."""
    from fastspectro_dask.config import RunConfig
    from fastspectro_dask.pipeline import _Options, _plan

    index = mission["index"]
    orbits = list(index)

    def plan(out: Path, summary) -> Any:
        opts = _Options(
            config=RunConfig.resolve(
                products=products,
                flush_batch_size=FLUSH,
                progress_bar=False,
            ),
            input_dir=index.root,
            out=out,
            extrema_path=out / "extrema.json",
            cache_dir=out / "reduced.zarr",
            render_fn=_noop(),
        )
        return _plan(opts, orbits, index, mission.pop("state"), summary)

    return run_loop(client, None, tmp, orbits=orbits, index=index, plan=plan)


def _noop() -> Callable:
    """``noop_render`` imported under this module's importable name (pickled by reference)."""
    import bench_pipeline

    return bench_pipeline.noop_render


def mini_loop(client, jobs: list, fn: Callable, args: tuple, *, limit: int, poll: float | None):
    """Same bounded window as ``_loop``, no bookkeeping; ``poll=None``: blocking wait."""
    from distributed import as_completed

    pending = list(reversed(jobs))
    inflight: dict[str, Any] = {}
    ac = as_completed()

    def submit() -> None:
        while pending and len(inflight) < limit:
            fut = client.submit(fn, pending.pop(), *args, pure=False, retries=0)
            inflight[fut.key] = fut
            ac.add(fut)

    submit()
    while inflight:
        batch = ac.next_batch(block=poll is None)
        if not batch:
            time.sleep(poll)
            continue
        for fut in batch:
            inflight.pop(fut.key)
            fut.result()
            fut.release()
        submit()


def predict(fit: tuple[float, float, float], n: int) -> float:
    return fit[0] * n + write_seconds(fit, n)


def write_seconds(fit: tuple[float, float, float], n: int) -> float:
    """Progress-write time of N orbits: N/FLUSH writes, the k-th one serialising k*FLUSH
    orbits, each costing a + b * (orbits in the file)."""
    _, a, b = fit
    return a * n / FLUSH + b * n * n / (2 * FLUSH)


def fit_model(runs: dict[int, dict]) -> tuple[float, float, float]:
    """(lin, a, b): the non-write seconds per task of the largest run, and the per-write cost
    ``a + b * orbits in the file`` through the two largest runs (``a = 0`` with one run)."""
    sizes = sorted(runs)
    big = sizes[-1]
    lin = (runs[big]["wall"] - runs[big]["write_s"]) / big
    b_only = 2 * FLUSH * runs[big]["write_s"] / big**2
    if len(sizes) < 2:
        return lin, 0.0, b_only
    n0, n1 = sizes[-2], big
    w0, w1 = runs[n0]["write_s"], runs[n1]["write_s"]
    # w = a * n / F + b * n^2 / (2F): two equations, two unknowns
    det = (n0 / FLUSH) * (n1 * n1 / (2 * FLUSH)) - (n1 / FLUSH) * (n0 * n0 / (2 * FLUSH))
    a = (w0 * n1 * n1 / (2 * FLUSH) - w1 * n0 * n0 / (2 * FLUSH)) / det
    b = ((n0 / FLUSH) * w1 - (n1 / FLUSH) * w0) / det
    if a < 0 or b < 0:
        return lin, 0.0, b_only
    return lin, a, b


def store_only(tmp: Path, n: int) -> str:
    """ProgressStore alone (no Dask, no GIL contention): N orbits of record_success."""
    from fastspectro_dask.state import ProgressStore

    lines = [
        "",
        f"ProgressStore alone (no Dask): record_success of {n} orbits, flush_batch_size={FLUSH}, "
        f"measured",
        f"{'orbits':>7} {'cumulative s':>13} {'writes':>7} {'last write ms':>14} {'file kB':>8}",
        "-" * 53,
    ]
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        path = Path(d) / "progress.json"
        with ProgressStore(path, "linear", "log", flush_batch_size=FLUSH) as st:
            orbits = range(10_000, 10_000 + n)
            st.set_orbits(orbits)
            real = st._write
            last = [0.0]

            def timed() -> None:
                t = time.perf_counter()
                real()
                last[0] = time.perf_counter() - t

            st._write = timed
            step = max(FLUSH, n // 5)
            t0 = time.perf_counter()
            for i, o in enumerate(orbits, 1):
                st.record_success(o)
                if i % step == 0 or i == n:
                    lines.append(
                        f"{i:>7} {time.perf_counter() - t0:13.1f} {st.writes:>7} "
                        f"{1e3 * last[0]:14.1f} {path.stat().st_size / 1e3:8.1f}"
                    )
            lines.append(_write_breakdown(st, path))
    return "\n".join(lines)


def _write_breakdown(st, path: Path) -> str:
    """Where one write's time goes, at the final size (private helpers of state.py), next
    to the indented dump the store used before (json's pure-Python encoder)."""
    import json

    try:
        from fastspectro_dask.atomic import _dumps, load_json_state
    except ImportError:
        return "(write breakdown skipped: state.py helpers renamed)"

    def ms(fn: Callable[[], Any]) -> float:
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 1e3 * median(ts)

    doc = load_json_state(path, kind="progress")
    text = _dumps(doc, None, True).encode()

    def write_fsync() -> None:
        with open(path.with_suffix(".x"), "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    parts = {
        "re-read (load_json_state)": ms(lambda: load_json_state(path, kind="progress")),
        "encode (used: ProgressStore._encode, cached blocks)": ms(st._encode),
        "(dump, one key per line, before)": ms(lambda: _dumps(doc, None, True)),
        "(dump with indent=1, before)": ms(lambda: json.dumps(doc, indent=1, sort_keys=True)),
        "write + fsync": ms(write_fsync),
    }
    return "one write at the final size, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())


def dry_run(tmp: Path, args) -> None:
    from fastspectro_dask.cluster import client_context

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    rss_before_cluster = rss_bytes()
    # the pipeline's own local cluster (fastspectro_dask.cluster.client_context)
    with client_context(max_workers=2, dashboard_address=":0") as client:
        _dry_run(tmp, args, client, rss_before_cluster)


def _dry_run(tmp: Path, args, client, rss_before_cluster: int) -> None:
    from fastspectro_dask.cluster import n_workers
    from fastspectro_dask.pipeline import _run_jobs
    from fastspectro_dask.state import ProgressStore

    cluster = client.cluster
    client.wait_for_workers(2)
    window = 2 * n_workers(client) + 2
    print(
        f"\n[3] {load()}\nbookkeeping dry run: the pipeline's planner (_plan, lazy) and "
        f"_loop with no-op tasks, 2 workers, _loop's own elastic window (from the "
        f"cluster's threads; the per-task cost table's minimal loops: window {window}), "
        f"ProgressStore(flush_batch_size=10), budget {args.budget:.0f} s per size; "
        f"RSS before the cluster {mb(rss_before_cluster)} MiB"
    )
    template = ledger_template(tmp, client)
    index, state = fake_mission(50, template)
    products = tuple(args.dry_products)
    # children started
    warm = run_planned(client, {"index": index, "state": state}, tmp, products)
    del index, state
    per_orbit = warm["figures"] / 50
    if warm["errors"] or per_orbit != int(per_orbit) or not per_orbit:
        raise RuntimeError(f"warm-up failed: {warm}")
    print(f"  products {' '.join(products)}: {per_orbit:.0f} figures per orbit")

    runs: dict[int, dict] = {}
    baseline: dict[int, dict] = {}  # one Dask task per figure, as before orbits were tasks
    mem: dict[int, dict] = {}
    skipped: list[int] = []
    for n in args.dry_sizes:
        if runs:
            fit = fit_model(runs)
            if predict(fit, n) > args.budget:
                fits = [
                    m
                    for m in range(5000, n, 5000)
                    if m > max(runs) and predict(fit, m) <= args.budget
                ]
                print(
                    f"  {n} orbits predicted at {predict(fit, n):.0f} s > budget "
                    f"{args.budget:.0f} s: "
                    + (f"running {fits[-1]} instead" if fits else "not run")
                )
                skipped.append(n)
                if not fits:
                    continue
                n = fits[-1]
        gc.collect()
        with RssSampler() as sampler:
            index, state = fake_mission(n, template)
            mission = {"index": index, "state": state}
            del index, state
            rss_jobs = rss_bytes()
            res = run_planned(client, mission, tmp, products)
            rss_loop_end = rss_bytes()
        del mission
        gc.collect()
        runs[n] = res
        if n == args.dry_baseline_size:  # the same orbits, one task per figure, right after
            index, state = fake_mission(n, template)
            mission = {"index": index, "state": state}
            del index, state
            baseline[n] = _per_figure_tasks(lambda m=mission: run_planned(client, m, tmp, products))
            del mission
        mem[n] = {
            "during": [sampler.at(res["t0"] + f * res["wall"]) for f in LOOP_FRACTIONS],
            "start": sampler.start,
            "jobs": rss_jobs,
            "peak": sampler.peak,
            "end": rss_loop_end,
            "freed": rss_bytes(),
        }
        spans = getattr(cluster.scheduler, "extensions", {}).get("spans")
        print(
            f"  {n} orbits: {res['wall']:.1f} s, {res['figures']} figures ok in "
            f"{res['tasks']} Dask tasks, "
            f"errors {res['errors'] or 'none'}; after the run: scheduler tasks "
            f"{len(cluster.scheduler.tasks)}, task groups "
            f"{len(cluster.scheduler.task_groups)}, "
            f"spans {len(spans.spans) if spans else '?'}, client futures "
            f"{len(client.futures)}; {res['sizes']}"
        )

    lines = [
        "",
        "Dry run, measured",
        f"{'orbits':>7} {'figures':>8} {'tasks':>7} {'wall s':>8} {'figures/s':>10}"
        f" {'tasks/s':>8} {'client CPU ms/figure':>21}"
        f" {'JSON writes':>12} {'write s':>8} {'write %':>8} {'progress.json':>14}",
        "-" * 133,
    ]
    for n, r in runs.items():
        f = r["figures"]
        lines.append(
            f"{n:>7} {f:>8} {r['tasks']:>7} {r['wall']:8.1f} {f / r['wall']:10.1f} "
            f"{r['tasks'] / r['wall']:8.1f} "
            f"{1e3 * r['cpu'] / f:21.2f} {r['writes']:>12} {r['write_s']:8.1f} "
            f"{100 * r['write_s'] / r['wall']:7.0f}% {r['size'] / 1e3:11.1f} kB"
        )
    for n, b in baseline.items():
        r = runs[n]
        lines.append(
            f"  baseline, {n} orbits, one Dask task per figure (run right after): "
            f"{b['tasks']} tasks, {b['wall']:.1f} s, {b['figures'] / b['wall']:.1f} figures/s, "
            f"client CPU {1e3 * b['cpu'] / b['figures']:.2f} ms/figure; an orbit per task: "
            f"{b['wall'] / r['wall']:.2f}x faster"
        )
    lines += [
        "",
        "Client RSS (this process: client + scheduler), MiB",
        f"{'orbits':>7} {'start':>7} {'index+state':>11} {'peak':>7} {'loop end':>9}"
        f" {'freed':>11} {'peak-start':>11} {'KiB/orbit':>10} {'peak-index+st':>16}",
        "-" * 98,
    ]
    for n, m in mem.items():
        lines.append(
            f"{n:>7} {mb(m['start']):>7} {mb(m['jobs']):>11} {mb(m['peak']):>7} "
            f"{mb(m['end']):>9} {mb(m['freed']):>11} {mb(m['peak'] - m['start']):>11} "
            f"{(m['peak'] - m['start']) / 1024 / n:10.2f} {mb(m['peak'] - m['jobs']):>16}"
        )
    lines += [
        "",
        "Client RSS during the loop (state dropped after planning), MiB, at "
        + " / ".join(f"{100 * f:.0f} %" for f in LOOP_FRACTIONS)
        + " of its wall time",
    ]
    for n, m in mem.items():
        lines.append(f"{n:>7}  " + " / ".join(mb(x) for x in m["during"]))
    if len(mem) >= 2:
        items = list(mem.items())
        (n0, m0), (n1, m1) = items[0], items[-1]
        g0, g1 = m0["peak"] - m0["start"], m1["peak"] - m1["start"]
        lines.append(
            f"growth of the peak over start from {n0} to {n1} orbits: {mb(g0)} -> {mb(g1)} MiB"
            f" ({(g1 - g0) / 1024 / (n1 - n0):.2f} KiB per extra orbit); of the index and "
            f"extrema state alone: {mb(m0['jobs'] - m0['start'])} -> "
            f"{mb(m1['jobs'] - m1['start'])} MiB; during the loop (peak - index+state): "
            f"{mb(m0['peak'] - m0['jobs'])} -> {mb(m1['peak'] - m1['jobs'])} MiB"
        )
    if skipped:
        fit = fit_model(runs)
        sizes = sorted(mem)
        growth = {k: mem[k]["peak"] - mem[k]["start"] for k in sizes}
        if len(sizes) >= 2:  # intercept + slope through the two largest runs
            slope = (growth[sizes[-1]] - growth[sizes[-2]]) / (sizes[-1] - sizes[-2])
            rss_model = "fixed part + slope of the two largest runs"
        else:
            slope = growth[sizes[-1]] / sizes[-1]
            rss_model = "proportional to orbits"
        slope = max(slope, 0.0)
        fixed = growth[sizes[-1]] - slope * sizes[-1]
        lines += ["", "EXTRAPOLATED (not measured) from the runs above"]
        for n in skipped:
            with tempfile.TemporaryDirectory(dir=tmp) as d:  # exact final file size
                with ProgressStore(
                    Path(d) / "p.json", "linear", "log", flush_batch_size=10**9
                ) as st:
                    st.set_orbits(range(10_000, 10_000 + n))
                    for o in range(10_000, 10_000 + n):
                        st.record_success(o)
                size = (Path(d) / "p.json").stat().st_size
            lin, a, b = fit
            lines.append(
                f"  {n} orbits: ~{predict(fit, n):.0f} s (~{n * per_orbit / predict(fit, n):.0f}"
                f" figures/s): {lin * n:.0f} s of per-orbit work ({1e3 * lin:.2f} ms/orbit) + "
                f"{write_seconds(fit, n):.0f} s of progress writes ({n // FLUSH} writes, "
                f"each ~{1e3 * a:.1f} ms + {1e6 * b:.2f} us per orbit in the file); peak RSS "
                f"growth ~{mb(fixed + slope * n)} MiB ({rss_model}); final progress.json "
                f"{size / 1e3:.1f} kB (exact: written once)"
            )

    print("\n".join(lines))
    lines = []
    if args.store_orbits:
        print(store_only(tmp, args.store_orbits))

    # -- where the per-task time goes: interleaved variants ---------------------------
    nt = args.ipc_tasks
    if nt <= 0:
        return
    jobs = fake_jobs(nt)
    flat = [jobs[o] for o in jobs]  # one figure per task
    noop = _noop()
    variants: dict[str, Callable[[], Any]] = {
        "_loop, progress writes every 10 orbits": lambda: run_loop(client, jobs, tmp),
        "_loop, no progress writes until the end": lambda: run_loop(
            client, jobs, tmp, flush_batch_size=10**9
        ),
        "window loop, sandbox (_run_jobs), 20 ms poll": lambda: mini_loop(
            client, flat, _run_jobs, (120.0, None, noop), limit=window, poll=0.02
        ),
        "window loop, no sandbox, 20 ms poll": lambda: mini_loop(
            client, [j for o in jobs for j in jobs[o]], noop, (), limit=window, poll=0.02
        ),
        "window loop, sandbox, blocking wait": lambda: mini_loop(
            client, flat, _run_jobs, (120.0, None, noop), limit=window, poll=None
        ),
        "window loop, no sandbox, blocking wait": lambda: mini_loop(
            client, [j for o in jobs for j in jobs[o]], noop, (), limit=window, poll=None
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base = median(times["window loop, no sandbox, blocking wait"])
    lines += [
        "",
        f"Per-task cost, {nt} no-op tasks, window {window}, median of {args.rounds} "
        f"interleaved rounds",
        f"{'variant':<42} {'tasks/s':>8} {'ms/task':>8} {'client CPU ms/task':>19} {'vs bare':>8}",
        "-" * 89,
    ]
    for name in variants:
        t = median(times[name])
        lines.append(
            f"{name:<42} {nt / t:8.1f} {1e3 * t / nt:8.2f} {1e3 * median(cpu[name]) / nt:19.2f}"
            f" {t / base:7.2f}x"
        )
    print("\n".join(lines))


# --------------------------------------------------------------------------------------


def cli_vs_naive(tmp: Path, args) -> None:
    """Part 0 (see the module docstring)."""
    from bench_render import naive
    from PIL import Image

    from fastspectro_dask.cache import reduce_file
    from fastspectro_dask.reduce import DEFAULT_CATEGORIES
    from fastspectro_dask.synth import write_synthetic_dataset

    data = tmp / "cli-data"
    man = write_synthetic_dataset(
        data, orbits=args.cli_orbits, records=args.cli_records, seed=1, orb_files=True
    )
    n_files = sum(len(f) for f in man.files.values())
    cmd = [sys.executable, "-m", "fastspectro_dask.cli", "plot", str(data)]
    opts = ["--max-workers", "2", "--no-report"]
    cold, warm, figures = [], [], []
    for k in range(args.rounds):
        out = tmp / f"cli-out-{k}"
        for label, extra, sink in (
            ("cold", [], cold),
            ("warm", ["--ignore-progress", "--overwrite"], warm),
        ):
            t0 = time.perf_counter()
            res = subprocess.run([*cmd, str(out), *opts, *extra], capture_output=True, text=True)
            sink.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise RuntimeError(f"{label} run failed: {res.stderr[-2000:]}")
        figures.append(sorted(out.rglob("*.png")))
    pngs = figures[-1]
    with Image.open(next(p for p in pngs if "_instruments_" in p.name)) as im:
        size_px = im.size
    orbits = [
        {i: reduce_file(p, "data", DEFAULT_CATEGORIES) for i, p in files.items()}
        for files in man.files.values()
        if {"ees", "eeb", "ies", "ieb"} <= set(files)
    ]
    draw_one = naive(size_px)
    naive_walls = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for j in range(len(pngs)):
            draw_one(orbits[j % len(orbits)], None, tmp / "naive.png", "linear", "log", None)
        naive_walls.append(time.perf_counter() - t0)
    med = {
        name: statistics.median(v)
        for name, v in (("naive", naive_walls), ("cold", cold), ("warm", warm))
    }
    print(
        f"\n0. whole CLI run vs the naive loop: {args.cli_orbits} orbits x "
        f"{args.cli_records} records ({n_files} files), {len(pngs)} figures of "
        f"{size_px[0]}x{size_px[1]} px, 2 workers; medians of {args.rounds} runs"
    )
    print(f"{'run':44s} {'wall s':>8s} {'runs':>28s} {'naive/run':>9s}")
    rows = (
        ("naive loop: draw only, 1 process", "naive", naive_walls),
        ("fastspectro plot, cold (from nothing)", "cold", cold),
        ("fastspectro plot, warm (extrema+cache kept)", "warm", warm),
    )
    for label, key, runs in rows:
        shown = ", ".join(f"{x:.1f}" for x in runs)
        print(f"{label:44s} {med[key]:8.1f} {shown:>28s} {med['naive'] / med[key]:9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orbits", type=int, default=12)
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--dry-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 50_000],
        help="orbit counts of the dry run, in order (default 10000,50000)",
    )
    ap.add_argument(
        "--dry-products",
        type=lambda s: tuple(s.split(",")),
        default=("instruments", "pitch-angle", "pad"),
        help="products of the dry run (default: a default run's, 6 figures per orbit)",
    )
    ap.add_argument(
        "--dry-baseline-size",
        type=int,
        default=10_000,
        help="dry-run size also run with one Dask task per figure, right after (0: none)",
    )
    ap.add_argument("--budget", type=float, default=360.0, help="seconds per dry-run size")
    ap.add_argument(
        "--ipc-tasks", type=int, default=2000, help="tasks of the per-task cost table (0: skip it)"
    )
    ap.add_argument(
        "--store-orbits",
        type=int,
        default=50_000,
        help="orbits of the ProgressStore-only measurement (0: skip)",
    )
    ap.add_argument("--cli-orbits", type=int, default=12, help="orbits of part 0")
    ap.add_argument("--cli-records", type=int, default=800, help="records per file, part 0")
    ap.add_argument("--only-cli", action="store_true", help="part 0 only")
    ap.add_argument("--skip-cli", action="store_true", help="skip part 0")
    ap.add_argument("--skip-e2e", action="store_true", help="skip parts 1 and 2")
    ap.add_argument("--skip-dry", action="store_true", help="skip part 3")
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    print(machine_header())
    with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as t:
        tmp = Path(t)
        if not args.skip_cli:
            cli_vs_naive(tmp, args)
        if args.only_cli:
            return
        if not args.skip_e2e:
            e2e = end_to_end(tmp, args)
            serial_vs_pipeline(tmp, e2e, args)
        if not args.skip_dry:
            dry_run(tmp, args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
