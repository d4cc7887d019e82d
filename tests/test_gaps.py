"""Sweep `reference:` gaps (evaluation/gaps.py): which point is whose reference, paired bootstrap gaps
whose interval excludes zero only when the difference is real, and the files a sweep writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from flythinker_pl.evaluation.gaps import gap_table, segment_gaps
from flythinker_pl.sweep.runs import aggregate
from flythinker_pl.sweep.spec import SweepError, load_sweep, references

from test_sweep import fake_run

from helpers import DEBUG_CONFIG

WORDS = "the strings sound bright and warm and the tuner clip holds on tight every single time".split()


def configs(**points) -> dict:
    return {label: OmegaConf.create(values) for label, values in points.items()}


def test_a_reference_without_grid_settings_is_everyones_and_a_specific_one_wins():
    nodes = configs(sft={"method": "sft", "generator": {"name": "g64"}},
                    sft128={"method": "sft", "generator": {"name": "g128"}},
                    a={"method": "flythinker", "generator": {"name": "g64"}},
                    b={"method": "flythinker", "generator": {"name": "g128"}},
                    c={"method": "flythinker", "generator": {"name": "g256"}})
    settings = {"sft": {}, "sft128": {"generator.name": "g128"}, "a": {}, "b": {}, "c": {}}
    assert references(nodes, settings, "method", "sft") == {"a": "sft", "b": "sft128", "c": "sft"}


def test_the_reference_key_itself_is_not_matched_and_unmatched_points_get_none():
    nodes = configs(**{"sft,k=1": {"method": "sft", "k": 1}, "fly,k=1": {"method": "flythinker", "k": 1},
                       "fly,k=4": {"method": "flythinker", "k": 4}})
    settings = {"sft,k=1": {"method": "sft", "k": 1}, "fly,k=1": {"method": "flythinker", "k": 1},
                "fly,k=4": {"method": "flythinker", "k": 4}}
    assert references(nodes, settings, "method", "sft") == {"fly,k=1": "sft,k=1"}


def write_predictions(run_dir: Path, predictions: list[str], references_: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "predictions.jsonl", "w") as f:
        for index, (prediction, reference) in enumerate(zip(predictions, references_)):
            f.write(json.dumps({"id": f"r{index:03d}", "prediction": prediction, "reference": reference}) + "\n")


def shuffled(rng: np.random.Generator, count: int) -> list[str]:
    return [" ".join(rng.permutation(WORDS)[: rng.integers(5, len(WORDS))]) for _ in range(count)]


@pytest.fixture
def runs(tmp_path) -> pd.DataFrame:
    """Three points over 40 records: `same` predicts what the reference does, `better` the references."""
    rng = np.random.default_rng(0)
    refs = [" ".join(rng.permutation(WORDS)) for _ in range(40)]
    poor = shuffled(rng, 40)
    rows = []
    for point, predictions in (("ref", poor), ("same", poor), ("better", refs)):
        run_dir = tmp_path / point
        write_predictions(run_dir, predictions, refs)
        rows.append({"point": point, "seed": 0, "run_dir": str(run_dir),
                     "perf/train_tokens_per_s": {"ref": 100.0, "same": 50.0, "better": 100.0}[point]})
    return pd.DataFrame(rows)


def test_paired_gaps_are_zero_for_equal_outputs_and_exclude_zero_for_a_real_difference(runs):
    table = gap_table(runs, {"same": "ref", "better": "ref"})
    same, better = table.loc["same"], table.loc["better"]
    for metric in ("bleu", "rouge1", "rougeL"):
        assert same[f"{metric}_gap"] == 0 and same[f"{metric}_ci_low"] == 0 == same[f"{metric}_ci_high"]
        assert 0 < better[f"{metric}_ci_low"] <= better[f"{metric}_gap"] <= better[f"{metric}_ci_high"]
    assert better["bleu_gap"] > 20  # perfect outputs vs shuffled words
    assert same["train_cost_x"] == 2.0 and better["train_cost_x"] == 1.0


def test_paired_gaps_refuse_runs_that_decoded_different_records(runs, tmp_path):
    write_predictions(tmp_path / "other", ["a b"], ["a b c"])
    runs.loc[runs["point"] == "same", "run_dir"] = str(tmp_path / "other")
    with pytest.raises(ValueError, match="decoded different records"):
        gap_table(runs, {"same": "ref"})


def test_segment_gaps_subtract_the_references_column():
    segments = pd.DataFrame({"bleu (ref)": [10.0, 5.0], "bleu (a)": [12.0, 4.0]}, index=["0-50", "50-100"])
    assert segment_gaps(segments, {"a": "ref"})["a"].tolist() == [2.0, -1.0]


def test_a_sweep_with_a_reference_writes_gaps_and_a_heatmap_over_two_grid_keys(tmp_path):
    spec = {"name": "grid", "base": str(DEBUG_CONFIG), "seeds": [0],
            "overrides": [f"logging.root_dir={tmp_path / 'logs'}"],
            "grid": {"fusion.lam": [0.5, 2.0], "reasoner.lora_r": [4, 8]},
            "points": [{"label": "sft", "overrides": ["method=sft"]}], "reference": "method=sft"}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    assert set(sweep.reference.values()) == {"sft"} and len(sweep.reference) == 4
    rng = np.random.default_rng(1)
    refs = [" ".join(rng.permutation(WORDS)) for _ in range(12)]
    for number, run in enumerate(sweep.runs):
        run_dir = fake_run(run.config, {"test/bleu": 1.0, "perf/train_tokens_per_s": 100.0 + number}, [1.0] * 4)
        write_predictions(run_dir, refs if number % 2 else shuffled(rng, 12), refs)
    aggregate(sweep)
    results = tmp_path / "results" / "grid"
    gaps = pd.read_csv(results / "gaps.csv", index_col="point")
    assert sorted(gaps.index) == sorted(sweep.reference) and (gaps["reference"] == "sft").all()
    assert "bleu gap" in (results / "gaps.md").read_text()
    for name in ("gaps.png", "gap_heatmap.png", "segment_gaps.csv", "segment_gaps.png"):
        assert (results / name).exists(), name


def test_a_reference_no_point_has_is_an_error_naming_it(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": str(DEBUG_CONFIG), "grid": {"fusion.lam": [0.5]}, "reference": "method=sft"}))
    with pytest.raises(SweepError, match="reference: no point has method=sft"):
        load_sweep(path)


def test_the_answer_accuracy_gap_counts_rows_whose_reference_has_an_answer(tmp_path):
    refs = ["good. Verdict: keep."] * 6 + ["Verdict: return."] * 6 + ["no answer here"] * 4
    point = ["Verdict: keep."] * 6 + ["Verdict: return."] * 6 + ["x"] * 4  # 12 of 12 right
    reference = ["Verdict: keep."] * 6 + ["Verdict: keep."] * 6 + ["y"] * 4  # 6 of 12 right
    rows = []
    for name, predictions in (("point", point), ("ref", reference)):
        write_predictions(tmp_path / name, predictions, refs)
        rows.append({"point": name, "seed": 0, "run_dir": str(tmp_path / name)})
    table = gap_table(pd.DataFrame(rows), {"point": "ref"}, answer_pattern=r"Verdict: (\w+)\.")
    assert table.loc["point", "answer_accuracy_gap"] == pytest.approx(0.5)
    assert 0 < table.loc["point", "answer_accuracy_ci_low"] <= 0.5 <= table.loc["point", "answer_accuracy_ci_high"]


def test_a_label_reference_is_everyones_and_an_unknown_label_is_an_error(tmp_path):
    spec = {"base": str(DEBUG_CONFIG), "points": [{"label": "sft", "overrides": ["method=sft"]},
                                                  {"label": "oracle", "overrides": ["method=sft"]},
                                                  {"label": "fly", "overrides": []}], "reference": "sft"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_sweep(path).reference == {"oracle": "sft", "fly": "sft"}
    path.write_text(yaml.safe_dump({**spec, "reference": "sfT"}))
    with pytest.raises(SweepError, match="no point is labelled 'sfT'"):
        load_sweep(path)
