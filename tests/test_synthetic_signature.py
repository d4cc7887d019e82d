"""The signature benchmark (data/synthetic_signature.py): the response ends with the user's word, the
query alone gives chance, three shown history items determine the word at every difficulty (reveal),
and the hint names it."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from flythinker_pl.config import ConfigError, load_config
from flythinker_pl.data import synthetic_signature as signature
from flythinker_pl.data.schema import TASKS, find_problem

SPLITS = ("train", "val", "test")
LEVELS = signature.REVEALS
EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "signature"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(root: Path, setting: str = "user") -> dict[str, list[dict]]:
    return {split: read(root / f"product_review_{setting}" / f"{split}.jsonl") for split in SPLITS}


def named(item: dict) -> list[str]:
    """The words of WORDS a history item shows (after "Overall:" or "noticed")."""
    return [w for w in re.findall(r"\w+", item["reviewText"]) if w in signature.WORDS]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[tuple[int, bool], Path]:
    out = tmp_path_factory.mktemp("signature")
    return {
        (level, hint): signature.generate(out, num_users=160, reveal=level, seed=1, hint=hint)
        for level in LEVELS
        for hint in (False, True)
    }


@pytest.fixture(scope="module")
def words(made) -> dict[str, str]:
    return {user["user_id"]: user["word"] for user in read(made["direct", False] / "users.jsonl")}


def test_deterministic_cached_per_difficulty_and_hint_and_only_the_history_differs(made, tmp_path):
    again = signature.generate(tmp_path, num_users=160, reveal="majority", seed=1)
    assert again.name == "signature-users160-items8-majority-seed1"
    assert made["majority", True].name == "signature-users160-items8-majority-seed1-hint"
    for setting in ("user", "temporal"):
        for split in SPLITS:
            path = Path(f"product_review_{setting}") / f"{split}.jsonl"
            assert (again / path).read_text() == (made["majority", False] / path).read_text()
    other_seed = signature.generate(tmp_path, num_users=160, reveal="majority", seed=2)
    assert read(other_seed / "product_review_user" / "train.jsonl") != read(
        again / "product_review_user" / "train.jsonl"
    )
    easy, hard = records(made["direct", False])["train"], records(made["crowded", False])["train"]
    for one, other in zip(easy, hard):  # the same users, queries and responses at every difficulty
        assert {**one, "profile": None} == {**other, "profile": None}
        assert [item["reviewText"] for item in one["profile"]] != [item["reviewText"] for item in other["profile"]]


@pytest.mark.parametrize("level", LEVELS)
def test_every_response_ends_with_the_users_word_and_the_query_never_names_a_word(made, words, level):
    for split in records(made[level, False]).values():
        for record in split:
            assert find_problem(record, TASKS["product_review"]) is None
            answers = re.findall(signature.ANSWER_PATTERN, record["output"])
            assert answers == [words[record["reviewerId"]]]
            assert record["output"].endswith(f"Overall: {signature.phrase(answers[0])}.")
            assert not set(re.findall(r"\w+", record["input"])) & {*signature.WORDS, *signature.PARTNERS.values()}
            for text in [record["output"], *(item["reviewText"] for item in record["profile"])]:
                assert all(
                    signature.PARTNERS[w] == partner
                    for w, partner in re.findall(rf"\b({'|'.join(signature.WORDS)}) (\w+)", text)
                )  # always "amber glow"


def test_the_query_alone_gives_chance(made, words):
    """The best guess from any query feature (rating, summary, category, brand), learnt on the training
    users, is no better on held-out users than chance (1/8)."""
    splits = records(made["direct", False])
    features = {"rating": r'rating of "(.*?)"', "summary": r'text is "(.*?)"', "product": r"The (\w+) \w+ (\w+)\."}
    for name, pattern in features.items():
        by_value: dict[str, Counter] = {}
        for record in splits["train"]:
            by_value.setdefault(re.search(pattern, record["input"]).group(0), Counter())[
                words[record["reviewerId"]]
            ] += 1
        held_out = splits["val"] + splits["test"]
        guesses = [
            by_value.get(re.search(pattern, r["input"]).group(0), Counter({"": 1})).most_common(1)[0][0]
            for r in held_out
        ]
        accuracy = sum(guess == words[r["reviewerId"]] for guess, r in zip(guesses, held_out)) / len(held_out)
        assert accuracy < 0.17, name


def test_every_split_holds_every_word_equally(made, words):
    for split, rows in records(made["direct", False]).items():
        counts = Counter(words[user] for user in {r["reviewerId"] for r in rows})
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == min(
            len(signature.WORDS), sum(counts.values())
        ), split


@pytest.mark.parametrize("level", LEVELS)
def test_three_shown_items_determine_the_word_in_the_way_the_level_says(made, words, level):
    """Shown the 3 latest other items (retriever=recency, k=3) of either setting, the word wins: direct,
    every item ends "Overall: <word> <partner>."; majority, 2 or 3 do and at most 1 names another word;
    shared / crowded, no item has an "Overall:" line, each notes the word among 1 / 3 others, and the
    word is the only one all three share (crowded: others in two of them, so it leads 3 to 2)."""
    odd_ones, runner_up = Counter(), Counter()  # per record: odd items (majority), the second count (crowded)
    for setting in ("user", "temporal"):
        for split in records(made[level, False], setting).values():
            for record in split:
                word, shown = words[record["reviewerId"]], record["profile"][-3:]
                names = [named(item) for item in shown]
                if level in signature.NOTED_OTHERS:
                    assert all(
                        "Overall" not in item["reviewText"]
                        and word in n
                        and len(set(n)) == len(n) == signature.NOTED_OTHERS[level] + 1
                        for item, n in zip(shown, names)
                    )
                    if len(shown) == 3:
                        assert set.intersection(*map(set, names)) == {word}
                        runner_up[sorted(Counter(w for n in names for w in n).values())[-2]] += 1
                    continue
                assert all(
                    item["reviewText"].endswith(f"Overall: {signature.phrase(n[0])}.") and len(n) == 1
                    for item, n in zip(shown, names)
                )
                others = [n[0] for n in names if n[0] != word]
                assert not others if level == "direct" else len(others) <= 1
                if len(shown) == 3:
                    odd_ones[len(others)] += 1
    if level == "majority":  # 1 item in 4 is odd: 3 shown items of 4 consecutive hold it 3 times in 4
        assert 0.6 < odd_ones[1] / sum(odd_ones.values()) < 0.9
    if level == "crowded":  # 9 other slots over 7 words: always some word in two of the three
        assert set(runner_up) == {2}


@pytest.mark.parametrize("level", list(signature.NOTED_OTHERS))
def test_noted_words_repeat_in_at_most_2_of_4_consecutive_items(made, words, level):
    for record in records(made[level, False], "temporal")["test"]:  # the user's whole history, in order
        word, notes = words[record["reviewerId"]], [named(item) for item in record["profile"]]
        for start in range(len(notes)):
            window = Counter(w for note in notes[start : start + signature.WINDOW] for w in note if w != word)
            assert max(window.values()) <= signature.MAX_REPEAT


def test_hint_only_with_hint_true_and_it_names_the_users_word(made, words):
    plain, hinted = records(made["majority", False]), records(made["majority", True])
    for split in SPLITS:
        for without, record in zip(plain[split], hinted[split]):
            assert (
                record["input"]
                == f"{without['input']} They end with Overall: {signature.phrase(words[record['reviewerId']])}."
            )
            assert {**record, "input": without["input"]} == without


def test_the_corpus_tokenizer_keeps_every_word_one_token_at_one_response_position(made):
    """The tiny presets' BPE (trained on the queries and responses) keeps each word one token, and every
    response holds it at position ANSWER_POSITION, so probes per position compare like with like."""
    from flythinker_pl.models.tiny import train_tokenizer

    splits = records(made["majority", False])
    tokenizer = train_tokenizer([text for record in splits["train"] for text in (record["input"], record["output"])])
    assert all(len(tokenizer.tokenize(" " + word)) == 1 for word in signature.WORDS)
    for record in splits["test"]:
        tokens = tokenizer.tokenize(record["output"])
        assert tokens[signature.ANSWER_POSITION] == "Ġ" + re.search(signature.ANSWER_PATTERN, record["output"]).group(1)


def test_bad_difficulty_is_one_clear_error(tmp_path):
    with pytest.raises(
        ConfigError,
        match="data.synthetic.reveal='hard' is not allowed; choose one of direct, majority, shared, crowded",
    ):
        load_config(EXPERIMENTS / "sft.yaml", ["data.synthetic.reveal=hard"])
    with pytest.raises(ConfigError, match="data.synthetic.reveal sets .* needs data.synthetic.kind=signature"):
        load_config(EXPERIMENTS.parent / "demo.yaml", ["data.synthetic.reveal=shared"])
    with pytest.raises(ConfigError, match="data.synthetic.hint .* needs data.synthetic.kind=rule or signature"):
        load_config(EXPERIMENTS.parent / "demo.yaml", ["data.synthetic.hint=true"])
    with pytest.raises(ValueError, match="reveal='hard': choose one of direct, majority, shared, crowded"):
        signature.generate(tmp_path, num_users=8, reveal="hard")
    from flythinker_pl.config import CHOICES

    assert CHOICES["data.synthetic.reveal"] == signature.REVEALS


def test_the_experiments_score_this_benchmarks_word():
    base = load_config(EXPERIMENTS / "oracle.yaml")
    assert base.eval.answer_pattern == signature.ANSWER_PATTERN and base.data.synthetic.kind == "signature"
    assert base.data.synthetic.hint and base.data.k == 3 and base.data.retriever == "recency"


def test_the_thinking_sweep_reads_every_point_against_sft_and_the_oracle_of_its_difficulty():
    from flythinker_pl.sweep.spec import load_sweep

    sweep = load_sweep(EXPERIMENTS.parents[1] / "ablations" / "thinking_pays.yaml")
    level = {run.point.label: run.config.data.synthetic.reveal for run in sweep.runs}
    seeds = Counter(run.point.label for run in sweep.runs)
    levels = set(level.values())  # at least the span from "SFT infers the word" to "SFT cannot"
    assert levels >= {"shared", "crowded"} and len(level) == 5 * len(levels) and set(seeds.values()) == {3}
    for run in sweep.runs:
        cfg, label = run.config, run.point.label
        if label not in sweep.reference:  # SFT itself
            assert cfg.method == "sft" and not cfg.data.synthetic.hint
            continue
        reference, ceiling = sweep.reference[label], sweep.ceiling.get(label, label)  # the oracle is its own
        assert level[reference] == level[ceiling] == level[label] and "method=sft" in reference
        assert ceiling.endswith(",oracle")
    oracles = [run.config for run in sweep.runs if run.point.label.endswith(",oracle")]
    assert all(c.data.synthetic.hint and c.method == "sft" for c in oracles)
