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

from flythinker_pl.evaluation.gaps import gap_table, gaps_markdown, segment_gaps, window_gaps
from flythinker_pl.evaluation.segments import text_units
from flythinker_pl.sweep.runs import aggregate
from flythinker_pl.sweep.spec import SweepError, load_sweep, references

from helpers import DEBUG_CONFIG, fake_run

WORDS = "the strings sound bright and warm and the tuner clip holds on tight every single time".split()


def configs(**points) -> dict:
    return {label: OmegaConf.create(values) for label, values in points.items()}


def test_a_reference_without_grid_settings_is_everyones_and_a_specific_one_wins():
    nodes = configs(
        sft={"method": "sft", "generator": {"name": "g64"}},
        sft128={"method": "sft", "generator": {"name": "g128"}},
        a={"method": "flythinker", "generator": {"name": "g64"}},
        b={"method": "flythinker", "generator": {"name": "g128"}},
        c={"method": "flythinker", "generator": {"name": "g256"}},
    )
    settings = {"sft": {}, "sft128": {"generator.name": "g128"}, "a": {}, "b": {}, "c": {}}
    assert references(nodes, settings, {"method": "sft"}) == {"a": "sft", "b": "sft128", "c": "sft"}


def test_the_reference_key_itself_is_not_matched_and_unmatched_points_get_none():
    nodes = configs(
        **{
            "sft,k=1": {"method": "sft", "k": 1},
            "fly,k=1": {"method": "flythinker", "k": 1},
            "fly,k=4": {"method": "flythinker", "k": 4},
        }
    )
    settings = {
        "sft,k=1": {"method": "sft", "k": 1},
        "fly,k=1": {"method": "flythinker", "k": 1},
        "fly,k=4": {"method": "flythinker", "k": 4},
    }
    assert references(nodes, settings, {"method": "sft"}) == {"fly,k=1": "sft,k=1"}


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
        rows.append(
            {
                "point": point,
                "seed": 0,
                "run_dir": str(run_dir),
                "perf/train_tokens_per_s": {"ref": 100.0, "same": 50.0, "better": 100.0}[point],
            }
        )
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


def test_window_gaps_are_gap_tables_paired_bootstrap_cut_to_each_window(runs, tmp_path):
    table = gap_table(runs, {"better": "ref"})
    ref_dir, better_dir = (runs.set_index("point").loc[point, "run_dir"] for point in ("ref", "better"))
    (whole,) = window_gaps(better_dir, ref_dir, [(0, 10**6)], text_units()).itertuples()  # one window: every word
    for metric in ("bleu", "rouge1", "rougeL"):
        for key in ("gap", "ci_low", "ci_high"):
            assert getattr(whole, f"{metric}_{key}") == pytest.approx(table.loc["better", f"{metric}_{key}"])
    assert whole.count == 40

    # equal outputs up to word 5, then the run writes the reference and the reference run does not
    rng = np.random.default_rng(1)
    refs = [" ".join(rng.permutation(WORDS)) for _ in range(30)]
    write_predictions(tmp_path / "early", [" ".join(r.split()[:5] + ["x"] * 11) for r in refs], refs)
    write_predictions(tmp_path / "late", refs, refs)
    windows = window_gaps(
        tmp_path / "late", tmp_path / "early", [(0, 5), (5, 10), (10, 15), (15, 20)], text_units(), min_count=10, last=2
    )
    assert windows[["segment_start", "segment_end", "count"]].values.tolist() == [[10, 15, 30], [15, 20, 30]]
    assert (windows["rouge1_ci_low"] > 0.5).all()  # the late windows: a clear difference ...
    early = window_gaps(tmp_path / "late", tmp_path / "early", [(0, 5)], text_units()).iloc[0]
    assert early["rouge1_gap"] == 0 == early["rouge1_ci_high"]  # ... the first: none


def test_segment_gaps_subtract_the_references_column():
    segments = pd.DataFrame({"bleu (ref)": [10.0, 5.0], "bleu (a)": [12.0, 4.0]}, index=["0-50", "50-100"])
    assert segment_gaps(segments, {"a": "ref"})["a"].tolist() == [2.0, -1.0]


