"""The decoding loop shared by every method and engine: prefill, then sample / step until each
row has produced EOS or max_new_tokens."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..config import DecodeConfig
from ..measure import synchronize
from ..models.layout import gather_prompts, prompt_layout
from ..models.lora_step import LeanLoRA
from .engines import compilable, make_engine
from .precision import low_precision_weights
from .sampler import Sampler


@dataclass
class Generation:
    tokens: list[list[int]]  # per row, the generated ids without EOS
    num_tokens: list[int]  # per row, generated ids including EOS when it came
    ended: list[bool]  # per row, whether EOS came (else max_new_tokens cut it)
    seconds: float  # prefill and every step (compiling included)
    prefill_seconds: float  # the prompt pass(es) alone: time to the first token's logits
    compile_seconds: float = 0.0  # of `seconds`, the steps that compiled a graph (decode.compile)


@torch.no_grad()
def generate(
    method,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: torch.Tensor,
    sample_ids: list[str],
    cfg: DecodeConfig,
    eos_ids: int | list[int],
    profile_mask: torch.Tensor | None = None,
) -> Generation:
    """Decode a left-padded batch of prompts; a row stops at the first of `eos_ids` (Qwen's
    instruct models stop on two). `profile_mask` (prompt layout) marks the user's history, for a
    Reasoner that must not see it."""
    if cfg.max_new_tokens < 1:  # the config checks catch this; callers of the API get the same message
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1: generate() samples at least one token")
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    lean = getattr(method, "lora", None) or LeanLoRA(method)  # the shared base keeps its own (per-row adapters)
    # the weight copies first: the lean forward reads the weights its layers hold when it is installed
    with low_precision_weights(method, input_ids.device.type), lean if cfg.lora_path == "lean" else nullcontext():
        return _decode(method, input_ids, attention_mask, prompt_len, sample_ids, cfg, eos_ids, profile_mask)


def compile_steps(cfg: DecodeConfig, method, device: torch.device) -> bool:
    """decode.compile resolved: true, false, or auto (on where bench decode measured it paying, compile
    time counted: see DecodeConfig.compile)."""
    able, why = compilable(method)
    if cfg.compile is True and not able:
        raise ValueError(f"decode.compile=true cannot compile {type(method).__name__}'s step: {why}")
    if cfg.compile == "auto":
        return able and device.type == "cuda"
    return bool(cfg.compile)


def _decode(method, input_ids, attention_mask, prompt_len, sample_ids, cfg, eos_ids, profile_mask) -> Generation:
    eos_id = eos_ids[0]  # what finished rows are filled with
    device = input_ids.device
    # On GPU, checking "all rows finished" costs a host sync: look only every few steps.
    check_every = 8 if device.type == "cuda" else 1
    engine = make_engine(
        method, cfg.engine, compile=compile_steps(cfg, method, device), max_new_tokens=cfg.max_new_tokens
    )
    synchronize(device)
    start = time.perf_counter()
    try:
        logits, state = engine.prefill(input_ids, attention_mask, prompt_len, profile_mask=profile_mask)
        synchronize(device)
        prefill_seconds = time.perf_counter() - start
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

    rows, counts, ended = [], [], []
    for row in produced[:, : step + 1].tolist():
        length = next((i for i, token in enumerate(row) if token in eos_ids), len(row))
        rows.append(row[:length])
        counts.append(min(length + 1, len(row)))
        ended.append(length < len(row))
    return Generation(rows, counts, ended, seconds, prefill_seconds, engine.compile_seconds)


def prompts_of(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prompt-only, left-padded ids, mask and profile mask (None if the batch has none) from a
    training-style batch (prompt + target)."""
    source, real = prompt_layout(batch["attention_mask"], batch["prompt_len"])
    profile_mask = batch.get("profile_mask")
    if profile_mask is not None:
        profile_mask = gather_prompts(profile_mask, source, real, 0)
    return gather_prompts(batch["input_ids"], source, real, pad_id), real.long(), profile_mask
