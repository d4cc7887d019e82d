"""Examples -> padded batches, and an optional length-bucketed order for training."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from .encode import IGNORE_INDEX
from .sampling import GlobalBatchSampler


def collate(examples: list[dict], pad_id: int) -> dict:
    """Dynamic left padding (decoder inputs); labels are the ids of the response (+ EOS), else
    ignored; profile_mask is 1 on the prompt tokens that render the user's history, else 0 (only
    when every example has one: hand-built examples may not, and then the batch has no such key
    rather than a mask that hides nothing); `ids` and the untruncated `reference` travel with
    every batch, and the rationale's steps (rationale_len, step_ids, step_lengths) with batches of
    chain-of-thought examples."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    profile_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
        start = width - len(ids)
        input_ids[row, start:] = ids
        attention_mask[row, start:] = 1
        labels[row, start + example["prompt_len"] :] = ids[example["prompt_len"] :]
        if "profile_mask" in example:
            profile_mask[row, start:] = torch.as_tensor(example["profile_mask"], dtype=torch.long)
    batch = {
        "ids": [e["id"] for e in examples],
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_len": torch.tensor([e["prompt_len"] for e in examples]),
        "reference": [e["reference"] for e in examples],
    }
    if all("profile_mask" in e for e in examples):
        batch["profile_mask"] = profile_mask
    if any("step_ids" in e for e in examples):  # chain-of-thought examples, for Coconut's curriculum
        none = np.zeros(0, dtype=np.int32)  # an evaluation record without a rationale
        batch["rationale_len"] = torch.tensor([e.get("rationale_len", 0) for e in examples])
        batch["step_ids"] = [e.get("step_ids", none) for e in examples]  # ragged: one array per row
        batch["step_lengths"] = [e.get("step_lengths", none) for e in examples]
    return batch


class LengthBucketSampler(GlobalBatchSampler):
    """A GlobalBatchSampler whose global batches hold similar lengths, so little padding.

    Per epoch (seed, epoch): shuffle, cut into chunks of `chunk_batches` global batches, sort each
    chunk by length, cut it into global batches (batch_size x world size) and shuffle those. Each
    rank takes its share of every global batch (data/sampling.py), so the order is the same on
    any number of ranks, Lightning leaves it unwrapped, and a resumed run continues it exactly."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        chunk_batches: int = 64,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ):
        super().__init__(len(lengths), batch_size, seed, num_replicas, rank)
        self.lengths, self.chunk_batches = lengths, chunk_batches

    def global_order(self, epoch: int) -> list[int]:
        global_batch = self.batch_size * self.num_replicas
        rng = random.Random(f"{self.seed}:{epoch}")
        order = rng.sample(range(len(self.lengths)), len(self.lengths))
        batches = []
        for start in range(0, len(order), global_batch * self.chunk_batches):
            chunk = sorted(order[start : start + global_batch * self.chunk_batches], key=self.lengths.__getitem__)
            batches += [chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch)]
        partial = batches.pop() if batches and len(batches[-1]) < global_batch else []
        rng.shuffle(batches)  # the one partial batch stays last, so batches never straddle two of these
        return [index for batch in batches + [partial] for index in batch]
