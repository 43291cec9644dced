"""FAST ESA L2 CDF files as lazy xarray Datasets.

One file becomes one :class:`xarray.Dataset` whose variables keep their CDF names and
attributes. Record-varying variables are read lazily, through an xarray
``BackendArray``: opening a file reads only its header and four small per-record
variables (``time_unix``, ``nbins``, ``nenergy``, ``valid``); nothing big is decoded until
the data are computed. The same reader is registered as the xarray backend ``"fastesa"``.

Conventions of the returned Dataset
-----------------------------------
* dimensions ``("time", "pitch_angle_bin", "energy_channel")`` for the per-record
  ``(angle, energy)`` arrays (``data``, ``eflux``, ``pitch_angle``, ``domega``,
  ``energy_full``, ``denergy_full``), whatever order the ``DEPEND_1``/``DEPEND_2``
  attributes give (real files have them swapped) and whatever the storage order;
* coordinate ``time`` (``datetime64[ns]``, centre of the accumulation) from ``time_unix``;
* values equal to ``FILLVAL`` are NaN, and so is every bin outside a record's valid block
  ``[:nbins, :nenergy]`` for the float variables and for ``data``, which is returned as
  ``float32``. A ``data`` byte of 255 is the fill value, except in records whose
  ``data_quality`` has the counter-overflow bit (2) set: there 255 inside the valid block
  is a saturated measurement and is kept as 255;
* records flagged ``valid == 0`` have ``data`` and ``eflux`` all NaN;
* energies and pitch angles stay per record and per bin (the mode changes inside an orbit);
* the per-mode tables (``energy``, ``denergy``, ``theta``, ``dtheta``) are variables on
  ``("mode", "table_angle_bin", "energy_channel")``; scalar metadata (``orbit``,
  ``mass``, ``charge``, ``instrument``) and the global attributes are Dataset attributes.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import weakref
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cdflib
import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint, CachingFileManager
from xarray.backends.locks import SerializableLock
from xarray.core import indexing

from fastspectro_dask.compression import BURST_INSTRUMENTS, count_midpoints
from fastspectro_dask.errors import InvalidCDFError

__all__ = ["BIG_VARIABLES", "FastEsaBackendEntrypoint", "load_esa", "open_esa"]

logger = logging.getLogger(__name__)

#: The per-record (angle, energy) variables.
BIG_VARIABLES: tuple[str, ...] = (
    "data",
    "eflux",
    "pitch_angle",
    "domega",
    "energy_full",
    "denergy_full",
)
#: Variables every file must have (besides the big variables asked for).
_REQUIRED_SUPPORT = ("time_unix", "nbins", "nenergy")
#: Measurements blanked in records flagged ``valid == 0``.
_MEASURED = ("data", "eflux")
_TABLES = ("energy", "denergy", "theta", "dtheta")
_SCALARS = {"mass": float, "charge": int, "dead": float, "orbit_start": int, "num_dists": int}
#: Record-varying variables that are not on the ``epoch`` time axis, or are replaced.
_SKIP_RV = {"epoch", "orbit_number", "orbit_number_time", "orbit_number_epoch"}
_CDF_MAGIC = {b"\xcd\xf3\x00\x01", b"\xcd\xf2\x60\x02", b"\x00\x00\xff\xff"}
_FLOAT_TYPES = {"CDF_FLOAT", "CDF_REAL4", "CDF_DOUBLE", "CDF_REAL8"}
_DIMS = ("time", "pitch_angle_bin", "energy_channel")
#: |time_unix| (s) at and beyond which datetime64[ns] overflows (years 1677 and 2262).
_MAX_UNIX_NS = np.iinfo(np.int64).max / 1e9
_NAME_RE = re.compile(r"fa_esa_l2_(ees|eeb|ies|ieb)_")
#: More changes of mode than this in one read: records masked by group, not by run.
_MASK_RUNS = 64


# --------------------------------------------------------------------------------------
# Low-level checks
# --------------------------------------------------------------------------------------


#: Container formats that users save as ``.cdf`` by mistake: leading bytes -> advice.
_WRAPPERS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed (gunzip it first)"),
    (b"BZh", "bzip2-compressed (bunzip2 it first)"),
    (b"\xfd7zXZ\x00", "xz-compressed (unxz it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed (unzstd it first)"),
    (b"PK\x03\x04", "a ZIP archive (unzip it first)"),
)
#: Bytes 4-8 of a CDF whose whole file is compressed (a CCR record follows).
_WHOLE_FILE_COMPRESSED = b"\xcc\xcc\x00\x01"
#: Whole-file compression types (CPR ``cType``) that cdflib can inflate.
_CDFLIB_WHOLE_FILE_TYPES = {1: "RLE", 5: "GZIP"}
_COMPRESSION_NAMES = {0: "none", 1: "RLE", 2: "Huffman", 3: "adaptive Huffman", 5: "GZIP"}


def _check_container(path: Path) -> int:
    """Cheap checks before cdflib sees the file; returns its size."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InvalidCDFError(path, f"cannot be read: {exc}") from exc
    if size == 0:
        raise InvalidCDFError(path, "empty file (0 bytes); an interrupted download?")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:4] not in _CDF_MAGIC:
        for magic, what in _WRAPPERS:
            if head.startswith(magic):
                raise InvalidCDFError(path, f"not a plain CDF file: it is {what}")
        text = head.lstrip().lower()
        if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
            raise InvalidCDFError(
                path,
                "not a CDF file: it is an HTML/XML page (an error "
                "page saved as .cdf by a failed download?)",
            )
        raise InvalidCDFError(path, f"not a CDF file (starts with bytes {head[:8]!r})")
    if head[:4] == b"\xcd\xf3\x00\x01" and head[4:8] == _WHOLE_FILE_COMPRESSED:
        _check_whole_file_compressed(path, head, size)
    elif head[:4] == b"\xcd\xf3\x00\x01" and len(head) >= 28:
        # CDF v3: the CDR (at byte 8) points to the GDR, whose field at +36 is the
        # end-of-file offset the writer recorded; a shorter file was cut off.
        gdr = int.from_bytes(head[20:28], "big", signed=True)
        if gdr + 44 > size:
            raise InvalidCDFError(path, f"truncated: {size} bytes, its header is incomplete")
        with open(path, "rb") as fh:
            fh.seek(gdr + 36)
            eof = int.from_bytes(fh.read(8), "big", signed=True)
        if eof > size:
            raise InvalidCDFError(
                path, f"truncated: the CDF header records {eof} bytes but the file has {size}"
            )
    return size


