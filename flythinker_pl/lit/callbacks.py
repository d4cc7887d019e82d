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

import time
from typing import Sequence

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from ..config import Config
from ..evaluation.metrics import METRICS
from ..evaluation.report import log_position_panels
from ..evaluation.segments import position_scores, text_units
from ..evaluation.torchmetric import TextGenerationScores
from ..measure import peak_memory_mb, reset_peak_memory, synchronize
from .coconut_curriculum import CoconutCurriculum
from .in_fit import decode_validation, fenced, fusion_lambda, fusion_of, record_metrics, tensorboard, validation_loss


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
        pl_module.log(
            "perf/train_tokens_per_s",
            self.tokens / seconds,
            on_step=True,
            on_epoch=False,
            sync_dist=True,
            reduce_fx="sum",
        )
        pl_module.log(
            "perf/peak_memory_mb",
            peak_memory_mb(pl_module.device),
            on_step=True,
            on_epoch=False,
            sync_dist=True,
            reduce_fx="max",
        )


class PositionEval(Callback):
    """Every `every_n_validations` validations of a fit: decode the first `num_samples` validation
    records (each rank its share), score them overall and per position window (evaluation/
    segments.py windows), log `position_eval/<metric>` and `position_eval/<metric>@<start>-<end>`,
    and the window plot as TensorBoard images `position_eval/plot/<panel>` (bleu, ..., samples),
    one panel each (a strip of panels would read as a thumbnail there), in the method's colour."""

    IMAGE_TAG = "position_eval/plot"  # + "/<panel>"; position_eval/<metric> are the scalars' tags

    def __init__(
        self,
        every_n_validations: int,
        num_samples: int,
        segment_width: int = 50,
        segment_max: int = 300,
        segment_unit: str = "words",
        method: str = "",
    ):
        if every_n_validations < 1 or num_samples < 1:
            raise ValueError(
                f"every_n_validations ({every_n_validations}) and num_samples ({num_samples}) must be >= 1"
            )
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
        windows = position_scores(
            predictions,
            references,
            self.segment_width,
            self.segment_max,
            text_units(self.segment_unit, pl_module.tokenizer),
        )
        # every rank holds the same gathered scores: logged without another reduction
        logged = {f"position_eval/{name}": overall[name] for name in METRICS if name in overall}
        logged.update(
            {
                f"position_eval/{row.metric}@{row.segment_start}-{row.segment_end}": row.value
                for row in windows.itertuples()
            }
        )
        pl_module.log_dict(logged, sync_dist=False)
        writer = tensorboard(trainer)
        if writer is not None and len(windows):
            log_position_panels(
                writer,
                self.IMAGE_TAG,
                windows.assign(method=self.method),
                f"{self.method} on validation, step {trainer.global_step}",
                trainer.global_step,
            )

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
            parts = [
                f"**id** `{record['id']}`, step {trainer.global_step}",
                "**Prompt**",
                fenced(record["prompt"]),
                "**Reference**",
                fenced(record["reference"]),
                f"**Output: {label}**",
                fenced(record["prediction"]),
            ]
            if without is not None:
                parts += [
                    "**Output without latents (lambda=0)**: the same trained model with the Reasoner's "
                    "latents switched off at inference, not a separately trained SFT model",
                    fenced(without[i]["prediction"]),
                ]
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
        record_metrics(trainer, {f"lambda_sweep/val_loss@{lam:g}": loss for lam, loss in losses.items()}, curve=False)
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
        rank_zero_info(
            "trainer.strategy=fsdp: callbacks.samples and callbacks.position_eval_every are off "
            "(decoding needs whole models); `flythinker run`/`predict` decode the exported weights"
        )
    elif decoding:
        if knobs.position_eval_every:
            callbacks.append(
                PositionEval(
                    knobs.position_eval_every,
                    knobs.position_eval_samples,
                    cfg.eval.segment_width,
                    cfg.eval.segment_max,
                    cfg.eval.segment_unit,
                    cfg.method,
                )
            )
        if knobs.samples:
            callbacks.append(GenerationSamples(knobs.samples, cfg.method))
    if knobs.lambda_sweep:
        callbacks.append(LambdaSweep(knobs.lambda_sweep))
    if cfg.method == "coconut" and cfg.coconut.curriculum:  # not a knob: the training recipe itself
        callbacks.append(CoconutCurriculum(cfg.coconut, cfg.data.seed))
    return callbacks
