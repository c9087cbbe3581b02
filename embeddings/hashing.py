"""Feature hashing of normalized words: no model, deterministic, instant."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Callable, Sequence

import numpy as np

from embeddings.base import l2_normalize

_WORD = re.compile(r"\w+")


def folded_words(text: str) -> list[str]:
    """Lowercase words without diacritics: text typed without them hashes the same."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return _WORD.findall("".join(ch for ch in decomposed if not unicodedata.combining(ch)))


class HashingEmbedder:
    """Each token adds ±1 to one of `dimension` buckets.

    Texts sharing words get a positive cosine; that is all it knows, which is
    enough for tests and smoke runs that must not depend on a model. The
    tokenizer is passed in (the recommender passes its folded, stemmed terms),
    so this package depends on no text pipeline of its own.
    """

    def __init__(self, dimension: int, tokenize: Callable[[str], list[str]] | None = None):
        self.dimension = dimension
        self.name = f"hashing:{dimension}"
        self.tokenize = tokenize or folded_words

    def _bucket(self, word: str) -> tuple[int, float]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        return value % self.dimension, 1.0 if (value >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in self.tokenize(text):
                bucket, sign = self._bucket(word)
                out[row, bucket] += sign
        return l2_normalize(out)
