"""Where a run stands (`status`) and what failed (`failed`), read from the ledger.

Built for million-line ledgers: one streaming pass in which a JSON parser reads
each line's head (`store.ledger.read_head`: job id, status, stage, files, the
parameters, ..., skipping meta), keeping only a state code per job (and, with a
manifest, an 8-byte key of its parameters) and what the report needs, never the
records.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from batch_runner.manifest.key_cache import key_cache_path
from batch_runner.manifest.keys import DERIVED_LIMIT, job_key, key_id
from batch_runner.manifest.params import JobParams
from batch_runner.manifest.reader import (
    KeyedJobSink,
    ManifestSource,
    validate_manifest,
)
from batch_runner.outputs.audit import suspected_duplicate_submits
from batch_runner.store.audit_mark import (
    AuditMark,
    attempt_records,
    matches,
    merged,
    outcome_of,
)
from batch_runner.store.jobmap import (
    FAILED,
    GENERATED,
    SUBMITTED,
    SUCCEEDED,
    JobCodes,
)
from batch_runner.store.ledger import (
    HEX_DIGITS,
    RecordHead,
    head_blocks,
    head_is_generated,
    iter_head_blocks,
    iter_records,
    recorded_params,
)
from batch_runner.store.params import ParamsIndex
from batch_runner.store.rundir import RunDir
from batch_runner.store.snapshot import Totals, load_snapshot

_STATE_CODES = {
    "submitted": SUBMITTED,
    "succeeded": SUCCEEDED,
    "failed": FAILED,
    "generated": GENERATED,
}
_NAMES = {
    SUCCEEDED: "succeeded",
    GENERATED: "generated",
    FAILED: "failed",
    SUBMITTED: "submitted",
}

# What varies between messages of one cause: URLs, UUIDs, hex ids (with at least
# one digit and one letter, so words like "deadbeef" stay), then any number.
_REASON_MASKS = (
    (re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+"), "<url>"),
    (
        re.compile(
            r"(?<![0-9A-Za-z])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}"
            r"-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![0-9A-Za-z])"
        ),
        "<id>",
    ),
    (
        re.compile(
            r"(?<![0-9A-Za-z])(?=[0-9A-Fa-f]*[0-9])(?=[0-9A-Fa-f]*[A-Fa-f])"
            r"[0-9A-Fa-f]{8,}(?![0-9A-Za-z])"
        ),
        "<id>",
    ),
    (re.compile(r"[0-9]+(?:\.[0-9]+)?"), "<n>"),
)


def normalise_reason(msg: str) -> str:
    """`msg` with what differs between jobs failing for one cause (byte counts,
    task ids, URLs, numbers) masked, so such failures group together."""
    for pattern, mask in _REASON_MASKS:
        msg = pattern.sub(mask, msg)
    return msg


@dataclass(slots=True)
class RunStatus:
    """Totals by state; `pending` is known only when a manifest is given.

    With a manifest every total counts the manifest's jobs (succeeded + generated
    + failed + submitted + pending = total), and the ledger's jobs that the
    manifest does not have are counted apart in `other_jobs` and, by state, in
    `other`.
    """

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    submitted: int = 0
    #: tasks finished, images not downloaded yet (--no-download): the next run
    #: without the flag fetches them
    generated: int = 0
    pending: int | None = None
    #: with a manifest: its jobs whose parameters differ from their last
    #: record (counted under that record's state too); `run` refuses them
    #: unless --rerun-changed
    changed: int | None = None
    records: int = 0
    unreadable_lines: int = 0
    images_expected: int = 0
    images_on_disk: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    #: per (stage, normalised message): `msg` (normalised), `count`, and one
    #: real message as `example`
    failure_reasons: list[dict[str, Any]] = field(default_factory=list)
    suspected_duplicates: dict[str, int] = field(default_factory=dict)
    other_jobs: int = 0
    other: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The numbers `status --json` prints."""
        return asdict(self)

    to_json = to_dict


