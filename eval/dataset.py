"""Labelled datasets: the ingest JSONL plus `topic`/`section`, `related`, `story`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from recommender.errors import NoLabels
from recommender.store.jsonl import Rejection, open_source, read_jsonl


@dataclass(frozen=True)
class Labelled:
    id: str
    label: str | None  # topic, else section: for same-label precision
    related: tuple[str, ...]
    story: str | None
    published_at: datetime | None


@dataclass
class Dataset:
    path: str
    articles: dict[str, Labelled]
    label_field: str | None  # "topic" | "section" | None
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def has_related(self) -> bool:
        return any(a.related for a in self.articles.values())

    @property
    def has_story(self) -> bool:
        return any(a.story for a in self.articles.values())

    def kinds(self) -> list[str]:
        """Which label kinds can be scored: 'label', 'related', 'story'."""
        kinds = []
        if self.label_field:
            kinds.append("label")
        if self.has_related:
            kinds.append("related")
        if self.has_story:
            kinds.append("story")
        return kinds

    def queries(self) -> list[str]:
        """Articles that carry at least one label in use, in file order."""
        return [a.id for a in self.articles.values() if a.label or a.related or a.story]

    def relevant(self, kind: str, query: str) -> set[str]:
        """Relevant articles for `query` under one label kind (never the query itself)."""
        q = self.articles[query]
        if kind == "related":
            found = {r for r in q.related if r in self.articles}
        else:
            key = q.label if kind == "label" else q.story
            found = set(self._groups(kind).get(key, ())) if key else set()
        found.discard(query)
        return found

    def _groups(self, kind: str) -> dict[str, set[str]]:
        cache = self.__dict__.setdefault("_group_cache", {})
        if kind not in cache:
            groups: dict[str, set[str]] = {}
            for a in self.articles.values():
                key = a.label if kind == "label" else a.story
                if key:
                    groups.setdefault(key, set()).add(a.id)
            cache[kind] = groups
        return cache[kind]


def load_dataset(path: str | Path) -> Dataset:
    """Read labels straight from the file; bad lines are kept as rejections.

    Same-label precision uses `topic` when any article has one, else `section`.
    """
    stream, name = open_source(str(path))
    rows: list[tuple[str, str | None, str | None, tuple[str, ...], str | None, datetime | None]] = []
    rejected: list[Rejection] = []
    with stream:
        for _, item in read_jsonl(stream, name):
            if isinstance(item, Rejection):
                rejected.append(item)
                continue
            related = item.meta.get("related") or ()
            related = (related,) if isinstance(related, (str, int)) else related
            rows.append((item.id, _text(item.meta.get("topic")), item.section or None,
                         tuple(str(r) for r in related), _text(item.meta.get("story")), item.published_at))
    label_field = "topic" if any(r[1] for r in rows) else ("section" if any(r[2] for r in rows) else None)
    articles = {r[0]: Labelled(r[0], r[1] if label_field == "topic" else r[2], r[3], r[4], r[5]) for r in rows}
    dataset = Dataset(str(path), articles, label_field, rejected)
    if not dataset.kinds():
        raise NoLabels(
            f"{path} has no usable label: give articles a 'topic' or 'section', "
            "a 'related' list of ids, or a 'story' id"
        )
    return dataset


def _text(value) -> str | None:
    return str(value) if value not in (None, "", []) else None
