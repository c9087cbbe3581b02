"""Request and response bodies, with the examples shown at /docs."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recommender.ranking.editorial import Curation
from recommender.ranking.rules import FilterParams
from recommender.settings import RankingSettings
from recommender.store.articles import parse_date
from recommender.text.normalize import check_unicode


class RelatedItemOut(BaseModel):
    id: str = Field(examples=["2025-03-20-istanbul-talks"])
    title: str = Field(examples=["A doua rundă de convorbiri diplomatice despre Ucraina, la Istanbul"])
    url: str | None = Field(None, description="http(s) only, with click attribution unless switched off",
                            examples=["https://www.example.ro/externe/istanbul?ref=related&from=kiev-talks&pos=1"])
    published_at: datetime | None = None
    section: str | None = Field(None, examples=["externe"])
    relevance: float = Field(examples=[0.61], description=(
        "How related: 0 is a random pair of the archive, 1 the same text. Never below the minimum "
        f"score (RECOMMENDER_RANKING__MIN_SCORE, default {RankingSettings().min_score}); 1 for an editor's pin."))
    rank_score: float = Field(examples=[0.55], description=(
        "relevance after the time prior (closer in time ranks higher): what the list is ordered by, "
        "with diversity applied"))
    reason: str = Field(examples=["shared terms: convorbiri, istanbul; 6 days later"])
    pinned: bool = Field(False, description="placed by an editor (PUT /v1/articles/{id}/curation), not ranked")
    image_url: str | None = Field(None, description="the article's picture, when it has one (http(s) only)",
                                  examples=["https://www.example.ro/img/istanbul.jpg"])


class RelatedOut(BaseModel):
    article_id: str | None = Field(examples=["2025-03-14-kiev-talks"])
    items: list[RelatedItemOut]
    model: str = Field(examples=["e5-small-q4"])
    index_version: str = Field(examples=["v1"])
    experiment: str | None = Field(None, description="the running experiment this page view is in, if any")
    arm: str | None = Field(None, description="its arm: send it back with the page's impression and clicks")
    note: str | None = Field(None, description="why the list is empty when the arm keeps the page's own block",
                             examples=[None])


class DraftIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "title": "Negocieri de pace la Istanbul", "body": "Delegațiile Ucrainei și Rusiei se întâlnesc...",
        "k": 5, "filters": {"exclude_sections": ["lifestyle"], "max_age_days": 60}}]})

    title: str = Field(min_length=1, max_length=2000)
    body: str = ""
    section: str | None = Field(None, max_length=200, description="The draft's section: a feature of the ranking")
    tags: list[str] = Field(default_factory=list, max_length=100, description="The draft's tags: a feature too")
    k: int = Field(5, ge=1, le=50)
    published_at: str | int | float | None = Field(None, description=(
        "The draft's date, in any form an article's may take (without an offset: the archive's time "
        "zone); default now"), examples=["2025-03-14T19:05:00+02:00"])
    diversity: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    @field_validator("published_at")
    @classmethod
    def _date(cls, value: Any) -> Any:
        if value not in (None, ""):
            parse_date(value)  # refused here, with the value quoted; read in the archive's zone by the route
        return value

    def date(self, timezone_: tzinfo) -> datetime | None:
        return None if self.published_at in (None, "") else parse_date(self.published_at, timezone_)

    filters: FilterParams = Field(default_factory=FilterParams)

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        check_unicode(value)
        return value


class WriteOut(BaseModel):
    id: str
    status: str = Field(examples=["added"], description="added | updated | unchanged | deleted")


class BulkItemOut(BaseModel):
    index: int = Field(description="0-based position in the array, or line number - 1 in JSONL")
    id: str | None = None
    status: str = Field(examples=["added"], description="added | updated | unchanged | rejected")
    error: str | None = None


class BulkOut(BaseModel):
    added: int
    updated: int
    unchanged: int
    rejected: int
    results: list[BulkItemOut]


class RewriteIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "html": "<article><h1>Titlu</h1><p>Text.</p><div><h3>Citește și</h3><ul>"
                "<li><a href='https://x.ro/a'>Alt titlu</a></li></ul></div></article>",
        "article_id": "2025-03-14-kiev-talks"}]})

    html: str
    article_id: str | None = Field(None, description="Without it, suggestions are computed from the page's own text")

    @model_validator(mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        check_unicode(value)
        return value


class RewriteOut(BaseModel):
    html: str
    replaced: int
    experiment: str | None = None
    arm: str | None = Field(None, description="the page view's arm; `original` leaves the page as it was")


class EventResultOut(BaseModel):
    index: int = Field(description="0-based position in the array, or line number - 1 in JSONL")
    status: str = Field(examples=["stored"], description="stored | rejected")
    error: str | None = None


class EventsOut(BaseModel):
    stored: int
    rejected: int
    results: list[EventResultOut]


class ArticleOut(BaseModel):
    id: str
    title: str
    body: str
    url: str | None
    published_at: datetime | None
    section: str | None
    tags: list[str]
    language: str
    meta: dict[str, Any]


class CurationOut(BaseModel):
    article_id: str = Field(examples=["2025-03-14-kiev-talks"])
    pin: list[str] = Field(examples=[["2025-03-20-istanbul-talks"]])
    block: list[str] = Field(examples=[["2025-03-14-bear-sighting"]])

    @classmethod
    def of(cls, article_id: str, curation: Curation) -> "CurationOut":
        return cls(article_id=article_id, pin=curation.pin, block=curation.block)
