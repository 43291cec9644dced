"""Angle collapse per pitch-angle category, against a plain-loop oracle."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastspectro_dask.compression import COUNT_MAX, code_ranges, encode_counts
from fastspectro_dask.io import open_esa
from fastspectro_dask.reduce import (
    DEFAULT_CATEGORIES,
    category_label,
    category_mask,
    category_weights,
    collapse_angle,
    decompress_counts,
    hemisphere_name,
    normalize_categories,
    reduce_dataset,
    reduced_energy,
)


def oracle_weights(ps, lo, hi):
    """Category weights of one column of centres, by a plain loop over shifted copies."""
    a, b = lo % 360, (hi if hi > lo else hi + 360) + (lo % 360 - lo)
    copies = sorted((p % 360 + 360 * k, j) for j, p in enumerate(ps) for k in (-1, 0, 1, 2))
    w = [0.0] * len(ps)
    inside = [c for c in copies if a <= c[0] <= b]
    below = max(c for c in copies if c[0] < a)
    above = min(c for c in copies if c[0] > b)
    if inside:
        first, last = min(inside), max(inside)
        for _, j in inside:
            w[j] += 1.0
        w[below[1]] += (first[0] - a) / (first[0] - below[0])
        w[above[1]] += (b - last[0]) / (above[0] - last[0])
    else:
        m, gap = (a + b) / 2, above[0] - below[0]
        w[below[1]] += (above[0] - m) / gap
        w[above[1]] += (m - below[0]) / gap
    return w


def oracle(values, pitch, domega, ranges, how, integ=None):
    t_n, a_n, e_n = values.shape
    out = np.full((t_n, e_n), np.nan)
    for t in range(t_n):
        for e in range(e_n):
            ok = [
                a
                for a in range(a_n)
                if np.isfinite(values[t, a, e])
                and np.isfinite(pitch[t, a, e])
                and (how != "mean" or (np.isfinite(domega[t, a, e]) and domega[t, a, e] > 0))
            ]
            if not ok:
                continue
            w = [0.0] * len(ok)
            for lo, hi in ranges:
                for i, x in enumerate(oracle_weights([float(pitch[t, a, e]) for a in ok], lo, hi)):
                    w[i] += x
            w = [min(x, 1.0) for x in w]
            vals = [float(values[t, a, e]) for a in ok]
            if how == "mean":
                dw = [float(domega[t, a, e]) * x for a, x in zip(ok, w, strict=True)]
                if sum(dw) > 0:
                    out[t, e] = sum(v * d for v, d in zip(vals, dw, strict=True)) / sum(dw)
            elif sum(w) > 0:
                total = sum(v * x for v, x in zip(vals, w, strict=True))
                out[t, e] = total if how == "sum" else total / (integ[t] * sum(w))
    return out


shapes = st.tuples(st.integers(1, 5), st.integers(1, 8), st.integers(1, 6))


@st.composite
def records(draw):
    shape = draw(shapes)
    vals = draw(
        hnp.arrays(
            np.float32,
            shape,
            elements=st.one_of(st.floats(0, 1e6, width=32), st.just(np.nan), st.just(0.0)),
        )
    )
    pitch = draw(
        hnp.arrays(
            np.float32,
            shape,
            # centres on a 1/64 deg grid: distinct centres stay distinct after +-360
            # (float64 rounding of 360 + 1e-45 would tie two bins' copies)
            elements=st.one_of(
                st.integers(0, 360 * 64 - 1).map(lambda k: k / 64.0),
                st.just(np.nan),
                st.sampled_from([30.0, 150.0, 210.0, 330.0, 5.0]),
            ),
        )
    )
    dom = draw(
        hnp.arrays(
            np.float32,
            shape,
            elements=st.one_of(st.floats(0.0001220703125, 1.0, width=32), st.just(np.nan)),
        )
    )
    return vals, pitch, dom


@settings(max_examples=80, deadline=None)
@given(
    records(),
    st.sampled_from([*DEFAULT_CATEGORIES.values(), ((350.0, 5.0),), ((102.0, 110.0),)]),
    st.sampled_from(["sum", "mean", "rate"]),
)
@example(  # a subnormal value times a weight underflowed in float32 (found by CI)
    (
        np.full((1, 1, 1), 1e-45, np.float32),
        np.zeros((1, 1, 1), np.float32),
        np.full((1, 1, 1), 0.5, np.float32),
    ),
    DEFAULT_CATEGORIES["all"],
    "mean",
)
def test_collapse_matches_loop_oracle(rec, ranges, how):
    vals, pitch, dom = rec
    integ = np.linspace(0.01, 0.05, vals.shape[0])
    got = collapse_angle(vals, pitch, dom, ranges, how, integ=integ)
    want = oracle(vals, pitch, dom, ranges, how, integ)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-300, equal_nan=True)


def test_no_valid_bin_is_nan_not_zero():
    vals = np.zeros((2, 3, 2), np.float32)  # zero counts are valid measurements
    pitch = np.full((2, 3, 2), 100.0, np.float32)  # all perpendicular
    pitch[1] = np.nan  # record 1: nothing valid
    out = collapse_angle(vals, pitch, None, DEFAULT_CATEGORIES["perpendicular"], "sum")
    assert (out[0] == 0).all() and np.isnan(out[1]).all()
    # no centre inside a category: interpolated, never empty (the lone bin weighs 1)
    out = collapse_angle(vals + 5, pitch, None, DEFAULT_CATEGORIES["antiparallel"], "sum")
    assert (out[0] == 5).all() and np.isnan(out[1]).all()


TABLE = 5.625 + 11.25 * np.arange(32)  # 32 bins of 11.25 deg


def test_edge_weights_hand_computed():
    # 0±30 (330..30, wrapped) over centres 5.625 + 11.25 j: six inside, and 320.625 and
    # 39.375 each weigh the 1.875 deg of their 11.25 deg gap that lies inside: 1/6
    w = category_weights(TABLE, DEFAULT_CATEGORIES["parallel"])
    want = np.zeros(32)
    want[[0, 1, 2, 29, 30, 31]] = 1.0
    want[[3, 28]] = 1.875 / 11.25
    np.testing.assert_allclose(w, want)
    # shifted by half a bin (centres 11.25 j): five inside, the edge bins 7.5/11.25 each;
    # the total is the same, so theta_shift no longer steps the category's sum
    w2 = category_weights(TABLE - 5.625, DEFAULT_CATEGORIES["parallel"])
    want2 = np.zeros(32)
    want2[[0, 1, 2, 30, 31]] = 1.0
    want2[[3, 29]] = 7.5 / 11.25
    np.testing.assert_allclose(w2, want2)
    assert w.sum() == pytest.approx(w2.sum()) == pytest.approx(60 / 11.25 + 1)
    # no centre inside 102..110: its midpoint 106 interpolated between 101.25 and 112.5
    w3 = category_weights(TABLE - 5.625, [(102.0, 110.0)])
    assert w3[9] == pytest.approx(6.5 / 11.25) and w3[10] == pytest.approx(4.75 / 11.25)
    assert np.count_nonzero(w3) == 2
    # all (0..360): every measured bin weighs exactly 1; NaN bins 0
    pa = TABLE.copy()
    pa[5] = np.nan
    w4 = category_weights(pa, DEFAULT_CATEGORIES["all"])
    assert w4[5] == 0 and (np.delete(w4, 5) == 1).all()


def test_categories_with_unsorted_columns_and_mode_change():
    rng = np.random.default_rng(1)
    pitch = np.full((3, 64, 2), np.nan)
    pitch[0, :32] = np.mod(TABLE + 17.0, 360.0)[:, None]  # unsorted after the wrap
    pitch[1] = np.mod(2.8125 + 5.625 * np.arange(64), 360.0)[:, None]  # 64 bins
    perm = rng.permutation(32)
    pitch[2, :32] = np.mod(TABLE - 40.0, 360.0)[perm][:, None]
    for ranges in DEFAULT_CATEGORIES.values():
        got = category_weights(pitch.transpose(0, 2, 1), ranges)
        for t in range(3):
            ok = np.isfinite(pitch[t, :, 0])
            want = np.zeros(64)
            for lo, hi in ranges:
                want[ok] += oracle_weights(list(pitch[t, ok, 0]), lo, hi)
            np.testing.assert_allclose(got[t, 0], np.minimum(want, 1.0))


def test_category_mask_and_labels():
    pa = np.array([0.0, 29.999, 30.0, 31.0, 330.0, 359.9, 360.0])
    np.testing.assert_array_equal(
        category_mask(pa, DEFAULT_CATEGORIES["parallel"]), [1, 1, 1, 0, 1, 1, 1]
    )
    assert not category_mask(np.array([np.nan]), [(0, 360)]).any()
    assert category_label(DEFAULT_CATEGORIES["parallel"]) == "0\N{PLUS-MINUS SIGN}30\N{DEGREE SIGN}"
    assert category_label(DEFAULT_CATEGORIES["antiparallel"]) == "180\N{PLUS-MINUS SIGN}30°"
    assert category_label(DEFAULT_CATEGORIES["perpendicular"]) == "90\N{PLUS-MINUS SIGN}50°"
    assert category_label(DEFAULT_CATEGORIES["all"]) == "0\N{EN DASH}360°"
    assert hemisphere_name(DEFAULT_CATEGORIES["parallel"], "north") == "downgoing"
    assert hemisphere_name(DEFAULT_CATEGORIES["parallel"], "south") == "upgoing"
    assert hemisphere_name(DEFAULT_CATEGORIES["antiparallel"], "south") == "downgoing"
    assert hemisphere_name(DEFAULT_CATEGORIES["antiparallel"], None) == ""
    assert hemisphere_name(DEFAULT_CATEGORIES["perpendicular"], "north") == ""


def test_normalize_categories():
    assert normalize_categories(None) == DEFAULT_CATEGORIES
    assert normalize_categories({"beam": (0, 15)}) == {"beam": ((0.0, 15.0),)}
    assert normalize_categories({"wrap": [(330, 30)]}) == {"wrap": ((330.0, 30.0),)}
    with pytest.raises(ValueError, match="within"):
        normalize_categories({"bad": [(30, 400)]})
    with pytest.raises(ValueError, match="lo != hi"):
        normalize_categories({"bad": [(30, 30)]})
    with pytest.raises(ValueError):
        normalize_categories({})


def test_reduced_energy_median_and_mode_change():
    e = np.full((3, 4, 5), np.nan)
    e[0, :2, :3] = [[10, 20, 30], [12, 22, 32]]  # mode with 2 angles x 3 energies
    e[1, :4, :5] = np.arange(20).reshape(4, 5)
    e[2, 0, 0] = 7.0
    e[2, 1, 1] = 9.0  # irregular holes -> NaN-aware path
    out = reduced_energy(e)
    np.testing.assert_allclose(out[0, :3], [11, 21, 31])
    assert np.isnan(out[0, 3:]).all()
    np.testing.assert_allclose(out[1], np.median(np.arange(20).reshape(4, 5), axis=0))
    np.testing.assert_allclose(out[2, :2], [7.0, 9.0])


@pytest.mark.parametrize("variable", ["data", "eflux"])
def test_reduce_dataset_lazy_equals_eager(ees_file, variable):
    ds = open_esa(ees_file)
    lazy = reduce_dataset(ds, variable=variable)
    assert isinstance(lazy["values"].data, da.Array)
    eager = reduce_dataset(ds.compute(), variable=variable)
    np.testing.assert_array_equal(lazy["values"].values, eager["values"].values)
    np.testing.assert_array_equal(lazy["energy"].values, eager["energy"].values)
    assert list(lazy.category.values) == list(DEFAULT_CATEGORIES)
    assert lazy.attrs["instrument"] == "ees" and lazy.attrs["variable"] == variable
    units = {"data": "Counts", "eflux": "eV/(cm^2-s-sr-eV)"}[variable]
    assert lazy.attrs["units"] == units
    # the "all" category of counts equals the plain sum over valid bins
    if variable == "data":
        raw = decompress_counts(ds.data.values, burst=False)
        total = np.nansum(raw, axis=1, dtype=np.float64)
        want = np.where(np.isfinite(raw).any(axis=1), total, np.nan)
        kept = reduce_dataset(ds.compute(), variable=variable, retrace=True)
        np.testing.assert_allclose(kept["values"].sel(category="all").values, want)
        # by default channel 0, the sweep's retrace step, is dropped, and nothing else
        got = eager["values"].sel(category="all").values
        assert np.isnan(got[:, 0]).all() and np.isnan(eager["energy"].values[:, 0]).all()
        assert np.isfinite(want[:, 0]).any()  # it had data
        np.testing.assert_allclose(got[:, 1:], want[:, 1:])
        np.testing.assert_array_equal(eager["energy"].values[:, 1:], kept["energy"].values[:, 1:])
        assert eager.attrs["retrace"] == 0 and kept.attrs["retrace"] == 1


def test_retrace_is_dropped_by_label_not_position(ees_file):
    ds = open_esa(ees_file).isel(energy_channel=slice(1, None)).compute()
    out = reduce_dataset(ds)  # channel 0 already gone: nothing else is dropped
    np.testing.assert_array_equal(
        out["values"].values, reduce_dataset(ds, retrace=True)["values"].values
    )


def test_reduce_rejects_unknown_variable(ees_file):
    with pytest.raises(ValueError, match="variable"):
        reduce_dataset(open_esa(ees_file), variable="pitch_angle")


@pytest.mark.parametrize("burst", [False, True])
def test_flight_code_round_trip_exhaustive(burst):
    """decode(encode(c)) lies in c's code range for every count the compressor takes."""
    cmax = COUNT_MAX[burst]
    counts = np.arange(cmax + 1)
    codes = encode_counts(counts, burst=burst)
    lo, hi = code_ranges(burst=burst)
    assert ((lo[codes] <= counts) & (counts <= hi[codes])).all()
    back = decompress_counts(codes.astype(np.float32), burst=burst)
    assert ((lo[codes] <= back) & (back <= hi[codes])).all()
    np.testing.assert_array_equal(back[:16], counts[:16])  # exact below 16
    np.testing.assert_array_equal(back, decompress_counts(codes, burst=burst))  # uint8 path
    assert (np.diff(codes.astype(int)) >= 0).all() and codes[0] == 0 and codes[-1] == 255
    assert encode_counts(np.array([cmax + 1, 10**6]), burst=burst).tolist() == [255, 255]
    assert np.isnan(decompress_counts(np.array([np.nan]), burst=burst)[0])


