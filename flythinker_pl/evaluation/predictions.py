"""Offline scoring of a predictions.jsonl file (one {"id", "prediction", "reference", ...} per line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Hashable, Iterable, Optional

import pandas as pd

from .metrics import longlamp_rows, score_texts
from .segments import position_scores, text_units

REQUIRED_KEYS = ("id", "prediction", "reference")


def unique_by_id(samples: Iterable[tuple[Hashable, str, str]]) -> list[tuple[Hashable, str, str]]:
    """(id, prediction, reference) with the first occurrence of each id kept, sorted by id so the
    order (and so a seeded bootstrap) does not depend on how samples were sharded. Duplicates come
    from DistributedSampler, which pads the last shards by repeating samples."""
    first = {}
    for sample in samples:
        first.setdefault(sample[0], sample)
    return sorted(first.values(), key=lambda sample: str(sample[0]))


def read_predictions(path: str | Path) -> list[tuple[Hashable, str, str]]:
    samples = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [key for key in REQUIRED_KEYS if key not in record]
            if missing:
                raise ValueError(f"{path}:{number}: missing {missing}; each line needs {list(REQUIRED_KEYS)}")
            samples.append((record["id"], record["prediction"] or "", record["reference"]))
    if not samples:
        raise ValueError(f"{path}: no predictions")
    return unique_by_id(samples)


def evaluate_predictions(
    path: str | Path,
    segment_width: int = 50,
    segment_max: int = 300,
    segment_unit: str = "words",
    tokenizer: Optional[Any] = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    empty: str = "keep",
    bertscore_model: str = "",
    bertscore_layer: Optional[int] = None,
    answer_pattern: str = "",
) -> tuple[dict, pd.DataFrame]:
    """(overall scores as metrics.score_texts gives them, BERTScore included, answer accuracy with
    an answer_pattern; position-segment frame, each window with its own bootstrap interval). With
    empty="drop", the segments are scored over the rows LongLaMP's rule keeps too."""
    _, predictions, references = zip(*read_predictions(path))
    overall = score_texts(
        predictions,
        references,
        n_bootstrap=n_bootstrap,
        seed=seed,
        empty=empty,
        bertscore_model=bertscore_model,
        bertscore_layer=bertscore_layer,
        answer_pattern=answer_pattern,
    )
    if empty == "drop":
        predictions, references = longlamp_rows(predictions, references)
    segments = position_scores(
        predictions, references, segment_width, segment_max, text_units(segment_unit, tokenizer), n_bootstrap, seed
    )
    return overall, segments
