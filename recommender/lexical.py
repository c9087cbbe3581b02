"""BM25 over stemmed, diacritic-free words, updated in place as articles come and go.

Library BM25 implementations (bm25s, rank-bm25) index a frozen corpus; a
newsroom adds and removes articles all day, and the ranker only needs the
scores of a few hundred candidates. So term statistics are kept here,
incrementally, and a sparse matrix over the whole corpus is built only for
full lexical search (the `lexical` strategy of the evaluation).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

K1 = 1.2
B = 0.75
MLT_MAX_TERMS = 25  # like Lucene's More-Like-This: the seed's 25 most telling terms


class LexicalIndex:
    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self._terms: list[str] = []  # term id -> term
        self._df = np.zeros(1024, dtype=np.int64)
        self._docs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # num -> (term ids, counts)
        self._total_len = 0
        self._matrix = None  # (nums, csr) cache for full search

    def clone(self) -> "LexicalIndex":
        copy = LexicalIndex()
        copy.vocab = dict(self.vocab)
        copy._terms = list(self._terms)
        copy._df = self._df.copy()
        copy._docs = dict(self._docs)  # the per-document arrays are replaced, never changed in place
        copy._total_len = self._total_len
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
        self._matrix = None

    def remove(self, num: int) -> None:
        doc = self._docs.pop(num, None)
        if doc is not None:
            self._df[doc[0]] -= 1
            self._total_len -= int(doc[1].sum())
            self._matrix = None

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

    def _bm25_rows(self, docs: list[tuple[np.ndarray, np.ndarray]]):
        from scipy.sparse import csr_matrix

        avgdl = self._total_len / max(len(self._docs), 1) or 1.0
        indptr = np.cumsum([0] + [len(d[0]) for d in docs])
        cols = np.concatenate([d[0] for d in docs]) if docs else np.zeros(0, dtype=np.int64)
        tf = np.concatenate([d[1] for d in docs]).astype(np.float64) if docs else np.zeros(0)
        lengths = np.repeat([float(d[1].sum()) for d in docs], np.diff(indptr)) if docs else np.zeros(0)
        weights = self.idf(cols) * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths / avgdl))
        return csr_matrix((weights, cols, indptr), shape=(len(docs), len(self.vocab)))

    def _query_vector(self, query: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        vec = np.zeros(len(self.vocab))
        vec[query[0]] = query[1]
        return vec

    def score(self, query: tuple[np.ndarray, np.ndarray], nums: Iterable[int]) -> np.ndarray:
        """BM25 of each of `nums` (0 for an unknown num) against the query."""
        nums = list(nums)
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        rows = self._bm25_rows([self._docs.get(n, empty) for n in nums])
        return rows @ self._query_vector(query)

    def score_terms(self, query: tuple[np.ndarray, np.ndarray], terms: list[str]) -> float:
        """BM25 of a document that is not in the index, such as a draft or the seed."""
        return float((self._bm25_rows([self._doc(terms, grow=False)]) @ self._query_vector(query))[0])

    def terms_of(self, num: int) -> list[str]:
        doc = self._docs.get(num)
        return [] if doc is None else [self._terms[i] for i in doc[0]]

    def idf_of(self, terms: Iterable[str]) -> dict[str, float]:
        known = sorted({t for t in terms if t in self.vocab})
        values = self.idf(np.asarray([self.vocab[t] for t in known], dtype=np.int64))
        return dict(zip(known, values.tolist()))

    def search(self, query: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nums) of the k best documents in the whole corpus."""
        if self._matrix is None:
            nums = np.fromiter(self._docs.keys(), dtype=np.int64, count=len(self._docs))
            self._matrix = (nums, self._bm25_rows(list(self._docs.values())))
        nums, matrix = self._matrix
        scores = matrix @ self._query_vector(query)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return scores[top], nums[top]
