"""The check's inputs: left-padded random prompts and teacher-forced batches (random tokens, never padding)."""

from __future__ import annotations

import torch

from ...data.encode import IGNORE_INDEX

PAD_ID = 0


def random_tokens(generator: torch.Generator, vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(1, vocab, shape, generator=generator)  # never PAD_ID


def sequences(plan_prompt: int, lengths: list[int], response: torch.Tensor, vocab: int, seed: int, device) -> dict:
    """Left-padded random prompts of `lengths` (<= plan_prompt), and prompt + `response` [B, R] as one
    teacher-forced batch (labels on the response only)."""
    rng = torch.Generator().manual_seed(seed)
    prompt_ids = torch.full((len(lengths), plan_prompt), PAD_ID)
    prompt_mask = torch.zeros((len(lengths), plan_prompt), dtype=torch.long)
    for row, length in enumerate(lengths):
        prompt_ids[row, plan_prompt - length :] = random_tokens(rng, vocab, length)
        prompt_mask[row, plan_prompt - length :] = 1
    ids = torch.cat([prompt_ids, response.cpu()], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(response.cpu())], 1)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), response.cpu()], 1)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "prompt_len": torch.tensor(lengths),
        "response": response.cpu(),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
    }
    return {k: v.to(device) for k, v in batch.items()}


def decode_prompts(plan, size: int, vocab: int, device, response: torch.Tensor | None = None) -> dict:
    """`size` full-length decode prompts (seeded by the batch size), followed by `response` if given."""
    response = torch.zeros(size, 0, dtype=torch.long) if response is None else response
    return sequences(plan.decode_prompt, [plan.decode_prompt] * size, response, vocab, seed=size, device=device)