@pytest.mark.parametrize(
    ("burst", "code", "lo", "hi"),
    [
        (False, 32, 64, 67),
        (False, 100, 1280, 1343),
        (False, 160, 8192, 8447),
        (False, 255, 64512, 65535),
        (True, 96, 1024, 1055),
        (True, 255, 16256, 16383),
    ],
)
def test_flight_code_reference_check_values(burst, code, lo, hi):
    """The check values of FAST_ESA_L2_FORMAT.md §4.5."""
    los, his = code_ranges(burst=burst)
    assert (los[code], his[code]) == (lo, hi)
    assert decompress_counts(np.array([float(code)]), burst=burst)[0] == (lo + hi) / 2
    assert encode_counts(np.array([lo, hi]), burst=burst).tolist() == [code, code]


def test_rate_is_counts_per_second_per_bin():
    """rate = weighted counts / (accumulation time x weight sum): no jump at a mode change."""
    ds = _tiny_dataset([2.5, 2.5, 0.625, 0.625])
    ds["nenergy"] = ("time", np.array([48, 48, 48, 48], np.uint8))
    out = reduce_dataset(ds, variable="rate", retrace=True)
    np.testing.assert_allclose(
        out["values"].sel(category="all").values[:, 0],
        3 / (np.array([2.5, 2.5, 0.625, 0.625]) / 48),
        rtol=1e-6,
    )
    assert out.attrs["units"] == "Counts/s"
    ds["time_integ"] = ("time", np.array([0.1, -1e31, 0.1, 0.1]))
    got = reduce_dataset(ds.chunk({"time": 2}), variable="rate", retrace=True)
    np.testing.assert_allclose(
        got["values"].sel(category="all").values[:, 0], [30, 3 / (2.5 / 48), 30, 30], rtol=1e-6
    )


