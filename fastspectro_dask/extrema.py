"""Mission-wide colour and energy limits, exact, on the cluster, resumable.

Every orbit's figures of one instrument share one colour scale and one energy range,
computed from the whole mission (:func:`compute_global_extrema`). Per instrument and per
pitch-angle category (the reduced ``(time, energy)`` values of :mod:`fastspectro_dask.reduce`):

* ``z_max``: the ``max_percentile``-th percentile (default 95) of all positive finite reduced
  values, **exactly** equal to ``numpy.percentile`` of the pooled values (linear method),
  computed in bounded memory by :mod:`fastspectro_dask.quantiles` (approximate-then-exact
  histogram radix select on float32 bit patterns);
* ``z_min``: the smallest positive value, or the exact 1st percentile with ``compute_mins``;
* ``y_max``: the smallest energy at which the cumulative count of positive finite samples,
  energies ascending and each sample at its own record's energy, reaches 99 % of the total
  (:data:`Y_MAX_FRACTION`, fixed). The per-energy counts are exact integer sums kept in pass 1;
* ``y_min``: the lowest energy holding a positive sample.

All values are linear physical units (eV; Counts or the CDF ``UNITS`` of ``eflux``) whatever
the scale combination: the scales only name the keys. Keys are
``{instrument}_{y_scale}_{z_scale}_{y|z}_{min|max}`` for the ``all`` category and
``{instrument}_pa-{category}_{y_scale}_{z_scale}_{y|z}_{min|max}`` for every category.

Resume: pass 1 reduces every file once (the reduced spectrogram goes to the zarr cache with
the file's pass-1 summary) and merges its integer histograms into the state. A re-run counts
only files not yet counted, a changed file is recounted (its old contribution subtracted), a
removed file is subtracted, and the result equals that of an uninterrupted run.

Persistent state: ``extrema.json`` and its ledger journal ``extrema.ledger.jsonl``,
committed together every ``flush_batch_size`` orbits and at the end, corrupt files moved
aside, older schemas recounted (:mod:`fastspectro_dask.ledger`). A run holds
``<extrema JSON>.lock`` (:class:`~fastspectro_dask.atomic.StateLock`): a second run on the
same state is refused.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np

from fastspectro_dask.atomic import StateLock
from fastspectro_dask.cache import FileKey, ReducedCache, reduce_file
from fastspectro_dask.config import RunConfig
from fastspectro_dask.discovery import INSTRUMENTS, OrbitIndex, discover
from fastspectro_dask.errors import EmptyDataError, error_reason
from fastspectro_dask.ledger import SCHEMA as _SCHEMA
from fastspectro_dask.ledger import Ledger as _Store
from fastspectro_dask.quantiles import (
    Histogram,
    coarse_histogram,
    resolve_exact,
    targets_for,
)
from fastspectro_dask.reduce import REDUCTION_VERSION, PadSpec
from fastspectro_dask.schedule import progress_bar

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Y_MAX_FRACTION", "compute_global_extrema", "extrema_for_rows", "extrema_key"]

logger = logging.getLogger(__name__)

#: Key of the pitch-angle spectrogram (product ``pad``) beside the categories.
PAD = "pad"
#: Fraction of positive samples below ``y_max`` (fixed by the contract).
Y_MAX_FRACTION = 0.99
_METHOD = (
    "exact: pass 1 tree-merges integer histograms of float32 bit patterns >> 16, pass 2 "
    "resolves the target bins (radix select); numpy 'linear' interpolation"
)
_BOUNDS = ("y_min", "y_max", "z_min", "z_max")


def extrema_key(
    instrument: str, y_scale: str, z_scale: str, bound: str, category: str | None = None
) -> str:
    """Key of one limit in the extrema state.

    ``extrema_key("ees", "linear", "log", "z_max")`` is ``ees_linear_log_z_max`` (the
    ``all`` category, used by the instrument grid); with ``category="upgoing"`` it is
    ``ees_pa-upgoing_linear_log_z_max``; the pitch-angle spectrogram's (``category="pad"``)
    is ``ees_pad_linear_log_z_max`` (its ``y_*`` are null: its y axis is pitch angle).
    ``bound`` is ``y_min``, ``y_max``, ``z_min`` or ``z_max``.
    """
    if bound not in _BOUNDS:
        raise ValueError(f"bound must be one of {_BOUNDS}")
    if category == PAD:  # the pitch-angle spectrogram (product pad)
        prefix = f"{instrument}_pad"
    else:
        prefix = instrument if category is None else f"{instrument}_pa-{category}"
    return f"{prefix}_{y_scale}_{z_scale}_{bound}"


def extrema_for_rows(
    state: Mapping[str, Any],
    y_scale: str,
    z_scale: str,
    *,
    instruments: Iterable[str] = INSTRUMENTS,
    instrument: str | None = None,
    category: str = "all",
) -> dict[str, dict[str, float]]:
    """Per-row limits (``{row: {"y_min":..., ...}}``) as the renderers take them.

    Rows are instruments (``category``: ``all`` for the instrument grid, ``pad`` for the
    pitch-angle spectrogram), or, with ``instrument=``, that instrument's pitch-angle
    categories.
    """
    results = state.get("results", {})
    if instrument is not None:
        cats = results.get(instrument, {})
        return {
            c: {b: v for b, v in r.items() if b in _BOUNDS and v is not None}
            for c, r in cats.items()
            if c != PAD
        }
    out = {}
    for inst in instruments:
        r = results.get(inst, {}).get(category)
        if r:
            out[inst] = {b: v for b, v in r.items() if b in _BOUNDS and v is not None}
    return out


# --------------------------------------------------------------------------------------
# Pass 1, on a worker: read, reduce, cache, summarise one file
# --------------------------------------------------------------------------------------


def _summarise(
    values: np.ndarray,
    energy: np.ndarray,
    cats: Sequence[str],
    pad_values: np.ndarray | None = None,
) -> dict:
    """Pass-1 summary of one reduced file: per category histogram, energy counts, minimum.

    With ``pad_values`` (time, pitch_bin), also the pitch-angle spectrogram's (key
    :data:`PAD`; no energy counts: its y axis is pitch angle).
    """
    out = {}
    items = [(cat, values[k], energy) for k, cat in enumerate(cats)]
    if pad_values is not None:
        items.append((PAD, pad_values, None))
    for cat, v, en in items:
        pos = np.isfinite(v) & (v > 0)
        e = np.empty(0) if en is None else en[pos]
        e = e[np.isfinite(e) & (e > 0)]
        ue, ce = np.unique(e, return_counts=True)
        out[cat] = {
            "hist": coarse_histogram(v, dtype="float32").to_json(),
            "energy": [[float(x) for x in ue], [int(c) for c in ce]],
            "min_positive": float(v[pos].min()) if pos.any() else None,
            "n": int(pos.sum()),
        }
    return out


def _reduce_and_cache(
    path: str,
    key: FileKey,
    entry: str,
    variable: str,
    cats: Mapping[str, Any],
    cache: ReducedCache,
    retrace: bool = False,
    pad: PadSpec | None = None,
) -> tuple[Any, dict]:
    """Decode and reduce one file, store it with its pass-1 summary; return both."""
    red = reduce_file(path, variable, cats, retrace, pad)
    summary = _summarise(
        red["values"].values.astype(np.float32),
        red["energy"].values.astype(np.float32),
        list(cats),
        None if pad is None else red["pad_values"].values.astype(np.float32),
    )
    cache.write(entry, red, summary=summary, key=key)
    return red, summary


def _pass1_file(
    path: str,
    key: FileKey,
    instrument: str,
    orbit: int,
    variable: str,
    cats: Mapping[str, Any],
    cache: ReducedCache,
    retrace: bool = False,
    pad: PadSpec | None = None,
) -> dict:
    """Reduce one file, write it to the cache, return its small pass-1 summary."""
    entry = cache.entry_name(key, variable, cats, instrument, orbit, retrace, pad)
    summary = cache.summary(entry)
    if summary is None:
        _red, summary = _reduce_and_cache(path, key, entry, variable, cats, cache, retrace, pad)
    return {"entry": entry, "summary": summary}


def _category_values(
    cache: ReducedCache,
    entry: str,
    k: int | str,
    path: str,
    key: FileKey,
    variable: str,
    cats: Mapping[str, Any],
    coarse_keys: np.ndarray | None = None,
    retrace: bool = False,
    pad: PadSpec | None = None,
) -> np.ndarray:
    """Pass-2 loader: one category's reduced float32 values of one file (cache first).

    ``k`` is the category's index, or ``"pad"`` for the pitch-angle spectrogram.

    With ``coarse_keys`` (the pass-1 bins holding the wanted order statistics), a file
    whose cached pass-1 histogram has no value in them returns nothing without reading
    its values.
    """
    if coarse_keys is not None:
        summary = cache.summary(entry)
        if summary is not None:
            hist = Histogram.from_json(summary[k if k == PAD else list(cats)[k]]["hist"])
            if not hist.mass_in(coarse_keys):
                return np.empty(0, np.float32)
    try:
        return cache.read_values(entry, k).reshape(-1)
    except KeyError:  # cache deleted: decode again (refusing a changed file), store again
        if FileKey.of(path) != key:
            raise RuntimeError(f"{path} changed during the extrema computation") from None
        red, _summary = _reduce_and_cache(path, key, entry, variable, cats, cache, retrace, pad)
    got = red["pad_values"].values if k == PAD else red["values"].values[k]
    return got.astype(np.float32).reshape(-1)


# --------------------------------------------------------------------------------------
# Running tasks: distributed client with a bounded window, or local threads
# --------------------------------------------------------------------------------------


#: Calls (files) per Dask task while at least :data:`_SEVERAL_WHILE_PER_THREAD` more are
#: left per worker thread: a mission's client, scheduler and workers then handle one task
#: per ``_CALLS_PER_TASK`` files instead of one per file; the last ones, one task each, so
#: that they spread over the workers.
_CALLS_PER_TASK = 4
_SEVERAL_WHILE_PER_THREAD = 32


def _run(
    fn: Callable[..., Any],
    calls: Sequence[tuple[tuple, dict]],
    handle: Callable[[int, Any, BaseException | None], None],
    *,
    client: Client | None,
    window: int,
    max_workers: int | None,
    key_of: Callable[[tuple], str],
    extra: int = 2,
    on_exit: Callable[[], Any] | None = None,
) -> None:
    """``handle(index, result, error)`` for each call as it completes.

    On a client: the one scheduling loop (:class:`~fastspectro_dask.schedule.TaskLoop`),
    whose window follows the cluster's current threads (``2 * threads + extra``; workers
    that arrive late get work at once) with a watchdog (raises
    :class:`~fastspectro_dask.errors.NoWorkersError`), several calls per task while many
    are left (:func:`_run_on_cluster`). Without: local threads, at most ``window`` calls
    in flight. ``on_exit`` runs at the end, also after an exception.
    """
    if client is not None:
        if any(kw for _a, kw in calls):
            raise ValueError("keyword arguments are not passed to cluster tasks")
        _run_on_cluster(fn, [a for a, _kw in calls], handle, client, key_of, extra, on_exit)
        return
    pending = iter(range(len(calls)))
    try:
        with cf.ThreadPoolExecutor(max_workers=max_workers or os.cpu_count() or 1) as pool:
            futs: dict[cf.Future, int] = {}

            def local_submit(i: int) -> None:
                args, kwargs = calls[i]
                futs[pool.submit(fn, *args, **kwargs)] = i

            for i in _take(pending, window):
                local_submit(i)
            try:
                while futs:
                    done, _ = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        i = futs.pop(fut)
                        exc = fut.exception()
                        handle(i, (None if exc else fut.result()), exc)
                        nxt = next(pending, None)
                        if nxt is not None:
                            local_submit(nxt)
            finally:
                for fut in futs:
                    fut.cancel()
    finally:
        if on_exit is not None:
            on_exit()


def _run_on_cluster(
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    handle: Callable[[int, Any, BaseException | None], None],
    client: Client,
    key_of: Callable[[tuple], str],
    extra: int,
    on_exit: Callable[[], Any] | None,
) -> None:
    """:func:`_run` on a client: ``fn(*calls[i])`` through the scheduling loop,
    :data:`_CALLS_PER_TASK` calls per Dask task
    (:func:`~fastspectro_dask.schedule.call_each`) while at least
    :data:`_SEVERAL_WHILE_PER_THREAD` more per worker thread are left, then one each."""
    from fastspectro_dask.schedule import Task, TaskLoop, call_each, outcomes

    loop = TaskLoop(
        client, call_each, extra=extra, floor=max(4, extra), on_exit=on_exit, phase="extrema"
    )

    def tasks() -> Iterator[Task]:
        i = 0
        while i < len(calls):
            left = len(calls) - i - _CALLS_PER_TASK  # after a task of several
            many = left >= _SEVERAL_WHILE_PER_THREAD * max(loop.view.threads, 1)
            items = list(range(i, min(len(calls), i + (_CALLS_PER_TASK if many else 1))))
            args = tuple(calls[k] for k in items)
            key = key_of(args[0]) + (f"-{len(items)}-files" if len(items) > 1 else "")
            yield Task(key, (fn, args), items)
            i += len(items)

    def each(task: Task, result: Any, exc: BaseException | None) -> None:
        for i, got, error in outcomes(task.item, result, exc):
            handle(i, got, error)

    loop.run(tasks(), each)


def _take(it: Iterator[int], n: int) -> list[int]:
    out = []
    for _ in range(n):
        x = next(it, None)
        if x is None:
            break
        out.append(x)
    return out


def _y_limits(energy_counts: Mapping[float, int]) -> tuple[float | None, float | None]:
    """(y_min, y_max): lowest energy with a positive sample, and the 99 % energy."""
    if not energy_counts:
        return None, None
    es = np.array(sorted(energy_counts))
    cs = np.array([energy_counts[e] for e in es], dtype=np.int64)
    total = int(cs.sum())
    # smallest energy whose cumulative count reaches 99 % of the total, in exact integers
    reach = np.cumsum(cs) * 100 >= round(Y_MAX_FRACTION * 100) * total
    return float(es[0]), float(es[int(np.argmax(reach))])


def _fingerprint(entries: Mapping[str, Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(entries):
        e = entries[rel]
        h.update(f"{rel}\0{e['size']}\0{e['mtime_ns']}\n".encode())
    return h.hexdigest()


def _keys(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]], scales: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """The flat ``{instrument}[_pa-{category}]_{y}_{z}_{bound}`` keys of the results."""
    keys = {}
    for y, z in scales:
        for inst, cm in results.items():
            for cat, r in cm.items():
                for bound in _BOUNDS:
                    keys[extrema_key(inst, y, z, bound, cat)] = r[bound]
                    if cat == "all":
                        keys[extrema_key(inst, y, z, bound)] = r[bound]
    return keys


def _reuse(
    state: Mapping[str, Any],
    current: Mapping[str, Mapping[str, Any]],
    todo: Sequence[str],
    max_percentile: float,
    compute_mins: bool,
) -> bool:
    """Whether a stored state is complete and current for these inputs and options."""
    if not state.get("complete") or todo or "results" not in state:
        return False
    if state.get("input_fingerprint") != _fingerprint(current):
        return False
    prov = next(iter(state.get("provenance", {}).values()), {})
    rule = _z_min_rule(compute_mins)
    return prov.get("percentile") == float(max_percentile) and prov.get("z_min_rule") == rule


def _z_min_rule(compute_mins: bool) -> str:
    """The provenance's name of the ``z_min`` rule."""
    return "1st percentile" if compute_mins else "smallest positive value"


