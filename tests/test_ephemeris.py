"""Tests of fastspectro_dask.ephemeris: K0 orbit files, interpolation, label rows."""

from __future__ import annotations

from pathlib import Path

import cdflib
import numpy as np
import pytest
from cdflib.cdfwrite import CDF as CDFWriter  # noqa: N811
from hypothesis import given, settings
from hypothesis import strategies as st

from fastspectro_dask.ephemeris import (
    Ephemeris,
    EphemerisError,
    format_rows,
    read_ephemeris,
)
from fastspectro_dask.synth import _write_orb_file, orbit_period_seconds, orbit_start_unix

T0 = 946_684_800.0  # 2000-01-01T00:00:00Z


def _eph(t, alt=None, ilat=None, mlt=None, **kw) -> Ephemeris:
    t = np.asarray(t, float)
    z = np.zeros_like(t)
    return Ephemeris(
        time=t,
        alt=z if alt is None else alt,
        ilat=z if ilat is None else ilat,
        mlt=z if mlt is None else mlt,
        source="hand",
        **kw,
    )


def _write_orb(path: Path, variables: dict[str, tuple[int, np.ndarray]], fill=None) -> Path:
    """A minimal orbit file with the given (CDF type, values) variables."""
    spec = {"Majority": "row_major", "Encoding": "IBMPC_ENCODING", "Compressed": 0}
    with CDFWriter(path, cdf_spec=spec) as w:
        for name, (dtype, val) in variables.items():
            attrs = {"UNITS": "x"}
            if fill is not None and dtype != CDFWriter.CDF_EPOCH:
                attrs["FILLVAL"] = fill
            w.write_var(
                {
                    "Variable": name,
                    "Data_Type": dtype,
                    "Num_Elements": 1,
                    "Rec_Vary": True,
                    "Dim_Sizes": [],
                    "Compress": 0,
                },
                var_attrs=attrs,
                var_data=val,
            )
    return path


def _standard_vars(t: np.ndarray, **override) -> dict[str, tuple[int, np.ndarray]]:
    n = t.size
    v = {
        "Epoch": override.get("Epoch")
        or (CDFWriter.CDF_EPOCH, np.asarray(cdflib.cdfepoch.timestamp_to_cdfepoch(t))),
        "unix_time": (CDFWriter.CDF_DOUBLE, t),
        "alt": (CDFWriter.CDF_FLOAT, np.linspace(400, 4000, n).astype(np.float32)),
        "ilat": (CDFWriter.CDF_FLOAT, np.linspace(60, 80, n).astype(np.float32)),
        "mlt": (CDFWriter.CDF_FLOAT, np.linspace(20, 23, n).astype(np.float32)),
    }
    v.update(override)
    return {k: val for k, val in v.items() if val is not None}


# --------------------------------------------------------------------------- interpolation


def test_interpolation_exact_hand_case():
    eph = _eph(
        [T0, T0 + 20, T0 + 40],
        alt=[1000.0, 2000.0, 2500.0],
        ilat=[-10.0, 10.0, 20.0],
        mlt=[3.0, 4.0, 6.0],
    )
    got = eph.at([T0, T0 + 5, T0 + 30, T0 + 40])
    np.testing.assert_allclose(got["ALT"], [1000, 1250, 2250, 2500])
    np.testing.assert_allclose(got["ILAT"], [-10, -5, 15, 20])
    np.testing.assert_allclose(got["MLT"], [3, 3.25, 5, 6])


def test_datetime64_queries_match_unix_seconds():
    eph = _eph([T0, T0 + 20], alt=[0.0, 20.0])
    t = np.array(["2000-01-01T00:00:05", "NaT"], dtype="datetime64[ns]")
    got = eph.at(t)["ALT"]
    assert got[0] == pytest.approx(5.0)
    assert np.isnan(got[1])
    assert eph.at(np.datetime64("2000-01-01T00:00:10", "s"))["ALT"] == pytest.approx(10.0)


