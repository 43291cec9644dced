"""Shared fixtures: synthetic FAST ESA L2 data written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")

from fastspectro_dask.synth import SynthManifest, write_synthetic_dataset

#: Small files keep the suite fast; the physics does not depend on the record count.
RECORDS = 80
SEED = 3


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthManifest:
    """Three good orbits (all instruments where bursts exist), the broken-file corpus,
    and fa_k0_orb files, in the real ``YYYY/MM/`` layout."""
    root = tmp_path_factory.mktemp("fast_esa")
    return write_synthetic_dataset(
        root, orbits=3, records=RECORDS, seed=SEED, bad_files=True, orb_files=True
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
