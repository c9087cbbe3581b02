"""The store's contract, on every backend: SQLite and a real PostgreSQL (a database of
its own per test). What only several processes over one database need (leases,
notifications, writers in seq order) is tested on PostgreSQL."""

from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest

from recommender.errors import StoreError, StoreUnavailable
from recommender.store.articles import parse_article
from recommender.store.base import ArticleRow, Store
from tests.conftest import STORY_ARTICLES


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Store:
    if request.param == "sqlite":
        from recommender.store.sqlite import SQLiteStore

        made: Store = SQLiteStore(tmp_path / "store.sqlite")
    else:
        from recommender.store.postgres import PostgresStore

        made = PostgresStore(request.getfixturevalue("pg_url"))
    yield made
    made.close()


def row(record: dict) -> ArticleRow:
    article = parse_article(record)
    return ArticleRow.of(article, article.embed_text(2000))


def write(store: Store, records: list[dict]) -> list:
    with store.transaction() as tx:
        return [tx.upsert(row(r)) for r in records]


def test_articles_round_trip_with_their_change_log(store):
    results = write(store, STORY_ARTICLES)
    assert [r.status for r in results] == ["added"] * len(STORY_ARTICLES)
    assert store.count() == len(STORY_ARTICLES) and store.last_change() == len(STORY_ARTICLES)
    got = store.get("ukr-2")
    assert got is not None and got.article.title == STORY_ARTICLES[1]["title"]
    assert got.article.published_at.isoformat() == "2025-03-08T10:00:00+00:00"
    assert store.num_of("ukr-2") == results[1].num and store.get("nope") is None
    # unchanged, then changed: only the change is logged
    assert [r.status for r in write(store, STORY_ARTICLES[:1])] == ["unchanged"]
    edited = dict(STORY_ARTICLES[0], title="Kievul propune din nou un armistițiu")
    assert write(store, [edited])[0].status == "updated"
    last, nums = store.changes_since(len(STORY_ARTICLES))
    assert nums == [results[0].num] and last == len(STORY_ARTICLES) + 1
    assert store.changes_since(0, limit=2) == (2, [results[0].num, results[1].num])
    with store.transaction() as tx:
        assert tx.delete("ukr-3") == results[2].num and tx.delete("ukr-3") is None
    assert store.get("ukr-3") is None and store.changed_between(last, store.last_change()) == [results[2].num]
    infos = store.infos([results[0].num, results[2].num, 10_000])
    assert list(infos) == [results[0].num] and infos[results[0].num].title == edited["title"]


def test_a_failed_transaction_writes_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.upsert(row(STORY_ARTICLES[0]))
            raise RuntimeError("the embedder failed halfway")
    assert store.count() == 0 and store.last_change() == 0
    write(store, STORY_ARTICLES[:1])  # and the store is usable afterwards
    assert store.count() == 1


def test_romanian_text_and_odd_characters_survive(store):
    record = dict(STORY_ARTICLES[0], id="diacritice-ș", title="Ştiri cu sedilă şi virgulă ș ț 100% ? ' \"",
                  body="Emoji 🙂, ghilimele „românești”, un ? și un %s.", tags=["ţară", "tag?"])
    write(store, [record])
    got = store.get("diacritice-ș")
    assert got is not None and got.article.tags == ["ţară", "tag?"]  # stored as sent
    assert "100% ?" in got.article.title and "%s" in got.article.body
    assert store.text_and_terms("diacritice-ș")[0].startswith("Știri cu sedilă și virgulă")  # the text, normalized


def test_vectors_are_keyed_by_model_and_content_hash(store):
    results = write(store, STORY_ARTICLES[:3])
    hashes = [store.get(a["id"]).content_hash for a in STORY_ARTICLES[:3]]
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    seq = store.last_change()
    with store.transaction() as tx:
        tx.put_vectors("m1", hashes[:2], vectors[:2])
        tx.put_vectors("m2", hashes[2:], vectors[2:], announce=False)
    assert np.array_equal(store.vector("m1", hashes[1]), vectors[1]) and store.vector("m2", hashes[0]) is None
    assert store.changed_between(seq, store.last_change()) == [r.num for r in results[:2]]  # m2 not announced
    assert store.hashes_without_vectors("m1", hashes) == {hashes[2]}
    assert [h for h, _ in store.texts_missing_vectors("m1")] == [hashes[2]]
    assert [h for h, _ in store.sample_texts("m1", 2)] == sorted(hashes[:2])  # embedded ones first
    rows = list(store.index_rows("m1"))
    assert [r[0].id for r in rows] == [a["id"] for a in STORY_ARTICLES[:3]]
    assert np.frombuffer(rows[0][3], np.float32).tolist() == vectors[0].tolist() and rows[2][3] is None
    assert [r[0].id for r in store.index_rows("m1", [results[1].num, 999])] == ["ukr-2"]
    assert store.stats().vectors_by_model == {"m1": 2, "m2": 1} and store.count_texts() == 3


