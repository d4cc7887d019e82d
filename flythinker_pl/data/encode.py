"""Record -> token ids under the token budgets: history, query, prompt, target (+ EOS).

Budgets (`data.profile_tokens / input_tokens / target_tokens`, the paper's 1250 / 300 / 1000):
  * history: the rendered retrieved items joined with ", and " (not the task's suffix). Whole items
    are dropped from the least relevant end first; if the most relevant item alone is too long, it
    is truncated.
  * input: the record's query.
  * target: in every split, and then without EOS (the model must not learn to stop where the
    budget cut the text). Evaluation examples are cut too: their loss is a teacher-forced pass,
    and an uncut 200k-word output would not fit in memory. `reference` (the text decoding is
    scored against) is always the untruncated output.
  * rationale (`data.rationale_tokens`, when a record has one: data.rationales): the target becomes
    RATIONALE_PREFIX + rationale + RESPONSE_MARKER + output; the rationale is cut to its budget in
    every split (the model is trained, and validated, on producing at most that much reasoning).
    Such an example also holds the rationale's steps, each tokenised alone (`rationale_len`,
    `step_ids`, `step_lengths`), for Coconut's curriculum.
The chat template is applied around the budgeted message, so its tail (the assistant header) is
never cut. Truncation is by tokens and checked after re-tokenisation: a cut text never exceeds its
budget when it is tokenised again.

`profile_mask` marks the prompt tokens that render the history (the retrieved profile items): the
tokens whose character span overlaps the history's span in the prompt string. It never changes
the ids: the prompt is tokenised once, with offsets. Slow (Python) tokenizers have no offsets: the
history's tokens are then counted by tokenising the prompt's prefixes, which can be off by one
token at either end where a merge crosses the boundary.

A split is encoded in chunks (`encode_records`): each tokenizer call takes a chunk's texts at once
(a fast tokenizer spreads them over its threads), a text is tokenised again only when it is over its
budget (to cut it), and a history that several records show is counted once.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from transformers import PreTrainedTokenizerBase

from ..config import DataConfig
from .prompts import (
    chat_prompt,
    history,
    history_span,
    render_profile_item,
    template_head,
    user_message,
    with_rationale,
)
from .rationales import rationale_steps

IGNORE_INDEX = -100
CHUNK = 256  # records per batched tokenizer call


def token_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _backend(tokenizer: PreTrainedTokenizerBase):
    """A fast tokenizer's Rust tokenizer, when calling it directly gives what the tokenizer's own call
    gives (it sets no truncation or padding and splits special tokens as told), else None."""
    backend = tokenizer.backend_tokenizer if tokenizer.is_fast else None
    if (
        backend is None
        or backend.truncation
        or backend.padding
        or backend.encode_special_tokens != tokenizer.split_special_tokens
    ):
        return None
    return backend


def batch_token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """token_ids of each text, in one call (a fast tokenizer spreads it over its threads, and skips
    the offsets: a third of its work)."""
    backend = _backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


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


def fit_histories(
    tokenizer: PreTrainedTokenizerBase, rendered: list[list[str]], budget: int, tokens: Optional[list[int]] = None
) -> list[tuple[str, int, bool]]:
    """Per record, (history text, items kept, whether anything was dropped or cut) within `budget`
    tokens, its items most relevant first. `tokens`: each whole history's token count, when known.
    Items are dropped in rounds, one tokenizer call per round for the histories still over budget."""
    kept = [len(items) for items in rendered]
    if tokens is None:
        tokens = [len(ids) for ids in batch_token_ids(tokenizer, [history(items) for items in rendered])]
    tokens = list(tokens)
    while over := [i for i, size in enumerate(tokens) if size > budget and kept[i] > 1]:
        for i in over:
            kept[i] -= 1
        for i, ids in zip(over, batch_token_ids(tokenizer, [history(rendered[i][: kept[i]]) for i in over])):
            tokens[i] = len(ids)
    fits = []
    for items, n, size in zip(rendered, kept, tokens):
        whole = history(items[:n])
        text = whole if size <= budget else truncate(tokenizer, whole, budget)
        fits.append((text, n if text else 0, n < len(items) or text != whole))
    return fits


def tokens_and_span_masks(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], spans: list[tuple[int, int]]
) -> list[tuple[list[int], np.ndarray]]:
    """Per text: token_ids(text) and, per token, 1 if it overlaps the character span [start, end) of the text."""
    if not tokenizer.is_fast:
        return [_slow_tokens_and_span_mask(tokenizer, text, span) for text, span in zip(texts, spans)]
    backend = _backend(tokenizer)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
    else:
        encodings = tokenizer(texts, add_special_tokens=False).encodings if texts else []
    results = []
    for encoding, (start, end) in zip(encodings, spans):
        mask = np.zeros(len(encoding.ids), dtype=np.int8)
        if end > start:
            # the tokens holding the span's first and last characters (the fast tokenizer's offsets)
            first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
            if first is None or last is None:  # a character no token covers (e.g. dropped whitespace)
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                mask[(offsets[:, 0] < end) & (offsets[:, 1] > start)] = 1
            else:
                mask[first : last + 1] = 1
        results.append((encoding.ids, mask))
    return results


def _slow_tokens_and_span_mask(
    tokenizer: PreTrainedTokenizerBase, text: str, span: tuple[int, int]
) -> tuple[list[int], np.ndarray]:
    start, end = span
    ids = token_ids(tokenizer, text)
    mask = np.zeros(len(ids), dtype=np.int8)
    if end > start:
        mask[len(token_ids(tokenizer, text[:start])) : len(token_ids(tokenizer, text[:end]))] = 1
    return ids, mask


def encode_records(
    records: list[dict],
    items: list[list[dict]],
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    rationales: Optional[list[Optional[str]]] = None,
) -> list[dict]:
    """Per record: prompt ids + target ids (+ EOS when the target is whole), the prompt's profile_mask
    (0 on the target), and what the budgets did; chunk by chunk.

    `items`: each record's retrieved profile items, most relevant first. `rationales`: each record's
    reasoning to put before the output in the target (chain of thought), or None."""
    rationales = rationales or [None] * len(records)
    head = template_head(tokenizer, cfg.system_prompt)
    history_tokens: dict[str, int] = {}  # history text -> token count (records that show the same items)
    return [
        example
        for start in range(0, len(records), CHUNK)
        for example in _encode_chunk(
            records[start : start + CHUNK],
            items[start : start + CHUNK],
            rationales[start : start + CHUNK],
            cfg,
            tokenizer,
            head,
            history_tokens,
        )
    ]


def _encode_chunk(
    records: list[dict],
    items: list[list[dict]],
    rationales: list[Optional[str]],
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    head: str,
    history_tokens: dict[str, int],
) -> list[dict]:
    rendered = [[render_profile_item(cfg.task, item) for item in record_items] for record_items in items]
    histories = [history(r) for r in rendered]  # every item shown, if it fits
    new = list(dict.fromkeys(h for h in histories if h not in history_tokens))
    # one call for every text whose length decides a cut (and for the targets): new histories, queries,
    # targets, rationales
    ids = iter(
        batch_token_ids(
            tokenizer,
            new
            + [r["input"] for r in records]
            + [r["output"] for r in records]
            + [r for r in rationales if r is not None],
        )
    )
    history_tokens.update((text, len(next(ids))) for text in new)
    queries, targets = [next(ids) for _ in records], [next(ids) for _ in records]
    rationale_tokens = [len(next(ids)) if r is not None else 0 for r in rationales]

    fitted = fit_histories(tokenizer, rendered, cfg.profile_tokens, [history_tokens[h] for h in histories])
    prompts, spans, fits = [], [], []
    for record, (history_text, kept, profile_cut), query_ids, rationale, rationale_size in zip(
        records, fitted, queries, rationales, rationale_tokens
    ):
        query = (
            record["input"]
            if len(query_ids) <= cfg.input_tokens
            else truncate(tokenizer, record["input"], cfg.input_tokens)
        )
        if rationale is not None and rationale_size > cfg.rationale_tokens:
            rationale = truncate(tokenizer, rationale, cfg.rationale_tokens)
        message = user_message(cfg.task, history_text, query)
        prompt = chat_prompt(tokenizer, message, cfg.system_prompt)
        prompts.append(prompt)
        spans.append(history_span(tokenizer, prompt, message, history_text, head))
        fits.append((kept, {"profile": profile_cut, "input": query != record["input"]}, rationale))
    rationale_ids = iter(batch_token_ids(tokenizer, [with_rationale(r) for *_, r in fits if r is not None]))
    steps = [rationale_steps(r) for *_, r in fits if r is not None]
    step_ids = iter(batch_token_ids(tokenizer, [step for record_steps in steps for step in record_steps]))
    step_counts = iter(map(len, steps))

    examples = []
    for record, given, (prompt_ids, prompt_profile_mask), target_ids, (kept, cut, rationale) in zip(
        records, rationales, tokens_and_span_masks(tokenizer, prompts, spans), targets, fits
    ):
        target_cut = len(target_ids) > cfg.target_tokens
        cut["target"] = target_cut
        response = target_ids[: cfg.target_tokens] if target_cut else target_ids + [tokenizer.eos_token_id]
        reasoning = {}
        if rationale is not None:
            cut["rationale"] = rationale != given
            rationale_part = next(rationale_ids)
            response = rationale_part + response
            reasoning = rationale_fields(len(rationale_part), [next(step_ids) for _ in range(next(step_counts))])
        # int32 arrays, not lists of Python ints: a tenth of the memory, and cheap to share with workers
        input_ids = np.asarray(prompt_ids + response, dtype=np.int32)
        profile_mask = np.zeros(len(input_ids), dtype=np.int8)
        profile_mask[: len(prompt_ids)] = prompt_profile_mask
        examples.append(
            {
                "id": record["id"],
                "input_ids": input_ids,
                "profile_mask": profile_mask,
                "prompt_len": len(prompt_ids),
                "reference": record["output"],
                "items_shown": kept,
                "target_tokens": len(target_ids),
                "cut": cut,
                **reasoning,
            }
        )
    return examples


def rationale_fields(rationale_len: int, step_ids: list[list[int]]) -> dict:
    """What Coconut's curriculum (data/coconut_schedule.py) needs of a chain-of-thought example: how many
    target tokens precede the response (prefix + rationale + marker) and the rationale's steps,
    each tokenised alone (concatenated, and their lengths)."""
    return {
        "rationale_len": rationale_len,
        "step_ids": np.asarray([token for step in step_ids for token in step], dtype=np.int32),
        "step_lengths": np.asarray([len(step) for step in step_ids], dtype=np.int32),
    }
