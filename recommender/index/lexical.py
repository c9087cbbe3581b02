"""BM25 over stemmed, diacritic-free words, updated in place as articles come and go.

Library BM25 implementations (bm25s, rank-bm25) index a frozen corpus; a
newsroom adds and removes articles all day, and the ranker only needs the
scores of a few hundred candidates. So term statistics are kept here,
incrementally; full lexical search (a candidate source of the ranking) runs on
an inverted index built in bulk, with the documents changed since scored directly.

Documents live in a `_Base` (one CSR of term ids and counts for the whole
archive: about 8 bytes a distinct term of a document, memory-mapped when read
back from an index version) plus a small dictionary of those changed since; a
Python object per document would take gigabytes at a million articles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scipy import sparse

import json
import mmap
import os
import tempfile
import uuid
from functools import partial
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from recommender.index.columns import ABSENT, RowMap, where_in_sorted
from recommender.index.files import digest, fsync_dir, verify, write_file
from recommender.index.terms import UNKNOWN, Vocabulary

K1 = 1.2
B = 0.75
REBUILD_MIN = 1000  # changed documents scored directly before the inverted index is rebuilt
MLT_MAX_TERMS = 25  # like Lucene's More-Like-This: the seed's 25 most telling terms
COMMON_SHARE, COMMON_MIN_DOCS = 0.02, 1000  # a term in more documents than both drives no search
# ... nor one in more than this many, whatever the archive's size (like More-Like-This's
# max_doc_freq, a count): a story is a dozen articles, so a term in thousands does not
# find it, and without the cap a search's cost grew with the archive (eval/bench_scale.py).
COMMON_MAX_DOCS = 5000
FOLD_MIN = 20_000  # changed documents kept apart before they are folded into the base

Doc = tuple[np.ndarray, np.ndarray]  # (term ids, counts)
# A term's count in a document, clipped: 2 bytes, not 4, for each of the 60 million entries of a
# million synthetic articles' text; no news article repeats a word 65,535 times.
COUNT = np.uint16


def as_counts(counts: np.ndarray) -> np.ndarray:
    return np.minimum(counts, np.iinfo(COUNT).max).astype(COUNT)


def ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The positions start, start + 1, ... of each (start, size) run, runs one after the
    other: the entries of many rows of a CSR gathered in one step."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    return np.arange(int(np.sum(sizes))) + np.repeat(starts - offsets, sizes)


def _save_array(array: np.ndarray, fh: BinaryIO) -> None:
    np.save(fh, array)


class _Base:
    """Documents as one CSR: row i is document nums[i] (nums sorted). Never changed in place."""

    ARRAYS = ("nums", "indptr", "ids", "counts")

    def __init__(self, nums: np.ndarray, indptr: np.ndarray, ids: np.ndarray, counts: np.ndarray,
                 token: str | None = None, checksums: dict[str, str] | None = None):
        self.nums, self.indptr, self.ids, self.counts = nums, indptr, ids, counts
        self.token = token or uuid.uuid4().hex  # names its files: a base is written once
        self.checksums = checksums or {}  # its files' SHA-256, by name under the lexical part's folder
        self._rows: RowMap | None = None

    def rows(self, nums: np.ndarray) -> np.ndarray:
        """The row of each of `nums`, ABSENT for those not in the base."""
        return self._row_map().rows(nums)

    def _row_map(self) -> RowMap:
        if self._rows is None:  # a race builds it twice, to the same result
            self._rows = RowMap(np.asarray(self.nums))
        return self._rows

    @classmethod
    def of(cls, docs: dict[int, Doc]) -> "_Base":
        return cls.empty().merged(set(), docs)

    def write(self, directory: Path) -> dict[str, str]:
        """Into `directory`/base-<token>, unless already there (a rename makes it appear
        whole, each file durable first); the files' digests."""
        final = directory / f"base-{self.token}"
        if final.exists() and self.checksums:
            return self.checksums
        if not final.exists():
            fresh = Path(tempfile.mkdtemp(dir=directory, prefix=".base."))
            for name in self.ARRAYS:
                write_file(fresh / f"{name}.npy", partial(_save_array, np.ascontiguousarray(getattr(self, name))))
            os.replace(fresh, final)
            fsync_dir(directory)
        self.checksums = {f"{final.name}/{name}.npy": digest(final / f"{name}.npy") for name in self.ARRAYS}
        return self.checksums

    @classmethod
    def read(cls, directory: Path, token: str, checksums: dict[str, str]) -> "_Base":
        mine = {name: value for name, value in checksums.items() if name.startswith(f"base-{token}/")}
        for name in cls.ARRAYS:
            verify(directory / f"base-{token}" / f"{name}.npy", mine.get(f"base-{token}/{name}.npy"))
        # Plain arrays over the maps: a numpy memmap slice costs a Python object per access.
        arrays = {name: np.load(directory / f"base-{token}" / f"{name}.npy", mmap_mode="r").view(np.ndarray)
                  for name in cls.ARRAYS}
        return cls(**arrays, token=token, checksums=mine)

    def release(self, names: Iterable[str] = ARRAYS) -> None:
        """Let the kernel drop the pages of the files this base maps (they are read back
        on demand): once the inverted index is built from them, a server that mostly
        serves precomputed lists touches few of them, yet they counted as its memory."""
        for name in names:
            mapped = getattr(getattr(self, name), "base", None)
            mapping = getattr(mapped, "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise"):
                mapping.madvise(mmap.MADV_DONTNEED)

    @classmethod
    def empty(cls) -> "_Base":
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, COUNT))

    def row(self, num: int) -> int | None:
        row = self._row_map().row(num)
        return None if row == ABSENT else row

    def doc(self, row: int) -> Doc:
        lo, hi = self.indptr[row], self.indptr[row + 1]
        return self.ids[lo:hi], self.counts[lo:hi]

    def alive(self, gone: Iterable[int]) -> np.ndarray:
        keep = np.ones(len(self.nums), dtype=bool)
        gone = np.fromiter(gone, dtype=np.int64)
        if len(gone):
            keep[np.isin(self.nums, gone)] = False
        return keep

    def appended(self, block: "_Base") -> "_Base":
        """A new base: this one's documents, then `block`'s (none of them in this one)."""
        return _Base(np.concatenate([self.nums, block.nums]),
                     np.concatenate([self.indptr, block.indptr[1:] + self.indptr[-1]]),
                     np.concatenate([self.ids, block.ids]), np.concatenate([self.counts, block.counts]))

    def merged(self, gone: set[int], docs: dict[int, Doc]) -> "_Base":
        """A new base: this one without `gone`, then `docs`. Its entries are written once
        into arrays of their final size (rows are not sorted by num: a RowMap finds them),
        since at a million articles each copy is 200 MB and they all counted at once."""
        keep = self.alive(gone)
        lengths = np.diff(self.indptr)
        sizes = np.concatenate([lengths[keep], [len(d[0]) for d in docs.values()]]).astype(np.int64)
        kept = int(sizes[: int(keep.sum())].sum())
        ids, counts = np.empty(int(sizes.sum()), dtype=np.int32), np.empty(int(sizes.sum()), dtype=COUNT)
        for source, out, part in ((self.ids, ids, 0), (self.counts, counts, 1)):
            if source.dtype != out.dtype:  # an index version saved with 4-byte counts: copied once
                source = as_counts(source)
            if keep.all():
                out[:kept] = source
            else:
                np.compress(np.repeat(keep, lengths), source, out=out[:kept])
            if docs:
                out[kept:] = np.concatenate([d[part] for d in docs.values()])
            self.release([self.ARRAYS[2 + part]])  # copied: its pages need not count while the next one is
        nums = np.concatenate([self.nums[keep], np.fromiter(docs.keys(), dtype=np.int64, count=len(docs))])
        return _Base(nums, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), ids, counts)


