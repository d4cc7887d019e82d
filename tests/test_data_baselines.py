"""The data side of the baselines: chain-of-thought targets (data.rationales: JSON lines or the
synthetic oracle) and prompts without any history for nonpers. (profile_mask, which a Reasoner that
does not see the profile reads, is data/encode.py's: test_encode.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flythinker_pl.config import DataConfig
from flythinker_pl.data.datamodule import PersonalisationDataModule, load_split
from flythinker_pl.data.encode import encode_records, token_ids, truncate
from flythinker_pl.data.prompts import (
    RATIONALE_PREFIX,
    RESPONSE_MARKER,
    SEPARATOR,
    SUFFIX,
    split_rationale,
    with_rationale,
)
from flythinker_pl.data.rationales import RationaleFileError, load_rationales, read_rationale_file
from flythinker_pl.data.readers import SPLITS
from flythinker_pl.data.schema import DataError, RecordError

from helpers import ROOMY, fixture_cfg, synthetic_cfg


def test_nonpers_prompts_show_no_profile_text_and_rag_prompts_do(run_config, tokenizer):
    shown = {}
    for method, options in (("nonpers", ["data.retriever=none"]), ("rag", []), ("sft", [])):
        cfg = run_config(f"method={method}", "data.profile_tokens=10000", *options).data
        datamodule = PersonalisationDataModule(cfg, tokenizer)
        datamodule.setup()  # every split
        suffix_start = SUFFIX[cfg.task].split("{input}")[0]
        for split in SPLITS:
            records = {r["id"]: r for r in load_split(cfg, split).records}
            assert len(datamodule.examples[split]) == len(records)
            for example in datamodule.examples[split]:
                prompt = tokenizer.decode(example["input_ids"][: example["prompt_len"]])
                record = records[example["id"]]
                texts_in_prompt = [item["reviewText"] in prompt for item in record["profile"]]
                if method == "nonpers":
                    assert not any(texts_in_prompt) and SEPARATOR not in prompt and suffix_start not in prompt
                    assert not example["profile_mask"].any() and example["items_shown"] == 0
                else:
                    assert sum(texts_in_prompt) >= 1 and suffix_start in prompt
                    assert example["profile_mask"].sum() > 0
        shown[method] = datamodule.examples["test"][0]["profile_mask"].sum()
    assert shown["rag"] == shown["sft"] > 0 == shown["nonpers"]


RATIONALE = (
    "The user opens with a story, praises the sound first and always ends with a short sign-off; "
    "expect warm words about the build and a grumble about the price."
)


@pytest.mark.parametrize("rationale_tokens,target_tokens", [(10_000, 10_000), (12, 25)])
def test_cot_targets_are_rationale_marker_output_within_their_budgets(
    tokenizer, synthetic_dir, rationale_tokens, target_tokens
):
    cfg = synthetic_cfg(
        synthetic_dir,
        profile_tokens=200,
        input_tokens=200,
        target_tokens=target_tokens,
        rationale_tokens=rationale_tokens,
    )
    record = load_split(cfg, "train").records[0]
    plain = encode_records([record], [record["profile"][:1]], cfg, tokenizer)[0]
    cot = encode_records([record], [record["profile"][:1]], cfg, tokenizer, [RATIONALE])[0]
    assert cot["input_ids"][: cot["prompt_len"]].tolist() == plain["input_ids"][: plain["prompt_len"]].tolist()
    assert cot["profile_mask"].tolist()[: cot["prompt_len"]] == plain["profile_mask"].tolist()[: plain["prompt_len"]]
    assert cot["reference"] == record["output"] and cot["target_tokens"] == plain["target_tokens"]

    kept_rationale = truncate(tokenizer, RATIONALE, rationale_tokens)
    assert len(token_ids(tokenizer, kept_rationale)) <= rationale_tokens
    assert cot["cut"]["rationale"] == (kept_rationale != RATIONALE) == (rationale_tokens < 100)
    target = cot["input_ids"][cot["prompt_len"] :].tolist()
    plain_target = plain["input_ids"][plain["prompt_len"] :].tolist()
    assert target[-len(plain_target) :] == plain_target  # the output keeps its own budget (and EOS rule)
    output_cut = plain["target_tokens"] > target_tokens
    assert len(plain_target) == (target_tokens if output_cut else plain["target_tokens"] + 1)  # + EOS
    assert cot["cut"]["target"] == output_cut == (target_tokens < 100)
    # the pieces tokenise as the whole text does, so generated text splits where training put the marker
    assert target[: len(target) - len(plain_target)] == token_ids(tokenizer, with_rationale(kept_rationale))
    text = tokenizer.decode(target, skip_special_tokens=True)
    assert text == with_rationale(kept_rationale, tokenizer.decode(plain_target, skip_special_tokens=True))
    if not plain["cut"]["target"]:
        assert token_ids(tokenizer, with_rationale(kept_rationale, record["output"])) == target[:-1]
    rationale, response = split_rationale(text)
    assert rationale == kept_rationale and record["output"].startswith(response)


def test_split_rationale_round_trips_and_keeps_text_without_a_marker():
    assert split_rationale(with_rationale("think", "say")) == ("think", "say")
    twice = with_rationale("think", f"say{RESPONSE_MARKER}more")
    assert split_rationale(twice) == ("think", f"say{RESPONSE_MARKER}more")  # the first marker splits
    assert split_rationale("Just a review, no reasoning.") == ("", "Just a review, no reasoning.")
    assert split_rationale(f"{RATIONALE_PREFIX}still thinking") == ("", f"{RATIONALE_PREFIX}still thinking")
    assert split_rationale(f"no prefix{RESPONSE_MARKER}review") == ("no prefix", "review")


def personas(synthetic_dir: Path) -> dict:
    return {p["user_id"]: p for p in map(json.loads, (synthetic_dir / "users.jsonl").read_text().splitlines())}


def test_oracle_rationales_cover_every_synthetic_record_and_describe_its_user(synthetic_dir):
    truth = personas(synthetic_dir)
    for setting in ("user", "temporal"):
        cfg = synthetic_cfg(synthetic_dir, setting=setting, rationales="oracle")
        for split in SPLITS:
            records = load_split(cfg, split).records
            rationales, source = load_rationales(cfg, records)
            assert "users.jsonl" in source and set(rationales) == {r["id"] for r in records}
            by_user = {}
            for record in records:
                persona, rationale = truth[record["reviewerId"]], rationales[record["id"]]
                by_user.setdefault(record["reviewerId"], set()).add(rationale)
                positions = [rationale.index(aspect) for aspect in persona["aspects"]]
                assert positions == sorted(positions)  # the user's aspects, in the user's order
                words = persona["positive_words"] + persona["negative_words"] + persona["intensifiers"]
                assert all(word in rationale for word in words + persona["connectors"] + [persona["signoff"]])
                assert persona["opener"].split("{product}")[0].strip() in rationale
                assert "{" not in rationale
            assert all(len(texts) == 1 for texts in by_user.values())  # one per user ...
            assert len({next(iter(texts)) for texts in by_user.values()}) == len(by_user)  # ... and users differ


def test_oracle_needs_the_synthetic_users_file():
    with pytest.raises(DataError, match="oracle.*users.jsonl"):
        load_rationales(fixture_cfg(rationales="oracle"), [])
    with pytest.raises(DataError, match="oracle.*JSON-lines"):
        load_rationales(fixture_cfg("topic_writing", rationales="oracle"), [])


def test_the_datamodule_puts_rationales_in_training_and_evaluation_targets_only(synthetic_dir, tokenizer):
    plain, cot = (
        PersonalisationDataModule(synthetic_cfg(synthetic_dir, rationales=r, **ROOMY), tokenizer)
        for r in ("", "oracle")
    )
    for datamodule in (plain, cot):
        datamodule.setup()
    prefix = token_ids(tokenizer, RATIONALE_PREFIX)
    for split in SPLITS:
        assert [e["id"] for e in cot.examples[split]] == [e["id"] for e in plain.examples[split]]
        for with_cot, without in zip(cot.examples[split], plain.examples[split]):
            assert (
                with_cot["input_ids"][: with_cot["prompt_len"]].tolist()
                == without["input_ids"][: without["prompt_len"]].tolist()
            )  # decoding reads the same prompt
            target = with_cot["input_ids"][with_cot["prompt_len"] :].tolist()
            assert target[: len(prefix)] == prefix and with_cot["reference"] == without["reference"]
            assert RESPONSE_MARKER in tokenizer.decode(target)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD_LINE = json.dumps({"id": "a", "rationale": "fine"})


@pytest.mark.parametrize(
    "bad_line,field,detail",
    [
        ('{"id": "b", "rationale": "cut', "(line)", "not valid UTF-8 JSON"),
        ('["b", "why"]', "(line)", "expected a JSON object, got list"),
        ('{"rationale": "why"}', "id", "missing or null"),
        ('{"id": true, "rationale": "why"}', "id", "expected str or int, got bool"),
        ('{"id": "b", "rationale": 3}', "rationale", "expected str, got int"),
        ('{"id": "b", "rationale": "  "}', "rationale", "empty or whitespace only"),
        ('{"id": "a", "rationale": "again"}', "id", "duplicate id 'a' (first on line 1)"),
    ],
)
def test_a_bad_rationale_line_names_file_line_and_field(tmp_path, bad_line, field, detail):
    path = write_lines(tmp_path / "rationales.jsonl", [GOOD_LINE, "", bad_line])
    with pytest.raises(RationaleFileError) as caught:
        read_rationale_file(path)
    assert (caught.value.path, caught.value.line, caught.value.field) == (path, 3, field)
    assert str(caught.value).startswith(f"{path}: line 3: field '{field}': {detail}")


def test_a_rationale_file_reads_ids_as_strings(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [GOOD_LINE, json.dumps({"id": 7, "rationale": " seven \n"})])
    assert read_rationale_file(path) == {"a": "fine", "7": "seven"}
    with pytest.raises(DataError, match="no-such.jsonl.*no such file"):
        read_rationale_file(tmp_path / "no-such.jsonl")


@pytest.fixture
def split_files(tmp_path, synthetic_dir) -> dict:
    """The synthetic user split as data.files, with an unreadable first training line."""
    folder = synthetic_dir / "product_review_user"
    train = (folder / "train.jsonl").read_text().splitlines()
    write_lines(tmp_path / "train.jsonl", ["{not json"] + train)
    return {
        "train": str(tmp_path / "train.jsonl"),
        "val": str(folder / "val.jsonl"),
        "test": str(folder / "test.jsonl"),
    }


def rationale_file_without(path: Path, split_files: dict, missing_id: str) -> Path:
    ids = [json.loads(line)["id"] for line in Path(split_files["train"]).read_text().splitlines()[1:]]
    return write_lines(path, [json.dumps({"id": i, "rationale": f"why {i}"}) for i in ids if i != missing_id])


def test_a_training_record_without_a_rationale_is_an_error_naming_file_and_id(tmp_path, split_files, tokenizer):
    train_ids = [r["id"] for r in load_split(DataConfig(files=split_files, on_bad_record="skip"), "train").records]
    path = rationale_file_without(tmp_path / "r.jsonl", split_files, train_ids[2])
    clean_train = write_lines(tmp_path / "clean.jsonl", Path(split_files["train"]).read_text().splitlines()[1:])
    cfg = DataConfig(files={**split_files, "train": str(clean_train)}, rationales=str(path), on_bad_record="error")
    with pytest.raises(RecordError) as caught:
        PersonalisationDataModule(cfg, tokenizer).setup("fit")
    error = caught.value
    assert (error.record_id, error.field, error.reason, error.index) == (
        train_ids[2],
        "rationale",
        "missing_rationale",
        2,
    )
    assert cfg.files["train"] in str(error) and str(path) in str(error)


def test_skip_counts_records_without_a_rationale_and_evaluation_keeps_them(tmp_path, split_files, tokenizer):
    cfg = DataConfig(files=split_files, on_bad_record="skip", **ROOMY)
    train_ids = [r["id"] for r in load_split(cfg, "train").records]
    cfg.rationales = str(rationale_file_without(tmp_path / "r.jsonl", split_files, train_ids[2]))
    datamodule = PersonalisationDataModule(cfg, tokenizer)
    datamodule.setup()
    assert [e["id"] for e in datamodule.examples["train"]] == train_ids[:2] + train_ids[3:]
    report = datamodule.skip_reports["train"].to_dict()
    assert report["reasons"] == {"invalid_json": 1, "missing_rationale": 1}
    assert report["kept"] == len(train_ids) - 1 and report["read"] == len(train_ids) + 1
    assert {"index": 3, "id": train_ids[2], "field": "rationale"}.items() <= report["examples"][1].items()
    for split in ("val", "test"):  # no rationales for evaluation records: all kept, plain targets
        assert len(datamodule.examples[split]) == len(load_split(cfg, split).records)
        assert datamodule.skip_reports[split].to_dict()["skipped"] == 0
        example = datamodule.examples[split][0]
        assert example["input_ids"][example["prompt_len"] :].tolist() == token_ids(tokenizer, example["reference"]) + [
            tokenizer.eos_token_id
        ]
    written = json.loads(datamodule.write_skip_report(tmp_path / "run").read_text())
    assert written["train"]["reasons"]["missing_rationale"] == 1
