"""Metric values against the reference libraries (sacrebleu, rouge-score, nltk), bootstrap,
empty predictions, and the validation Metric under 2-process CPU DDP."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import sacrebleu
import torch.distributed as dist
import torch.multiprocessing as mp
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from torch.utils.data import DistributedSampler

from flythinker_pl.evaluation import metrics
from flythinker_pl.evaluation.torchmetric import TextGenerationScores
from flythinker_pl.evaluation.wordnet import wordnet_unavailable_reason

needs_wordnet = pytest.mark.skipif(
    wordnet_unavailable_reason() is not None, reason=f"METEOR needs WordNet: {wordnet_unavailable_reason()}"
)

SENTENCES = [
    "The battery lasts two full days and the screen is bright enough to read in direct sunlight.",
    "I bought this blender for smoothies. It crushes ice quickly, but it is very loud.",
    "We propose a method that reasons while it generates, improving long personalised outputs.",
    "My grandmother's recipe calls for fresh basil, ripe tomatoes and a generous pour of olive oil.",
    "The hotel staff were friendly; however, the room was small and the walls were thin.",
    "Results on three benchmarks show consistent gains over fine-tuning and retrieval baselines.",
]
SWAPS = {"bright": "luminous", "quickly": "fast", "small": "little", "friendly": "kind", "method": "approach"}


def perturb(sentence: str, rng: random.Random) -> str:
    words = sentence.split()
    kind = rng.randrange(6)
    if kind == 0:
        return " ".join(w for w in words if rng.random() > 0.3)  # dropped words
    if kind == 1:
        return " ".join(SWAPS.get(w, w) for w in words)  # synonyms
    if kind == 2:
        return " ".join(words[: rng.randint(1, len(words))])  # cut short
    if kind == 3:
        return sentence.upper() + " " + rng.choice(SENTENCES)  # case + extra text
    if kind == 4:
        return " ".join(rng.sample(words, len(words)))  # shuffled
    return rng.choice(SENTENCES)  # unrelated (or identical)


def sample_pairs(count: int = 36, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic (predictions, references), including an empty and an identical prediction."""
    rng = random.Random(seed)
    references = [" ".join(rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(count)]
    predictions = [" ".join(perturb(s, rng) for s in ref.split(". ")) for ref in references]
    predictions[0], predictions[1] = "", references[1]
    return predictions, references


@pytest.fixture(scope="module")
def pairs():
    return sample_pairs()


def reference_library_means(predictions, references) -> dict:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    rouge = [scorer.score(r, p) for p, r in zip(predictions, references)]
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "rouge1": np.mean([s["rouge1"].fmeasure for s in rouge]),
        "rougeL": np.mean([s["rougeL"].fmeasure for s in rouge]),
        "meteor": np.mean(
            [
                single_meteor_score(metrics.word_tokens(r), metrics.word_tokens(p))
                for p, r in zip(predictions, references)
            ]
        ),
    }


@needs_wordnet
def test_scores_equal_reference_libraries(pairs):
    scores = metrics.score_texts(*pairs)
    expected = reference_library_means(*pairs)
    assert scores["count"] == len(pairs[0]) >= 30
    for name in metrics.METRICS:
        assert abs(scores[name] - expected[name]) < 1e-9, name
    assert 0 < scores["meteor"] < 1 and 0 < scores["rougeL"] <= scores["rouge1"] < 1 and 1 < scores["bleu"] < 100


@needs_wordnet
def test_meteor_docstring_example_and_synonyms():
    hypothesis = (
        "It is a guide to action which ensures that the military always obeys the commands of the party"
    ).split()
    reference = "It is a guide to action that ensures that the military will forever heed Party commands".split()
    assert round(single_meteor_score(reference, hypothesis), 4) == 0.6944
    synonym, unrelated = metrics.meteor(
        ["I drove the auto home.", "I drove the tree home."], ["I drove the car home."] * 2
    )
    assert synonym > unrelated


def test_word_tokens_split_every_sentence_without_downloads():
    assert metrics.word_tokens("It's loud. Really, it is!") == ["It", "'s", "loud", ".", "Really", ",", "it", "is", "!"]


@pytest.mark.parametrize("prediction", ["", "   "])
def test_empty_prediction_scores_zero(prediction):
    scores = metrics.score_texts([prediction], ["A reference that is not empty."])
    assert {name: scores[name] for name in metrics.METRICS if scores[name] is not None} == {
        name: 0.0 for name in metrics.METRICS if scores[name] is not None
    }


def test_without_wordnet_meteor_is_unavailable_and_the_rest_runs(pairs, monkeypatch):
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "no WordNet here")
    scores = metrics.score_texts(*pairs, n_bootstrap=20)
    assert scores["meteor"] is None and scores["meteor_unavailable"] == "no WordNet here"
    assert "meteor_ci_low" not in scores and scores["bleu"] > 0 and scores["rouge1"] > 0


def test_mismatched_or_empty_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.score_texts(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no samples"):
        metrics.score_texts([], [])


def test_bootstrap_is_seeded_and_brackets_the_point_estimate(pairs, monkeypatch):
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "skipped for speed")
    first, again, other = (metrics.score_texts(*pairs, n_bootstrap=200, seed=seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert "bleu_ci_low" not in metrics.score_texts(*pairs)  # n_bootstrap=0 disables it
    for name in ("bleu", "rouge1", "rougeL"):
        assert first[f"{name}_ci_low"] < first[name] < first[f"{name}_ci_high"], name


def test_bootstrap_bleu_rescores_each_resample_as_a_corpus(pairs):
    """Summed per-sample statistics must reproduce sacrebleu's corpus score of a resampled corpus."""
    predictions, references = pairs
    rows = np.random.default_rng(0).integers(0, len(predictions), len(predictions))
    summed = metrics.bleu_statistics(predictions, references)[rows].sum(0)
    assert metrics.bleu_from_statistics(summed) == pytest.approx(
        sacrebleu.corpus_bleu([predictions[i] for i in rows], [[references[i] for i in rows]]).score, abs=1e-9
    )


def metric_values(metric: TextGenerationScores) -> dict[str, float]:
    return {name: value.item() for name, value in metric.compute().items()}


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # compute after reset warns, as intended
def test_metric_accumulates_batches_and_dedupes_ids(pairs):
    predictions, references = pairs
    metric = TextGenerationScores(n_bootstrap=50, seed=3)
    for start in range(0, len(predictions), 5):
        rows = range(start, min(start + 5, len(predictions)))
        metric.update(list(rows), [predictions[i] for i in rows], [references[i] for i in rows])
    metric.update([0, 1], predictions[:2], references[:2])  # padded repeats, as DistributedSampler adds
    by_id = sorted(range(len(predictions)), key=str)  # the Metric scores in id order (bootstrap resamples)
    expected = metrics.score_texts(
        [predictions[i] for i in by_id], [references[i] for i in by_id], n_bootstrap=50, seed=3
    )
    assert metric_values(metric) == pytest.approx(
        {name: value for name, value in expected.items() if isinstance(value, (int, float))}, abs=1e-9
    )
    metric.reset()
    with pytest.raises(ValueError, match="no samples"):
        metric.compute()


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        predictions, references = sample_pairs(count=31)  # odd: the sampler pads rank 1 with a repeat
        metric = TextGenerationScores(n_bootstrap=50, seed=3)
        shard = list(DistributedSampler(range(len(predictions)), world_size, rank, shuffle=False))
        for start in range(0, len(shard), 4):
            rows = shard[start : start + 4]
            metric.update([f"sample-{i}" for i in rows], [predictions[i] for i in rows], [references[i] for i in rows])
        with open(f"{out_dir}/rank{rank}.json", "w") as out:
            json.dump(metric_values(metric), out)
    finally:
        dist.destroy_process_group()


def test_metric_under_two_process_ddp_equals_single_process(tmp_path):
    predictions, references = sample_pairs(count=31)
    single = TextGenerationScores(n_bootstrap=50, seed=3)
    single.update([f"sample-{i}" for i in range(len(predictions))], predictions, references)
    expected = metric_values(single)
    assert expected["count"] == 31
    # fork (as Lightning's ddp_fork): the workers inherit the loaded libraries and WordNet (~10 s saved)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == pytest.approx(expected, abs=1e-9)


VERDICT = r"Verdict: (keeper|sending it back)"  # data/synthetic_rule.py's answer pattern


def test_answer_accuracy_on_a_hand_example(monkeypatch):
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "skipped for speed")
    predictions = [
        "Nice. Verdict: keeper.",  # right
        "Meh. Verdict: keeper. Verdict: sending it back.",  # wrong: the first match counts
        "Nice. Verdict: sending it back.",  # right
        "Nice, no verdict.",  # wrong: no answer
        "Verdict: keeper.",
    ]  # not counted: reference has none
    references = [
        "Verdict: keeper.",
        "Verdict: sending it back.",
        "x. Verdict: sending it back.",
        "Verdict: keeper.",
        "A reference without one.",
    ]
    scores = metrics.score_texts(predictions, references, answer_pattern=VERDICT)
    assert scores["answer_accuracy"] == 2 / 4
    assert scores["answer_missing_reference"] == 1 and scores["answer_missing_prediction"] == 1
    assert scores["count"] == 5  # the generation metrics still score every row


def test_answer_accuracy_interval_uses_the_shared_resamples(monkeypatch):
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "skipped for speed")
    references = [f"Review {i}. Verdict: {'keeper' if i % 2 else 'sending it back'}." for i in range(40)]
    predictions = [f"Review {i}. Verdict: keeper." for i in range(40)]
    scores = metrics.score_texts(predictions, references, n_bootstrap=200, seed=1, answer_pattern=VERDICT)
    assert scores["answer_accuracy"] == 0.5
    assert scores["answer_accuracy_ci_low"] < 0.5 < scores["answer_accuracy_ci_high"]
    without = metrics.score_texts(predictions, references, n_bootstrap=200, seed=1)
    assert {k: v for k, v in scores.items() if not k.startswith("answer_")} == without  # the rest is unchanged
    # the interval is the accuracy over the same resampled rows the other metrics use
    rows = np.random.default_rng(1).integers(0, 40, size=(200, 40))
    replicates = (rows % 2 == 1).mean(1)
    assert scores["answer_accuracy_ci_low"] == pytest.approx(np.percentile(replicates, 2.5))


def test_answer_accuracy_is_off_without_a_pattern_and_checks_its_groups(pairs, monkeypatch):
    monkeypatch.setattr(metrics, "wordnet_unavailable_reason", lambda: "skipped for speed")
    assert not any(key.startswith("answer_") for key in metrics.score_texts(*pairs, n_bootstrap=10))
    unavailable = metrics.score_texts(["Verdict: keeper."], ["no verdict"], n_bootstrap=10, answer_pattern=VERDICT)
    assert unavailable["answer_accuracy"] is None and "answer_accuracy_ci_low" not in unavailable
    assert "no reference matches" in unavailable["answer_accuracy_unavailable"]
    with pytest.raises(ValueError, match="exactly 1"):
        metrics.score_texts(["a"], ["a"], answer_pattern=r"Verdict: \w+")


def test_summary_table_shows_answer_accuracy_where_scored():
    import pandas as pd

    from flythinker_pl.lit.evaluate import summary_table

    runs = pd.DataFrame(
        {
            "method": ["sft", "flythinker"],
            "test/bleu": [10.0, 11.0],
            "test/answer_accuracy": [0.5, 0.75],
            "test/answer_accuracy_ci_low": [0.4, 0.6],
            "test/answer_accuracy_ci_high": [0.6, 0.85],
        },
        index=["a", "b"],
    )
    assert summary_table(runs).loc["b", "test answer acc."] == "0.750 [0.600, 0.850]"
    assert "test answer acc." not in summary_table(runs[["method", "test/bleu"]])
