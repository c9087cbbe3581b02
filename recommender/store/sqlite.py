"""SQLite store: articles, their content hashes, and vectors per (model, content hash).

Vectors are keyed by content hash, not by article, so unchanged text is never
re-embedded: not on a re-ingest, not when an article is renamed, and not when
a re-embedding job meets text it has already seen.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from recommender.errors import StoreError
from recommender.store.articles import Article, ArticleInfo
from recommender.store.base import ArticleRow, Store, StoredArticle, StoreStats, UpsertResult, Writes
from recommender.text.entities import entities

# Each entry brings a store from the version before it to its own number
# (PRAGMA user_version). Version 0 is a store from before versioning, or a new
# file: every statement is idempotent, so both take the same path.
MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: the schema as first released, plus the related-lists table that used to
    # be created on first use.
    """
    CREATE TABLE IF NOT EXISTS articles (
        num INTEGER PRIMARY KEY AUTOINCREMENT,  -- the stable int64 id FAISS sees; never reused
        id TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        url TEXT,
        published_at TEXT,                      -- ISO 8601, UTC
        published_ts REAL,                      -- the same, as a Unix time, for filtering
        section TEXT,
        tags TEXT NOT NULL,                     -- JSON list
        language TEXT NOT NULL,
        meta TEXT NOT NULL,                     -- JSON object: every non-core input field
        text TEXT NOT NULL,                     -- what the model embeds
        terms TEXT NOT NULL,                    -- stemmed folded words of `text`, for BM25
        content_hash TEXT NOT NULL,
        record_hash TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS articles_content_hash ON articles(content_hash);
    CREATE TABLE IF NOT EXISTS vectors (
        model TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        vector BLOB NOT NULL,                   -- float32, L2-normalized
        PRIMARY KEY (model, content_hash)
    ) WITHOUT ROWID;
    -- Every change that can alter an index: an article written or deleted, or a
    -- vector stored for its text. An index records the last seq it applied and
    -- catches up from there, so no writer ever has to rebuild it.
    CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, num INTEGER NOT NULL);
    -- Re-embedding jobs: an unfinished one for a model is resumed into the same version.
    CREATE TABLE IF NOT EXISTS reembed_jobs (
        model TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    -- Related lists computed ahead of time, per index version.
    CREATE TABLE IF NOT EXISTS related_lists (
        version TEXT NOT NULL,
        num INTEGER NOT NULL,
        items TEXT NOT NULL,      -- JSON [[num, score, reason], ...], best first
        fresh INTEGER NOT NULL,   -- 0 once an article it may concern changed
        PRIMARY KEY (version, num)
    ) WITHOUT ROWID;
    """,
    # 2: how far each version's lists have followed the change log. An index may
    # apply changes (any process, any restart) before their lists are refreshed;
    # the gap between the two is refreshed on the next run, so a crash in between
    # never leaves lists stale for good.
    """
    CREATE TABLE IF NOT EXISTS list_progress (
        version TEXT PRIMARY KEY,
        refreshed_seq INTEGER NOT NULL  -- every change up to this seq has its lists recomputed
    ) WITHOUT ROWID;
    """,
    # 3: the named entities of each article (see recommender.text.entities), computed
    # from the stored text for articles written before.
    lambda conn: _add_entities(conn),
    # 4: what `recommender stats` counts, from indexes instead of a scan of every article and
    # vector (15 s at a million articles). Built once, at the first open after the upgrade.
    """
    CREATE INDEX IF NOT EXISTS articles_section ON articles(section);
    CREATE INDEX IF NOT EXISTS articles_published ON articles(published_ts);
    CREATE INDEX IF NOT EXISTS vectors_model ON vectors(model);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

ROW_COLUMNS = "num, id, title, body, url, published_at, section, tags, language, meta, content_hash"
INFO_COLUMNS = "a.num, a.id, a.title, a.url, a.published_at, a.section, a.language, a.content_hash, a.tags"


class SQLiteStore(Store):
    """One SQLite file in WAL mode: readers never wait for the writer.

    Each thread gets its own connection; sqlite3 connections are not meant to
    be shared across threads.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._migrate()

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, one migration per transaction."""
        try:
            conn = self.conn
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a recommender store ({exc})") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this program's "
                             f"{SCHEMA_VERSION}", hint="upgrade the recommender package")
        for number in range(version, SCHEMA_VERSION):
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    step = MIGRATIONS[number]
                    for statement in ([] if callable(step) else _statements(step)):
                        conn.execute(statement)
                    if callable(step):
                        step(conn)
                    conn.execute(f"PRAGMA user_version = {number + 1}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def damage(self) -> str | None:
        """SQLite's quick_check (every page read once, on its own connection): None when "ok"."""
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            found = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            found = [str(exc)]
        finally:
            conn.close()
        return None if found == ["ok"] else "; ".join(found)

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Writes]:
        """BEGIN IMMEDIATE ... COMMIT, serialised per process, rolled back on error."""
        with self._write() as conn:
            yield _Writes(conn)

    def reopened(self) -> SQLiteStore:
        return SQLiteStore(self.path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite already rolled back on some errors, such as a full disk
                    conn.execute("ROLLBACK")
                raise

    # --- reads --------------------------------------------------------------

    def last_change(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]

    def changes_since(self, seq: int, limit: int | None = None) -> tuple[int, list[int]]:
        """(last seq, nums of the articles changed after `seq`), from one snapshot; with
        `limit`, only the next `limit` changes."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            if limit is None:
                last = self.last_change()
                nums = [r[0] for r in conn.execute(
                    "SELECT DISTINCT num FROM changes WHERE seq > ? AND seq <= ?", (seq, last))]
            else:
                rows = conn.execute("SELECT seq, num FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (seq, limit)).fetchall()
                last = rows[-1][0] if rows else seq
                nums = list(dict.fromkeys(num for _, num in rows))
        finally:
            conn.execute("COMMIT")
        return last, nums

    def index_rows(self, model: str, nums: list[int] | None = None,
                   with_vectors: bool = True) -> Iterator[tuple[ArticleInfo, str, str, bytes | None]]:
        """(info, terms, entities, vector under `model` or None) of every article, or of
        those of `nums` that still exist."""
        vector = "v.vector" if with_vectors else "NULL"
        join = "LEFT JOIN vectors v ON v.model = ? AND v.content_hash = a.content_hash" if with_vectors else ""
        sql = f"SELECT {INFO_COLUMNS}, a.terms, a.entities, {vector} FROM articles a {join}"
        params: tuple = (model,) if with_vectors else ()
        if nums is None:
            batches: list[tuple] = [()]
        else:
            batches = [tuple(nums[i:i + 500]) for i in range(0, len(nums), 500)]
        for batch in batches:
            where = f" WHERE a.num IN ({','.join('?' * len(batch))})" if nums is not None else ""
            for row in self.conn.execute(sql + where + " ORDER BY a.num", params + batch):
                yield _info(row[:9]), row[9], row[10], row[11]

    def all_infos(self) -> Iterator[ArticleInfo]:
        """What ranking keeps of every article, without its text."""
        for row in self.conn.execute(f"SELECT {INFO_COLUMNS} FROM articles a ORDER BY a.num"):
            yield _info(row)

    def count_texts(self) -> int:
        """Distinct texts: what a full re-embedding has to cover."""
        return self.conn.execute("SELECT COUNT(DISTINCT content_hash) FROM articles").fetchone()[0]

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM articles").fetchone()[0]

    def get(self, article_id: str) -> StoredArticle | None:
        row = self.conn.execute(f"SELECT {ROW_COLUMNS} FROM articles WHERE id = ?", (article_id,)).fetchone()
        return _stored(row) if row else None

    def num_of(self, article_id: str) -> int | None:
        row = self.conn.execute("SELECT num FROM articles WHERE id = ?", (article_id,)).fetchone()
        return row[0] if row else None

    def infos(self, nums: list[int]) -> dict[int, ArticleInfo]:
        """What ranking keeps of each article, for those of `nums` that exist."""
        found: dict[int, ArticleInfo] = {}
        for start in range(0, len(nums), 500):
            batch = nums[start:start + 500]
            for row in self.conn.execute(
                    f"SELECT {INFO_COLUMNS} FROM articles a WHERE a.num IN ({','.join('?' * len(batch))})", batch):
                found[row[0]] = _info(row)
        return found

    def urls(self) -> list[tuple[str, str]]:
        """(id, url) of every article with a URL."""
        return self.conn.execute("SELECT id, url FROM articles WHERE url IS NOT NULL").fetchall()

    def get_text(self, article_id: str) -> str | None:
        row = self.conn.execute("SELECT text FROM articles WHERE id = ?", (article_id,)).fetchone()
        return row[0] if row else None

    def text_and_terms(self, article_id: str) -> tuple[str, list[str]] | None:
        """The article's text and its stemmed words as stored at write time (stemming again costs ms)."""
        row = self.conn.execute("SELECT text, terms FROM articles WHERE id = ?", (article_id,)).fetchone()
        return (row[0], row[1].split()) if row else None

    def texts_missing_vectors(self, model: str) -> list[tuple[str, str]]:
        """(content_hash, text) of every distinct text that `model` has not embedded."""
        return self.conn.execute(
            """SELECT a.content_hash, MIN(a.text) FROM articles a
               LEFT JOIN vectors v ON v.model = ? AND v.content_hash = a.content_hash
               WHERE v.content_hash IS NULL GROUP BY a.content_hash ORDER BY MIN(a.num)""",
            (model,),
        ).fetchall()

    def all_texts(self) -> Iterator[str]:
        """Every distinct embedded text, streamed (a million do not fit in a list comfortably)."""
        for (text,) in self.conn.execute("SELECT MIN(text) FROM articles GROUP BY content_hash"):
            yield text

    def sample_texts(self, model: str, n: int, before_ts: float | None = None) -> list[tuple[str, str]]:
        """Up to `n` distinct (content_hash, text), published before `before_ts` if given:
        those `model` has already embedded first (they cost nothing), then by hash, which
        is a deterministic shuffle of the archive."""
        where = "" if before_ts is None else "WHERE a.published_ts < ?"
        return self.conn.execute(
            f"""SELECT a.content_hash, MIN(a.text) FROM articles a
                LEFT JOIN vectors v ON v.model = ? AND v.content_hash = a.content_hash
                {where} GROUP BY a.content_hash
                ORDER BY MAX(v.content_hash IS NULL), a.content_hash LIMIT ?""",
            (model, *(() if before_ts is None else (before_ts,)), n),
        ).fetchall()

    def hashes_without_vectors(self, model: str, hashes: list[str]) -> set[str]:
        """Those of `hashes` that `model` has no vector for."""
        have: set[str] = set()
        unique = sorted(set(hashes))
        for start in range(0, len(unique), 500):
            batch = unique[start:start + 500]
            have.update(r[0] for r in self.conn.execute(
                f"SELECT content_hash FROM vectors WHERE model = ? AND content_hash IN ({','.join('?' * len(batch))})",
                (model, *batch)))
        return set(unique) - have

    def vector(self, model: str, chash: str) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT vector FROM vectors WHERE model = ? AND content_hash = ?", (model, chash)
        ).fetchone()
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def stats(self) -> StoreStats:
        conn = self.conn
        by_model = dict(conn.execute("SELECT model, COUNT(*) FROM vectors GROUP BY model").fetchall())
        sections = dict(conn.execute(
            "SELECT COALESCE(section, ''), COUNT(*) FROM articles GROUP BY section ORDER BY COUNT(*) DESC"
        ).fetchall())
        # Two subqueries: each reads one end of the index, where MIN and MAX together scan it all.
        first, last = conn.execute("SELECT (SELECT MIN(published_ts) FROM articles), "
                                   "(SELECT MAX(published_ts) FROM articles)").fetchone()
        return StoreStats(self.count(), by_model, sections, _from_ts(first), _from_ts(last), self.last_change())

    # --- precomputed lists ----------------------------------------------------

    def list_rows(self, version: str) -> Iterator[tuple[int, str, bool]]:
        """(num, items as JSON, fresh) of every stored list of a version."""
        for num, items, fresh in self.conn.execute(
                "SELECT num, items, fresh FROM related_lists WHERE version = ?", (version,)):
            yield num, items, bool(fresh)

    def list_row(self, version: str, num: int) -> tuple[str, bool] | None:
        """(items as JSON, fresh) of one stored list."""
        row = self.conn.execute("SELECT items, fresh FROM related_lists WHERE version = ? AND num = ?",
                                (version, num)).fetchone()
        return (row[0], bool(row[1])) if row else None

    def put_lists(self, version: str, lists: dict[int, str]) -> None:
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO related_lists VALUES (?, ?, ?, 1)",
                             [(version, num, items) for num, items in lists.items()])

    def delete_lists(self, version: str, nums: Iterable[int]) -> None:
        with self._write() as conn:
            conn.executemany("DELETE FROM related_lists WHERE version = ? AND num = ?", [(version, n) for n in nums])

    def drop_lists(self, version: str) -> None:
        """The lists of an index version, under every ranking profile."""
        with self._write() as conn:
            for table in ("related_lists", "list_progress"):
                conn.execute(f"DELETE FROM {table} WHERE version = ? OR version LIKE ? || ':%'", (version, version))

    def lists_refreshed_seq(self, version: str) -> int | None:
        row = self.conn.execute("SELECT refreshed_seq FROM list_progress WHERE version = ?", (version,)).fetchone()
        return row[0] if row else None

    def mark_lists_refreshed(self, version: str, seq: int) -> None:
        """Record that lists follow the change log up to `seq` (never moving it back)."""
        with self._write() as conn:
            conn.execute("""INSERT INTO list_progress (version, refreshed_seq) VALUES (?, ?)
                            ON CONFLICT(version) DO UPDATE
                            SET refreshed_seq = MAX(refreshed_seq, excluded.refreshed_seq)""",
                         (version, seq))

    def changed_between(self, after: int, upto: int) -> list[int]:
        """Nums of the articles changed with after < seq <= upto."""
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT num FROM changes WHERE seq > ? AND seq <= ?", (after, upto))]

    # --- re-embedding jobs ----------------------------------------------------

    def unfinished_job(self, model: str) -> str | None:
        row = self.conn.execute("SELECT version FROM reembed_jobs WHERE model = ? AND finished_at IS NULL",
                                (model,)).fetchone()
        return row[0] if row else None

    def start_job(self, model: str, version: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO reembed_jobs (model, version, started_at, finished_at) "
                         "VALUES (?, ?, ?, NULL)", (model, version, _now()))

    def finish_job(self, model: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE reembed_jobs SET finished_at = ? WHERE model = ?", (_now(), model))


class _Writes(Writes):
    """The writes of one SQLite transaction, on its connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def upsert(self, row: ArticleRow) -> UpsertResult:
        """The row is prepared beforehand (`ArticleRow.of`): stemming and hashing stay
        outside the transaction, which other writers wait for."""
        article, prepared = row.article, row.text
        old = self.conn.execute("SELECT num, record_hash, content_hash FROM articles WHERE id = ?",
                                (article.id,)).fetchone()
        if old is not None and old[1] == row.record_hash and old[2] == row.content_hash:
            return UpsertResult(old[0], "unchanged", prepared)
        num = self.conn.execute(
            """INSERT INTO articles (id, title, body, url, published_at, published_ts, section, tags,
                   language, meta, text, terms, content_hash, record_hash, entities, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(id) DO UPDATE SET
                   title=excluded.title, body=excluded.body, url=excluded.url,
                   published_at=excluded.published_at, published_ts=excluded.published_ts,
                   section=excluded.section, tags=excluded.tags, language=excluded.language,
                   meta=excluded.meta, text=excluded.text, terms=excluded.terms,
                   content_hash=excluded.content_hash, record_hash=excluded.record_hash,
                   entities=excluded.entities, updated_at=excluded.updated_at
               RETURNING num""",
            row.values + (_now(),),
        ).fetchone()[0]
        self.conn.execute("INSERT INTO changes (num) VALUES (?)", (num,))
        return UpsertResult(num, "added" if old is None else "updated", prepared)

    def delete(self, article_id: str) -> int | None:
        row = self.conn.execute("DELETE FROM articles WHERE id = ? RETURNING num", (article_id,)).fetchone()
        if row is None:
            return None
        self.conn.execute("INSERT INTO changes (num) VALUES (?)", (row[0],))
        return row[0]

    def put_vectors(self, model: str, hashes: list[str], vectors: np.ndarray, announce: bool = True) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO vectors (model, content_hash, vector) VALUES (?, ?, ?)",
            ((model, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in zip(hashes, vectors)),
        )
        if not announce:
            return
        self.conn.executemany(
            "INSERT INTO changes (num) SELECT num FROM articles WHERE content_hash = ?", ((h,) for h in hashes)
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    parts, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            parts.append(current.strip())
            current = ""
    return [p for p in parts if p]


def _from_ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, timezone.utc) if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _info(row: tuple) -> ArticleInfo:
    num, aid, title, url, published, section, language, chash, tags = row
    # A dozen sections and a few languages shared by every article, not a string each.
    return ArticleInfo(num, aid, title, url, _parse_time(published), section and sys.intern(section),
                       sys.intern(language), chash, tuple(json.loads(tags)))


def _add_entities(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(articles)")}
    if "entities" not in columns:
        conn.execute("ALTER TABLE articles ADD COLUMN entities TEXT NOT NULL DEFAULT ''")
    last = -1
    while True:  # in batches: a million texts do not fit in memory at once
        rows = conn.execute("SELECT num, title, text FROM articles WHERE num > ? AND entities = '' "
                            "ORDER BY num LIMIT 1000", (last,)).fetchall()
        if not rows:
            return
        conn.executemany("UPDATE articles SET entities = ? WHERE num = ?",
                         [(" ".join(entities(title, text)), num) for num, title, text in rows])
        last = rows[-1][0]


def _stored(row: tuple) -> StoredArticle:
    num, aid, title, body, url, published, section, tags, language, meta, chash = row
    fields = dict(json.loads(meta))
    fields.update(id=aid, title=title, body=body, url=url, published_at=published, section=section,
                  tags=json.loads(tags), language=language)
    return StoredArticle(num, Article.model_validate(fields), chash)
