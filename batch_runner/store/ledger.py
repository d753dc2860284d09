"""The append-only JSONL ledger: building records, replaying them, and the one writer.

A job's state is its last record. Every line is read by a real JSON parser
(msgspec), never picked apart by pattern. Replay is pure and forgiving: a line
that is not a JSON object (a torn write left by a crash) is skipped with a
warning naming its byte offset, and never hides the lines around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgspec

from batch_runner.errors import LedgerError
from batch_runner.jsontext import loads
from batch_runner.manifest.keys import job_key
from batch_runner.models import JobSpec, JobStatus
from batch_runner.redact import Redactor
from batch_runner.store.images import legacy_stem
from batch_runner.store.jobmap import (
    FAILED,
    GENERATED,
    SUBMITTED,
    SUCCEEDED,
    JobCodes,
    KeyedMap,
    SucceededJobs,
)
from batch_runner.store.params import ParamsIndex

_KNOWN_STATUSES = frozenset(s.value for s in JobStatus)
#: fields of free text from outside (the API, exceptions): the only ones redacted
FREE_TEXT_FIELDS = frozenset(("msg",))
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

log = logging.getLogger("batch_runner.store.ledger")

#: called with each record once it is written (see LedgerWriter)
OnRecord = Callable[[dict[str, Any]], object]
#: called, in ledger order, with each record as appended, its line, and the
#: ledger's size once the line is written (see LedgerWriter `after_write`)
AfterWrite = Callable[[Mapping[str, Any], bytes, int], None]


_RECORD_ENCODER = msgspec.json.Encoder()


class RecordHead(msgspec.Struct, frozen=True, gc=False):
    """The fields of a record that replay and the reports read. The parser checks
    the whole line but builds only these; meta and the rest are skipped.
    Every field is `Any`: a hand-edited value of an odd type is the reader's call."""

    job_id: Any = None
    status: Any = None
    taskid: Any = None
    ts: Any = None
    stage: Any = None
    msg: Any = None
    files: Any = None
    url: Any = None
    attempts: Any = None
    run: Any = None
    uncertain: Any = None
    # what was sent, to notice a job edited since (ParamsIndex)
    prompt: Any = None
    resolution: Any = None
    seed: Any = None
    prompt_extend: Any = None


_HEAD_DECODER = msgspec.json.Decoder(RecordHead)
_HEAD_FIELDS = RecordHead.__struct_fields__


def decode_head(raw: bytes) -> RecordHead:
    """The head of the JSON object on `raw`; raises ValueError if it is not one
    (a torn or hand-broken line)."""
    try:
        return _HEAD_DECODER.decode(raw)
    except msgspec.DecodeError:
        # what msgspec refuses but json reads (NaN in meta, a lone surrogate)
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object") from None
        return RecordHead(**{name: record.get(name) for name in _HEAD_FIELDS})


def read_head(raw: bytes) -> RecordHead | None:
    """The head of the record on one line, or None if the line is unreadable or
    not a record (no job id, unknown status)."""
    try:
        head = decode_head(raw)
    except (ValueError, RecursionError):
        return None
    if isinstance(head.job_id, str) and head.job_id and head.status in _KNOWN_STATUSES:
        return head
    return None


def utc_now_iso() -> str:
    """ISO-8601 with an explicit UTC offset, millisecond precision: what
    `datetime.now(UTC).isoformat(timespec="milliseconds")` gives, at a
    quarter of its cost (three records per job take one each)."""
    global _second_text
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    second, text = _second_text
    if seconds != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_text = (seconds, text)
    return f"{text}.{nanos // 1_000_000:03d}+00:00"


#: the last second `utc_now_iso` formatted, and its text
_second_text: tuple[int, str] = (-1, "")


