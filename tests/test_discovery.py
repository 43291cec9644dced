"""Tests for fastspectro_dask.discovery (file-name parsing and the orbit index)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastspectro_dask.discovery import (
    INSTRUMENTS,
    MAX_ORBIT,
    EsaFileName,
    OrbitIndex,
    SkippedFile,
    discover,
    parse_esa_filename,
    parse_orb_filename,
)

UTC = timezone.utc
LOGGER = "fastspectro_dask.discovery"


def esa_name(inst: str, start: datetime, orbit: int, version: int = 2, ext: str = "cdf") -> str:
    stamp = (
        f"{start.year:04d}{start.month:02d}{start.day:02d}"
        f"{start.hour:02d}{start.minute:02d}{start.second:02d}"
    )
    return f"fa_esa_l2_{inst}_{stamp}_{orbit:05d}_v{version:02d}.{ext}"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


# A small data set: (orbit, start of first instrument, instruments present).
ORBITS = [
    (999, datetime(1996, 11, 20, 3, 4, 5, tzinfo=UTC), INSTRUMENTS),
    (13616, datetime(2000, 1, 31, 23, 59, 50, tzinfo=UTC), ("ees", "ies")),
    (13617, datetime(2000, 2, 1, 2, 10, 0, tzinfo=UTC), INSTRUMENTS),
    (51314, datetime(2009, 4, 30, 12, 0, 0, tzinfo=UTC), ("eeb",)),
]


def dataset_names() -> list[tuple[str, datetime, str]]:
    """(instrument, start, file name) for the data set; starts differ by a few seconds."""
    out = []
    for orbit, t0, insts in ORBITS:
        for k, inst in enumerate(insts):
            start = t0 + timedelta(seconds=3 * k)
            out.append((inst, start, esa_name(inst, start, orbit)))
        out.append(("orb", t0, f"fa_k0_orb_{orbit:05d}_v01.cdf"))
    return out


def build(root: Path, layout: str) -> Path:
    for inst, start, name in dataset_names():
        if layout == "nested":
            sub = root / f"{start:%Y}" / f"{start:%m}"
        elif layout == "spdf":
            sub = root / inst / f"{start:%Y}" / f"{start:%m}"
        elif layout == "flat":
            sub = root
        elif layout == "deep":
            sub = root / "a" / "b" / "c" / inst / f"{start:%Y}"
        else:
            raise AssertionError(layout)
        touch(sub / name)
    return root


def as_names(index: OrbitIndex) -> dict[int, dict[str, str]]:
    return {orbit: {inst: p.name for inst, p in files.items()} for orbit, files in index.items()}


# --------------------------------------------------------------------------- parsing


def test_parse_esa_filename_fields():
    p = Path("/data/2000/01/fa_esa_l2_ies_20000131235950_13616_v02.cdf")
    parsed = parse_esa_filename(p)
    assert parsed == EsaFileName("ies", datetime(2000, 1, 31, 23, 59, 50, tzinfo=UTC), 13616, 2, p)
    assert parsed.start.tzinfo is not None
    assert parsed.start.utcoffset() == timedelta(0)
    # a str works too, and a bare name keeps a bare path
    assert parse_esa_filename(str(p)) == parsed
    assert parse_esa_filename(p.name).path == Path(p.name)


@pytest.mark.parametrize(
    "name",
    [
        "fa_esa_l2_xxx_20000101000000_13616_v02.cdf",  # unknown instrument
        "fa_esa_l2_EES_20000101000000_13616_v02.cdf",  # case-sensitive
        "FA_ESA_L2_ees_20000101000000_13616_v02.cdf",
        "fa_esa_l2_ees_20001301000000_13616_v02.cdf",  # month 13
        "fa_esa_l2_ees_20000230000000_13616_v02.cdf",  # Feb 30
        "fa_esa_l2_ees_20000101250000_13616_v02.cdf",  # hour 25
        "fa_esa_l2_ees_20000101000060_13616_v02.cdf",  # second 60
        "fa_esa_l2_ees_2000010100000_13616_v02.cdf",  # 13-digit timestamp
        "fa_esa_l2_ees_20000101000000_1361_v02.cdf",  # 4-digit orbit
        "fa_esa_l2_ees_20000101000000_00000_v02.cdf",  # orbit 0
        "fa_esa_l2_ees_20000101000000_100000_v02.cdf",  # orbit beyond the mission
        "fa_esa_l2_ees_20000101000000_" + "1" * 30 + "_v02.cdf",  # 30-digit orbit
        "fa_esa_l2_ees_99991231000000_13616_v02.cdf",  # beyond datetime64[ns]
        "fa_esa_l2_ees_22620411234717_13616_v02.cdf",  # one second past its end
        "fa_esa_l2_ees_16770921001243_13616_v02.cdf",  # one second before its start
        "fa_esa_l2_ees_20000101000000_13616_v2.cdf",  # 1-digit version
        "fa_esa_l2_ees_20000101000000_13616_02.cdf",
        "fa_esa_l2_ees_20000101000000_13616_v02.cdf.tmp",
        "fa_esa_l2_ees_20000101000000_13616_v02.cdf.part",
        "fa_esa_l2_ees_20000101000000_13616_v02.Cdf",
        "fa_esa_l2_ees_20000101000000_13616_v02.nc",
        "xfa_esa_l2_ees_20000101000000_13616_v02.cdf",
        "fa_esa_l2_ees_20000101000000_13616_v02",
        "fa_esa_l2_ees_\uff12\uff10\uff10\uff100101000000_13616_v02.cdf",  # full-width digits
        "fa_k0_orb_13616_v01.cdf",
        "README.txt",
        "",
    ],
)
def test_parse_esa_filename_rejects(name):
    assert parse_esa_filename(name) is None


def test_parse_esa_filename_upper_case_extension_and_wide_orbit():
    parsed = parse_esa_filename("fa_esa_l2_ieb_20090430120000_051314_v10.CDF")
    assert parsed is not None
    assert (parsed.instrument, parsed.orbit, parsed.version) == ("ieb", 51314, 10)
    assert parse_esa_filename("fa_esa_l2_ees_19960821000000_00001_v01.cdf").orbit == 1
    assert parse_esa_filename(f"fa_esa_l2_ees_20000101000000_{MAX_ORBIT}_v01.cdf").orbit == 99_999


def test_parse_esa_filename_datetime64_ns_edges():
    first = parse_esa_filename("fa_esa_l2_ees_16770921001244_13616_v02.cdf")
    last = parse_esa_filename("fa_esa_l2_ees_22620411234716_13616_v02.cdf")
    assert first is not None and last is not None
    for parsed in (first, last):  # both fit datetime64[ns]
        ns = parsed.start.replace(tzinfo=None).isoformat()
        assert str(np.datetime64(ns, "ns")) == ns + ".000000000"


def test_parse_orb_filename():
    parsed = parse_orb_filename("x/y/fa_k0_orb_13616_v03.cdf")
    assert (parsed.orbit, parsed.version, parsed.path) == (
        13616,
        3,
        Path("x/y/fa_k0_orb_13616_v03.cdf"),
    )
    assert parse_orb_filename("fa_k0_orb_00999_v01.CDF").orbit == 999
    for bad in (
        "fa_k0_orb_1361_v01.cdf",
        "fa_k0_orb_00000_v01.cdf",
        "fa_k0_orb_100000_v01.cdf",
        "fa_k0_orb_13616_v01.cdf.part",
        "fa_k0_ees_13616_v01.cdf",
        "fa_esa_l2_ees_20000101000000_13616_v02.cdf",
    ):
        assert parse_orb_filename(bad) is None, bad


def test_esa_file_name_requires_aware_start():
    with pytest.raises(ValueError, match="timezone-aware"):
        EsaFileName("ees", datetime(2000, 1, 1), 1, 1, Path("x"))


@given(
    inst=st.sampled_from(INSTRUMENTS),
    start=st.datetimes(
        min_value=datetime(1677, 9, 21, 0, 12, 44), max_value=datetime(2262, 4, 11, 23, 47, 16)
    ),
    orbit=st.integers(min_value=1, max_value=MAX_ORBIT),
    version=st.integers(min_value=0, max_value=999),
    ext=st.sampled_from(["cdf", "CDF"]),
)
def test_esa_filename_round_trip(inst, start, orbit, version, ext):
    name = esa_name(inst, start, orbit, version, ext)
    parsed = parse_esa_filename(name)
    assert parsed is not None, name
    assert parsed.instrument == inst
    assert parsed.start == start.replace(microsecond=0, tzinfo=UTC)
    assert parsed.orbit == orbit
    assert parsed.version == version
    assert parsed.path == Path(name)
    assert parse_orb_filename(name) is None


@given(orbit=st.integers(min_value=1, max_value=MAX_ORBIT), version=st.integers(0, 999))
def test_orb_filename_round_trip(orbit, version):
    parsed = parse_orb_filename(f"fa_k0_orb_{orbit:05d}_v{version:02d}.cdf")
    assert (parsed.orbit, parsed.version) == (orbit, version)


# --------------------------------------------------------------------------- layouts


def test_layouts_give_identical_indexes(tmp_path):
    indexes = {
        layout: discover(build(tmp_path / layout, layout))
        for layout in ("nested", "spdf", "flat", "deep")
    }
    reference = as_names(indexes["nested"])
    assert reference == {
        999: {
            inst: esa_name(inst, ORBITS[0][1] + timedelta(seconds=3 * k), 999)
            for k, inst in enumerate(INSTRUMENTS)
        },
        13616: {
            "ees": "fa_esa_l2_ees_20000131235950_13616_v02.cdf",
            "ies": "fa_esa_l2_ies_20000131235953_13616_v02.cdf",
        },
        13617: {
            inst: esa_name(inst, ORBITS[2][1] + timedelta(seconds=3 * k), 13617)
            for k, inst in enumerate(INSTRUMENTS)
        },
        51314: {"eeb": "fa_esa_l2_eeb_20090430120000_51314_v02.cdf"},
    }
    for layout, index in indexes.items():
        assert as_names(index) == reference, layout
        assert {o: p.name for o, p in index.orbit_files.items()} == {
            o: f"fa_k0_orb_{o:05d}_v01.cdf" for o, _, _ in ORBITS
        }
        assert index.unrecognized == []
        assert index.duplicates == []
        assert index.start_times == indexes["nested"].start_times
        assert index.root == tmp_path / layout
        for files in index.values():
            for path in files.values():
                assert path.is_file()
                assert path.is_relative_to(tmp_path / layout)


def test_index_is_read_only_mapping(tmp_path):
    index = discover(build(tmp_path, "nested"))
    assert isinstance(index, Mapping)
    assert len(index) == 4
    assert 13616 in index and 42 not in index
    assert list(index[13616]) == ["ees", "ies"]
    with pytest.raises(TypeError):
        index[13616]["eeb"] = Path("x")  # type: ignore[index]
    with pytest.raises(TypeError):
        index[1] = {}  # type: ignore[index]
    with pytest.raises(KeyError):
        index[42]
    # inner mappings iterate in canonical instrument order
    assert list(index[999]) == list(INSTRUMENTS)


def test_sorted_by_orbit_numerically(tmp_path):
    t = datetime(2000, 1, 1, tzinfo=UTC)
    # names whose lexical order differs from numeric orbit order
    for orbit in (13616, 999, 99999, 5, 51314, 1000):
        touch(tmp_path / esa_name("ees", t, orbit))
    touch(tmp_path / "fa_esa_l2_ees_20000101000000_0000042_v02.cdf")  # 7 digits, orbit 42
    touch(tmp_path / "fa_esa_l2_ees_20000101000000_000051313_v02.cdf")  # 9 digits
    index = discover(tmp_path)
    assert list(index) == [5, 42, 999, 1000, 13616, 51313, 51314, 99999]
    assert list(index.keys()) == sorted(index.keys())


def test_start_times_and_file_info(tmp_path):
    index = discover(build(tmp_path, "spdf"))
    assert index.start_times[(13616, "ies")] == datetime(2000, 1, 31, 23, 59, 53, tzinfo=UTC)
    info = index.file_info(13616, "ies")
    assert info.start == index.start_times[(13616, "ies")]
    assert info.path == index[13616]["ies"]
    assert info.orbit == 13616 and info.version == 2
    with pytest.raises(KeyError):
        index.file_info(13616, "eeb")
    with pytest.raises(KeyError):
        index.file_info(42, "ees")


# --------------------------------------------------------------------------- duplicates


def test_duplicate_highest_version_wins_and_is_logged(tmp_path, caplog):
    t = datetime(2000, 1, 1, tzinfo=UTC)
    v1 = touch(tmp_path / "2000" / "01" / esa_name("ees", t, 13616, 1))
    v2 = touch(tmp_path / "ees" / esa_name("ees", t, 13616, 2))
    v3_other = touch(tmp_path / esa_name("ies", t, 13616, 3))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = discover(tmp_path)
    assert index[13616] == {"ees": v2, "ies": v3_other}
    assert len(index.duplicates) == 1
    dup = index.duplicates[0]
    assert (dup.orbit, dup.instrument, dup.kept, dup.discarded) == (13616, "ees", v2, (v1,))
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    dup_msgs = [m for m in msgs if str(v1) in m]
    assert len(dup_msgs) == 1
    assert str(v2) in dup_msgs[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "1 duplicates discarded" in index.summary()


def test_equal_version_duplicates_are_deterministic(tmp_path, caplog):
    early = datetime(2000, 1, 1, 0, 0, 0, tzinfo=UTC)
    late = early + timedelta(seconds=4)
    a = touch(tmp_path / "a" / esa_name("ies", early, 13616, 2))
    b = touch(tmp_path / "b" / esa_name("ies", late, 13616, 2))
    c = touch(tmp_path / "c" / esa_name("ies", late, 13616, 2))  # same name as b
    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = discover(tmp_path)
    # latest timestamp first, then path order
    assert index[13616]["ies"] == b
    assert index.duplicates[0].discarded == (c, a)
    assert index.start_times[(13616, "ies")] == late
    assert any(str(a) in r.getMessage() and str(b) in r.getMessage() for r in caplog.records)
    # the input order does not matter
    files = [parse_esa_filename(p) for p in (a, b, c)]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]):
        idx = OrbitIndex(tmp_path, [files[i] for i in order])
        assert idx[13616]["ies"] == b
        assert idx.duplicates == index.duplicates


def test_version_beats_timestamp(tmp_path):
    t = datetime(2000, 1, 1, tzinfo=UTC)
    old_late = touch(tmp_path / esa_name("eeb", t + timedelta(seconds=9), 13616, 1))
    new_early = touch(tmp_path / esa_name("eeb", t, 13616, 2))
    index = discover(tmp_path)
    assert index[13616]["eeb"] == new_early
    assert index.duplicates[0].discarded == (old_late,)


def test_orb_files_indexed_separately(tmp_path, caplog):
    t = datetime(2000, 1, 1, tzinfo=UTC)
    touch(tmp_path / esa_name("ees", t, 13616))
    o1 = touch(tmp_path / "fa_k0_orb_13616_v01.cdf")
    o2 = touch(tmp_path / "sub" / "fa_k0_orb_13616_v02.cdf")
    o3 = touch(tmp_path / "fa_k0_orb_13617_v01.cdf")  # orbit without ESA files
    with caplog.at_level(logging.INFO, logger=LOGGER):
        index = discover(tmp_path)
    assert index.orbit_files == {13616: o2, 13617: o3}
    assert index.unrecognized == []
    assert list(index) == [13616]  # orb files do not create ESA orbits
    assert index.duplicates == []
    assert [(d.orbit, d.instrument, d.kept, d.discarded) for d in index.orbit_file_duplicates] == [
        (13616, "orb", o2, (o1,))
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- junk


JUNK = [
    "fa_esa_l2_xxx_20000101000000_13616_v02.cdf",
    "fa_esa_l2_ees_20001301000000_13616_v02.cdf",
    "fa_esa_l2_ees_20000101000000_13616_v02.cdf.part",
    "README.txt",
    "fa_esa_l2_ees_20000101000000_13616_v02.cdf.tmp",
    "fa_k0_ees_20000101000000_v01.cdf",
    "notes.cdf",
]


def test_unrecognized_files_one_summary_warning(tmp_path, caplog):
    build(tmp_path, "nested")
    junk_paths = [touch(tmp_path / "2000" / "01" / name) for name in JUNK]
    junk_paths.append(touch(tmp_path / "1996" / "README.txt"))
    # hidden files and directories are skipped silently
    touch(tmp_path / ".hidden" / esa_name("ees", datetime(2001, 1, 1, tzinfo=UTC), 20000))
    touch(tmp_path / "2000" / ".fa_esa_l2_ees_20000101000000_13616_v02.cdf.x1y2")
    touch(tmp_path / ".DS_Store")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        index = discover(tmp_path)
    assert sorted(index.unrecognized) == sorted(junk_paths)
    assert index.unrecognized == sorted(index.unrecognized, key=str)
    assert as_names(index) == as_names(discover(build(tmp_path / "ref", "nested")))
    assert [s.path for s in index.skipped] == index.unrecognized
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "8 file(s) skipped" in message
    assert "+3 more" in message
    assert sum(name in message for name in [*JUNK, "README.txt"]) == 5
    assert "README.txt" not in message  # names that look like FAST files come first
    assert ".hidden" not in message and ".DS_Store" not in message
    assert "8 skipped" in index.summary()


def test_no_warning_when_clean(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        discover(build(tmp_path, "flat"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- filters and misc


def test_instruments_missing(tmp_path):
    index = discover(build(tmp_path, "spdf"))
    assert index.instruments_missing(999) == ()
    assert index.instruments_missing(13616) == ("eeb", "ieb")
    assert index.instruments_missing(51314) == ("ees", "ies", "ieb")
    assert index.instruments_missing(42) == INSTRUMENTS


def test_instrument_filter(tmp_path, caplog):
    build(tmp_path, "nested")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        index = discover(tmp_path, instruments=("ies", "ees"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert index.instruments == ("ies", "ees")
    assert list(index) == [999, 13616, 13617]  # 51314 only has eeb
    assert all(set(files) <= {"ees", "ies"} for files in index.values())
    assert index.n_ignored == 5  # 2 at 999, 2 at 13617, 1 at 51314
    assert index.unrecognized == []
    assert index.instruments_missing(13616) == ()
    assert "5 ignored" in index.summary()
    assert len(index.orbit_files) == 4
    # a single instrument name as a string
    only = discover(tmp_path, instruments="eeb")
    assert list(only) == [999, 13617, 51314]
    with pytest.raises(ValueError, match="unknown instrument"):
        discover(tmp_path, instruments=("ees", "xyz"))
    with pytest.raises(ValueError, match="empty"):
        discover(tmp_path, instruments=())


def test_nonexistent_path(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError, match="no/such/dir") as excinfo:
        discover(missing)
    assert excinfo.value.filename == str(missing)


def test_single_file_path(tmp_path):
    t = datetime(2000, 1, 1, tzinfo=UTC)
    f = touch(tmp_path / "x" / esa_name("ieb", t, 13616, 3))
    touch(tmp_path / "x" / esa_name("ees", t, 13616, 3))  # a sibling, not indexed
    index = discover(f)
    assert dict(index) == {13616: {"ieb": f}}
    assert index.root == f
    assert index.instruments_missing(13616) == ("ees", "eeb", "ies")

    orb = touch(tmp_path / "fa_k0_orb_13616_v01.cdf")
    orb_index = discover(orb)
    assert len(orb_index) == 0 and orb_index.orbit_files == {13616: orb}

    junk = touch(tmp_path / "README.txt")
    junk_index = discover(junk)
    assert len(junk_index) == 0 and junk_index.unrecognized == [junk]

    assert len(discover(f, instruments=("ees",))) == 0


def test_summary_and_repr(tmp_path):
    build(tmp_path, "flat")
    touch(tmp_path / "README.txt")
    index = discover(tmp_path)
    summary = index.summary()
    assert "\n" not in summary
    assert summary == (
        "4 orbits, 11 ESA files (ees=3, eeb=3, ies=3, ieb=2), 4 orbit files, "
        "0 duplicates discarded, 1 skipped, 0 ignored"
    )
    r = repr(index)
    assert r.startswith("OrbitIndex(")
    for part in ("orbits=4", "files=11", "orbit_files=4", "duplicates=0", "skipped=1"):
        assert part in r


def test_empty_directory(tmp_path):
    index = discover(tmp_path)
    assert len(index) == 0 and list(index) == []
    assert index.summary().startswith("0 orbits, 0 ESA files")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_and_links(tmp_path):
    data = build(tmp_path / "data", "nested")
    try:
        os.symlink(data, data / "2000" / "loop")  # a loop back to the root
        os.symlink(tmp_path / "data", tmp_path / "data" / "again")
        os.symlink(tmp_path / "nowhere", data / "broken.cdf")  # dangling
    except (OSError, NotImplementedError):
        pytest.skip("cannot create symlinks here")
    index = discover(data)
    assert as_names(index) == as_names(discover(build(tmp_path / "ref", "nested")))
    assert index.duplicates == []
    assert index.unrecognized == []  # the names are fine; the entries are not files
    assert index.skipped == [
        SkippedFile(
            data / "broken.cdf",
            f"broken symbolic link (to {str(tmp_path / 'nowhere')!r}, which does not exist)",
        )
    ]
    # a symlinked directory as (part of) the tree is followed
    outside = build(tmp_path / "outside", "spdf")
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(outside, top / "mirror")
    assert as_names(discover(top)) == as_names(index)


@pytest.mark.slow
def test_many_files(tmp_path):
    # 200 orbits x 4 instruments x 25 "months" of junk-free files = 20,000 files
    t = datetime(1997, 1, 1, tzinfo=UTC)
    n = 0
    for month in range(25):
        sub = tmp_path / f"{1997 + month // 12}" / f"{month % 12 + 1:02d}"
        sub.mkdir(parents=True)
        for k in range(200):
            orbit = 1 + month * 200 + k
            for inst in INSTRUMENTS:
                (sub / esa_name(inst, t + timedelta(minutes=orbit * 133), orbit)).touch()
                n += 1
    index = discover(tmp_path)  # speed is measured in benchmarks/, not asserted here
    assert index.n_files == n == 20_000
    assert len(index) == 5000
    assert list(index) == sorted(index)


# --------------------------------------------------------------------------- skipped, with reasons

GOOD = esa_name("ees", datetime(2000, 1, 1, tzinfo=UTC), 13616)
#: name -> (the reason's expected text). Each one would have dropped a real orbit silently.
NEAR_MISSES = {
    GOOD + ".gz": "gzip-compressed (gunzip it first)",
    GOOD.replace(".cdf", " (1).cdf"): f"the name contains spaces (rename it to {GOOD}?)",
    GOOD.replace("_ees_", "_ées_"): "the name contains non-ASCII characters 'é'",
    esa_name("ies", datetime(9999, 12, 31, tzinfo=UTC), 13616): (
        "date 9999-12-31 00:00:00 in the name is outside 1677-09-21 00:12:44..2262-04-11 "
        "23:47:16, the range of datetime64[ns] times"
    ),
    "fa_esa_l2_eeb_20000101000000_" + "7" * 30 + "_v02.cdf": (
        "orbit 777777777777... (30 digits) beyond the mission (FAST orbits end near "
        f"51,315; names above {MAX_ORBIT:,} are refused)"
    ),
    "fa_k0_orb_100000_v01.cdf": "orbit 100000 beyond the mission",
    GOOD + ".part": "extra suffix '.part' after the name",
    GOOD.replace(".cdf", ".Cdf"): "wrong letter case",
}


def test_skipped_names_are_listed_with_reasons_at_warning(tmp_path, caplog):
    build(tmp_path, "nested")
    folder = tmp_path / "2000" / "01"
    for name in NEAR_MISSES:
        touch(folder / name)
    touch(tmp_path / "README.txt")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        index = discover(tmp_path)
    assert as_names(index) == as_names(discover(build(tmp_path / "ref", "nested")))
    reasons = {s.path.name: s.reason for s in index.skipped}
    assert set(reasons) == {*NEAR_MISSES, "README.txt"}
    for name, text in NEAR_MISSES.items():
        assert text in reasons[name], name
    assert reasons["README.txt"] == "not a FAST ESA L2 or orbit file name"
    assert [s.path for s in index.skipped] == index.unrecognized  # all of them are files
    # one WARNING: the count, then the first names each with its reason
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert f"{len(NEAR_MISSES) + 1} file(s) skipped: " in message
    shown = [s for s in index.skipped if f"{s.path.relative_to(tmp_path)}: {s.reason}" in message]
    assert len(shown) == 5 and all(s.path.name in NEAR_MISSES for s in shown)
    assert f"+{len(NEAR_MISSES) + 1 - 5} more" in message
    assert "fastspectro info" in message
    assert f"{len(NEAR_MISSES) + 1} skipped" in index.summary()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_named_like_a_cdf_is_reported(tmp_path, caplog):
    folder = tmp_path / "2000" / "01"
    touch(folder / GOOD)
    loop_a, loop_b = folder / esa_name("ies", datetime(2000, 1, 1, tzinfo=UTC), 13616), folder / "b"
    try:
        os.symlink(loop_b, loop_a)
        os.symlink(loop_a, loop_b)
    except (OSError, NotImplementedError):
        pytest.skip("cannot create symlinks here")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        index = discover(tmp_path)
    assert as_names(index) == {13616: {"ees": GOOD}}
    assert index.skipped == [  # in path order
        SkippedFile(loop_b, "symbolic link loop"),
        SkippedFile(loop_a, "symbolic link loop"),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"2000/01/{loop_a.name}: symbolic link loop" in warnings[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs fifos")
def test_fifo_is_skipped_with_its_reason(tmp_path):
    os.mkfifo(tmp_path / GOOD)
    index = discover(tmp_path)
    assert len(index) == 0
    assert index.skipped == [
        SkippedFile(tmp_path / GOOD, "not a regular file (a fifo, socket or device)")
    ]


def test_single_skipped_file_path_has_its_reason(tmp_path):
    f = touch(tmp_path / (GOOD + ".gz"))
    index = discover(f)
    assert len(index) == 0
    assert index.skipped == [SkippedFile(f, "gzip-compressed (gunzip it first)")]


def test_info_lists_skipped_names_with_reasons(tmp_path, capsys):
    from fastspectro_dask.cli import main

    build(tmp_path, "nested")
    for name in NEAR_MISSES:
        touch(tmp_path / "2000" / "01" / name)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(NEAR_MISSES)} skipped" in out
    for name, text in NEAR_MISSES.items():
        assert f"  2000/01/{name}: " in out, name
        line = next(ln for ln in out.splitlines() if f"2000/01/{name}: " in ln)
        assert text in line, name


def test_info_lists_skipped_names_when_nothing_is_indexed(tmp_path, capsys):
    from fastspectro_dask.cli import main

    touch(tmp_path / (GOOD + ".gz"))
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no FAST ESA L2 files found" in out
    assert f"  {GOOD}.gz: gzip-compressed (gunzip it first)" in out