def test_a_sweep_with_a_reference_writes_gaps_and_a_heatmap_over_two_grid_keys(tmp_path):
    spec = {
        "name": "grid",
        "base": str(DEBUG_CONFIG),
        "seeds": [0],
        "overrides": [f"logging.root_dir={tmp_path / 'logs'}"],
        "grid": {"fusion.lam": [0.5, 2.0], "reasoner.lora_r": [4, 8]},
        "points": [{"label": "sft", "overrides": ["method=sft"]}],
        "reference": "method=sft",
    }
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
    path.write_text(
        yaml.safe_dump({"base": str(DEBUG_CONFIG), "grid": {"fusion.lam": [0.5]}, "reference": "method=sft"})
    )
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
    spec = {
        "base": str(DEBUG_CONFIG),
        "points": [
            {"label": "sft", "overrides": ["method=sft"]},
            {"label": "oracle", "overrides": ["method=sft"]},
            {"label": "fly", "overrides": []},
        ],
        "reference": "sft",
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_sweep(path).reference == {"oracle": "sft", "fly": "sft"}
    path.write_text(yaml.safe_dump({**spec, "reference": "sfT"}))
    with pytest.raises(SweepError, match="no point is labelled 'sfT'"):
        load_sweep(path)


def answer_runs(tmp_path: Path, right: dict[tuple[str, int], int], count: int = 40) -> pd.DataFrame:
    """One run per (point, seed) whose first `right[point, seed]` of `count` answers are right."""
    refs = [f"text. Overall: w{index % 5}." for index in range(count)]
    rows = []
    for (point, seed), hits in right.items():
        run_dir = tmp_path / f"{point},seed={seed}"
        write_predictions(run_dir, refs[:hits] + ["text. Overall: none."] * (count - hits), refs)
        rows.append({"point": point, "seed": seed, "run_dir": str(run_dir)})
    return pd.DataFrame(rows)


def test_the_interval_resamples_seeds_as_well_as_records(tmp_path):
    """One seed of three gains all 40 answers, two gain none: the mean gap is 1/3, and seed draws of
    only the two (8/27 of the replicates) give exactly 0, of only the first (1/27) exactly 1, so the
    interval spans [0, 1]; resampling the records alone (the same seeds every time) would be ~1/3 +- 0."""
    right = {("ref", s): 0 for s in range(3)} | {("point", 0): 40, ("point", 1): 0, ("point", 2): 0}
    row = gap_table(answer_runs(tmp_path, right), {"point": "ref"}, answer_pattern=r"Overall: (\w+)").loc["point"]
    assert row["answer_accuracy_gap"] == pytest.approx(1 / 3) and row["seeds"] == "0,1,2"
    assert row["answer_accuracy_ci_low"] == 0 and row["answer_accuracy_ci_high"] == 1
    assert row["answer_accuracy_seed_std"] == pytest.approx(np.std([1, 0, 0], ddof=1))
    assert row["answer_accuracy"] == pytest.approx(1 / 3) and row["answer_accuracy_reference"] == 0


def test_one_seed_is_the_records_bootstrap_and_values_come_with_their_intervals(tmp_path):
    right = {("ref", 0): 10, ("point", 0): 30}
    row = gap_table(answer_runs(tmp_path, right), {"point": "ref"}, answer_pattern=r"Overall: (\w+)").loc["point"]
    assert row["answer_accuracy_gap"] == pytest.approx(0.5) and np.isnan(row["answer_accuracy_seed_std"])
    assert 0.25 < row["answer_accuracy_ci_low"] < 0.5 < row["answer_accuracy_ci_high"] < 0.75
    assert row["answer_accuracy_low"] < 0.75 < row["answer_accuracy_high"]
    assert row["answer_accuracy_reference_low"] < 0.25 < row["answer_accuracy_reference_high"]


def test_the_share_of_the_ceilings_gap_is_taken_replicate_by_replicate(tmp_path):
    """Over SFT, the oracle gains 30 answers per seed, a method 15 of them, and a twin of the oracle the
    same 30: the method closes about half the gap, and the twin all of it on every replicate exactly
    (its gap and the oracle's are drawn on the same seeds and records)."""
    right = {}
    for seed in range(3):
        right |= {
            ("sft", seed): 5 + seed,
            ("oracle", seed): 35 + seed,
            ("fly", seed): 20 + seed,
            ("twin", seed): 35 + seed,
            ("other", seed): 5 + seed,
        }
    runs = answer_runs(tmp_path, right)
    table = gap_table(
        runs,
        {"oracle": "sft", "fly": "sft", "twin": "sft", "other": "sft"},
        answer_pattern=r"Overall: (\w+)",
        ceiling_of={"fly": "oracle", "twin": "oracle", "other": "oracle"},
    )
    fly, twin = table.loc["fly"], table.loc["twin"]
    assert fly["answer_accuracy_share"] == pytest.approx(0.5) and fly["ceiling"] == "oracle"
    assert 0.3 < fly["answer_accuracy_share_low"] < 0.5 < fly["answer_accuracy_share_high"] < 0.7
    assert twin["answer_accuracy_share_low"] == twin["answer_accuracy_share_high"] == 1
    assert table.loc["other", "answer_accuracy_share"] == 0 and pd.isna(table.loc["oracle", "answer_accuracy_share"])
    markdown = gaps_markdown(table)
    assert "1.00 [1.00, 1.00] of oracle" in markdown and "share of the ceiling's answer_accuracy gap" in markdown


def test_a_reference_of_several_conditions_and_a_ceiling_pair_each_difficulty(tmp_path):
    """The oracle is SFT told the answer: `reference: [method=sft, data.synthetic.hint=false]` keeps it
    out of the references, and `ceiling: data.synthetic.hint=true` pairs every point with the oracle of
    its own difficulty."""
    level = "data.synthetic.reveal={}"
    spec = {
        "base": str(DEBUG_CONFIG),
        "overrides": ["data.synthetic.kind=signature"],
        "grid": {"data.synthetic.reveal": ["direct", "shared"]},  # FlyThinker (the debug config's method)
        "points": [
            {"label": f"{name},{d}", "overrides": [*extra, level.format(d)]}
            for d in ("direct", "shared")
            for name, extra in (("sft", ["method=sft"]), ("oracle", ["method=sft", "data.synthetic.hint=true"]))
        ],
        "reference": ["method=sft", "data.synthetic.hint=false"],
        "ceiling": "data.synthetic.hint=true",
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    assert sweep.reference == {level.format(d): f"sft,{d}" for d in ("direct", "shared")} | {
        f"oracle,{d}": f"sft,{d}" for d in ("direct", "shared")
    }
    assert sweep.ceiling == {level.format(d): f"oracle,{d}" for d in ("direct", "shared")} | {
        f"sft,{d}": f"oracle,{d}" for d in ("direct", "shared")
    }
    path.write_text(yaml.safe_dump({**spec, "ceiling": ["method=sft", "data.synthetic.hint=maybe"]}))
    with pytest.raises(SweepError, match="ceiling: no point has method=sft and data.synthetic.hint=maybe"):
        load_sweep(path)


def test_no_share_where_the_ceilings_own_gap_holds_0(tmp_path):
    """When SFT already reaches the oracle (an easy difficulty), the oracle's gap is 0 on every replicate:
    there is nothing to close, and a share of it would divide noise by noise."""
    right = {}
    for seed in range(3):
        right |= {("sft", seed): 38, ("oracle", seed): 38, ("fly", seed): 36 + seed}
    table = gap_table(
        answer_runs(tmp_path, right),
        {"oracle": "sft", "fly": "sft"},
        answer_pattern=r"Overall: (\w+)",
        ceiling_of={"fly": "oracle"},
    )
    assert pd.isna(table.loc["fly", "answer_accuracy_share"]) and table.loc["fly", "ceiling"] == "oracle"
    assert "no gap to oracle" in gaps_markdown(table)
