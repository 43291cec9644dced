"""The reader: values, masking, laziness, layouts and bad files."""

from __future__ import annotations

import gzip
import pickle
import re
import shutil
from pathlib import Path

import cdflib
import cloudpickle
import dask
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

import fastspectro_dask.synth as synth
from fastspectro_dask import InvalidCDFError
from fastspectro_dask.errors import error_reason
from fastspectro_dask.io import BIG_VARIABLES, FastEsaBackendEntrypoint, load_esa, open_esa
from fastspectro_dask.synth import BAD_FILE_KINDS, FILL_FLOAT, _OrbitPlan, write_esa_file

from .conftest import RECORDS, SEED

FLOAT_BIG = [v for v in BIG_VARIABLES if v != "data"]
#: Real CDFs shipped in cdflib's source distribution (see the README there).
CDFLIB_FILES = Path(__file__).parent / "data" / "cdflib_testfiles"
FAST_MASTER = CDFLIB_FILES / "fa_esa_l2_eeb_00000000_v01.cdf"


def expected_from_raw(path: Path, name: str) -> np.ndarray:
    """Independent oracle: raw cdflib values, FILLVAL -> NaN, outside [:nbins, :nenergy] -> NaN."""
    cdf = cdflib.CDF(str(path))
    raw = np.asarray(cdf.varget(name)).astype(np.float32)
    fill = cdf.varattsget(name)["FILLVAL"]
    out = np.where(raw == np.float32(fill), np.nan, raw).astype(np.float32)
    nb, ne = cdf.varget("nbins"), cdf.varget("nenergy")
    for t in range(out.shape[0]):
        out[t, nb[t] :, :] = np.nan
        out[t, :, ne[t] :] = np.nan
    return out


class CountTasks(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def _posttask(self, key, result, dsk, state, id):
        self.n += 1


@pytest.mark.parametrize("name", BIG_VARIABLES)
def test_values_match_cdflib_with_fill_and_block_masked(ees_file, name):
    ds = open_esa(ees_file)
    got = ds[name].values
    assert ds[name].dims == ("time", "pitch_angle_bin", "energy_channel")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected_from_raw(ees_file, name))


@pytest.mark.parametrize("mask_runs", [0, 64])
def test_block_masking_by_runs_and_by_groups(monkeypatch, mask_runs):
    """Records beyond their ``[:nbins, :nenergy]`` block are NaN, masked run by run
    (slices) or, when the mode changes more often than ``_MASK_RUNS``, by groups."""
    import types

    import fastspectro_dask.io as fio

    monkeypatch.setattr(fio, "_MASK_RUNS", mask_runs)
    rng = np.random.default_rng(3)
    modes = np.array([[32, 48], [64, 96], [64, 48], [16, 96], [70, 100]])  # last: beyond
    pick = np.repeat(rng.integers(0, len(modes), 40), rng.integers(1, 6, 40))
    nb, ne = modes[pick, 0], modes[pick, 1]
    owner = types.SimpleNamespace(nbins=nb, nenergy=ne)
    out = np.ones((nb.size, 64, 96), np.float32)
    start = 7  # a read of records start.. : nbins and nenergy are indexed from there
    fio._RecordArray._mask_blocks(owner, out[start:], start, nb.size)
    want = np.ones_like(out)
    for t in range(start, nb.size):
        want[t, nb[t] :, :] = np.nan
        want[t, :, ne[t] :] = np.nan
    np.testing.assert_array_equal(out, want)


def test_values_equal_what_the_generator_wrote(synth_dataset, ees_file):
    orbit = int(ees_file.name.split("_")[-2])
    rec, _tables = _OrbitPlan(orbit, SEED, RECORDS).records_for("ees")
    ds = open_esa(ees_file)
    eflux = rec.arrays["eflux"]
    valid = eflux != FILL_FLOAT
    got = ds.eflux.values
    np.testing.assert_array_equal(got[valid], eflux[valid])
    assert np.isnan(got[~valid]).all()
    np.testing.assert_array_equal(ds.nbins.values, rec.nbins)
    np.testing.assert_array_equal(ds.mode_ind.values, rec.mode)
    centre = rec.grid.start + rec.grid.delta / 2
    np.testing.assert_allclose(ds.time_unix.values, centre)
    expected_time = (np.round(centre * 1e9).astype("int64")).view("datetime64[ns]")
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(ds.time.values, expected_time)
    # data: 0 outside the block in the file, NaN here; counts kept inside
    data = ds.data.values
    np.testing.assert_array_equal(data[valid], rec.arrays["data"][valid].astype(np.float32))
    assert np.isnan(data[~valid]).all()