@dataclass(slots=True)
class _Scan:
    """What one pass over the ledger keeps: a state code per job (by job key,
    `manifest.keys`, packed once read: `JobCodes.freeze`) and little else."""

    states: JobCodes = field(default_factory=JobCodes)
    #: failed job -> (stage, message) of its last record
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: succeeded job -> how many files its last record names, where not one
    files_of: dict[int, int] = field(default_factory=dict)
    #: the audit fields of every record with `attempts`, when wanted
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    #: what each job was last run with, when a manifest is to be compared
    params: ParamsIndex | None = None
    #: the snapshot's audit of the lines before it, when the scan started there
    mark: AuditMark | None = None


def _scan(
    path: Path,
    status: RunStatus,
    *,
    audit: Path | None,
    params: bool,
    stop: int | None = None,
) -> _Scan:
    """One pass over the ledger (up to byte `stop`, if given); with a resume
    snapshot that matches it (`store.snapshot`), over its tail only, the
    snapshot standing for the rest. `audit`, the attempt log to audit the
    ledger's submits against: the snapshot is used only if its audit mark
    matches that log (`store.audit_mark`, kept in `scan.mark`); otherwise
    the audit needs every record."""
    scan = _Scan(params=ParamsIndex() if params else None)
    totals = Totals()
    snap = load_snapshot(path, stop=stop)
    if audit is not None and snap is not None:
        if stop is None and matches(snap.header.audit, audit):
            scan.mark = snap.header.audit
        else:
            snap = None
    start = 0
    if snap is not None:
        scan.states.load_packed(snap.packed, SUCCEEDED)
        with snap.reduced() as lines:
            # reduced lines keep no submit outcomes: the mark has their audit
            _fold_scan(scan, head_blocks(lines), False, Totals())
        h = snap.header
        totals = Totals(h.status_records, h.unreadable, h.first_ts, h.last_ts)
        start = h.ledger_end
    _fold_scan(scan, iter_head_blocks(path, start, stop), audit is not None, totals)
    status.records, status.unreadable_lines = totals.records, totals.unreadable
    status.first_ts, status.last_ts = totals.first_ts, totals.last_ts
    scan.states.freeze()
    states = scan.states
    status.images_expected = states.count(SUCCEEDED) + sum(
        n - 1 for key, n in scan.files_of.items() if states.get(key) == SUCCEEDED
    )
    return scan


def _fold_scan(
    scan: _Scan,
    blocks: Iterable[list[RecordHead | None]],
    audit: bool,
    totals: Totals,
) -> None:
    """Fold blocks of heads into `scan`, counting lines into `totals`."""
    states, failures, files_of = scan.states.codes, scan.failures, scan.files_of
    first_ts, last_ts = totals.first_ts, totals.last_ts
    records = unreadable = 0
    for heads in blocks:
        times = [h.ts for h in heads if h is not None and type(h.ts) is str]
        if times:
            low, high = min(times), max(times)
            if first_ts is None or low < first_ts:
                first_ts = low
            if last_ts is None or high > last_ts:
                last_ts = high
        for head in heads:
            if head is None:
                unreadable += 1
                continue
            records += 1
            job_id = head.job_id
            # the common record (a derived id's "submitted", or "succeeded"
            # with its one image) in few steps; parameters of derived ids are
            # not kept (ParamsIndex)
            if not audit and len(job_id) == 16 and not job_id.strip(HEX_DIGITS):
                code = _STATE_CODES[head.status]
                files = head.files
                if code == SUBMITTED or (
                    code == SUCCEEDED
                    and type(files) is list
                    and len(files) == 1
                    and type(files[0]) is str
                ):
                    key = int(job_id, 16)
                    states[key] = code
                    if failures:
                        failures.pop(key, None)
                    if files_of:
                        files_of.pop(key, None)
                    continue
            _note_head(scan, head, audit)
    totals.records += records
    totals.unreadable += unreadable
    totals.first_ts, totals.last_ts = first_ts, last_ts


