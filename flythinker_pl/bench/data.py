"""Data preparation throughput: read + validate, retrieve, render + tokenise N synthetic records.

    flythinker bench data [--records 20000] [--retriever bm25] [--k 1] [--reference-records 2000]

Synthetic product reviews (user setting, all three splits) with the paper's budgets
(1250 / 300 / 1000) and a byte-level BPE tokenizer trained on the records, as the tiny presets do.
Prints records/s per stage and in all. One pass, as in real use (each split is prepared once), and
the way PersonalisationDataModule prepares a split: one BM25 corpus per split, records encoded in
batched chunks (tests/test_encode_equals_reference.py: the examples equal the plain per-record path's).

Records/s depend on the machine (about 2x between two machines of the same kind), so the run also
times the reference path on the first --reference-records records of the train split, beside the fast
path on the same records: rank-bm25's BM25Okapi built per record and one record tokenised at a time.
Their ratio (`speed-up over the reference`) is what the fast path buys, on this machine, now.
"""

from __future__ import annotations

import tempfile
import time

from rank_bm25 import BM25Okapi

from ..config import DataConfig
from ..data.datamodule import load_split
from ..data.encode import encode_records
from ..data.readers import SPLITS
from ..data.retrieval import BM25Corpus, bm25_document, bm25_query, retrieve
from ..models import tiny

REVIEWS_PER_USER = 8


def fast_path(records: list[dict], cfg: DataConfig, tokenizer) -> None:
    corpus = BM25Corpus()  # as prepare_records does: one per split
    retrieved = [retrieve(r, cfg.task, cfg.retriever, cfg.k, cfg.seed, corpus) for r in records]
    encode_records(records, [[r["profile"][i] for i in shown] for r, shown in zip(records, retrieved)], cfg, tokenizer)


def reference_path(records: list[dict], cfg: DataConfig, tokenizer) -> None:
    """LongLaMP's way (bm25 only): a BM25Okapi index per record's profile, then that record alone tokenised."""
    for record in records:
        documents = [bm25_document(cfg.task, item).split() for item in record["profile"]]
        index = BM25Okapi(documents)
        shown = index.get_top_n(bm25_query(cfg.task, record["input"]).split(), list(range(len(documents))), n=cfg.k)
        encode_records([record], [[record["profile"][i] for i in shown]], cfg, tokenizer)  # one record at a time


def speed_up(records: list[dict], cfg: DataConfig, tokenizer) -> float:
    """Seconds of the reference path / seconds of the fast path, on the same records, side by side."""
    seconds = []
    for path in (reference_path, fast_path):
        start = time.perf_counter()
        path(records, cfg, tokenizer)
        seconds.append(time.perf_counter() - start)
    return seconds[0] / seconds[1]


def bench_data(records: int = 20_000, retriever: str = "bm25", k: int = 1, reference_records: int = 2_000) -> dict:
    with tempfile.TemporaryDirectory() as root:
        cfg = DataConfig(synthetic_dir=root, retriever=retriever, k=k)
        cfg.synthetic.num_users, cfg.synthetic.reviews_per_user = records // REVIEWS_PER_USER, REVIEWS_PER_USER
        load_split(cfg, "train")  # generates the set (not timed)
        tokenizer = tiny.train_tokenizer([r["output"] for r in load_split(cfg, "val").records])
        seconds = {"read + validate": 0.0, "retrieve": 0.0, "render + tokenise": 0.0}
        count = 0
        for split in SPLITS:
            start = time.perf_counter()
            loaded = load_split(cfg, split).records
            seconds["read + validate"] += time.perf_counter() - start
            start = time.perf_counter()
            corpus = BM25Corpus()  # as prepare_records does: one per split
            retrieved = [retrieve(r, cfg.task, cfg.retriever, cfg.k, cfg.seed, corpus) for r in loaded]
            seconds["retrieve"] += time.perf_counter() - start
            start = time.perf_counter()
            encode_records(
                loaded, [[r["profile"][i] for i in shown] for r, shown in zip(loaded, retrieved)], cfg, tokenizer
            )
            seconds["render + tokenise"] += time.perf_counter() - start
            count += len(loaded)
        result = {
            "records": count,
            **{f"{stage} records/s": round(count / s) for stage, s in seconds.items()},
            "total s": round(sum(seconds.values()), 2),
            "records/s": round(count / sum(seconds.values())),
        }
        if retriever == "bm25" and reference_records > 0:
            sample = load_split(cfg, "train").records[:reference_records]
            result[f"speed-up over the reference ({len(sample)} records)"] = round(speed_up(sample, cfg, tokenizer), 2)
    return result
