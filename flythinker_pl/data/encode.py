"""Record -> token ids: recency-k profile, token budgets, prompt, target + EOS; and batching."""
from __future__ import annotations

from typing import Optional

import torch
from transformers import PreTrainedTokenizerBase

from .prompts import chat_prompt, render_profile_item, user_message

IGNORE_INDEX = -100


def token_count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def truncate(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def fit_profile(tokenizer, items: list[str], budget: int) -> list[str]:
    """Drop whole items from the least relevant end until the rest fit the budget; if one item
    alone is too long, truncate it."""
    kept = list(items)
    while len(kept) > 1 and sum(token_count(tokenizer, t) for t in kept) > budget:
        kept.pop()
    if kept and token_count(tokenizer, kept[0]) > budget:
        kept[0] = truncate(tokenizer, kept[0], budget)
    return kept


def encode_record(record: dict, task: str, tokenizer: PreTrainedTokenizerBase, k: int,
                  budgets: tuple[int, int, int], system_prompt: Optional[str]) -> dict:
    """Prompt ids + target ids + EOS; `reference` keeps the untruncated target for evaluation."""
    profile_budget, input_budget, target_budget = budgets
    retrieved = list(reversed(record["profile"][-k:])) if k > 0 else []  # recency: newest first
    profile = fit_profile(tokenizer, [render_profile_item(task, item) for item in retrieved], profile_budget)
    query = truncate(tokenizer, record["input"], input_budget)
    prompt_ids = tokenizer(chat_prompt(tokenizer, user_message(task, profile, query), system_prompt),
                           add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"][:target_budget]
    return {"id": str(record["id"]), "input_ids": prompt_ids + target_ids + [tokenizer.eos_token_id],
            "prompt_len": len(prompt_ids), "reference": record["output"]}


def collate(examples: list[dict], pad_id: int) -> dict:
    """Left padding (decoder inputs); labels are the ids on response tokens + EOS, else ignored."""
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example["input_ids"])
        start = width - len(ids)
        input_ids[row, start:] = ids
        attention_mask[row, start:] = 1
        labels[row, start + example["prompt_len"]:] = ids[example["prompt_len"]:]
    return {"ids": [e["id"] for e in examples], "input_ids": input_ids, "attention_mask": attention_mask,
            "labels": labels, "prompt_len": torch.tensor([e["prompt_len"] for e in examples]),
            "reference": [e["reference"] for e in examples]}
