"""Position-segmented evaluation: does quality hold in later parts of a long output?

Prediction and reference are cut into the same consecutive windows [0, w), [w, 2w), ... up to
`segment_max`, in words or in the Generator tokenizer's tokens, and each window pair is scored
with every metric. A window is scored over the samples whose REFERENCE reaches it (their number is
reported as `count`); a prediction that stops earlier contributes an empty window, which scores 0.
`outputs` counts the predictions that reach the window themselves: where it falls below `count`,
outputs stopped before their references did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from .metrics import METRICS, score_texts

UNITS = ("words", "tokens")
COLUMNS = ["segment_start", "segment_end", "metric", "value", "ci_low", "ci_high", "count", "outputs", "unit"]


@dataclass(frozen=True)
class TextUnits:
    """How text is cut into units and a window of units turned back into text."""

    split: Callable[[str], Sequence]
    join: Callable[[Sequence], str]
    name: str = "words"  # one of UNITS: the plots' axis unit


def text_units(unit: str = "words", tokenizer: Optional[Any] = None) -> TextUnits:
    """`words`: whitespace words; `tokens`: ids of a Hugging Face-style tokenizer (anything with
    `encode(text, add_special_tokens=False)` and `decode(ids)`), each window decoded back."""
    if unit == "words":
        return TextUnits(str.split, " ".join)
    if unit == "tokens":
        if tokenizer is None:
            raise ValueError("segment_unit='tokens' needs the Generator's tokenizer")
        return TextUnits(lambda text: tokenizer.encode(text, add_special_tokens=False), tokenizer.decode, unit)
    raise ValueError(f"segment_unit must be one of {UNITS}, got {unit!r}")


def windows(width: int, max_len: int) -> list[tuple[int, int]]:
    if width <= 0 or max_len <= 0:
        raise ValueError(f"segment_width and segment_max must be positive, got {width} and {max_len}")
    return [(start, min(start + width, max_len)) for start in range(0, max_len, width)]


def position_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    width: int = 50,
    max_len: int = 300,
    units: TextUnits = text_units(),
    n_bootstrap: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy frame, one row per (window, metric): segment_start, segment_end, metric, value, ci_low and
    ci_high (the seeded 95% bootstrap interval over the window's samples, with n_bootstrap > 0; else
    NaN), count (samples scored), outputs (predictions reaching the window), unit (words | tokens).
    Windows no reference reaches are left out; METEOR rows are absent when WordNet is."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    predicted = [units.split(text) for text in predictions]
    referenced = [units.split(text) for text in references]
    rows = []
    for start, end in windows(width, max_len):
        reaching = [i for i, reference in enumerate(referenced) if len(reference) > start]
        if not reaching:
            break
        scores = score_texts(
            [units.join(predicted[i][start:end]) for i in reaching],
            [units.join(referenced[i][start:end]) for i in reaching],
            n_bootstrap,
            seed,
        )
        outputs = sum(len(prediction) > start for prediction in predicted)
        rows += [
            (
                start,
                end,
                name,
                scores[name],
                scores.get(f"{name}_ci_low", np.nan),
                scores.get(f"{name}_ci_high", np.nan),
                len(reaching),
                outputs,
                units.name,
            )
            for name in METRICS
            if scores[name] is not None
        ]
    return pd.DataFrame(rows, columns=COLUMNS)