def make_record(
    job: JobSpec,
    status: JobStatus,
    *,
    taskid: str | None = None,
    urls: Sequence[str] | None = None,
    code: int | None = None,
    msg: str = "",
    files: Sequence[str] | None = None,
    stage: str | None = None,
    attempts: int | None = None,
    uncertain: int = 0,
    run: str | None = None,
    ts: str | None = None,
) -> dict[str, Any]:
    """One ledger line: the outcome plus the whole job, so the ledger can rebuild it."""
    record: dict[str, Any] = {
        "job_id": job.job_id,
        "status": status.value,
        "taskid": taskid,
        "url": list(urls) if urls else None,
        "code": code,
        "msg": msg,
        "ts": ts or utc_now_iso(),
        "prompt": job.prompt,
        "resolution": job.resolution,
        "seed": job.seed,
        # null when the job never set it: the API was sent nothing, not "0"
        "prompt_extend": job.prompt_extend,
        "meta": dict(job.meta),
    }
    if files is not None:
        record["files"] = list(files)
    if stage is not None:
        record["stage"] = stage
    if attempts is not None:
        record["attempts"] = attempts
    if uncertain:
        # submit attempts whose answer was lost: each may have created a task
        record["uncertain"] = uncertain
    if run is not None:
        record["run"] = run
    return record


def redact_outcome(record: Mapping[str, Any], redact: Redactor) -> dict[str, Any]:
    """The record with secrets redacted from its free text (`msg`: what the API
    or an exception said, which may echo the request). Everything else is kept
    exactly: the job is the user's data, and ids, file names, URLs and taskids
    are needed verbatim to resume."""
    return {
        key: redact(value)
        if key in FREE_TEXT_FIELDS and isinstance(value, str)
        else value
        for key, value in record.items()
    }


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One ledger line: compact JSON, UTF-8, keys in the record's order, "\\n".

    msgspec writes the same bytes as the standard library's compact encoder
    (integers of any size included) in about a tenth of the time, and a run
    writes three lines per job; what it refuses goes to the standard library
    as before. One difference: a NaN or infinite number is written as null
    (valid JSON)."""
    try:
        return _RECORD_ENCODER.encode(record) + b"\n"
    except (TypeError, ValueError):
        return (_ENCODER.encode(record) + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class FailedJob:
    """What the last "failed" record said; `stage` tells if a resubmit is needed."""

    taskid: str | None
    stage: str | None
    msg: str


@dataclass(frozen=True, slots=True)
class GeneratedJob:
    """A finished task whose images are not on disk yet: where to fetch them."""

    taskid: str | None
    urls: tuple[str, ...]


def _urls(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(u for u in value if isinstance(u, str) and u)
    return ()


def is_generated(record: Mapping[str, Any]) -> bool:
    """Whether a record leaves its images to fetch: "generated", or "succeeded"
    with an empty `files` list and URLs (what --no-download wrote before
    "generated" existed)."""
    return _leaves_images(
        record.get("status"), record.get("files"), _urls(record.get("url"))
    )


def head_is_generated(head: RecordHead) -> bool:
    """`is_generated` for a record read with `read_head`."""
    return _leaves_images(head.status, head.files, _urls(head.url))


def _leaves_images(status: Any, files: Any, urls: tuple[str, ...]) -> bool:
    if status == JobStatus.GENERATED:
        return True
    return status == JobStatus.SUCCEEDED and files == [] and bool(urls)


class ResumeState:
    """Each job's last known state, folded from the ledger in order.

    Kept by job key (`manifest.keys`), not id string: a state code per job
    (`jobs`), and for the few jobs with more to say, dicts that answer by id
    (`submitted`, `failed`, `generated`). `succeeded` is a read-only set of
    ids (membership, size, equality).
    """

    __slots__ = (
        "failed",
        "generated",
        "jobs",
        "legacy_stems",
        "params",
        "records",
        "submitted",
        "succeeded",
        "warnings",
    )

    def __init__(self) -> None:
        self.jobs = JobCodes()
        self.succeeded = SucceededJobs(self.jobs)
        self.submitted: KeyedMap[str] = KeyedMap()
        self.failed: KeyedMap[FailedJob] = KeyedMap()
        self.generated: KeyedMap[GeneratedJob] = KeyedMap()
        self.records = 0
        self.warnings: list[str] = []
        #: image file stems an old run dir gave a job's second and later
        #: images (`<id>-<k>`), each -> the job that owns it; see
        #: store.images.image_stem
        self.legacy_stems: dict[str, str] = {}
        #: what each job was last run with, to notice edited jobs
        self.params = ParamsIndex()

    def apply(self, record: Mapping[str, Any]) -> None:
        """Fold one record in; later records override earlier ones."""
        self.apply_head(RecordHead(**{name: record.get(name) for name in _HEAD_FIELDS}))

    def apply_head(self, head: RecordHead) -> None:
        """`apply` for a record read with `decode_head`; raises ValueError
        (and changes nothing) for a line that is not a record."""
        job_id = head.job_id
        status = head.status
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("record has no job_id")
        taskid = head.taskid
        taskid = taskid if isinstance(taskid, str) and taskid else None
        code = _CODES.get(status) if isinstance(status, str) else None
        if code is None:
            raise ValueError(f"unknown status {status!r}")
        if code == SUBMITTED and taskid is None:
            raise ValueError("submitted record without a taskid")
        files = head.files
        if code == SUCCEEDED and type(files) is list and files:
            urls: tuple[str, ...] = ()  # images on disk: the URLs are not needed
        else:
            urls = _urls(head.url)
            if code == GENERATED and not urls and taskid is None:
                raise ValueError("generated record without URLs or a taskid")
            # an old --no-download "succeeded" never fetched its images: work left
            if _leaves_images(status, files, urls):
                code = GENERATED
        self.records += 1
        key = job_key(job_id)
        self.params.note_key(
            key, head.prompt, head.resolution, head.seed, head.prompt_extend
        )
        old = self.jobs.set(key, code)
        if old is not None and old != SUCCEEDED:
            self.drop_details(key, old)
        if code == SUCCEEDED:
            # only several images per job were ever named apart from the job id
            if isinstance(files, list) and len(files) > 1:
                self._note_legacy_names(job_id, files)
        elif code == SUBMITTED:
            assert taskid is not None
            self.submitted.put(key, job_id, taskid)
        elif code == GENERATED:
            self.generated.put(key, job_id, GeneratedJob(taskid=taskid, urls=urls))
        else:
            stage = head.stage
            self.failed.put(
                key,
                job_id,
                FailedJob(
                    taskid=taskid,
                    stage=stage if isinstance(stage, str) else None,
                    msg=str(head.msg or ""),
                ),
            )

    def drop_details(self, key: int, code: int) -> None:
        """Forget what a job's old state (`code`) kept beside its code."""
        if code == SUBMITTED:
            self.submitted.discard(key)
        elif code == FAILED:
            self.failed.discard(key)
        else:
            self.generated.discard(key)

    def _note_legacy_names(self, job_id: str, files: list[Any]) -> None:
        for file in files:
            if isinstance(file, str):
                stem = legacy_stem(job_id, file)
                if stem is not None:
                    self.legacy_stems.setdefault(stem, job_id)

    def status_of(self, job_id: str) -> JobStatus | None:
        return _STATUSES.get(self.jobs.get(job_key(job_id)) or 0)


