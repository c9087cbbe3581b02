"""FAISS over L2-normalized vectors: inner product is cosine similarity.

The main index is exact (IndexFlatIP) below `AnnSettings.exact_below` articles
and HNSW above it (a million exact searches of a million vectors would take most
of a day; HNSW answers in about a millisecond, its recall@10 measured and kept in
the sidecar). The IDMap2 wrapper keeps the store's stable int64 article numbers
as FAISS ids; writes go to a small exact delta, and HNSW rows replaced or deleted
stay in the graph as tombstones, filtered out of every search, until a rebuild.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from recommender.errors import IndexDamaged, IndexMismatch
from recommender.index.columns import ABSENT, RowMap, where_in_sorted
from recommender.index.files import read_sealed, verify, write_sealed, write_with
from recommender.settings import AnnSettings

INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
CALIBRATION_SAMPLE = 1000


@dataclass
class IndexMeta:
    """The sidecar written next to every index file."""

    version: str
    model: str
    dimension: int
    count: int
    created_at: str
    applied_seq: int = 0  # the last store change (changes.seq) this index reflects
    random_pair_mean: float = 0.0  # mean cosine of random article pairs (see VectorIndex.random_pair_mean)
    kind: str = "exact"  # the main index: exact or hnsw
    vectors: str = "float32"  # how the main index stores them: float32, or float16 (an HNSW main's default)
    recall_at_10: float = 1.0  # of the main index's search against exact search, on a sample
    tombstones: list[int] = field(default_factory=list)  # rows of an HNSW main replaced or deleted, filtered out
    delta_file: str | None = None  # writes since an HNSW main was built, saved beside it (exact search)
    main_token: str = ""  # names the main index file's contents: an unchanged main is not written again
    # SHA-256 of each file named here (index.faiss, the delta), checked before it is read.
    checksums: dict[str, str] = field(default_factory=dict)


BATCH_CELLS = 8_000_000  # query x article scores held at once by a batched search (32 MB)
RECALL_SAMPLE = 200  # queries of the recall@10 check of an HNSW index
REBUILD_SHARE = 0.1  # tombstones, as a share of an HNSW main index, that trigger a rebuild at save
DELTA_SHARE = 0.05  # writes, as a share of an HNSW main index, saved beside it rather than folded into it
ADD_BLOCK = 100_000  # vectors copied into a new main index at a time


class VectorIndex:
    """A large `main` index that is never changed in place, plus a small `delta`
    index and a set of `dead` main rows. A write touches only the small parts,
    so copying the index for a copy-on-write update is cheap; once the delta
    grows past COMPACT_AT, a new main is built (an O(n) copy, once per many
    writes instead of on every one)."""

    COMPACT_AT = 512

    def __init__(self, dimension: int, faiss_index: Any = None, ann: AnnSettings | None = None,
                 tombstones: np.ndarray | None = None, recall: float = 1.0):
        import faiss

        self.dimension = dimension
        self._faiss: Any = faiss  # SWIG bindings: their stubs lack most of the API
        self.ann = ann or AnnSettings()
        self.main = faiss_index if faiss_index is not None else self._empty()
        # Rows of an HNSW main whose article was replaced or deleted before it was saved: the
        # graph cannot drop them, and a replaced article's new row carries the same id.
        self.tombstones = np.zeros(0, dtype=np.int64) if tombstones is None else np.asarray(tombstones, np.int64)
        self._main_count = self.main.ntotal - len(self.tombstones)
        self.delta = self._empty()
        self._delta_ids: set[int] = set()
        self.dead: set[int] = set()  # main rows replaced or removed since the last compaction
        # (main, what _main_view read of it)
        self._view: tuple[Any, tuple[RowMap, np.ndarray, np.ndarray]] | None = None
        # (delta ids sorted, their rows in the delta, dead nums sorted), while they are unchanged
        self._sorted_sets: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._selector: tuple[int, Any, Any] | None = None  # (dead set size, a FAISS selector excluding the dead rows)
        self.recall = recall  # recall@10 of the main index (1 when exact)
        self.main_token = uuid.uuid4().hex  # new with every new main
        self._fp16: Any = None  # the decoder of float16 rows (`_as_float32`), made on first use

    def _empty(self):
        return self._faiss.IndexIDMap2(self._faiss.IndexFlatIP(self.dimension))

    @property
    def kind(self) -> str:
        return "hnsw" if self._hnsw(self.main) is not None else "exact"

    def _hnsw(self, index: Any):
        """The graph of an HNSW main (its vectors in float32 or float16), else None."""
        inner = self._faiss.downcast_index(index.index)
        return inner if isinstance(inner, self._faiss.IndexHNSW) else None

    def _kind_for(self, count: int) -> str:
        if self.ann.kind != "auto":
            return self.ann.kind
        return "hnsw" if count >= self.ann.exact_below else "exact"

    def _empty_main(self, count: int):
        """An empty main index of the kind `count` articles call for."""
        if self._kind_for(count) == "exact":
            return self._empty()
        faiss, ip = self._faiss, self._faiss.METRIC_INNER_PRODUCT
        if self.ann.precision == "float16":
            graph = faiss.IndexHNSWSQ(self.dimension, faiss.ScalarQuantizer.QT_fp16, self.ann.hnsw_m, ip)
        else:
            graph = faiss.IndexHNSWFlat(self.dimension, self.ann.hnsw_m, ip)
        graph.hnsw.efConstruction = self.ann.ef_construction
        return self._faiss.IndexIDMap2(graph)

    def _ids_of(self, index: Any) -> np.ndarray:
        return self._faiss.vector_to_array(index.id_map).astype(np.int64)

    def clone(self) -> "VectorIndex":
        """A copy sharing the (immutable) main index: cost proportional to the delta."""
        copy = VectorIndex.__new__(VectorIndex)
        copy.dimension, copy._faiss = self.dimension, self._faiss
        copy.main, copy._main_count, copy.tombstones = self.main, self._main_count, self.tombstones
        copy.delta = self._faiss.clone_index(self.delta)
        copy._delta_ids = set(self._delta_ids)
        copy.dead = set(self.dead)
        copy._view, copy._sorted_sets = self._view, None
        copy.ann, copy.recall, copy._selector, copy.main_token = self.ann, self.recall, None, self.main_token
        copy._fp16 = self._fp16
        return copy

    @property
    def count(self) -> int:
        return self._main_count - len(self.dead) + len(self._delta_ids)

    def __contains__(self, num: int) -> bool:
        num = int(num)
        return num in self._delta_ids or (num not in self.dead and self._main_view()[0].row(num) != ABSENT)

    def has(self, nums: np.ndarray) -> np.ndarray:
        """`num in self` for each of `nums`, in one vectorised step."""
        nums = np.asarray(nums, dtype=np.int64)
        rows, _, _ = self._main_view()
        delta, _, dead = self._sorted()
        found = rows.rows(nums) >= 0
        if len(dead):
            found &= ~np.isin(nums, dead)
        if len(delta):
            found |= where_in_sorted(delta, nums) >= 0
        return found

    def _sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._sorted_sets is None:
            ids = self._ids_of(self.delta)
            order = np.argsort(ids, kind="stable")
            dead = np.sort(np.fromiter(self.dead, dtype=np.int64, count=len(self.dead)))
            self._sorted_sets = ids[order], order, dead
        return self._sorted_sets

    def ids(self) -> np.ndarray:
        rows, _, ids = self._main_view()
        main = ids[rows.rows(ids) != ABSENT]  # without the tombstones
        delta, _, dead = self._sorted()
        return np.union1d(np.setdiff1d(main, dead), delta)

    def upsert(self, nums: np.ndarray, vectors: np.ndarray, compact: bool = True) -> None:
        """`compact=False`: leave the delta to grow (a load in chunks compacts once, at its end)."""
        nums = np.asarray(nums, dtype=np.int64)
        if len(nums) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(nums), self.dimension):
            raise IndexMismatch(f"vectors of shape {vectors.shape} do not fit an index of dimension {self.dimension}")
        self.remove(nums, compact=False)  # also drops the sorted ids, before the delta moves
        self.delta.add_with_ids(vectors, nums)
        self._delta_ids.update(nums.tolist())
        if compact:
            self.maybe_compact()

    def start_main(self, count: int) -> None:
        """Before a first build of about `count` vectors: an empty main of the kind they call
        for, which `fill` then fills in place."""
        if self.count or self.delta.ntotal:
            raise ValueError("start_main is for an empty index")
        self.main, self.tombstones, self._main_count = self._empty_main(count), np.zeros(0, np.int64), 0
        self._view = None

    def fill(self, nums: np.ndarray, vectors: np.ndarray) -> None:
        """Add new articles' vectors straight into the main index, graph included: a first
        build then holds each vector once. Through the delta, a graph was built from a full
        exact copy: 3 GB of vectors at a million, where 1.5 GB is the index."""
        nums = np.asarray(nums, dtype=np.int64)
        if self.has(nums).any() or len(np.unique(nums)) != len(nums):
            raise ValueError("fill takes only articles the index does not hold")
        with self._every_core():
            self.main.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), nums)
        self._main_count += len(nums)
        self._view = None

    def filled(self) -> None:
        """After the last `fill`: the new main's recall and token."""
        self.recall = self.measure_recall(self.main)
        self.main_token = uuid.uuid4().hex

    def remove(self, nums: np.ndarray, compact: bool = True) -> int:
        nums = np.asarray(nums, dtype=np.int64)
        if len(nums) == 0:
            return 0
        wanted = set(nums.tolist())
        from_main = set(nums[self._main_view()[0].rows(nums) != ABSENT].tolist()) - self.dead
        from_delta = wanted & self._delta_ids
        self.dead |= from_main
        self._sorted_sets = None
        if from_delta:
            self.delta.remove_ids(self._faiss.IDSelectorBatch(np.fromiter(from_delta, dtype=np.int64)))
            self._delta_ids -= from_delta
        if compact:
            self.maybe_compact()
        return len(from_main - from_delta) + len(from_delta)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nums), best first, min(k, count) columns; missing slots have num -1."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        k = max(1, min(k, self.count))
        parts_s, parts_n = [], []
        if self.main.ntotal and self._hnsw(self.main) is not None:
            scores, nums = self._search_graph(vectors, min(k, self.main.ntotal))
            parts_s.append(scores)
            parts_n.append(nums)
        elif self.main.ntotal and len(vectors) > 1:
            scores, nums = self._search_main_batch(vectors, min(k + len(self.dead), self.main.ntotal))
            parts_s.append(scores)
            parts_n.append(nums)
        elif self.main.ntotal:
            scores, nums = self.main.search(vectors, min(k + len(self.dead), self.main.ntotal))
            if self.dead:
                dead = np.isin(nums, np.fromiter(self.dead, dtype=np.int64))
                scores, nums = np.where(dead, -np.inf, scores), np.where(dead, -1, nums)
            parts_s.append(scores)
            parts_n.append(nums)
        if self.delta.ntotal:
            scores, nums = self.delta.search(vectors, min(k, self.delta.ntotal))
            parts_s.append(scores)
            parts_n.append(nums)
        if not parts_s:
            return np.full((len(vectors), k), -np.inf, dtype=np.float32), np.full((len(vectors), k), -1, dtype=np.int64)
        scores, nums = np.hstack(parts_s), np.hstack(parts_n)
        scores = np.where(nums < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(nums, order, axis=1)

    def _search_graph(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """HNSW search of the main index by row, tombstones and dead rows excluded by a
        selector (not by fetching k + their number: there may be thousands)."""
        _, _, row_ids = self._main_view()
        params = self._faiss.SearchParametersHNSW(efSearch=max(self.ann.ef_search, k))
        if self.dead or len(self.tombstones):
            if self._selector is None or self._selector[0] != len(self.dead):
                dead = np.isin(row_ids, np.fromiter(self.dead, dtype=np.int64, count=len(self.dead)))
                rows = np.union1d(self.tombstones, np.flatnonzero(dead)).astype(np.int64)
                batch = self._faiss.IDSelectorBatch(rows)
                self._selector = (len(self.dead), batch, self._faiss.IDSelectorNot(batch))
            params.sel = self._selector[2]
        scores, rows = self._hnsw(self.main).search(vectors, k, params=params)
        return scores, np.where(rows >= 0, row_ids[np.maximum(rows, 0)], -1)

    def _search_main_batch(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of many queries as one matrix product over the main vectors, read
        in place: one pass over memory for the batch (a single query is memory-bound;
        measured 2.8 ms a query in batches of 64 against 8 ms alone, 100k x 384)."""
        _, stored, order_ids = self._main_view()
        dead_rows = np.isin(order_ids, np.fromiter(self.dead, dtype=np.int64)) if self.dead else None
        out_s = np.empty((len(vectors), k), dtype=np.float32)
        out_n = np.empty((len(vectors), k), dtype=np.int64)
        step = max(1, BATCH_CELLS // max(len(stored), 1))
        for start in range(0, len(vectors), step):
            scores = vectors[start:start + step] @ stored.T
            if dead_rows is not None:
                scores[:, dead_rows] = -np.inf
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
                np.tile(np.arange(scores.shape[1]), (len(scores), 1))
            picked = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-picked, axis=1, kind="stable")
            out_s[start:start + step] = np.take_along_axis(picked, order, axis=1)
            out_n[start:start + step] = order_ids[np.take_along_axis(top, order, axis=1)]
        out_n[~np.isfinite(out_s)] = -1
        return out_s, out_n

    def reconstruct(self, nums: np.ndarray) -> np.ndarray:
        nums = np.asarray(nums, dtype=np.int64)
        if len(nums) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        row_map, vectors, _ = self._main_view()
        rows = row_map.rows(nums)
        if len(vectors):
            out = self._as_float32(vectors[np.maximum(rows, 0)])
        else:
            out = np.zeros((len(nums), self.dimension), dtype=np.float32)
        delta, delta_rows, _ = self._sorted()
        at = where_in_sorted(delta, nums)
        in_delta = at >= 0
        if in_delta.any():
            # Read in place, as the main's rows: after a bulk import a list's candidates hold
            # dozens of new articles; a FAISS call each, and an isin sorting the whole delta
            # on every call, were 6 % of a list's time at 200,000 with 10,000 new.
            out[in_delta] = self._stored(self.delta)[delta_rows[at[in_delta]]]
        for i in np.flatnonzero((rows < 0) & ~in_delta):
            out[i] = self.main.reconstruct(int(nums[i]))  # not stored: FAISS raises
        return out

    def _as_float32(self, rows: np.ndarray) -> np.ndarray:
        """Rows read in place (float16 from an HNSW main that stores them so), as float32.
        numpy's cast took 200 us for a list's 300 candidates (8 % of a list's time at 200,000
        in a profile), FAISS's fp16 decoder 135 us, to the same floats."""
        if rows.dtype != np.float16 or len(rows) == 0:
            return rows.astype(np.float32, copy=False)
        if self._fp16 is None:
            self._fp16 = self._faiss.IndexScalarQuantizer(self.dimension, self._faiss.ScalarQuantizer.QT_fp16)
        return self._fp16.sa_decode(np.ascontiguousarray(rows).view(np.uint8))

    def _main_view(self) -> tuple[RowMap, np.ndarray, np.ndarray]:
        """(each id's row but the tombstones', the vectors, the ids in row order) of the main
        index, read in place: a batch of rows is one fancy index instead of a FAISS call
        per row. Built once per main index, which never changes."""
        cached = self._view
        if cached is not None and cached[0] is self.main:
            return cached[1]
        ids = self._ids_of(self.main)
        alive = np.delete(np.arange(len(ids)), self.tombstones) if len(self.tombstones) else np.arange(len(ids))
        if self.main.ntotal:
            vectors = self._stored(self.main)
        else:
            vectors = np.zeros((0, self.dimension), dtype=np.float32)
        view = (RowMap(ids[alive], alive), vectors, ids)
        self._view = (self.main, view)
        return view

    def _stored(self, index: Any) -> np.ndarray:
        """The vectors of an IDMap2-wrapped flat or HNSW index, in row order, read in place:
        float32, or float16 for a graph that stores them so (`AnnSettings.precision`)."""
        inner = self._hnsw(index)
        storage = self._faiss.downcast_index(inner.storage if inner is not None else index.index)
        if isinstance(storage, self._faiss.IndexScalarQuantizer):  # QT_fp16: 2 bytes a component, as is
            raw = self._faiss.rev_swig_ptr(storage.codes.data(), index.ntotal * storage.code_size)
            return np.asarray(raw).view(np.float16).reshape(index.ntotal, self.dimension)
        raw = self._faiss.rev_swig_ptr(storage.get_xb(), index.ntotal * self.dimension)
        return np.asarray(raw).reshape(index.ntotal, self.dimension)

    def maybe_compact(self) -> None:
        """Fold the delta into an exact main index once it has grown past COMPACT_AT."""
        # An HNSW main is only rebuilt when saved (outside the server's write lock): folding
        # writes into a graph of a million vectors takes far too long for a write to wait.
        # So is a change of kind: an exact index that grows past `exact_below` turns HNSW when saved.
        if len(self._delta_ids) + len(self.dead) > self.COMPACT_AT and self._hnsw(self.main) is None:
            self.compact(kind="exact")

    def compact(self, kind: str | None = None, rebuild: bool = False) -> None:
        """Fold delta and dead rows into a new main index of `kind` (by default, what the
        archive's size calls for); the old one is left to readers. An HNSW main that
        stays HNSW takes the delta in a copy of its graph and keeps its tombstones,
        unless they passed REBUILD_SHARE."""
        count = self.count
        kind = kind or self._kind_for(count)
        incremental = (not rebuild and self._hnsw(self.main) is not None and kind == "hnsw"
                       and len(self.dead) + len(self.tombstones) <= REBUILD_SHARE * self.main.ntotal)
        ids = self._ids_of(self.main)
        gone = np.isin(ids, np.fromiter(self.dead, dtype=np.int64, count=len(self.dead)))
        gone[self.tombstones] = True
        if incremental:
            main = self._faiss.clone_index(self.main) if self.delta.ntotal else self.main
            tombstones = np.flatnonzero(gone)
        elif kind == "exact" and self.main.ntotal == 0:
            # The delta is this index's own (a clone copies it), so it becomes the main as it is: a
            # first build of a million vectors holds them once here, not three times.
            main, tombstones, self.delta = self.delta, None, self._empty()
        else:
            main, tombstones = (self._empty() if kind == "exact" else self._empty_main(count)), None
            self._add_stored(main, self.main, ids, gone)
        if self.delta.ntotal:
            with self._every_core():
                main.add_with_ids(self.reconstruct_delta(), self._ids_of(self.delta))
        if main is not self.main:
            self.recall = self.measure_recall(main)
            self.main_token = uuid.uuid4().hex
        self.main, self.tombstones = main, np.zeros(0, np.int64) if tombstones is None else tombstones
        self._main_count = main.ntotal - len(self.tombstones)
        self.delta, self._delta_ids, self.dead = self._empty(), set(), set()
        self._selector, self._view, self._sorted_sets = None, None, None  # the view's rows depend on the tombstones too

    def _add_stored(self, target: Any, source: Any, ids: np.ndarray, gone: np.ndarray) -> None:
        """Add `source`'s vectors but the `gone` rows to `target`, read in place a block at a
        time: a copy of them all would be 1.5 GB more at a million."""
        if not source.ntotal:
            return
        stored = self._stored(source)
        with self._every_core():
            for start in range(0, source.ntotal, ADD_BLOCK):
                keep = ~gone[start:start + ADD_BLOCK]
                if keep.any():
                    block = stored[start:start + ADD_BLOCK]
                    target.add_with_ids(np.ascontiguousarray(block[keep] if not keep.all() else block, np.float32),
                                        ids[start:start + ADD_BLOCK][keep])

    @contextmanager
    def _every_core(self) -> Iterator[None]:
        """Building a graph uses every core (a million vectors: half an hour on one); searches
        meanwhile may take two threads, which costs them a little, not an answer."""
        before = self._faiss.omp_get_max_threads()
        self._faiss.omp_set_num_threads(os.cpu_count() or 1)
        try:
            yield
        finally:
            self._faiss.omp_set_num_threads(before)

    def measure_recall(self, index: Any, k: int = 10) -> float:
        """Recall@k of an index's search against exact search over its own vectors,
        on a fixed sample of its rows (1 for an exact index)."""
        if self._hnsw(index) is None or index.ntotal <= k:
            return 1.0
        vectors = self._stored(index)
        rows = np.random.default_rng(0).choice(index.ntotal, size=min(RECALL_SAMPLE, index.ntotal), replace=False)
        queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        params = self._faiss.SearchParametersHNSW(efSearch=max(self.ann.ef_search, k))
        _, found = self._hnsw(index).search(queries, k, params=params)  # rows, like the exact top below
        exact = exact_top(queries, vectors, k)
        hits = sum(len(set(top.tolist()) & set(got.tolist())) for top, got in zip(exact, found))
        return round(hits / (len(queries) * k), 4)

    def reconstruct_delta(self) -> np.ndarray:
        return self._stored(self.delta).copy()

    def random_pair_mean(self, seed: int = 0) -> float:
        """Mean cosine between random distinct articles: what 'unrelated' scores.

        Models differ a lot here (e5 puts two random news articles near 0.8,
        feature hashing near 0), so relevance is measured above this level.
        """
        n = self.count
        if n < 2:
            return 0.0
        rng = np.random.default_rng(seed)
        sample = self.reconstruct(rng.choice(self.ids(), size=min(n, CALIBRATION_SAMPLE), replace=False))
        sims = sample @ sample.T
        m = len(sample)
        return float((sims.sum() - np.trace(sims)) / (m * (m - 1)))

    # --- persistence --------------------------------------------------------

    def _keeps_graph(self) -> bool:
        """Whether a save leaves an HNSW main as it is, the writes since saved beside it:
        copying and extending a graph of a million vectors for a few writes costs minutes."""
        n = self.main.ntotal
        return (self._hnsw(self.main) is not None and self._kind_for(self.count) == "hnsw"
                and len(self.tombstones) + len(self.dead) <= REBUILD_SHARE * n and self.delta.ntotal <= DELTA_SHARE * n)

    def save(self, directory: Path, meta: IndexMeta) -> None:
        """Write index and sidecar so that a crash leaves either the old or the new pair:
        the sidecar, written last, names the delta file it goes with."""
        directory.mkdir(parents=True, exist_ok=True)
        if not self._keeps_graph() and (self.delta.ntotal or self.dead or self._kind_for(self.count) != self.kind
                                        or len(self.tombstones) > REBUILD_SHARE * self.main.ntotal):
            self.compact()
        tombstones = self.tombstones
        if self.dead:
            _, _, row_ids = self._main_view()
            tombstones = np.union1d(tombstones, np.flatnonzero(np.isin(row_ids, list(self.dead))))
        try:
            previous = read_meta(directory)
            main_digest = previous.checksums.get(INDEX_FILE) if previous.main_token == self.main_token else None
        except (OSError, ValueError, TypeError, IndexDamaged):
            main_digest = None
        if main_digest is None or not (directory / INDEX_FILE).exists():
            main_digest = write_with(directory / INDEX_FILE, lambda tmp: self._faiss.write_index(self.main, tmp))
        checksums = {INDEX_FILE: main_digest}
        delta_file = f"delta-{meta.applied_seq}-{uuid.uuid4().hex[:8]}.faiss" if self.delta.ntotal else None
        if delta_file:
            checksums[delta_file] = write_with(directory / delta_file,
                                               lambda tmp: self._faiss.write_index(self.delta, tmp))
        meta.count, meta.kind, meta.recall_at_10 = self.count, self.kind, self.recall
        meta.vectors = self._stored(self.main).dtype.name if self.main.ntotal else "float32"
        meta.tombstones, meta.delta_file, meta.main_token = tombstones.tolist(), delta_file, self.main_token
        meta.checksums = checksums
        write_sealed(directory / META_FILE, json.dumps(asdict(meta), indent=2).encode())
        for old in directory.glob("delta-*.faiss"):
            if old.name != delta_file:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path, ann: AnnSettings | None = None) -> tuple["VectorIndex", IndexMeta]:
        import faiss

        meta = read_meta(directory)
        for name in [INDEX_FILE] + ([meta.delta_file] if meta.delta_file else []):
            verify(directory / name, meta.checksums.get(name))  # a damaged file is never read
        index = faiss.read_index(str(directory / INDEX_FILE))
        delta = faiss.read_index(str(directory / meta.delta_file)) if meta.delta_file else None
        extra = delta.ntotal if delta is not None else 0
        if index.d != meta.dimension or index.ntotal + extra != meta.count + len(meta.tombstones):
            raise IndexMismatch(
                f"index {meta.version} does not match its sidecar (dimension {index.d} vs {meta.dimension}, "
                f"count {index.ntotal} and {extra} since vs {meta.count} and {len(meta.tombstones)} tombstones)"
            )
        loaded = cls(meta.dimension, index, ann, np.asarray(meta.tombstones, dtype=np.int64), meta.recall_at_10)
        loaded.main_token = meta.main_token or loaded.main_token
        if delta is not None:
            loaded.delta = delta
            loaded._delta_ids = set(loaded._ids_of(delta).tolist())
            loaded._sorted_sets = None
        return loaded, meta


def exact_top(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """The rows of `vectors` (float32 or float16) with the k highest inner products with
    each query, unordered; a block of rows at a time, in float32 (numpy has no fast float16
    matrix product, and a million rows' scores need not be held at once)."""
    scores_parts, rows_parts = [], []
    for start in range(0, len(vectors), ADD_BLOCK):
        scores = queries @ np.asarray(vectors[start:start + ADD_BLOCK], dtype=np.float32).T
        top = _top_columns(scores, k)
        scores_parts.append(np.take_along_axis(scores, top, axis=1))
        rows_parts.append(top + start)
    scores, rows = np.hstack(scores_parts), np.hstack(rows_parts)
    return np.take_along_axis(rows, _top_columns(scores, k), axis=1)


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    if scores.shape[1] <= k:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def read_meta(directory: Path) -> IndexMeta:
    return IndexMeta(**json.loads(read_sealed(directory / META_FILE)))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
