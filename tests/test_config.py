"""The run configuration: fastspectro.yaml through dask.config, validated before any work."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import dask
import pytest
import yaml

from fastspectro_dask import config as fconfig
from fastspectro_dask.cli import main
from fastspectro_dask.config import ReductionSpec, RenderStyle, RunConfig, setting_names
from fastspectro_dask.synth import write_synthetic_dataset

REPO = Path(__file__).resolve().parent.parent


def _packaged() -> dict:
    return yaml.safe_load(fconfig.DEFAULTS_PATH.read_text())["fastspectro"]


def _leaf_fields() -> set[str]:
    nested = {"reduction", "style"}
    top = {f.name for f in dataclasses.fields(RunConfig)}
    assert nested <= top
    return (
        (top - nested)
        | {f.name for f in dataclasses.fields(ReductionSpec)}
        | {f.name for f in dataclasses.fields(RenderStyle)}
    )


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch):
    """The packaged defaults only, whatever the environment of the test run."""
    for name in list(os.environ):
        if name.startswith("DASK_FASTSPECTRO__"):
            monkeypatch.delenv(name)
    with dask.config.set({"fastspectro": dict(_packaged())}):
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_synthetic_dataset(root, orbits=1, records=12, seed=3)
    return root


# --------------------------------------------------------------------------------------
# One place of defaults
# --------------------------------------------------------------------------------------


def test_the_yaml_keys_are_the_dataclass_fields_and_the_checks():
    keys = [k.replace("-", "_") for k in _packaged()]
    assert len(keys) == len(set(keys))
    assert set(keys) == _leaf_fields() == set(fconfig._CHECKS)
    assert setting_names() == keys
    assert all("_" not in k for k in _packaged())  # hyphenated, as dask config keys are


def test_the_packaged_defaults_are_registered_with_dask_config():
    packaged = yaml.safe_load(fconfig.DEFAULTS_PATH.read_text())
    assert packaged in dask.config.defaults
    assert dask.config.get("fastspectro.flush-batch-size") == 10
    cfg = RunConfig.resolve()
    assert cfg.flush_batch_size == 10 and cfg.orbit_timeout_seconds == 600
    assert cfg.style.z_scale == "log" and cfg.reduction.variable == "data"
    assert cfg.products == ("instruments", "pitch-angle", "pad")


def test_no_default_is_repeated_in_the_public_signatures():
    from fastspectro_dask.extrema import compute_global_extrema
    from fastspectro_dask.pipeline import FAST_plot_spectrograms_directory

    settings = set(setting_names()) | {"max_percentile"}
    for fn, positional in (
        (
            FAST_plot_spectrograms_directory,
            [
                "input_dir",
                "output_dir",
                "flush_batch_size",
                "log_flush_batch_size",
                "max_workers",
                "orbit_timeout_seconds",
                "instrument_timeout_seconds",
                "ignore_progress_json",
                "max_processing_percentile",
                "y_scale",
                "z_scale",
            ],
        ),
        (
            compute_global_extrema,
            [
                "directory_path",
                "y_scale",
                "z_scale",
                "instrument_order",
                "extrema_json_path",
                "max_percentile",
                "flush_batch_size",
            ],
        ),
    ):
        params = inspect.signature(fn).parameters.values()
        kinds = inspect.Parameter
        assert [p.name for p in params if p.kind is kinds.POSITIONAL_OR_KEYWORD] == positional
        assert all(p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) for p in params)
        literal = {
            p.name: p.default for p in params if p.name in settings and p.default is not None
        }
        assert not literal, f"{fn.__name__}: defaults outside fastspectro.yaml: {literal}"


def test_render_choices_and_categories_agree_with_their_owners():
    from fastspectro_dask import output, products
    from fastspectro_dask.reduce import DEFAULT_CATEGORIES

    assert products.ENGINES is fconfig.ENGINES  # one definition, imported
    assert output.FORMATS is fconfig.FORMATS
    assert RunConfig.resolve().reduction.categories == DEFAULT_CATEGORIES


# --------------------------------------------------------------------------------------
# Precedence: packaged < dask config / environment < arguments
# --------------------------------------------------------------------------------------


def test_dask_config_then_arguments():
    with dask.config.set({"fastspectro.flush-batch-size": 3, "fastspectro.z_scale": "linear"}):
        cfg = RunConfig.resolve()
        assert cfg.flush_batch_size == 3 and cfg.style.z_scale == "linear"
        given = RunConfig.resolve(flush_batch_size=5, z_scale=None)  # None: not given
        assert given.flush_batch_size == 5 and given.style.z_scale == "linear"
    base = RunConfig.resolve(dpi=80)
    assert RunConfig.resolve(base, engine="reference").style.dpi == 80.0


def test_environment_strings_are_parsed():
    with dask.config.set(
        {
            "fastspectro.products": "[instruments, pad]",
            "fastspectro.orbit-timeout-seconds": "inf",
            "fastspectro.figsize": "16x12",
            "fastspectro.retrace": "true",
            "fastspectro.categories": "{up: [[0, 30]], down: [[150, 180]]}",
        }
    ):
        cfg = RunConfig.resolve()
    assert cfg.products == ("instruments", "pad")
    assert cfg.orbit_timeout_seconds is None  # no bound
    assert cfg.style.figsize == (16.0, 12.0) and cfg.reduction.retrace is True
    assert cfg.reduction.categories == {"up": ((0.0, 30.0),), "down": ((150.0, 180.0),)}
    assert RunConfig.resolve(instrument_timeout_seconds=math.inf).instrument_timeout_seconds is None


def test_the_dask_config_reaches_the_run_and_arguments_beat_it(tiny, tmp_path, monkeypatch):
    """``fastspectro.flush-batch-size: 3`` in the dask config is the run's progress batch,
    recorded in its summary and log; an argument beats it."""
    import distributed

    from fastspectro_dask import pipeline

    seen = []
    real = pipeline.ProgressStore

    def spy(*args, **kw):
        seen.append(kw["flush_batch_size"])
        return real(*args, **kw)

    monkeypatch.setattr(pipeline, "ProgressStore", spy)
    kw = dict(products=("instruments",), progress_bar=False, install_signal_handlers=False)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
        dask.config.set({"fastspectro.flush-batch-size": 3}),
    ):
        s = pipeline.FAST_plot_spectrograms_directory(tiny, tmp_path / "a", client=client, **kw)
        t = pipeline.FAST_plot_spectrograms_directory(tiny, tmp_path / "b", 7, client=client, **kw)
    assert seen == [3, 7]
    assert s.orbits_completed == 1
    assert s.config["flush-batch-size"] == 3 and t.config["flush-batch-size"] == 7
    assert s.config == RunConfig.resolve(flush_batch_size=3, **kw_settings(kw)).to_dict()
    log = Path(s.log_file).read_text()
    assert '"flush-batch-size": 3' in log and "configuration:" in log


def kw_settings(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k in setting_names()}


# --------------------------------------------------------------------------------------
# Refused before anything is touched
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("z_scale", "cubic", "z_scale must be one of 'linear', 'log', not 'cubic'"),
        ("y_scale", "lin", "y_scale must be one of 'linear', 'log', not 'lin'"),
        ("variable", "flux", "variable must be one of 'data', 'eflux', 'rate', not 'flux'"),
        ("engine", "gpu", "engine must be one of 'fast', 'reference', not 'gpu'"),
        ("figure_format", "jpg", "figure_format must be one of 'png', 'pdf', 'svg'"),
        ("flush_batch_size", 0, "flush_batch_size must be an integer >= 1, not 0"),
        ("flush_batch_size", 2.5, "flush_batch_size must be an integer >= 1"),
        (
            "max_processing_percentile",
            101,
            "max_processing_percentile must be a number within [0, 100], not 101",
        ),
        ("orbit_timeout_seconds", -1, "orbit_timeout_seconds must be a number > 0"),
        ("dpi", 0, "dpi must be a number > 0"),
        ("squeeze_gaps_minutes", -1, "squeeze_gaps_minutes must be a number >= 0"),
        ("products", ["instruments", "movie"], "products must be distinct names among"),
        ("instrument_order", ["ees", "ees"], "instrument_order must be distinct names"),
        ("figsize", (0, 3), "figsize must be [width, height]"),
        ("pad_energy", (5000, 50), "pad_energy must be [lo, hi]"),
        ("retrace", "maybe", "retrace must be true or false, not 'maybe'"),
        ("categories", {"a": [(0, 400)]}, "categories: pitch-angle category 'a'"),
    ],
)
def test_bad_values_name_the_setting_and_the_allowed_values(setting, value, message):
    with pytest.raises(ValueError, match="^" + _re(message)):
        RunConfig.resolve(**{setting: value})
    with (
        dask.config.set({f"fastspectro.{setting.replace('_', '-')}": value}),
        pytest.raises(ValueError, match=_re(f"(from the dask config fastspectro.{setting}")),
    ):
        RunConfig.resolve()


def _re(text: str) -> str:
    import re

    return re.escape(text).replace("_", "[-_]")


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="flush_batch"):
        RunConfig.resolve(flush_batch=3)
    with (
        dask.config.set({"fastspectro.flush-batchsize": 3}),
        pytest.raises(ValueError, match=r"fastspectro\.flush-batchsize"),
    ):
        RunConfig.resolve()


def test_a_bad_value_is_refused_before_any_folder_or_cluster(tiny, tmp_path, monkeypatch):
    from fastspectro_dask import pipeline
    from fastspectro_dask.extrema import compute_global_extrema

    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(pipeline, "client_context", no_cluster)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="z_scale must be one of 'linear', 'log', not 'cubic'"):
        pipeline.FAST_plot_spectrograms_directory(tiny, out, z_scale="cubic")
    assert not out.exists()
    with pytest.raises(ValueError, match="max_percentile must be"):
        compute_global_extrema(tiny, extrema_json_path=out / "e.json", max_percentile=120)
    with (
        dask.config.set({"fastspectro.engine": "gpu"}),
        pytest.raises(ValueError, match="engine must be one of"),
    ):
        pipeline.FAST_plot_spectrograms_directory(tiny, out)
    assert not out.exists()
    # the command line: exit code 2, nothing written
    out2 = tmp_path / "out2"
    with dask.config.set({"fastspectro.z-scale": "cubic"}):
        assert main(["plot", str(tiny), str(out2)]) == 2
    assert not out2.exists()


# --------------------------------------------------------------------------------------
# fastspectro config
# --------------------------------------------------------------------------------------


def test_config_command_prints_yaml_that_round_trips(capsys):
    assert main(["config", "--z-scale", "linear", "--figsize", "16x12", "--no-keep-retrace"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    section = printed["fastspectro"]
    assert list(section) == list(_packaged())  # the keys of fastspectro.yaml, in its order
    assert section["z-scale"] == "linear" and section["figsize"] == [16.0, 12.0]
    # fed back as a dask config, it resolves to the same settings
    with dask.config.set(printed):
        assert RunConfig.resolve().to_dict() == section
    assert (
        yaml.safe_load(RunConfig.resolve().to_yaml())["fastspectro"]
        == RunConfig.resolve().to_dict()
    )


def test_config_command_honours_the_environment_in_a_fresh_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_FASTSPECTRO__")}
    env.update(
        DASK_FASTSPECTRO__FLUSH_BATCH_SIZE="3",
        DASK_FASTSPECTRO__PRODUCTS="[instruments]",
        DASK_CONFIG=str(tmp_path),  # no user config files
        PYTHONPATH=str(REPO),
    )
    run = subprocess.run(
        [sys.executable, "-m", "fastspectro_dask.cli", "config", "--dpi", "72"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    section = yaml.safe_load(run.stdout)["fastspectro"]
    assert section["flush-batch-size"] == 3 and section["products"] == ["instruments"]
    assert section["dpi"] == 72.0 and section["z-scale"] == "log"
    # a config file in DASK_CONFIG is read too; the environment beats it
    (tmp_path / "fastspectro.yaml").write_text(
        run.stdout.replace("z-scale: log", "z-scale: linear")
    )
    env["DASK_FASTSPECTRO__Z_SCALE"] = "cubic"
    bad = subprocess.run(
        [sys.executable, "-m", "fastspectro_dask.cli", "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert "z_scale must be one of 'linear', 'log', not 'cubic'" in bad.stderr
    assert "DASK_FASTSPECTRO__Z_SCALE" in bad.stderr


def test_run_summary_records_the_config(tmp_path):
    from fastspectro_dask.pipeline import RunSummary
    from fastspectro_dask.report import write_run_report

    cfg = RunConfig.resolve(flush_batch_size=4)
    summary = RunSummary(scales="y-linear z-log", config=cfg.to_dict())
    write_run_report(tmp_path, summaries=[summary], config=cfg.to_dict())
    saved = json.loads((tmp_path / "run-summary.json").read_text())
    assert saved["config"]["flush-batch-size"] == 4
    assert saved["summaries"][0]["config"] == cfg.to_dict()
