"""`flythinker run` (fit -> predict -> evaluate, each stage reused when done) and `evaluate`."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from flythinker_pl.cli import main
from flythinker_pl.lit.logs import HEADLINE, result_tag
from flythinker_pl.lit.run import run_experiment


def hparams_tab(events: EventAccumulator) -> tuple[list[str], list[str], dict]:
    """What TensorBoard's HPARAMS tab shows of a run: columns (as it sorts them), metrics, values."""
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return (
        sorted(h.name for h in experiment.hparam_infos),
        [m.name.tag for m in experiment.metric_infos],
        dict(session.session_start_info.hparams),
    )


def test_run_trains_decodes_scores_and_a_rerun_reuses_everything(run_config):
    cfg = run_config(
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "decode.max_new_tokens=8",
        "eval.n_bootstrap=20",
        "eval.segment_width=4",
        "eval.segment_max=12",
    )
    run_dir = run_experiment(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/loss", "test/bleu", "test/rouge1", "test/rougeL", "test/meteor", "test/bleu_ci_low"} <= set(metrics)
    assert metrics["test/count"] == 10
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert metrics["test/eos_share"] == pytest.approx(sum(p["ended_by_eos"] for p in predictions) / 10)
    assert all(p["ended_by_eos"] == (p["new_tokens"] < 8) for p in predictions if p["new_tokens"] < 8)
    assert metrics["test/words"] == pytest.approx(sum(len(p["prediction"].split()) for p in predictions) / 10)
    assert metrics["decode/ms_per_token"] > 0 and metrics["decode/seconds_per_sample"] > 0
    for name in ("predictions.jsonl", "position_eval.csv", "position_eval.png"):
        assert (run_dir / name).exists()
    events = EventAccumulator(str(run_dir / cfg.method), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"position_eval/test/bleu", "position_eval/test/samples"} <= set(events.Tags()["images"])
    columns, tab_metrics, values = hparams_tab(events)
    assert columns[: len(HEADLINE)] == [name for name, _ in HEADLINE]  # what defines the run first
    assert values["1 method"].string_value == cfg.method and values["seed"].number_value == cfg.seed
    results = {name: result_tag(name) for name in ("test/bleu", "test/bleu_ci_low", "test/meteor", "test/eos_share")}
    assert {"val/loss", *results.values()} <= set(tab_metrics)
    for name, tag in [*results.items(), ("val/loss", "val/loss")]:  # the values the tab reads
        assert events.Scalars(tag)[-1].value == pytest.approx(metrics[name], rel=1e-6)

    stamps = {p.name: p.stat().st_mtime for p in run_dir.iterdir() if p.is_file()}
    assert run_experiment(cfg) == run_dir  # no new version, nothing recomputed
    assert {p.name: p.stat().st_mtime for p in run_dir.iterdir() if p.is_file() and p.name in stamps} == stamps
    redecoded = run_config(
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "decode.max_new_tokens=5",
        "eval.n_bootstrap=0",
        "eval.segment_width=4",
        "eval.segment_max=12",
    )
    assert run_experiment(redecoded) == run_dir  # decoding settings alone: same trained run ...
    assert "max_new_tokens: 5" in (run_dir / "predictions.config.yaml").read_text()  # ... decoded again
    assert max(r["new_tokens"] for r in map(json.loads, (run_dir / "predictions.jsonl").read_text().splitlines())) <= 5
    assert "n_bootstrap: 0" in (run_dir / "eval_config.yaml").read_text()  # ... and rescored
    assert (
        run_experiment(
            run_config(
                "trainer.max_steps=3", "trainer.val_check_interval=3", "decode.max_new_tokens=8", "eval.n_bootstrap=0"
            )
        )
        != run_dir
    )


def test_zero_shot_run_validates_and_decodes_the_loaded_weights(run_config):
    cfg = run_config("method=sft", "trainer.max_steps=0", "decode.max_new_tokens=6", "eval.n_bootstrap=0")
    run_dir = run_experiment(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 0 and metrics["val/loss"] > 0 and "val/loss_before" not in metrics
    assert "test/bleu" in metrics and not (run_dir / "checkpoints").exists()
    assert run_experiment(cfg) == run_dir  # reused like any finished run


def test_evaluate_command_scores_several_runs(run_config, tmp_path, capsys):
    cfg = run_config(
        "trainer.max_steps=1", "trainer.val_check_interval=1", "decode.max_new_tokens=6", "eval.n_bootstrap=0"
    )
    first = run_experiment(cfg)
    cfg.logging.experiment = "other"
    second = run_experiment(cfg)
    out = tmp_path / "compare"
    assert (
        main(
            [
                "evaluate",
                str(first / "predictions.jsonl"),
                str(second.parent),
                "eval.segment_width=3",
                "eval.n_bootstrap=0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "tiny/version_0" in printed and "other/version_0" in printed and "meteor" in printed
    assert (out / "position_eval.png").exists()
    assert main(["table", str(first), str(second), "--segments"]) == 0
    assert "0-3" in capsys.readouterr().out  # the windows of the last evaluation (width 3)


METHOD_SETTINGS = {
    "nonpers": ["data.retriever=none", "trainer.max_steps=0"],
    "rag": ["trainer.max_steps=0"],
    "sft": [],
    "cot": ["data.rationales=oracle", "data.rationale_tokens=16"],
    "static": ["fusion.span=response"],
    "coconut": ["coconut.k=2"],
    "flythinker": [],
    "no_profile": ["reasoner.sees_profile=false"],
    "random_reasoner": ["reasoner.init=random", "reasoner.mode=frozen"],
}


@pytest.mark.parametrize("name", list(METHOD_SETTINGS))
def test_every_method_trains_decodes_and_is_scored_by_the_shared_pipeline(run_config, name):
    method = {"no_profile": "flythinker", "random_reasoner": "flythinker"}.get(name, name)
    cfg = run_config(
        f"method={method}",
        *METHOD_SETTINGS[name],
        "trainer.val_check_interval=1",
        "decode.max_new_tokens=4",
        "eval.n_bootstrap=0",
        "callbacks.samples=0",
    )
    if cfg.trainer.max_steps:
        cfg.trainer.max_steps = 1
    run_dir = run_experiment(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["test/count"] == 10 and "test/rougeL" in metrics
    assert metrics["global_step"] == cfg.trainer.max_steps
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert all(row["new_tokens"] <= 4 for row in rows) and ("rationale" in rows[0]) == (method == "cot")
