"""fastspectro_dask: batch FAST ESA particle spectrograms on Dask.

Public API (everything else is private):

* :func:`discover` - index a folder of FAST ESA L2 files by orbit and instrument;
* :func:`open_esa` - one CDF file as a lazy :class:`xarray.Dataset` (also the xarray
  backend ``engine="fastesa"``);
* :class:`InvalidCDFError` and the other errors of :mod:`fastspectro_dask.errors`.
"""

from fastspectro_dask._version import __version__
from fastspectro_dask.discovery import INSTRUMENTS, OrbitIndex, discover
from fastspectro_dask.errors import EmptyDataError, FastSpectroError, InvalidCDFError
from fastspectro_dask.io import open_esa

__all__ = [
    "INSTRUMENTS",
    "EmptyDataError",
    "FastSpectroError",
    "InvalidCDFError",
    "OrbitIndex",
    "__version__",
    "discover",
    "open_esa",
]
