"""The zarr store of reduced spectrograms.

Reduced spectrograms (``(category, time, energy)``, about 1/64 of a raw file) are written
once, during pass 1 of the extrema, so that pass 2, other scale combinations and the
plotting read them instead of decoding CDF files again.

Layout: one zarr store (default ``reduced.zarr`` beside the outputs) with one group per
source file and reduction, named ``{instrument}-{orbit}-{digest}`` where the digest covers
the source's absolute path, size, modification time and the reduction parameters
(variable, categories). A changed file therefore gets a new entry and an old entry is never
served for it. An entry is visible only once complete: its ``complete`` attribute is written
last. A whole entry (:meth:`ReducedCache.has`, :meth:`ReducedCache.read`) is served only if
its ``schema`` attribute is the current layout (:data:`_SCHEMA`): an entry of an older layout
is treated as absent, so it is recomputed rather than misread. Its values and pass-1 summary
alone (:meth:`ReducedCache.read_values`, :meth:`ReducedCache.summary`) are also served from
older layouts whose numbers are unchanged (:data:`_SAME_VALUES`). Entries also carry a small
JSON ``summary`` attribute (the file's pass-1 histogram summary) so that an extrema state can
be updated when a file changes or disappears.

An entry holds ``values`` (category, time, energy_channel) and ``energy`` (time,
energy_channel) as float32, ``time_delta`` (time; each record's accumulation length in
seconds, NaN where unknown) as float64, and the ``time`` and ``energy_channel``
coordinates; with a :class:`~fastspectro_dask.reduce.PadSpec`, also ``pad_values`` and
``pad_pitch`` (time, pitch_bin) as float32, the pitch-angle spectrogram and its sorted
pitch angles (the spec is part of the entry's key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from fastspectro_dask.reduce import REDUCTION_VERSION, PadSpec

__all__ = ["FileKey", "ReducedCache", "reduce_file"]

logger = logging.getLogger(__name__)

#: Layout version of an entry. 2: data decompressed to counts before the angle sum;
#: 3: per-record ``time_delta`` (accumulation length) stored with the spectrogram;
#: 4: the reduction parameters include ``retrace`` (channel 0 dropped by default);
#: 5: keys carry :data:`~fastspectro_dask.reduce.REDUCTION_VERSION` (flight-compressor
#: decoding, fractional category weights): older entries are recomputed, never reused.
_SCHEMA = 5
#: Layouts whose ``values`` and pass-1 ``summary`` equal the current layout's.
_SAME_VALUES = frozenset({5})


@dataclass(frozen=True)
class FileKey:
    """Identity of a source file: absolute path, size and modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileKey:
        """Fingerprint a file as it is now on disk."""
        p = Path(path).absolute()
        st = p.stat()
        return cls(str(p), int(st.st_size), int(st.st_mtime_ns))

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


#: Entries :meth:`ReducedCache.read` keeps in memory per process (a few MB each).
RECENT_ENTRIES = 16
_RECENT: OrderedDict[tuple[str, str], tuple[tuple[int, int, int], xr.Dataset]] = OrderedDict()


def reduce_file(
    path: str | os.PathLike[str],
    variable: str,
    categories: Mapping[str, Any],
    retrace: bool = False,
    pad: PadSpec | None = None,
) -> xr.Dataset:
    """Read one CDF file straight into NumPy and reduce it in memory (called inside tasks).

    No dask at all: each needed variable is decoded once, straight into NumPy (as
    :func:`~fastspectro_dask.io.load_esa` does, with ``data`` decoded to counts in the
    same pass) and :func:`~fastspectro_dask.reduce.reduce_dataset`'s NumPy path reduces
    it, so the result equals ``reduce_dataset(open_esa(path), ...).compute()`` without a
    nested graph computed inside the calling task.
    """
    from fastspectro_dask.io import _build_dataset
    from fastspectro_dask.reduce import SOURCE_VARIABLE, _reduce

    wanted = [SOURCE_VARIABLE[variable], "pitch_angle", "domega", "energy_full", "time_delta"]
    if variable == "rate":
        wanted.append("time_integ")
    if pad is not None and variable == "eflux":
        wanted.append("denergy_full")
    # decoded straight into NumPy, ``data`` to counts as it is read (one table gather),
    # with only the attributes the reduction uses
    ds = _build_dataset(Path(path), wanted, None, eager=True, counts=True, all_attrs=False)
    return _reduce(
        ds,
        variable=variable,
        categories=categories,
        decompress=True,
        retrace=retrace,
        pad=pad,
        decoded=True,
    )


