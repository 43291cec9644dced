"""kill -9 at random moments over a ``fastspectro plot`` run, then resume: what survives?

Each trial starts ``fastspectro plot`` (the public command, its own process group like a
shell job: the client, the local cluster's workers and their render processes), sends
SIGKILL to the whole group at a moment drawn uniformly over the length of an
uninterrupted run, checks what the kill left, then resumes with the same command and
compares the figures with those of the uninterrupted run.

The table, one row per trial:

* ``kill s``: when the group was killed, seconds after the start (``-`` when the run had
  already finished);
* ``lost``: orbits whose figures were all on disk but that ``progress.json`` did not
  record as done, so the resume handles them again; ``bound`` is what the contract allows,
  ``flush_batch_size - 1`` handled orbits plus the renders in flight (the window, ``2 *
  workers + 2`` tasks for a local cluster of single-threaded workers);
* ``json``: ``progress.json`` after the kill parses (``yes``), was not written yet
  (``absent``) or is corrupt (``NO``); ``done<=disk``: every orbit it records as done has
  its figures on disk;
* ``resume``: exit code of the resumed run; ``identical``: the resumed folder holds
  exactly the uninterrupted run's PNG files (same names, same bytes);
* ``tmp kill``/``tmp left``: temporary files (``*.tmp``) after the kill and after the
  resume (the resume removes the stale ones of our own naming).

Usage::

    python benchmarks/fuzz_kill.py [--trials 20] [--seed 0] [--orbits 20] [--workers 2]
                                   [--flush-batch-size 3] [--workdir DIR]

Only the public command line is used (``fastspectro synth``, ``fastspectro plot``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SCALES = ("linear", "log")  # the plot command's default y and z scales


@dataclass
class Trial:
    """The outcome of one kill -9 and resume."""

    trial: int
    kill_seconds: float | None  # None: the run finished before the kill time
    run_seconds: float | None  # wall of the run when it finished before the kill
    lost: int
    bound: int
    json_state: str  # "yes", "absent", "NO"
    done_on_disk: bool
    resume_code: int
    identical: bool
    tmp_after_kill: int
    tmp_left: int

    @property
    def ok(self) -> bool:
        return (
            self.json_state != "NO"
            and self.done_on_disk
            and self.lost <= self.bound
            and self.resume_code == 0
            and self.identical
            and self.tmp_left == 0
        )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastspectro_dask.cli", *args]


def _plot_args(data: Path, out: Path, workers: int, flush: int) -> list[str]:
    return _cli(
        "plot",
        str(data),
        str(out),
        "--max-workers",
        str(workers),
        "--flush-batch-size",
        str(flush),
        "--products",
        "instruments",
        "--no-report",
    )


def _pngs(out: Path) -> dict[str, str]:
    """Relative path -> sha256 of every figure."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.png"))
    }


def _temporaries(out: Path) -> int:
    return sum(1 for p in out.rglob("*.tmp") if p.is_file()) if out.exists() else 0


def _run(cmd: list[str], timeout: float = 900) -> tuple[int, float]:
    t0 = time.monotonic()
    res = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout
    )
    if res.returncode not in (0, 1):
        sys.stderr.write(res.stderr[-3000:])
    return res.returncode, time.monotonic() - t0


def prepare(workdir: Path, orbits: int, workers: int, flush: int, seed: int) -> tuple:
    """Synthetic data and the uninterrupted reference run: (data, reference PNGs, wall)."""
    data, ref = workdir / "data", workdir / "reference"
    code, _ = _run(_cli("synth", str(data), "--orbits", str(orbits), "--records", "16",
                        "--seed", str(seed)))  # fmt: skip
    if code != 0:
        raise RuntimeError("fastspectro synth failed")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        _plot_args(data, ref, workers, flush), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = _first_figure(proc, ref)
    _, err = proc.communicate(timeout=900)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise RuntimeError(f"the reference run failed (exit code {proc.returncode})")
    return data, _pngs(ref), wall, (first - t0) if first is not None else 0.0


def _first_figure(proc: subprocess.Popen, out: Path) -> float | None:
    """Wait (polling) until the run's first figure is on disk; its monotonic time, or None
    if the run ended first."""
    while proc.poll() is None:
        if out.exists() and next(out.rglob("*.png"), None) is not None:
            return time.monotonic()
        time.sleep(0.02)
    return None


