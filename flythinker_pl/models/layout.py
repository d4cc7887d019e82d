"""Where the prompt and the response sit in a left-padded batch [pad][prompt][response]: every row
ends at the last column, so a row's response is its last (length - prompt_len) columns."""

from __future__ import annotations

import torch


def last_prompt_column(attention_mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """Column of each row's last prompt token [B] (its logits predict the first response token)."""
    return attention_mask.shape[1] - attention_mask.sum(-1) + prompt_len - 1


def prompt_layout(attention_mask: torch.Tensor, prompt_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How to gather each row's prompt into a left-padded prompt-only layout [B, max prompt_len]:
    the source column of every entry, and which entries are real (the rest are padding)."""
    starts = attention_mask.shape[1] - attention_mask.sum(-1)  # first real column per row
    width = int(prompt_len.max())
    columns = torch.arange(width, device=attention_mask.device)
    offsets = width - prompt_len  # left padding of each prompt in the new layout
    source = (starts[:, None] + columns[None, :] - offsets[:, None]).clamp(min=0)
    return source, columns[None, :] >= offsets[:, None]


def gather_prompts(values: torch.Tensor, source: torch.Tensor, real: torch.Tensor, fill: int) -> torch.Tensor:
    """`values` [B, T] in the prompt-only layout of `prompt_layout`, `fill` on padding."""
    return torch.where(real, values.gather(1, source), fill)