def _inventory(index: OrbitIndex, root: Path) -> dict[str, dict[str, Any]]:
    """The folder's files by path relative to ``root``: orbit, instrument, size, mtime, key."""
    current: dict[str, dict[str, Any]] = {}
    for orbit, files in index.items():
        for inst, path in files.items():
            key = FileKey.of(path)
            rel = os.path.relpath(key.path, root.absolute())
            current[rel] = {
                "orbit": orbit,
                "instrument": inst,
                "size": key.size,
                "mtime_ns": key.mtime_ns,
                "key": key,
            }
    return current


def compute_global_extrema(
    directory_path: str | os.PathLike[str],
    y_scale: str | None = None,
    z_scale: str | None = None,
    instrument_order: Sequence[str] | None = None,
    extrema_json_path: str | os.PathLike[str] | None = None,
    max_percentile: float | None = None,
    flush_batch_size: int | None = None,
    *,
    compute_mins: bool | None = None,
    variable: str | None = None,
    client: Client | None = None,
    config: RunConfig | None = None,
    categories: Mapping[str, Any] | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    max_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    index: OrbitIndex | None = None,
    retrace: bool | None = None,
    pad: PadSpec | None = None,
) -> dict[str, Any]:
    """Exact mission-wide limits per instrument and pitch-angle category.

    Settings left ``None`` (not given) come from ``config``, by default from the dask
    config ``fastspectro.*`` (:class:`fastspectro_dask.config.RunConfig`; the packaged
    defaults in brackets), validated before anything is touched.

    Parameters
    ----------
    directory_path : path-like
        Folder of FAST ESA L2 files (any layout; see :func:`fastspectro_dask.discover`).
    y_scale, z_scale : {"linear", "log"}
        Name the keys; the values are linear physical units for every combination
        [linear, log].
    instrument_order : sequence of str
        Instruments to compute [ees, eeb, ies, ieb].
    extrema_json_path : path-like, optional
        The state file; default ``extrema.json`` in the current working directory (as the
        original tool's ``FAST_calculated_extrema.json``), with its lock
        ``extrema.json.lock`` and ledger ``extrema.ledger.jsonl`` beside it. The input
        folder is never written: a default that would fall inside it (the current
        directory is in ``directory_path``) is a ``ValueError``. The pipeline puts the
        file in its output folder.
    max_percentile : float
        Percentile of positive finite values for ``z_max`` (the setting
        ``max_processing_percentile``) [95.0].
    flush_batch_size : int
        Write the state every this many orbits of pass 1 (and at the end) [10].
    compute_mins : bool
        ``z_min`` is the exact 1st percentile instead of the smallest positive value
        [False].
    variable : {"data", "eflux", "rate"}
        The plotted variable [data].
    client : distributed.Client, optional
        Run on this cluster; by default on local threads.
    config : RunConfig, optional
        The settings to start from instead of the dask config; arguments override them.
    categories : mapping, optional
        Pitch-angle categories (default :data:`fastspectro_dask.reduce.DEFAULT_CATEGORIES`).
    cache_path : path-like, optional
        The zarr store of reduced spectrograms; default ``reduced.zarr`` beside the JSON
        (so ``./reduced.zarr`` by default).
    max_workers : int, optional
        Local threads when no client is given.
    index : OrbitIndex, optional
        The folder's index if the caller already discovered it (the pipeline does), so the
        folder is not walked twice; it must come from ``discover(directory_path,
        instruments=instrument_order)``.
    progress : callable, optional
        Called as ``progress(done, total)`` after each file of pass 1.
    retrace : bool
        Count channel 0, the sweep's high-voltage retrace step. By default it is dropped,
        as the FAST user guide advises (see :func:`fastspectro_dask.reduce.reduce_dataset`):
        kept, it puts ``y_max`` near 60 keV, beyond the instruments' range [False].
    pad : PadSpec, optional
        Also the colour limits of the pitch-angle spectrogram (product ``pad``): results
        under ``"pad"`` and keys ``{instrument}_pad_{y}_{z}_{z|y}_{min|max}`` (z as for the
        categories; y null).

    Returns
    -------
    dict
        The state as written to the JSON: the ``{instrument}_{y}_{z}_{y|z}_{min|max}``
        keys (and ``{instrument}_pa-{category}_...``), ``results`` per instrument and
        category, ``provenance`` (percentile, sample counts, orbits covered, method, input
        fingerprint), the merged pass-1 histograms (``pass1``) and the ledger's commit
        record (``journal``); plus ``files``, the file ledger (relative path -> entry),
        which lives in the journal ``<stem>.ledger.jsonl`` beside the JSON, not in it.

    Raises
    ------
    EmptyDataError
        No instrument has a single positive finite value.
    ValueError
        A bad setting (named, with its allowed values); or no ``extrema_json_path``
        while the current directory is inside ``directory_path``.
    fastspectro_dask.atomic.StateLockedError
        Another run is using the same extrema JSON (lock ``<extrema JSON>.lock``).
    """
    cfg = RunConfig.resolve(
        config,
        _spelled={"max_processing_percentile": "max_percentile"},
        y_scale=y_scale,
        z_scale=z_scale,
        instrument_order=instrument_order,
        max_processing_percentile=max_percentile,
        flush_batch_size=flush_batch_size,
        compute_mins=compute_mins,
        variable=variable,
        categories=categories,
        max_workers=max_workers,
        retrace=retrace,
    )
    root = Path(directory_path)
    json_path = _state_json_path(root, extrema_json_path)
    cache = ReducedCache(cache_path or json_path.parent / "reduced.zarr")
    if index is None:
        index = discover(root, instruments=cfg.instrument_order)
    current = _inventory(index, root)
    store = _new_store(json_path, root, cfg, pad)
    # one writer at a time: the journal is append-only and the JSON records its length
    with StateLock(json_path):
        try:
            job = _new_job(
                store, root, current, cache, cfg, pad=pad, client=client, progress=progress
            )
            return _compute(job)
        finally:
            store.close()


