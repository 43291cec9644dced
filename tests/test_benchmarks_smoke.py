"""Tiny smoke runs of the benchmarks (correct wiring, not timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

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


def test_bench_render_smoke(capsys):
    bench = _load("bench_render")
    ratios = bench.main(["--records", "30", "--orbits", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    for name in ("naive loop (baseline)", "reference: instrument grid", "fast: pad"):
        assert name in out and ratios[name] > 0


def test_compare_decoding_smoke(capsys):
    _load("compare_decoding").main()
    out = capsys.readouterr().out
    assert "survey (16->8 bit)" in out and "burst (14->8 bit)" in out
    assert " 224-255 " in out and " 192-255 " in out  # the last segments of each table


@pytest.mark.slow
def test_bench_pipeline_cli_smoke(capsys, monkeypatch):
    bench = _load("bench_pipeline")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_pipeline.py",
            *("--only-cli", "--cli-orbits", "1", "--cli-records", "20", "--rounds", "1"),
        ],
    )
    bench.main()
    out = capsys.readouterr().out
    assert "whole CLI run vs the naive loop" in out and "cold (from nothing)" in out


def test_bench_extrema_bookkeeping_smoke(capsys):
    import logging

    bench = _load("bench_extrema")
    disabled = logging.root.manager.disable
    rows = bench.main(
        ["--bookkeeping-only", "--ledger-sizes", "50,200", "--flush-files", "5", "--flushes", "2"]
    )
    out = capsys.readouterr().out
    assert "(e) bookkeeping only: one pass-1 flush of 5 ledger entries" in out
    assert "projected over a 200-file mission (40 flushes of 5)" in out
    assert logging.root.manager.disable == disabled  # the benchmark restores logging
    assert [r["n"] for r in rows] == [50, 200]
    small, big = rows
    # the naive document holds the whole ledger; ours appends only the batch's lines
    assert big["naive_bytes"] > small["naive_bytes"] > small["ours_journal_bytes"] > 0
    assert abs(big["ours_journal_bytes"] / small["ours_journal_bytes"] - 1) < 0.1
    assert big["journal_mb"] > small["journal_mb"] > 0
    assert all(r[k] > 0 for r in rows for k in ("naive_s", "ours_s", "ours_load_s"))


@pytest.mark.slow
def test_bench_extrema_full_smoke(capsys):
    bench = _load("bench_extrema")
    rows = bench.main(
        [
            *("--orbits", "1", "--orbits-small", "1", "--orbits-large", "2", "--records", "20"),
            *("--rounds", "1", "--ledger-sizes", "50", "--flush-files", "5", "--flushes", "2"),
        ]
    )
    out = capsys.readouterr().out
    for part in ("(a) 1 orbits, cold", "(b) p95", "(c) 1 orbits", "(d) ours cold", "(e) book"):
        assert part in out
    assert "bit for bit: asserted" in out and [r["n"] for r in rows] == [50]
