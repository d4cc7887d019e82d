"""predictions.jsonl: every id exactly once, also under DDP.

DistributedSampler pads the last batches by repeating samples so ranks stay in step; each rank
appends to its own shard and rank 0 merges the shards, keeping the first record of each id."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    def __init__(self, path: str | Path):
        super().__init__(write_interval="batch")
        self.path = Path(path)

    def _shard(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}.jsonl")

    def _shards(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}.rank*.jsonl"))

    def on_predict_start(self, trainer, pl_module):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._shard(trainer.global_rank).unlink(missing_ok=True)
        if trainer.is_global_zero:  # leftovers of an earlier run with more ranks
            for shard in self._shards():
                if int(shard.stem.rsplit("rank", 1)[1]) >= trainer.world_size:
                    shard.unlink()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        with open(self._shard(trainer.global_rank), "a", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in prediction)

    def on_predict_epoch_end(self, trainer, pl_module):
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return
        records = {}
        for shard in self._shards():
            for line in shard.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                records.setdefault(record["id"], record)
            shard.unlink()
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(records[i], ensure_ascii=False) + "\n" for i in sorted(records))