def test_mode_change_inside_one_orbit(ees_file):
    ds = open_esa(ees_file).compute()
    modes = np.unique(ds.mode_ind.values)
    assert len(modes) >= 2, "the fixture file must change mode"
    n_valid = np.isfinite(ds.energy_full.values).sum(axis=(1, 2))
    np.testing.assert_array_equal(n_valid, ds.nbins.values.astype(int) * ds.nenergy.values)
    table = ds.energy.values  # (mode, table angle, energy)
    for t in range(ds.sizes["time"]):
        m = int(ds.mode_ind.values[t])
        nb, ne = int(ds.nbins.values[t]), int(ds.nenergy.values[t])
        np.testing.assert_array_equal(ds.energy_full.values[t, :nb, :ne], table[m, :nb, :ne])
    # energies change between modes: 96 channels in mode 2, 48 otherwise
    assert set(np.unique(ds.nenergy.values)) <= {48, 96}
    assert {int(MODES_NENERGY[m]) for m in modes} == set(np.unique(ds.nenergy.values))


MODES_NENERGY = {0: 48, 1: 48, 2: 96}


def test_burst_mode_change_and_burst_shape(good_files):
    ieb = next(d["ieb"] for d in good_files.values() if "ieb" in d and _has_modes(d["ieb"]))
    ds = open_esa(ieb)
    assert ds.attrs["instrument"] == "ieb"
    assert set(np.unique(ds.nbins.values)) == {32}
    assert np.isnan(ds.eflux.values[:, 32:, :]).all()


def _has_modes(path: Path) -> bool:
    return len(np.unique(cdflib.CDF(str(path)).varget("mode_ind"))) > 1


def test_attributes_and_metadata(ees_file):
    ds = open_esa(ees_file)
    assert ds.eflux.attrs["UNITS"] == "eV/(cm^2-s-sr-eV)"
    assert ds.eflux.attrs["FILLVAL"] == pytest.approx(-1e31, rel=1e-6)
    assert ds.data.attrs["UNITS"] == "Counts"
    assert ds.attrs["instrument"] == "ees"
    assert ds.attrs["orbit"] == int(ees_file.name.split("_")[-2])
    assert ds.attrs["charge"] == -1
    assert ds.attrs["Logical_source"] == "fa_esa_l2_ees"
    assert ds.attrs["source"] == str(ees_file)
    # zero-record virtual variables are left out, not an error
    assert "eflux_movie" not in ds and "energy_median" not in ds


def test_opening_computes_nothing(ees_file, monkeypatch):
    read = _spy_varget(monkeypatch)
    with CountTasks() as counter:
        ds = open_esa(ees_file)
    assert counter.n == 0
    assert not set(read) & set(BIG_VARIABLES), read
    assert set(read) <= {
        "time_unix",
        "nbins",
        "nenergy",
        "valid",
        "mass",
        "charge",
        "dead",
        "orbit_start",
        "num_dists",
    }
    assert all(isinstance(ds[v].data, dask.array.Array) for v in BIG_VARIABLES)
    assert ds.eflux.data.numblocks == (1, 1, 1)  # one chunk per file by default
    with CountTasks() as counter:
        ds.eflux.sum().compute(scheduler="synchronous")
    assert counter.n > 0
    assert "eflux" in read


