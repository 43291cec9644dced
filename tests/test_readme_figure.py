"""The README's example figure is what ``fastspectro demo`` draws today (golden image).

It is also an end-to-end regression test of the figures: synthetic data (seed fixed) ->
exact extrema -> reduction -> render, through the command a new user runs. The baseline
was written by the command below; after an intended change of the figures, run it again
and copy the figure over ``tests/baseline/`` (the README shows that file).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BASELINE = Path(__file__).parent / "baseline" / "demo_13616_instruments_y-log_z-log.png"
COMMAND = [
    *("demo", "--orbits", "1", "--y-scale", "log", "--z-scale", "log"),
    *("--products", "instruments", "--max-workers", "1", "--no-report"),
]
#: RMS difference (0-255 scale) allowed: text and antialiasing noise across platforms stays
#: well below it; keeping the retrace channel, for example, differs by ~15.
TOLERANCE = 4.0


@pytest.mark.slow
def test_demo_draws_the_readme_figure(tmp_path):
    import numpy as np
    from matplotlib.testing.compare import calculate_rms
    from PIL import Image

    res = subprocess.run(
        [sys.executable, "-m", "fastspectro_dask.cli", *COMMAND[:1], str(tmp_path), *COMMAND[1:]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (figure,) = (tmp_path / "figures").rglob("13616_instruments_y-log_z-log.png")
    got = np.asarray(Image.open(figure).convert("RGB"), dtype=float)
    want = np.asarray(Image.open(BASELINE).convert("RGB"), dtype=float)
    assert got.shape == want.shape
    rms = calculate_rms(want, got)
    assert rms <= TOLERANCE, (
        f"the demo's figure differs from {BASELINE.name} (RMS {rms:.2f}); if intended, "
        f"regenerate: fastspectro {' '.join(COMMAND[:1])} OUT {' '.join(COMMAND[1:])}"
    )