def test_mlt_wraps_at_24h():
    eph = _eph([T0, T0 + 20, T0 + 40], mlt=[23.8, 0.2, 0.6])
    got = eph.at([T0 + 10, T0 + 5, T0 + 15, T0 + 30])["MLT"]
    np.testing.assert_allclose(got, [0.0, 23.9, 0.1, 0.4], atol=1e-9)
    # and the other way round (westward through midnight)
    eph = _eph([T0, T0 + 20], mlt=[0.2, 23.8])
    np.testing.assert_allclose(eph.at([T0 + 10, T0 + 15])["MLT"], [0.0, 23.9], atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    m0=st.floats(0, 23.99),
    dm=st.floats(-3, 3),
    frac=st.floats(0, 1),
)
def test_mlt_interpolation_stays_in_range_and_follows_short_way(m0, dm, frac):
    m1 = (m0 + dm) % 24
    eph = _eph([T0, T0 + 20], mlt=[m0, m1])
    got = float(eph.at(T0 + 20 * frac)["MLT"])
    assert 0 <= got < 24
    want = (m0 + frac * dm) % 24
    assert min(abs(got - want), 24 - abs(got - want)) < 1e-6


def test_no_extrapolation_outside_span():
    eph = _eph([T0, T0 + 20, T0 + 40], alt=[1.0, 2.0, 3.0], mlt=[1.0, 2.0, 3.0])
    got = eph.at([T0 - 0.001, T0 - 100, T0 + 40.001, T0 + 1e4, np.nan])
    for key in ("ALT", "ILAT", "MLT"):
        assert np.isnan(got[key]).all(), key
    assert eph.at(T0 + 40)["ALT"] == 3.0  # the last sample itself is inside


def test_gap_longer_than_five_cadences_is_nan():
    t = np.concatenate([T0 + 20 * np.arange(10), T0 + 180 + 1000 + 20 * np.arange(10)])
    eph = _eph(t, alt=np.arange(t.size, dtype=float))
    got = eph.at([T0 + 170, T0 + 190, T0 + 700, T0 + 1180, T0 + 1190])["ALT"]
    assert got[0] == pytest.approx(8.5)
    assert np.isnan(got[1:3]).all()
    assert got[3] == pytest.approx(10.0)  # exactly on the first sample after the gap
    assert got[4] == pytest.approx(10.5)
    # a one-sample fill hole (NaN) is bridged: 40 s < 5 x 20 s
    alt = np.arange(10, dtype=float)
    alt[4] = np.nan
    eph = _eph(T0 + 20 * np.arange(10), alt=alt)
    assert eph.at(T0 + 80)["ALT"] == pytest.approx(4.0)
    # explicit max_gap
    eph = _eph(T0 + 20 * np.arange(10), alt=alt, max_gap=30.0)
    assert np.isnan(eph.at(T0 + 80)["ALT"])


def test_constructor_validates():
    with pytest.raises(ValueError, match="increasing"):
        _eph([T0, T0])
    with pytest.raises(ValueError, match="finite"):
        _eph([T0, np.nan])
    with pytest.raises(ValueError, match="samples"):
        Ephemeris(time=[T0, T0 + 1], alt=[1.0], ilat=[1, 2], mlt=[1, 2])
    eph = _eph([T0, T0 + 20])
    with pytest.raises(ValueError):
        eph.time[0] = 0.0  # read-only


def test_hemisphere():
    t = T0 + 20 * np.arange(30)
    ilat = np.concatenate([np.linspace(60, 80, 15), np.linspace(-60, -80, 15)])
    eph = _eph(t, ilat=ilat)
    assert eph.hemisphere(T0, T0 + 200) == "north"
    assert eph.hemisphere(T0 + 400, T0 + 580) == "south"
    # a span shorter than one cadence still gets an interpolated answer
    assert eph.hemisphere(T0 + 3, T0 + 7) == "north"
    assert eph.hemisphere(
        np.datetime64("2000-01-01T00:07:00"), np.datetime64("2000-01-01T00:09")
    ) == ("south")
    assert eph.hemisphere(T0 - 1000, T0 - 10) is None
    assert eph.hemisphere(T0 + 1e5, T0 + 2e5) is None


# --------------------------------------------------------------------------- files


