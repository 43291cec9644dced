"""The fast engine's shortcuts draw what the plain computation draws: shared record
geometry, one energy table, the pixel -> cell map, the kept pixels of row titles."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.axes import Axes

from fastspectro_dask import draw
from fastspectro_dask.cache import reduce_file
from fastspectro_dask.geometry import DEFAULT_GAP_FACTOR, _panel_geometry
from fastspectro_dask.products import FAST_plot_pitch_angle_grid
from fastspectro_dask.reduce import DEFAULT_CATEGORIES

PANEL_FIELDS = ("left", "right", "starts", "stops", "edges", "count", "y_lo", "y_hi")


def _geometry(times, energies, values, shared=None, **kw):
    opts = dict(
        vmin=None,
        vmax=None,
        percentile=(1.0, 99.0),
        y_scale="log",
        z_scale="log",
        y_min=None,
        y_max=None,
        colormap=None,
        norm=None,
        gap_factor=DEFAULT_GAP_FACTOR,
        durations=None,
        time_axis=None,
    )
    opts.update(kw)
    return _panel_geometry(times, energies, values, shared=shared, **opts)


def _assert_same_panel(a, b) -> None:
    for name in PANEL_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.cells.mask, b.cells.mask)
    np.testing.assert_array_equal(a.cells.data, b.cells.data)
    assert (a.norm.vmin, a.norm.vmax) == (b.norm.vmin, b.norm.vmax)


def _records(seed: int = 3):
    """Unsorted times with a gap and a missing time; two energy tables (a mode change)."""
    rng = np.random.default_rng(seed)
    t = np.concatenate([np.arange(40.0), 100.0 + np.arange(30.0)])
    t[[5, 6]] = t[[6, 5]]
    t[12] = np.nan
    e = np.tile(np.geomspace(3e4, 5.0, 16), (t.size, 1))
    e[50:] = np.geomspace(2e4, 8.0, 16)
    e[20, 3] = np.nan
    v = rng.lognormal(2.0, 1.5, size=e.shape)
    v[rng.random(v.shape) < 0.1] = np.nan
    return t, e, v


def test_rows_on_the_same_records_share_their_geometry_and_get_the_same_panels():
    t, e, v = _records()
    shared: dict = {}
    first = _geometry(t, e, v, shared)
    second = _geometry(t, e, v[::-1].copy(), shared)
    assert second.records is first.records and len(shared) == 1
    _assert_same_panel(first, _geometry(t, e, v))
    _assert_same_panel(second, _geometry(t, e, v[::-1].copy()))
    other = _geometry(t, e.copy(), v, shared)  # another energy array: its own records
    assert other.records is not first.records and len(shared) == 2


@pytest.mark.parametrize("y_scale", ["log", "linear"])
def test_one_energy_table_gives_the_panel_of_its_per_record_copies(y_scale):
    t, _, v = _records()
    table = np.array([40.0, 10.0, np.nan, 1e3, 300.0, -1.0, 5e3, 2.0])
    v = v[:, : table.size]
    one = _geometry(t, table, v, y_scale=y_scale)
    assert one.records.shared
    _assert_same_panel(one, _geometry(t, np.tile(table, (t.size, 1)), v, y_scale=y_scale))


def test_pixel_cells_are_the_cells_holding_each_pixel_centre():
    t, e, v = _records()
    panel = _geometry(t, e, v)
    xs = np.linspace(panel.left.min() - 2.0, panel.right.max() + 2.0, 301)
    ys = np.geomspace(4e4, 3.0, 77)
    got = draw.pixel_cells(panel, xs, ys, min_w=1e-6)
    k_all = panel.cells.shape[1]
    want = np.full(got.shape, -1)
    for c, x in enumerate(xs):
        rec = np.flatnonzero((panel.left <= x) & (x < panel.right))
        if rec.size == 0:
            continue
        r = int(rec[0])
        a = panel.starts[np.searchsorted(panel.starts, r, side="right") - 1]
        edges = panel.edges[a, : panel.count[a] + 1]
        for j, y in enumerate(ys):
            ch = np.flatnonzero((edges[:-1] <= y) & (y < edges[1:]))
            if ch.size:
                want[j, c] = r * k_all + int(ch[-1])
    np.testing.assert_array_equal(got, want)
    rgba = draw.panel_rgba(panel, xs, ys, 1e-6, got)
    colours = panel.cmap(panel.norm(panel.cells), bytes=True).reshape(-1, 4)
    np.testing.assert_array_equal(rgba[got >= 0], colours[got[got >= 0]])
    assert not rgba[got < 0].any()  # outside every cell: transparent


@pytest.fixture(scope="module")
def ees(ees_file):
    return reduce_file(ees_file, "data", DEFAULT_CATEGORIES)


def test_kept_row_title_pixels_are_what_drawing_gives(ees, monkeypatch):
    draw.clear_layouts()
    first = FAST_plot_pitch_angle_grid(ees, engine="fast")
    (layout,) = draw._LAYOUTS.values()
    assert len(layout._title_pixels) == 4
    drawn = []
    real = Axes.draw_artist
    monkeypatch.setattr(Axes, "draw_artist", lambda ax, a: (drawn.append(a), real(ax, a)))
    again = FAST_plot_pitch_angle_grid(ees, engine="fast")
    assert not set(map(id, layout.row_titles)) & set(map(id, drawn))  # pasted, not drawn
    np.testing.assert_array_equal(again.rgba, first.rgba)
    assert again.texts["row_titles"] == first.texts["row_titles"]


def test_a_row_title_over_other_pixels_is_drawn(ees):
    draw.clear_layouts()
    FAST_plot_pitch_angle_grid(ees, engine="fast")
    (layout,) = draw._LAYOUTS.values()
    (row, text), (where, _under, _over) = next(iter(layout._title_pixels.items()))
    canvas = layout.fig.canvas

    def title_over_a_red_block(keep: bool) -> np.ndarray:
        canvas.restore_region(layout.background)
        buf = np.asarray(canvas.buffer_rgba())
        buf[where[0].start + 2 : where[0].stop - 2, where[1].start + 2 :] = (255, 0, 0, 255)
        if not keep:
            layout._title_pixels.clear()
        layout.draw_row_title(row, text, buf)
        return np.array(buf, copy=True)

    kept = title_over_a_red_block(keep=True)
    np.testing.assert_array_equal(kept, title_over_a_red_block(keep=False))
    assert (kept[where] != (255, 0, 0, 255)).any(axis=-1).sum() > 20  # the glyphs are there
