"""The ranking pipeline: from a seed (a stored article or a draft) to the
"Citește și" list, applying the rules of `recommender.ranking.rules` in order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Protocol

import numpy as np
from pydantic import ValidationError

from recommender.errors import ArticleNotFound, InvalidQuery
from recommender.index.lexical import LexicalIndex
from recommender.index.state import IndexState
from recommender.ranking import candidates, features, time_prior
from recommender.ranking.features import SeedTerms
from recommender.ranking.rules import (
    DAY,
    REASON_TERMS,
    Filters,
    RelatedItem,
    age_phrase,
    mmr_select,
    rescale,
    same_story_as_seed,
    shared_terms_reason,
)
from recommender.settings import RankingSettings
from recommender.store.articles import Article, content_hash, describe_validation_error, title_key
from recommender.text.entities import entities
from recommender.text.normalize import stem_words, surface_words, terms

NO_FILTERS = Filters()
POOL_MIN = 30  # MMR looks at this many top candidates at least

Embed = Callable[[list[str]], np.ndarray]


class Texts(Protocol):
    """Where a stored seed's text comes from: the store, or texts read ahead for a forked worker."""

    def text_and_terms(self, article_id: str) -> tuple[str, list[str]] | None: ...


@dataclass(frozen=True)
class Seed:
    """What the related list is computed from: a stored article or a draft."""

    num: int | None
    content_hash: str
    vector: np.ndarray
    published_at: datetime | None
    title: str
    text: str
    terms: SeedTerms
    section: str | None = None
    tags: tuple[str, ...] = ()


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


def stored_seed(state: IndexState, store: Texts, article_id: str, embed: Embed) -> Seed:
    num = state.by_id.get(article_id)
    if num is None:
        raise ArticleNotFound(article_id)
    info = state.infos[num]
    text, text_terms = store.text_and_terms(article_id) or ("", [])
    text = text or info.title
    if num in state.vectors:
        vector = state.vectors.reconstruct(np.array([num]))[0]
    else:  # stored but not embedded yet (an ingest was interrupted)
        vector = embed([text])[0]
    title_terms = state.titles.bag_of(num)  # stemming the headline again costs more than the rest of a seed
    seed_terms = SeedTerms(text_terms or terms(text), terms(info.title) if title_terms is None else title_terms,
                           state.entities.terms_of(num))
    return Seed(num, info.content_hash, vector, info.published_at, info.title, text, seed_terms, info.section,
                info.tags)


def draft_seed(title: str, body: str, published_at: datetime | None, embed_chars: int, embed: Embed,
               section: str | None = None, tags: tuple[str, ...] = ()) -> Seed:
    draft = Article(id="draft", title=title, body=body, published_at=published_at)
    text = draft.embed_text(embed_chars).text
    seed_terms = SeedTerms(terms(text), terms(draft.title), entities(draft.title, text))
    return Seed(None, content_hash(text), embed([text])[0], draft.published_at, draft.title, text, seed_terms,
                section, tags)


class Explainer:
    """Builds each item's reason from the seed's words, computed once per list: the seed's
    known terms are put in the reasons' order once (rarest first, then by stem), so an
    item's reason takes its shared terms' first places, and no term is decoded per item."""

    def __init__(self, lexical: LexicalIndex, seed_text: str, seed_terms: list[str] | None = None):
        """`seed_terms`: terms(seed_text), when the seed has them already (stemming costs ms)."""
        self.lexical = lexical
        pairs = surface_words(seed_text)
        if seed_terms is None or len(seed_terms) != len(pairs):
            seed_terms = stem_words([folded for _, folded in pairs])
        surface: dict[str, str] = {}
        for stem, (word, _) in zip(seed_terms, pairs):
            surface.setdefault(stem, word)
        self.seed_ids = np.unique(lexical.term_ids(seed_terms))
        stems = lexical.vocab.take(self.seed_ids.tolist())
        idf = lexical.idf(self.seed_ids).tolist()
        order = sorted(range(len(stems)), key=lambda i: (-idf[i], stems[i]))
        self.place = np.empty(len(stems), dtype=np.int64)
        self.place[order] = np.arange(len(stems))
        self.words = [surface.get(stem, stem) for stem in stems]

    def reason(self, num: int) -> str:
        shared = self.lexical.shared_among(num, self.seed_ids)
        best = shared[np.argsort(self.place[shared])[:REASON_TERMS]]
        return shared_terms_reason([self.words[i] for i in best.tolist()])


@dataclass(frozen=True)
class Ranked:
    """A list, and the rank_score of every candidate (those below the minimum relevance
    too: relevance is not symmetric, the seed may pass it in a candidate's own list)."""

    items: list[RelatedItem]
    nums: np.ndarray
    scores: np.ndarray


NOTHING = Ranked([], np.zeros(0, dtype=np.int64), np.zeros(0))


def rank(state: IndexState, seed: Seed, filters: Filters, opts: RankingSettings,
         nearest: np.ndarray | None = None) -> list[RelatedItem]:
    """Candidates from every source, scored by the profile's weights over their
    features, then the list's rules: minimum relevance, no near-duplicates, MMR.
    `nearest`: the seed's nearest neighbours when a batch of seeds was searched at once."""
    return rank_scored(state, seed, filters, opts, nearest).items