def _check_whole_file_compressed(path: Path, head: bytes, size: int) -> None:
    """Checks of a v3 CDF compressed as a whole (magic ``CDF30001 CCCC0001``).

    Such a file holds, after the 8 magic bytes, one CCR record (the compressed image of
    the plain file: size 8 bytes, type 4 bytes = 10, CPR offset 8 bytes, uncompressed
    size 8 bytes, 4 reserved bytes, then the data) and a CPR record naming the
    compression. CDAWeb's master CDFs are written this way. The plain file's GDR is
    inside the compressed data, so only the outer records can be checked here.
    """
    if len(head) < 36:
        raise InvalidCDFError(path, f"truncated: {size} bytes, its header is incomplete")
    ccr_size = int.from_bytes(head[8:16], "big", signed=True)
    ccr_type = int.from_bytes(head[16:20], "big", signed=True)
    cpr = int.from_bytes(head[20:28], "big", signed=True)
    if ccr_type != 10 or ccr_size < 32 or cpr < 8:
        raise InvalidCDFError(
            path, "corrupt header of a whole-file-compressed CDF (bad CCR record)"
        )
    if 8 + ccr_size > size or cpr + 28 > size:
        raise InvalidCDFError(
            path,
            f"truncated: a whole-file-compressed CDF of {size} bytes whose compressed "
            f"data end at byte {max(8 + ccr_size, cpr + 28)}",
        )
    with open(path, "rb") as fh:
        fh.seek(cpr + 12)
        ctype = int.from_bytes(fh.read(4), "big", signed=True)
    if ctype not in _CDFLIB_WHOLE_FILE_TYPES:
        kind = _COMPRESSION_NAMES.get(ctype, f"type {ctype}")
        raise InvalidCDFError(
            path,
            f"the whole file is {kind}-compressed, which cdflib cannot read "
            "(decompress it with the CDF tools' cdfconvert first)",
        )


