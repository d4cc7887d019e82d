"""Rationales for chain-of-thought targets (`data.rationales`, method=cot): per record id, the
reasoning the model writes before its response.

  * a JSON-lines file of {"id": ..., "rationale": ...}: a bad line is an error naming the file,
    the line and the field;
  * "oracle": the synthetic data set's latent truth (users.jsonl beside the split directories),
    written per user as plain sentences that say what the user's history shows.

A rationale's reasoning steps (`rationale_steps`: its sentences and lines) are what Coconut's
curriculum replaces by continuous thoughts, one step per stage (data/coconut_schedule.py).

A training record without a rationale is a bad record: `on_bad_record=error` stops, naming the
records file and id; `skip` leaves it out and counts it in the split's skip report. Evaluation
splits keep every record (every method must be scored on the same records): those without a
rationale keep the plain output as their target, and a warning counts them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..config import DataConfig
from .readers import resolve_root
from .schema import ID, TASKS, TEXT, DataError, RecordError, SplitReport, _type_problem

log = logging.getLogger(__name__)

ORACLE = "oracle"
USERS_FILE = "users.jsonl"  # data/synthetic.py writes each user's latent truth here
ARC_WORDS = {
    "rising": "grows warmer towards the end",
    "falling": "grows harsher towards the end",
    "steady": "keeps a steady tone",
}


# Before the whitespace that follows a sentence's end, and before every line break.
STEP_BREAK = re.compile(r"(?<=[.!?])(?=\s)|(?<=\S)(?=\n)")


def rationale_steps(rationale: str) -> list[str]:
    """The reasoning steps of a rationale: its sentences and lines, each keeping the whitespace
    before it, so that "".join(steps) == rationale and a byte-level BPE tokenises the steps one by
    one as it tokenises the whole (its pre-tokeniser splits there too)."""
    return [step for step in STEP_BREAK.split(rationale) if step]


class RationaleFileError(DataError):
    def __init__(self, path: Path, line: int, field: str, detail: str):
        self.path, self.line, self.field, self.detail = path, line, field, detail
        super().__init__(f"{path}: line {line}: field '{field}': {detail}")


def read_rationale_file(path: Path) -> dict[str, str]:
    """{record id: rationale} from a JSON-lines file of {"id": str|int, "rationale": non-empty str}."""
    if not path.is_file():
        raise DataError(
            f"data.rationales={str(path)!r}: no such file; give a JSON-lines file of "
            '{"id": ..., "rationale": ...} or "oracle" (synthetic data)'
        )
    rationales: dict[str, str] = {}
    line_of: dict[str, int] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise RationaleFileError(path, line_no, "(line)", f"not valid UTF-8 JSON ({err})") from None
            if not isinstance(row, dict):
                raise RationaleFileError(path, line_no, "(line)", f"expected a JSON object, got {type(row).__name__}")
            for key, allowed in (("id", ID), ("rationale", TEXT)):
                if problem := _type_problem(row.get(key), allowed):
                    raise RationaleFileError(path, line_no, key, problem)
            if not row["rationale"].strip():
                raise RationaleFileError(path, line_no, "rationale", "empty or whitespace only")
            record_id = str(row["id"])
            if record_id in line_of:
                raise RationaleFileError(
                    path, line_no, "id", f"duplicate id {record_id!r} (first on line {line_of[record_id]})"
                )
            line_of[record_id] = line_no
            rationales[record_id] = row["rationale"].strip()
    return rationales


def oracle_rationale(persona: dict) -> str:
    """What a user's history shows, in two plain sentences, from their latent truth (synthetic.Persona):
    opening, aspects in order, connectors, praise and complaint words, intensifiers, tone arc, sign-off."""
    aspects, connectors = persona["aspects"], [f'"{c}"' for c in persona["connectors"]]
    return (
        f'Opens "{persona["opener"].split("{product}")[0].strip()}" and covers {", ".join(aspects[:-1])} and '
        f"{aspects[-1]} in that order, after {' '.join(connectors[:-1])} and {connectors[-1]}. Uses "
        f"{', '.join(persona['positive_words'])} for praise, {', '.join(persona['negative_words'])} for "
        f"complaints, {' and '.join(persona['intensifiers'])} for emphasis, {ARC_WORDS[persona['arc']]} and "
        f'signs off "{persona["signoff"]}"'
    )


def users_file(cfg: DataConfig) -> Path:
    """users.jsonl of the synthetic set the records come from, or an error saying what oracle needs."""
    hint = (
        "data.rationales=oracle writes rationales from the synthetic data set's latent truth (users.jsonl "
        'beside its split directories); for other data give a JSON-lines file of {"id", "rationale"}'
    )
    if cfg.files or (cfg.hub and not cfg.path) or cfg.task != "product_review":
        source = "data.files" if cfg.files else "data.hub" if cfg.hub and not cfg.path else f"data.task={cfg.task}"
        raise DataError(f"{hint} (this config reads {source})")
    root = resolve_root(cfg)
    for candidate in (root / USERS_FILE, root.parent / USERS_FILE):  # data.path = the set or one config dir
        if candidate.is_file():
            return candidate
    raise DataError(f"{hint}: no {USERS_FILE} in {root}")


def oracle_rationales(path: Path, records: list[dict], user_key: str) -> dict[str, str]:
    personas = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                persona = json.loads(line)
                personas[persona["user_id"]] = persona
    written = {user: oracle_rationale(persona) for user, persona in personas.items()}
    return {r["id"]: written[str(r[user_key])] for r in records if str(r[user_key]) in written}


def load_rationales(cfg: DataConfig, records: list[dict]) -> tuple[dict[str, str], str]:
    """({record id: rationale} for the records that have one, where they came from), per `data.rationales`."""
    if cfg.rationales == ORACLE:
        path = users_file(cfg)
        return oracle_rationales(path, records, TASKS[cfg.task].user_key), f"oracle ({path})"
    path = Path(cfg.rationales).expanduser()
    return read_rationale_file(path), str(path)


def rationales_for_split(
    cfg: DataConfig, split: str, records: list[dict], report: SplitReport
) -> tuple[list[dict], dict[str, str]]:
    """(the records to encode, {record id: rationale}); ({}, all records) when data.rationales is unset.

    A training record without a rationale raises a `RecordError` (on_bad_record=error) or is left
    out and added to `report` (skip); evaluation splits keep it, with the plain output as target."""
    if not cfg.rationales:
        return records, {}
    rationales, source = load_rationales(cfg, records)
    missing = [position for position, r in enumerate(records) if r["id"] not in rationales]
    if not missing:
        return records, rationales
    if split != "train":
        log.warning(
            "%s: %d of %d records have no rationale in %s; their target is the output alone",
            split,
            len(missing),
            len(records),
            source,
        )
        return records, rationales
    skipped_before = {e.index for e in report.skipped}  # records' indices in the file, from validation
    file_index = [i for i in range(report.read) if i not in skipped_before]
    for position in missing:
        error = RecordError(
            report.source,
            file_index[position],
            records[position]["id"],
            "rationale",
            "missing_rationale",
            f"no rationale for this id in {source}",
        )
        if cfg.on_bad_record == "error":
            raise error
        report.skipped.append(error)
    log.warning("%s: skipped %d of %d records with no rationale in %s", split, len(missing), len(records), source)
    missing_ids = {records[position]["id"] for position in missing}
    return [r for r in records if r["id"] not in missing_ids], rationales
