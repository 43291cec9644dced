"""Former home of the persistent state, kept so that existing imports keep working.

The code lives in :mod:`fastspectro_dask.atomic` (the atomic writer, corrupt files, the
lock), :mod:`fastspectro_dask.progress` (the progress JSON) and
:mod:`fastspectro_dask.ledger` (the extrema ledger and its journal).
"""

from fastspectro_dask.atomic import (  # noqa: F401
    StateLock,
    StateLockedError,
    atomic_write_json,
    load_json_state,
    move_aside,
    remove_stale_temporaries,
)
from fastspectro_dask.progress import (  # noqa: F401
    PROGRESS_SCHEMA,
    PROGRESS_VERSION,
    RETRYABLE_REASONS,
    ProgressStore,
    file_fingerprint,
)
