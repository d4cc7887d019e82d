"""Wiring a config into a run: data, method, Trainer, run directory, resume, results."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from ..config import Config, to_yaml
from ..data.datamodule import PersonalisationDataModule, pretraining_corpus
from ..models.build import build_method
from .callbacks import run_callbacks
from .evaluate import evaluate_runs, score_names
from .launch import AtomicCheckpointIO, cluster_environment
from .logs import RunLogger, log_hparams, progress_bar
from .module import MethodModule
from .rundirs import (
    EVAL_CONFIG,
    NOT_DECODING,
    RESUME_ENV,
    RUN_DIR_ENV,
    choose_run_dir,
    cot_weights,
    eval_yaml,
    finished_run,
    git_commit,
    same_settings,
    trained_weights,
)
from .writer import PredictionWriter


def precision(cfg: Config) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"


def lightning_strategy(cfg: Config, decoding: bool = False):
    """Lightning's strategy. trainer.strategy=fsdp shards training (lit/sharding.py); decoding then
    runs on whole models (each rank decodes its share of the records, as under DDP)."""
    if cfg.trainer.strategy != "fsdp":
        return cfg.trainer.strategy
    if decoding:
        return "auto"
    from .sharding import ShardedDataParallel

    return ShardedDataParallel()


def build_trainer(cfg: Config, run_dir: Path, callbacks: list = (), decoding: bool = False) -> L.Trainer:
    logger = RunLogger(run_dir, cfg.method)  # events in <run dir>/<method>/: TensorBoard names the run by its method
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step}",
        monitor="val/loss",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    progress = [progress_bar()] if cfg.trainer.enable_progress_bar else []
    environment = cluster_environment()
    return L.Trainer(
        **{**dataclasses.asdict(cfg.trainer), "strategy": lightning_strategy(cfg, decoding)},
        precision=precision(cfg),
        gradient_clip_val=cfg.train.grad_clip or None,
        accumulate_grad_batches=cfg.train.accumulate,
        logger=logger,
        enable_model_summary=False,  # _fit prints the parameter counts
        # every strategy takes it; fsdp's sharded checkpoints bypass it (lit/sharding.py swaps them)
        plugins=[AtomicCheckpointIO(), *([environment] if environment else [])],
        callbacks=[checkpoint, LearningRateMonitor("step"), *progress, *run_callbacks(cfg), *callbacks],
        default_root_dir=str(run_dir),
        # no_grad, not inference_mode: metric states touched by the validation before
        # fit must stay updatable by fit's own validation loops
        inference_mode=False,
    )


def build(cfg: Config):
    """(LightningModule, DataModule, tokenizer) for a config, seeded."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    warm_start = cot_weights(cfg) if cfg.method == "coconut" and cfg.coconut.init_from else None
    method, tokenizer = build_method(cfg, corpus=lambda: pretraining_corpus(cfg.data), warm_start=warm_start)
    datamodule = PersonalisationDataModule(
        cfg.data,
        tokenizer,
        predict_split=cfg.decode.split,
        predict_batch_size=cfg.decode.batch_size,
        predict_records=cfg.decode.max_records,
    )
    module = MethodModule(method, cfg.train, tokenizer, cfg.decode, writes_rationale=cfg.method == "cot")
    return module, datamodule, tokenizer


BEFORE_TRAINING = "metrics_before.json"  # a fresh run's validation before training: a resumed run keeps it


def _in_run_dir(run_dir: Path, resume_from: Optional[str], work):
    """Run `work()` with the run dir (and resume point) exported for DDP ranks started inside it. A
    run dir this call made is removed again if `work` fails before it holds a checkpoint or
    predictions: a failed command leaves no empty version behind."""
    # a run dir still empty was made for this call (by choose_run_dir; on global rank 0, under srun/torchrun)
    launched_here, existed = RUN_DIR_ENV not in os.environ, run_dir.is_dir() and any(run_dir.iterdir())
    os.environ.update({RUN_DIR_ENV: str(run_dir), RESUME_ENV: resume_from or ""})
    try:
        return work()
    except BaseException:
        if (
            launched_here
            and not existed
            and rank_zero_only.rank == 0
            and not any(run_dir.rglob("*.ckpt"))
            and not any(run_dir.glob("*.jsonl"))
        ):
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                run_dir.parent.rmdir()  # the experiment dir, if this run made it and no other run is there
            except OSError:
                pass
        raise
    finally:
        if launched_here:
            del os.environ[RUN_DIR_ENV], os.environ[RESUME_ENV]


def check_resume(cfg: Config) -> None:
    """train.resume=PATH names a checkpoint that exists: checked before any run dir, model or message."""
    if cfg.train.resume not in ("auto", "never") and not Path(cfg.train.resume).exists():
        raise FileNotFoundError(
            f"train.resume={cfg.train.resume}: no such checkpoint (give an existing "
            "RUN/checkpoints/last.ckpt, or train.resume=auto to continue this experiment's "
            "newest unfinished run)"
        )


