"""Mission-wide extrema: compute_global_extrema vs pooling the values in numpy, side by side.

Writes synthetic real-format files (``write_synthetic_dataset``: 4 instruments, burst files
for about 2 orbits in 3) once for the largest orbit count asked for; the smaller missions
are hard links to its first orbits (the synthetic content of an orbit depends only on the
seed and the orbit number, so that is what ``write_synthetic_dataset(orbits=N)`` writes).
Every measurement runs in a **fresh subprocess** (so peak RSS is that of one variant only:
``VmHWM`` read inside the child, see :func:`_maxrss_mb` for why not ``ru_maxrss``), variants
are interleaved round by round, and the tables show medians over the rounds. Wall and CPU
(user + system, all threads) times are measured inside the child, after the imports
(interpreter start-up and imports are not counted); CPU time is the steadier number when
other processes share the machine. "post-import" is the child's peak RSS once numpy, dask,
xarray, zarr, cdflib and fastspectro_dask are imported; "peak - post-import" is what the
variant itself added.

(a) ``ours``: ``compute_global_extrema(root, extrema_json_path=<fresh dir>/extrema.json,
    variable="data")`` cold (fresh JSON and zarr cache; local threads,
    ``max_workers=os.cpu_count()``; all 4 instruments x 4 pitch-angle categories) vs
    ``pooled numpy``: ``open_esa`` + ``reduce_dataset`` of every file (same thread pool),
    the positive finite float32 reduced values of the ``all`` category concatenated per
    instrument, ``np.percentile(pooled, 95)``.
(b) ``dask.array.percentile`` (one chunk per file of the positive finite values) vs the exact
    ``np.percentile(pooled, 95)``: relative error, next to ours (asserted to be exactly 0).
(c) ours cold vs merely reading and reducing every file once (``open_esa`` +
    ``reduce_dataset(...).compute(scheduler="synchronous")`` per file in a
    ``ThreadPoolExecutor(os.cpu_count())``, the variables ours reads), and ours re-run warm
    (state up to date) and with another percentile (pass 2 only, from the zarr cache).
(d) ours' peak memory at ``--orbits-small`` vs ``--orbits-large`` orbits: growth in %.
(e) bookkeeping only (no CDF is read): the cost of one pass-1 flush of ``--flush-files``
    ledger entries (10 orbits x 4 instruments by default) when N = 2k / 20k / 200k files
    are already counted, with synthetic ledger entries and realistic merged histograms.
    "ours" is ``fastspectro_dask.ledger.Ledger`` through its public API (``put`` then
    ``flush``: the batch's lines appended to the ledger journal and ``fsync``-ed, then the
    small JSON replaced). "naive" is the baseline of keeping the whole state in one
    document: the same JSON with the ledger inline, rewritten with ``atomic_write_json``
    every flush. It is built in this file: the former schema-2 writer (and
    ``Merged.to_json``) no longer exist, so the schema-2 document itself cannot be built
    any more; this baseline is the same idea (ledger inline, whole document rewritten),
    with the histograms in today's compact form. Bytes are
    those written per flush; times are medians in this process. Also the time to open
    (load) each state when a run starts, the journal's size, and the total flush cost
    projected over a whole mission.

(f) ``--cluster-pass1 N``, alone: pass 1 on the pipeline's own 2-worker local cluster
    (``fastspectro_dask.cluster.client_context``) over N orbits whose reduced files are
    already in the zarr cache (a fresh extrema JSON each run: every file is counted again
    from its cached summary, no CDF is decoded), so the scheduling loop's cost per file
    is what is measured: ``compute_global_extrema``'s own pass-1 seconds, with 4 files per
    Dask task (ours) and, interleaved round by round, one task per file (the baseline,
    ``extrema._SEVERAL_WHILE_PER_THREAD`` set out of reach). Medians of ``--rounds``.

    python benchmarks/bench_extrema.py [--orbits 20] [--records 400] [--rounds 3]
        [--orbits-small 10] [--orbits-large 40] [--rerun-percentile 99] [--keep DIR]
        [--ledger-sizes 2000,20000,200000] [--flush-files 40] [--bookkeeping-only]
        [--cluster-pass1 N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PERCENTILE = 95.0
VARIABLE = "data"
READ_VARIABLES = [VARIABLE, "pitch_angle", "domega", "energy_full"]  # what ours reads


# --------------------------------------------------------------------------------------
# Child side: one measurement per process, result as one JSON line on stdout
# --------------------------------------------------------------------------------------


def _maxrss_mb() -> float:
    """Peak RSS of this process, MB.

    ``VmHWM`` (the high-water mark of this process's own address space) rather than
    ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``execve`` from the address space that
    was replaced, which for a ``vfork``-ed child (what ``subprocess`` uses) is the
    *parent's*, so every child would report at least the parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    """User + system CPU seconds of this process (all threads) so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _imports() -> None:
    """The same imports in every child, before the post-import baseline is read."""
    import cdflib  # noqa: F401
    import dask
    import dask.array  # noqa: F401
    import numpy  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import fastspectro_dask.extrema
    import fastspectro_dask.io
    import fastspectro_dask.reduce  # noqa: F401


def _files(root: Path) -> list[tuple[str, Path]]:
    from fastspectro_dask.discovery import discover

    return [(inst, p) for files in discover(root).values() for inst, p in files.items()]


def _read_reduce_all(root: Path, keep_values: bool) -> dict:
    """Read + reduce every file on a thread pool of os.cpu_count(); positive finite
    float32 values of the ``all`` category per file, grouped by instrument."""
    import concurrent.futures as cf

    import numpy as np

    from fastspectro_dask.io import open_esa
    from fastspectro_dask.reduce import reduce_dataset

    def one(inst: str, path: Path):
        ds = open_esa(path, variables=READ_VARIABLES)
        red = reduce_dataset(ds, variable=VARIABLE).compute(scheduler="synchronous")
        if not keep_values:
            return inst, None
        v = red["values"].sel(category="all").values.astype(np.float32).reshape(-1)
        return inst, v[np.isfinite(v) & (v > 0)]

    out: dict[str, list] = {}
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for inst, v in pool.map(lambda a: one(*a), _files(root)):
            out.setdefault(inst, []).append(v)
    return out


def child(mode: str, root: Path, out: Path | None, rerun_q: float, reruns: bool) -> dict:
    import logging

    logging.disable(logging.CRITICAL)
    _imports()
    base = _maxrss_mb()
    res: dict = {"mode": mode, "base_mb": base}
    import numpy as np

    c0 = _cpu_s()

    if mode == "ours":
        from fastspectro_dask.extrema import compute_global_extrema

        json_path = out / "extrema.json"
        t0 = time.perf_counter()
        st = compute_global_extrema(root, extrema_json_path=json_path, variable=VARIABLE)
        res["seconds"] = time.perf_counter() - t0
        res["peak_mb"] = _maxrss_mb()
        res["cpu_s"] = _cpu_s() - c0
        res["timing"] = st["timing_seconds"]
        res["zmax"] = {i: st["results"][i]["all"]["z_max"] for i in st["results"]}
        res["n"] = {i: st["results"][i]["all"]["n_samples"] for i in st["results"]}
        res["json_kb"] = json_path.stat().st_size / 1024
        if reruns:
            t0 = time.perf_counter()
            compute_global_extrema(root, extrema_json_path=json_path, variable=VARIABLE)
            res["warm_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            st = compute_global_extrema(
                root, extrema_json_path=json_path, variable=VARIABLE, max_percentile=rerun_q
            )
            res["rerun_seconds"] = time.perf_counter() - t0
            res["rerun_timing"] = st["timing_seconds"]
    elif mode == "pooled":
        t0 = time.perf_counter()
        parts = _read_reduce_all(root, keep_values=True)
        pooled = {i: np.concatenate(v) for i, v in parts.items()}
        res["zmax"] = {i: float(np.percentile(p, PERCENTILE)) for i, p in pooled.items()}
        res["seconds"] = time.perf_counter() - t0
        res["peak_mb"] = _maxrss_mb()
        res["cpu_s"] = _cpu_s() - c0
        res["pooled_mb"] = sum(p.nbytes for p in pooled.values()) / 2**20
    elif mode == "read":
        t0 = time.perf_counter()
        _read_reduce_all(root, keep_values=False)
        res["seconds"] = time.perf_counter() - t0
        res["peak_mb"] = _maxrss_mb()
        res["cpu_s"] = _cpu_s() - c0
    elif mode == "daskpct":
        import dask.array as da

        parts = _read_reduce_all(root, keep_values=True)
        res["exact"], res["dask"], res["n"], res["chunks"] = {}, {}, {}, {}
        t_dask = 0.0
        for inst, vs in parts.items():
            pooled = np.concatenate(vs)
            res["exact"][inst] = float(np.percentile(pooled, PERCENTILE))
            res["n"][inst] = int(pooled.size)
            vs = [v for v in vs if v.size]
            x = da.concatenate([da.from_array(v, chunks=v.shape) for v in vs])
            res["chunks"][inst] = x.numblocks[0]
            t0 = time.perf_counter()
            res["dask"][inst] = float(np.ravel(da.percentile(x, PERCENTILE).compute())[0])
            t_dask += time.perf_counter() - t0
        res["dask_seconds"] = t_dask
    else:
        raise ValueError(mode)
    return res


# --------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------


def run_child(mode: str, root: Path, work: Path, args, reruns: bool = False) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))  # fresh JSON + zarr cache
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--out", str(out)]
    cmd += ["--rerun-percentile", str(args.rerun_percentile)] + (["--reruns"] if reruns else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"child {mode} on {root} failed")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_missions(base: Path, counts: list[int], records: int, seed: int) -> dict[int, Path]:
    """One synthetic mission of max(counts) orbits; the smaller ones hard-link its first
    orbits (same content as writing them with write_synthetic_dataset(orbits=n))."""
    from fastspectro_dask.synth import write_synthetic_dataset

    top = max(counts)
    full = base / f"orbits{top}"
    man = write_synthetic_dataset(full, orbits=top, records=records, seed=seed)
    first = min(man.files)
    roots = {top: full}
    for n in sorted(set(counts) - {top}):
        root = base / f"orbits{n}"
        for orbit in range(first, first + n):
            for path in man.files.get(orbit, {}).values():
                dst = root / path.relative_to(full)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, dst)
                except OSError:
                    shutil.copy2(path, dst)
        roots[n] = root
    return roots


