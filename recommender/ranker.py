"""The ranking pipeline: from a seed (a stored article or a draft) to the
"Citește și" list, applying the rules of `recommender.ranking` in order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np
from pydantic import ValidationError

from recommender.articles import Article, content_hash, describe_validation_error
from recommender.errors import ArticleNotFound, InvalidQuery
from recommender.lexical import LexicalIndex
from recommender.ranking import (
    DAY, Filters, RelatedItem, age_phrase, mmr_select, rescale, shared_terms_reason, time_factor,
)
from recommender.settings import RankingSettings
from recommender.state import IndexState
from recommender.store import Store
from recommender.text import fold, stem_words, surface_words, terms

POOL_MIN = 30  # MMR looks at this many top candidates at least

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Seed:
    """What the related list is computed from: a stored article or a draft."""

    num: int | None
    content_hash: str
    vector: np.ndarray
    published_at: datetime | None
    title: str
    text: str


def ranking_options(defaults: RankingSettings, **overrides) -> RankingSettings:
    """The defaults with a request's overrides (None keeps the default); InvalidQuery if out of range."""
    unknown = set(overrides) - set(RankingSettings.model_fields)
    if unknown:
        raise InvalidQuery(f"unknown ranking option(s): {', '.join(sorted(unknown))}")
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return RankingSettings.model_validate({**defaults.model_dump(), **values})
    except ValidationError as exc:
        raise InvalidQuery(describe_validation_error(exc)) from None


def stored_seed(state: IndexState, store: Store, article_id: str, embed: Embed) -> Seed:
    num = state.by_id.get(article_id)
    if num is None:
        raise ArticleNotFound(article_id)
    info = state.infos[num]
    text = store.get_text(article_id) or info.title
    if num in state.vectors:
        vector = state.vectors.reconstruct(np.array([num]))[0]
    else:  # stored but not embedded yet (an ingest was interrupted)
        vector = embed([text])[0]
    return Seed(num, info.content_hash, vector, info.published_at, info.title, text)


def draft_seed(title: str, body: str, published_at: datetime | None, embed_chars: int, embed: Embed) -> Seed:
    draft = Article(id="draft", title=title, body=body, published_at=published_at)
    text = draft.embed_text(embed_chars).text
    return Seed(None, content_hash(text), embed([text])[0], draft.published_at, draft.title, text)


class Explainer:
    """Builds each item's reason from the seed's words, computed once per list."""

    def __init__(self, lexical: LexicalIndex, seed_text: str):
        self.lexical = lexical
        pairs = surface_words(seed_text)
        self.seed_terms = stem_words([folded for _, folded in pairs])
        self.surface: dict[str, str] = {}
        for stem, (word, _) in zip(self.seed_terms, pairs):
            self.surface.setdefault(stem, word)
        self.idf = lexical.idf_of(self.seed_terms)

    def reason(self, num: int) -> str:
        return shared_terms_reason(self.seed_terms, self.lexical.terms_of(num), self.idf, self.surface)


def rank(state: IndexState, seed: Seed, filters: Filters, opts: RankingSettings) -> list[RelatedItem]:
    """The default ranking: every rule of `recommender.ranking`, in order."""
    if state.vectors.count == 0:
        return []
    reference = seed.published_at or datetime.now(timezone.utc)
    nums, dense, relevance_ = relevance(state, seed, filters, opts.k, opts.lexical_weight)
    seed_title = fold(seed.title).strip()
    keep = (relevance_ >= opts.min_score) & (dense < opts.duplicate_threshold)
    keep &= np.array([state.infos[n].title_key != seed_title for n in nums], dtype=bool)
    nums, relevance_ = nums[keep], relevance_[keep]
    if len(nums) == 0:
        return []
    deltas = _deltas(state, nums, reference)
    score = relevance_
    if opts.time_prior:
        factor = time_factor(np.nan_to_num(deltas, nan=np.inf), opts.half_life_days, opts.time_floor)
        score = relevance_ * factor
    pool = np.argsort(-score, kind="stable")[: max(POOL_MIN, 4 * opts.k)]
    vectors = state.vectors.reconstruct(nums[pool])
    sims = rescale(vectors @ vectors.T, state.meta.random_pair_mean)
    chosen = [pool[i] for i in mmr_select(score[pool], sims, opts.k, opts.diversity, opts.duplicate_threshold)]
    explain = Explainer(state.lexical, seed.text)
    return [_item(state, explain, int(nums[i]), float(relevance_[i]), float(score[i]), deltas[i]) for i in chosen]


def relevance(state: IndexState, seed: Seed, filters: Filters, k: int,
              lexical_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nums, rescaled dense similarity, relevance) of the candidates that pass
    the filters. With a lexical weight, relevance blends in BM25, computed on
    the dense candidates only: its cost does not grow with the archive, and a
    write never forces a corpus-wide lexical rebuild."""
    reference = seed.published_at or datetime.now(timezone.utc)
    accept = _acceptor(state, seed, filters, reference)
    cosines, nums = _dense_candidates(state, seed, accept, k)
    dense = rescale(cosines, state.meta.random_pair_mean)
    if lexical_weight <= 0 or len(nums) == 0:
        return nums, dense, dense
    lexical = _lexical(state, seed, nums)
    return nums, dense, (1 - lexical_weight) * dense + lexical_weight * lexical


def _acceptor(state: IndexState, seed: Seed, filters: Filters, reference: datetime):
    def accept(num: int) -> bool:
        info = state.infos.get(num)
        return (info is not None and num != seed.num and info.content_hash != seed.content_hash
                and filters.accepts(info, reference))

    return accept


def _dense_candidates(state: IndexState, seed: Seed, accept, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbours that pass the filters, widening the search until
    enough pass or the whole index has been seen."""
    fetch = max(64, 10 * k)
    while True:
        cosines, nums = state.vectors.search(seed.vector, fetch)
        cosines, nums = cosines[0], nums[0]
        ok = np.array([n >= 0 and accept(int(n)) for n in nums], dtype=bool)
        if ok.sum() >= 5 * k or fetch >= state.vectors.count:
            return cosines[ok], nums[ok]
        fetch *= 4


def _lexical(state: IndexState, seed: Seed, nums: np.ndarray) -> np.ndarray:
    """BM25 of each candidate against the seed's top terms, over the seed's own score."""
    seed_terms = terms(seed.text)
    query = state.lexical.query(seed_terms)
    own = state.lexical.score_terms(query, seed_terms)
    if own <= 0:
        return np.zeros(len(nums))
    return np.minimum(state.lexical.score(query, nums.tolist()) / own, 1.0)


def _deltas(state: IndexState, nums: np.ndarray, reference: datetime) -> np.ndarray:
    """Days from the seed to each candidate (negative: published before); NaN if undated."""
    ref = reference.timestamp()
    return np.array([
        (info.published_at.timestamp() - ref) / DAY if (info := state.infos[n]).published_at else np.nan
        for n in nums
    ])


def _item(state: IndexState, explain: Explainer, num: int, relevance_: float, score: float,
          delta: float) -> RelatedItem:
    info = state.infos[num]
    reason = explain.reason(num)
    when = age_phrase(None if np.isnan(delta) else delta)
    return RelatedItem(info.id, info.title, info.url, info.published_at, info.section, round(relevance_, 4),
                       round(score, 4), f"{reason}; {when}" if when else reason)
