"""Synthetic personalised product reviews in the LongLaMP `product_review` schema.

Each reviewer has latent preferences that show in their own history and that the query (rating,
product description, summary) does not reveal:
  * a private lexicon: their own praise and complaint words, intensifiers and connectors;
  * which aspects they write about, and in which order;
  * a tone arc: how their sentiment moves through a review (rising, falling, steady);
  * a habitual opening and sign-off.
So a non-personalised model can predict the rating-driven gist but not the words, the aspect
order or the ending; the later a segment, the more it depends on the user (position-dependent).
`rounds` > 1 makes every review (targets and history alike) about `rounds` times longer by walking
the aspects again ("Moving on, coming back to the sound: ..."), with the arc spanning the whole
text and a "taking stock" line in the user's words after each pass, so the user keeps mattering to
the end rather than the tail being generic filler.
Everything is deterministic in (num_users, reviews_per_user, seed, rounds); the latent truth per
user is written next to the records as `users.jsonl`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from filelock import FileLock

from .schema import make_record
from .splits import MakeRecord, split_users

CATEGORIES = {
    "guitar strings": ["tone", "winding", "coating", "ball ends"],
    "clip-on tuner": ["display", "clip", "needle", "battery door"],
    "guitar capo": ["spring", "rubber pad", "lever", "frame"],
    "practice amplifier": ["speaker", "gain knob", "cabinet", "headphone jack"],
    "instrument cable": ["jack", "shielding", "jacket", "strain relief"],
    "dynamic microphone": ["grille", "capsule", "switch", "body"],
    "overdrive pedal": ["footswitch", "drive knob", "enclosure", "true bypass"],
    "studio headphones": ["ear pads", "headband", "cable", "drivers"],
    "guitar stand": ["legs", "neck cradle", "rubber feet", "hinge"],
    "guitar strap": ["leather", "buckle", "padding", "stitching"],
}
BRANDS = ["Arlo", "Brixton", "Calder", "Delmar", "Everly", "Fenwick", "Garnet", "Halden", "Ives", "Juno"]
FEATURES = [
    "a lifetime warranty",
    "a compact design",
    "a matte finish",
    "a travel pouch",
    "gold-plated contacts",
    "a reinforced frame",
    "an adjustable fit",
    "a low-noise circuit",
]

POSITIVE_WORDS = [
    "superb",
    "stellar",
    "lovely",
    "brilliant",
    "solid",
    "excellent",
    "fantastic",
    "terrific",
    "impressive",
    "wonderful",
    "splendid",
    "top-notch",
    "sweet",
    "marvelous",
]
NEGATIVE_WORDS = [
    "flimsy",
    "disappointing",
    "mediocre",
    "cheap",
    "shoddy",
    "underwhelming",
    "awkward",
    "clunky",
    "poor",
    "lackluster",
    "annoying",
    "sloppy",
    "frustrating",
]
INTENSIFIERS = [
    "really",
    "truly",
    "seriously",
    "remarkably",
    "genuinely",
    "incredibly",
    "quite",
    "downright",
    "honestly",
]
CONNECTORS = [
    "Next up,",
    "Moving on,",
    "As for the rest,",
    "On top of that,",
    "Then again,",
    "Also worth saying,",
    "Beyond that,",
    "Meanwhile,",
    "Now,",
]
OPENERS = [
    "Okay, so I picked up the {product}",
    "Long story short, I bought the {product}",
    "Here is my honest take on the {product}",
    "I have been gigging with the {product}",
    "Quick background: I ordered the {product}",
    "After a month of daily use with the {product}",
    "Fellow players, let me tell you about the {product}",
    "My two cents on the {product}",
]
SIGNOFFS = [
    "Keep on rocking, friends.",
    "Hope this helps someone out there.",
    "That is all from me, happy playing.",
    "Take it from an old session player.",
    "Cheers and good luck with your rig.",
    "Your ears will thank you.",
    "Over and out.",
    "Play loud, play often.",
]
ASPECTS = ["sound", "build", "price", "comfort", "setup", "durability", "looks", "packaging"]
ARCS = ["rising", "falling", "steady"]

# Two sentence shapes per aspect and tone; {pos}/{neg} are the user's own words.
SENTENCES = {
    ("sound", 1): [
        "The sound is {i} {pos}, warm and clear even at higher volume.",
        "Tone-wise it is {pos}, with a {i} {pos} low end that never gets muddy.",
    ],
    ("sound", 0): [
        "The sound is {i} {neg}, thin and harsh once you push it.",
        "Tone-wise it is {neg}, and the highs come across {i} {neg} in a mix.",
    ],
    ("build", 1): [
        "The build is {pos}; the {part} feels {i} sturdy in the hand.",
        "Construction is {pos} all round, and the {part} is {i} well made.",
    ],
    ("build", 0): [
        "The build is {neg}; the {part} feels {i} fragile in the hand.",
        "Construction is {neg}, and the {part} already looks {i} worn.",
    ],
    ("price", 1): [
        "For the money it is {i} {pos}, easily worth what I paid.",
        "Value is {pos}; I would pay more for something this {pos}.",
    ],
    ("price", 0): [
        "For the money it is {i} {neg}, and I expected far more.",
        "Value is {neg}; cheaper options are not this {neg}.",
    ],
    ("comfort", 1): [
        "It is {i} comfortable, and the {part} never gets in the way.",
        "Comfort is {pos} even after a three hour rehearsal.",
    ],
    ("comfort", 0): [
        "It is {i} uncomfortable, and the {part} keeps getting in the way.",
        "Comfort is {neg} after an hour, which is {i} {neg}.",
    ],
    ("setup", 1): [
        "Setup took two minutes and was {i} {pos}, no manual needed.",
        "Getting it going was {pos}; the {part} just works.",
    ],
    ("setup", 0): [
        "Setup was {i} {neg}, and the manual did not help at all.",
        "Getting it going was {neg}; the {part} fought me every step.",
    ],
    ("durability", 1): [
        "Durability looks {pos}; months in, the {part} is {i} fine.",
        "It has survived gigs and drops, {i} {pos} for this kind of gear.",
    ],
    ("durability", 0): [
        "Durability is {neg}; the {part} started failing within weeks.",
        "It did not survive a single tour, which is {i} {neg}.",
    ],
    ("looks", 1): [
        "It looks {i} {pos} on stage, and the {part} catches the light nicely.",
        "Visually it is {pos}, with a finish that is {i} {pos}.",
    ],
    ("looks", 0): [
        "It looks {i} {neg} up close, and the {part} is scratched already.",
        "Visually it is {neg}, with a finish that is {i} {neg}.",
    ],
    ("packaging", 1): [
        "It arrived in {pos} packaging, {i} well protected.",
        "The box was {pos} and everything inside was {i} neat.",
    ],
    ("packaging", 0): [
        "It arrived in {neg} packaging, {i} badly dented.",
        "The box was {neg} and the {part} was loose inside.",
    ],
}
EXTRA_SENTENCES = {
    1: [
        "I keep reaching for it over my other gear.",
        "No complaints on that front.",
        "My bandmates noticed the difference right away.",
    ],
    0: [
        "I keep reaching for my old gear instead.",
        "That part really let me down.",
        "My bandmates noticed the problem right away.",
    ],
}
# Later passes open each aspect's section with a second look, so a pass is not a copy of the first.
REVISIT_SENTENCES = {
    1: [
        "Weeks later the {part} still holds up, {i} {pos}.",
        "A second look only confirms it: {i} {pos}.",
        "With more hours on it, it has grown on me, {i} {pos} now.",
    ],
    0: [
        "Weeks later the {part} is showing its age, {i} {neg}.",
        "A second look only confirms it: {i} {neg}.",
        "With more hours on it, it has worn on me, {i} {neg} now.",
    ],
}
SUMMARIES = {
    5: ["Love it", "Great buy", "Five stars"],
    4: ["Very good", "Pretty good", "Happy with it"],
    3: ["It is okay", "Decent", "Mixed feelings"],
    2: ["Not great", "Meh", "Expected more"],
    1: ["Avoid", "Terrible", "Returned it"],
}


@dataclass
class Persona:
    """A reviewer's latent truth: what personalisation should learn from their history."""

    user_id: str
    positive_words: list[str]
    negative_words: list[str]
    intensifiers: list[str]
    connectors: list[str]
    aspects: list[str]  # covered in this order
    arc: str
    opener: str
    signoff: str
    sentences_per_aspect: int
    mean_rating: float


