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
``index-2.html``, ...). All text is HTML-escaped. The run-summary file is the only one
written besides the pages; the state files are only read, never moved or rewritten.

"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import logging
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastspectro_dask.discovery import INSTRUMENTS
from fastspectro_dask.state import atomic_write_json

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
_ERROR_RE = re.compile(
    r"^(?P<inst>[^_]+)_(?P<y>linear|log)_(?P<z>linear|log)_error-(?P<reason>[a-z0-9-]+)$"
)
_COMPLETED_RE = re.compile(r"^(?P<y>linear|log)_(?P<z>linear|log)_completed$")


def _e(value: Any) -> str:
    """HTML-escaped text of a value (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


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
        m = _ERROR_RE.match(key)
        if not m or not isinstance(orbits, list):
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
            out[orbit].append(_Error(m["inst"], f"{m['y']}_{m['z']}", m["reason"], detail))
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
        m = _COMPLETED_RE.match(key)
        if m and isinstance(orbits, list):
            out[f"{m['y']}_{m['z']}"] = {int(o) for o in orbits}
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


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} th,td{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top;text-align:left} th{background:#f2f2f2} td.n{text-align:right;
font-variant-numeric:tabular-nums} .muted{color:#666} .errors{color:#a00000}
td{white-space:nowrap}
div.orbit{border-left:5px solid #2a2;padding:.1em 0 .1em .7em;margin:1em 0}
div.orbit.err{border-left-color:#c00} div.orbit h3{margin:.1em 0 .3em;font-size:1.05em}
div.figs{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0} figcaption{font-size:.8em;color:#444}
img{border:1px solid #ddd;background:#fafafa;height:auto;display:block}
nav{margin:.6em 0} nav a{margin-right:.6em} ul.errs{margin:.2em 0 .5em;padding-left:1.2em}
"""


