"""`recommender store copy`: SQLite to a real PostgreSQL and back, resumable and checked."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import recommender.store.copy as copy_module
from recommender.cli import main
from recommender.errors import StoreError
from recommender.serving.engine import Engine
from recommender.store.copy import TABLES, copy_store
from recommender.store.postgres import PostgresStore
from recommender.store.sqlite import SQLiteStore
from tests.conftest import CountingEmbedder


@pytest.fixture
def archive(settings, stories):
    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    return engine


def test_copy_to_postgresql_and_back_keeps_every_row_and_list(archive, settings, pg_url, tmp_path):
    from recommender.ranking.profiles import Profiles

    mine = Profiles(settings.profiles_dir)
    mine.activate(mine.save({"same_section": 1.0}, "test", {}).name)
    runner = CliRunner()
    result = runner.invoke(main, ["store", "copy", "--data-dir", str(settings.data_dir), "--to", pg_url])
    assert result.exit_code == 0, result.output
    assert "articles 7" in result.output and "checked" in result.output
    back = tmp_path / "back" / "store.sqlite"
    result = runner.invoke(main, ["--database-url", pg_url, "store", "copy", "--data-dir", str(settings.data_dir),
                                  "--to", str(back)])
    assert result.exit_code == 0, result.output
    shared = PostgresStore(pg_url)
    assert Profiles(shared.shelf("profiles")).active().weights == {"same_section": 1.0}
    assert shared.shelf("indexes").read("ACTIVE") == "v1\n"  # servers over the copy serve the same version
    shared.close()
    assert Profiles(back.parent / "profiles").active_name() == "p1"
    source, copied = SQLiteStore(settings.store_path), SQLiteStore(back)
    for table, columns in TABLES.items():
        if table == "documents":  # beside SQLite the profiles are files: compared above
            continue
        query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(columns[:copy_module.KEYS[table]])}"
        assert list(source.scan(query)) == list(copied.scan(query)), table
    # the copy goes on as the store: new numbers and seqs after the copied ones
    pg = Engine(settings.model_copy(update={"database_url": pg_url}), embedder=CountingEmbedder())
    assert pg.state().meta.applied_seq == source.last_change()  # the old index files fit the copy
    pg.upsert([pg.store.get("ukr-1").article.model_copy(update={"id": "ukr-new"})])
    assert pg.store.num_of("ukr-new") == 8 and pg.store.last_change() == source.last_change() + 1
    pg.store.close()


def test_an_interrupted_copy_resumes_where_it_stopped(archive, settings, pg_url, monkeypatch):
    monkeypatch.setattr(copy_module, "BATCH", 2)
    source, target = SQLiteStore(settings.store_path), PostgresStore(pg_url)
    calls = []

    def interrupt(table: str, done: int, total: int) -> None:
        calls.append((table, done))
        if table == "vectors" and done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_store(source, target, interrupt)
    assert target.count_rows("articles") == 7 and target.count_rows("vectors") == 4
    resumed: list[tuple[str, int]] = []
    report = copy_store(source, target, lambda t, d, n: resumed.append((t, d)))
    assert report.copied["articles"] == 0 and report.copied["vectors"] == 3
    assert report.counts == {t: source.count_rows(t) for t in TABLES} and report.lists_checked == 7
    target.close()


def test_a_copy_into_another_archive_is_refused(archive, settings, pg_url, stories, tmp_path):
    other = Engine(settings.model_copy(update={"database_url": pg_url, "data_dir": tmp_path / "other"}),
                   embedder=CountingEmbedder())
    other.ingest([str(stories)])
    with other.store.transaction() as tx:  # its first article: the archives then differ where the check looks
        tx.delete(other.store.first_ids(1)[0])
    target = PostgresStore(pg_url)
    with pytest.raises(StoreError, match="already holds another archive"):
        copy_store(SQLiteStore(settings.store_path), target)
    target.close()
    other.store.close()
    result = CliRunner().invoke(main, ["store", "copy", "--data-dir", str(settings.data_dir), "--to", pg_url])
    assert result.exit_code != 0 and "already holds another archive" in result.output
    assert "Traceback" not in result.output
