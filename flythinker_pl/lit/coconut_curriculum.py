"""Coconut's curriculum during a fit (coconut.curriculum=true; the schedule is data/coconut_schedule.py).

The stage follows the optimiser step: s = first_stage + step // steps_per_stage (the official
epochs per stage, counted in steps). Every training and validation batch is rebuilt for the stage
in place, before the step reads it (the data stays stage-free, so workers and resumes need nothing
new), validation batches with uniform_prob's random stages too (the official validation-loss set
is built by the training rule); the optimiser state is reset when the stage changes (official
reset_optimizer); the method decodes with the stage's thoughts, and `predict` gives each record
its own count (without pad_latent_to_max, capped by the record's step count). Logged per stage:
coconut/stage and coconut/thoughts while training, coconut/val_loss@stage<s> after each
validation (TensorBoard and metrics.json).
"""

from __future__ import annotations

import random
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

from ..config import CoconutConfig
from ..data.coconut_schedule import Schedule, decoding_plan, decoding_thoughts, stage_batch, step_counts, training_plan
from ..data.encode import token_ids
from ..data.prompts import RATIONALE_PREFIX, RESPONSE_MARKER


class CoconutCurriculum(Callback):
    def __init__(self, cfg: CoconutConfig, seed: int):
        self.cfg, self.seed = cfg, seed  # seed + step + record id draw uniform_prob's random stages
        self.schedule = Schedule.of(cfg)
        self.stage: Optional[int] = None  # of the newest training batch; kept in checkpoints

    def scheduled_stage(self, step: int) -> int:
        return self.cfg.first_stage + step // self.cfg.steps_per_stage

    def current_stage(self, trainer) -> int:
        return self.stage if self.stage is not None else self.scheduled_stage(trainer.global_step)

    def draws(self, step: int, record_id: str, validation: bool = False) -> random.Random:
        """uniform_prob's draws for a record's batch at `step`: the same on every rank and resume."""
        return random.Random(f"{self.seed}:{step}:{record_id}" + (":val" if validation else ""))

    def restage(self, pl_module, batch: dict, plans: list[tuple[int, int]]) -> None:
        tokenizer = pl_module.tokenizer
        staged = stage_batch(
            batch,
            plans,
            token_ids(tokenizer, RATIONALE_PREFIX),
            token_ids(tokenizer, RESPONSE_MARKER),
            tokenizer.pad_token_id,
        )
        batch.clear()
        batch.update(staged)  # the same dict goes on to the training or validation step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        stage, step = self.scheduled_stage(trainer.global_step), trainer.global_step
        if self.stage is not None and stage != self.stage and self.cfg.reset_optimizer:
            for optimizer in trainer.optimizers:  # as a new AdamW: moments and step counts start over
                optimizer.state.clear()
        self.stage = stage
        pl_module.method.thoughts = decoding_thoughts(self.schedule, stage)
        plans = [
            training_plan(self.schedule, stage, steps, self.draws(step, record_id))
            for record_id, steps in zip(batch["ids"], step_counts(batch))
        ]
        self.restage(pl_module, batch, plans)
        thoughts = batch["thoughts"].float().mean()
        pl_module.log_dict({"coconut/stage": float(stage), "coconut/thoughts": thoughts}, batch_size=len(batch["ids"]))

    def on_validation_start(self, trainer, pl_module):
        pl_module.method.thoughts = decoding_thoughts(self.schedule, self.current_stage(trainer))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """As the official validation-loss set (run.py builds it with get_cot_latent_dataset): every
        record at the scheduled stage, or with uniform_prob at a random one, drawn anew each validation."""
        stage, step = self.current_stage(trainer), trainer.global_step
        self.restage(
            pl_module,
            batch,
            [
                training_plan(self.schedule, stage, steps, self.draws(step, record_id, True))
                for record_id, steps in zip(batch["ids"], step_counts(batch))
            ],
        )

    def decoding_stage(self, trainer) -> int:
        """The stage of the weights decoded: the checkpoint's, else the schedule's last (trainer.max_steps)."""
        return self.stage if self.stage is not None else self.scheduled_stage(max(trainer.max_steps, 1) - 1)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        """Each record's own thoughts (official get_question_latent_dataset), for this batch only."""
        pl_module.method.thoughts = decoding_plan(self.schedule, self.decoding_stage(trainer), batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        pl_module.method.thoughts = decoding_thoughts(self.schedule, self.decoding_stage(trainer))

    def on_validation_end(self, trainer, pl_module):
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None:
            return
        name = f"coconut/val_loss@stage{self.current_stage(trainer)}"
        trainer.callback_metrics[name] = torch.as_tensor(float(loss))  # metrics.json keeps each stage's last
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics({name: float(loss)}, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"stage": self.stage}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stage = state_dict["stage"]
