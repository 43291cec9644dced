"""Tiny smoke runs of the benchmarks (correct wiring, not timing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_read_smoke(capsys):
    bench = _load("bench_read")
    times = bench.main(["--files", "1", "--records", "40", "--rounds", "1", "--pad"])
    out = capsys.readouterr().out
    for name in ("(a) raw cdflib decode", "(b) reduce_file", "(c) decode only"):
        assert name in out
    assert all(len(ts) == 1 and ts[0] > 0 for ts in times.values())
