"""Find FAST ESA L2 files on disk and index them by orbit.

FAST ESA L2 files are named::

    fa_esa_l2_<inst>_<YYYYMMDDhhmmss>_<orbit>_v<NN>.cdf

with ``<inst>`` one of :data:`INSTRUMENTS`, the timestamp the UTC centre time
of the first record, ``<orbit>`` zero-padded to at least 5 digits and ``<NN>``
a version number of at least 2 digits. Orbit ephemeris files are named
``fa_k0_orb_<orbit>_v<NN>.cdf``.

Name matching is strict and case-sensitive, except that the extension may be
either ``.cdf`` or ``.CDF`` (some mirrors and FAT/exFAT copies upper-case it);
mixed-case extensions such as ``.Cdf`` are not accepted. Parsed timestamps are
timezone-aware UTC :class:`~datetime.datetime` objects. A name is also refused when
its values cannot be right: a date outside 1677-09-21..2262-04-11 (the range of
``datetime64[ns]``, in which times and output folders are computed) or an orbit
outside ``1..MAX_ORBIT``.

:func:`discover` walks a folder of any layout (``<root>/<YYYY>/<MM>/``, the
SPDF ``<root>/<inst>/<YYYY>/<MM>/``, flat, or anything deeper) and returns an
:class:`OrbitIndex`, a read-only mapping ``orbit -> {instrument: Path}``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

__all__ = [
    "INSTRUMENTS",
    "MAX_ORBIT",
    "DuplicateFiles",
    "EsaFileName",
    "OrbFileName",
    "OrbitIndex",
    "SkippedFile",
    "discover",
    "parse_esa_filename",
    "parse_orb_filename",
]

logger = logging.getLogger(__name__)

#: The four FAST ESA instruments, in canonical order.
INSTRUMENTS: tuple[str, ...] = ("ees", "eeb", "ies", "ieb")

_INSTRUMENT_ORDER = {inst: i for i, inst in enumerate(INSTRUMENTS)}

_ESA_RE = re.compile(
    r"fa_esa_l2_(ees|eeb|ies|ieb)_(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)_(\d{5,})_v(\d{2,})"
    r"\.(?:cdf|CDF)",
    re.ASCII,
)
_ORB_RE = re.compile(r"fa_k0_orb_(\d{5,})_v(\d{2,})\.(?:cdf|CDF)", re.ASCII)

#: Largest orbit number accepted in a file name. FAST's orbits run from 1 to about
#: 51,315 (the mission ended in 2009) and the real names carry them in 5 digits;
#: 99,999, the largest 5-digit number, leaves room for every real or synthetic orbit
#: while a garbage number (a 30-digit "orbit") is refused instead of becoming an
#: orbit, a progress-file key and an output folder.
MAX_ORBIT = 99_999

#: How many skipped names (with their reasons) the discovery warning shows.
_MAX_EXAMPLES = 5

#: Whole seconds from 1970 that datetime64[ns] still holds (1677-09-21 00:12:44 to
#: 2262-04-11 23:47:16 UTC).
_NS_LIMIT_SECONDS = 9_223_372_036

#: Compression suffixes that hide a FAST file name, and what to do about them.
_COMPRESSED_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".gz", "gzip-compressed (gunzip it first)"),
    (".bz2", "bzip2-compressed (bunzip2 it first)"),
    (".xz", "xz-compressed (unxz it first)"),
    (".zst", "zstd-compressed (unzstd it first)"),
    (".zip", "a ZIP archive (unzip it first)"),
)

_ESA_GRAMMAR = "fa_esa_l2_<ees|eeb|ies|ieb>_<YYYYMMDDhhmmss>_<orbit>_v<NN>.cdf"
_ORB_GRAMMAR = "fa_k0_orb_<orbit>_v<NN>.cdf"

_UTC = timezone.utc


@dataclass(frozen=True, slots=True)
class EsaFileName:
    """The fields encoded in a FAST ESA L2 file name.

    Attributes
    ----------
    instrument : str
        One of :data:`INSTRUMENTS`.
    start : datetime.datetime
        Timezone-aware UTC centre time of the first record, from the name.
    orbit : int
        Orbit number (>= 1).
    version : int
        File version (the ``vNN`` part).
    path : pathlib.Path
        The file (or bare name) that was parsed.
    """

    instrument: str
    start: datetime
    orbit: int
    version: int
    path: Path

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("EsaFileName.start must be timezone-aware (UTC)")


@dataclass(frozen=True, slots=True)
class OrbFileName:
    """The fields encoded in a FAST orbit ephemeris (``fa_k0_orb``) file name.

    Attributes
    ----------
    orbit : int
        Orbit number (>= 1).
    version : int
        File version (the ``vNN`` part).
    path : pathlib.Path
        The file (or bare name) that was parsed.
    """

    orbit: int
    version: int
    path: Path


@dataclass(frozen=True, slots=True)
class DuplicateFiles:
    """Several files competed for one orbit/instrument slot; one was kept.

    Attributes
    ----------
    orbit : int
        The orbit number.
    instrument : str
        The instrument, or ``"orb"`` for orbit ephemeris files.
    kept : pathlib.Path
        The file that won (highest version, then latest timestamp in the
        name, then first in path order).
    discarded : tuple of pathlib.Path
        The files that lost, best first.
    """

    orbit: int
    instrument: str
    kept: Path
    discarded: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """An entry the folder walk passed over, and why.

    Attributes
    ----------
    path : pathlib.Path
        The file (or symbolic link, fifo, ...).
    reason : str
        Why it was not indexed, in words a user can act on (e.g.
        ``"gzip-compressed (gunzip it first)"``, ``"symbolic link loop"``,
        ``"orbit 123456 beyond the mission ..."``).
    """

    path: Path
    reason: str


def _orbit_problem(orbit_s: str) -> str | None:
    orbit = int(orbit_s)
    if orbit < 1:
        return f"orbit {orbit_s} is not an orbit (FAST orbits start at 1)"
    if orbit > MAX_ORBIT:
        shown = orbit_s if len(orbit_s) <= 12 else f"{orbit_s[:12]}... ({len(orbit_s)} digits)"
        return (
            f"orbit {shown} beyond the mission (FAST orbits end near 51,315; "
            f"names above {MAX_ORBIT:,} are refused)"
        )
    return None


def _check_esa(name: str, path: Path | None) -> EsaFileName | str | None:
    """The parsed name; a reason if it has the grammar but impossible values; else None."""
    m = _ESA_RE.fullmatch(name)
    if m is None:
        return None
    inst, year, month, day, hour, minute, second, orbit_s, version_s = m.groups()
    problem = _orbit_problem(orbit_s)
    if problem is not None:
        return problem
    stamp = "".join((year, month, day, hour, minute, second))
    try:
        start = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=_UTC
        )
    except ValueError as exc:  # month 13, Feb 30, second 60, ...
        return f"impossible date/time {stamp} in the name ({exc})"
    if not -_NS_LIMIT_SECONDS <= start.timestamp() <= _NS_LIMIT_SECONDS:
        return (
            f"date {start:%Y-%m-%d %H:%M:%S} in the name is outside "
            "1677-09-21 00:12:44..2262-04-11 23:47:16, the range of datetime64[ns] "
            "times (a mistyped date?)"
        )
    return EsaFileName(
        inst, start, int(orbit_s), int(version_s), path if path is not None else Path(name)
    )


def _check_orb(name: str, path: Path | None) -> OrbFileName | str | None:
    """Like :func:`_check_esa`, for orbit ephemeris file names."""
    m = _ORB_RE.fullmatch(name)
    if m is None:
        return None
    problem = _orbit_problem(m.group(1))
    if problem is not None:
        return problem
    return OrbFileName(int(m.group(1)), int(m.group(2)), path if path is not None else Path(name))


def _parse_esa(name: str, path: Path | None) -> EsaFileName | None:
    parsed = _check_esa(name, path)
    return parsed if isinstance(parsed, EsaFileName) else None


def _parse_orb(name: str, path: Path | None) -> OrbFileName | None:
    parsed = _check_orb(name, path)
    return parsed if isinstance(parsed, OrbFileName) else None


def _skip_reason(name: str) -> str:
    """Why `name` is neither a FAST ESA L2 nor an orbit file name."""
    for check in (_check_esa, _check_orb):
        problem = check(name, None)
        if isinstance(problem, str):
            return problem
        if problem is not None:  # only when an OrbitIndex is built by hand
            return "a valid name, listed as unrecognized by the caller"
    for suffix, advice in _COMPRESSED_SUFFIXES:
        if name.lower().endswith(suffix):
            base = name[: -len(suffix)]
            if _parse_esa(base, None) or _parse_orb(base, None):
                return advice
    found = _ESA_RE.search(name) or _ORB_RE.search(name)
    odd = sorted({c for c in name if not c.isascii()})
    if odd or any(c.isspace() for c in name):
        what = "spaces" if not odd else "non-ASCII characters " + repr("".join(odd))
        if odd and any(c.isspace() for c in name):
            what = "spaces and " + what
        if found is None:  # a browser's "name (1).cdf", a space typed into the name
            cleaned = re.sub(r"\s*\(\d+\)(?=\.)|\s+", "", name)
            if _parse_esa(cleaned, None) or _parse_orb(cleaned, None):
                found = re.match(".+", cleaned)
        hint = f" (rename it to {found.group(0)}?)" if found else ""
        return f"the name contains {what}{hint}"
    if found is not None and found.start() == 0:
        return (
            f"extra suffix {name[found.end() :]!r} after the name "
            "(an unfinished download or a temporary file?)"
        )
    if found is not None:
        return f"extra characters before the name {found.group(0)} (rename it?)"
    if _parse_esa(name.lower(), None) or _parse_orb(name.lower(), None):
        return "wrong letter case (names are lower case, extension .cdf or .CDF)"
    if name.startswith("fa_esa_l2_"):
        return f"not a valid FAST ESA L2 name (expected {_ESA_GRAMMAR})"
    if name.startswith("fa_k0_orb_"):
        return f"not a valid FAST orbit file name (expected {_ORB_GRAMMAR})"
    return "not a FAST ESA L2 or orbit file name"


def parse_esa_filename(name_or_path: str | os.PathLike[str]) -> EsaFileName | None:
    """Parse a FAST ESA L2 file name.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A bare file name or a path; only the final component is matched.

    Returns
    -------
    EsaFileName or None
        The parsed fields, or ``None`` if the name is not a valid
        ``fa_esa_l2_<inst>_<YYYYMMDDhhmmss>_<orbit>_v<NN>.cdf`` name (unknown
        instrument, impossible timestamp such as month 13, a date outside the
        ``datetime64[ns]`` range 1677-2262, orbit 0 or above :data:`MAX_ORBIT`,
        trailing suffixes such as ``.part`` or ``.tmp``, ...). :func:`discover`
        records the reason for every name it refuses (:attr:`OrbitIndex.skipped`).

    Examples
    --------
    >>> parse_esa_filename("fa_esa_l2_ees_20000101000000_13616_v02.cdf").orbit
    13616
    """
    path = Path(name_or_path)
    return _parse_esa(path.name, path)


def parse_orb_filename(name_or_path: str | os.PathLike[str]) -> OrbFileName | None:
    """Parse a FAST orbit ephemeris file name (``fa_k0_orb_<orbit>_v<NN>.cdf``).

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A bare file name or a path; only the final component is matched.

    Returns
    -------
    OrbFileName or None
        The parsed fields, or ``None`` if the name does not match (or its orbit is
        0 or above :data:`MAX_ORBIT`).
    """
    path = Path(name_or_path)
    return _parse_orb(path.name, path)


def _normalize_instruments(instruments: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(instruments, str):
        instruments = (instruments,)
    wanted = tuple(dict.fromkeys(instruments))
    unknown = [inst for inst in wanted if inst not in _INSTRUMENT_ORDER]
    if unknown:
        raise ValueError(f"unknown instrument(s) {unknown!r}; expected some of {INSTRUMENTS!r}")
    if not wanted:
        raise ValueError(f"instruments must not be empty; expected some of {INSTRUMENTS!r}")
    return wanted


def _rank(candidates: list, *, with_start: bool) -> list:
    """Order competing files best first (see :class:`DuplicateFiles`)."""
    ordered = sorted(candidates, key=lambda c: str(c.path))
    if with_start:
        ordered.sort(key=lambda c: (c.version, c.start), reverse=True)
    else:
        ordered.sort(key=lambda c: c.version, reverse=True)
    return ordered


class OrbitIndex(Mapping[int, Mapping[str, Path]]):
    """Read-only mapping ``orbit -> {instrument: Path}``, iterated by orbit number.

    Usually built by :func:`discover`. Building one directly resolves
    duplicates (highest version wins, then the latest timestamp in the name,
    then the first path in sorted order; each choice is logged at INFO) and
    drops files whose instrument is not in `instruments`.

    Parameters
    ----------
    root : str or os.PathLike
        Where the files were found.
    files : iterable of EsaFileName
        Parsed ESA file names.
    orbit_files : iterable of OrbFileName, optional
        Parsed orbit ephemeris file names.
    unrecognized : iterable of path-like, optional
        Files that matched neither pattern.
    instruments : iterable of str, optional
        Instruments to keep; the others are dropped and counted in
        :attr:`n_ignored`.
    n_ignored : int, optional
        Files already dropped by the caller, added to :attr:`n_ignored`.
    skipped : iterable of SkippedFile, optional
        Other entries passed over, with their reasons (symbolic link loops, broken
        links, fifos, unreadable entries). The `unrecognized` files are added to
        :attr:`skipped` with the reason their name was refused.

    Attributes
    ----------
    root : pathlib.Path
        Where the files were found.
    instruments : tuple of str
        The instruments that were kept.
    orbit_files : dict of int to pathlib.Path
        Orbit ephemeris files, highest version per orbit.
    duplicates : list of DuplicateFiles
        ESA orbit/instrument slots that had more than one file.
    orbit_file_duplicates : list of DuplicateFiles
        Orbits with more than one ephemeris file (``instrument == "orb"``).
    unrecognized : list of pathlib.Path
        Files that are neither ESA L2 nor orbit files, in path order.
    skipped : list of SkippedFile
        Everything passed over, each with its reason, in path order: the
        `unrecognized` files (why the name was refused: gzip-compressed, spaces or
        accents in the name, a date beyond 2262, an orbit beyond the mission, ...)
        and entries that are not readable regular files (symbolic link loops,
        broken links, fifos). Hidden names (starting with ``.``) are not listed.
    start_times : dict of (int, str) to datetime.datetime
        UTC start time from the name of each kept file, keyed by
        ``(orbit, instrument)``.
    n_ignored : int
        ESA files dropped because their instrument was not requested.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        files: Iterable[EsaFileName],
        orbit_files: Iterable[OrbFileName] = (),
        unrecognized: Iterable[str | os.PathLike[str]] = (),
        *,
        instruments: Iterable[str] | str = INSTRUMENTS,
        n_ignored: int = 0,
        skipped: Iterable[SkippedFile] = (),
    ) -> None:
        self.root = Path(root)
        self.instruments: tuple[str, ...] = _normalize_instruments(instruments)
        wanted = frozenset(self.instruments)

        best: dict[tuple[int, str], EsaFileName] = {}
        clashes: dict[tuple[int, str], list[EsaFileName]] = {}
        for f in files:
            if f.instrument not in wanted:
                n_ignored += 1
                continue
            key = (f.orbit, f.instrument)
            prev = best.get(key)
            if prev is None:
                best[key] = f
            elif key in clashes:
                clashes[key].append(f)
            else:
                clashes[key] = [prev, f]
        self.n_ignored = n_ignored

        self.duplicates: list[DuplicateFiles] = []
        for key in sorted(clashes, key=lambda k: (k[0], _INSTRUMENT_ORDER[k[1]])):
            ranked = _rank(clashes[key], with_start=True)
            best[key] = ranked[0]
            self._record(self.duplicates, key[0], key[1], ranked)

        orb_best: dict[int, OrbFileName] = {}
        orb_clashes: dict[int, list[OrbFileName]] = {}
        for o in orbit_files:
            prev_o = orb_best.get(o.orbit)
            if prev_o is None:
                orb_best[o.orbit] = o
            elif o.orbit in orb_clashes:
                orb_clashes[o.orbit].append(o)
            else:
                orb_clashes[o.orbit] = [prev_o, o]
        self.orbit_file_duplicates: list[DuplicateFiles] = []
        for orbit in sorted(orb_clashes):
            ranked_o = _rank(orb_clashes[orbit], with_start=False)
            orb_best[orbit] = ranked_o[0]
            self._record(self.orbit_file_duplicates, orbit, "orb", ranked_o)
        self.orbit_files: dict[int, Path] = {k: orb_best[k].path for k in sorted(orb_best)}

        self.unrecognized: list[Path] = sorted((Path(p) for p in unrecognized), key=str)
        self.skipped: list[SkippedFile] = sorted(
            [*skipped, *(SkippedFile(p, _skip_reason(p.name)) for p in self.unrecognized)],
            key=lambda s: str(s.path),
        )

        self._entries: dict[int, dict[str, EsaFileName]] = {}
        for key in sorted(best, key=lambda k: (k[0], _INSTRUMENT_ORDER[k[1]])):
            self._entries.setdefault(key[0], {})[key[1]] = best[key]
        self._paths: dict[int, Mapping[str, Path]] = {
            orbit: MappingProxyType({inst: f.path for inst, f in per.items()})
            for orbit, per in self._entries.items()
        }
        self.start_times: dict[tuple[int, str], datetime] = {
            (orbit, inst): f.start
            for orbit, per in self._entries.items()
            for inst, f in per.items()
        }

    @staticmethod
    def _record(out: list[DuplicateFiles], orbit: int, instrument: str, ranked: list) -> None:
        winner, losers = ranked[0], ranked[1:]
        out.append(DuplicateFiles(orbit, instrument, winner.path, tuple(c.path for c in losers)))
        logger.info(
            "orbit %d %s: %d files, kept %s (v%02d); discarded %s",
            orbit,
            instrument,
            len(ranked),
            winner.path,
            winner.version,
            ", ".join(f"{c.path} (v{c.version:02d})" for c in losers),
        )

    # -- Mapping protocol -------------------------------------------------
    def __getitem__(self, orbit: int) -> Mapping[str, Path]:
        return self._paths[orbit]

    def __iter__(self) -> Iterator[int]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, orbit: object) -> bool:
        return orbit in self._paths

    # -- extras -----------------------------------------------------------
    @property
    def n_files(self) -> int:
        """Number of ESA files kept in the index."""
        return len(self.start_times)

    def file_info(self, orbit: int, instrument: str) -> EsaFileName:
        """Return the parsed name of the file kept for `orbit` and `instrument`.

        Parameters
        ----------
        orbit : int
            Orbit number.
        instrument : str
            One of :data:`INSTRUMENTS`.

        Returns
        -------
        EsaFileName
            The parsed name (its ``start`` and ``path`` included).

        Raises
        ------
        KeyError
            If there is no such file in the index.
        """
        try:
            return self._entries[orbit][instrument]
        except KeyError:
            raise KeyError((orbit, instrument)) from None

    def instruments_missing(self, orbit: int) -> tuple[str, ...]:
        """Return the requested instruments that have no file for `orbit`.

        Parameters
        ----------
        orbit : int
            Orbit number. An orbit absent from the index has every
            instrument missing.

        Returns
        -------
        tuple of str
            Missing instruments, in :data:`INSTRUMENTS` order.
        """
        present = self._entries.get(orbit, {})
        return tuple(inst for inst in self.instruments if inst not in present)

    def summary(self) -> str:
        """Return a one-line summary of what was found.

        Returns
        -------
        str
            Counts of orbits, files per instrument, orbit files, discarded
            duplicates, skipped entries (:attr:`skipped`) and ignored files.
        """
        per_inst = dict.fromkeys(self.instruments, 0)
        for _, inst in self.start_times:
            per_inst[inst] += 1
        n_dup = sum(len(d.discarded) for d in self.duplicates)
        n_dup += sum(len(d.discarded) for d in self.orbit_file_duplicates)
        insts = ", ".join(f"{k}={v}" for k, v in per_inst.items())
        return (
            f"{len(self)} orbits, {self.n_files} ESA files ({insts}), "
            f"{len(self.orbit_files)} orbit files, {n_dup} duplicates discarded, "
            f"{len(self.skipped)} skipped, {self.n_ignored} ignored"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, orbits={len(self)}, "
            f"files={self.n_files}, orbit_files={len(self.orbit_files)}, "
            f"duplicates={len(self.duplicates) + len(self.orbit_file_duplicates)}, "
            f"skipped={len(self.skipped)}, ignored={self.n_ignored})"
        )


