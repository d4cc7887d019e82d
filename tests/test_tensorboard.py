"""What TensorBoard shows of a demo-style comparison (SFT and FlyThinker trained, decoded, scored, then
`flythinker table --plot`), read with TensorBoard's own event reader and hparams plugin protos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from flythinker_pl.cli import main
from flythinker_pl.lit.logs import hparam_columns, result_tag
from flythinker_pl.lit.run import run_experiment

TINY = (
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "decode.max_new_tokens=6",
    "eval.n_bootstrap=50",
    "eval.segment_width=2",
    "eval.segment_max=6",
    "callbacks.samples=0",
)
SHOWN_BY_DEFAULT = 5  # TensorBoard's HPARAMS ticks the first 5 settings and the first 5 metrics


def default_columns(experiment) -> tuple[list[str], list[str]]:
    """The HPARAMS columns ticked when the tab opens: the settings as the plugin's backend sorts them
    (`differs` first, then by name; backend_context._sort_and_reduce_to_hparams_limit) and the
    frontend keeps them (a stable sort by `differs`), the metrics in the config's order."""
    settings = sorted(experiment.hparam_infos, key=lambda info: (not info.differs, info.name))
    return (
        [info.display_name or info.name for info in settings[:SHOWN_BY_DEFAULT]],
        [info.name.tag for info in experiment.metric_infos[:SHOWN_BY_DEFAULT]],
    )


def hparams(accumulator) -> tuple[object, dict]:
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return experiment, dict(start.hparams)


@pytest.fixture
def demo_logs(run_config, capsys) -> tuple[Path, str]:
    """lightning_logs of a demo in miniature, and what `flythinker table` printed."""
    sft = run_experiment(run_config("method=sft", "logging.experiment=demo_sft", *TINY))
    flythinker = run_experiment(run_config("logging.experiment=demo", *TINY))
    root = Path(run_config().logging.root_dir)
    capsys.readouterr()
    assert main(["table", str(sft), str(flythinker), "--plot", str(root / "demo_comparison")]) == 0
    return root, capsys.readouterr().out


def test_tensorboard_compares_the_runs_by_method(demo_logs):
    root, printed = demo_logs
    logs = EventMultiplexer(size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    logs.AddRunsFromDirectory(str(root)).Reload()
    assert set(logs.Runs()) == {"demo_sft/version_0/sft", "demo/version_0/flythinker", "demo_comparison"}

    sft, flythinker = (logs.GetAccumulator(run) for run in ("demo_sft/version_0/sft", "demo/version_0/flythinker"))
    (sft_experiment, sft_settings), (experiment, settings) = hparams(sft), hparams(flythinker)
    assert sft_experiment == experiment  # whichever run TensorBoard reads the columns from, they are the same
    columns, metrics = default_columns(experiment)
    assert columns == ["method", "Generator (mode)", "Reasoner (mode), span", "lambda", "task_setting, seed"]
    assert metrics == [
        result_tag(key) for key in ("test/bleu", "test/bleu_ci_low", "test/bleu_ci_high", "test/rougeL", "test/meteor")
    ]
    assert {result_tag("test/rouge1"), result_tag("test/eos_share"), "val/loss", result_tag("decode/ms_per_token")} <= {
        info.name.tag for info in experiment.metric_infos
    }
    assert [info.display_name for info in experiment.metric_infos[:2]] == ["test BLEU", "test BLEU 95% low"]
    assert settings["1 method"].string_value == "flythinker" and settings["4 lambda"].number_value == 0.5
    assert settings["5 data"].string_value == "product_review_user, seed 42"
    assert sft_settings["1 method"].string_value == "sft"
    assert "4 lambda" not in sft_settings and "fusion/lam" not in sft_settings  # blank, not the default 0.5

    for accumulator, run_dir in ((sft, root / "demo_sft/version_0"), (flythinker, root / "demo/version_0")):
        scores = json.loads((run_dir / "metrics.json").read_text())  # the values the HPARAMS row shows
        assert accumulator.Scalars(result_tag("test/bleu"))[-1].value == pytest.approx(scores["test/bleu"], rel=1e-6)
        curves = {tag.split("/")[0] for tag in accumulator.Tags()["scalars"]}
        assert sorted(curves)[:3] == ["perf", "train", "val"]  # the sections SCALARS opens first are curves
        results = accumulator.Tensors("results/test/text_summary")[0].tensor_proto.string_val[0].decode()
        assert "test BLEU" in results and "ended by EOS" in results

    comparison = logs.GetAccumulator("demo_comparison")  # one image per panel, every run on one axis
    assert {"position_eval/test/bleu", "position_eval/test/samples"} <= set(comparison.Tags()["images"])
    text = comparison.Tensors("comparison/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "flythinker - sft" in text

    # the summary says what it means: each metric's paired difference with its interval and a verdict
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in printed.splitlines()
        if line.startswith("| flythinker - sft")
    ]
    assert "Paired bootstrap" in printed and rows[0][:3] == ["flythinker - sft", "all (10 records)", "BLEU"]
    assert all(row[-1] in ("no difference at 95%", "flythinker ahead", "sft ahead") for row in rows)
    assert {row[1] for row in rows} == {"all (10 records)", "words 2-4 (10 records)", "words 4-6 (10 records)"}


def test_a_mapping_with_free_keys_is_one_text_column(run_config):
    """data.files' keys differ between runs; the columns every run writes may not."""
    columns, values = hparam_columns(run_config("data.files.train=/data/train.jsonl"))
    assert [c.name for c in columns] == [c.name for c in hparam_columns(run_config())[0]]
    assert "data/files/train" not in values and "/data/train.jsonl" in values["data/files"]