def test_read_synth_orbit_file(tmp_path):
    orbit = 13616
    path = _write_orb_file(tmp_path, orbit, "flat")
    eph = read_ephemeris(path)
    assert eph.source == path.name
    t0 = orbit_start_unix(orbit)
    assert eph.time[0] == pytest.approx(t0)
    assert len(eph) == np.arange(0.0, orbit_period_seconds(orbit), 20.0).size
    assert np.all(np.diff(eph.time) == pytest.approx(20.0))
    assert eph.max_gap == pytest.approx(100.0)
    assert 340 < np.nanmin(eph.alt) and np.nanmax(eph.alt) < 4200
    assert np.nanmax(np.abs(eph.ilat)) <= 83.0001
    assert ((eph.mlt >= 0) & (eph.mlt < 24)).all()
    got = eph.at(eph.time[:3] + 10.0)
    np.testing.assert_allclose(got["ALT"], 0.5 * (eph.alt[:3] + eph.alt[1:4]), rtol=1e-6)
    # north first (ILAT = 83 sin(phase)), then south
    mid = eph.time[0] + 0.25 * (eph.time[-1] - eph.time[0])
    assert eph.hemisphere(mid - 300, mid + 300) == "north"
    assert (
        eph.hemisphere(
            mid + 0.5 * (eph.time[-1] - eph.time[0]) - 60, mid + 0.5 * (eph.time[-1] - eph.time[0])
        )
        == "south"
    )


def test_read_via_write_synthetic_dataset(tmp_path):
    from fastspectro_dask.synth import write_synthetic_dataset

    man = write_synthetic_dataset(tmp_path, orbits=1, orb_files=True, instruments=())
    (path,) = man.orb_files.values()
    assert len(read_ephemeris(path)) > 300


def test_time_from_epoch_when_unix_time_missing(tmp_path):
    t = T0 + 20 * np.arange(12)
    path = _write_orb(tmp_path / "fa_k0_orb_13616_v01.cdf", _standard_vars(t, unix_time=None))
    eph = read_ephemeris(path)
    np.testing.assert_allclose(eph.time, t, atol=1e-3)


def test_fill_values_become_nan_and_bad_times_are_dropped(tmp_path):
    t = T0 + 20 * np.arange(12)
    t_bad = t.copy()
    t_bad[5] = -1e31
    ilat = np.linspace(60, 80, 12).astype(np.float32)
    ilat[3] = -1e31
    mlt = np.linspace(20, 23, 12).astype(np.float32)
    mlt[7] = np.nan
    path = _write_orb(
        tmp_path / "fa_k0_orb_13616_v01.cdf",
        _standard_vars(
            t_bad,
            Epoch=(CDFWriter.CDF_EPOCH, np.asarray(cdflib.cdfepoch.timestamp_to_cdfepoch(t))),
            ilat=(CDFWriter.CDF_FLOAT, ilat),
            mlt=(CDFWriter.CDF_FLOAT, mlt),
        ),
        fill=np.float32(-1e31),
    )
    eph = read_ephemeris(path)
    # unix_time fill at record 5 is recovered from Epoch
    np.testing.assert_allclose(eph.time, t, atol=1e-3)
    assert np.isnan(eph.ilat[3]) and np.isfinite(np.delete(eph.ilat, 3)).all()
    assert np.isnan(eph.mlt[7])
    # interpolation bridges the single fill sample
    assert eph.at(t[3])["ILAT"] == pytest.approx(0.5 * (ilat[2] + ilat[4]), rel=1e-6)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "fa_k0_orb_13616_v01.cdf"
    path.write_bytes(b"<html>not found</html>" + bytes(range(256)) * 8)
    with pytest.raises(EphemerisError, match=r"fa_k0_orb_13616_v01\.cdf") as info:
        read_ephemeris(path)
    assert "CDF" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_file(tmp_path):
    good = _write_orb_file(tmp_path, 13616, "flat")
    bad = tmp_path / "fa_k0_orb_13617_v01.cdf"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(EphemerisError, match=r"fa_k0_orb_13617_v01\.cdf"):
        read_ephemeris(bad)


