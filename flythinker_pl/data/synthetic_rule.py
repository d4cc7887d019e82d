"""The "thinking should pay" benchmark (data.synthetic.kind=rule): short reviews whose verdict
follows a per-user rule that has to be inferred from the history, in the LongLaMP product_review schema.

Every item states two binary attributes in its description (wireless or wired, metal or plastic
body) and every review ends with a verdict, "Verdict: keeper." or "Verdict: sending it back."
(ANSWER_PATTERN extracts it). A user keeps an item iff (wireless XOR metal) == their parity, a
latent bit: "exactly one of the two" or "both or neither". So:
  * the verdict is 50/50 and independent of either attribute alone, of the rating and of the
    summary: the query alone gives chance;
  * any one history item reveals the parity (its two attributes XOR its verdict), so the verdict of
    the query is a parity of five facts spread over two texts: the query's two attributes and one
    history item's two attributes and verdict, bound to that item (or, where the history happens to
    hold an item with the query's two attributes, that item's verdict: a two-attribute lookup).
Attributes are drawn independently per item and the history is never filtered by the query: a
per-user balanced set, or a history without the query's look-alikes, lets the history's verdict
counts alone predict the query's (the other items hold one fewer of its verdict), which a tiny SFT
learns perfectly.
With hint=true (the oracle) the query also states the parity in words, so the Generator only has
to combine three facts, all in the query. Each user also opens their reviews with their own phrase
(a style a model can copy from the history in one step, the contrast to the verdict).
Deterministic in (num_users, items_per_user, seed); the latent truth is written as `users.jsonl`.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from .schema import make_record
from .splits import split_users

ANSWER_PATTERN = r"Verdict: (keeper|sending it back)"  # eval.answer_pattern for this benchmark
VERDICTS = {True: "Verdict: keeper.", False: "Verdict: sending it back."}
CONNECTION = {True: "wireless", False: "wired"}
BODY = {True: "metal", False: "plastic"}
HINTS = {1: "This reviewer keeps gear when exactly one of wireless and metal body holds.",
         0: "This reviewer keeps gear when both or neither of wireless and metal body hold."}

CATEGORIES = ["headset", "microphone", "tuner", "amplifier", "looper pedal", "keyboard", "speaker",
              "in-ear monitor"]
BRANDS = ["Arlo", "Brixton", "Calder", "Delmar", "Everly", "Fenwick", "Garnet", "Halden", "Ives", "Juno"]
FEATURES = ["a long warranty", "a compact design", "a matte finish", "a travel pouch", "a bright display",
            "a spare battery", "an adjustable fit", "a low-noise circuit"]
OPENERS = ["Quick take", "Honest notes", "My thoughts", "A month in", "First impressions", "Straight talk"]
# Sentiment follows the rating only (never the verdict): one phrase per rating.
TONE = {5: "works beautifully", 4: "works well", 3: "works fine", 2: "works poorly", 1: "barely works"}
SUMMARIES = {5: "Love it", 4: "Pretty good", 3: "It is okay", 2: "Not great", 1: "Disappointing"}


@dataclass
class Rule:
    """A user's latent truth: what the history has to reveal."""

    user_id: str
    parity: int  # keep iff (wireless XOR metal) == parity: 1 "exactly one", 0 "both or neither"
    opener: str
    mean_rating: float


def keeps(parity: int, wireless: bool, metal: bool) -> bool:
    return (wireless != metal) == bool(parity)


def make_item(rule: Rule, wireless: bool, metal: bool, rng: random.Random) -> dict:
    """A profile item (+ its latent attributes): a ~14-word description and a ~10-word review that
    restates the attributes just before the verdict (the generated text holds two of the three facts
    the verdict needs right before it; the third, the parity, is the history's or the hint's)."""
    name = f"{rng.choice(BRANDS)} {rng.choice('ABCDEFGHJK')}{rng.randint(10, 99)} {rng.choice(CATEGORIES)}"
    rating = min(5, max(1, round(rng.gauss(rule.mean_rating, 1.0))))
    connection, body = CONNECTION[wireless], BODY[metal]
    return {"overall": float(rating), "summary": SUMMARIES[rating],
            "description": f"The {name} is {connection} with a {body} body and {rng.choice(FEATURES)}.",
            "reviewText": f"{rule.opener}: {connection}, {body} body, {TONE[rating]}. "
                          f"{VERDICTS[keeps(rule.parity, wireless, metal)]}",
            "wireless": wireless, "metal": metal}


def make_user_items(rule: Rule, count: int, rng: random.Random) -> list[dict]:
    """Chronological items, each attribute a fair coin of its own."""
    items, time = [], 1_300_000_000 + rng.randint(0, 10_000_000)
    for _ in range(count):
        wireless, metal = rng.random() < 0.5, rng.random() < 0.5
        items.append({**make_item(rule, wireless, metal, rng), "unixReviewTime": time})
        time += rng.randint(86_400, 90 * 86_400)
    return items


def _record(rules: dict[str, Rule], hint: bool, user_id: str, index: int, target: dict,
            profile: list[dict]) -> dict:
    """make_record, + the hint in the query."""
    record = make_record("product_review", user_id, index, target, profile)
    if hint:
        record["input"] += " " + HINTS[rules[user_id].parity]
    return record


def generate(out_dir: str | Path, num_users: int = 120, items_per_user: int = 8, seed: int = 0,
             hint: bool = False) -> Path:
    """Write `<out_dir>/rule-users{N}-items{R}-seed{S}[-hint]/product_review_{user,temporal}/
    {train,val,test}.jsonl` and `users.jsonl`; reuses a complete set. hint=true differs only in the
    queries, which state the user's parity."""
    if items_per_user < 4:
        raise ValueError("items_per_user must be >= 4 (temporal needs train, val and test items per user)")
    out = Path(out_dir).expanduser() / f"rule-users{num_users}-items{items_per_user}-seed{seed}{'-hint' * hint}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # several processes (DDP ranks) may ask at once: one writes
        if not (out / "COMPLETE").exists():
            _write(out, num_users, items_per_user, seed, hint)
    return out


def balanced_parities(user_ids: list[str], seed: int) -> dict[str, int]:
    """Each user's parity, alternating within each split of the user setting, so that train, val
    and test each hold (nearly) as many users of either parity: no split can be solved by the
    majority parity."""
    splits = split_users({user: [None] for user in user_ids}, "user", seed, lambda user, *_: user)
    return {user: position % 2 for members in splits.values() for position, user in enumerate(members)}


def _write(out: Path, num_users: int, items_per_user: int, seed: int, hint: bool) -> None:
    user_ids = [f"U{index:05d}" for index in range(num_users)]
    parities, rules, users = balanced_parities(user_ids, seed), {}, {}
    for index, user_id in enumerate(user_ids):
        rng = random.Random(f"rule-{seed}-{index}")
        rule = Rule(user_id, parities[user_id], opener=rng.choice(OPENERS), mean_rating=rng.uniform(2.0, 4.8))
        rules[user_id] = rule
        users[user_id] = make_user_items(rule, items_per_user, rng)
    make = lambda *args: _record(rules, hint, *args)  # noqa: E731 (split_users' MakeRecord)
    for setting in ("user", "temporal"):
        folder = out / f"product_review_{setting}"
        folder.mkdir(parents=True, exist_ok=True)
        for split, records in split_users(users, setting, seed, make).items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(out / "users.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(rule)) + "\n" for rule in rules.values())
    (out / "COMPLETE").write_text("")