_CODES = {
    JobStatus.SUCCEEDED.value: SUCCEEDED,
    JobStatus.SUBMITTED.value: SUBMITTED,
    JobStatus.FAILED.value: FAILED,
    JobStatus.GENERATED.value: GENERATED,
}
_STATUSES = {code: JobStatus(status) for status, code in _CODES.items()}


def replay(lines: Iterable[bytes], *, name: str = "ledger") -> ResumeState:
    """Fold raw ledger lines (with their newlines) into a ResumeState. Pure.

    Bad lines are skipped with a warning giving their byte offset; the only
    way to lose a record is for it never to have been written whole.
    """
    state = ResumeState()
    _fold_lines(state, lines, 0, name)
    return state


def _fold_lines(
    state: ResumeState, lines: Iterable[bytes], offset: int, name: str
) -> None:
    """`replay` of `lines`, the first of which starts at byte `offset`."""
    for raw in lines:
        start = offset
        offset += len(raw)
        if not raw.strip():
            continue
        try:
            state.apply_head(decode_head(raw))
        except (ValueError, RecursionError) as exc:
            _warn_unreadable(state, name, start, raw, exc)


def _warn_unreadable(
    state: ResumeState, name: str, start: int, raw: bytes, exc: BaseException
) -> None:
    torn = "" if raw.endswith(b"\n") else " (torn last line)"
    state.warnings.append(
        f"{name}: skipped unreadable line at byte {start}{torn}: {exc}"
    )


