"""FAST K0 orbit ephemeris (``fa_k0_orb_<orbit>_v<NN>.cdf``): reading and interpolation.

The orbit files carry the spacecraft position at about 20 s cadence over one orbit
(FAST_ESA_L2_FORMAT.md §1e). Figures use three of their variables as label rows under the
time axis:

* ``alt``: altitude, km;
* ``ilat``: invariant latitude, degrees (positive in the northern hemisphere);
* ``mlt``: magnetic local time, hours in [0, 24).

:func:`read_ephemeris` reads a file into an :class:`Ephemeris`; :meth:`Ephemeris.at`
interpolates it to tick times (linear; MLT across its 24 h wrap; NaN outside the file's
span and across gaps in the ephemeris, never extrapolated); :func:`format_rows` turns the
result into label strings. Every failure to read a file is an :class:`EphemerisError`
naming the file and the cause, so a caller can warn and fall back to UT-only labels.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ROW_TITLES",
    "Ephemeris",
    "EphemerisError",
    "format_rows",
    "read_ephemeris",
]

logger = logging.getLogger(__name__)

#: Axis titles of the label rows, keyed like the dict returned by :meth:`Ephemeris.at`.
ROW_TITLES: dict[str, str] = {"ALT": "ALT (km)", "ILAT": "ILAT (deg)", "MLT": "MLT (h)"}

#: Default largest step between ephemeris samples that is interpolated across, in units
#: of the file's median cadence.
GAP_FACTOR = 5.0

# Any value at or below this is a CDF fill or pad value (FILLVAL -1e31, pad -1e30).
_FILL_BELOW = -1e29


class EphemerisError(ValueError):
    """An orbit file cannot be used: not a CDF, a variable missing, no records, bad shape.

    The message always starts with the file's path.
    """


def _to_unix(times: Any) -> np.ndarray:
    """``datetime64`` (any unit; NaT -> NaN) or numbers (unix s) -> float64 unix seconds."""
    arr = np.asarray(times)
    if arr.dtype.kind == "M":
        ns = arr.astype("datetime64[ns]")
        out = ns.astype(np.int64).astype(np.float64) / 1e9
        return np.where(np.isnat(ns), np.nan, out)
    if arr.dtype.kind == "O":  # e.g. a list of datetime64 scalars mixed with None
        return _to_unix(np.array(arr.tolist(), dtype="datetime64[ns]"))
    return arr.astype(np.float64)


@dataclass(frozen=True, eq=False)
class Ephemeris:
    """One orbit file's ALT, ILAT and MLT on its own time grid.

    Parameters
    ----------
    time : ndarray, shape (n,)
        Unix seconds (float64), strictly increasing and finite.
    alt, ilat, mlt : ndarray, shape (n,)
        Altitude (km), invariant latitude (deg) and magnetic local time (h in [0, 24)).
        NaN where the file has a fill value; such samples are skipped (bridged) by
        :meth:`at` like any other gap.
    source : str
        The file name (for logs and provenance).
    max_gap : float or None
        Largest step between two samples (s) that :meth:`at` interpolates across; a
        larger one is a gap and gives NaN inside it. None: ``GAP_FACTOR`` (5) times the
        median cadence.

    Notes
    -----
    The arrays are stored as read-only float64 copies. Instances compare by identity.
    """

    time: np.ndarray
    alt: np.ndarray
    ilat: np.ndarray
    mlt: np.ndarray
    source: str = ""
    max_gap: float | None = field(default=None)

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("time", "alt", "ilat", "mlt"):
            a = np.array(getattr(self, name), dtype=np.float64, copy=True)
            if a.ndim != 1:
                raise ValueError(f"Ephemeris.{name} must be 1-D, got shape {a.shape}")
            a.setflags(write=False)
            arrays[name] = a
        n = arrays["time"].size
        for name, a in arrays.items():
            if a.size != n:
                raise ValueError(f"Ephemeris.{name} has {a.size} samples, time has {n}")
        t = arrays["time"]
        if not np.isfinite(t).all():
            raise ValueError("Ephemeris.time must be finite")
        if n > 1 and not (np.diff(t) > 0).all():
            raise ValueError("Ephemeris.time must be strictly increasing")
        for name, a in arrays.items():
            object.__setattr__(self, name, a)
        if self.max_gap is None:
            cadence = float(np.median(np.diff(t))) if n > 1 else 0.0
            object.__setattr__(self, "max_gap", GAP_FACTOR * cadence)

    def __len__(self) -> int:
        return int(self.time.size)

    @property
    def span(self) -> tuple[float, float] | None:
        """First and last sample time (unix s), or None for an empty ephemeris."""
        if self.time.size == 0:
            return None
        return float(self.time[0]), float(self.time[-1])

    def _interp(self, t: np.ndarray, y: np.ndarray, *, period: float | None = None) -> np.ndarray:
        ok = np.isfinite(y)
        ts, ys = self.time[ok], y[ok]
        out = np.full(t.shape, np.nan)
        if ts.size == 0:
            return out
        if period is not None:
            ys = np.unwrap(ys, period=period)
        tf = np.where(np.isfinite(t), t, ts[0] - 1.0)  # NaN/NaT queries: outside the span
        inside = (tf >= ts[0]) & (tf <= ts[-1])
        if ts.size > 1:
            # ts[i-1] < t <= ts[i]; a query on a sample is exact whatever the gap around it
            i = np.clip(np.searchsorted(ts, tf, side="left"), 1, ts.size - 1)
            step = ts[i] - ts[i - 1]
            on_sample = (tf == ts[i]) | (tf == ts[i - 1])
            inside &= (step <= float(self.max_gap)) | on_sample
        vals = np.interp(tf, ts, ys)
        if period is not None:
            vals = np.mod(vals, period)
        out[inside] = vals[inside]
        return out

    def at(self, times: Any) -> dict[str, np.ndarray]:
        """Interpolate ALT, ILAT and MLT to ``times``.

        Parameters
        ----------
        times : array-like of datetime64 or float
            Query times: ``datetime64`` (any unit) or unix seconds. NaT/NaN give NaN.

        Returns
        -------
        dict
            ``{"ALT": km, "ILAT": deg, "MLT": h}``, float64 arrays of the shape of
            ``times``. ALT and ILAT are linear in time; MLT is unwrapped across
            24 -> 0 before the linear interpolation and returned modulo 24 (the midpoint
            of 23.8 and 0.2 is 0.0). NaN before the first and after the last valid sample
            of each variable (no extrapolation) and inside a step between samples longer
            than ``max_gap``.
        """
        t = _to_unix(times)
        return {
            "ALT": self._interp(t, self.alt),
            "ILAT": self._interp(t, self.ilat),
            "MLT": self._interp(t, self.mlt, period=24.0),
        }

    def hemisphere(self, t0: Any, t1: Any) -> str | None:
        """``"north"`` or ``"south"`` if the whole span ``[t0, t1]`` is in one hemisphere.

        Parameters
        ----------
        t0, t1 : datetime64 or float
            The span (unix seconds or ``datetime64``), in either order.

        Returns
        -------
        str or None
            The hemisphere of every valid ILAT sample in the span and of the ILAT
            interpolated at its ends and middle (see :meth:`hemisphere_of`); None when
            there is none or the span crosses the magnetic equator.
        """
        a, b = sorted(float(x) for x in _to_unix(np.array([t0, t1])).ravel())
        if not (math.isfinite(a) and math.isfinite(b)):
            return None
        ok = np.isfinite(self.ilat) & (self.time >= a) & (self.time <= b)
        return self.hemisphere_of(np.concatenate([self.time[ok], [a, 0.5 * (a + b), b]]))

    def hemisphere_of(self, times: Any) -> str | None:
        """``"north"`` or ``"south"`` if the ILAT at every one of ``times`` has that sign.

        A row named "downgoing" must be downgoing for all of its data: a figure whose
        data lie on both sides of the magnetic equator gets None (rows named by pitch
        angle only).

        Parameters
        ----------
        times : array-like of datetime64 or float
            E.g. the record times of the drawn data (unix seconds or ``datetime64``).

        Returns
        -------
        str or None
            None when no time has a valid ILAT (outside the ephemeris, in its gaps), when
            ILAT has both signs, or when it is 0 at all of them.
        """
        ilat = self._interp(_to_unix(times), self.ilat)  # as :meth:`at`, ILAT alone
        ilat = ilat[np.isfinite(ilat) & (ilat != 0)]
        if ilat.size == 0:
            return None
        if (ilat > 0).all():
            return "north"
        if (ilat < 0).all():
            return "south"
        return None


def _fail(path: Path, cause: str) -> EphemerisError:
    return EphemerisError(f"{path}: {cause}")


def _clean(values: np.ndarray, fillval: Any) -> np.ndarray:
    """Float64 copy with fill (FILLVAL, <= -1e29) and non-finite values as NaN."""
    out = np.array(values, dtype=np.float64, copy=True)
    bad = ~np.isfinite(out) | (out <= _FILL_BELOW)
    if fillval is not None:
        try:
            fv = float(np.ravel(np.asarray(fillval, dtype=np.float64))[0])
        except (TypeError, ValueError, IndexError):
            fv = None
        if fv is not None and math.isfinite(fv):
            bad |= out == fv
    out[bad] = np.nan
    return out


def read_ephemeris(path: str | os.PathLike[str]) -> Ephemeris:
    """Read a FAST K0 orbit file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``fa_k0_orb_<orbit>_v<NN>.cdf`` file.

    Returns
    -------
    Ephemeris
        Records sorted by time; records without a valid time dropped (and duplicates of
        a time, keeping the first); fill values (FILLVAL, -1e31, pad -1e30) and
        non-finite ALT/ILAT/MLT as NaN.

    Raises
    ------
    EphemerisError
        The message names the file and the cause: missing file, not a readable CDF,
        a required variable missing (``alt``, ``ilat``, ``mlt``, and ``unix_time`` or
        ``Epoch``; names matched case-insensitively), no records or no valid time,
        wrong shape (more than one value per record) or different record counts.

    Notes
    -----
    Time is ``unix_time`` (double, s) where it is valid, else ``Epoch`` converted with
    :func:`cdflib.cdfepoch.unixtime`.
    """
    import cdflib  # imported here: the module's pure functions do not need it

    p = Path(path)
    if not p.is_file():
        raise _fail(p, "no such file")
    try:
        cdf = cdflib.CDF(str(p))
        info = cdf.cdf_info()
        names = list(info.zVariables) + list(info.rVariables)
    except Exception as exc:  # cdflib raises OSError/ValueError/struct errors on junk
        raise _fail(p, f"not a readable CDF ({type(exc).__name__}: {exc})") from exc
    lookup = {n.lower(): n for n in names}

    def get(key: str) -> tuple[np.ndarray, Any] | None:
        name = lookup.get(key.lower())
        if name is None:
            return None
        try:
            inq = cdf.varinq(name)
            if inq.Last_Rec < 0:
                return np.empty(0), None
            data = cdf.varget(name)
            attrs = cdf.varattsget(name)
        except Exception as exc:
            raise _fail(p, f"cannot read variable {name!r} ({type(exc).__name__}: {exc})") from exc
        arr = np.asarray(data) if data is not None else np.empty(0)
        if isinstance(data, str) or arr.dtype.kind not in "fiuc":
            raise _fail(p, f"variable {name!r} is not numeric")
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim > 1:
            if arr.size != arr.shape[0]:  # (n, 1) is fine; (n, 3) is not a scalar per record
                raise _fail(p, f"variable {name!r} has shape {arr.shape}, expected (records,)")
            arr = arr.reshape(-1)
        return arr, (attrs or {}).get("FILLVAL")

    got: dict[str, tuple[np.ndarray, Any]] = {}
    for key in ("alt", "ilat", "mlt"):
        r = get(key)
        if r is None:
            raise _fail(p, f"missing variable {key!r}")
        got[key] = r
    unix = get("unix_time")
    epoch = get("epoch")
    if unix is None and epoch is None:
        raise _fail(p, "missing variable 'unix_time' and 'Epoch' (no time)")

    n = got["alt"][0].size
    if n == 0:
        raise _fail(p, "no records")
    sizes = {k: v[0].size for k, v in got.items()}
    for key, r in (("unix_time", unix), ("Epoch", epoch)):
        if r is not None:
            sizes[key] = r[0].size
    if len(set(sizes.values())) != 1:
        raise _fail(p, f"record counts differ between variables: {sizes}")

    t = np.full(n, np.nan)
    if unix is not None:
        t = _clean(unix[0], unix[1])
    if epoch is not None and not np.isfinite(t).all():
        raw = np.asarray(epoch[0])
        try:
            valid = raw > _FILL_BELOW if raw.dtype.kind == "f" else np.ones(n, bool)
            conv = np.full(n, np.nan)
            if valid.any():
                conv[valid] = np.asarray(cdflib.cdfepoch.unixtime(raw[valid]), np.float64)
        except Exception as exc:
            raise _fail(p, f"cannot convert Epoch ({type(exc).__name__}: {exc})") from exc
        t = np.where(np.isfinite(t), t, conv)

    keep = np.isfinite(t)
    if not keep.any():
        raise _fail(p, "no records with a valid time")
    t = t[keep]
    order = np.argsort(t, kind="stable")
    t = t[order]
    first = np.concatenate([[True], np.diff(t) > 0])
    cols = {k: _clean(v[0], v[1])[keep][order][first] for k, v in got.items()}
    eph = Ephemeris(
        time=t[first], alt=cols["alt"], ilat=cols["ilat"], mlt=cols["mlt"], source=p.name
    )
    logger.debug("ephemeris %s: %d samples, %d dropped", p.name, len(eph), n - len(eph))
    return eph


def _fmt_alt(v: float) -> str:
    return f"{round(v):d}"


def _fmt_ilat(v: float) -> str:
    s = f"{v:.1f}"
    return "0.0" if s == "-0.0" else s


def _fmt_mlt(v: float) -> str:
    r = round(v % 24.0, 1)
    return f"{(0.0 if r >= 24.0 else r):.1f}"


_FORMATTERS = {"ALT": _fmt_alt, "ILAT": _fmt_ilat, "MLT": _fmt_mlt}


def format_rows(
    values: Mapping[str, Any], labels: Sequence[str] = ("ALT", "ILAT", "MLT")
) -> dict[str, list[str]]:
    """Per-tick label strings for the ephemeris rows.

    Parameters
    ----------
    values : mapping
        As returned by :meth:`Ephemeris.at`; keys matched case-insensitively.
    labels : sequence of str
        Rows to format, among ``"ALT"``, ``"ILAT"``, ``"MLT"``.

    Returns
    -------
    dict
        ``label -> list of str``, one string per tick (``values`` flattened):
        ALT as integer km (``"4175"``), ILAT in degrees with one decimal (``"-72.3"``),
        MLT in decimal hours with one decimal (``"23.8"``; rounding never gives
        ``"24.0"``: 23.96 h is ``"0.0"``). NaN gives ``""``. Units are not in the
        strings; they are in the row titles (:data:`ROW_TITLES`).

    Raises
    ------
    KeyError
        A label that is unknown or absent from ``values``.
    """
    lookup = {str(k).upper(): k for k in values}
    out: dict[str, list[str]] = {}
    for label in labels:
        key = label.upper()
        if key not in _FORMATTERS:
            raise KeyError(f"unknown ephemeris row {label!r}; use one of {sorted(_FORMATTERS)}")
        if key not in lookup:
            raise KeyError(f"no values for ephemeris row {label!r}")
        fmt = _FORMATTERS[key]
        arr = np.asarray(values[lookup[key]], dtype=np.float64).ravel()
        out[label] = [fmt(float(v)) if math.isfinite(v) else "" for v in arr]
    return out
