"""Bad input that used to slip through (issue 16, item 11): each gives one clear error naming the
file (and record), or an exact skip count that every stage of a run adds to data_skipped.json."""

from __future__ import annotations

import json
import logging
import re
import types

import pytest

from flythinker_pl.cli import main
from flythinker_pl.config import DataConfig
from flythinker_pl.data.batching import collate
from flythinker_pl.data.datamodule import PersonalisationDataModule, load_split, pretraining_corpus
from flythinker_pl.data.encode import IGNORE_INDEX
from flythinker_pl.data.readers import SPLITS
from flythinker_pl.data.schema import SKIP_REPORT, DataError, RecordError, SplitReport, write_skip_report
from flythinker_pl.lit.run import run_experiment
from flythinker_pl.models import backbones, tiny

from helpers import DEBUG_CONFIG, GOOD, encoded, spoiled, write_jsonl


BAD = spoiled(lambda r: r.update(output=""))


def split_files(folder, **lines: list[bytes]) -> dict[str, str]:
    """data.files for train/val/test; a split not given holds two good records."""
    good = [encoded({**GOOD, "id": f"good-{n}"}) for n in range(2)]
    return {split: str(write_jsonl(folder / f"{split}.jsonl", lines.get(split, good))) for split in SPLITS}


def test_an_enormous_validation_output_is_cut_for_the_loss_and_scored_whole(tmp_path, tokenizer):
    output = " ".join(["great"] * 200_000)
    files = split_files(tmp_path, val=[encoded({**GOOD, "id": "huge", "output": output})])
    cfg = DataConfig(files=files, target_tokens=64)
    datamodule = PersonalisationDataModule(cfg, tokenizer)
    datamodule.setup("validate")
    example = datamodule.examples["val"][0]
    assert len(example["input_ids"]) == example["prompt_len"] + 64  # cut as training cuts: no EOS
    assert example["input_ids"][-1] != tokenizer.eos_token_id and example["cut"]["target"]
    assert example["reference"] == output and example["target_tokens"] > 100_000  # scored (and counted) whole
    batch = collate([example], pad_id=tokenizer.pad_token_id)
    assert (batch["labels"] != IGNORE_INDEX).sum() == 64 and batch["reference"] == [output]


@pytest.mark.parametrize(
    "name,content",
    [("train.jsonl", b""), ("train.jsonl", b"\n  \n"), ("train.json", b"[]"), ("train.json", b"\xef\xbb\xbf[ ]\n")],
)
@pytest.mark.parametrize("on_bad_record", ["error", "skip"])
def test_an_empty_split_file_is_an_error_naming_the_file(tmp_path, name, content, on_bad_record):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(
        DataError,
        match=rf"^{re.escape(str(path))}: the train split holds no records .*: put its "
        "records there",
    ):
        load_split(DataConfig(files={"train": str(path)}, on_bad_record=on_bad_record), "train")


def test_a_train_split_with_every_record_skipped_is_an_error_for_fit_only(tmp_path, tokenizer):
    files = split_files(tmp_path, train=[encoded(BAD), b"{not json"])
    cfg = DataConfig(files=files, on_bad_record="skip")
    for read in (lambda: pretraining_corpus(cfg), lambda: PersonalisationDataModule(cfg, tokenizer).setup("fit")):
        with pytest.raises(
            DataError,
            match=rf"^{re.escape(files['train'])}: the train split has no usable record: "
            r"all 2 were left out \(empty_output: 1, invalid_json: 1\)",
        ):
            read()
    datamodule = PersonalisationDataModule(cfg, tokenizer)  # decoding the test split never reads train
    datamodule.setup("predict")
    datamodule.setup("test")
    assert len(datamodule.examples["test"]) == 2 and "train" not in datamodule.examples


