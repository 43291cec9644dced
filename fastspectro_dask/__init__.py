"""fastspectro_dask: batch FAST ESA particle spectrograms on Dask.

Public API (everything else is private):

* :func:`FAST_plot_spectrograms_directory` - every orbit's figures on Dask, resumable;
* :func:`compute_global_extrema` - exact mission-wide colour/energy limits;
* :func:`FAST_plot_instrument_grid`, :func:`FAST_plot_pitch_angle_grid` - one orbit's figures;
* :func:`make_spectrogram`, :func:`generic_batch_plot` - mission-agnostic plotting;
* :func:`discover` - index a folder of FAST ESA L2 files by orbit and instrument;
* :func:`open_esa` - one CDF file as a lazy :class:`xarray.Dataset` (also the xarray
  backend ``engine="fastesa"``);
* :class:`InvalidCDFError` and the other errors of :mod:`fastspectro_dask.errors`;
* :class:`NoWorkersError` - no Dask worker and none pending for ``worker-wait`` seconds;
* :class:`StateLockedError` - another run holds the lock of the same progress/extrema file;
* :class:`RunConfig` - a run's settings: the packaged ``fastspectro.yaml`` defaults, registered
  with ``dask.config`` under ``fastspectro`` on import, then the user's dask config and
  environment, then arguments.

The plotting and cluster layers are imported on first use, so ``import fastspectro_dask``
stays light (no distributed, no matplotlib).
"""

from importlib import import_module
from typing import Any

from fastspectro_dask._version import __version__
from fastspectro_dask.config import RunConfig
from fastspectro_dask.discovery import INSTRUMENTS, OrbitIndex, discover
from fastspectro_dask.errors import (
    EmptyDataError,
    FastSpectroError,
    InvalidCDFError,
    NoWorkersError,
)
from fastspectro_dask.io import open_esa

_LAZY = {
    "FAST_plot_spectrograms_directory": "fastspectro_dask.pipeline",
    "RunSummary": "fastspectro_dask.pipeline",
    "compute_global_extrema": "fastspectro_dask.extrema",
    "FAST_plot_instrument_grid": "fastspectro_dask.products",
    "FAST_plot_pitch_angle_grid": "fastspectro_dask.products",
    "make_spectrogram": "fastspectro_dask.render",
    "generic_batch_plot": "fastspectro_dask.generic",
    "save_figure": "fastspectro_dask.render",
    "StateLockedError": "fastspectro_dask.atomic",
}

__all__ = [
    "INSTRUMENTS",
    "EmptyDataError",
    "FAST_plot_instrument_grid",
    "FAST_plot_pitch_angle_grid",
    "FAST_plot_spectrograms_directory",
    "FastSpectroError",
    "InvalidCDFError",
    "NoWorkersError",
    "OrbitIndex",
    "RunConfig",
    "RunSummary",
    "StateLockedError",
    "__version__",
    "compute_global_extrema",
    "discover",
    "generic_batch_plot",
    "make_spectrogram",
    "open_esa",
    "save_figure",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastspectro_dask' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