def test_data_sums_counts_not_codes():
    codes = np.full((1, 2, 1), 200.0, np.float32)  # two bins of ~1.5e4 counts each
    pitch = np.full((1, 2, 1), 10.0, np.float32)
    ds = xr.Dataset(
        {
            "data": (("time", "pitch_angle_bin", "energy_channel"), codes, {"UNITS": "Counts"}),
            "pitch_angle": (("time", "pitch_angle_bin", "energy_channel"), pitch),
            "domega": (("time", "pitch_angle_bin", "energy_channel"), np.ones_like(pitch)),
            "energy_full": (("time", "pitch_angle_bin", "energy_channel"), np.ones_like(pitch)),
        },
        coords={"time": np.array(["2000-01-01"], "datetime64[ns]"), "energy_channel": [0]},
        attrs={"instrument": "ees"},
    )
    out = reduce_dataset(ds, retrace=True)["values"].sel(category="all").values[0, 0]
    assert out == pytest.approx(2 * decompress_counts(np.array([200.0]), burst=False)[0])
    raw = (
        reduce_dataset(ds, decompress=False, retrace=True)["values"]
        .sel(category="all")
        .values[0, 0]
    )
    assert raw == 400.0


def _tiny_dataset(time_delta=None, n: int = 4) -> xr.Dataset:
    """n records of one angle bin and one channel; ``time_delta`` if given."""
    shape = (n, 1, 1)
    dims = ("time", "pitch_angle_bin", "energy_channel")
    ones = np.ones(shape, np.float32)
    data = {
        "data": (dims, ones * 3, {"UNITS": "Counts"}),
        "pitch_angle": (dims, ones * 10),
        "domega": (dims, ones),
        "energy_full": (dims, ones * 100),
    }
    if time_delta is not None:
        data["time_delta"] = (("time",), np.asarray(time_delta, np.float64), {"UNITS": "sec"})
    t0 = np.datetime64("2000-01-01T00:00:00", "ns")
    return xr.Dataset(
        data,
        coords={"time": t0 + np.arange(n) * np.timedelta64(2500, "ms"), "energy_channel": [0]},
        attrs={"instrument": "ees"},
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_time_delta_is_carried_with_fill_as_nan(lazy):
    ds = _tiny_dataset([2.5, -1e31, np.nan, 0.0])
    if lazy:
        ds = ds.chunk({"time": 2})
    out = reduce_dataset(ds)
    assert out["time_delta"].dims == ("time",)
    assert out["time_delta"].attrs["units"] == "s"
    assert isinstance(out["time_delta"].data, da.Array) == lazy
    np.testing.assert_array_equal(out["time_delta"].values, [2.5, np.nan, np.nan, np.nan])
    # A source without time_delta (older files): unknown, NaN, never an invented width.
    out = reduce_dataset(_tiny_dataset(None))
    assert np.isnan(out["time_delta"].values).all() and out["time_delta"].shape == (4,)


def test_time_delta_of_a_file_survives_reduction(ees_file):
    ds = open_esa(ees_file)
    want = ds["time_delta"].values
    assert np.isfinite(want).all() and set(np.unique(want)) <= {0.625, 2.5}  # synth survey
    for src in (ds, ds.compute()):
        got = reduce_dataset(src, variable="eflux")["time_delta"]
        np.testing.assert_array_equal(got.values, want)
        np.testing.assert_array_equal(got["time"].values, ds["time"].values)


def test_lazy_reductions_of_two_files_do_not_share_graph_keys(good_files):
    """Computing two files' lazy reductions together gives each its own values (fixed
    graph key names used to collide, so one file's result stood in for the other's)."""
    import dask

    a_path, b_path = (good_files[o]["ees"] for o in sorted(good_files)[:2])
    a, b = reduce_dataset(open_esa(a_path)), reduce_dataset(open_esa(b_path))
    va, vb, ea, tb = dask.compute(
        a["values"].data, b["values"].data, a["energy"].data, b.time_delta.data
    )
    want_a = reduce_dataset(open_esa(a_path).compute())
    want_b = reduce_dataset(open_esa(b_path).compute())
    np.testing.assert_array_equal(va, want_a["values"].values)
    np.testing.assert_array_equal(vb, want_b["values"].values)
    np.testing.assert_array_equal(ea, want_a["energy"].values)
    np.testing.assert_array_equal(tb, want_b["time_delta"].values)


def _collapse_reference(values, pitch, domega, integ, *, cats, how):
    """The reduction as it was before blocking (REDUCTION_VERSION 2), without blocks,
    groups or shortcuts: weights per bin, float64 sums over angle in angle order. The
    blocked implementation must equal it bit for bit."""
    from fastspectro_dask.reduce import _distinct_columns, _unique_weights

    values = np.asarray(values, dtype=np.float32)
    pitch = np.asarray(pitch, dtype=np.float64)
    finite = np.isfinite(values) & np.isfinite(pitch)
    if how == "mean":
        domega = np.asarray(domega, dtype=np.float64)
        finite &= np.isfinite(domega) & (domega > 0)
        base = np.where(finite, domega, 0.0)
    else:
        base = finite.astype(np.float64)
    filled = np.where(finite, values, np.float32(0))
    t_n, a_n, e_n = values.shape
    columns = np.where(finite, pitch, np.nan).transpose(0, 2, 1).reshape(-1, a_n)
    uniq, inverse, valid = _distinct_columns(columns)
    out = np.empty((len(cats), t_n, e_n))
    for k, ranges in enumerate(cats.values()):
        w = _unique_weights(uniq, ranges)[inverse]
        w[~valid] = 0.0
        w = w.reshape(t_n, e_n, a_n).transpose(0, 2, 1) * base
        # sums over angle in angle order: the contract (einsum and ndarray.sum keep that
        # order only when the energy axis has at least 2 channels)
        total, den = np.zeros((t_n, e_n)), np.zeros((t_n, e_n))
        for a in range(a_n):
            total += filled[:, a, :] * w[:, a, :]
            den += w[:, a, :]
        out[k] = np.nan
        if how == "sum":
            np.copyto(out[k], total, where=den > 0)
            continue
        if how == "rate":
            den = den * np.asarray(integ, dtype=np.float64).reshape(-1, 1)
        np.divide(total, den, out=out[k], where=den > 0)
    return out


@pytest.mark.parametrize("inst", ["ees", "eeb"])
@pytest.mark.parametrize("how", ["sum", "mean", "rate"])
@pytest.mark.parametrize("block", [16, 7])
def test_blocked_collapse_is_bit_identical_to_one_einsum(good_files, inst, how, block, monkeypatch):
    import fastspectro_dask.reduce as red

    monkeypatch.setattr(red, "_BLOCK_RECORDS", block)  # 7: blocks that do not divide n
    path = next(files[inst] for _, files in sorted(good_files.items()) if inst in files)
    ds = open_esa(path).compute()
    values = ds["eflux" if how == "mean" else "data"].values
    args = (values, ds["pitch_angle"].values, ds["domega"].values)
    integ = np.linspace(0.01, 0.05, values.shape[0])
    cats = normalize_categories(None)
    got = red._collapse_categories(*args, integ, cats=cats, how=how)
    want = _collapse_reference(*args, integ, cats=cats, how=how)
    np.testing.assert_array_equal(got, want)


@st.composite
def mode_blocks(draw):
    """Records as the instrument writes them: a valid ``[:nbins, :nenergy]`` block per
    record (ragged: more extents than the reduction groups separately), one pitch angle
    per bin shared by the record's channels, then fills, zeros and odd columns."""
    t = draw(st.integers(1, 14))
    a, e = draw(st.integers(1, 7)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pitch = np.repeat(rng.integers(0, 360 * 64, (t, a, 1)) / 64.0, e, axis=2).astype(np.float32)
    vals = rng.gamma(1.0, 50.0, (t, a, e)).astype(np.float32)
    dom = rng.uniform(0.01, 1.0, (t, a, e)).astype(np.float32)
    nb, ne = rng.integers(0, a + 1, t), rng.integers(0, e + 1, t)
    outside = (np.arange(a)[None, :, None] >= nb[:, None, None]) | (
        np.arange(e)[None, None, :] >= ne[:, None, None]
    )
    for arr in (vals, pitch, dom):
        arr[outside] = np.nan
    vals[rng.random(vals.shape) < 0.1] = np.nan  # fills inside the block
    vals[rng.random(vals.shape) < 0.1] = 0.0
    odd = rng.random((t, e)) < 0.15  # columns whose pitch angles differ from the record's
    pitch[np.broadcast_to(odd[:, None, :], pitch.shape) & ~outside] += np.float32(0.5)
    dom[rng.random(dom.shape) < 0.05] = np.nan
    return vals, pitch, dom


@settings(max_examples=100, deadline=None)
@given(st.one_of(records(), mode_blocks()), st.sampled_from(["sum", "mean", "rate"]))
def test_blocked_collapse_bit_identical_on_random_records(rec, how):
    """Random bins, and records as the instrument writes them (mode_blocks): the per-record
    weight rows, the extent groups and the odd columns change no bit."""
    from fastspectro_dask.reduce import _collapse_categories

    vals, pitch, dom = rec
    integ = np.linspace(0.01, 0.05, vals.shape[0])
    cats = normalize_categories(None)
    got = _collapse_categories(vals, pitch, dom, integ, cats=cats, how=how)
    want = _collapse_reference(vals, pitch, dom, integ, cats=cats, how=how)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("e_n", [1, 2, 3])
@pytest.mark.parametrize("how", ["sum", "mean", "rate"])
def test_collapse_sums_angles_in_order_for_any_channel_count(e_n, how):
    """Records cropped to different angle extents, with one channel too: over a single
    channel einsum adds angles pairwise in an order set by their number (a 1-ulp
    difference that hypothesis found in CI), so the extents must not change a bit."""
    from fastspectro_dask.reduce import _collapse_categories

    rng = np.random.default_rng(5)
    t_n, a_n = 6, 40
    vals = (rng.random((t_n, a_n, e_n)) * 10).astype(np.float32)
    pitch = np.repeat((rng.random((t_n, a_n, 1)) * 180).astype(np.float32), e_n, axis=2)
    dom = (rng.random((t_n, a_n, e_n)) + 0.1).astype(np.float32)
    for i, extent in enumerate((40, 3, 17, 29, 8, 33)):
        vals[i, extent:] = np.nan
    integ = np.linspace(0.01, 0.05, t_n)
    cats = normalize_categories(None)
    got = _collapse_categories(vals, pitch, dom, integ, cats=cats, how=how)
    want = _collapse_reference(vals, pitch, dom, integ, cats=cats, how=how)
    assert got.shape == (len(cats), t_n, e_n)
    np.testing.assert_array_equal(got, want)


def test_column_grouping_collision_falls_back_to_exact(monkeypatch):
    import fastspectro_dask.reduce as red

    original, calls = red._distinct_columns, []

    def spy(cols):
        calls.append(cols.shape)
        return original(cols)

    # a finite pitch of -1 deg and a missing bin hash alike: the exact check must see it
    pitch = np.array([[[-1.0, np.nan], [10.0, 10.0]]], np.float32)  # 1 record, 2x2
    vals = np.ones_like(pitch)
    cats = normalize_categories(None)
    monkeypatch.setattr(red, "_distinct_columns", spy)
    got = red._collapse_categories(vals, pitch, None, None, cats=cats, how="sum")
    monkeypatch.undo()
    assert calls, "the collision was not detected"
    want = _collapse_reference(vals, pitch, None, None, cats=cats, how="sum")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("variable", "pad"),
    [("data", True), ("eflux", True), ("rate", False)],
)
def test_reduce_file_path_on_damaged_records_equals_references(good_files, variable, pad):
    """reduce_file's in-memory path (load_esa + reduce_dataset) on a file with mode
    changes, plus fills, zeros, an empty record and odd columns, against the one-einsum
    reference (angle collapse) and the brute-force loop (pad) on the uncropped arrays."""
    from fastspectro_dask.io import load_esa
    from fastspectro_dask.reduce import SOURCE_VARIABLE, PadSpec, accumulation_times
    from tests.test_padreduce import _ref_collapse

    path = good_files[min(good_files)]["ees"]
    src = SOURCE_VARIABLE[variable]
    wanted = [src, "pitch_angle", "domega", "energy_full", "time_delta", "denergy_full"]
    ds = load_esa(path, variables=wanted)
    assert len(np.unique(ds["nbins"].values)) > 1  # a mode change
    rng = np.random.default_rng(7)
    v = ds[src].values.copy()
    inside = np.isfinite(v)
    v[inside & (rng.random(v.shape) < 0.05)] = np.nan
    v[inside & (rng.random(v.shape) < 0.05)] = 0.0
    v[3] = np.nan  # a record without data
    p = ds["pitch_angle"].values.copy()
    p[5, :, 7] += np.float32(0.25)  # one channel's pitch angles differ from its record's
    ds[src] = ds[src].copy(data=v)
    ds["pitch_angle"] = ds["pitch_angle"].copy(data=p)
    spec = PadSpec((50.0, 5000.0)) if pad else None
    got = reduce_dataset(ds, variable=variable, pad=spec)

    how = {"data": "sum", "eflux": "mean", "rate": "rate"}[variable]
    counts = decompress_counts(v, burst=False) if src == "data" else v
    integ = accumulation_times(ds) if how == "rate" else None
    cats = normalize_categories(None)
    want = _collapse_reference(counts, p, ds["domega"].values, integ, cats=cats, how=how)
    want[:, :, 0] = np.nan  # the retrace channel
    np.testing.assert_array_equal(got["values"].values, want)
    assert np.isnan(got["values"].values[:, 3]).all()
    if pad:
        kept = counts.astype(np.float64)
        kept[:, :, 0] = np.nan
        # the oracle in float64, as the library computes (float32 scalars would round)
        den = ds["denergy_full" if how == "mean" else "energy_full"].values.astype(np.float64)
        e = ds["energy_full"].values.astype(np.float64)
        want_pad, want_pa = _ref_collapse(kept, e, den, p.astype(np.float64), spec.energy, how)
        np.testing.assert_allclose(got["pad_pitch"].values, want_pa, atol=1e-9)
        np.testing.assert_allclose(got["pad_values"].values, want_pad, rtol=1e-9, atol=1e-9)
        assert np.isnan(got["pad_values"].values).sum() == np.isnan(want_pad).sum()


@pytest.mark.parametrize("burst", [False, True])
def test_decode_rejects_every_non_code(burst):
    """The byte-table decode: NaN, non-integral, negative and too large values give NaN."""
    bad = np.array([np.nan, -1, 0.5, 255.5, 256, 1e10, -1e10, np.inf, -np.inf, 1e-45])
    assert np.isnan(decompress_counts(bad, burst=burst)).all()
    assert np.isnan(decompress_counts(bad.astype(np.float32), burst=burst)).all()
    good = np.array([-0.0, 0, 15, 16, 255], np.float32)
    want = decompress_counts(np.array([0, 0, 15, 16, 255], np.uint8), burst=burst)
    np.testing.assert_array_equal(decompress_counts(good, burst=burst), want)


def test_median_of_runs_equals_the_median_of_every_record():
    """Energies repeat record to record (a mode's table): the median is computed once
    per run, bit for bit the per-record median (-0.0 and 0.0 are different records)."""
    from fastspectro_dask.reduce import _median_of_runs, _median_over_angle

    rng = np.random.default_rng(3)
    tables = rng.uniform(1.0, 3e4, (3, 8, 6)).astype(np.float32)
    tables[2, :, 0] = 0.0
    modes = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 2])
    block = tables[modes]
    block[8, 3, 0] = -0.0  # equal in value, not in bits: its own run
    want = _median_over_angle(block)
    got = _median_of_runs(block)
    assert got.tobytes() == want.tobytes()
    assert _median_of_runs(block, [0])[:, 1:].tobytes() == want[:, 1:].tobytes()
