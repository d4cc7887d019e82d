"""Fast data preparation (retrieval.BM25Corpus, encode.encode_records) gives exactly what the plain
per-record path gave: BM25 scores and picks equal rank-bm25's BM25Okapi, and prepared examples equal
a reference copy of the previous encoder, on every LongLaMP fixture and on 2,000 synthetic records."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Optional

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from flythinker_pl.config import DataConfig
from flythinker_pl.data import synthetic
from flythinker_pl.data.datamodule import load_split, prepare_record, prepare_records
from flythinker_pl.data.prompts import (
    _MESSAGE_SLOT,
    chat_prompt,
    history,
    render_profile_item,
    user_message,
    with_rationale,
)
from flythinker_pl.data.rationales import rationale_steps, rationales_for_split
from flythinker_pl.data.readers import SPLITS
from flythinker_pl.data.retrieval import BM25Corpus, bm25_document, bm25_query
from flythinker_pl.models import tiny

from helpers import CONFIGS, fixture_cfg, PythonTokenizer


# --- the reference: the per-record path as it was before encode_records (rank-bm25, one record at a time)


def reference_retrieve(record: dict, cfg: DataConfig) -> list[int]:
    profile = record["profile"]
    if cfg.retriever != "bm25" or cfg.k <= 0 or not profile:
        raise ValueError("the reference covers bm25 on non-empty profiles")
    documents = [bm25_document(cfg.task, item).split() for item in profile]
    if not any(documents):
        return list(range(min(cfg.k, len(profile))))
    index = BM25Okapi(documents)
    return index.get_top_n(bm25_query(cfg.task, record["input"]).split(), list(range(len(profile))), n=cfg.k)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = encoding["input_ids"]
    if len(ids) <= max_tokens:
        return text
    for keep in range(max_tokens, 0, -1):
        cut = text[: encoding["offset_mapping"][keep - 1][1]] if tokenizer.is_fast else tokenizer.decode(ids[:keep])
        if len(_ids(tokenizer, cut)) <= max_tokens:
            return cut
    return ""


def _fit_history(tokenizer, rendered_items: list[str], budget: int) -> tuple[str, int, bool]:
    kept = list(rendered_items)
    while len(kept) > 1 and len(_ids(tokenizer, history(kept))) > budget:
        kept.pop()
    text = _truncate(tokenizer, history(kept), budget)
    cut = len(kept) < len(rendered_items) or text != history(kept)
    return text, len(kept) if text else 0, cut


def _history_span(prompt: str, message: str, history_text: str, tokenizer, system_prompt) -> tuple[int, int]:
    if not history_text:
        return 0, 0
    head = chat_prompt(tokenizer, _MESSAGE_SLOT, system_prompt).partition(_MESSAGE_SLOT)[0]
    start = len(head) if prompt.startswith(head) and prompt.startswith(message, len(head)) else prompt.rfind(message)
    assert start >= 0
    return start, start + len(history_text)


def _tokens_and_span_mask(tokenizer, text: str, span: tuple[int, int]) -> tuple[list[int], np.ndarray]:
    start, end = span
    if not tokenizer.is_fast:
        ids = _ids(tokenizer, text)
        mask = np.zeros(len(ids), dtype=np.int8)
        if end > start:
            mask[len(_ids(tokenizer, text[:start])) : len(_ids(tokenizer, text[:end]))] = 1
        return ids, mask
    encoding = tokenizer(text, add_special_tokens=False)
    mask = np.zeros(len(encoding["input_ids"]), dtype=np.int8)
    if end > start:
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            offsets = np.asarray(
                tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"], dtype=np.int64
            ).reshape(-1, 2)
            mask[(offsets[:, 0] < end) & (offsets[:, 1] > start)] = 1
        else:
            mask[first : last + 1] = 1
    return encoding["input_ids"], mask


def reference_encode(
    record: dict, items: list[dict], cfg: DataConfig, tokenizer, rationale: Optional[str] = None
) -> dict:
    history_text, kept, profile_cut = _fit_history(
        tokenizer, [render_profile_item(cfg.task, item) for item in items], cfg.profile_tokens
    )
    query = _truncate(tokenizer, record["input"], cfg.input_tokens)
    message = user_message(cfg.task, history_text, query)
    prompt = chat_prompt(tokenizer, message, cfg.system_prompt)
    prompt_ids, prompt_profile_mask = _tokens_and_span_mask(
        tokenizer, prompt, _history_span(prompt, message, history_text, tokenizer, cfg.system_prompt)
    )
    target_ids = _ids(tokenizer, record["output"])
    target_cut = len(target_ids) > cfg.target_tokens
    response = target_ids[: cfg.target_tokens] if target_cut else target_ids + [tokenizer.eos_token_id]
    cut = {"profile": profile_cut, "input": query != record["input"], "target": target_cut}
    reasoning = {}
    if rationale is not None:
        kept_rationale = _truncate(tokenizer, rationale, cfg.rationale_tokens)
        cut["rationale"] = kept_rationale != rationale
        rationale_part = _ids(tokenizer, with_rationale(kept_rationale))
        response = rationale_part + response
        steps = [_ids(tokenizer, step) for step in rationale_steps(kept_rationale)]
        reasoning = {
            "rationale_len": len(rationale_part),
            "step_ids": np.asarray([token for step in steps for token in step], dtype=np.int32),
            "step_lengths": np.asarray(list(map(len, steps)), dtype=np.int32),
        }
    input_ids = np.asarray(prompt_ids + response, dtype=np.int32)
    profile_mask = np.zeros(len(input_ids), dtype=np.int8)
    profile_mask[: len(prompt_ids)] = prompt_profile_mask
    return {
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


def reference_prepare(record: dict, cfg: DataConfig, tokenizer, rationale: Optional[str] = None) -> dict:
    retrieved = reference_retrieve(record, cfg) if record["profile"] and cfg.k > 0 else []
    example = reference_encode(record, [record["profile"][i] for i in retrieved], cfg, tokenizer, rationale)
    return {**example, "retrieved": retrieved[: example["items_shown"]]}


def assert_same_examples(examples: list[dict], expected: list[dict]) -> None:
    assert len(examples) == len(expected)
    for example, reference in zip(examples, expected):
        assert example.keys() == reference.keys()
        for key, value in reference.items():
            if isinstance(value, np.ndarray):
                assert example[key].dtype == value.dtype and example[key].tobytes() == value.tobytes(), key
            else:
                assert example[key] == value and type(example[key]) is type(value), key


# --- BM25


def assert_bm25_equal(corpus: BM25Corpus, query: str, documents: list[str], k: int) -> None:
    if not any(d.split() for d in documents):
        assert corpus.top_k(query, documents, k) == list(range(min(k, len(documents))))
        return
    index = BM25Okapi([d.split() for d in documents])
    assert corpus.scores(query, documents).tobytes() == index.get_scores(query.split()).tobytes()
    assert corpus.top_k(query, documents, k) == index.get_top_n(query.split(), list(range(len(documents))), k)


@pytest.mark.parametrize("task,setting", CONFIGS)
def test_bm25_equals_rank_bm25_on_every_fixture_and_field(task, setting):
    corpus = BM25Corpus()  # shared, as a split shares it
    for split in SPLITS:
        for record in load_split(fixture_cfg(task, setting), split).records:
            if record["profile"]:
                documents = [bm25_document(task, item) for item in record["profile"]]
                for k in (1, 2, len(documents) + 3):
                    assert_bm25_equal(corpus, bm25_query(task, record["input"]), documents, k)


def test_bm25_equals_rank_bm25_with_ties_empty_documents_and_repeated_terms():
    rng = random.Random(0)
    words = ["a", "b", "c", "d", "e", "the", "x", "y"]  # few words: many ties and negative idfs
    corpus = BM25Corpus()
    for _ in range(1500):
        vocabulary = words[: rng.randint(1, len(words))]
        documents = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 12))) for _ in range(rng.randint(1, 10))]
        query = " ".join(rng.choices(words + ["unseen"], k=rng.randint(0, 8)))
        assert_bm25_equal(corpus, query, documents, rng.randint(1, 12))
    assert corpus.top_k("a", ["", " "], 3) == [0, 1]  # no terms at all: profile order


# --- prepared examples


@pytest.mark.parametrize("task,setting", CONFIGS)
@pytest.mark.parametrize(
    "budgets",
    [
        dict(k=1),
        dict(k=4, system_prompt="You write like the user."),
        dict(k=3, profile_tokens=30, input_tokens=12, target_tokens=8),
        dict(k=2, profile_tokens=1, input_tokens=0, target_tokens=0),
    ],
)
def test_prepared_examples_equal_the_reference_on_every_fixture(tokenizer, task, setting, budgets):
    cfg = fixture_cfg(task, setting, **budgets)
    for split in SPLITS:
        records = load_split(cfg, split).records
        expected = [reference_prepare(r, cfg, tokenizer) for r in records]
        assert_same_examples(prepare_records(records, cfg, tokenizer), expected)
        assert_same_examples([prepare_record(r, cfg, tokenizer) for r in records], expected)


def test_prepared_examples_equal_the_reference_with_a_slow_tokenizer(tokenizer):
    slow = PythonTokenizer(tokenizer)
    slow.chat_template = tokenizer.chat_template
    for budgets in (dict(k=2), dict(k=3, profile_tokens=30, input_tokens=12, target_tokens=8, rationale_tokens=5)):
        cfg = fixture_cfg("product_review", **budgets)
        records = load_split(cfg, "train").records
        rationales = {r["id"]: f"The user {r['id']} keeps it short and friendly, always." for r in records[::2]}
        expected = [reference_prepare(r, cfg, slow, rationales.get(r["id"])) for r in records]
        assert_same_examples(prepare_records(records, cfg, slow, rationales), expected)


@pytest.fixture(scope="module")
def synthetic_2000(tmp_path_factory):
    """2,000 synthetic reviews (250 users x 8, as bench/data.py makes them) and a tokenizer trained on them."""
    root = synthetic.generate(tmp_path_factory.mktemp("synthetic_2000"), num_users=250, reviews_per_user=8, seed=0)
    cfg = DataConfig(synthetic_dir=str(root.parent), rationales="oracle")
    cfg.synthetic.num_users, cfg.synthetic.reviews_per_user = 250, 8
    return cfg, tiny.train_tokenizer([r["output"] for r in load_split(cfg, "val").records])


@pytest.mark.parametrize(
    "budgets", [dict(), dict(k=3, profile_tokens=400, input_tokens=40, target_tokens=100, rationale_tokens=20)]
)
def test_prepared_examples_equal_the_reference_on_2000_synthetic_records(synthetic_2000, budgets):
    base, tokenizer = synthetic_2000
    cfg = replace(base, **budgets)
    count = 0
    for split in SPLITS:
        records = load_split(cfg, split).records
        if budgets:  # the tight budgets (every cut path) on a quarter, with rationales
            records, rationales = rationales_for_split(cfg, split, records[::4], load_split(cfg, split).report)
        else:
            rationales = {}
        count += len(records)
        expected = [reference_prepare(r, cfg, tokenizer, rationales.get(r["id"])) for r in records]
        examples = prepare_records(records, cfg, tokenizer, rationales)
        assert_same_examples(examples, expected)
        if budgets:
            assert all(any(e["cut"][key] for e in examples) for key in ("profile", "input", "rationale"))
    assert count == (2000 if not budgets else 500)


def test_a_backend_set_to_truncate_is_called_through_the_tokenizer(tokenizer):
    """The Rust backend is called directly only where it gives what the tokenizer's call gives."""
    truncating = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str()),
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
    )
    truncating.chat_template = tokenizer.chat_template
    truncating.backend_tokenizer.enable_truncation(8)
    cfg = fixture_cfg("abstract_generation", k=2)
    records = load_split(cfg, "val").records
    examples = prepare_records(records, cfg, truncating)  # first: the tokenizer's call lifts the truncation
    assert_same_examples(examples, [reference_prepare(r, cfg, tokenizer) for r in records])


def test_bench_data_times_the_reference_path_beside_the_fast_one():
    """`make bench-data` prints its speed-up over rank-bm25 + per-record tokenisation, measured in the same run."""
    from flythinker_pl.bench.data import bench_data

    result = bench_data(records=160, reference_records=40)
    assert result["records"] == 160 and result["records/s"] > 0
    assert result["speed-up over the reference (40 records)"] > 0
