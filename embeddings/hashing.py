"""Feature hashing of normalized words: no model, deterministic, instant."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from embeddings.base import l2_normalize


class HashingEmbedder:
    """Each folded, stemmed word adds ±1 to one of `dimension` buckets.

    Texts sharing words get a positive cosine; that is all it knows, which is
    enough for tests and smoke runs that must not depend on a model.
    """

    def __init__(self, dimension: int):
        self.dimension = dimension
        self.name = f"hashing:{dimension}"

    def _bucket(self, word: str) -> tuple[int, float]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self.dimension, 1.0 if (value >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from recommender.text import terms

        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in terms(text):
                bucket, sign = self._bucket(word)
                out[row, bucket] += sign
        return l2_normalize(out)