class LexicalIndex:
    def __init__(self) -> None:
        self.vocab = Vocabulary()
        self._known = 0  # terms of the (shared) vocabulary this index knows: ids below
        self._df = np.zeros(1024, dtype=np.int64)
        self._base = _Base.empty()
        self._gone: set[int] = set()  # base documents removed or replaced since the base was built
        self._docs: dict[int, Doc] = {}  # documents added or replaced since
        self._count = 0
        self._total_len = 0
        self._postings: _Postings | None = None  # the inverted index, built on first full search
        self._changed_nums: np.ndarray | None = None  # the nums of _docs and _gone, as an array

    def clone(self) -> "LexicalIndex":
        copy = LexicalIndex()
        # Shared, not copied (a million terms per write): both only ever grow, and each side
        # knows only the first `_known` terms, so a term the other side adds does not exist here.
        copy.vocab, copy._known = self.vocab, self._known
        copy._df = self._df.copy()
        copy._base = self._base  # immutable: a fold replaces it
        copy._gone = set(self._gone)
        copy._docs = dict(self._docs)  # the per-document arrays are replaced, never changed in place
        copy._count, copy._total_len = self._count, self._total_len
        copy._postings = self._postings  # immutable: a write replaces it
        return copy

    def __len__(self) -> int:
        return self._count

    def __contains__(self, num: int) -> bool:
        return self.doc(num) is not None

    def nums(self) -> np.ndarray:
        """Every document's num, sorted."""
        base = self._base.nums[self._base.alive(self._gone)]
        return np.union1d(base, np.fromiter(self._docs.keys(), dtype=np.int64, count=len(self._docs)))

    def doc(self, num: int) -> Doc | None:
        """(term ids, counts) of a document, or None."""
        num = int(num)
        found = self._docs.get(num)
        if found is not None or num in self._gone:
            return found
        row = self._base.row(num)
        return None if row is None else self._base.doc(row)

    def _ids(self, terms: Iterable[str], grow: bool) -> np.ndarray:
        """The terms' ids, in order; `grow`: new terms get one (a write), else terms this
        index does not know are left out (a query)."""
        terms = terms if isinstance(terms, list) else list(terms)
        found = self.vocab.ids(terms)
        if not grow:
            return found[(found != UNKNOWN) & (found < self._known)]
        new: dict[str, int] = {}
        for i in np.flatnonzero(found == UNKNOWN).tolist():
            term = terms[i]
            if term not in new:  # a new term twice in one call gets one id
                new[term] = self.vocab.add(term)
            found[i] = new[term]
        if len(found) and found.max() >= self._known:  # new here, or added by another clone
            self._known = len(self.vocab)
            if self._known > len(self._df):
                self._df = np.concatenate([self._df, np.zeros(max(len(self._df), self._known), dtype=np.int64)])
        return found

    def _doc(self, terms: list[str], grow: bool) -> Doc:
        ids, counts = np.unique(self._ids(terms, grow=grow).astype(np.int32), return_counts=True)
        return ids, as_counts(counts)

    def add(self, num: int, terms: list[str]) -> None:
        self._put(num, self._doc(terms, grow=True))

    def add_many(self, nums: list[int], docs: list[list[str]]) -> None:
        """`add` of each (num, terms), the term counts taken in one vectorised step. While
        the index is being built, new documents are appended to the base as a block
        instead of one by one."""
        if not nums:
            return
        ids = self._ids([t for terms in docs for t in terms], grow=True)
        rows = np.repeat(np.arange(len(docs)), [len(terms) for terms in docs])
        order = np.lexsort((ids, rows))
        rows, ids = rows[order], ids[order]
        first = np.flatnonzero(np.concatenate([[True], (rows[1:] != rows[:-1]) | (ids[1:] != ids[:-1])]))[: len(ids)]
        counts = as_counts(np.diff(np.append(first, len(ids))))
        rows, ids = rows[first], ids[first].astype(np.int32)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(docs)))]).astype(np.int64)
        block = _Base(np.asarray(nums, dtype=np.int64), indptr, ids, counts)
        if self._building() and len(set(nums)) == len(nums) and not (self._base.rows(block.nums) != ABSENT).any():
            self._base = self._base.appended(block)
            self.vocab.freeze()
            self._df += np.bincount(ids, minlength=len(self._df))
            self._count += len(nums)
            self._total_len += int(counts.sum(dtype=np.int64))
            self._changed_nums = None
            return
        for row, num in enumerate(nums):
            self._put(num, block.doc(row))

    def _building(self) -> bool:
        """No inverted index to keep current, nothing changed since the base, and a base
        never written (one read back or saved is kept: a later save adds only changes)."""
        return self._postings is None and not self._docs and not self._gone and not self._base.checksums

    def _put(self, num: int, doc: Doc) -> None:
        self.remove(num)
        ids, counts = doc
        self._docs[num] = (ids, counts)
        self._df[ids] += 1
        self._count += 1
        self._total_len += int(counts.sum())
        self._changed(num)
        if len(self._docs) > max(FOLD_MIN, len(self._base.nums) // 8):
            self.fold()

    def remove(self, num: int) -> None:
        doc = self.doc(num)
        if doc is None:
            return
        if self._docs.pop(num, None) is None:
            self._gone.add(num)
        self._df[doc[0]] -= 1
        self._count -= 1
        self._total_len -= int(doc[1].sum())
        self._changed(num)

    def fold(self) -> None:
        """Fold the changed documents into a new base (O(archive), once per many writes)."""
        self._base = self._base.merged(self._gone, self._docs)
        self._gone, self._docs, self._changed_nums = set(), {}, None

    def _changed(self, num: int) -> None:
        self._changed_nums = None
        if self._postings is not None:
            self._postings = self._postings.changed(num)

    def idf(self, term_ids: np.ndarray) -> np.ndarray:
        n = max(self._count, 1)
        df = self._df[term_ids]
        return np.log1p((n - df + 0.5) / (df + 0.5))

    def query(self, terms: list[str], max_terms: int = MLT_MAX_TERMS) -> tuple[np.ndarray, np.ndarray]:
        """The seed's `max_terms` highest tf-idf terms, as (term ids, weights)."""
        return self._query(*np.unique(self._ids(terms, grow=False), return_index=True, return_counts=True),
                           max_terms=max_terms)

    def query_and_own(self, terms: list[str], max_terms: int = MLT_MAX_TERMS) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                                      float]:
        """`query`, and the BM25 of a document of `terms` against it (`score_terms`): the
        terms looked up in the vocabulary once for both (a list's ranking asked both of three
        indexes: its vocabulary lookups were 7 % of its time at 200,000, these repeats 3 of them)."""
        ids, first, counts = np.unique(self._ids(terms, grow=False), return_index=True, return_counts=True)
        query = self._query(ids, first, counts, max_terms=max_terms)
        return query, float(self._score_docs(query, [(ids.astype(np.int32), as_counts(counts))])[0])

    def _query(self, ids: np.ndarray, first: np.ndarray, counts: np.ndarray, max_terms: int
               ) -> tuple[np.ndarray, np.ndarray]:
        if not len(ids):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        in_order = np.argsort(first)  # the terms as the seed names them: ties keep that order
        ids, counts = ids[in_order], counts[in_order]
        tfidf = counts.astype(np.float64) * self.idf(ids)
        top = np.argsort(-tfidf, kind="stable")[:max_terms]
        return ids[top], np.ones(len(top))

    def score(self, query: tuple[np.ndarray, np.ndarray], nums: Iterable[int]) -> np.ndarray:
        """BM25 of each of `nums` (0 for an unknown num) against the query, from the
        documents' own term arrays: only their entries for the query's terms are weighed."""
        nums = np.asarray(nums if isinstance(nums, np.ndarray) else list(nums), dtype=np.int64)
        if len(nums) == 0 or len(query[0]) == 0:
            return np.zeros(len(nums))
        return self._bm25(query, *self._entries(nums), len(nums))

    def _entries(self, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(term ids, counts, position in `nums`) of the documents' entries: those in the
        base gathered in one vectorised step, the few changed since one by one."""
        base = self._base
        changed = np.zeros(len(nums), dtype=bool)
        if self._docs or self._gone:
            if self._changed_nums is None:  # kept until the next write: tens of thousands after a load
                self._changed_nums = np.sort(np.fromiter(self._docs.keys() | self._gone, dtype=np.int64))
            known = self._changed_nums
            changed = where_in_sorted(known, nums) != ABSENT
        at = base.rows(nums)
        in_base = (at != ABSENT) & ~changed
        rows = at[in_base]
        starts, sizes = base.indptr[rows], base.indptr[rows + 1] - base.indptr[rows]
        take = ranges(starts, sizes)
        parts = [(base.ids[take], base.counts[take], np.repeat(np.flatnonzero(in_base), sizes))]
        for i in np.flatnonzero(changed):
            doc = self._docs.get(int(nums[i]))
            if doc is not None:
                parts.append((doc[0], doc[1], np.full(len(doc[0]), i)))
        ids, counts, positions = (np.concatenate([p[j] for p in parts]) for j in range(3))
        return ids, counts, positions

    def _score_docs(self, query: tuple[np.ndarray, np.ndarray], docs: list[Doc]) -> np.ndarray:
        if not docs or len(query[0]) == 0:
            return np.zeros(len(docs))
        cols = np.concatenate([d[0] for d in docs])
        tf = np.concatenate([d[1] for d in docs])
        rows = np.repeat(np.arange(len(docs)), [len(d[0]) for d in docs])
        return self._bm25(query, cols, tf, rows, len(docs))

    def _bm25(self, query: tuple[np.ndarray, np.ndarray], cols: np.ndarray, tf: np.ndarray, rows: np.ndarray,
              n: int) -> np.ndarray:
        tf = tf.astype(np.float64)
        lengths = np.bincount(rows, weights=tf, minlength=n)
        order = np.argsort(query[0])
        terms, weights = query[0][order], (query[1] * self.idf(query[0]))[order]
        at = np.minimum(np.searchsorted(terms, cols), len(terms) - 1)
        hit = terms[at] == cols
        avgdl = self._total_len / max(self._count, 1) or 1.0
        f, r = tf[hit], rows[hit]
        bm25 = weights[at[hit]] * f * (K1 + 1) / (f + K1 * (1 - B + B * lengths[r] / avgdl))
        return np.bincount(r, weights=bm25, minlength=n)

    def score_terms(self, query: tuple[np.ndarray, np.ndarray], terms: list[str]) -> float:
        """BM25 of a document that is not in the index, such as a draft or the seed."""
        return float(self._score_docs(query, [self._doc(terms, grow=False)])[0])

    def terms_of(self, num: int) -> list[str]:
        doc = self.doc(num)
        return [] if doc is None else self.vocab.take(doc[0].tolist())

    def term_ids(self, terms: list[str]) -> np.ndarray:
        """The ids of the terms this index knows, in order."""
        return self._ids(terms, grow=False)

    def shared_among(self, num: int, term_ids: np.ndarray) -> np.ndarray:
        """The positions in `term_ids` (sorted, distinct) of the terms document `num` holds:
        a list's reasons ask this of ten documents of about sixty terms each."""
        doc = self.doc(num)
        if doc is None:
            return np.zeros(0, dtype=np.int64)
        # A binary search each: np.isin sorts both arrays on every call (8 % of a list's time once).
        at = where_in_sorted(term_ids, doc[0])
        return at[at != ABSENT]

    def bag_of(self, num: int) -> list[str] | None:
        """The terms a document was added with, each as often, in another order (what
        `query` and `score_terms` read); None when it is not in the index."""
        doc = self.doc(num)
        if doc is None:
            return None
        return [term for term, c in zip(self.vocab.take(doc[0].tolist()), doc[1].tolist()) for _ in range(c)]

    def idf_of(self, terms: Iterable[str]) -> dict[str, float]:
        unique = sorted(set(terms))
        ids = self.vocab.ids(unique)
        known = (ids != UNKNOWN) & (ids < self._known)
        return dict(zip([t for t, k in zip(unique, known.tolist()) if k], self.idf(ids[known]).tolist()))

    def search(self, query: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nums) of the k best documents in the whole corpus, from the
        inverted index: the cost is that of the query terms' postings, not of the corpus."""
        postings = self._current_postings()
        query = self._without_common(query)
        terms, at = np.unique(query[0], return_index=True)
        weights = (query[1] * self.idf(query[0]))[at]
        main_nums, main = postings.scores(terms, weights, self._total_len / max(self._count, 1) or 1.0)
        delta = sorted(n for n in postings.delta if n in self)
        docs = [doc for n in delta if (doc := self.doc(n)) is not None]
        extra = self._score_docs(query, docs) if delta else np.zeros(0)
        scores = np.concatenate([main, extra])
        nums = np.concatenate([main_nums, np.asarray(delta, dtype=np.int64)])
        hits = np.flatnonzero(scores > 0)
        scores, nums = scores[hits], nums[hits]
        k = min(k, len(hits))
        if k == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        top = np.argpartition(-scores, k - 1)[:k]
        top = np.flatnonzero(scores >= scores[top].min())  # ties at the cut too, so the lowest nums win them
        top = top[np.lexsort((nums[top], -scores[top]))][:k]
        return scores[top], nums[top]

    def _without_common(self, query: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The query without terms that most of the archive's postings belong to (like
        More-Like-This's max_doc_freq): they barely move BM25, yet at a million articles
        scanning them is most of a search. Candidates are still scored on every term."""
        common = self._df[query[0]] > min(max(COMMON_MIN_DOCS, COMMON_SHARE * self._count), COMMON_MAX_DOCS)
        if common.any() and not common.all():
            return query[0][~common], query[1][~common]
        return query

    def warm(self) -> None:
        """Build the inverted index now, then release the pages of the base it was read from."""
        self._current_postings()
        self._base.release()
        self.vocab.freeze()

    def settle(self) -> None:
        """Rebuild the inverted index now if any document changed since its build: before
        many searches (a backlog of lists, forked processes sharing this one's pages)."""
        if self._postings is None or self._postings.delta:
            self._postings = None
            self._current_postings()
        self.vocab.freeze()

    def _current_postings(self) -> "_Postings":
        """The inverted index, rebuilt in bulk once the documents changed since its
        last build outnumber a tenth of it (a main-plus-delta design, like the vectors)."""
        postings = self._postings
        if postings is None or len(postings.delta) > max(REBUILD_MIN, len(postings.nums) // 10):
            # Built from a merged copy: a reader must not fold a published index under other readers.
            base = self._base.merged(self._gone, self._docs) if self._gone or self._docs else self._base
            postings = self._postings = _Postings.build(base, len(self.vocab))
        return postings

    # --- persistence: saved with an index version, read back memory-mapped -------------

    def save(self, directory: Path) -> dict:
        """Write into `directory` what `load` needs, and return the manifest naming it (the
        caller writes it last). The base, often hundreds of MB, is written once; later
        saves add the documents changed since and the vocabulary, under new names."""
        directory.mkdir(parents=True, exist_ok=True)
        checksums = dict(self._base.write(directory))
        name = uuid.uuid4().hex
        changed = _Base.of(self._docs)
        gone = np.fromiter(self._gone, dtype=np.int64, count=len(self._gone))
        delta, terms = f"delta-{name}.npz", f"terms-{name}.json"
        checksums[delta] = write_file(directory / delta, lambda fh: np.savez(
            fh, gone=gone, **{part: getattr(changed, part) for part in _Base.ARRAYS}))
        vocabulary = json.dumps(self.vocab.first(self._known), ensure_ascii=False).encode()
        checksums[terms] = write_file(directory / terms, lambda fh: fh.write(vocabulary))
        return {"base": self._base.token, "delta": delta, "terms": terms, "sha256": checksums}

    @classmethod
    def load(cls, directory: Path, manifest: dict) -> "LexicalIndex":
        lexical = cls()
        checksums = manifest.get("sha256", {})  # none from a release that kept no digests
        for name in (manifest["terms"], manifest["delta"]):
            verify(directory / name, checksums.get(name))
        lexical._base = base = _Base.read(directory, manifest["base"], checksums)
        terms = json.loads((directory / manifest["terms"]).read_text())
        lexical.vocab = Vocabulary(terms)
        lexical._known = len(terms)
        lexical._df = np.bincount(base.ids, minlength=max(lexical._known, 1024)).astype(np.int64)
        lexical._count = len(base.nums)
        lexical._total_len = int(base.counts.sum(dtype=np.int64))
        with np.load(directory / manifest["delta"]) as delta:
            gone, changed = delta["gone"], _Base(**{part: delta[part] for part in _Base.ARRAYS})
        for num in gone.tolist():
            lexical.remove(num)
        for row, num in enumerate(changed.nums.tolist()):
            lexical._put(num, changed.doc(row))
        lexical._postings = None
        return lexical

    @staticmethod
    def files(manifest: dict) -> set[str]:
        return {f"base-{manifest['base']}", manifest["delta"], manifest["terms"]}


class _Postings:
    """A term-major (CSC) matrix of term counts, built in bulk from a base, plus the
    documents changed since (`delta`, scored directly). BM25 is computed at query
    time on the query terms' entries only, with the current statistics, so it is
    exact. Never changed in place: a write makes a new one sharing the matrix."""

    def __init__(self, nums: np.ndarray, counts: sparse.csr_matrix, lengths: np.ndarray, dead: np.ndarray,
                 delta: frozenset[int], rows: RowMap):
        self.nums, self.counts, self.lengths = nums, counts, lengths
        self.dead, self.delta, self.rows = dead, delta, rows

    @classmethod
    def build(cls, base: _Base, vocabulary: int) -> "_Postings":
        from scipy.sparse import csr_matrix

        # Counts as uint16, not floats: the postings of a million articles are 54 million entries.
        # Clipped into their final array (np.minimum alone made a 200 MB int32 copy first).
        counts = np.empty(len(base.counts), dtype=np.uint16)
        np.minimum(base.counts, np.iinfo(np.uint16).max, out=counts, casting="unsafe")
        rows = csr_matrix((counts, np.asarray(base.ids), np.asarray(base.indptr)), shape=(len(base.nums), vocabulary))
        lengths = np.asarray(rows.sum(axis=1, dtype=np.float64)).ravel()
        nums = np.asarray(base.nums)
        return cls(nums, rows.tocsc(), lengths, np.zeros(len(nums), dtype=bool), frozenset(), base._row_map())

    def changed(self, num: int) -> "_Postings":
        dead = self.dead
        at = self.rows.row(num)
        if at != ABSENT and not dead[at]:
            dead = dead.copy()
            dead[at] = True
        return _Postings(self.nums, self.counts, self.lengths, dead, self.delta | {num}, self.rows)

    def scores(self, terms: np.ndarray, weights: np.ndarray, avgdl: float) -> tuple[np.ndarray, np.ndarray]:
        """(nums, BM25) of the documents of the matrix holding any of `terms` (distinct,
        weights with idf included): the cost is their postings', not the archive's."""
        known = terms < self.counts.shape[1]
        terms, weights = terms[known], weights[known]
        if len(terms) == 0 or len(self.nums) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        starts = self.counts.indptr[terms]
        sizes = self.counts.indptr[terms + 1] - starts
        take = ranges(starts, sizes)
        rows, tf = self.counts.indices[take], self.counts.data[take].astype(np.float64)
        bm25 = np.repeat(weights, sizes) * tf * (K1 + 1) / (tf + K1 * (1 - B + B * self.lengths[rows] / avgdl))
        if len(rows) * 8 > len(self.nums):  # common terms: summing over every document beats sorting
            every = np.bincount(rows, weights=bm25, minlength=len(self.nums))
            hit = np.flatnonzero(every)
            scores = every[hit]
        else:  # each term's postings are sorted by row: a stable sort merges the runs (2.4x faster than unique)
            order = np.argsort(rows, kind="stable")
            rows, bm25 = rows[order], bm25[order]
            first = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
            hit, scores = rows[first], np.add.reduceat(bm25, first)
        alive = ~self.dead[hit]
        return self.nums[hit[alive]], scores[alive]
