"""Long synthetic targets (data.synthetic.rounds): the default set is unchanged, length grows with
rounds, and in a long review the user's latent preferences still show in the last quarter."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from flythinker_pl.data import synthetic

# sha256 over (relative path, bytes) of every .jsonl, from the generator as it was before `rounds`.
BEFORE_ROUNDS = {
    (6, 4, 0): "3492a2c8d11424d6b686e62e2245bf4b62cd91b32c2473d1826f1134e59612ec",
    (6, 4, 3): "f3da6b03c1af8712d61ef9ef4f366566b135215f40d4e2c5c8810fb6b2af628b",
}
LEXICON = set(synthetic.POSITIVE_WORDS) | set(synthetic.NEGATIVE_WORDS)
SECTION = re.compile(r"([A-Z][^.:]*?,) (?:about|coming back to) the (\w+): ")
RATING = re.compile(r'overall rating of "(\d)')
ARC_SHIFT = {"rising": lambda p: 2.4 * p - 1.2, "falling": lambda p: 1.2 - 2.4 * p, "steady": lambda p: 0.0}


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(out.rglob("*.jsonl")):
        h.update(str(path.relative_to(out)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reviews(out: Path) -> list[tuple[dict, int, str]]:
    """(persona, rating, text) of every target in the user setting's splits."""
    personas = {p["user_id"]: p for p in read(out / "users.jsonl")}
    return [
        (personas[r["reviewerId"]], int(RATING.search(r["input"])[1]), r["output"])
        for split in ("train", "val", "test")
        for r in read(out / "product_review_user" / f"{split}.jsonl")
    ]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z-]+", text.lower())


def late_vs_early(persona: dict, rating: int, text: str) -> dict:
    """How much of the user's latent truth the first and the last quarter of `text` show."""
    own = set(persona["positive_words"]) | set(persona["negative_words"])
    quarter = len(text) // 4
    early, late = words(text[:quarter]), words(text[-quarter:])
    early_lex, late_lex = [w for w in early if w in LEXICON], [w for w in late if w in LEXICON]
    sections = list(SECTION.finditer(text))
    tail = [s for s in sections if s.start() >= len(text) - quarter]
    # a section's tone is that of the user's words in it; the arc's noise-free sign at its position
    # over the whole text must agree wherever the arc is clear (|score| beyond 2 sd of the noise)
    agree = []
    for index, section in enumerate(sections):
        if section.start() < len(text) - quarter:
            continue
        end = sections[index + 1].start() if index + 1 < len(sections) else len(text)
        body = set(words(text[section.end() : end].split("Taking stock")[0].split("All things considered")[0]))
        tone = int(bool(body & set(persona["positive_words"])))
        score = (rating - 3) * 0.6 + ARC_SHIFT[persona["arc"]](index / max(1, len(sections) - 1))
        if abs(score) > 0.6:
            agree.append(tone == int(score > 0))
    walk = persona["aspects"] * len(sections)
    return {
        "late_share": sum(w in own for w in late_lex) / max(1, len(late_lex)),
        "density_ratio": (len(late_lex) / len(late)) / (len(early_lex) / len(early)),
        "late_sections": len(tail),
        "order": [s[2] for s in sections] == walk[: len(sections)] and len(sections) % len(persona["aspects"]) == 0,
        "connectors": all(
            s[1] == persona["connectors"][i % len(persona["connectors"])] for i, s in enumerate(sections)
        ),
        "late_order": [s[2] for s in tail] == walk[len(sections) - len(tail) : len(sections)],
        "agree": agree,
        "signoff": text.count("All things considered") == 1
        and re.search(r"All things considered, [^.]*\. " + re.escape(persona["signoff"]) + "$", text),
    }


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {k: synthetic.generate(root, num_users=12, reviews_per_user=4, seed=0, rounds=k) for k in (1, 2, 4)}