def test_xarray_engine_and_lazy_indexing(ees_file):
    ds = xr.open_dataset(ees_file, engine="fastesa", chunks={})
    ref = open_esa(ees_file)
    assert isinstance(ds.eflux.data, dask.array.Array)
    xr.testing.assert_identical(ds.eflux.compute(), ref.eflux.compute())
    lazy = xr.open_dataset(ees_file, engine="fastesa")  # no dask: lazily indexed
    part = lazy.eflux.isel(time=slice(5, 17, 3), pitch_angle_bin=2).values
    np.testing.assert_array_equal(part, ref.eflux.values[5:17:3, 2])
    np.testing.assert_array_equal(lazy.data.isel(time=-1).values, ref.data.values[-1])
    assert FastEsaBackendEntrypoint().guess_can_open(ees_file)
    assert not FastEsaBackendEntrypoint().guess_can_open("notes.cdf")


def test_chunks_split_records(ees_file):
    ds = open_esa(ees_file, chunks={"time": 7})
    assert ds.eflux.data.numblocks[0] == -(-ds.sizes["time"] // 7)
    np.testing.assert_array_equal(ds.eflux.values, open_esa(ees_file).eflux.values)


def test_variables_selection(ees_file):
    ds = open_esa(ees_file, variables=["eflux"])
    assert set(ds.data_vars) == {"eflux", "time_unix", "nbins", "nenergy"}
    ds = open_esa(ees_file, drop_variables=["data", "header_bytes"])
    assert "data" not in ds and "eflux" in ds


def test_graph_pickles_for_distributed(ees_file):
    ds = open_esa(ees_file)
    arr = pickle.loads(cloudpickle.dumps(ds.eflux.data))
    np.testing.assert_array_equal(arr.compute(), ds.eflux.values)


def test_istp_depends_and_uncompressed_read_the_same(tmp_path, ees_file):
    orbit = int(ees_file.name.split("_")[-2])
    ref = open_esa(ees_file)
    for kw in ({"istp_depends": True}, {"compress": False}):
        out = tmp_path / next(iter(kw))
        path = write_esa_file(out, "ees", orbit, records=RECORDS, seed=SEED, **kw)
        ds = open_esa(path)
        attrs = cdflib.CDF(str(path)).varattsget("eflux")
        if "istp_depends" in kw:
            assert attrs["DEPEND_1"] == "pitch_angle_bin"
        else:
            assert cdflib.CDF(str(path)).varinq("eflux").Compress == 0
        for v in BIG_VARIABLES:
            np.testing.assert_array_equal(ds[v].values, ref[v].values)


def test_energy_major_records_are_transposed(tmp_path, ees_file):
    """A file storing records as (energy, angle) reads into the same (angle, energy) view."""
    orbit = int(ees_file.name.split("_")[-2])
    plan = _OrbitPlan(orbit, SEED, RECORDS)
    rec, _ = plan.records_for("ees")
    overrides = {v: np.ascontiguousarray(rec.arrays[v].transpose(0, 2, 1)) for v in BIG_VARIABLES}
    path = plan.write(
        tmp_path, "ees", overrides=overrides, dims_override={v: [96, 64] for v in BIG_VARIABLES}
    )
    assert cdflib.CDF(str(path)).varinq("eflux").Dim_Sizes == [96, 64]
    ds, ref = open_esa(path), open_esa(ees_file)
    for v in BIG_VARIABLES:
        np.testing.assert_array_equal(ds[v].values, ref[v].values)


def test_old_cdflib_raising_on_zero_record_variables(ees_file, monkeypatch):
    """cdflib <= 1.3.12 raises on zero-record variables: the reader never reads them."""
    original = cdflib.CDF.varget

    def old_varget(self, variable=None, *args, **kwargs):
        if self.varinq(variable).Last_Rec < 0:
            raise ValueError(f"No records found for variable {variable}")
        return original(self, variable, *args, **kwargs)

    monkeypatch.setattr(cdflib.CDF, "varget", old_varget)
    ds = open_esa(ees_file).compute()
    assert ds.sizes["time"] > 0


def test_overflow_byte_is_kept_fill_byte_is_nan(tmp_path, ees_file):
    orbit = int(ees_file.name.split("_")[-2])
    plan = _OrbitPlan(orbit, SEED, RECORDS)
    rec, _ = plan.records_for("ees")
    data = rec.arrays["data"].copy()
    data[0, 0, 0] = 255  # record 0 flagged overflow: a saturated count
    data[1, 0, 0] = 255  # record 1 not flagged: fill
    dq = rec.data_quality.copy()
    dq[0] |= 2
    dq[1] &= ~np.uint8(2)
    path = plan.write(tmp_path, "ees", overrides={"data": data, "data_quality": dq})
    got = open_esa(path).data.values
    assert got[0, 0, 0] == 255.0
    assert np.isnan(got[1, 0, 0])


def test_counts_decoded_while_reading_equal_decoded_codes(tmp_path, ees_file):
    """The reduction's read (uint8 codes -> counts in one table gather) keeps every rule
    of the float codes: fill 255 is NaN, an overflow 255 a saturated count, the rest of
    the valid block decoded, outside it NaN."""
    from fastspectro_dask.compression import decode_counts
    from fastspectro_dask.io import _build_dataset

    orbit = int(ees_file.name.split("_")[-2])
    plan = _OrbitPlan(orbit, SEED, RECORDS)
    rec, _ = plan.records_for("ees")
    data = rec.arrays["data"].copy()
    data[0, 0, 0] = data[1, 0, 0] = 255
    dq = rec.data_quality.copy()
    dq[0] |= 2
    dq[1] &= ~np.uint8(2)
    valid = np.ones(data.shape[0], np.uint8)
    valid[2] = 0
    path = plan.write(tmp_path, "ees", overrides={"data": data, "data_quality": dq, "valid": valid})
    got = _build_dataset(path, ["data"], None, eager=True, counts=True)["data"].values
    codes = load_esa(path, variables=["data"])["data"].values
    want = decode_counts(codes, burst=False)
    assert got.dtype == want.dtype == np.float32
    assert got.tobytes() == want.tobytes()
    assert got[0, 0, 0] == decode_counts(np.uint8(255), burst=False)
    assert np.isnan(got[1, 0, 0])


@pytest.mark.parametrize("kind", [k for k, v in BAD_FILE_KINDS.items() if v == "invalid-cdf"])
def test_bad_files_raise_invalid_cdf_naming_the_file(synth_dataset, kind):
    path = Path(synth_dataset.bad_files[kind]["path"])
    with pytest.raises(InvalidCDFError) as info:
        open_esa(path).compute()
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    # picklable, so that the error survives the trip back from a Dask worker
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, InvalidCDFError) and str(again) == str(info.value)