def _open_cdf(path: Path) -> cdflib.CDF:
    try:
        cdf = cdflib.CDF(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # cdflib raises OSError/ValueError/struct errors on junk
        raise InvalidCDFError(path, f"cdflib cannot open it ({type(exc).__name__}: {exc})") from exc
    _memoize_descriptors(cdf)
    return cdf


#: cdflib readers of one descriptor record (variable or attribute) at a file offset.
_DESCRIPTOR_READERS = ("_read_vdr_fast", "_read_vdr", "_read_adr_fast", "_read_adr")


def _memoize_descriptors(cdf: cdflib.CDF) -> None:
    """Read each variable and attribute descriptor of an open file once.

    cdflib finds a variable or attribute by name by walking the file's chain of
    descriptors from its head, reading every one on the way, at every ``varget``,
    ``varinq`` and ``attget`` (~30 walks over ~60 descriptors per file read). The file
    does not change while it is open: the records read at an offset are kept on this
    reader (no reference cycle: the reader is held weakly). A failed read is not kept,
    it fails again as before.
    """
    ref = weakref.ref(cdf)
    for name in _DESCRIPTOR_READERS:
        read = getattr(type(cdf), name, None)
        if read is not None:  # (another cdflib: plain reads)
            setattr(cdf, name, _memoized(read, ref))


def _memoized(read: Callable[[Any, int], Any], ref: weakref.ref) -> Callable[[int], Any]:
    """``read(ref(), position)``, each position read once."""
    kept: dict[int, Any] = {}

    def memo(position: int) -> Any:
        try:
            return kept[position]
        except KeyError:
            kept[position] = value = read(ref(), position)
            return value

    return memo


#: CDF data type codes whose values ``cdflib``'s ``_read_data`` reads as plain numbers.
_NUMERIC_CDF_TYPES = frozenset({1, 2, 4, 8, 11, 12, 14, 21, 22, 31, 33, 41, 44, 45})
#: Section types of a variable's value records: plain (VVR) and compressed (CVVR).
_VVR, _CVVR = 7, 13


def _varget_blocks(
    cdf: cdflib.CDF, name: str, startrec: int = 0, endrec: int | None = None
) -> np.ndarray | None:
    """``cdf.varget(name, startrec=, endrec=)`` for the usual case, else None.

    cdflib's ``varget`` gathers a variable's value blocks into one byte string, then
    copies it again to cut the records asked for. This reads the blocks (inflating the
    GZIP ones) straight into one buffer and hands it to cdflib's own conversion
    (``_read_data``), so the array (values, dtype, byte order, shape, writeability) is
    the one ``varget`` returns. It applies to a record-varying, non-sparse numeric
    variable of a CDF v3 file whose blocks are contiguous and inflate to exactly their
    records; anything else (a failure too) gives None, and cdflib reads the variable
    itself, with its own result or error.
    """
    try:
        vdr = cdf.vdr_info(name)
        if (
            cdf.cdfversion != 3
            or vdr.sparse != 0
            or not vdr.record_vary
            or vdr.max_rec < 0
            or vdr.data_type not in _NUMERIC_CDF_TYPES
        ):
            return None
        endrec = vdr.max_rec if endrec is None else endrec
        if startrec < 0 or endrec < startrec or endrec > vdr.max_rec:
            return None
        offsets, first, last = cdf._read_vxrs(
            vdr.head_vxr, vvr_offsets=[], vvr_start=[], vvr_end=[]
        )
        # the blocks cdflib reads: from the first ending at or after startrec to the
        # first ending at or after endrec
        use = range(
            next(i for i, end in enumerate(last) if end >= startrec),
            next(i for i, end in enumerate(last) if end >= endrec) + 1,
        )
        if (
            not use
            or first[use[0]] > startrec
            or any(first[j] != last[i] + 1 for i, j in itertools.pairwise(use))
        ):
            return None
        rec_bytes = cdf._type_size(vdr.data_type, vdr.num_elements) * cdf._num_values(vdr)
        base = first[use[0]]
        buf = np.empty((last[use[-1]] - base + 1) * rec_bytes, np.uint8)
        fh = cdf._f
        for i in use:
            fh.seek(offsets[i], 0)
            block = fh.read(int.from_bytes(fh.read(8), "big") - 8)
            kind = int.from_bytes(block[0:4], "big")
            if kind == _CVVR:
                inflate = zlib.decompressobj(wbits=31)  # one gzip member, CRC checked
                size = int.from_bytes(block[8:16], "big")
                values = inflate.decompress(memoryview(block)[16 : 16 + size])
                if not inflate.eof or inflate.unused_data:
                    return None
            elif kind == _VVR:
                values = memoryview(block)[4:]
            else:
                return None
            at = (first[i] - base) * rec_bytes
            if len(values) != (last[i] - first[i] + 1) * rec_bytes:
                return None
            buf[at : at + len(values)] = np.frombuffer(values, np.uint8)
        dims = [vdr.dim_sizes[x] for x in range(vdr.num_dims) if vdr.dim_vary[x] != 0]
        stream = buf[(startrec - base) * rec_bytes : (endrec - base + 1) * rec_bytes]
        n = endrec - startrec + 1
        return cdf._read_data(stream, vdr.data_type, n, vdr.num_elements, dims)
    except Exception:  # cdflib's own read decides (and words the error)
        return None


def _read(cdf: cdflib.CDF, path: Path, name: str, **kw: Any) -> np.ndarray:
    """``cdf.varget`` (:func:`_varget_blocks` where it applies), every failure turned into
    an InvalidCDFError naming the file."""
    try:
        out = _varget_blocks(cdf, name, **kw)
        if out is None:
            out = cdf.varget(name, **kw)
    except Exception as exc:
        raise InvalidCDFError(
            path,
            f"reading variable {name!r} failed "
            f"({type(exc).__name__}: {exc}); truncated or corrupt?",
        ) from exc
    if out is None:
        raise InvalidCDFError(path, f"variable {name!r} has no records")
    return np.asarray(out)


def _describe_foreign(cdf: cdflib.CDF) -> str:
    """A few words on what a non-FAST-ESA CDF is, from its global attributes."""
    try:
        attrs = {k: _plain(v) for k, v in (cdf.globalattsget() or {}).items()}
    except Exception:  # a description only: never the reason to fail differently
        attrs = {}
    for key in ("Logical_source", "Source_name", "Mission_group"):
        value = attrs.get(key)
        if isinstance(value, str) and value.strip():
            return f"{key} {value.strip()!r}"
    return "no FAST ESA variables"


def _plain(value: Any) -> Any:
    """CDF attribute values as plain Python / small numpy values."""
    if isinstance(value, np.ndarray):
        return value.item() if value.size == 1 else value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list) and len(value) == 1:
        return _plain(value[0])
    return value


# --------------------------------------------------------------------------------------
# File structure
# --------------------------------------------------------------------------------------


class _CdfFile:
    """An open :class:`cdflib.CDF` with the ``close()`` that xarray's file managers call.

    cdflib's reader has no ``close()``: it keeps a file handle (and, for a
    whole-file-compressed CDF, a decompressed temporary copy, deleted when the object
    dies) for as long as the object lives.
    """

    __slots__ = ("cdf",)

    def __init__(self, path: str) -> None:
        self.cdf: cdflib.CDF | None = _open_cdf(Path(path))

    def close(self) -> None:
        cdf, self.cdf = self.cdf, None
        handle = getattr(cdf, "_f", None)
        if handle is not None and hasattr(handle, "close"):
            handle.close()


