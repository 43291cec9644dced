"""The ``fastspectro`` console script: a thin layer over the Python API.

Exit codes: 0 success, 1 finished but with recorded errors, 2 bad usage, 3 no Dask worker
left or coming for ``--worker-wait`` seconds (state saved; re-run to resume), 75 the output
folder is in use by another run (its lock is held: nothing was done or written), 130
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from datetime import timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastspectro_dask.discovery import OrbitIndex

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Another run holds the lock of the output folder's state (sysexits' EX_TEMPFAIL: try
#: again later). Nothing was started or written.
EXIT_LOCKED = 75
#: No Dask worker connected and none pending for ``--worker-wait`` seconds: the run
#: stopped with its state saved.
EXIT_NO_WORKERS = 3
EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 finished with recorded errors, 2 bad usage, 3 no Dask "
    "worker left or coming (state saved; re-run to resume), 75 output "
    "folder in use by another run (nothing done; try again when it ends), 130 interrupted."
)


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


def _figure_info(path: Path) -> int:
    """``fastspectro info FIGURE.png``: the provenance text chunks of a figure."""
    from fastspectro_dask.render import read_figure_metadata

    try:
        meta = read_figure_metadata(path)
    except ValueError as exc:
        print(f"fastspectro info: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not meta:
        print(f"{path}: no provenance text in this PNG (not written by fastspectro_dask?)")
        return EXIT_OK
    width = max(len(k) for k in meta)
    for key, value in meta.items():
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from fastspectro_dask.discovery import INSTRUMENTS, discover

    if args.input.is_file() and args.input.suffix.lower() == ".png":
        return _figure_info(args.input)

    index = discover(args.input)
    print(index.summary())
    if not len(index):
        print("no FAST ESA L2 files found")
        _print_skipped(index, args.all)
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
        f"{len(index.skipped)} skipped"
    )
    _print_skipped(index, args.all)
    return EXIT_OK


def _print_skipped(index: OrbitIndex, show_all: bool) -> None:
    """The names discovery skipped, one a line with the reason (40 unless --all)."""
    if not index.skipped:
        return
    n = len(index.skipped)
    shown = index.skipped if show_all or n <= 40 else index.skipped[:40]
    print(f"{n} skipped file(s), not indexed:")
    for s in shown:
        try:
            name = s.path.relative_to(index.root) if s.path != index.root else s.path.name
        except ValueError:
            name = s.path
        print(f"  {name}: {s.reason}")
    if len(shown) < n:
        print(f"  ... (+{n - len(shown)} more; --all lists them all)")


SCALES = ("linear", "log")


def _summary_table(summaries: list) -> str:
    rows = [("scales", "orbits", "done", "skipped", "errors", "figures", "wall s", "fig/s")]
    for s in summaries:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
        rows.append(
            (
                f"{s.scales} (interrupted)" if s.interrupted else s.scales,
                str(s.orbits_total),
                str(s.orbits_completed),
                str(s.orbits_skipped),
                errors,
                str(s.figures_written),
                f"{s.wall_seconds:.1f}",
                f"{s.figures_per_second:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


class _UsageError(Exception):
    """Bad options, found after parsing: message to stderr, exit code 2."""


def _energy_window(text: str) -> tuple[float, float]:
    """``LO:HI`` in eV, 0 <= LO < HI (argparse type: bad usage exits 2)."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        msg = f"expected LO:HI in eV, e.g. 50:5000, not {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not (0 <= lo < hi < float("inf")):
        raise argparse.ArgumentTypeError(f"need 0 <= LO < HI, not {text!r}")
    return lo, hi


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (no usage block), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, *, minimum: float, inclusive: bool, maximum: float | None = None):
    """An argparse type: ``kind`` (int or float) within the given bounds."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        low_ok = value >= minimum if inclusive else value > minimum
        if not low_ok or (maximum is not None and value > maximum) or value != value:
            if maximum is not None:
                bound = f"between {minimum:g} and {maximum:g}"
            else:
                bound = f"{'>=' if inclusive else '>'} {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} value"
    return parse


_positive_int = _number(int, minimum=1, inclusive=True)
_nonnegative_int = _number(int, minimum=0, inclusive=True)
_positive_float = _number(float, minimum=0.0, inclusive=False)
_percentile = _number(float, minimum=0.0, inclusive=True, maximum=100.0)
_nonnegative_float = _number(float, minimum=0.0, inclusive=True)


def _figsize(text: str) -> tuple[float, float]:
    """``WxH`` in inches (argparse type)."""
    try:
        w, h = (float(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WxH in inches, e.g. 16x12, not {text!r}"
        ) from None
    if not (0 < w < 1000 and 0 < h < 1000):
        raise argparse.ArgumentTypeError(f"width and height must be positive inches, not {text!r}")
    return w, h


def _cluster_kw(text: str):
    """argparse type of --cluster-kw: ``key=value`` -> (key, parsed value)."""
    from fastspectro_dask.cluster import parse_cluster_kwarg

    try:
        return parse_cluster_kwarg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _adapt(text: str) -> tuple[int, int]:
    """argparse type of --adapt: ``MIN:MAX`` jobs."""
    from fastspectro_dask.cluster import parse_adapt

    try:
        return parse_adapt(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_cluster_options(args: argparse.Namespace) -> None:
    kind = getattr(args, "cluster", "local")
    external = getattr(args, "scheduler_address", None) or getattr(args, "scheduler_file", None)
    jobqueue_opts = [
        name
        for name, value in (
            ("--jobs", getattr(args, "jobs", None)),
            ("--adapt", getattr(args, "adapt", None)),
            ("--cluster-kw", getattr(args, "cluster_kw", None)),
        )
        if value
    ]
    if external and getattr(args, "dashboard_address", None):
        raise _UsageError(
            "--dashboard-address is for a cluster fastspectro makes; a running scheduler "
            "has its own dashboard"
        )
    if kind == "local":
        if jobqueue_opts:
            raise _UsageError(f"{', '.join(jobqueue_opts)} need --cluster slurm or --cluster pbs")
        return
    if external:
        raise _UsageError(
            f"--cluster {kind} makes its own scheduler; drop --scheduler-address/--scheduler-file"
        )
    if getattr(args, "max_workers", None) is not None:
        raise _UsageError(
            f"--max-workers is for the local cluster; with --cluster {kind} use --jobs N "
            "or --adapt MIN:MAX (and --cluster-kw cores=... processes=...)"
        )
    from fastspectro_dask.cluster import JobqueueMissingError, check_jobqueue

    try:
        check_jobqueue(kind)
    except JobqueueMissingError as exc:
        raise _UsageError(str(exc)) from exc


def _enter_client(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    *,
    local: bool,
    max_workers: int | None = None,
):
    """The run's client, registered for closing on ``stack``; None for extrema on threads.

    ``--scheduler-address``/``--scheduler-file``: connect; ``--cluster slurm|pbs``: a
    dask-jobqueue cluster; else a local cluster when ``local`` (plot, demo) or None.
    """
    from fastspectro_dask.cluster import (
        DEFAULT_DASHBOARD_ADDRESS,
        ClusterConfigError,
        JobqueueMissingError,
        client_context,
        connect_client,
        make_cluster,
    )

    _check_cluster_options(args)
    if getattr(args, "worker_wait", None) is not None:  # read by the scheduling loop
        import dask

        stack.enter_context(dask.config.set({"fastspectro.worker-wait": args.worker_wait}))
    kind = getattr(args, "cluster", "local")
    external = connect_client(
        getattr(args, "scheduler_address", None), getattr(args, "scheduler_file", None)
    )
    if external is not None:
        stack.callback(external.close)
        return external
    dashboard = getattr(args, "dashboard_address", None) or DEFAULT_DASHBOARD_ADDRESS
    if kind == "local":
        if not local:
            return None
        return stack.enter_context(
            client_context(None, max_workers=max_workers, dashboard_address=dashboard)
        )
    try:
        client = stack.enter_context(
            make_cluster(
                kind,
                jobs=args.jobs,
                adapt=args.adapt,
                cluster_kwargs=dict(args.cluster_kw or []),
                dashboard_address=dashboard,
            )
        )
    except (JobqueueMissingError, ClusterConfigError) as exc:
        raise _UsageError(str(exc)) from exc
    what = (
        f"adaptive, {args.adapt[0]} to {args.adapt[1]} jobs"
        if args.adapt
        else f"{args.jobs or 1} job(s) submitted"
    )
    print(
        f"{kind.upper()} cluster: {what}; work starts when the jobs run (-v prints the job script)",
        flush=True,
    )
    return client


def _write_report(
    output_dir: Path, summaries: list, performance_report: Path | None, cfg=None
) -> Path | None:
    from fastspectro_dask.report import write_run_report
    from fastspectro_dask.state import StateLock, StateLockedError

    if not output_dir.is_dir():
        return None
    try:
        with StateLock(output_dir / "progress.json"):  # not over a run started meanwhile
            return write_run_report(
                output_dir,
                summaries=summaries,
                performance_report=performance_report,
                config=None if cfg is None else cfg.to_dict(),
            )
    except StateLockedError as exc:
        print(f"fastspectro: run report not written: {_locked_line(exc)}", file=sys.stderr)
        return None
    except Exception as exc:  # the run's outcome matters more than its report
        logger.warning("could not write the run report in %s: %s", output_dir, exc)
        print(f"fastspectro: could not write the run report: {exc}", file=sys.stderr)
        return None


def _locked_line(exc) -> str:
    """One line for a refused run: who holds the lock, since when, what to do."""
    lock = Path(exc.lock_path)
    holder = exc.holder or {}
    who = (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"since {holder.get('started_utc', '?')}"
        if holder
        else "a process that has not written its name yet"
    )
    return (
        f"{lock.parent} is in use by another run ({who}; lock {lock.name}): wait for it to "
        "finish (or stop it), or use another output folder"
    )


def _lock_output(stack: contextlib.ExitStack, output_dir: Path) -> None:
    """Hold the output folder's state locks on ``stack`` (before any cluster starts), or
    raise StateLockedError at once. Light imports only: refused within a second."""
    from fastspectro_dask.state import StateLock

    if output_dir.exists() and not output_dir.is_dir():
        raise _UsageError(f"{output_dir}: not a folder")
    for name in ("progress.json", "extrema.json"):
        stack.enter_context(StateLock(output_dir / name))


def _run_plots(args: argparse.Namespace, input_dir: Path, output_dir: Path) -> int:
    from fastspectro_dask.state import StateLockedError

    cfg = _run_config(args)  # every setting checked before anything is touched
    combos = (
        [(y, z) for y in SCALES for z in SCALES]
        if args.all_scales
        else [(cfg.style.y_scale, cfg.style.z_scale)]
    )
    summaries: list = []
    report = None
    refused = False
    output_dir = Path(output_dir)
    _check_cluster_options(args)  # bad usage is reported before anything is touched
    if not Path(input_dir).is_dir():
        raise _UsageError(f"{input_dir}: no such folder")
    # The lock first, before the cluster: a second run is refused at once, writing nothing.
    probe = contextlib.ExitStack()
    _lock_output(probe, output_dir)
    try:
        from fastspectro_dask.cluster import (
            expected_worker_threads,
            performance_report_context,
        )
        from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory

        with contextlib.ExitStack() as stack:
            client = _enter_client(stack, args, local=True, max_workers=cfg.max_workers)
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
            # a jobqueue cluster has no worker yet: size the window for the jobs asked for
            window = (
                2 * expected_worker_threads(client) + 2
                if getattr(args, "cluster", "local") != "local"
                else None
            )
            stack.enter_context(performance_report_context(args.performance_report))
            probe.close()  # the run takes the same locks itself, at once
            for y, z in combos:
                s = FAST_plot_spectrograms_directory(
                    input_dir,
                    output_dir,
                    y_scale=y,
                    z_scale=z,
                    config=cfg,
                    client=client,
                    window=window,
                )
                summaries.append(s)
                if s.interrupted:
                    break
    except StateLockedError:
        refused = True  # another run got there first: its folder is left as it is
        raise
    finally:
        probe.close()
        # also after an interruption or a failure: what was written is worth seeing
        if not args.no_report and not refused:
            report = _write_report(output_dir, summaries, args.performance_report, cfg)
    print(_summary_table(summaries))
    print(f"figures, progress.json, extrema.json and logs/ are in {output_dir}")
    if report is not None:
        print(f"run report (open in a browser): {report}")
    if args.performance_report:
        print(f"Dask performance report: {args.performance_report}")
    if any(s.interrupted for s in summaries):
        return EXIT_INTERRUPTED
    return EXIT_ERRORS if any(s.errors for s in summaries) else EXIT_OK


def _cmd_plot(args: argparse.Namespace) -> int:
    return _run_plots(args, args.input, args.output)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fastspectro_dask.synth import write_synthetic_dataset

    _run_config(args)  # bad settings refused before the demo data is written
    data, figures = args.out / "data", args.out / "figures"
    if not list(data.rglob("*.cdf")):
        man = write_synthetic_dataset(
            data,
            orbits=args.orbits,
            records=args.records,
            seed=args.seed,
            bad_files=args.bad_files,
            orb_files=True,  # ephemeris rows (ALT/ILAT/MLT) and hemisphere names
        )
        print(
            f"demo data: {sum(len(d) for d in man.files.values())} synthetic FAST ESA L2 "
            f"files for {len(man.files)} orbits in {data}",
            flush=True,
        )
    else:
        print(f"demo data: reusing {data}", flush=True)
    return _run_plots(args, data, figures)


def _cmd_extrema(args: argparse.Namespace) -> int:
    from fastspectro_dask.extrema import compute_global_extrema

    cfg = _run_config(args)  # checked before the cluster starts
    with contextlib.ExitStack() as stack:
        client = _enter_client(stack, args, local=False)
        state = compute_global_extrema(
            args.input, extrema_json_path=args.output, config=cfg, client=client
        )
    print(
        f"{'instrument':<10} {'category':<14} {'y_min':>10} {'y_max':>10} {'z_min':>12} "
        f"{'z_max':>12} {'samples':>10}"
    )
    for inst, cats in state["results"].items():
        for cat, r in cats.items():

            def f(v):
                return "-" if v is None else f"{v:.6g}"

            print(
                f"{inst:<10} {cat:<14} {f(r['y_min']):>10} {f(r['y_max']):>10} "
                f"{f(r['z_min']):>12} {f(r['z_max']):>12} {r['n_samples']:>10}"
            )
    print(f"written to {args.output or Path.cwd() / 'extrema.json'}")
    return EXIT_ERRORS if state.get("errors") else EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from fastspectro_dask.progress import parse_key

    path = args.output / "progress.json"
    if not path.exists():
        print(f"no progress.json in {args.output}", file=sys.stderr)
        return EXIT_USAGE
    doc = json.loads(path.read_text())
    print(f"{path} (last written {doc.get('updated_utc', '?')})")
    keys = {key: k for key in doc if (k := parse_key(key)) is not None}
    for combo in sorted({k.scales for k in keys.values() if k.kind == "completed"}):
        done = doc.get(f"{combo}_completed", [])
        print(f"{combo}: {len(done)} orbits completed, watermark {doc.get(f'{combo}_last_orbit')}")
        for key in sorted(x for x, k in keys.items() if k.kind == "error" and k.scales == combo):
            orbits = doc[key]
            if orbits:
                shown = ", ".join(map(str, orbits[:12])) + (" ..." if len(orbits) > 12 else "")
                print(f"  {key}: {len(orbits)} orbit(s): {shown}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from fastspectro_dask.report import write_run_report

    if not args.output.is_dir():
        print(f"fastspectro: {args.output}: not a folder", file=sys.stderr)
        return EXIT_USAGE
    path = write_run_report(args.output, thumb_width=args.thumb_width, page_size=args.page_size)
    print(f"run report: {path}")
    return EXIT_OK


def _default(name: str) -> str:
    """A setting's current default for --help: the dask config's ``fastspectro.<name>``
    (the packaged fastspectro.yaml unless the user's config or environment changed it)."""
    import dask.config

    import fastspectro_dask.config  # noqa: F401  (registers the defaults)

    value = dask.config.get(f"fastspectro.{name}", default=None)
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def _add_setting_options(p: argparse.ArgumentParser) -> None:
    """The flags of the run settings (:mod:`fastspectro_dask.config`): each defaults to
    None, not given, so that the dask config (fastspectro.yaml, the user's dask config
    files, DASK_FASTSPECTRO__* variables) decides; the help shows that default."""
    _add_data_options(p)
    _add_rendering_options(p)
    _add_flush_options(p)
    _add_worker_options(p)
    _add_resume_options(p)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Scales, variable, time axis, energy channels and products."""
    d = _default
    p.add_argument("--y-scale", choices=SCALES, help=f"energy axis scale ({d('y-scale')})")
    p.add_argument("--z-scale", choices=SCALES, help=f"colour scale ({d('z-scale')})")
    p.add_argument(
        "--variable",
        choices=("data", "eflux", "rate"),
        help="counts (data), energy flux (eflux) or counts per second per angle "
        f"bin (rate: no jumps at survey mode changes) ({d('variable')})",
    )
    p.add_argument(
        "--squeeze-gaps",
        type=_nonnegative_float,
        metavar="MINUTES",
        help="cut data gaps longer than this out of the UT axis, drawn as narrow breaks "
        f"(0 keeps the whole axis) ({d('squeeze-gaps-minutes')})",
    )
    _add_retrace_option(p)
    p.add_argument(
        "--products",
        nargs="+",
        choices=("instruments", "pitch-angle", "pad"),
        help=f"figures to make (pad: the pitch-angle spectrogram) ({d('products')})",
    )
    p.add_argument(
        "--pad-energy",
        type=_energy_window,
        metavar="LO:HI",
        help=f"energy window of the pad product in eV ({d('pad-energy')}: all valid channels)",
    )


def _add_rendering_options(p: argparse.ArgumentParser) -> None:
    """Drawing engine, figure size, resolution, format and the colour-scale maximum."""
    d = _default
    p.add_argument(
        "--engine",
        choices=("fast", "reference"),
        help="fast (layouts reused, raster panels) or reference (a fresh "
        f"matplotlib figure each time; slow) ({d('engine')})",
    )
    p.add_argument("--dpi", type=_positive_float, help=f"dots per inch ({d('dpi')})")
    p.add_argument(
        "--figsize",
        type=_figsize,
        metavar="WxH",
        help=f"figure size in inches, e.g. 16x12 ({d('figsize')}: 12 wide, 2.1 per row)",
    )
    p.add_argument(
        "--format",
        dest="figure_format",
        choices=("png", "pdf", "svg"),
        help=f"figure format; pdf/svg embed the raster panels, text stays text "
        f"({d('figure-format')})",
    )
    p.add_argument(
        "--pad-shift90",
        action=argparse.BooleanOptionalAction,
        help="draw the pad product over -90..270 deg (0 and 180 deg off the edges) "
        f"({d('pad-shift90')})",
    )
    p.add_argument(
        "--percentile",
        type=_percentile,
        help=f"colour-scale maximum: exact mission-wide percentile "
        f"({d('max-processing-percentile')})",
    )


def _add_flush_options(p: argparse.ArgumentParser) -> None:
    """How often progress and logs are written."""
    d = _default
    p.add_argument(
        "--flush-batch-size",
        type=_positive_int,
        help=f"write progress every N completed orbits ({d('flush-batch-size')})",
    )
    p.add_argument(
        "--log-flush-batch-size",
        type=_positive_int,
        help=f"write logs every N records ({d('log-flush-batch-size')}: --flush-batch-size)",
    )
    p.add_argument(
        "--flush-interval",
        type=_positive_float,
        help=f"also write progress every S seconds ({d('flush-interval-seconds')})",
    )


def _add_worker_options(p: argparse.ArgumentParser) -> None:
    """Local workers, and the time bounds of an orbit and of a figure."""
    d = _default
    p.add_argument(
        "--max-workers",
        type=_positive_int,
        help=f"local cluster worker processes ({d('max-workers')}: cores)",
    )
    p.add_argument(
        "--orbit-timeout",
        type=_positive_float,
        help=f"seconds for all of an orbit's figures; inf: no bound ({d('orbit-timeout-seconds')})",
    )
    p.add_argument(
        "--instrument-timeout",
        type=_positive_float,
        help="seconds for one figure, from the moment its render process is ready; inf: "
        f"no bound ({d('instrument-timeout-seconds')})",
    )


def _add_resume_options(p: argparse.ArgumentParser) -> None:
    """What a re-run redoes."""
    d = _default
    p.add_argument(
        "--ignore-progress",
        action=argparse.BooleanOptionalAction,
        help=f"ignore progress.json: a fresh pass ({d('ignore-progress-json')})",
    )
    p.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        help=f"re-render existing figures ({d('overwrite')})",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_setting_options(p)
    p.add_argument(
        "--all-scales",
        action="store_true",
        help="the four scale combinations in one run (one read of the data)",
    )
    p.add_argument(
        "--performance-report",
        type=Path,
        default=None,
        metavar="FILE.html",
        help="write a Dask performance report (task stream, profiles) of the run",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="do not write the HTML run report OUTPUT/index.html",
    )
    _add_scheduler_options(p)


def _run_config(args: argparse.Namespace):
    """The run's settings: the dask config, then the flags given; validated (ValueError)."""
    from fastspectro_dask.config import RunConfig

    return RunConfig.resolve(
        y_scale=getattr(args, "y_scale", None),
        z_scale=getattr(args, "z_scale", None),
        variable=getattr(args, "variable", None),
        squeeze_gaps_minutes=getattr(args, "squeeze_gaps", None),
        retrace=getattr(args, "keep_retrace", None),
        products=getattr(args, "products", None),
        pad_energy=getattr(args, "pad_energy", None),
        engine=getattr(args, "engine", None),
        dpi=getattr(args, "dpi", None),
        figsize=getattr(args, "figsize", None),
        figure_format=getattr(args, "figure_format", None),
        pad_shift90=getattr(args, "pad_shift90", None),
        max_processing_percentile=getattr(args, "percentile", None),
        flush_batch_size=getattr(args, "flush_batch_size", None),
        log_flush_batch_size=getattr(args, "log_flush_batch_size", None),
        flush_interval_seconds=getattr(args, "flush_interval", None),
        max_workers=getattr(args, "max_workers", None),
        orbit_timeout_seconds=getattr(args, "orbit_timeout", None),
        instrument_timeout_seconds=getattr(args, "instrument_timeout", None),
        ignore_progress_json=getattr(args, "ignore_progress", None),
        overwrite=getattr(args, "overwrite", None),
        compute_mins=getattr(args, "compute_mins", None),
    )


def _cmd_config(args: argparse.Namespace) -> int:
    """``fastspectro config``: the resolved settings as a dask config file (YAML)."""
    sys.stdout.write(_run_config(args).to_yaml())
    return EXIT_OK


def _add_retrace_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-retrace",
        action=argparse.BooleanOptionalAction,
        help="keep energy channel 0, the sweep's high-voltage retrace step (dropped by "
        "default, as the FAST user guide advises: its energy is unreliable) "
        f"({_default('retrace')})",
    )