def test_bad_file_messages_name_the_cause(synth_dataset):
    causes = {
        "empty": "empty file",
        "html": "HTML",
        "truncated": "truncated",
        "truncated-header": "truncated",
        "missing-variable": "missing required variable(s) data, eflux",
        "wrong-shape": "shape",
        "wrong-rank": "rank",
        "inconsistent-records": "inconsistent record counts",
    }
    for kind, text in causes.items():
        with pytest.raises(InvalidCDFError, match=re.escape(text)):
            open_esa(synth_dataset.bad_files[kind]["path"]).compute()


def test_all_fill_file_is_valid_and_all_nan(synth_dataset):
    ds = open_esa(synth_dataset.bad_files["all-fill"]["path"])
    assert ds.sizes["time"] > 1
    assert np.isnan(ds.eflux.values).all()
    assert np.isnan(ds.data.values).all()


def test_single_record_file(synth_dataset):
    ds = open_esa(synth_dataset.bad_files["single-record"]["path"])
    assert ds.sizes["time"] == 1
    assert np.isfinite(ds.eflux.values).any()


def test_corrupt_compressed_block_raises_at_compute(tmp_path, ees_file):
    """Damage inside a compressed variable is found while decoding, as InvalidCDFError."""
    raw = bytearray(ees_file.read_bytes())
    cdf = cdflib.CDF(str(ees_file))
    del cdf
    mid = len(raw) // 2
    raw[mid : mid + 4096] = bytes(4096)
    path = tmp_path / ees_file.name
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidCDFError, match=str(path.name)):
        open_esa(path).compute(scheduler="synchronous")


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_esa(tmp_path / "fa_esa_l2_ees_20000101000000_01000_v02.cdf")


