"""Read and reduce at the speed of the decoder: ``reduce_file`` vs bare cdflib, side by side.

Writes synthetic real-format files (GZIP, cdfconvert-like blocking, as the real archive)
with :func:`fastspectro_dask.synth.write_esa_file`, then times, interleaved in every round
(file by file, so page cache and machine load hit every variant alike):

* ``(a) raw cdflib decode``: ``cdflib.CDF(path).varget`` of exactly the variables the
  reduction of ``--variable`` reads (the measurement, ``pitch_angle``, ``domega``,
  ``energy_full``, ``time_delta``, and the per-record ``time_unix``, ``nbins``,
  ``nenergy``, ``valid`` that place records and mark their valid block), plus
  fill -> NaN of the float variables (``FILLVAL`` read with ``attget``, as we do);
* ``(b) reduce_file``: :func:`fastspectro_dask.cache.reduce_file`, what an extrema or
  render task runs: decode + fill/block masking + the reduction to the four pitch-angle
  categories (and, with ``--pad``, the pitch-angle spectrogram);
* ``(c) decode only``: :func:`fastspectro_dask.io.load_esa` of the same variables (our
  decode alone: validation, fill -> NaN, valid-block masking, no reduction);
* ``(d) lazy reduce, sync``: for reference, the reduction of the lazy Dataset
  (``reduce_dataset(open_esa(path)).compute(scheduler="synchronous")``), the nested
  graph that ``reduce_file`` used to compute inside its task.

(b), (c) and (d) read the same blocks and inflate them with the same zlib, but gather them
themselves (``fastspectro_dask.io._varget_blocks``: straight into one buffer, where
cdflib's ``varget`` joins them into a byte string and copies it again); (a) stays
cdflib's ``varget``. Most of that difference is page faults on fresh buffers, so it
depends on how the allocator reuses memory in the process.

Prints per-file medians over the rounds and ratios to (a). Goal: (b)/(a) <= 1.3.

    python benchmarks/bench_read.py [--files 4] [--records 800] [--rounds 3]
                                    [--variable data|eflux|rate] [--pad]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cdflib
import numpy as np

from fastspectro_dask.cache import reduce_file
from fastspectro_dask.io import load_esa, open_esa
from fastspectro_dask.reduce import DEFAULT_CATEGORIES, SOURCE_VARIABLE, PadSpec, reduce_dataset
from fastspectro_dask.synth import write_esa_file

#: Per-record variables that place records in time and give their valid block.
SUPPORT = ["time_unix", "nbins", "nenergy", "valid"]


def needed(variable: str, pad: bool) -> list[str]:
    """The CDF variables ``reduce_file`` reads for ``variable`` (as cache.reduce_file)."""
    names = [SOURCE_VARIABLE[variable], "pitch_angle", "domega", "energy_full", "time_delta"]
    if variable == "rate":
        names.append("time_integ")
    if pad and variable == "eflux":
        names.append("denergy_full")
    return names


def make_files(root: Path, n_files: int, records: int) -> list[Path]:
    files = []
    for k in range(n_files):
        inst = ("ees", "ies")[k % 2]
        files.append(write_esa_file(root, inst, 13616 + k // 2, records=records, seed=11))
    return files


def raw_decode(path: Path, names: Sequence[str]) -> None:
    cdf = cdflib.CDF(str(path))
    for name in names:
        arr = np.asarray(cdf.varget(name))
        if arr.dtype.kind == "f":
            # the cheapest read of one attribute (varattsget reads them all, ~20x slower)
            fill = cdf.attget("FILLVAL", name).Data
            if fill is not None:
                arr = np.where(arr == arr.dtype.type(np.asarray(fill).reshape(-1)[0]), np.nan, arr)


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    spec = PadSpec((50.0, 5000.0)) if args.pad else None
    wanted = needed(args.variable, args.pad)
    raw_names = [*wanted, *SUPPORT]
    cases: dict[str, Callable[[Path], object]] = {
        "(a) raw cdflib decode": lambda p: raw_decode(p, raw_names),
        "(b) reduce_file": lambda p: reduce_file(p, args.variable, DEFAULT_CATEGORIES, False, spec),
        "(c) decode only (load_esa)": lambda p: load_esa(p, variables=wanted),
        "(d) lazy reduce, sync": lambda p: reduce_dataset(
            open_esa(p, variables=wanted), variable=args.variable, pad=spec
        ).compute(scheduler="synchronous"),
    }
    if args.no_lazy:
        del cases["(d) lazy reduce, sync"]
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp), args.files, args.records)
        for fn in cases.values():  # warm page cache and imports
            fn(files[0])
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for path in files:
                for name, fn in cases.items():
                    t0 = time.perf_counter()
                    fn(path)
                    times[name].append(time.perf_counter() - t0)
    return times


def table(args: argparse.Namespace, times: dict[str, list[float]]) -> str:
    base = statistics.median(times["(a) raw cdflib decode"])
    lines = [
        f"{args.files} GZIP file(s) x {args.records} records, {args.rounds} round(s), "
        f"variable {args.variable}{' + pad' if args.pad else ''}; "
        f"(a) reads {', '.join([*needed(args.variable, args.pad), *SUPPORT])}",
        f"{'variant':<28} {'median s/file':>14} {'vs (a)':>8}",
        "-" * 52,
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"{name:<28} {med:14.3f} {med / base:7.2f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--records", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variable", choices=sorted(SOURCE_VARIABLE), default="data")
    ap.add_argument("--pad", action="store_true", help="also reduce the pad product")
    ap.add_argument("--no-lazy", action="store_true", help="skip (d), the old nested path")
    args = ap.parse_args(argv)
    times = run(args)
    print(table(args, times))
    return times


if __name__ == "__main__":
    main(sys.argv[1:])
