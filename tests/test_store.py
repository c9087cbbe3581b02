"""The store's schema versions: an older store is migrated in place, without loss."""

import sqlite3

import pytest

from recommender.errors import StoreError
from recommender.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.conftest import STORY_ARTICLES, write_jsonl

PREVIOUS_SCHEMA = """  -- the store as released before schema versions (user_version 0)
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
"""

# The related-lists table, which the first release created on first use.
PREVIOUS_LISTS = """CREATE TABLE IF NOT EXISTS related_lists (
    version TEXT NOT NULL, num INTEGER NOT NULL, items TEXT NOT NULL, fresh INTEGER NOT NULL,
    PRIMARY KEY (version, num)) WITHOUT ROWID;"""


OLD_ARTICLE_COLUMNS = ("num, id, title, body, url, published_at, published_ts, section, tags, language, meta, text, "
                       "terms, content_hash, record_hash, updated_at")


def previous_store(path, engine, stories):
    """An archive ingested by today's code, its tables copied into a file made by the old schema."""
    engine.ingest([str(stories)])
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_SCHEMA + PREVIOUS_LISTS)
    old.execute("ATTACH DATABASE ? AS new", (str(engine.settings.store_path),))
    old.execute(f"INSERT INTO articles SELECT {OLD_ARTICLE_COLUMNS} FROM new.articles")
    for table in ("vectors", "changes", "related_lists"):
        old.execute(f"INSERT INTO {table} SELECT * FROM new.{table}")
    old.commit()
    old.execute("DETACH DATABASE new")
    assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    old.close()


def dump(path) -> dict:
    conn = sqlite3.connect(path)
    tables = ("articles", "vectors", "changes", "related_lists")
    columns = {"articles": OLD_ARTICLE_COLUMNS}
    return {t: sorted(conn.execute(f"SELECT {columns.get(t, '*')} FROM {t}").fetchall()) for t in tables}


def test_a_store_of_the_previous_schema_is_migrated_without_loss(engine, stories, tmp_path):
    path = tmp_path / "old.sqlite"
    previous_store(path, engine, stories)
    before = dump(path)
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert dump(path) == before
    assert store.count() == len(STORY_ARTICLES)
    assert store.get("ukr-2").article.title == STORY_ARTICLES[1]["title"]
    # Named entities, which the old schema had no column for, are computed from the stored text.
    entities = "SELECT id, entities FROM articles ORDER BY id"
    migrated = store.conn.execute(entities).fetchall()
    assert migrated == engine.store.conn.execute(entities).fetchall() and any(e for _, e in migrated)
    assert SQLiteStore(path).schema_version() == SCHEMA_VERSION  # reopening migrates nothing again


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer") as refused:
        SQLiteStore(path)
    assert "upgrade" in refused.value.hint


def test_a_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "store.sqlite"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StoreError, match="not a recommender store"):
        SQLiteStore(path)


def test_related_lists_live_in_the_store_and_memory_keeps_only_who_shows_whom(tmp_path, monkeypatch):
    import recommender.serving.lists
    from recommender.serving.lists import CachedItem, RelatedLists
    from recommender.store.sqlite import SQLiteStore

    monkeypatch.setattr(recommender.serving.lists, "REMEMBER_BATCH", 2)  # a restart reads them back in steps

    store = SQLiteStore(tmp_path / "store.sqlite")
    lists = RelatedLists(store, "v1", "default", width=3)
    item = lambda n: CachedItem(n, 0.5, 0.5, "why")  # noqa: E731
    lists.put_many({1: [item(2), item(3)], 2: [item(1)], 500: [item(3), item(1), item(2), item(4)], 7: []})
    assert lists.containing([3]) == {1, 500} and lists.containing([4]) == set()  # beyond the width: not kept
    assert lists.missing_or_stale([1, 2, 3, 7, 500, 10_000]) == [3, 10_000]  # an empty list is a list
    assert [i.num for i in lists.get(500).items] == [3, 1, 2, 4] and lists.get(3) is None
    lists.forget([1])
    assert lists.containing([2, 3]) == {500} and lists.get(1) is None
    reopened = RelatedLists(SQLiteStore(tmp_path / "store.sqlite"), "v1", "default", width=3)
    assert reopened.containing([1]) == {2, 500} and len(reopened) == 3
    assert reopened.containing([3]) == {500} and reopened.missing_or_stale([2, 7, 500, 1]) == [1]
    assert RelatedLists(store, "v1", "other-profile").containing([1]) == set()


