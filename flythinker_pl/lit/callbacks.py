"""What a fit adds to TensorBoard and metrics.json beside the losses (`callbacks.*` in the config):

- `Throughput`        perf/train_tokens_per_s, perf/peak_memory_mb
- `PositionEval`      every N validations: decode validation records, log position_eval/<metric>
                      and position_eval/<metric>@<start>-<end> and the plot (images position_eval/plot/<panel>)
- `GenerationSamples` at the end: prompt, reference and output as text (generation_samples/<i>),
                      for methods with a Reasoner also the same model's output with lambda = 0
- `LambdaSweep`       at the end: validation loss at each inference-time lambda
- `CoconutCurriculum` (lit/coconut_curriculum.py, with coconut.curriculum=true): the stage's batches, an
                      optimiser reset per stage, coconut/stage and coconut/val_loss@stage<s>

DDP: a callback that runs forward passes either runs them on every rank over that rank's share of
the data and meets the others in one collective (`PositionEval`: all_gather of the texts,
`LambdaSweep`: the MeanMetric reduction), or runs them on rank 0 alone with no collective at all
(`GenerationSamples`: the inner method is called directly, never the DDP wrapper).
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from contextlib import contextmanager
from itertools import islice
from typing import Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from ..config import REASONER_METHODS, Config, ConfigError
from ..evaluation.metrics import METRICS
from ..evaluation.report import log_position_panels
from ..evaluation.segments import position_scores, text_units
from ..evaluation.torchmetric import TextGenerationScores
from ..measure import peak_memory_mb, reset_peak_memory, synchronize
from .coconut_curriculum import CoconutCurriculum


# ---- helpers shared by the callbacks -------------------------------------------------------------

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
        raise ConfigError(f"{type(method).__name__} has no latent fusion: an inference-time lambda applies "
                          f"only to the methods with a Reasoner ({', '.join(REASONER_METHODS)})")
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
        indices = indices[trainer.global_rank::trainer.world_size]
    size = module.decode_cfg.batch_size
    records = []
    with evaluating(module), torch.no_grad(), trainer.precision_plugin.predict_step_context():
        for start in range(0, len(indices), size):
            batch = loader.collate_fn([loader.dataset[i] for i in indices[start:start + size]])
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


# ---- the callbacks -------------------------------------------------------------------------------

class Throughput(Callback):
    """Training tokens/s (real tokens: attention_mask.sum of training batches) over training time
    only (the clock stops at each validation and restarts at the next training batch), summed over
    ranks under DDP; and peak memory since training started (max over ranks; see peak_memory_mb)."""

    def __init__(self):
        self.tokens, self.seconds, self.since = 0, 0.0, None  # since: when the clock last started

    def on_train_start(self, trainer, pl_module):
        self.tokens, self.seconds, self.since = 0, 0.0, None
        reset_peak_memory(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.since is None:
            synchronize(pl_module.device)
            self.since = time.perf_counter()
        self.tokens = self.tokens + batch["attention_mask"].sum()  # a device tensor: no host sync here

    def on_validation_start(self, trainer, pl_module):
        if self.since is not None:  # a validation inside fit: stop the clock
            synchronize(pl_module.device)
            self.seconds += time.perf_counter() - self.since
            self.since = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        seconds = self.seconds + time.perf_counter() - self.since
        pl_module.log("perf/train_tokens_per_s", self.tokens / seconds, on_step=True, on_epoch=False,
                      sync_dist=True, reduce_fx="sum")
        pl_module.log("perf/peak_memory_mb", peak_memory_mb(pl_module.device), on_step=True, on_epoch=False,
                      sync_dist=True, reduce_fx="max")


class PositionEval(Callback):
    """Every `every_n_validations` validations of a fit: decode the first `num_samples` validation
    records (each rank its share), score them overall and per position window (evaluation/
    segments.py windows), log `position_eval/<metric>` and `position_eval/<metric>@<start>-<end>`,
    and the window plot as TensorBoard images `position_eval/plot/<panel>` (bleu, ..., samples),
    one panel each (a strip of panels would read as a thumbnail there), in the method's colour."""

    IMAGE_TAG = "position_eval/plot"  # + "/<panel>"; position_eval/<metric> are the scalars' tags

    def __init__(self, every_n_validations: int, num_samples: int, segment_width: int = 50,
                 segment_max: int = 300, segment_unit: str = "words", method: str = ""):
        if every_n_validations < 1 or num_samples < 1:
            raise ValueError(f"every_n_validations ({every_n_validations}) and num_samples ({num_samples}) "
                             "must be >= 1")
        self.every, self.num_samples = every_n_validations, num_samples
        self.segment_width, self.segment_max, self.segment_unit = segment_width, segment_max, segment_unit
        self.validations, self.method = 0, method

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:  # only a fit's validations
            return
        self.validations += 1
        if self.validations % self.every:
            return
        scores = TextGenerationScores()
        for record in decode_validation(trainer, pl_module, self.num_samples, shard=True):
            scores.update([record["id"]], [record["prediction"]], [record["reference"]])
        overall = scores.compute()  # a collective: every rank is here
        _, predictions, references = zip(*scores.gathered_samples())
        windows = position_scores(predictions, references, self.segment_width, self.segment_max,
                                  text_units(self.segment_unit, pl_module.tokenizer))
        # every rank holds the same gathered scores: logged without another reduction
        logged = {f"position_eval/{name}": overall[name] for name in METRICS if name in overall}
        logged.update({f"position_eval/{row.metric}@{row.segment_start}-{row.segment_end}": row.value
                       for row in windows.itertuples()})
        pl_module.log_dict(logged, sync_dist=False)
        writer = tensorboard(trainer)
        if writer is not None and len(windows):
            log_position_panels(writer, self.IMAGE_TAG, windows.assign(method=self.method),
                                f"{self.method} on validation, step {trainer.global_step}", trainer.global_step)

    def state_dict(self) -> dict:  # a resumed fit keeps counting validations where it stopped
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = state_dict["validations"]


