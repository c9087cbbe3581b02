"""The rules that turn nearest neighbours into a "Citește și" list.

Pure functions over arrays, so each rule can be tested and measured alone.
The order, as `recommender.ranking.pipeline.rank` applies them:
1. filters (sections, language, excluded ids, date window from the seed's date),
   on the candidates of every source (`recommender.ranking.candidates`);
2. the score: the ranking profile's weights over the features of
   `recommender.ranking.features` (meaning, words, headline, names, days apart, section);
3. minimum relevance (cosine rescaled above the archive's random-pair level,
   blended with BM25): fewer items rather than noise;
4. near-duplicates of the seed are dropped (`same_story_as_seed`);
5. MMR selection, which also drops near-duplicates among the results (`mmr_select`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recommender.errors import InvalidQuery
from recommender.store.articles import ArticleInfo
from recommender.text.normalize import fold

DAY = 86400.0


@dataclass(frozen=True, kw_only=True)
class Filters:
    """What a caller may ask for. Dates are aware datetimes. Built from a
    `FilterParams` (API, CLI) or by keyword, never by position."""

    sections: tuple[str, ...] = ()
    exclude_sections: tuple[str, ...] = ()
    language: str | None = None
    exclude_ids: tuple[str, ...] = ()
    max_age_days: float | None = None  # |candidate date - seed date|
    past_only: bool = False  # only candidates published at or before the seed
    date_from: datetime | None = None
    date_to: datetime | None = None
    # Folded once, for `accepts`; derived from the fields above, so not compared.
    _sections: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _excluded_sections: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _excluded_ids: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        if self.max_age_days is not None and self.max_age_days < 0:
            raise InvalidQuery("max_age_days must be 0 or more")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InvalidQuery("date_from is after date_to")
        object.__setattr__(self, "_sections", frozenset(fold(s).strip() for s in self.sections))
        object.__setattr__(self, "_excluded_sections", frozenset(fold(s).strip() for s in self.exclude_sections))
        object.__setattr__(self, "_excluded_ids", frozenset(self.exclude_ids))

    @property
    def restricts_dates(self) -> bool:
        return self.max_age_days is not None or self.past_only or bool(self.date_from or self.date_to)

    def accepts(self, info: ArticleInfo, reference: datetime) -> bool:
        if info.id in self._excluded_ids or not info.recommendable:
            return False
        if self._sections and info.section_key not in self._sections:
            return False
        if self._excluded_sections and info.section_key in self._excluded_sections:
            return False
        if self.language and info.language != self.language:
            return False
        if not self.restricts_dates:
            return True
        when = info.published_at
        if when is None:
            return False  # an undated article cannot be shown to be inside the window
        if self.past_only and when > reference:
            return False
        if self.max_age_days is not None and abs((when - reference).total_seconds()) > self.max_age_days * DAY:
            return False
        if self.date_from and when < self.date_from:
            return False
        return not (self.date_to and when > self.date_to)


class FilterParams(BaseModel):
    """The filters of a request, as the API and the CLI take them. The GET query
    names (`section`, `exclude_section`, `exclude`) are aliases of the fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False, frozen=True)

    sections: list[str] = Field(default_factory=list, alias="section", examples=[["externe", "politica"]],
                                description="Only these sections")
    exclude_sections: list[str] = Field(default_factory=list, alias="exclude_section",
                                        description="Never these sections")
    language: str | None = None
    exclude_ids: list[str] = Field(default_factory=list, alias="exclude", description="Ids already on the page")
    max_age_days: float | None = Field(None, ge=0, le=100_000, description="Measured from the seed's date")
    past_only: bool = Field(False, description="Only articles published at or before the seed")
    date_from: datetime | None = None
    date_to: datetime | None = None

    @field_validator("date_from", "date_to")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value

    def to_filters(self) -> Filters:
        return Filters(sections=tuple(self.sections), exclude_sections=tuple(self.exclude_sections),
                       language=self.language, exclude_ids=tuple(self.exclude_ids), max_age_days=self.max_age_days,
                       past_only=self.past_only, date_from=self.date_from, date_to=self.date_to)