def make_persona(rng: random.Random, user_id: str) -> Persona:
    return Persona(
        user_id=user_id,
        positive_words=rng.sample(POSITIVE_WORDS, 3),
        negative_words=rng.sample(NEGATIVE_WORDS, 3),
        intensifiers=rng.sample(INTENSIFIERS, 2),
        connectors=rng.sample(CONNECTORS, 3),
        aspects=rng.sample(ASPECTS, rng.randint(4, 5)),
        arc=rng.choice(ARCS),
        opener=rng.choice(OPENERS),
        signoff=rng.choice(SIGNOFFS),
        sentences_per_aspect=rng.randint(3, 4),
        mean_rating=rng.uniform(2.0, 4.8),
    )


def _is_positive(persona: Persona, rating: int, position: float, rng: random.Random) -> int:
    """Sentiment of a section at relative `position` in [0, 1]: the rating plus the user's arc."""
    arc_shift = {"rising": 2.4 * position - 1.2, "falling": 1.2 - 2.4 * position, "steady": 0.0}[persona.arc]
    score = (rating - 3) * 0.6 + arc_shift + rng.gauss(0.0, 0.3)
    return int(score > 0)


def write_review(persona: Persona, product: dict, rating: int, rng: random.Random, rounds: int = 1) -> str:
    """Opener, overall verdict, `rounds` passes over the user's aspects, closing verdict, sign-off.

    The arc's position runs over every section of every pass. rounds=1 draws from `rng` in exactly
    the order it always has, so the default data set stays byte-identical."""
    words = dict(i=None, pos=None, neg=None, part=None)

    def fill(template: str) -> str:
        words.update(
            i=rng.choice(persona.intensifiers),
            pos=rng.choice(persona.positive_words),
            neg=rng.choice(persona.negative_words),
            part=rng.choice(product["parts"]),
        )
        return template.format(**words)

    parts = [persona.opener.format(product=product["name"]) + "."]
    parts.append(fill("Overall I would call it {i} {pos}." if rating >= 3 else "Overall I would call it {i} {neg}."))
    sections = rounds * len(persona.aspects)
    for round_ in range(rounds):
        tones = []
        for index, aspect in enumerate(persona.aspects):
            at = round_ * len(persona.aspects) + index
            positive = _is_positive(persona, rating, at / max(1, sections - 1), rng)
            tones.append(positive)
            revisit = [fill(rng.choice(REVISIT_SENTENCES[positive]))] if round_ else []
            section = revisit + [fill(t) for t in rng.sample(SENTENCES[(aspect, positive)], 2)]
            section += rng.sample(EXTRA_SENTENCES[positive], persona.sentences_per_aspect - len(section))
            connector = persona.connectors[at % len(persona.connectors)]
            about = "coming back to" if round_ else "about"
            parts.append(connector + f" {about} the {aspect}: " + " ".join(section))
        if round_ < rounds - 1:  # a pass ends with the user's own verdict so far
            parts.append(
                fill(
                    "Taking stock so far: {i} {pos}."
                    if 2 * sum(tones) >= len(tones)
                    else "Taking stock so far: {i} {neg}."
                )
            )
    parts.append(
        fill("All things considered, {i} {pos} gear." if rating >= 3 else "All things considered, {i} {neg} gear.")
    )
    parts.append(persona.signoff)
    return " ".join(parts)


