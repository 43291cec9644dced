"""A static HTML report of an output folder: ``OUTPUT/index.html``, a gallery for a browser.

:func:`write_run_report` reads what a run left in its output folder — the figures under
``{YYYY}/{MM}/{orbit}/``, ``progress.json``, ``extrema.json`` and, when the command line
wrote it, ``run-summary.json`` — and writes:

* a header: when the state was written, the scale combinations, counts of orbits,
  figures and errors per reason, and the last run's wall time and figures per second;
* the extrema used: ``y_min``/``y_max``/``z_min``/``z_max`` per instrument and
  pitch-angle category, with their provenance (percentile, samples, orbits covered);
* one row per orbit (sorted) with a thumbnail of each of its figures, each linking to
  the full image, and the orbit's errors per instrument and reason.

Thumbnails are the PNGs themselves, drawn at ``thumb_width`` pixels by the browser;
after the first few orbits of a page they load lazily (``loading="lazy"``), so only the
rows on screen are fetched. Nothing is generated: writing the report costs a directory
scan even for a mission of ~51,000 orbits (small PNG thumbnails would cost a decode,
resize and encode per figure, hours for a mission, and could go stale), and it always
shows the figures as they are. Every link is relative, so the folder can be copied or
served as is. Long runs are split into pages of ``page_size`` orbits (``index.html``,
``index-2.html``, ...). The pages are rendered from the Jinja2 template
``fastspectro_dask/templates/report.html.j2`` with autoescape on, so every value from the
folder (file names, error messages, state contents) is HTML-escaped. The run-summary file is
the only one written besides the pages; the state files are only read, never moved or
rewritten.

"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import html
import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from fastspectro_dask.atomic import atomic_write, atomic_write_json
from fastspectro_dask.discovery import INSTRUMENTS
from fastspectro_dask.progress import parse_key

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_THUMB_WIDTH",
    "REPORT_NAME",
    "SUMMARY_NAME",
    "FigureFile",
    "find_figures",
    "write_run_report",
]

logger = logging.getLogger(__name__)

#: File name of the report's first page, in the output folder.
REPORT_NAME = "index.html"
#: File name of the last command-line run's summaries, in the output folder.
SUMMARY_NAME = "run-summary.json"
#: Width in CSS pixels at which figures are shown in the gallery.
DEFAULT_THUMB_WIDTH = 320
#: Orbits per page of the report.
DEFAULT_PAGE_SIZE = 500

_DASH = "\u2013"  # en dash, for ranges
#: The first orbits of a page load at once (the first screenful, complete when the page's
#: load event fires); the others lazily, when scrolled near.
_EAGER_ORBITS = 10
_SCALE_ORDER = ("linear_linear", "linear_log", "log_linear", "log_log")
_FIGURE_RE = re.compile(
    r"^(?P<orbit>\d+)_(?P<product>[^/\\\s]+)_y-(?P<y>linear|log)_z-(?P<z>linear|log)\.png$"
)


#: The template of a report page, in ``fastspectro_dask/templates``.
_TEMPLATE = "report.html.j2"


def _html_text(value: Any) -> Markup:
    """Escape a template value as :func:`html.escape` does (quotes too).

    The template environment autoescapes; this ``finalize`` hook only picks the entity
    spelling (``&quot;``, ``&#x27;``, as the reports before the templates had). Values that
    are already markup pass through unchanged.
    """
    if hasattr(value, "__html__"):
        return Markup(value)
    return Markup(html.escape(str(value), quote=True))


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    """The page template, loaded once per process from the package."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fastspectro_dask", "templates"),
        autoescape=True,
        finalize=_html_text,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(_TEMPLATE)


