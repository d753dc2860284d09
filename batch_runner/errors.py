"""The exception tree of the batch runner; this module imports nothing from the package.

BatchRunnerError
├── UsageError (also ValueError)       an option or argument is invalid: names it
│   └── MissingExtraError              an option needs an extra that is not installed
├── ManifestError (also ValueError)   bad input: file, line, field
│   └── ChangedJobsError               jobs edited since the ledger recorded them
├── LedgerError                        the ledger cannot be read or written
├── RunLockedError                     another run holds the run directory or ledger
├── TranscodeError                     a downloaded image cannot be re-encoded
├── StoreError                         an object store cannot be read or written
│   ├── StoreNotFoundError             the object does not exist
│   └── StoreExistsError               a create-only write found it there already
└── ApiError                           anything the API said or failed to say
    ├── TransientApiError              network, 429, 5xx, bad body, 9999: retry
    │   └── TaskNotFoundError          a poll for a taskid the server does not know
    ├── PermanentApiError              other 4xx, a failed task: no retry
    ├── InsufficientCreditsError       code 9000: stop submitting, keep polling
    └── AuthError                      the key was rejected: stop the run
"""

from __future__ import annotations


class BatchRunnerError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(BatchRunnerError, ValueError):
    """An option or argument is invalid (the CLI exits 2); names the option."""


class MissingExtraError(UsageError):
    """An option needs an optional dependency (a pip extra) that is not installed.

    Raised before anything is sent, so the run can be fixed and started again
    without cost.
    """


class ManifestError(BatchRunnerError, ValueError):
    """A manifest cannot be turned into jobs; names the file, the line and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field:
            return f"{where}: field '{self.field}': {self.message}"
        return f"{where}: {self.message}"


class ChangedJobsError(ManifestError):
    """Manifest jobs whose parameters differ from the ledger's last record of
    their ids; `job_ids` are the first few, `count` how many there are."""

    def __init__(
        self, message: str, *, path: str, job_ids: tuple[str, ...], count: int
    ) -> None:
        self.job_ids = job_ids
        self.count = count
        super().__init__(message, path=path)


class LedgerError(BatchRunnerError):
    """The ledger file cannot be opened, read or appended to."""


class RunLockedError(BatchRunnerError):
    """Another live process holds the lock on this run directory or its ledger."""


class TranscodeError(BatchRunnerError):
    """A downloaded image cannot be decoded or re-encoded in the asked format."""


class StoreError(BatchRunnerError):
    """An object store (the run's bucket) cannot be reached, read or written."""


class StoreNotFoundError(StoreError):
    """The object does not exist."""


class StoreExistsError(StoreError):
    """A create-only write found the object already there."""


class ApiError(BatchRunnerError):
    """The API failed or answered something other than success.

    `code` is the envelope code when there was one, `http_status` the HTTP status
    when a response arrived at all.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.http_status = http_status
        super().__init__(message)


class TransientApiError(ApiError):
    """A failure that may go away if the same request is sent again later."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = True,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status)
        #: seconds the server asked us to wait (Retry-After), if it said
        self.retry_after = retry_after
        #: False only when we know the request never left (connection refused):
        #: a submit that may have reached the server may also have been billed.
        self.maybe_sent = maybe_sent


class TaskNotFoundError(TransientApiError):
    """The server does not know the taskid (expired, or never created)."""


class PermanentApiError(ApiError):
    """The request or the task failed in a way that retrying will not fix."""


class InsufficientCreditsError(ApiError):
    """Envelope code 9000: the account is out of credits."""


class AuthError(ApiError):
    """HTTP 401/403 or a body saying the key is invalid."""
