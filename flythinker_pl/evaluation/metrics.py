"""BLEU, ROUGE-1, ROUGE-L and METEOR as LongLaMP computes them, offline.

Scales: BLEU is sacrebleu's corpus score, 0-100 (as the paper reports it); ROUGE F-measures and
METEOR are means over samples, 0-1 (as rouge-score and nltk give them). An empty prediction
scores 0 on every metric.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from .wordnet import wordnet_unavailable_reason

METRICS = ("bleu", "rouge1", "rougeL", "meteor")
ROUGE_TYPES = ("rouge1", "rougeL")

_BLEU = BLEU()  # sacrebleu.corpus_bleu's defaults: 13a tokenisation, exp smoothing, cased


def _rouge_scorer() -> rouge_scorer.RougeScorer:
    """LongLaMP's scorer (no stemmer). Its constructor logs through the root logger, which makes
    `logging` install a default root handler that would print every library's log line twice:
    build it with a placeholder handler in place."""
    placeholder = logging.NullHandler()
    logging.root.addHandler(placeholder)
    try:
        return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    finally:
        logging.root.removeHandler(placeholder)


_ROUGE = _rouge_scorer()
_SENTENCES = PunktSentenceTokenizer()  # punkt with no trained parameters: needs no download
_WORDS = NLTKWordTokenizer()  # the word tokenizer inside nltk.word_tokenize


def word_tokens(text: str) -> list[str]:
    """nltk.word_tokenize (what LongLaMP's METEOR uses) without its downloaded punkt model: the
    word tokenizer splits a trailing period only, so sentences are split first, by untrained punkt
    (the one difference: no learned abbreviation list). METEOR lowercases the tokens itself."""
    return [token for sentence in _SENTENCES.tokenize(text) for token in _WORDS.tokenize(sentence)]


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    return _BLEU.corpus_score(list(predictions), [list(references)]).score


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample n-gram counts whose column sums give the corpus score (what sacrebleu's own
    bootstrap resamples), so a resampled corpus is scored without re-tokenising it."""
    return np.array(_BLEU._extract_corpus_statistics(list(predictions), [list(references)]), dtype=np.int64)


def rouge_f(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    scores = [_ROUGE.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    return {name: np.array([score[name].fmeasure for score in scores], dtype=float) for name in ROUGE_TYPES}


def meteor(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """nltk's single_meteor_score per sample (alpha 0.9, beta 3, gamma 0.5, WordNet synonyms)."""
    return np.array([single_meteor_score(word_tokens(reference), word_tokens(prediction))
                     for prediction, reference in zip(predictions, references)], dtype=float)


def score_texts(predictions: Sequence[str], references: Sequence[str], n_bootstrap: int = 0,
                seed: int = 0) -> dict:
    """{count, bleu, rouge1, rougeL, meteor} (+ `<metric>_ci_low/_high`, a seeded 95% percentile
    bootstrap interval, when n_bootstrap > 0). Without WordNet, `meteor` is None and
    `meteor_unavailable` says why; the other metrics still run."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no samples to score")
    per_sample = rouge_f(predictions, references)
    unavailable = wordnet_unavailable_reason()
    if unavailable is None:
        per_sample["meteor"] = meteor(predictions, references)
    scores = {"count": len(predictions), "bleu": corpus_bleu(predictions, references),
              **{name: float(values.mean()) for name, values in per_sample.items()}}
    if unavailable is not None:
        scores.update(meteor=None, meteor_unavailable=unavailable)
    if n_bootstrap > 0:
        scores.update(bootstrap_intervals(bleu_statistics(predictions, references), per_sample, n_bootstrap, seed))
    return scores


def bootstrap_intervals(bleu_stats: np.ndarray, per_sample: dict[str, np.ndarray], n_bootstrap: int,
                        seed: int) -> dict[str, float]:
    """95% percentile intervals over n_bootstrap resamples of the samples (the same resamples for
    every metric); BLEU is rescored as a corpus on each resample."""
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(bleu_stats), size=(n_bootstrap, len(bleu_stats)))
    replicates = {"bleu": np.array([_BLEU._compute_score_from_stats(bleu_stats[rows].sum(0).tolist()).score
                                    for rows in resamples]),
                  **{name: values[resamples].mean(1) for name, values in per_sample.items()}}
    intervals = {}
    for name, values in replicates.items():
        low, high = np.percentile(values, [2.5, 97.5])
        intervals.update({f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
    return intervals