def _classify(
    name: str,
    path: Path,
    esa: list[EsaFileName],
    orb: list[OrbFileName],
    unrecognized: list[Path],
) -> None:
    parsed = _parse_esa(name, path)
    if parsed is not None:
        esa.append(parsed)
        return
    parsed_orb = _parse_orb(name, path)
    if parsed_orb is not None:
        orb.append(parsed_orb)
        return
    unrecognized.append(path)


def _entry_problem(path: Path, exc: OSError | None) -> str:
    """Why an entry that is neither a directory nor a regular file cannot be read."""
    if exc is not None and exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc is not None:
        return f"cannot be read ({exc.strerror or exc})"
    try:
        if path.is_symlink():
            os.stat(path)  # raises for a dangling link or a loop
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        if err.errno == errno.ENOENT:
            return f"broken symbolic link (to {os.readlink(path)!r}, which does not exist)"
        return f"cannot be read ({err.strerror or err})"
    return "not a regular file (a fifo, socket or device)"


def _walk(
    root: Path,
    esa: list[EsaFileName],
    orb: list[OrbFileName],
    unrecognized: list[Path],
    skipped: list[SkippedFile],
) -> None:
    """Depth-first, name-sorted walk; hidden entries skipped, symlink loops cut."""
    st = os.stat(root)
    visited = {(st.st_dev, st.st_ino)}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if directory is root:
                raise
            logger.warning("cannot read directory %s: %s", directory, exc)
            continue
        subdirs: list[Path] = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir():  # follows symlinks
                    dst = entry.stat()
                    ident = (dst.st_dev, dst.st_ino)
                    if ident in visited:
                        logger.debug("skipping already visited directory %s", entry.path)
                        continue
                    visited.add(ident)
                    subdirs.append(directory / name)
                    continue
                is_file = entry.is_file()
            except OSError as exc:  # a symlink loop, a permission error, ...
                path = directory / name
                skipped.append(SkippedFile(path, _entry_problem(path, exc)))
                continue
            if not is_file:  # broken symlink, fifo, socket, ...
                path = directory / name
                skipped.append(SkippedFile(path, _entry_problem(path, None)))
                continue
            _classify(name, directory / name, esa, orb, unrecognized)
        stack.extend(reversed(subdirs))


