"""Tests of fastspectro_dask.padreduce: energy-window weights, the energy collapse and the
periodic pitch-angle bin edges of the ``pad`` product."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastspectro_dask.padreduce import (
    collapse_energy,
    energy_window_weights,
    periodic_cells,
    pitch_edges,
    sample_periodic,
)

# FAST sweeps run from high to low energy
E5 = np.array([160.0, 80.0, 40.0, 20.0, 10.0])


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    ("window", "want"),
    [
        # inside 80, 40; 20 beyond lo: (40-30)/(40-20); 160 beyond hi: (100-80)/(160-80)
        ((30, 100), [0.25, 1, 1, 0.5, 0]),
        # window inside one gap (40, 80): midpoint 50 -> 80 gets 10/40, 40 gets 30/40
        ((45, 55), [0, 0.25, 0.75, 0, 0]),
        # zero-width window in a gap: interpolation at that energy
        ((70, 70), [0, 0.75, 0.25, 0, 0]),
        # edges exactly on channels: the neighbours beyond get 0
        ((20, 80), [0, 1, 1, 1, 0]),
        # lower edge below every channel: no fractional channel there
        ((5, 30), [0, 0, 0.5, 1, 1]),
        ((1, 1000), [1, 1, 1, 1, 1]),
        # beyond all channels: every weight 0 (the record collapses to NaN)
        ((200, 300), [0, 0, 0, 0, 0]),
        ((1, 5), [0, 0, 0, 0, 0]),
        ((160, 500), [1, 0, 0, 0, 0]),
    ],
)
def test_weights_hand_cases(window, want):
    np.testing.assert_allclose(energy_window_weights(E5, *window), want, atol=1e-12)


def test_weights_skip_missing_channels_and_none_window():
    e = np.array([160.0, np.nan, 40.0, 20.0, -1e31, 0.0])
    # inside only 40; 160 beyond hi: (100-40)/(160-40); 20 beyond lo: (40-30)/(40-20)
    np.testing.assert_allclose(energy_window_weights(e, 30, 100), [0.5, 0, 1, 0.5, 0, 0])
    np.testing.assert_array_equal(energy_window_weights(e), [1, 0, 1, 1, 0, 0])


def test_weights_broadcast_over_leading_axes():
    e = np.stack([E5, E5[::-1], np.full(5, np.nan)])[:, None, :].repeat(2, axis=1)
    w = energy_window_weights(e, 30, 100)
    assert w.shape == (3, 2, 5)
    np.testing.assert_allclose(w[0, 1], [0.25, 1, 1, 0.5, 0])
    np.testing.assert_allclose(w[1, 0], [0, 0.5, 1, 1, 0.25])
    assert (w[2] == 0).all()


def test_weights_reject_bad_windows():
    with pytest.raises(ValueError, match="lo <= hi"):
        energy_window_weights(E5, 100, 30)
    with pytest.raises(ValueError, match="both"):
        energy_window_weights(E5, 30, None)
    with pytest.raises(ValueError, match="finite"):
        energy_window_weights(E5, 30, np.inf)


def _ref_weights(row: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Plain-loop statement of the weight rule, for one row."""
    w = np.zeros(row.size)
    live = [k for k in range(row.size) if math.isfinite(row[k]) and row[k] > 0]
    live.sort(key=lambda k: row[k])
    es = [row[k] for k in live]
    inside = [j for j, x in enumerate(es) if lo <= x <= hi]
    if inside:
        a, b = inside[0], inside[-1]
        for j in inside:
            w[live[j]] = 1.0
        if a > 0:
            w[live[a - 1]] = (es[a] - lo) / (es[a] - es[a - 1])
        if b < len(es) - 1:
            w[live[b + 1]] = (hi - es[b]) / (es[b + 1] - es[b])
    else:
        for j in range(1, len(es)):
            if es[j - 1] < lo and es[j] > hi:
                mid = 0.5 * (lo + hi)
                g = (mid - es[j - 1]) / (es[j] - es[j - 1])
                w[live[j]], w[live[j - 1]] = g, 1 - g
    return np.clip(w, 0, 1)


