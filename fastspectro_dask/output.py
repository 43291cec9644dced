"""Naming and saving figures: output paths, atomic files, provenance text chunks.

* :func:`figure_path` names a product's file,
  ``{YYYY}/{MM}/{orbit}/{orbit}_{product}_y-{y}_z-{z}.{fmt}``;
* :func:`save_figure` writes a matplotlib Figure (the reference drawing) or a
  :class:`~fastspectro_dask.draw.RasterFigure` (the fast engine) atomically, as PNG with the
  provenance text chunks, or PDF/SVG;
* :func:`read_figure_metadata` reads those chunks back (``fastspectro info FIGURE.png``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fastspectro_dask.atomic import atomic_open
from fastspectro_dask.config import FORMATS  # the formats of save_figure, by suffix
from fastspectro_dask.errors import PlottingError
from fastspectro_dask.geometry import _check_scale, _to_datetime64

logger = logging.getLogger(__name__)


#: zlib level of every PNG written (both engines): measured with benchmarks/bench_render.py,
#: 3 encodes as fast as 1 or faster, with smaller files, and ~2x faster than PIL's 6.
DEFAULT_COMPRESS_LEVEL = 3


def figure_path(
    output_dir: str | os.PathLike,
    orbit: int,
    start_time: Any,
    product: str,
    y_scale: str,
    z_scale: str,
    *,
    fmt: str = "png",
) -> Path:
    """Where a product goes: ``{output_dir}/{YYYY}/{MM}/{orbit}/{orbit}_{product}_y-{y}_z-{z}.png``.

    Parameters
    ----------
    output_dir : str or os.PathLike
    orbit : int
    start_time : datetime64, datetime, str or pandas Timestamp
        The orbit's start (UTC); gives ``YYYY`` and ``MM``.
    product : str
        ``instruments`` for the instrument grid, ``pa-<inst>`` for a pitch-angle grid.
    y_scale, z_scale : {"linear", "log"}
    fmt : {"png", "pdf", "svg"}
        The file format (suffix).

    Returns
    -------
    pathlib.Path
    """
    _check_scale("y_scale", y_scale)
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    _check_scale("z_scale", z_scale)
    if not product or re.search(r"[\\/\s]", product):
        raise ValueError(f"product must be a plain name, not {product!r}")
    when = _to_datetime64(start_time).astype("datetime64[s]").item()
    o = int(orbit)
    return (
        Path(output_dir)
        / f"{when:%Y}"
        / f"{when:%m}"
        / str(o)
        / f"{o}_{product}_y-{y_scale}_z-{z_scale}.{fmt}"
    )


def _software() -> str:
    from fastspectro_dask._version import __version__

    return f"fastspectro_dask {__version__}"


def _png_metadata(fig: Figure, extra: Mapping[str, str] | None) -> dict[str, str]:
    return {
        "Software": _software(),
        **dict(getattr(fig, "fastspectro_metadata", None) or {}),
        **dict(extra or {}),
    }


def read_figure_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG (its provenance, see :func:`save_figure`).

    Raises
    ------
    ValueError
        The file is not a PNG image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ValueError(f"{path}: not a PNG image ({im.format})")
            return {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def save_figure(
    fig: Figure,
    path: str | os.PathLike,
    *,
    dpi: float | None = None,
    compress_level: int = DEFAULT_COMPRESS_LEVEL,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a figure as a deterministic PNG, atomically, and release the figure.

    The PNG carries its provenance as text chunks: ``Software`` ("fastspectro_dask
    <version>") and, for the FAST products (``fig.fastspectro_metadata``), ``Source``
    (the input file names, comma-separated), ``fastspectro:time-ranges`` (JSON list of
    ``[start, end]`` ISO-8601 UTC strings: the time segments drawn, after squeezing),
    ``fastspectro:limits`` (JSON: each row's y and z limits) and
    ``fastspectro:ephemeris`` (the label rows under the axis, e.g. ``UT,ALT,ILAT,MLT``).
    :func:`read_figure_metadata` (``fastspectro info FIGURE.png``) reads them back.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or os.PathLike
        Destination; parent folders are created. A temporary file in the same folder is
        renamed over it (``os.replace``) only once completely written.
    dpi : float, optional
        Default: the figure's dpi.
    compress_level : int
        zlib level 0-9 of the PNG (3, the default, is fast; 6 is PIL's default).
    metadata : mapping, optional
        More text chunks (they win over the figure's own).

    Returns
    -------
    pathlib.Path
        The written file. Same figure -> identical bytes (no timestamp).

    Raises
    ------
    PlottingError
        Drawing or writing failed (chained to the cause); no partial file is left.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in FORMATS:
        raise ValueError(f"{path}: figures are written as {', '.join(FORMATS)}, not {fmt!r}")
    if not isinstance(fig, Figure):  # drawn by the fast engine (draw.RasterFigure)
        fig.metadata.update({k: v for k, v in (metadata or {}).items() if v is not None})
        return fig.save(path, fmt=fmt, compress_level=compress_level)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, sync_dir=False) as fh:
            meta = _png_metadata(fig, metadata)
            fig.savefig(
                fh,
                format=fmt,
                dpi=dpi if dpi is not None else fig.dpi,
                **(
                    {"metadata": meta, "pil_kwargs": {"compress_level": int(compress_level)}}
                    if fmt == "png"
                    else {"metadata": {"Creator": meta["Software"]} if fmt == "pdf" else {}}
                ),
            )
    except (ZeroDivisionError, FloatingPointError):
        raise
    except Exception as exc:
        raise PlottingError(f"saving figure to {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        fig.clear()
    logger.debug("wrote %s", path)
    return path


def _provenance_text(
    rows: Sequence[Any], limits: Mapping[str, Any], ranges: list, label_rows: list[str]
) -> dict[str, str]:
    """The provenance text chunks of a grid figure (see :func:`save_figure`): the source
    files of its ``rows`` (their ``sources``), the drawn limits per row, the time ranges
    drawn and the names of the time-axis label rows."""
    import json

    sources = sorted({s for row in rows for s in row.sources})
    return {
        "Source": ",".join(sources),
        "fastspectro:time-ranges": json.dumps(ranges),
        "fastspectro:limits": json.dumps(limits, sort_keys=True),
        "fastspectro:ephemeris": ",".join(label_rows),
    }