# --------------------------------------------------------------------------------------
# (e) Bookkeeping only: per-flush cost of the extrema ledger vs a naive whole-JSON rewrite
# --------------------------------------------------------------------------------------

_INSTS = ("ees", "eeb", "ies", "ieb")
_CATS = ("all", "downgoing", "upgoing", "perpendicular")
_ROOT = "/data/fast/esa/l2"  # the input root recorded in the state (never read)
_FIRST_KEY, _N_KEYS = 0x3F80, 20 * 128  # float32 bits >> 16 of 1.0, 20 octaves of bins


def _ledger_entry(i: int) -> tuple[str, dict]:
    """A realistic ledger entry (what pass 1 records for a counted file of 'data')."""
    orbit = 1000 + i // 4
    inst = _INSTS[i % 4]
    rel = (
        f"{1996 + orbit // 6000}/{orbit // 500 % 12 + 1:02d}/fa_esa_l2_{inst}_"
        f"{19960821000000 + orbit * 8:014d}_{orbit:05d}_v02.cdf"
    )
    return rel, {
        "orbit": orbit,
        "instrument": inst,
        "size": 400_000 + i * 7919 % 300_000,
        "mtime_ns": 1_795_924_317_334_182_826 + i * 1_000_003,
        "status": "counted",
        "entry": f"{inst}-{orbit}-{i * 2654435761 % 16**20:020x}",
        "n": 1000 + i % 5000,
        "min_positive": dict.fromkeys(_CATS, 1.0),
    }


