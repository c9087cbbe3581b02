"""What every store backend offers: the articles, their vectors per (model, content
hash), the change log indexes and lists follow, stored lists and re-embedding jobs.

Callers hold a `Store` and never a backend: `open_store` picks SQLite in the data
dir, the embedded default, or PostgreSQL when the settings name a database URL, for
several servers over one store. Both implement the same two protocols.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol

import numpy as np

from recommender.errors import StoreError
from recommender.store.articles import Article, ArticleInfo, EmbedText, content_hash
from recommender.text.entities import entities
from recommender.text.normalize import terms

if TYPE_CHECKING:
    from recommender.settings import Settings


@dataclass(frozen=True)
class StoredArticle:
    num: int
    article: Article
    content_hash: str

    @property
    def id(self) -> str:
        return self.article.id


@dataclass(frozen=True)
class ArticleRow:
    """An article ready to store: its columns computed, so a write transaction is short."""

    article: Article
    text: EmbedText
    record_hash: str
    content_hash: str
    values: tuple  # the articles columns from id to image_url (all but updated_at)

    @classmethod
    def of(cls, article: Article, prepared: EmbedText) -> "ArticleRow":
        published = article.published_at
        record_hash, chash = article.record_hash(), content_hash(prepared.text)
        values = (
            article.id, article.title, article.body, article.url or None,
            published.isoformat() if published else None,
            published.timestamp() if published else None,
            article.section or None, json.dumps(article.tags, ensure_ascii=False), article.language,
            json.dumps(article.meta, ensure_ascii=False, default=str), prepared.text,
            " ".join(terms(prepared.text)), chash, record_hash, " ".join(entities(article.title, prepared.text)),
            int(article.recommendable), article.image_url or None,
        )
        return cls(article, prepared, record_hash, chash, values)


@dataclass(frozen=True)
class UpsertResult:
    num: int
    status: str  # "added" | "updated" | "unchanged"
    text: EmbedText


@dataclass(frozen=True)
class StoreStats:
    articles: int
    vectors_by_model: dict[str, int]
    sections: dict[str, int]
    first_published: datetime | None
    last_published: datetime | None
    last_change: int


class Writes(Protocol):
    """The writes of one transaction: all of them commit together, or none."""

    def upsert(self, row: ArticleRow) -> UpsertResult:
        """Insert or replace one article; unchanged when its record and text hashes match."""
        ...

    def delete(self, article_id: str) -> int | None:
        """The deleted article's num; None when there was none."""
        ...

    def put_vectors(self, model: str, hashes: list[str], vectors: np.ndarray, announce: bool = True) -> None:
        """`announce`: log the articles with these texts as changed, so that an index under
        `model` picks their vectors up (not for vectors no serving index reads yet)."""
        ...


class Shelf(Protocol):
    """Small named texts, such as the ranking profiles: a folder of files, or rows of a shared store."""

    def read(self, name: str) -> str | None: ...
    def write(self, name: str, text: str) -> None: ...
    def names(self) -> list[str]: ...
    def delete(self, name: str) -> None: ...


class Lease:
    """A role only one process may hold at a time, such as the list worker's. This one is
    always held: a backend with one server per store needs nothing more."""

    def held(self) -> bool:
        """Whether this process holds the role now; a free role is taken on the way."""
        return True

    def release(self) -> None:
        pass


