"""Examples -> padded batches, and an optional length-bucketed order for training."""
from __future__ import annotations

import random
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .encode import IGNORE_INDEX


def collate(examples: list[dict], pad_id: int) -> dict:
    """Dynamic left padding (decoder inputs); labels are the ids of the response (+ EOS), else
    ignored; `ids` and the untruncated `reference` travel with every batch."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
        start = width - len(ids)
        input_ids[row, start:] = ids
        attention_mask[row, start:] = 1
        labels[row, start + example["prompt_len"]:] = ids[example["prompt_len"]:]
    return {"ids": [e["id"] for e in examples], "input_ids": input_ids, "attention_mask": attention_mask,
            "labels": labels, "prompt_len": torch.tensor([e["prompt_len"] for e in examples]),
            "reference": [e["reference"] for e in examples]}


class LengthBucketSampler(Sampler[int]):
    """Shuffled indices in which each batch has similar lengths, so little padding.

    Per epoch (seed, epoch): shuffle, cut into chunks of `chunk_batches` global batches, sort each
    chunk by length, cut it into global batches (batch_size x world size) and shuffle those. It is
    a plain index sampler: under DDP Lightning wraps it in a DistributedSamplerWrapper, which gives
    rank r every world-size-th index, so each rank's batch is its share of one global batch; the
    wrapper forwards `set_epoch`. Without Lightning, call `set_epoch` yourself."""

    def __init__(self, lengths: list[int], batch_size: int, chunk_batches: int = 64, seed: int = 0,
                 world_size: Optional[int] = None):
        self.lengths, self.batch_size, self.chunk_batches, self.seed = lengths, batch_size, chunk_batches, seed
        self.world_size = world_size  # None: the initialised process group's, else 1
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        world_size = self.world_size or (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
        global_batch = self.batch_size * world_size
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = rng.sample(range(len(self.lengths)), len(self.lengths))
        batches = []
        for start in range(0, len(order), global_batch * self.chunk_batches):
            chunk = sorted(order[start:start + global_batch * self.chunk_batches], key=self.lengths.__getitem__)
            batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
        partial = batches.pop() if batches and len(batches[-1]) < global_batch else []
        rng.shuffle(batches)  # the one partial batch stays last, so batches never straddle two of these
        return iter([index for batch in batches + [partial] for index in batch])