def discover(
    path: str | os.PathLike[str],
    *,
    instruments: Iterable[str] | str = INSTRUMENTS,
) -> OrbitIndex:
    """Find FAST ESA L2 files under `path` and index them by orbit.

    The folder is walked recursively to any depth, so the ``<YYYY>/<MM>/``,
    SPDF ``<inst>/<YYYY>/<MM>/`` and flat layouts all give the same index.
    Symbolic links to directories are followed, but every real directory is
    visited at most once (no loops). Hidden files and directories (names
    starting with ``.``) are skipped silently. The walk is in sorted name
    order, so the result does not depend on the file system.

    Everything else is listed, each with its reason, in
    :attr:`OrbitIndex.skipped`: files whose names are refused (junk ``*.cdf``
    names, ``.part`` downloads, ``.cdf.gz`` files, names with spaces or accents,
    dates beyond 2262, orbits beyond the mission, ``README.txt``, ...; their
    paths are also in :attr:`OrbitIndex.unrecognized`) and entries that are not
    readable regular files (symbolic link loops, broken links, fifos). They are
    reported in one WARNING: the count and the first few names with their
    reasons, names that look like FAST files first (``fastspectro info`` lists
    them all). ESA files of instruments not in `instruments` are dropped and
    only counted (:attr:`OrbitIndex.n_ignored`).

    Parameters
    ----------
    path : str or os.PathLike
        A directory to walk, or a single file.
    instruments : iterable of str, optional
        The instruments to index; default all of :data:`INSTRUMENTS`.

    Returns
    -------
    OrbitIndex
        The orbit index.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If `instruments` is empty or names an unknown instrument.
    """
    root = Path(path).expanduser()
    wanted = _normalize_instruments(instruments)
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, "FAST data path does not exist", str(root))

    esa: list[EsaFileName] = []
    orb: list[OrbFileName] = []
    unrecognized: list[Path] = []
    skipped: list[SkippedFile] = []
    if root.is_dir():
        _walk(root, esa, orb, unrecognized, skipped)
    else:
        _classify(root.name, root, esa, orb, unrecognized)

    index = OrbitIndex(root, esa, orb, unrecognized, instruments=wanted, skipped=skipped)
    if index.skipped:
        _warn_skipped(root, index.skipped)
    logger.info("%s: %s", root, index.summary())
    return index


def _looks_like_data(name: str) -> bool:
    lower = name.lower()
    return lower.startswith("fa_") or ".cdf" in lower


def _warn_skipped(root: Path, skipped: list[SkippedFile]) -> None:
    """One WARNING: the count, then the first names with their reasons."""
    n = len(skipped)
    first = sorted(skipped, key=lambda s: not _looks_like_data(s.path.name))[:_MAX_EXAMPLES]
    listed = "; ".join(f"{_relative(s.path, root)}: {s.reason}" for s in first)
    more = f"; +{n - _MAX_EXAMPLES} more" if n > _MAX_EXAMPLES else ""
    logger.warning(
        "%s: %d file(s) skipped: %s%s (`fastspectro info %s` lists them all)",
        root,
        n,
        listed,
        more,
        root,
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        return str(path)
