"""The synthetic generator imitates real FAST ESA L2 files."""

from __future__ import annotations

from datetime import datetime, timezone

import cdflib
import numpy as np
import pytest

from fastspectro_dask.discovery import discover, parse_esa_filename
from fastspectro_dask.synth import (
    BAD_FILE_KINDS,
    orbit_period_seconds,
    orbit_start_unix,
    write_esa_file,
    write_synthetic_dataset,
)

from .conftest import RECORDS, SEED


def cdf(path):
    return cdflib.CDF(str(path))


def test_real_format_variables_types_and_attributes(ees_file):
    c = cdf(ees_file)
    info = c.cdf_info()
    assert info.Majority == "Row_major"
    names = set(info.zVariables)
    assert len(names) == 61
    for v in (
        "epoch",
        "time_unix",
        "data",
        "eflux",
        "pitch_angle",
        "domega",
        "energy_full",
        "denergy_full",
        "nbins",
        "nenergy",
        "mode_ind",
        "energy",
        "eflux_movie",
    ):
        assert v in names
    assert c.varinq("epoch").Data_Type_Description == "CDF_EPOCH"
    assert c.varinq("eflux").Data_Type_Description == "CDF_FLOAT"
    assert c.varinq("data").Data_Type_Description == "CDF_UINT1"
    assert c.varinq("time_unix").Data_Type_Description == "CDF_DOUBLE"
    assert c.varinq("eflux").Dim_Sizes == [64, 96]
    # GZIP on every non-epoch record-varying variable, not on epoch
    assert c.varinq("eflux").Compress == 6 and c.varinq("epoch").Compress == 0
    assert c.varinq("eflux").Block_Factor == 1_024_000 // (64 * 96 * 4)
    attrs = c.varattsget("eflux")
    assert attrs["DEPEND_0"] == "epoch"
    assert (attrs["DEPEND_1"], attrs["DEPEND_2"]) == ("energy_channel", "pitch_angle_bin")
    assert attrs["UNITS"] == "eV/(cm^2-s-sr-eV)"
    assert float(attrs["FILLVAL"]) == pytest.approx(-1e31, rel=1e-6)
    assert c.varattsget("data")["FILLVAL"] == 255
    assert c.varinq("eflux_movie").Last_Rec == -1  # zero-record virtual variable
    g = c.globalattsget()
    assert g["Logical_source"] == ["fa_esa_l2_ees"]
    assert g["Logical_file_id"] == [ees_file.name]
    # epoch (CDF_EPOCH) and time_unix agree
    epoch_unix = cdflib.cdfepoch.unixtime(c.varget("epoch"))
    np.testing.assert_allclose(epoch_unix, c.varget("time_unix"), atol=1e-3)


def test_fill_outside_valid_block(ees_file):
    c = cdf(ees_file)
    eflux, data = c.varget("eflux"), c.varget("data")
    nb, ne = c.varget("nbins"), c.varget("nenergy")
    for t in range(len(nb)):
        assert (eflux[t, nb[t] :, :] == np.float32(-1e31)).all()
        assert (eflux[t, :, ne[t] :] == np.float32(-1e31)).all()
        assert (data[t, nb[t] :, :] == 0).all()
        block = eflux[t, : nb[t], : ne[t]]
        assert (block >= 0).all()


def test_physics_plausible(good_files):
    for files in good_files.values():
        for inst, path in files.items():
            c = cdf(path)
            energy = c.varget("energy_full")
            e = energy[energy > 0]
            electron = inst.startswith("e")
            lo, hi = (4.0, 30000.0) if electron else (3.0, 25000.0)
            # the retrace step (channel 0) is unreliable; the sweep itself spans the range
            sweep = energy[:, :, 1:][energy[:, :, 1:] > 0]
            assert sweep.min() == pytest.approx(lo, rel=0.05)
            assert sweep.max() <= hi * 1.05 and sweep.max() >= hi * 0.7
            assert e.min() > 0
            eflux = c.varget("eflux")
            valid = eflux[eflux > -1e30]
            assert (valid == 0).mean() > 0.02, "Poisson zeros expected"
            assert valid.max() <= 1e10
            assert np.percentile(valid[valid > 0], 99) > 1e5
            # pitch angles in [0, 360)
            pa = c.varget("pitch_angle")
            pa = pa[pa > -1e30]
            assert pa.min() >= 0 and pa.max() < 360