def _note_head(scan: _Scan, head: RecordHead, audit: bool) -> None:
    """Fold one record of any kind into the scan."""
    job_id = head.job_id
    key = job_key(job_id)
    code = _STATE_CODES[head.status]
    if scan.params is not None:
        scan.params.note_key(
            key, head.prompt, head.resolution, head.seed, head.prompt_extend
        )
    scan.states.codes[key] = code
    if code == FAILED:
        scan.failures[key] = (str(head.stage or ""), str(head.msg or ""))
    elif scan.failures:
        scan.failures.pop(key, None)
    if code == SUCCEEDED:
        _note_files(scan, key, head)
    elif scan.files_of:
        scan.files_of.pop(key, None)
    if audit:
        outcome = outcome_of(head)
        if outcome is not None:
            scan.outcomes.append(outcome)


def _note_files(scan: _Scan, key: int, head: RecordHead) -> None:
    """A succeeded record: how many images it names (where not one)."""
    files = head.files
    count = 0
    if isinstance(files, list):
        count = sum(1 for f in files if isinstance(f, str))
    # an old --no-download "succeeded" left its images to fetch
    if not count and head_is_generated(head):
        scan.states.codes[key] = GENERATED
        scan.files_of.pop(key, None)
    elif count != 1:
        scan.files_of[key] = count
    elif scan.files_of:
        scan.files_of.pop(key, None)


class _ManifestCount(KeyedJobSink):
    """Counts the manifest's jobs by the state the ledger leaves them in:
    fed by `validate_manifest`. Jobs with derived ids are counted at the end
    all at once (`on_done`); the others one by one, noted in `counted`."""

    def __init__(
        self,
        states: JobCodes,
        params: ParamsIndex,
        keep: Callable[[str], bool] | None,
    ) -> None:
        self.states = states
        self.params = params
        self.keep = keep
        self.counts: Counter[int] = Counter()
        self.jobs = self.pending = self.changed = 0
        #: jobs counted one by one that the ledger has
        self.counted: set[int] = set()
        #: the derived ids' keys, once `on_done` has counted them
        self.derived: AbstractSet[int] = frozenset()
        self._deferred = 0
        #: jobs whose ledger parameters were not kept: job id -> manifest key
        self.unsettled: dict[str, int] = {}

    def on_job_keys(self, keys: list[int], /) -> None:
        if self.keep is not None:
            super().on_job_keys(keys)
        else:
            self.jobs += len(keys)
            self._deferred += len(keys)

    def on_done(self, derived: AbstractSet[int], /) -> None:
        if not self._deferred:
            return
        found = self.states.count_in(derived)
        self.counts.update(found)
        self.pending += self._deferred - sum(found.values())
        self.derived = derived

    def on_job_key(
        self, key: int, job_id: str | None, params: JobParams | None, /
    ) -> None:
        if self.keep is not None:
            if not self.keep(key_id(key, job_id)):
                return
        elif job_id is None and 0 <= key < DERIVED_LIMIT:
            self.jobs += 1
            self._deferred += 1
            return
        self.jobs += 1
        code = self.states.get(key)
        if code is None:
            self.pending += 1
            return
        self.counted.add(key)
        self.counts[code] += 1
        if params is None or job_id is None:
            return
        manifest_key = params.key()
        recorded = self.params.recorded_key(key)
        if recorded is not None:
            self.changed += recorded != manifest_key
        elif 0 <= key < DERIVED_LIMIT and not params.derives(job_id):
            # an explicit id that merely looks derived: ask the ledger
            self.unsettled[job_id] = manifest_key

    def counts_in_manifest(self, key: int) -> bool:
        """Whether the ledger's job with this key was counted."""
        return key in self.counted or (0 <= key < DERIVED_LIMIT and key in self.derived)


