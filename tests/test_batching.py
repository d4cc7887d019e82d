"""Batches (data/batching.py and the datamodule's loaders): dynamic left padding (of profile_mask too),
labels on the response only, ids carried, every split batched once; the length-bucketed order is a
deterministic per-epoch permutation that survives Lightning's DDP wrapping."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flythinker_pl.config import DataConfig
from flythinker_pl.data.batching import LengthBucketSampler, collate
from flythinker_pl.data.datamodule import PersonalisationDataModule, load_split, prepare_record
from flythinker_pl.data.schema import SKIP_REPORT

from helpers import DEBUG_CONFIG, ROOT, synthetic_cfg


LENGTHS = [random.Random(n).randint(5, 500) for n in range(203)]


def padding(order: list[int], batch_size: int) -> int:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_collate_left_pads_masks_the_prompt_and_carries_ids():
    examples = [
        {"id": "a", "input_ids": [5, 6, 7, 8], "prompt_len": 2, "reference": "ra"},
        {"id": "b", "input_ids": [9, 10, 11], "prompt_len": 1, "reference": "rb"},
    ]
    batch = collate(examples, pad_id=0)
    assert batch["ids"] == ["a", "b"] and batch["reference"] == ["ra", "rb"]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [0, 9, 10, 11]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, 10, 11]]
    assert batch["prompt_len"].tolist() == [2, 1]


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_length_buckets_are_a_deterministic_permutation_per_epoch_with_less_padding(batch_size):
    sampler = LengthBucketSampler(LENGTHS, batch_size, chunk_batches=8, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(len(LENGTHS))) and len(sampler) == len(LENGTHS)
    assert list(sampler) == first  # same epoch, same order (every rank agrees)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(LengthBucketSampler(LENGTHS, batch_size, chunk_batches=8, seed=1)) == first
    if batch_size > 1:
        shuffled = random.Random(0).sample(range(len(LENGTHS)), len(LENGTHS))
        assert padding(first, batch_size) < 0.5 * padding(shuffled, batch_size)


def test_under_ddp_each_rank_takes_its_share_of_every_bucketed_global_batch():
    ranks = [LengthBucketSampler(LENGTHS, 4, chunk_batches=8, seed=0, num_replicas=2, rank=r) for r in range(2)]
    shards = [list(r) for r in ranks]
    assert set(shards[0]) | set(shards[1]) == set(range(len(LENGTHS)))  # every record (one repeated to even out)
    assert len(shards[0]) == len(shards[1]) == (len(LENGTHS) + 1) // 2
    shuffled = random.Random(0).sample(range(len(LENGTHS)), len(shards[0]))
    assert all(padding(shard, 4) < 0.5 * padding(shuffled, 4) for shard in shards)  # each rank's batches stay bucketed
    for rank in ranks:
        rank.set_epoch(3)
    assert [list(r) for r in ranks] != shards


def test_the_datamodule_uses_length_buckets_for_training_only(synthetic_dir, tokenizer):
    cfg = DataConfig(
        path=str(synthetic_dir),
        batch_size=4,
        length_buckets=True,
        bucket_chunk_batches=4,
        profile_tokens=64,
        target_tokens=64,
    )
    datamodule = PersonalisationDataModule(cfg, tokenizer, predict_split="val", predict_batch_size=3)
    datamodule.setup()
    train = datamodule.train_dataloader()
    assert isinstance(train.sampler, LengthBucketSampler)
    ids = [i for batch in train for i in batch["ids"]]
    assert sorted(ids) == sorted(e["id"] for e in datamodule.examples["train"])
    predict = list(datamodule.predict_dataloader())
    assert [i for b in predict for i in b["ids"]] == [e["id"] for e in datamodule.examples["val"]]  # in order
    assert predict[0]["input_ids"].shape[0] == 3
    assert all(torch.all(b["attention_mask"][:, -1] == 1) for b in predict)  # left padding


@pytest.mark.slow
def test_the_datamodule_runs_unchanged_under_ddp(run_config):
    """Two CPU processes (gloo), length buckets on, skip report written once into the shared run dir."""
    cfg = run_config()
    command = [
        sys.executable,
        "-m",
        "flythinker_pl.cli",
        "fit",
        "-c",
        str(DEBUG_CONFIG),
        f"data.synthetic_dir={cfg.data.synthetic_dir}",
        f"logging.cache_dir={cfg.logging.cache_dir}",
        f"logging.root_dir={cfg.logging.root_dir}",
        "data.length_buckets=true",
        "data.on_bad_record=skip",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    ]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((Path(cfg.logging.root_dir) / "tiny").glob("version_*"))
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 4
    assert json.loads((run_dir / SKIP_REPORT).read_text())["train"]["skipped"] == 0


def test_each_split_is_retrieved_and_encoded_once_not_per_epoch(synthetic_dir, tokenizer, monkeypatch):
    from flythinker_pl.data import datamodule as module

    calls = []
    real_retrieve = module.retrieve

    def counting_retrieve(record, *args):
        calls.append(record["id"])
        return real_retrieve(record, *args)

    monkeypatch.setattr(module, "retrieve", counting_retrieve)
    datamodule = PersonalisationDataModule(DataConfig(path=str(synthetic_dir), batch_size=8), tokenizer)
    datamodule.setup("validate")
    datamodule.setup("fit")
    for _ in range(3):  # epochs
        list(datamodule.train_dataloader()), list(datamodule.val_dataloader())
    datamodule.setup("fit")
    assert sorted(calls) == sorted(e["id"] for split in ("train", "val") for e in datamodule.examples[split])


def test_datamodule_batches_every_split(synthetic_dir, tokenizer):
    cfg = DataConfig(synthetic_dir=str(synthetic_dir.parent), batch_size=4)
    cfg.synthetic.num_users, cfg.synthetic.reviews_per_user = 20, 5
    datamodule = PersonalisationDataModule(cfg, tokenizer)
    datamodule.prepare_data()
    datamodule.setup("fit")
    ids = [i for batch in datamodule.val_dataloader() for i in batch["ids"]]
    assert sorted(ids) == sorted(r["id"] for r in load_split(cfg, "val").records)  # nothing dropped or repeated
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["prompt_len"].shape == (4,)


def test_collate_left_pads_the_profile_mask_like_the_ids(tokenizer, synthetic_dir):
    cfg = synthetic_cfg(synthetic_dir, k=2, profile_tokens=40, input_tokens=30, target_tokens=20)
    records = load_split(cfg, "train").records[:3]
    examples = [prepare_record(r, cfg, tokenizer) for r in records]
    examples[1] = prepare_record(
        records[1], synthetic_cfg(synthetic_dir, retriever="none", target_tokens=5), tokenizer
    )  # shorter, with no history
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    assert batch["profile_mask"].dtype == batch["input_ids"].dtype
    assert batch["profile_mask"].shape == batch["input_ids"].shape
    for row, example in enumerate(examples):
        start = batch["input_ids"].shape[1] - len(example["input_ids"])
        assert batch["profile_mask"][row, :start].sum() == 0
        assert batch["profile_mask"][row, start:].tolist() == example["profile_mask"].tolist()
    assert batch["profile_mask"][1].sum() == 0 and batch["profile_mask"][0].sum() > 0
    assert "profile_mask" not in collate(
        [{k: v for k, v in e.items() if k != "profile_mask"} for e in examples], pad_id=tokenizer.pad_token_id
    )  # hand-built examples: no mask, not zeros