class _Source:
    """Where an array's bytes come from: a CDF handle in xarray's file cache, and a lock.

    The handle is managed by :class:`xarray.backends.CachingFileManager` (xarray's
    per-process LRU cache of open files, ``xr.set_options(file_cache_maxsize=...)``):
    it opens on first use, is reopened after eviction, and pickles as the path, so a
    Dask worker opens its own handle. A cdflib reader seeks and reads one shared file
    object, so reads of one opened file are serialised by a
    :class:`~xarray.backends.locks.SerializableLock` (which pickles too); different files
    decode in parallel.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = SerializableLock()
        self.manager = CachingFileManager(_CdfFile, str(path), lock=self.lock)

    def varget(self, name: str, **kw: Any) -> np.ndarray:
        """``_read`` of one variable (InvalidCDFError naming the file on failure)."""
        with self.lock:
            cdf = self.manager.acquire(needs_lock=False).cdf
            return _read(cdf, self.path, name, **kw)

    def cdf(self) -> cdflib.CDF:
        """The open reader (callers hold :attr:`lock` while they use it)."""
        return self.manager.acquire(needs_lock=False).cdf

    def close(self) -> None:
        self.manager.close()


class _LazyAttrs(dict):
    """Variable attributes, read from the CDF on first use (cdflib reads them slowly)."""

    def __init__(self, source: _Source) -> None:
        super().__init__()
        self._source = source

    def __missing__(self, name: str) -> dict[str, Any]:
        with self._source.lock:
            raw = self._source.cdf().varattsget(name) or {}
        value = {k: _plain(a) for k, a in raw.items()}
        self[name] = value
        return value


class _FileInfo:
    """Everything the lazy arrays need, read once at open time (small)."""

    def attr(self, name: str, attribute: str) -> Any:
        """One attribute of a variable (None if absent), without reading all of them.

        ``cdflib.CDF.attget`` reads one entry (~0.3 ms); ``varattsget`` walks every
        attribute (~6 ms): the decode and the reduction need only ``FILLVAL`` (and the
        measurement's ``UNITS``).
        """
        if name in self.attrs:  # already read whole (a Dataset is being built)
            return self.attrs[name].get(attribute)
        key = (name, attribute)
        if key not in self._single:
            # by the variable's number where that names the same entry: cdflib then does
            # not walk the chain of variable descriptors to find the name
            number = self._var_number.get(name.strip().lower())
            which = (
                name
                if number is None or attribute.strip().lower() not in self._var_scoped
                else number
            )
            with self.source.lock:
                try:
                    entry = self.source.cdf().attget(attribute, which)
                except Exception:  # no such attribute (or entry): absent
                    entry = None
            self._single[key] = None if entry is None else _plain(entry.Data)
        return self._single[key]

    def __init__(self, path: Path, big: Iterable[str], wanted: set[str] | None = None) -> None:
        self.path = path
        self.size = _check_container(path)
        self.source = _Source(path)
        #: Small record-varying variables read here, kept so they are never read twice.
        self.preread: dict[str, np.ndarray] = {}
        try:
            # a new manager: no other thread has this handle yet, so no lock (the
            # attributes read here take it themselves)
            self._inspect(self.source.cdf(), tuple(big), wanted)
        except Exception as exc:
            self.source.close()
            if isinstance(exc, (InvalidCDFError, FileNotFoundError)):
                raise
            # garbage inside a CDF container
            raise InvalidCDFError(
                path, f"unreadable CDF structure ({type(exc).__name__}: {exc})"
            ) from exc

    def _read_small(self, cdf: cdflib.CDF, name: str) -> np.ndarray:
        """Read a small per-record variable once; the Dataset reuses the array."""
        raw = _read(cdf, self.path, name)
        self.preread[name] = raw
        return raw

    def _inspect(self, cdf: cdflib.CDF, big: tuple[str, ...], wanted: set[str] | None) -> None:
        cdf_info = cdf.cdf_info()
        names = list(cdf_info.zVariables)
        self._index_attributes(cdf_info, names)
        missing = [v for v in (*_REQUIRED_SUPPORT, *big) if v not in names]
        if missing:
            cause = f"missing required variable(s) {', '.join(missing)}"
            if "time_unix" in missing:  # nothing of the FAST ESA layout: say what it is
                cause = f"not a FAST ESA L2 file ({_describe_foreign(cdf)}): {cause}"
            raise InvalidCDFError(self.path, cause)
        if wanted is not None:  # varinq walks the VDR chain: only inquire what is used
            keep = {
                *wanted,
                *_REQUIRED_SUPPORT,
                *big,
                *_SCALARS,
                "valid",  # records flagged valid == 0 are blanked, whatever is read
                "energy_channel",
                "pitch_angle_bin",
            }
            names = [v for v in names if v in keep]
        self.inq = {v: cdf.varinq(v) for v in names}
        self.attrs = _LazyAttrs(self.source)
        self._single: dict[tuple[str, str], Any] = {}
        self.global_attrs = {k: _plain(v) for k, v in (cdf.globalattsget() or {}).items()}
        self._read_time(cdf)
        self._check_records(names)
        self.n_angle = self._axis_len(cdf, "pitch_angle_bin", 64)
        self.n_energy = self._axis_len(cdf, "energy_channel", 96)
        self.transposed: dict[str, bool] = {}
        for v in (b for b in BIG_VARIABLES if b in names and self.inq[b].Rec_Vary):
            self.transposed[v] = self._orientation(v, self.inq[v].Dim_Sizes)
        self.big = [b for b in BIG_VARIABLES if b in self.transposed]
        self._read_record_sizes(cdf, names)
        self.scalars: dict[str, Any] = {}
        for name, kind in _SCALARS.items():
            if name in names and not self.inq[name].Rec_Vary:
                try:
                    self.scalars[name] = kind(_read(cdf, self.path, name).reshape(-1)[0])
                except Exception:  # optional metadata: never fatal
                    logger.debug("%s: scalar %s unreadable", self.path, name)
        self.tables = [
            t
            for t in _TABLES
            if t in names and not self.inq[t].Rec_Vary and self.inq[t].Num_Dims in (2, 3)
        ]

    def _index_attributes(self, cdf_info: Any, names: list[str]) -> None:
        """Variable numbers and the attributes of variable scope, for reading attribute
        entries by number."""
        # attget(attribute, number) reads the entry that attget(attribute, name) reads if
        # the file has no rVariables and the first attribute of that name has variable
        # scope (by name, cdflib skips global ones; by number it does not)
        self._var_number: dict[str, int] = {}
        if not cdf_info.rVariables:
            for number, var in enumerate(names):
                self._var_number.setdefault(var.strip().lower(), number)
        self._var_scoped: set[str] = set()
        seen: set[str] = set()
        for att in cdf_info.Attributes:
            for att_name, scope in att.items():
                low = att_name.strip().lower()
                if low not in seen and scope == "Variable":
                    self._var_scoped.add(low)
                seen.add(low)

    def _read_time(self, cdf: cdflib.CDF) -> None:
        """``n`` and ``time_unix``, checked: records there, every time finite and placeable."""
        path = self.path
        n = self.inq["time_unix"].Last_Rec + 1
        if n <= 0:
            raise InvalidCDFError(
                path,
                "no records: time_unix is empty, the file describes its variables but "
                "holds no measurements (a CDAWeb master/skeleton CDF?)",
            )
        self.n = n
        time = self._read_small(cdf, "time_unix").astype(np.float64).reshape(-1)
        fill = self.attr("time_unix", "FILLVAL")
        if time.size != n:
            raise InvalidCDFError(path, f"time_unix has {time.size} values, expected {n}")
        bad = ~np.isfinite(time) | ((time == fill) if fill is not None else False)
        if bad.any():
            raise InvalidCDFError(
                path,
                f"time_unix holds {int(bad.sum())} fill/non-finite "
                "values; records cannot be placed in time",
            )
        out_of_range = np.abs(time) >= _MAX_UNIX_NS
        if out_of_range.any():
            raise InvalidCDFError(
                path,
                f"time_unix holds {int(out_of_range.sum())} value(s) outside 1677-2262 "
                f"(e.g. {time[out_of_range][0]:.6g} s), beyond datetime64[ns]",
            )
        self.time_unix = time

    def _check_records(self, names: list[str]) -> None:
        """Which variables share the record axis (:attr:`rv`), and do they agree on its
        length? The support variables hold one value per record."""
        n, path = self.n, self.path
        self.rv = [
            v
            for v in names
            if self.inq[v].Rec_Vary
            and v not in _SKIP_RV
            and self.inq[v].Last_Rec >= 0  # zero-record (virtual) variables are left out
        ]
        counts = {v: self.inq[v].Last_Rec + 1 for v in self.rv}
        wrong = {v: c for v, c in counts.items() if c != n}
        if wrong:
            listed = ", ".join(f"{v}={c}" for v, c in sorted(wrong.items()))
            raise InvalidCDFError(
                path, f"inconsistent record counts: time_unix has {n}, but {listed}"
            )
        for v in _REQUIRED_SUPPORT:
            if self.inq[v].Num_Dims != 0:
                raise InvalidCDFError(
                    path, f"{v} has rank {self.inq[v].Num_Dims + 1}, expected one value per record"
                )

    def _read_record_sizes(self, cdf: cdflib.CDF, names: list[str]) -> None:
        """``nbins``, ``nenergy`` (checked against the record size) and the records
        flagged not valid."""
        n, path = self.n, self.path
        self.nbins = self._read_small(cdf, "nbins").astype(np.int64).reshape(-1)
        self.nenergy = self._read_small(cdf, "nenergy").astype(np.int64).reshape(-1)
        # Records flagged not valid (valid == 0) carry no measurement.
        self.invalid = np.zeros(n, bool)
        if "valid" in names and self.inq["valid"].Rec_Vary and self.inq["valid"].Num_Dims == 0:
            valid = self._read_small(cdf, "valid").reshape(-1)
            if valid.size == n:
                self.invalid = valid == 0
        if (self.nbins > self.n_angle).any() or (self.nenergy > self.n_energy).any():
            raise InvalidCDFError(
                path,
                f"nbins/nenergy exceed the record size ({self.n_angle}x{self.n_energy}):"
                f" max nbins {self.nbins.max()}, max nenergy {self.nenergy.max()}",
            )

    def _axis_len(self, cdf: cdflib.CDF, name: str, default: int) -> int:
        inq = self.inq.get(name)
        if inq is not None and not inq.Rec_Vary and inq.Num_Dims == 1:
            return int(inq.Dim_Sizes[0])
        return default

    def _orientation(self, name: str, dims: list[int]) -> bool:
        """False for (angle, energy) records, True for (energy, angle); else an error."""
        dims = list(dims)
        if len(dims) != 2:
            raise InvalidCDFError(
                self.path,
                f"{name} has rank {len(dims) + 1} "
                f"(records x {dims}); expected records x angle x energy",
            )
        a, e = self.n_angle, self.n_energy
        if a == e:  # sizes cannot tell: trust the DEPEND attributes (ISTP meaning)
            return self.attrs[name].get("DEPEND_1") == "energy_channel"
        if dims == [a, e]:
            return False
        if dims == [e, a]:
            return True
        raise InvalidCDFError(
            self.path,
            f"{name} has records of shape {tuple(dims)}; expected ({a}, {e}) angle x energy",
        )


# --------------------------------------------------------------------------------------
# Lazy arrays
# --------------------------------------------------------------------------------------


class _RecordArray(BackendArray):
    """A record-varying CDF variable, read on demand, with fills and blocks masked."""

    def __init__(self, info: _FileInfo, name: str, *, counts: bool = False) -> None:
        self.path = info.path
        self.source = info.source
        self.name = name
        inq = info.inq[name]
        #: ``data`` decoded to counts (the flight compressor's range midpoints) as it is
        #: read: the burst or survey code table, else None (codes as float32).
        self.counts_table: np.ndarray | None = None
        if counts and name == "data":
            self.counts_table = count_midpoints(
                burst=_instrument(self.path, info.global_attrs) in BURST_INSTRUMENTS
            )
        self.cdf_type = inq.Data_Type_Description
        self.is_big = name in info.big
        self.transposed = info.transposed.get(name, False)
        rec_shape = (info.n_angle, info.n_energy) if self.is_big else tuple(inq.Dim_Sizes)
        self.shape = (info.n, *rec_shape)
        self.fill = info.attr(name, "FILLVAL")
        self.float_out = self.is_big or self.cdf_type in _FLOAT_TYPES
        raw = np.dtype(np.float64 if self.cdf_type in ("CDF_DOUBLE", "CDF_REAL8") else np.float32)
        self.dtype = raw if self.float_out else _numpy_dtype(self.cdf_type)
        # Only what masking needs travels with the array (it is pickled into graphs).
        self.nbins = info.nbins if self.is_big else None
        self.nenergy = info.nenergy if self.is_big else None
        self.invalid = info.invalid if name in _MEASURED and info.invalid.any() else None
        self.preread = info.preread.get(name)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._getitem
        )

    def _getitem(self, key: tuple) -> np.ndarray:
        rec_key, rest = key[0], key[1:]
        if isinstance(rec_key, (int, np.integer)):
            start, stop, step, squeeze = int(rec_key), int(rec_key) + 1, 1, True
        else:
            start, stop, step = rec_key.indices(self.shape[0])
            squeeze = False
        if step < 0:  # read forwards, reverse afterwards
            lo = start + step * ((stop - start - 1) // step) if stop < start else start
            arr = self._read(lo, start + 1)[::-1][::-step] if stop < start else self._read(0, 0)
        elif stop <= start:
            arr = self._read(0, 0)
        else:
            arr = self._read(start, stop)[::step]
        arr = arr[0] if squeeze else arr
        return arr[(slice(None),) * (0 if squeeze else 1) + tuple(rest)]

    def _read(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, *self.shape[1:]), self.dtype)
        if self.preread is not None:  # read at open time: never twice
            raw = self.preread[start:stop]
        else:
            whole = start == 0 and stop == self.shape[0]
            kw = {} if whole else {"startrec": start, "endrec": stop - 1}
            raw = self.source.varget(self.name, **kw)
        n = stop - start
        disk_shape = self.shape[1:][::-1] if self.transposed else self.shape[1:]
        try:
            raw = raw.reshape((n, *disk_shape))
        except ValueError as exc:
            raise InvalidCDFError(
                self.path,
                f"{self.name}: got {raw.shape} for records "
                f"{start}..{stop - 1}, expected {(n, *disk_shape)}",
            ) from exc
        if self.transposed:
            raw = raw.transpose(0, 2, 1)
        if not self.float_out:
            return raw
        parts = self._block_parts(start, stop) if self.is_big else None
        if parts is not None and parts[1]:
            out = self._read_blocks(raw, start, stop, parts[0])
        else:
            if self.counts_table is not None and raw.dtype == np.uint8:
                out = self._decode_counts(raw, start, stop)
            else:
                out = self._floats(raw, start, stop)
            if self.is_big:
                self._mask_blocks(out, start, stop)
        if self.invalid is not None:
            out[self.invalid[start:stop]] = np.nan
        return out

    def _floats(self, raw: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``raw`` as float (a copy only where needed), fill values NaN."""
        out = raw.astype(self.dtype, copy=not raw.flags.writeable or raw.dtype != self.dtype)
        if self.fill is not None:
            self._nan_fills(out, raw, lambda: self._overflow_records(start, stop))
        return out

    def _nan_fills(
        self, out: np.ndarray, src: np.ndarray, overflow: Callable[[], np.ndarray]
    ) -> None:
        """NaN in ``out`` where ``src`` holds the fill value, except, in ``data``, in the
        records ``overflow()`` flags (src's records): there 255 is a saturated count."""
        fill_mask = src == src.dtype.type(self.fill)
        if fill_mask.any():
            if self.name == "data":
                fill_mask &= ~overflow()[:, None, None]
            np.copyto(out, np.nan, where=fill_mask)

    def _decode_counts(self, raw: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Counts from the uint8 codes in one 256-entry gather; the fill code is NaN.

        The same values as decoding the float32 codes that :meth:`_floats` gives (fill
        NaN except in counter-overflow records, where 255 is a saturated count).
        """
        lut = self._counts_lut()
        out = lut[raw]
        if lut is not self.counts_table:
            self._saturated_counts(out, raw, start, stop, [raw])
        return out

    def _counts_lut(self) -> np.ndarray:
        """The 256-entry decode table with the fill code NaN (the table itself when the
        fill value is no uint8 code)."""
        table, fill = self.counts_table, self.fill
        if fill is None or not 0 <= fill <= 255 or fill != int(fill):
            return table
        lut = table.copy()
        lut[int(fill)] = np.nan
        return lut

    def _saturated_counts(
        self, out: np.ndarray, raw: np.ndarray, start: int, stop: int, codes: list[np.ndarray]
    ) -> None:
        """Decode the records with the counter-overflow bit again with the plain table:
        there the fill code is a saturated count. With fill code 255 only if one of the
        arrays ``codes`` (the codes decoded) holds a 255."""
        if int(self.fill) == 255 and not any(c.size and c.max() == 255 for c in codes):
            return
        over = self._overflow_records(start, stop)
        if over.any():
            out[over] = self.counts_table[raw[over]]

    def _overflow_records(self, start: int, stop: int) -> np.ndarray:
        """Records whose data_quality has the counter-overflow bit (2) set."""
        try:
            dq = self.source.varget("data_quality", startrec=start, endrec=stop - 1)
            return (dq.reshape(-1).astype(np.int64) & 2) != 0
        except Exception:
            return np.zeros(stop - start, bool)

    def _block_parts(
        self, start: int, stop: int
    ) -> tuple[list[tuple[slice | np.ndarray, int, int]], bool]:
        """Records grouped by valid block: ``([(records, nbins, nenergy), ...], by_runs)``.

        Records of one mode come in runs: each run is a slice (no boolean gather), and
        ``by_runs`` is True; if the mode changes very often (``_MASK_RUNS``), records are
        grouped by block through boolean masks.
        """
        nb = self.nbins[start:stop]
        ne = self.nenergy[start:stop]
        key = np.asarray(nb, np.int64) * 4096 + ne
        change = np.flatnonzero(key[1:] != key[:-1]) + 1
        if change.size < _MASK_RUNS:
            bounds = [0, *change.tolist(), key.size]
            runs = [(slice(a, z), int(key[a])) for a, z in itertools.pairwise(bounds) if z > a]
        else:
            runs = [(key == k, int(k)) for k in np.unique(key)]
        by_runs = change.size < _MASK_RUNS
        return [(sel, k // 4096, k % 4096) for sel, k in runs], by_runs

    def _mask_blocks(self, out: np.ndarray, start: int, stop: int) -> None:
        """NaN beyond each record's ``[:nbins, :nenergy]`` block."""
        _nan_outside(out, _RecordArray._block_parts(self, start, stop)[0])

    def _read_blocks(
        self, raw: np.ndarray, start: int, stop: int, parts: list[tuple[slice, int, int]]
    ) -> np.ndarray:
        """:meth:`_floats` or :meth:`_decode_counts` and :meth:`_mask_blocks` in one:
        values converted (fill -> NaN) inside each run's valid block only, NaN beyond.

        The same bits as converting everything and then masking (beyond the block every
        value becomes NaN whatever it was), and the same memory layout (a transposed
        file gives a transposed array).
        """
        n_angle, n_energy = raw.shape[1:]
        counts = self.counts_table is not None and raw.dtype == np.uint8
        if counts:
            out = np.empty_like(raw, dtype=np.float32)  # raw's layout, as table[raw] has
        elif raw.dtype == self.dtype and raw.flags.writeable:
            out = raw  # as _floats: converted in place
        else:
            out = np.empty_like(raw, dtype=self.dtype)
        lut = self._counts_lut() if counts else None
        # the overflow records, read once when first needed
        overflow = functools.cache(lambda: self._overflow_records(start, stop))
        blocks = [
            (sel, slice(0, min(b, n_angle)), slice(0, min(e, n_energy))) for sel, b, e in parts
        ]
        for block in blocks:
            src = raw[block]
            if counts:
                out[block] = lut[src]
                continue
            if out is not raw:
                out[block] = src
            if self.fill is not None:
                self._nan_fills(out[block], src, lambda sel=block[0]: overflow()[sel])
        if counts and lut is not self.counts_table:
            self._saturated_counts(out, raw, start, stop, [raw[block] for block in blocks])
        _nan_outside(out, parts)
        return out


def _nan_outside(out: np.ndarray, parts: list[tuple[slice | np.ndarray, int, int]]) -> None:
    """NaN beyond each group's ``[:nbins, :nenergy]`` block (``parts`` as
    :meth:`_RecordArray._block_parts` gives them)."""
    n_angle = out.shape[1]
    for sel, b, e in parts:
        if b < n_angle:
            out[sel, b:, :] = np.nan
        if e < out.shape[2]:
            out[sel, : min(b, n_angle), e:] = np.nan


class _TableArray(BackendArray):
    """A non-record-varying table, read on demand, fills as NaN."""

    def __init__(self, info: _FileInfo, name: str) -> None:
        self.path = info.path
        self.source = info.source
        self.name = name
        dims = list(info.inq[name].Dim_Sizes)
        self.shape = tuple(dims if len(dims) == 3 else [1, *dims])
        self.dtype = np.dtype(np.float32)
        self.fill = info.attr(name, "FILLVAL")

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._getitem
        )

    def _getitem(self, key: tuple) -> np.ndarray:
        raw = self.source.varget(self.name).reshape(self.shape)
        out = raw.astype(np.float32)
        if self.fill is not None:
            out[raw == raw.dtype.type(self.fill)] = np.nan
        return out[key]


def _numpy_dtype(cdf_type: str) -> np.dtype:
    return np.dtype(
        {
            "CDF_UINT1": np.uint8,
            "CDF_BYTE": np.int8,
            "CDF_INT1": np.int8,
            "CDF_UINT2": np.uint16,
            "CDF_INT2": np.int16,
            "CDF_UINT4": np.uint32,
            "CDF_INT4": np.int32,
            "CDF_INT8": np.int64,
            "CDF_FLOAT": np.float32,
            "CDF_REAL4": np.float32,
            "CDF_DOUBLE": np.float64,
            "CDF_REAL8": np.float64,
            "CDF_EPOCH": np.float64,
        }.get(cdf_type, np.float64)
    )


# --------------------------------------------------------------------------------------
# Dataset assembly
# --------------------------------------------------------------------------------------


def _instrument(path: Path, global_attrs: dict) -> str | None:
    source = str(global_attrs.get("Logical_source", ""))
    m = _NAME_RE.match(source + "_") or _NAME_RE.search(path.name)
    return m.group(1) if m else None


def _build_dataset(
    path: Path,
    variables: Iterable[str] | None,
    drop_variables: Iterable[str] | None,
    *,
    eager: bool = False,
    counts: bool = False,
    all_attrs: bool = True,
) -> xr.Dataset:
    """The Dataset of one file: lazy, or (``eager``) decoded at once into NumPy.

    ``eager`` reads every variable once, straight into a NumPy array (no lazy-indexing
    layer, no dask), and closes the file. ``counts`` (eager only) decodes ``data`` to
    counts while reading it (:func:`fastspectro_dask.compression.count_midpoints`).
    ``all_attrs=False`` gives only the big variables an attribute, their ``UNITS``
    (reading every attribute costs more than decoding a small variable).
    """
    drop = set(drop_variables or ())
    wanted = None if variables is None else set(variables)
    big = [b for b in BIG_VARIABLES if b not in drop and (wanted is None or b in wanted)]
    info = _FileInfo(path, big, wanted)
    try:
        return _assemble(info, path, wanted, drop, eager=eager, counts=counts, all_attrs=all_attrs)
    finally:
        if eager:
            info.source.close()  # everything is in memory: release the handle now


def _assemble(
    info: _FileInfo,
    path: Path,
    wanted: set[str] | None,
    drop: set[str],
    *,
    eager: bool,
    counts: bool,
    all_attrs: bool,
) -> xr.Dataset:
    n = info.n
    time = np.round(info.time_unix * 1e9).astype("int64").view("datetime64[ns]")

    def attrs_of(name: str) -> dict[str, Any]:
        if all_attrs:
            return dict(info.attrs[name])
        units = info.attr(name, "UNITS") if name in BIG_VARIABLES else None
        return {} if units is None else {"UNITS": units}

    data_vars: dict[str, xr.Variable] = {}
    for name in info.rv:
        if name in drop or (
            wanted is not None and name not in wanted and name not in _REQUIRED_SUPPORT
        ):
            continue
        if name in BIG_VARIABLES and name not in info.big:
            continue
        arr = _RecordArray(info, name, counts=counts)
        if arr.is_big:
            dims = _DIMS
        elif len(arr.shape) == 1:
            dims = ("time",)
        elif len(arr.shape) == 2:
            dims = ("time", f"{name}_dim1")
        else:
            logger.debug("%s: skipping %s of shape %s", path, name, arr.shape)
            continue
        values = arr._read(0, n) if eager else indexing.LazilyIndexedArray(arr)
        data_vars[name] = xr.Variable(dims, values, attrs=attrs_of(name))
    for name in info.tables:
        if name in drop or (wanted is not None and name not in wanted):
            continue
        table = _TableArray(info, name)
        if table.shape[2] != info.n_energy:
            continue
        data_vars[name] = xr.Variable(
            ("mode", "table_angle_bin", "energy_channel"),
            table._getitem((slice(None),) * 3) if eager else indexing.LazilyIndexedArray(table),
            attrs=attrs_of(name),
        )
    coords = {
        "time": xr.Variable(
            "time",
            time,
            attrs={
                "long_name": "centre time of the accumulation (from time_unix)",
                "standard_name": "time",
            },
        ),
        "pitch_angle_bin": np.arange(info.n_angle),
        "energy_channel": np.arange(info.n_energy),
    }
    attrs = {k: v for k, v in info.global_attrs.items() if not isinstance(v, np.ndarray)}
    attrs.update(
        source=str(path),
        instrument=_instrument(path, info.global_attrs) or "",
        n_records=n,
        **{("orbit" if k == "orbit_start" else k): v for k, v in info.scalars.items()},
    )
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds.encoding["source"] = str(path)
    return ds


def load_esa(
    path: str | os.PathLike,
    *,
    variables: Iterable[str] | None = None,
    drop_variables: Iterable[str] | None = None,
) -> xr.Dataset:
    """Read one FAST ESA L2 CDF file into memory: a NumPy-backed :class:`xarray.Dataset`.

    The same Dataset as :func:`open_esa` gives (same variables, conventions and errors),
    decoded at once, each variable read once, without dask: this is what a task that
    reduces one file calls (no graph inside a task). The file handle is closed before
    returning.

    Parameters
    ----------
    path : str or os.PathLike
    variables, drop_variables : iterable of str, optional
        As for :func:`open_esa`.

    Returns
    -------
    xarray.Dataset
        Variables are NumPy arrays.

    Raises
    ------
    InvalidCDFError, FileNotFoundError
        As :func:`open_esa`, and for corrupt compressed blocks found while decoding.
    """
    return _build_dataset(Path(path), variables, drop_variables, eager=True)


def open_esa(
    path: str | os.PathLike,
    *,
    chunks: dict | int | str | None = None,
    variables: Iterable[str] | None = None,
    drop_variables: Iterable[str] | None = None,
) -> xr.Dataset:
    """Open one FAST ESA L2 CDF file as a lazy :class:`xarray.Dataset`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``fa_esa_l2_<inst>_<time>_<orbit>_vNN.cdf`` file.
    chunks : dict, int, str or None, optional
        Dask chunks, as for :func:`xarray.open_dataset`. ``None`` (the default) gives one
        chunk per file and variable, which suits cdflib: it decodes whole compressed
        blocks anyway. ``{"time": 200}`` splits records.
    variables : iterable of str, optional
        Only these variables (``time_unix``, ``nbins`` and ``nenergy`` are always kept and
        required). By default every record-varying variable on the time axis is exposed.
    drop_variables : iterable of str, optional
        Variables to leave out.

    Returns
    -------
    xarray.Dataset
        Lazy: variables are dask arrays; opening reads only the header, ``time_unix``,
        ``nbins`` and ``nenergy``. See the module docstring for the conventions.

    Raises
    ------
    InvalidCDFError
        The file is empty, not a CDF (e.g. an HTML page, or a gzip file named
        ``.cdf``), truncated, has no records (a CDAWeb master file), is another
        mission's CDF or otherwise lacks a required variable, has a wrong rank or
        shape, has inconsistent record counts, or has times beyond ``datetime64[ns]``.
        The message names the file and the cause. Whole-file-compressed CDFs (magic
        ``CDF30001 CCCC0001``, GZIP or RLE) read like plain ones. Errors found only
        while decoding (a corrupt compressed block) are raised, as InvalidCDFError,
        at compute time.
    FileNotFoundError
        The path does not exist.
    """
    return xr.open_dataset(
        Path(path),
        engine=FastEsaBackendEntrypoint,
        chunks={} if chunks is None else chunks,
        variables=variables,
        drop_variables=drop_variables,
    )


class FastEsaBackendEntrypoint(BackendEntrypoint):
    """xarray backend for FAST ESA L2 CDF files: ``xr.open_dataset(p, engine="fastesa")``.

    Use ``chunks={}`` to get dask arrays (one chunk per file); without ``chunks`` the
    variables are lazily indexed numpy-backed arrays that xarray loads on access.
    """

    description = "FAST ESA L2 CDF files (ees, eeb, ies, ieb) via cdflib"
    url = "https://github.com/fastspectro/fastspectro_dask"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "variables")

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: Iterable[str] | None = None,
        variables: Iterable[str] | None = None,
    ) -> xr.Dataset:
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            raise TypeError(
                f"the fastesa engine reads files from a path, got {type(filename_or_obj).__name__}"
            )
        return _build_dataset(Path(filename_or_obj), variables, drop_variables)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        name = Path(filename_or_obj).name
        return name.lower().endswith(".cdf") and _NAME_RE.match(name) is not None