def _count_manifest(
    status: RunStatus,
    scan: _Scan,
    manifest: ManifestSource,
    keep: Callable[[str], bool] | None,
    ledger: Path,
) -> _ManifestCount:
    """Count the manifest's jobs by their ledger state, and those whose
    parameters changed since, and the ledger's other jobs apart."""
    count = _ManifestCount(
        scan.states, scan.params if scan.params is not None else ParamsIndex(), keep
    )
    validate_manifest(manifest, on_job_key=count, key_cache=key_cache_path(ledger))
    changed = count.changed
    if count.unsettled:
        recorded = recorded_params(ledger, count.unsettled)
        changed += sum(
            1
            for job_id, key in count.unsettled.items()
            if recorded[job_id] not in (None, key)
        )
    counts = count.counts
    status.changed = changed
    status.total = count.jobs
    status.pending = count.pending
    status.succeeded, status.failed = counts[SUCCEEDED], counts[FAILED]
    status.submitted, status.generated = counts[SUBMITTED], counts[GENERATED]
    others = scan.states.by_code()
    others.subtract(counts)
    status.other_jobs = sum(others.values())
    status.other = {name: others[code] for code, name in _NAMES.items()}
    return count


def run_status(
    ledger: Path,
    run_dir: Path | None = None,
    manifest: ManifestSource | None = None,
    keep: Callable[[str], bool] | None = None,
) -> RunStatus:
    """Everything `batch-runner status` reports, from one pass over the ledger
    (and one over the manifest, if given, for the pending count; `keep` picks a
    shard's job ids)."""
    status = RunStatus()
    run = RunDir(run_dir, ledger=ledger) if run_dir is not None else None
    attempts = run.attempts if run is not None else None
    audit = attempts if attempts is not None and attempts.exists() else None
    scan = _scan(ledger, status, audit=audit, params=manifest is not None)
    failures: Iterable[tuple[str, str]] = scan.failures.values()
    if manifest is not None:
        count = _count_manifest(status, scan, manifest, keep, ledger)
        # failure reasons of the counted jobs only, so they add up to `failed`
        failures = (v for j, v in scan.failures.items() if count.counts_in_manifest(j))
    else:
        counts = scan.states.by_code()
        status.succeeded, status.failed = counts[SUCCEEDED], counts[FAILED]
        status.submitted, status.generated = counts[SUBMITTED], counts[GENERATED]
        status.total = len(scan.states)
    status.failure_reasons = _group_reasons(failures)
    if run is not None:
        images = run.images
        if images.is_dir():
            status.images_on_disk = _count_files(images)
        if audit is not None:
            mark = scan.mark
            found = suspected_duplicate_submits(
                scan.outcomes,
                attempt_records(audit, mark.attempts_end if mark is not None else 0),
            )
            status.suspected_duplicates = (
                merged(mark.suspects, found) if mark is not None else found
            )
    return status


def _count_files(images: Path) -> int:
    """Files in `images`; hidden ones (downloads in progress) are not images yet."""
    with os.scandir(images) as entries:
        return sum(1 for e in entries if not e.name.startswith(".") and e.is_file())