def _merged_histograms(ledger: dict[str, dict], seed: int = 0) -> dict:
    """16 merged pass-1 summaries as a mission fills them: up to 2,560 float32 bins (128 per
    octave) and ~200 distinct energies each. Each histogram holds exactly the samples the
    ledger counts for its instrument, as :meth:`~fastspectro_dask.ledger.Ledger.open`
    checks."""
    import numpy as np

    from fastspectro_dask.ledger import Merged

    rng = np.random.default_rng(seed)
    es = np.unique(np.geomspace(4.0, 30000.0, 200).astype(np.float32))
    out: dict[str, dict] = {}
    for inst in _INSTS:
        total = sum(e["n"] for e in ledger.values() if e["instrument"] == inst)
        out[inst] = {}
        for cat in _CATS:
            m = Merged()
            weights = rng.random(_N_KEYS)
            m.counts[_FIRST_KEY : _FIRST_KEY + _N_KEYS] = rng.multinomial(
                total, weights / weights.sum()
            )
            cs = rng.integers(1, 10**9, es.size)
            m.energy = {float(e): int(c) for e, c in zip(es, cs, strict=True)}
            out[inst][cat] = m
    return out


def _count(merged: dict, batch: list[tuple[str, dict]]) -> None:
    """Add a batch of counted files' samples to the merged histograms (one bin each)."""
    for _rel, e in batch:
        for m in merged[e["instrument"]].values():
            m.counts[_FIRST_KEY + e["orbit"] % _N_KEYS] += e["n"]


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                _dev, mnt, fstype = line.split()[:3]
                if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                    best, kind = mnt, fstype
    except OSError:
        pass
    return kind


