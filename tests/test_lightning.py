"""Training through Lightning: checkpoints, resume, run dirs, and that learning happens."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from flythinker_pl.lit.run import build, build_trainer, fit


class StopAt(L.Callback):
    """Simulates a killed job: raises once training reaches `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise RuntimeError("simulated pre-emption")


class RecordStart(L.Callback):
    def on_train_start(self, trainer, *args):
        self.start_step = trainer.global_step


@torch.no_grad()
def logits_on(module, batch):
    module.eval()
    return module.method(batch["input_ids"], batch["attention_mask"], batch["prompt_len"])


@pytest.mark.parametrize("method", ["flythinker", "sft"])
def test_checkpoint_holds_trainable_weights_only_and_restores_identical_logits(run_config, tmp_path, method):
    cfg = run_config(f"method={method}", "reasoner.mode=frozen")
    module, datamodule, _ = build(cfg)
    trainer = build_trainer(cfg, tmp_path / "run" / "version_0")
    trainer.fit(module, datamodule=datamodule)
    checkpoint = torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)

    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable
    assert not any(".reasoner." in k for k in checkpoint["state_dict"])  # frozen Reasoner is not saved

    batch = next(iter(datamodule.val_dataloader()))
    fresh, _, _ = build(cfg)
    assert not torch.allclose(logits_on(fresh, batch), logits_on(module, batch))  # training changed them
    fresh.load_state_dict(checkpoint["state_dict"], strict=False)
    assert torch.equal(logits_on(fresh, batch), logits_on(module, batch))


def test_rerunning_an_interrupted_run_resumes_from_last_ckpt(run_config):
    cfg = run_config("trainer.max_steps=6", "trainer.val_check_interval=2")
    with pytest.raises(RuntimeError, match="simulated pre-emption"):
        fit(cfg, callbacks=[StopAt(3)])
    start = RecordStart()
    run_dir = fit(cfg, callbacks=[start])
    assert run_dir.name == "version_0"  # the same run continued, no new version
    assert start.start_step == 2  # from last.ckpt (saved at the step-2 validation)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 6
    before = json.loads((run_dir / "metrics_before.json").read_text())  # measured once, before the interruption
    assert metrics["val/loss_before"] == before["val/loss"]  # kept through the resume

    fresh = fit(cfg)  # a finished run is not resumed: the same command starts a new version
    assert fresh.name == "version_1"
    with pytest.raises(RuntimeError):  # an interrupted run with last.ckpt ...
        fit(run_config("trainer.max_steps=4", "trainer.val_check_interval=2"), callbacks=[StopAt(3)])
    assert (run_dir.parent / "version_2" / "checkpoints" / "last.ckpt").exists()
    other = fit(run_config("trainer.max_steps=5", "trainer.val_check_interval=2"))
    assert other.name == "version_3"  # ... is never resumed by a run with another config


def test_run_dir_records_config_and_commit(run_config):
    run_dir = fit(run_config("trainer.max_steps=2", "trainer.val_check_interval=2"))
    assert "lam: 0.5" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "git_commit.txt").read_text().strip()
    assert list((run_dir / "flythinker").glob("events.out.tfevents.*"))  # TensorBoard names the run by its method


@pytest.mark.slow  # multi-process / hundreds of steps: make test-slow runs it, and CI
@pytest.mark.parametrize("method", ["sft", "flythinker"])
def test_a_few_hundred_steps_lower_validation_loss_clearly(run_config, method):
    cfg = run_config(
        f"method={method}",
        "trainer.max_steps=200",
        "trainer.val_check_interval=200",
        "trainer.limit_val_batches=4",
        "train.lr=5e-3",
        "train.warmup_ratio=0.05",
        "generator.pretrain_steps=100",
        "reasoner.pretrain_steps=100",
        "data.target_tokens=600",
    )  # long references: train on their whole length too
    metrics = json.loads((fit(cfg) / "metrics.json").read_text())
    assert metrics["global_step"] == 200
    assert metrics["val/loss"] < 0.9 * metrics["val/loss_before"], metrics  # measured: ~17% (SFT), ~30%
