"""Record -> token ids under the token budgets: history, query, prompt, target (+ EOS).

Budgets (`data.profile_tokens / input_tokens / target_tokens`, the paper's 1250 / 300 / 1000):
  * history: the rendered retrieved items joined with ", and " (not the task's suffix). Whole items
    are dropped from the least relevant end first; if the most relevant item alone is too long, it
    is truncated.
  * input: the record's query.
  * target: training only, and then without EOS (the model must not learn to stop where the
    budget cut the text). Evaluation examples keep the whole target; `reference` is always the
    untruncated output.
  * rationale (`data.rationale_tokens`, when a record has one: data.rationales): the target becomes
    RATIONALE_PREFIX + rationale + RESPONSE_MARKER + output; the rationale is cut to its budget in
    every split (the model is trained, and validated, on producing at most that much reasoning).
The chat template is applied around the budgeted message, so its tail (the assistant header) is
never cut. Truncation is by tokens and checked after re-tokenisation: a cut text never exceeds its
budget when it is tokenised again.

`profile_mask` marks the prompt tokens that render the history (the retrieved profile items): the
tokens whose character span overlaps the history's span in the prompt string. It never changes
the ids: the prompt is tokenised once, with offsets. Slow (Python) tokenizers have no offsets: the
history's tokens are then counted by tokenising the prompt's prefixes, which can be off by one
token at either end where a merge crosses the boundary.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from .prompts import chat_prompt, history, history_span, render_profile_item, user_message, with_rationale

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


def tokens_and_span_mask(tokenizer: PreTrainedTokenizerBase, text: str,
                         span: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    """token_ids(text) and, per token, 1 if it overlaps the character span [start, end) of `text`."""
    start, end = span
    if not tokenizer.is_fast:
        ids = token_ids(tokenizer, text)
        mask = np.zeros(len(ids), dtype=np.int8)
        if end > start:
            mask[len(token_ids(tokenizer, text[:start])): len(token_ids(tokenizer, text[:end]))] = 1
        return ids, mask
    encoding = tokenizer(text, add_special_tokens=False)
    mask = np.zeros(len(encoding["input_ids"]), dtype=np.int8)
    if end > start:
        # the tokens holding the span's first and last characters (the fast tokenizer's offsets)
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:  # a character no token covers (e.g. dropped whitespace)
            offsets = np.asarray(tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                                 ["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            mask[(offsets[:, 0] < end) & (offsets[:, 1] > start)] = 1
        else:
            mask[first: last + 1] = 1
    return encoding["input_ids"], mask


def encode_record(record: dict, items: list[dict], cfg: DataConfig, tokenizer: PreTrainedTokenizerBase,
                  train: bool, rationale: Optional[str] = None) -> dict:
    """Prompt ids + target ids (+ EOS when the target is whole), the prompt's profile_mask (0 on the
    target), and what the budgets did.

    `items`: the retrieved profile items, most relevant first. `rationale`: reasoning to put before
    the output in the target (chain of thought), or None."""
    history_text, kept, profile_cut = fit_history(
        tokenizer, [render_profile_item(cfg.task, item) for item in items], cfg.profile_tokens)
    query = truncate(tokenizer, record["input"], cfg.input_tokens)
    message = user_message(cfg.task, history_text, query)
    prompt = chat_prompt(tokenizer, message, cfg.system_prompt)
    prompt_ids, prompt_profile_mask = tokens_and_span_mask(
        tokenizer, prompt, history_span(tokenizer, prompt, message, history_text, cfg.system_prompt))
    target_ids = token_ids(tokenizer, record["output"])
    target_cut = train and len(target_ids) > cfg.target_tokens
    response = target_ids[: cfg.target_tokens] if target_cut else target_ids + [tokenizer.eos_token_id]
    cut = {"profile": profile_cut, "input": query != record["input"], "target": target_cut}
    if rationale is not None:
        kept_rationale = truncate(tokenizer, rationale, cfg.rationale_tokens)
        cut["rationale"] = kept_rationale != rationale
        response = token_ids(tokenizer, with_rationale(kept_rationale)) + response
    # int32 arrays, not lists of Python ints: a tenth of the memory, and cheap to share with workers
    input_ids = np.asarray(prompt_ids + response, dtype=np.int32)
    profile_mask = np.zeros(len(input_ids), dtype=np.int8)
    profile_mask[: len(prompt_ids)] = prompt_profile_mask
    return {"id": record["id"], "input_ids": input_ids, "profile_mask": profile_mask,
            "prompt_len": len(prompt_ids), "reference": record["output"], "items_shown": kept,
            "target_tokens": len(target_ids), "cut": cut}