def test_modes_gaps_and_bursts(good_files):
    survey_modes, burst_modes = set(), set()
    for files in good_files.values():
        t = cdf(files["ees"]).varget("time_unix")
        assert np.all(np.diff(t) > 0)
        assert np.diff(t).max() > 300, "passes are separated by data gaps"
        survey_modes |= set(np.unique(cdf(files["ees"]).varget("mode_ind")).tolist())
        if "eeb" in files:
            tb = cdf(files["eeb"]).varget("time_unix")
            assert np.median(np.diff(tb)) == pytest.approx(0.156, rel=0.01)
            assert tb[-1] - tb[0] < t[-1] - t[0], "bursts are shorter than the orbit"
            burst_modes |= set(np.unique(cdf(files["ieb"]).varget("mode_ind")).tolist())
    assert survey_modes == {0, 1, 2}
    assert burst_modes == {0, 2}


def test_quiet_and_storm_orbits_differ(tmp_path):
    quiet = write_esa_file(tmp_path / "q", "ees", 13700, records=60, seed=1, activity=1.0)
    storm = write_esa_file(tmp_path / "s", "ees", 13700, records=60, seed=1, activity=50.0)
    q, s = cdf(quiet).varget("eflux"), cdf(storm).varget("eflux")
    ratio = np.nansum(np.where(s > 0, s, 0)) / np.nansum(np.where(q > 0, q, 0))
    assert 5 < ratio < 100


def test_deterministic_for_a_seed(tmp_path):
    a = write_esa_file(tmp_path / "a", "ies", 20000, records=40, seed=7)
    b = write_esa_file(tmp_path / "b", "ies", 20000, records=40, seed=7)
    c = write_esa_file(tmp_path / "c", "ies", 20000, records=40, seed=8)
    assert a.name == b.name
    ca, cb = cdf(a), cdf(b)
    names = ca.cdf_info().zVariables
    assert names == cb.cdf_info().zVariables
    for v in names:  # (bytes differ only by the gzip header's time stamp)
        if ca.varinq(v).Last_Rec >= 0:
            np.testing.assert_array_equal(np.asarray(ca.varget(v)), np.asarray(cb.varget(v)))
    assert not np.array_equal(cdf(a).varget("eflux"), cdf(c).varget("eflux"))


def test_names_layout_and_orbit_spacing(synth_dataset):
    for orbit, files in synth_dataset.files.items():
        for inst, path in files.items():
            parsed = parse_esa_filename(path)
            assert parsed is not None and parsed.orbit == orbit and parsed.instrument == inst
            assert path.parent.name == f"{parsed.start:%m}"
            assert path.parent.parent.name == f"{parsed.start:%Y}"
    period = orbit_period_seconds(13616)
    assert 130 * 60 < period < 134 * 60
    start = datetime.fromtimestamp(orbit_start_unix(13616), tz=timezone.utc)
    assert (start.year, start.month) == (2000, 1)


def test_discovery_sees_the_dataset(synth_dataset):
    index = discover(synth_dataset.root)
    assert set(index) == set(synth_dataset.files)
    assert set(index.orbit_files) == {13616, 13617, 13618}
    assert not index.unrecognized
    assert len(index.duplicates) == 1  # the v01 duplicate is superseded by v02
    dup = synth_dataset.bad_files["duplicate-v01"]
    assert index[dup["orbit"]]["ees"] != dup["path"]


def test_bad_file_corpus_is_complete(synth_dataset):
    assert set(BAD_FILE_KINDS) <= set(synth_dataset.bad_files)
    sizes = {k: v["path"].stat().st_size for k, v in synth_dataset.bad_files.items()}
    assert sizes["empty"] == 0
    assert synth_dataset.bad_files["html"]["path"].read_bytes().startswith(b"<!DOCTYPE html>")
    assert sizes["truncated-header"] == 300


def test_layouts(tmp_path):
    for layout in ("flat", "spdf"):
        man = write_synthetic_dataset(
            tmp_path / layout, orbits=1, records=12, seed=SEED, layout=layout, instruments=("ees",)
        )
        path = man.files[13616]["ees"]
        rel = path.relative_to(tmp_path / layout)
        assert len(rel.parts) == (1 if layout == "flat" else 4)


def test_records_parameter(tmp_path):
    path = write_esa_file(tmp_path, "ees", 13616, records=RECORDS, seed=SEED)
    n = len(cdf(path).varget("time_unix"))
    assert abs(n - RECORDS) <= 2