def _state_json_path(root: Path, extrema_json_path: str | os.PathLike[str] | None) -> Path:
    """The extrema JSON's path (default: the current folder, never the input), folder made."""
    # default: the current folder (as the original FAST_calculated_extrema.json), never the input
    json_path = Path(extrema_json_path) if extrema_json_path else Path.cwd() / "extrema.json"
    if not extrema_json_path and json_path.parent.resolve().is_relative_to(root.resolve()):
        raise ValueError(
            f"the default extrema.json/reduced.zarr would go in the current folder "
            f"{json_path.parent}, inside the input folder {root}, which is never written: "
            "run from another folder or pass extrema_json_path= (and cache_path=)"
        )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    return json_path


def _new_store(json_path: Path, root: Path, cfg: RunConfig, pad: PadSpec | None) -> _Store:
    """The state store (not yet opened) for these reduction parameters and keys."""
    cats = dict(cfg.reduction.categories)
    params = {
        "variable": cfg.reduction.variable,
        "categories": {k: [list(r) for r in v] for k, v in cats.items()},
        "retrace": bool(cfg.reduction.retrace),
        "pad": None if pad is None else pad.to_json(),
        "reduction": REDUCTION_VERSION,
        "schema": _SCHEMA,
    }
    keys_counted = [*cats, *([PAD] if pad is not None else [])]
    return _Store(json_path, params, str(root.absolute()), cfg.instrument_order, keys_counted)


