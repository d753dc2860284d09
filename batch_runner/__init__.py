"""Resumable asyncio batch runner for the TensorsLab Z-Image text-to-image API.

    import batch_runner
    result = batch_runner.run_batch_sync(["a lighthouse at dawn"], out="runs/demo",
                                         mock=True)
    print(result.succeeded, result.exit_code)

`run_batch` (async) / `run_batch_sync` run or resume a batch, `plan` is a dry
run, `status` and `records` read a run directory. Every error raised on purpose
is a `BatchRunnerError`. The package logs to the `batch_runner` logger only.
"""

import logging
from typing import TYPE_CHECKING, Any

from batch_runner.errors import (
    ApiError,
    AuthError,
    BatchRunnerError,
    ChangedJobsError,
    InsufficientCreditsError,
    LedgerError,
    ManifestError,
    MissingExtraError,
    PermanentApiError,
    RunLockedError,
    StoreError,
    StoreExistsError,
    StoreNotFoundError,
    TaskNotFoundError,
    TranscodeError,
    TransientApiError,
    UsageError,
)
from batch_runner.exit_codes import ExitCode
from batch_runner.models import JobSpec, JobStatus

if TYPE_CHECKING:
    from batch_runner.engine.result import Plan, RunResult
    from batch_runner.engine.run import run_batch, run_batch_sync
    from batch_runner.engine.sharding import Shard
    from batch_runner.engine.stop import StopReason
    from batch_runner.engine.survey import plan
    from batch_runner.outputs.merge import (
        MergeConflictError,
        MergeError,
        MergeTargetError,
    )
    from batch_runner.outputs.query import records, status
    from batch_runner.outputs.report import RunStatus
    from batch_runner.store.snapshot import snapshot_run

#: the rest of the API, imported when first used: `status` or a dry run must
#: not pay for aiohttp and the simulator (a second of a million-job plan)
_LAZY = {
    "Plan": "batch_runner.engine.result",
    "RunResult": "batch_runner.engine.result",
    "run_batch": "batch_runner.engine.run",
    "run_batch_sync": "batch_runner.engine.run",
    "Shard": "batch_runner.engine.sharding",
    "StopReason": "batch_runner.engine.stop",
    "plan": "batch_runner.engine.survey",
    "MergeConflictError": "batch_runner.outputs.merge",
    "MergeError": "batch_runner.outputs.merge",
    "MergeTargetError": "batch_runner.outputs.merge",
    "records": "batch_runner.outputs.query",
    "status": "batch_runner.outputs.query",
    "RunStatus": "batch_runner.outputs.report",
    "snapshot_run": "batch_runner.store.snapshot",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"
__all__ = [
    "ApiError",
    "AuthError",
    "BatchRunnerError",
    "ChangedJobsError",
    "ExitCode",
    "InsufficientCreditsError",
    "JobSpec",
    "JobStatus",
    "LedgerError",
    "ManifestError",
    "MergeConflictError",
    "MergeError",
    "MergeTargetError",
    "MissingExtraError",
    "PermanentApiError",
    "Plan",
    "RunLockedError",
    "RunResult",
    "RunStatus",
    "Shard",
    "StopReason",
    "StoreError",
    "StoreExistsError",
    "StoreNotFoundError",
    "TaskNotFoundError",
    "TranscodeError",
    "TransientApiError",
    "UsageError",
    "__version__",
    "plan",
    "records",
    "run_batch",
    "run_batch_sync",
    "snapshot_run",
    "status",
]

# a library does not decide where its logs go: without this, Python's
# last-resort handler would print our warnings to stderr of any program using us
logging.getLogger("batch_runner").addHandler(logging.NullHandler())
