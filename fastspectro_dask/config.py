"""The run configuration: defaults through ``dask.config``, validated once, passed whole.

Every default of a run lives in the packaged ``fastspectro.yaml`` (beside this module),
registered with :mod:`dask.config` under ``fastspectro`` when this module is imported (as
dask-jobqueue registers ``jobqueue.yaml``; no file is copied to the user's folders). The
precedence, lowest first:

1. the packaged defaults;
2. the user's dask config files (e.g. ``~/.config/dask/fastspectro.yaml``) and the
   environment (``DASK_FASTSPECTRO__FLUSH_BATCH_SIZE=3``), or ``dask.config.set``;
3. API arguments and command-line flags (``None``: not given).

:meth:`RunConfig.resolve` builds the frozen :class:`RunConfig` from these and validates
every setting before any cluster, file or folder is touched: a bad value is a
``ValueError`` that names the setting and the allowed values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import dask.config
import yaml

from fastspectro_dask.discovery import INSTRUMENTS
from fastspectro_dask.reduce import SOURCE_VARIABLE, PadSpec, normalize_categories

__all__ = [
    "DEFAULTS_PATH",
    "PRODUCTS",
    "ReductionSpec",
    "RenderStyle",
    "RunConfig",
    "setting_names",
]

#: The packaged defaults.
DEFAULTS_PATH = Path(__file__).with_name("fastspectro.yaml")
#: The dask.config section of the settings.
SECTION = "fastspectro"

#: The figures of a run, per orbit: the instrument grid, a pitch-angle grid per
#: instrument, and the pitch-angle spectrogram (``pad``).
PRODUCTS = ("instruments", "pitch-angle", "pad")
SCALES = ("linear", "log")
#: Drawing engines: ``fast`` (:mod:`fastspectro_dask.draw`: cached layouts, raster panels)
#: and ``reference`` (a fresh matplotlib figure, pcolormesh). The one definition (as
#: ``FORMATS``): the products and the writer import them from here, so that resolving a
#: configuration does not import matplotlib.
ENGINES = ("fast", "reference")
#: File formats of the figures (:func:`fastspectro_dask.output.save_figure`).
FORMATS = ("png", "pdf", "svg")


def _register() -> None:
    with open(DEFAULTS_PATH, encoding="utf-8") as f:
        dask.config.update_defaults(yaml.safe_load(f))


_register()


# --------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReductionSpec:
    """What is read from the files and how it is reduced (part of every cache key)."""

    variable: str
    categories: Mapping[str, tuple[tuple[float, float], ...]]
    retrace: bool
    pad_energy: tuple[float, float] | None


@dataclass(frozen=True)
class RenderStyle:
    """How figures are drawn and saved."""

    y_scale: str
    z_scale: str
    squeeze_gaps_minutes: float
    pad_shift90: bool
    engine: str
    dpi: float
    figsize: tuple[float, float] | None
    figure_format: str


@dataclass(frozen=True)
class RunConfig:
    """The resolved settings of one run; build it with :meth:`resolve`.

    The keys of ``fastspectro.yaml`` are the field names here and in the nested
    :class:`ReductionSpec` (``reduction``) and :class:`RenderStyle` (``style``), with
    ``-`` for ``_``. A timeout of ``None`` is no bound.
    """

    flush_batch_size: int
    log_flush_batch_size: int | None
    flush_interval_seconds: float | None
    max_workers: int | None
    window: int | None
    worker_wait: float | None
    progress_bar: bool | None
    orbit_timeout_seconds: float | None
    instrument_timeout_seconds: float | None
    ignore_progress_json: bool
    overwrite: bool
    instrument_order: tuple[str, ...]
    products: tuple[str, ...]
    max_processing_percentile: float
    compute_mins: bool
    reduction: ReductionSpec
    style: RenderStyle

    @classmethod
    def resolve(
        cls,
        base: RunConfig | None = None,
        /,
        *,
        _spelled: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> RunConfig:
        """The configuration from ``base`` (default: the dask config, ``fastspectro.*``)
        with ``overrides`` (setting names as in :func:`names`; ``None`` values are not
        given) applied, validated. ``_spelled`` renames settings in error messages, for
        callers whose argument has another name (``max_percentile``).

        Raises
        ------
        ValueError
            A setting out of its allowed values, or an unknown key in the dask config's
            ``fastspectro`` section.
        TypeError
            An unknown override name.
        """
        names = setting_names()
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(names)}")
        if base is None:
            values, sources = _from_dask_config(names)
        else:
            values = {k.replace("-", "_"): v for k, v in base.to_dict().items()}
            sources = dict.fromkeys(names, "")
        for key, value in overrides.items():
            if value is not None:
                values[key], sources[key] = value, ""
        checked = {}
        for key in names:
            try:
                checked[key] = _CHECKS[key]((_spelled or {}).get(key, key), values[key])
            except ValueError as exc:
                raise ValueError(f"{exc}{sources[key]}") from None
        if checked["pad_energy"] is not None:
            PadSpec(checked["pad_energy"])  # its own checks, same as the run's
        return cls._from_flat(checked)

    @classmethod
    def _from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        nested = {"reduction": ReductionSpec, "style": RenderStyle}
        top = {f.name: flat[f.name] for f in fields(cls) if f.name not in nested}
        parts = {
            name: kind(**{f.name: flat[f.name] for f in fields(kind)})
            for name, kind in nested.items()
        }
        return cls(**top, **parts)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain YAML/JSON values, keyed as in ``fastspectro.yaml``
        (hyphenated), in that file's order."""
        flat = {k: v for k, v in asdict(self).items() if k not in ("reduction", "style")}
        flat.update(asdict(self.reduction), **asdict(self.style))
        return {k.replace("_", "-"): _plain(flat[k.replace("-", "_")]) for k in _yaml_order()}

    def to_yaml(self) -> str:
        """:meth:`to_dict` under ``fastspectro:``, as a dask config file."""
        return yaml.safe_dump({SECTION: self.to_dict()}, sort_keys=False, default_flow_style=None)

    @property
    def pad(self) -> PadSpec | None:
        """The reduction of the ``pad`` product, when it is made."""
        return PadSpec(self.reduction.pad_energy) if "pad" in self.products else None

    @property
    def log_batch(self) -> int:
        """Records per log write."""
        return self.log_flush_batch_size or self.flush_batch_size


