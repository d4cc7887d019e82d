"""What the callbacks (callbacks.py) do inside a fit: find the run's TensorBoard writer and record
metrics, decode or score the validation set with the module in eval mode (each rank its share under
DDP), and rescale a Reasoner's latents to another lambda for a while."""

from __future__ import annotations

import dataclasses
import math
import re
from contextlib import contextmanager
from itertools import islice
from typing import Iterator

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MeanMetric

from ..config import REASONER_METHODS, ConfigError


def tensorboard(trainer: L.Trainer):
    """The run's SummaryWriter on rank 0 (None elsewhere or without a TensorBoardLogger)."""
    if trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
        return trainer.logger.experiment
    return None


def record_metrics(trainer: L.Trainer, metrics: dict[str, float], curve: bool = True) -> None:
    """Scalars from hooks where `self.log` is not allowed (on_train_end): into callback_metrics (so
    metrics.json has them) and, for values that form a curve over steps, to the logger at the current
    step (one-value results reach TensorBoard through logs.log_hparams, under z_results/)."""
    trainer.callback_metrics.update({name: torch.tensor(float(value)) for name, value in metrics.items()})
    if curve and trainer.is_global_zero and trainer.logger is not None:
        trainer.logger.log_metrics(metrics, step=trainer.global_step)


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside, the previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def fusion_of(method: torch.nn.Module):
    fusion = getattr(method, "fusion", None)
    if fusion is None:
        raise ConfigError(
            f"{type(method).__name__} has no latent fusion: an inference-time lambda applies "
            f"only to the methods with a Reasoner ({', '.join(REASONER_METHODS)})"
        )
    return fusion


@contextmanager
def fusion_lambda(method: torch.nn.Module, lam: float) -> Iterator[None]:
    """The method decodes / scores with fusion lambda = `lam` inside; its own lambda is restored
    after, also on error. The fusion's config is replaced, not mutated: it is the run config's."""
    fusion = fusion_of(method)
    trained = fusion.cfg
    fusion.cfg = dataclasses.replace(trained, lam=float(lam))
    try:
        yield
    finally:
        fusion.cfg = trained


def validation_data(trainer: L.Trainer):
    """The fit's validation DataLoader (under DDP with its DistributedSampler)."""
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    if loaders is None:
        raise RuntimeError("this callback needs validation data: give the Trainer a val dataloader")
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


def decode_validation(trainer: L.Trainer, module, count: int, shard: bool) -> list[dict]:
    """The module's predict_step records (shared decoder, its stop ids and decode sampler) for the
    first `count` validation records; with `shard`, only this rank's share of them."""
    if module.tokenizer is None or module.decode_cfg is None:
        raise ValueError("decoding callbacks need a MethodModule built with a tokenizer and a decode config")
    loader = validation_data(trainer)
    indices = list(range(min(count, len(loader.dataset))))
    if shard:
        indices = indices[trainer.global_rank :: trainer.world_size]
    size = module.decode_cfg.batch_size
    records = []
    with evaluating(module), torch.no_grad(), trainer.precision_plugin.predict_step_context():
        for start in range(0, len(indices), size):
            batch = loader.collate_fn([loader.dataset[i] for i in indices[start : start + size]])
            records += module.predict_step(trainer.strategy.batch_to_device(batch), start // size)
    return records


def validation_loss(trainer: L.Trainer, module) -> float:
    """The module's validation loss as its validation loop computes it (same batches, precision,
    token-weighted MeanMetric reduced over ranks), with whatever lambda is set now."""
    loss = MeanMetric().to(module.device)
    loader = validation_data(trainer)
    limit = trainer.num_val_batches[0] if trainer.num_val_batches else math.inf
    batches = int(limit) if math.isfinite(limit) else None  # None: the whole loader
    with evaluating(module), torch.no_grad(), trainer.precision_plugin.val_step_context():
        for batch in islice(loader, batches):
            batch_loss, count = module.batch_loss(trainer.strategy.batch_to_device(batch))
            loss.update(batch_loss, weight=count)
    return float(loss.compute())  # a collective under DDP: every rank is here


def fenced(text: str) -> str:
    """Markdown code block that shows `text` verbatim, whatever backticks it holds."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}\n{text}\n{fence}"
