"""Where a run's records come from, and the LightningDataModule that batches them."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from . import synthetic
from .encode import collate, encode_record

SPLITS = ("train", "val", "test")


def data_dir(cfg: DataConfig) -> Path:
    """`<path>/<task>_<setting>`, generating the synthetic set first when no path is given."""
    if cfg.path:
        root = Path(cfg.path).expanduser()
    else:
        if cfg.task != "product_review":
            raise ValueError(f"the synthetic data set is product_review only; set data.path for {cfg.task}")
        root = synthetic.generate(cfg.synthetic_dir, cfg.synthetic.num_users, cfg.synthetic.reviews_per_user,
                                  cfg.synthetic.seed)
    return root / f"{cfg.task}_{cfg.setting}"


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected {path.parent}/{{{','.join(SPLITS)}}}.jsonl)")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {line_no}: invalid JSON ({err.msg})") from None
            if limit is not None and len(records) >= limit:
                break
    return records


def load_split(cfg: DataConfig, split: str) -> list[dict]:
    return read_jsonl(data_dir(cfg) / f"{split}.jsonl", cfg.max_records)


def pretraining_corpus(cfg: DataConfig) -> list[str]:
    """Text for the tiny presets' tokenizer and pretraining: training queries and outputs only."""
    return [text for record in load_split(cfg, "train") for text in (record["input"], record["output"])]


class PersonalisationDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.examples: dict[str, list[dict]] = {}

    def prepare_data(self):
        data_dir(self.cfg)  # generates the synthetic set once, on one process

    def setup(self, stage: str | None = None):
        budgets = (self.cfg.profile_tokens, self.cfg.input_tokens, self.cfg.target_tokens)
        for split in SPLITS:
            if split not in self.examples:
                self.examples[split] = [
                    encode_record(r, self.cfg.task, self.tokenizer, self.cfg.k, budgets, self.cfg.system_prompt)
                    for r in load_split(self.cfg, split)]

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self.examples[split], batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.cfg.num_workers,
                          collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id))

    def train_dataloader(self):
        return self._loader("train", self.cfg.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader("val", self.cfg.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader("test", self.cfg.eval_batch_size, shuffle=False)