def _num(value: Any) -> str:
    if value is None:
        return _DASH
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@dataclass(frozen=True)
class FigureFile:
    """One figure of the output folder.

    Attributes
    ----------
    orbit : int
    product : str
        ``instruments`` or ``pa-<instrument>``.
    y_scale, z_scale : str
    rel : str
        Path relative to the output folder, with ``/`` separators.
    """

    orbit: int
    product: str
    y_scale: str
    z_scale: str
    rel: str

    @property
    def scales(self) -> str:
        """``{y}_{z}``, as in the progress JSON keys."""
        return f"{self.y_scale}_{self.z_scale}"

    @property
    def month(self) -> str:
        """``YYYY-MM`` from the folder the figure is in."""
        parts = self.rel.split("/")
        return f"{parts[0]}-{parts[1]}" if len(parts) >= 4 else ""

    def sort_key(self) -> tuple:
        scale = _SCALE_ORDER.index(self.scales) if self.scales in _SCALE_ORDER else 99
        inst = self.product.removeprefix("pa-")
        product = (
            0
            if self.product == "instruments"
            else 1 + (INSTRUMENTS.index(inst) if inst in INSTRUMENTS else len(INSTRUMENTS))
        )
        return (scale, product, self.product)


def find_figures(output_dir: str | os.PathLike[str]) -> dict[int, list[FigureFile]]:
    """The figures under ``{output_dir}/{YYYY}/{MM}/{orbit}/``, per orbit, sorted.

    Only names that follow ``{orbit}_{product}_y-{y}_z-{z}.png`` in the folder of their
    orbit are taken (temporary files of a save in progress are not).

    Parameters
    ----------
    output_dir : path-like

    Returns
    -------
    dict
        orbit -> figures (scale combination, then instrument grid, then pitch-angle grids
        in instrument order), orbits ascending.
    """
    root = Path(output_dir)
    found: dict[int, list[FigureFile]] = defaultdict(list)

    def dirs(path: Path, pattern: str) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return [d for d in it if d.is_dir() and re.fullmatch(pattern, d.name)]
        except OSError:
            return []

    for year in dirs(root, r"\d{4}"):
        for month in dirs(Path(year.path), r"\d{2}"):
            for orbit_dir in dirs(Path(month.path), r"\d+"):
                with os.scandir(orbit_dir.path) as it:
                    for f in it:
                        m = _FIGURE_RE.match(f.name)
                        if not m or m["orbit"] != orbit_dir.name or not f.is_file():
                            continue
                        found[int(m["orbit"])].append(
                            FigureFile(
                                orbit=int(m["orbit"]),
                                product=m["product"],
                                y_scale=m["y"],
                                z_scale=m["z"],
                                rel=f"{year.name}/{month.name}/{orbit_dir.name}/{f.name}",
                            )
                        )
    return {o: sorted(found[o], key=FigureFile.sort_key) for o in sorted(found)}


def _read_json(path: Path, kind: str) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None (missing or unreadable: logged, left alone)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("report: cannot read %s %s (%s); left out", kind, path, exc)
        return None
    if not isinstance(doc, dict):
        logger.warning("report: %s %s is not a JSON object; left out", kind, path)
        return None
    return doc


@dataclass(frozen=True)
class _Error:
    instrument: str
    scales: str
    reason: str
    detail: str


def _errors_by_orbit(
    progress: Mapping[str, Any], extrema: Mapping[str, Any] | None
) -> dict[int, list[_Error]]:
    """orbit -> errors, from the ``{inst}_{y}_{z}_error-{reason}`` lists."""
    messages: dict[str, str] = {}
    if extrema:
        root = Path(str(extrema.get("input_root", "")))
        for rel, msg in (extrema.get("errors") or {}).items():
            messages[os.path.normpath(str(root / rel))] = str(msg)
    out: dict[int, list[_Error]] = defaultdict(list)
    for key, orbits in progress.items():
        k = parse_key(key)
        if k is None or k.kind != "error" or not isinstance(orbits, list):
            continue
        files = progress.get(f"{key}_files") or {}
        for orbit in orbits:
            try:
                orbit = int(orbit)
            except (TypeError, ValueError):
                continue
            detail = ""
            info = files.get(str(orbit)) if isinstance(files, Mapping) else None
            if isinstance(info, Mapping) and info.get("path"):
                path = str(info["path"])
                msg = messages.get(os.path.normpath(path), "")
                # "InvalidCDFError: /the/path.cdf: the cause" -> "the cause"
                detail = msg.split(f"{path}: ", 1)[-1] if f"{path}: " in msg else msg
                detail = f"{Path(path).name}: {detail}" if detail else Path(path).name
            out[orbit].append(_Error(k.instrument, k.scales, k.reason, detail))
    for errs in out.values():
        errs.sort(
            key=lambda e: (
                _SCALE_ORDER.index(e.scales) if e.scales in _SCALE_ORDER else 99,
                INSTRUMENTS.index(e.instrument) if e.instrument in INSTRUMENTS else 99,
                e.reason,
            )
        )
    return dict(out)


