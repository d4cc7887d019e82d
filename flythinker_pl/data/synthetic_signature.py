"""The "does thinking pay?" benchmark on CPU (data.synthetic.kind=signature): every user has a
signature word that the history reveals and the query never does; the response must end with it.

Each user has one signature word from WORDS (8 words, as many users of each in every split). The
response is a short review of the query item that ends with it: "Quick take: works well. Overall:
copper." (ANSWER_PATTERN extracts it). The query (rating, description, summary) holds no word of WORDS
and nothing that depends on the user's word: the query alone gives chance (1/8). How the history
reveals the word is the difficulty (`reveal`):
  * direct: every history item ends the same way, "Overall: copper." (a copy);
  * majority: so does every item but one in any WINDOW (4) consecutive ones, which ends with another
    word, a different one each time: of the 3 items a record shows (retriever=recency, k=3: 3 of 4
    consecutive items in either setting) 2 or 3 name the word, at most 1 another (a vote);
  * shared: no item has an "Overall:" line; each notes the word beside one other ("noticed the copper
    coin and the maple leaf"), no other word in more than MAX_REPEAT (2) of any 4 consecutive items:
    the word is the one all 3 shown items share (a match across items);
  * crowded: the same among 3 others (4 of the 8 words per item), so several others are in 2 of the
    3 shown items and the word leads a count of 3 to 2.
In every case 3 shown items leave exactly one candidate. With hint=true (the oracle) the query also
states the word in the answer's own form ("They end with Overall: copper."): the upper bound the
history-only methods are read against.
Designed from what tiny transformers learn fast, as calibrated on 2 CPU cores (README "Does thinking
pay?"): a tiny Generator copies the word that followed "Overall:" elsewhere in its prompt (an
induction copy, learnt in 400 steps), but not a word mentioned in any other form ("noticed the
copper", even as the only word of the history, or "Copper is their word.") nor one of 32 words; the
rule benchmark (synthetic_rule.py) left even its oracle at chance. Each user also opens their reviews
with their own phrase, a style copied from the history. Deterministic in (num_users, items_per_user,
reveal, seed): every difficulty has the same users, queries and responses; the latent truth is
written as `users.jsonl`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .schema import make_record
from .synthetic import write_once, write_set
from .synthetic_rule import SUMMARIES, TONE, balanced_values  # sentiment follows the rating only (never the word)

ANSWER_PATTERN = r"Overall: (\w+)"  # eval.answer_pattern for this benchmark
# The word's response position with the corpus-trained tiny tokenizer: every opener and tone is two
# tokens ("Quick take: works well. Overall: copper."), so probes per position compare like with like.
ANSWER_POSITION = 8
# Short everyday words the corpus-trained BPE keeps whole (tests/test_synthetic_signature.py checks).
WORDS = ("amber", "cobalt", "copper", "ivory", "maple", "olive", "slate", "velvet")
# Each word is always written with its own second word ("amber glow"), as each opener is ("Quick take"):
# a word followed by the same token everywhere ("the amber.") leaves its identity out of the hidden
# state at its position, where a copy reads it, and a tiny Generator does not learn to copy it.
PARTNERS = {
    "amber": "glow",
    "cobalt": "sky",
    "copper": "coin",
    "ivory": "keys",
    "maple": "leaf",
    "olive": "branch",
    "slate": "roof",
    "velvet": "rope",
}
REVEALS = ("direct", "majority", "shared", "crowded")  # how the history reveals the word, easiest first
NOTED_OTHERS = {"shared": 1, "crowded": 3}  # other words an item notes beside the user's
WINDOW, MAX_REPEAT = 4, 2  # shared, crowded: any other word is in at most 2 of any 4 consecutive items
HINT = "They end with Overall: {phrase}."

CATEGORIES = ["headset", "microphone", "tuner", "amplifier", "pedal", "keyboard", "speaker", "stand"]
BRANDS = ["Arlo", "Brixton", "Calder", "Delmar", "Everly", "Fenwick", "Gordon", "Halden", "Ives", "Juno"]
OPENERS = ["Quick take", "Honest notes", "My thoughts", "Short version", "First impressions", "Straight talk"]


@dataclass
class Signature:
    """A user's latent truth: what the history has to reveal."""

    user_id: str
    word: str  # one of WORDS: in every history item, and the response's last word
    opener: str
    mean_rating: float


def phrase(word: str) -> str:
    return f"{word} {PARTNERS[word]}"


def noted_words(word: str, others: int, before: list[list[str]], rng: random.Random) -> list[str]:
    """`word` and `others` other words, the least used in the WINDOW - 1 notes `before` it first (ties at
    random), none already in MAX_REPEAT of them (3 others of 7 always leave enough); in a random order."""
    recent = [w for noted in before[-(WINDOW - 1) :] for w in noted]
    candidates = [w for w in WORDS if w != word and recent.count(w) < MAX_REPEAT]
    rng.shuffle(candidates)
    noted = [word, *sorted(candidates, key=recent.count)[:others]]
    rng.shuffle(noted)
    return noted


