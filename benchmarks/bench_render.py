"""Figure rendering speed: fastspectro_dask products vs bare matplotlib, side by side.

Writes synthetic orbits (all four instruments), reduces them once (reduction and reading
are not what is timed here), then times, interleaved over several rounds, one figure
each from build to PNG bytes on disk:

* ``bare matplotlib``: per row one ``pcolormesh`` on a shared 1-D energy grid, a colour
  bar, ``savefig`` (PIL's default PNG settings), same pixel size and dpi as the product;
* ``instrument grid``: :func:`FAST_plot_instrument_grid` + :func:`save_figure` (4 rows);
* ``pitch-angle grid``: :func:`FAST_plot_pitch_angle_grid` + :func:`save_figure` (4 rows);
* the speed options, one at a time on the instrument grid: PNG compress level, layout
  engine (none vs constrained), and the drawing strategy (one mesh per energy-table run vs
  one interleaved mesh per row).

Prints the median wall and CPU (process) seconds per figure and their ratios to the bare
baseline; CPU time is the steadier number on a shared machine.

    python benchmarks/bench_render.py [--records 600] [--orbits 3] [--rounds 5] [--scales log-log]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

import fastspectro_dask.render as render
from fastspectro_dask.io import open_esa
from fastspectro_dask.reduce import reduce_dataset
from fastspectro_dask.synth import write_synthetic_dataset

INSTRUMENTS = ("ees", "eeb", "ies", "ieb")


def make_orbits(root: Path, n_orbits: int, records: int) -> list[dict[str, xr.Dataset]]:
    """Reduced (numpy-backed) datasets of orbits that have all four instruments."""
    orbits: list[dict[str, xr.Dataset]] = []
    orbit = 13616
    while len(orbits) < n_orbits and orbit < 13616 + 20 * n_orbits:
        man = write_synthetic_dataset(
            root / str(orbit), orbits=1, start_orbit=orbit, records=records, seed=21
        )
        files = man.files.get(orbit, {})
        if set(INSTRUMENTS) <= set(files):
            orbits.append({i: reduce_dataset(open_esa(files[i])).compute() for i in INSTRUMENTS})
        orbit += 1
    if not orbits:
        raise RuntimeError("no synthetic orbit with all four instruments; change the seed")
    return orbits


def bare(orbit: dict[str, xr.Dataset], path: Path, y_scale: str, z_scale: str) -> None:
    """What a user writes by hand: a shared 1-D energy grid, no per-record edges."""
    fig = Figure(figsize=(12.0, 1.15 + 2.1 * 4), dpi=render.DEFAULT_DPI)
    FigureCanvasAgg(fig)
    for r, inst in enumerate(INSTRUMENTS):
        ds = orbit[inst]
        ax = fig.add_subplot(4, 1, r + 1)
        values = ds["values"].sel(category="all").values
        grid = np.geomspace(3e4, 4.0, values.shape[1])  # one table for the whole orbit
        z = np.ma.masked_invalid(values)
        if z_scale == "log":
            z = np.ma.masked_less_equal(z, 0)
            norm = LogNorm(z.min(), z.max())
        else:
            norm = Normalize(z.min(), z.max())
        ax.set_yscale(y_scale)
        mesh = ax.pcolormesh(ds["time"].values, grid, z.T, shading="nearest", norm=norm)
        fig.colorbar(mesh, ax=ax, label="Counts")
        ax.set_ylabel("Energy (eV)")
    fig.savefig(path, format="png")


def product(kind: str, **opts) -> Callable:
    compress = opts.pop("compress_level", render.DEFAULT_COMPRESS_LEVEL)

    def run(orbit: dict[str, xr.Dataset], path: Path, y_scale: str, z_scale: str) -> None:
        if kind == "instruments":
            fig = render.FAST_plot_instrument_grid(orbit, y_scale=y_scale, z_scale=z_scale, **opts)
        else:
            fig = render.FAST_plot_pitch_angle_grid(
                orbit["ees"], y_scale=y_scale, z_scale=z_scale, **opts
            )
        render.save_figure(fig, path, compress_level=compress)

    return run


class _Interleaved:
    """Force one interleaved mesh per row (the general path for drifting energies)."""

    def __enter__(self) -> None:
        self.saved = render._MAX_RUN_MESHES
        render._MAX_RUN_MESHES = 0

    def __exit__(self, *exc) -> None:
        render._MAX_RUN_MESHES = self.saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--orbits", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scales", default="log-log", help="y-z scales, e.g. linear-log")
    args = ap.parse_args()
    y_scale, z_scale = args.scales.split("-")

    cases: list[tuple[str, Callable, type | None]] = [
        ("bare matplotlib (baseline)", bare, None),
        ("instrument grid (defaults)", product("instruments"), None),
        ("pitch-angle grid (defaults)", product("pa"), None),
        ("instrument grid, compress_level=1", product("instruments", compress_level=1), None),
        ("instrument grid, compress_level=6", product("instruments", compress_level=6), None),
        ("instrument grid, compress_level=9", product("instruments", compress_level=9), None),
        ("instrument grid, layout=constrained", product("instruments", layout="constrained"), None),
        ("instrument grid, one interleaved mesh/row", product("instruments"), _Interleaved),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        orbits = make_orbits(root / "data", args.orbits, args.records)
        n_rec = [orbit["ees"].sizes["time"] for orbit in orbits]
        out = root / "out"
        out.mkdir()
        times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        sizes: dict[str, int] = {}
        for _name, fn, ctx in cases:  # warm-up (font cache, imports)
            with ctx() if ctx else _Null():
                fn(orbits[0], out / "warm.png", y_scale, z_scale)
        for _ in range(args.rounds):
            for name, fn, ctx in cases:
                for k, orbit in enumerate(orbits):
                    path = out / f"{abs(hash(name))}_{k}.png"
                    with ctx() if ctx else _Null():
                        t0, c0 = time.perf_counter(), time.process_time()
                        fn(orbit, path, y_scale, z_scale)
                        times[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
                    sizes[name] = path.stat().st_size
    base = statistics.median(times[cases[0][0]])
    base_cpu = statistics.median(cpu[cases[0][0]])
    print(
        f"{len(orbits)} orbits x 4 instruments, ees records {n_rec}, scales {args.scales}, "
        f"{args.rounds} rounds, figure 12 x 9.55 in at {render.DEFAULT_DPI} dpi; "
        "medians (CPU = process time, immune to other load on the machine)"
    )
    print(f"{'case':44s} {'wall s':>7s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s} {'PNG kB':>7s}")
    for name, _, _ in cases:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(
            f"{name:44s} {med:7.3f} {med / base:6.2f} {med_cpu:7.3f} {med_cpu / base_cpu:6.2f} "
            f"{sizes[name] / 1024:7.0f}"
        )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    main()
