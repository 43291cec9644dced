"""fastspectro_dask: batch FAST ESA spectrograms on Dask."""

from fastspectro_dask._version import __version__
from fastspectro_dask.errors import EmptyDataError, FastSpectroError, InvalidCDFError

__all__ = [
    "EmptyDataError",
    "FastSpectroError",
    "InvalidCDFError",
    "__version__",
]
