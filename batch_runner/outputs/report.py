"""Where a run stands (`status`) and what failed (`failed`), read from the ledger.

Built for million-line ledgers: one streaming pass, and a fast path that reads
`job_id` and `status` off the front of each line (the writer always puts them
first) so only the lines that need more (failures, submits) are fully parsed.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from batch_runner.manifest.reader import ManifestSource, validate_manifest
from batch_runner.outputs.audit import suspected_duplicate_submits
from batch_runner.store.ledger import (
    RECORD_HEAD,
    is_generated,
    iter_records,
    ledger_lines,
    parse_record,
)
from batch_runner.store.rundir import RunDir

_TS = re.compile(rb'"ts":"([^"]*)"')
_FILES = re.compile(rb'"files":\[([^\]]*)\]')
_STATE_CODES = {
    b"submitted": "s",
    b"succeeded": "S",
    b"failed": "F",
    b"generated": "G",
}
_NAMES = {"s": "submitted", "S": "succeeded", "F": "failed", "G": "generated"}


@dataclass(slots=True)
class RunStatus:
    """Totals by state; `pending` is known only when a manifest is given."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    submitted: int = 0
    #: tasks finished, images not downloaded yet (--no-download): the next run
    #: without the flag fetches them
    generated: int = 0
    pending: int | None = None
    records: int = 0
    unreadable_lines: int = 0
    images_expected: int = 0
    images_on_disk: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    failure_reasons: list[dict[str, Any]] = field(default_factory=list)
    suspected_duplicates: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The numbers `status --json` prints."""
        return asdict(self)

    to_json = to_dict


def _scan(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, str]], RunStatus]:
    """job_id -> state code, failed job_id -> (stage, msg), and partial totals."""
    states: dict[str, str] = {}
    failures: dict[str, tuple[str, str]] = {}
    files_of: dict[str, int] = {}
    status = RunStatus()
    for raw in ledger_lines(path):
        match = RECORD_HEAD.match(raw)
        if match is not None:
            job_id, code = match[1].decode(), _STATE_CODES[match[2]]
        else:
            # not our writer's layout (or an escaped id): parse it properly
            record = parse_record(raw)
            if record is None:
                if raw.strip():
                    status.unreadable_lines += 1
                continue
            job_id, code = record["job_id"], _STATE_CODES[record["status"].encode()]
        status.records += 1
        states[job_id] = code
        ts = _TS.search(raw)
        if ts:
            stamp = ts[1].decode()
            if status.first_ts is None or stamp < status.first_ts:
                status.first_ts = stamp
            if status.last_ts is None or stamp > status.last_ts:
                status.last_ts = stamp
        if code == "F":
            try:
                rec = json.loads(raw)
                failures[job_id] = (
                    str(rec.get("stage") or ""),
                    str(rec.get("msg") or ""),
                )
            except ValueError:
                failures[job_id] = ("", "unreadable")
        else:
            failures.pop(job_id, None)
        if code == "S":
            files = _FILES.search(raw)
            files_of[job_id] = files[1].count(b'"') // 2 if files else 0
            if not files_of[job_id]:
                record = parse_record(raw)
                if record is not None and is_generated(record):
                    states[job_id] = "G"
                    files_of.pop(job_id, None)
        else:
            files_of.pop(job_id, None)
    status.images_expected = sum(files_of.values())
    return states, failures, status


def run_status(
    ledger: Path,
    run_dir: Path | None = None,
    manifest: ManifestSource | None = None,
    keep: Callable[[str], bool] | None = None,
) -> RunStatus:
    """Everything `batch-runner status` reports, from one pass over the ledger
    (and one over the manifest, if given, for the pending count; `keep` picks a
    shard's job ids)."""
    states, failures, status = _scan(ledger)
    counts = Counter(states.values())
    status.succeeded = counts["S"]
    status.failed = counts["F"]
    status.submitted = counts["s"]
    status.generated = counts["G"]
    status.total = len(states)
    if manifest is not None:
        tally = {"jobs": 0, "pending": 0}

        def count(job_id: str) -> None:
            if keep is None or keep(job_id):
                tally["jobs"] += 1
                if job_id not in states:
                    tally["pending"] += 1

        validate_manifest(manifest, on_job=count)
        status.pending = tally["pending"]
        status.total = max(status.total, tally["jobs"])
    reasons = Counter((stage, msg) for stage, msg in failures.values())
    status.failure_reasons = [
        {"stage": stage, "msg": msg, "count": n}
        for (stage, msg), n in reasons.most_common()
    ]
    if run_dir is not None:
        run = RunDir(run_dir, ledger=ledger)
        images = run.images
        if images.is_dir():
            with os.scandir(images) as entries:
                status.images_on_disk = sum(
                    1 for e in entries if not e.name.startswith(".") and e.is_file()
                )
        attempts = run.attempts
        if attempts.exists():
            status.suspected_duplicates = suspected_duplicate_submits(
                _submit_outcomes(ledger), _json_objects(ledger_lines(attempts))
            )
    return status


def _submit_outcomes(ledger: Path) -> Iterator[dict[str, Any]]:
    # only records that describe a submit carry "attempts"; skip parsing the rest
    return _json_objects(raw for raw in ledger_lines(ledger) if b'"attempts":' in raw)


def _json_objects(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


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


def write_failed_csv(ledger: Path, out: IO[str], reasons: IO[str]) -> int:
    """The failed jobs as a CSV manifest (same ids and parameters) on `out`, and
    one `job_id: reason` line per job on `reasons`. Returns the count."""
    failed: dict[str, dict[str, Any]] = {}
    for rec in iter_records(ledger):
        if rec["status"] == "failed":
            failed[rec["job_id"]] = rec
        else:
            failed.pop(rec["job_id"], None)
    meta_keys: list[str] = []
    for rec in failed.values():
        for key in rec.get("meta") or {}:
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
        meta = rec.get("meta") or {}
        seed = rec.get("seed")
        writer.writerow(
            [
                job_id,
                rec.get("prompt", ""),
                rec.get("resolution") or "",
                "" if seed is None else seed,
                "1" if rec.get("prompt_extend") else "0",
                *(_cell(meta.get(k)) for k in meta_keys),
            ]
        )
        stage = rec.get("stage")
        reasons.write(
            f"{job_id}: {'[' + stage + '] ' if stage else ''}"
            f"{rec.get('msg') or 'failed'}\n"
        )
    return len(failed)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