def _new_job(
    store: _Store,
    root: Path,
    current: dict[str, dict[str, Any]],
    cache: ReducedCache,
    cfg: RunConfig,
    *,
    pad: PadSpec | None,
    client: Client | None,
    progress: Callable[[int, int], None] | None,
) -> _Job:
    """The :class:`_Job` of a run, its settings taken from the resolved ``cfg``."""
    return _Job(
        store,
        root,
        current,
        cache,
        dict(cfg.reduction.categories),
        y_scale=cfg.style.y_scale,
        z_scale=cfg.style.z_scale,
        instrument_order=cfg.instrument_order,
        max_percentile=cfg.max_processing_percentile,
        flush_batch_size=cfg.flush_batch_size,
        compute_mins=cfg.compute_mins,
        variable=cfg.reduction.variable,
        retrace=cfg.reduction.retrace,
        pad=pad,
        client=client,
        max_workers=cfg.max_workers,
        progress=progress,
    )


@dataclass(frozen=True)
class _Job:
    """One extrema computation: its state store, the folder's files and the settings.

    ``current`` maps each file's path relative to ``root`` to its orbit, instrument, size,
    modification time and :class:`~fastspectro_dask.cache.FileKey`.
    """

    store: _Store
    root: Path
    current: dict[str, dict[str, Any]]
    cache: ReducedCache
    cats: Mapping[str, Any]
    y_scale: str
    z_scale: str
    instrument_order: Sequence[str]
    max_percentile: float
    flush_batch_size: int
    compute_mins: bool
    variable: str
    retrace: bool
    pad: PadSpec | None
    client: Client | None
    max_workers: int | None
    progress: Callable[[int, int], None] | None

    def counted(self, instrument: str) -> list[str]:
        """The instrument's counted files (relative paths), by orbit then path."""
        ledger = self.store.ledger
        return sorted(
            (
                rel
                for rel, e in ledger.items()
                if e["instrument"] == instrument and e.get("status") == "counted"
            ),
            key=lambda r: (ledger[r]["orbit"], r),
        )