def _add_scheduler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        choices=("local", "slurm", "pbs"),
        default="local",
        help="where workers run: a local cluster (default), or batch jobs through "
        "dask-jobqueue (pip install 'fastspectro_dask[jobqueue]'; defaults from the "
        "dask config, e.g. ~/.config/dask/jobqueue.yaml)",
    )
    j = p.add_mutually_exclusive_group()
    j.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="slurm/pbs: run N jobs (default 1)",
    )
    j.add_argument(
        "--adapt",
        type=_adapt,
        default=None,
        metavar="MIN:MAX",
        help="slurm/pbs: adaptive, between MIN and MAX jobs",
    )
    p.add_argument(
        "--cluster-kw",
        type=_cluster_kw,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="slurm/pbs: a SLURMCluster/PBSCluster keyword, repeatable "
        "(e.g. cores=8, memory=16GB, queue=normal, walltime=02:00:00, interface=ib0; "
        "JSON for lists: job_extra_directives='[\"--gres=gpu:1\"]')",
    )
    p.add_argument(
        "--worker-wait",
        type=_nonnegative_float,
        default=None,
        metavar="SECONDS",
        help="end the run (exit code 3, state saved) when no Dask worker is connected and "
        "no job is pending for this long (default 180; dask config fastspectro.worker-wait)",
    )
    p.add_argument(
        "--dashboard-address",
        default=None,
        metavar="[HOST]:PORT",
        help="where the Dask dashboard of a cluster fastspectro makes listens (default "
        "127.0.0.1:8787, this machine only; ':8787' opens it to the network)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--scheduler-address",
        default=None,
        help="connect to a running Dask scheduler (tcp://host:8786)",
    )
    g.add_argument(
        "--scheduler-file", type=Path, default=None, help="connect through a Dask scheduler file"
    )