def make_product(rng: random.Random) -> dict:
    category = rng.choice(list(CATEGORIES))
    brand, model = rng.choice(BRANDS), f"{rng.choice('ABCDEFGHJK')}{rng.randint(10, 99)}"
    features = rng.sample(FEATURES, 2)
    return {
        "name": f"{brand} {model} {category}",
        "parts": CATEGORIES[category],
        "description": f"The {brand} {model} is a {category} with {features[0]} and {features[1]}.",
    }


def make_user_items(persona: Persona, count: int, rng: random.Random, rounds: int = 1) -> list[dict]:
    """A user's reviews in chronological order, as LongLaMP profile items (+ time)."""
    items, time = [], 1_300_000_000 + rng.randint(0, 10_000_000)
    for _ in range(count):
        product = make_product(rng)
        rating = min(5, max(1, round(rng.gauss(persona.mean_rating, 0.9))))
        items.append(
            {
                "overall": float(rating),
                "summary": rng.choice(SUMMARIES[rating]),
                "description": product["description"],
                "reviewText": write_review(persona, product, rating, rng, rounds),
                "unixReviewTime": time,
            }
        )
        time += rng.randint(86_400, 90 * 86_400)
    return items


def generate(
    out_dir: str | Path, num_users: int = 120, reviews_per_user: int = 8, seed: int = 0, rounds: int = 1
) -> Path:
    """Write `<out_dir>/product_review_{user,temporal}/{train,val,test}.jsonl` and `users.jsonl`.

    Returns the directory (`users{N}-reviews{R}-seed{S}`, plus `-rounds{k}` for rounds > 1); reuses
    it when it already holds a complete set for these arguments.
    """
    if reviews_per_user < 4:
        raise ValueError("reviews_per_user must be >= 4 (temporal needs train, val and test items per user)")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (got {rounds})")
    name = f"users{num_users}-reviews{reviews_per_user}-seed{seed}" + (f"-rounds{rounds}" if rounds > 1 else "")
    return write_once(
        Path(out_dir).expanduser() / name, lambda out: _write(out, num_users, reviews_per_user, seed, rounds)
    )


def write_once(out: Path, write: Callable[[Path], None]) -> Path:
    """`out`, written by `write(out)` unless it already holds a complete set (its COMPLETE file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # several processes (DDP ranks) may ask at once: one writes
        if not (out / "COMPLETE").exists():
            write(out)
    return out


def write_set(out: Path, users: dict[str, list[dict]], seed: int, make: MakeRecord, truths: Iterable) -> None:
    """Both settings' splits of the users' items, their latent truths (dataclasses) as users.jsonl,
    and the COMPLETE marker last."""
    for setting in ("user", "temporal"):
        folder = out / f"product_review_{setting}"
        folder.mkdir(parents=True, exist_ok=True)
        for split, records in split_users(users, setting, seed, make).items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(out / "users.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(asdict(truth)) + "\n" for truth in truths)
    (out / "COMPLETE").write_text("")


def _write(out: Path, num_users: int, reviews_per_user: int, seed: int, rounds: int) -> None:
    personas, users = [], {}
    for index in range(num_users):
        rng = random.Random(f"user-{seed}-{index}")
        persona = make_persona(rng, f"U{index:05d}")
        personas.append(persona)
        users[persona.user_id] = make_user_items(persona, reviews_per_user, rng, rounds)
    write_set(out, users, seed, partial(make_record, "product_review"), personas)
