"""lit/callbacks.py: what a fit writes to TensorBoard and metrics.json beside the losses."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from flythinker_pl.config import ConfigError
from flythinker_pl.lit.callbacks import GenerationSamples, LambdaSweep, PositionEval, Throughput, run_callbacks
from flythinker_pl.lit.in_fit import fusion_lambda
from flythinker_pl.lit.run import fit
from flythinker_pl.measure import peak_memory_mb, reset_peak_memory

TINY_DECODING = ("decode.max_new_tokens=8", "eval.segment_width=4", "eval.segment_max=8")


class KeepModule(L.Callback):
    """Hands the trained module to the test."""

    def on_fit_end(self, trainer, pl_module):
        self.module = pl_module


def events(run_dir, method: str = "flythinker") -> EventAccumulator:
    """The run's TensorBoard events: in <run dir>/<method>/, so that TensorBoard names the run by its method."""
    return EventAccumulator(str(run_dir / method), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()


def hparams_of(accumulator: EventAccumulator):
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return {info.name.tag for info in experiment.metric_infos}, session.hparams


def test_tensorboard_events_of_a_demo_run_hold_scalars_hparams_text_and_image(run_config):
    cfg = run_config(
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "callbacks.position_eval_every=1",
        "callbacks.position_eval_samples=3",
        "callbacks.samples=1",
        "callbacks.lambda_sweep=[0,0.5]",
        *TINY_DECODING,
    )
    kept = KeepModule()
    run_dir = fit(cfg, callbacks=[kept])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    accumulator = events(run_dir)
    scalars = set(accumulator.Tags()["scalars"])

    assert {
        "val/loss",
        "val/ppl",
        "perf/train_tokens_per_s",
        "perf/peak_memory_mb",
        "position_eval/bleu",
        "position_eval/rougeL",
        "position_eval/rouge1@0-4",
        "position_eval/rouge1@4-8",
        LambdaSweep.SERIES_TAG,
        "train/lr",
    } <= scalars
    # one value per run: under z_results/, the last section, not among the curves SCALARS opens first
    assert {"z_results/lambda_sweep/val_loss@0", "z_results/val/loss_before"} <= scalars
    assert "lambda_sweep/val_loss@0" not in scalars and "val/loss_before" not in scalars
    assert "epoch" not in scalars  # Lightning's epoch counter: a chart of zeros for a run measured in steps
    assert (run_dir / "hparams.yaml").exists()  # Lightning's own files stay in the run dir
    assert [event.step for event in accumulator.Scalars(LambdaSweep.SERIES_TAG)] == [0, 500]
    assert metrics["perf/train_tokens_per_s"] > 0 and metrics["perf/peak_memory_mb"] > 0
    assert {"position_eval/meteor", "position_eval/bleu@0-4"} <= set(metrics)

    # the sweep at the trained lambda is the fit's own validation loss, to the bit; other lambdas differ
    assert metrics["lambda_sweep/val_loss@0.5"] == metrics["val/loss"]
    assert metrics["lambda_sweep/val_loss@0"] != metrics["val/loss"]
    assert kept.module.method.fusion.cfg.lam == 0.5  # restored after the sweep

    panels = {f"{PositionEval.IMAGE_TAG}/{panel}" for panel in ("bleu", "rouge1", "rougeL", "meteor", "samples")}
    assert panels == set(accumulator.Tags()["images"])  # one image per panel, no tag shared with a scalar
    text_tag = f"{GenerationSamples.TAG}/0/text_summary"
    assert accumulator.Tags()["tensors"].count(text_tag) == 1
    sample = accumulator.Tensors(text_tag)[0].tensor_proto.string_val[0].decode()
    for heading in (
        "**Prompt**",
        "**Reference**",
        "**Output: flythinker (lambda=0.5)**",
        "**Output without latents (lambda=0)**",
        "not a separately trained SFT model",
    ):
        assert heading in sample

    metric_tags, hparams = hparams_of(accumulator)
    assert {"val/loss", "val/ppl", "perf/train_tokens_per_s", "z_results/lambda_sweep/val_loss@0"} <= metric_tags
    assert hparams["4 lambda"].number_value == 0.5 and hparams["1 method"].string_value == "flythinker"
    assert hparams["3 reasoner"].string_value == "tiny-64 (lora), span global"
    assert hparams["fusion/norm"].string_value == "table_mean" and hparams["fusion/lam"].number_value == 0.5
    # the HPARAMS tab shows each metric's last value: the run's final one
    assert accumulator.Scalars("val/loss")[-1].value == pytest.approx(metrics["val/loss"])


def test_decoding_callbacks_work_for_a_method_without_reasoner(run_config):
    cfg = run_config(
        "method=sft",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        "trainer.limit_val_batches=1",
        "callbacks.position_eval_every=1",
        "callbacks.position_eval_samples=2",
        "callbacks.samples=1",
        "callbacks.throughput=false",
        *TINY_DECODING,
    )
    run_dir = fit(cfg)
    accumulator = events(run_dir, "sft")
    assert "position_eval/rouge1" in accumulator.Tags()["scalars"]
    assert "perf/train_tokens_per_s" not in accumulator.Tags()["scalars"]
    sample = accumulator.Tensors(f"{GenerationSamples.TAG}/0/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "**Output: sft**" in sample and "lambda=0" not in sample
    _, hparams = hparams_of(accumulator)  # settings SFT does not have are blank, not the defaults
    assert hparams["1 method"].string_value == "sft" and hparams["2 generator"].string_value == "tiny-64 (lora)"
    assert not {"3 reasoner", "4 lambda"} & set(hparams) and not any(
        k.startswith(("fusion/", "reasoner/")) for k in hparams
    )


def test_lambda_sweep_needs_a_method_with_fusion(run_config):
    with pytest.raises(ConfigError, match=r"callbacks.lambda_sweep.*\(got method=sft\)"):
        run_config("method=sft", "callbacks.lambda_sweep=[0,1]")
    with pytest.raises(ConfigError, match="no latent fusion"):
        with fusion_lambda(torch.nn.Linear(2, 2), 0.0):
            pass


def test_run_callbacks_follow_the_config(run_config):
    assert [type(c) for c in run_callbacks(run_config())] == [Throughput, GenerationSamples]
    every = run_callbacks(
        run_config(
            "callbacks.position_eval_every=2",
            "callbacks.lambda_sweep=[0]",
            "callbacks.samples=0",
            "callbacks.throughput=false",
        )
    )
    assert [type(c) for c in every] == [PositionEval, LambdaSweep]
    assert every[0].every == 2 and every[1].lams == [0.0]


def test_fusion_lambda_is_restored_after_an_error(make_flythinker):
    method = make_flythinker()
    trained = method.fusion.cfg
    with pytest.raises(RuntimeError, match="boom"):
        with fusion_lambda(method, 0.0):
            assert method.fusion.cfg.lam == 0.0
            raise RuntimeError("boom")
    assert method.fusion.cfg is trained and trained.lam == 0.7  # the shared config object was never mutated


class FakeModule:
    """What Throughput touches of a LightningModule."""

    device = torch.device("cpu")

    def __init__(self):
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)


def test_throughput_counts_real_tokens_and_leaves_validation_time_out():
    throughput, module = Throughput(), FakeModule()
    batch = {"attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}  # 5 real tokens
    throughput.on_train_start(None, module)
    for _ in range(2):
        throughput.on_train_batch_start(None, module, batch, 0)
        time.sleep(0.05)
        throughput.on_train_batch_end(None, module, None, batch, 0)
        throughput.on_validation_start(None, module)
        time.sleep(0.5)  # validation: not training time
    tokens_per_s = module.logged["perf/train_tokens_per_s"]
    assert 10 / 0.3 < tokens_per_s < 10 / 0.1  # ~10 tokens in ~0.1 s; with validation it would be ~10 / 1.1
    assert module.logged["perf/peak_memory_mb"] > 1


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-run CPU peaks need Linux /proc")
def test_cpu_peak_memory_restarts_with_each_run_of_one_process():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    earlier_run = [torch.ones(1000) for _ in range(16_000)]  # 64 MB in small blocks, which the C heap keeps
    del earlier_run
    earlier_peak = peak_memory_mb(cpu)
    reset_peak_memory(cpu)  # the next run of a sweep starts
    assert peak_memory_mb(cpu) < earlier_peak - 48