def test_lists_and_their_progress(store):
    store.put_lists("v1:default", {1: "[[2, 0.5, 0.5, \"x\"]]", 2: "[]"})
    store.put_lists("v1:default", {2: "[[1, 0.4, 0.4, \"y\"]]"})
    store.put_lists("v1:p2", {1: "[]"})
    assert store.list_row("v1:default", 2) == ("[[1, 0.4, 0.4, \"y\"]]", True)
    assert sorted(n for n, _, _ in store.list_rows("v1:default")) == [1, 2]
    store.mark_lists_refreshed("v1:default", 7)
    store.mark_lists_refreshed("v1:default", 3)  # never moves back
    assert store.lists_refreshed_seq("v1:default") == 7 and store.lists_refreshed_seq("v2:default") is None
    store.delete_lists("v1:default", [1])
    assert store.list_row("v1:default", 1) is None
    store.drop_lists("v1")
    assert store.list_row("v1:p2", 1) is None and store.lists_refreshed_seq("v1:default") is None


def test_reembedding_jobs_and_stats(store):
    assert store.unfinished_job("m") is None
    store.start_job("m", "v2")
    store.start_job("m", "v3")
    assert store.unfinished_job("m") == "v3"
    store.finish_job("m")
    assert store.unfinished_job("m") is None
    empty = store.stats()
    assert empty.articles == 0 and empty.first_published is None
    write(store, STORY_ARTICLES)
    stats = store.stats()
    assert stats.sections == {"externe": 3, "sport": 2, "arhiva": 1, "lifestyle": 1}
    assert stats.first_published.year == 2023 and stats.last_published.isoformat().startswith("2025-04-02")
    assert len(list(store.all_texts())) == len(STORY_ARTICLES) and len(store.urls()) == len(STORY_ARTICLES)


def test_both_backends_have_the_same_tables_and_schema_version(tmp_path, pg_url):
    from recommender.store.postgres import PostgresStore
    from recommender.store.sqlite import SQLiteStore

    lite, pg = SQLiteStore(tmp_path / "s.sqlite"), PostgresStore(pg_url)
    assert lite.schema_version() == pg.schema_version() >= 4
    lite_tables = {t: {c[1] for c in lite.conn.execute(f"PRAGMA table_info({t})")}
                   for (t,) in lite.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                 "AND name NOT LIKE 'sqlite_%'")}
    pg_tables: dict[str, set] = {}
    for table, column in pg._rows("SELECT table_name, column_name FROM information_schema.columns "
                                  "WHERE table_schema = 'public'"):
        pg_tables.setdefault(table, set()).add(column)
    assert pg_tables.pop("schema_version") == {"version"}  # SQLite keeps it in PRAGMA user_version
    assert pg_tables == lite_tables
    pg.close()


def test_a_database_from_a_newer_release_is_refused(pg_url):
    from recommender.store.postgres import PostgresStore

    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    before = open_pools()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        PostgresStore(pg_url)
    assert open_pools() == before


def test_a_database_that_cannot_be_reached_is_a_clear_error():
    from recommender.store.postgres import PostgresStore

    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1/nowhere is unavailable"):
        PostgresStore("postgresql://postgres:secret@127.0.0.1:1/nowhere")
    assert time.monotonic() - started < 10


def test_servers_started_at_once_migrate_once(pg_url):
    from recommender.store.postgres import PostgresStore

    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            PostgresStore(pg_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_writers_commit_the_change_log_in_seq_order(pg_url):
    """A follower reads the log up to its last seq and goes on from there: a seq that
    committed after a larger one would be skipped for good. So a second writer waits
    for the first one's commit."""
    from recommender.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    holding, release = threading.Event(), threading.Event()

    def slow_writer() -> None:
        with store.transaction() as tx:
            tx.upsert(row(dict(STORY_ARTICLES[0], id="slow")))  # takes seq 1
            holding.set()
            release.wait(10)

    first = threading.Thread(target=slow_writer)
    first.start()
    assert holding.wait(5)
    second = threading.Thread(target=write, args=(store, [dict(STORY_ARTICLES[0], id="fast")]))
    second.start()
    time.sleep(0.5)
    assert store.last_change() == 0  # the second writer has not committed seq 2 over an open seq 1
    release.set()
    first.join()
    second.join()
    assert store.changes_since(0) == (2, [1, 2])
    store.close()


def test_a_lease_is_held_by_one_process_and_freed_when_its_connection_dies(pg_url):
    from recommender.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    first, second = store.lease("lists"), store.lease("lists")
    assert first.held() and not second.held() and first.held()
    assert store.lease("other").held()  # another role is another lock
    with psycopg.connect(pg_url, autocommit=True) as admin:  # the holder's backend dies
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                      "AND objid = %s", (store.lease("lists").key,))
    assert not first.held()  # it notices on its next check
    assert second.held() and not first.held()
    second.release()
    store.close()


