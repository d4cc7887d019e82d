"""data/encode.py: token budgets (never exceeded after re-tokenisation, whole items dropped before any
cut, the chat template's tail intact, targets cut in every split for the loss, references always
whole), the encoded example (prompt masked, EOS on a whole target) and profile_mask (which prompt
tokens render the user's history). That the batched encoder equals a plain per-record reference is
test_encode_equals_reference.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flythinker_pl.config import DataConfig
from flythinker_pl.data.batching import collate
from flythinker_pl.data.datamodule import load_split, prepare_record
from flythinker_pl.data.encode import encode_records, fit_histories, token_ids, tokens_and_span_masks, truncate
from flythinker_pl.data.prompts import chat_prompt, history, render_profile_item, user_message
from flythinker_pl.data.readers import SPLITS
from flythinker_pl.data.retrieval import retrieve

from helpers import CONFIGS, ROOMY, PythonTokenizer, fixture_cfg, synthetic_cfg


TAIL = "<|im_start|>assistant\n"
UNICODE = "Zoë's café ☕ — 音がいい 🎵🎶 e\u0301 “quotes” Ünïcödé ≠ ascii. " * 6


@pytest.mark.parametrize("text", [UNICODE, "plain words only " * 20, "x" * 300])
def test_truncation_never_exceeds_the_budget_after_retokenisation(tokenizer, text):
    total = len(token_ids(tokenizer, text))
    for budget in range(total + 2):
        cut = truncate(tokenizer, text, budget)
        assert len(token_ids(tokenizer, cut)) <= budget
        assert text.startswith(cut)  # a prefix of the original: no replacement characters
        # and not needlessly short: at most the other byte tokens of one (<= 4-byte) character are lost
        assert len(token_ids(tokenizer, cut)) >= min(budget, total) - 3
    assert truncate(tokenizer, text, total) == text


def test_whole_items_are_dropped_before_any_item_is_cut(tokenizer):
    short_a, short_b, long_c = "first item", "second item", "third item " * 40
    size = len(token_ids(tokenizer, history([short_a, short_b])))
    assert fit_histories(tokenizer, [[short_a, short_b, long_c]], size)[0] == (history([short_a, short_b]), 2, True)
    text, kept, cut = fit_histories(tokenizer, [[long_c, short_a]], 12)[0]  # the most relevant alone is too long
    assert (kept, cut) == (1, True) and long_c.startswith(text) and len(token_ids(tokenizer, text)) <= 12
    assert fit_histories(tokenizer, [[short_a]], 100)[0] == (short_a, 1, False)
    assert fit_histories(tokenizer, [[short_a]], 0)[0] == ("", 0, True)


@pytest.mark.parametrize("task,setting", CONFIGS)
@pytest.mark.parametrize("budgets", [(8, 6, 5), (40, 20, 16), (10_000, 10_000, 10_000)])
@pytest.mark.parametrize("system_prompt", [None, "Be brief."])
def test_every_prompt_respects_its_budgets_and_keeps_the_template_tail(
    tokenizer, task, setting, budgets, system_prompt
):
    profile_tokens, input_tokens, target_tokens = budgets
    cfg = fixture_cfg(
        task,
        setting,
        k=3,
        profile_tokens=profile_tokens,
        input_tokens=input_tokens,
        target_tokens=target_tokens,
        system_prompt=system_prompt,
    )
    for split in ("train", "test"):
        for record in load_split(cfg, split).records:
            items = [record["profile"][i] for i in retrieve(record, task, "bm25", 3)]
            example = encode_records([record], [items], cfg, tokenizer)[0]
            ids, prompt_len = example["input_ids"].tolist(), example["prompt_len"]
            history_text, _, _ = fit_histories(
                tokenizer, [[render_profile_item(task, i) for i in items]], profile_tokens
            )[0]
            query = truncate(tokenizer, record["input"], input_tokens)
            assert len(token_ids(tokenizer, history_text)) <= profile_tokens
            assert len(token_ids(tokenizer, query)) <= input_tokens
            prompt = tokenizer.decode(ids[:prompt_len])
            assert prompt == chat_prompt(tokenizer, user_message(task, history_text, query), system_prompt)
            tail = token_ids(tokenizer, TAIL)
            assert prompt.endswith(TAIL) and ids[prompt_len - len(tail) : prompt_len] == tail
            response = ids[prompt_len:]
            full = token_ids(tokenizer, record["output"])
            if len(full) > target_tokens:  # cut in every split (the loss's budget), without EOS
                assert response == full[:target_tokens] and example["cut"]["target"]
            else:  # whole, + EOS
                assert response == full + [tokenizer.eos_token_id]
            assert example["reference"] == record["output"]


def test_long_fields_hit_the_budgets_and_are_reported(tokenizer, synthetic_dir):
    cfg = DataConfig(path=str(synthetic_dir), k=2, profile_tokens=64, input_tokens=16, target_tokens=32)
    record = load_split(cfg, "train").records[0]
    example = encode_records([record], [record["profile"][:2]], cfg, tokenizer)[0]
    assert example["cut"] == {"profile": True, "input": True, "target": True}
    assert example["items_shown"] == 1 and len(example["input_ids"]) - example["prompt_len"] == 32


def test_encoding_masks_the_prompt_and_ends_with_eos(synthetic_dir, tokenizer):
    record = json.loads((synthetic_dir / "product_review_user" / "train.jsonl").read_text().splitlines()[0])
    latest = record["profile"][-1]
    expected_message = (
        f'"{latest["overall"]}" is a rating for the product with description '
        f'"{latest["description"]}". "{latest["summary"]}" is summary for "{latest["reviewText"]}"'
        f". Following the given patterns {record['input']}"
    )
    roomy = DataConfig(profile_tokens=10_000, input_tokens=10_000, target_tokens=10_000)
    example = encode_records([record], [[latest]], roomy, tokenizer)[0]
    prompt = tokenizer.decode(example["input_ids"][: example["prompt_len"]])
    assert prompt == chat_prompt(tokenizer, expected_message, None)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][example["prompt_len"] : -1]) == record["output"]

    tight = DataConfig(profile_tokens=10_000, input_tokens=10_000, target_tokens=20)
    short = encode_records([record], [[latest]], tight, tokenizer)[0]
    assert len(short["input_ids"]) - short["prompt_len"] == 20  # the target budget; no EOS on a cut target
    assert short["input_ids"][-1] != tokenizer.eos_token_id
    assert short["reference"] == record["output"]  # the reference is never truncated

    batch = collate([example, short], pad_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert batch["attention_mask"][1, : width - len(short["input_ids"])].sum() == 0  # left padding
    response = batch["labels"][0] != -100
    assert response.sum() == len(example["input_ids"]) - example["prompt_len"]
    assert torch.equal(batch["labels"][0][response], batch["input_ids"][0][response])


# --- profile_mask ----------------------------------------------------------------------------------


def history_of(record: dict, cfg: DataConfig, tokenizer) -> str:
    """The history text as the encoder budgets it (independently of profile_mask)."""
    items = [record["profile"][i] for i in retrieve(record, cfg.task, cfg.retriever, cfg.k, cfg.seed)]
    return fit_histories(tokenizer, [[render_profile_item(cfg.task, item) for item in items]], cfg.profile_tokens)[0][0]


def previous_encoding(record: dict, cfg: DataConfig, tokenizer) -> list[int]:
    """The ids as encoded before profile_mask existed: prompt string tokenised, then the target."""
    message = user_message(
        cfg.task, history_of(record, cfg, tokenizer), truncate(tokenizer, record["input"], cfg.input_tokens)
    )
    target = token_ids(tokenizer, record["output"])
    target = target[: cfg.target_tokens] if len(target) > cfg.target_tokens else target + [tokenizer.eos_token_id]
    return token_ids(tokenizer, chat_prompt(tokenizer, message, cfg.system_prompt)) + target


def marked_text(example: dict, tokenizer) -> str:
    return tokenizer.decode(np.asarray(example["input_ids"])[example["profile_mask"].astype(bool)])


def assert_marks_the_history(example: dict, history_text: str, tokenizer, quoted_elsewhere: bool = False) -> None:
    mask = example["profile_mask"]
    assert mask.dtype == np.int8 and len(mask) == len(example["input_ids"])
    assert not mask[example["prompt_len"] :].any()  # never on the target
    if not history_text:
        assert not mask.any()
        return
    marked = np.flatnonzero(mask)
    assert (np.diff(marked) == 1).all()  # one contiguous run
    text = marked_text(example, tokenizer)
    assert history_text in text  # all of it, and only the tokens it needs: dropping either end loses some
    ids = np.asarray(example["input_ids"])
    assert history_text not in tokenizer.decode(ids[marked[1:]])
    assert history_text not in tokenizer.decode(ids[marked[:-1]])
    outside = tokenizer.decode(np.delete(np.asarray(example["input_ids"][: example["prompt_len"]]), marked))
    assert (history_text[1:-1] in outside) == quoted_elsewhere


@pytest.mark.parametrize("task,setting", CONFIGS)
@pytest.mark.parametrize("budgets", [ROOMY, dict(profile_tokens=30, input_tokens=20, target_tokens=15)])
def test_profile_mask_marks_exactly_the_history_and_leaves_the_ids_unchanged(tokenizer, task, setting, budgets):
    cfg = fixture_cfg(task, setting, retriever="recency", k=2, **budgets)
    for split in SPLITS:
        for record in load_split(cfg, split).records:
            example = prepare_record(record, cfg, tokenizer)
            assert example["input_ids"].tolist() == previous_encoding(record, cfg, tokenizer)
            assert_marks_the_history(example, history_of(record, cfg, tokenizer), tokenizer)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_profile_mask_finds_the_user_turn_even_when_the_system_prompt_quotes_the_history(
    tokenizer, synthetic_dir, template
):
    if template == "plain":
        tokenizer = tokenizer.__class__(
            tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
    cfg = synthetic_cfg(synthetic_dir, k=2, **ROOMY)
    for record in load_split(cfg, "val").records[:5]:
        history_text = history_of(record, cfg, tokenizer)
        # the whole user message twice in the prompt: only the user turn's history is the history
        cfg.system_prompt = user_message(cfg.task, history_text, record["input"])
        example = prepare_record(record, cfg, tokenizer)
        assert example["input_ids"].tolist() == previous_encoding(record, cfg, tokenizer)
        assert_marks_the_history(example, history_text, tokenizer, quoted_elsewhere=True)
        prompt = tokenizer.decode(example["input_ids"][: example["prompt_len"]])
        first_marked = int(np.flatnonzero(example["profile_mask"])[0])
        assert len(tokenizer.decode(example["input_ids"][:first_marked])) > prompt.index(history_text)


def test_slow_tokenizers_keep_their_ids_and_mark_the_history_up_to_a_boundary_token(tokenizer, synthetic_dir):
    slow = PythonTokenizer(tokenizer)
    slow.chat_template = tokenizer.chat_template
    assert not slow.is_fast
    cfg = synthetic_cfg(synthetic_dir, k=2, **ROOMY)
    for record in load_split(cfg, "val").records[:4]:
        fast_example = prepare_record(record, cfg, tokenizer)
        slow_example = prepare_record(record, cfg, slow)
        assert slow_example["input_ids"].tolist() == fast_example["input_ids"].tolist()
        fast_marked, slow_marked = (np.flatnonzero(e["profile_mask"]) for e in (fast_example, slow_example))
        assert len(slow_marked) and (np.diff(slow_marked) == 1).all()
        assert abs(slow_marked[0] - fast_marked[0]) <= 1 and abs(slow_marked[-1] - fast_marked[-1]) <= 1


def test_an_empty_span_marks_nothing(tokenizer):
    ids, mask = tokens_and_span_masks(tokenizer, ["The sound is lovely"], [(6, 6)])[0]
    assert ids == token_ids(tokenizer, "The sound is lovely") and mask.tolist() == [0] * len(ids)
    assert tokens_and_span_masks(tokenizer, ["The sound is lovely"], [(4, 9)])[0][1].any()


def test_span_ends_on_characters_no_token_covers_fall_back_to_offsets():
    backend = Tokenizer(models.WordLevel({"the": 0, "sound": 1, "is": 2, "lovely": 3, "[UNK]": 4}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # spaces belong to no token
    ids, mask = tokens_and_span_masks(
        PreTrainedTokenizerFast(tokenizer_object=backend), ["the sound is lovely"], [(3, 13)]
    )[0]
    assert ids == [0, 1, 2, 3] and mask.tolist() == [0, 1, 1, 0]
