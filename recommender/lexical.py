"""BM25 over stemmed, diacritic-free words, updated in place as articles come and go.

Library BM25 implementations (bm25s, rank-bm25) index a frozen corpus; a
newsroom adds and removes articles all day, and the ranker only needs the
scores of a few hundred candidates. So term statistics are kept here,
incrementally; full lexical search (a candidate source of the ranking) runs on
an inverted index built in bulk, with the documents changed since scored directly.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

K1 = 1.2
B = 0.75
REBUILD_MIN = 1000  # changed documents scored directly before the inverted index is rebuilt
MLT_MAX_TERMS = 25  # like Lucene's More-Like-This: the seed's 25 most telling terms


class LexicalIndex:
    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self._terms: list[str] = []  # term id -> term
        self._df = np.zeros(1024, dtype=np.int64)
        self._docs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # num -> (term ids, counts)
        self._total_len = 0
        self._postings: _Postings | None = None  # the inverted index, built on first full search

    def clone(self) -> "LexicalIndex":
        copy = LexicalIndex()
        copy.vocab = dict(self.vocab)
        copy._terms = list(self._terms)
        copy._df = self._df.copy()
        copy._docs = dict(self._docs)  # the per-document arrays are replaced, never changed in place
        copy._total_len = self._total_len
        copy._postings = self._postings  # immutable: a write replaces it
        return copy

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, num: int) -> bool:
        return num in self._docs

    def _ids(self, terms: Iterable[str], grow: bool) -> list[int]:
        out = []
        for term in terms:
            tid = self.vocab.get(term)
            if tid is None and grow:
                tid = self.vocab[term] = len(self.vocab)
                self._terms.append(term)
                if tid >= len(self._df):
                    self._df = np.concatenate([self._df, np.zeros(len(self._df), dtype=np.int64)])
            if tid is not None:
                out.append(tid)
        return out

    def _doc(self, terms: list[str], grow: bool) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(np.asarray(self._ids(terms, grow=grow), dtype=np.int64), return_counts=True)

    def add(self, num: int, terms: list[str]) -> None:
        self.remove(num)
        ids, counts = self._doc(terms, grow=True)
        self._docs[num] = (ids, counts)
        self._df[ids] += 1
        self._total_len += int(counts.sum())
        self._changed(num)

    def remove(self, num: int) -> None:
        doc = self._docs.pop(num, None)
        if doc is not None:
            self._df[doc[0]] -= 1
            self._total_len -= int(doc[1].sum())
            self._changed(num)

    def _changed(self, num: int) -> None:
        if self._postings is not None:
            self._postings = self._postings.changed(num)

    def idf(self, term_ids: np.ndarray) -> np.ndarray:
        n = max(len(self._docs), 1)
        df = self._df[term_ids]
        return np.log1p((n - df + 0.5) / (df + 0.5))

    def query(self, terms: list[str], max_terms: int = MLT_MAX_TERMS) -> tuple[np.ndarray, np.ndarray]:
        """The seed's `max_terms` highest tf-idf terms, as (term ids, weights)."""
        counts = Counter(self._ids(terms, grow=False))
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        ids = np.fromiter(counts.keys(), dtype=np.int64)
        tfidf = np.fromiter(counts.values(), dtype=np.float64) * self.idf(ids)
        top = np.argsort(-tfidf, kind="stable")[:max_terms]
        return ids[top], np.ones(len(top))

    def score(self, query: tuple[np.ndarray, np.ndarray], nums: Iterable[int]) -> np.ndarray:
        """BM25 of each of `nums` (0 for an unknown num) against the query, from the
        documents' own term arrays: only their entries for the query's terms are weighed."""
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        return self._score_docs(query, [self._docs.get(int(n), empty) for n in nums])

    def _score_docs(self, query: tuple[np.ndarray, np.ndarray], docs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        if not docs or len(query[0]) == 0:
            return np.zeros(len(docs))
        cols = np.concatenate([d[0] for d in docs])
        tf = np.concatenate([d[1] for d in docs]).astype(np.float64)
        rows = np.repeat(np.arange(len(docs)), [len(d[0]) for d in docs])
        lengths = np.bincount(rows, weights=tf, minlength=len(docs))
        order = np.argsort(query[0])
        terms, weights = query[0][order], (query[1] * self.idf(query[0]))[order]
        at = np.minimum(np.searchsorted(terms, cols), len(terms) - 1)
        hit = terms[at] == cols
        avgdl = self._total_len / max(len(self._docs), 1) or 1.0
        f, r = tf[hit], rows[hit]
        bm25 = weights[at[hit]] * f * (K1 + 1) / (f + K1 * (1 - B + B * lengths[r] / avgdl))
        return np.bincount(r, weights=bm25, minlength=len(docs))

    def score_terms(self, query: tuple[np.ndarray, np.ndarray], terms: list[str]) -> float:
        """BM25 of a document that is not in the index, such as a draft or the seed."""
        return float(self._score_docs(query, [self._doc(terms, grow=False)])[0])

    def terms_of(self, num: int) -> list[str]:
        doc = self._docs.get(num)
        return [] if doc is None else [self._terms[i] for i in doc[0]]

    def idf_of(self, terms: Iterable[str]) -> dict[str, float]:
        known = sorted({t for t in terms if t in self.vocab})
        values = self.idf(np.asarray([self.vocab[t] for t in known], dtype=np.int64))
        return dict(zip(known, values.tolist()))

    def search(self, query: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nums) of the k best documents in the whole corpus, from the
        inverted index: the cost is that of the query terms' postings, not of the corpus."""
        postings = self._current_postings()
        weights = np.zeros(len(self.vocab))
        weights[query[0]] = query[1] * self.idf(query[0])
        main = postings.scores(weights, self._total_len / max(len(self._docs), 1) or 1.0)
        delta = sorted(n for n in postings.delta if n in self._docs)
        extra = self._score_docs(query, [self._docs[n] for n in delta]) if delta else np.zeros(0)
        scores = np.concatenate([main, extra])
        nums = np.concatenate([postings.nums, np.asarray(delta, dtype=np.int64)])
        hits = np.flatnonzero(scores > 0)  # usually a small share of the corpus
        scores, nums = scores[hits], nums[hits]
        k = min(k, len(hits))
        if k == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((nums[top], -scores[top]))]
        return scores[top], nums[top]

    def _current_postings(self) -> "_Postings":
        """The inverted index, rebuilt in bulk once the documents changed since its
        last build outnumber a tenth of it (a main-plus-delta design, like the vectors)."""
        postings = self._postings
        if postings is None or len(postings.delta) > max(REBUILD_MIN, len(postings.nums) // 10):
            postings = self._postings = _Postings.build(self)
        return postings


class _Postings:
    """A term-major (CSC) matrix of term counts, built in bulk, plus the documents
    changed since (`delta`, scored directly). BM25 is computed at query time on the
    query terms' entries only, with the current statistics, so it is exact. Never
    changed in place: a write makes a new one sharing the matrix."""

    def __init__(self, nums: np.ndarray, counts, lengths: np.ndarray, row_of: dict[int, int], dead: np.ndarray,
                 delta: frozenset[int]):
        self.nums, self.counts, self.lengths, self.row_of = nums, counts, lengths, row_of
        self.dead, self.delta = dead, delta

    @classmethod
    def build(cls, lexical: LexicalIndex) -> "_Postings":
        from scipy.sparse import csc_matrix

        docs = list(lexical._docs.values())
        nums = np.fromiter(lexical._docs.keys(), dtype=np.int64, count=len(docs))
        indptr = np.cumsum([0] + [len(d[0]) for d in docs])
        cols = np.concatenate([d[0] for d in docs]) if docs else np.zeros(0, dtype=np.int64)
        tf = np.concatenate([d[1] for d in docs]).astype(np.float32) if docs else np.zeros(0, dtype=np.float32)
        rows = np.repeat(np.arange(len(docs)), np.diff(indptr))
        counts = csc_matrix((tf, (rows, cols)), shape=(len(docs), len(lexical.vocab)))
        lengths = np.array([float(d[1].sum()) for d in docs])
        return cls(nums, counts, lengths, {int(n): i for i, n in enumerate(nums)}, np.zeros(len(docs), dtype=bool),
                   frozenset())

    def changed(self, num: int) -> "_Postings":
        dead = self.dead
        row = self.row_of.get(num)
        if row is not None and not dead[row]:
            dead = dead.copy()
            dead[row] = True
        return _Postings(self.nums, self.counts, self.lengths, self.row_of, dead, self.delta | {num})

    def scores(self, weights: np.ndarray, avgdl: float) -> np.ndarray:
        """BM25 of every document of the matrix for per-term query weights (idf included)."""
        terms = np.flatnonzero(weights[: self.counts.shape[1]])
        if len(terms) == 0 or len(self.nums) == 0:
            return np.zeros(len(self.nums))
        sub = self.counts[:, terms]
        tf = sub.data.astype(np.float64)
        rows = sub.indices
        per_entry = np.repeat(weights[terms], np.diff(sub.indptr))
        bm25 = per_entry * tf * (K1 + 1) / (tf + K1 * (1 - B + B * self.lengths[rows] / avgdl))
        scores = np.bincount(rows, weights=bm25, minlength=len(self.nums))
        scores[self.dead] = 0.0
        return scores
