"""Ranking metrics, one value per query: what `eval` reports and `recommender tune` scores a profile by.

Definitions (binary relevance; `ranked` is the suggestion list, best first):
- P@k: relevant items among the first k, divided by k (a short list is not
  rewarded for being short);
- hit@k: 1 if any of the first k is relevant;
- recall@k: relevant items among the first k over all relevant items;
- MRR: 1 / rank of the first relevant item within the list, 0 if none;
- nDCG@k: DCG of the first k (gain 1 / log2(rank + 1)) over the DCG of an ideal
  list with min(k, |relevant|) relevant items.
A query with no relevant item has no defined recall, MRR or nDCG; callers skip
it (and count it). Ties in scores are broken before metrics see the list, by
the strategies, deterministically (lower article number first).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from collections.abc import Set as AbstractSet


def precision_at_k(ranked: Sequence[Hashable], relevant: AbstractSet[Hashable], k: int) -> float:
    return sum(1 for item in ranked[:k] if item in relevant) / k


def hit_at_k(ranked: Sequence[Hashable], relevant: AbstractSet[Hashable], k: int) -> float:
    return float(any(item in relevant for item in ranked[:k]))


def recall_at_k(ranked: Sequence[Hashable], relevant: AbstractSet[Hashable], k: int) -> float:
    return sum(1 for item in ranked[:k] if item in relevant) / len(relevant)


def reciprocal_rank(ranked: Sequence[Hashable], relevant: AbstractSet[Hashable], k: int | None = None) -> float:
    for position, item in enumerate(ranked[:k] if k else ranked, start=1):
        if item in relevant:
            return 1.0 / position
    return 0.0


def ndcg_at_k(ranked: Sequence[Hashable], relevant: AbstractSet[Hashable], k: int) -> float:
    dcg = sum(1.0 / math.log2(pos + 1) for pos, item in enumerate(ranked[:k], start=1) if item in relevant)
    ideal = sum(1.0 / math.log2(pos + 1) for pos in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal
