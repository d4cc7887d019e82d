"""Token budgets: never exceeded after re-tokenisation, whole items dropped before any cut, the
chat template's tail intact, targets cut in every split (for the loss) and references always whole."""

from __future__ import annotations

import pytest

from flythinker_pl.config import DataConfig
from flythinker_pl.data.datamodule import load_split
from flythinker_pl.data.encode import encode_records, fit_histories, token_ids, truncate
from flythinker_pl.data.prompts import ABSTRACT_WORDS, chat_prompt, history, render_profile_item, user_message
from flythinker_pl.data.retrieval import retrieve

from helpers import CONFIGS, fixture_cfg


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


def test_abstracts_keep_their_first_750_words_whitespace_normalised():
    words = [f"w{n}" for n in range(ABSTRACT_WORDS + 50)]
    item = {"title": "T", "abstract": "  ".join(words[:10]) + "\n" + " ".join(words[10:]), "id": "1", "year": 2020}
    assert (
        render_profile_item("abstract_generation", item)
        == f'"{" ".join(words[:ABSTRACT_WORDS])}" is the abstract for the title "T"'
    )