@functools.cache
def _packaged() -> dict[str, Any]:
    """The packaged defaults, as in ``fastspectro.yaml`` (hyphenated keys, its order)."""
    with open(DEFAULTS_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)[SECTION]


def _yaml_order() -> tuple[str, ...]:
    """The keys of ``fastspectro.yaml``, in its order (hyphenated)."""
    return tuple(_packaged())


def setting_names() -> list[str]:
    """Every setting's name as API arguments spell it (the keys of ``fastspectro.yaml``
    with ``_`` for ``-``)."""
    return [k.replace("-", "_") for k in _yaml_order()]


def _from_dask_config(names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    section = dask.config.get(SECTION, default={}) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"the dask config {SECTION!r} must be a mapping, not {section!r}")
    unknown = sorted(k for k in section if str(k).replace("-", "_") not in names)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(f'{SECTION}.{k}' for k in unknown)} in the dask "
            f"config; known: {', '.join(n.replace('_', '-') for n in names)}"
        )
    # a section replaced whole (dask.config.set({"fastspectro": {...}})) keeps the
    # packaged value of a key it lacks
    packaged = _packaged()
    values = {
        n: dask.config.get(
            f"{SECTION}.{n.replace('_', '-')}", default=packaged[n.replace("_", "-")]
        )
        for n in names
    }
    sources = {
        n: f" (from the dask config {SECTION}.{n.replace('_', '-')}: a config file or "
        f"DASK_{SECTION.upper()}__{n.upper()})"
        for n in names
    }
    return values, sources


def _plain(value: Any) -> Any:
    """Tuples as lists, mappings as dicts, recursively (for YAML and JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# Checks: (name, raw value) -> value, or ValueError naming the setting
# --------------------------------------------------------------------------------------


def _choice(*allowed: str):
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            shown = ", ".join(map(repr, allowed))
            raise ValueError(f"{name} must be one of {shown}, not {value!r}")
        return value

    return check


def _parsed(value: Any) -> Any:
    """A string from the environment as YAML (``[ees, ies]``, ``{a: [[0, 30]]}``); else as is."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _subset(allowed: tuple[str, ...]):
    """A non-empty sequence of distinct ``allowed`` names (or one comma-separated string)."""

    def check(name: str, value: Any) -> tuple[str, ...]:
        items = _parsed(value)
        items = items.split(",") if isinstance(items, str) else items
        try:
            out = tuple(str(v).strip() for v in items)
        except TypeError:
            out = ()
        bad = [v for v in out if v not in allowed]
        if not out or bad or len(set(out)) != len(out):
            shown = ", ".join(map(repr, allowed))
            raise ValueError(
                f"{name} must be distinct names among {shown} (at least one), not {value!r}"
            )
        return out

    return check


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _boolean(optional: bool = False):
    def check(name: str, value: Any) -> bool | None:
        if value is None and optional:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        allowed = "true or false" + (" (or null: automatic)" if optional else "")
        raise ValueError(f"{name} must be {allowed}, not {value!r}")

    return check


