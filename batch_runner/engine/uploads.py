"""The Api seam for a run whose directory is a bucket: each downloaded image goes
up to the bucket before the runner records its job succeeded."""

from __future__ import annotations

from pathlib import Path

from batch_runner.engine.runner import Api
from batch_runner.errors import StoreError, TransientApiError
from batch_runner.models import JobSpec
from batch_runner.store.bucket import BucketRun
from batch_runner.wire.client import DownloadedFile
from batch_runner.wire.protocol import PollResult, SubmitResult


class UploadingApi:
    """An Api whose downloads are uploaded to the bucket and then deleted
    locally, so a run is never staged on local disk."""

    def __init__(self, api: Api, bucket: BucketRun) -> None:
        self._api = api
        self._bucket = bucket

    async def submit(self, job: JobSpec) -> SubmitResult:
        return await self._api.submit(job)

    async def poll(self, taskid: str) -> PollResult:
        return await self._api.poll(taskid)

    async def download(self, url: str, images_dir: Path, stem: str) -> DownloadedFile:
        got = await self._api.download(url, images_dir, stem)
        rel = got.path.relative_to(self._bucket.state_dir).as_posix()
        try:
            await self._bucket.upload_image(got.path, rel)
        except StoreError as exc:
            # retried like a failed download; in the end a "download" failure,
            # which --retry-failed fetches again from the taskid, unpaid
            raise TransientApiError(str(exc), maybe_sent=False) from exc
        return got
