"""The LongLaMP record schema per task, and validation that names what is wrong and where.

A record is {<user key>, "input", "output", "profile": [item, ...]} (+ an optional "id"); profile
items carry the task's keys (REFERENCE.md). A bad record raises `RecordError` (file, record index,
id, field), or with `on_bad_record=skip` is left out and counted in a `SplitReport`. A split with
no record to use (an empty file, or every record left out) is a `DataError` naming its file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)
_warned: set[str] = set()  # warnings logged: each stage (a tiny preset's corpus, fit, predict) reads a split again

TEXT = (str,)
NUMBER_OR_TEXT = (int, float, str)
ID = (str, int)


@dataclass(frozen=True)
class TaskSchema:
    user_key: str
    profile_keys: dict[str, tuple[type, ...]]
    input_template: str  # how LongLaMP phrases the query from the target item's fields
    output_key: str  # the target item's field that is the output


TASKS = {
    "product_review": TaskSchema(
        "reviewerId",
        {"overall": NUMBER_OR_TEXT, "summary": TEXT, "description": TEXT, "reviewText": TEXT},
        'Generate the review text written by a reviewer who has a given an overall rating of "{overall}" for a '
        'product with description "{description}". The summary of the review text is "{summary}".',
        "reviewText",
    ),
    "abstract_generation": TaskSchema(
        "name",
        {"title": TEXT, "abstract": TEXT, "id": ID, "year": ID},
        'Generate an abstract for the title "{title}" using the following items: {keywords}',
        "abstract",
    ),
    "topic_writing": TaskSchema(
        "author", {"summary": TEXT, "content": TEXT}, "Generate the content for a reddit post {summary}", "content"
    ),
}
EXAMPLES_KEPT = 5  # problems quoted per split in the skip report
SKIP_REPORT = "data_skipped.json"


def make_record(task: str, user_id: str, index: int, target: dict, profile: list[dict]) -> dict:
    """A LongLaMP record for the `index`-th item of a user's history; profile items keep the task's keys."""
    schema = TASKS[task]
    return {
        "id": f"{user_id}-{index}",
        schema.user_key: user_id,
        "input": schema.input_template.format(**target),
        "output": target[schema.output_key],
        "profile": [{key: item[key] for key in schema.profile_keys} for item in profile],
    }


class DataError(ValueError):
    """Input data that cannot be used (unreadable file, bad record)."""


class RecordError(DataError):
    def __init__(self, source: str, index: int, record_id: Optional[str], field: str, reason: str, detail: str):
        self.source, self.index, self.record_id, self.field, self.reason, self.detail = (
            source,
            index,
            record_id,
            field,
            reason,
            detail,
        )
        super().__init__(
            f"{source}: record {index} (id {record_id if record_id is not None else '?'}): "
            f"field '{field}': {detail} [{reason}]"
        )

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "id": self.record_id,
            "field": self.field,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Unreadable:
    """A line of a JSON-lines file that is not a record (bad JSON or bad UTF-8), kept in place so
    that it is reported with its index instead of vanishing."""

    reason: str
    detail: str


def _type_problem(value, allowed: tuple[type, ...]) -> Optional[str]:
    if value is None:
        return "missing or null"
    if isinstance(value, bool) or not isinstance(value, allowed):  # JSON true is not a number
        return f"expected {' or '.join(t.__name__ for t in allowed)}, got {type(value).__name__}"
    return None


def find_problem(row, schema: TaskSchema) -> Optional[tuple[str, str, str]]:
    """(field, reason, detail) of the first thing wrong with `row`, or None."""
    if isinstance(row, Unreadable):
        return "(record)", row.reason, row.detail
    if not isinstance(row, dict):
        return "(record)", "not_an_object", f"expected a JSON object, got {type(row).__name__}"
    for key, allowed in ((schema.user_key, ID), ("input", TEXT), ("output", TEXT), ("profile", (list,))):
        if row.get(key) is None:
            return key, "missing_field", "missing or null"
        if problem := _type_problem(row[key], allowed):
            return key, "wrong_type", problem
    if not row["output"].strip():
        return "output", "empty_output", "empty or whitespace only"
    if row.get("id") is not None and (problem := _type_problem(row["id"], ID)):
        return "id", "wrong_type", problem
    for position, item in enumerate(row["profile"]):
        if not isinstance(item, dict):
            return f"profile[{position}]", "bad_profile_item", f"expected an object, got {type(item).__name__}"
        for key, allowed in schema.profile_keys.items():
            if problem := _type_problem(item.get(key), allowed):
                return f"profile[{position}].{key}", "bad_profile_item", problem
    return None


@dataclass
class SplitReport:
    """What validation did to one split: how many records were read, kept and skipped, and why."""

    source: str
    read: int = 0
    skipped: list[RecordError] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.read - len(self.skipped)

    def reasons(self) -> str:
        """The skip counts per reason, as one line ("missing_field: 2, bad_type: 1")."""
        return ", ".join(f"{reason}: {count}" for reason, count in Counter(e.reason for e in self.skipped).items())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "read": self.read,
            "kept": self.kept,
            "skipped": len(self.skipped),
            "reasons": dict(Counter(e.reason for e in self.skipped)),
            "examples": [e.to_dict() for e in self.skipped[:EXAMPLES_KEPT]],
        }


def validate(rows: list, task: str, split: str, source: str, on_bad_record: str) -> tuple[list[dict], SplitReport]:
    """Valid records, each with a string "id" (the record's own, else f"{split}-{index}", stable
    under skipping), and the report. `on_bad_record`: error (raise on the first bad record) | skip."""
    schema, report = TASKS[task], SplitReport(source, read=len(rows))
    records, first_index_of = [], {}
    for index, row in enumerate(rows):
        own_id = row.get("id") if isinstance(row, dict) else None
        record_id = str(own_id) if own_id is not None else f"{split}-{index}"
        problem = find_problem(row, schema)
        if problem is None and record_id in first_index_of:
            problem = "id", "duplicate_id", f"same id as record {first_index_of[record_id]}"
        if problem is not None:
            error = RecordError(source, index, record_id if isinstance(row, dict) else None, *problem)
            if on_bad_record == "error":
                raise error
            report.skipped.append(error)
            continue
        first_index_of[record_id] = index
        records.append({**row, "id": record_id})
    if report.skipped:
        first = report.skipped[0]
        warn_once(
            f"{split}: skipped {len(report.skipped)} of {report.read} records of {source} "
            f"({report.reasons()}); the first: record {first.index}, field '{first.field}': {first.detail}; "
            f"a run keeps the counts and the first {EXAMPLES_KEPT} in <run dir>/{SKIP_REPORT}"
        )
    require_records(records, report, split)
    return records, report


def warn_once(message: str) -> None:
    """Log a warning the first time this process sees it (a split is read again by each stage)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def require_records(records: list[dict], report: SplitReport, split: str) -> None:
    """A split with no record left to use is an error, not an empty epoch."""
    if records:
        return
    if not report.read:
        raise DataError(
            f"{report.source}: the {split} split holds no records (an empty file or an empty list): "
            "put its records there, or point the split at the file that holds them"
        )
    raise DataError(
        f"{report.source}: the {split} split has no usable record: all {report.read} were left out "
        f"({report.reasons()}); fix them (data.on_bad_record=error stops at the first, naming it) or point "
        "the split at another file"
    )


def write_skip_report(reports: dict[str, SplitReport], run_dir: str | Path) -> Path:
    """`<run_dir>/data_skipped.json`: per split, counts per reason and the first few problems. Splits
    already in the file (another stage of the run: fit wrote train and val, predict adds test) are
    kept; a split written again replaces its entry."""
    path = Path(run_dir) / SKIP_REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    written = json.loads(path.read_text()) if path.exists() else {}
    written.update({split: r.to_dict() for split, r in reports.items()})
    path.write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n")
    return path
