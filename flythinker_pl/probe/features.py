"""What a trained run's hidden states hold per record: the reference response teacher-forced, each
source's final hidden states averaged over windows of response positions.

Response position j is the state after reading the prompt and the first j response tokens, the
one that predicts response token j: j = 0 is the last prompt token (the history and query only).
Sources, read at the same positions so they have seen the same tokens:
  * reasoner: the Reasoner's final hidden state (after its final norm), before the fusion's P and
    lambda (a norm change, and a zero pad or linear map to the Generator's width): the same
    direction, in the Reasoner's own coordinates;
  * generator: the Generator's last hidden layer (after its final norm: what the LM head reads),
    on its own inputs, the fused embeddings for FlyThinker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ..config import Config, ConfigError, load_config
from ..data.batching import collate
from ..data.datamodule import prepare_records, split_records
from ..data.schema import TASKS
from ..hf.export import load_trained
from ..lit.rundirs import trained_weights
from ..models.flythinker import FlyThinker
from ..models.fusion_math import real_positions

# Window starts in response tokens; each window runs to the next start, the last to the end.
# [0] alone is the prompt's end; every synthetic reference (225-304 tokens) reaches 192.
WINDOW_STARTS = (0, 1, 8, 32, 64, 128, 192)
BATCH_SIZE = 16
# Training users' records fed to the probes: the users vary the label, a user's further records
# mostly the text (4 of the default's 8 halve the forward passes for little accuracy).
TRAIN_PER_USER = 4


@dataclass
class RunFeatures:
    run_dir: Path
    method: str
    records: pd.DataFrame  # one row per record: id, user, split
    features: dict[str, np.ndarray]  # source -> [records, windows, dim]; NaN where a response ends before


def window_names(starts: tuple[int, ...]) -> list[str]:
    """ "0", "1-7", ..., "192-end" (response positions, ends included)."""
    names = [f"{start}" if end == start + 1 else f"{start}-{end - 1}" for start, end in zip(starts, starts[1:])]
    return [*names, f"{starts[-1]}-end"]


def load_method(run_dir: Path):
    """(config, method in eval mode, tokenizer) of a run, with its trained weights loaded as predict loads them."""
    cfg = load_config(run_dir / "config.yaml")
    if cfg.method == "coconut":
        raise ConfigError(
            f"{run_dir}: flythinker probe reads hidden states at the response's own positions; "
            "Coconut inserts thoughts before them and is not supported"
        )
    weights = None
    if cfg.trainer.max_steps != 0:  # zero-shot runs hold no checkpoint: the loaded weights are the run's
        weights = trained_weights(run_dir)
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: no trained weights (did `flythinker fit` finish this run?)")
    method, tokenizer = load_trained(cfg, weights)
    return cfg, method, tokenizer


@torch.no_grad()
def hidden_states(method, batch: dict) -> dict[str, torch.Tensor]:
    """{source: [B, T, d]} final hidden states of one teacher-forced batch."""
    ids, mask, profile_mask = batch["input_ids"], batch["attention_mask"], batch.get("profile_mask")
    states, positions = {}, real_positions(mask)
    if isinstance(method, FlyThinker):
        reasoner_mask = method.reasoner_mask(mask, profile_mask)
        states["reasoner"], _ = method.run_reasoner(ids, reasoner_mask, real_positions(reasoner_mask))
        embeds, positions, _, _ = method.fused_embeds(
            ids, mask, batch["prompt_len"], method.latent_norm(), profile_mask=profile_mask
        )
    else:
        embeds = method.embed(ids)
    out = method.run_generator(embeds, mask, positions, logits_to_keep=1, output_hidden_states=True)
    states["generator"] = out.hidden_states[-1]
    return states


def window_means(states: torch.Tensor, batch: dict, starts: tuple[int, ...]) -> np.ndarray:
    """[B, windows, d] mean state per window of response positions; NaN past a response's end."""
    lengths, width = batch["attention_mask"].sum(-1), batch["attention_mask"].shape[1]
    means = torch.full((states.shape[0], len(starts), states.shape[-1]), float("nan"))
    for row, (length, prompt_len) in enumerate(zip(lengths.tolist(), batch["prompt_len"].tolist())):
        zero = width - length + prompt_len - 1  # column of response position 0 (left padding)
        responses = length - prompt_len  # response tokens (+ EOS): positions 0 .. responses - 1
        for w, (start, end) in enumerate(zip(starts, [*starts[1:], responses])):
            if start < responses:
                means[row, w] = states[row, zero + start : zero + min(end, responses)].float().mean(0)
    return means.numpy()


def first_per_user(records: list[dict], user_key: str, per_user: Optional[int]) -> list[dict]:
    """Each user's first `per_user` records in the split's order (all of them for None)."""
    seen: dict[str, int] = {}
    kept = []
    for record in records:
        user = str(record[user_key])
        seen[user] = seen.get(user, 0) + 1
        if per_user is None or seen[user] <= per_user:
            kept.append(record)
    return kept


def split_features(method, cfg: Config, tokenizer, split: str, starts: tuple[int, ...], per_user: Optional[int] = None):
    """(records of the split, at most `per_user` per user: id, user, split; {source: [records, windows, d]})."""
    user_key = TASKS[cfg.data.task].user_key
    records, rationales, _ = split_records(cfg.data, split)
    records = first_per_user(records, user_key, per_user)
    examples = prepare_records(records, cfg.data, tokenizer, rationales)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))  # little padding
    chunks: dict[str, list[np.ndarray]] = {}
    for first in range(0, len(order), BATCH_SIZE):
        batch = collate([examples[i] for i in order[first : first + BATCH_SIZE]], tokenizer.pad_token_id)
        for source, states in hidden_states(method, batch).items():
            chunks.setdefault(source, []).append(window_means(states, batch, starts))
    user_of = {record["id"]: str(record[user_key]) for record in records}
    ids = [examples[i]["id"] for i in order]
    table = pd.DataFrame({"id": ids, "user": [user_of[i] for i in ids], "split": split})
    return table, {source: np.concatenate(parts) for source, parts in chunks.items()}


def run_features(
    run_dir: Path,
    held_out: tuple[str, ...],
    starts: tuple[int, ...] = WINDOW_STARTS,
    train_per_user: Optional[int] = TRAIN_PER_USER,
) -> RunFeatures:
    """Features of the train split (at most `train_per_user` records per user) and every record of the
    `held_out` splits."""
    cfg, method, tokenizer = load_method(run_dir)
    tables, features = [], {}
    for split in ("train", *held_out):
        table, by_source = split_features(
            method, cfg, tokenizer, split, starts, train_per_user if split == "train" else None
        )
        tables.append(table)
        for source, values in by_source.items():
            features.setdefault(source, []).append(values)
    return RunFeatures(
        run_dir,
        cfg.method,
        pd.concat(tables, ignore_index=True),
        {source: np.concatenate(parts) for source, parts in features.items()},
    )