def test_missing_file(tmp_path):
    with pytest.raises(EphemerisError, match="no such file"):
        read_ephemeris(tmp_path / "fa_k0_orb_00001_v01.cdf")


def test_missing_ilat_names_file_and_variable(tmp_path):
    t = T0 + 20 * np.arange(5)
    path = _write_orb(tmp_path / "fa_k0_orb_13616_v01.cdf", _standard_vars(t, ilat=None))
    with pytest.raises(EphemerisError, match=r"fa_k0_orb_13616_v01\.cdf.*'ilat'"):
        read_ephemeris(path)


def test_missing_time_variables(tmp_path):
    t = T0 + 20 * np.arange(5)
    path = _write_orb(
        tmp_path / "fa_k0_orb_13616_v01.cdf", _standard_vars(t, unix_time=None, Epoch=None)
    )
    with pytest.raises(EphemerisError, match="no time"):
        read_ephemeris(path)


def test_no_records(tmp_path):
    path = _write_orb(
        tmp_path / "fa_k0_orb_13616_v01.cdf",
        {
            "Epoch": (CDFWriter.CDF_EPOCH, None),
            "alt": (CDFWriter.CDF_FLOAT, None),
            "ilat": (CDFWriter.CDF_FLOAT, None),
            "mlt": (CDFWriter.CDF_FLOAT, None),
        },
    )
    with pytest.raises(EphemerisError, match="no records"):
        read_ephemeris(path)


def test_wrong_shape(tmp_path):
    t = T0 + 20 * np.arange(5)
    path = tmp_path / "fa_k0_orb_13616_v01.cdf"
    spec = {"Majority": "row_major", "Encoding": "IBMPC_ENCODING", "Compressed": 0}
    with CDFWriter(path, cdf_spec=spec) as w:
        for name, val, dims in (
            ("unix_time", t, []),
            ("alt", np.ones((5, 3)), [3]),
            ("ilat", np.ones(5), []),
            ("mlt", np.ones(5), []),
        ):
            w.write_var(
                {
                    "Variable": name,
                    "Data_Type": CDFWriter.CDF_DOUBLE,
                    "Num_Elements": 1,
                    "Rec_Vary": True,
                    "Dim_Sizes": dims,
                    "Compress": 0,
                },
                var_data=val,
            )
    with pytest.raises(EphemerisError, match=r"'alt' has shape \(5, 3\)"):
        read_ephemeris(path)


def test_record_counts_differ(tmp_path):
    t = T0 + 20 * np.arange(6)
    path = _write_orb(
        tmp_path / "fa_k0_orb_13616_v01.cdf",
        _standard_vars(t, alt=(CDFWriter.CDF_FLOAT, np.ones(4, np.float32))),
    )
    with pytest.raises(EphemerisError, match="record counts differ"):
        read_ephemeris(path)


# --------------------------------------------------------------------------- labels


def test_format_rows():
    values = {
        "ALT": np.array([350.4, 4174.6, np.nan]),
        "ILAT": np.array([-72.34, -0.04, 83.0]),
        "MLT": np.array([23.96, 0.04, np.nan]),
    }
    rows = format_rows(values)
    assert rows == {
        "ALT": ["350", "4175", ""],
        "ILAT": ["-72.3", "0.0", "83.0"],
        "MLT": ["0.0", "0.0", ""],
    }
    assert format_rows({"mlt": [12.25]}, labels=("MLT",)) == {"MLT": ["12.2"]}
    with pytest.raises(KeyError):
        format_rows(values, labels=("FOO",))
    with pytest.raises(KeyError):
        format_rows({"ALT": [1.0]}, labels=("ILAT",))


def test_format_rows_from_at():
    eph = _eph([T0, T0 + 20], alt=[1000.0, 2000.0], ilat=[70.0, 71.0], mlt=[23.8, 0.2])
    rows = format_rows(eph.at([T0 - 5, T0 + 10]))
    assert rows == {"ALT": ["", "1500"], "ILAT": ["", "70.5"], "MLT": ["", "0.0"]}