def fit(cfg: Config, callbacks: list = ()) -> Path:
    """Train one run; returns its directory (config.yaml, git_commit.txt, metrics.json, checkpoints,
    tfevents under <method>/). A fresh run is validated once before training, so metrics.json shows the gain."""
    check_resume(cfg)
    run_dir, resume_from = choose_run_dir(cfg)
    return _in_run_dir(run_dir, resume_from, lambda: _fit(cfg, run_dir, resume_from, callbacks))


def _fit(cfg: Config, run_dir: Path, resume_from: Optional[str], callbacks: list) -> Path:
    module, datamodule, _ = build(cfg)
    trainer = build_trainer(cfg, run_dir, callbacks)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        (run_dir / "git_commit.txt").write_text(git_commit() + "\n")
        trainer.logger.log_hyperparams(OmegaConf.to_container(OmegaConf.structured(cfg)))  # hparams.yaml
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        print(
            f"{cfg.method}: {trainable / 1e6:.3g} M of {sum(p.numel() for p in module.parameters()) / 1e6:.3g} M "
            f"parameters trainable; run dir {run_dir}"
        )
        if resume_from:
            print(f"Resuming {run_dir} from {resume_from}")
    initial, before = {}, run_dir / BEFORE_TRAINING
    if resume_from is None:
        initial = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        if trainer.is_global_zero and cfg.trainer.max_steps != 0:  # for metrics.json after a resume
            before.write_text(json.dumps(initial, indent=2) + "\n")
    elif before.exists():
        initial = json.loads(before.read_text())
    if cfg.trainer.max_steps != 0:
        initial = {f"{k}_before": v for k, v in initial.items()}
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        if cfg.trainer.strategy == "fsdp":
            from .sharding import EXPORT_NAME, export_weights

            if trainer.is_global_zero:
                export_weights(run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / EXPORT_NAME)
            trainer.strategy.barrier("fsdp_export")  # the other ranks decode it next (flythinker run)
    # else zero-shot: the validation above is the run's result, and no checkpoint is written
    if trainer.is_global_zero:
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "train/loss"}
        results = {"method": cfg.method, "global_step": trainer.global_step, **initial, **final}
        (run_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        # written at the last step, so that each scalar series ends on the value the tab shows
        log_hparams(
            trainer.logger,
            cfg,
            {k: v for k, v in results.items() if isinstance(v, float)},
            trainer.global_step,
            score_names(cfg.decode.split),
        )
        trainer.logger.finalize("success")  # the Trainer closed its event file: flush the new one
    return run_dir


def predict(cfg: Config, ckpt_path: Optional[str] = None, run_dir: Optional[Path] = None) -> Path:
    """Decode `decode.split` into <run dir>/<decode.output>, beside `<stem>.config.yaml` (the config
    used). The run dir is `run_dir`, else the checkpoint's (.../version_N/checkpoints/x.ckpt); without
    either (zero-shot) it is a new version of the experiment. Returns the predictions file."""
    if run_dir is not None:
        run_dir = Path(run_dir)
    elif ckpt_path:
        run_dir = Path(ckpt_path).resolve().parent.parent
    elif RUN_DIR_ENV in os.environ:
        run_dir = Path(os.environ[RUN_DIR_ENV])
    else:
        run_dir, _ = choose_run_dir(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume="never")))
    output = run_dir / cfg.decode.output

    def work():
        module, datamodule, _ = build(cfg)
        trainer = build_trainer(cfg, run_dir, [PredictionWriter(output)], decoding=True)
        settings = output.with_suffix(".config.yaml")
        if trainer.is_global_zero:  # written only once the predictions are complete (below), so
            settings.unlink(missing_ok=True)  # an interrupted decode never passes for a finished one
        trainer.predict(module, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
        if trainer.is_global_zero:
            settings.write_text(to_yaml(cfg))
        return output

    return _in_run_dir(run_dir, None, work)


def run_experiment(cfg: Config) -> Path:
    """Train, decode `decode.split`, evaluate; returns the run dir. A stage whose outputs already
    exist for exactly this config is skipped (a finished run is reused), so a rerun continues."""
    run_dir = finished_run(cfg) or fit(cfg)
    predictions = run_dir / cfg.decode.output
    if not (predictions.exists() and same_settings(predictions.with_suffix(".config.yaml"), cfg, NOT_DECODING)):
        trained = cfg.trainer.max_steps != 0  # zero-shot runs decode the loaded weights
        predict(cfg, str(trained_weights(run_dir)) if trained else None, run_dir)
    scored = run_dir / EVAL_CONFIG
    if rank_zero_only.rank == 0 and not (
        scored.exists()
        and scored.read_text() == eval_yaml(cfg.eval)
        and scored.stat().st_mtime >= predictions.stat().st_mtime
    ):
        evaluate_runs([predictions], cfg.eval)
    return run_dir