# --------------------------------------------------------------------------- real CDF variants


class _WholeFileCompressedWriter(synth.CDFWriter):
    """cdflib's writer with the ``Compressed`` spec option: the whole file is GZIP-6."""

    def __init__(self, path, cdf_spec=None, delete=False):
        super().__init__(path, cdf_spec={**(cdf_spec or {}), "Compressed": 6}, delete=delete)


def _write_whole_file_compressed(root: Path, monkeypatch, **kw) -> Path:
    with monkeypatch.context() as m:
        m.setattr(synth, "CDFWriter", _WholeFileCompressedWriter)
        return write_esa_file(root, "ees", 1000, records=20, seed=SEED, **kw)


@pytest.mark.parametrize("compress_variables", [False, True])
def test_whole_file_compressed_cdf_reads_like_the_plain_file(
    tmp_path, monkeypatch, compress_variables
):
    plain = write_esa_file(
        tmp_path / "plain", "ees", 1000, records=20, seed=SEED, compress=compress_variables
    )
    whole = _write_whole_file_compressed(
        tmp_path / "whole", monkeypatch, compress=compress_variables
    )
    assert whole.read_bytes()[:8] == bytes.fromhex("cdf30001cccc0001")
    assert plain.read_bytes()[:8] == bytes.fromhex("cdf300010000ffff")
    assert cdflib.CDF(str(whole)).cdf_info().Compressed
    ds, ref = open_esa(whole).compute(), open_esa(plain).compute()
    assert set(ds.variables) == set(ref.variables) and ds.sizes["time"] > 1
    xr.testing.assert_equal(ds, ref)  # values, dims, coords; NaN == NaN
    for v in ref.data_vars:
        assert ds[v].attrs == ref[v].attrs, v
    assert ds.attrs["n_records"] == ref.attrs["n_records"]


def test_truncated_whole_file_compressed_cdf_is_truncated(tmp_path, monkeypatch):
    whole = _write_whole_file_compressed(tmp_path, monkeypatch, compress=False)
    cut = tmp_path / ("cut_" + whole.name)
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InvalidCDFError, match="truncated: a whole-file-compressed CDF") as info:
        open_esa(cut)
    assert info.value.path == str(cut)


def test_gzip_file_named_cdf_says_gunzip(tmp_path, ees_file):
    path = tmp_path / ees_file.name
    path.write_bytes(gzip.compress(ees_file.read_bytes()[:4096]))
    with pytest.raises(InvalidCDFError) as info:
        open_esa(path)
    assert (
        str(info.value) == f"{path}: not a plain CDF file: it is gzip-compressed (gunzip it first)"
    )
    assert error_reason(info.value) == "invalid-cdf"


def test_time_beyond_datetime64_ns_is_invalid(tmp_path, ees_file):
    orbit = int(ees_file.name.split("_")[-2])
    plan = _OrbitPlan(orbit, SEED, RECORDS)
    rec, _ = plan.records_for("ees")
    late = rec.grid.start + rec.grid.delta / 2
    late[-1] = 253402300799.0  # 9999-12-31T23:59:59
    path = plan.write(tmp_path, "ees", overrides={"time_unix": late})
    with pytest.raises(InvalidCDFError, match=r"outside 1677-2262 .*beyond datetime64\[ns\]"):
        open_esa(path)