def trial(
    k: int,
    data: Path,
    out: Path,
    reference: dict[str, str],
    kill_at: float,
    workers: int,
    flush: int,
    render_phase: bool = False,
) -> Trial:
    """One kill -9 of the whole run at ``kill_at`` seconds after its start (after its first
    figure with ``render_phase``), then a resume."""
    proc = subprocess.Popen(
        _plot_args(data, out, workers, flush),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a shell job
    )
    killed: float | None = None
    finished: float | None = None
    t0 = time.monotonic()
    if render_phase:
        first = _first_figure(proc, out)
        t0 = first if first is not None else t0
    try:
        proc.wait(timeout=max(0.0, kill_at - (time.monotonic() - t0)))
        finished = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = kill_at
    proc.wait()
    # what the kill left
    per_orbit: dict[int, set[str]] = defaultdict(set)
    for rel in reference:
        per_orbit[int(Path(rel).parent.name)].add(rel)
    on_disk = set(_pngs(out)) if out.exists() else set()
    drawn = {o for o, rels in per_orbit.items() if rels <= on_disk}
    done: set[int] = set()
    state = "absent"
    progress = out / "progress.json"
    if progress.exists():
        try:
            doc = json.loads(progress.read_text())
            done = set(doc.get(f"{SCALES[0]}_{SCALES[1]}_completed", []))
            state = "yes"
        except ValueError:
            state = "NO"
    tmp_after_kill = _temporaries(out)
    # the resume
    code, _ = _run(_plot_args(data, out, workers, flush))
    return Trial(
        trial=k,
        kill_seconds=killed,
        run_seconds=finished,
        lost=len(drawn - done),
        bound=(flush - 1) + (2 * workers + 2),
        json_state=state,
        done_on_disk=done <= drawn,
        resume_code=code,
        identical=_pngs(out) == reference,
        tmp_after_kill=tmp_after_kill,
        tmp_left=_temporaries(out),
    )


def run_trials(
    trials: int = 20,
    *,
    seed: int = 0,
    orbits: int = 20,
    workers: int = 2,
    flush: int = 3,
    workdir: Path | None = None,
    progress: bool = True,
    render_phase: bool = False,
) -> tuple[list[Trial], float]:
    """Run the reference and ``trials`` kill/resume trials; returns them and the span the
    kill moments were drawn from at the end: the reference run's wall time, lowered to the
    wall time of any trial that finished before its kill (runs on a shared machine speed
    up and slow down; the moments stay uniform over the length of a run as it is)."""
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="fuzz_kill_")) if own else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        data, reference, wall, first = prepare(root, orbits, workers, flush, seed)
        if render_phase:  # kill moments over the render phase: from the first figure on
            wall -= first
        if progress:
            print(
                f"reference: {len(reference)} figures of {orbits} orbits in {wall:.1f} s "
                f"({workers} workers, flush_batch_size {flush})",
                flush=True,
            )
        rng = random.Random(seed)
        results = []
        span = wall
        for k in range(1, trials + 1):
            out = root / f"trial-{k:02d}"
            kill_at = rng.uniform(0.0, span)
            t = trial(k, data, out, reference, kill_at, workers, flush, render_phase)
            results.append(t)
            if t.run_seconds is not None and not render_phase:  # the machine got faster:
                span = min(span, t.run_seconds)  # draw over the length of a run as it is now
            if progress:
                print(_row(t), flush=True)
            shutil.rmtree(out, ignore_errors=True)
        return results, span
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


_HEADER = ("trial", "kill s", "lost", "bound", "json", "done<=disk", "resume", "identical",
           "tmp kill", "tmp left", "ok")  # fmt: skip
_WIDTHS = (5, 7, 4, 5, 6, 10, 6, 9, 8, 8, 3)


def _row(t: Trial) -> str:
    cells = (
        str(t.trial),
        "-" if t.kill_seconds is None else f"{t.kill_seconds:.2f}",
        str(t.lost),
        str(t.bound),
        t.json_state,
        "yes" if t.done_on_disk else "NO",
        str(t.resume_code),
        "yes" if t.identical else "NO",
        str(t.tmp_after_kill),
        str(t.tmp_left),
        "yes" if t.ok else "NO",
    )
    return "  ".join(c.rjust(w) for c, w in zip(cells, _WIDTHS, strict=True))


def table(results: list[Trial]) -> str:
    """The printed table (header, one row per trial, a summary line)."""
    head = "  ".join(h.rjust(w) for h, w in zip(_HEADER, _WIDTHS, strict=True))
    killed = [t for t in results if t.kill_seconds is not None]
    bound = results[0].bound if results else "-"
    summary = (
        f"{sum(t.ok for t in results)}/{len(results)} trials ok; {len(killed)} killed mid-run; "
        f"max lost {max((t.lost for t in results), default=0)} (bound {bound}); "
        f"temporaries after kill in {sum(t.tmp_after_kill > 0 for t in results)} trial(s), "
        f"left after resume in {sum(t.tmp_left > 0 for t in results)}"
    )
    return "\n".join([head, *(_row(t) for t in results), summary])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--orbits", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--flush-batch-size", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="keep the data here")
    p.add_argument(
        "--render-phase",
        action="store_true",
        help="draw the kill moments over the render phase (from the first figure to the "
        "end), where the progress JSON is being written",
    )
    a = p.parse_args(argv)
    results, wall = run_trials(
        a.trials,
        seed=a.seed,
        orbits=a.orbits,
        workers=a.workers,
        flush=a.flush_batch_size,
        workdir=a.workdir,
        progress=False,
        render_phase=a.render_phase,
    )
    since = "after the first figure" if a.render_phase else "after the start"
    print(
        f"kill -9 of the process group at uniform moments over 0..{wall:.1f} s {since} "
        f"('-': the run finished first), {a.orbits} orbits, {a.workers} workers, "
        f"flush_batch_size {a.flush_batch_size}"
    )
    print(table(results))
    return 0 if all(t.ok for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
