"""Realistic synthetic FAST ESA L2 CDF files.

No machine of this project can reach NASA's archives, so every test and demo runs on
files written here. They imitate the real files described in
``FAST_ESA_L2_FORMAT.md``: the same variables, CDF types, ISTP attributes, fill values,
row-major ``[angle, energy]`` records with only a ``[:nbins, :nenergy]`` block valid,
the swapped ``DEPEND_1``/``DEPEND_2`` quirk, zero-record virtual variables, CDF_EPOCH
times, per-variable GZIP with cdfconvert's "optimal" blocking, real file names and a
``YYYY/MM/`` layout.

The content is physically plausible rather than real: electron and ion energy ranges,
mode changes inside an orbit (48x32, 48x64, 96x32), Poisson zeros, quiet and storm
orbits, data gaps between auroral passes, and burst files shorter than the orbit.
Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cdflib
import numpy as np
from cdflib.cdfwrite import CDF as CDFWriter  # noqa: N811

from fastspectro_dask.compression import COUNT_MAX, encode_counts

__all__ = [
    "BAD_FILE_KINDS",
    "MANIFEST_NAME",
    "SynthManifest",
    "esa_filename",
    "orbit_start_unix",
    "write_esa_file",
    "write_synthetic_dataset",
]

logger = logging.getLogger(__name__)

#: File name of the JSON manifest written beside the synthetic data.
MANIFEST_NAME = ".synth_manifest.json"

FILL_FLOAT = np.float32(-1e31)
FILL_DOUBLE = -1e31
FILL_UINT1 = 255
FILL_INT2 = -32768
FILL_INT4 = -2147483648
N_ANGLE = 64
N_ENERGY = 96

#: (nenergy, nbins) of each ``mode_ind``.
MODES: dict[int, tuple[int, int]] = {0: (48, 32), 1: (48, 64), 2: (96, 32)}

#: Per instrument: number of mode tables, table angle size, species, survey or burst.
INSTRUMENT_INFO: dict[str, dict] = {
    "ees": dict(
        n_modes=3,
        table_angles=64,
        species="electron",
        burst=False,
        ext1="Survey Electron ",
        ext2="Differential survey-mode electron ",
        data_name="Eesa Survey",
    ),
    "eeb": dict(
        n_modes=2,
        table_angles=32,
        species="electron",
        burst=True,
        ext1="Burst Electron ",
        ext2="Differential burst-mode electron ",
        data_name="Eesa Burst",
    ),
    "ies": dict(
        n_modes=2,
        table_angles=64,
        species="ion",
        burst=False,
        ext1="Survey Ion ",
        ext2="Differential survey-mode ion ",
        data_name="Iesa Survey",
    ),
    "ieb": dict(
        n_modes=3,
        table_angles=32,
        species="ion",
        burst=True,
        ext1="Burst Ion ",
        ext2="Differential burst-mode ion ",
        data_name="Iesa Burst",
    ),
}

# Orbit-number anchors (fa_time_to_orbit.pro); orbit 1 starts 1996-08-21T11:11:50Z.
_ANCHOR_ORBITS = np.array(
    [
        1.0,
        103.01,
        5599.87,
        11054.28,
        16467.99,
        21636.07,
        27401.82,
        32986.09,
        38879.86,
        44761.66,
        51312.29,
    ]
)
_ANCHOR_TIMES = np.array(
    [
        datetime(*t, tzinfo=timezone.utc).timestamp()
        for t in [
            (1996, 8, 21, 11, 11, 50),
            (1996, 8, 30, 22, 1),
            (1998, 1, 21, 2, 47),
            (1999, 6, 7, 17, 21),
            (2000, 10, 15, 16, 35),
            (2002, 1, 27, 18, 26),
            (2003, 6, 30, 11, 9),
            (2004, 11, 10, 22, 21),
            (2006, 4, 20, 11, 7),
            (2007, 9, 25, 22, 0),
            (2009, 4, 30, 5, 32),
        ]
    ]
)

#: Kinds of broken or degenerate files written by ``bad_files=True``, with the outcome
#: the reader must give: ``"invalid-cdf"`` (raises InvalidCDFError) or ``"valid"``.
BAD_FILE_KINDS: dict[str, str] = {
    "empty": "invalid-cdf",
    "html": "invalid-cdf",
    "truncated": "invalid-cdf",
    "truncated-header": "invalid-cdf",
    "missing-variable": "invalid-cdf",
    "wrong-shape": "invalid-cdf",
    "wrong-rank": "invalid-cdf",
    "inconsistent-records": "invalid-cdf",
    "all-fill": "valid",
    "single-record": "valid",
}


def orbit_start_unix(orbit: int | float) -> float:
    """Start time of an orbit (unix seconds), interpolated between mission anchors."""
    slope_end = (_ANCHOR_TIMES[-1] - _ANCHOR_TIMES[-2]) / (_ANCHOR_ORBITS[-1] - _ANCHOR_ORBITS[-2])
    if orbit > _ANCHOR_ORBITS[-1]:
        return float(_ANCHOR_TIMES[-1] + (orbit - _ANCHOR_ORBITS[-1]) * slope_end)
    return float(np.interp(orbit, _ANCHOR_ORBITS, _ANCHOR_TIMES))


def orbit_period_seconds(orbit: int) -> float:
    """Local orbital period from the anchor table (133 min early, 128 min late)."""
    return orbit_start_unix(orbit + 1) - orbit_start_unix(orbit)


def esa_filename(instrument: str, first_center_unix: float, orbit: int, version: int = 2) -> str:
    """Real FAST ESA L2 file name: timestamp of the first record's centre, seconds truncated."""
    stamp = datetime.fromtimestamp(int(first_center_unix), tz=timezone.utc).strftime("%Y%m%d%H%M%S")
    return f"fa_esa_l2_{instrument}_{stamp}_{orbit:05d}_v{version:02d}.cdf"


# --------------------------------------------------------------------------------------
# Time grids and mode sequences
# --------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Record centre times and per-record flags of one file."""

    start: np.ndarray  # time_start (unix s)
    delta: np.ndarray  # accumulation length (s)
    fast: np.ndarray  # bool: fast survey / inside an auroral crossing
    region: np.ndarray  # 0..1 position across the current pass
    segment: np.ndarray  # pass or burst index


