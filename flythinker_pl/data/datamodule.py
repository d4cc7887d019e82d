"""A split's records -> validated -> retrieved -> encoded examples (once, in `setup`), and the
LightningDataModule that batches them for fit / validate / test / predict."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from .batching import LengthBucketSampler, collate
from .encode import encode_records
from .rationales import rationales_for_split
from .readers import SPLITS, read_split, resolve_root
from .retrieval import BM25Corpus, retrieve
from .sampling import GlobalBatchSampler, ResumableDataLoader
from .schema import SplitReport, require_records, validate, write_skip_report


@dataclass
class Split:
    records: list[dict]  # valid records, each with a string "id"
    report: SplitReport


def load_split(cfg: DataConfig, split: str) -> Split:
    source, rows = read_split(cfg, split)
    return Split(*validate(rows, cfg.task, split, source, cfg.on_bad_record))


def split_records(cfg: DataConfig, split: str) -> tuple[list[dict], dict[str, str], SplitReport]:
    """A split's records to encode, their rationales by id (data.rationales; else {}) and what was
    left out (invalid records; training records without a rationale under on_bad_record=skip).
    A split with no record left is a DataError naming its file."""
    loaded = load_split(cfg, split)
    records, rationales = rationales_for_split(cfg, split, loaded.records, loaded.report)
    require_records(records, loaded.report, split)
    return records, rationales, loaded.report


def prepare_records(
    records: list[dict],
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    rationales: Optional[dict[str, str]] = None,
) -> list[dict]:
    """Retrieval + rendering + tokenisation of a split's records (one BM25 corpus for all: each profile
    item's terms are counted once); `retrieved` = the profile indices shown; a record's rationale
    (`rationales` by id, data.rationales) goes before the output in its target."""
    corpus = BM25Corpus()
    retrieved = [retrieve(r, cfg.task, cfg.retriever, cfg.k, cfg.seed, corpus) for r in records]
    examples = encode_records(
        records,
        [[r["profile"][i] for i in shown] for r, shown in zip(records, retrieved)],
        cfg,
        tokenizer,
        [(rationales or {}).get(r["id"]) for r in records],
    )
    return [{**example, "retrieved": shown[: example["items_shown"]]} for example, shown in zip(examples, retrieved)]


def prepare_record(
    record: dict, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, rationale: Optional[str] = None
) -> dict:
    rationales = {record["id"]: rationale} if rationale is not None else None
    return prepare_records([record], cfg, tokenizer, rationales)[0]


def pretraining_corpus(cfg: DataConfig) -> list[str]:
    """Text for the tiny presets' tokenizer and pretraining: training queries and outputs only. Each
    data.synthetic.rounds pretrains on its own reviews: backbones pretrained on ~250-token reviews
    end every text there (40 fine-tuning steps at rounds=4 still stopped at a median 160 of 870 words),
    as a real model writes long only if it has read long text."""
    return [text for record in load_split(cfg, "train").records for text in (record["input"], record["output"])]


class PersonalisationDataModule(L.LightningDataModule):
    """Batches {ids, input_ids, attention_mask, labels, profile_mask, prompt_len, reference}, left-padded
    (profile_mask marks the tokens of the user's history, which reasoner.sees_profile=false hides).

    Each split is read, validated, retrieved and encoded once (the first `setup` that needs it),
    then reused by every epoch. With `on_bad_record=skip`, `skip_reports` holds what was left out;
    `setup` adds it to data_skipped.json in the Trainer's log dir (the run dir), beside the splits
    that other stages of the run wrote there."""

    STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: PreTrainedTokenizerBase,
        predict_split: str = "test",
        predict_batch_size: Optional[int] = None,
        predict_records: Optional[int] = None,
    ):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.predict_split, self.predict_batch_size = predict_split, predict_batch_size or cfg.eval_batch_size
        self.predict_records = predict_records  # decode.max_records: the split's first N; None = all
        self.examples: dict[str, list[dict]] = {}
        self.skip_reports: dict[str, SplitReport] = {}

    def prepare_data(self):
        if not self.cfg.path and not self.cfg.files and not self.cfg.hub:
            resolve_root(self.cfg)  # generates the synthetic set once, on one process

    def setup(self, stage: Optional[str] = None):
        splits = self.STAGE_SPLITS.get(stage, (self.predict_split,) if stage == "predict" else SPLITS)
        for split in splits:
            if split not in self.examples:
                records, rationales, self.skip_reports[split] = split_records(self.cfg, split)
                self.examples[split] = prepare_records(records, self.cfg, self.tokenizer, rationales)
        if self.cfg.on_bad_record == "skip" and self.trainer is not None:
            run_dir = self.trainer.log_dir  # a collective under DDP: every rank asks, rank 0 writes
            if self.trainer.is_global_zero and run_dir:
                self.write_skip_report(run_dir)

    def write_skip_report(self, run_dir: str | Path) -> Path:
        return write_skip_report(self.skip_reports, run_dir)

    def _loader(
        self, examples: list[dict], batch_size: int, sampler: Optional[GlobalBatchSampler] = None
    ) -> DataLoader:
        """In order, or (training) in the sampler's order, resumable mid-epoch."""
        loader = DataLoader if sampler is None else ResumableDataLoader
        return loader(
            examples,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id),
        )

    def train_dataloader(self):
        """Shuffled per (data.seed, epoch) in global batches: the same batches on any number of
        ranks, and a resumed run continues the epoch it was in (data/sampling.py)."""
        examples, batch_size = self.examples["train"], self.cfg.batch_size
        if self.cfg.length_buckets:
            sampler = LengthBucketSampler(
                [len(e["input_ids"]) for e in examples], batch_size, self.cfg.bucket_chunk_batches, self.cfg.seed
            )
        else:
            sampler = GlobalBatchSampler(len(examples), batch_size, self.cfg.seed)
        return self._loader(examples, batch_size, sampler)

    def val_dataloader(self):
        return self._loader(self.examples["val"], self.cfg.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.examples["test"], self.cfg.eval_batch_size)

    def predict_dataloader(self):
        return self._loader(self.examples[self.predict_split][: self.predict_records], self.predict_batch_size)
