"""The "thinking should pay" benchmark (data.synthetic.kind=rule): short reviews whose verdict
follows a per-user rule that has to be inferred from the history, in the LongLaMP product_review schema.

Every item states two binary attributes in its description (wireless or wired, metal or plastic
body; each a fair coin) and every review restates them, then ends with a verdict, "Verdict: keeper."
or "Verdict: sending it back." (ANSWER_PATTERN extracts it). Each user insists on one of the four
attribute values (their latent `keeps`, as many users of each in every split): an item is kept iff
it has that value. So:
  * over users, neither attribute, the rating nor the summary says anything about the verdict: the
    query alone gives chance (0.5);
  * the history has to be read as evidence: which of the four hypotheses its items' attributes and
    verdicts leave (comparing each item's verdict with both of its attributes, across items), then
    applied to the query's attributes. An item that shares the query's two attributes gives its
    verdict away (a two-attribute lookup); one that shares a single attribute does not.
With hint=true (the oracle) the query also names the value ("This reviewer keeps only metal
gear."), so the Generator only has to check the query's attributes for it.
Why not a parity (keep iff wireless XOR metal equals a user bit, which no single history item leaves
ambiguous): even told the bit, a tiny Generator stays at chance after 400 steps (a three-way
interaction has no lower-order signal for SGD to follow). Why items are drawn independently and the
history is never filtered by the query: a per-user balanced set, or a history without the query's
look-alikes, lets the history's verdict counts alone predict the query's verdict (the other items
hold one fewer of it), which a tiny SFT learns perfectly.
Each user also opens their reviews with their own phrase (a style a model can copy from the
history in one step, the contrast to the verdict).
Deterministic in (num_users, items_per_user, seed); the latent truth is written as `users.jsonl`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .schema import make_record
from .splits import split_users
from .synthetic import write_once, write_set

ANSWER_PATTERN = r"Verdict: (keeper|sending it back)"  # eval.answer_pattern for this benchmark
VERDICTS = {True: "Verdict: keeper.", False: "Verdict: sending it back."}
CONNECTION = {True: "wireless", False: "wired"}
BODY = {True: "metal", False: "plastic"}
VALUES = ("wireless", "wired", "metal", "plastic")  # what a user may insist on
HINT = "This reviewer keeps only {keeps} gear."

CATEGORIES = ["headset", "microphone", "tuner", "amplifier", "looper pedal", "keyboard", "speaker", "in-ear monitor"]
BRANDS = ["Arlo", "Brixton", "Calder", "Delmar", "Everly", "Fenwick", "Garnet", "Halden", "Ives", "Juno"]
FEATURES = [
    "a long warranty",
    "a compact design",
    "a matte finish",
    "a travel pouch",
    "a bright display",
    "a spare battery",
    "an adjustable fit",
    "a low-noise circuit",
]
OPENERS = ["Quick take", "Honest notes", "My thoughts", "A month in", "First impressions", "Straight talk"]
# Sentiment follows the rating only (never the verdict): one phrase per rating.
TONE = {5: "works beautifully", 4: "works well", 3: "works fine", 2: "works poorly", 1: "barely works"}
SUMMARIES = {5: "Love it", 4: "Pretty good", 3: "It is okay", 2: "Not great", 1: "Disappointing"}


@dataclass
class Rule:
    """A user's latent truth: what the history has to reveal."""

    user_id: str
    keeps: str  # one of VALUES: an item is kept iff it has it
    opener: str
    mean_rating: float


def kept(keeps: str, wireless: bool, metal: bool) -> bool:
    return keeps in (CONNECTION[wireless], BODY[metal])


def make_item(rule: Rule, wireless: bool, metal: bool, rng: random.Random) -> dict:
    """A profile item (+ its latent attributes): a ~14-word description and a ~10-word review that
    restates the attributes just before the verdict (what the verdict is checked against)."""
    name = f"{rng.choice(BRANDS)} {rng.choice('ABCDEFGHJK')}{rng.randint(10, 99)} {rng.choice(CATEGORIES)}"
    rating = min(5, max(1, round(rng.gauss(rule.mean_rating, 1.0))))
    connection, body = CONNECTION[wireless], BODY[metal]
    return {
        "overall": float(rating),
        "summary": SUMMARIES[rating],
        "description": f"The {name} is {connection} with a {body} body and {rng.choice(FEATURES)}.",
        "reviewText": f"{rule.opener}: {connection}, {body} body, {TONE[rating]}. "
        f"{VERDICTS[kept(rule.keeps, wireless, metal)]}",
        "wireless": wireless,
        "metal": metal,
    }


def make_user_items(rule: Rule, count: int, rng: random.Random) -> list[dict]:
    """Chronological items, each attribute a fair coin of its own."""
    items, time = [], 1_300_000_000 + rng.randint(0, 10_000_000)
    for _ in range(count):
        wireless, metal = rng.random() < 0.5, rng.random() < 0.5
        items.append({**make_item(rule, wireless, metal, rng), "unixReviewTime": time})
        time += rng.randint(86_400, 90 * 86_400)
    return items


def _record(rules: dict[str, Rule], hint: bool, user_id: str, index: int, target: dict, profile: list[dict]) -> dict:
    """make_record, + the hint in the query."""
    record = make_record("product_review", user_id, index, target, profile)
    if hint:
        record["input"] += " " + HINT.format(keeps=rules[user_id].keeps)
    return record


def generate(
    out_dir: str | Path, num_users: int = 120, items_per_user: int = 8, seed: int = 0, hint: bool = False
) -> Path:
    """Write `<out_dir>/rule-users{N}-items{R}-seed{S}[-hint]/product_review_{user,temporal}/
    {train,val,test}.jsonl` and `users.jsonl`; reuses a complete set. hint=true differs only in the
    queries, which name the value the user insists on."""
    if items_per_user < 4:
        raise ValueError("items_per_user must be >= 4 (temporal needs train, val and test items per user)")
    out = Path(out_dir).expanduser() / f"rule-users{num_users}-items{items_per_user}-seed{seed}{'-hint' * hint}"
    return write_once(out, lambda out: _write(out, num_users, items_per_user, seed, hint))


def balanced_values(user_ids: list[str], seed: int, values: tuple[str, ...] = VALUES) -> dict[str, str]:
    """The value each user insists on (one of `values`), in turn within each split of the user setting,
    so that train, val and test each hold (nearly) as many users of every value: no split is solved by
    the most common one."""
    splits = split_users({user: [None] for user in user_ids}, "user", seed, lambda user, *_: user)
    return {
        user: values[position % len(values)] for members in splits.values() for position, user in enumerate(members)
    }


def _write(out: Path, num_users: int, items_per_user: int, seed: int, hint: bool) -> None:
    user_ids = [f"U{index:05d}" for index in range(num_users)]
    values, rules, users = balanced_values(user_ids, seed), {}, {}
    for index, user_id in enumerate(user_ids):
        rng = random.Random(f"rule-{seed}-{index}")
        rule = Rule(user_id, values[user_id], opener=rng.choice(OPENERS), mean_rating=rng.uniform(2.0, 4.8))
        rules[user_id] = rule
        users[user_id] = make_user_items(rule, items_per_user, rng)
    write_set(out, users, seed, partial(_record, rules, hint), rules.values())