energy_rows = st.lists(
    st.one_of(st.integers(1, 3000).map(float), st.just(math.nan)), min_size=1, max_size=12
).filter(lambda r: len([x for x in r if x == x]) == len({x for x in r if x == x}))


@settings(max_examples=200, deadline=None)
@given(row=energy_rows, lo=st.floats(0, 3500), width=st.floats(0, 3500))
def test_weights_match_the_rule(row, lo, width):
    e = np.array(row)
    hi = lo + width
    w = energy_window_weights(e, lo, hi)
    np.testing.assert_allclose(w, _ref_weights(e, lo, hi), atol=1e-12)
    assert ((w >= 0) & (w <= 1)).all()
    assert (w[np.isnan(e)] == 0).all()
    live = np.isfinite(e)
    if live.any() and lo <= np.nanmin(e) and np.nanmax(e) <= hi:
        np.testing.assert_array_equal(w, live.astype(float))


# --------------------------------------------------------------------------- collapse


def _circ_median(p: np.ndarray) -> float:
    ok = p[np.isfinite(p)]
    if ok.size == 0:
        return math.nan
    off = (ok - ok[0] + 180) % 360 - 180
    return float((ok[0] + np.median(off)) % 360)


def _ref_collapse(values, energy, denergy, pitch, window, how):
    """Brute-force loop over records and angle bins."""
    t, a, ne = values.shape
    pad = np.full((t, a), np.nan)
    pa = np.full((t, a), np.nan)
    for i in range(t):
        for j in range(a):
            w = (
                _ref_weights(energy[i, j], *window)
                if window is not None
                else (np.isfinite(energy[i, j]) & (energy[i, j] > 0)).astype(float)
            )
            pa[i, j] = _circ_median(pitch[i, j])
            num = den = 0.0
            n = 0
            for k in range(ne):
                v = values[i, j, k]
                if not math.isfinite(v) or w[k] <= 0:
                    continue
                if how == "sum":
                    num += v * w[k]
                else:
                    d = denergy[i, j, k]
                    if not (math.isfinite(d) and d > 0):
                        continue
                    num += v * d * w[k]
                    den += d * w[k]
                n += 1
            if n and math.isfinite(pa[i, j]):
                pad[i, j] = num if how == "sum" else num / den
        key = np.where(np.isfinite(pa[i]), pa[i], np.inf)
        order = np.argsort(key, kind="stable")
        pad[i], pa[i] = pad[i][order], pa[i][order]
    return pad, pa


@st.composite
def blocks(draw):
    t = draw(st.integers(1, 4))
    a = draw(st.integers(1, 6))
    ne = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # per record an energy table shared by its angles (distinct values), some channels NaN
    energy = np.empty((t, a, ne))
    for i in range(t):
        table = rng.choice(np.arange(1, 200), size=ne, replace=False).astype(float) * 10
        energy[i] = table[None, :]
    energy[rng.random((t, a, ne)) < 0.15] = np.nan
    values = rng.gamma(1.0, 50.0, (t, a, ne))
    values[rng.random((t, a, ne)) < 0.25] = np.nan
    values[rng.random((t, a, ne)) < 0.1] = 0.0
    values[rng.random((t, a, ne)) < 0.05] = -1e31
    denergy = energy * 0.2 * rng.uniform(0.5, 1.5, (t, a, ne))
    denergy[rng.random((t, a, ne)) < 0.1] = np.nan
    pitch = rng.uniform(0, 360, (t, a))[:, :, None] + rng.normal(0, 1e-3, (t, a, ne))
    pitch = np.mod(pitch, 360.0)
    pitch[rng.random((t, a, ne)) < 0.1] = np.nan
    pitch[rng.random(t) < 0.2, -1, :] = np.nan  # a bin without pitch angle
    if draw(st.booleans()):
        window = None
    else:
        lo = draw(st.floats(0, 2100))
        window = (lo, lo + draw(st.floats(0, 2100)))
    return values, energy, denergy, pitch, window


