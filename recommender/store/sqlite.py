"""SQLite store: articles, their content hashes, and vectors per (model, content hash).

Vectors are keyed by content hash, not by article, so unchanged text is never
re-embedded: not on a re-ingest, not when an article is renamed, and not when
a re-embedding job meets text it has already seen.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from recommender.errors import StoreError
from recommender.store.base import Lease, check_version
from recommender.store.sql import Executor, SQLStore
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
    # 5: small documents several servers share through the store, such as the ranking
    # profiles over PostgreSQL (a SQLite store keeps them as files in the data dir).
    """
    CREATE TABLE IF NOT EXISTS documents (name TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
    """,
    # 6: articles that keep their own list but enter none (advertorials, obituaries, notices);
    # and articles found by URL, for a page rewritten without its id (its canonical URL).
    lambda conn: _add_recommendable(conn),
    # 7: the article's picture, for the site's block template; before, an `image_url` was
    # kept as metadata, and is moved into the column.
    """
    ALTER TABLE articles ADD COLUMN image_url TEXT;
    UPDATE articles SET image_url = json_extract(meta, '$.image_url')
        WHERE meta LIKE '%"image_url"%' AND json_type(meta, '$.image_url') = 'text';
    """,
    # 8: readers' impressions and clicks, as counters (recommender.audience.events).
    """
    CREATE TABLE IF NOT EXISTS event_units (experiment TEXT NOT NULL, arm TEXT NOT NULL, unit TEXT NOT NULL,
        impressions INTEGER NOT NULL, clicks INTEGER NOT NULL, PRIMARY KEY (experiment, arm, unit)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS event_positions (experiment TEXT NOT NULL, arm TEXT NOT NULL, pos INTEGER NOT NULL,
        impressions INTEGER NOT NULL, clicks INTEGER NOT NULL, PRIMARY KEY (experiment, arm, pos)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS event_days (experiment TEXT NOT NULL, arm TEXT NOT NULL, day TEXT NOT NULL,
        impressions INTEGER NOT NULL, clicks INTEGER NOT NULL, PRIMARY KEY (experiment, arm, day)) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS event_pairs (seed TEXT NOT NULL, item TEXT NOT NULL, pos INTEGER NOT NULL,
        arm TEXT NOT NULL,
        impressions INTEGER NOT NULL, clicks INTEGER NOT NULL, PRIMARY KEY (seed, item, pos, arm)) WITHOUT ROWID;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore(SQLStore):
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
        check_version(str(self.path), version, SCHEMA_VERSION)
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

    def describe(self) -> str:
        return str(self.path)

    def repair_hint(self) -> str:
        return f"restore it from a backup, or try: sqlite3 {self.path} .recover"

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

    def reopened(self) -> SQLiteStore:
        return SQLiteStore(self.path)

    def watch(self, wake: Callable[[], None]) -> None:
        """SQLite has no notifications: other processes' writes are found by polling."""

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def lease(self, name: str) -> Lease:
        """One file has one server (see Versions.hold_serving): it always leads."""
        return Lease()

    def _rows(self, sql: str, params: tuple = (), replica: bool = False) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def _stream(self, sql: str, params: tuple = ()) -> Iterator[tuple]:
        yield from self.conn.execute(sql, params)

    @contextmanager
    def _writing(self, log_changes: bool) -> Iterator[Executor]:
        """BEGIN IMMEDIATE ... COMMIT, serialised per process, rolled back on error. SQLite
        has one writer at a time, so the change log's seqs commit in order anyway."""
        with self._write_lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Executor(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite already rolled back on some errors, such as a full disk
                    conn.execute("ROLLBACK")
                raise


class _Executor:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        return self.conn.execute(sql, params).fetchone()

    def many(self, sql: str, rows: Iterable[tuple]) -> None:
        self.conn.executemany(sql, rows)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    parts, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            parts.append(current.strip())
            current = ""
    return [p for p in parts if p]


def _add_recommendable(conn: sqlite3.Connection) -> None:
    if "recommendable" not in {row[1] for row in conn.execute("PRAGMA table_info(articles)")}:
        conn.execute("ALTER TABLE articles ADD COLUMN recommendable INTEGER NOT NULL DEFAULT 1")
    conn.execute("CREATE INDEX IF NOT EXISTS articles_url ON articles(url)")


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
