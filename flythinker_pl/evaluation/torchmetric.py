"""The text metrics as a torchmetrics Metric for validation: strings gathered across DDP ranks."""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
import torch.distributed as dist
from torchmetrics import Metric

from .metrics import score_texts
from .predictions import unique_by_id


class TextGenerationScores(Metric):
    """BLEU / ROUGE-1 / ROUGE-L / METEOR over every sample seen by every rank.

    torchmetrics syncs tensor states only, so the strings are kept in list states and gathered
    with `all_gather_object` in `compute` (which, as with any Metric, every rank must call), then
    deduplicated by sample id. `compute` returns float tensors for `self.log_dict`; METEOR is left
    out when WordNet is missing (`unavailable` says why).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_bootstrap: int = 0, seed: int = 0, **kwargs):
        super().__init__(**{"sync_on_compute": False, **kwargs})  # tensor sync has nothing to do here
        self.n_bootstrap, self.seed = n_bootstrap, seed
        self.unavailable: dict[str, str] = {}
        for name in ("sample_ids", "predictions", "references"):
            self.add_state(name, default=[], dist_reduce_fx=None)

    def update(
        self, ids: Sequence[Hashable] | torch.Tensor, predictions: Sequence[str], references: Sequence[str]
    ) -> None:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if not len(ids) == len(predictions) == len(references):
            raise ValueError(f"{len(ids)} ids, {len(predictions)} predictions, {len(references)} references")
        self.sample_ids.extend(ids)
        self.predictions.extend(predictions)
        self.references.extend(references)

    def gathered_samples(self) -> list[tuple[Hashable, str, str]]:
        """(id, prediction, reference) from all ranks, one per id, sorted by id."""
        local = list(zip(self.sample_ids, self.predictions, self.references))
        if dist.is_available() and dist.is_initialized():
            shards = [None] * dist.get_world_size(self.process_group)
            dist.all_gather_object(shards, local, group=self.process_group)
            local = [sample for shard in shards for sample in shard]
        return unique_by_id(local)

    def compute(self) -> dict[str, torch.Tensor]:
        samples = self.gathered_samples()
        if not samples:
            raise ValueError("no samples to score: call update() before compute()")
        _, predictions, references = zip(*samples)
        scores = score_texts(predictions, references, n_bootstrap=self.n_bootstrap, seed=self.seed)
        self.unavailable = {
            key.removesuffix("_unavailable"): reason for key, reason in scores.items() if key.endswith("_unavailable")
        }
        return {
            key: torch.tensor(float(value), dtype=torch.float64)
            for key, value in scores.items()
            if isinstance(value, (int, float))
        }
