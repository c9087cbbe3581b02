"""The strategies an evaluation compares. Each returns, for one query article,
the suggested article numbers, best first.

- random:  k articles at random, what today's noisy block amounts to;
- recency: the articles closest in time to the query;
- lexical: BM25 with the query's 25 most telling terms (More-Like-This);
- dense:   plain nearest neighbours by cosine;
- hybrid:  dense candidates reranked with BM25 blended in (no other rule);
- default: the engine's ranking with all its rules (dedup, thresholds,
           time prior, diversity), as `recommender related` serves it.
Ties are broken by article number, so every run gives the same lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from recommender.index.state import IndexState
from recommender.ranking import pipeline
from recommender.ranking.pipeline import Seed
from recommender.ranking.rules import Filters
from recommender.serving.engine import Engine
from recommender.text.normalize import terms

STRATEGIES = ("random", "recency", "lexical", "dense", "hybrid", "default")
HYBRID_WEIGHT = 0.3


@dataclass
class Context:
    engine: Engine
    state: IndexState
    k: int
    past_only: bool
    options: dict  # ranking overrides for "default" and "hybrid"

    @property
    def filters(self) -> Filters:
        return Filters(past_only=self.past_only)


def allowed(ctx: Context, seed: Seed, nums) -> list[int]:
    """Candidate numbers that are not the query and, with past-only, not after it."""
    reference = seed.published_at or datetime.now(timezone.utc)
    out = []
    for num in nums:
        info = ctx.state.infos.get(int(num))
        if info is None or num == seed.num:
            continue
        if ctx.past_only and (info.published_at is None or info.published_at > reference):
            continue
        out.append(int(num))
    return out


def rank_random(ctx: Context, seed: Seed) -> list[int]:
    pool = allowed(ctx, seed, sorted(ctx.state.infos))
    digest = hashlib.sha256(f"{seed.num}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [pool[i] for i in rng.permutation(len(pool))[: ctx.k]]


def rank_recency(ctx: Context, seed: Seed) -> list[int]:
    reference = (seed.published_at or datetime.now(timezone.utc)).timestamp()
    pool = allowed(ctx, seed, sorted(ctx.state.infos))

    def gap(num: int) -> float:
        when = ctx.state.infos[num].published_at
        return abs(when.timestamp() - reference) if when else float("inf")

    return sorted(pool, key=lambda n: (gap(n), n))[: ctx.k]


def rank_lexical(ctx: Context, seed: Seed) -> list[int]:
    query = ctx.state.lexical.query(terms(seed.text))
    fetch = 10 * ctx.k + 1
    while True:
        scores, nums = ctx.state.lexical.search(query, fetch)
        order = np.lexsort((nums, -scores))
        pool = allowed(ctx, seed, nums[order][scores[order] > 0])
        if len(pool) >= ctx.k or fetch >= len(ctx.state.lexical):
            return pool[: ctx.k]
        fetch *= 4


def rank_dense(ctx: Context, seed: Seed) -> list[int]:
    nums, dense, _ = pipeline.relevance(ctx.state, seed, ctx.filters, ctx.k)
    return _top(nums, dense, ctx.k)


def rank_hybrid(ctx: Context, seed: Seed) -> list[int]:
    weight = ctx.options.get("lexical_weight")
    weight = HYBRID_WEIGHT if weight is None else weight
    nums, _, relevance = pipeline.relevance(ctx.state, seed, ctx.filters, ctx.k, weight)
    return _top(nums, relevance, ctx.k)


def rank_default(ctx: Context, seed: Seed) -> list[int]:
    opts = ctx.engine.ranking(**{**ctx.options, "k": ctx.k})
    return [ctx.state.by_id[item.id] for item in pipeline.rank(ctx.state, seed, ctx.filters, opts)]


def _top(nums: np.ndarray, scores: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((nums, -scores))
    return nums[order][:k].tolist()


RANKERS = {
    "random": rank_random,
    "recency": rank_recency,
    "lexical": rank_lexical,
    "dense": rank_dense,
    "hybrid": rank_hybrid,
    "default": rank_default,
}
