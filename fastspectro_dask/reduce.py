"""Pitch-angle categories and the collapse of the angle axis: arrays in, arrays out.

A FAST ESA record is an ``(angle, energy)`` array with a pitch angle per bin. For each
pitch-angle category (a set of ``[lo, hi)`` degree ranges) the angle axis collapses into a
``(time, energy)`` spectrogram:

* counts (``data``, stored as 8-bit pseudo-log codes, decompressed first by
  :func:`decompress_counts`) are **summed** over the bins of the category;
* calibrated flux (``eflux``) is **averaged with solid-angle (``domega``) weights**;
* a record with no valid bin in the category is NaN, not 0.

Energies are per record (modes change inside an orbit): the reduced energy of a channel is
the median over the record's valid angle bins of ``energy_full`` (robust to the
unreliable retrace step of channel 0, whose energy varies from angle to angle).

Channel 0, the first step of every sweep, is the analyser's high-voltage retrace: its
energy is unreliable and the FAST user guide says to ignore it. The reduction drops it
(NaN values and energy) unless ``retrace=True``.

Each record's accumulation length (the CDF ``time_delta``, ``time_end - time_start`` in
seconds; the record's time stamp is the centre of that interval) travels along as
``time_delta``, so that plots can draw every record at its real width. Fill, non-finite and
non-positive values, or a source without the variable, give NaN (unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "DEFAULT_CATEGORIES",
    "RETRACE_CHANNEL",
    "Categories",
    "category_mask",
    "collapse_angle",
    "decompress_counts",
    "normalize_categories",
    "record_durations",
    "reduce_dataset",
    "reduced_energy",
]

logger = logging.getLogger(__name__)

#: Category key -> ranges of pitch angle in degrees, each ``[lo, hi)`` (``hi == 360`` is
#: closed). 0 deg is field-aligned (downgoing in the north), 180 deg anti-field-aligned.
Categories = Mapping[str, Sequence[tuple[float, float]]]

DEFAULT_CATEGORIES: dict[str, tuple[tuple[float, float], ...]] = {
    "all": ((0.0, 360.0),),
    "downgoing": ((0.0, 30.0), (330.0, 360.0)),
    "upgoing": ((150.0, 210.0),),
    "perpendicular": ((40.0, 140.0), (210.0, 330.0)),
}

#: How each variable collapses over angle.
_HOW = {"data": "sum", "eflux": "mean"}
#: Counter maxima of the 16->8 bit (survey) and 14->8 bit (burst) count compression.
_COUNT_MAX = {False: 65535.0, True: 16383.0}
_BURST = ("eeb", "ieb")

#: Index (along ``energy_channel``) of the sweep's high-voltage retrace step.
RETRACE_CHANNEL = 0


def decompress_counts(codes: np.ndarray, *, burst: bool) -> np.ndarray:
    """Counts from FAST ESA's 8-bit pseudo-log compressed ``data`` codes.

    Codes below 32 are the counts themselves; above,
    ``counts = 32 * (cmax / 32) ** ((code - 32) / 223)`` with ``cmax`` 65535 (survey,
    16->8 bit) or 16383 (burst, 14->8 bit). This inverts the approximation of the
    instrument's ``byteto16``/``byteto14`` tables given in the format reference (the
    tables themselves are calibration files not available here); a code of 255 (counter
    overflow) gives ``cmax``, a lower bound. NaN stays NaN.

    Parameters
    ----------
    codes : ndarray
        The ``data`` values (float, NaN where not measured).
    burst : bool
        Burst (``eeb``, ``ieb``) or survey (``ees``, ``ies``) compression.

    Returns
    -------
    ndarray of float32
    """
    c = np.asarray(codes, dtype=np.float32)
    cmax = _COUNT_MAX[bool(burst)]
    with np.errstate(invalid="ignore"):
        high = 32.0 * np.exp((c.astype(np.float64) - 32.0) * np.log(cmax / 32.0) / 223.0)
        return np.where(c < 32, c, high).astype(np.float32)


def normalize_categories(
    categories: Categories | None,
) -> dict[str, tuple[tuple[float, float], ...]]:
    """Validate categories (``None`` -> the defaults); ranges must lie in [0, 360]."""
    if categories is None:
        return dict(DEFAULT_CATEGORIES)
    out: dict[str, tuple[tuple[float, float], ...]] = {}
    for key, ranges in categories.items():
        if isinstance(ranges, tuple) and len(ranges) == 2 and np.isscalar(ranges[0]):
            ranges = (ranges,)  # a single (lo, hi) pair
        checked = []
        for lo, hi in ranges:
            lo, hi = float(lo), float(hi)
            if not (0.0 <= lo < hi <= 360.0):
                raise ValueError(
                    f"pitch-angle category {key!r}: range ({lo}, {hi}) must satisfy "
                    "0 <= lo < hi <= 360"
                )
            checked.append((lo, hi))
        if not checked:
            raise ValueError(f"pitch-angle category {key!r} has no range")
        out[str(key)] = tuple(checked)
    if not out:
        raise ValueError("no pitch-angle category given")
    return out


def category_mask(pitch_angle: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """Boolean mask of the bins whose pitch angle lies in any ``[lo, hi)`` range.

    NaN pitch angles (bins outside the valid block) are never in a category.
    """
    pa = np.asarray(pitch_angle)
    mask = np.zeros(pa.shape, bool)
    with np.errstate(invalid="ignore"):
        for lo, hi in ranges:
            upper = pa <= hi if hi >= 360.0 else pa < hi
            mask |= (pa >= lo) & upper
    return mask


def collapse_angle(
    values: np.ndarray,
    pitch_angle: np.ndarray,
    domega: np.ndarray | None,
    ranges: Sequence[tuple[float, float]],
    how: str = "sum",
) -> np.ndarray:
    """Collapse ``(time, angle, energy)`` to ``(time, energy)`` over one category.

    Parameters
    ----------
    values : ndarray, shape (time, angle, energy)
        Counts or flux, NaN where not measured.
    pitch_angle : ndarray, same shape
        Degrees in [0, 360), NaN outside the valid block.
    domega : ndarray, same shape, or None
        Solid angle per bin (sr); required for ``how="mean"``.
    ranges : sequence of (lo, hi)
        The category.
    how : {"sum", "mean"}
        ``"sum"`` adds the values (counts); ``"mean"`` is the ``domega``-weighted mean.

    Returns
    -------
    ndarray, shape (time, energy), float64
        NaN where a record has no valid bin of the category at that energy.
    """
    return _collapse_categories(values, pitch_angle, domega, cats={"c": ranges}, how=how)[0]


def reduced_energy(energy_full: np.ndarray) -> np.ndarray:
    """Per-record channel energy: median over the valid angle bins (NaN if none)."""
    e = np.asarray(energy_full)
    out = np.full((e.shape[0], e.shape[2]), np.nan)
    valid = np.isfinite(e)
    n_ang = valid.any(axis=2).sum(axis=1)  # valid angle rows per record
    n_en = valid.any(axis=1).sum(axis=1)  # valid energy columns per record
    for nb, ne in {(int(a), int(b)) for a, b in zip(n_ang, n_en, strict=True)}:
        if nb == 0 or ne == 0:
            continue
        sel = (n_ang == nb) & (n_en == ne)
        block = e[sel, :nb, :ne]
        if np.isfinite(block).all():  # the usual [:nbins, :nenergy] block: plain median
            out[sel, :ne] = np.median(block, axis=1)
        else:  # irregular holes: slower, NaN-aware
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    full = np.nanmedian(e[sel], axis=1)
            out[sel] = full
    return out


def record_durations(time_delta: np.ndarray) -> np.ndarray:
    """Accumulation lengths as float64 seconds, NaN where unknown.

    Parameters
    ----------
    time_delta : ndarray, shape (time,)
        The CDF ``time_delta`` (``time_end - time_start``, seconds), NaN or the CDF fill
        value (-1e31) where not known.

    Returns
    -------
    ndarray of float64, shape (time,)
        The same values; non-finite and non-positive ones (fill) are NaN.
    """
    d = np.array(time_delta, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        d[~(np.isfinite(d) & (d > 0))] = np.nan
    return d


def _durations_of(ds: xr.Dataset) -> Any:
    """``record_durations`` of the source's ``time_delta`` (lazy if it is), NaN if absent."""
    n = ds.sizes["time"]
    if "time_delta" not in ds.variables or ds["time_delta"].dims != ("time",):
        if "time_delta" in ds.variables:
            logger.warning(
                "%s: time_delta has dims %s, expected ('time',); record widths unknown",
                ds.attrs.get("source", "dataset"),
                ds["time_delta"].dims,
            )
        return np.full(n, np.nan)
    raw = ds["time_delta"].data
    if isinstance(raw, np.ndarray):
        return record_durations(raw)
    import dask.array as da

    return da.asarray(raw).map_blocks(record_durations, dtype=np.float64, token="reduce-time-delta")


