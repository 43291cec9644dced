"""Gap-squeezed UT axes, ephemeris label rows, hemisphere names and PNG provenance."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from fastspectro_dask.ephemeris import Ephemeris, read_ephemeris
from fastspectro_dask.output import read_figure_metadata, save_figure
from fastspectro_dask.products import FAST_plot_instrument_grid, FAST_plot_pitch_angle_grid
from fastspectro_dask.timeaxis import TimeAxis

T0 = np.datetime64("2000-01-28T10:00:00", "ns")
U0 = T0.astype(np.int64) / 1e9


def test_time_axis_segments_breaks_and_mapping():
    # data 0-300 s, 400-500 s (a 100 s gap: kept), 2000-2600 s (a 1500 s gap: squeezed)
    iv = [(U0 + a, U0 + b) for a, b in ((0, 300), (400, 500), (2000, 2600), (250, 310))]
    ax = TimeAxis.from_intervals(iv, squeeze_seconds=300)
    assert ax.segments == ((U0, U0 + 500), (U0 + 2000, U0 + 2600))
    bw = ax.break_width
    assert bw == pytest.approx(0.012 * 1100)
    assert ax.extent == pytest.approx((0.0, 1100 + bw))
    assert ax.breaks == [pytest.approx((500.0, 500.0 + bw))]
    x = ax.to_axis(np.array([U0, U0 + 450, U0 + 2000, U0 + 2600]))
    np.testing.assert_allclose(x, [0.0, 450.0, 500 + bw, 1100 + bw])
    # true UT on every segment: every tick lies inside a segment
    ticks = ax.ticks(10.0)
    assert ticks.size >= 4
    inside = [any(a <= t <= b for a, b in ax.segments) for t in ticks]
    assert all(inside)
    assert ax.tick_labels(np.array([U0 + 60])) == ["10:01"]
    assert ax.tick_labels(np.array([U0 + 61])) == ["10:01:01"]
    assert ax.drawn_ranges()[1] == ["2000-01-28T10:33:20.000000Z", "2000-01-28T10:43:20.000000Z"]
    # 0 keeps one segment, from the first start to the last end
    whole = TimeAxis.from_intervals(iv, squeeze_seconds=0)
    assert whole.segments == ((U0, U0 + 2600),) and whole.breaks == []


def _reduced(times_s: np.ndarray, value: float = 10.0, n_e: int = 4) -> xr.Dataset:
    n = times_s.size
    t = T0 + (times_s * 1e9).astype("timedelta64[ns]")
    return xr.Dataset(
        {
            "values": (("category", "time", "energy_channel"), np.full((1, n, n_e), value)),
            "energy": (("time", "energy_channel"), np.tile(np.geomspace(10, 1e4, n_e), (n, 1))),
            "time_delta": (("time",), np.full(n, 2.5)),
        },
        coords={"category": ["all"], "time": t, "energy_channel": np.arange(n_e)},
        attrs={"variable": "data", "units": "Counts", "orbit": 13616, "source": "/x/a.cdf"},
    )


def test_squeezed_grid_shares_segments_and_draws_passes_full_width():
    a = _reduced(np.concatenate([np.arange(0, 600, 2.5), np.arange(3600, 4200, 2.5)]))
    b = _reduced(np.arange(3700, 3800, 2.5))  # inside the second pass only
    fig = FAST_plot_instrument_grid(
        {"ees": a, "ies": b}, instrument_order=("ees", "ies"), squeeze_gaps_minutes=5
    )
    axes = {ax.get_label(): ax for ax in fig.axes if ax.get_label() in ("ees", "ies")}
    lo, hi = axes["ees"].get_xlim()
    assert axes["ies"].get_xlim() == (lo, hi)  # one shared axis
    # 1200 s of data and one break: the 3000 s gap is gone from the axis
    assert hi - lo == pytest.approx(1200 * 1.012, rel=1e-3)
    meta = fig.fastspectro_metadata
    ranges = json.loads(meta["fastspectro:time-ranges"])
    assert len(ranges) == 2 and ranges[1][0].startswith("2000-01-28T10:59:58.75")
    labels = [t.get_text() for t in axes["ies"].get_xticklabels()]
    assert labels and all(":" in s for s in labels)
    # the same orbit on the whole axis: 4200 s wide
    fig0 = FAST_plot_instrument_grid({"ees": a}, instrument_order=("ees",), squeeze_gaps_minutes=0)
    (ax0,) = [ax for ax in fig0.axes if ax.get_label() == "ees"]
    assert np.diff(ax0.get_xlim())[0] == pytest.approx(4200, rel=1e-3)


def _ephemeris() -> Ephemeris:
    t = U0 + np.arange(-60.0, 4300.0, 20.0)
    return Ephemeris(
        time=t,
        alt=np.linspace(400, 4000, t.size),
        ilat=np.full(t.size, -70.0),  # southern hemisphere
        mlt=np.mod(np.linspace(22.0, 26.0, t.size), 24.0),
        source="fa_k0_orb_13616_v01.cdf",
    )


def test_ephemeris_rows_hemisphere_names_and_png_provenance(tmp_path):
    a = _reduced(np.concatenate([np.arange(0, 600, 2.5), np.arange(3600, 4200, 2.5)]))
    eph = _ephemeris()
    fig = FAST_plot_instrument_grid({"ees": a}, instrument_order=("ees",), ephemeris=eph)
    (ax,) = [x for x in fig.axes if x.get_label() == "ees"]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert all(s.count("\n") == 3 for s in labels)  # UT, ALT, ILAT, MLT
    assert all(s.split("\n")[2] == "-70.0" for s in labels)
    names = [t.get_text() for t in ax.texts]
    assert "UT\nALT (km)\nILAT (deg)\nMLT (h)" in names
    out = save_figure(fig, tmp_path / "f.png")
    meta = read_figure_metadata(out)
    assert meta["Software"].startswith("fastspectro_dask ")
    assert meta["Source"] == "a.cdf"
    assert meta["fastspectro:ephemeris"] == "UT,ALT,ILAT,MLT"
    limits = json.loads(meta["fastspectro:limits"])
    assert set(limits["ees"]) == {"y_min", "y_max", "z_min", "z_max"}
    assert len(json.loads(meta["fastspectro:time-ranges"])) == 2
    # south: 180 deg is downgoing, 0 deg upgoing
    pa = a.assign_coords(category=["parallel"]).reindex(category=["parallel", "antiparallel"])
    pa["values"] = pa["values"].fillna(5.0)
    fig = FAST_plot_pitch_angle_grid(pa, ephemeris=eph, instrument="ees")
    titles = {x.get_label(): x.get_title(loc="left") for x in fig.axes if x.get_label()}
    assert "upgoing" in titles["parallel"] and "downgoing" in titles["antiparallel"]


def test_pitch_angle_rows_of_data_on_both_sides_of_the_equator_are_named_by_angle(caplog):
    """A row named downgoing must be downgoing for all its data: with records north and
    south of the magnetic equator the rows are named by pitch angle only (and the log says
    why); the same records all in the north are named for the north."""
    a = _reduced(np.concatenate([np.arange(0, 600, 2.5), np.arange(3600, 4200, 2.5)]))
    pa = a.assign_coords(category=["parallel"]).reindex(category=["parallel", "antiparallel"])
    pa["values"] = pa["values"].fillna(5.0)
    t = U0 + np.arange(-60.0, 4300.0, 20.0)
    # north for the first pass, south for the second (the median of ILAT is north)
    ilat = np.where(t < U0 + 2000, 70.0, -20.0)
    eph = Ephemeris(time=t, alt=np.full(t.size, 1e3), ilat=ilat, mlt=np.full(t.size, 6.0))
    assert eph.hemisphere_of(np.array([U0 + 10.0, U0 + 3700.0])) is None
    assert eph.hemisphere(U0, U0 + 600) == "north" and eph.hemisphere(U0, U0 + 4200) is None
    with caplog.at_level("INFO", logger="fastspectro_dask.products"):
        fig = FAST_plot_pitch_angle_grid(pa, ephemeris=eph, instrument="ees")
    titles = {x.get_label(): x.get_title(loc="left") for x in fig.axes if x.get_label()}
    assert not any("going" in titles[k] for k in ("parallel", "antiparallel"))
    assert "0\N{PLUS-MINUS SIGN}30\N{DEGREE SIGN}" in titles["parallel"]
    assert "both hemispheres" in caplog.text
    # the same records with data only in the first pass (north): named for the north
    north = pa.where(pa["time"] < T0 + np.timedelta64(2000, "s"))
    fig = FAST_plot_pitch_angle_grid(north, ephemeris=eph, instrument="ees")
    titles = {x.get_label(): x.get_title(loc="left") for x in fig.axes if x.get_label()}
    assert "downgoing" in titles["parallel"] and "upgoing" in titles["antiparallel"]


def test_ephemeris_of_a_synth_orbit_file_and_mlt_wrap(synth_dataset):
    path = next(iter(synth_dataset.orb_files.values()))
    eph = read_ephemeris(path)
    vals = eph.at(np.array([eph.time[0], eph.time[-1] + 3600.0]))
    assert np.isfinite(vals["ALT"][0]) and np.isnan(vals["ALT"][1])  # no extrapolation
    wrap = Ephemeris(
        time=np.array([0.0, 20.0]), alt=np.ones(2), ilat=np.ones(2), mlt=np.array([23.8, 0.2])
    )
    assert wrap.at(np.array([10.0]))["MLT"][0] == pytest.approx(0.0, abs=1e-9)


def test_info_prints_a_figures_provenance(tmp_path):
    a = _reduced(np.arange(0, 600, 2.5))
    out = save_figure(
        FAST_plot_instrument_grid({"ees": a}, instrument_order=("ees",)), tmp_path / "f.png"
    )
    run = subprocess.run(
        [sys.executable, "-m", "fastspectro_dask.cli", "info", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "fastspectro:time-ranges" in run.stdout and "a.cdf" in run.stdout
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    run = subprocess.run(
        [sys.executable, "-m", "fastspectro_dask.cli", "info", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2 and "bad.png" in run.stderr and "Traceback" not in run.stderr


def _pad_dataset() -> xr.Dataset:
    """Two records: 32 bins of 11.25 deg, then 64 of 5.625 deg (a mode change)."""
    n = 64
    pitch = np.full((2, n), np.nan)
    vals = np.full((2, n), np.nan)
    pitch[0, :32] = 5.625 + 11.25 * np.arange(32)
    vals[0, :32] = np.arange(32) + 1.0
    pitch[1] = 2.8125 + 5.625 * np.arange(64)
    vals[1] = 100.0 + np.arange(64)
    t = T0 + np.array([0, 2500], "timedelta64[ms]").astype("timedelta64[ns]")
    return xr.Dataset(
        {
            "pad_values": (("time", "pitch_bin"), vals),
            "pad_pitch": (("time", "pitch_bin"), pitch),
            "time_delta": (("time",), np.array([2.5, 2.5])),
        },
        coords={"time": t},
        attrs={"variable": "data", "units": "Counts", "orbit": 13616, "source": "/x/e.cdf"},
    )


@pytest.mark.parametrize(
    "limits",
    [
        {"extrema": {"ees": {"y_min": 5.0, "y_max": 3.0e4, "z_min": 2.0, "z_max": 50.0}}},
        {"overrides": {"ees": {"y_min": 5.0, "y_max": 3.0e4, "z_min": 2.0, "z_max": 50.0}}},
    ],
)
def test_pad_y_axis_is_the_full_turn_whatever_the_limits_say(limits):
    """An instrument's energy limits passed as extrema (or y limits as overrides) do not
    make the pad's pitch-angle axis 5-30000 deg, in either engine; its colour limits do
    apply."""
    import json

    from fastspectro_dask.products import FAST_plot_pad

    def plot(engine: str):
        return FAST_plot_pad(
            {"ees": _pad_dataset()},
            instrument_order=("ees",),
            z_scale="linear",
            engine=engine,
            **limits,
        )

    fig = plot("reference")
    (ax,) = [a for a in fig.axes if a.get_label() == "ees"]
    assert ax.get_ylim() == (0.0, 360.0)
    (mesh,) = [c for c in ax.collections if hasattr(c, "get_clim")]
    assert mesh.get_clim() == (2.0, 50.0)
    fast = plot("fast")
    assert fast.texts["ylims"] == [(0.0, 360.0)]
    drawn = json.loads(fast.metadata["fastspectro:limits"])["ees"]
    assert drawn == {"y_min": 0.0, "y_max": 360.0, "z_min": 2.0, "z_max": 50.0}


@pytest.mark.parametrize("shift90", [False, True])
def test_pad_figure_bins_per_record_and_the_wrap_bin_at_both_ends(shift90):
    from matplotlib.collections import QuadMesh

    from fastspectro_dask.products import FAST_plot_pad

    fig = FAST_plot_pad(
        {"ees": _pad_dataset()}, instrument_order=("ees",), shift90=shift90, z_scale="linear"
    )
    (ax,) = [a for a in fig.axes if a.get_label() == "ees"]
    y0 = -90.0 if shift90 else 0.0
    assert ax.get_ylim() == (y0, y0 + 360.0)
    assert list(ax.get_yticks()) == list(np.arange(y0, y0 + 361, 90.0))
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    arr = mesh.get_array()  # (y raster ascending, time)
    ys = mesh.get_coordinates()[:, 0, 1]
    centres = (ys[:-1] + ys[1:]) / 2

    def at(deg: float, rec: int) -> float:
        return float(arr[np.argmin(np.abs(centres - deg)), rec])

    # record 0 (32 bins, centres 5.625 + 11.25 j): edges at multiples of 11.25 deg
    assert at(3.0, 0) == 1.0 and at(14.0, 0) == 2.0 and at(357.0 - 360 * shift90, 0) == 32.0
    # record 1 (64 bins, centres 2.8125 + 5.625 j): the same angles, other bins
    assert at(3.0, 1) == 100.0 and at(7.0, 1) == 101.0
    # a bin across 0/360: record 1 shifted so one bin straddles 0 deg
    ds = _pad_dataset()
    ds["pad_pitch"][1] = np.mod(5.625 * np.arange(64), 360.0)  # centre 0: bin [-2.8, 2.8)
    fig = FAST_plot_pad({"ees": ds}, instrument_order=("ees",), z_scale="linear")
    (ax,) = [a for a in fig.axes if a.get_label() == "ees"]
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    arr = mesh.get_array()
    assert float(arr[0, 1]) == 100.0 and float(arr[-1, 1]) == 100.0  # both ends
