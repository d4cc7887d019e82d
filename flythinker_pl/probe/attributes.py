"""The user attributes a probe decodes: categorical functions of the synthetic data's latent truth
per user (users.jsonl, one Persona of data/synthetic.py, Rule of data/synthetic_rule.py or Signature of
data/synthetic_signature.py a line)."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config
from ..data.rationales import USERS_FILE, users_file
from ..data.schema import DataError


def _rating_band(mean_rating: float) -> str:
    return "<3" if mean_rating < 3 else "3-4" if mean_rating < 4 else ">=4"


# name -> (the Persona keys it reads, label of a persona). Each is one class per user; an attribute
# whose keys a users.jsonl lacks is left out. Which slot of a list the generator draws from is
# random per sentence, so a list's order is used only where the text follows it (aspects,
# connectors); the lexicon is reduced to its alphabetically first praise word.
ATTRIBUTES = {
    "arc": (("arc",), lambda p: p["arc"]),  # tone over the review: rising / falling / steady
    "opener": (("opener",), lambda p: p["opener"].split("{product}")[0].strip()),  # first words of every review
    "first_connector": (("connectors",), lambda p: p["connectors"][0]),  # before the first aspect
    "first_aspect": (("aspects",), lambda p: p["aspects"][0]),
    "last_aspect": (("aspects",), lambda p: p["aspects"][-1]),
    "n_aspects": (("aspects",), lambda p: str(len(p["aspects"]))),
    "sentences_per_aspect": (("sentences_per_aspect",), lambda p: str(p["sentences_per_aspect"])),
    "signoff": (("signoff",), lambda p: p["signoff"]),  # the last words of every review
    "mean_rating": (("mean_rating",), lambda p: _rating_band(p["mean_rating"])),  # <3 / 3-4 / >=4
    "praise_word": (("positive_words",), lambda p: min(p["positive_words"])),  # vocabulary
    "keeps": (("keeps",), lambda p: p["keeps"]),  # data.synthetic.kind=rule: the value the verdict follows
    "word": (("word",), lambda p: p["word"]),  # data.synthetic.kind=signature: the word the response ends with
}


def personas_file(cfg: Config, run_dir: Path) -> Path:
    """users.jsonl beside the run's data, or an error saying what the probe needs."""
    try:
        return users_file(cfg.data)
    except DataError:
        data = cfg.data.path or (f"data.files={dict(cfg.data.files)}" if cfg.data.files else cfg.data.hub)
        raise DataError(
            f"{run_dir}: flythinker probe scores hidden states against each user's latent truth, "
            f"{USERS_FILE} beside the split directories, which only the synthetic data sets write "
            f"(data/synthetic.py); this run's data ({data or cfg.data.task}) has no {USERS_FILE}. "
            "Probe runs trained on the synthetic data (data.path, data.files, data.hub unset)"
        ) from None


def user_labels(path: Path) -> dict[str, dict[str, str]]:
    """{attribute: {user id: class}} for every attribute the file's personas define."""
    personas = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    defined = {
        name: label
        for name, (keys, label) in ATTRIBUTES.items()
        if personas and all(key in p for p in personas for key in keys)
    }
    if not defined:
        raise DataError(f"{path}: no probe attribute is defined for these users (known: {', '.join(ATTRIBUTES)})")
    return {name: {str(p["user_id"]): label(p) for p in personas} for name, label in defined.items()}
