"""What editors decide over the ranking: pins and blocks under one article (curation),
and rules for every list (sections never shown, sections never shown together).

Both are applied when a list is served, not when it is computed: a change is visible at
the next page view, and survives re-embeddings and profile switches, which recompute
lists but never touch these. Rules also apply when lists are precomputed, so that the
stored lists are already long enough once their excluded items are dropped.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recommender.errors import InvalidQuery, RecommenderError
from recommender.ranking.rules import Filters, RelatedItem
from recommender.store.articles import ArticleInfo, check_id, describe_validation_error
from recommender.store.base import Store
from recommender.text.normalize import fold

MAX_PINS = 20
MAX_BLOCKS = 500
PINNED_REASON = "chosen by the editors"


class InvalidRules(RecommenderError):
    """The rules file cannot be read or says something impossible."""


class Curation(BaseModel):
    """An article's editorial choices: `pin` comes first, in this order; `block` never appears."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pin: list[str] = Field(default_factory=list, max_length=MAX_PINS, examples=[["2025-03-20-istanbul"]],
                           description="Ids shown first, in this order, when they pass the request's filters")
    block: list[str] = Field(default_factory=list, max_length=MAX_BLOCKS, examples=[["2025-03-14-urs"]],
                             description="Ids never shown under this article")

    @field_validator("pin", "block")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(check_id(i) for i in ids))

    @model_validator(mode="after")
    def _disjoint(self) -> "Curation":
        both = sorted(set(self.pin) & set(self.block))
        if both:
            raise ValueError(f"{len(both)} id(s) both pinned and blocked, e.g. {both[0]!r}")
        return self

    @property
    def empty(self) -> bool:
        return not self.pin and not self.block

    def check_for(self, article_id: str) -> "Curation":
        """Itself, if it may stand under `article_id`; InvalidQuery otherwise."""
        if article_id in self.pin or article_id in self.block:
            raise InvalidQuery(f"{article_id!r} cannot be pinned or blocked under itself: "
                               "no list shows its own article")
        return self


class Curations:
    """Each article's curation, on the store's shelf: shared by every server over the store."""

    def __init__(self, store: Store):
        self.shelf = store.shelf("curation", replica=True)  # read at every page view, as the lists are

    def get(self, article_id: str) -> Curation:
        text = self.shelf.read(article_id)
        return Curation.model_validate_json(text) if text else Curation()

    def put(self, article_id: str, curation: Curation) -> None:
        if curation.empty:
            self.shelf.delete(article_id)
        else:
            self.shelf.write(article_id, curation.model_dump_json())


class SectionPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    under: list[str] = Field(min_length=1, description="Under an article of one of these sections...")
    never: list[str] = Field(min_length=1, description="...never an article of these")


class EditorialRules(BaseModel):
    """The rules file (`RECOMMENDER_RULES`, TOML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    never_sections: list[str] = Field(default_factory=list, description="Sections no list ever shows")
    never_together: list[SectionPair] = Field(default_factory=list)

    def excluded_under(self, section: str | None) -> tuple[str, ...]:
        """The sections a list under an article of `section` never shows."""
        key = fold(section or "").strip()
        out = list(self.never_sections)
        for pair in self.never_together:
            if key and key in {fold(s).strip() for s in pair.under}:
                out.extend(pair.never)
        return tuple(dict.fromkeys(out))

    def filters_under(self, section: str | None, filters: Filters) -> Filters:
        """`filters` with the sections these rules exclude under `section` added."""
        excluded = self.excluded_under(section)
        if not excluded:
            return filters
        return replace(filters, exclude_sections=tuple(dict.fromkeys(filters.exclude_sections + excluded)))


NO_RULES = EditorialRules()


def load_rules(path: Path | None) -> EditorialRules:
    """The rules of the file `path` (none without one); InvalidRules says what is wrong."""
    if path is None:
        return NO_RULES
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRules(f"no rules file {path}", hint="unset RECOMMENDER_RULES or create the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRules(f"the rules file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRules(f"the rules file {path} is not valid TOML: {exc}") from None
    try:
        return EditorialRules.model_validate(data)
    except ValidationError as exc:
        raise InvalidRules(f"the rules file {path}: {describe_validation_error(exc)}") from None


@dataclass(frozen=True)
class Edit:
    """What editors' choices make of one request: the filters the ranking must respect,
    and the pinned items that come before what it ranks."""

    filters: Filters
    pinned: list[RelatedItem]

    def apply(self, ranked: list[RelatedItem], k: int) -> list[RelatedItem]:
        return (self.pinned + ranked)[:k]


def edit(seed: ArticleInfo, filters: Filters, k: int, curation: Curation, rules: EditorialRules,
         lookup: Callable[[list[str]], list[ArticleInfo]]) -> Edit:
    """The request's `filters` plus the rules under the seed's section, the blocked and the
    pinned ids (a pin is shown once, first); the pins that exist and pass those filters.
    `lookup`: the stored articles of some ids, those that exist."""
    hard = rules.filters_under(seed.section, filters)
    reference = seed.published_at or datetime.now(timezone.utc)
    pins = [info for info in lookup(curation.pin) if info.id != seed.id and hard.accepts(info, reference)][:k]
    if curation.empty:
        return Edit(hard, [])
    ids = tuple(dict.fromkeys(hard.exclude_ids + tuple(curation.pin) + tuple(curation.block)))
    pinned = [RelatedItem(i.id, i.title, i.url, i.published_at, i.section, 1.0, 1.0, PINNED_REASON, pinned=True,
                          image_url=i.image_url)
              for i in pins]
    return Edit(replace(hard, exclude_ids=ids), pinned)
