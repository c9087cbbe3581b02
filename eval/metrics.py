"""Ranking metrics (defined once, in recommender/ranking/metrics.py) and bootstrap
confidence intervals of their means over queries."""

from __future__ import annotations

import numpy as np

from recommender.ranking.metrics import hit_at_k, ndcg_at_k, precision_at_k, recall_at_k, reciprocal_rank

__all__ = ["bootstrap_ci", "hit_at_k", "ndcg_at_k", "precision_at_k", "recall_at_k", "reciprocal_rank"]


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean over queries resampled with replacement."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # bounded memory on large query sets
        stop = min(start + 100, resamples)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)
