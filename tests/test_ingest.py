import json
import sqlite3
from datetime import timezone

import pytest

from recommender.serving.engine import Engine
from tests.conftest import CountingEmbedder, all_lists, article, write_jsonl


def test_counts_added_updated_unchanged(engine, embedder, tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [article("1", "Guvernul și bugetul"), article("2", "Meci de fotbal")])
    report = engine.ingest([str(first)])
    assert (report.added, report.updated, report.unchanged, len(report.rejected)) == (2, 0, 0, 0)
    assert embedder.embedded == 2

    second = write_jsonl(tmp_path / "b.jsonl", [
        article("1", "Guvernul și bugetul"),  # unchanged
        article("2", "Meci de fotbal", section="sport-nou"),  # metadata changed, same text
        article("3", "Alegeri prezidențiale"),  # new
    ])
    report = engine.ingest([str(second)])
    assert (report.added, report.updated, report.unchanged) == (1, 1, 1)
    assert embedder.embedded == 3, "only the new text may be embedded"
    assert engine.store.get("2").article.section == "sport-nou"


def test_unchanged_text_is_never_reembedded_even_under_a_new_id(engine, embedder, tmp_path):
    engine.ingest([str(write_jsonl(tmp_path / "a.jsonl", [article("1", "Același titlu", "Același corp.")]))])
    engine.ingest([str(write_jsonl(tmp_path / "b.jsonl", [article("copy", "Același titlu", "Același corp.")]))])
    assert embedder.embedded == 1


def test_bad_lines_are_rejected_with_line_numbers_and_good_lines_kept(engine, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        article("ok-1", "Primul articol bun"),
        "{not json",
        {"title": "Fără id"},
        {"id": "no-title"},
        {"id": "blank-title", "title": "   "},
        b'{"id": "latin1", "title": "Bun\xe3 ziua"}',
        article("bad-date", "Dată greșită", date="31 februarie 2025"),
        article("bad-date-2", "Dată imposibilă", date="2025-02-31T10:00:00"),
        '["an", "array"]',
        {"id": "tags", "title": "Etichete greșite", "tags": "nu-e-listă"},
        "",
        article("ok-2", "Al doilea articol bun"),
    ])
    report = engine.ingest([str(path)])
    assert report.added == 2
    rejected = {r.line: r.reason for r in report.rejected}
    assert sorted(rejected) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "malformed JSON" in rejected[2]
    assert "id is required" in rejected[3]
    assert "title is required" in rejected[4]
    assert "title" in rejected[5]
    assert "UTF-8" in rejected[6] and "0xe3" in rejected[6]
    assert "published_at" in rejected[7] and "published_at" in rejected[8]
    assert "JSON object" in rejected[9]
    assert "tags" in rejected[10]
    assert [r.source for r in report.rejected] == [str(path)] * 9
    assert engine.store.get("ok-1") and engine.store.get("ok-2")


def test_duplicate_ids_last_one_wins_and_are_reported(engine, tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [
        article("x", "Prima versiune"), article("y", "Altceva"), article("x", "A doua versiune"),
    ])
    report = engine.ingest([str(path)])
    assert report.added == 2
    assert [(d.id, d.first, d.last) for d in report.duplicates] == [("x", f"{path}:1", f"{path}:3")]
    assert engine.store.get("x").article.title == "A doua versiune"


def test_empty_body_is_stored_and_embedded_from_the_title(engine, tmp_path):
    report = engine.ingest([str(write_jsonl(tmp_path / "e.jsonl", [article("e", "Doar titlu", body="")]))])
    assert report.added == 1 and report.empty_bodies == 1
    assert engine.store.get_text("e") == "Doar titlu"
    assert engine.state().vectors.count == 1


def test_five_megabyte_article_is_stored_whole_and_embedded_from_its_beginning(engine, embedder, tmp_path):
    body = "Începutul articolului despre buget. " + ("cuvânt " * 750_000)
    assert len(body.encode()) > 5_000_000
    report = engine.ingest([str(write_jsonl(tmp_path / "big.jsonl", [article("big", "Articol uriaș", body)]))])
    assert report.added == 1 and report.truncated == 1
    assert engine.store.get("big").article.body == body
    text = engine.store.get_text("big")
    assert text.startswith("Articol uriaș\nÎnceputul articolului") and len(text) <= engine.settings.embed_chars


def test_unknown_fields_are_kept_as_metadata(engine, tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [article("m", "Cu etichete", topic="POL", related=["a", "b"])])
    engine.ingest([str(path)])
    stored = engine.store.get("m").article
    assert stored.meta == {"topic": "POL", "related": ["a", "b"]}
    assert stored.language == "ro"


def test_dates_are_stored_time_zone_aware(engine, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        article("naive", "Fără fus orar", date="2025-03-01T10:00:00"),
        article("bucharest", "Cu fus orar", date="2025-03-01T10:00:00+02:00"),
        article("day", "Doar data", date="2025-03-01"),
    ])
    engine.ingest([str(path)])
    naive = engine.store.get("naive").article.published_at
    bucharest = engine.store.get("bucharest").article.published_at
    assert naive.tzinfo is not None and naive.utcoffset().total_seconds() == 0
    assert bucharest.astimezone(timezone.utc).hour == 8
    assert engine.store.get("day").article.published_at.tzinfo is not None