def _naive(
    d: Path, params: dict, ledger: dict, extra: list, batch: int, flushes: int
) -> dict[str, float]:
    """The naive baseline: the whole state, ledger inline, one JSON rewritten every flush.

    The document is what the ledger's JSON holds (params, merged histograms in their
    compact form) plus ``files``: the ledger itself. It is built here, not by the package
    (the schema-2 writer and ``Merged.to_json`` it used are gone). Written with the same
    atomic writer; loading it = parse + decode the merged histograms, as ``Ledger.open``
    decodes them.
    """
    from fastspectro_dask.atomic import atomic_write_json, load_json_state
    from fastspectro_dask.ledger import Merged

    path, ledger = d / "naive.json", dict(ledger)
    merged = _merged_histograms(ledger)
    times, nbytes = [], 0
    for k in range(flushes):
        chunk = extra[k * batch : (k + 1) * batch]
        _count(merged, chunk)
        t0 = time.perf_counter()
        ledger.update(chunk)
        doc = {
            "schema": "naive",
            "params": params,
            "complete": False,
            "input_root": _ROOT,
            "files": ledger,
            "pass1": {i: {c: m.to_compact() for c, m in cm.items()} for i, cm in merged.items()},
        }
        atomic_write_json(path, doc)
        times.append(time.perf_counter() - t0)
        nbytes = path.stat().st_size
    t0 = time.perf_counter()
    state = load_json_state(path, kind="extrema")
    decoded = {
        i: {c: Merged.from_compact(o) for c, o in cm.items()} for i, cm in state["pass1"].items()
    }
    load = time.perf_counter() - t0
    assert len(state["files"]) == len(ledger) and len(decoded) == len(_INSTS)
    return {"naive_s": statistics.median(times), "naive_bytes": nbytes, "naive_load_s": load}


def _ours(
    d: Path, params: dict, ledger: dict, extra: list, batch: int, flushes: int
) -> dict[str, float]:
    """Ours: :class:`~fastspectro_dask.ledger.Ledger` through its public API only
    (``open``, ``put``, the ``merged`` state the caller keeps, ``flush``, ``last_flush``,
    ``size``, ``close``): a journal of ``len(ledger)`` entries, then timed flushes of
    ``batch`` entries each, then the time to open the result in a new ``Ledger``."""
    from fastspectro_dask.ledger import Ledger

    json_path = d / "extrema.json"
    store = Ledger(json_path, params, _ROOT, _INSTS, _CATS)
    try:
        store.open()  # nothing there yet: an empty journal
        for rel, e in ledger.items():
            store.put(rel, e)
        store.merged = _merged_histograms(ledger)
        store.flush(False)  # the mission so far: N entries committed
        times, journal_b, json_b = [], [], []
        for k in range(flushes):
            chunk = extra[k * batch : (k + 1) * batch]
            _count(store.merged, chunk)
            t0 = time.perf_counter()
            for rel, e in chunk:
                store.put(rel, e)
            store.flush(False)
            times.append(time.perf_counter() - t0)
            journal_b.append(store.last_flush["journal_bytes"])
            json_b.append(store.last_flush["json_bytes"])
        journal_mb = store.size / 1e6
    finally:
        store.close()
    again = Ledger(json_path, params, _ROOT, _INSTS, _CATS)
    t0 = time.perf_counter()
    state = again.open()
    load = time.perf_counter() - t0
    again.close()
    # a load that fell back to "start afresh" would time nothing: it must find every entry
    assert state and len(again.ledger) == len(ledger) + batch * flushes, "ledger not reloaded"
    return {
        "ours_s": statistics.median(times),
        "ours_journal_bytes": statistics.median(journal_b),
        "ours_json_bytes": statistics.median(json_b),
        "ours_load_s": load,
        "journal_mb": journal_mb,
    }