def _group_reasons(failures: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    counts: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for stage, msg in failures:
        key = (stage, normalise_reason(msg))
        counts[key] += 1
        examples.setdefault(key, msg)
    return [
        {"stage": stage, "msg": msg, "count": n, "example": examples[stage, msg]}
        for (stage, msg), n in counts.most_common()
    ]


def format_status(status: RunStatus, name: str) -> str:
    """The human-readable report."""
    lines = [f"run: {name}"]
    pending = "" if status.pending is None else f", pending {status.pending}"
    generated = (
        f", generated (not downloaded) {status.generated}" if status.generated else ""
    )
    lines.append(
        f"jobs: {status.total} — succeeded {status.succeeded}{generated}, failed "
        f"{status.failed}, submitted (in flight) {status.submitted}{pending}"
    )
    if status.changed:
        lines.append(
            f"changed since their last run: {status.changed} (the manifest gives "
            "other parameters; `run` refuses them, `run --rerun-changed` "
            "regenerates them)"
        )
    if status.other_jobs:
        by_state = ", ".join(
            f"{k} {v}" for k, v in status.other.items() if v or k != "generated"
        )
        lines.append(
            f"not in the manifest: {status.other_jobs} jobs ({by_state}); counted apart"
        )
    lines.append(
        f"images: {status.images_on_disk} on disk, {status.images_expected} expected"
    )
    if status.first_ts:
        lines.append(f"first record: {status.first_ts}; last: {status.last_ts}")
    if status.unreadable_lines:
        lines.append(f"unreadable ledger lines skipped: {status.unreadable_lines}")
    if status.failure_reasons:
        lines.append("failure reasons:")
        for reason in status.failure_reasons[:20]:
            stage = f"[{reason['stage']}] " if reason["stage"] else ""
            lines.append(f"  {reason['count']:>6}  {stage}{reason['msg']}")
            if reason["example"] != reason["msg"]:
                lines.append(f"          e.g. {reason['example']}")
        if len(status.failure_reasons) > 20:
            lines.append(f"  ... {len(status.failure_reasons) - 20} more reasons")
    if status.suspected_duplicates:
        n = sum(status.suspected_duplicates.values())
        lines.append(
            f"suspected duplicate submits: {n} (jobs whose submit answer was lost; "
            "each may have been billed twice):"
        )
        for job_id, count in sorted(status.suspected_duplicates.items())[:20]:
            lines.append(f"  {job_id}: {count}")
    return "\n".join(lines)


def _failed_records(ledger: Path) -> dict[str, dict[str, Any]]:
    """Each job whose last record is "failed", with that record, in ledger order."""
    failed: dict[str, dict[str, Any]] = {}
    for rec in iter_records(ledger):
        if rec["status"] == "failed":
            failed[rec["job_id"]] = rec
        else:
            failed.pop(rec["job_id"], None)
    return failed


def _write_reason(reasons: IO[str], job_id: str, rec: dict[str, Any]) -> None:
    stage = rec.get("stage")
    reasons.write(
        f"{job_id}: {'[' + stage + '] ' if isinstance(stage, str) and stage else ''}"
        f"{rec.get('msg') or 'failed'}\n"
    )


def write_failed_csv(ledger: Path, out: IO[str], reasons: IO[str]) -> int:
    """The failed jobs as a CSV manifest (same ids and parameters) on `out`, and
    one `job_id: reason` line per job on `reasons`. Returns the count.

    CSV cannot keep meta types: numbers and booleans become text, nested values
    JSON text, and null an empty cell (not set); `write_failed_jsonl` keeps them.
    """
    failed = _failed_records(ledger)
    meta_keys: list[str] = []
    for rec in failed.values():
        for key in _meta(rec):
            if key not in meta_keys:
                meta_keys.append(key)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "id",
            "prompt",
            "resolution",
            "seed",
            "prompt_extend",
            *(f"meta.{k}" for k in meta_keys),
        ]
    )
    for job_id, rec in failed.items():
        meta = _meta(rec)
        seed = rec.get("seed")
        extend = rec.get("prompt_extend")
        writer.writerow(
            [
                job_id,
                rec.get("prompt", ""),
                rec.get("resolution") or "",
                "" if seed is None else seed,
                # empty when never set: the retry must not send a "0" it never sent
                "" if extend is None else ("1" if extend else "0"),
                *(_cell(meta.get(k)) for k in meta_keys),
            ]
        )
        _write_reason(reasons, job_id, rec)
    return len(failed)


def write_failed_jsonl(ledger: Path, out: IO[str], reasons: IO[str]) -> int:
    """The failed jobs as a JSONL manifest on `out`, every value with its type
    (meta numbers, booleans, nulls and nesting, prompt_extend only where set), so
    a retry run records the same parameters and merges with the original. One
    `job_id: reason` line per job on `reasons`; returns the count."""
    failed = _failed_records(ledger)
    for job_id, rec in failed.items():
        job: dict[str, Any] = {"id": job_id, "prompt": rec.get("prompt", "")}
        for name in ("resolution", "seed", "prompt_extend"):
            if rec.get(name) is not None:
                job[name] = rec[name]
        meta = _meta(rec)
        if meta:
            job["meta"] = meta
        out.write(json.dumps(job, ensure_ascii=False) + "\n")
        _write_reason(reasons, job_id, rec)
    return len(failed)


def _meta(rec: dict[str, Any]) -> dict[str, Any]:
    meta = rec.get("meta")
    return meta if isinstance(meta, dict) else {}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
