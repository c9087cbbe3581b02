"""Any sentence-transformers model, by hub id or local folder (extra ``[st]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from embeddings.base import ModelLoadError, l2_normalize

PATH_HINT = "download the model once on a machine that can, then pass its folder: st:/path/to/model"
INSTALL_HINT = ("install the extra: pip install torch==2.13.0 'recommender[st]' (CPU), "
                "or a CUDA torch build first on GPUs")


def detect_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def locate(model: str) -> tuple[str, bool]:
    """(what to load, whether it is on this machine), or ModelLoadError at once.

    sentence-transformers retries an unreachable hub for over a minute before
    failing; a job must fail before any work, so the hub is asked first, briefly.
    """
    path = Path(model).expanduser()
    if path.exists():
        return str(path), True
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"no model folder at {model}")
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(model, "modules.json"), str):
        return model, True
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(f"{model} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {PATH_HINT}")
    try:
        HfApi().model_info(model, timeout=10)
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model {model!r} on the Hugging Face hub "
                             "(check the id, or pass a local folder)") from None
    except Exception as exc:  # connection refused, DNS, timeout, proxy: all mean "no hub from here"
        raise ModelLoadError(f"cannot reach the Hugging Face hub to download {model!r} "
                             f"({type(exc).__name__}); {PATH_HINT}") from None
    return model, False


class SentenceTransformerEmbedder:
    def __init__(self, model: str, device: str | None = None, batch_size: int = 32):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError(f"st:{model} needs sentence-transformers, which is not installed; "
                                 f"{INSTALL_HINT}") from exc
        source, local = locate(model)
        self.device = device or detect_device()
        try:
            self._model = SentenceTransformer(source, device=self.device, local_files_only=local)
        except Exception as exc:  # the library raises many types: OSError, ValueError, HTTP errors
            raise ModelLoadError(
                f"could not load sentence-transformers model {model!r}: {type(exc).__name__}: {exc}. "
                "A hub id needs access to huggingface.co; otherwise download the model once "
                "and pass its local folder: st:/path/to/model"
            ) from exc
        self.name = f"st:{model}"
        self.batch_size = batch_size
        dimension = (getattr(self._model, "get_embedding_dimension", None)
                     or self._model.get_sentence_embedding_dimension)
        size = dimension()
        if size is None:
            raise ModelLoadError(f"{self.name}: the model does not say the size of its vectors")
        self.dimension = int(size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return l2_normalize(vectors)