def bookkeeping(work: Path, sizes: list[int], batch: int, flushes: int) -> list[dict]:
    """Per-flush cost with ``n`` files already counted, naive and ours, for each size."""
    import logging

    from fastspectro_dask.ledger import SCHEMA

    params = {"variable": VARIABLE, "categories": {c: [] for c in _CATS}, "schema": SCHEMA}
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        rows = []
        for n in sizes:
            d = work / f"bookkeeping-{n}"
            d.mkdir(parents=True, exist_ok=True)
            ledger = dict(_ledger_entry(i) for i in range(n))
            extra = [_ledger_entry(i) for i in range(n, n + batch * flushes)]
            # the naive rewrite grows with n: a few flushes are enough for its median
            naive_flushes = max(1, min(flushes, 3 if n >= 100_000 else 5))
            row = {"n": n, "naive_flushes": naive_flushes}
            row |= _naive(d, params, ledger, extra, batch, naive_flushes)
            row |= _ours(d, params, ledger, extra, batch, flushes)
            rows.append(row)
            shutil.rmtree(d, ignore_errors=True)
    finally:
        logging.disable(previous)
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def print_bookkeeping(rows: list[dict], batch: int, flushes: int, work: Path) -> None:
    counts = sorted({r["naive_flushes"] for r in rows})
    naive_flushes = "-".join(map(str, counts[:1] + counts[1:][-1:]))
    table = []
    for r in rows:
        ours_b = r["ours_journal_bytes"] + r["ours_json_bytes"]
        table.append(
            [
                f"{r['n']:,}",
                f"{r['naive_s'] * 1e3:.1f}",
                f"{r['naive_bytes'] / 1e6:.2f}",
                f"{r['ours_s'] * 1e3:.2f}",
                f"{r['ours_journal_bytes'] / 1e3:.1f} + {r['ours_json_bytes'] / 1e3:.1f}",
                f"{r['naive_s'] / r['ours_s']:.1f}x",
                f"{r['naive_bytes'] / ours_b:.1f}x",
                f"{r['naive_load_s']:.3f} / {r['ours_load_s']:.3f}",
                f"{r['journal_mb']:.2f}",
            ]
        )
    print(
        fmt_table(
            f"(e) bookkeeping only: one pass-1 flush of {batch} ledger entries with N files "
            f"already counted (median of {flushes} flushes of ours, of {naive_flushes} of "
            "naive) "
            f"[{_fs_type(work)} at {work}]",
            [
                "files already counted (N)",
                "naive ms",
                "naive MB",
                "ours ms",
                "ours kB (journal + JSON)",
                "time naive/ours",
                "bytes naive/ours",
                "open s, naive / ours",
                "journal MB",
            ],
            table,
        )
    )
    print(
        "    naive: the whole state (ledger inline) rewritten as one JSON every flush; "
        "ours: Ledger.flush (the batch appended to the journal + fsync, then the small JSON)"
    )
    big = rows[-1]
    n_flush = max(1, big["n"] // batch)
    # naive: each flush rewrites everything counted so far, so over a mission of N files the
    # flushes cost about n_flush x (cost at N) / 2; ours: n_flush x (cost per flush)
    naive_total = n_flush * big["naive_s"] / 2
    ours_total = n_flush * statistics.median(r["ours_s"] for r in rows)
    naive_bytes = n_flush * big["naive_bytes"] / 2
    ours_bytes = n_flush * (big["ours_journal_bytes"] + big["ours_json_bytes"])
    print(
        f"    projected over a {big['n']:,}-file mission ({n_flush:,} flushes of {batch}): "
        f"naive ~{_duration(naive_total)} and {naive_bytes / 1e9:.2f} GB written, ours "
        f"~{_duration(ours_total)} and {ours_bytes / 1e9:.2f} GB; ledger journal at "
        f"{big['n']:,} files: {big['journal_mb']:.1f} MB (append-only, read once per run)"
    )


def cluster_pass1(work: Path, orbits: int, records: int, rounds: int, seed: int) -> dict:
    """(f): pass-1 seconds per run, ours and one task per file, interleaved."""
    import logging

    from fastspectro_dask import extrema as ext
    from fastspectro_dask.cluster import client_context
    from fastspectro_dask.extrema import compute_global_extrema
    from fastspectro_dask.schedule import TaskLoop
    from fastspectro_dask.synth import write_synthetic_dataset

    root = work / "pass1-data"
    write_synthetic_dataset(root, orbits=orbits, records=records, seed=seed)
    cache = work / "pass1-reduced.zarr"
    ours = ext._SEVERAL_WHILE_PER_THREAD
    variants = {"ours, 4 files per task": ours, "one task per file": 10**12}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    tasks: dict[str, int] = {}
    logging.getLogger("fastspectro_dask").setLevel(logging.WARNING)
    submitted: list[int] = []  # Dask tasks of each pass 1, from the scheduling loop
    real_run = TaskLoop.run

    def counted_run(self, source, handle):
        try:
            return real_run(self, source, handle)
        finally:
            submitted.append(self.submitted)

    def pass1(label: str, several: int, out: Path) -> dict:
        ext._SEVERAL_WHILE_PER_THREAD = several
        try:
            return compute_global_extrema(
                root,
                "linear",
                "log",
                extrema_json_path=out / "extrema.json",
                cache_path=cache,
                client=client,
            )
        finally:
            ext._SEVERAL_WHILE_PER_THREAD = ours
            tasks[label] = submitted[-1] if submitted else 0

    TaskLoop.run = counted_run
    try:
        with client_context(max_workers=2, dashboard_address=":0") as client:
            client.wait_for_workers(2)
            first = pass1("fill", ours, work / "pass1-fill")  # the cache filled: CDFs decoded
            files = len(first["files"])
            for r in range(rounds):
                for label, several in variants.items():
                    state = pass1(label, several, work / f"pass1-{r}-{several}")
                    if state["results"] != first["results"]:
                        raise RuntimeError(f"{label}: other limits than the first run")
                    seconds[label].append(state["timing_seconds"]["pass1"])
    finally:
        TaskLoop.run = real_run
    base = statistics.median(seconds["one task per file"])
    print(
        f"\n(f) pass 1 on a 2-worker local cluster, warm cache (no CDF decoded), {orbits} "
        f"orbits, {files} files; medians of {rounds} interleaved rounds"
    )
    print(
        f"{'variant':28s} {'tasks':>6s} {'pass 1 s':>9s} {'files/s':>8s} {'runs':>24s}"
        f" {'speed-up':>9s}"
    )
    for label, runs in seconds.items():
        m = statistics.median(runs)
        shown = ", ".join(f"{x:.1f}" for x in runs)
        print(
            f"{label:28s} {tasks[label]:6d} {m:9.2f} {files / m:8.1f} {shown:>24s} {base / m:8.2f}x"
        )
    return {"files": files, "seconds": seconds, "tasks": tasks}


def med(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def fmt_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    widths[0] = max(widths[0], 30)

    def line(r: list[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(cells))

    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([f"\n{title}", line(header), sep, *map(line, rows)])


def main(argv: list[str] | None = None) -> list[dict] | None:
    """Run the benchmark (``argv``: the command line, default ``sys.argv[1:]``).

    Returns the rows of (e) (``None`` in a ``--child`` process).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orbits", type=int, default=20, help="mission size of (a)-(c)")
    ap.add_argument("--records", type=int, default=400, help="records per survey file")
    ap.add_argument("--orbits-small", type=int, default=10, help="(d) small mission")
    ap.add_argument("--orbits-large", type=int, default=40, help="(d) large mission")
    ap.add_argument("--rounds", type=int, default=3, help="fresh subprocesses per variant")
    ap.add_argument("--rerun-percentile", type=float, default=99.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="write the data here and keep it")
    ap.add_argument(
        "--ledger-sizes",
        default="2000,20000,200000",
        help="(e) files already counted, comma-separated",
    )
    ap.add_argument("--flush-files", type=int, default=40, help="(e) ledger entries per flush")
    ap.add_argument("--flushes", type=int, default=20, help="(e) flushes of ours timed")
    ap.add_argument(
        "--bookkeeping-only", action="store_true", help="run only (e); no CDF file is written"
    )
    ap.add_argument(
        "--cluster-pass1",
        type=int,
        default=0,
        metavar="N",
        help="run only (f): pass 1 on a local cluster over N orbits, warm cache",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--reruns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child, args.root, args.out, args.rerun_percentile, args.reruns)
        print(json.dumps(res))
        return None

    import cdflib
    import dask
    import numpy as np
    import xarray as xr
    import zarr

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}, dask {dask.__version__}, "
        f"xarray {xr.__version__}, zarr {zarr.__version__}, cdflib {cdflib.__version__}"
    )
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work_ctx = None
        work = args.keep
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="bench_extrema-")
        work = Path(work_ctx.name)
    try:
        sizes = [int(x) for x in args.ledger_sizes.split(",") if x.strip()]
        if args.cluster_pass1:
            cluster_pass1(work, args.cluster_pass1, 20, args.rounds, args.seed)
            return None
        if args.bookkeeping_only:
            rows = bookkeeping(work, sizes, args.flush_files, args.flushes)
            print_bookkeeping(rows, args.flush_files, args.flushes, work)
            return rows
        counts = sorted({args.orbits, args.orbits_small, args.orbits_large})
        t0 = time.perf_counter()
        roots = make_missions(work / "data", counts, args.records, args.seed)
        print(
            f"data: seed {args.seed}, ~{args.records} records per file, written in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        for n in counts:
            files = [p for p in roots[n].rglob("*.cdf")]
            by = {
                i: sum(f"_l2_{i}_" in p.name for p in files) for i in ("ees", "eeb", "ies", "ieb")
            }
            print(
                f"  {n:3d} orbits: {len(files):4d} files "
                f"({', '.join(f'{k} {v}' for k, v in by.items())}), "
                f"{sum(p.stat().st_size for p in files) / 1e6:7.1f} MB on disk"
            )
        root = roots[args.orbits]
        R = args.rounds
        print(f"rounds: {R} fresh subprocesses per variant, interleaved; medians shown")

        # ---- (a) + (c): interleaved rounds on the main mission
        runs: dict[str, list[dict]] = {"ours": [], "pooled": [], "read": []}
        for _ in range(R):
            runs["ours"].append(run_child("ours", root, work, args, reruns=True))
            runs["pooled"].append(run_child("pooled", root, work, args))
            runs["read"].append(run_child("read", root, work, args))
        dres = run_child("daskpct", root, work, args)

        ours, pooled = runs["ours"], runs["pooled"]
        rows = []
        for label, key in (
            ("wall time, s", "seconds"),
            ("CPU time (user+sys), s", "cpu_s"),
            ("peak RSS, MB", "peak_mb"),
            ("post-import RSS, MB", "base_mb"),
        ):
            a, b = med(ours, key), med(pooled, key)
            rows.append([label, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}x"])
        a = statistics.median(r["peak_mb"] - r["base_mb"] for r in ours)
        b = statistics.median(r["peak_mb"] - r["base_mb"] for r in pooled)
        rows.append(["peak - post-import, MB", f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}x"])
        print(
            fmt_table(
                f"(a) {args.orbits} orbits, cold: ours (4 instruments x 4 categories, exact) "
                f"vs pooled numpy (4 instruments x 'all')",
                ["metric (median)", "ours", "pooled numpy", "ours/pooled"],
                rows,
            )
        )
        print(
            f"    runs, s: ours {[round(r['seconds'], 2) for r in ours]}, pooled "
            f"{[round(r['seconds'], 2) for r in pooled]}; pooled arrays held: "
            f"{med(pooled, 'pooled_mb'):.1f} MB (grows linearly with the mission); "
            f"ours' JSON state: {med(ours, 'json_kb'):.0f} kB"
        )

        # ---- (b)
        rows = []
        for inst in sorted(dres["exact"], key=("ees", "eeb", "ies", "ieb").index):
            exact = dres["exact"][inst]
            got = {r["zmax"][inst] for r in ours}
            ours_err = max(abs(g - exact) / exact for g in got)
            assert all(g == exact for g in got), f"{inst}: ours {got} != numpy {exact}"
            assert all(r["zmax"][inst] == exact for r in pooled)
            dk = dres["dask"][inst]
            rows.append(
                [
                    inst,
                    f"{dres['n'][inst]}",
                    f"{dres['chunks'][inst]}",
                    f"{exact:.7g}",
                    f"{next(iter(got)):.7g}",
                    f"{ours_err:.1e}",
                    f"{dk:.7g}",
                    f"{abs(dk - exact) / exact:.2e}",
                    f"{dk / exact:.5f}",
                ]
            )
        print(
            fmt_table(
                f"(b) p{PERCENTILE:g} of positive finite reduced '{VARIABLE}' ('all' category), "
                f"{args.orbits} orbits",
                [
                    "instrument",
                    "values",
                    "chunks",
                    "np.percentile",
                    "ours",
                    "ours rel.err",
                    "da.percentile",
                    "dask rel.err",
                    "dask/exact",
                ],
                rows,
            )
        )
        print(
            "    ours == np.percentile(pooled, 95) bit for bit: asserted for every instrument"
            f" and run; da.percentile compute: {dres['dask_seconds']:.3f} s"
        )

        # ---- (c)
        base_t = med(runs["read"], "seconds")
        p1 = statistics.median(r["timing"]["pass1"] for r in ours)
        p2 = statistics.median(r["timing"]["pass2"] for r in ours)
        rows = [
            [
                "read + reduce every file once",
                f"{base_t:.3f}",
                f"{med(runs['read'], 'cpu_s'):.1f}",
                "1.00x",
            ],
            [
                f"ours cold (pass 1 {p1:.1f} s + pass 2 {p2:.1f} s)",
                f"{med(ours, 'seconds'):.3f}",
                f"{med(ours, 'cpu_s'):.1f}",
                f"{med(ours, 'seconds') / base_t:.2f}x",
            ],
            [
                "ours warm re-run (up to date)",
                f"{med(ours, 'warm_seconds'):.3f}",
                "",
                f"{med(ours, 'warm_seconds') / base_t:.4f}x",
            ],
            [
                f"ours re-run p{args.rerun_percentile:g} (pass 2 from cache)",
                f"{med(ours, 'rerun_seconds'):.3f}",
                "",
                f"{med(ours, 'rerun_seconds') / base_t:.2f}x",
            ],
            [
                "pooled numpy (from (a))",
                f"{med(pooled, 'seconds'):.3f}",
                f"{med(pooled, 'cpu_s'):.1f}",
                f"{med(pooled, 'seconds') / base_t:.2f}x",
            ],
        ]
        print(
            fmt_table(
                f"(c) {args.orbits} orbits, {os.cpu_count()} threads everywhere",
                ["variant", "median wall s", "CPU s", "wall vs read+reduce"],
                rows,
            )
        )

        # ---- (d)
        small, large = args.orbits_small, args.orbits_large
        scal: dict[int, list[dict]] = {small: [], large: []}
        for _ in range(R):
            for n in (small, large):
                scal[n].append(run_child("ours", roots[n], work, args))
        cols = [small, args.orbits, large] if small < args.orbits < large else [small, large]
        data = {**{n: scal[n] for n in (small, large)}, args.orbits: ours}
        rows = []
        for label, fn in (
            ("peak RSS, MB", lambda r: r["peak_mb"]),
            ("post-import RSS, MB", lambda r: r["base_mb"]),
            ("peak - post-import, MB", lambda r: r["peak_mb"] - r["base_mb"]),
            ("wall time, s", lambda r: r["seconds"]),
            ("CPU time, s", lambda r: r["cpu_s"]),
            ("JSON state, kB", lambda r: r["json_kb"]),
        ):
            vals = [statistics.median(map(fn, data[n])) for n in cols]
            growth = 100 * (vals[-1] / vals[0] - 1)
            rows.append([label, *(f"{v:.1f}" for v in vals), f"{growth:+.1f} %"])
        print(
            fmt_table(
                f"(d) ours cold, memory vs mission size ({R} fresh subprocesses each)",
                ["metric (median)", *(f"{n} orbits" for n in cols), f"{large} vs {small}"],
                rows,
            )
        )
        growth = 100 * (
            statistics.median(r["peak_mb"] for r in scal[large])
            / statistics.median(r["peak_mb"] for r in scal[small])
            - 1
        )
        print(
            f"    peak RSS growth {small} -> {large} orbits: {growth:+.1f} % "
            f"(target <= 10 %: {'met' if growth <= 10 else 'NOT met'})"
        )
        # ---- (e)
        rows = bookkeeping(work, sizes, args.flush_files, args.flushes)
        print_bookkeeping(rows, args.flush_files, args.flushes, work)
        print(
            f"\ntotal benchmark time: {time.perf_counter() - t_start:.0f} s; load average "
            f"(1 min) at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f}"
        )
        return rows
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()


if __name__ == "__main__":
    main()
