"""benchmarks/fuzz_kill.py, three trials: kill -9 of a whole ``fastspectro plot`` run at
random moments, each followed by a resume (issue 13). Whatever the moment, the state
parses, at most the bound is redone, the resumed figures are byte-identical to an
uninterrupted run's and no temporary file is left."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _fuzz_kill():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz_kill.py"
    spec = importlib.util.spec_from_file_location("fuzz_kill", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill9_at_random_moments_then_resume(tmp_path):
    fuzz = _fuzz_kill()
    results, wall = fuzz.run_trials(3, seed=13, orbits=5, workdir=tmp_path, progress=False)
    print(fuzz.table(results))
    assert wall > 0 and len(results) == 3
    for t in results:
        assert t.json_state in ("yes", "absent"), t
        assert t.done_on_disk and t.lost <= t.bound, t
        assert t.resume_code == 0 and t.identical, t
        assert t.tmp_left == 0, t
