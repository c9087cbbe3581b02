"""The store's queries, written once for every SQL backend.

They use the subset SQLite and PostgreSQL share (`?` placeholders, which the
PostgreSQL backend turns into its own; `INSERT ... ON CONFLICT`; no backend
functions). A backend supplies the connections, its migrations and its own
way of serialising the writers of the change log.
"""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator, Protocol

import numpy as np

from recommender.store.articles import Article, ArticleInfo
from recommender.store.base import ArticleRow, Lease, Shelf, Store, StoredArticle, StoreStats, UpsertResult, Writes

ROW_COLUMNS = ("num, id, title, body, url, published_at, section, tags, language, meta, content_hash, recommendable, "
               "image_url")
INFO_COLUMNS = ("a.num, a.id, a.title, a.url, a.published_at, a.section, a.language, a.content_hash, a.tags, "
                "a.recommendable, a.image_url")
INFO_WIDTH = 11  # the columns of INFO_COLUMNS
BATCH = 500  # values per IN (...) list
# The event counter tables and their keys (recommender.audience.events.EventCounts).
EVENT_TABLES = {"event_units": ("experiment", "arm", "unit"), "event_positions": ("experiment", "arm", "pos"),
                "event_days": ("experiment", "arm", "day"), "event_pairs": ("seed", "item", "pos", "arm")}


class Executor(Protocol):
    """One connection inside a write transaction."""

    def one(self, sql: str, params: tuple = ()) -> tuple | None: ...
    def many(self, sql: str, rows: Iterable[tuple]) -> None: ...


