"""Which profile items a prompt shows: LongLaMP's BM25 (rank-bm25's BM25Okapi over whitespace
tokens, the task's query and document fields), recency, seeded random, or none. Results are profile
indices, most relevant first, and depend only on the record (so a split is retrieved once, in any
order)."""
from __future__ import annotations

import math
import random
from collections import Counter
from functools import lru_cache
from typing import Optional

import numpy as np

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


@lru_cache(maxsize=64)
def _idf_by_document_frequency(corpus_size: int) -> np.ndarray:
    """rank-bm25's idf of a term in `df` of `corpus_size` documents, for every df (before its floor)."""
    return np.array([math.log(corpus_size - df + 0.5) - math.log(df + 0.5) for df in range(corpus_size + 1)])


class BM25Corpus:
    """BM25Okapi scores, equal to rank_bm25's to the last bit (the same floating-point operations in
    the same order), with each document's term counts computed once and reused by every profile that
    quotes it: an item sits in several profiles (a user's other items), and a split shares one
    corpus."""

    def __init__(self, k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self.term_ids: dict[str, int] = {}
        self.documents: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # text -> distinct term ids (in
        # order of first occurrence, as rank-bm25 counts them), their counts

    def document(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(distinct term ids in order of first occurrence, as rank-bm25 counts them; their counts; length)."""
        if text not in self.documents:
            terms = text.split()
            counts = Counter(terms)
            ids = [self.term_ids.setdefault(term, len(self.term_ids)) for term in counts]
            self.documents[text] = np.array(ids), np.array(list(counts.values())), len(terms)
        return self.documents[text]

    def scores(self, query: str, documents: list[str]) -> np.ndarray:
        """BM25Okapi([d.split() for d in documents]).get_scores(query.split())."""
        ids, counts, doc_len = zip(*map(self.document, documents))
        n, avgdl, doc_len = len(documents), sum(doc_len) / len(documents), np.array(doc_len)
        doc_of = np.repeat(np.arange(n), [len(i) for i in ids])
        ids, counts = np.concatenate(ids), np.concatenate(counts)
        # the profile's distinct terms (sorted ids), where each first occurs, and in how many documents
        terms, first, local, df = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
        idf = _idf_by_document_frequency(n)[df]
        query_ids = np.array([self.term_ids.get(term, -1) for term in query.split()], dtype=np.int64)
        where = np.searchsorted(terms, query_ids).clip(max=len(terms) - 1)
        where = where[terms[where] == query_ids]  # the query's terms in the profile, in query order
        if not len(where):  # (a term in no document adds exactly 0 to every score)
            return np.zeros(n)
        weights = idf[where]
        if (weights < 0).any():  # rank-bm25 floors a negative idf at epsilon * the mean idf, whose sum
            idf_sum = float(np.cumsum(idf[np.argsort(first)])[-1])  # runs in order of first occurrence
            weights[weights < 0] = self.epsilon * (idf_sum / len(terms))
        row = np.full(len(terms), -1)  # a row of term frequencies per query term (a repeated term: its last)
        row[where] = np.arange(len(where))
        entry_row = row[local]
        hit = entry_row >= 0
        frequency = np.zeros((len(where), n))
        frequency[entry_row[hit], doc_of[hit]] = counts[hit]
        frequency = frequency[row[where]]
        term_scores = weights[:, None] * (frequency * (self.k1 + 1) /
                                          (frequency + self.k1 * (1 - self.b + self.b * doc_len / avgdl)))
        return np.cumsum(term_scores, axis=0)[-1] + 0.0  # summed term by term, as rank-bm25 does (+0.0: no -0.0)

    def top_k(self, query: str, documents: list[str], k: int) -> list[int]:
        """Indices of the k best documents, best first (ties as rank-bm25's get_top_n breaks them)."""
        if not any(self.document(d)[2] for d in documents):  # rank-bm25 divides by the corpus'
            return list(range(min(k, len(documents))))  # total length: keep profile order
        return np.argsort(self.scores(query, documents))[::-1][:k].tolist()


def bm25_top_k(task: str, query: str, profile: list[dict], k: int, corpus: Optional[BM25Corpus] = None) -> list[int]:
    corpus = BM25Corpus() if corpus is None else corpus
    return corpus.top_k(bm25_query(task, query), [bm25_document(task, item) for item in profile], k)


def retrieve(record: dict, task: str, method: str, k: int, seed: int = 0,
             corpus: Optional[BM25Corpus] = None) -> list[int]:
    """Indices into record["profile"] of the (at most) k items to show, most relevant first.

    bm25 counts terms in `corpus` (share one across a split's records: each document is counted
    once). random draws without replacement (LongLaMP's random.choices can repeat an item), seeded
    by (seed, record id) so that it does not depend on order, epoch or process."""
    profile = record["profile"]
    if method == "none" or k <= 0 or not profile:
        return []
    if method == "bm25":
        return bm25_top_k(task, record["input"], profile, k, corpus)
    if method == "recency":  # profiles are chronological: the k latest, newest first
        return list(range(len(profile) - 1, max(-1, len(profile) - 1 - k), -1))
    if method == "random":
        return random.Random(f"{seed}:{record['id']}").sample(range(len(profile)), min(k, len(profile)))
    raise ValueError(f"unknown retriever {method!r}; choose one of {', '.join(RETRIEVERS)}")
