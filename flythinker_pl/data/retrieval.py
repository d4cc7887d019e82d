"""Which profile items a prompt shows: LongLaMP's BM25 (rank-bm25's BM25Okapi over whitespace
tokens, the task's query and document fields), recency, seeded random, or none. Results are profile
indices, most relevant first, and depend only on the record (so a split is retrieved once, in any
order)."""

from __future__ import annotations

import math
import random
from collections import Counter
from functools import lru_cache
from itertools import count
from typing import Optional

import numpy as np

RETRIEVERS = ("bm25", "recency", "random", "none")
_NO_ENTRY = np.iinfo(np.int64).max


def bm25_query(task: str, query: str) -> str:
    """LongLaMP queries with the whole input, except abstracts: the keywords after "items:"."""
    if task == "abstract_generation" and "items:" in query:
        return query[query.index("items:") + len("items:") :].strip()
    return query  # (LongLaMP's abstract query is None without "items:"; the whole input is used here)


def bm25_document(task: str, item: dict) -> str:
    if task == "product_review":
        return f"{item['overall']} {item['summary']} {item['description']} {item['reviewText']}"
    if task == "abstract_generation":
        return f"{item['title']} {item['abstract']}"
    return f"{item['summary']} {item['content']}"


@lru_cache(maxsize=1024)
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
        self.documents: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        # scratch per term id, unset again after each profile (so a profile's terms need no sort): in
        # how many of its documents, its first entry, its row of query term frequencies
        self._df = self._first = self._row = np.zeros(0, dtype=np.int64)

    def document(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(distinct term ids in order of first occurrence, as rank-bm25 counts them; their counts; length)."""
        if text not in self.documents:
            terms = text.split()
            counts = Counter(terms)
            self.term_ids.update(zip([t for t in counts if t not in self.term_ids], count(len(self.term_ids))))
            self.documents[text] = (
                np.fromiter(map(self.term_ids.__getitem__, counts), np.int64, len(counts)),
                np.fromiter(counts.values(), np.int64, len(counts)),
                len(terms),
            )
        return self.documents[text]

    def scores(self, query: str, documents: list[str]) -> np.ndarray:
        """BM25Okapi([d.split() for d in documents]).get_scores(query.split())."""
        ids, counts, doc_len = zip(*map(self.document, documents))
        n, avgdl, doc_len = len(documents), sum(doc_len) / len(documents), np.array(doc_len)
        doc_of = np.repeat(np.arange(n), [len(i) for i in ids])
        ids, counts = np.concatenate(ids), np.concatenate(counts)
        entries = np.arange(len(ids))
        query_ids = np.array([self.term_ids.get(term, -1) for term in query.split()], dtype=np.int64)
        if len(self._df) <= len(self.term_ids):  # one spare slot at the end: id -1, a term in no document
            size = 2 * len(self.term_ids) + 1
            self._df, self._first, self._row = np.zeros(size, np.int64), np.full(size, _NO_ENTRY), np.full(size, -1)
        df, first, row = self._df, self._first, self._row
        np.add.at(df, ids, 1)
        np.minimum.at(first, ids, entries)
        entry_df, is_first, query_df = df[ids], first[ids] == entries, df[query_ids]
        query_ids, query_df = query_ids[query_df > 0], query_df[query_df > 0]  # the others add exactly 0
        row[query_ids] = np.arange(len(query_ids))  # a term's row (a repeated query term: one of its rows)
        entry_row, query_row = row[ids], row[query_ids]
        df[ids], first[ids], row[query_ids] = 0, _NO_ENTRY, -1
        if not len(query_ids):
            return np.zeros(n)
        idf = _idf_by_document_frequency(n)
        weights = idf[query_df]
        if (weights < 0).any():  # rank-bm25 floors a negative idf at epsilon * the mean idf, whose sum
            first_df = entry_df[is_first]  # runs over the terms in order of first occurrence
            weights[weights < 0] = self.epsilon * (float(np.cumsum(idf[first_df])[-1]) / len(first_df))
        hit = entry_row >= 0
        frequency = np.zeros((len(query_ids), n))
        frequency[entry_row[hit], doc_of[hit]] = counts[hit]
        frequency = frequency[query_row]
        term_scores = weights[:, None] * (
            frequency * (self.k1 + 1) / (frequency + self.k1 * (1 - self.b + self.b * doc_len / avgdl))
        )
        return np.cumsum(term_scores, axis=0)[-1] + 0.0  # summed term by term, as rank-bm25 does (+0.0: no -0.0)

    def top_k(self, query: str, documents: list[str], k: int) -> list[int]:
        """Indices of the k best documents, best first (ties as rank-bm25's get_top_n breaks them)."""
        if not any(self.document(d)[2] for d in documents):  # rank-bm25 divides by the corpus'
            return list(range(min(k, len(documents))))  # total length: keep profile order
        return np.argsort(self.scores(query, documents))[::-1][:k].tolist()


def bm25_top_k(task: str, query: str, profile: list[dict], k: int, corpus: Optional[BM25Corpus] = None) -> list[int]:
    corpus = BM25Corpus() if corpus is None else corpus
    return corpus.top_k(bm25_query(task, query), [bm25_document(task, item) for item in profile], k)


def retrieve(
    record: dict, task: str, method: str, k: int, seed: int = 0, corpus: Optional[BM25Corpus] = None
) -> list[int]:
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