def replay_file(
    stream: Readable,
    *,
    name: str = "ledger",
    state: ResumeState | None = None,
    start: int = 0,
    freeze: bool = True,
) -> ResumeState:
    """`replay` of a whole ledger file, decoded a block of lines at a time; or,
    given `state`, of the rest of one (from byte `start`, where `stream`
    stands), folded into that state."""
    if state is None:
        state = ResumeState()
    for at, block in _blocks(stream, start):
        heads = _decode_block(block)
        if heads is None:
            _fold_lines(state, _lines(block), at, name)
            continue
        bad = _fold_heads(state, heads)
        if bad is not None:
            # a head that is no record: name its line, go on after it
            n, exc = bad
            lines = _lines(block)
            offset = at + sum(map(len, lines[:n]))
            _warn_unreadable(state, name, offset, lines[n], exc)
            _fold_lines(state, lines[n + 1 :], offset + len(lines[n]), name)
    if freeze:
        state.jobs.freeze()
    return state


def _fold_heads(
    state: ResumeState, heads: list[RecordHead]
) -> tuple[int, ValueError] | None:
    """Fold decoded heads in, taking the common records (a derived id's
    "submitted" with its taskid, or "succeeded" with its one image) without
    `apply_head`'s general code. Stops at the first head that is not a
    record: returns its index and why."""
    codes = state.jobs.codes
    submitted = state.submitted
    apply = state.apply_head
    plain = 0
    for n, head in enumerate(heads):
        job_id = head.job_id
        status = head.status
        if (
            type(job_id) is str
            and len(job_id) == 16
            and not job_id.strip(_HEX)
            and (status == "succeeded" or status == "submitted")
        ):
            if status == "succeeded":
                files = head.files
                if type(files) is list and len(files) == 1:
                    key = int(job_id, 16)
                    old = codes.get(key)
                    codes[key] = SUCCEEDED
                    if old is not None and old != SUCCEEDED:
                        state.drop_details(key, old)
                    plain += 1
                    continue
            else:
                taskid = head.taskid
                if type(taskid) is str and taskid:
                    key = int(job_id, 16)
                    old = codes.get(key)
                    codes[key] = SUBMITTED
                    if old is not None and old != SUCCEEDED:
                        state.drop_details(key, old)
                    submitted.put(key, job_id, taskid)
                    plain += 1
                    continue
        try:
            apply(head)
        except ValueError as exc:
            state.records += plain
            return n, exc
    state.records += plain
    return None


#: the digits of a derived id
HEX_DIGITS = _HEX = "0123456789abcdef"


def _lines(block: bytes) -> list[bytes]:
    """The lines of `block` with their newlines, as iterating a file gives them."""
    parts = block.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


class Readable(Protocol):
    """What the block readers need of a stream."""

    def read(self, size: int = -1, /) -> bytes: ...


class Bounded:
    """The next `limit` bytes of a stream, and no more."""

    __slots__ = ("_left", "_stream")

    def __init__(self, stream: Readable, limit: int) -> None:
        self._stream = stream
        self._left = max(0, limit)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        data = self._stream.read(size) if size else b""
        self._left -= len(data)
        return data


#: ledger bytes read and decoded at a time
_BLOCK_BYTES = 1 << 16


