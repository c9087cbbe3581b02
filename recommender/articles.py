"""The article: what the CMS sends, validated once, the same for JSONL and the API."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recommender.errors import InvalidArticle
from recommender.text import clean_text, fold, normalize

RAW_BODY_LIMIT = 200_000


@dataclass(frozen=True)
class EmbedText:
    text: str
    truncated: bool  # longer than the window: embedded from its beginning
    empty_body: bool


@dataclass(frozen=True)
class ArticleInfo:
    """What ranking needs of a stored article, kept in memory for every article."""

    num: int  # the store's stable int64 id, which FAISS sees
    id: str
    title: str
    url: str | None
    published_at: datetime | None
    section: str | None
    language: str
    content_hash: str

    @cached_property
    def title_key(self) -> str:
        """The headline without case or diacritics: equal keys mean the same story."""
        return fold(self.title).strip()


class Article(BaseModel):
    """One article. Fields beyond the core ones are kept as metadata (`meta`),
    so labelled evaluation files (`topic`, `related`, ...) ingest as they are."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=512, examples=["2025-03-14-kiev-talks"])
    title: str = Field(min_length=1, examples=["Kievul cere garanții de securitate"])
    body: str = Field("", description="Plain text or HTML; boilerplate is dropped before embedding.")
    url: str | None = Field(None, examples=["https://www.example.ro/externe/kiev-talks"])
    published_at: datetime | None = Field(None, description="ISO 8601; without an offset it is taken as UTC.")
    section: str | None = Field(None, examples=["externe"])
    tags: list[str] = Field(default_factory=list)
    language: str = "ro"

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # CMS exports often carry numeric ids; the id is the publisher's string either way.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value.strip() if isinstance(value, str) else value

    @field_validator("title", "url", "section", "language", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("body", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("published_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return [] if value is None else value

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def embed_text(self, max_chars: int) -> EmbedText:
        """Title plus the cleaned body's beginning: what the model reads."""
        title = normalize(self.title)
        # Cleaning a multi-megabyte page costs seconds; its beginning is all we keep.
        raw = self.body[: max(RAW_BODY_LIMIT, 50 * max_chars)]
        body = clean_text(raw, title)
        full = f"{title}\n{body}".strip()
        return EmbedText(full[:max_chars].strip(), len(full) > max_chars or len(raw) < len(self.body), not body)

    def record_hash(self) -> str:
        """Changes when anything about the article changes, metadata included."""
        payload = self.model_dump(mode="json")
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def content_hash(text: str) -> str:
    """Changes only when the embedded text changes: the key of the vector cache."""
    return hashlib.sha256(text.encode()).hexdigest()


def parse_article(obj: Any) -> Article:
    """Validate one decoded JSON value; raise InvalidArticle with a readable reason."""
    if not isinstance(obj, dict):
        raise InvalidArticle(f"expected a JSON object, got {type(obj).__name__}")
    try:
        return Article.model_validate(obj)
    except ValidationError as exc:
        raise InvalidArticle(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "article"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "is required"
        parts.append(f"{field} {msg}")
    return "; ".join(parts)
