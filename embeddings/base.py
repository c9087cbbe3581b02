"""The one interface every model implements."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


class EmbedderError(Exception):
    """A model could not be used; the message says what to do."""


class UnknownModelError(EmbedderError):
    """The model string names no known kind of model."""


class ModelLoadError(EmbedderError):
    """The model string is well-formed but the model could not be loaded."""


@runtime_checkable
class Embedder(Protocol):
    """`embed` returns float32 (n, dimension), each row of unit L2 norm."""

    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # An all-zero row (empty text under hashing) stays zero instead of becoming NaN.
    return vectors / np.where(norms == 0, 1, norms)
