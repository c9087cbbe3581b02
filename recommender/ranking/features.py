"""What the ranking knows about each (seed, candidate) pair, and the linear score over it.

Every feature is a column of one matrix, so the score of a few hundred
candidates is one matrix product, and `recommender tune` learns the weights of
exactly the columns serving uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recommender.index.lexical import LexicalIndex
from recommender.index.state import IndexState
from recommender.ranking import time_prior
from recommender.ranking.rules import rescale
from recommender.text.normalize import fold

FEATURES = (
    "dense",         # cosine, rescaled: 0 a random pair of the archive, 1 the same text
    "dense_z",       # the same, as a z-score over this seed's candidates
    "lexical",       # BM25 of the candidate for the seed's top terms, over the seed's own
    "lexical_z",     # the same, as a z-score over the candidates
    "title",         # BM25 of the candidate's headline for the seed headline's terms, over the seed's own
    "entities",      # BM25 over named entities (people, companies, places), over the seed's own
    "log_days",      # the time prior (recommender.ranking.time_prior): log2(1 + |days apart| / 7)
    "after",         # 1 when the candidate was published after the seed
    "undated",       # 1 when either has no date
    "same_section",  # 1 when both have the same section
    "tags",          # Jaccard overlap of the tags
    # Derived from the above, for a learned profile (the hand-set one leaves them at 0):
    "title_z", "entities_z",            # z-scores over the candidates
    "dense_rr", "lexical_rr",           # 1 / rank among the candidates
    "title_rr", "entities_rr",
    "within_day", "within_week", "within_month",  # |days apart| at most 1, 7, 30
    "title_x_entities",                 # both headline words and names shared
    "dense_z_x_week",                   # close in meaning and within a week
)


@dataclass(frozen=True)
class SeedTerms:
    """What the lexical features need of the seed, computed once per list."""

    text: list[str]
    title: list[str]
    entities: list[str]


@dataclass(frozen=True)
class Queries:
    """The seed's BM25 queries (its most telling terms) in each lexical index: the
    candidate sources and the features ask the same, so they are computed once."""

    text: tuple[np.ndarray, np.ndarray]
    title: tuple[np.ndarray, np.ndarray]
    entities: tuple[np.ndarray, np.ndarray]
    own: tuple[float, float, float]  # the seed's own BM25 for each: what `normalized_bm25` divides by

    @classmethod
    def of(cls, state: IndexState, seed: SeedTerms) -> "Queries":
        (text, own_text), (title, own_title), (entities, own_entities) = (
            state.lexical.query_and_own(seed.text), state.titles.query_and_own(seed.title),
            state.entities.query_and_own(seed.entities))
        return cls(text, title, entities, (own_text, own_title, own_entities))


@dataclass(frozen=True)
class Pairs:
    """The feature matrix of one seed's candidates."""

    nums: np.ndarray
    matrix: np.ndarray  # len(nums) x len(FEATURES)

    def column(self, name: str) -> np.ndarray:
        return self.matrix[:, FEATURES.index(name)]


def compute(state: IndexState, nums: np.ndarray, vector: np.ndarray, seed: SeedTerms,
            when: float | None, section: str | None, tags: tuple[str, ...], queries: Queries | None = None) -> Pairs:
    queries = queries or Queries.of(state, seed)
    dense = rescale(state.vectors.reconstruct(nums) @ vector, state.meta.random_pair_mean)
    lexical = normalized_bm25(state.lexical, seed.text, nums, queries.text, queries.own[0])
    section_code = state.columns.section_code(fold(section or "").strip())
    seed_tags = {fold(t) for t in tags}
    columns = {
        "dense": dense,
        "dense_z": _z(dense),
        "lexical": lexical,
        "lexical_z": _z(lexical),
        "title": normalized_bm25(state.titles, seed.title, nums, queries.title, queries.own[1]),
        "entities": normalized_bm25(state.entities, seed.entities, nums, queries.entities, queries.own[2]),
        "same_section": ((state.columns.section[nums] == section_code) & (section_code > 0)).astype(float),
        "tags": _tags(state, nums, seed_tags),
        **time_prior.columns(state.columns.when[nums], when),
    }
    columns.update(_derived(columns))
    return Pairs(nums, np.column_stack([columns[name] for name in FEATURES]) if len(nums) else
                 np.zeros((0, len(FEATURES))))


def _derived(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "title_z": _z(columns["title"]), "entities_z": _z(columns["entities"]),
        **{f"{name}_rr": _reciprocal_rank(columns[name]) for name in ("dense", "lexical", "title", "entities")},
        "title_x_entities": columns["title"] * columns["entities"],
        "dense_z_x_week": columns["dense_z"] * columns["within_week"],
    }


def _reciprocal_rank(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(-values, kind="stable")] = np.arange(1, len(values) + 1)
    return 1.0 / ranks


def normalized_bm25(lexical: LexicalIndex, seed_terms: list[str], nums: np.ndarray,
                    query: tuple[np.ndarray, np.ndarray] | None = None, own: float | None = None) -> np.ndarray:
    """BM25 of each candidate for the seed's top terms (`query`, when computed already),
    over the seed's own score (`own`, likewise): 1 is as close as the seed to itself."""
    if query is None:
        query, own = lexical.query_and_own(seed_terms)
    elif own is None:
        own = lexical.score_terms(query, seed_terms)
    if own <= 0 or len(nums) == 0:
        return np.zeros(len(nums))
    return np.minimum(lexical.score(query, nums) / own, 1.0)


def _z(values: np.ndarray) -> np.ndarray:
    std = values.std() if len(values) else 0.0
    return (values - values.mean()) / std if std > 0 else np.zeros(len(values))


def _tags(state: IndexState, nums: np.ndarray, seed_tags: set[str]) -> np.ndarray:
    """The Jaccard overlap of each candidate's tags with the seed's."""
    if not seed_tags:
        return np.zeros(len(nums))
    overlaps = (_jaccard(seed_tags, {fold(tag) for tag in state.infos[int(n)].tags}) for n in nums)
    return np.fromiter(overlaps, dtype=float, count=len(nums))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0