def _compute(job: _Job) -> dict[str, Any]:
    """The body of :func:`compute_global_extrema` once the inputs are known."""
    state = job.store.open()
    _reconcile(job)
    ledger = job.store.ledger
    current = job.current
    todo = [
        rel
        for rel in sorted(current, key=lambda r: (current[r]["orbit"], r))
        if rel not in ledger or ledger[rel]["status"] not in ("counted", "invalid-cdf")
    ]
    if _reuse(state, current, todo, job.max_percentile, job.compute_mins):
        return _reused(job, state)
    pass1_seconds = _pass1(job, todo, state)
    t1 = time.perf_counter()
    results = _pass2(job)
    pass2_seconds = time.perf_counter() - t1
    if not any(r["n_samples"] for cm in results.values() for r in cm.values()):
        job.store.flush(False, results)
        raise EmptyDataError(
            f"{job.root}: no positive finite {job.variable!r} value in any file "
            f"of {', '.join(job.instrument_order)}"
        )
    return _finish(job, state, results, pass1_seconds, pass2_seconds)


def _reconcile(job: _Job) -> None:
    """Reconcile the ledger with the folder: drop removed/changed files' contributions."""
    store, ledger = job.store, job.store.ledger
    for rel in list(ledger):
        old = ledger[rel]
        now = job.current.get(rel)
        if now and now["size"] == old["size"] and now["mtime_ns"] == old["mtime_ns"]:
            continue
        if old.get("status") == "counted":
            summary = job.cache.summary(old["entry"])
            if summary is None:
                logger.warning(
                    "%s changed or vanished and its pass-1 summary is not in the "
                    "cache: recounting everything",
                    rel,
                )
                store.restart()
                break
            inst = old["instrument"]
            if inst in store.merged:
                for cat in store.cats:
                    store.merged[inst][cat].add(summary[cat], sign=-1)
        logger.info("%s %s: recounting", rel, "changed" if now else "removed")
        store.delete(rel)


