"""Data preparation throughput: read + validate, retrieve, render + tokenise N synthetic records.

    python -m flythinker_pl.data.bench_prepare [--records 20000] [--retriever bm25] [--k 1]

Synthetic product reviews (user setting, all three splits) with the paper's budgets
(1250 / 300 / 1000) and a byte-level BPE tokenizer trained on the records, as the tiny presets do.
Prints records/s per stage and in all. One pass, as in real use (each split is prepared once), and
the way PersonalisationDataModule prepares a split: one BM25 corpus per split, records encoded in
batched chunks (tests/test_data_speed.py: the examples equal the plain per-record path's).
"""
from __future__ import annotations

import argparse
import tempfile
import time

from ..config import DataConfig
from ..models import tiny
from .datamodule import load_split
from .encode import encode_records
from .readers import SPLITS
from .retrieval import BM25Corpus, retrieve

REVIEWS_PER_USER = 8


def bench_prepare(records: int = 20_000, retriever: str = "bm25", k: int = 1) -> dict:
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
            encode_records(loaded, [[r["profile"][i] for i in shown] for r, shown in zip(loaded, retrieved)], cfg,
                           tokenizer)
            seconds["render + tokenise"] += time.perf_counter() - start
            count += len(loaded)
    return {"records": count, **{f"{stage} records/s": round(count / s) for stage, s in seconds.items()},
            "total s": round(sum(seconds.values()), 2), "records/s": round(count / sum(seconds.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--retriever", default="bm25")
    parser.add_argument("--k", type=int, default=1)
    args = parser.parse_args()
    for name, value in bench_prepare(args.records, args.retriever, args.k).items():
        print(f"{name:>28}: {value}")


if __name__ == "__main__":
    main()
