"""Coconut's curriculum (facebookresearch/coconut, dataset.py): at stage s the first s reasoning
steps of a record's rationale give way to s x c_thought continuous thoughts; beyond
max_latent_stage every step goes and the thoughts stay at max_latent_stage x c_thought
(pad_latent_to_max), or at the record's own step count times c_thought if that is smaller.

`training_plan` ports get_cot_latent_dataset (with uniform_prob a record takes a random stage in
0..its step count), which builds the official training and validation-loss sets alike;
`decoding_thoughts` ports get_question_latent_dataset, per record (`decoding_plan`).
`stage_batch` turns a batch of chain-of-thought examples (prompt + RATIONALE_PREFIX + rationale +
RESPONSE_MARKER + response, its steps tokenised one by one: encode.py) into the stage's batch,
prompt + RATIONALE_PREFIX + remaining steps + RESPONSE_MARKER + response, and the thoughts per
row, which the method puts after the prompt (models/coconut.py). One deliberate difference: once
no step remains the target is the response alone. The official answer keeps its "### " marker
(its scorer splits on it); ours is scored as written, so the marker goes with the last step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from ..config import CoconutConfig
from .encode import IGNORE_INDEX


@dataclass(frozen=True)
class Schedule:
    c_thought: int
    max_latent_stage: int
    pad_latent_to_max: bool
    uniform_prob: float

    @classmethod
    def of(cls, cfg: CoconutConfig) -> "Schedule":
        return cls(cfg.c_thought, cfg.max_latent_stage, cfg.pad_latent_to_max, cfg.uniform_prob)


def training_plan(schedule: Schedule, stage: int, steps: int, rng: random.Random) -> tuple[int, int]:
    """(reasoning steps removed, thoughts) for a training record with `steps` steps at `stage`."""
    if rng.random() < schedule.uniform_prob:
        stage = rng.choice(range(steps + 1))
    if stage > schedule.max_latent_stage:
        latent_stages = (
            schedule.max_latent_stage if schedule.pad_latent_to_max else min(steps, schedule.max_latent_stage)
        )
        return steps, latent_stages * schedule.c_thought
    return min(stage, steps), stage * schedule.c_thought  # a stage past the record's steps keeps its thoughts


def decoding_thoughts(schedule: Schedule, stage: int, steps: int | None = None) -> int:
    """Thoughts before the response when decoding at `stage` (a record's step count matters only
    without pad_latent_to_max; None = unknown, as for a test record without a rationale)."""
    latent_stages = (
        schedule.max_latent_stage
        if schedule.pad_latent_to_max or steps is None
        else min(schedule.max_latent_stage, steps)
    )
    return min(latent_stages, stage) * schedule.c_thought


def decoding_plan(schedule: Schedule, stage: int, batch: dict) -> torch.Tensor:
    """[B] thoughts for decoding a batch's records at `stage`, each by its own step count; a record
    without a rationale (collate gives it no steps, which is not a rationale of none) as unknown."""
    if "step_lengths" not in batch:
        return torch.full((len(batch["ids"]),), decoding_thoughts(schedule, stage))
    return torch.tensor(
        [
            decoding_thoughts(schedule, stage, steps if length else None)
            for steps, length in zip(step_counts(batch), batch["rationale_len"].tolist())
        ]
    )


def step_counts(batch: dict) -> list[int]:
    return [len(lengths) for lengths in batch["step_lengths"]]


def stage_batch(
    batch: dict, plans: list[tuple[int, int]], prefix_ids: list[int], marker_ids: list[int], pad_id: int
) -> dict:
    """The batch with each row's target rebuilt for its (steps removed, thoughts) plan, and
    `thoughts` [B]; left-padded like data/batching.collate, on the batch's device."""
    if "step_ids" not in batch:
        raise ValueError(
            "Coconut's curriculum needs batches of chain-of-thought examples (data.rationales): "
            "this batch has no rationale steps"
        )
    device = batch["input_ids"].device
    rows, prompt_lens, profiles = [], batch["prompt_len"].tolist(), []
    for row, (removed, _) in enumerate(plans):
        real = batch["attention_mask"][row].bool()
        ids = batch["input_ids"][row][real].tolist()
        prompt_len, rationale_len = prompt_lens[row], int(batch["rationale_len"][row])
        bounds = np.cumsum([0, *batch["step_lengths"][row]])
        remaining = batch["step_ids"][row][bounds[removed] :].tolist()
        target = ids[prompt_len + rationale_len :]
        if removed < len(bounds) - 1:
            target = prefix_ids + remaining + marker_ids + target
        rows.append(ids[:prompt_len] + target)
        if "profile_mask" in batch:  # the history is in the prompt: the target has none
            profiles.append(batch["profile_mask"][row][real][:prompt_len].tolist() + [0] * len(target))
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    profile_mask = torch.zeros_like(input_ids)
    for row, (ids, prompt_len) in enumerate(zip(rows, prompt_lens)):
        start = width - len(ids)
        input_ids[row, start:] = torch.tensor(ids)
        attention_mask[row, start:] = 1
        labels[row, start + prompt_len :] = input_ids[row, start + prompt_len :]
        if profiles:
            profile_mask[row, start:] = torch.tensor(profiles[row])
    staged = {key: value for key, value in batch.items() if key not in ("rationale_len", "step_ids", "step_lengths")}
    staged |= {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "thoughts": torch.tensor([thoughts for _, thoughts in plans]),
    }
    if "profile_mask" in batch:
        staged["profile_mask"] = profile_mask
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in staged.items()}
