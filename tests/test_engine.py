"""The fast render engine draws what the reference drawing draws, faster and in flat memory."""

from __future__ import annotations

import resource

import numpy as np
import pytest
from PIL import Image

from fastspectro_dask import draw
from fastspectro_dask.cache import reduce_file
from fastspectro_dask.ephemeris import read_ephemeris
from fastspectro_dask.output import read_figure_metadata, save_figure
from fastspectro_dask.products import (
    FAST_plot_instrument_grid,
    FAST_plot_pad,
    FAST_plot_pitch_angle_grid,
)
from fastspectro_dask.reduce import DEFAULT_CATEGORIES, PadSpec

#: Fidelity: the share of pixels whose RGB channels all lie within TOLERANCE (0-255) of
#: the reference drawing's must reach MIN_SHARE.
TOLERANCE = 8
MIN_SHARE = 0.99


@pytest.fixture(scope="module")
def orbit(synth_dataset, good_files):
    """A good orbit: reduced datasets (with pad), its ephemeris and fixed limits."""
    number = next(o for o, f in good_files.items() if {"ees", "ies"} <= set(f))
    red = {
        i: reduce_file(p, "data", DEFAULT_CATEGORIES, pad=PadSpec())
        for i, p in good_files[number].items()
    }
    ext = {i: {"y_min": 4.0, "y_max": 3.0e4, "z_min": 1.0, "z_max": 1.0e5} for i in red}
    return red, read_ephemeris(synth_dataset.orb_files[number]), ext


def _pixels(fig, tmp_path, name: str) -> np.ndarray:
    path = save_figure(fig, tmp_path / f"{name}.png")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


def _reference_texts(fig) -> dict:
    mains = [ax for ax in fig.axes if ax.get_label() and ax.get_title(loc="left")]
    bottom = mains[-1]
    return {
        "title": fig.get_suptitle(),
        "xticklabels": [t.get_text() for t in bottom.get_xticklabels()],
        "xticks": [float(x) for x in bottom.get_xticks()],
        "row_titles": [ax.get_title(loc="left") for ax in mains],
        "ylims": [ax.get_ylim() for ax in mains],
    }