def test_cdaweb_fast_master_is_no_records(tmp_path):
    """The real CDAWeb master of FAST ESA L2 eeb: whole-file RLE-compressed, 0 records."""
    assert FAST_MASTER.read_bytes()[:8] == bytes.fromhex("cdf30001cccc0001")
    master = cdflib.CDF(str(FAST_MASTER))
    assert master.varinq("time_unix").Last_Rec == -1
    # the same file decompressed (cdflib inflates it into a temporary plain CDF)
    plain = tmp_path / FAST_MASTER.name
    shutil.copyfile(master.temp_file, plain)
    del master
    assert plain.read_bytes()[:8] == bytes.fromhex("cdf300010000ffff")
    for path in (FAST_MASTER, plain):
        with pytest.raises(InvalidCDFError) as info:
            open_esa(path)
        assert info.value.path == str(path)
        assert str(info.value).startswith(f"{path}: no records")
        assert "truncated" not in str(info.value)
        assert error_reason(info.value) == "invalid-cdf"


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("de2_ion2s_rpa_19830213_v01.cdf", "de2_ion2s_rpa"),  # CDF 2.7
        ("psp_fld_l2_mag_rtn_1min_20200104_v02.cdf", "psp_fld_l2_mag_RTN_1min"),  # CDF 3.7
    ],
)
def test_foreign_mission_cdf_is_invalid_naming_what_is_missing(name, source):
    path = CDFLIB_FILES / name
    cdflib.CDF(str(path))  # a valid CDF, only not FAST ESA
    with pytest.raises(InvalidCDFError) as info:
        open_esa(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(
        f"{path}: not a FAST ESA L2 file (Logical_source {source!r}): "
        "missing required variable(s) time_unix, nbins, nenergy, data, eflux"
    )
    assert "\n" not in str(info.value)
    assert error_reason(info.value) == "invalid-cdf"
    with pytest.raises(InvalidCDFError, match="not a FAST ESA L2 file"):
        xr.open_dataset(path, engine=FastEsaBackendEntrypoint)


def _spy_varget(monkeypatch) -> list[str]:
    """The names of the variables read (every read goes through io._read)."""
    import fastspectro_dask.io as fio

    read: list[str] = []
    original = fio._read

    def spy(cdf, path, name, **kwargs):
        read.append(name)
        return original(cdf, path, name, **kwargs)

    monkeypatch.setattr(fio, "_read", spy)
    return read


def test_load_esa_is_numpy_and_equals_the_lazy_dataset(ees_file, monkeypatch):
    wanted = ["data", "eflux", "pitch_angle", "domega", "energy_full", "time_delta"]
    want = open_esa(ees_file, variables=wanted).compute(scheduler="synchronous")
    read = _spy_varget(monkeypatch)
    with CountTasks() as counter:
        got = load_esa(ees_file, variables=wanted)
    assert counter.n == 0  # no dask graph at all
    assert all(isinstance(v.data, np.ndarray) for v in got.variables.values())
    xr.testing.assert_identical(got, want)
    # every variable decoded once: the small ones read at open time are reused
    repeated = {v for v in read if read.count(v) > 1}
    assert not repeated, read
    assert set(wanted) <= set(read)


def test_load_esa_keeps_overflow_rule_and_reads_data_quality_once(tmp_path, ees_file, monkeypatch):
    read = _spy_varget(monkeypatch)
    ds = load_esa(ees_file, variables=["data"])
    assert read.count("data") == 1 and read.count("data_quality") <= 1
    np.testing.assert_array_equal(
        ds.data.values, open_esa(ees_file, variables=["data"]).data.values
    )


def test_handles_live_in_xarrays_file_cache_and_pickle(ees_file):
    from xarray.backends.file_manager import FILE_CACHE

    from fastspectro_dask.io import _CdfFile

    ds = open_esa(ees_file, variables=["eflux"])
    ds.eflux.sum().compute(scheduler="synchronous")
    ours = [k for k in FILE_CACHE.keys() if _CdfFile in tuple(k)]
    assert ours  # the handle is in xarray's LRU file cache, not a private one
    # the graph (with its file manager and lock) pickles and decodes in a fresh handle
    again = cloudpickle.loads(cloudpickle.dumps(ds))
    np.testing.assert_array_equal(again.eflux.values, ds.eflux.values)


def test_load_esa_closes_its_handle(ees_file):
    from xarray.backends.file_manager import FILE_CACHE

    before = set(FILE_CACHE.keys()) if hasattr(FILE_CACHE, "keys") else set()
    load_esa(ees_file, variables=["eflux"])
    after = set(FILE_CACHE.keys()) if hasattr(FILE_CACHE, "keys") else set()
    assert not (after - before)  # nothing left open


def test_threads_reading_one_file_agree(ees_file):
    ds = open_esa(ees_file, variables=list(BIG_VARIABLES))
    got = ds.compute(scheduler="threads")
    want = load_esa(ees_file, variables=list(BIG_VARIABLES))
    xr.testing.assert_identical(got, want)


@pytest.mark.parametrize("counts", [False, True])
def test_read_by_runs_equals_convert_then_mask(tmp_path, ees_file, monkeypatch, counts):
    """The read that converts inside each run's valid block only (fill -> NaN, counts
    decoded) gives the bits of converting everything and then masking (the path taken
    when the mode changes more often than ``_MASK_RUNS``), fills and overflows included,
    in the same memory layout."""
    import fastspectro_dask.io as fio

    orbit = int(ees_file.name.split("_")[-2])
    plan = _OrbitPlan(orbit, SEED, RECORDS)
    rec, _ = plan.records_for("ees")
    data = rec.arrays["data"].copy()
    data[0, 0, 0] = data[1, 0, 0] = data[3, 2, 5] = 255
    data[4] = 255
    dq = rec.data_quality.copy()
    dq[0] |= 2
    dq[4] |= 2
    dq[1] &= ~np.uint8(2)
    eflux = rec.arrays["eflux"].copy()
    eflux[5, 1, 1] = FILL_FLOAT  # a fill inside the valid block
    valid = np.ones(data.shape[0], np.uint8)
    valid[2] = 0
    overrides = {"data": data, "data_quality": dq, "valid": valid, "eflux": eflux}
    paths = {"plain": plan.write(tmp_path / "plain", "ees", overrides=overrides)}
    big = {"pitch_angle": rec.arrays["pitch_angle"], "domega": rec.arrays["domega"]}
    big.update(data=data, eflux=eflux)
    transposed = {
        **overrides,
        **{v: np.ascontiguousarray(a.transpose(0, 2, 1)) for v, a in big.items()},
    }
    paths["transposed"] = plan.write(
        tmp_path / "tr",
        "ees",
        overrides=transposed,
        dims_override={v: [96, 64] for v in ("data", "eflux", "pitch_angle", "domega")},
    )
    names = ["data", "eflux", "pitch_angle", "domega"]
    for path in paths.values():
        by_runs = fio._build_dataset(path, names, None, eager=True, counts=counts)
        with monkeypatch.context() as m:
            m.setattr(fio, "_MASK_RUNS", 0)  # every record its own group: convert, then mask
            whole = fio._build_dataset(path, names, None, eager=True, counts=counts)
        for v in names:
            got, want = by_runs[v].values, whole[v].values
            assert got.dtype == want.dtype and got.strides == want.strides, v
            assert got.tobytes() == want.tobytes(), v
        assert np.isnan(by_runs["eflux"].values[5, 1, 1])
        assert by_runs["data"].values[4, 0, 0] == (
            fio.count_midpoints(burst=False)[255] if counts else 255.0
        )


def test_attributes_read_by_number_are_those_read_by_name(ees_file):
    """FILLVAL and UNITS are read by variable number (no walk of the variable chain):
    the same entries as cdflib's attget by name, absent ones None."""
    from fastspectro_dask.io import _FileInfo, _plain

    info = _FileInfo(ees_file, ["data", "eflux"])
    cdf = cdflib.CDF(str(ees_file))
    checked = 0
    for name in cdf.cdf_info().zVariables:
        for attribute in ("FILLVAL", "UNITS", "DEPEND_1", "LABLAXIS"):
            try:
                want = _plain(cdf.attget(attribute, name).Data)
            except Exception:
                want = None
            assert repr(info.attr(name, attribute)) == repr(want), (name, attribute)
            checked += want is not None
    assert checked > 50
    info.source.close()


def _same_as_varget(cdf: cdflib.CDF, name: str, got: np.ndarray, **kw) -> None:
    want = cdf.varget(name, **kw)
    assert type(got) is type(want) and got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes() and got.flags.writeable == want.flags.writeable


@pytest.mark.parametrize("compress", [True, False])
def test_block_read_is_cdflibs_varget(tmp_path, compress):
    """io reads value blocks itself (GZIP inflated into one buffer): the array cdflib's
    varget gives (values, dtype, shape, writeability), whole and for record ranges, for
    compressed and plain blocks; the big variables never go back to cdflib."""
    from fastspectro_dask.io import _open_cdf, _varget_blocks

    path = write_esa_file(tmp_path, "ees", 1000, records=300, seed=SEED, compress=compress)
    cdf, ref = _open_cdf(path), cdflib.CDF(str(path))
    rng = np.random.default_rng(0)
    direct = set()
    for name in ref.cdf_info().zVariables:
        inq = ref.varinq(name)
        ranges = [{}]
        if inq.Rec_Vary and inq.Last_Rec > 0:
            for _ in range(4):
                a, b = sorted(int(v) for v in rng.integers(0, inq.Last_Rec + 1, 2))
                ranges.append({"startrec": a, "endrec": b})
            ranges.append({"startrec": inq.Last_Rec, "endrec": inq.Last_Rec})
        for kw in ranges:
            got = _varget_blocks(cdf, name, **kw)
            if got is not None:
                _same_as_varget(ref, name, got, **kw)
                direct.add(name)
    assert set(BIG_VARIABLES) | {"time_unix", "nbins", "valid"} <= direct
    assert ref.varinq("data").Block_Factor < 300  # several blocks were joined


def test_block_read_leaves_the_unusual_to_cdflib(tmp_path, ees_file, monkeypatch):
    """A damaged block, or blocks that do not join up, are read by cdflib: its result and
    its error, word for word."""
    from fastspectro_dask.io import _open_cdf, _read, _varget_blocks

    cdf = _open_cdf(ees_file)
    offsets, first, last = cdf._read_vxrs(
        cdf.vdr_info("eflux").head_vxr, vvr_offsets=[], vvr_start=[], vvr_end=[]
    )
    assert len(offsets) > 1
    gap = ([*offsets], [first[0], *(s + 1 for s in first[1:])], [*last])
    monkeypatch.setattr(cdf, "_read_vxrs", lambda *a, **k: gap)
    assert _varget_blocks(cdf, "eflux") is None

    raw = bytearray(ees_file.read_bytes())
    mid = offsets[len(offsets) // 2] + 64  # inside one of eflux's compressed blocks
    raw[mid : mid + 256] = bytes(256)
    path = tmp_path / ees_file.name
    path.write_bytes(bytes(raw))
    cdf = _open_cdf(path)
    assert _varget_blocks(cdf, "eflux") is None
    with pytest.raises(Exception) as want:
        cdflib.CDF(str(path)).varget("eflux")
    with pytest.raises(InvalidCDFError) as got:
        _read(cdf, path, "eflux")
    assert f"({type(want.value).__name__}: {want.value})" in str(got.value)


def test_descriptors_read_once_and_the_reader_freed(ees_file, monkeypatch):
    """Each variable descriptor is read once per open file, and the open reader is
    still freed as soon as it is dropped (no reference cycle)."""
    import gc
    import weakref

    from fastspectro_dask.io import _open_cdf

    reads: list[tuple[int, int]] = []
    original = cdflib.CDF._read_vdr

    def spy(self, byte_loc):
        reads.append((id(self), byte_loc))
        return original(self, byte_loc)

    monkeypatch.setattr(cdflib.CDF, "_read_vdr", spy)
    cdf, plain = _open_cdf(ees_file), cdflib.CDF(str(ees_file))
    for _ in range(3):
        for name in ("data", "eflux", "time_unix"):
            assert cdf.varinq(name) == plain.varinq(name)
            np.testing.assert_array_equal(cdf.varget(name), plain.varget(name))
    mine = [loc for who, loc in reads if who == id(cdf)]
    theirs = [loc for who, loc in reads if who == id(plain)]
    assert sorted(mine) == sorted(set(theirs)) and len(theirs) == 6 * len(mine)
    gc.disable()
    try:
        ref = weakref.ref(cdf)
        del cdf
        assert ref() is None
    finally:
        gc.enable()