def test_fit_on_an_empty_train_split_exits_with_one_error_line(run_config, tmp_path, capsys):
    files = split_files(tmp_path, train=[encoded(BAD)])
    cfg = run_config()
    code = main(
        [
            "fit",
            "-c",
            str(DEBUG_CONFIG),
            f"logging.cache_dir={cfg.logging.cache_dir}",
            f"logging.root_dir={cfg.logging.root_dir}",
            "data.on_bad_record=skip",
            *[f"data.files.{split}={path}" for split, path in files.items()],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"error: {files['train']}: the train split has no usable record" in err
    assert "Traceback" not in err


def test_a_tiny_preset_builds_from_a_one_record_data_set(tmp_path):
    one = encoded({**GOOD, "output": "Solid tuner."})
    cfg = DataConfig(files=split_files(tmp_path / "data", train=[one]))
    corpus = pretraining_corpus(cfg)
    assert len(corpus) == 2  # the record's query and output: less than one block of the pretraining
    location = tiny.ensure_pretrained("tiny-64", lambda: corpus, steps=2, seed=0, cache_dir=str(tmp_path / "cache"))
    model, tokenizer = backbones.load(str(location))
    assert model.config.hidden_size == 64 and tokenizer.eos_token == tiny.EOS


def test_the_skip_report_merges_the_splits_each_stage_writes(tmp_path):
    def report(read, skipped):
        return SplitReport(
            "f.jsonl",
            read,
            [RecordError("f.jsonl", i, None, "output", "empty_output", "empty") for i in range(skipped)],
        )

    path = write_skip_report({"train": report(5, 1), "val": report(4, 2)}, tmp_path)
    write_skip_report({"test": report(3, 0)}, tmp_path)
    write_skip_report({"val": report(4, 0)}, tmp_path)  # a split written again replaces its entry
    written = json.loads(path.read_text())
    assert {split: written[split]["skipped"] for split in written} == {"train": 1, "val": 0, "test": 0}


def test_the_skip_report_after_run_holds_train_val_and_test(run_config, synthetic_dir, tmp_path):
    folder = synthetic_dir / "product_review_user"
    bad = {"train": 1, "val": 2, "test": 3}
    files = {
        split: str(
            write_jsonl(
                tmp_path / "data" / f"{split}.jsonl",
                [b"{not json"] * n + (folder / f"{split}.jsonl").read_bytes().splitlines(),
            )
        )
        for split, n in bad.items()
    }
    cfg = run_config(
        "method=sft",
        "data.on_bad_record=skip",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        "decode.max_new_tokens=2",
        "eval.n_bootstrap=0",
        *[f"data.files.{split}={path}" for split, path in files.items()],
    )
    written = json.loads((run_experiment(cfg) / SKIP_REPORT).read_text())
    assert {split: written[split]["skipped"] for split in written} == bad
    assert all(written[split]["reasons"] == {"invalid_json": n} for split, n in bad.items())


def test_each_skip_warning_is_logged_once_per_split(tmp_path, tokenizer, caplog):
    files = split_files(tmp_path, train=[encoded(BAD), encoded(GOOD)], val=[encoded(GOOD), b"[1]"])
    cfg = DataConfig(files=files, on_bad_record="skip")
    with caplog.at_level(logging.WARNING, logger="flythinker_pl.data.schema"):
        for _ in ("generator", "reasoner"):  # each tiny preset reads the training split for its corpus
            pretraining_corpus(cfg)
        datamodule = PersonalisationDataModule(cfg, tokenizer)
        datamodule.trainer = types.SimpleNamespace(log_dir=str(tmp_path / "run"), is_global_zero=True)
        for stage in ("validate", "fit"):  # as `fit` calls them
            datamodule.setup(stage)
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [w.split(":")[0] for w in warnings] == ["train", "val"]
    # the first bad record named; the report's place said as what a run does (`data stats` writes none)
    assert "the first: record 0, field 'output': empty or whitespace only" in warnings[0]
    assert f"a run keeps the counts and the first 5 in <run dir>/{SKIP_REPORT}" in warnings[0]
    assert "details in" not in warnings[0]