def test_store_is_sqlite_in_wal_mode_with_vectors_and_model(engine, stories, settings):
    engine.ingest([str(stories)])
    conn = sqlite3.connect(settings.store_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT COUNT(*), MIN(model) FROM vectors").fetchone()
    assert rows == (7, "hashing:256")
    hashes = {r[0] for r in conn.execute("SELECT content_hash FROM articles")}
    assert hashes == {r[0] for r in conn.execute("SELECT content_hash FROM vectors")}


def test_index_is_rebuilt_from_stored_vectors_without_reembedding(engine, stories, settings):
    engine.ingest([str(stories)])
    before = [i.id for i in engine.related("ukr-1")]
    for path in settings.index_dir.glob("v1/index.faiss"):
        path.write_bytes(b"corrupt")
    fresh = CountingEmbedder(256)
    again = Engine(settings, embedder=fresh)
    assert [i.id for i in again.related("ukr-1")] == before
    assert fresh.embedded == 0


def test_interrupted_embedding_is_resumed_by_the_next_ingest(settings, stories):
    class Dies(CountingEmbedder):
        def embed(self, texts):
            if self.embedded >= 2:
                raise KeyboardInterrupt
            return super().embed(texts)

    settings = settings.model_copy(update={"batch_size": 2})
    interrupted = Engine(settings, embedder=Dies())
    with pytest.raises(KeyboardInterrupt):
        interrupted.ingest([str(stories)])
    # Each finished batch's articles are stored with its vectors: `stats` shows them at once.
    assert interrupted.store.count() == 2
    resumed = CountingEmbedder()
    report = Engine(settings, embedder=resumed).ingest([str(stories)])
    assert (report.added, report.unchanged, resumed.embedded) == (5, 2, 5)
    engine = Engine(settings, embedder=CountingEmbedder())
    assert engine.state().vectors.count == 7


def test_one_id_twice_in_a_write_keeps_the_later_version(engine):
    from recommender.store.articles import Article

    twice = [Article(id=i, title=t) for i, t in [("d-1", "Prima versiune"), ("d-2", "Alt"), ("d-1", "A doua versiune")]]
    assert [r.status for r in engine.upsert(twice).results] == ["added", "added", "updated"]
    assert engine.store.get("d-1").article.title == "A doua versiune"


def test_missing_file_is_reported_and_other_files_still_ingested(engine, stories, tmp_path):
    report = engine.ingest([str(tmp_path / "nope.jsonl"), str(stories)])
    assert report.added == 7
    assert report.rejected[0].line == 0 and "cannot read" in report.rejected[0].reason


def test_bom_and_numeric_ids(engine, tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": 42, "title": "Cu BOM"}).encode() + b"\n")
    report = engine.ingest([str(path)])
    assert report.added == 1 and engine.store.get("42")


def test_the_progress_bar_has_a_total_and_moves_with_every_embedded_batch(settings, stories, tmp_path):
    """It showed `0article [00:00, ?article/s]` for a minute, then jumped."""
    from recommender.serving.ingest import count_lines
    from recommender.store.articles import parse_article

    unterminated = tmp_path / "u.jsonl"
    unterminated.write_bytes(stories.read_bytes().rstrip(b"\n"))
    assert count_lines([str(stories)]) == count_lines([str(unterminated)]) == 7
    assert count_lines([str(stories), "-"]) is None
    array = tmp_path / "a.json"
    array.write_text("[\n{}\n]\n")
    assert count_lines([str(array)]) is None
    batches: list[int] = []
    engine = Engine(settings.model_copy(update={"batch_size": 2}), embedder=CountingEmbedder())
    records = [json.loads(line) for line in stories.read_text().splitlines()]
    engine.upsert([parse_article(r) for r in records], batches.append)
    assert batches == [2, 2, 2, 1]


def test_lists_computed_in_forked_processes_are_those_of_one_process(tmp_path, stories, monkeypatch):
    from recommender.serving import lists
    from recommender.settings import Settings

    monkeypatch.setattr(lists, "SAVE_EVERY", 2)  # 7 articles: 4 chunks over 2 processes
    forked, alone = (Engine(Settings(data_dir=tmp_path / name, model="hashing:256"), embedder=CountingEmbedder())
                     for name in ("forked", "alone"))
    forked.ingest([str(stories)], workers=2)
    alone.ingest([str(stories)], workers=1)
    assert all_lists(forked) == all_lists(alone) and len(all_lists(forked)) == 7
    state = forked.state()
    shown = forked.lists_for(state)
    shown.forget(list(state.infos))
    forked.upkeep.compute_in_processes(state, shown, sorted(state.infos), 2)
    assert forked.upkeep.missing(state, shown) == []  # what the children stored is known here, not computed again
    follow_up = write_jsonl(tmp_path / "more.jsonl", [article("ukr-4", "Negocieri de pace pentru Ucraina la Kiev",
                                                             "Kievul și partenerii discută garanțiile de securitate.")])
    for engine in (forked, alone):
        engine.ingest([str(follow_up)], workers=2)
    assert all_lists(forked) == all_lists(alone)
