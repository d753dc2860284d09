"""Images of a run whose directory is a bucket: each saved image goes up before
the runner records its job succeeded, then leaves the local disk."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from batch_runner.errors import StoreError, TransientApiError
from batch_runner.store.bucket import BucketRun


def bucket_publisher(bucket: BucketRun) -> Callable[[Path], Awaitable[None]]:
    """The runner's `publish` hook for `bucket`: upload, then delete locally, so
    a run is never staged on local disk."""

    async def publish(path: Path) -> None:
        rel = path.relative_to(bucket.state_dir).as_posix()
        try:
            await bucket.upload_image(path, rel)
        except StoreError as exc:
            # retried like a failed download (the file stays for the retry); in
            # the end a "download" failure, which --retry-failed fetches again
            # from the taskid, unpaid
            raise TransientApiError(str(exc)) from exc

    return publish
