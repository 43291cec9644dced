"""The HTML run report: structure, links, errors, extrema, escaping, and a real browser."""

from __future__ import annotations

import html
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dask
import matplotlib.image as mpimg
import numpy as np
import pytest
from distributed import Client, LocalCluster

from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory
from fastspectro_dask.report import find_figures, write_run_report
from fastspectro_dask.synth import write_synthetic_dataset

# --------------------------------------------------------------------------------------
# A real output folder: 2 good orbits plus the broken-file corpus, instrument grids only
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_output(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_run")
    write_synthetic_dataset(root / "data", orbits=2, records=16, seed=5, bad_files=True)
    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = LocalCluster(
            processes=True, n_workers=1, threads_per_worker=1, dashboard_address=":0"
        )
        client = Client(cluster)
    try:
        summary = FAST_plot_spectrograms_directory(
            root / "data",
            root / "out",
            products=("instruments",),
            client=client,
            progress_bar=False,
            install_signal_handlers=False,
        )
    finally:
        client.close()
        cluster.close()
    assert summary.figures_written > 0 and summary.errors  # the corpus gives errors
    write_run_report(root / "out", summaries=[summary])
    return root / "out"


class _Page(HTMLParser):
    """Collects links, images, tables and the text of each orbit block."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.orbit_text: dict[int, str] = {}
        self.orbit_imgs: dict[int, list[str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.title = ""
        self._orbit: int | None = None
        self._depth = 0
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a)
            if self._orbit is not None:
                self.orbit_imgs[self._orbit].append(a["src"])
        if tag == "div":
            if self._orbit is not None:
                self._depth += 1
            elif (a.get("id") or "").startswith("orbit-"):
                self._orbit = int(a["id"].removeprefix("orbit-"))
                self._depth = 1
                self.orbit_text[self._orbit] = ""
                self.orbit_imgs[self._orbit] = []
        if tag == "table":
            self._table = a.get("class", "")
            self.tables[self._table] = []
        if tag == "tr" and self._table is not None:
            self._row = []
        if tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag == "div" and self._orbit is not None:
            self._depth -= 1
            if self._depth == 0:
                self._orbit = None
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._orbit is not None:
            self.orbit_text[self._orbit] += data
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _is_relative(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("/")


# --------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------


def test_every_figure_appears_with_relative_links(run_output):
    page = parse(run_output / "index.html")
    pngs = sorted(p.relative_to(run_output).as_posix() for p in run_output.rglob("*.png"))
    assert pngs, "the run wrote no figure"
    srcs = sorted(i["src"] for i in page.imgs)
    assert srcs == pngs  # every figure, once, and nothing else
    assert all(_is_relative(u) for u in page.hrefs + srcs)
    for k, img in enumerate(page.imgs):  # each thumbnail links to its full image
        assert img["src"] in page.hrefs and int(img["width"]) > 0
        # the first screenful (one figure per orbit here) loads at once, the rest lazily
        assert img.get("loading") == ("lazy" if k >= 10 else None)
    for url in page.hrefs:  # every link resolves inside the folder
        assert (run_output / unquote(url)).exists(), url
    # figures sit in their orbit's block; orbits are sorted
    for orbit, imgs in page.orbit_imgs.items():
        assert all(re.search(rf"/{orbit}/{orbit}_instruments_", s) for s in imgs)
    assert list(page.orbit_imgs) == sorted(page.orbit_imgs)
    assert set(find_figures(run_output)) <= set(page.orbit_imgs)


def test_errors_per_orbit_instrument_and_reason(run_output):
    page = parse(run_output / "index.html")
    progress = json.loads((run_output / "progress.json").read_text())
    keys = [
        k
        for k in progress
        if re.fullmatch(r"[a-z]+_linear_log_error-[a-z0-9-]+", k) and progress[k]
    ]
    assert keys, "the broken-file corpus recorded no error"
    n = 0
    for key in keys:
        inst, reason = re.fullmatch(r"([a-z]+)_linear_log_error-(.+)", key).groups()
        for orbit in progress[key]:
            text = page.orbit_text[int(orbit)]
            assert f"{inst} {reason}" in text, (orbit, text)
            n += 1
    # the file and its cause (from extrema.json) are shown for invalid files
    files = progress.get("ees_linear_log_error-invalid-cdf_files", {})
    for orbit, info in files.items():
        assert Path(info["path"]).name in page.orbit_text[int(orbit)]
    assert any("empty file" in t for t in page.orbit_text.values())
    good = set(progress["linear_log_completed"])
    assert good and all(" invalid-cdf" not in page.orbit_text[o] for o in good)
    counts = dict(page.tables["counts"])
    assert counts["orbits with errors"] == str(len({o for k in keys for o in progress[k]}))
    assert f"invalid-cdf {n}" in counts["errors (orbit, instrument)"]


def test_extrema_table_and_provenance(run_output):
    page = parse(run_output / "index.html")
    extrema = json.loads((run_output / "extrema.json").read_text())

    def fmt(v):
        return "\u2013" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))

    rows = {(r[0], r[1]): r[2:] for r in page.tables["extrema"][1:]}
    for inst, cats in extrema["results"].items():
        for cat, r in cats.items():
            assert rows[(inst, cat)] == [
                fmt(r[k]) for k in ("y_min", "y_max", "z_min", "z_max", "n_samples")
            ]
    head, *inst_rows = page.tables["extrema-instruments"]
    col = {name: i for i, name in enumerate(head)}
    for row in inst_rows:
        p = extrema["provenance"][row[0]]
        assert row[col["z_max percentile"]] == fmt(p["percentile"])
        assert row[col["samples"]] == fmt(p["sample_count"])
        assert row[col["orbits covered"]] == fmt(p["orbits_covered"])
        assert row[col["z_max"]] == fmt(extrema["results"][row[0]]["all"]["z_max"])


def test_header_counts_and_last_run(run_output):
    page = parse(run_output / "index.html")
    counts = dict(page.tables["counts"])
    assert counts["figures"] == str(len(list(run_output.rglob("*.png"))))
    assert counts["orbits"] == str(len(page.orbit_text))
    assert "y linear, z log" in counts["scales"]
    head, row = page.tables["runs"]
    run = dict(zip(head, row, strict=True))
    assert run["scales"] == "y-linear z-log" and run["status"] == "finished"
    assert float(run["figures/s"]) > 0 and float(run["wall s"]) > 0
    # the summaries are kept for a later rewrite (fastspectro report)
    saved = json.loads((run_output / "run-summary.json").read_text())
    assert saved["summaries"][0]["figures_written"] == int(run["figures written"])


def test_folder_can_be_copied(run_output, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(run_output, copy, ignore=shutil.ignore_patterns("reduced.zarr"))
    page = parse(copy / "index.html")
    assert page.imgs
    for url in page.hrefs + [i["src"] for i in page.imgs]:
        assert (copy / unquote(url)).exists(), url


# --------------------------------------------------------------------------------------
# Hand-made folders: escaping, pages, missing state
# --------------------------------------------------------------------------------------


def _fake_figure(root: Path, orbit: int, product: str = "instruments") -> Path:
    path = root / "2001" / "03" / str(orbit) / f"{orbit}_{product}_y-log_z-log.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(path, np.linspace(0, 1, 12 * 20).reshape(12, 20))
    return path


def test_text_is_escaped(tmp_path):
    out = tmp_path / 'run <b>&"x"'
    out.mkdir()
    _fake_figure(out, 20001)
    evil = "<img src=x onerror=alert(1)>"
    progress = {
        f"{evil}_log_log_error-generic": [20001],
        "log_log_completed": [],
        "updated_utc": "<script>alert(2)</script>",
    }
    (out / "progress.json").write_text(json.dumps(progress))
    (out / "extrema.json").write_text(
        json.dumps(
            {
                "complete": True,
                "params": {"variable": "<i>data</i>"},
                "results": {"e<s>": {"a&b": {"y_min": 1.0, "y_max": 2.0, "n_samples": 3}}},
            }
        )
    )
    text = write_run_report(out).read_text()
    assert evil not in text and "<script>" not in text and "<i>data" not in text
    assert html.escape(evil) in text and "&lt;script&gt;" in text
    assert "run &lt;b&gt;&amp;&quot;x&quot;" in text and "e&lt;s&gt;" in text
    page = parse(out / "index.html")
    assert [i["src"] for i in page.imgs] == ["2001/03/20001/20001_instruments_y-log_z-log.png"]
    assert f"{evil} generic" in page.orbit_text[20001]  # shown as text


def test_hostile_file_name_and_error_message_are_escaped(tmp_path):
    """A figure whose file name and an error message that carry markup show as text:
    the templates autoescape every value (no tag, no attribute breakout)."""
    hostile = "<script>alert(1)<!--'\"&"
    out = tmp_path / "out"
    fig = _fake_figure(out, 20002, product=hostile)
    bad = "/archive/<script>alert(2)<'.cdf"
    progress = {
        "ees_log_log_error-invalid-cdf": [20002],
        "ees_log_log_error-invalid-cdf_files": {"20002": {"path": bad}},
        "log_log_completed": [],
    }
    (out / "progress.json").write_text(json.dumps(progress))
    message = f"InvalidCDFError: {bad}: <script>alert(3)</script> in the header"
    (out / "extrema.json").write_text(
        json.dumps(
            {
                "complete": True,
                "input_root": "/archive",
                "errors": {"<script>alert(2)<'.cdf": message},
                "params": {"variable": "data"},
                "results": {"ees": {"all": {"y_min": 1.0, "y_max": 2.0, "n_samples": 3}}},
                "provenance": {"ees": {"method": "<script>alert(4)</script>"}},
            }
        )
    )
    text = write_run_report(out).read_text()
    assert "<script" not in text.lower() and "<!--" not in text
    assert text.count("&lt;script&gt;alert(") >= 4  # caption, alt, error, method
    page = parse(out / "index.html")
    [img] = page.imgs
    assert (out / unquote(img["src"])) == fig  # the link still finds the file
    assert img["alt"] == f"orbit 20002 {hostile} \u00b7 y log, z log"  # one attribute, intact
    shown = page.orbit_text[20002]
    assert "ees invalid-cdf" in shown
    assert "<script>alert(2)<'.cdf: <script>alert(3)</script> in the header" in shown
    assert hostile in shown  # the caption, as text


def test_pages_and_stale_pages(tmp_path):
    for orbit in range(30001, 30006):
        _fake_figure(tmp_path, orbit)
        _fake_figure(tmp_path, orbit, "pa-ees")
    (tmp_path / "2001" / "03" / "30001" / ".30001_x.png.tmp").write_text("partial")
    write_run_report(tmp_path, page_size=2)
    pages = sorted(p.name for p in tmp_path.glob("index*.html"))
    assert pages == ["index-2.html", "index-3.html", "index.html"]
    seen = []
    for name in pages:
        page = parse(tmp_path / name)
        seen += list(page.orbit_text)
        assert {"index.html", "index-2.html", "index-3.html"} - {name} <= set(page.hrefs)
        for imgs in page.orbit_imgs.values():  # instrument grid first
            assert [Path(s).name.split("_")[1] for s in imgs] == ["instruments", "pa-ees"]
    assert sorted(seen) == list(range(30001, 30006))
    write_run_report(tmp_path, page_size=10)  # fewer pages now: the old ones go
    assert sorted(p.name for p in tmp_path.glob("index*.html")) == ["index.html"]
    assert "extrema.json" in (tmp_path / "index.html").read_text()  # "no extrema.json" note


def test_bad_arguments(tmp_path):
    with pytest.raises(NotADirectoryError):
        write_run_report(tmp_path / "missing")
    with pytest.raises(ValueError):
        write_run_report(tmp_path, thumb_width=0)
    (tmp_path / "progress.json").write_text("{not json")
    assert write_run_report(tmp_path).exists()  # unreadable state: left out, left alone
    assert (tmp_path / "progress.json").read_text() == "{not json"


# --------------------------------------------------------------------------------------
# A real headless browser
# --------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

#: Test-only page, same origin as the report: loads it in an iframe, forces every lazy
#: image to load, and reports in its title how many images decoded (naturalWidth > 0).
_CHECK_PAGE = b"""<!DOCTYPE html><html><head><title>pending</title></head><body>
<iframe id="f" src="index.html" style="width:1200px;height:900px"></iframe>
<script>
const f = document.getElementById("f");
f.addEventListener("load", () => {
  const imgs = Array.from(f.contentDocument.images);
  imgs.forEach((i) => { i.loading = "eager"; });
  const t0 = Date.now();
  (function poll() {
    if (imgs.some((i) => !i.complete) && Date.now() - t0 < 20000) {
      setTimeout(poll, 50);
      return;
    }
    const ok = imgs.filter((i) => i.naturalWidth > 0).map((i) => i.getAttribute("src"));
    document.title = "loaded " + ok.length + " of " + imgs.length;
    const pre = document.createElement("pre");
    pre.id = "result";
    pre.textContent = JSON.stringify(ok);
    document.body.appendChild(pre);
  })();
});
</script></body></html>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *_CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(run_output, tmp_path):
    requests: list[tuple[str, int]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(run_output), **kw)

        def do_GET(self):
            if self.path == "/__check.html":
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(_CHECK_PAGE)))
                self.end_headers()
                self.wfile.write(_CHECK_PAGE)
                return
            super().do_GET()

        def log_request(self, code="-", size="-"):
            requests.append((unquote(urlsplit(self.path).path), int(code)))

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/__check.html"
        res = _chromium(tmp_path, "--virtual-time-budget=30000", "--dump-dom", url)
    finally:
        server.shutdown()
        server.server_close()
    pngs = sorted(p.relative_to(run_output).as_posix() for p in run_output.rglob("*.png"))
    title = re.search(r"<title>(.*?)</title>", res.stdout)
    assert title and title.group(1) == f"loaded {len(pngs)} of {len(pngs)}", (
        res.stdout[-2000:],
        res.stderr[-2000:],
    )
    loaded = json.loads(html.unescape(re.search(r'<pre id="result">(.*?)</pre>', res.stdout)[1]))
    assert sorted(loaded) == pngs
    served = {path for path, code in requests if code == 200}
    assert {"/index.html", *(f"/{p}" for p in pngs)} <= served

    # a screenshot straight from the file system (relative links, no server)
    shot = tmp_path / "shot.png"
    res = _chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        "--run-all-compositor-stages-before-draw",
        (run_output / "index.html").as_uri(),
    )
    assert shot.exists(), res.stderr[-2000:]
    keep = os.environ.get("FASTSPECTRO_KEEP_SCREENSHOT")  # to look at it yourself
    if keep:
        shutil.copy(shot, keep)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200)
    assert img.std() > 0.05  # not a blank page
    # the first orbit's spectrogram thumbnail was drawn: the colour scale's yellow end
    # (cividis, linear y / log z) shows up; text and tables are grey or blue
    yellow = (img[..., 0] > 0.8) & (img[..., 1] > 0.7) & (img[..., 2] < 0.45)
    assert yellow.sum() > 20, "no thumbnail pixels in the screenshot"