def _build_parser() -> argparse.ArgumentParser:
    from fastspectro_dask._version import __version__

    parser = _Parser(
        prog="fastspectro",
        description="Batch FAST ESA spectrograms (ees, eeb, ies, ieb) from folders of L2 "
        "CDF files, on Dask.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in (
        _add_synth_command,
        _add_info_command,
        _add_demo_command,
        _add_plot_command,
        _add_extrema_command,
        _add_config_command,
        _add_status_command,
        _add_report_command,
    ):
        add_command(sub)
    return parser


def _add_synthetic_size_options(
    p: argparse.ArgumentParser, *, records_help: str, seed: int, seed_help: str
) -> None:
    """``--orbits``, ``--records`` and ``--seed`` of the synthetic data (synth, demo)."""
    p.add_argument("--orbits", type=_positive_int, default=4, help="number of orbits (default 4)")
    p.add_argument("--records", type=_positive_int, default=400, help=records_help)
    p.add_argument("--seed", type=int, default=seed, help=seed_help)


def _add_synth_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write realistic synthetic FAST ESA L2 CDF files",
        description="Write synthetic FAST ESA L2 files in the real format "
        "(for demos and tests: no download needed).",
    )
    p.add_argument("out", type=Path, help="output folder (created if needed)")
    _add_synthetic_size_options(
        p,
        records_help="records per survey file, about (default 400; real files 300-3000)",
        seed=0,
        seed_help="random seed (default 0)",
    )
    p.add_argument(
        "--start-orbit",
        type=_nonnegative_int,
        default=13616,
        help="first orbit number (default 13616, January 2000)",
    )
    for flag, text in (
        ("--no-compress", "write uncompressed variables (~11x larger files)"),
        ("--bad-files", "also write the broken-file corpus (empty, HTML, truncated, ...)"),
        ("--orb-files", "also write fa_k0_orb ephemeris files (ILAT, MLT, ALT)"),
        ("--istp-depends", "ISTP-consistent DEPEND_1/DEPEND_2 instead of the real files' swap"),
    ):
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument(
        "--layout",
        choices=("yyyy/mm", "spdf", "flat"),
        default="yyyy/mm",
        help="folder layout (default yyyy/mm)",
    )
    p.set_defaults(func=_cmd_synth)


