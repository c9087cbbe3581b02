"""Readers' events, checked and counted: impressions of a block, clicks on its items.

What is stored is counters, not events: per experiment arm and unit (what a report
clusters by), per position, per day, and per (article, item, position) for learning
from clicks. A year of a large site's traffic stays a few tables a report sums in
seconds, and a batch of events is one short write transaction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from recommender.errors import RecommenderError
from recommender.store.articles import check_id, describe_validation_error, parse_date
from recommender.text.normalize import check_unicode

MAX_ITEMS = 50  # a block's length: what the read routes' k allows
MAX_EVENTS = 10_000  # per request or per call; a log import counts in batches of it

Id = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(check_id)]
Label = Annotated[str, Field(min_length=1, max_length=200)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    article_id: Id = Field(description="the page's article: the block's seed")
    arm: Label | None = Field(None, description="the arm the read route answered with, if any")
    experiment: Label | None = Field(None, description="default: the newest experiment with that arm")
    visitor: Label | None = Field(None, description="any opaque string the site chooses")
    at: datetime | None = Field(None, description="ISO 8601; default now")

    def day(self) -> str:
        return (self.at or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d")


class Impression(_Event):
    type: Literal["impression"]
    items: list[Id] = Field(min_length=1, max_length=MAX_ITEMS, description="the ids shown, in order")


class Click(_Event):
    type: Literal["click"]
    item: Id = Field(description="the id clicked")
    pos: int = Field(ge=1, le=MAX_ITEMS, description="its position in the block, from 1")


Event = Annotated[Union[Impression, Click], Field(discriminator="type")]
_EVENT: TypeAdapter[Impression | Click] = TypeAdapter(Event)


class InvalidEvent(RecommenderError):
    pass


def parse_event(value: Any) -> Impression | Click:
    """One decoded JSON value as an event, or InvalidEvent with the reason (never the value)."""
    if not isinstance(value, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(value).__name__}")
    try:
        check_unicode(value)
        if isinstance(value.get("at"), (str, int, float)) and not isinstance(value.get("at"), bool):
            value = {**value, "at": parse_date(value["at"])}
        return _EVENT.validate_python(value)
    except ValidationError as exc:
        raise InvalidEvent(describe_validation_error(exc)) from None
    except ValueError as exc:
        raise InvalidEvent(f"at: {exc}") from None


@dataclass(frozen=True)
class Placed:
    """Where an event is counted: its experiment and arm ("" for none) and its unit."""

    experiment: str
    arm: str
    unit: str


Counter = dict[tuple, list[int]]  # key -> [impressions, clicks]


@dataclass
class EventCounts:
    """A batch of events as the increments of each counter table."""

    units: Counter = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # (experiment, arm, unit)
    positions: Counter = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # (experiment, arm, pos)
    days: Counter = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # (experiment, arm, day)
    pairs: Counter = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # (seed, item, pos, arm)
    impressions: int = 0
    clicks: int = 0

    def add(self, event: Impression | Click, placed: Placed) -> None:
        cell = (placed.experiment, placed.arm)
        kind = 0 if isinstance(event, Impression) else 1
        self.units[(*cell, placed.unit)][kind] += 1
        self.days[(*cell, event.day())][kind] += 1
        if isinstance(event, Impression):
            self.impressions += 1
            for pos, item in enumerate(event.items, start=1):
                self.positions[(*cell, pos)][0] += 1
                self.pairs[(event.article_id, item, pos, placed.arm)][0] += 1
        else:
            self.clicks += 1
            self.positions[(*cell, event.pos)][1] += 1
            self.pairs[(event.article_id, event.item, event.pos, placed.arm)][1] += 1

    def __len__(self) -> int:
        return self.impressions + self.clicks


@dataclass(frozen=True)
class EventResult:
    index: int
    status: str  # "stored" | "rejected"
    error: str | None = None


def count_events(entries: list[tuple[int, Any]], place: Callable[[Impression | Click], Placed],
                 known: Callable[[set[str]], set[str]],
                 sent: int | None = None) -> tuple[EventCounts, list[EventResult]]:
    """(counts of the good events, a result per entry). `entries`: (index, decoded JSON);
    `place`: an event's experiment, arm and unit, or InvalidEvent; `known`: which of some
    article ids are stored; `sent`: the events of the request, undecodable ones included."""
    if max(len(entries), sent or 0) > MAX_EVENTS:
        raise InvalidEvent(f"{max(len(entries), sent or 0)} events in one request; send at most {MAX_EVENTS}")
    parsed: list[tuple[int, Impression | Click | str]] = []
    for index, value in entries:
        try:
            parsed.append((index, parse_event(value)))
        except InvalidEvent as exc:
            parsed.append((index, str(exc)))
    ids = {i for _, e in parsed if not isinstance(e, str) for i in _ids(e)}
    stored = known(ids) if ids else set()
    counts, results = EventCounts(), []
    for index, event in parsed:
        error = event if isinstance(event, str) else _problem(event, stored, place, counts)
        results.append(EventResult(index, "rejected" if error else "stored", error))
    return counts, results


def _ids(event: Impression | Click) -> list[str]:
    return [event.article_id, *(event.items if isinstance(event, Impression) else [event.item])]


def _problem(event: Impression | Click, stored: set[str], place: Callable[[Impression | Click], Placed],
             counts: EventCounts) -> str | None:
    unknown = [i for i in _ids(event) if i not in stored]
    if unknown:
        return f"unknown article {unknown[0]!r}" + (f" and {len(unknown) - 1} more" if len(unknown) > 1 else "")
    try:
        counts.add(event, place(event))
    except InvalidEvent as exc:
        return str(exc)
    return None