@settings(max_examples=120, deadline=None)
@given(block=blocks(), how=st.sampled_from(["sum", "mean"]))
def test_collapse_matches_brute_force(block, how):
    values, energy, denergy, pitch, window = block
    clean = np.where(values < -1e29, np.nan, values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray RuntimeWarnings from the reduction
        pad, pa, wsum = collapse_energy(
            values, energy, denergy, pitch, window, how, weight_sum=True
        )
    want_pad, want_pa = _ref_collapse(clean, energy, denergy, pitch, window, how)
    np.testing.assert_allclose(pa, want_pa, atol=1e-9)
    np.testing.assert_allclose(pad, want_pad, rtol=1e-9, atol=1e-9)
    assert np.isnan(pad).sum() == np.isnan(want_pad).sum()
    assert (wsum[np.isnan(pad)] == 0).all()
    assert (wsum[np.isfinite(pad)] > 0).all()
    # sorted by pitch angle, NaN last
    for row in pa:
        fin = np.isfinite(row)
        assert (fin[:-1] >= fin[1:]).all()
        assert (np.diff(row[fin]) >= 0).all()


def test_collapse_hand_case_and_nan_dropping():
    # one record, three angle bins (unsorted pitch), energies E5, window (30, 100)
    energy = np.broadcast_to(E5, (1, 3, 5)).copy()
    pitch = np.broadcast_to(np.array([200.0, 10.0, 90.0])[None, :, None], (1, 3, 5)).copy()
    counts = np.array(
        [
            [
                [4, 8, 16, 32, 64],  # 0.25*4 + 8 + 16 + 0.5*32 = 41
                [4, np.nan, 16, 32, 64],  # NaN drops: 1 + 16 + 16 = 33
                [np.nan, np.nan, np.nan, np.nan, 64],  # only a zero-weight channel: NaN
            ]
        ],
        dtype=float,
    )
    pad, pa = collapse_energy(counts, energy, None, pitch, (30, 100), "sum")
    np.testing.assert_array_equal(pa, [[10.0, 90.0, 200.0]])
    np.testing.assert_allclose(pad, [[33.0, np.nan, 41.0]])
    # eflux mean with denergy weights: Σ v·dE·w / Σ dE·w
    de = np.broadcast_to(E5 * 0.1, (1, 3, 5)).copy()
    pad, _ = collapse_energy(counts, energy, de, pitch, (30, 100), "mean")
    dw = np.array([16 * 0.25, 8, 4, 2 * 0.5])
    want41 = (np.array([4, 8, 16, 32]) * dw).sum() / dw.sum()
    dw33 = np.array([16 * 0.25, 4, 2 * 0.5])
    want33 = (np.array([4, 16, 32]) * dw33).sum() / dw33.sum()
    np.testing.assert_allclose(pad, [[want33, np.nan, want41]])
    # no window: all channels with weight 1; measured zeros stay 0, not NaN
    zeros = np.zeros((1, 3, 5))
    pad, _ = collapse_energy(zeros, energy, None, pitch, None, "sum")
    np.testing.assert_array_equal(pad, [[0.0, 0.0, 0.0]])


def test_collapse_pitch_wraps_and_accepts_2d_pitch():
    energy = np.broadcast_to(E5, (1, 2, 5)).copy()
    pitch = np.array([[[359.9, 0.1, 359.95, 0.05, 0.0], [180.0] * 5]])
    _pad, pa = collapse_energy(np.ones((1, 2, 5)), energy, None, pitch)
    # circular median of 359.9, 0.1, 359.95, 0.05, 0.0 is 0.0 (a plain median gives 0.1,
    # a plain mean 144)
    assert pa[0, 0] == pytest.approx(0.0, abs=1e-9)
    assert pa[0, 1] == pytest.approx(180.0)
    pad2, pa2 = collapse_energy(np.ones((1, 2, 5)), energy, None, pitch[..., 0])
    np.testing.assert_array_equal(pa2, [[180.0, 359.9]])
    np.testing.assert_array_equal(pad2, [[5.0, 5.0]])


def test_collapse_rejects_bad_input():
    v = np.ones((1, 2, 3))
    with pytest.raises(ValueError, match="how"):
        collapse_energy(v, v, v, v, None, "median")
    with pytest.raises(ValueError, match="denergy"):
        collapse_energy(v, v, None, v, None, "mean")
    with pytest.raises(ValueError, match="shape"):
        collapse_energy(v, v[:, :1], None, v)


# --------------------------------------------------------------------------- edges


def _mode_change_block():
    """Record 0: 32 bins (11.25 deg, shift +3); record 1: 64 bins (5.625 deg, shift -2)."""
    pitch = np.full((2, 64, 3), np.nan)
    values = np.full((2, 64, 3), np.nan)
    c32 = np.mod((np.arange(32) + 0.5) * 11.25 + 3.0, 360.0)
    c64 = np.mod((np.arange(64) + 0.5) * 5.625 - 2.0, 360.0)
    pitch[0, :32] = c32[:, None]
    pitch[1, :] = c64[:, None]
    # value = the bin's unshifted angle index + 1, so cells can be traced back to bins
    values[0, :32] = (np.arange(32) + 1.0)[:, None]
    values[1, :] = (np.arange(64) + 1.0)[:, None]
    energy = np.broadcast_to([100.0, 50.0, 25.0], (2, 64, 3)).copy()
    return collapse_energy(values, energy, None, pitch, None, "sum")


def test_pitch_edges_across_a_mode_change():
    pad, pa = _mode_change_block()
    assert np.isfinite(pa[0, :32]).all() and np.isnan(pa[0, 32:]).all()
    assert np.isfinite(pa[1]).all()
    edges = pitch_edges(pa)
    assert edges.shape == (2, 65)
    # record 0: first centre 8.625, last 357.375 -> edges 3 .. 363
    assert edges[0, 0] == pytest.approx(3.0)
    assert edges[0, 32] == pytest.approx(363.0)
    np.testing.assert_allclose(np.diff(edges[0, :33]), 11.25)
    assert np.isnan(edges[0, 33:]).all()
    # record 1: first centre 0.8125, last 355.1875 -> edges -2 .. 358
    assert edges[1, 0] == pytest.approx(-2.0)
    assert edges[1, 64] == pytest.approx(358.0)
    np.testing.assert_allclose(np.diff(edges[1]), 5.625)
    # values travel with their bins (3 channels of 1 count x bin number)
    assert pad[0, 0] == 3.0 and pad[1, 0] == 3.0


def test_pitch_edges_irregular_and_degenerate():
    pa = np.array([[10.0, 100.0, 300.0], [42.0, np.nan, np.nan], [np.nan] * 3])
    e = pitch_edges(pa)
    np.testing.assert_allclose(e[0], [(300 - 360 + 10) / 2, 55, 200, (300 + 370) / 2])
    np.testing.assert_allclose(e[1, :2], [-138.0, 222.0])
    assert np.isnan(e[1, 2:]).all() and np.isnan(e[2]).all()
    with pytest.raises(ValueError, match="ascending"):
        pitch_edges(np.array([[10.0, 5.0]]))
    with pytest.raises(ValueError, match="NaN"):
        pitch_edges(np.array([[np.nan, 5.0]]))


def _check_tiling(cells, y_lo, y_hi):
    assert cells[0][0] == pytest.approx(y_lo)
    assert cells[-1][1] == pytest.approx(y_hi)
    for (_, hi0, _), (lo1, _, _) in itertools.pairwise(cells):
        assert lo1 == pytest.approx(hi0)  # contiguous, no overlap
    assert sum(hi - lo for lo, hi, _ in cells) == pytest.approx(y_hi - y_lo)


@pytest.mark.parametrize(("y_lo", "y_hi"), [(0.0, 360.0), (-90.0, 270.0)])
def test_wrap_cell_fills_both_ends(y_lo, y_hi):
    pad, pa = _mode_change_block()
    edges = pitch_edges(pa)
    for r, nbins in ((0, 32), (1, 64)):
        cells = periodic_cells(edges[r], pad[r], y_lo, y_hi)
        _check_tiling(cells, y_lo, y_hi)
        assert len(cells) in (nbins, nbins + 1)  # +1: the bin cut by the range's ends

        def value_at(y, cells=cells):
            return next(v for lo, hi, v in cells if lo <= y < hi)

        # the bin across 0/360 is drawn on both sides of 0 (0..360: at the bottom and
        # at the top; -90..270: just below and just above 0)
        assert value_at(0.1) == value_at(359.9 if y_hi > 300 else -0.1)
        if y_lo == 0.0:
            assert cells[0][2] == cells[-1][2]  # same bin at the bottom and at the top
    # record 0 (edges 3..363): on 0..360 the last bin (centre 357.375) also fills [0, 3)
    cells0 = periodic_cells(edges[0], pad[0], 0.0, 360.0)
    assert cells0[0][:2] == pytest.approx((0.0, 3.0))
    assert cells0[-1][:2] == pytest.approx((351.75, 360.0))
    assert cells0[0][2] == cells0[-1][2] == pad[0, 31]
    # record 1 (edges -2..358): bin 0 (centre 0.8125) also fills [358, 360)
    cells1 = periodic_cells(edges[1], pad[1], 0.0, 360.0)
    assert cells1[-1][:2] == pytest.approx((358.0, 360.0))
    assert cells1[0][:2] == pytest.approx((0.0, 3.625))
    assert cells1[0][2] == cells1[-1][2] == pad[1, 0]
    # shift90: the range ends at -90 and 270 cut an ordinary bin, not the wrap bin
    cells1s = periodic_cells(edges[1], pad[1], -90.0, 270.0)
    assert cells1s[0][2] == cells1s[-1][2]


@pytest.mark.parametrize(("y_lo", "y_hi"), [(0.0, 360.0), (-90.0, 270.0), (-400.0, 400.0)])
def test_sample_periodic_agrees_with_cells(y_lo, y_hi):
    pad, pa = _mode_change_block()
    edges = pitch_edges(pa)
    y = np.linspace(y_lo, y_hi, 997, endpoint=False) + 0.123
    img = sample_periodic(edges, pad, y)
    assert img.shape == (2, y.size)
    assert np.isfinite(img).all()  # both ends filled, in both modes
    for r in range(2):
        cells = periodic_cells(edges[r], pad[r], y_lo, y_hi + 1)
        want = [next(v for lo, hi, v in cells if lo <= yy < hi) for yy in y]
        np.testing.assert_array_equal(img[r], want)


def test_sample_periodic_empty_record_is_nan():
    edges = pitch_edges(np.array([[np.nan, np.nan], [90.0, 270.0]]))
    img = sample_periodic(edges, np.array([[np.nan, np.nan], [1.0, 2.0]]), [0.0, 90.0, 180.0])
    assert np.isnan(img[0]).all()
    np.testing.assert_array_equal(img[1], [1.0, 1.0, 2.0])  # edges 0, 180, 360


@settings(max_examples=80, deadline=None)
@given(
    centres=hnp.arrays(
        np.float64,
        st.integers(1, 20),
        elements=st.floats(0, 359.99, allow_nan=False),
        unique=True,
    ),
    y_lo=st.floats(-360, 360),
)
def test_cells_tile_any_range(centres, y_lo):
    pa = np.sort(centres)[None, :]
    edges = pitch_edges(pa)
    assert edges[0, -1] == pytest.approx(edges[0, 0] + 360)
    vals = np.arange(pa.shape[1], dtype=float)[None, :]
    cells = periodic_cells(edges[0], vals[0], y_lo, y_lo + 360)
    _check_tiling(cells, y_lo, y_lo + 360)
    # each bin's cells (original and wrapped copy) add up to its width
    for i in range(pa.shape[1]):
        width = sum(hi - lo for lo, hi, v in cells if v == i)
        assert width == pytest.approx(edges[0, i + 1] - edges[0, i], abs=1e-9)


def test_weights_once_per_distinct_row_survive_a_hash_collision():
    """Rows are grouped by a projection in which a missing channel counts as -1 eV: rows
    that differ only there hash alike, and the exact check must compute them apart."""
    from fastspectro_dask.padreduce import _weights_block

    e = np.array([[[np.nan, 20.0, 40.0], [-1.0, 20.0, 40.0], [np.nan, 20.0, 40.0]]])
    e[0, 1] = [-1.0, 20.0, 40.0]
    e = np.concatenate([e, e[:, ::-1]], axis=0)  # a second record, rows in another order
    got = _weights_block(e, (25.0, 30.0))
    want = np.stack([[energy_window_weights(row, 25.0, 30.0) for row in rec] for rec in e])
    np.testing.assert_array_equal(got, want)


def test_window_weights_once_per_run_equal_rowwise():
    """Records of one mode repeat the table: weights per run equal the row-wise ones."""
    from fastspectro_dask.padreduce import _weights_block

    rng = np.random.default_rng(4)
    tables = np.sort(rng.uniform(5.0, 3e4, (2, 4, 12)), axis=-1)[..., ::-1].copy()
    tables[1, :, 9:] = np.nan
    e = tables[np.array([0, 0, 1, 1, 1, 0])]
    e[5, 2, 3] *= 1.01  # one record differs in one bin
    want = energy_window_weights(e, 50.0, 5000.0)
    got = _weights_block(e, (50.0, 5000.0))
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("how", ["sum", "mean"])
@pytest.mark.parametrize("runs", ["long", "short"])
def test_collapse_in_blocks_of_runs_equals_record_by_record(monkeypatch, how, runs):
    """Blocks that follow the runs of energy tables (weights broadcast) or that gather a
    table per record (short runs) give every record what it gets alone, bit for bit;
    float32 values are widened exactly and fill is dropped in float32 as in float64."""
    import fastspectro_dask.padreduce as pr

    monkeypatch.setattr(pr, "_PAD_BLOCK_RECORDS", 4)  # blocks that cut runs
    rng = np.random.default_rng(8)
    # sweeps from high to low energy, jittered per mode and angle bin
    tables = np.geomspace(2.5e4, 5.0, 10) * rng.uniform(0.9, 1.1, (3, 6, 10))
    tables[2, :, 7:] = np.nan  # a mode with fewer channels
    if runs == "long":
        pick = np.repeat([0, 1, 0, 2], [7, 3, 9, 5])
    else:
        pick = rng.integers(0, 3, 24)
    energy = tables[pick].astype(np.float32)
    denergy = (0.2 * energy).astype(np.float32)
    denergy[3, 1, 2] = 0.0  # a channel without width
    values = rng.lognormal(5.0, 2.0, energy.shape).astype(np.float32)
    values[2, 3, 4] = np.nan
    values[5, :, 1] = -1e31  # fill
    inside = np.flatnonzero((energy[6, 0] > 50.0) & (energy[6, 0] < 5000.0))
    values[6, 0, inside[-1]] = np.float32(-1e29)  # at the fill bound (float32-rounded)
    pitch = rng.uniform(0.0, 360.0, energy.shape[:2]).astype(np.float32)
    pitch = np.repeat(pitch[:, :, None], energy.shape[2], axis=2)
    pitch[4, 2, :] = np.nan  # a bin without pitch angle
    got = pr._collapse_energy(
        values, energy, denergy, pitch, (50.0, 5000.0), how, weight_sum=True, drop=(0,)
    )
    dropped = values.astype(np.float64)
    dropped[:, :, 0] = np.nan
    for t in range(values.shape[0]):
        want = collapse_energy(
            dropped[t : t + 1],
            energy[t : t + 1],
            denergy[t : t + 1],
            pitch[t : t + 1],
            (50.0, 5000.0),
            how,
            weight_sum=True,
        )
        for g, w in zip(got, want, strict=True):
            assert g[t].tobytes() == w[0].tobytes()