def _reused(job: _Job, state: dict[str, Any]) -> dict[str, Any]:
    """The stored complete state, with this run's scale keys added if they are new."""
    scales = {tuple(x) for x in state.get("scales", [])}
    if (job.y_scale, job.z_scale) not in scales:  # same numbers, new key names
        state["scales"] = sorted([*map(list, scales), [job.y_scale, job.z_scale]])
        state.update(_keys(state["results"], [(job.y_scale, job.z_scale)]))
        state = job.store.rewrite_json(state)
    logger.info("extrema: %s is up to date for %s; reused", job.store.json_path, job.root)
    return {**state, "files": job.store.ledger}


# --------------------------------------------------------------------------------------
# Pass 1 on the client: one task a file through the scheduling loop, outcomes to the ledger
# --------------------------------------------------------------------------------------


def _pass1(job: _Job, todo: Sequence[str], state: Mapping[str, Any]) -> float:
    """Count the ``todo`` files into the ledger and the merged histograms; its seconds."""
    remaining_per_orbit = Counter(job.current[rel]["orbit"] for rel in todo)
    logger.info(
        "extrema pass 1: %d of %d files to count (%d orbits)",
        len(todo),
        len(job.current),
        len(remaining_per_orbit),
    )
    job.cache.ensure()  # the store's root exists before workers write entries into it
    calls = [(_pass1_args(job, job.current[rel]), {}) for rel in todo]
    n_threads = job.max_workers or os.cpu_count() or 1
    record = _Pass1Recorder(job, todo, remaining_per_orbit)
    t0 = time.perf_counter()
    try:
        _run(
            _pass1_file,
            calls,
            record,
            client=job.client,
            window=max(2 * n_threads + job.flush_batch_size, 4),  # local threads only
            max_workers=job.max_workers,
            key_of=lambda a: f"extrema-pass1-{a[2]}-{a[3]}-{a[1].mtime_ns}",
            extra=job.flush_batch_size,
            # interrupted or not, what was counted is kept (atomically)
            on_exit=lambda: job.store.flush(False, state.get("results")),
        )
    finally:
        record.bar.close()
    return time.perf_counter() - t0


