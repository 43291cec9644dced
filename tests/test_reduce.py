"""Angle collapse per pitch-angle category, against a plain-loop oracle."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastspectro_dask.io import open_esa
from fastspectro_dask.reduce import (
    DEFAULT_CATEGORIES,
    category_mask,
    collapse_angle,
    decompress_counts,
    normalize_categories,
    reduce_dataset,
    reduced_energy,
)


def oracle(values, pitch, domega, ranges, how):
    t_n, a_n, e_n = values.shape
    out = np.full((t_n, e_n), np.nan)
    for t in range(t_n):
        for e in range(e_n):
            num = den = 0.0
            seen = False
            for a in range(a_n):
                v, p = values[t, a, e], pitch[t, a, e]
                if not np.isfinite(v) or not np.isfinite(p):
                    continue
                if not any(lo <= p < hi or (hi >= 360 and p == hi) for lo, hi in ranges):
                    continue
                if how == "sum":
                    num += float(v)
                    seen = True
                elif np.isfinite(domega[t, a, e]) and domega[t, a, e] > 0:
                    num += float(v) * float(domega[t, a, e])
                    den += float(domega[t, a, e])
                    seen = True
            if seen:
                out[t, e] = num if how == "sum" else num / den
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
            elements=st.one_of(
                st.floats(0, 359.75, width=32),
                st.just(np.nan),
                st.sampled_from([30.0, 150.0, 210.0]),
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
@given(records(), st.sampled_from(list(DEFAULT_CATEGORIES)), st.sampled_from(["sum", "mean"]))
@example(  # a subnormal value times a weight underflowed in float32 (found by CI)
    (
        np.full((1, 1, 1), 1e-45, np.float32),
        np.zeros((1, 1, 1), np.float32),
        np.full((1, 1, 1), 0.5, np.float32),
    ),
    "all",
    "mean",
)
def test_collapse_matches_loop_oracle(rec, key, how):
    vals, pitch, dom = rec
    ranges = DEFAULT_CATEGORIES[key]
    got = collapse_angle(vals, pitch, dom, ranges, how)
    want = oracle(vals, pitch, dom, ranges, how)
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_no_valid_bin_is_nan_not_zero():
    vals = np.zeros((2, 3, 2), np.float32)  # zero counts are valid measurements
    pitch = np.full((2, 3, 2), 100.0, np.float32)  # all perpendicular
    pitch[1] = np.nan  # record 1: nothing valid
    out = collapse_angle(vals, pitch, None, DEFAULT_CATEGORIES["perpendicular"], "sum")
    assert (out[0] == 0).all() and np.isnan(out[1]).all()
    out = collapse_angle(vals, pitch, None, DEFAULT_CATEGORIES["upgoing"], "sum")
    assert np.isnan(out).all()


def test_category_edges_and_360():
    pa = np.array([0.0, 29.999, 30.0, 330.0, 359.9, 360.0])
    np.testing.assert_array_equal(
        category_mask(pa, DEFAULT_CATEGORIES["downgoing"]), [True, True, False, True, True, True]
    )
    assert not category_mask(np.array([np.nan]), [(0, 360)]).any()


def test_normalize_categories():
    assert normalize_categories(None) == DEFAULT_CATEGORIES
    assert normalize_categories({"beam": (0, 15)}) == {"beam": ((0.0, 15.0),)}
    with pytest.raises(ValueError, match="0 <= lo < hi <= 360"):
        normalize_categories({"bad": [(30, 10)]})
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
def test_decompress_inverts_the_count_compression(burst):
    from fastspectro_dask.synth import _compress_counts

    cmax = 16383 if burst else 65535
    counts = np.unique(np.round(np.geomspace(1, cmax, 400))).astype(np.int64)
    codes = _compress_counts(counts, burst).astype(np.float32)
    back = decompress_counts(codes, burst=burst)
    small = counts < 32
    np.testing.assert_array_equal(back[small], counts[small])  # exact below 32
    step = np.log(cmax / 32) / 223  # one code step in ln(counts)
    assert np.all(np.abs(np.log(back[~small] / counts[~small])) <= step / 2 + 1e-6)
    assert decompress_counts(np.array([255.0]), burst=burst)[0] == pytest.approx(cmax, rel=1e-5)
    assert np.isnan(decompress_counts(np.array([np.nan]), burst=burst)[0])


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
