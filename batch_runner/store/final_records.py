"""Each job's last record in a ledger, found without holding the records.

Two passes: the first maps each job to the line of its last record (the only
per-job memory, packed as 64-bit hashes), the second reads just those lines.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from batch_runner.errors import LedgerError
from batch_runner.models import JobStatus
from batch_runner.store.ledger import ledger_lines, parse_record, read_head


def records_at(
    path: Path, linenos: Collection[int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of the readable records on these 0-based lines,
    parsing no other line."""
    if not linenos:
        return
    stop = max(linenos)
    for lineno, raw in enumerate(ledger_lines(path)):
        if lineno in linenos:
            record = parse_record(raw)
            if record is not None:
                yield lineno, record
        if lineno >= stop:
            return


def final_lines(
    path: Path, statuses: Collection[str] = (JobStatus.SUCCEEDED,)
) -> set[int]:
    """0-based line numbers of each job's last record, when its status is in
    `statuses`. Holds only job id -> line number, never the records.

    At a million jobs the map is the whole cost, so it is keyed by the id's
    64-bit hash and holds `2 * line + keep` ints rather than strings and tuples
    (about half the memory). Two ids sharing a hash (about 1e-8 at a million
    jobs) would drop one row from this rebuildable index, never from the ledger.
    """
    last: dict[int, int] = {}
    for lineno, raw in enumerate(ledger_lines(path)):
        head = read_head(raw)
        if head is not None:
            last[hash(head.job_id)] = 2 * lineno + (head.status in statuses)
    return {packed >> 1 for packed in last.values() if packed & 1}


def numbered_final_records(
    path: Path,
    *,
    statuses: Collection[str] = (JobStatus.SUCCEEDED,),
    lines: Collection[int] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each job's last record whose status is in
    `statuses`, in ledger order of those last records.

    Two passes instead of `latest_records`: `final_lines` (or the `lines` it
    gave earlier), then parsing just those lines. Lines appended in between are
    not read, so the result is one consistent snapshot.
    """
    wanted = final_lines(path, statuses) if lines is None else lines
    for lineno, record in records_at(path, wanted):
        # a ledger rewritten between the passes may have another line there
        if record["status"] in statuses:
            yield lineno, record


def final_succeeded_lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """(raw line, byte offset just after it) of each job's last record when it
    is succeeded with image files, in ledger order: what the metadata log
    holds for a ledger (`outputs.metadata_log.rebuild`)."""
    wanted = final_lines(path)
    if not wanted:
        return
    stop = max(wanted)
    end = 0
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc}") from exc
    with fh:
        for lineno, raw in enumerate(fh):
            end += len(raw) + (0 if raw.endswith(b"\n") else 1)
            if lineno in wanted:
                head = read_head(raw)
                if (
                    head is not None
                    and head.status == JobStatus.SUCCEEDED
                    and isinstance(head.files, list)
                    and head.files
                ):
                    yield raw, end
            if lineno >= stop:
                return