def test_a_lease_whose_lock_query_fails_closes_its_connection(pg_url):
    import gc
    import warnings

    from recommender.store.postgres import AdvisoryLease

    lease = AdvisoryLease(pg_url, 2**64)  # no pg_try_advisory_lock(numeric): the lock query itself fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not lease.held()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_watch_wakes_on_another_process_commit(pg_url):
    from recommender.store.postgres import PostgresStore

    store, other = PostgresStore(pg_url), PostgresStore(pg_url)
    woke = threading.Event()
    store.watch(woke.set)
    assert woke.wait(5)  # once on connecting
    woke.clear()
    time.sleep(0.2)
    assert not woke.is_set()
    started = time.monotonic()
    write(other, STORY_ARTICLES[:1])
    assert woke.wait(2) and time.monotonic() - started < 1
    store.close()
    other.close()


def test_documents_on_a_shelf(store):
    shelf = store.shelf("profiles")
    assert shelf.read("ACTIVE") is None and shelf.names() == []
    shelf.write("p1.json", "{}")
    shelf.write("ACTIVE", "p1\n")
    shelf.write("ACTIVE", "p2\n")
    store.shelf("other").write("x", "y")
    assert shelf.read("ACTIVE") == "p2\n" and shelf.names() == ["ACTIVE", "p1.json"]


def test_an_articles_picture_is_kept_and_shown_in_its_info(store):
    pictured = dict(STORY_ARTICLES[0], image_url=" https://www.exemplu.ro/img/ukr-1.jpg ")
    (added,) = write(store, [pictured])
    got = store.get(pictured["id"])
    assert got is not None and got.article.image_url == "https://www.exemplu.ro/img/ukr-1.jpg"
    assert "image_url" not in got.article.meta
    assert store.infos([added.num])[added.num].image_url == "https://www.exemplu.ro/img/ukr-1.jpg"
    assert write(store, [pictured])[0].status == "unchanged"
    assert write(store, [STORY_ARTICLES[0]])[0].status == "updated"  # the picture removed is a change
    assert store.infos([added.num])[added.num].image_url is None


def test_event_counters_add_up_across_batches(store):
    write(store, STORY_ARTICLES[:2])
    assert store.existing_ids(["ukr-1", "ukr-2", "nope"]) == {"ukr-1", "ukr-2"}
    batch = {"event_units": {("ab", "a", "v1"): [3, 1], ("ab", "b", "v2"): [2, 0]},
             "event_positions": {("ab", "a", 1): [3, 1]}, "event_days": {("ab", "a", "2025-03-01"): [3, 1]},
             "event_pairs": {("ukr-1", "ukr-2", 1, "a"): [3, 1]}}
    store.add_event_counts(batch)
    store.add_event_counts(batch)
    assert sorted(store.arm_sums("ab")) == [("a", 1, 6, 2, 4, 36, 12), ("b", 1, 4, 0, 0, 16, 0)]
    assert store.event_cells("event_positions", "ab") == [("a", 1, 6, 2)]
    assert store.event_cells("event_days", "ab") == [("a", "2025-03-01", 6, 2)]
    assert store.event_totals() == (6, 2) and store.arm_sums("other") == []
    (pair,) = store.event_pairs()
    assert pair == ("ukr-1", "ukr-2", 1, 6, 2) and all(type(v) is int for v in pair[2:])


def open_pools() -> int:
    """PostgreSQL pools not closed. One left open outlives what opened it: the garbage
    collector later meets it in one of its own threads, and its __del__ raises there."""
    import gc

    from psycopg_pool import ConnectionPool

    return sum(type(o) is ConnectionPool and not o.closed for o in gc.get_objects())  # type(): no __class__ lookups


def test_a_command_closes_the_postgresql_pool_it_opened(tmp_path, pg_url):
    from click.testing import CliRunner

    from recommender.cli import main

    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_DATABASE_URL": pg_url}
    before = open_pools()
    for command in (["stats"], ["experiment", "list"], ["profile", "list"]):
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 0, result.output
    assert open_pools() == before