def _pass1_args(job: _Job, info: Mapping[str, Any]) -> tuple:
    """The positional arguments of :func:`_pass1_file` for one file of ``job.current``."""
    key = info["key"]
    return (
        str(key.path),
        key,
        info["instrument"],
        info["orbit"],
        job.variable,
        job.cats,
        job.cache,
        job.retrace,
        job.pad,
    )


class _Pass1Recorder:
    """Pass 1's ``handle(index, result, error)``: each outcome into the ledger and the
    merged histograms; the state flushed every ``flush_batch_size`` finished orbits;
    progress bar and callback advanced."""

    def __init__(self, job: _Job, todo: Sequence[str], remaining_per_orbit: Counter) -> None:
        self.job = job
        self.todo = todo
        self.remaining_per_orbit = remaining_per_orbit
        self.orbits_since_flush = 0
        self.done = 0
        self.bar = progress_bar(len(todo), None, unit="file", desc="extrema pass 1")

    def __call__(self, i: int, result: Any, exc: BaseException | None) -> None:
        rel = self.todo[i]
        info = self.job.current[rel]
        self.job.store.put(rel, self._entry(rel, info, result, exc))
        self._file_done(info["orbit"])
        self.done += 1
        self.bar.update(1)
        if self.job.progress is not None:
            self.job.progress(self.done, len(self.todo))

    def _entry(
        self, rel: str, info: Mapping[str, Any], result: Any, exc: BaseException | None
    ) -> dict[str, Any]:
        """The file's ledger entry; a counted file's summary merged into the state."""
        store = self.job.store
        entry = {k: info[k] for k in ("orbit", "instrument", "size", "mtime_ns")}
        if exc is None:
            summary = result["summary"]
            for cat in store.cats:
                store.merged[info["instrument"]][cat].add(summary[cat])
            entry.update(
                status="counted",
                entry=result["entry"],
                n=summary[next(iter(self.job.cats))]["n"],
                min_positive={c: summary[c]["min_positive"] for c in store.cats},
            )
        else:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise exc
            reason = error_reason(exc)
            entry.update(status=reason, error=f"{type(exc).__name__}: {exc}")
            logger.error("extrema: %s skipped (%s): %s", rel, reason, exc)
            remote_tb = getattr(exc, "__remote_traceback__", None)
            if remote_tb:  # the log file keeps the detail; the terminal, one line
                logger.info("extrema: %s failed on a worker:\n%s", rel, str(remote_tb).rstrip())
        return entry

    def _file_done(self, orbit: int) -> None:
        """One file of ``orbit`` less to wait for; flush after enough finished orbits."""
        self.remaining_per_orbit[orbit] -= 1
        if self.remaining_per_orbit[orbit] == 0:
            self.orbits_since_flush += 1
            if self.orbits_since_flush >= self.job.flush_batch_size:
                self.job.store.flush(False)
                self.orbits_since_flush = 0


# --------------------------------------------------------------------------------------
# Pass 2: exact percentiles from the merged histograms, and the energy rule
# --------------------------------------------------------------------------------------


