"""The ``fastspectro`` console script: a thin layer over the Python API.

Exit codes: 0 success, 1 finished but with recorded errors, 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import timezone
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _cmd_synth(args: argparse.Namespace) -> int:
    from fastspectro_dask.synth import MANIFEST_NAME, write_synthetic_dataset

    man = write_synthetic_dataset(
        args.out,
        orbits=args.orbits,
        records=args.records,
        seed=args.seed,
        start_orbit=args.start_orbit,
        compress=not args.no_compress,
        bad_files=args.bad_files,
        orb_files=args.orb_files,
        istp_depends=args.istp_depends,
        layout=args.layout,
    )
    n_files = sum(len(d) for d in man.files.values())
    print(f"wrote {n_files} ESA files for {len(man.files)} orbits under {man.root}")
    if man.bad_files:
        print(f"  broken-file corpus: {', '.join(sorted(man.bad_files))}")
    if man.orb_files:
        print(f"  {len(man.orb_files)} fa_k0_orb ephemeris files")
    print(f"  manifest: {man.root / MANIFEST_NAME}")
    return EXIT_OK


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _cmd_info(args: argparse.Namespace) -> int:
    from fastspectro_dask.discovery import INSTRUMENTS, discover

    index = discover(args.input)
    print(index.summary())
    if not len(index):
        print("no FAST ESA L2 files found")
        return EXIT_OK
    size = sum(p.stat().st_size for files in index.values() for p in files.values())
    starts = list(index.start_times.values())
    first = min(starts).astimezone(timezone.utc)
    last = max(starts).astimezone(timezone.utc)
    orbits = list(index)
    print(
        f"orbits {orbits[0]}..{orbits[-1]} ({len(orbits)}), {_human_bytes(size)}, "
        f"first file {first:%Y-%m-%d %H:%M:%S} UT, last {last:%Y-%m-%d %H:%M:%S} UT"
    )
    width = max(len(str(o)) for o in orbits)
    print(f"{'orbit':>{width}}  " + "  ".join(INSTRUMENTS) + "  start (UT)")
    shown = orbits if args.all or len(orbits) <= 40 else orbits[:20] + orbits[-20:]
    for k, orbit in enumerate(shown):
        if not args.all and len(orbits) > 40 and k == 20:
            print(f"{'...':>{width}}")
        files = index[orbit]
        marks = "  ".join(f"{'x' if i in files else '-':^3}" for i in INSTRUMENTS)
        t0 = min(index.start_times[(orbit, i)] for i in files)
        print(f"{orbit:>{width}}  {marks}  {t0.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S}")
    missing = sum(1 for o in orbits if index.instruments_missing(o))
    print(
        f"{missing} orbit(s) lack at least one instrument; "
        f"{len(index.duplicates)} duplicate(s) superseded; "
        f"{len(index.unrecognized)} unrecognized file(s)"
    )
    return EXIT_OK


def _build_parser() -> argparse.ArgumentParser:
    from fastspectro_dask._version import __version__

    parser = argparse.ArgumentParser(
        prog="fastspectro",
        description="Batch FAST ESA spectrograms (ees, eeb, ies, ieb) from folders of L2 "
        "CDF files, on Dask.",
        epilog="Exit codes: 0 success, 1 finished with recorded errors, 2 bad usage, "
        "130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "synth",
        help="write realistic synthetic FAST ESA L2 CDF files",
        description="Write synthetic FAST ESA L2 files in the real format "
        "(for demos and tests: no download needed).",
    )
    p.add_argument("out", type=Path, help="output folder (created if needed)")
    p.add_argument("--orbits", type=int, default=4, help="number of orbits (default 4)")
    p.add_argument(
        "--records",
        type=int,
        default=400,
        help="records per survey file, about (default 400; real files 300-3000)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--start-orbit",
        type=int,
        default=13616,
        help="first orbit number (default 13616, January 2000)",
    )
    p.add_argument(
        "--no-compress",
        action="store_true",
        help="write uncompressed variables (~11x larger files)",
    )
    p.add_argument(
        "--bad-files",
        action="store_true",
        help="also write the broken-file corpus (empty, HTML, truncated, ...)",
    )
    p.add_argument(
        "--orb-files",
        action="store_true",
        help="also write fa_k0_orb ephemeris files (ILAT, MLT, ALT)",
    )
    p.add_argument(
        "--istp-depends",
        action="store_true",
        help="ISTP-consistent DEPEND_1/DEPEND_2 instead of the real files' swap",
    )
    p.add_argument(
        "--layout",
        choices=("yyyy/mm", "spdf", "flat"),
        default="yyyy/mm",
        help="folder layout (default yyyy/mm)",
    )
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "info",
        help="inventory of a folder of FAST ESA L2 files",
        description="List orbits, instruments per orbit, duplicates, size "
        "and time span of a folder (any depth).",
    )
    p.add_argument("input", type=Path, help="folder of CDF files")
    p.add_argument("--all", action="store_true", help="list every orbit")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastspectro`` command line; returns the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FileNotFoundError as exc:
        print(f"fastspectro: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
