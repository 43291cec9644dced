"""Figure rendering speed: the fast engine vs the naive fresh-figure loop, side by side.

Writes synthetic orbits (all four instruments, with orbit files), reduces them once
(reading is not what is timed here: ``bench_read.py``), then times, interleaved over
several rounds, one figure each from build to PNG bytes on disk:

* ``naive loop`` (the baseline): what most scripts do — a fresh figure, per row one
  ``pcolormesh`` on a shared 1-D energy grid and a colour bar, ``savefig``; no reading, at
  the same pixel size and dpi as our figure;
* ``reference``: our products drawn the slow way (``engine="reference"``: a fresh figure,
  per-record QuadMeshes), the drawing the fidelity test compares against;
* ``fast``: our products with the engine of :mod:`fastspectro_dask.draw` (layout cached per
  process, raster panels, PNG straight from the Agg buffer): instrument grid, pitch-angle
  grid, pad; and the instrument grid at other PNG compression levels (the choice of
  :data:`fastspectro_dask.output.DEFAULT_COMPRESS_LEVEL`).

Prints medians of wall and CPU (process) seconds per figure and their ratios to the naive
loop (CPU time is the steadier number on a shared machine), and the PNG size.

    python benchmarks/bench_render.py [--records 800] [--orbits 3] [--rounds 5] [--scales log-log]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

import fastspectro_dask.products as products
import fastspectro_dask.render as render
from fastspectro_dask.cache import reduce_file
from fastspectro_dask.ephemeris import read_ephemeris
from fastspectro_dask.reduce import DEFAULT_CATEGORIES, PadSpec
from fastspectro_dask.synth import write_synthetic_dataset

INSTRUMENTS = ("ees", "eeb", "ies", "ieb")


def make_orbits(root: Path, n_orbits: int, records: int) -> list[tuple[dict, object]]:
    """(reduced datasets per instrument, ephemeris) of orbits with all four instruments."""
    out = []
    orbit = 13616
    while len(out) < n_orbits and orbit < 13616 + 20 * n_orbits:
        man = write_synthetic_dataset(
            root / str(orbit), orbits=1, start_orbit=orbit, records=records, seed=21, orb_files=True
        )
        files = man.files.get(orbit, {})
        if set(INSTRUMENTS) <= set(files):
            red = {
                i: reduce_file(files[i], "data", DEFAULT_CATEGORIES, pad=PadSpec())
                for i in INSTRUMENTS
            }
            out.append((red, read_ephemeris(man.orb_files[orbit])))
        orbit += 1
    if not out:
        raise RuntimeError("no synthetic orbit with all four instruments; change the seed")
    return out


def limits(orbits, y_scale: str) -> dict[str, dict[str, float]]:
    """Fixed mission-wide limits per row, as the pipeline passes them (from the extrema)."""
    out = {}
    for inst in INSTRUMENTS:
        v = np.concatenate([o[inst]["values"].values.ravel() for o, _ in orbits])
        v = v[np.isfinite(v) & (v > 0)]
        out[inst] = {"z_min": float(v.min()), "z_max": float(np.percentile(v, 95))}
        out[inst].update({"y_min": 5.0 if y_scale == "log" else 0.0, "y_max": 3.0e4})
    return out


def naive(size_px: tuple[int, int]) -> Callable:
    """The naive loop at the same pixel size as our figure (100 dpi)."""

    def run(orbit, eph, path: Path, y_scale: str, z_scale: str, ext) -> None:
        fig = Figure(figsize=(size_px[0] / 100, size_px[1] / 100), dpi=100)
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

    return run


def product(kind: str, engine: str, compress_level: int | None = None) -> Callable:
    def run(orbit, eph, path: Path, y_scale: str, z_scale: str, ext) -> None:
        kw = dict(z_scale=z_scale, engine=engine, ephemeris=eph)
        if kind == "instruments":
            fig = products.FAST_plot_instrument_grid(orbit, y_scale=y_scale, extrema=ext, **kw)
        elif kind == "pa":
            fig = products.FAST_plot_pitch_angle_grid(orbit["ees"], y_scale=y_scale, **kw)
        else:  # the pad's y axis is pitch angle: colour limits only, as the pipeline's
            z_only = {k: {b: v for b, v in e.items() if b[0] == "z"} for k, e in ext.items()}
            fig = products.FAST_plot_pad(orbit, extrema=z_only, **kw)
        if compress_level is None:
            render.save_figure(fig, path)
        else:
            render.save_figure(fig, path, compress_level=compress_level)

    return run


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=800)
    ap.add_argument("--orbits", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scales", default="log-log", help="y-z scales, e.g. linear-log")
    args = ap.parse_args(argv)
    y_scale, z_scale = args.scales.split("-")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        orbits = make_orbits(root / "data", args.orbits, args.records)
        ext = limits(orbits, y_scale)
        out = root / "out"
        out.mkdir()
        probe = out / "probe.png"
        product("instruments", "fast")(*orbits[0], probe, y_scale, z_scale, ext)
        from PIL import Image

        with Image.open(probe) as im:
            size_px = im.size
        cases: list[tuple[str, Callable]] = [
            ("naive loop (baseline)", naive(size_px)),
            ("reference: instrument grid", product("instruments", "reference")),
            ("fast: instrument grid", product("instruments", "fast")),
            ("fast: pitch-angle grid", product("pa", "fast")),
            ("fast: pad", product("pad", "fast")),
            ("fast: instrument grid, PNG level 1", product("instruments", "fast", 1)),
            ("fast: instrument grid, PNG level 6", product("instruments", "fast", 6)),
        ]
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        cpu: dict[str, list[float]] = {name: [] for name, _ in cases}
        sizes: dict[str, int] = {}
        for _name, fn in cases:  # warm-up (font cache, imports, the layouts)
            fn(*orbits[0], out / "warm.png", y_scale, z_scale, ext)
        for _ in range(args.rounds):
            for name, fn in cases:
                for k, (orbit, eph) in enumerate(orbits):
                    path = out / f"{abs(hash(name))}_{k}.png"
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn(orbit, eph, path, y_scale, z_scale, ext)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                    sizes[name] = path.stat().st_size
    base = statistics.median(times[cases[0][0]])
    base_cpu = statistics.median(cpu[cases[0][0]])
    print(
        f"{len(orbits)} orbits x 4 instruments, {args.records} records per file, scales "
        f"{args.scales}, {args.rounds} rounds, figures {size_px[0]}x{size_px[1]} px; medians "
        "per figure (CPU = process time)"
    )
    print(f"{'case':38s} {'wall s':>7s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s} {'PNG kB':>7s}")
    ratios = {}
    for name, _ in cases:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        ratios[name] = med / base
        print(
            f"{name:38s} {med:7.3f} {med / base:6.2f} {med_cpu:7.3f} {med_cpu / base_cpu:6.2f} "
            f"{sizes[name] / 1024:7.0f}"
        )
    return ratios


if __name__ == "__main__":
    main()
