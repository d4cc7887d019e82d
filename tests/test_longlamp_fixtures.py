"""Hand-written LongLaMP records (tests/fixtures/longlamp, every task and setting): load, retrieve,
render exactly as LongLaMP's templates, tokenise, batch; readers for every supported layout."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rank_bm25 import BM25Okapi

from flythinker_pl.config import DataConfig
from flythinker_pl.data.datamodule import PersonalisationDataModule, load_split, prepare_record
from flythinker_pl.data.describe import show, stats
from flythinker_pl.data.prompts import ABSTRACT_WORDS, chat_prompt, render_profile_item
from flythinker_pl.data.readers import SPLITS
from flythinker_pl.data.retrieval import retrieve

from helpers import CONFIGS, ROOMY, fixture_cfg, raw


# Typed from LongLaMP's templates (REFERENCE.md), not from the package: recency k, newest first.
EXPECTED_MESSAGE = {
    (
        "product_review",
        2,
    ): '"5.0" is a rating for the product with description "A 10 ft instrument cable with gold plated jacks.". '
    '"Great cable" is summary for "No crackle at all and the jacks feel solid. I keep one in my gig bag.", and '
    '"3.0" is a rating for the product with description "Nickel wound electric guitar strings, light gauge.". '
    '"Strings are okay" is summary for "They sound bright for a week and then go dull. Fine for practice.". '
    "Following the given patterns Generate the review text written by a reviewer who has a given an overall "
    'rating of "5.0" for a product with description "A clip-on chromatic tuner with a backlit display.". '
    'The summary of the review text is "Best tuner I have owned".',
    (
        "abstract_generation",
        3,
    ): '"We compare subword tokenizers across 40 languages." is the abstract for the title "Multilingual Tokenizers", '
    'and "Attention cost grows quadratically with document length. We propose a sparse attention pattern for '
    'long documents and evaluate it on summarization." is the abstract for the title "Efficient Attention for '
    'Long Documents", and "We train a dual encoder for open-domain question answering. It outperforms BM25 on '
    'four benchmarks." is the abstract for the title "Dense Retrieval for Question Answering". Use the above '
    "abstracts as context to understand the style and language of the user and, Generate an abstract for the "
    'title "Sparse Attention for Long Documents" using the following items: sparse attention, long documents, '
    "summarization",
    (
        "topic_writing",
        2,
    ): '"Cast iron pizza night" is a summary for "Made pizza in the cast iron tonight. Crispy bottom, no stone '
    'needed.", and "Best flour for sourdough?" is a summary for "Which flour gives the best rise for sourdough? '
    'I have been using all-purpose.". Following the given patterns, Generate the content for a reddit post My '
    "first sourdough loaf finally rose",
}


@pytest.mark.parametrize("task,k", list(EXPECTED_MESSAGE))
@pytest.mark.parametrize("system_prompt", [None, "You write like the user."])
def test_rendered_prompt_is_the_longlamp_template_character_for_character(tokenizer, task, k, system_prompt):
    cfg = fixture_cfg(task, retriever="recency", k=k, system_prompt=system_prompt, **ROOMY)
    record = load_split(cfg, "train").records[0]
    example = prepare_record(record, cfg, tokenizer)
    system = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
    expected = f"{system}<|im_start|>user\n{EXPECTED_MESSAGE[task, k]}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(example["input_ids"][: example["prompt_len"]]) == expected
    assert tokenizer.decode(example["input_ids"][example["prompt_len"] :]) == record["output"] + "<|im_end|>"


def test_without_a_chat_template_the_plain_template_is_used(tokenizer):
    plain = tokenizer.__class__(
        tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    assert not plain.chat_template
    cfg = fixture_cfg("topic_writing", retriever="recency", k=2, **ROOMY)
    example = prepare_record(load_split(cfg, "train").records[0], cfg, plain)
    assert (
        plain.decode(example["input_ids"][: example["prompt_len"]])
        == EXPECTED_MESSAGE["topic_writing", 2] + "\n\nResponse:\n"
    )


def test_an_empty_profile_gives_a_prompt_without_history(tokenizer):
    cfg = fixture_cfg("topic_writing", k=3)
    record = load_split(cfg, "train").records[1]
    assert record["profile"] == []
    example = prepare_record(record, cfg, tokenizer)
    prompt = tokenizer.decode(example["input_ids"][: example["prompt_len"]])
    assert prompt == chat_prompt(tokenizer, record["input"], None)
    assert example["retrieved"] == []


LONGLAMP_FIELDS = {  # LongLaMP's retrieval code: (query from input, document from profile item)
    "product_review": (
        lambda inp: inp,
        lambda p: f"{p['overall']} {p['summary']} {p['description']} {p['reviewText']}",
    ),
    "abstract_generation": (
        lambda inp: inp[inp.find("items:") + len("items:") :].strip(),
        lambda p: f"{p['title']} {p['abstract']}",
    ),
    "topic_writing": (lambda inp: inp, lambda p: f"{p['summary']} {p['content']}"),
}


@pytest.mark.parametrize("task,setting", CONFIGS)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_bm25_top_k_equals_rank_bm25_on_longlamp_fields(task, setting, k):
    query_of, document_of = LONGLAMP_FIELDS[task]
    for split in SPLITS:
        for record in load_split(fixture_cfg(task, setting), split).records:
            if not record["profile"]:
                assert retrieve(record, task, "bm25", k) == []
                continue
            index = BM25Okapi([document_of(p).split() for p in record["profile"]])
            expected = index.get_top_n(query_of(record["input"]).split(), record["profile"], n=k)
            assert [record["profile"][i] for i in retrieve(record, task, "bm25", k)] == expected


def test_bm25_ranks_by_relevance_not_recency():
    record = load_split(fixture_cfg(), "train").records[0]  # the query is about a tuner, the oldest item too
    assert retrieve(record, "product_review", "bm25", 1) == [0]
    assert retrieve(record, "product_review", "recency", 1) == [2]


def test_random_retrieval_is_seeded_per_record_and_never_repeats_an_item():
    record = load_split(fixture_cfg("topic_writing", setting="temporal"), "test").records[0]
    draws = {tuple(retrieve(record, "topic_writing", "random", 2, seed)) for seed in range(20)}
    assert all(len(set(d)) == 2 for d in draws) and len(draws) > 1
    assert retrieve(record, "topic_writing", "random", 2, seed=3) == retrieve(record, "topic_writing", "random", 2, 3)
    assert sorted(retrieve(record, "topic_writing", "random", 10)) == [0, 1, 2]  # k > profile: every item once


@pytest.mark.parametrize("task,setting", CONFIGS)
@pytest.mark.parametrize("retriever", ["bm25", "recency", "random", "none"])
def test_every_config_loads_retrieves_renders_and_batches(tokenizer, task, setting, retriever):
    cfg = fixture_cfg(task, setting, retriever=retriever, k=2, batch_size=2, eval_batch_size=2)
    datamodule = PersonalisationDataModule(cfg, tokenizer)
    datamodule.setup()
    for split, loader in [
        ("train", datamodule.train_dataloader()),
        ("val", datamodule.val_dataloader()),
        ("test", datamodule.test_dataloader()),
        ("test", datamodule.predict_dataloader()),
    ]:
        records = raw(task, setting, split)
        batches = list(loader)
        assert sorted(i for b in batches for i in b["ids"]) == sorted(
            r.get("id", f"{split}-{n}") for n, r in enumerate(records)
        )
        assert sorted(ref for b in batches for ref in b["reference"]) == sorted(r["output"] for r in records)
    for example, record in zip(datamodule.examples["val"], raw(task, setting, "val")):
        prompt = tokenizer.decode(example["input_ids"][: example["prompt_len"]])
        assert record["input"] in prompt and prompt.endswith("<|im_start|>assistant\n")
        shown = len(example["retrieved"])
        assert shown == (0 if retriever == "none" else min(2, len(record["profile"])))


def _topic_records() -> dict[str, list[dict]]:
    return {split: raw("topic_writing", "user", split) for split in SPLITS}


def _write_layout(root: Path, layout: str) -> dict:
    """The topic_writing_user fixture in another on-disk layout; returns extra config options."""
    config_dir = root / "topic_writing_user"
    config_dir.mkdir(parents=True)
    for split, records in _topic_records().items():
        if layout == "jsonl":
            (config_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        elif layout == "parquet":
            pq.write_table(pa.Table.from_pylist(records), config_dir / f"{split}.parquet")
        elif layout == "hub_shards":
            pq.write_table(pa.Table.from_pylist(records), config_dir / f"{split}-00000-of-00001.parquet")
        elif layout == "split_files_directly":
            (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        elif layout == "files":
            (root / f"my_{split}.json").write_text(json.dumps(records))
    if layout == "files":
        return {"files": {split: str(root / f"my_{split}.json") for split in SPLITS}}
    return {}


@pytest.mark.parametrize("layout", ["jsonl", "parquet", "hub_shards", "split_files_directly", "files"])
def test_every_layout_reads_the_same_records(tmp_path, layout):
    options = _write_layout(tmp_path, layout)
    for split in SPLITS:
        expected = load_split(fixture_cfg("topic_writing"), split).records
        got = load_split(DataConfig(task="topic_writing", path=str(tmp_path), **options), split).records
        assert got == expected


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_datasets_save_to_disk_directory_reads_the_same_records(tmp_path, as_dict):
    datasets = pytest.importorskip("datasets")
    splits = {s: datasets.Dataset.from_list(r) for s, r in _topic_records().items()}
    if as_dict:
        datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "topic_writing_user"))
    else:
        for split, dataset in splits.items():
            dataset.save_to_disk(str(tmp_path / "topic_writing_user" / split))
    for split in SPLITS:
        got = load_split(DataConfig(task="topic_writing", path=str(tmp_path)), split).records
        assert got == load_split(fixture_cfg("topic_writing"), split).records


def test_the_hub_is_read_by_config_name(monkeypatch):
    calls = []

    def load_dataset(dataset_id, name, split):
        calls.append((dataset_id, name, split))
        return types.SimpleNamespace(to_list=lambda: raw("abstract_generation", "temporal", split))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = DataConfig(task="abstract_generation", setting="temporal", hub="LongLaMP/LongLaMP")
    assert load_split(cfg, "val").records[0]["name"] == "Ada Lovelace"
    assert calls == [("LongLaMP/LongLaMP", "abstract_generation_temporal", "val")]


@pytest.mark.parametrize("need", ["saved_dataset", "hub"])
def test_without_the_datasets_library_the_error_says_how_to_install_it(tmp_path, monkeypatch, need):
    saved = tmp_path / "topic_writing_user" / "train"
    saved.mkdir(parents=True)
    (saved / "state.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    cfg = DataConfig(task="topic_writing", **({"path": str(tmp_path)} if need == "saved_dataset" else {"hub": "x/y"}))
    with pytest.raises(ImportError, match=r"optional `datasets` library: pip install datasets"):
        load_split(cfg, "train")


def test_a_missing_split_names_the_expected_files(tmp_path):
    expected = r"no 'train' split for topic_writing_user.*train\{\.jsonl,\.json,\.parquet\}"
    with pytest.raises(FileNotFoundError, match=expected):
        load_split(DataConfig(task="topic_writing", path=str(tmp_path)), "train")


def test_stats_and_show_describe_what_the_model_reads(tokenizer):
    cfg = fixture_cfg(
        "product_review",
        retriever="recency",
        k=2,
        profile_tokens=40,
        **{k: v for k, v in ROOMY.items() if k != "profile_tokens"},
    )
    lines = stats(cfg, tokenizer).splitlines()
    assert [c.strip() for c in lines[2].split("|")[2:-1]] == ["train", "val", "test"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[4:]}
    assert rows["records"] == ["2", "1", "1"] and rows["users"] == ["2", "1", "1"]
    assert rows["empty profiles"] == ["1", "0", "0"]
    assert rows["hit profile budget (40)"] == ["1", "1", "1"]  # every non-empty history exceeds 40 tokens
    shown = show(fixture_cfg("product_review", retriever="recency", k=2, **ROOMY), tokenizer, "train", 0)
    assert EXPECTED_MESSAGE["product_review", 2] in shown
    assert raw("product_review", "user", "train")[0]["output"] in shown
    with pytest.raises(IndexError, match="train has 2 valid records"):
        show(cfg, tokenizer, "train", 5)


def test_abstracts_keep_their_first_750_words_whitespace_normalised():
    words = [f"w{n}" for n in range(ABSTRACT_WORDS + 50)]
    item = {"title": "T", "abstract": "  ".join(words[:10]) + "\n" + " ".join(words[10:]), "id": "1", "year": 2020}
    assert (
        render_profile_item("abstract_generation", item)
        == f'"{" ".join(words[:ABSTRACT_WORDS])}" is the abstract for the title "T"'
    )
