"""Bad input fails loudly (file, record index, id, field), or with on_bad_record=skip is counted
exactly and reported; a valid record is never dropped."""

from __future__ import annotations

import json
import types

import pytest

from flythinker_pl.config import DataConfig
from flythinker_pl.data.datamodule import PersonalisationDataModule, load_split
from flythinker_pl.data.schema import SKIP_REPORT, DataError, RecordError

from helpers import GOOD, encoded, spoiled, write_jsonl


# (what is wrong, the bad record, field named in the error, reason)
BAD_RECORDS = [
    ("missing output", spoiled(lambda r: r.pop("output")), "output", "missing_field"),
    ("missing user key", spoiled(lambda r: r.pop("reviewerId")), "reviewerId", "missing_field"),
    ("null input", spoiled(lambda r: r.update(input=None)), "input", "missing_field"),
    ("input not text", spoiled(lambda r: r.update(input=5)), "input", "wrong_type"),
    ("profile not a list", spoiled(lambda r: r.update(profile="none")), "profile", "wrong_type"),
    ("empty output", spoiled(lambda r: r.update(output=" \n ")), "output", "empty_output"),
    (
        "profile item without a task key",
        spoiled(lambda r: r["profile"][1].pop("reviewText")),
        "profile[1].reviewText",
        "bad_profile_item",
    ),
    (
        "profile item of a wrong type",
        spoiled(lambda r: r["profile"][0].update(overall=True)),
        "profile[0].overall",
        "bad_profile_item",
    ),
    ("profile item not an object", spoiled(lambda r: r["profile"].append("great")), "profile[3]", "bad_profile_item"),
    ("record not an object", ["a", "list"], "(record)", "not_an_object"),
    ("id of a wrong type", spoiled(lambda r: r.update(id=[1])), "id", "wrong_type"),
]
BAD_LINES = [
    ("truncated JSON line", b'{"reviewerId": "A1", "input": "Gen', "(record)", "invalid_json"),
    ("non-UTF-8 bytes", b'{"reviewerId": "A1\xff\xfe", "input": "x"}', "(record)", "not_utf8"),
]


def cfg_for(path, **options) -> DataConfig:
    return DataConfig(files={"train": str(path)}, **options)


@pytest.mark.parametrize(
    "what,line,field,reason", [(w, encoded(r), f, why) for w, r, f, why in BAD_RECORDS] + BAD_LINES
)
def test_a_bad_record_names_file_index_id_and_field(tmp_path, what, line, field, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [encoded({**GOOD, "id": "fine-0"}), line])
    with pytest.raises(RecordError) as caught:
        load_split(cfg_for(path), "train")
    error = caught.value
    assert (error.source, error.index, error.field, error.reason) == (str(path), 1, field, reason)
    expected_id = "?" if field == "(record)" else "[1]" if reason == "wrong_type" and field == "id" else "train-1"
    assert f"{path}: record 1 (id {expected_id}): field '{field}'" in str(error)


def test_duplicate_ids_are_bad_records(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [encoded({**GOOD, "id": "x"})] * 2)
    with pytest.raises(RecordError, match=r"record 1 \(id x\): field 'id': same id as record 0"):
        load_split(cfg_for(path), "train")


@pytest.mark.parametrize(
    "content,message",
    [
        (json.dumps([GOOD, GOOD]).encode()[:-40], r"invalid JSON at line 1, column \d+.*truncated or malformed"),
        (json.dumps([GOOD]).encode().replace(b"tuner", b"tun\xe9r"), r"not valid UTF-8 at byte \d+ \(line 1\)"),
        (json.dumps({"records": [GOOD]}).encode(), r"expected a JSON list of records, got a JSON dict"),
    ],
)
@pytest.mark.parametrize("on_bad_record", ["error", "skip"])
def test_an_unreadable_json_file_is_an_error_even_in_skip_mode(tmp_path, content, message, on_bad_record):
    path = tmp_path / "train.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{path}: {message}"):
        load_split(cfg_for(path, on_bad_record=on_bad_record), "train")


def test_skip_mode_counts_exactly_and_keeps_every_valid_record(tmp_path):
    valid = [{**GOOD, "id": f"good-{n}"} for n in range(5)] + [{k: v for k, v in GOOD.items()}]  # last: no id
    bad = [encoded(r) for _, r, _, _ in BAD_RECORDS] + [line for _, line, _, _ in BAD_LINES]
    lines = [encoded(r) for r in valid[:3]] + bad[:6] + [encoded(r) for r in valid[3:]] + bad[6:]
    path = write_jsonl(tmp_path / "train.jsonl", lines)
    loaded = load_split(cfg_for(path, on_bad_record="skip"), "train")
    assert [r["id"] for r in loaded.records] == [
        "good-0",
        "good-1",
        "good-2",
        "good-3",
        "good-4",
        f"train-{len(lines) - len(bad[6:]) - 1}",
    ]
    report = loaded.report.to_dict()
    assert (report["read"], report["kept"], report["skipped"]) == (len(lines), 6, len(bad))
    assert report["reasons"] == {
        "missing_field": 3,
        "wrong_type": 3,
        "empty_output": 1,
        "bad_profile_item": 3,
        "not_an_object": 1,
        "invalid_json": 1,
        "not_utf8": 1,
    }
    assert [e["index"] for e in report["examples"]] == [3, 4, 5, 6, 7]  # the first few, in file order


def test_the_datamodule_writes_the_skip_report_into_the_run_dir(tmp_path, tokenizer):
    bad = spoiled(lambda r: r.update(output=""))
    copies = {"train": 1, "val": 2, "test": 1}
    files = {
        split: str(write_jsonl(tmp_path / f"{split}.jsonl", [encoded(GOOD), encoded(bad)] * n))
        for split, n in copies.items()
    }
    datamodule = PersonalisationDataModule(DataConfig(files=files, on_bad_record="skip"), tokenizer)
    run_dir = tmp_path / "run"
    datamodule.trainer = types.SimpleNamespace(log_dir=str(run_dir), is_global_zero=True)  # what Lightning provides
    datamodule.setup("fit")
    report = json.loads((run_dir / SKIP_REPORT).read_text())
    assert set(report) == {"train", "val"}  # what this stage loaded
    assert report["train"]["reasons"] == {"empty_output": 1} and report["train"]["kept"] == 1
    # val holds GOOD twice: derived ids differ by index (val-0, val-2), so both copies are kept
    assert report["val"]["reasons"] == {"empty_output": 2} and report["val"]["kept"] == 2
    assert report["val"]["examples"][0] == {
        "index": 1,
        "id": "val-1",
        "field": "output",
        "reason": "empty_output",
        "detail": "empty or whitespace only",
    }