def _add_info_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="inventory of a folder of FAST ESA L2 files, or a figure's provenance",
        description="List orbits, instruments per orbit, duplicates, size "
        "and time span of a folder (any depth); for FIGURE.png, print where the figure "
        "came from (software, source files, time ranges drawn, limits, ephemeris rows).",
    )
    p.add_argument("input", type=Path, help="folder of CDF files, or a figure (.png)")
    p.add_argument("--all", action="store_true", help="list every orbit and skipped file")
    p.set_defaults(func=_cmd_info)


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="write synthetic data and plot it all on a local Dask cluster",
        description="Write synthetic FAST ESA L2 files to OUT/data (once) and run the whole "
        "pipeline into OUT/figures on a local Dask cluster.",
    )
    p.add_argument(
        "out",
        type=Path,
        nargs="?",
        default=Path("fastspectro_demo"),
        help="demo folder (default ./fastspectro_demo)",
    )
    _add_synthetic_size_options(
        p,
        records_help="records per file (default 400)",
        seed=1,
        seed_help="random seed (default 1: storm and quiet orbits, bursts)",
    )
    p.add_argument(
        "--bad-files",
        action="store_true",
        help="include the broken-file corpus (shows the error categories)",
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_demo)


def _add_plot_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="plot every orbit of a folder (resumable)",
        description="Compute exact mission-wide limits, then render every orbit's figures on "
        "Dask. Re-running resumes where it stopped. A second run on the same OUTPUT is "
        "refused at once (exit code 75) and writes nothing.",
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("input", type=Path, help="folder of FAST ESA L2 CDF files (any layout)")
    p.add_argument("output", type=Path, help="output folder (figures and state)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_plot)


def _add_compute_mins_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument(
        "--compute-mins",
        action=argparse.BooleanOptionalAction,
        help=f"{text} ({_default('compute-mins')})",
    )


def _add_extrema_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extrema",
        help="compute and print the exact global limits",
        description="Exact mission-wide colour/energy limits per instrument "
        "and pitch-angle category (resumable).",
    )
    p.add_argument("input", type=Path, help="folder of CDF files")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="extrema JSON path (default ./extrema.json; never inside INPUT)",
    )
    p.add_argument("--y-scale", choices=SCALES, help=f"({_default('y-scale')})")
    p.add_argument("--z-scale", choices=SCALES, help=f"({_default('z-scale')})")
    p.add_argument(
        "--variable", choices=("data", "eflux", "rate"), help=f"({_default('variable')})"
    )
    p.add_argument(
        "--percentile", type=_percentile, help=f"({_default('max-processing-percentile')})"
    )
    _add_compute_mins_option(p, "z_min is the exact 1st percentile instead of the smallest value")
    _add_retrace_option(p)
    _add_scheduler_options(p)
    p.set_defaults(func=_cmd_extrema)