def _survey_grid(orbit: int, records: int, rng: np.random.Generator) -> _Grid:
    """2-4 passes of slow (2.5 s) and fast (0.625 s) survey separated by long gaps."""
    t0 = orbit_start_unix(orbit)
    period = orbit_period_seconds(orbit)
    n_pass = int(rng.integers(2, 5))
    shares = rng.dirichlet(np.full(n_pass, 4.0))
    counts = np.maximum(1, np.round(shares * records).astype(int))
    counts[-1] = max(1, records - counts[:-1].sum()) if n_pass > 1 else records
    starts, deltas, fasts, regions, segs = [], [], [], [], []
    for p, n in enumerate(counts):
        # Pass p starts somewhere in its quarter of the orbit; long gaps separate passes.
        pass_t0 = t0 + period * (p / n_pass + rng.uniform(0.01, 0.08))
        pos = np.arange(n) / max(n - 1, 1)
        fast = (pos > 0.35) & (pos < 0.65) & (n >= 6)
        dt = np.where(fast, 0.625, 2.5)
        t = pass_t0 + np.concatenate([[0.0], np.cumsum(dt[:-1])])
        if n > 40 and rng.random() < 0.5:  # a short telemetry dropout inside the pass
            cut = int(rng.integers(n // 5, n - n // 5))
            t[cut:] += rng.uniform(60.0, 180.0)
        starts.append(t)
        deltas.append(dt)
        fasts.append(fast)
        regions.append(pos)
        segs.append(np.full(n, p))
    return _Grid(*(np.concatenate(a) for a in (starts, deltas, fasts, regions, segs)))


def _burst_grid(survey: _Grid, records: int, rng: np.random.Generator) -> _Grid:
    """1-3 bursts at 0.156 s inside the survey passes' fast segments."""
    n_burst = int(rng.integers(1, 4))
    counts = np.maximum(1, np.round(rng.dirichlet(np.full(n_burst, 3.0)) * records).astype(int))
    passes = np.unique(survey.segment)
    chosen = rng.choice(passes, size=min(n_burst, passes.size), replace=False)
    starts, deltas, fasts, regions, segs = [], [], [], [], []
    for b, (p, n) in enumerate(zip(sorted(chosen), counts, strict=False)):
        in_pass = survey.start[survey.segment == p]
        t_begin = in_pass[len(in_pass) // 3]
        dt = np.full(n, 0.156)
        starts.append(t_begin + np.arange(n) * 0.156)
        deltas.append(dt)
        fasts.append(np.ones(n, bool))
        regions.append(0.4 + 0.2 * np.arange(n) / max(n - 1, 1))
        segs.append(np.full(n, b))
    return _Grid(*(np.concatenate(a) for a in (starts, deltas, fasts, regions, segs)))


def _mode_sequence(instrument: str, grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """mode_ind per record: slow survey 0, fast survey 1 (ees sometimes 2), burst 0 (ieb 0/2)."""
    mode = np.zeros(grid.start.size, np.uint8)
    if instrument in ("ees", "ies"):
        mode[grid.fast] = 1
        if instrument == "ees":
            for p in np.unique(grid.segment):
                if rng.random() < 0.35:
                    mode[(grid.segment == p) & grid.fast] = 2
    elif instrument == "ieb":
        for b in np.unique(grid.segment):
            idx = np.flatnonzero(grid.segment == b)
            if idx.size >= 4 and rng.random() < 0.6:
                mode[idx[idx.size // 2 :]] = 2
    return mode


# --------------------------------------------------------------------------------------
# Instrument tables and the flux model
# --------------------------------------------------------------------------------------


def _mode_tables(instrument: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-mode energy/denergy/theta/dtheta tables, shape (n_modes, table_angles, 96)."""
    info = INSTRUMENT_INFO[instrument]
    n_modes, n_ang = info["n_modes"], info["table_angles"]
    emin, emax = (4.0, 30000.0) if info["species"] == "electron" else (3.0, 25000.0)
    tables = {
        k: np.full((n_modes, n_ang, N_ENERGY), FILL_FLOAT, np.float32)
        for k in ("energy", "denergy", "theta", "dtheta", "eff")
    }
    for m in range(n_modes):
        ne, nb = MODES[m]
        nb = min(nb, n_ang)
        k = np.arange(ne)
        e = emax * (emin / emax) ** (k / (ne - 1))  # index 0 is the highest energy
        jitter = 1.0 + 0.01 * rng.standard_normal((nb, ne))
        energy = (e[None, :] * jitter).astype(np.float32)
        energy[:, 0] *= rng.uniform(0.3, 3.0, size=nb)  # retrace step: unreliable
        tables["energy"][m, :nb, :ne] = energy
        tables["denergy"][m, :nb, :ne] = energy * (0.18 if ne == 48 else 0.09)
        theta = (np.arange(nb) + 0.5) * 360.0 / nb
        tables["theta"][m, :nb, :ne] = theta[:, None]
        tables["dtheta"][m, :nb, :ne] = 360.0 / nb
        tables["eff"][m, :nb, :ne] = 1.0
    # Solid angle per bin: from the unshifted table, so the same for every record of a mode.
    tables["domega"] = np.where(
        tables["theta"] > FILL_FLOAT, _domega(tables["theta"], tables["dtheta"]), FILL_FLOAT
    ).astype(np.float32)
    return tables


def _domega(theta_deg: np.ndarray, dtheta_deg: np.ndarray) -> np.ndarray:
    """Solid angle 2*pi*|sin(theta)|*sin(dtheta/2), with a polar cap near 0, 180, 360 degrees."""
    th = np.deg2rad(theta_deg)
    half = np.deg2rad(dtheta_deg) / 2
    om = 2 * np.pi * np.abs(np.sin(th)) * np.sin(half)
    near_pole = np.min(np.abs(th[..., None] - np.array([0.0, np.pi, 2 * np.pi])), axis=-1) < half
    cap = 2 * np.pi * (1 - np.cos(half))
    return np.where(near_pole, np.maximum(om, cap), om).astype(np.float32)


def _maxwellian(e: np.ndarray, kt: float, peak: float) -> np.ndarray:
    """Energy-flux Maxwellian, maximum ``peak`` at E = 2 kT."""
    x = e / kt
    return peak * (x / 2) ** 2 * np.exp(2 - x)


def _flux_model(
    instrument: str,
    grid: _Grid,
    energy: np.ndarray,
    pitch: np.ndarray,
    activity: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Expected eflux (eV/cm^2/s/sr/eV) on (N, 64, 96) energy/pitch arrays (NaN outside)."""
    n = grid.start.size
    s = grid.region[:, None, None]
    fast = grid.fast[:, None, None]
    pa = pitch
    down = np.minimum(pa, 360.0 - pa)  # angle from the field direction (0 deg)
    up = np.abs(pa - 180.0)
    e = energy
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        if INSTRUMENT_INFO[instrument]["species"] == "electron":
            photo = 3e7 * (e / 10.0) ** -1.7 * np.exp(-e / 200.0)
            kt = rng.uniform(500.0, 3000.0)
            ps_env = np.exp(-(((s - 0.5) / 0.18) ** 2))
            plasma_sheet = _maxwellian(e, kt, 3e7 * activity) * ps_env
            plasma_sheet = np.where(up < 30.0, plasma_sheet * 0.03, plasma_sheet)  # loss cone
            rain = _maxwellian(e, 90.0, 3e6) * (s < 0.25)
            # Inverted-V: a field-aligned beam whose peak energy rises then falls in time.
            arc_env = np.exp(-(((s - 0.5) / 0.08) ** 2)) * fast
            e0 = rng.uniform(1000.0, 10000.0) * (0.3 + 0.7 * np.exp(-(((s - 0.5) / 0.1) ** 2)))
            beam = min(3e8 * np.sqrt(activity), 5e9) * np.exp(-(np.log(e / e0) ** 2) / (2 * 0.2**2))
            beam = beam * np.exp(-((down / 25.0) ** 2)) * arc_env
            flux = photo + plasma_sheet + rain + beam
        else:
            kt = rng.uniform(2000.0, 10000.0)
            ps_env = np.exp(-(((s - 0.55) / 0.2) ** 2))
            flux = _maxwellian(e, kt, 3e6 * activity) * ps_env
            if rng.random() < 0.5:  # cusp energy-latitude dispersion, downgoing
                ec = 5000.0 * (300.0 / 5000.0) ** np.clip((s - 0.05) / 0.25, 0, 1)
                cusp = 1e7 * np.exp(-(np.log(e / ec) ** 2) / 0.5) * ((s > 0.05) & (s < 0.3))
                flux = flux + cusp * np.exp(-((down / 40.0) ** 2))
            conic = 3e7 * np.exp(-(np.log(e / 100.0) ** 2) / 1.5) * fast  # upgoing conic/beam
            flux = flux + conic * np.exp(-(((up - 35.0) / 15.0) ** 2))
    noise = rng.lognormal(0.0, 0.3, size=(n, N_ANGLE, N_ENERGY))
    return flux * noise


@dataclass
class _Records:
    """Everything record-varying, ready for the writer."""

    grid: _Grid
    mode: np.ndarray
    nbins: np.ndarray
    nenergy: np.ndarray
    theta_shift: np.ndarray
    arrays: dict[str, np.ndarray]  # the (N, 64, 96) variables
    data_quality: np.ndarray
    geom_factor: float


def _build_records(
    instrument: str,
    grid: _Grid,
    tables: dict[str, np.ndarray],
    activity: float,
    rng: np.random.Generator,
) -> _Records:
    info = INSTRUMENT_INFO[instrument]
    n = grid.start.size
    mode = _mode_sequence(instrument, grid, rng)
    nenergy = np.array([MODES[m][0] for m in mode], np.uint8)
    nbins = np.array([MODES[m][1] for m in mode], np.uint8)
    if info["burst"]:
        shift = np.where(np.arange(n) % 2 == 0, 2.8125, -2.8125) + rng.uniform(-20, 20)
    else:
        shift = np.clip(np.cumsum(rng.normal(0.0, 1.5, n)), -30.0, 30.0)
    shift = shift.astype(np.float32)

    n_ang = info["table_angles"]
    shape = (n, N_ANGLE, N_ENERGY)
    energy = np.full(shape, FILL_FLOAT, np.float32)
    denergy = np.full(shape, FILL_FLOAT, np.float32)
    theta = np.full(shape, FILL_FLOAT, np.float32)
    energy[:, :n_ang] = tables["energy"][mode]
    denergy[:, :n_ang] = tables["denergy"][mode]
    theta[:, :n_ang] = tables["theta"][mode]
    valid = np.zeros(shape, bool)
    for m in np.unique(mode):
        ne, nb = MODES[int(m)]
        sel = mode == m
        block = np.zeros((N_ANGLE, N_ENERGY), bool)
        block[:nb, :ne] = True
        valid[sel] = block
    pitch = np.where(valid, np.mod(theta + shift[:, None, None], 360.0), FILL_FLOAT)
    pitch = pitch.astype(np.float32)
    domega = np.full(shape, FILL_FLOAT, np.float32)
    domega[:, :n_ang] = tables["domega"][mode]
    domega = np.where(valid, domega, FILL_FLOAT).astype(np.float32)

    e_valid = np.where(valid, energy, np.nan).astype(np.float64)
    expected = _flux_model(instrument, grid, e_valid, np.where(valid, pitch, np.nan), activity, rng)
    expected = np.nan_to_num(expected, nan=0.0)
    # Counting statistics: 1 count is ~3e4 (electrons) or ~1e4 (ions) eflux at 2.5 s.
    per_count = 3e4 if info["species"] == "electron" else 1e4
    integ = grid.delta / np.where(nenergy > 0, nenergy, 48)
    gain = (integ / (2.5 / 48))[:, None, None] / per_count
    counts = rng.poisson(np.minimum(expected * gain, 1e9))
    counts = np.where(valid, counts, 0)
    cmax = COUNT_MAX[bool(info["burst"])]
    overflow = (counts > cmax).any(axis=(1, 2))  # beyond the code's range: byte 255
    counts = np.minimum(counts, cmax)
    dead = 1.1e-7
    dead_flag = ((counts * dead / integ[:, None, None]) > 0.9).any(axis=(1, 2))
    data_quality = (overflow * 2 + dead_flag * 4).astype(np.uint8)
    eflux = np.where(valid, counts / gain, FILL_FLOAT).astype(np.float32)
    # the flight encoder (truncating): 16->8 bit survey, 14->8 bit burst
    data = np.where(valid, encode_counts(counts, burst=info["burst"]), 0).astype(np.uint8)
    arrays = {
        "data": data,
        "eflux": eflux,
        "pitch_angle": pitch,
        "domega": domega,
        "energy_full": np.where(valid, energy, FILL_FLOAT).astype(np.float32),
        "denergy_full": np.where(valid, denergy, FILL_FLOAT).astype(np.float32),
    }
    return _Records(
        grid, mode, nbins, nenergy, shift, arrays, data_quality, geom_factor=float(1.0 / per_count)
    )


# --------------------------------------------------------------------------------------
# The CDF writer
# --------------------------------------------------------------------------------------

_TYPE_NAMES = {
    CDFWriter.CDF_UINT1: "CDF_UINT1",
    CDFWriter.CDF_INT2: "CDF_INT2",
    CDFWriter.CDF_INT4: "CDF_INT4",
    CDFWriter.CDF_FLOAT: "CDF_FLOAT",
    CDFWriter.CDF_DOUBLE: "CDF_DOUBLE",
    CDFWriter.CDF_EPOCH: "CDF_EPOCH",
}
_FILL = {
    CDFWriter.CDF_UINT1: (FILL_UINT1, 0, 255, "I4"),
    CDFWriter.CDF_INT2: (FILL_INT2, -32767, 32767, "I6"),
    CDFWriter.CDF_INT4: (FILL_INT4, -2147483647, 2147483647, "I11"),
    CDFWriter.CDF_FLOAT: (-1e31, -1e31, 1e31, "E13.6"),
    CDFWriter.CDF_DOUBLE: (-1e31, -1e31, 1e31, "E25.18"),
}
_EPOCH_MIN, _EPOCH_MAX = 63007804800000.0, 63408355200000.0
_EPOCH_FILL = (-1e31, _EPOCH_MIN, _EPOCH_MAX, "E25.18")  # as _FILL, for CDF_EPOCH
_UNIX_MIN, _UNIX_MAX = 840585600.0, 1241136000.0


class _FileWriter:
    """Writes variables with the attribute set of the IDL L2 writer."""

    def __init__(
        self,
        writer: CDFWriter,
        *,
        compress: bool,
        n_records: int,
        istp_depends: bool,
        ext1: str,
        ext2: str,
        omit: Iterable[str] = (),
        overrides: Mapping[str, np.ndarray] | None = None,
        dims_override: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.w = writer
        self.compress = compress
        self.n = n_records
        self.istp_depends = istp_depends
        self.ext1, self.ext2 = ext1, ext2
        # the broken-file corpus: record-varying variables left out, replaced, reshaped
        self.omit = frozenset(omit)
        self.overrides = dict(overrides or {})
        self.dims_override = dict(dims_override or {})

    def rv(
        self,
        name: str,
        dtype: int,
        data: np.ndarray | None,
        *,
        units: str = "None",
        catdesc: str = "",
        var_type: str = "support_data",
        scaletyp: str = "linear",
        validmin=None,
        validmax=None,
        depend_time: str = "time_unix",
        depend_0: str = "epoch",
        big: bool = False,
        monoton: str = "FALSE",
        dims: Sequence[int] | None = None,
        fieldnam: str | None = None,
    ) -> None:
        """A record-varying variable (``data`` None writes zero records); ``omit``,
        ``overrides`` and ``dims_override`` apply (the broken-file corpus)."""
        if name in self.omit:
            return
        data = self.overrides.get(name, data)
        dims = self.dims_override.get(name, dims)
        fill, vmin, vmax, fmt = _FILL[dtype] if dtype != CDFWriter.CDF_EPOCH else _EPOCH_FILL
        tname = _TYPE_NAMES[dtype]
        attrs: dict = {
            "CATDESC": catdesc or f"{self.ext1}{name}",
            "DISPLAY_TYPE": (
                "plasmagram>THUMBSIZE>166>xsz=4,ysz=7>xx=pitch_angle_median,y=energy_median,z=data"
            )
            if name in ("data", "eflux")
            else "time_series",
            "FIELDNAM": fieldnam or f"{self.ext1}{name}",
            "UNITS": units,
            "DEPEND_TIME": depend_time,
            "DEPEND_0": depend_0,
        }
        if big:
            first, second = (
                ("pitch_angle_bin", "energy_channel")
                if self.istp_depends
                else ("energy_channel", "pitch_angle_bin")
            )
            attrs["DEPEND_1"] = first
            attrs["DEPEND_2"] = second
        attrs.update(
            {
                "VAR_TYPE": var_type,
                "COORDINATE_SYSTEM": "sensor",
                "SCALETYP": scaletyp,
                "LABLAXIS": fieldnam or name,
                "MONOTON": monoton,
                "VAR_NOTES": "None",
                "FILLVAL": [fill, tname],
                "FORMAT": fmt,
                "VALIDMIN": [vmin if validmin is None else validmin, tname],
                "VALIDMAX": [vmax if validmax is None else validmax, tname],
            }
        )
        if dims is None:
            dims = [] if data is None else list(np.shape(data)[1:])
        record_bytes = max(1, int(np.prod(dims, dtype=np.int64)) * _itemsize(dtype))
        compress = self.compress and dtype != CDFWriter.CDF_EPOCH
        spec = {
            "Variable": name,
            "Data_Type": dtype,
            "Num_Elements": 1,
            "Rec_Vary": True,
            "Dim_Sizes": list(dims),
            "Compress": 6 if compress else 0,
        }
        if compress and data is not None:
            spec["Block_Factor"] = max(1, min(len(data), 1_024_000 // record_bytes))
        self.w.write_var(spec, var_attrs=attrs, var_data=data)

    def nrv(
        self,
        name: str,
        dtype: int,
        data,
        *,
        units: str = "NA",
        catdesc: str = "",
        num_elements: int = 1,
        dims: Sequence[int] | None = None,
        extra: dict | None = None,
    ) -> None:
        """A non-record-varying metadata variable."""
        attrs: dict = {
            "CATDESC": catdesc or name,
            "FIELDNAM": name,
            "UNITS": units,
            "VAR_TYPE": "metadata",
            "COORDINATE_SYSTEM": "sensor",
        }
        if dtype != CDFWriter.CDF_CHAR:
            fill, vmin, vmax, fmt = _FILL[dtype]
            tname = _TYPE_NAMES[dtype]
            attrs.update(
                {
                    "FORMAT": fmt,
                    "FILLVAL": [fill, tname],
                    "VALIDMIN": [vmin, tname],
                    "VALIDMAX": [vmax, tname],
                }
            )
        if extra:
            attrs.update(extra)
        if dims is None:
            dims = [] if np.ndim(data) == 0 or dtype == CDFWriter.CDF_CHAR else list(np.shape(data))
        size = int(np.prod(dims, dtype=np.int64)) * _itemsize(dtype) * num_elements
        spec = {
            "Variable": name,
            "Data_Type": dtype,
            "Num_Elements": num_elements,
            "Rec_Vary": False,
            "Dim_Sizes": list(dims),
            "Compress": 6 if (self.compress and size >= 1024) else 0,
        }
        self.w.write_var(spec, var_attrs=attrs, var_data=data)


def _itemsize(dtype: int) -> int:
    return {
        CDFWriter.CDF_UINT1: 1,
        CDFWriter.CDF_INT2: 2,
        CDFWriter.CDF_INT4: 4,
        CDFWriter.CDF_FLOAT: 4,
        CDFWriter.CDF_DOUBLE: 8,
        CDFWriter.CDF_EPOCH: 8,
        CDFWriter.CDF_CHAR: 1,
    }[dtype]


def _global_attrs(instrument: str, filename: str, n_records: int) -> dict:
    info = INSTRUMENT_INFO[instrument]
    values = {
        "Acknowledgment": "None",
        "Data_type": f"l2_{instrument}>Level 2 data: {info['data_name']}",
        "Data_version": "0",
        "Descriptor": "FA_ESA>Fast Auroral SnapshoT Explorer, Electrostatic Analyzer",
        "Discipline": "Space Physics>Planetary Physics>Particles",
        "File_naming_convention": "descriptor_datatype_yyyyMMddHHmmss",
        "Generated_by": "FAST SOC (synthetic: fastspectro_dask.synth)",
        "Generation_date": "2021-09-28",
        "HTTP_LINK": "http://sprg.ssl.berkeley.edu/fast/",
        "Instrument_type": "Particles (space)",
        "LINK_TEXT": "General Information about the FAST mission",
        "LINK_TITLE": "FAST home page",
        "Logical_file_id": filename,
        "Logical_source": f"fa_esa_l2_{instrument}",
        "Logical_source_description": "FAST Ion and Electron Particle Distributions",
        "Mission_group": "FAST",
        "MODS": "Rev-2 2021-09-28",
        "PI_name": "J. P. McFadden",
        "PI_affiliation": "U.C. Berkeley Space Sciences Laboratory",
        "Planet": "Earth",
        "Project": "FAST",
        "Rules_of_use": "Open Data for Scientific Use",
        "Source_name": "FAST>Fast Auroral SnapshoT Explorer",
        "TEXT": "ESA>Electrostatic Analyzer",
        "Time_resolution": f"{86400 / max(n_records, 1):8.1f} sec",
        "Title": "FAST ESA Electron and Ion Distributions",
    }
    return {k: {0: v} for k, v in values.items()}


_TIME_KW = {"units": "sec", "validmin": _UNIX_MIN, "validmax": _UNIX_MAX, "monoton": "INCREASE"}


@dataclass(frozen=True)
class _Times:
    """A file's record times: start, end and centre (unix seconds), centre as CDF_EPOCH."""

    start: np.ndarray
    end: np.ndarray
    center: np.ndarray
    epoch: np.ndarray

    @classmethod
    def of(cls, grid: _Grid) -> _Times:
        end = grid.start + grid.delta
        center = (grid.start + end) / 2
        epoch = np.asarray(cdflib.cdfepoch.timestamp_to_cdfepoch(center), np.float64)
        return cls(grid.start, end, center, epoch)


def _write_cdf(
    path: Path,
    instrument: str,
    orbit: int,
    rec: _Records,
    tables: dict[str, np.ndarray],
    *,
    compress: bool,
    istp_depends: bool,
    omit: Iterable[str] = (),
    overrides: dict[str, np.ndarray] | None = None,
    dims_override: dict[str, list[int]] | None = None,
) -> None:
    """Write one file; ``omit``/``overrides`` exist to build the broken-file corpus."""
    info = INSTRUMENT_INFO[instrument]
    n = rec.grid.start.size
    times = _Times.of(rec.grid)
    tmp = path.with_name("." + path.stem + ".partial.cdf")  # cdflib insists on .cdf
    if tmp.exists():
        tmp.unlink()
    spec = {"Majority": "row_major", "Encoding": "IBMPC_ENCODING", "Compressed": 0}
    with CDFWriter(tmp, cdf_spec=spec) as w:
        w.write_globalattrs(_global_attrs(instrument, path.name, n))
        fw = _FileWriter(
            w,
            compress=compress,
            n_records=n,
            istp_depends=istp_depends,
            ext1=info["ext1"],
            ext2=info["ext2"],
            omit=omit,
            overrides=overrides,
            dims_override=dims_override,
        )
        _write_time_vars(fw, rec, times)
        _write_record_support(fw, rec, orbit)
        _write_spectra(fw, rec, info)
        _write_orbit_number(fw, orbit, times)
        _write_virtual_vars(fw)
        _write_tables(fw, info, tables, n, orbit)
        _write_labels(fw, info)
    os.replace(tmp, path)


def _write_time_vars(fw: _FileWriter, rec: _Records, times: _Times) -> None:
    """``epoch``, the unix times and the accumulation times."""
    D = CDFWriter.CDF_DOUBLE
    fw.rv(
        "epoch",
        CDFWriter.CDF_EPOCH,
        times.epoch,
        units="sec",
        monoton="INCREASE",
        depend_0="epoch",
        catdesc=fw.ext1 + "Epoch (center time)",
    )
    fw.rv("time_unix", D, times.center, **_TIME_KW)
    fw.rv("time_start", D, times.start, **_TIME_KW)
    fw.rv("time_end", D, times.end, **_TIME_KW)
    delta = rec.grid.delta
    fw.rv("time_delta", D, delta.astype(np.float64), units="sec")
    fw.rv("time_integ", D, (delta / np.maximum(rec.nenergy, 1)).astype(np.float64), units="sec")


def _write_record_support(fw: _FileWriter, rec: _Records, orbit: int) -> None:
    """The small per-record variables: header, quality, mode, angles, background, potential."""
    n = rec.grid.start.size
    F, U1, I2 = CDFWriter.CDF_FLOAT, CDFWriter.CDF_UINT1, CDFWriter.CDF_INT2
    fw.rv("header_bytes", U1, np.zeros((n, 44), np.uint8))
    fw.rv("valid", U1, np.ones(n, np.uint8))
    fw.rv("data_quality", U1, rec.data_quality)
    fw.rv("nbins", U1, rec.nbins)
    fw.rv("nenergy", U1, rec.nenergy)
    fw.rv("geom_factor", F, np.full(n, rec.geom_factor, np.float32))
    fw.rv("gf_ind", I2, np.zeros(n, np.int16))
    fw.rv("bins_ind", I2, rec.mode.astype(np.int16))
    fw.rv("mode_ind", U1, rec.mode)
    for name, val in (
        ("theta_shift", rec.theta_shift),
        ("theta_max", (rec.theta_shift + 180).astype(np.float32)),
        ("theta_min", (rec.theta_shift - 180).astype(np.float32)),
    ):
        fw.rv(name, F, val, units="degrees", validmin=-400.0, validmax=400.0, var_type="data")
    fw.rv("bkg", F, np.zeros(n, np.float32), var_type="data")
    fw.rv(
        "sc_pot",
        F,
        np.random.default_rng(orbit).uniform(2, 10, n).astype(np.float32),
        units="volts",
        var_type="data",
    )


def _write_spectra(fw: _FileWriter, rec: _Records, info: Mapping[str, Any]) -> None:
    """The (records, 64, 96) variables: counts, energy flux, pitch angle, geometry."""
    U1, F = CDFWriter.CDF_UINT1, CDFWriter.CDF_FLOAT
    a = rec.arrays
    fw.rv(
        "data",
        U1,
        a["data"],
        units="Counts",
        var_type="data",
        scaletyp="log",
        fieldnam=info["ext1"] + "Counts",
        big=True,
    )
    fw.rv(
        "eflux",
        F,
        a["eflux"],
        units="eV/(cm^2-s-sr-eV)",
        var_type="data",
        scaletyp="log",
        validmin=0.0,
        validmax=1e10,
        fieldnam=info["ext1"] + "Energy flux",
        catdesc=info["ext2"] + "Differential energy flux array with dimensions "
        "(96, 64, NUM_DISTS) (as plasmagrams)",
        big=True,
    )
    fw.rv(
        "pitch_angle",
        F,
        a["pitch_angle"],
        units="degrees",
        var_type="data",
        validmin=-400.0,
        validmax=400.0,
        big=True,
    )
    fw.rv("domega", F, a["domega"], units="ster", big=True)
    fw.rv(
        "energy_full",
        F,
        a["energy_full"],
        units="eV",
        catdesc=info["ext1"] + "Angular values of each bin",
        big=True,
    )
    fw.rv("denergy_full", F, a["denergy_full"], units="eV", big=True)


def _write_orbit_number(fw: _FileWriter, orbit: int, times: _Times) -> None:
    """``orbit_number`` with its own two-record time axis."""
    on_kw = {"depend_0": "orbit_number_epoch", "depend_time": "orbit_number_time"}
    fw.rv("orbit_number", CDFWriter.CDF_INT4, np.array([orbit, orbit], np.int32), **on_kw)
    fw.rv(
        "orbit_number_time",
        CDFWriter.CDF_DOUBLE,
        np.array([times.center.min(), times.center.max()]),
        **_TIME_KW,
        **on_kw,
    )
    fw.rv(
        "orbit_number_epoch",
        CDFWriter.CDF_EPOCH,
        np.array([times.epoch.min(), times.epoch.max()]),
        units="sec",
        **on_kw,
    )


def _write_virtual_vars(fw: _FileWriter) -> None:
    """Zero-record virtual variables (CDAWeb display helpers)."""
    for name in (
        "eflux_movie",
        "eflux_byE_atA",
        "eflux_byA_atE",
        "pitch_angle_median",
        "energy_median",
    ):
        if name not in fw.omit:
            fw.w.write_var(
                {
                    "Variable": name,
                    "Data_Type": CDFWriter.CDF_FLOAT,
                    "Num_Elements": 1,
                    "Rec_Vary": True,
                    "Dim_Sizes": [],
                    "Compress": 0,
                },
                var_attrs={
                    "VIRTUAL": "true",
                    "FUNCT": "alternate_view",
                    "COMPONENT_0": "eflux",
                    "VAR_TYPE": "data",
                    "FILLVAL": [-1e31, "CDF_FLOAT"],
                },
                var_data=None,
            )


def _write_tables(
    fw: _FileWriter, info: Mapping[str, Any], tables: dict[str, np.ndarray], n: int, orbit: int
) -> None:
    """Non-record-varying metadata: names, the mode tables, constants of the instrument."""
    C, F, U1 = CDFWriter.CDF_CHAR, CDFWriter.CDF_FLOAT, CDFWriter.CDF_UINT1
    I2, I4 = CDFWriter.CDF_INT2, CDFWriter.CDF_INT4
    for name, text in (
        ("project_name", "FAST"),
        ("data_name", info["data_name"]),
        ("data_level", "Level 2"),
        ("units_name", "Compressed"),
        ("units_procedure", "fa_convert_esa_units"),
    ):
        fw.nrv(name, C, text, num_elements=len(text))
    fw.nrv("num_dists", I4, np.int32(n))
    n_ang = info["table_angles"]
    bins_shape = (n_ang, N_ENERGY) if info["burst"] else (2, n_ang, N_ENERGY)
    fw.nrv("bins", U1, np.ones(bins_shape, np.uint8))
    for name in ("energy", "denergy", "theta", "dtheta", "eff"):
        units = {"energy": "eV", "denergy": "eV", "theta": "Degrees", "dtheta": "Degrees"}.get(
            name, "NA"
        )
        fw.nrv(name, F, tables[name], units=units)
    gf_shape = (n_ang, N_ENERGY) if info["burst"] else (10, n_ang, N_ENERGY)
    fw.nrv("gf", F, np.ones(gf_shape, np.float32))
    fw.nrv("bkg_arr", F, np.zeros(gf_shape, np.float32))
    fw.nrv("dead", F, np.float32(1.1e-7))
    electron = info["species"] == "electron"
    fw.nrv("mass", F, np.float32(5.68566e-6 if electron else 0.0104389))
    fw.nrv("charge", I2, np.int16(-1 if electron else 1))
    fw.nrv("orbit_start", I4, np.int32(orbit))
    fw.nrv("orbit_end", I4, np.int32(orbit))


def _write_labels(fw: _FileWriter, info: Mapping[str, Any]) -> None:
    """The channel numbers and the label variables of the energy and pitch-angle axes."""
    C, I2, I4 = CDFWriter.CDF_CHAR, CDFWriter.CDF_INT2, CDFWriter.CDF_INT4
    fw.nrv("energy_channel", I4, np.arange(96, dtype=np.int32))
    fw.nrv("pitch_angle_bin", I4, np.arange(64, dtype=np.int32))
    fw.nrv("compno_96", I2, np.arange(1, 97, dtype=np.int16))
    fw.nrv("compno_64", I2, np.arange(1, 65, dtype=np.int16))
    fw.nrv(
        "energy_labl_96",
        C,
        [f"energy@LABL{i}".rjust(13) for i in range(96)],
        num_elements=13,
        dims=[96],
    )
    fw.nrv(
        "angle_labl_64",
        C,
        [f"angle@LABL{i}".rjust(12) for i in range(64)],
        num_elements=12,
        dims=[64],
    )
    by_pitch = [f"{info['ext1']}eflux @ PA {i}" for i in range(1, 65)]
    by_energy = [f"{info['ext1']}eflux @ Energy {i}" for i in range(1, 97)]
    fw.nrv("eflux_bypitch_labl", C, by_pitch, num_elements=max(map(len, by_pitch)), dims=[64])
    fw.nrv("eflux_byenergy_labl", C, by_energy, num_elements=max(map(len, by_energy)), dims=[96])


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def write_esa_file(
    out_dir: str | os.PathLike,
    instrument: str,
    orbit: int,
    *,
    records: int = 400,
    seed: int = 0,
    compress: bool = True,
    istp_depends: bool = False,
    activity: float | None = None,
    version: int = 2,
    layout: str = "yyyy/mm",
) -> Path:
    """Write one synthetic FAST ESA L2 file and return its path.

    Parameters
    ----------
    out_dir : path-like
        Root folder; the file goes to ``out_dir/YYYY/MM/`` (``layout="yyyy/mm"``),
        ``out_dir/<inst>/YYYY/MM/`` (``"spdf"``) or ``out_dir`` (``"flat"``).
    instrument : {"ees", "eeb", "ies", "ieb"}
    orbit : int
        Orbit number; sets the start time (mission orbit model) and the seed stream.
    records : int
        Approximate number of records (survey) or burst records.
    seed : int
        Master seed: the same seed, orbit and instrument give the same file content.
    compress : bool
        GZIP-6 per non-epoch variable with cdfconvert's "optimal" blocking, like the real
        files; ``False`` writes the ~11x larger uncompressed variant.
    istp_depends : bool
        ``False`` (default) keeps the real files' swapped ``DEPEND_1``/``DEPEND_2``.
    activity : float, optional
        Flux multiplier; by default drawn per orbit (quiet ~1, storm 10-100).
    version : int
        The ``_vNN`` of the file name.
    layout : {"yyyy/mm", "spdf", "flat"}

    Returns
    -------
    pathlib.Path
    """
    plan = _OrbitPlan(orbit, seed, records)
    return plan.write(
        Path(out_dir),
        instrument,
        compress=compress,
        istp_depends=istp_depends,
        activity=activity,
        version=version,
        layout=layout,
    )


class _OrbitPlan:
    """Shared per-orbit randomness: survey/burst grids and activity level."""

    def __init__(self, orbit: int, seed: int, records: int) -> None:
        self.orbit = orbit
        self.seed = seed
        rng = np.random.default_rng([seed, orbit])
        storm = rng.random() < 0.25
        self.activity = (
            float(10 ** rng.uniform(1, 2)) if storm else float(10 ** rng.uniform(-0.3, 0.3))
        )
        self.survey = _survey_grid(orbit, records, rng)
        self.has_burst = bool(np.random.default_rng([seed, orbit, 65]).random() < 0.65)
        self.burst = _burst_grid(self.survey, max(2, records), rng) if self.has_burst else None

    def grid_for(self, instrument: str, records: int | None = None) -> _Grid:
        grid = self.burst if INSTRUMENT_INFO[instrument]["burst"] else self.survey
        if grid is None:
            raise ValueError(f"orbit {self.orbit} has no burst data")
        if instrument == "ies":  # ies starts a few seconds after ees
            k = int(np.random.default_rng([self.seed, self.orbit, 7]).integers(0, 3))
            if grid.start.size > k + 1:
                grid = _Grid(
                    *(getattr(grid, f)[k:] for f in ("start", "delta", "fast", "region", "segment"))
                )
        if records is not None:
            grid = _Grid(
                *(
                    getattr(grid, f)[:records]
                    for f in ("start", "delta", "fast", "region", "segment")
                )
            )
        return grid

    def records_for(
        self, instrument: str, records: int | None = None, activity: float | None = None
    ) -> tuple[_Records, dict[str, np.ndarray]]:
        inst_idx = list(INSTRUMENT_INFO).index(instrument)
        rng = np.random.default_rng([self.seed, self.orbit, 100 + inst_idx])
        tables = _mode_tables(instrument, np.random.default_rng([self.seed, 1000 + inst_idx]))
        grid = self.grid_for(instrument, records)
        act = self.activity if activity is None else activity
        return _build_records(instrument, grid, tables, act, rng), tables

    def write(
        self,
        root: Path,
        instrument: str,
        *,
        compress: bool = True,
        istp_depends: bool = False,
        activity: float | None = None,
        version: int = 2,
        layout: str = "yyyy/mm",
        records: int | None = None,
        **bad,
    ) -> Path:
        rec, tables = self.records_for(instrument, records, activity)
        t_center = rec.grid.start[0] + rec.grid.delta[0] / 2
        name = esa_filename(instrument, t_center, self.orbit, version)
        path = _folder(root, instrument, t_center, layout) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_cdf(
            path,
            instrument,
            self.orbit,
            rec,
            tables,
            compress=compress,
            istp_depends=istp_depends,
            **bad,
        )
        return path


def _folder(root: Path, instrument: str, t_unix: float, layout: str) -> Path:
    d = datetime.fromtimestamp(int(t_unix), tz=timezone.utc)
    if layout == "flat":
        return root
    if layout == "spdf":
        return root / instrument / f"{d:%Y}" / f"{d:%m}"
    if layout == "yyyy/mm":
        return root / f"{d:%Y}" / f"{d:%m}"
    raise ValueError(f"unknown layout {layout!r}; use 'yyyy/mm', 'spdf' or 'flat'")


def _write_orb_file(root: Path, orbit: int, layout: str) -> Path:
    """A K0 orbit ephemeris file (ILAT, MLT, ALT at 20 s) for one orbit."""
    t0 = orbit_start_unix(orbit)
    period = orbit_period_seconds(orbit)
    t = t0 + np.arange(0.0, period, 20.0)
    phase = 2 * np.pi * (t - t0) / period
    alt = (350 + (4175 - 350) * (1 - np.cos(phase)) / 2).astype(np.float32)
    ilat = (83 * np.sin(phase)).astype(np.float32)
    mlt = np.mod(12 + 24 * (t - t0) / 86400 + 6 * np.sign(np.cos(phase)), 24).astype(np.float32)
    path = _folder(root, "orb", t0, "flat" if layout == "flat" else "yyyy/mm")
    path = path / f"fa_k0_orb_{orbit:05d}_v01.cdf"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"Majority": "row_major", "Encoding": "IBMPC_ENCODING", "Compressed": 0}
    if path.exists():
        path.unlink()
    with CDFWriter(path, cdf_spec=spec) as w:
        w.write_globalattrs({"Project": {0: "FAST"}, "Logical_source": {0: "fa_k0_orb"}})
        epoch = np.asarray(cdflib.cdfepoch.timestamp_to_cdfepoch(t), np.float64)
        w.write_var(
            {
                "Variable": "Epoch",
                "Data_Type": CDFWriter.CDF_EPOCH,
                "Num_Elements": 1,
                "Rec_Vary": True,
                "Dim_Sizes": [],
                "Compress": 0,
            },
            var_data=epoch,
        )
        for name, dtype, val, units in (
            ("unix_time", CDFWriter.CDF_DOUBLE, t, "s"),
            ("orbit", CDFWriter.CDF_INT4, np.full(t.size, orbit, np.int32), "None"),
            ("alt", CDFWriter.CDF_FLOAT, alt, "km"),
            ("ilat", CDFWriter.CDF_FLOAT, ilat, "deg"),
            ("mlt", CDFWriter.CDF_FLOAT, mlt, "hours"),
        ):
            w.write_var(
                {
                    "Variable": name,
                    "Data_Type": dtype,
                    "Num_Elements": 1,
                    "Rec_Vary": True,
                    "Dim_Sizes": [],
                    "Compress": 0,
                },
                var_attrs={"DEPEND_0": "Epoch", "UNITS": units},
                var_data=val,
            )
    return path


@dataclass
class SynthManifest:
    """What :func:`write_synthetic_dataset` wrote."""

    root: Path
    files: dict[int, dict[str, Path]] = field(default_factory=dict)
    orb_files: dict[int, Path] = field(default_factory=dict)
    bad_files: dict[str, dict] = field(default_factory=dict)  # kind -> {path, orbit, expect}
    activity: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-serialisable summary."""
        return {
            "root": str(self.root),
            "files": {str(o): {i: str(p) for i, p in d.items()} for o, d in self.files.items()},
            "orb_files": {str(o): str(p) for o, p in self.orb_files.items()},
            "bad_files": {k: {**v, "path": str(v["path"])} for k, v in self.bad_files.items()},
            "activity": {str(o): a for o, a in self.activity.items()},
        }


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    orbits: int = 4,
    records: int = 400,
    seed: int = 0,
    start_orbit: int = 13616,
    compress: bool = True,
    bad_files: bool = False,
    orb_files: bool = False,
    istp_depends: bool = False,
    layout: str = "yyyy/mm",
    instruments: Sequence[str] = ("ees", "eeb", "ies", "ieb"),
) -> SynthManifest:
    """Write a folder of synthetic FAST ESA L2 files, one per orbit and instrument.

    Survey files (``ees``, ``ies``) exist for every orbit; burst files (``eeb``,
    ``ieb``) for about two orbits in three, as in the real archive. About one orbit in
    four is a storm orbit with 10-100x the quiet fluxes.

    Parameters
    ----------
    out_dir : path-like
        Root folder (created if needed).
    orbits : int
        Number of consecutive orbits, from ``start_orbit``.
    records : int
        Approximate records per survey file (bursts have about as many).
    seed : int
        Master seed; the output is identical for the same arguments.
    start_orbit : int
        First orbit number (13616 is January 2000).
    compress : bool
        Per-variable GZIP like the real files.
    bad_files : bool
        Also write the broken-file corpus of :data:`BAD_FILE_KINDS`, one ``ees`` file
        per kind on orbits after the good ones (their ``ies`` files are good), and a
        ``v01`` duplicate of the first orbit's ``ees`` file.
    orb_files : bool
        Also write ``fa_k0_orb`` ephemeris files.
    istp_depends : bool
        Write ISTP-consistent DEPEND attributes instead of the real files' swapped ones.
    layout : {"yyyy/mm", "spdf", "flat"}
    instruments : sequence of str

    Returns
    -------
    SynthManifest
        Also saved as ``.synth_manifest.json`` in ``out_dir`` (hidden, so that discovery
        does not report it as an unrecognized file).
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    man = SynthManifest(root=root)
    for orbit in range(start_orbit, start_orbit + orbits):
        plan = _OrbitPlan(orbit, seed, records)
        man.activity[orbit] = plan.activity
        for inst in instruments:
            if INSTRUMENT_INFO[inst]["burst"] and not plan.has_burst:
                continue
            path = plan.write(
                root, inst, compress=compress, istp_depends=istp_depends, layout=layout
            )
            man.files.setdefault(orbit, {})[inst] = path
        if orb_files:
            man.orb_files[orbit] = _write_orb_file(root, orbit, layout)
        logger.debug("synth orbit %d written (activity %.3g)", orbit, plan.activity)
    if bad_files:
        _write_bad_files(
            root,
            man,
            start_orbit + orbits,
            seed=seed,
            records=records,
            compress=compress,
            layout=layout,
        )
    (root / MANIFEST_NAME).write_text(json.dumps(man.to_json(), indent=1))
    logger.info(
        "wrote %d files for %d orbits under %s",
        sum(map(len, man.files.values())),
        len(man.files),
        root,
    )
    return man


def _write_bad_files(
    root: Path,
    man: SynthManifest,
    first_orbit: int,
    *,
    seed: int,
    records: int,
    compress: bool,
    layout: str,
) -> None:
    """One broken ``ees`` file per kind, each on its own orbit (with a good ``ies``)."""
    small = max(8, min(records, 60))
    for k, (kind, expect) in enumerate(BAD_FILE_KINDS.items()):
        orbit = first_orbit + k
        plan = _OrbitPlan(orbit, seed, small)
        ies = plan.write(root, "ies", compress=compress, layout=layout)
        man.files.setdefault(orbit, {})["ies"] = ies
        kw: dict = {}
        if kind == "missing-variable":
            kw["omit"] = {"eflux", "data"}
        elif kind == "wrong-shape":
            rec, _ = plan.records_for("ees")
            kw["overrides"] = {
                v: np.ascontiguousarray(rec.arrays[v][:, :, :48]) for v in ("eflux", "data")
            }
            kw["dims_override"] = {"eflux": [64, 48], "data": [64, 48]}
        elif kind == "wrong-rank":
            rec, _ = plan.records_for("ees")
            kw["overrides"] = {
                v: np.ascontiguousarray(rec.arrays[v][:, 0, :]) for v in ("eflux", "data")
            }
            kw["dims_override"] = {"eflux": [96], "data": [96]}
        elif kind == "inconsistent-records":
            rec, _ = plan.records_for("ees")
            # time_unix is 3 records short of every other variable
            t = rec.grid.start + rec.grid.delta / 2
            kw["overrides"] = {"time_unix": np.ascontiguousarray(t[:-3])}
        elif kind == "all-fill":
            rec, _ = plan.records_for("ees")
            kw["overrides"] = {
                "eflux": np.full_like(rec.arrays["eflux"], FILL_FLOAT),
                "data": np.zeros_like(rec.arrays["data"]),
                "valid": np.zeros(rec.grid.start.size, np.uint8),
            }
        path = plan.write(
            root,
            "ees",
            compress=compress,
            layout=layout,
            records=1 if kind == "single-record" else None,
            **kw,
        )
        if kind in ("empty", "html", "truncated", "truncated-header"):
            raw = path.read_bytes()
            body = {
                "empty": b"",
                "html": (
                    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
                    b"<body><h1>Not Found</h1><p>The requested URL was not found on "
                    b"this server.</p></body></html>\n"
                ),
                "truncated": raw[: len(raw) // 2],
                "truncated-header": raw[:300],
            }[kind]
            path.write_bytes(body)
        man.files[orbit]["ees"] = path
        man.bad_files[kind] = {"path": path, "orbit": orbit, "instrument": "ees", "expect": expect}
    # A superseded v01 of the first good orbit's ees file (discovery must prefer v02).
    first = min(o for o in man.files if o < first_orbit)
    if "ees" in man.files[first]:
        plan = _OrbitPlan(first, seed + 1, small)
        dup = plan.write(root, "ees", compress=compress, layout=layout, version=1)
        man.bad_files["duplicate-v01"] = {
            "path": dup,
            "orbit": first,
            "instrument": "ees",
            "expect": "superseded",
        }
