"""Spectrogram products: geometry of the cells, limits, placeholders, files, errors."""

from __future__ import annotations

import os

import matplotlib.dates as mdates
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure

from fastspectro_dask.errors import PlottingError
from fastspectro_dask.io import open_esa
from fastspectro_dask.products import (
    FAST_plot_instrument_grid,
    FAST_plot_pitch_angle_grid,
    read_marked_intervals,
)
from fastspectro_dask.reduce import DEFAULT_CATEGORIES, reduce_dataset
from fastspectro_dask.render import (
    figure_path,
    make_spectrogram,
    save_figure,
)

T0 = np.datetime64("2000-01-28T10:00:00", "ns")
#: Two colours: values below the middle of the norm blue, above it red.
BLUE_RED = ListedColormap([(0.0, 0.0, 1.0), (1.0, 0.0, 0.0)])


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def table(n: int, hi: float = 30000.0, lo: float = 4.0) -> np.ndarray:
    """A FAST-like table: log-spaced, channel 0 the highest energy."""
    return hi * (lo / hi) ** (np.arange(n) / (n - 1))


def two_mode_orbit(n_each: int = 60, feature_ev: float = 1000.0, dt_s: float = 2.5):
    """48 channels (NaN-padded to 96) then 96 channels; a bright channel nearest
    ``feature_ev`` in every record, 1 elsewhere."""
    n = 2 * n_each
    times = T0 + (np.arange(n) * dt_s * 1e9).astype("timedelta64[ns]")
    energies = np.full((n, 96), np.nan)
    energies[:n_each, :48] = table(48)
    energies[n_each:, :] = table(96)
    values = np.where(np.isfinite(energies), 1.0, np.nan)
    hot = np.nanargmin(np.abs(np.log(energies / feature_ev)), axis=1)
    values[np.arange(n), hot] = 1000.0
    return times, energies, values, hot


def expected_edges(e_desc: np.ndarray, j: int, scale: str) -> tuple[float, float]:
    """Independent oracle: the cell edges of channel j of a descending table."""
    e = np.asarray(e_desc, float)
    if scale == "log":
        x = np.log(e)
        above = (x[j - 1] + x[j]) / 2 if j > 0 else x[0] + (x[0] - x[1]) / 2
        below = (x[j] + x[j + 1]) / 2 if j < e.size - 1 else x[-1] - (x[-2] - x[-1]) / 2
        return float(np.exp(below)), float(np.exp(above))
    above = (e[j - 1] + e[j]) / 2 if j > 0 else e[0] + (e[0] - e[1]) / 2
    below = (e[j] + e[j + 1]) / 2 if j < e.size - 1 else e[-1] - (e[-2] - e[-1]) / 2
    return float(below), float(above)