class RelatedQuery(FilterParams):
    """A related-articles request: filters plus the list's length and diversity."""

    model_config = ConfigDict(extra="ignore")

    k: int = Field(5, ge=1, le=50, description="How many suggestions")
    diversity: float | None = Field(None, ge=0, le=1, description="0 relevance only, 1 novelty only")


@dataclass(frozen=True)
class RelatedItem:
    id: str
    title: str
    url: str | None
    published_at: datetime | None
    section: str | None
    # How related, 0 (a random pair of the archive) to 1 (the same text): what
    # `min_score` applies to and what people are shown.
    relevance: float
    # `relevance` after the time prior: what the list is ordered by (in MMR order).
    rank_score: float
    reason: str
    pinned: bool = False  # placed by an editor (`recommender.ranking.editorial`), not ranked
    image_url: str | None = None


def rescale(cosines: np.ndarray, random_mean: float) -> np.ndarray:
    """Cosine mapped so the archive's average random pair is 0 and identity is 1.

    Thresholds on this scale mean the same for every model; raw e5 cosines of
    two unrelated news articles are about 0.8.
    """
    span = max(1.0 - random_mean, 1e-6)
    return (np.asarray(cosines, dtype=np.float64) - random_mean) / span


def same_story_as_seed(dense: np.ndarray, titles: np.ndarray, seed_title: int,
                       duplicate_threshold: float) -> np.ndarray:
    """Which candidates are near-duplicates of the seed: as close in meaning as
    `duplicate_threshold` (rescaled cosine), or under the same headline (`titles`
    are title keys, `recommender.store.articles.title_key`). The other near-duplicate
    rule, among the results, is in `mmr_select`; exact copies (the seed's content
    hash) never become candidates (`recommender.index.columns.Columns.others`)."""
    return (dense >= duplicate_threshold) | (titles == seed_title)


def mmr_select(score: np.ndarray, sims: np.ndarray, k: int, diversity: float, duplicate_threshold: float) -> list[int]:
    """Maximal Marginal Relevance over candidates, returning their positions.

    Each pick maximises (1 - diversity) * score / best score - diversity * (max
    similarity to what is already picked): diversity 0 is plain relevance order,
    1 is pure novelty. Scores are taken relative to the best one, so that a factor
    applied to every candidate (the time prior on an undated archive, say) does
    not change the balance. A candidate at or above `duplicate_threshold`
    similarity to a picked one is the same story and is skipped whatever the diversity.
    """
    top = float(np.max(score)) if len(score) else 1.0
    score = score / top if top > 0 else score
    chosen: list[int] = []
    alive = np.ones(len(score), dtype=bool)
    max_sim = np.zeros(len(score))
    while len(chosen) < k and alive.any():
        value = (1.0 - diversity) * score - diversity * np.maximum(max_sim, 0.0)
        value[~alive] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        alive[pick] = False
        max_sim = np.maximum(max_sim, sims[pick])
        alive &= sims[pick] < duplicate_threshold
    return chosen


REASON_TERMS = 3  # shared words a reason names


def shared_terms_reason(words: Sequence[str]) -> str:
    """A short human reason: the words the two articles share, the rarest first (at most
    REASON_TERMS, as the seed writes them; `recommender.ranking.pipeline.Explainer` picks them)."""
    if not words:
        return "similar topic"
    return "shared terms: " + ", ".join(words)


def age_phrase(delta_days: float | None) -> str:
    if delta_days is None:
        return ""
    days = round(abs(delta_days))
    if days == 0:
        return "same day"
    return f"{days} day{'s' if days != 1 else ''} {'earlier' if delta_days < 0 else 'later'}"