def _collapse_categories(
    values: np.ndarray,
    pitch: np.ndarray,
    domega: np.ndarray | None,
    *,
    cats: Mapping[str, Sequence[tuple[float, float]]],
    how: str,
) -> np.ndarray:
    """(category, time, energy) for one block of records; shared work done once."""
    if how not in ("sum", "mean"):
        raise ValueError(f"how must be 'sum' or 'mean', not {how!r}")
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    if how == "mean":
        if domega is None:
            raise ValueError("how='mean' needs domega weights")
        domega = np.asarray(domega, dtype=np.float32)
        finite &= np.isfinite(domega) & (domega > 0)
        weight = np.where(finite, domega, np.float32(0))
    filled = np.where(finite, values, np.float32(0))
    out = np.empty((len(cats), values.shape[0], values.shape[2]))
    for k, ranges in enumerate(cats.values()):
        member = category_mask(pitch, ranges) & finite
        if how == "sum":
            total = np.einsum("tae,tae->te", filled, member, dtype=np.float64)
            out[k] = np.where(member.any(axis=1), total, np.nan)
        else:
            # products and sums in float64: a float32 product would underflow (tiny
            # values) or round before the division
            w = weight * member  # exact: member is 0/1
            total = np.einsum("tae,tae->te", filled, w, dtype=np.float64)
            den = w.sum(axis=1, dtype=np.float64)
            out[k] = np.nan
            np.divide(total, den, out=out[k], where=den > 0)
    return out


