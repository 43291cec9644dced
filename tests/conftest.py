"""Shared fixtures: synthetic FAST ESA L2 data written once per test session."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

from fastspectro_dask.synth import MANIFEST_NAME, SynthManifest, write_synthetic_dataset

#: Small files keep the suite fast; the physics does not depend on the record count.
RECORDS = 80
SEED = 3


def _synth_cache_dir(factory: pytest.TempPathFactory) -> Path:
    """A folder shared by every process of this test session: under pytest-xdist, the
    parent of the workers' own base folders (one per run), else this run's base folder."""
    base = factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = shared / "synth-cache"
    folder.mkdir(exist_ok=True)
    return folder


def _relocate(man: dict[str, Any], old: Path, new: Path) -> SynthManifest:
    """The manifest of a dataset written under ``old``, for its copy under ``new``."""

    def moved(p: str) -> Path:
        return new / Path(p).relative_to(old)

    return SynthManifest(
        root=new,
        files={int(o): {i: moved(p) for i, p in d.items()} for o, d in man["files"].items()},
        orb_files={int(o): moved(p) for o, p in man["orb_files"].items()},
        bad_files={k: {**v, "path": moved(v["path"])} for k, v in man["bad_files"].items()},
        activity={int(o): a for o, a in man["activity"].items()},
    )


def copy_of_synthetic_dataset(
    factory: pytest.TempPathFactory, root: Path, **kwargs: Any
) -> SynthManifest:
    """:func:`~fastspectro_dask.synth.write_synthetic_dataset` ``(root, **kwargs)``, written
    once per test session and copied into ``root`` (created if needed).

    Writing is seconds of CPU (cdflib), copying a few milliseconds, and the output is
    identical for the same arguments: the pytest-xdist workers write each dataset once
    between them (a file lock), and each caller gets its own copy to change at will.
    """
    key = "-".join(f"{k}={kwargs[k]}" for k in sorted(kwargs)).replace("/", "_")
    cache = _synth_cache_dir(factory)
    master = cache / key
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (master / MANIFEST_NAME).exists():  # written last: a complete dataset
            shutil.rmtree(master, ignore_errors=True)  # a writer that died midway
            write_synthetic_dataset(master, **kwargs)
    shutil.copytree(master, root, symlinks=True, dirs_exist_ok=True)
    man = _relocate(json.loads((master / MANIFEST_NAME).read_text()), master, root)
    (root / MANIFEST_NAME).write_text(json.dumps(man.to_json(), indent=1))
    return man


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthManifest:
    """Three good orbits (all instruments where bursts exist), the broken-file corpus,
    and fa_k0_orb files, in the real ``YYYY/MM/`` layout."""
    root = tmp_path_factory.mktemp("fast_esa")
    return copy_of_synthetic_dataset(
        tmp_path_factory,
        root,
        orbits=3,
        records=RECORDS,
        seed=SEED,
        bad_files=True,
        orb_files=True,
    )


@pytest.fixture(scope="session")
def good_files(synth_dataset: SynthManifest) -> dict[int, dict[str, Path]]:
    """orbit -> instrument -> path, for the orbits without broken files."""
    bad = {d["orbit"] for d in synth_dataset.bad_files.values() if d["expect"] != "superseded"}
    return {o: d for o, d in synth_dataset.files.items() if o not in bad}


@pytest.fixture(scope="session")
def ees_file(good_files: dict[int, dict[str, Path]]) -> Path:
    """A good survey electron file (it has slow and fast survey modes)."""
    return good_files[min(good_files)]["ees"]


@pytest.fixture(scope="module")
def dask_client():
    """A local cluster of two one-thread worker processes (per test module), as the
    pipeline runs on: renders in sandbox children, a task's error not retried."""
    import dask

    distributed = pytest.importorskip("distributed")
    # held while the cluster lives: a worker the nanny restarts (test_worker_killed...)
    # must come back non-daemonic, able to start render sandboxes
    with dask.config.set(
        {"distributed.worker.daemon": False, "distributed.scheduler.allowed-failures": 0}
    ):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        c = distributed.Client(cluster)
        yield c
        c.close()
        cluster.close()


#: Test modules that took longest, longest first (``--durations``, 2 processes, loaded
#: machine): they start first, so that no long module is left for the end of the run.
LONGEST_MODULES = (
    "test_pipeline.py",
    "test_engine.py",
    "test_fuzz_kill.py",
    "test_cli.py",
    "test_extrema.py",
    "test_benchmarks_smoke.py",
    "test_report.py",
    "test_slurm_real.py",
    "test_readme_figure.py",
)


@pytest.fixture
def task_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Items (figures, files) per Dask task of every scheduling loop run in the test, in
    submission order."""
    from fastspectro_dask.schedule import TaskLoop

    sizes: list[int] = []
    real_run = TaskLoop.run

    def run(self, source, handle):
        def spy(tasks):
            for task in tasks:
                sizes.append(len(task.item))
                yield task

        return real_run(self, spy(source), handle)

    monkeypatch.setattr(TaskLoop, "run", run)
    return sizes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules of :data:`LONGEST_MODULES` first, then the others with slow tests, then
    the rest, each module's tests in their own order: pytest-xdist (``--dist loadfile
    --no-loadscope-reorder``) hands out whole modules in this order, so the long ones start
    at once and the short ones fill the end of the run."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_MODULES:
            return (0, LONGEST_MODULES.index(name))
        return (1, 0) if item.path in slow_modules else (2, 0)

    items.sort(key=rank)  # stable: each module keeps its order