def _blocks(stream: Readable, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """The stream in blocks of whole lines (the last may lack its newline),
    each with the offset it starts at (the stream's first byte is at `offset`)."""
    rest = b""
    size = _BLOCK_BYTES
    while data := stream.read(size):
        data = rest + data if rest else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            size *= 2  # one long line: read on in ever larger steps
            continue
        size = _BLOCK_BYTES
        yield offset, data[:cut]
        offset += cut
        rest = data[cut:]
    if rest:
        yield offset, rest


def _decode_block(block: bytes) -> list[RecordHead] | None:
    """The heads of every line of `block` in one call, or None if the block
    must go line by line.

    msgspec reads a block as a sequence of JSON values, which would also take
    two objects on one line, or one across two: so a block is taken whole
    only if each line starts with "{" and ends with "}" (and so every newline
    sits between "}" and "{", which within a JSON value cannot happen) and
    there are as many values as lines.
    """
    lines = block.count(b"\n")
    if (
        not block.startswith(b"{")
        or not block.endswith(b"}\n")
        or block.count(b"}\n{") != lines - 1
    ):
        return None
    try:
        heads = _HEAD_DECODER.decode_lines(block)
    except msgspec.DecodeError:
        return None
    return heads if len(heads) == lines else None


def read_ledger(path: Path) -> ResumeState:
    """Replay the ledger file; a missing file is an empty ledger."""
    try:
        with path.open("rb") as fh:
            return replay_file(fh, name=str(path))
    except FileNotFoundError:
        return ResumeState()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc


def iter_head_blocks(
    path: Path, start: int = 0, stop: int | None = None
) -> Iterator[list[RecordHead | None]]:
    """The head of each non-blank line of a ledger (`read_head`), None for a
    line that is not a record, a block of lines at a time, from byte `start`
    (up to byte `stop`, if given); a missing file has none."""
    fh = open_ledger(path)
    if fh is None:
        return
    with fh:
        fh.seek(start)
        yield from head_blocks(fh if stop is None else Bounded(fh, stop - start))


def head_blocks(stream: Readable) -> Iterator[list[RecordHead | None]]:
    """`iter_head_blocks` of an open stream, from where it stands."""
    for _, block in _blocks(stream):
        heads = _decode_block(block)
        if heads is None:
            yield [read_head(raw) for raw in _lines(block) if raw.strip()]
        else:
            yield [
                head
                if isinstance(head.job_id, str)
                and head.job_id
                and head.status in _CODES
                else None
                for head in heads
            ]


class LedgerWriter:
    """The single writer: callers enqueue records, one task appends them in order.

    Each `append` returns once its line is written and flushed to the OS (and
    fsynced with `fsync=True`), so a SIGKILL right after cannot lose it. With
    `fsync=True`, lines that arrive together are written together: one write
    and one fsync (in a thread) cover a group. With `immediate=True` (and no
    fsync), `append` instead writes and flushes its line at once, without a hop
    through the writer task: one write of a few hundred bytes to the page cache
    costs less than the queue, futures and loop turns a group needs (see the
    README's Performance section). Either way the loop runs one write at a
    time, so lines never interleave. The run's ledger is immediate; its attempt
    log is not, because a caller's wait there is when the other jobs of a run
    stopped by a rejected key record their answers before they are cancelled.
    A writer with `on_record` is never immediate: the callback is user code and
    runs on the writer task, not inside the job that appended.

    `on_record`, if given, is called with each record after its line is
    written, in ledger order, on the event loop: a copy decoded from the line
    itself, so it sees exactly what the ledger holds and cannot change what a
    later record says. An exception it raises is logged and otherwise ignored:
    a caller's metrics must never stop the ledger.

    `secrets` are redacted, as whole tokens, from the free-text message of each
    record; the job's own fields (prompt, meta, ...) are written as given.

    `after_write`, if given, is called synchronously after each line is
    flushed, in ledger order, with the record, the line and the ledger's size
    after it: the package's own followers of the ledger (the metadata log) see
    every line at its byte offset without reading the file back. It must not
    raise.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = False,
        secrets: Sequence[str] = (),
        on_record: OnRecord | None = None,
        immediate: bool = False,
        after_write: AfterWrite | None = None,
    ) -> None:
        self.path = path
        self._after_write = after_write
        self._fsync = fsync
        # a caller's on_record runs on the writer task, as it always has: user
        # code (a library callback may even signal the process) must not run
        # inside the job that appended
        self._immediate = immediate and not fsync and on_record is None
        self._on_record = on_record
        self._redact = Redactor(secrets)
        self._queue: asyncio.Queue[
            tuple[Mapping[str, Any], bytes, asyncio.Future[None]] | None
        ] = asyncio.Queue()
        self._fh: BinaryIO | None = None
        #: the file's size: where the next line lands
        self._end = 0
        self._task: asyncio.Task[None] | None = None
        self.records_written = 0
        self._broken = False

    async def __aenter__(self) -> LedgerWriter:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("ab")
            # a crash can leave a line without its newline; start on a fresh one
            if fh.tell() > 0:
                with self.path.open("rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        fh.write(b"\n")
                        fh.flush()
            self._end = fh.tell()
        except OSError as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
        self._fh = fh
        self._task = asyncio.get_running_loop().create_task(
            self._drain(), name="ledger-writer"
        )

    async def append(self, record: Mapping[str, Any]) -> None:
        """Write one record; returns when it is flushed. Safe to cancel the caller:
        a record handed over is written even if the caller stops waiting."""
        if self._task is None or self._task.done() or self._broken:
            raise LedgerError("ledger writer is not running")
        if self._redact:
            record = redact_outcome(record, self._redact)
        line = encode_record(record)
        if self._immediate and self._queue.empty():
            self._write_now(record, line)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, line, fut))
        await asyncio.shield(fut)

    async def _drain(self) -> None:
        assert self._fh is not None
        fh = self._fh
        while True:
            item = await self._queue.get()
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            entries = [b for b in batch if b is not None]
            if entries:
                try:
                    fh.write(b"".join(line for _, line, _ in entries))
                    fh.flush()
                    if self._fsync:
                        await asyncio.to_thread(os.fsync, fh.fileno())
                except OSError as exc:
                    err = LedgerError(f"cannot append to ledger {self.path}: {exc}")
                    self._broken = True
                    for _, _, fut in entries:
                        if not fut.done():
                            fut.set_exception(err)
                    raise err from exc
                self.records_written += len(entries)
                self._written(entries)
                for _, _, fut in entries:
                    if not fut.done():
                        fut.set_result(None)
                if self._on_record is not None:
                    for _, line, _ in entries:
                        self._notify(self._on_record, line)
            if len(entries) != len(batch):
                return

    def _written(
        self, entries: list[tuple[Mapping[str, Any], bytes, asyncio.Future[None]]]
    ) -> None:
        """Move the end past a written group, telling `after_write` line by line."""
        for record, line, _ in entries:
            self._end += len(line)
            if self._after_write is not None:
                self._after_write(record, line, self._end)

    def _write_now(self, record: Mapping[str, Any], line: bytes) -> None:
        """Write and flush one line in the caller, with no await: nothing queued
        is ahead of it, and no other write can start before it is done."""
        assert self._fh is not None
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            err = LedgerError(f"cannot append to ledger {self.path}: {exc}")
            # every later append fails, as after a failed group write
            self._broken = True
            self._queue.put_nowait(None)
            raise err from exc
        self.records_written += 1
        self._end += len(line)
        if self._after_write is not None:
            self._after_write(record, line, self._end)
        if self._on_record is not None:
            self._notify(self._on_record, line)

    def _notify(self, on_record: OnRecord, line: bytes) -> None:
        record: dict[str, Any] = loads(line)
        try:
            on_record(record)
        except Exception:
            log.exception(
                "on_record callback raised for job %s (the run goes on)",
                record.get("job_id"),
            )

    async def close(self) -> None:
        """Write everything queued, then close the file."""
        if self._task is not None:
            if not self._task.done():
                self._queue.put_nowait(None)
            with contextlib.suppress(LedgerError):
                await asyncio.shield(self._task)
            self._task = None
        if self._fh is not None:
            fh, self._fh = self._fh, None
            if self._broken:
                # the failed write was raised to its caller; closing retries
                # the same bytes against the same full or broken disk
                with contextlib.suppress(OSError):
                    fh.close()
            else:
                fh.close()


def open_ledger(path: Path) -> BinaryIO | None:
    """A ledger (or any JSONL file) open for reading; None if there is no such
    file, LedgerError if it cannot be read: one rule for every reader."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc


def ledger_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of a ledger (or any JSONL file); a missing file has none."""
    fh = open_ledger(path)
    if fh is None:
        return
    with fh:
        yield from fh


def parse_record(raw: bytes) -> dict[str, Any] | None:
    """The record on one line, or None if it is unreadable or not a record."""
    try:
        record = loads(raw)
    except (ValueError, RecursionError):
        return None
    if (
        isinstance(record, dict)
        and isinstance(record.get("job_id"), str)
        and record["job_id"]
        and record.get("status") in _KNOWN_STATUSES
    ):
        return record
    return None


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every readable record of a ledger in order; unreadable lines are skipped
    (`read_ledger` reports them)."""
    for raw in ledger_lines(path):
        record = parse_record(raw)
        if record is not None:
            yield record


def recorded_params(ledger: Path, job_ids: Collection[str]) -> dict[str, int | None]:
    """The key of the parameters of each job's last record (None if unreadable
    or absent), for `job_ids` only: the few an edit check could not settle."""
    index = ParamsIndex(derived_too=True)
    for raw in ledger_lines(ledger):
        head = read_head(raw)
        if head is not None and head.job_id in job_ids:
            index.note(
                head.job_id, head.prompt, head.resolution, head.seed, head.prompt_extend
            )
    return {job_id: index.recorded(job_id) for job_id in job_ids}


def latest_records(path: Path) -> dict[str, dict[str, Any]]:
    """job_id -> its last record (its current state), in first-seen order."""
    latest: dict[str, dict[str, Any]] = {}
    for record in iter_records(path):
        latest[record["job_id"]] = record
    return latest