def _add_config_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the resolved run settings as YAML",
        description="Print the settings a plot run would use, as a dask config file: the "
        "packaged defaults (fastspectro.yaml), then the user's dask config files "
        "(~/.config/dask/*.yaml) and DASK_FASTSPECTRO__* environment variables, then the "
        "flags given (the same as plot's). Bad values are refused (exit code 2).",
    )
    _add_run_options(p)
    _add_compute_mins_option(p, "z_min is the exact 1st percentile (as extrema --compute-mins)")
    p.set_defaults(func=_cmd_config)


def _add_status_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="progress of an output folder",
        description="Done orbits and errors per category from progress.json.",
    )
    p.add_argument("output", type=Path, help="output folder of a plot run")
    p.set_defaults(func=_cmd_status)


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="(re)write the HTML run report OUTPUT/index.html",
        description="Write OUTPUT/index.html: a static gallery of the figures with the "
        "extrema used and the errors per orbit (plot and demo write it at the end of a run).",
    )
    p.add_argument("output", type=Path, help="output folder of a plot run")
    p.add_argument(
        "--thumb-width",
        type=_positive_int,
        default=320,
        help="figure width in the gallery, px (320)",
    )
    p.add_argument(
        "--page-size", type=_positive_int, default=500, help="orbits per page (default 500)"
    )
    p.set_defaults(func=_cmd_report)


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
    # The terminal gets warnings (more with -v); the run's log file gets INFO and up.
    handler = logging.StreamHandler()
    handler.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)])
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("fastspectro_dask").setLevel(logging.INFO)
    from fastspectro_dask.errors import NoWorkersError
    from fastspectro_dask.state import StateLockedError

    try:
        return args.func(args)
    except StateLockedError as exc:
        print(f"fastspectro: {_locked_line(exc)}", file=sys.stderr)
        return EXIT_LOCKED
    except NoWorkersError as exc:
        print(f"fastspectro: {exc}", file=sys.stderr)
        return EXIT_NO_WORKERS
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _UsageError as exc:
        print(f"fastspectro: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"fastspectro: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # a setting the API refused before any work (one line)
        logging.getLogger(__name__).debug("refused", exc_info=True)
        print(f"fastspectro: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:  # main() may be called in-process (tests, notebooks): leave logging as it was
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