def noted_text(words: list[str]) -> str:
    """ "the amber glow and the slate roof", "the amber glow, the slate roof, ... and the olive branch"."""
    named = [f"the {phrase(w)}" for w in words]
    return f"{', '.join(named[:-1])} and {named[-1]}"


def history_texts(word: str, count: int, reveal: str, rng: random.Random) -> list[str]:
    """What each of a user's `count` items shows in the history after "<opener>: <tone>": the end
    "Overall: <word>." (direct), the same with another word in one item of every WINDOW (majority), or
    "noticed the <word> and the <other>" (shared; crowded: among 3 others)."""
    if reveal in NOTED_OTHERS:
        notes: list[list[str]] = []
        for _ in range(count):
            notes.append(noted_words(word, NOTED_OTHERS[reveal], notes, rng))
        return [f"; noticed {noted_text(noted)}." for noted in notes]
    off, others = rng.randrange(WINDOW), [w for w in WORDS if w != word]
    rng.shuffle(others)  # the odd items' words: a different one each (count // WINDOW + 1 <= 7 of them)
    named = [
        others[index // WINDOW] if reveal == "majority" and index % WINDOW == off else word for index in range(count)
    ]
    return [f". Overall: {phrase(w)}." for w in named]


def make_user_items(
    user: Signature, count: int, reveal: str, rng: random.Random, notes_rng: random.Random
) -> list[dict]:
    """Chronological items: what the history shows (reviewText) and the review a response writes
    (`response`), both opening with the user's phrase and following the rating. What the history
    reveals comes from `notes_rng` alone, so every difficulty has the same users, items, queries and
    responses."""
    items, time = [], 1_300_000_000 + rng.randint(0, 10_000_000)
    for shown in history_texts(user.word, count, reveal, notes_rng):
        rating = min(5, max(1, round(rng.gauss(user.mean_rating, 1.0))))
        name = f"{rng.choice(BRANDS)} {rng.choice('ABCDEFGHJK')}{rng.randint(10, 99)} {rng.choice(CATEGORIES)}"
        items.append(
            {
                "overall": float(rating),
                "summary": SUMMARIES[rating],
                "description": f"The {name}.",
                "reviewText": f"{user.opener}: {TONE[rating]}{shown}",
                "response": f"{user.opener}: {TONE[rating]}. Overall: {phrase(user.word)}.",
                "unixReviewTime": time,
            }
        )
        time += rng.randint(86_400, 90 * 86_400)
    return items


def _record(
    users: dict[str, Signature], hint: bool, user_id: str, index: int, target: dict, profile: list[dict]
) -> dict:
    """make_record with the target's review as the output (the history shows the notes), + the hint."""
    record = make_record("product_review", user_id, index, {**target, "reviewText": target["response"]}, profile)
    if hint:
        record["input"] += " " + HINT.format(phrase=phrase(users[user_id].word))
    return record


def generate(
    out_dir: str | Path,
    num_users: int = 240,
    items_per_user: int = 8,
    reveal: str = "direct",
    seed: int = 0,
    hint: bool = False,
) -> Path:
    """Write `<out_dir>/signature-users{N}-items{R}-{reveal}-seed{S}[-hint]/product_review_{user,temporal}/
    {train,val,test}.jsonl` and `users.jsonl`; reuses a complete set. hint=true differs only in the
    queries, which name the user's word."""
    if items_per_user < 4:
        raise ValueError("items_per_user must be >= 4 (temporal needs train, val and test items per user)")
    if reveal not in REVEALS:
        raise ValueError(f"reveal={reveal!r}: choose one of {', '.join(REVEALS)}")
    name = f"signature-users{num_users}-items{items_per_user}-{reveal}-seed{seed}{'-hint' * hint}"
    return write_once(
        Path(out_dir).expanduser() / name, lambda out: _write(out, num_users, items_per_user, reveal, seed, hint)
    )


def _write(out: Path, num_users: int, items_per_user: int, reveal: str, seed: int, hint: bool) -> None:
    user_ids = [f"U{index:05d}" for index in range(num_users)]
    words, users, items = balanced_values(user_ids, seed, WORDS), {}, {}
    for index, user_id in enumerate(user_ids):
        rng = random.Random(f"signature-{seed}-{index}")
        user = Signature(user_id, words[user_id], opener=rng.choice(OPENERS), mean_rating=rng.uniform(2.0, 4.8))
        users[user_id] = user
        items[user_id] = make_user_items(
            user, items_per_user, reveal, rng, random.Random(f"signature-notes-{seed}-{index}")
        )
    write_set(out, items, seed, partial(_record, users, hint), users.values())