def _params_digest(
    key: FileKey,
    variable: str,
    categories: Mapping[str, Any],
    retrace: bool = False,
    pad: PadSpec | None = None,
) -> str:
    blob = json.dumps(
        [
            _SCHEMA,
            REDUCTION_VERSION,
            key.path,
            key.size,
            key.mtime_ns,
            variable,
            {k: [list(map(float, r)) for r in v] for k, v in categories.items()},
            bool(retrace),
            None if pad is None else pad.to_json(),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _usable(group: zarr.Group, name: str, layouts: frozenset[int] = frozenset({_SCHEMA})) -> bool:
    """A complete entry written with one of ``layouts`` (default: the current one)."""
    if not group.attrs.get("complete", False):
        return False
    schema = group.attrs.get("schema")
    if schema not in layouts:
        logger.debug("cache entry %s has layout %s, not %s: stale", name, schema, _SCHEMA)
        return False
    return True


class ReducedCache:
    """A zarr store of reduced spectrograms keyed by source file and reduction.

    Parameters
    ----------
    path : str or os.PathLike
        The store folder (created on first write).

    Notes
    -----
    Safe for many Dask workers writing different entries at once: each entry is its own
    zarr group, and only the entry's own metadata is written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.reads = 0  # entries served (tests and benchmarks count them)
        self.writes = 0

    def __repr__(self) -> str:
        return f"ReducedCache({str(self.path)!r})"

    def __reduce__(self):  # ship only the path to workers
        return (ReducedCache, (self.path,))

    def ensure(self) -> None:
        """Create the store's root group if needed (call once, before parallel writes)."""
        if not (self.path / "zarr.json").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            zarr.open_group(str(self.path), mode="a")

    def entry_name(
        self,
        key: FileKey,
        variable: str,
        categories: Mapping[str, Any],
        instrument: str = "x",
        orbit: int | str = 0,
        retrace: bool = False,
        pad: PadSpec | None = None,
    ) -> str:
        """The group name of an entry."""
        digest = _params_digest(key, variable, categories, retrace, pad)
        return f"{instrument}-{orbit}-{digest}"

    def has(self, name: str) -> bool:
        """Whether a complete entry of that name and of the current layout exists."""
        try:
            group = zarr.open_group(str(self.path), mode="r", path=name)
        except Exception:
            return False
        return _usable(group, name)

    def write(
        self,
        name: str,
        reduced: xr.Dataset,
        *,
        summary: Mapping[str, Any] | None = None,
        key: FileKey | None = None,
    ) -> None:
        """Store a reduced Dataset.

        ``values`` and ``energy`` are stored as float32, ``time_delta`` (per-record
        accumulation length, s) as float64; a Dataset without ``time_delta`` stores NaN
        (unknown), so readers fall back to the record spacing.
        """
        self.ensure()
        group_path = self.path / name
        if group_path.exists():
            shutil.rmtree(group_path)
        if "time_delta" in reduced.variables:
            durations = reduced["time_delta"].astype(np.float64)
        else:
            durations = xr.DataArray(
                np.full(reduced.sizes["time"], np.nan), dims=("time",), attrs={"units": "s"}
            )
        pad_vars = {
            name: reduced[name].astype(np.float32)
            for name in ("pad_values", "pad_pitch")
            if name in reduced.variables
        }
        ds = xr.Dataset(
            {
                "values": reduced["values"].astype(np.float32),
                "energy": reduced["energy"].astype(np.float32),
                "time_delta": durations,
                **pad_vars,
            },
            coords={c: reduced[c] for c in ("time", "energy_channel")},
            attrs={k: v for k, v in reduced.attrs.items() if isinstance(v, (str, int, float))},
        )
        # category names go in an attribute: zarr v3 has no stable string dtype yet
        ds = ds.drop_vars("category").assign_attrs(
            categories=json.dumps([str(c) for c in reduced["category"].values])
        )
        ds.to_zarr(str(self.path), group=name, mode="w", consolidated=False, zarr_format=3)
        group = zarr.open_group(str(self.path), mode="a", path=name)
        group.attrs.update(
            {
                "summary": json.dumps(dict(summary or {})),
                "source_key": key.to_json() if key else None,
                "schema": _SCHEMA,
            }
        )
        group.attrs["complete"] = True  # last: readers only trust complete entries
        self.writes += 1

    def read(self, name: str) -> xr.Dataset:
        """Load a complete entry into memory (a copy: the caller may change it).

        Read with zarr straight into NumPy (no dask graph, no xarray backend), and kept
        in a small per-process memory cache (:data:`RECENT_ENTRIES`): the figures of one
        orbit read the same entries (instrument grid, pitch-angle grid, pad), and an
        entry never changes under its name (the name is a digest of the file and the
        reduction).
        """
        key = (str(self.path), name)
        try:  # the entry's metadata file, as it is now: rewritten or removed entries miss
            st = os.stat(self.path / name / "zarr.json")
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        hit = _RECENT.get(key)
        if hit is not None and stamp is not None and hit[0] == stamp:
            _RECENT.move_to_end(key)
            ds = hit[1]
        else:
            ds = self._load(name)
            if stamp is not None:
                _RECENT[key] = (stamp, ds)
                while len(_RECENT) > RECENT_ENTRIES:
                    _RECENT.popitem(last=False)
        self.reads += 1
        return ds.copy(deep=True)

    def _load(self, name: str) -> xr.Dataset:
        try:
            group = zarr.open_group(str(self.path), mode="r", path=name)
            usable = _usable(group, name)
        except Exception:
            usable = False
        if not usable:
            raise KeyError(f"{self.path}: no complete cache entry {name!r}")
        variables = {}
        for array_name, arr in group.arrays():
            attrs = {k: v for k, v in arr.attrs.items() if k != "_FillValue"}  # NaN: no-op
            variables[array_name] = xr.Variable(arr.metadata.dimension_names, arr[...], attrs)
        attrs = dict(group.attrs)
        categories = json.loads(attrs.pop("categories"))
        for attr in ("summary", "source_key", "schema", "complete"):
            attrs.pop(attr, None)
        coords = {c: variables.pop(c) for c in ("time", "energy_channel")}
        ds = xr.decode_cf(xr.Dataset(variables, coords=coords, attrs=attrs))  # time units
        return ds.assign_coords(category=categories)

    def read_values(self, name: str, category_index: int | str) -> np.ndarray:
        """One category's reduced values of an entry, as float32 (only that slice is read).

        ``category_index="pad"``: the entry's pitch-angle spectrogram values instead.

        Also served from an older layout whose values are the same (:data:`_SAME_VALUES`).
        """
        try:
            group = zarr.open_group(str(self.path), mode="r", path=name)
            usable = _usable(group, name, _SAME_VALUES)
        except Exception:
            usable = False
        if not usable:
            raise KeyError(f"{self.path}: no complete cache entry {name!r}")
        self.reads += 1
        if category_index == "pad":
            arr = zarr.open_array(str(self.path), mode="r", path=f"{name}/pad_values")
            return np.asarray(arr[...], dtype=np.float32)
        arr = zarr.open_array(str(self.path), mode="r", path=f"{name}/values")
        return np.asarray(arr[category_index], dtype=np.float32)

    def summary(self, name: str) -> dict[str, Any] | None:
        """The pass-1 summary stored with an entry (None if absent or incomplete).

        Also served from an older layout whose values are the same (:data:`_SAME_VALUES`).
        """
        try:
            group = zarr.open_group(str(self.path), mode="r", path=name)
            if not _usable(group, name, _SAME_VALUES):
                return None
            return json.loads(group.attrs.get("summary", "null"))
        except Exception:
            return None

    def prune(self, keep: set[str]) -> int:
        """Delete entries not in ``keep``; returns how many were removed."""
        if not self.path.exists():
            return 0
        removed = 0
        for child in self.path.iterdir():
            if child.is_dir() and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        return removed