def _pass2(job: _Job) -> dict[str, dict[str, dict[str, Any]]]:
    """``{instrument: {category: limits and n_samples}}`` from the merged pass-1 state."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    qs = [float(job.max_percentile)] + ([1.0] if job.compute_mins else [])
    for inst in job.instrument_order:
        counted = job.counted(inst)
        for k, cat in enumerate(job.store.cats):
            category = PAD if cat == PAD else k
            results.setdefault(inst, {})[cat] = _limits(job, inst, category, cat, counted, qs)
    return results


def _limits(
    job: _Job, inst: str, k: int | str, cat: str, counted: Sequence[str], qs: Sequence[float]
) -> dict[str, Any]:
    """One instrument's and category's ``y_min``, ``y_max``, ``z_min``, ``z_max``."""
    m = job.store.merged[inst][cat]
    hist = m.histogram()
    y_min, y_max = _y_limits(m.energy)
    r: dict[str, Any] = {
        "y_min": y_min,
        "y_max": y_max,
        "z_min": None,
        "z_max": None,
        "n_samples": hist.n,
    }
    if hist.n:
        r["z_max"], r["z_min"] = _z_limits(job, inst, k, cat, counted, qs, hist)
    return r


def _z_limits(
    job: _Job,
    inst: str,
    k: int | str,
    cat: str,
    counted: Sequence[str],
    qs: Sequence[float],
    hist: Histogram,
) -> tuple[float, float]:
    """(z_max, z_min): exact percentiles, resolved from the files' values (pass 2)."""
    ledger = job.store.ledger
    wanted = targets_for(hist, qs).coarse_keys
    sources = [
        dask.delayed(_category_values, pure=True)(
            job.cache,
            ledger[rel]["entry"],
            k,
            job.current[rel]["key"].path,
            job.current[rel]["key"],
            job.variable,
            job.cats,
            wanted,
            job.retrace,
            job.pad,
            dask_key_name=f"extrema-values-{inst}-{cat}-{ledger[rel]['orbit']}-{n}",
        )
        for n, rel in enumerate(counted)
    ]
    # one scalar q at a time: numpy.percentile(pooled, 95.0) of float32 data is a
    # float32, and that is the number users compare with
    got = [resolve_exact(sources, hist, q, client=job.client) for q in qs]
    if job.compute_mins:
        return float(got[0]), float(got[1])
    mins = [
        ledger[rel]["min_positive"][cat]
        for rel in counted
        if ledger[rel]["min_positive"].get(cat) is not None
    ]
    return float(got[0]), float(min(mins))


# --------------------------------------------------------------------------------------
# The final state
# --------------------------------------------------------------------------------------


def _provenance(
    job: _Job, results: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Per instrument: the rule, sample and file counts, orbits covered."""
    ledger = job.store.ledger
    provenance = {}
    for inst in job.instrument_order:
        counted = job.counted(inst)
        orbits = sorted({ledger[rel]["orbit"] for rel in counted})
        provenance[inst] = {
            "percentile": float(job.max_percentile),
            "y_max_fraction": Y_MAX_FRACTION,
            "z_min_rule": _z_min_rule(job.compute_mins),
            "sample_count": results[inst].get("all", next(iter(results[inst].values())))[
                "n_samples"
            ],
            "files_counted": len(counted),
            "files_with_errors": sum(
                1
                for e in ledger.values()
                if e["instrument"] == inst and e.get("status") != "counted"
            ),
            "orbits_covered": len(orbits),
            "first_orbit": orbits[0] if orbits else None,
            "last_orbit": orbits[-1] if orbits else None,
            "method": _METHOD,
            "variable": job.variable,
            "retrace": "kept" if job.retrace else "dropped (channel 0)",
        }
    return provenance


def _finish(
    job: _Job,
    state: Mapping[str, Any],
    results: dict[str, dict[str, dict[str, Any]]],
    pass1_seconds: float,
    pass2_seconds: float,
) -> dict[str, Any]:
    """Commit the complete state (keys of every scale pair seen) and return it."""
    ledger = job.store.ledger
    scales = {tuple(s) for s in state.get("scales", [])} | {(job.y_scale, job.z_scale)}
    keys = _keys(results, sorted(scales))
    doc = job.store.flush(
        True,
        results,
        {
            "scales": [list(s) for s in sorted(scales)],
            "input_fingerprint": _fingerprint(job.current),
            "provenance": _provenance(job, results),
            "errors": {rel: e["error"] for rel, e in ledger.items() if "error" in e},
            "timing_seconds": {"pass1": round(pass1_seconds, 3), "pass2": round(pass2_seconds, 3)},
            **keys,
        },
    )
    logger.info(
        "extrema: %d files counted, pass 1 %.1f s, pass 2 %.1f s",
        sum(1 for e in ledger.values() if e.get("status") == "counted"),
        pass1_seconds,
        pass2_seconds,
    )
    job.store.maybe_compact(doc)
    return {**doc, "files": ledger}
