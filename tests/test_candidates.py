"""The ranking's candidate sources and their building blocks, against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from recommender.index.lexical import LexicalIndex
from recommender.index.timeline import Timeline
from recommender.ranking import pipeline
from recommender.ranking.candidates import SOURCES
from recommender.ranking.rules import Filters
from recommender.text.entities import entities
from tests.conftest import article, write_jsonl


def test_entities_are_names_not_sentence_starts():
    found = entities("Klaus Iohannis a vizitat Banca Transilvania",
                     "Președintele a spus că BNR va decide. Ministerul Finanțelor a anunțat, iar OMV Petrom a reacționat. "
                     "Anul acesta va fi greu.")
    assert {"iohannis", "klaus_iohannis", "banc_transilvan", "bnr", "omv_petrom", "petrom"} <= set(found)
    assert "anul" not in found and "an" not in found  # a capital at a sentence's start says nothing
    # Folded and stemmed: the cedilla and the comma forms, and two cases of a name, are one key.
    assert entities("x", "Vizita în România.") == entities("x", "Vizita în Romaniei.") == ["roman"]


def test_bm25_search_matches_brute_force_through_adds_updates_and_removes():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(60)]
    lexical = LexicalIndex()
    docs = {n: list(rng.choice(vocab, size=rng.integers(5, 30))) for n in range(1500)}
    for n, words in docs.items():
        lexical.add(n, words)
    query = lexical.query(["w1", "w2", "w3", "w7"])
    assert_search_is_exact(lexical, query)  # built in bulk
    for n in range(0, 300, 3):  # changes the built index does not hold: scored as a delta
        lexical.remove(n)
    for n in range(1, 300, 3):
        lexical.add(n, ["w1", "w1", "w2", "new"])
    lexical.add(5000, ["w3", "w7", "w7"])
    assert_search_is_exact(lexical, query)
    lexical._current_postings()  # rebuilt with "new" in it: a rare term, scored through its few postings
    assert_search_is_exact(lexical, lexical.query(["new"]))
    before = lexical.clone()
    lexical.add(5001, ["w1", "w2", "w3", "w7"])
    assert 5001 in lexical.search(query, 5)[1] and 5001 not in before.search(query, 5)[1]


def test_settling_rebuilds_the_inverted_index_with_every_changed_document():
    rng = np.random.default_rng(2)
    vocab = [f"w{i}" for i in range(50)]
    lexical = LexicalIndex()
    for n in range(4000):
        lexical.add(n, list(rng.choice(vocab, size=12)))
    query = lexical.query(["w1", "w2", "w3"])
    lexical.search(query, 5)  # built
    for n in range(4000, 4300):  # a bulk import: fewer than a tenth, scored one by one by each search
        lexical.add(n, list(rng.choice(vocab, size=12)))
    assert_search_is_exact(lexical, query)
    assert lexical._postings is not None and len(lexical._postings.delta) == 300
    lexical.settle()  # before a backlog of lists: rebuilt whatever the count
    assert not lexical._postings.delta and 4299 in lexical._postings.nums
    assert_search_is_exact(lexical, query)


def test_bm25_built_in_blocks_is_the_index_built_one_document_at_a_time():
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(70)]
    docs = {n: list(rng.choice(vocab, size=rng.integers(0, 30))) for n in range(0, 2400, 2)}
    one, blocks = LexicalIndex(), LexicalIndex()
    for n, words in docs.items():
        one.add(n, words)
    nums = list(docs)
    for start in range(0, len(nums), 500):  # appended to the base block by block while building
        blocks.add_many(nums[start:start + 500], [docs[n] for n in nums[start:start + 500]])
    assert len(blocks._base.nums) == len(docs) and not blocks._docs
    query = one.query(["w1", "w2", "w3", "w7"])
    blocks._current_postings()
    blocks.add_many([1, 2, 4], [["w1", "w1"], ["w2"], ["w3", "w9"]])  # once searched: changes, one by one
    one.add(1, ["w1", "w1"])
    one.add(2, ["w2"])
    one.add(4, ["w3", "w9"])
    assert blocks.vocab.first(len(one.vocab)) == one.vocab.first(len(one.vocab)) and len(blocks) == len(one)
    assert blocks.nums().tolist() == one.nums().tolist()
    everyone = one.nums().tolist()
    np.testing.assert_array_equal(blocks.score(query, everyone), one.score(query, everyone))
    assert [blocks.terms_of(n) for n in everyone] == [one.terms_of(n) for n in everyone]
    assert_search_is_exact(blocks, query)


def test_bm25_survives_folds_and_a_save_read_back_memory_mapped(tmp_path, monkeypatch):
    import recommender.index.lexical

    monkeypatch.setattr(recommender.index.lexical, "FOLD_MIN", 50)  # fold into the base every few dozen writes
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(80)]
    lexical, plain = LexicalIndex(), {}
    for step in range(900):
        n = int(rng.integers(0, 400))
        if step % 9 == 0:
            lexical.remove(n)
            plain.pop(n, None)
        else:
            plain[n] = list(rng.choice(vocab, size=rng.integers(0, 25)))
            lexical.add(n, plain[n])
        if step == 450:
            frozen, frozen_nums = lexical.clone(), sorted(plain)
    query = lexical.query(["w1", "w5", "w9", "w11"])
    assert lexical.nums().tolist() == sorted(plain) and len(lexical) == len(plain)
    assert frozen.nums().tolist() == frozen_nums  # a clone does not see later writes, folds included
    assert_search_is_exact(lexical, query)
    manifest = lexical.save(tmp_path / "lex")
    loaded = LexicalIndex.load(tmp_path / "lex", manifest)
    nums = sorted(plain)
    np.testing.assert_allclose(loaded.score(query, nums), lexical.score(query, nums))
    assert loaded.terms_of(nums[0]) == lexical.terms_of(nums[0]) and loaded.idf_of(vocab) == lexical.idf_of(vocab)
    loaded.add(9999, ["w1", "w5", "w5"])  # a loaded index takes writes like any other
    loaded.remove(nums[1])
    assert_search_is_exact(loaded, query)
    assert 9999 in loaded and nums[1] not in loaded
    # Saved again: the same base, written once, plus what changed since.
    again = LexicalIndex.load(tmp_path / "lex", loaded.save(tmp_path / "lex"))
    assert again._base.token == manifest["base"] and again.nums().tolist() == loaded.nums().tolist()
    np.testing.assert_allclose(again.score(query, again.nums()), loaded.score(query, loaded.nums()))
    assert len(list((tmp_path / "lex").glob("base-*"))) == 1


def test_bm25_reads_back_an_index_saved_with_four_byte_counts_and_folds_it_into_two(tmp_path, monkeypatch):
    import recommender.index.lexical

    rng = np.random.default_rng(5)
    vocab = [f"w{i}" for i in range(60)]
    docs = {n: list(rng.choice(vocab, size=rng.integers(1, 30))) for n in range(300)}
    monkeypatch.setattr(recommender.index.lexical, "COUNT", np.int32)  # as releases before 2 bytes wrote them
    old = LexicalIndex()
    old.add_many(list(docs), list(docs.values()))
    manifest = old.save(tmp_path / "lex")
    monkeypatch.undo()
    monkeypatch.setattr(recommender.index.lexical, "FOLD_MIN", 20)
    loaded = LexicalIndex.load(tmp_path / "lex", manifest)
    assert loaded._base.counts.dtype == np.int32
    fresh = LexicalIndex()
    fresh.add_many(list(docs), list(docs.values()))
    for n in range(280, 330):  # replaced and new documents, folded into a new base
        docs[n] = list(rng.choice(vocab, size=rng.integers(1, 30)))
        for index in (loaded, fresh):
            index.add(n, docs[n])
    assert loaded._base.counts.dtype == np.uint16 and len(loaded._docs) < 20
    query = loaded.query(["w1", "w2", "w30"])
    np.testing.assert_allclose(loaded.score(query, sorted(docs)), fresh.score(query, sorted(docs)))
    assert_search_is_exact(loaded, query)


def assert_search_is_exact(lexical: LexicalIndex, query) -> None:
    nums = lexical.nums()
    brute = lexical.score(query, nums.tolist())
    scores, found = lexical.search(query, 20)
    expected = nums[np.lexsort((nums, -brute))][:20]
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.sort(brute)[::-1][:20], rtol=1e-5)


def test_timeline_window_matches_a_scan_through_writes_and_clones():
    rng = np.random.default_rng(1)
    timeline, at = Timeline(), {}
    for num in range(500):  # the bulk path
        at[num] = float(rng.integers(0, 1000))
        timeline.set(num, at[num])
    for step in range(200):  # one by one, and a clone that must not see later writes
        num = int(rng.integers(0, 600))
        when = None if step % 7 == 0 else float(rng.integers(0, 1000))
        timeline.set(num, when)
        at.pop(num, None) if when is None else at.__setitem__(num, when)
        if step == 100:
            frozen, frozen_at = timeline.clone(), dict(at)
    for tl, expected in ((timeline, at), (frozen, frozen_at)):
        got = tl.window(500.0, 100.0, 50.0, limit=10_000)
        assert sorted(got.tolist()) == sorted(n for n, t in expected.items() if 400 <= t <= 550)
    for when, limit in ((500.0, 5), (500.0, 40), (3.0, 30), (997.5, 7), (250.0, 400)):
        # closest first; ties by time, then by num: the order of the sorted timeline
        expected = sorted((n for n, t in at.items() if when - 300 <= t <= when + 200),
                          key=lambda n: (abs(at[n] - when), at[n], n))[:limit]
        assert timeline.window(when, 300.0, 200.0, limit).tolist() == expected


@pytest.fixture
def archive(engine, tmp_path):
    """A story told over a week, echoed by pieces that share its words but not its time or names."""
    records = [article("s-1", "Fuziunea Petrom cu Romgaz, anunțată", "Petrom și Romgaz anunță fuziunea. Ministrul Popescu a confirmat.",
                       "2025-03-01T10:00:00+00:00", section="economie"),
               article("s-2", "Petrom și Romgaz semnează", "Acordul de fuziune a fost semnat de Petrom și Romgaz.",
                       "2025-03-04T10:00:00+00:00", section="economie"),
               article("s-3", "Ce urmează după fuziune", "Analiștii spun că fuziunea Petrom Romgaz schimbă piața. Popescu e optimist.",
                       "2025-03-06T10:00:00+00:00", section="economie")]
    records += [article(f"far-{i}", f"Fuziune în industrie {i}", "O fuziune anunțată; acordul de fuziune a fost semnat.",
                        f"20{10 + i}-06-01T10:00:00+00:00", section="economie") for i in range(8)]
    topics = ("meciul de fotbal de aseară", "vremea caldă de la munte", "prețul pâinii în magazine", "concertul din parc",
              "școlile se redeschid", "trenurile întârzie iar", "festivalul de film", "recolta de grâu a fost bună")
    records += [article(f"other-{i}", topic.capitalize(), f"Despre {topic}, pe larg.", "2025-03-03T10:00:00+00:00",
                        section="diverse") for i, topic in enumerate(topics)]
    engine.ingest([str(write_jsonl(tmp_path / "a.jsonl", records))])
    return engine


def test_every_source_brings_candidates_that_pass_the_filters(archive):
    state = archive.state()
    seed = archive.seed(state, "s-3")
    found = pipeline.gather(state, seed, Filters(past_only=True), archive.ranking(candidates=10, window_days=30))
    assert set(found.by_source) == set(SOURCES)
    ids = {name: {state.infos[int(n)].id for n in nums} for name, nums in found.by_source.items()}
    assert {"s-1", "s-2"} <= ids["time"] and not any(i.startswith("far-") for i in ids["time"])  # years away
    assert {"s-1", "s-2"} <= ids["entities"]  # Petrom, Romgaz, Popescu
    assert "s-3" not in set().union(*ids.values())  # never the seed
    assert set(found.nums.tolist()) == {state.by_id[i] for i in set().union(*ids.values())}
    assert ids["dense"] and ids["lexical"]


def test_names_and_time_put_the_story_first(archive):
    assert [i.id for i in archive.related("s-3", k=2)] == ["s-2", "s-1"]


def test_a_clone_shares_the_vocabulary_yet_never_sees_terms_added_after_it():
    lexical = LexicalIndex()
    lexical.add(1, ["alfa", "beta"])
    frozen = lexical.clone()
    for n in range(2, 3000):  # enough new terms to grow the frequencies past the clone's
        lexical.add(n, [f"nou{n}", "alfa"])
    assert frozen.query(["nou5", "alfa"])[0].tolist() == lexical.vocab.ids(["alfa"]).tolist()
    assert frozen.idf_of(["nou5", "alfa"]).keys() == {"alfa"}
    assert frozen.score_terms(frozen.query(["alfa"]), ["nou7", "alfa"]) > 0 and len(frozen) == 1
    assert frozen.search(frozen.query(["alfa", "nou9"]), 5)[1].tolist() == [1]


def test_the_vocabulary_answers_as_a_dictionary_through_adds_freezes_and_hash_collisions(monkeypatch):
    from recommender.index import terms as module
    from recommender.index.terms import UNKNOWN, Vocabulary

    # Every term hashed into one of 7 values: terms of one hash are told apart by their bytes.
    monkeypatch.setattr(module, "hash", lambda term: len(term.encode()) % 7, raising=False)
    rng = np.random.default_rng(5)
    words = ["știință", "țară", "a", "", "x" * 300, "mărțișor"] + [f"t{i}" for i in range(200)]
    plain: dict[str, int] = {}
    vocab = Vocabulary()
    for step, word in enumerate(rng.permutation(words).tolist()):
        if step % 37 == 0:
            vocab.freeze()
        if rng.random() < 0.8:
            plain[word] = vocab.add(word)
        asked = [str(w) for w in rng.choice(words, size=20)]
        # A term outside may match one inside of its hash: here 1 in 7, with Python's 64-bit hash
        # about 1e-13. A term inside always finds its own id.
        known = [w for w in asked if w in plain]
        assert vocab.ids(known).tolist() == [plain[w] for w in known]
        assert all(i == UNKNOWN or vocab[i] == w or module.hash(vocab[i]) == module.hash(w)
                   for w, i in zip(asked, vocab.ids(asked)))
    by_id = sorted(plain, key=plain.get)
    assert len(vocab) == len(plain) and vocab.take(range(len(plain))) == by_id and vocab.first(50) == by_id[:50]
    vocab.freeze()
    assert vocab.first(len(plain) + 5) == by_id and Vocabulary(by_id).ids(words).tolist() == vocab.ids(words).tolist()

    monkeypatch.undo()  # Python's hash again
    lexical = LexicalIndex()
    lexical.add(1, ["țară", "știință", "țară"])
    lexical.settle()  # frozen, as before forking list workers
    lexical.add(2, ["mărțișor", "țară"])  # a term added after the freeze
    assert sorted(lexical.terms_of(1)) == ["știință", "țară"] and sorted(lexical.bag_of(1)) == ["știință", "țară", "țară"]
    assert sorted(lexical.terms_of(2)) == ["mărțișor", "țară"] and lexical.idf_of(["țară", "nou"]).keys() == {"țară"}
    assert lexical.query(["mărțișor", "țară", "mărțișor", "nou"])[0].tolist() == lexical.vocab.ids(["mărțișor", "țară"]).tolist()
    for seed in (["țară", "nou", "mărțișor"], ["știință"], []):  # what a list's reasons ask
        for num in (1, 2, 3):
            ids = np.unique(lexical.term_ids(seed))
            got = lexical.vocab.take(ids[lexical.shared_among(num, ids)])
            assert sorted(got) == sorted(set(lexical.terms_of(num)) & set(seed))


def test_bm25_search_skips_terms_in_most_documents_but_scores_candidates_on_every_term(monkeypatch):
    import recommender.index.lexical

    monkeypatch.setattr(recommender.index.lexical, "COMMON_MIN_DOCS", 10)
    lexical = LexicalIndex()
    for n in range(200):  # "comun" in every document, "rar" in a few, "comun" twice in 7
        lexical.add(n, ["comun"] * (2 if n == 7 else 1) + (["rar"] if n % 50 == 0 else []) + [f"x{n}"])
    query = lexical.query(["comun", "rar"])
    assert lexical.search(query, 10)[1].tolist() == [0, 50, 100, 150]  # only "rar" drives the search
    assert lexical.score(query, [7])[0] > lexical.score(query, [8])[0]  # while the scores count "comun"
    only_common = lexical.query(["comun"])
    assert lexical.search(only_common, 1)[1].tolist() == [7]  # a query of common terms alone keeps them


def test_bm25_search_skips_a_term_in_more_documents_than_the_cap_however_large_the_archive(monkeypatch):
    import recommender.index.lexical

    monkeypatch.setattr(recommender.index.lexical, "COMMON_MIN_DOCS", 10)
    monkeypatch.setattr(recommender.index.lexical, "COMMON_SHARE", 0.5)  # 100 of the 200 documents
    lexical = LexicalIndex()
    for n in range(200):  # "des" in 40 documents (20 %, under the share), "rar" in 4
        lexical.add(n, (["des"] * (3 if n == 1 else 1) if n % 5 == 1 else []) + (["rar"] if n % 50 == 0 else []))
    query = lexical.query(["des", "rar"])
    assert 1 in lexical.search(query, 10)[1].tolist()  # under the share, "des" drives the search
    monkeypatch.setattr(recommender.index.lexical, "COMMON_MAX_DOCS", 20)
    assert lexical.search(query, 10)[1].tolist() == [0, 50, 100, 150]


def test_a_seeds_query_and_own_score_from_one_lookup_equal_the_two_asked_apart():
    lexical = LexicalIndex()
    for n in range(30):
        lexical.add(n, [f"w{n % 7}", f"w{n % 11}", "comun", f"rar{n}"])
    seed = ["w3", "w3", "comun", "necunoscut", "w5", "rar4"]  # a repeat and a term no document has
    query, own = lexical.query_and_own(seed)
    expected = lexical.query(seed)
    assert [a.tolist() for a in query] == [a.tolist() for a in expected]
    assert own == lexical.score_terms(expected, seed) > 0
    (ids, weights), nothing = lexical.query_and_own(["necunoscut"])
    assert len(ids) == len(weights) == 0 and nothing == 0.0
