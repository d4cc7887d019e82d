"""Training order: the same global batches on any number of ranks, continued exactly on resume.

`GlobalBatchSampler` draws one order per (seed, epoch), cuts it into global batches of
batch_size x world size, and gives rank r every world-size-th example of each global batch. Step
for step, 2 ranks x 4 therefore see exactly the 8 examples that 1 rank x 8 sees. It is a
DistributedSampler so that Lightning takes it as already sharded: Lightning wraps any other
training sampler in a DistributedSamplerWrapper with shuffle=True, which reshuffles its order.

`ResumableDataLoader` is what Lightning checkpoints for the training data (it saves the
state_dict of every training loader that has one, and loads it on resume): the epoch and how many
batches of it were handed out. A run resumed mid-epoch continues with the next unseen batch of the
same order, so it ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import random
from typing import Iterator, Optional

import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


def process_group() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class GlobalBatchSampler(DistributedSampler):
    """This rank's share of a seeded, per-epoch shuffled order of `num_examples`.

    Every epoch shows every example once. The last global batch may be partial: it is padded
    with a few of its own examples (as DistributedSampler pads) so that every rank gets the same
    number, which on one rank changes nothing. `num_replicas`/`rank` default to the initialised
    process group's. Lightning calls `set_epoch`; without Lightning, call it yourself."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ):
        world_size, group_rank = process_group()
        super().__init__(
            range(num_examples),
            num_replicas=world_size if num_replicas is None else num_replicas,
            rank=group_rank if rank is None else rank,
            shuffle=True,
            seed=seed,
        )
        self.batch_size = batch_size
        self.start = 0  # position in this rank's share where the next pass begins (set on resume)

    def global_order(self, epoch: int) -> list[int]:
        """Every index once; consecutive runs of batch_size x world size are the global batches."""
        return random.Random(f"{self.seed}:{epoch}").sample(range(len(self.dataset)), len(self.dataset))

    def shard(self, order: list[int]) -> list[int]:
        """This rank's examples of each global batch of `order`: every world-size-th one, so that
        in a length-sorted global batch all ranks get similar lengths."""
        global_batch, mine = self.batch_size * self.num_replicas, []
        for start in range(0, len(order), global_batch):
            batch = order[start : start + global_batch]
            batch += [batch[i % len(batch)] for i in range(-len(batch) % self.num_replicas)]
            mine += batch[self.rank :: self.num_replicas]
        return mine

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.shard(self.global_order(self.epoch))[start:])

    def __len__(self) -> int:
        # the whole share, also when resuming: Lightning counts the skipped batches as done
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader over a GlobalBatchSampler whose place in the epoch survives a restart.

    `state_dict()` = {"epoch", "batches"}: the batches handed out (not prefetched by workers) in
    the pass in progress. After `load_state_dict`, the next pass of that same epoch starts after
    those batches; the sampler skips their indices, so nothing is loaded twice. A checkpoint taken
    at the end of an epoch resumes with the next epoch, whose pass starts from its beginning."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, GlobalBatchSampler):
            raise TypeError(f"ResumableDataLoader needs a GlobalBatchSampler, got {type(self.sampler).__name__}")
        self.position = {"epoch": self.sampler.epoch, "batches": 0}
        self.resume_at: Optional[dict] = None

    def __iter__(self):
        # A generator: this body runs at the first next(), after Lightning's set_epoch for the pass.
        epoch = self.sampler.epoch
        resume, self.resume_at = self.resume_at, None
        done = resume["batches"] if resume and resume["epoch"] == epoch else 0
        self.sampler.start = done * self.batch_size
        self.position = {"epoch": epoch, "batches": done}
        for batch in super().__iter__():
            self.position = {"epoch": epoch, "batches": self.position["batches"] + 1}
            yield batch

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