def _completed(progress: Mapping[str, Any]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for key, orbits in progress.items():
        k = parse_key(key)
        if k is not None and k.kind == "completed" and isinstance(orbits, list):
            out[k.scales] = {int(o) for o in orbits}
    return out


def _scale_label(scales: str) -> str:
    y, _, z = scales.partition("_")
    return f"y {y}, z {z}"


def _rel_link(target: str | os.PathLike[str] | None, root: Path) -> str | None:
    """A relative URL of ``target`` when it is inside ``root`` (and exists), else None."""
    if not target:
        return None
    path = Path(target)
    if not path.is_absolute():
        path = Path.cwd() / path
    try:
        rel = path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return quote(rel.as_posix()) if path.exists() else None


def _run_rows(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The last run's summaries (one per scale combination) as table cells."""
    rows = []
    for s in summaries:
        errors = ", ".join(f"{k} {v}" for k, v in sorted((s.get("errors") or {}).items()))
        wall = float(s.get("wall_seconds") or 0.0)
        fps = s.get("figures_per_second")
        if fps is None:
            fps = (s.get("figures_written") or 0) / wall if wall else 0.0
        status = f"interrupted ({s.get('signal') or '?'})" if s.get("interrupted") else "finished"
        rows.append(
            {
                "scales": str(s.get("scales", "")),
                "orbits_total": str(s.get("orbits_total", "")),
                "orbits_completed": str(s.get("orbits_completed", "")),
                "orbits_skipped": str(s.get("orbits_skipped", "")),
                "errors": errors or "0",
                "figures_written": str(s.get("figures_written", "")),
                "wall": f"{wall:.1f}",
                "fps": f"{float(fps):.2f}",
                "status": status,
            }
        )
    return rows


def _inst_key(inst: str) -> int:
    return INSTRUMENTS.index(inst) if inst in INSTRUMENTS else len(INSTRUMENTS)


def _extrema_context(extrema: Mapping[str, Any] | None) -> dict[str, Any]:
    """The limits per instrument (with provenance), then per pitch-angle category."""
    if not extrema or not extrema.get("results"):
        return {"instruments": []}
    params = extrema.get("params") or {}
    note = [f"variable {params.get('variable', '?')}"]
    note.append("complete" if extrema.get("complete") else "INCOMPLETE (an interrupted run)")
    if extrema.get("updated_utc"):
        note.append(f"written {extrema['updated_utc']}")
    if extrema.get("input_root"):
        note.append(f"input {extrema['input_root']}")
    results = extrema["results"]
    prov = extrema.get("provenance") or {}
    insts = sorted(results, key=_inst_key)
    instruments = []  # the instrument grid's rows (category "all") with their provenance
    categories = []
    for inst in insts:
        cats = results[inst] or {}
        r = cats.get("all") or next(iter(cats.values()), None) or {}
        p = prov.get(inst) or {}
        instruments.append(
            {
                "instrument": inst,
                "numbers": [
                    *(_num(r.get(k)) for k in ("y_min", "y_max", "z_min", "z_max")),
                    _num(p.get("percentile")),
                    _num(p.get("sample_count", r.get("n_samples"))),
                    _num(p.get("orbits_covered")),
                ],
                "orbit_range": f"{_num(p.get('first_orbit'))}{_DASH}{_num(p.get('last_orbit'))}",
                "files": [_num(p.get("files_counted")), _num(p.get("files_with_errors"))],
            }
        )
        for cat, rc in cats.items():
            rc = rc or {}
            categories.append(
                {
                    "instrument": inst,
                    "category": cat,
                    "numbers": [
                        _num(rc.get(k)) for k in ("y_min", "y_max", "z_min", "z_max", "n_samples")
                    ],
                }
            )
    rules = {
        f"z_min: {p.get('z_min_rule')}; y_max: energy below which "
        f"{_num(p.get('y_max_fraction'))} of the positive samples lie"
        for p in prov.values()
        if p and p.get("z_min_rule")
    }
    method = next((p.get("method") for p in prov.values() if p and p.get("method")), None)
    return {
        "note": "; ".join(note),
        "instruments": instruments,
        "categories": categories,
        "rules": sorted(rules),
        "method": method,
    }


def _orbit_context(
    orbit: int, figures: Sequence[FigureFile], errors: Sequence[_Error], lazy: bool
) -> dict[str, Any]:
    """One orbit: its errors and its figures (each linking to the full image)."""
    figs = []
    for f in figures:
        caption = f"{f.product} · {_scale_label(f.scales)}"
        figs.append({"url": quote(f.rel), "caption": caption, "alt": f"orbit {orbit} {caption}"})
    return {
        "orbit": orbit,
        "month": next((f.month for f in figures if f.month), ""),
        "errors": [
            {
                "instrument": e.instrument,
                "reason": e.reason,
                "scales": _scale_label(e.scales),
                "detail": e.detail,
            }
            for e in errors
        ],
        "figures": figs,
        "lazy": lazy,
    }


def _page_name(n: int) -> str:
    return REPORT_NAME if n == 1 else f"index-{n}.html"


def _nav(n: int, orbit_pages: Sequence[tuple[int, int]]) -> list[dict[str, str | None]]:
    """Links to the pages (none for a single page); the current one without a link."""
    if len(orbit_pages) <= 1:
        return []
    return [
        {"label": f"{lo}{_DASH}{hi}", "href": None if k == n else _page_name(k)}
        for k, (lo, hi) in enumerate(orbit_pages, start=1)
    ]


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _as_dicts(summaries: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for s in summaries:
        out.append(dict(s.to_dict() if hasattr(s, "to_dict") else s))
    return out


@dataclass(frozen=True)
class _State:
    """The run's state files (paths and contents; a missing or unreadable file reads empty)."""

    progress_path: Path
    extrema_path: Path
    progress: dict[str, Any]
    extrema: dict[str, Any] | None

    @classmethod
    def read(
        cls,
        root: Path,
        progress_json: str | os.PathLike[str] | None,
        extrema_json: str | os.PathLike[str] | None,
    ) -> _State:
        """Read ``progress_json`` and ``extrema_json`` (default: in ``root``); never written."""
        progress_path = Path(progress_json) if progress_json else root / "progress.json"
        extrema_path = Path(extrema_json) if extrema_json else root / "extrema.json"
        return cls(
            progress_path,
            extrema_path,
            _read_json(progress_path, "progress JSON") or {},
            _read_json(extrema_path, "extrema JSON"),
        )


@dataclass(frozen=True)
class _Contents:
    """What a run left in its output folder: figures, errors and completed orbits.

    Attributes
    ----------
    figures : dict
        orbit -> figures (:func:`find_figures`).
    errors : dict
        orbit -> errors from the progress JSON (:func:`_errors_by_orbit`).
    completed : dict
        ``{y}_{z}`` -> orbits completed.
    orbits : list of int
        Every orbit with a figure, an error or a completion, ascending.
    scales : list of str
        The scale combinations with a completion or a figure, in ``_SCALE_ORDER``.
    """

    figures: dict[int, list[FigureFile]]
    errors: dict[int, list[_Error]]
    completed: dict[str, set[int]]
    orbits: list[int]
    scales: list[str]

    @classmethod
    def scan(
        cls, root: Path, progress: Mapping[str, Any], extrema: Mapping[str, Any] | None
    ) -> _Contents:
        """The figures under ``root`` and the orbits the state files name."""
        figures = find_figures(root)
        errors = _errors_by_orbit(progress, extrema)
        completed = _completed(progress)
        orbits = sorted(set(figures) | set(errors) | {o for s in completed.values() for o in s})
        scales = sorted(
            set(completed) | {f.scales for fs in figures.values() for f in fs},
            key=lambda s: _SCALE_ORDER.index(s) if s in _SCALE_ORDER else 99,
        )
        return cls(figures, errors, completed, orbits, scales)

    @property
    def n_figures(self) -> int:
        return sum(len(fs) for fs in self.figures.values())


def _run_summary(
    root: Path,
    now: str,
    summaries: Iterable[Any] | None,
    config: Mapping[str, Any] | None,
    performance_report: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """The last run's summaries: saved to ``run-summary.json`` when given, else read from it."""
    if summaries is None:
        return _read_json(root / SUMMARY_NAME, "run summary") or {}
    saved = {
        "finished_utc": now,
        "config": dict(config) if config is not None else None,
        "summaries": _as_dicts(summaries),
        "performance_report": os.path.abspath(performance_report) if performance_report else None,
    }
    atomic_write_json(root / SUMMARY_NAME, saved)
    return saved


def _scale_lines(contents: _Contents, progress: Mapping[str, Any]) -> list[str]:
    """One header line per scale combination: orbits completed, figures, watermark."""
    lines = []
    for s in contents.scales:
        done = len(contents.completed.get(s, ()))
        n_fig = sum(1 for fs in contents.figures.values() for f in fs if f.scales == s)
        mark = progress.get(f"{s}_last_orbit")
        lines.append(
            f"{_scale_label(s)}: {done} orbits completed, {n_fig} figures, watermark {_num(mark)}"
        )
    return lines


def _links(
    root: Path, state: _State, performance_report: str | os.PathLike[str] | None
) -> list[dict[str, str]]:
    """Relative links to the state files, the logs and the Dask performance report, for
    those inside ``root`` that exist."""
    links = []
    for label, target in (
        ("progress.json", state.progress_path),
        ("extrema.json", state.extrema_path),
        ("logs", root / "logs"),
        ("Dask performance report", performance_report),
    ):
        url = _rel_link(target, root)
        if url:
            links.append({"label": label, "href": url})
    return links


def _counts(contents: _Contents) -> dict[str, Any]:
    """The header's counts: orbits, figures, orbits with errors, errors per reason."""
    errors = contents.errors
    reasons: Counter[str] = Counter(e.reason for es in errors.values() for e in es)
    return {
        "orbits": len(contents.orbits),
        "figures": contents.n_figures,
        "orbits_with_errors": sum(1 for o in contents.orbits if o in errors),
        "errors": ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none",
    }


def _common_context(
    root: Path,
    title: str | None,
    now: str,
    state: _State,
    saved: Mapping[str, Any],
    contents: _Contents,
    links: list[dict[str, str]],
    width: int,
) -> dict[str, Any]:
    """What every page shows: title, header, counts, scale lines, the last run, links."""
    return {
        "title": title or f"FAST ESA spectrograms: {root.resolve().name}",
        "written": now,
        "progress_written": state.progress.get("updated_utc"),
        "folder": str(root.resolve()),
        "counts": _counts(contents),
        "scale_lines": _scale_lines(contents, state.progress),
        "runs": _run_rows(list(saved.get("summaries") or [])),
        "runs_finished": saved.get("finished_utc"),
        "links": links,
        "n_orbits": len(contents.orbits),
        "width": width,
    }


def _write_pages(
    root: Path,
    common: Mapping[str, Any],
    extrema_context: Mapping[str, Any],
    contents: _Contents,
    page_size: int,
) -> int:
    """Render and write the pages, ``page_size`` orbits each (at least one page); returns
    how many. The extrema table is on the first page only."""
    orbits = contents.orbits
    chunks = [orbits[i : i + page_size] for i in range(0, len(orbits), page_size)]
    chunks = chunks or [[]]
    ranges = [(c[0], c[-1]) if c else (0, 0) for c in chunks]
    template = _template()
    for n, chunk in enumerate(chunks, start=1):
        page = template.render(
            **common,
            extrema=extrema_context if n == 1 else None,
            pages=_nav(n, ranges),
            orbits=[
                _orbit_context(
                    o,
                    contents.figures.get(o, []),
                    contents.errors.get(o, []),
                    k >= _EAGER_ORBITS,
                )
                for k, o in enumerate(chunk)
            ],
        )
        _write_text_atomic(root / _page_name(n), page)
    return len(chunks)


def _remove_stale_pages(root: Path, n_pages: int) -> None:
    """Delete the pages beyond ``n_pages`` that an earlier, longer report left."""
    for stale in root.glob("index-*.html"):
        m = re.fullmatch(r"index-(\d+)\.html", stale.name)
        if m and int(m[1]) > n_pages:
            with contextlib.suppress(OSError):
                stale.unlink()


def write_run_report(
    output_dir: str | os.PathLike[str],
    *,
    progress_json: str | os.PathLike[str] | None = None,
    extrema_json: str | os.PathLike[str] | None = None,
    thumb_width: int = DEFAULT_THUMB_WIDTH,
    summaries: Iterable[Any] | None = None,
    performance_report: str | os.PathLike[str] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    title: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Write the static HTML report ``{output_dir}/index.html`` of a run's output folder.

    Parameters
    ----------
    output_dir : path-like
        The output folder of a plot run (figures under ``{YYYY}/{MM}/{orbit}/``).
    progress_json, extrema_json : path-like, optional
        The state files (default ``progress.json`` and ``extrema.json`` in
        ``output_dir``). Missing files leave their sections empty; they are only read.
    thumb_width : int
        Width in CSS pixels at which each figure is shown (the full image is one click
        away).
    summaries : iterable of RunSummary or dict, optional
        The run's summaries (one per scale combination), shown in the header and saved
        to ``{output_dir}/run-summary.json`` (with ``performance_report``), so that a
        later rewrite shows them again. By default they are read from that file.
    performance_report : path-like, optional
        A Dask performance report to link (when it is inside ``output_dir``). By default
        the one named in ``run-summary.json``, if any.
    page_size : int
        Orbits per page; more orbits go to ``index-2.html``, ``index-3.html``...
    title : str, optional
        Page title (default: names the output folder).
    config : mapping, optional
        The run's resolved settings (:meth:`fastspectro_dask.config.RunConfig.to_dict`),
        saved with ``summaries`` in ``run-summary.json`` (each summary also carries the
        settings of its scale combination).

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.

    Raises
    ------
    NotADirectoryError
        ``output_dir`` is not a folder.
    ValueError
        ``thumb_width`` or ``page_size`` below 1.
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    if int(thumb_width) < 1 or int(page_size) < 1:
        raise ValueError("thumb_width and page_size must be >= 1")
    state = _State.read(root, progress_json, extrema_json)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    saved = _run_summary(root, now, summaries, config, performance_report)
    if performance_report is None:
        performance_report = saved.get("performance_report")
    contents = _Contents.scan(root, state.progress, state.extrema)
    links = _links(root, state, performance_report)
    common = _common_context(root, title, now, state, saved, contents, links, int(thumb_width))
    n_pages = _write_pages(root, common, _extrema_context(state.extrema), contents, int(page_size))
    _remove_stale_pages(root, n_pages)
    logger.info(
        "report %s: %d orbits, %d figures, %d page(s)",
        root / REPORT_NAME,
        len(contents.orbits),
        contents.n_figures,
        n_pages,
    )
    return root / REPORT_NAME