def test_the_upkeep_recomputes_the_lists_a_new_article_may_enter(tmp_path):
    """The score test: of the lists a changed article's list shows and of its nearest
    neighbours, those whose last item it scores at least as high as (a short list, or one
    not stored, always); the floors are read back after a restart and dropped with a list."""
    import numpy as np

    from recommender.ranking.pipeline import Ranked
    from recommender.serving.lists import CachedItem, Reach, RelatedLists, entering
    from recommender.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "store.sqlite")
    lists = RelatedLists(store, "v1", "default", width=2)
    item = lambda n, score: CachedItem(n, 0.5, score, "why")  # noqa: E731
    lists.put_many({1: [item(2, 0.9), item(3, 0.6)], 2: [item(1, 0.9)], 3: [item(1, 0.8), item(2, 0.7)],
                    10: [item(1, 0.5), item(5, 0.4)]})
    ranked = Ranked([], np.array([1, 2, 3, 4, 99]), np.array([0.61, 0.1, 0.69, 0.01, 0.3]))  # seed 10's candidates
    assert entering(ranked, lists.floors()) == [1, 2, 4, 99]  # 3's last item scores 0.7; 2's is short; 4, 99: none
    reopened = RelatedLists(SQLiteStore(tmp_path / "store.sqlite"), "v1", "default", width=2)
    assert entering(ranked, reopened.floors()) == [1, 2, 4, 99]
    # 10's list shows 1 and 5, its nearest neighbours are 4 and 3: of those, it may enter 1's and 4's
    assert reopened.reached({10: Reach(near=[4, 3], enters=[1, 2, 4, 99])}) == {1, 4}
    reopened.forget([3])
    assert entering(Ranked([], np.array([3]), np.array([0.01])), reopened.floors()) == [3]


def test_stats_count_from_indexes_not_a_scan_of_every_article(tmp_path):
    """A scan of a million articles' texts and vectors took 15 s; indexes answer at once."""
    from recommender.store.sqlite import SQLiteStore

    conn = SQLiteStore(tmp_path / "store.sqlite").conn
    for query in ("SELECT model, COUNT(*) FROM vectors GROUP BY model",
                  "SELECT COALESCE(section, ''), COUNT(*) FROM articles GROUP BY section",
                  "SELECT MIN(published_ts), MAX(published_ts) FROM articles"):
        steps = [str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + query)]
        assert all("USING COVERING INDEX" in step for step in steps if "articles" in step or "vectors" in step), steps


def test_a_picture_kept_as_metadata_before_schema_7_moves_into_its_column(engine, tmp_path):
    """Before schema 7 an `image_url` field was stored as metadata; the migration moves it,
    and re-ingesting the same article is "unchanged" (its record hash is the same)."""
    pictured = dict(STORY_ARTICLES[0], image_url="https://www.exemplu.ro/img/ukr-1.jpg")
    engine.ingest([str(write_jsonl(tmp_path / "pictured.jsonl", [pictured, *STORY_ARTICLES[1:]]))])
    path = engine.settings.store_path
    engine.store.close()
    old = sqlite3.connect(path)
    old.execute("UPDATE articles SET meta = json_set(meta, '$.image_url', image_url)")
    old.execute("ALTER TABLE articles DROP COLUMN image_url")
    old.execute("PRAGMA user_version = 6")
    old.commit()
    old.close()
    store = SQLiteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.get("ukr-1").article.image_url == pictured["image_url"]
    num = store.num_of("ukr-1")
    assert store.infos([num])[num].image_url == pictured["image_url"]
    assert store.infos([store.num_of("ukr-2")])[store.num_of("ukr-2")].image_url is None
    from recommender.store.articles import parse_article
    from recommender.store.base import ArticleRow

    article = parse_article(pictured)
    with store.transaction() as tx:
        assert tx.upsert(ArticleRow.of(article, article.embed_text(2000))).status == "unchanged"