def reduce_dataset(
    ds: xr.Dataset,
    *,
    variable: str = "data",
    categories: Categories | None = None,
    decompress: bool = True,
    retrace: bool = False,
) -> xr.Dataset:
    """Reduce an ``open_esa`` Dataset to ``(category, time, energy_channel)`` spectrograms.

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`fastspectro_dask.open_esa` (dask or numpy backed).
    variable : {"data", "eflux"}
        ``data`` (counts) is summed over the category's bins; ``eflux`` is averaged with
        ``domega`` weights.
    categories : mapping, optional
        Key -> ``[(lo, hi), ...]`` in degrees; default :data:`DEFAULT_CATEGORIES`.
    decompress : bool
        For ``data``: turn the 8-bit compressed codes into counts before summing
        (:func:`decompress_counts`; default). ``False`` sums the codes as stored.
    retrace : bool
        Keep channel 0, the sweep's high-voltage retrace step (:data:`RETRACE_CHANNEL`).
        By default it is dropped (NaN values and energy), as the FAST user guide advises:
        its energy is unreliable, and kept it would stretch the energy axis and ``y_max``
        beyond the instrument's range (to ~60 keV).

    Returns
    -------
    xarray.Dataset
        ``values`` (category, time, energy_channel) float64, ``energy`` (time,
        energy_channel) in eV and ``time_delta`` (time) float64, each record's accumulation
        length in seconds from the source's ``time_delta`` (NaN where it is fill or the
        source has none; the ``time`` stamps are the accumulation centres). Lazily computed
        when the input is dask-backed (one task per input chunk). Attributes:
        ``variable``, ``units`` (the CDF ``UNITS``), and the source's ``instrument``,
        ``orbit``, ``source``.
    """
    if variable not in _HOW:
        raise ValueError(f"variable must be one of {sorted(_HOW)}, not {variable!r}")
    cats = normalize_categories(categories)
    how = _HOW[variable]
    arrays = [ds[variable].data, ds["pitch_angle"].data, ds["domega"].data, ds["energy_full"].data]
    if variable == "data" and decompress:  # sum counts, not compressed codes
        burst = str(ds.attrs.get("instrument", "")) in _BURST
        if isinstance(arrays[0], np.ndarray):
            arrays[0] = decompress_counts(arrays[0], burst=burst)
        else:
            arrays[0] = arrays[0].map_blocks(decompress_counts, burst=burst, dtype=np.float32)
    if all(isinstance(a, np.ndarray) for a in arrays):
        values = _collapse_categories(*arrays[:3], cats=cats, how=how)
        energy = reduced_energy(arrays[3])
    else:
        import dask.array as da

        arrays = [da.asarray(a).rechunk({1: -1, 2: -1}) for a in arrays]
        values = da.map_blocks(
            _collapse_categories,
            *arrays[:3],
            cats=cats,
            how=how,
            dtype=np.float64,
            drop_axis=1,
            new_axis=0,
            chunks=((len(cats),), arrays[0].chunks[0], arrays[0].chunks[2]),
            token=f"reduce-{variable}",  # a prefix: keys stay unique
        )
        energy = da.map_blocks(
            reduced_energy,
            arrays[3],
            dtype=np.float64,
            drop_axis=1,
            chunks=(arrays[3].chunks[0], arrays[3].chunks[2]),
            token="reduce-energy",
        )
    durations = _durations_of(ds)
    units = ds[variable].attrs.get("UNITS", "")
    out = xr.Dataset(
        {
            "values": (
                ("category", "time", "energy_channel"),
                values,
                {"long_name": f"{variable} ({how} over pitch angle)", "units": units},
            ),
            "energy": (
                ("time", "energy_channel"),
                energy,
                {"long_name": "channel energy (median over angle bins)", "units": "eV"},
            ),
            "time_delta": (
                ("time",),
                durations,
                {
                    "long_name": "accumulation length (time_end - time_start), centred on time",
                    "units": "s",
                },
            ),
        },
        coords={
            "category": list(cats),
            "time": ds["time"].values,
            "energy_channel": ds["energy_channel"].values,
        },
        attrs={
            "variable": variable,
            "units": units,
            **{k: ds.attrs[k] for k in ("instrument", "orbit", "source") if k in ds.attrs},
        },
    )
    out["category"].attrs["ranges"] = repr(cats)
    out.attrs["retrace"] = int(bool(retrace))
    if not retrace:
        measured = out["energy_channel"] != RETRACE_CHANNEL  # by label: slicing-safe
        for name in ("values", "energy"):
            out[name] = out[name].where(measured).assign_attrs(out[name].attrs)
    return out
