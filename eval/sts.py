"""Spearman correlation between cosine and human similarity scores (RO-STS)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recommender.errors import RecommenderError
from recommender.store.base import Store
from recommender.store.vector_cache import embed_cached
from recommender.text.normalize import normalize

# Published zero-shot figures (MTEB RonSTS, Spearman), from ../shared/README.md.
PUBLISHED = {
    "e5-small-q4": ("multilingual-e5-small (fp32)", 0.778),
    "paraphrase-multilingual-MiniLM-L12-v2": ("paraphrase-multilingual-MiniLM-L12-v2", 0.796),
    "all-MiniLM-L6-v2": ("all-MiniLM-L6-v2", 0.630),
}


@dataclass(frozen=True)
class StsResult:
    model: str
    file: str
    genre: str | None
    pairs: int
    spearman: float
    published: float | None
    published_as: str | None


def read_pairs(path: Path, genre: str | None) -> list[tuple[str, str, float]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as exc:
        raise RecommenderError(f"cannot read {path}: {exc.strerror or exc}") from None
    needed = {"score", "sentence1_ro", "sentence2_ro"}
    if not rows or not needed <= set(rows[0]):
        raise RecommenderError(f"{path} is not an RO-STS file: it needs the columns {', '.join(sorted(needed))}")
    pairs = []
    for row in rows:
        if genre and row.get("genre") != genre:
            continue
        try:
            pairs.append((normalize(row["sentence1_ro"]), normalize(row["sentence2_ro"]), float(row["score"])))
        except (TypeError, ValueError):
            continue  # a row without a numeric score carries no judgement
    if not pairs:
        raise RecommenderError(f"no scored pairs in {path}" + (f" for genre {genre!r}" if genre else ""))
    return pairs


def evaluate_sts(path: Path, embedder, store: Store, genre: str | None = None) -> StsResult:
    from scipy.stats import spearmanr

    pairs = read_pairs(path, genre)
    left = embed_cached(store, embedder, [a for a, _, _ in pairs])
    right = embed_cached(store, embedder, [b for _, b, _ in pairs])
    cosines = np.sum(left * right, axis=1)
    rho = spearmanr(cosines, [s for _, _, s in pairs]).statistic
    name = embedder.name.lower().replace("_", "-")
    published_as, published = next((v for k, v in PUBLISHED.items() if k.lower() in name), (None, None))
    return StsResult(embedder.name, str(path), genre, len(pairs), round(float(rho), 4), published, published_as)
