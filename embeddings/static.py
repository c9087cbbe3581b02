"""A static model: one vector per word, distilled from a sentence encoder.

An article's vector is the weighted mean of its words' vectors, so embedding
costs a dictionary lookup per word instead of a transformer pass (thousands of
articles a second on one core, against a few for e5). The recipe:

- the vocabulary is the archive's own frequent words, keyed without diacritics
  so that text typed without them finds the same vector; the teacher embeds
  each once, in its most frequent spelling (model2vec's idea, with whole words);
- each word counts a / (a + p(word)) in the mean (SIF weights, p its share of
  the archive's words), so that function words count little;
- the word vectors are then fitted so that the means reproduce the teacher's
  own vectors of a sample of articles (tokenlearn's idea): a ridge regression
  pulled towards the vocabulary vectors, solved in closed form. Words in
  context is what the teacher knows and a word alone does not show.

On the development archive of editors' links, the fit brings held-out articles'
vectors from a mean cosine of 0.870 to the teacher's (words alone) to 0.976
(`recommender distill` prints both); with the default ranking, hit@10 is 0.72
against e5's 0.80 (`eval/bench_models.py`): faster by orders of magnitude, not
as good.

A model is a directory holding `model.npz` (words, vectors) and `meta.json`.
Models are immutable: vectors are cached by model name, so a rebuilt model gets
a new name (`recommender distill`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scipy import sparse

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from embeddings.base import ModelLoadError, l2_normalize
from embeddings.hashing import folded_words

SIF_A = 1e-3
MODEL_FILE = "model.npz"
META_FILE = "meta.json"
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class StaticMeta:
    teacher: str
    words: int
    dimension: int
    min_count: int
    ridge: float
    corpus_texts: int
    sample: int
    sample_until: str | None
    heldout_cosine_vocabulary: float  # teacher vs student on held-out sample articles, before the fit
    heldout_cosine_fitted: float  # and after


class StaticEmbedder:
    def __init__(self, path: Path, name: str):
        try:
            with np.load(path / MODEL_FILE, allow_pickle=False) as data:
                words, vectors = data["words"], data["vectors"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{name}: no static model at {path} ({exc}); "
                                 "build one with: recommender distill") from None
        self.name = name
        self.dimension = int(vectors.shape[1])
        self._vectors = np.asarray(vectors, dtype=np.float32)  # already scaled by each word's weight
        self._ids = {str(word): row for row, word in enumerate(words)}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = word_ids(text, self._ids)
            if ids:
                out[row] = self._vectors[ids].sum(axis=0)
        return l2_normalize(out)


def word_ids(text: str, ids: dict[str, int]) -> list[int]:
    """The vocabulary rows of a text's words, in order; unknown words are skipped."""
    return [i for i in map(ids.get, folded_words(text)) if i is not None]


@dataclass(frozen=True)
class Vocabulary:
    keys: list[str]  # diacritic-free, lowercase: what `StaticEmbedder` looks up
    spellings: list[str]  # the most frequent spelling of each: what the teacher embeds
    weights: np.ndarray  # SIF weight of each


class WordCounts:
    def __init__(self) -> None:
        self.spellings: Counter[str] = Counter()
        self.texts = 0

    def add(self, text: str) -> None:
        self.spellings.update(_WORD.findall(text.casefold()))
        self.texts += 1

    def vocabulary(self, min_count: int, max_words: int) -> Vocabulary:
        """The `max_words` most frequent words seen `min_count` times or more."""
        totals: Counter[str] = Counter()
        best: dict[str, tuple[int, str]] = {}
        for spelling, count in self.spellings.items():
            key = "".join(folded_words(spelling))
            totals[key] += count
            if count > best.get(key, (0, ""))[0]:
                best[key] = (count, spelling)
        kept = [(key, count) for key, count in totals.most_common(max_words) if key and count >= min_count]
        share = np.array([count for _, count in kept], dtype=np.float64) / max(1, sum(totals.values()))
        return Vocabulary([k for k, _ in kept], [best[k][1] for k, _ in kept], SIF_A / (SIF_A + share))


def mean_matrix(texts: Sequence[str], vocabulary: Vocabulary):
    """Sparse (texts x words): row i averages text i's words with their weights."""
    from scipy import sparse

    ids = {key: i for i, key in enumerate(vocabulary.keys)}
    rows, cols = [], []
    for row, text in enumerate(texts):
        found = word_ids(text, ids)
        rows += [row] * len(found)
        cols += found
    counts = sparse.csr_matrix((vocabulary.weights[cols], (rows, cols)), shape=(len(texts), len(ids)))
    sums = np.asarray(counts.sum(axis=1)).ravel()
    return sparse.diags(1 / np.where(sums == 0, 1, sums)) @ counts


def fit(prior: np.ndarray, means: sparse.spmatrix, targets: np.ndarray, ridge: float) -> np.ndarray:
    """Word vectors W minimising |means·W - targets|² + ridge·|W - prior|², solved in
    the sample's space (articles, not words: a sample of thousands against a
    vocabulary of tens of thousands). Words absent from the sample keep their prior."""
    prior = prior.astype(np.float64)
    gram = (means @ means.T).toarray()
    gram[np.diag_indices_from(gram)] += ridge
    residual = targets.astype(np.float64) - means @ prior
    return prior + means.T @ np.linalg.solve(gram, residual)


def mean_cosine(means: sparse.spmatrix, words: np.ndarray, targets: np.ndarray) -> float:
    predicted = l2_normalize(means @ words)
    return float((predicted * l2_normalize(targets)).sum(axis=1).mean())


def save(path: Path, vocabulary: Vocabulary, vectors: np.ndarray, meta: StaticMeta) -> None:
    """Write a model directory (the caller renames it into place, so it appears whole)."""
    path.mkdir(parents=True)
    scaled = (vectors * vocabulary.weights[:, None]).astype(np.float32)
    np.savez(path / MODEL_FILE, words=np.array(vocabulary.keys), vectors=scaled)
    (path / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")


def built(models_dir: Path) -> list[Path]:
    """The model directories s1, s2, ... in `models_dir`, oldest first."""
    found = [p for p in models_dir.glob("s*") if p.name[1:].isdigit()] if models_dir.exists() else []
    return sorted(found, key=lambda p: int(p.name[1:]))


def read_meta(path: Path) -> StaticMeta:
    return StaticMeta(**json.loads((path / META_FILE).read_text()))