class GenerationSamples(Callback):
    """At the end of training: the first `num` validation prompts, their references and the
    method's outputs as TensorBoard text (`generation_samples/<i>`, markdown). For methods with a
    Reasoner, also the output of the same trained model with lambda = 0 (latents off). Rank 0
    decodes alone, with the inner method (no collective)."""

    TAG = "generation_samples"

    def __init__(self, num: int, method_name: str = ""):
        self.num, self.method_name = num, method_name

    def on_train_end(self, trainer, pl_module):
        writer = tensorboard(trainer)
        if writer is None or self.num < 1:
            return
        outputs = decode_validation(trainer, pl_module, self.num, shard=False)
        fusion = getattr(pl_module.method, "fusion", None)
        without = None
        if fusion is not None:
            with fusion_lambda(pl_module.method, 0.0):
                without = decode_validation(trainer, pl_module, self.num, shard=False)
        name = self.method_name or type(pl_module.method).__name__
        label = f"{name} (lambda={fusion.cfg.lam:g})" if fusion is not None else name
        for i, record in enumerate(outputs):
            parts = [f"**id** `{record['id']}`, step {trainer.global_step}", "**Prompt**", fenced(record["prompt"]),
                     "**Reference**", fenced(record["reference"]), f"**Output: {label}**",
                     fenced(record["prediction"])]
            if without is not None:
                parts += ["**Output without latents (lambda=0)**: the same trained model with the Reasoner's "
                          "latents switched off at inference, not a separately trained SFT model",
                          fenced(without[i]["prediction"])]
            writer.add_text(f"{self.TAG}/{i}", "\n\n".join(parts), trainer.global_step)


class LambdaSweep(Callback):
    """At the end of training: the validation loss (the fit's validation batches, token-weighted,
    over all ranks) at each inference-time lambda, in metrics.json as `lambda_sweep/val_loss@<lam:g>`
    (TensorBoard: one value each under z_results/) and as one TensorBoard series
    `lambda_sweep/val_loss_vs_lambda_x1000` (step = round(1000 * lambda)).
    Only for methods with a Reasoner; the trained lambda is restored after."""

    SERIES_TAG = "lambda_sweep/val_loss_vs_lambda_x1000"

    def __init__(self, lams: Sequence[float]):
        self.lams = [float(lam) for lam in lams]

    def setup(self, trainer, pl_module, stage):
        fusion_of(pl_module.method)  # fail before training, not after it

    def on_train_end(self, trainer, pl_module):
        losses = {}
        for lam in self.lams:
            with fusion_lambda(pl_module.method, lam):
                losses[lam] = validation_loss(trainer, pl_module)
        record_metrics(trainer, {f"lambda_sweep/val_loss@{lam:g}": loss for lam, loss in losses.items()},
                       curve=False)
        writer = tensorboard(trainer)
        if writer is not None:
            for lam, loss in sorted(losses.items()):
                writer.add_scalar(self.SERIES_TAG, loss, round(1000 * lam))


def run_callbacks(cfg: Config) -> list[Callback]:
    """The callbacks `cfg.callbacks` asks for (defaults: throughput and 2 generation samples)."""
    knobs = cfg.callbacks
    callbacks: list[Callback] = []
    if knobs.throughput:
        callbacks.append(Throughput())
    decoding = knobs.position_eval_every or knobs.samples
    if decoding and cfg.trainer.strategy == "fsdp":  # decoding needs whole models; each rank holds a shard
        rank_zero_info("trainer.strategy=fsdp: callbacks.samples and callbacks.position_eval_every are off "
                       "(decoding needs whole models); `flythinker run`/`predict` decode the exported weights")
    elif decoding:
        if knobs.position_eval_every:
            callbacks.append(PositionEval(knobs.position_eval_every, knobs.position_eval_samples,
                                          cfg.eval.segment_width, cfg.eval.segment_max, cfg.eval.segment_unit,
                                          cfg.method))
        if knobs.samples:
            callbacks.append(GenerationSamples(knobs.samples, cfg.method))
    if knobs.lambda_sweep:
        callbacks.append(LambdaSweep(knobs.lambda_sweep))
    if cfg.method == "coconut" and cfg.coconut.curriculum:  # not a knob: the training recipe itself
        callbacks.append(CoconutCurriculum(cfg.coconut, cfg.data.seed))
    return callbacks

