"""The article: what the CMS sends, validated once, the same for JSONL and the API."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from recommender.errors import InvalidArticle
from recommender.text.normalize import check_unicode, clean_text, fold, normalize

RAW_BODY_LIMIT = 200_000
MAX_ID_LENGTH = 512
MAX_META_DEPTH = 16  # metadata nested deeper is a mistake or an attack, never an article
_ID_FORBIDDEN = re.compile(r"[/\x00-\x1f\x7f]")
# Categories of characters that show nothing: controls, formats (zero-width, direction
# marks and overrides), surrogates, private use, unassigned, line and paragraph separators.
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
# Dates outside this range are typos or placeholders (0001-01-01), never news.
EARLIEST_YEAR, LATEST_YEAR = 1800, 2200
DATE_FORMS = "ISO 8601, dd.mm.yyyy[ HH:MM], RFC 2822 (RSS) or Unix seconds"
_DOTTED = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T,]+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_ISO_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


class _NoSuchDay(ValueError):
    """A date of the right form that no calendar has (31.11, 29.02.2025)."""


def _check_day(year: int, month: int, day: int) -> None:
    from datetime import date

    try:
        date(year, month, day)
    except ValueError as exc:
        if 1 <= year <= 9999:
            raise _NoSuchDay(str(exc)) from None


def parse_date(value: Any, timezone_: tzinfo = timezone.utc) -> datetime:
    """A publication date in any form Romanian CMS exports carry, as an aware UTC
    datetime. Times without an offset are in `timezone_` (the archive's zone).
    ValueError says what is wrong and names the accepted forms; it does not quote the
    value (the API's 422 never echoes input: it may be huge)."""
    try:
        parsed = _parse_date(value)
    except _NoSuchDay as exc:
        raise ValueError(f"is not a day of the calendar ({exc}); use {DATE_FORMS}") from None
    if parsed is None:
        raise ValueError(f"is not a date; use {DATE_FORMS}")
    if not EARLIEST_YEAR <= parsed.year <= LATEST_YEAR:
        raise ValueError(f"is outside the years {EARLIEST_YEAR}-{LATEST_YEAR}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone_)
    return parsed.astimezone(timezone.utc)


def _parse_date(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _from_unix(value)
    if not isinstance(value, str) or len(value) > 100:
        return None
    text = value.strip()
    if _NUMBER.match(text):
        return _from_unix(float(text))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        if match := _ISO_DAY.match(text):
            _check_day(int(match[1]), int(match[2]), int(match[3]))
    if match := _DOTTED.match(text):
        day, month, year, hour, minute, second = (int(g) if g else 0 for g in match.groups())
        _check_day(year, month, day)
        try:
            return datetime(year, month, day, hour, minute, second)
        except ValueError:
            return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def _from_unix(seconds: float) -> datetime | None:
    if not math.isfinite(seconds) or not 0 <= seconds < 7.3e9:  # 1970 to about 2200
        return None
    return datetime.fromtimestamp(seconds, timezone.utc)


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


@dataclass(frozen=True)
class EmbedText:
    text: str
    truncated: bool  # longer than the window: embedded from its beginning
    empty_body: bool


@dataclass(frozen=True, slots=True)
class ArticleInfo:
    """What ranking needs of a stored article, kept in memory for every article: slots,
    not a dictionary per instance (a million of them)."""

    num: int  # the store's stable int64 id, which FAISS sees
    id: str
    title: str
    url: str | None
    published_at: datetime | None
    section: str | None
    language: str
    content_hash: str
    tags: tuple[str, ...] = ()
    recommendable: bool = True  # False: it keeps its own list but enters none
    image_url: str | None = None  # for the site's block template; most archives have none
    section_key: str = field(init=False, compare=False)  # the section without case or diacritics ("" when none)
    title_key: int = field(init=False, compare=False)  # title_key(title): equal keys mean the same headline

    def __post_init__(self) -> None:
        # Interned: a dozen sections shared by a million articles, not a string each.
        object.__setattr__(self, "section_key", sys.intern(fold(self.section or "").strip()))
        object.__setattr__(self, "title_key", title_key(self.title))


def title_key(title: str) -> int:
    """A headline without case or diacritics, as a number: 28 bytes, where the folded
    string would take a hundred, for every article."""
    return hash(fold(title).strip())


class Article(BaseModel):
    """One article. Fields beyond the core ones are kept as metadata (`meta`),
    so labelled evaluation files (`topic`, `related`, ...) ingest as they are."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, examples=["2025-03-14-kiev-talks"],
                    description="1 to 512 characters; no '/', no control characters, no surrounding spaces")
    title: str = Field(min_length=1, examples=["Kievul cere garanții de securitate"])
    body: str = Field("", description="Plain text or HTML; boilerplate is dropped before embedding.")
    url: str | None = Field(None, examples=["https://www.example.ro/externe/kiev-talks"])
    image_url: str | None = Field(None, examples=["https://www.example.ro/img/kiev-talks.jpg"], description=(
        "The article's picture, for a site's block template (RECOMMENDER_BLOCK_TEMPLATE); http(s) only"))
    published_at: datetime | None = Field(None, description=(
        "ISO 8601, dd.mm.yyyy[ HH:MM], RFC 2822 or Unix seconds; without an offset, in the archive's "
        "time zone (RECOMMENDER_TIMEZONE, default UTC)."))
    section: str | None = Field(None, examples=["externe"])
    tags: list[str] = Field(default_factory=list)
    language: str = "ro"
    recommendable: bool = Field(True, description=(
        "false for advertorials, obituaries, legal notices: the article keeps its own list but enters none"))

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # CMS exports often carry numeric ids; the id is the publisher's string either way.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return check_id(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _shallow_meta(self) -> "Article":
        if _depth(self.model_extra or {}) > MAX_META_DEPTH:
            raise ValueError(f"metadata nested deeper than {MAX_META_DEPTH} levels")
        return self

    @field_validator("title", "url", "image_url", "section", "language", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("body", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("published_at", mode="before")
    @classmethod
    def _date(cls, value: Any, info: ValidationInfo) -> datetime | None:
        if value is None or value == "":
            return None
        return parse_date(value, (info.context or {}).get("timezone", timezone.utc))

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
        # Fields added later are left out at their defaults, so archives stored before they
        # existed stay unchanged (an `image_url` then was metadata, under the same key).
        later = {"recommendable"} if self.recommendable else set()
        payload = self.model_dump(mode="json", exclude=later | ({"image_url"} if self.image_url is None else set()))
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def check_id(value: str) -> str:
    """The one rule for ids, the same at ingest, in bulk and on every route: what
    the URL of /v1/articles/{id} can carry back unchanged, and no two ids that look
    the same: no invisible characters (zero-width, direction overrides, U+0085), no
    space but the ASCII one, and one Unicode form (NFC)."""
    if value != value.strip():
        raise ValueError(f"{_shown(value)} has surrounding spaces; send it without them")
    if _ID_FORBIDDEN.search(value):
        raise ValueError(f"{_shown(value)} contains '/' or a control character, which a URL path cannot carry")
    if "\ufffd" in value:
        raise ValueError(f"{_shown(value)} contains U+FFFD, what invalid UTF-8 in a URL decodes to")
    hidden = next((c for c in value if unicodedata.category(c) in _HIDDEN or (c.isspace() and c != " ")), None)
    if hidden is not None:
        raise ValueError(f"{_shown(value)} contains U+{ord(hidden):04X} ({unicodedata.name(hidden, 'unnamed')}), "
                         "an invisible character that makes look-alike ids")
    if not unicodedata.is_normalized("NFC", value):
        raise ValueError(f"{_shown(value)} is not in Unicode NFC form; send it composed (NFC)")
    return value


def _depth(value: Any, level: int = 0) -> int:
    """How deep a decoded JSON value nests (iterative: a hostile value cannot exhaust the stack)."""
    deepest, stack = level, [(value, level)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_META_DEPTH:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def iso(value: datetime | None) -> str | None:
    """The one ISO 8601 form every output uses: UTC with a Z, as the API's JSON has it."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def content_hash(text: str) -> str:
    """Changes only when the embedded text changes: the key of the vector cache."""
    return hashlib.sha256(text.encode()).hexdigest()


def parse_article(obj: Any, timezone_: tzinfo = timezone.utc) -> Article:
    """Validate one decoded JSON value; raise InvalidArticle with a readable reason.
    Dates without an offset are in `timezone_`, the archive's time zone."""
    if not isinstance(obj, dict):
        raise InvalidArticle(f"expected a JSON object, got {type(obj).__name__}")
    try:
        check_unicode(obj)
    except ValueError as exc:
        raise InvalidArticle(str(exc)) from None
    try:
        return Article.model_validate(obj, context={"timezone": timezone_})
    except ValidationError as exc:
        raise InvalidArticle(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "article"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        parts.append(f"{field} {msg}")
    return "; ".join(parts)