def rank_scored(state: IndexState, seed: Seed, filters: Filters, opts: RankingSettings,
                nearest: np.ndarray | None = None) -> Ranked:
    """`rank`, with the candidates' scores: the lists' upkeep asks whether this seed would
    enter the lists of its candidates (recommender.serving.lists.ListUpkeep.affected)."""
    if state.vectors.count == 0:
        return NOTHING
    reference = seed.published_at or datetime.now(timezone.utc)
    pairs = candidate_pairs(state, seed, filters, opts, nearest)
    dense, lexical = pairs.column("dense"), pairs.column("lexical")
    relevance_ = (1 - opts.lexical_weight) * dense + opts.lexical_weight * lexical
    linear = score_pairs(pairs, opts.weights, opts.time_prior)
    score = 1.0 / (1.0 + np.exp(-np.clip(linear, -50, 50)))  # rank_score: the same order, in (0, 1)
    keep = relevance_ >= opts.min_score
    keep &= ~same_story_as_seed(dense, state.columns.title[pairs.nums], title_key(seed.title), opts.duplicate_threshold)
    if not keep.any():
        return Ranked([], pairs.nums, score)
    nums, relevance_, linear = pairs.nums[keep], relevance_[keep], linear[keep]
    candidates_score, score = score, score[keep]
    pool = np.lexsort((nums, -linear))[: max(POOL_MIN, 4 * opts.k)]
    vectors = state.vectors.reconstruct(nums[pool])
    sims = rescale(vectors @ vectors.T, state.meta.random_pair_mean)
    # MMR weighs the pool's scores spread over [0, 1], so a profile's scale (a learned one's
    # weights are larger) does not change how much diversity counts.
    spread = linear[pool] - linear[pool].min()
    spread = spread / spread.max() if spread.max() > 0 else np.ones(len(pool))
    chosen = [pool[i] for i in mmr_select(spread, sims, opts.k, opts.diversity, opts.duplicate_threshold)]
    deltas = _deltas(state, nums[chosen], reference)
    explain = Explainer(state.lexical, seed.text, seed.terms.text)
    return Ranked([_item(state, explain, int(nums[i]), float(relevance_[i]), float(score[i]), delta)
                   for i, delta in zip(chosen, deltas)], pairs.nums, candidates_score)


def gather(state: IndexState, seed: Seed, filters: Filters, opts: RankingSettings,
           nearest: np.ndarray | None = None, queries: features.Queries | None = None) -> candidates.Candidates:
    """Every source's candidates for the seed that pass the filters."""
    reference = seed.published_at or datetime.now(timezone.utc)
    when = time_prior.source_time(seed.published_at, opts.time_prior)
    queries = queries or features.Queries.of(state, seed.terms)
    return candidates.gather(state, seed.vector, queries.text, queries.entities, when,
                             _acceptor(state, seed, filters, reference), opts.candidates, opts.window_days,
                             filters.past_only, nearest)


def candidate_pairs(state: IndexState, seed: Seed, filters: Filters, opts: RankingSettings,
                    nearest: np.ndarray | None = None) -> features.Pairs:
    """The candidates and their features: what the profile's weights score."""
    when = seed.published_at.timestamp() if seed.published_at else None
    queries = features.Queries.of(state, seed.terms)
    found = gather(state, seed, filters, opts, nearest, queries)
    return features.compute(state, found.nums, seed.vector, seed.terms, when, seed.section, seed.tags, queries)


def score_pairs(pairs: features.Pairs, weights: dict[str, float], with_time: bool = True) -> np.ndarray:
    """The profile's linear score of each candidate: what the list is ordered by;
    `with_time`: whether the time prior counts."""
    skip = time_prior.switched_off(with_time)
    w = np.array([0.0 if name in skip else weights.get(name, 0.0) for name in features.FEATURES])
    return pairs.matrix @ w + weights.get("bias", 0.0)


def relevance(state: IndexState, seed: Seed, filters: Filters, k: int,
              lexical_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nums, rescaled dense similarity, relevance) of the nearest neighbours by
    cosine that pass the filters, with BM25 blended in by `lexical_weight`: the
    dense and hybrid baselines of the evaluation."""
    reference = seed.published_at or datetime.now(timezone.utc)
    nums = candidates.dense(state, seed.vector, _acceptor(state, seed, filters, reference), max(64, 10 * k))
    dense = rescale(state.vectors.reconstruct(nums) @ seed.vector, state.meta.random_pair_mean)
    if lexical_weight <= 0 or len(nums) == 0:
        return nums, dense, dense
    lexical = features.normalized_bm25(state.lexical, seed.terms.text, nums)
    return nums, dense, (1 - lexical_weight) * dense + lexical_weight * lexical


def _acceptor(state: IndexState, seed: Seed, filters: Filters, reference: datetime) -> candidates.Accept:
    def accept(nums: np.ndarray) -> np.ndarray:
        ok = state.columns.others(nums, seed.num, seed.content_hash)
        if filters != NO_FILTERS:  # a request's filters; the precomputed lists have none
            for i in np.flatnonzero(ok):
                ok[i] = filters.accepts(state.infos[int(nums[i])], reference)
        return ok

    return accept


def _deltas(state: IndexState, nums: np.ndarray, reference: datetime) -> np.ndarray:
    """Days from the seed to each candidate (negative: published before); NaN if undated.
    From the dates' column: each info decoded here as well as for its item was 3 % of a list."""
    return (state.columns.when[nums] - reference.timestamp()) / DAY


def _item(state: IndexState, explain: Explainer, num: int, relevance_: float, score: float,
          delta: float) -> RelatedItem:
    info = state.infos[num]
    reason = explain.reason(num)
    when = age_phrase(None if np.isnan(delta) else delta)
    return RelatedItem(info.id, info.title, info.url, info.published_at, info.section, round(relevance_, 4),
                       round(score, 4), f"{reason}; {when}" if when else reason, image_url=info.image_url)