def _summary_rows(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [
        "<table class='runs'><tr><th>scales</th><th>orbits</th><th>done</th><th>skipped</th>"
        "<th>errors</th><th>figures written</th><th>wall s</th><th>figures/s</th>"
        "<th>status</th></tr>"
    ]
    for s in summaries:
        errors = ", ".join(f"{k} {v}" for k, v in sorted((s.get("errors") or {}).items()))
        wall = float(s.get("wall_seconds") or 0.0)
        fps = s.get("figures_per_second")
        if fps is None:
            fps = (s.get("figures_written") or 0) / wall if wall else 0.0
        status = f"interrupted ({s.get('signal') or '?'})" if s.get("interrupted") else "finished"
        rows.append(
            "<tr>"
            f"<td>{_e(s.get('scales', ''))}</td>"
            f"<td class='n'>{_e(s.get('orbits_total', ''))}</td>"
            f"<td class='n'>{_e(s.get('orbits_completed', ''))}</td>"
            f"<td class='n'>{_e(s.get('orbits_skipped', ''))}</td>"
            f"<td>{_e(errors or '0')}</td>"
            f"<td class='n'>{_e(s.get('figures_written', ''))}</td>"
            f"<td class='n'>{wall:.1f}</td><td class='n'>{float(fps):.2f}</td>"
            f"<td>{_e(status)}</td></tr>"
        )
    rows.append("</table>")
    return rows


def _inst_key(inst: str) -> int:
    return INSTRUMENTS.index(inst) if inst in INSTRUMENTS else len(INSTRUMENTS)


def _extrema_section(extrema: Mapping[str, Any] | None) -> list[str]:
    """The limits per instrument (with provenance), then per pitch-angle category."""
    out = ["<h2 id='extrema'>Extrema used</h2>"]
    if not extrema or not extrema.get("results"):
        out.append("<p class='muted'>no extrema.json with results in this folder.</p>")
        return out
    params = extrema.get("params") or {}
    note = [f"variable {params.get('variable', '?')}"]
    note.append("complete" if extrema.get("complete") else "INCOMPLETE (an interrupted run)")
    if extrema.get("updated_utc"):
        note.append(f"written {extrema['updated_utc']}")
    if extrema.get("input_root"):
        note.append(f"input {extrema['input_root']}")
    out.append(f"<p class='muted'>{_e('; '.join(note))}. Values in linear physical units.</p>")
    results = extrema["results"]
    prov = extrema.get("provenance") or {}
    insts = sorted(results, key=_inst_key)
    # the instrument grid's rows (category "all") with their provenance
    out.append(
        "<table class='extrema-instruments'><tr><th>instrument</th><th>y_min</th>"
        "<th>y_max</th><th>z_min</th><th>z_max</th><th>z_max percentile</th><th>samples</th>"
        "<th>orbits covered</th><th>orbit range</th><th>files counted</th>"
        "<th>files with errors</th></tr>"
    )
    for inst in insts:
        cats = results[inst] or {}
        r = cats.get("all") or next(iter(cats.values()), None) or {}
        p = prov.get(inst) or {}
        rng = f"{_num(p.get('first_orbit'))}{_DASH}{_num(p.get('last_orbit'))}"
        out.append(
            f"<tr><td>{_e(inst)}</td>"
            + "".join(
                f"<td class='n'>{_e(_num(r.get(k)))}</td>"
                for k in ("y_min", "y_max", "z_min", "z_max")
            )
            + f"<td class='n'>{_e(_num(p.get('percentile')))}</td>"
            f"<td class='n'>{_e(_num(p.get('sample_count', r.get('n_samples'))))}</td>"
            f"<td class='n'>{_e(_num(p.get('orbits_covered')))}</td><td>{_e(rng)}</td>"
            f"<td class='n'>{_e(_num(p.get('files_counted')))}</td>"
            f"<td class='n'>{_e(_num(p.get('files_with_errors')))}</td></tr>"
        )
    out.append("</table>")
    rules = {
        f"z_min: {p.get('z_min_rule')}; y_max: energy below which "
        f"{_num(p.get('y_max_fraction'))} of the positive samples lie"
        for p in prov.values()
        if p and p.get("z_min_rule")
    }
    method = next((p.get("method") for p in prov.values() if p and p.get("method")), None)
    out.append("<details><summary>per pitch-angle category (the pitch-angle grids' rows)</summary>")
    out.append(
        "<table class='extrema'><tr><th>instrument</th><th>category</th><th>y_min</th>"
        "<th>y_max</th><th>z_min</th><th>z_max</th><th>samples</th></tr>"
    )
    for inst in insts:
        for cat, r in (results[inst] or {}).items():
            r = r or {}
            out.append(
                f"<tr><td>{_e(inst)}</td><td>{_e(cat)}</td>"
                + "".join(
                    f"<td class='n'>{_e(_num(r.get(k)))}</td>"
                    for k in ("y_min", "y_max", "z_min", "z_max", "n_samples")
                )
                + "</tr>"
            )
    out.append("</table>")
    for rule in sorted(rules):
        out.append(f"<p class='muted'>{_e(rule)}</p>")
    if method:
        out.append(f"<p class='muted'>method: {_e(method)}</p>")
    out.append("</details>")
    return out


def _orbit_block(
    orbit: int,
    figures: Sequence[FigureFile],
    errors: Sequence[_Error],
    width: int,
    lazy: bool = True,
) -> str:
    """One orbit: a heading, its errors, its figures (each linking to the full image)."""
    month = next((f.month for f in figures if f.month), "")
    parts = [
        f"<div class='orbit {'err' if errors else 'ok'}' id='orbit-{orbit}'>",
        f"<h3>orbit {orbit} <span class='muted'>{_e(month)}</span></h3>",
    ]
    if errors:
        items = "".join(
            f"<li><b>{_e(e.instrument)}</b> {_e(e.reason)} "
            f"<span class='muted'>({_e(_scale_label(e.scales))})</span>"
            + (f": {_e(e.detail)}" if e.detail else "")
            + "</li>"
            for e in errors
        )
        parts.append(f"<ul class='errs errors'>{items}</ul>")
    cells = []
    load = " loading='lazy' decoding='async'" if lazy else ""
    for f in figures:
        url = _e(quote(f.rel))
        caption = f"{f.product} · {_scale_label(f.scales)}"
        cells.append(
            f"<figure><a href='{url}'><img src='{url}' width='{width}'{load} "
            f"alt='{_e(f'orbit {orbit} {caption}')}'></a>"
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    parts.append(
        f"<div class='figs'>{''.join(cells)}</div>" if cells else "<p class='muted'>no figure</p>"
    )
    parts.append("</div>")
    return "".join(parts)


def _page_name(n: int) -> str:
    return REPORT_NAME if n == 1 else f"index-{n}.html"


def _nav(n: int, pages: int, orbit_pages: Sequence[tuple[int, int]]) -> str:
    if pages <= 1:
        return ""
    links = []
    for k in range(1, pages + 1):
        lo, hi = orbit_pages[k - 1]
        label = f"{lo}{_DASH}{hi}"
        if k == n:
            links.append(f"<b>{_e(label)}</b>")
        else:
            links.append(f"<a href='{_e(_page_name(k))}'>{_e(label)}</a>")
    return f"<nav>orbits: {' '.join(links)}</nav>"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, delete=False, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with tmp:
            tmp.write(text)
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise


def _as_dicts(summaries: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for s in summaries:
        out.append(dict(s.to_dict() if hasattr(s, "to_dict") else s))
    return out


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
    width = int(thumb_width)
    progress_path = Path(progress_json) if progress_json else root / "progress.json"
    extrema_path = Path(extrema_json) if extrema_json else root / "extrema.json"
    progress = _read_json(progress_path, "progress JSON") or {}
    extrema = _read_json(extrema_path, "extrema JSON")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if summaries is not None:
        runs = _as_dicts(summaries)
        saved = {
            "finished_utc": now,
            "summaries": runs,
            "performance_report": (
                os.path.abspath(performance_report) if performance_report else None
            ),
        }
        atomic_write_json(root / SUMMARY_NAME, saved)
    else:
        saved = _read_json(root / SUMMARY_NAME, "run summary") or {}
        runs = list(saved.get("summaries") or [])
        if performance_report is None:
            performance_report = saved.get("performance_report")

    figures = find_figures(root)
    errors = _errors_by_orbit(progress, extrema)
    completed = _completed(progress)
    orbits = sorted(set(figures) | set(errors) | {o for s in completed.values() for o in s})
    scales = sorted(
        set(completed) | {f.scales for fs in figures.values() for f in fs},
        key=lambda s: _SCALE_ORDER.index(s) if s in _SCALE_ORDER else 99,
    )
    n_figures = sum(len(fs) for fs in figures.values())
    reasons: Counter[str] = Counter(e.reason for es in errors.values() for e in es)
    title = title or f"FAST ESA spectrograms: {root.resolve().name}"

    head = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class='muted'>report written {_e(now)}"
        + (
            f"; progress.json written {_e(progress['updated_utc'])}"
            if progress.get("updated_utc")
            else ""
        )
        + f"; folder {_e(root.resolve())}</p>",
    ]
    header = ["<h2 id='summary'>Summary</h2>", "<table class='counts'>"]
    header.append(f"<tr><th>orbits</th><td class='n'>{len(orbits)}</td></tr>")
    header.append(f"<tr><th>figures</th><td class='n'>{n_figures}</td></tr>")
    header.append(
        f"<tr><th>orbits with errors</th><td class='n'>{sum(1 for o in orbits if o in errors)}"
        "</td></tr>"
    )
    header.append(
        "<tr><th>errors (orbit, instrument)</th><td>"
        + _e(", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none")
        + "</td></tr>"
    )
    header.append("<tr><th>scales</th><td>")
    parts = []
    for s in scales:
        done = len(completed.get(s, ()))
        n_fig = sum(1 for fs in figures.values() for f in fs if f.scales == s)
        mark = progress.get(f"{s}_last_orbit")
        parts.append(
            f"{_scale_label(s)}: {done} orbits completed, {n_fig} figures, watermark {_num(mark)}"
        )
    header.append("<br>".join(_e(p) for p in parts) or "none")
    header.append("</td></tr></table>")
    if runs:
        when = saved.get("finished_utc")
        header.append(
            "<p>Last run"
            + (f" (finished {_e(when)})" if when else "")
            + ":</p>"
            + "".join(_summary_rows(runs))
        )
    links = []
    for label, target in (
        ("progress.json", progress_path),
        ("extrema.json", extrema_path),
        ("logs", root / "logs"),
        ("Dask performance report", performance_report),
    ):
        url = _rel_link(target, root)
        if url:
            links.append(f"<a href='{_e(url)}'>{_e(label)}</a>")
    if links:
        header.append(f"<p>{' · '.join(links)}</p>")

    chunks = [orbits[i : i + int(page_size)] for i in range(0, len(orbits), int(page_size))]
    chunks = chunks or [[]]
    ranges = [(c[0], c[-1]) if c else (0, 0) for c in chunks]
    for n, chunk in enumerate(chunks, start=1):
        body = list(head)
        body += header
        if n == 1:
            body += _extrema_section(extrema)
        body.append(f"<h2 id='orbits'>Orbits ({len(orbits)})</h2>")
        body.append(_nav(n, len(chunks), ranges))
        if chunk:
            body += [
                _orbit_block(o, figures.get(o, []), errors.get(o, []), width, k >= _EAGER_ORBITS)
                for k, o in enumerate(chunk)
            ]
        else:
            body.append("<p class='muted'>no orbit yet.</p>")
        body.append(_nav(n, len(chunks), ranges))
        body.append("</body></html>\n")
        _write_text_atomic(root / _page_name(n), "\n".join(b for b in body if b))
    # pages of an earlier, longer report
    for stale in root.glob("index-*.html"):
        m = re.fullmatch(r"index-(\d+)\.html", stale.name)
        if m and int(m[1]) > len(chunks):
            with contextlib.suppress(OSError):
                stale.unlink()
    logger.info(
        "report %s: %d orbits, %d figures, %d page(s)",
        root / REPORT_NAME,
        len(orbits),
        n_figures,
        len(chunks),
    )
    return root / REPORT_NAME
