"""Gap-squeezed UT axes: the passes of an orbit fill the width, gaps become narrow breaks.

A FAST orbit (~130 min) holds a few passes of data; on a whole-orbit axis most of a figure
is blank. :class:`TimeAxis` maps UT (unix seconds) to an axis coordinate in which every
data gap longer than a threshold is cut out and replaced by a narrow marked break. All
rows of a figure share one :class:`TimeAxis`, so they share its segments; tick labels are
true UT on every segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

__all__ = ["DEFAULT_SQUEEZE_MINUTES", "TimeAxis"]

#: Data gaps longer than this many minutes are squeezed out of a figure's UT axis.
DEFAULT_SQUEEZE_MINUTES = 5.0

#: Tick steps in seconds, from 1 s to 6 h.
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)
#: Width of one break, as a fraction of the drawn data span.
BREAK_FRACTION = 0.012


@dataclass(frozen=True)
class TimeAxis:
    """A piecewise-linear map from UT to an axis coordinate, gaps squeezed out.

    Parameters
    ----------
    segments : tuple of (start, end)
        Disjoint, sorted UT intervals in unix seconds that are drawn at full scale.
    break_width : float
        Axis width of each break between two segments (axis units are seconds of data).
    """

    segments: tuple[tuple[float, float], ...]
    break_width: float = 0.0

    @classmethod
    def from_intervals(
        cls, intervals: Sequence[tuple[float, float]], squeeze_seconds: float | None
    ) -> TimeAxis:
        """Segments from the time intervals covered by data (e.g. each record's extent).

        Parameters
        ----------
        intervals : sequence of (start, end)
            Unix seconds; in any order, overlapping or not.
        squeeze_seconds : float or None
            Gaps longer than this become breaks; ``0`` or None keeps one segment from the
            first start to the last end (the whole axis).
        """
        iv = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
        iv = iv[np.isfinite(iv).all(axis=1)]
        if iv.size == 0:
            raise ValueError("no finite time interval to draw")
        iv = iv[np.argsort(iv[:, 0], kind="stable")]
        if not squeeze_seconds:
            return cls(((float(iv[:, 0].min()), float(iv[:, 1].max())),))
        ends = np.maximum.accumulate(iv[:, 1])
        new = np.concatenate([[True], iv[1:, 0] - ends[:-1] > squeeze_seconds])
        starts = iv[new, 0]
        last = np.flatnonzero(np.concatenate([new[1:], [True]]))
        segs = tuple(zip(starts.tolist(), ends[last].tolist(), strict=True))
        span = sum(b - a for a, b in segs)
        return cls(segs, BREAK_FRACTION * span if len(segs) > 1 else 0.0)

    @property
    def offsets(self) -> np.ndarray:
        """Axis coordinate of each segment's start."""
        widths = np.array([b - a for a, b in self.segments])
        return np.concatenate([[0.0], np.cumsum(widths + self.break_width)[:-1]])

    @property
    def extent(self) -> tuple[float, float]:
        """The axis limits: from the first segment's start to the last one's end."""
        a, b = self.segments[-1]
        return 0.0, float(self.offsets[-1] + (b - a))

    @property
    def breaks(self) -> list[tuple[float, float]]:
        """Axis intervals of the breaks between segments."""
        off = self.offsets
        return [
            (float(off[i] + (b - a)), float(off[i + 1]))
            for i, (a, b) in enumerate(self.segments[:-1])
        ]

    def to_axis(self, t: np.ndarray) -> np.ndarray:
        """Axis coordinates of unix times; a time inside a gap lands inside its break."""
        t = np.asarray(t, dtype=np.float64)
        xs, ys = [], []
        for (a, b), off in zip(self.segments, self.offsets, strict=True):
            xs += [a, b]
            ys += [off, off + (b - a)]
        x, y = np.array(xs), np.array(ys)
        out = np.interp(t, x, y)  # linear inside segments and across each break
        lo, hi = x[0], x[-1]  # beyond the ends: extend at full scale
        out = np.where(t < lo, y[0] + (t - lo), out)
        return np.where(t > hi, y[-1] + (t - hi), out)

    def ticks(self, width_inches: float, spacing_inches: float = 0.8) -> np.ndarray:
        """Tick times (unix seconds): one step for all segments, about one per spacing.

        Ticks closer than half a spacing to an earlier one (across a break) are dropped;
        a segment too short for a tick gets one at its middle, rounded to a second.
        """
        lo, hi = self.extent
        per_inch = (hi - lo) / max(width_inches, 1e-6)
        want = per_inch * spacing_inches
        step = next((s for s in _STEPS if s >= want), _STEPS[-1])
        min_gap = 0.5 * spacing_inches * per_inch
        picked: list[float] = []
        last = -np.inf
        for a, b in self.segments:
            cand = np.arange(np.ceil(a / step) * step, b + 1e-9, step)
            if cand.size == 0:
                cand = np.array([float(np.round((a + b) / 2))])
            for t in cand.tolist():
                x = float(self.to_axis(np.array([t]))[0])
                if x - last >= min_gap:
                    picked.append(t)
                    last = x
        return np.array(picked)

    def tick_labels(self, ticks: np.ndarray) -> list[str]:
        """``HH:MM`` labels, ``HH:MM:SS`` when a tick is not on a whole minute."""
        seconds = any(float(t) % 60 for t in ticks)
        fmt = "%H:%M:%S" if seconds else "%H:%M"
        return [datetime.fromtimestamp(float(t), tz=timezone.utc).strftime(fmt) for t in ticks]

    def drawn_ranges(self) -> list[list[str]]:
        """The segments as ``[start, end]`` ISO-8601 UTC strings (provenance)."""

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        return [[iso(a), iso(b)] for a, b in self.segments]
