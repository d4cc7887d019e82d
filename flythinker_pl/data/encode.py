"""Record -> token ids under the token budgets: history, query, prompt, target (+ EOS).

Budgets (`data.profile_tokens / input_tokens / target_tokens`, the paper's 1250 / 300 / 1000):
  * history: the rendered retrieved items joined with ", and " (not the task's suffix). Whole items
    are dropped from the least relevant end first; if the most relevant item alone is too long, it
    is truncated.
  * input: the record's query.
  * target: training only, and then without EOS (the model must not learn to stop where the
    budget cut the text). Evaluation examples keep the whole target; `reference` is always the
    untruncated output.
The chat template is applied around the budgeted message, so its tail (the assistant header) is
never cut. Truncation is by tokens and checked after re-tokenisation: a cut text never exceeds its
budget when it is tokenised again.
"""
from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from .prompts import chat_prompt, history, render_profile_item, user_message

IGNORE_INDEX = -100


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truncate(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """The longest cut of `text` at a token boundary that re-tokenises to <= max_tokens tokens
    (a prefix of the original string with fast tokenizers)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = encoding["input_ids"]
    if len(ids) <= max_tokens:
        return text
    for keep in range(max_tokens, 0, -1):  # merges across the cut can add a token: back off until it fits
        cut = text[: encoding["offset_mapping"][keep - 1][1]] if tokenizer.is_fast else tokenizer.decode(ids[:keep])
        if len(token_ids(tokenizer, cut)) <= max_tokens:
            return cut
    return ""


def fit_history(tokenizer: PreTrainedTokenizerBase, rendered_items: list[str], budget: int) -> tuple[str, int, bool]:
    """(history text, items kept, whether anything was dropped or cut) within `budget` tokens."""
    kept = list(rendered_items)
    while len(kept) > 1 and len(token_ids(tokenizer, history(kept))) > budget:
        kept.pop()
    text = truncate(tokenizer, history(kept), budget)
    cut = len(kept) < len(rendered_items) or text != history(kept)
    return text, len(kept) if text else 0, cut


def encode_record(record: dict, items: list[dict], cfg: DataConfig, tokenizer: PreTrainedTokenizerBase,
                  train: bool) -> dict:
    """Prompt ids + target ids (+ EOS when the target is whole), with what the budgets did.

    `items`: the retrieved profile items, most relevant first."""
    history_text, kept, profile_cut = fit_history(
        tokenizer, [render_profile_item(cfg.task, item) for item in items], cfg.profile_tokens)
    query = truncate(tokenizer, record["input"], cfg.input_tokens)
    prompt_ids = token_ids(tokenizer, chat_prompt(tokenizer, user_message(cfg.task, history_text, query),
                                                  cfg.system_prompt))
    target_ids = token_ids(tokenizer, record["output"])
    target_cut = train and len(target_ids) > cfg.target_tokens
    response = target_ids[: cfg.target_tokens] if target_cut else target_ids + [tokenizer.eos_token_id]
    # int32 arrays, not lists of Python ints: a tenth of the memory, and cheap to share with workers
    return {"id": record["id"], "input_ids": np.asarray(prompt_ids + response, dtype=np.int32),
            "prompt_len": len(prompt_ids), "reference": record["output"], "items_shown": kept,
            "target_tokens": len(target_ids),
            "cut": {"profile": profile_cut, "input": query != record["input"], "target": target_cut}}
