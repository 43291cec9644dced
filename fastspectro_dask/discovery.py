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
timezone-aware UTC :class:`~datetime.datetime` objects.

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
    "DuplicateFiles",
    "EsaFileName",
    "OrbFileName",
    "OrbitIndex",
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

#: How many example names the "unrecognized files" warning shows.
_MAX_EXAMPLES = 5

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


def _parse_esa(name: str, path: Path | None) -> EsaFileName | None:
    m = _ESA_RE.fullmatch(name)
    if m is None:
        return None
    inst, year, month, day, hour, minute, second, orbit_s, version_s = m.groups()
    orbit = int(orbit_s)
    if orbit < 1:
        return None
    try:
        start = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=_UTC
        )
    except ValueError:  # month 13, Feb 30, second 60, ...
        return None
    return EsaFileName(inst, start, orbit, int(version_s), path if path is not None else Path(name))


def _parse_orb(name: str, path: Path | None) -> OrbFileName | None:
    m = _ORB_RE.fullmatch(name)
    if m is None:
        return None
    orbit = int(m.group(1))
    if orbit < 1:
        return None
    return OrbFileName(orbit, int(m.group(2)), path if path is not None else Path(name))


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
        instrument, impossible timestamp such as month 13, orbit 0, trailing
        suffixes such as ``.part`` or ``.tmp``, ...).

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
        The parsed fields, or ``None`` if the name does not match.
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
            duplicates, unrecognized and ignored files.
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
            f"{len(self.unrecognized)} unrecognized, {self.n_ignored} ignored"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, orbits={len(self)}, "
            f"files={self.n_files}, orbit_files={len(self.orbit_files)}, "
            f"duplicates={len(self.duplicates) + len(self.orbit_file_duplicates)}, "
            f"unrecognized={len(self.unrecognized)}, ignored={self.n_ignored})"
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


def _walk(
    root: Path,
    esa: list[EsaFileName],
    orb: list[OrbFileName],
    unrecognized: list[Path],
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
            except OSError as exc:
                logger.debug("skipping %s: %s", entry.path, exc)
                continue
            if not is_file:  # broken symlink, fifo, socket, ...
                logger.debug("skipping non-regular file %s", entry.path)
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

    Other files (junk ``*.cdf`` names, ``.part`` downloads, ``README.txt``,
    ...) are collected in :attr:`OrbitIndex.unrecognized` and reported once
    as a single WARNING. ESA files of instruments not in `instruments` are
    dropped and only counted (:attr:`OrbitIndex.n_ignored`).

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
    if root.is_dir():
        _walk(root, esa, orb, unrecognized)
    else:
        _classify(root.name, root, esa, orb, unrecognized)

    index = OrbitIndex(root, esa, orb, unrecognized, instruments=wanted)
    if index.unrecognized:
        n = len(index.unrecognized)
        examples = ", ".join(p.name for p in index.unrecognized[:_MAX_EXAMPLES])
        more = f" (+{n - _MAX_EXAMPLES} more)" if n > _MAX_EXAMPLES else ""
        logger.warning("%s: %d unrecognized file(s) ignored, e.g. %s%s", root, n, examples, more)
    logger.info("%s: %s", root, index.summary())
    return index
