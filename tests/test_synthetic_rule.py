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
    return {
        "description": re.search(r'description "(.*?)"\.', record["input"]).group(1),
        "reviewText": record["output"],
    }


def best_accuracy(kept: list[bool], guesses: list[bool]) -> float:
    """The better of "keep iff guess" and "keep iff not guess"."""
    share = sum(guess == keep for guess, keep in zip(guesses, kept)) / len(kept)
    return max(share, 1 - share)


def ideal_guess(history: list[tuple[bool, bool, bool]], wireless: bool, metal: bool) -> float:
    """P(kept) for the query given the history, every value a user may insist on equally likely."""
    left = [
        value for value in synthetic_rule.VALUES if all(synthetic_rule.kept(value, w, m) == k for w, m, k in history)
    ]
    return sum(synthetic_rule.kept(value, wireless, metal) for value in left) / len(left)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[bool, Path]:
    out = tmp_path_factory.mktemp("rule")
    return {
        hint: synthetic_rule.generate(out, num_users=60, items_per_user=8, seed=1, hint=hint) for hint in (False, True)
    }


@pytest.fixture(scope="module")
def keeps(made) -> dict[str, str]:
    return {rule["user_id"]: rule["keeps"] for rule in read(made[False] / "users.jsonl")}


@pytest.fixture(scope="module")
def rows(made) -> list[dict]:
    """Every user-setting record (each item is the target of one)."""
    return [r for split in records(made[False]).values() for r in split]


def test_deterministic_and_cached_apart_from_the_other_kind_and_the_hint(made, tmp_path):
    again = synthetic_rule.generate(tmp_path, num_users=60, items_per_user=8, seed=1)
    other = synthetic_rule.generate(tmp_path, num_users=60, items_per_user=8, seed=2)
    assert again.name == "rule-users60-items8-seed1" and made[True].name == "rule-users60-items8-seed1-hint"
    for setting in ("user", "temporal"):
        for split in SPLITS:
            path = Path(f"product_review_{setting}") / f"{split}.jsonl"
            assert (again / path).read_text() == (made[False] / path).read_text()
    assert (other / "product_review_user" / "train.jsonl").read_text() != (
        again / "product_review_user" / "train.jsonl"
    ).read_text()
    assert (again / "COMPLETE").exists()


def test_records_follow_the_schema_and_every_output_ends_with_one_verdict(made):
    for split in records(made[True]).values():
        for record in split:
            assert find_problem(record, TASKS["product_review"]) is None
            assert len(re.findall(synthetic_rule.ANSWER_PATTERN, record["output"])) == 1
            assert record["output"].endswith(tuple(synthetic_rule.VERDICTS.values()))
            assert 8 <= len(record["output"].split()) <= 14


def test_verdicts_are_balanced_follow_the_rule_and_nothing_in_the_query_alone(rows, keeps):
    targets = [facts(as_item(r)) for r in rows]
    kept = [k for _, _, k in targets]
    assert len(kept) == 480 and abs(sum(kept) / len(kept) - 0.5) < 0.05
    assert all(k == synthetic_rule.kept(keeps[r["reviewerId"]], w, m) for r, (w, m, k) in zip(rows, targets))
    ratings = [float(re.search(r'rating of "(.*?)"', r["input"]).group(1)) for r in rows]
    chance = {
        "wireless": [w for w, _, _ in targets],
        "metal": [m for _, m, _ in targets],
        "both attributes agree": [w == m for w, m, _ in targets],
        **{f"rating >= {r}": [rating >= r for rating in ratings] for r in (2, 3, 4, 5)},
    }  # (and the summary)
    for name, guesses in chance.items():
        assert best_accuracy(kept, guesses) < 0.57, name


def test_every_user_split_holds_every_value_equally(made, keeps):
    for split, split_rows in records(made[False]).items():
        users = {r["reviewerId"] for r in split_rows}
        counts = [sum(keeps[u] == value for u in users) for value in synthetic_rule.VALUES]
        assert max(counts) - min(counts) <= 1, split


def test_hint_only_with_hint_true_and_it_names_the_users_value(made, keeps):
    plain, hinted = records(made[False]), records(made[True])
    for split in SPLITS:
        for without, record in zip(plain[split], hinted[split]):
            hint = f"This reviewer keeps only {keeps[record['reviewerId']]} gear."
            assert record["input"] == f"{without['input']} {hint}"
            assert "This reviewer keeps" not in without["input"]
            assert {**record, "input": without["input"]} == without  # nothing else differs


@pytest.mark.parametrize("setting", ["user", "temporal"])
def test_history_follows_the_users_rule(made, keeps, setting):
    for split in records(made[False], setting).values():
        for record in split:
            assert record["profile"], record["id"]
            for item in record["profile"]:
                wireless, metal, kept = facts(item)
                assert kept == synthetic_rule.kept(keeps[record["reviewerId"]], wireless, metal)


def test_the_history_must_be_reasoned_over(rows):
    """Shown 3 items (retriever=recency, k=3): their verdict counts say nothing; an item with one of
    the query's attributes says nothing alone either; reasoning over all of them does (the ideal
    observer) and beats copying a look-alike's verdict."""
    kept, majority, one_shared, ideal, lookalike = [], [], [], [], []
    for record in rows:
        wireless, metal, keep = facts(as_item(record))
        history = [facts(item) for item in record["profile"][-3:]]
        kept.append(keep)
        majority.append(2 * sum(k for _, _, k in history) > len(history))
        shares_one = [k for w, m, k in history if (w == wireless) != (m == metal)]
        one_shared.append(shares_one[0] if shares_one else majority[-1])
        ideal.append(ideal_guess(history, wireless, metal))
        same = [k for w, m, k in history if (w, m) == (wireless, metal)]
        lookalike.append(float(same[0]) if same else 0.5)
    assert best_accuracy(kept, majority) < 0.57 and best_accuracy(kept, one_shared) < 0.6

    def accuracy(p_kept: list[float]) -> float:  # guessing the likelier verdict; a tie scores 0.5
        return sum(0.5 if p == 0.5 else (p > 0.5) == k for p, k in zip(p_kept, kept)) / len(kept)

    assert accuracy(ideal) > 0.9 and 0.7 < accuracy(lookalike) < 0.85


def test_the_experiment_scores_this_benchmarks_verdict():
    base = OmegaConf.load(Path(__file__).parents[1] / "experiments" / "rule" / "base.yaml")
    assert base.eval.answer_pattern == synthetic_rule.ANSWER_PATTERN and base.data.synthetic.kind == "rule"
