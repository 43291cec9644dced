"""generic_batch_plot: any user's items on Dask (timeouts, progress, resume), serially, and
the fast engine drawing what the reference drawing draws."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from matplotlib.colors import ListedColormap
from PIL import Image

import fastspectro_dask.generic as generic
from fastspectro_dask.draw import RasterFigure
from fastspectro_dask.errors import PlottingError, error_reason
from fastspectro_dask.generic import PROGRESS_SCHEMA, generic_batch_plot

from .test_render import (
    SEC,
    T0,
    mesh_x,
    meshes_of,
    spectro_axes,
    table,
    two_mode_orbit,
)

distributed = pytest.importorskip("distributed")


class _Boom(ListedColormap):
    """A colormap that fails when the figure is drawn."""

    def __init__(self, exc: type[BaseException]) -> None:
        super().__init__([(0, 0, 0), (1, 1, 1)], name="boom")
        self.exc = exc

    def __call__(self, *args, **kwargs):
        raise self.exc("colour lookup failed")

    def with_extremes(self, **kwargs):
        return self


def _build(item):
    t = T0 + (np.arange(30) * 1e9).astype("timedelta64[ns]")
    e = table(16)
    z = np.outer(np.arange(1, 31), np.ones(16)) * item
    return [
        {"x": t, "y": e, "z": z, "label": "first", "z_label": "Counts", "vmin": 1, "vmax": 90},
        {"x": t, "y": np.tile(e, (30, 1)), "z": z, "y_min": 10.0, "y_max": 1000.0},
    ]


def _small(item) -> list[dict]:
    """One row of 30 records x 16 channels, scaled by the item."""
    t = T0 + (np.arange(30) * 1e9).astype("timedelta64[ns]")
    return [{"x": t, "y": table(16), "z": np.ones((30, 16)) * (1 + int(item)), "label": "row"}]


def _progress(path: Path) -> dict:
    return json.loads(path.read_text())["linear_log"]


def _recording(calls: Path):
    """A build function (a closure: it travels with cloudpickle) that leaves one file per
    call in ``calls`` and fails while ``calls/fail-<item>`` exists."""

    def build(item):
        (calls / f"call-{item}-{os.getpid()}-{time.monotonic_ns()}").write_text("")
        if (calls / f"fail-{item}").exists():
            raise RuntimeError(f"item {item} told to fail")
        return _small(item)

    return build


def _calls(calls: Path) -> list[str]:
    return sorted(p.name.split("-")[1] for p in calls.glob("call-*"))


# --------------------------------------------------------------------------------------
# On Dask
# --------------------------------------------------------------------------------------


def test_failing_items_land_in_their_category_and_the_others_are_written(
    tmp_path, dask_client, caplog
):
    def build(item):
        if item == 1:
            return 1 / 0
        if item == 2:
            raise KeyError("no such item")
        if item == 3:  # values that do not match the times: drawing fails
            return [{"x": _small(3)[0]["x"], "y": table(16), "z": np.ones((5, 16))}]
        return _small(item)

    with caplog.at_level(logging.ERROR, logger="fastspectro_dask.generic"):
        paths = generic_batch_plot(range(6), lambda i: build(i), tmp_path, client=dask_client)
    assert paths == [tmp_path / f"{i}_y-linear_z-log.png" for i in (0, 4, 5)]
    assert all(p.stat().st_size > 1000 for p in paths)
    doc = json.loads((tmp_path / "generic-progress.json").read_text())
    assert doc["schema"] == PROGRESS_SCHEMA and doc["version"] == 1
    state = doc["linear_log"]
    assert state["completed"] == ["0", "4", "5"]
    assert {r: sorted(v) for r, v in state["errors"].items()} == {
        "divide-by-zero": ["1"],
        "generic": ["2"],
        "plotting": ["3"],
    }
    assert "KeyError" in state["errors"]["generic"]["2"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3  # one line per failed item, naming it and the cause
    assert any("item 1: divide-by-zero (ZeroDivisionError" in m for m in errors)
    assert any("item 3: plotting (PlottingError" in m for m in errors)
    assert list((tmp_path / "logs").glob("*.log"))
    assert not list(tmp_path.glob("generic-progress.json.*.tmp"))


def test_resume_skips_completed_items_and_retries_failed_ones(tmp_path, dask_client):
    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "out"
    (calls / "fail-2").write_text("")
    first = generic_batch_plot([1, 2], _recording(calls), out, client=dask_client)
    assert first == [out / "1_y-linear_z-log.png"]
    assert _calls(calls) == ["1", "2"]
    assert _progress(out / "generic-progress.json")["errors"] == {
        "generic": {"2": "RuntimeError: item 2 told to fail"}
    }
    (calls / "fail-2").unlink()
    second = generic_batch_plot([1, 2, 3], _recording(calls), out, client=dask_client)
    assert second == [out / f"{i}_y-linear_z-log.png" for i in (1, 2, 3)]
    assert _calls(calls) == ["1", "2", "2", "3"]  # item 1 was not built again
    state = _progress(out / "generic-progress.json")
    assert state == {"completed": ["1", "2", "3"], "errors": {}}
    # a completed item whose figure is gone is drawn again; a fresh pass redoes all
    second[0].unlink()
    generic_batch_plot([1, 2, 3], _recording(calls), out, client=dask_client)
    assert _calls(calls) == ["1", "1", "2", "2", "3"]
    generic_batch_plot(
        [1, 2, 3], _recording(calls), out, client=dask_client, ignore_progress_json=True
    )
    assert _calls(calls) == ["1", "1", "1", "2", "2", "2", "3", "3"]


def test_progress_is_written_every_flush_batch_size_items_and_at_the_end(
    tmp_path, dask_client, monkeypatch
):
    written = []
    real = generic.atomic_write_json

    def counting(path, obj, **kw):
        written.append(len(obj["linear_log"]["completed"]))
        real(path, obj, **kw)

    monkeypatch.setattr(generic, "atomic_write_json", counting)
    generic_batch_plot(range(5), _small, tmp_path / "a", client=dask_client, flush_batch_size=2)
    assert written == [2, 4, 5]  # two batches, then the final flush
    written.clear()
    generic_batch_plot(range(5), _small, tmp_path / "b", client=dask_client, flush_batch_size=5)
    assert written == [5]
    written.clear()
    with dask.config.set({"fastspectro.flush-batch-size": 3}):  # the default: dask config
        generic_batch_plot(range(5), _small, tmp_path / "c", client=dask_client)
    assert written == [3, 5]


@pytest.mark.slow
def test_a_hung_item_is_stopped_by_its_timeout_and_the_others_are_written(tmp_path, dask_client):
    pids = tmp_path / "pids"
    pids.mkdir()

    def build(item):
        if item == "hang":
            (pids / str(os.getpid())).write_text("")
            while True:  # a build that never returns
                time.sleep(0.01)
        return _small(1)

    # the hang is certain; the timeout, which the other items run under too, only has to
    # outlast their renders on a loaded machine
    paths = generic_batch_plot(
        ["a", "hang", "b"], build, tmp_path, client=dask_client, item_timeout_seconds=20
    )
    assert [p.name for p in paths] == ["a_y-linear_z-log.png", "b_y-linear_z-log.png"]
    state = _progress(tmp_path / "generic-progress.json")
    assert list(state["errors"]) == ["timeout"] and list(state["errors"]["timeout"]) == ["hang"]
    (pid,) = (int(p.name) for p in pids.iterdir())
    with pytest.raises(ProcessLookupError):  # the hung work was stopped, not abandoned
        os.kill(pid, 0)


def test_a_second_run_on_the_same_progress_file_is_refused(tmp_path, dask_client):
    from fastspectro_dask.atomic import StateLock, StateLockedError

    with StateLock(tmp_path / "generic-progress.json"), pytest.raises(StateLockedError):
        generic_batch_plot([1], _small, tmp_path, client=dask_client)


# --------------------------------------------------------------------------------------
# serial=True: in this process, errors propagate
# --------------------------------------------------------------------------------------


def test_serial_batch(tmp_path, monkeypatch):
    seen = []
    real_save = generic.save_figure

    def spy(fig, path, **kw):
        axes = spectro_axes(fig)
        seen.append(
            {
                "labels": list(axes),
                "clim": [meshes_of(ax)[0].get_clim() for ax in axes.values()],
                "ylim": [ax.get_ylim() for ax in axes.values()],
                "xlim": {ax.get_xlim() for ax in axes.values()},
                "title": fig.get_suptitle(),
            }
        )
        return real_save(fig, path, **kw)

    monkeypatch.setattr(generic, "save_figure", spy)
    paths = generic_batch_plot(
        [1, 3], _build, tmp_path, y_scale="log", z_scale="log", serial=True, engine="reference"
    )
    assert paths == [tmp_path / "1_y-log_z-log.png", tmp_path / "3_y-log_z-log.png"]
    assert sorted(os.listdir(tmp_path)) == ["1_y-log_z-log.png", "3_y-log_z-log.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    first = seen[0]
    assert first["labels"] == ["first", "row1"] and first["title"] == "1"
    assert first["clim"][0] == (1, 90)  # given
    z = _build(1)[1]["z"]
    assert first["clim"][1] == pytest.approx(np.percentile(z, (1, 99)))  # from the data
    assert first["ylim"][1] == pytest.approx((10.0, 1000.0))
    assert len(first["xlim"]) == 1  # rows share the time axis
    for engine in ("fast", "reference"):
        with pytest.raises(ValueError, match="unknown keys"):
            generic_batch_plot(
                [1],
                lambda i: [{"x": 1, "y": 2, "z": 3, "colour": 4}],
                tmp_path,
                serial=True,
                engine=engine,
            )
        with pytest.raises(ValueError, match="missing"):
            generic_batch_plot(
                [1], lambda i: [{"x": 1, "y": 2}], tmp_path, serial=True, engine=engine
            )


def test_serial_batch_names_and_titles_from_the_item_functions(tmp_path, monkeypatch):
    titles = []
    real_save = generic.save_figure

    def spy(fig, path, **kw):
        titles.append(fig.get_suptitle())
        return real_save(fig, path, **kw)

    monkeypatch.setattr(generic, "save_figure", spy)
    paths = generic_batch_plot(
        [2, 5],
        _build,
        tmp_path,
        filename_fn=lambda i: f"item-{i:03d}",
        title_fn=lambda i: f"Item number {i}",
        serial=True,
        engine="reference",
    )
    assert paths == [tmp_path / f"item-{i:03d}_y-linear_z-log.png" for i in (2, 5)]
    assert all(p.is_file() for p in paths)
    assert titles == ["Item number 2", "Item number 5"]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_serial_errors_while_drawing_become_plotting_errors(tmp_path, engine):
    with pytest.raises(PlottingError, match="item 7") as info:
        generic_batch_plot(
            [7], _build, tmp_path, colormap=_Boom(RuntimeError), serial=True, engine=engine
        )
    assert isinstance(info.value.__cause__, RuntimeError)
    assert error_reason(info.value) == "plotting"
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*"))
    # Divide-by-zero keeps its own category.
    for exc in (ZeroDivisionError, FloatingPointError):
        with pytest.raises(exc):
            generic_batch_plot([7], _build, tmp_path, colormap=_Boom(exc), serial=True)
    # So do the errors of build_datasets_fn.
    with pytest.raises(KeyError):
        generic_batch_plot([7], lambda i: {}[i], tmp_path, serial=True, engine=engine)


def test_serial_batch_passes_durations(tmp_path, monkeypatch):
    seen = []
    real = generic.make_spectrogram

    def spy(*args, **kwargs):
        meshes = real(*args, **kwargs)
        seen.append(mesh_x(meshes))
        return meshes

    monkeypatch.setattr(generic, "make_spectrogram", spy)

    def build(item):
        return [{"x": np.array([T0]), "y": table(4), "z": np.ones((1, 4)), "durations": [4.0]}]

    generic_batch_plot([1], build, tmp_path, serial=True, engine="reference")
    (x,) = seen[0]
    assert (x[1] - x[0]) / SEC == pytest.approx(4.0, abs=1e-5)


# --------------------------------------------------------------------------------------
# The fast engine draws what the reference draws
# --------------------------------------------------------------------------------------

#: As tests/test_engine.py: the share of pixels whose RGB channels all lie within
#: TOLERANCE (0-255) of the reference drawing's must reach MIN_SHARE.
TOLERANCE = 8
MIN_SHARE = 0.99


def _modes_and_gap(item):
    """Two energy tables, NaN padding, a data gap, durations, and numbers for time."""
    times, energies, values, _hot = two_mode_orbit(n_each=40)
    times = times.copy()
    times[50:] += np.timedelta64(20, "m")  # a gap
    rows = [{"x": times, "y": energies, "z": values * item, "label": "modes", "z_label": "Counts"}]
    rows.append(
        {
            "x": times,
            "y": energies,
            "z": values,
            "durations": np.full(times.size, 2.0),
            "y_label": "E",
        }
    )
    return rows


def _numeric_times(item):
    t = np.arange(50, dtype=float) * 3.0
    z = np.outer(np.linspace(1, 50, 50), np.linspace(1, 2, 12)) * item
    return [{"x": t, "y": np.linspace(10.0, 120.0, 12), "z": z, "label": "seconds"}]


FIDELITY = {
    "two-rows-log-log": (_build, "log", "log"),
    "modes-gap-linear-log": (_modes_and_gap, "linear", "log"),
    "modes-gap-log-linear": (_modes_and_gap, "log", "linear"),
    "numeric-times": (_numeric_times, "linear", "linear"),
}


def _reference_texts(fig) -> dict:
    mains = list(spectro_axes(fig).values())
    return {
        "title": fig.get_suptitle(),
        "row_titles": [ax.get_title(loc="left") for ax in mains],
        "xticklabels": [[t.get_text() for t in ax.get_xticklabels()] for ax in mains],
        "ylims": [ax.get_ylim() for ax in mains],
        "ylabels": [ax.get_ylabel() for ax in mains],
        "clims": [meshes_of(ax)[0].get_clim() for ax in mains],
        "zlabels": [meshes_of(ax)[0].colorbar.ax.get_ylabel() for ax in mains],
    }


@pytest.mark.parametrize("case", list(FIDELITY))
def test_fast_engine_draws_what_the_reference_draws(tmp_path, monkeypatch, case):
    build, y_scale, z_scale = FIDELITY[case]
    figures = {}
    real_save = generic.save_figure

    def keep(fig, path, **kw):
        figures[Path(path).parent.name] = (
            fig.texts if isinstance(fig, RasterFigure) else _reference_texts(fig)
        )
        return real_save(fig, path, **kw)

    monkeypatch.setattr(generic, "save_figure", keep)
    got = {}
    for engine in ("reference", "fast"):
        (path,) = generic_batch_plot(
            [2], build, tmp_path / engine, y_scale=y_scale, z_scale=z_scale, serial=True,
            engine=engine,
        )  # fmt: skip
        with Image.open(path) as im:
            got[engine] = np.asarray(im.convert("RGB"), dtype=int)
    ref, fast = figures["reference"], figures["fast"]
    assert isinstance(fast, dict) and "clims" in fast
    assert got["fast"].shape == got["reference"].shape
    close = (np.abs(got["fast"] - got["reference"]) <= TOLERANCE).all(axis=2)
    assert close.mean() >= MIN_SHARE, f"{case}: {close.mean():.4f} of pixels within tolerance"
    for key in ("title", "row_titles", "xticklabels", "ylabels"):
        assert fast[key] == ref[key], key
    np.testing.assert_allclose(fast["ylims"], ref["ylims"])
    np.testing.assert_allclose(fast["clims"], ref["clims"])
    z_labels = [d.get("z_label") or "" for d in build(2)]
    assert ref["zlabels"] == z_labels


def test_the_fidelity_check_catches_a_wrong_drawing(tmp_path):
    """Other colour limits on one side fail the comparison above."""
    got = []
    for engine, vmax in (("reference", 90), ("fast", 30)):

        def build(item, vmax=vmax):
            rows = _build(item)
            rows[0]["vmax"] = vmax
            return rows

        (path,) = generic_batch_plot(
            [1], build, tmp_path / engine, y_scale="log", z_scale="log", serial=True, engine=engine
        )
        with Image.open(path) as im:
            got.append(np.asarray(im.convert("RGB"), dtype=int))
    assert (np.abs(got[0] - got[1]) <= TOLERANCE).all(axis=2).mean() < MIN_SHARE


def test_the_fast_engine_reuses_its_layout(tmp_path):
    from fastspectro_dask import draw

    def fixed_limits(item):  # colour limits are part of a layout: fixed ones, one layout
        return [{**row, "vmin": 1.0, "vmax": 10.0} for row in _small(item)]

    draw.clear_layouts()
    built = draw.layout_cache_info()["built"]
    generic_batch_plot([1, 2, 3], fixed_limits, tmp_path, serial=True)
    assert draw.layout_cache_info()["built"] == built + 1
    # an item the engine does not serve (a row without data) is drawn by the reference
    empty = [{"x": _small(1)[0]["x"], "y": table(16), "z": np.full((30, 16), np.nan)}]
    (path,) = generic_batch_plot(["empty"], lambda i: empty, tmp_path, serial=True)
    assert path.stat().st_size > 1000
