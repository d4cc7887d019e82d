"""Which profile items a prompt shows: LongLaMP's BM25 (rank-bm25 over whitespace tokens, the
task's query and document fields), recency, seeded random, or none. Results are profile indices,
most relevant first, and depend only on the record (so a split is retrieved once, in any order)."""
from __future__ import annotations

import random

from rank_bm25 import BM25Okapi

RETRIEVERS = ("bm25", "recency", "random", "none")


def bm25_query(task: str, query: str) -> str:
    """LongLaMP queries with the whole input, except abstracts: the keywords after "items:"."""
    if task == "abstract_generation" and "items:" in query:
        return query[query.index("items:") + len("items:"):].strip()
    return query  # (LongLaMP's abstract query is None without "items:"; the whole input is used here)


def bm25_document(task: str, item: dict) -> str:
    if task == "product_review":
        return f'{item["overall"]} {item["summary"]} {item["description"]} {item["reviewText"]}'
    if task == "abstract_generation":
        return f'{item["title"]} {item["abstract"]}'
    return f'{item["summary"]} {item["content"]}'


def bm25_top_k(task: str, query: str, profile: list[dict], k: int) -> list[int]:
    documents = [bm25_document(task, item).split() for item in profile]
    if not any(documents):  # rank-bm25 divides by the corpus' total length: keep profile order
        return list(range(min(k, len(profile))))
    index = BM25Okapi(documents)
    return index.get_top_n(bm25_query(task, query).split(), list(range(len(profile))), n=k)


def retrieve(record: dict, task: str, method: str, k: int, seed: int = 0) -> list[int]:
    """Indices into record["profile"] of the (at most) k items to show, most relevant first.

    random draws without replacement (LongLaMP's random.choices can repeat an item), seeded by
    (seed, record id) so that it does not depend on order, epoch or process."""
    profile = record["profile"]
    if method == "none" or k <= 0 or not profile:
        return []
    if method == "bm25":
        return bm25_top_k(task, record["input"], profile, k)
    if method == "recency":  # profiles are chronological: the k latest, newest first
        return list(range(len(profile) - 1, max(-1, len(profile) - 1 - k), -1))
    if method == "random":
        return random.Random(f"{seed}:{record['id']}").sample(range(len(profile)), min(k, len(profile)))
    raise ValueError(f"unknown retriever {method!r}; choose one of {', '.join(RETRIEVERS)}")
