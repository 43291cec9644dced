"""Reader decode throughput: fastspectro_dask.open_esa vs bare cdflib, side by side.

Writes >= 8 synthetic real-format files (GZIP like the real archive, optionally the
uncompressed variant too), then times, interleaved over several rounds:

* ``bare cdflib``: ``cdflib.CDF(path)`` + ``varget`` of the variables below;
* ``fastesa backend .load()``: ``xr.open_dataset(path, engine="fastesa").load()`` (our
  reader, no dask): validation, fill -> NaN, block masking, data -> float32;
* ``open_esa + dask (sync)``: the lazy Dataset computed on the synchronous scheduler;
* ``open_esa + dask persist (sync)``: the same decode through the dask graph, without the
  defensive copy that ``compute()`` makes of every single-chunk result
  (``dask.array.core.finalize``); this is how the pipeline uses the reader: the reduction
  runs inside the graph and no whole array is handed back to the caller;
* ``open_esa + dask (threads)``: all files at once on the threaded scheduler.

Prints medians, MB/s of array data (the bytes cdflib decodes) and the ratio to bare cdflib.

    python benchmarks/bench_read.py [--files 8] [--records 800] [--rounds 5] [--uncompressed]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cdflib
import dask
import xarray as xr

from fastspectro_dask.io import BIG_VARIABLES, open_esa
from fastspectro_dask.synth import write_esa_file

VARIABLES = [*BIG_VARIABLES, "time_unix", "nbins", "nenergy", "valid"]


def make_files(root: Path, n_files: int, records: int, compress: bool) -> list[Path]:
    files = []
    for k in range(n_files):
        inst = ("ees", "ies")[k % 2]
        files.append(
            write_esa_file(root, inst, 13616 + k // 2, records=records, seed=11, compress=compress)
        )
    return files


def bare(files: list[Path]) -> int:
    nbytes = 0
    for f in files:
        cdf = cdflib.CDF(str(f))
        for v in VARIABLES:
            nbytes += cdf.varget(v).nbytes
    return nbytes


def backend_load(files: list[Path]) -> None:
    for f in files:
        xr.open_dataset(f, engine="fastesa", variables=VARIABLES).load()


def dask_sync(files: list[Path]) -> None:
    with dask.config.set(scheduler="synchronous"):
        for f in files:
            open_esa(f, variables=VARIABLES).compute()


def dask_persist(files: list[Path]) -> None:
    with dask.config.set(scheduler="synchronous"):
        for f in files:
            open_esa(f, variables=VARIABLES).persist()


def dask_threads(files: list[Path]) -> None:
    dsets = [open_esa(f, variables=VARIABLES) for f in files]
    dask.compute(*dsets, scheduler="threads")


def open_only(files: list[Path]) -> None:
    for f in files:
        open_esa(f, variables=VARIABLES)


def measure(files: list[Path], rounds: int) -> tuple[dict[str, list[float]], int]:
    cases: dict[str, Callable[[list[Path]], object]] = {
        "bare cdflib varget": bare,
        "fastesa backend .load()": backend_load,
        "open_esa + dask (sync)": dask_sync,
        "open_esa + dask persist (sync)": dask_persist,
        "open_esa + dask (threads)": dask_threads,
        "open_esa only (no decode)": open_only,
    }
    nbytes = bare(files)  # warm the page cache and imports
    dask_sync(files[:1])
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn(files)
            times[name].append(time.perf_counter() - t0)
    return times, nbytes


def table(label: str, times: dict[str, list[float]], nbytes: int) -> str:
    base = statistics.median(times["bare cdflib varget"])
    lines = [
        f"\n{label}: {nbytes / 1e6:.0f} MB of array data",
        f"{'variant':<31} {'median s':>9} {'MB/s':>8} {'vs bare':>8}",
        "-" * 59,
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = "" if name.startswith("open_esa only") else f"{nbytes / 1e6 / med:8.0f}"
        lines.append(f"{name:<31} {med:9.3f} {rate:>8} {med / base:8.2f}x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--records", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--uncompressed", action="store_true", help="also the uncompressed variant")
    args = ap.parse_args()
    variants = [("GZIP (real-like)", True)] + (
        [("uncompressed", False)] if args.uncompressed else []
    )
    print(
        f"{args.files} files x {args.records} records, {args.rounds} rounds, "
        f"variables: {', '.join(VARIABLES)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, compress in variants:
            files = make_files(Path(tmp) / label[:4], args.files, args.records, compress)
            size = sum(f.stat().st_size for f in files)
            times, nbytes = measure(files, args.rounds)
            print(table(f"{label}, {size / 1e6:.0f} MB on disk", times, nbytes))


if __name__ == "__main__":
    main()