@pytest.mark.parametrize("args", list(BEFORE_ROUNDS))
def test_rounds_1_writes_the_set_it_always_wrote(tmp_path, args):
    out = synthetic.generate(tmp_path, *args)
    assert out.name == "users{}-reviews{}-seed{}".format(*args)
    assert digest(out) == BEFORE_ROUNDS[args]
    assert digest(synthetic.generate(tmp_path / "explicit", *args, rounds=1)) == BEFORE_ROUNDS[args]


def test_longer_sets_get_their_own_directory_and_the_same_personas(sets):
    assert sets[2].name == "users12-reviews4-seed0-rounds2" and sets[4].name.endswith("-rounds4")
    assert (sets[4] / "users.jsonl").read_bytes() == (sets[1] / "users.jsonl").read_bytes()
    with pytest.raises(ValueError, match="rounds"):
        synthetic.generate(sets[1].parent, num_users=12, reviews_per_user=4, rounds=0)


def test_targets_and_history_grow_linearly_with_rounds(sets):
    def mean_words(out: Path, field: str) -> float:
        records = read(out / "product_review_user" / "train.jsonl")
        texts = (
            [r["output"] for r in records]
            if field == "output"
            else [item["reviewText"] for r in records for item in r["profile"]]
        )
        return sum(len(t.split()) for t in texts) / len(texts)

    for field in ("output", "reviewText"):  # the history is written by the same function as the targets
        one = mean_words(sets[1], field)
        assert 150 <= one <= 260
        for k in (2, 4):
            assert 0.9 * k <= mean_words(sets[k], field) / one <= 1.1 * k, (field, k)


def test_the_users_preferences_hold_to_the_end_of_a_long_review(sets):
    found = [late_vs_early(*review) for review in reviews(sets[4])]
    assert {p["arc"] for p, _, _ in reviews(sets[4])} >= {"rising", "falling"}  # else the arc check is vacuous
    for f in found:
        assert f["late_share"] == 1.0  # only the user's own praise and complaint words, to the end
        assert f["density_ratio"] >= 0.7  # as many of them late as early, not filler
        assert f["late_sections"] >= 3 and f["late_order"] and f["order"] and f["connectors"]
        assert f["signoff"]
    agree = [a for f in found for a in f["agree"]]
    assert len(agree) >= 50 and sum(agree) / len(agree) >= 0.95  # the tone follows the arc through the end


def test_the_checks_fail_on_a_review_padded_with_generic_text(sets):
    """The same checks on a short review padded to four times its length with generic sentences
    before the closing verdict: the last quarter no longer shows the user."""
    filler = " It does what it says on the box and I have used it a lot since then."
    for persona, rating, text in reviews(sets[1])[:8]:
        head, close = text.rsplit(" All things considered, ", 1)
        padded = head + filler * (len(text) * 3 // len(filler)) + " All things considered, " + close
        found = late_vs_early(persona, rating, padded)
        assert found["signoff"]  # the padding keeps the ending ...
        assert found["late_sections"] == 0 and found["density_ratio"] < 0.7  # ... but loses the user


def test_every_length_pretrains_on_its_own_long_reviews(tmp_path):
    """The tiny presets learn where a text ends from pretraining: each length pretrains on its own set."""
    from flythinker_pl.config import DataConfig, SyntheticConfig
    from flythinker_pl.data.datamodule import load_split, pretraining_corpus

    def data(rounds: int) -> DataConfig:
        return DataConfig(
            synthetic_dir=str(tmp_path), synthetic=SyntheticConfig(num_users=6, reviews_per_user=4, rounds=rounds)
        )

    for rounds in (1, 4):
        outputs = {record["output"] for record in load_split(data(rounds), "train").records}
        assert outputs and outputs <= set(pretraining_corpus(data(rounds)))
    longest = {rounds: max(map(len, pretraining_corpus(data(rounds)))) for rounds in (1, 4)}
    assert longest[4] > 3 * longest[1]
