"""A module that is slow to import: stands for a fresh sandbox child's start-up cost
(a Python interpreter importing numpy, matplotlib, distributed on a busy node)."""

from __future__ import annotations

import time

#: Seconds the import takes; longer than the timeouts the tests give the calls.
IMPORT_SECONDS = 4.0

time.sleep(IMPORT_SECONDS)


def quick() -> int:
    return 42