CASES = {
    "instruments-log-log": lambda red, eph, ext, engine: FAST_plot_instrument_grid(
        red, y_scale="log", z_scale="log", extrema=ext, ephemeris=eph, engine=engine
    ),
    "instruments-linear-linear": lambda red, eph, ext, engine: FAST_plot_instrument_grid(
        red, y_scale="linear", z_scale="linear", engine=engine
    ),
    "pitch-angle": lambda red, eph, ext, engine: FAST_plot_pitch_angle_grid(
        red["ees"], y_scale="log", ephemeris=eph, engine=engine
    ),
    "pad-shift90": lambda red, eph, ext, engine: FAST_plot_pad(
        red, extrema=ext, shift90=True, engine=engine
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_engine_draws_what_the_reference_draws(orbit, tmp_path, case):
    red, eph, ext = orbit
    ref = CASES[case](red, eph, ext, "reference")
    want_texts = _reference_texts(ref)
    want = _pixels(ref, tmp_path, "ref")
    fast = CASES[case](red, eph, ext, "fast")
    assert isinstance(fast, draw.RasterFigure)
    got = _pixels(fast, tmp_path, "fast")
    assert got.shape == want.shape
    close = (np.abs(got - want) <= TOLERANCE).all(axis=2)
    assert close.mean() >= MIN_SHARE, f"{case}: {close.mean():.4f} of pixels within tolerance"
    # same axes, ticks, labels, limits and titles
    for key in ("title", "xticklabels", "row_titles"):
        assert fast.texts[key] == want_texts[key], key
    np.testing.assert_allclose(fast.texts["xticks"], want_texts["xticks"])
    np.testing.assert_allclose(fast.texts["ylims"], want_texts["ylims"])
    assert read_figure_metadata(tmp_path / "fast.png") == read_figure_metadata(tmp_path / "ref.png")


def test_the_fidelity_check_catches_a_wrong_drawing(orbit, tmp_path):
    """The comparison above fails when the panels differ (e.g. other colour limits)."""
    red, eph, ext = orbit
    want = _pixels(CASES["instruments-log-log"](red, eph, ext, "reference"), tmp_path, "a")
    other = {i: {**lim, "z_max": 1.0e3} for i, lim in ext.items()}
    got = _pixels(CASES["instruments-log-log"](red, eph, other, "fast"), tmp_path, "b")
    assert (np.abs(got - want) <= TOLERANCE).all(axis=2).mean() < MIN_SHARE


def test_layouts_are_reused_and_bounded(orbit):
    red, eph, ext = orbit
    draw.clear_layouts()
    built = draw.layout_cache_info()["built"]
    for _ in range(3):
        FAST_plot_instrument_grid(red, y_scale="log", extrema=ext, ephemeris=eph, engine="fast")
    assert draw.layout_cache_info()["built"] == built + 1  # one layout, reused
    for k in range(draw.MAX_LAYOUTS + 3):  # other limits: other layouts, the cache bounded
        lims = {i: {**lim, "z_max": 1.0e5 + k} for i, lim in ext.items()}
        FAST_plot_instrument_grid(red, y_scale="log", extrema=lims, engine="fast")
    assert draw.layout_cache_info()["layouts"] == draw.MAX_LAYOUTS


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_vector_formats_embed_rasters_and_keep_text(orbit, tmp_path, fmt):
    red, eph, ext = orbit
    fig = FAST_plot_instrument_grid(red, y_scale="log", extrema=ext, ephemeris=eph, engine="fast")
    path = save_figure(fig, tmp_path / f"f.{fmt}")
    data = path.read_bytes()
    if fmt == "svg":
        text = data.decode()
        assert "<image" in text and "Energy (eV)" in text  # rasters, and text as text
        assert "ILAT (deg)" in text
    else:
        assert data.startswith(b"%PDF") and b"/Image" in data


def test_dpi_and_figsize(orbit, tmp_path):
    red, _eph, ext = orbit
    fig = FAST_plot_instrument_grid(
        red, y_scale="log", extrema=ext, engine="fast", dpi=50, figsize=(16, 12)
    )
    path = save_figure(fig, tmp_path / "f.png")
    with Image.open(path) as im:
        assert im.size == (800, 600)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 1,100 figures: minutes on a loaded machine (a bound on a hang)
def test_memory_stays_flat_over_1000_figures(orbit, tmp_path):
    """1,000 figures in one process: the layout is reused and the RSS does not grow."""
    red, eph, ext = orbit
    small = {i: ds.isel(time=slice(0, 200)) for i, ds in red.items()}

    def one(k: int) -> None:
        lims = {i: {**lim, "z_max": 1.0e5 + k % 3} for i, lim in ext.items()}
        fig = FAST_plot_instrument_grid(
            small,
            y_scale="log",
            extrema=lims,
            engine="fast",
            dpi=30,
            figsize=(8, 7),
            ephemeris=eph,
        )
        draw.encode_png(fig.rgba, fig.metadata, fig.dpi)

    for k in range(100):  # warm up: caches, fonts, allocator pools
        one(k)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k in range(1000):
        one(k)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    assert grown_kb < 20_000, f"max RSS grew {grown_kb} kB over 1,000 figures"
    assert draw.layout_cache_info()["layouts"] <= draw.MAX_LAYOUTS


def test_row_titles_are_drawn_per_figure_one_layout_for_both_hemispheres(orbit, tmp_path):
    """The pitch-angle rows are named downgoing/upgoing by hemisphere: the names change from
    orbit to orbit, the layout does not (one build), and each figure still matches the
    reference drawing of its own hemisphere."""
    from dataclasses import replace

    red, eph, _ext = orbit
    south = replace(eph, ilat=-np.abs(eph.ilat))
    north = replace(eph, ilat=np.abs(eph.ilat))
    draw.clear_layouts()
    built = draw.layout_cache_info()["built"]
    titles = {}
    for name, e in (("north", north), ("south", south), ("north2", north)):
        fast = FAST_plot_pitch_angle_grid(red["ees"], y_scale="log", ephemeris=e, engine="fast")
        ref = FAST_plot_pitch_angle_grid(red["ees"], y_scale="log", ephemeris=e)
        titles[name] = fast.texts["row_titles"]
        assert titles[name] == _reference_texts(ref)["row_titles"]
        got, want = _pixels(fast, tmp_path, f"f{name}"), _pixels(ref, tmp_path, f"r{name}")
        assert got.shape == want.shape
        assert (np.abs(got - want) <= TOLERANCE).all(axis=2).mean() >= MIN_SHARE
    assert draw.layout_cache_info()["built"] == built + 1
    assert "downgoing" in titles["north"][1] and "upgoing" in titles["south"][1]
    assert titles["north2"] == titles["north"]


@pytest.mark.parametrize("y_scale", ["log", "linear"])
def test_minor_tick_marks_are_the_ticks_matplotlib_draws(y_scale):
    """The layout draws unlabelled minor ticks as marker lines (no Tick objects): the
    pixels are those of matplotlib's own minor ticks, which are really there."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    def pixels(minor: str) -> np.ndarray:
        fig = Figure(figsize=(3, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax, cax = fig.add_subplot(121), fig.add_subplot(122)
        ax.set_yscale(y_scale)
        ax.set_ylim(3.0, 2.0e4)
        ax.minorticks_on()
        fig.colorbar(ScalarMappable(LogNorm(1.0e-3, 7.0e4)), cax=cax)
        for axis in (ax.yaxis, cax.yaxis):
            if minor == "marks":
                draw._minor_tick_marks(axis)
                assert isinstance(axis.get_minor_locator(), NullLocator)  # no Ticks drawn
            elif minor == "none":
                axis.set_minor_locator(NullLocator())
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba(), dtype=int)

    ticks, marks, none = pixels("ticks"), pixels("marks"), pixels("none")
    assert np.abs(marks - ticks).max() <= 1  # the same pixels (blend order: +-1)
    assert (np.abs(none - ticks).max(axis=2) > 64).sum() > 50  # the minor ticks show