def _as_number(value: Any, kind: type) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        if kind is int:
            return int(value) if float(value).is_integer() else None
        return float(value)
    return None


def _integer(minimum: int, *, optional: bool = False):
    def check(name: str, value: Any) -> int | None:
        if value is None and optional:
            return None
        n = _as_number(value, int)
        if n is None or n < minimum:
            extra = " (or null)" if optional else ""
            raise ValueError(f"{name} must be an integer >= {minimum}{extra}, not {value!r}")
        return n

    return check


def _real(low: float, *, inclusive: bool, high: float | None = None, optional: bool = False):
    def check(name: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        x = _as_number(value, float)
        ok = x is not None and not math.isnan(x) and (x >= low if inclusive else x > low)
        if ok and high is not None:
            ok = x <= high
        if not ok:
            if high is not None:
                bound = f"a number within [{low:g}, {high:g}]"
            else:
                bound = f"a number {'>=' if inclusive else '>'} {low:g}"
            raise ValueError(
                f"{name} must be {bound}{' (or null)' if optional else ''}, not {value!r}"
            )
        return x

    return check


def _timeout(name: str, value: Any) -> float | None:
    """Seconds > 0; ``None`` (yaml ``null``) or infinity: no bound."""
    x = _real(0.0, inclusive=False, optional=True)(name, value)
    if x is None:
        return None
    if math.isinf(x):
        return None
    return x


def _pair(name: str, value: Any, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    parsed = _parsed(value)
    if isinstance(parsed, str):
        parsed = parsed.lower().replace("x", ":").split(":")
    try:
        a, b = (float(v) for v in parsed)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what} (or null), not {value!r}") from None
    return a, b


def _pad_energy(name: str, value: Any) -> tuple[float, float] | None:
    what = "[lo, hi] in eV with 0 <= lo < hi"
    pair = _pair(name, value, what)
    if pair is not None and not (0 <= pair[0] < pair[1] < math.inf):
        raise ValueError(f"{name} must be {what} (or null), not {value!r}")
    return pair


def _figsize(name: str, value: Any) -> tuple[float, float] | None:
    what = "[width, height] in inches, both > 0"
    pair = _pair(name, value, what)
    if pair is not None and not (0 < pair[0] < math.inf and 0 < pair[1] < math.inf):
        raise ValueError(f"{name} must be {what} (or null), not {value!r}")
    return pair


def _categories(name: str, value: Any) -> dict[str, tuple[tuple[float, float], ...]]:
    value = _parsed(value)
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(
            f"{name} must be a mapping name: [[lo, hi], ...] in degrees (or null), not {value!r}"
        )
    try:
        if value is not None:
            value = {str(k): tuple(tuple(r) for r in v) for k, v in value.items()}
        return normalize_categories(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


_CHECKS = {
    "flush_batch_size": _integer(1),
    "log_flush_batch_size": _integer(1, optional=True),
    "flush_interval_seconds": _real(0.0, inclusive=False, optional=True),
    "max_workers": _integer(1, optional=True),
    "window": _integer(1, optional=True),
    "worker_wait": _real(0.0, inclusive=True, optional=True),
    "progress_bar": _boolean(optional=True),
    "orbit_timeout_seconds": _timeout,
    "instrument_timeout_seconds": _timeout,
    "ignore_progress_json": _boolean(),
    "overwrite": _boolean(),
    "instrument_order": _subset(INSTRUMENTS),
    "products": _subset(PRODUCTS),
    "max_processing_percentile": _real(0.0, inclusive=True, high=100.0),
    "compute_mins": _boolean(),
    "variable": _choice(*SOURCE_VARIABLE),
    "categories": _categories,
    "retrace": _boolean(),
    "pad_energy": _pad_energy,
    "y_scale": _choice(*SCALES),
    "z_scale": _choice(*SCALES),
    "squeeze_gaps_minutes": _real(0.0, inclusive=True),
    "pad_shift90": _boolean(),
    "engine": _choice(*ENGINES),
    "dpi": _real(0.0, inclusive=False),
    "figsize": _figsize,
    "figure_format": _choice(*FORMATS),
}
