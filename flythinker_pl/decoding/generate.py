"""The decoding loop shared by every method and engine: prefill, then sample / step until each
row has produced EOS or max_new_tokens."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..config import DecodeConfig
from .engines import make_engine
from .sampler import Sampler


@dataclass
class Generation:
    tokens: list[list[int]]  # per row, the generated ids without EOS
    num_tokens: list[int]  # per row, generated ids including EOS when it came
    seconds: float


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(method, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: torch.Tensor,
             sample_ids: list[str], cfg: DecodeConfig, eos_ids: int | list[int]) -> Generation:
    """Decode a left-padded batch of prompts; a row stops at the first of `eos_ids` (Qwen's
    instruct models stop on two)."""
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    eos_id = eos_ids[0]  # what finished rows are filled with
    device = input_ids.device
    # On GPU, checking "all rows finished" costs a host sync: look only every few steps.
    check_every = 8 if device.type == "cuda" else 1
    engine = make_engine(method, cfg.engine)
    synchronize(device)
    start = time.perf_counter()
    try:
        logits, state = engine.prefill(input_ids, attention_mask, prompt_len)
        sampler = Sampler(cfg, sample_ids, input_ids, attention_mask, eos_ids, logits.shape[-1])
        stops = torch.tensor(eos_ids, device=device)
        produced = torch.full((len(sample_ids), cfg.max_new_tokens), eos_id, dtype=torch.long, device=device)
        finished = torch.zeros(len(sample_ids), dtype=torch.bool, device=device)
        for step in range(cfg.max_new_tokens):
            tokens = sampler(logits, step)
            produced[:, step] = torch.where(finished, eos_id, tokens)
            finished |= torch.isin(tokens, stops)
            if step + 1 == cfg.max_new_tokens or (step % check_every == check_every - 1 and finished.all()):
                break
            logits = engine.step(state, tokens)
    finally:
        engine.close()
    synchronize(device)
    seconds = time.perf_counter() - start

    rows, counts = [], []
    for row in produced[:, : step + 1].tolist():
        length = next((i for i, token in enumerate(row) if token in eos_ids), len(row))
        rows.append(row[:length])
        counts.append(min(length + 1, len(row)))
    return Generation(rows, counts, seconds)


def prompts_of(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-only, left-padded ids and mask from a training-style batch (prompt + target)."""
    input_ids, attention_mask, prompt_len = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    starts = attention_mask.shape[1] - attention_mask.sum(-1)  # first real column per row
    width = int(prompt_len.max())
    columns = torch.arange(width, device=input_ids.device)
    offsets = width - prompt_len  # left padding of each prompt in the new layout
    source = (starts[:, None] + columns[None, :] - offsets[:, None]).clamp(min=0)
    real = columns[None, :] >= offsets[:, None]
    ids = torch.where(real, input_ids.gather(1, source), pad_id)
    return ids, real.long()