class SQLStore(Store):
    """Every query of the `Store` protocol; subclasses provide the hooks below."""

    # --- what a backend provides -------------------------------------------------

    def _rows(self, sql: str, params: tuple = (), replica: bool = False) -> list[tuple]:
        """Every row; `replica`: a page view's read, which a standby may answer."""
        raise NotImplementedError

    def _stream(self, sql: str, params: tuple = ()) -> Iterator[tuple]:
        """Rows one at a time, for scans of the whole archive."""
        raise NotImplementedError

    def _writing(self, log_changes: bool) -> AbstractContextManager[Executor]:
        """A write transaction. `log_changes`: it appends to the change log, whose writers
        must commit in the order of their sequence numbers."""
        raise NotImplementedError

    def lease(self, name: str) -> Lease:
        raise NotImplementedError

    def _one(self, sql: str, params: tuple = (), replica: bool = False) -> tuple | None:
        rows = self._rows(sql, params, replica)
        return rows[0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[Writes]:
        with self._writing(log_changes=True) as ex:
            yield _Writes(ex)

    # --- the change log ------------------------------------------------------------

    def last_change(self) -> int:
        return self._rows("SELECT COALESCE(MAX(seq), 0) FROM changes")[0][0]

    def changes_since(self, seq: int, limit: int | None = None) -> tuple[int, list[int]]:
        """(last seq, nums of the articles changed after `seq`); with `limit`, only the next
        `limit` changes. Writers of the log commit in seq order (see `_writing`), so every
        seq up to the last one read is committed: no snapshot is needed."""
        if limit is None:
            last = self.last_change()
            return last, self.changed_between(seq, last)
        rows = self._rows("SELECT seq, num FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        last = rows[-1][0] if rows else seq
        return last, list(dict.fromkeys(num for _, num in rows))

    def changed_between(self, after: int, upto: int) -> list[int]:
        """Nums of the articles changed with after < seq <= upto."""
        return [r[0] for r in self._rows("SELECT DISTINCT num FROM changes WHERE seq > ? AND seq <= ?",
                                         (after, upto))]

    # --- articles ------------------------------------------------------------------

    def index_rows(self, model: str, nums: list[int] | None = None,
                   with_vectors: bool = True) -> Iterator[tuple[ArticleInfo, str, str, bytes | None]]:
        """(info, terms, entities, vector under `model` or None) of every article, or of
        those of `nums` that still exist."""
        vector = "v.vector" if with_vectors else "NULL"
        join = "LEFT JOIN vectors v ON v.model = ? AND v.content_hash = a.content_hash" if with_vectors else ""
        sql = f"SELECT {INFO_COLUMNS}, a.terms, a.entities, {vector} FROM articles a {join}"
        params: tuple = (model,) if with_vectors else ()
        if nums is None:
            rows: Iterable[tuple] = self._stream(sql + " ORDER BY a.num", params)
        else:
            rows = (row for batch in _batches(nums)
                    for row in self._rows(sql + f" WHERE a.num IN ({_marks(batch)}) ORDER BY a.num", params + batch))
        for row in rows:
            yield _info(row[:INFO_WIDTH]), row[INFO_WIDTH], row[INFO_WIDTH + 1], _bytes(row[INFO_WIDTH + 2])

    def all_infos(self) -> Iterator[ArticleInfo]:
        """What ranking keeps of every article, without its text."""
        for row in self._stream(f"SELECT {INFO_COLUMNS} FROM articles a ORDER BY a.num"):
            yield _info(row)

    def count(self) -> int:
        return self._rows("SELECT COUNT(*) FROM articles")[0][0]

    def get(self, article_id: str) -> StoredArticle | None:
        row = self._one(f"SELECT {ROW_COLUMNS} FROM articles WHERE id = ?", (article_id,), replica=True)
        return _stored(row) if row else None

    def num_of(self, article_id: str) -> int | None:
        row = self._one("SELECT num FROM articles WHERE id = ?", (article_id,), replica=True)
        return row[0] if row else None

    def infos(self, nums: list[int]) -> dict[int, ArticleInfo]:
        """What ranking keeps of each article, for those of `nums` that exist."""
        found: dict[int, ArticleInfo] = {}
        for batch in _batches(nums):
            for row in self._rows(f"SELECT {INFO_COLUMNS} FROM articles a WHERE a.num IN ({_marks(batch)})", batch,
                                  replica=True):
                found[row[0]] = _info(row)
        return found

    def id_by_url(self, url: str) -> str | None:
        """The article stored under `url` (the first one, if several share it)."""
        row = self._one("SELECT id FROM articles WHERE url = ? ORDER BY num LIMIT 1", (url,), replica=True)
        return row[0] if row else None

    def urls(self) -> list[tuple[str, str]]:
        """(id, url) of every article with a URL."""
        return [(r[0], r[1]) for r in self._rows("SELECT id, url FROM articles WHERE url IS NOT NULL")]

    def get_text(self, article_id: str) -> str | None:
        row = self._one("SELECT text FROM articles WHERE id = ?", (article_id,))
        return row[0] if row else None

    def text_and_terms(self, article_id: str) -> tuple[str, list[str]] | None:
        """The article's text and its stemmed words as stored at write time (stemming again costs ms)."""
        row = self._one("SELECT text, terms FROM articles WHERE id = ?", (article_id,))
        return (row[0], row[1].split()) if row else None

    def texts_and_terms(self, nums: list[int]) -> dict[int, tuple[str, list[str]]]:
        """`text_and_terms` of many articles at once, by num (those that exist)."""
        return {row[0]: (row[1], row[2].split()) for batch in _batches(nums) for row in self._rows(
            f"SELECT num, text, terms FROM articles WHERE num IN ({_marks(batch)})", batch)}

    def stats(self) -> StoreStats:
        by_model = {m: n for m, n in self._rows("SELECT model, COUNT(*) FROM vectors GROUP BY model")}
        sections = {s: n for s, n in self._rows(
            "SELECT COALESCE(section, ''), COUNT(*) FROM articles GROUP BY section ORDER BY COUNT(*) DESC")}
        # Two subqueries: each reads one end of the index, where MIN and MAX together scan it all.
        first, last = self._rows("SELECT (SELECT MIN(published_ts) FROM articles), "
                                 "(SELECT MAX(published_ts) FROM articles)")[0]
        return StoreStats(self.count(), by_model, sections, _from_ts(first), _from_ts(last), self.last_change())

    # --- readers' events -----------------------------------------------------------

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        return {row[0] for batch in _batches(sorted(set(ids))) for row in self._rows(
            f"SELECT id FROM articles WHERE id IN ({_marks(batch)})", batch)}

    def add_event_counts(self, tables: dict[str, dict[tuple, list[int]]]) -> None:
        """Adds to each table's counters (EVENT_TABLES), in one transaction. Keys go in sorted
        order, so two servers adding to the same rows never wait for each other in a cycle."""
        with self._writing(log_changes=False) as ex:
            for table, cells in tables.items():
                keys = EVENT_TABLES[table]
                ex.many(f"""INSERT INTO {table} ({", ".join(keys)}, impressions, clicks)
                            VALUES ({_marks(keys)}, ?, ?) ON CONFLICT ({", ".join(keys)}) DO UPDATE SET
                            impressions = {table}.impressions + excluded.impressions,
                            clicks = {table}.clicks + excluded.clicks""",
                        [(*key, imp, clk) for key, (imp, clk) in sorted(cells.items())])

    def arm_sums(self, experiment: str) -> list[tuple]:
        """(arm, units, impressions, clicks, sum c^2, sum i^2, sum c*i) over each arm's units."""
        return [tuple(int(v) if i else v for i, v in enumerate(row)) for row in self._rows(
            """SELECT arm, COUNT(*), SUM(impressions), SUM(clicks), SUM(clicks * clicks),
                      SUM(impressions * impressions), SUM(clicks * impressions)
               FROM event_units WHERE experiment = ? GROUP BY arm""", (experiment,))]

    def event_cells(self, table: str, experiment: str) -> list[tuple]:
        """(arm, pos or day, impressions, clicks) of event_positions or event_days, in order."""
        column = {"event_positions": "pos", "event_days": "day"}[table]
        return self._rows(f"SELECT arm, {column}, impressions, clicks FROM {table} WHERE experiment = ? "
                          f"ORDER BY arm, {column}", (experiment,))

    def event_pairs(self) -> Iterator[tuple[str, str, int, int, int]]:
        """(seed, item, pos, impressions, clicks) over every arm, in (seed, item) order."""
        # PostgreSQL sums BIGINT into NUMERIC (a Decimal): counts come back as int on both backends.
        for seed, item, pos, impressions, clicks in self._stream(
                "SELECT seed, item, pos, SUM(impressions), SUM(clicks) FROM event_pairs "
                "GROUP BY seed, item, pos ORDER BY seed, item, pos"):
            yield seed, item, int(pos), int(impressions), int(clicks)

    def event_totals(self) -> tuple[int, int]:
        row = self._rows("SELECT COALESCE(SUM(impressions), 0), COALESCE(SUM(clicks), 0) FROM event_days")[0]
        return int(row[0]), int(row[1])

    # --- texts and vectors ---------------------------------------------------------

    def count_texts(self) -> int:
        """Distinct texts: what a full re-embedding has to cover."""
        return self._rows("SELECT COUNT(DISTINCT content_hash) FROM articles")[0][0]

    def all_texts(self) -> Iterator[str]:
        """Every distinct embedded text, streamed (a million do not fit in a list comfortably)."""
        for (text,) in self._stream("SELECT MIN(text) FROM articles GROUP BY content_hash"):
            yield text

    def texts_missing_vectors(self, model: str) -> list[tuple[str, str]]:
        """(content_hash, text) of every distinct text that `model` has not embedded."""
        return [(r[0], r[1]) for r in self._rows(
            """SELECT a.content_hash, MIN(a.text) FROM articles a
               LEFT JOIN vectors v ON v.model = ? AND v.content_hash = a.content_hash
               WHERE v.content_hash IS NULL GROUP BY a.content_hash ORDER BY MIN(a.num)""", (model,))]

    def sample_texts(self, model: str, n: int, before_ts: float | None = None) -> list[tuple[str, str]]:
        """Up to `n` distinct (content_hash, text), published before `before_ts` if given:
        those `model` has already embedded first (they cost nothing), then by hash, which
        is a deterministic shuffle of the archive."""
        where = "" if before_ts is None else "WHERE a.published_ts < ?"
        return [(r[0], r[1]) for r in self._rows(
            f"""SELECT a.content_hash, MIN(a.text) FROM articles a
                LEFT JOIN vectors v ON v.model = ? AND v.content_hash = a.content_hash
                {where} GROUP BY a.content_hash
                ORDER BY MAX(CASE WHEN v.content_hash IS NULL THEN 1 ELSE 0 END), a.content_hash LIMIT ?""",
            (model, *(() if before_ts is None else (before_ts,)), n))]

    def hashes_without_vectors(self, model: str, hashes: list[str]) -> set[str]:
        """Those of `hashes` that `model` has no vector for."""
        unique = sorted(set(hashes))
        have = {r[0] for batch in _batches(unique) for r in self._rows(
            f"SELECT content_hash FROM vectors WHERE model = ? AND content_hash IN ({_marks(batch)})",
            (model, *batch))}
        return set(unique) - have

    def vector(self, model: str, chash: str) -> np.ndarray | None:
        row = self._one("SELECT vector FROM vectors WHERE model = ? AND content_hash = ?", (model, chash))
        return np.frombuffer(_bytes(row[0]) or b"", dtype=np.float32).copy() if row else None

    # --- precomputed lists -----------------------------------------------------------

    def list_rows(self, version: str) -> Iterator[tuple[int, str, bool]]:
        """(num, items as JSON, fresh) of every stored list of a version."""
        for num, items, fresh in self._stream("SELECT num, items, fresh FROM related_lists WHERE version = ?",
                                              (version,)):
            yield num, items, bool(fresh)

    def list_row(self, version: str, num: int) -> tuple[str, bool] | None:
        """(items as JSON, fresh) of one stored list: what a page view reads."""
        row = self._one("SELECT items, fresh FROM related_lists WHERE version = ? AND num = ?", (version, num),
                        replica=True)
        return (row[0], bool(row[1])) if row else None

    def put_lists(self, version: str, lists: dict[int, str]) -> None:
        with self._writing(log_changes=False) as ex:
            ex.many("""INSERT INTO related_lists (version, num, items, fresh) VALUES (?, ?, ?, 1)
                       ON CONFLICT (version, num) DO UPDATE SET items = excluded.items, fresh = 1""",
                    [(version, num, items) for num, items in lists.items()])

    def delete_lists(self, version: str, nums: Iterable[int]) -> None:
        with self._writing(log_changes=False) as ex:
            ex.many("DELETE FROM related_lists WHERE version = ? AND num = ?", [(version, n) for n in nums])

    def drop_lists(self, version: str) -> None:
        """The lists of an index version, under every ranking profile."""
        with self._writing(log_changes=False) as ex:
            for table in ("related_lists", "list_progress"):
                ex.one(f"DELETE FROM {table} WHERE version = ? OR version LIKE ? || ':%'", (version, version))

    def lists_refreshed_seq(self, version: str) -> int | None:
        row = self._one("SELECT refreshed_seq FROM list_progress WHERE version = ?", (version,))
        return row[0] if row else None

    def mark_lists_refreshed(self, version: str, seq: int) -> None:
        """Record that lists follow the change log up to `seq` (never moving it back)."""
        with self._writing(log_changes=False) as ex:
            ex.one("""INSERT INTO list_progress (version, refreshed_seq) VALUES (?, ?)
                      ON CONFLICT (version) DO UPDATE SET refreshed_seq = CASE
                          WHEN excluded.refreshed_seq > list_progress.refreshed_seq THEN excluded.refreshed_seq
                          ELSE list_progress.refreshed_seq END""", (version, seq))

    # --- re-embedding jobs ------------------------------------------------------------

    def unfinished_job(self, model: str) -> str | None:
        row = self._one("SELECT version FROM reembed_jobs WHERE model = ? AND finished_at IS NULL", (model,))
        return row[0] if row else None

    def start_job(self, model: str, version: str) -> None:
        with self._writing(log_changes=False) as ex:
            ex.one("""INSERT INTO reembed_jobs (model, version, started_at, finished_at) VALUES (?, ?, ?, NULL)
                      ON CONFLICT (model) DO UPDATE SET version = excluded.version,
                          started_at = excluded.started_at, finished_at = NULL""", (model, version, _now()))

    def finish_job(self, model: str) -> None:
        with self._writing(log_changes=False) as ex:
            ex.one("UPDATE reembed_jobs SET finished_at = ? WHERE model = ?", (_now(), model))


    # --- documents -------------------------------------------------------------------------

    def shelf(self, prefix: str, replica: bool = False) -> Shelf:
        return _TableShelf(self, prefix, replica)

    # --- a copy to another store (recommender.store.copy) ---------------------------------

    def count_rows(self, table: str) -> int:
        return self._rows(f"SELECT COUNT(*) FROM {table}")[0][0]

    def scan(self, sql: str, params: tuple = ()) -> Iterator[tuple]:
        return self._stream(sql, params)

    def first_ids(self, n: int) -> list[str]:
        return [r[0] for r in self._rows("SELECT id FROM articles ORDER BY num LIMIT ?", (n,))]

    def insert_rows(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> int:
        """Rows as they are, keys included; those already there are left (a resumed copy)."""
        if rows:
            with self._writing(log_changes=False) as ex:
                ex.many(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({_marks(columns)}) "
                        "ON CONFLICT DO NOTHING", rows)
        return len(rows)

    def after_copy(self) -> None:
        """What a backend does once rows came with their keys (SQLite: nothing)."""


class _TableShelf(Shelf):
    def __init__(self, store: SQLStore, prefix: str, replica: bool = False):
        self.store, self.prefix, self.replica = store, prefix.rstrip("/") + "/", replica

    def read(self, name: str) -> str | None:
        row = self.store._one("SELECT body FROM documents WHERE name = ?", (self.prefix + name,), self.replica)
        return row[0] if row else None

    def write(self, name: str, text: str) -> None:
        with self.store._writing(log_changes=False) as ex:
            ex.one("INSERT INTO documents (name, body) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET body = excluded.body", (self.prefix + name, text))

    def delete(self, name: str) -> None:
        with self.store._writing(log_changes=False) as ex:
            ex.one("DELETE FROM documents WHERE name = ?", (self.prefix + name,))

    def names(self) -> list[str]:
        return [r[0][len(self.prefix):] for r in self.store._rows(
            "SELECT name FROM documents WHERE substr(name, 1, ?) = ? ORDER BY name", (len(self.prefix), self.prefix))]


class _Writes(Writes):
    """The writes of one transaction, on its connection."""

    def __init__(self, ex: Executor):
        self.ex = ex

    def upsert(self, row: ArticleRow) -> UpsertResult:
        """The row is prepared beforehand (`ArticleRow.of`): stemming and hashing stay
        outside the transaction, which other writers wait for."""
        article, prepared = row.article, row.text
        old = self.ex.one("SELECT num, record_hash, content_hash FROM articles WHERE id = ?", (article.id,))
        if old is not None and old[1] == row.record_hash and old[2] == row.content_hash:
            return UpsertResult(old[0], "unchanged", prepared)
        written = self.ex.one(
            """INSERT INTO articles (id, title, body, url, published_at, published_ts, section, tags,
                   language, meta, text, terms, content_hash, record_hash, entities, recommendable, image_url,
                   updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (id) DO UPDATE SET
                   title=excluded.title, body=excluded.body, url=excluded.url,
                   published_at=excluded.published_at, published_ts=excluded.published_ts,
                   section=excluded.section, tags=excluded.tags, language=excluded.language,
                   meta=excluded.meta, text=excluded.text, terms=excluded.terms,
                   content_hash=excluded.content_hash, record_hash=excluded.record_hash,
                   entities=excluded.entities, recommendable=excluded.recommendable,
                   image_url=excluded.image_url, updated_at=excluded.updated_at
               RETURNING num""",
            row.values + (_now(),),
        )
        assert written is not None  # RETURNING always yields the row
        self.ex.one("INSERT INTO changes (num) VALUES (?)", (written[0],))
        return UpsertResult(written[0], "added" if old is None else "updated", prepared)

    def delete(self, article_id: str) -> int | None:
        row = self.ex.one("DELETE FROM articles WHERE id = ? RETURNING num", (article_id,))
        if row is None:
            return None
        self.ex.one("INSERT INTO changes (num) VALUES (?)", (row[0],))
        return row[0]

    def put_vectors(self, model: str, hashes: list[str], vectors: np.ndarray, announce: bool = True) -> None:
        self.ex.many("""INSERT INTO vectors (model, content_hash, vector) VALUES (?, ?, ?)
                        ON CONFLICT (model, content_hash) DO UPDATE SET vector = excluded.vector""",
                     [(model, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in zip(hashes, vectors)])
        if announce:
            self.ex.many("INSERT INTO changes (num) SELECT num FROM articles WHERE content_hash = ?",
                         [(h,) for h in hashes])


def _batches(values: list) -> list[tuple]:
    return [tuple(values[i:i + BATCH]) for i in range(0, len(values), BATCH)]


def _marks(batch: tuple) -> str:
    return ",".join("?" * len(batch))


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return bytes(value) if isinstance(value, memoryview) else value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _from_ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, timezone.utc) if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _info(row: tuple) -> ArticleInfo:
    num, aid, title, url, published, section, language, chash, tags, recommendable, image_url = row
    # A dozen sections and a few languages shared by every article, not a string each.
    return ArticleInfo(num, aid, title, url, _parse_time(published), section and sys.intern(section),
                       sys.intern(language), chash, tuple(json.loads(tags)), bool(recommendable), image_url)


def _stored(row: tuple) -> StoredArticle:
    num, aid, title, body, url, published, section, tags, language, meta, chash, recommendable, image_url = row
    fields = dict(json.loads(meta))
    fields.update(id=aid, title=title, body=body, url=url, published_at=published, section=section,
                  tags=json.loads(tags), language=language, recommendable=bool(recommendable), image_url=image_url)
    return StoredArticle(num, Article.model_validate(fields), chash)