class Store(Protocol):
    """A durable store. Every write appends the articles it touched to the change
    log, whose sequence numbers (`last_change`) indexes and lists follow."""

    def transaction(self) -> AbstractContextManager[Writes]: ...
    def reopened(self) -> Store:
        """The same store on fresh connections: for a forked worker process."""
        ...
    def schema_version(self) -> int: ...
    def damage(self) -> str | None:
        """What the backend's own integrity check reports, or None when it finds nothing."""
        ...
    def describe(self) -> str:
        """Where the store is, for messages (never a password)."""
        ...
    def repair_hint(self) -> str: ...
    def lease(self, name: str) -> Lease:
        """The role `name`, shared by every process over this store."""
        ...
    def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake` soon after another process commits a change (and on reconnecting);
        a backend without notifications never calls it, and callers poll."""
        ...
    def close(self) -> None: ...
    def shelf(self, prefix: str, replica: bool = False) -> Shelf:
        """Documents under `prefix`, shared by every process over this store; `replica`: read
        as page views are, from the standby when there is one."""
        ...

    # the change log
    def last_change(self) -> int: ...
    def changes_since(self, seq: int, limit: int | None = None) -> tuple[int, list[int]]: ...
    def changed_between(self, after: int, upto: int) -> list[int]: ...

    # articles
    def count(self) -> int: ...
    def get(self, article_id: str) -> StoredArticle | None: ...
    def num_of(self, article_id: str) -> int | None: ...
    def infos(self, nums: list[int]) -> dict[int, ArticleInfo]: ...
    def all_infos(self) -> Iterator[ArticleInfo]: ...
    def index_rows(self, model: str, nums: list[int] | None = None,
                   with_vectors: bool = True) -> Iterator[tuple[ArticleInfo, str, str, bytes | None]]: ...
    def urls(self) -> list[tuple[str, str]]: ...
    def id_by_url(self, url: str) -> str | None: ...
    def get_text(self, article_id: str) -> str | None: ...
    def text_and_terms(self, article_id: str) -> tuple[str, list[str]] | None: ...
    def texts_and_terms(self, nums: list[int]) -> dict[int, tuple[str, list[str]]]: ...
    def stats(self) -> StoreStats: ...

    # texts and vectors
    def count_texts(self) -> int: ...
    def all_texts(self) -> Iterator[str]: ...
    def texts_missing_vectors(self, model: str) -> list[tuple[str, str]]: ...
    def sample_texts(self, model: str, n: int, before_ts: float | None = None) -> list[tuple[str, str]]: ...
    def hashes_without_vectors(self, model: str, hashes: list[str]) -> set[str]: ...
    def vector(self, model: str, chash: str) -> np.ndarray | None: ...

    # precomputed lists, per index version (and profile, in the version string)
    def list_rows(self, version: str) -> Iterator[tuple[int, str, bool]]: ...
    def list_row(self, version: str, num: int) -> tuple[str, bool] | None: ...
    def put_lists(self, version: str, lists: dict[int, str]) -> None: ...
    def delete_lists(self, version: str, nums: Iterable[int]) -> None: ...
    def drop_lists(self, version: str) -> None: ...
    def lists_refreshed_seq(self, version: str) -> int | None: ...
    def mark_lists_refreshed(self, version: str, seq: int) -> None: ...

    # readers' events, as counters: key -> [impressions, clicks] per table
    def existing_ids(self, ids: Iterable[str]) -> set[str]: ...
    def add_event_counts(self, tables: dict[str, dict[tuple, list[int]]]) -> None: ...
    def arm_sums(self, experiment: str) -> list[tuple]: ...
    def event_cells(self, table: str, experiment: str) -> list[tuple]: ...
    def event_pairs(self) -> Iterator[tuple[str, str, int, int, int]]: ...
    def event_totals(self) -> tuple[int, int]: ...

    # re-embedding jobs
    def unfinished_job(self, model: str) -> str | None: ...
    def start_job(self, model: str, version: str) -> None: ...
    def finish_job(self, model: str) -> None: ...


def open_store(settings: Settings) -> Store:
    """The store the settings name: PostgreSQL at `database_url`, else the SQLite file in the data dir."""
    if settings.database_url:
        from recommender.store.postgres import PostgresStore

        return PostgresStore(settings.database_url, settings.database_read_url or None)
    from recommender.store.sqlite import SQLiteStore

    return SQLiteStore(settings.store_path)


def store_exists(settings: Settings) -> bool:
    """Whether there is a store to read: a database is assumed (opening it says if not)."""
    return bool(settings.database_url) or settings.store_path.exists()


def check_version(where: str, found: int, supported: int) -> None:
    if found > supported:
        raise StoreError(f"{where} has schema version {found}, newer than this program's {supported}",
                         hint="upgrade the recommender package")