def rgba(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def red_rows(img: np.ndarray, col: int) -> np.ndarray:
    """Pixel rows (from the top) that are pure red in a pixel column."""
    px = img[:, col, :3].astype(int)
    return np.flatnonzero((px[:, 0] > 200) & (px[:, 1] < 50) & (px[:, 2] < 50))


def pixel(ax, x: float, y: float) -> tuple[int, int]:
    """Buffer (row, col) of a data point."""
    fig = ax.get_figure()
    dx, dy = ax.transData.transform((x, y))
    return round(fig.bbox.height - dy), round(dx)


def new_ax(figsize=(6.0, 4.0), dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def meshes_of(ax) -> list[QuadMesh]:
    return [c for c in ax.collections if isinstance(c, QuadMesh)]


def spectro_axes(fig: Figure) -> dict[str, object]:
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label() and "<" not in ax.get_label()}


@pytest.fixture(scope="module")
def orbit_raw(good_files):
    """The first good orbit with all four instruments, as open_esa Datasets."""
    for orbit in sorted(good_files):
        files = good_files[orbit]
        if {"ees", "eeb", "ies", "ieb"} <= set(files):
            return orbit, {k: open_esa(p) for k, p in files.items()}
    pytest.skip("no synthetic orbit with all four instruments")


@pytest.fixture(scope="module")
def orbit_reduced(orbit_raw):
    orbit, raw = orbit_raw
    return orbit, {k: reduce_dataset(ds).compute() for k, ds in raw.items()}


# --------------------------------------------------------------------------------------
# make_spectrogram: geometry
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("y_scale", ["linear", "log"])
def test_cells_on_per_record_edges_across_mode_change(y_scale):
    times, energies, values, _hot = two_mode_orbit()
    _fig, ax = new_ax()
    meshes = make_spectrogram(ax, times, energies, values, y_scale=y_scale, colorbar=False)
    assert ax.get_yscale() == y_scale
    assert len(meshes) == 2  # one run per energy table
    for mesh, table_n in zip(meshes, (48, 96), strict=True):
        coords = mesh.get_coordinates()
        assert coords.shape[0] == table_n + 1  # only the measured channels, no NaN rows
        assert np.isfinite(coords).all()
        y = coords[:, 0, 1]  # ascending edges
        e = table(table_n)
        for j in (0, table_n // 3, table_n - 1):
            lo, hi = expected_edges(e, j, y_scale)
            k = table_n - 1 - j  # row from the bottom
            assert y[k] == pytest.approx(lo, rel=1e-9)
            assert y[k + 1] == pytest.approx(hi, rel=1e-9)
        assert (np.diff(y) > 0).all()
    # The two runs meet at the midpoint between the last 48-channel and first 96-channel
    # records (no overlap, no hole).
    x0 = meshes[0].get_coordinates()[0, :, 0]
    x1 = meshes[1].get_coordinates()[0, :, 0]
    mid = mdates.date2num(times[59] + (times[60] - times[59]) / 2)
    assert x0[-1] == pytest.approx(mid, abs=1e-9) and x1[0] == x0[-1]
    # Outer time edges: half an interval beyond the first and last records.
    half = 1.25 / 86400
    assert x0[0] == pytest.approx(mdates.date2num(times[0]) - half, abs=1e-9)
    assert x1[-1] == pytest.approx(mdates.date2num(times[-1]) + half, abs=1e-9)
    assert ax.get_xlim() == pytest.approx((x0[0], x1[-1]))


@pytest.mark.parametrize("y_scale", ["linear", "log"])
def test_feature_lands_in_its_pixel_rows(y_scale):
    """A bright channel at ~1 keV (log) / ~10 keV (linear) is drawn exactly between its
    edges, in both modes, once rendered."""
    feature = 1000.0 if y_scale == "log" else 10000.0
    times, energies, values, hot = two_mode_orbit(feature_ev=feature)
    fig, ax = new_ax(figsize=(6.0, 8.0))
    make_spectrogram(
        ax,
        times,
        energies,
        values,
        y_scale=y_scale,
        z_scale="log",
        vmin=1.0,
        vmax=1000.0,
        colormap=BLUE_RED,
        colorbar=False,
    )
    img = rgba(fig)
    for rec in (30, 90):  # one record of each mode
        j = hot[rec]
        n_chan = 48 if rec < 60 else 96
        lo, hi = expected_edges(table(n_chan), j, y_scale)
        x = mdates.date2num(times[rec])
        row_hi, col = pixel(ax, x, hi)
        row_lo, _ = pixel(ax, x, lo)
        rows = red_rows(img, col)
        assert rows.size > 0
        assert rows.min() >= row_hi - 1 and rows.max() <= row_lo + 1
        assert rows.size >= (row_lo - row_hi) - 2  # the whole cell, not a sliver
        centre_row, _ = pixel(ax, x, energies[rec, j])
        assert rows.min() <= centre_row <= rows.max()


def test_gap_stays_blank_and_is_never_bridged():
    dt = 2.5
    secs = np.concatenate([np.arange(40) * dt, 600 + np.arange(40) * dt])  # ~8 min gap
    times = T0 + (secs * 1e9).astype("timedelta64[ns]")
    e = table(48)
    values = np.full((80, 48), 100.0)
    fig, ax = new_ax()
    meshes = make_spectrogram(ax, times, e, values, y_scale="log", colorbar=False)
    assert len(meshes) == 2
    a_end = meshes[0].get_coordinates()[0, -1, 0]
    b_start = meshes[1].get_coordinates()[0, 0, 0]
    # Each side ends half a cadence past its last record.
    assert a_end == pytest.approx(mdates.date2num(times[39]) + dt / 2 / 86400, abs=1e-9)
    assert b_start == pytest.approx(mdates.date2num(times[40]) - dt / 2 / 86400, abs=1e-9)
    img = rgba(fig)
    row, col = pixel(ax, mdates.date2num(T0 + np.timedelta64(300, "s")), 300.0)
    assert (img[row, col, :3] == 255).all()  # background: nothing drawn in the gap
    row, col = pixel(ax, mdates.date2num(times[10]), 300.0)
    assert not (img[row, col, :3] == 255).all()


def test_gap_is_judged_by_the_local_cadence():
    """A 5 s hole in fast (0.625 s) survey is a gap even next to slow (2.5 s) survey."""
    slow = np.arange(30) * 2.5
    fast = slow[-1] + 1.5 + np.arange(30) * 0.625
    fast = np.concatenate([fast[:15], fast[15:] + 5.0])
    secs = np.concatenate([slow, fast])
    e = np.full((60, 96), np.nan)
    e[:30, :48] = table(48)
    e[30:, :] = table(96)
    v = np.where(np.isfinite(e), 5.0, np.nan)
    _fig, ax = new_ax()
    meshes = make_spectrogram(ax, secs, e, v, y_scale="log", colorbar=False)
    assert len(meshes) == 3  # slow run, fast run split at its gap
    xs = [m.get_coordinates()[0, :, 0] for m in meshes]
    assert xs[0][-1] == xs[1][0]  # the mode change itself is not a gap
    assert xs[2][0] - xs[1][-1] == pytest.approx(5.0, abs=1e-9)


def test_log_colour_scale_draws_measured_zeros_in_the_lowest_colour():
    """Measured zeros (and negatives) on a log scale: the lowest colour, as IDL draws them;
    only NaN (no measurement) is blank."""
    e = table(8)
    values = np.full((20, 8), 50.0)
    values[5:10, 2] = 0.0
    values[12, 4] = -3.0
    values[15, 6] = np.nan
    fig, ax = new_ax()
    (mesh,) = make_spectrogram(
        ax, np.arange(20.0), e, values, y_scale="log", vmin=10.0, vmax=100.0, colorbar=False
    )
    arr = mesh.get_array()  # (energy ascending, time)
    k2, k4, k6 = 7 - 2, 7 - 4, 7 - 6
    assert not arr.mask[k2, 5:10].any() and not arr.mask[k4, 12]
    assert arr.mask[k6, 15] and arr.mask.sum() == 1
    img = rgba(fig)
    lowest = np.round(np.asarray(mesh.cmap(0.0)[:3]) * 255)
    for t, k in ((7.0, 2), (12.0, 4)):
        row, col = pixel(ax, t, e[k])
        assert np.allclose(img[row, col, :3], lowest, atol=2)  # the colour of vmin and below
    row, col = pixel(ax, 15.0, e[6])
    assert (img[row, col, :3] == 255).all()  # NaN: blank
    # On a linear colour scale zero is a value like any other.
    _fig2, ax2 = new_ax()
    (mesh2,) = make_spectrogram(
        ax2, np.arange(20.0), e, values, z_scale="linear", vmin=0, vmax=100, colorbar=False
    )
    assert mesh2.get_array().mask.sum() == 1  # only the NaN
    assert isinstance(mesh.norm, LogNorm) and type(mesh2.norm) is Normalize


def test_nan_energies_and_empty_records_do_not_break_edges():
    n = 30
    e = np.tile(table(48), (n, 1)).astype(float)
    e[3] = np.nan  # a record without any energy
    e[7, 10] = np.nan  # a hole inside the block
    e[8, 0] = 35000.0  # a retrace step above the table
    v = np.ones((n, 48))
    v[3] = 5.0
    fig, ax = new_ax()
    meshes = make_spectrogram(ax, np.arange(float(n)), e, v, y_scale="log", colorbar=False)
    for m in meshes:
        c = m.get_coordinates()
        assert np.isfinite(c).all()
        assert (np.diff(c[:, 0, 1]) > 0).all()
    drawn = np.concatenate([m.get_coordinates()[0, :-1, 0] for m in meshes])
    assert not np.any(np.isclose(drawn, 3.0 - 0.5))  # record 3 is skipped, not drawn at NaN
    assert ax.get_ylim()[1] > 35000.0  # no energy cap
    rgba(fig)  # draws without error


def test_drifting_energies_use_one_interleaved_mesh():
    n = 200
    e = table(32)[None, :] * (1 + 0.01 * np.arange(n))[:, None]  # a new table every record
    v = np.full((n, 32), 7.0)
    _fig, ax = new_ax()
    (mesh,) = make_spectrogram(ax, np.arange(float(n)), e, v, y_scale="log", colorbar=False)
    c = mesh.get_coordinates()
    assert c.shape == (33, 2 * n, 2)
    # Record 150's cell uses record 150's own edges.
    lo, hi = expected_edges(e[150], 0, "log")
    assert c[-1, 300, 1] == pytest.approx(hi) and c[-2, 300, 1] == pytest.approx(lo)
    arr = mesh.get_array()
    assert not arr.mask[:, 0::2].any() and arr.mask[:, 1::2].all()


def test_bounds_from_percentiles_and_validation():
    rng = np.random.default_rng(0)
    v = rng.lognormal(3, 1, (50, 16))
    v[0, 0] = 0.0
    _, ax = new_ax()
    (mesh,) = make_spectrogram(ax, np.arange(50.0), table(16), v, percentile=(5, 95))
    pos = v[v > 0]
    assert mesh.norm.vmin == pytest.approx(np.percentile(pos, 5))
    assert mesh.norm.vmax == pytest.approx(np.percentile(pos, 95))
    assert mesh.colorbar is not None
    with pytest.raises(ValueError, match="z_min > 0"):
        make_spectrogram(ax, np.arange(50.0), table(16), v, vmin=0.0, vmax=10.0)
    with pytest.raises(ValueError, match="y_min > 0"):
        make_spectrogram(ax, np.arange(50.0), table(16), v, y_scale="log", y_min=0.0)
    with pytest.raises(ValueError, match="y_scale"):
        make_spectrogram(ax, np.arange(50.0), table(16), v, y_scale="symlog")
    with pytest.raises(ValueError, match="match"):
        make_spectrogram(ax, np.arange(50.0), table(15), v)
    _fig, ax = new_ax()
    assert make_spectrogram(ax, np.arange(5.0), table(4), np.zeros((5, 4))) == []
    assert any(t.get_text() == "no data" for t in ax.texts)


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


def test_instrument_grid_rows_scales_shared_time_and_title(orbit_raw):
    orbit, raw = orbit_raw
    fig = FAST_plot_instrument_grid(raw, y_scale="log", z_scale="log", squeeze_gaps_minutes=None)
    axes = spectro_axes(fig)
    assert list(axes) == ["ees", "eeb", "ies", "ieb"]
    lims = {ax.get_xlim() for ax in axes.values()}
    assert len(lims) == 1  # one shared time axis
    lo, hi = lims.pop()
    t_all = np.concatenate([ds["time"].values for ds in raw.values()])
    assert lo <= mdates.date2num(t_all.min()) and hi >= mdates.date2num(t_all.max())
    assert hi - lo < mdates.date2num(t_all.max()) - mdates.date2num(t_all.min()) + 10 / 86400
    for ax in axes.values():
        assert ax.get_yscale() == "log"
        m = meshes_of(ax)
        assert m and isinstance(m[0].norm, LogNorm)
        assert m[0].colorbar.ax.get_ylabel() == "Counts"
        assert ax.get_ylabel() == "Energy (eV)"
        # electrons and ions are drawn up to tens of keV (no energy cap)
        assert ax.get_ylim()[1] > 20000
    title = fig.get_suptitle()
    assert title.startswith(f"FAST orbit {orbit}  ") and title.endswith(" UT")
    assert str(t_all.min().astype("datetime64[s]")).replace("T", " ") in title
    # Default colormap for (log, log).
    assert meshes_of(axes["ees"])[0].cmap.name.startswith("inferno")


def test_instrument_grid_overrides_beat_extrema_beat_data(orbit_reduced):
    _orbit, red = orbit_reduced
    extrema = {
        "ees": {"y_min": 5.0, "y_max": 20000.0, "z_min": 2.0, "z_max": 500.0},
        "ies": {"z_min": 3.0, "z_max": 300.0},
    }
    overrides = {
        "ees": {"y_max": 10000.0, "z_max": 900.0, "y_label": "E (eV)", "z_label": "C"},
        "ieb": {"y_min": 10.0, "y_max": 1000.0, "z_min": 1.5, "z_max": 15.0},
    }
    fig = FAST_plot_instrument_grid(
        red, y_scale="log", z_scale="log", overrides=overrides, extrema=extrema, colormap="magma"
    )
    axes = spectro_axes(fig)
    ees = axes["ees"]
    assert ees.get_ylim() == pytest.approx((5.0, 10000.0))  # extrema y_min, override y_max
    norm = meshes_of(ees)[0].norm
    assert (norm.vmin, norm.vmax) == pytest.approx((2.0, 900.0))
    assert ees.get_ylabel() == "E (eV)"
    assert meshes_of(ees)[0].colorbar.ax.get_ylabel() == "C"
    assert meshes_of(axes["ies"])[0].get_clim() == pytest.approx((3.0, 300.0))
    assert axes["ieb"].get_ylim() == pytest.approx((10.0, 1000.0))
    assert meshes_of(axes["ieb"])[0].get_clim() == pytest.approx((1.5, 15.0))
    # eeb: nothing given, limits from the data (percentiles of positive values)
    v = red["eeb"]["values"].sel(category="all").values
    v = v[np.isfinite(v) & (v > 0)]
    assert meshes_of(axes["eeb"])[0].get_clim() == pytest.approx(np.percentile(v, (1, 99)))
    assert all(m.cmap.name.startswith("magma") for ax in axes.values() for m in meshes_of(ax))
    with pytest.raises(ValueError, match="'zmax'"):
        FAST_plot_instrument_grid(red, overrides={"ees": {"zmax": 1.0}})
    with pytest.raises(ValueError, match="y_scale"):
        FAST_plot_instrument_grid(red, y_scale="logarithmic")
    # Impossible limits are the caller's error (ValueError naming the row), not a
    # plotting failure, and are caught before anything is drawn.
    with pytest.raises(ValueError, match=r"'ees'.*y_min > 0"):
        FAST_plot_instrument_grid(red, y_scale="log", overrides={"ees": {"y_min": 0}})
    with pytest.raises(ValueError, match=r"'ies'.*z_min"):
        FAST_plot_instrument_grid(red, overrides={"ies": {"z_min": 50.0, "z_max": 5.0}})
    with pytest.raises(ValueError, match=r"'ieb'.*number"):
        FAST_plot_instrument_grid(red, extrema={"ieb": {"y_max": "high"}})


def test_linear_axes_and_eflux_units(orbit_raw):
    _, raw = orbit_raw
    fig = FAST_plot_instrument_grid(
        {"ees": raw["ees"]},
        instrument_order=("ees",),
        y_scale="linear",
        z_scale="linear",
        variable="eflux",
        layout="constrained",
    )
    ax = spectro_axes(fig)["ees"]
    mesh = meshes_of(ax)[0]
    assert ax.get_yscale() == "linear" and type(mesh.norm) is Normalize
    assert mesh.colorbar.ax.get_ylabel() == raw["ees"]["eflux"].attrs["UNITS"]
    assert mesh.cmap.name.startswith("viridis")
    assert ax.get_ylim()[0] >= 0  # a linear energy axis does not go below zero
    rgba(fig)  # the constrained layout engine works too


def test_placeholders_for_missing_and_empty_instruments(synth_dataset, orbit_raw):
    _, raw = orbit_raw
    all_fill = synth_dataset.bad_files["all-fill"]["path"]
    orbit = {"ees": open_esa(all_fill), "ies": raw["ies"], "ieb": None}  # eeb absent
    fig = FAST_plot_instrument_grid(orbit, y_scale="log")
    axes = spectro_axes(fig)
    assert list(axes) == ["ees", "eeb", "ies", "ieb"]  # stable layout
    for key in ("ees", "eeb", "ieb"):
        assert not meshes_of(axes[key])
        assert f"{key}: no data" in [t.get_text() for t in axes[key].texts]
    assert meshes_of(axes["ies"])
    heights = {round(ax.get_position().height, 6) for ax in axes.values()}
    assert len(heights) == 1
    rgba(fig)
    # Nothing at all to show: still a figure, on the orbit's own time span.
    ds = open_esa(all_fill)
    fig = FAST_plot_instrument_grid(
        {"ees": ds}, instrument_order=("ees", "ies"), squeeze_gaps_minutes=None
    )
    assert fig.get_suptitle().endswith("(no data)")
    t = ds["time"].values
    assert spectro_axes(fig)["ies"].get_xlim() == pytest.approx(
        tuple(mdates.date2num(np.array([t.min(), t.max()])))
    )


def test_pitch_angle_grid_rows_titles_and_dask_input(ees_file):
    ds = open_esa(ees_file)
    fig = FAST_plot_pitch_angle_grid(ds, y_scale="log", overrides={"antiparallel": {"z_max": 77.0}})
    axes = spectro_axes(fig)
    assert list(axes) == list(DEFAULT_CATEGORIES)
    titles = [ax.get_title(loc="left") for ax in axes.values()]
    # named by pitch angle: no hemisphere is known without an orbit file
    assert "0\N{PLUS-MINUS SIGN}30\N{DEGREE SIGN}" in titles[1] and "going" not in titles[1]
    assert "330\N{EN DASH}30\N{DEGREE SIGN}" in titles[1]
    assert "180\N{PLUS-MINUS SIGN}30\N{DEGREE SIGN}" in titles[2]
    assert "90\N{PLUS-MINUS SIGN}50\N{DEGREE SIGN}" in titles[3]
    assert meshes_of(axes["antiparallel"])[0].norm.vmax == 77.0
    assert "ees pitch angle" in fig.get_suptitle()
    # Same picture from a lazily reduced (dask-backed) Dataset, with custom categories.
    cats = {"beam": [(0.0, 20.0), (340.0, 360.0)], "trapped": [(60.0, 120.0)]}
    red = reduce_dataset(open_esa(ees_file), categories=cats)
    fig2 = FAST_plot_pitch_angle_grid(red, y_scale="linear")
    axes2 = spectro_axes(fig2)
    assert list(axes2) == ["beam", "trapped"]
    assert "340\N{EN DASH}360" in axes2["beam"].get_title(loc="left")
    assert meshes_of(axes2["beam"])[0].cmap.name.startswith("cividis")
    with pytest.raises(ValueError, match="no category"):
        FAST_plot_pitch_angle_grid(red, categories={"antiparallel": [(150.0, 210.0)]})


def test_marked_intervals_add_zoom_columns(tmp_path, orbit_reduced):
    orbit, red = orbit_reduced
    t = red["ees"]["time"].values
    a, b = t[len(t) // 2], t[len(t) // 2 + 5]
    csv = tmp_path / "marks.csv"
    csv.write_text(
        "orbit,start_utc,end_utc,label\n"
        f"{orbit},{str(a)[:23]}Z,{str(b)[:23]}Z,arc\n"
        "# a comment\n\n"
        f"{orbit + 999},2001-01-01T00:00:00,2001-01-01T00:01:00\n"
    )
    marks = read_marked_intervals(csv)
    assert set(marks) == {orbit, orbit + 999}
    assert marks[orbit][0][2] == "arc" and marks[orbit + 999][0][2] == ""
    fig = FAST_plot_instrument_grid(red, intervals=marks, zoom_duration_minutes=4)
    zooms = [ax for ax in fig.axes if ax.get_label().endswith("-zoom")]
    assert len(zooms) == 4
    lo, hi = zooms[0].get_xlim()
    assert (hi - lo) * 1440 == pytest.approx(4.0)
    centre = mdates.date2num(a + (b - a) / 2)
    assert (lo + hi) / 2 == pytest.approx(centre, abs=1e-7)
    assert "arc" in zooms[0].get_title()
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2000-01-01T00:00:00\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1"):
        read_marked_intervals(bad)


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def test_save_is_deterministic_atomic_and_releases(tmp_path, orbit_reduced):
    _, red = orbit_reduced
    paths = []
    for name in ("a", "b"):
        fig = FAST_plot_instrument_grid(red, y_scale="log")
        out = tmp_path / name / "deep" / "fig.png"
        assert save_figure(fig, out) == out
        assert not fig.axes  # released
        paths.append(out)
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] and data[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert b"matplotlib" not in data[0]  # provenance is ours: no matplotlib version tag
    assert os.listdir(paths[0].parent) == ["fig.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert paths[0].stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    fig = FAST_plot_instrument_grid(red, y_scale="log")
    size, dpi = fig.get_size_inches(), fig.dpi
    from PIL import Image

    with Image.open(paths[0]) as im:
        assert im.size == (round(size[0] * dpi), round(size[1] * dpi))
    # A failed save: PlottingError naming the path, old file intact, no temp file.
    (tmp_path / "a" / "deep" / "dir.png").mkdir()
    with pytest.raises(PlottingError, match=r"dir\.png"):
        save_figure(fig, tmp_path / "a" / "deep" / "dir.png")
    assert sorted(os.listdir(paths[0].parent)) == ["dir.png", "fig.png"]


def test_figure_path():
    p = figure_path("/out", 13616, np.datetime64("2000-01-28T09:53:13"), "pa-ees", "log", "linear")
    assert p.as_posix() == "/out/2000/01/13616/13616_pa-ees_y-log_z-linear.png"
    p = figure_path("o", 1, "1996-08-21T11:11:50Z", "instruments", "linear", "log")
    assert p.as_posix() == "o/1996/08/1/1_instruments_y-linear_z-log.png"
    with pytest.raises(ValueError):
        figure_path("o", 1, "1996-08-21", "a/b", "linear", "log")


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_errors_while_drawing_become_plotting_errors(orbit_reduced, monkeypatch):
    # A grid names its orbit (the generic batch's errors: tests/test_generic.py).
    orbit, red = orbit_reduced
    import fastspectro_dask.products as products

    def broken(*args, **kwargs):
        raise KeyError("bad axis")

    monkeypatch.setattr(products, "make_spectrogram", broken)
    with pytest.raises(PlottingError, match=f"orbit {orbit}") as info:
        FAST_plot_instrument_grid(red)
    assert isinstance(info.value.__cause__, KeyError)


# --------------------------------------------------------------------------------------
# Record widths from the accumulation time (time_delta)
# --------------------------------------------------------------------------------------

#: One second in matplotlib date units (days); date numbers near 2000 carry ~1e-11 days.
SEC = 1.0 / 86400.0


def mesh_x(meshes) -> list[np.ndarray]:
    """The time edges of each mesh, in date numbers."""
    return [m.get_coordinates()[0, :, 0] for m in meshes]


@pytest.mark.parametrize("as_timedelta", [False, True])
def test_single_record_spans_its_duration_and_is_visible(as_timedelta):
    t = np.array([T0])
    dur = np.array([np.timedelta64(2500, "ms")]) if as_timedelta else np.array([2.5])
    fig, ax = new_ax()
    (mesh,) = make_spectrogram(
        ax, t, table(16), np.full((1, 16), 50.0), y_scale="log", colorbar=False, durations=dur
    )
    x = mesh.get_coordinates()[0, :, 0]
    centre = mdates.date2num(T0)
    assert x.size == 2
    assert (x[1] - x[0]) / SEC == pytest.approx(2.5, abs=1e-5)  # not the 1 s guess
    assert x[0] == pytest.approx(centre - 1.25 * SEC, abs=1e-10)  # centred on its time
    assert ax.get_xlim() == pytest.approx((x[0], x[1]))
    # On a 10 s axis the column is drawn, a quarter of the axes wide, around its centre.
    ax.set_xlim(centre - 5 * SEC, centre + 5 * SEC)
    img = rgba(fig)
    row, c_lo = pixel(ax, x[0], 300.0)
    _, c_hi = pixel(ax, x[1], 300.0)
    _, a_lo = pixel(ax, centre - 5 * SEC, 300.0)
    _, a_hi = pixel(ax, centre + 5 * SEC, 300.0)
    cols = np.arange(a_lo + 2, a_hi - 2)  # inside the axes frame
    drawn = cols[(img[row, cols, :3] != 255).any(axis=1)]
    assert drawn.size >= (c_hi - c_lo) - 2  # the whole 2.5 s, not a sliver
    assert drawn.min() >= c_lo - 1 and drawn.max() <= c_hi + 1  # and nothing beyond it
    assert (c_hi - c_lo) == pytest.approx((a_hi - a_lo) / 4, abs=2)


def test_single_record_without_duration_keeps_the_old_guess():
    """Fallback: no duration (or NaN/NaT) -> the 1 s default of a lone datetime record."""
    for dur in (None, np.array([np.nan]), np.array([np.timedelta64("NaT")]), np.array([-1e31])):
        _fig, ax = new_ax()
        (mesh,) = make_spectrogram(
            ax, np.array([T0]), table(8), np.ones((1, 8)), colorbar=False, durations=dur
        )
        x = mesh.get_coordinates()[0, :, 0]
        assert (x[1] - x[0]) / SEC == pytest.approx(1.0, abs=1e-5)


def fast_pass(durs):
    """Contiguous accumulations (start-based, like FAST): centres and durations."""
    durs = np.asarray(durs, float)
    starts = np.concatenate([[0.0], np.cumsum(durs[:-1])])
    return starts + durs / 2, durs


def test_segment_ends_and_mode_change_follow_the_durations():
    # slow 2.5 s records, then fast 0.625 s ones (other table), then a slow one; a gap;
    # then a second pass of three slow records.
    c1, d1 = fast_pass([2.5] * 6 + [0.625] * 8 + [2.5])
    c2, d2 = fast_pass([2.5] * 3)
    secs = np.concatenate([c1, 600.0 + c2])
    durs = np.concatenate([d1, d2])
    e = np.full((secs.size, 96), np.nan)
    fast = np.zeros(secs.size, bool)
    fast[6:14] = True
    e[~fast, :48] = table(48)
    e[fast, :] = table(96)
    v = np.where(np.isfinite(e), 5.0, np.nan)
    _fig, ax = new_ax()
    meshes = make_spectrogram(ax, secs, e, v, y_scale="log", colorbar=False, durations=durs)
    xs = mesh_x(meshes)
    assert len(xs) == 4  # slow | fast | slow  (gap)  slow
    assert xs[0][0] == pytest.approx(0.0)  # first record starts at its start
    # The mode change lies where the accumulations meet (15 s), not at the midpoint of
    # the centres (14.0625 + 15.3125)/2 = 14.6875 the neighbour rule gives.
    assert xs[0][-1] == pytest.approx(15.0) and xs[1][0] == xs[0][-1]
    assert xs[1][-1] == pytest.approx(20.0) and xs[2][0] == xs[1][-1]
    # The last record of the pass ends after its own 2.5 s, not after a guessed
    # (0.3125 + 1.25) = 1.5625 s.
    assert xs[2][-1] == pytest.approx(22.5)
    assert xs[3][0] == pytest.approx(600.0) and xs[3][-1] == pytest.approx(607.5)
    # Every cell is exactly its record's duration.
    widths = np.concatenate([np.diff(x) for x in xs])
    np.testing.assert_allclose(widths, durs, atol=1e-9)


def test_gap_stays_blank_with_durations():
    dt = 2.5
    secs = np.concatenate([np.arange(40) * dt, 600 + np.arange(40) * dt])
    times = T0 + (secs * 1e9).astype("timedelta64[ns]")
    dur = np.full(80, dt)
    dur[39] = 2000.0  # a bogus duration longer than the gap never bridges it
    fig, ax = new_ax()
    meshes = make_spectrogram(
        ax,
        times,
        table(48),
        np.full((80, 48), 100.0),
        y_scale="log",
        colorbar=False,
        durations=dur,
    )
    assert len(meshes) == 2
    a_end, b_start = mesh_x(meshes)[0][-1], mesh_x(meshes)[1][0]
    mid = mdates.date2num(times[39] + (times[40] - times[39]) / 2)
    assert a_end == pytest.approx(mid, abs=1e-10)  # clipped at the gap's middle
    assert b_start == pytest.approx(mdates.date2num(times[40]) - dt / 2 * SEC, abs=1e-10)
    img = rgba(fig)
    row, col = pixel(ax, mdates.date2num(T0 + np.timedelta64(450, "s")), 300.0)
    assert (img[row, col, :3] == 255).all()


def test_partly_unknown_durations_fall_back_per_record():
    secs = np.arange(10) * 4.0  # 4 s cadence, but 2 s accumulations
    dur = np.full(10, 2.0)
    dur[[0, 9]] = np.nan  # the outer records' durations unknown
    e, v = table(8), np.ones((10, 8))
    _f, ax = new_ax()
    (known,) = make_spectrogram(ax, secs, e, v, colorbar=False, durations=dur)
    _f, ax = new_ax()
    (none,) = make_spectrogram(ax, secs, e, v, colorbar=False)
    _f, ax = new_ax()
    (nans,) = make_spectrogram(ax, secs, e, v, colorbar=False, durations=np.full(10, np.nan))
    x_none = mesh_x([none])[0]
    np.testing.assert_array_equal(mesh_x([nans])[0], x_none)  # all NaN == no durations
    np.testing.assert_allclose(x_none[[0, -1]], [-2.0, 38.0])  # neighbour rule
    x = mesh_x([known])[0]
    # Between two known records the edge is the shared midpoint (a hole shorter than a
    # gap is bridged); next to an unknown record, the known record keeps its own edge
    # (4 - 1 = 3, 32 + 1 = 33); the outer records (unknown) keep the neighbour rule.
    np.testing.assert_allclose(x, [-2.0, 3.0, 6, 10, 14, 18, 22, 26, 30, 33.0, 38.0])
    with pytest.raises(ValueError, match="durations"):
        make_spectrogram(ax, secs, e, v, durations=np.ones(9))


def test_grid_draws_a_single_record_orbit_at_its_time_delta(synth_dataset):
    bad = synth_dataset.bad_files["single-record"]
    ds = open_esa(bad["path"])
    assert ds.sizes["time"] == 1
    dt = float(ds["time_delta"].values[0])
    assert dt > 1.0  # the synthetic survey record: 2.5 s (the old code drew 1 s)
    red = reduce_dataset(ds).compute()
    for source in (ds, red):
        fig = FAST_plot_instrument_grid(
            {"ees": source}, instrument_order=("ees",), squeeze_gaps_minutes=None
        )
        ax = spectro_axes(fig)["ees"]
        (mesh,) = meshes_of(ax)
        x = mesh.get_coordinates()[0, :, 0]
        assert (x[1] - x[0]) / SEC == pytest.approx(dt, abs=1e-5)
        assert (x[0] + x[1]) / 2 == pytest.approx(mdates.date2num(ds["time"].values[0]))
        img = rgba(fig)
        row, col = pixel(ax, (x[0] + x[1]) / 2, float(np.sqrt(np.prod(ax.get_ylim()))))
        assert not (img[row, col, :3] == 255).all()  # drawn
    fig = FAST_plot_pitch_angle_grid(red, squeeze_gaps_minutes=None)
    for ax in spectro_axes(fig).values():
        for m in meshes_of(ax):
            x = m.get_coordinates()[0, :, 0]
            assert (x[-1] - x[0]) / SEC == pytest.approx(dt, abs=1e-5)


def cells_match_durations(meshes, times, durations) -> int:
    """Assert every drawn cell is centred on a record and exactly its duration wide."""
    t = mdates.date2num(times)
    left = np.concatenate([x[:-1] for x in mesh_x(meshes)])
    right = np.concatenate([x[1:] for x in mesh_x(meshes)])
    centre = (left + right) / 2
    near = np.abs(t[None, :] - centre[:, None]).argmin(axis=1)
    np.testing.assert_allclose(centre, t[near], atol=1e-10)
    np.testing.assert_allclose((right - left) / SEC, durations[near], atol=1e-5)
    return left.size


def test_grid_cells_are_their_time_delta_wide(orbit_reduced):
    """Synthetic accumulations are contiguous inside a pass, so every record's cell is
    exactly its time_delta, also across slow/fast mode changes and at pass ends (the
    neighbour rule put mode-change edges at the midpoint of the centres instead)."""
    _orbit, red = orbit_reduced
    fig = FAST_plot_instrument_grid(red, instrument_order=tuple(red), squeeze_gaps_minutes=None)
    axes = spectro_axes(fig)
    for inst, ds in red.items():
        d = ds["time_delta"].values
        assert np.isfinite(d).all()
        n = cells_match_durations(meshes_of(axes[inst]), ds["time"].values, d)
        assert n == ds.sizes["time"]  # every record drawn once
    assert len(np.unique(red["ees"]["time_delta"].values)) > 1  # modes with other widths
    img = rgba(fig)  # and it draws
    assert img.shape[2] == 4


def test_grid_falls_back_to_neighbour_spacing_without_time_delta(orbit_reduced):
    _orbit, red = orbit_reduced
    ees = red["ees"]
    for old in (ees.drop_vars("time_delta"), ees.assign(time_delta=ees.time_delta * np.nan)):
        fig = FAST_plot_instrument_grid(
            {"ees": old}, instrument_order=("ees",), squeeze_gaps_minutes=None
        )
        xs_old = mesh_x(meshes_of(spectro_axes(fig)["ees"]))
        _f, ax = new_ax()
        ref = make_spectrogram(
            ax,
            ees["time"].values,
            ees["energy"].values,
            ees["values"].sel(category="all").values,
            colorbar=False,
        )
        assert len(xs_old) == len(ref)
        for a, b in zip(xs_old, mesh_x(ref), strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Lone records stay visible: sub-pixel runs are drawn one pixel wide
# --------------------------------------------------------------------------------------


def drawn_columns(img: np.ndarray, ax, row: int) -> np.ndarray:
    """Pixel columns inside the axes that are not white in one pixel row."""
    x0, x1 = ax.bbox.x0, ax.bbox.x1
    cols = np.arange(int(np.ceil(x0)) + 2, int(np.floor(x1)) - 2)
    return cols[(img[row, cols, :3] != 255).any(axis=1)]


def test_a_lone_record_on_a_long_axis_is_drawn_one_pixel_wide():
    """A pass of 2.5 s records, a 30-minute gap, one lone 2.5 s record, another pass: at
    2.3 h over ~460 px a record is ~0.14 px, which Agg would not draw at all."""
    secs = np.concatenate([np.arange(1200) * 2.5, [4800.0], 6600 + np.arange(400) * 2.5])
    times = T0 + (secs * 1e9).astype("timedelta64[ns]")
    fig, ax = new_ax()
    meshes = make_spectrogram(
        ax,
        times,
        table(16),
        np.full((secs.size, 16), 50.0),
        colorbar=False,
        durations=np.full(secs.size, 2.5),
    )
    assert len(meshes) == 3 and all(m.axes is ax for m in meshes)  # the returned ones
    px = (ax.get_xlim()[1] - ax.get_xlim()[0]) / ax.bbox.width  # one pixel, in days
    wide, lone, _ = mesh_x(meshes)
    assert wide[-1] - wide[0] == pytest.approx(3000 * SEC)  # the pass: untouched
    np.testing.assert_allclose(np.diff(wide) / SEC, 2.5, atol=1e-5)
    centre = mdates.date2num(times[1200])
    assert lone[-1] - lone[0] == pytest.approx(px, rel=1e-6)  # widened to one pixel
    assert (lone[0] + lone[-1]) / 2 == pytest.approx(centre, abs=1e-10)  # centred
    img = rgba(fig)
    row, col = pixel(ax, centre, 1000.0)
    cols = drawn_columns(img, ax, row)
    assert np.abs(cols - col).min() <= 1  # the lone record is on the image...
    gap = cols[(cols > pixel(ax, wide[-1], 1000.0)[1] + 1) & (cols < col - 2)]
    assert gap.size == 0  # ...alone in its gap


def test_a_lone_record_at_the_end_of_the_axis_is_kept_inside():
    secs = np.concatenate([np.arange(1200) * 2.5, [4800.0]])
    fig, ax = new_ax()
    meshes = make_spectrogram(
        ax,
        secs,
        table(16),
        np.full((secs.size, 16), 50.0),
        colorbar=False,
        durations=np.full(secs.size, 2.5),
    )
    x = mesh_x(meshes)[1]
    assert ax.get_xlim()[1] >= x[-1]  # the widened record is not cut at the frame
    img = rgba(fig)
    row, _ = pixel(ax, 4800.0, 1000.0)
    x1 = int(np.floor(ax.bbox.x1))
    assert not (img[row, x1 - 2 : x1 + 1, :3] == 255).all()


def test_slivers_next_to_other_data_are_not_widened():
    """A short fast-survey run between slow ones is part of a continuous pass: it keeps
    its exact width even when it is narrower than a pixel."""
    c, d = fast_pass([2.5] * 1000 + [0.156] * 2 + [2.5] * 1000)
    e = np.full((c.size, 96), np.nan)
    e[:1000, :48] = e[1002:, :48] = table(48)
    e[1000:1002] = table(96)
    _fig, ax = new_ax()
    meshes = make_spectrogram(
        ax, c, e, np.where(np.isfinite(e), 5.0, np.nan), colorbar=False, durations=d
    )
    xs = mesh_x(meshes)
    assert len(xs) == 3
    px = (ax.get_xlim()[1] - ax.get_xlim()[0]) / ax.bbox.width
    assert xs[1][-1] - xs[1][0] < px  # a sliver...
    assert xs[1][-1] - xs[1][0] == pytest.approx(0.312)  # ...drawn at its real width


def test_grid_shows_a_single_record_instrument_next_to_a_full_orbit(orbit_reduced, synth_dataset):
    """The helper's finding: the single-record file next to a full orbit drew 0 pixels."""
    _orbit, red = orbit_reduced
    ees = red["ees"]
    lone = reduce_dataset(open_esa(synth_dataset.bad_files["single-record"]["path"])).compute()
    t_mid = ees["time"].values[ees.sizes["time"] // 2]
    lone = lone.assign_coords(time=[t_mid])  # inside the ees orbit's span
    fig = FAST_plot_instrument_grid(
        {"ees": ees, "ies": lone}, instrument_order=("ees", "ies"), squeeze_gaps_minutes=None
    )
    ax = spectro_axes(fig)["ies"]
    (mesh,) = meshes_of(ax)
    x = mesh.get_coordinates()[0, :, 0]
    px = (ax.get_xlim()[1] - ax.get_xlim()[0]) / ax.bbox.width
    assert float(lone["time_delta"][0]) * SEC < px  # really a sub-pixel record
    assert x[-1] - x[0] == pytest.approx(px, rel=1e-6)
    img = rgba(fig)
    row, col = pixel(ax, mdates.date2num(t_mid), float(np.sqrt(np.prod(ax.get_ylim()))))
    assert np.abs(drawn_columns(img, ax, row) - col).min() <= 1
