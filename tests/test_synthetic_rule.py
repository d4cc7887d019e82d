"""The "thinking should pay" benchmark (data/synthetic_rule.py): the verdict follows the user's
latent rule, is not readable from the query, and the history reveals the rule."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flythinker_pl.data import synthetic_rule
from flythinker_pl.data.schema import TASKS, find_problem

ATTRIBUTES = re.compile(r"is (wireless|wired) with a (metal|plastic) body")
SPLITS = ("train", "val", "test")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def facts(item: dict) -> tuple[bool, bool, bool]:
    """(wireless, metal, kept) as the item's text states them."""
    connection, body = ATTRIBUTES.search(item["description"]).groups()
    verdict = re.search(synthetic_rule.ANSWER_PATTERN, item["reviewText"]).group(1)
    return connection == "wireless", body == "metal", verdict == "keeper"


def records(root: Path, setting: str = "user") -> dict[str, list[dict]]:
    return {split: read(root / f"product_review_{setting}" / f"{split}.jsonl") for split in SPLITS}


def as_item(record: dict) -> dict:
    """The record's target as a profile item (the description is quoted in the query)."""
    return {"description": re.search(r'description "(.*?)"\.', record["input"]).group(1),
            "reviewText": record["output"]}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[bool, Path]:
    out = tmp_path_factory.mktemp("rule")
    return {hint: synthetic_rule.generate(out, num_users=60, items_per_user=8, seed=1, hint=hint)
            for hint in (False, True)}


@pytest.fixture(scope="module")
def parity(made) -> dict[str, int]:
    return {rule["user_id"]: rule["parity"] for rule in read(made[False] / "users.jsonl")}


@pytest.fixture(scope="module")
def targets(made, parity) -> list[tuple[bool, bool, bool, int, float]]:
    """(wireless, metal, kept, user's parity, rating) of every item (each is one user-setting target)."""
    rows = [r for split in records(made[False]).values() for r in split]
    return [(*facts(as_item(r)), parity[r["reviewerId"]], float(re.search(r'rating of "(.*?)"', r["input"]).group(1)))
            for r in rows]


def test_deterministic_and_cached_apart_from_the_other_kind_and_the_hint(made, tmp_path):
    again = synthetic_rule.generate(tmp_path, num_users=60, items_per_user=8, seed=1)
    other = synthetic_rule.generate(tmp_path, num_users=60, items_per_user=8, seed=2)
    assert again.name == "rule-users60-items8-seed1" and made[True].name == "rule-users60-items8-seed1-hint"
    for setting in ("user", "temporal"):
        for split in SPLITS:
            path = Path(f"product_review_{setting}") / f"{split}.jsonl"
            assert (again / path).read_text() == (made[False] / path).read_text()
    assert (other / "product_review_user" / "train.jsonl").read_text() != \
        (again / "product_review_user" / "train.jsonl").read_text()
    assert (again / "COMPLETE").exists()


def test_records_follow_the_schema_and_every_output_has_one_verdict(made):
    for split in records(made[True]).values():
        for record in split:
            assert find_problem(record, TASKS["product_review"]) is None
            assert len(re.findall(synthetic_rule.ANSWER_PATTERN, record["output"])) == 1
            assert record["output"].endswith(tuple(synthetic_rule.VERDICTS.values()))  # the verdict comes last
            assert 8 <= len(record["output"].split()) <= 14


def best_accuracy(kept: list[bool], guesses: list[bool]) -> float:
    """The better of "keep iff guess" and "keep iff not guess"."""
    share = sum(guess == keep for guess, keep in zip(guesses, kept)) / len(kept)
    return max(share, 1 - share)


def test_verdicts_are_balanced_and_follow_the_rule_only(targets):
    kept = [t[2] for t in targets]
    assert len(kept) == 480 and abs(sum(kept) / len(kept) - 0.5) < 0.05
    assert all(keep == synthetic_rule.keeps(p, wireless, metal) for wireless, metal, keep, p, _ in targets)
    chance = {"wireless": [t[0] for t in targets], "metal": [t[1] for t in targets],
              "exactly one of the two, without the parity": [t[0] != t[1] for t in targets],
              "the parity, without the attributes": [t[3] == 1 for t in targets],
              **{f"rating >= {r}": [t[4] >= r for t in targets] for r in (2, 3, 4, 5)}}  # (and so the summary)
    for name, guesses in chance.items():
        assert best_accuracy(kept, guesses) < 0.57, name


def test_hint_only_with_hint_true_and_it_states_the_users_parity(made, parity):
    plain, hinted = records(made[False]), records(made[True])
    for split in SPLITS:
        for without, record in zip(plain[split], hinted[split]):
            hint = synthetic_rule.HINTS[parity[record["reviewerId"]]]
            assert record["input"] == f"{without['input']} {hint}"
            assert not any(h in without["input"] for h in synthetic_rule.HINTS.values())
            assert {**record, "input": without["input"]} == without  # nothing else differs


@pytest.mark.parametrize("setting", ["user", "temporal"])
def test_history_follows_the_users_rule(made, parity, setting):
    for split in records(made[False], setting).values():
        for record in split:
            assert record["profile"], record["id"]
            for item in record["profile"]:
                wireless, metal, kept = facts(item)
                assert kept == synthetic_rule.keeps(parity[record["reviewerId"]], wireless, metal)


@pytest.mark.parametrize("shown", [None, 3])  # the whole profile; the 3 latest (retriever=recency, k=3)
def test_the_historys_verdict_counts_do_not_tell_the_querys(made, shown):
    """The leak a balanced per-user set has: the other items hold one fewer of the query's verdict."""
    rows = [r for split in records(made[False]).values() for r in split]
    kept = [facts(as_item(r))[2] for r in rows]
    profiles = [r["profile"][-shown:] if shown else r["profile"] for r in rows]
    majority = [2 * sum(facts(item)[2] for item in profile) > len(profile) for profile in profiles]
    assert best_accuracy(kept, majority) < 0.57


def test_user_setting_holds_out_whole_users(made):
    users = {split: {r["reviewerId"] for r in rows} for split, rows in records(made[False]).items()}
    assert not users["train"] & users["test"] and not users["train"] & users["val"] and users["test"]


def test_the_experiment_scores_this_benchmarks_verdict():
    base = OmegaConf.load(Path(__file__).parents[1] / "experiments" / "rule" / "base.yaml")
    assert base.eval.answer_pattern == synthetic_rule.ANSWER_PATTERN and base.data.synthetic.kind == "rule"


def test_every_user_split_holds_both_parities_equally(made, parity):
    for split, rows in records(made[False]).items():
        users = {r["reviewerId"] for r in rows}
        assert abs(sum(parity[u] for u in users) - len(users) / 2) <= 0.5, split
