"""FAISS over L2-normalized vectors: inner product is cosine similarity.

Exact search (IndexFlatIP) by default: at newsroom archive sizes (10^5 to 10^6
articles of 384 dimensions) it answers in milliseconds and never misses. The
IDMap2 wrapper keeps the store's stable int64 article numbers as FAISS ids and
allows add, remove and reconstruct without a rebuild.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recommender.errors import IndexMismatch

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
    random_pair_mean: float = 0.0  # mean cosine of random article pairs (see calibrate)


class VectorIndex:
    def __init__(self, dimension: int, faiss_index=None):
        import faiss

        self.dimension = dimension
        self._faiss = faiss
        self.index = faiss_index if faiss_index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self._members = set(self.ids().tolist())

    def clone(self) -> "VectorIndex":
        return VectorIndex(self.dimension, self._faiss.clone_index(self.index))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def __contains__(self, num: int) -> bool:
        return int(num) in self._members

    def ids(self) -> np.ndarray:
        return self._faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def upsert(self, nums: np.ndarray, vectors: np.ndarray) -> None:
        nums = np.asarray(nums, dtype=np.int64)
        if len(nums) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(nums), self.dimension):
            raise IndexMismatch(f"vectors of shape {vectors.shape} do not fit an index of dimension {self.dimension}")
        self.remove(nums)
        self.index.add_with_ids(vectors, nums)
        self._members.update(nums.tolist())

    def remove(self, nums: np.ndarray) -> int:
        nums = np.asarray(nums, dtype=np.int64)
        if len(nums) == 0 or self.count == 0:
            return 0
        self._members.difference_update(nums.tolist())
        return int(self.index.remove_ids(self._faiss.IDSelectorBatch(nums)))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, nums), best first; missing slots have num -1."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        k = max(1, min(k, self.count))
        return self.index.search(vectors, k)

    def reconstruct(self, nums: np.ndarray) -> np.ndarray:
        nums = np.asarray(nums, dtype=np.int64)
        if len(nums) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.vstack([self.index.reconstruct(int(n)) for n in nums])

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

    def save(self, directory: Path, meta: IndexMeta) -> None:
        """Write index and sidecar so that a crash leaves either the old or the new pair."""
        directory.mkdir(parents=True, exist_ok=True)
        meta.count = self.count
        _atomic_write(directory / INDEX_FILE, self._faiss.serialize_index(self.index).tobytes())
        _atomic_write(directory / META_FILE, json.dumps(asdict(meta), indent=2).encode())

    @classmethod
    def load(cls, directory: Path) -> tuple["VectorIndex", IndexMeta]:
        import faiss

        meta = read_meta(directory)
        raw = np.fromfile(directory / INDEX_FILE, dtype=np.uint8)
        index = faiss.deserialize_index(raw)
        if index.d != meta.dimension or index.ntotal != meta.count:
            raise IndexMismatch(
                f"index {meta.version} does not match its sidecar (dimension {index.d} vs {meta.dimension}, "
                f"count {index.ntotal} vs {meta.count}); rebuild it: recommender index rebuild"
            )
        return cls(meta.dimension, index), meta


def read_meta(directory: Path) -> IndexMeta:
    return IndexMeta(**json.loads((directory / META_FILE).read_text()))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
