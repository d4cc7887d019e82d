"""The real-data converter (../shared/data, read in place) writes files this data layer loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flythinker_pl.config import DataConfig, load_config
from flythinker_pl.data.convert import convert
from flythinker_pl.data.datamodule import load_split
from flythinker_pl.data.describe import show
from flythinker_pl.data.readers import SPLITS

from helpers import ROOT


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_real_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data folder {SHARED_DATA} is absent")


def acl_subset(tmp_path: Path) -> Path:
    """One ACL volume (K19) and the name variants, linked, not copied: a fast, real input."""
    folder = tmp_path / "acl-anthology"
    (folder / "xml").mkdir(parents=True)
    (folder / "xml" / "K19.xml").symlink_to(SHARED_DATA / "acl-anthology" / "xml" / "K19.xml")
    (folder / "yaml").symlink_to(SHARED_DATA / "acl-anthology" / "yaml")
    return tmp_path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """source -> (output folder, summary), converted once per test module."""
    done = {}

    def get(source: str) -> tuple[Path, dict]:
        if source not in done:
            work = tmp_path_factory.mktemp(source)
            data_root, min_items = (SHARED_DATA, 4) if source == "amazon" else (acl_subset(work), 3)
            done[source] = work / "out", convert(source, work / "out", data_root=data_root, min_items=min_items)
        return done[source]

    return get


@needs_real_data
@pytest.mark.parametrize("source,task", [("amazon", "product_review"), ("acl", "abstract_generation")])
def test_converted_real_data_loads_in_both_settings(converted, source, task):
    out, summary = converted(source)
    assert json.loads((out / f"{source}_conversion.json").read_text()) == summary
    user_key = {"product_review": "reviewerId", "abstract_generation": "name"}[task]
    for setting in ("user", "temporal"):
        cfg = DataConfig(task=task, setting=setting, path=str(out))  # on_bad_record=error
        splits = {split: load_split(cfg, split).records for split in SPLITS}
        assert {split: len(r) for split, r in splits.items()} == {
            split: summary["records"][f"{setting}/{split}"] for split in SPLITS
        }
        users = {split: {r[user_key] for r in records} for split, records in splits.items()}
        if setting == "user":  # disjoint users; every item of a user is one record
            assert not (users["train"] & users["val"] or users["train"] & users["test"] or users["val"] & users["test"])
            assert sum(map(len, splits.values())) == summary["items"]
        else:  # every user is tested on their latest item, with everything before it as profile
            assert users["test"] == users["val"] == set().union(*users.values())
            assert all(len(r["profile"]) >= 1 for r in splits["test"])
    if source == "amazon":
        assert summary["items dropped"]["empty reviewText"] == 7  # as SOURCE.txt counts
        assert summary["items"] == 10_261 - 7


@needs_real_data
def test_a_converted_record_renders(converted, tokenizer):
    text = show(DataConfig(path=str(converted("amazon")[0]), max_records=5), tokenizer, "test", 0)
    assert 'is a rating for the product with description "".' in text and "<|im_start|>assistant" in text


def test_the_real_data_experiment_reads_the_converters_output():
    cfg = load_config(ROOT / "experiments" / "real_amazon.yaml")
    assert (cfg.data.task, cfg.data.path) == ("product_review", "data/real")
    assert cfg.data.profile_tokens < 1250 and cfg.data.target_tokens < 1000  # CPU-sized


def test_a_shared_item_is_never_a_target_in_training_and_evaluation():
    from flythinker_pl.data.convert import without_leaks

    def record(user, output, profile=()):
        return {"id": f"{user}-{output}", "output": output, "profile": [{"abstract": p} for p in profile]}

    splits = {
        "train": [record("a", "paper 1"), record("a", "paper 2", ["paper 5"])],
        "val": [record("b", "paper 1"), record("b", "paper 3")],
        "test": [record("c", "paper 3"), record("c", "paper 4"), record("c", "paper 5")],
    }
    assert without_leaks(splits, "abstract_generation") == {"train": 0, "val": 1, "test": 2}
    assert [r["output"] for r in splits["val"]] == ["paper 3"]
    assert [r["output"] for r in splits["test"]] == ["paper 4"]  # paper 5 was in a training profile
