"""The embedded default data set (data/synthetic.py): deterministic, LongLaMP's product-review schema,
user and temporal splits, preferences that show in the history and not in the query."""

from __future__ import annotations

import filecmp
import json
import re

from flythinker_pl.data import synthetic


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def personas(synthetic_dir):
    return {p["user_id"]: p for p in read(synthetic_dir / "users.jsonl")}


def test_generation_is_deterministic(tmp_path):
    a = synthetic.generate(tmp_path / "a", num_users=6, reviews_per_user=4, seed=3)
    b = synthetic.generate(tmp_path / "b", num_users=6, reviews_per_user=4, seed=3)
    c = synthetic.generate(tmp_path / "c", num_users=6, reviews_per_user=4, seed=4)
    for rel in ("users.jsonl", "product_review_user/train.jsonl", "product_review_temporal/test.jsonl"):
        assert filecmp.cmp(a / rel, b / rel, shallow=False)
        assert not filecmp.cmp(a / rel, c / rel, shallow=False)


def test_records_follow_the_longlamp_product_review_schema(synthetic_dir):
    for record in read(synthetic_dir / "product_review_user" / "train.jsonl"):
        assert set(record) == {"id", "reviewerId", "input", "output", "profile"}
        assert record["input"].startswith("Generate the review text written by a reviewer who has a given an overall")
        assert all(set(item) == {"overall", "summary", "description", "reviewText"} for item in record["profile"])
        assert 150 <= len(record["output"].split()) <= 350


def test_user_split_has_disjoint_users_and_temporal_holds_out_the_latest(synthetic_dir):
    users = {
        split: {r["reviewerId"] for r in read(synthetic_dir / "product_review_user" / f"{split}.jsonl")}
        for split in ("train", "val", "test")
    }
    assert users["train"] and users["val"] and users["test"]
    assert not (users["train"] & users["val"] or users["train"] & users["test"] or users["val"] & users["test"])
    temporal = {
        split: read(synthetic_dir / "product_review_temporal" / f"{split}.jsonl") for split in ("train", "val", "test")
    }
    for test_record in temporal["test"]:
        user = test_record["reviewerId"]
        val_record = next(r for r in temporal["val"] if r["reviewerId"] == user)
        # the latest item is the target; everything before it, including the val target, is its history
        assert val_record["output"] == test_record["profile"][-1]["reviewText"]
        assert len(test_record["profile"]) == len(val_record["profile"]) + 1
        assert all(
            r["output"] != test_record["output"] for r in temporal["train"] + temporal["val"] if r["reviewerId"] == user
        )


def test_preferences_show_in_history_but_not_in_the_query(synthetic_dir):
    truth = personas(synthetic_dir)
    for record in read(synthetic_dir / "product_review_user" / "train.jsonl"):
        persona = truth[record["reviewerId"]]
        for text in [record["output"]] + [item["reviewText"] for item in record["profile"]]:
            assert text.endswith(persona["signoff"])
            covered = re.findall(r"about the (\w+):", text)
            assert covered == persona["aspects"]  # the user's aspects, in the user's order
            praise = {w for w in synthetic.POSITIVE_WORDS if re.search(rf"\b{w}\b", text)}
            assert praise <= set(persona["positive_words"])  # only the user's own words
        assert persona["signoff"] not in record["input"]
        assert "about the" not in record["input"]


def test_users_differ_in_their_latent_preferences(synthetic_dir):
    truth = list(personas(synthetic_dir).values())
    assert len({tuple(p["aspects"]) for p in truth}) > len(truth) // 2
    assert len({p["arc"] for p in truth}) == len(synthetic.ARCS)
