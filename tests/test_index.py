import numpy as np
import pytest

from embeddings.base import l2_normalize
from recommender.errors import IndexMismatch
from recommender.index import vector_index
from recommender.index.files import read_sealed, write_sealed
from recommender.index.vector_index import IndexMeta, VectorIndex, read_meta
from recommender.serving.engine import Engine
from recommender.settings import AnnSettings
from tests.conftest import CountingEmbedder


def brute_force(matrix: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    nums = np.array(sorted(matrix))
    scores = np.vstack([matrix[n] for n in nums]) @ query
    order = np.lexsort((nums, -scores))  # ties by id, like the check below tolerates
    return nums[order][:k].tolist(), scores[order][:k]


@pytest.fixture
def random_vectors():
    rng = np.random.default_rng(7)
    return l2_normalize(rng.normal(size=(500, 32)))


def test_search_matches_numpy_after_adds_and_removes(random_vectors):
    index = VectorIndex(32)
    nums = np.arange(1000, 1500, dtype=np.int64)  # ids unrelated to positions
    index.upsert(nums, random_vectors)
    oracle = {int(n): v for n, v in zip(nums, random_vectors)}

    removed = nums[::7]
    assert index.remove(removed) == len(removed)
    for n in removed:
        del oracle[int(n)]
    replaced = nums[1:50:3]
    new_vectors = l2_normalize(np.random.default_rng(8).normal(size=(len(replaced), 32)))
    index.upsert(replaced, new_vectors)
    oracle.update({int(n): v for n, v in zip(replaced, new_vectors)})
    assert index.count == len(oracle)

    queries = l2_normalize(np.random.default_rng(9).normal(size=(20, 32)))
    scores, found = index.search(queries, 10)
    for q, query in enumerate(queries):
        expected_nums, expected_scores = brute_force(oracle, query, 10)
        np.testing.assert_allclose(scores[q], expected_scores, rtol=1e-5, atol=1e-5)
        assert set(found[q]) == set(expected_nums)


def test_reconstruct_returns_stored_vectors(random_vectors):
    index = VectorIndex(32)
    index.upsert(np.array([5, 9]), random_vectors[:2])
    np.testing.assert_allclose(index.reconstruct(np.array([9, 5])), random_vectors[[1, 0]])


def test_dimension_mismatch_is_refused(random_vectors):
    with pytest.raises(IndexMismatch):
        VectorIndex(16).upsert(np.array([1]), random_vectors[:1])


def test_save_and_load_round_trip_with_sidecar(tmp_path, random_vectors):
    index = VectorIndex(32)
    index.upsert(np.arange(10), random_vectors[:10])
    meta = IndexMeta("v1", "hashing:32", 32, 0, "2025-01-01T00:00:00+00:00", applied_seq=3)
    index.save(tmp_path / "v1", meta)
    loaded, loaded_meta = VectorIndex.load(tmp_path / "v1")
    assert loaded_meta.count == 10 and loaded_meta.model == "hashing:32" and loaded_meta.applied_seq == 3
    np.testing.assert_allclose(loaded.search(random_vectors[3], 1)[0][0][0], 1.0, rtol=1e-5)


def test_sidecar_that_does_not_match_the_file_is_refused(tmp_path, random_vectors):
    index = VectorIndex(32)
    index.upsert(np.arange(10), random_vectors[:10])
    index.save(tmp_path / "v1", IndexMeta("v1", "m", 32, 0, "t"))
    meta_path = tmp_path / "v1" / "meta.json"
    write_sealed(meta_path, read_sealed(meta_path).replace(b'"count": 10', b'"count": 11'))
    with pytest.raises(IndexMismatch, match="does not match its sidecar"):
        VectorIndex.load(tmp_path / "v1")


def test_serving_with_another_model_is_refused_with_a_clear_message(engine, stories, settings):
    engine.ingest([str(stories)])
    other = Engine(settings.model_copy(update={"model": "hashing:128"}), embedder=CountingEmbedder(128))
    with pytest.raises(IndexMismatch, match=r"built with model 'hashing:256', not 'hashing:128'") as mismatch:
        other.related("ukr-1")
    assert "reembed --model hashing:128" in mismatch.value.hint
    with pytest.raises(IndexMismatch):
        other.ingest([str(stories)])


def test_sidecar_records_model_dimension_count_and_creation(engine, stories, settings):
    engine.ingest([str(stories)])
    meta = read_meta(settings.index_dir / "v1")
    assert (meta.model, meta.dimension, meta.count) == ("hashing:256", 256, 7)
    assert meta.created_at.startswith("20")


def test_engine_index_agrees_with_numpy_over_stored_vectors(engine, stories, settings):
    engine.ingest([str(stories)])
    state = engine.state()
    rows = [(info.num, np.frombuffer(vec, dtype=np.float32)) for info, _, _, vec in engine.store.index_rows(engine.model)]
    oracle = dict(rows)
    query = oracle[state.by_id["ukr-1"]]
    expected, _ = brute_force(oracle, query, 4)
    _, found = state.vectors.search(query, 4)
    assert set(found[0]) == set(expected)


@pytest.mark.parametrize("compact_at", [3, 10_000])
def test_search_matches_numpy_through_compactions(random_vectors, monkeypatch, compact_at):
    monkeypatch.setattr(VectorIndex, "COMPACT_AT", compact_at)
    monkeypatch.setattr(vector_index, "ADD_BLOCK", 7)  # a new main is filled a block at a time
    rng = np.random.default_rng(3)
    index = VectorIndex(32)
    oracle: dict[int, np.ndarray] = {}
    for step in range(60):
        nums = rng.choice(200, size=rng.integers(1, 8), replace=False)
        if step % 3 == 2:
            index.remove(nums)
            for n in nums:
                oracle.pop(int(n), None)
        else:
            vecs = l2_normalize(rng.normal(size=(len(nums), 32)))
            index.upsert(nums, vecs)
            oracle.update({int(n): v for n, v in zip(nums, vecs)})
        assert index.count == len(oracle) and set(index.ids().tolist()) == set(oracle)
        asked = np.arange(-2, 210)
        assert index.has(asked).tolist() == [int(n) in oracle for n in asked]
        alive = np.array(sorted(oracle), dtype=np.int64)  # the delta's rows move as it loses some
        np.testing.assert_allclose(index.reconstruct(alive), np.vstack([oracle[int(n)] for n in alive]), atol=1e-6)
    query = random_vectors[0]
    expected, expected_scores = brute_force(oracle, query, 10)
    scores, found = index.search(query, 10)
    np.testing.assert_allclose(scores[0], expected_scores, rtol=1e-5, atol=1e-5)
    assert set(found[0]) == set(expected)
    some = np.array(sorted(oracle)[:5])
    np.testing.assert_allclose(index.reconstruct(some), np.vstack([oracle[int(n)] for n in some]), atol=1e-6)


def test_a_clone_changes_without_touching_the_original(random_vectors):
    index = VectorIndex(32)
    index.upsert(np.arange(100), random_vectors[:100])
    index.compact()
    copy = index.clone()
    copy.remove(np.array([0, 1]))
    copy.upsert(np.array([2, 500]), random_vectors[100:102])
    copy.compact()
    assert index.count == 100 and 0 in index and 500 not in index
    np.testing.assert_allclose(index.reconstruct(np.array([2])), random_vectors[2:3])
    assert copy.count == 99 and 0 not in copy and 500 in copy
    np.testing.assert_allclose(copy.reconstruct(np.array([2])), random_vectors[100:101])


def hnsw_index(vectors, nums, exact_below=0, precision="float16"):

    index = VectorIndex(vectors.shape[1], ann=AnnSettings(exact_below=exact_below, ef_search=64, precision=precision))
    index.upsert(nums, vectors)
    index.compact()  # the kind the size calls for: what a save or a build does
    return index


# A float16 component of a unit vector is within half a step of 2**-11 of its float32 value.
@pytest.mark.parametrize(("precision", "tolerance"), [("float32", 0.0), ("float16", 2.0 ** -12)])
def test_above_its_threshold_the_main_index_is_hnsw_and_finds_what_exact_search_finds(random_vectors, precision,
                                                                                      tolerance):
    nums = np.arange(2000, 2500, dtype=np.int64)
    oracle = {int(n): v for n, v in zip(nums, random_vectors)}
    assert hnsw_index(random_vectors, nums, exact_below=501).kind == "exact"
    index = hnsw_index(random_vectors, nums, precision=precision)
    assert index.kind == "hnsw" and index.recall >= 0.95
    queries = l2_normalize(np.random.default_rng(10).normal(size=(30, 32)))
    _, found = index.search(queries, 10)
    hits = sum(len(set(found[q]) & set(brute_force(oracle, query, 10)[0])) for q, query in enumerate(queries))
    assert hits / 300 >= 0.95
    back = index.reconstruct(nums[[3, 1]])
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, random_vectors[[3, 1]], rtol=0, atol=tolerance)
    assert (np.abs(back - random_vectors[[3, 1]]) > 0).any() == (precision == "float16")
    # the nearest float16, widened exactly: what numpy's own cast gives
    np.testing.assert_array_equal(back, random_vectors[[3, 1]].astype(precision).astype(np.float32))


def test_a_first_build_fills_the_graph_in_place_and_finds_what_exact_search_finds(random_vectors):

    nums = np.arange(1000, 1500, dtype=np.int64)
    oracle = {int(n): v for n, v in zip(nums, random_vectors)}
    index = VectorIndex(32, ann=AnnSettings(exact_below=400, ef_search=64))
    index.start_main(500)
    for start in range(0, 500, 128):  # as a build applies the store's rows, a chunk at a time
        index.fill(nums[start:start + 128], random_vectors[start:start + 128])
    index.filled()
    assert index.kind == "hnsw" and index.delta.ntotal == 0 and index.main.ntotal == index.count == 500
    assert index.recall >= 0.95 and index.has(nums).all() and 999 not in index
    _, found = index.search(random_vectors[:30], 10)
    hits = sum(len(set(found[q]) & set(brute_force(oracle, query, 10)[0])) for q, query in enumerate(random_vectors[:30]))
    assert hits / 300 >= 0.95
    with pytest.raises(ValueError):
        index.fill(nums[:1], random_vectors[:1])  # a graph cannot replace a row: writes go to the delta
    with pytest.raises(ValueError):
        index.start_main(500)


def test_hnsw_rows_replaced_or_deleted_never_come_back_even_after_a_save(tmp_path, random_vectors, monkeypatch):
    monkeypatch.setattr(vector_index, "ADD_BLOCK", 64)
    nums = np.arange(500, dtype=np.int64)
    index = hnsw_index(random_vectors, nums)
    index.remove(nums[:40])  # tombstones: the graph cannot drop rows
    moved = l2_normalize(np.random.default_rng(11).normal(size=(5, 32)))
    index.upsert(nums[40:45], moved)
    assert index.main.ntotal == 500 and index.count == 460

    def check(idx):
        _, found = idx.search(random_vectors[:45], 20)
        assert not np.isin(found, nums[:40]).any()
        _, found = idx.search(moved, 1)
        assert found[:, 0].tolist() == nums[40:45].tolist()  # their new vectors, from the delta or the graph

    check(index)
    assert index.has(nums).tolist() == [n >= 40 for n in nums]
    index.save(tmp_path / "v1", IndexMeta("v1", "m", 32, 0, "t"))
    meta = read_meta(tmp_path / "v1")
    assert meta.kind == "hnsw" and meta.count == 460 and len(meta.tombstones) == 45 and meta.recall_at_10 >= 0.9
    loaded, _ = VectorIndex.load(tmp_path / "v1", index.ann)
    assert loaded.count == 460 and loaded.has(nums).tolist() == [n >= 40 for n in nums]
    check(loaded)
    # A few writes later, a save leaves the graph's file alone and writes them beside it.
    graph_file = (tmp_path / "v1" / "index.faiss").stat().st_ino
    loaded.upsert(np.array([7000]), moved[:1])
    loaded.save(tmp_path / "v1", IndexMeta("v1", "m", 32, 0, "t", applied_seq=2))
    assert (tmp_path / "v1" / "index.faiss").stat().st_ino == graph_file
    assert [p.name for p in (tmp_path / "v1").glob("delta-*")] == [read_meta(tmp_path / "v1").delta_file]
    again, _ = VectorIndex.load(tmp_path / "v1", index.ann)
    assert again.count == 461 and again.search(moved[:1], 2)[1][0].tolist() in ([7000, 40], [40, 7000])
    check(again)
    loaded = again
    loaded.remove(nums[45:60])  # past REBUILD_SHARE: the next save rebuilds the graph without them
    loaded.save(tmp_path / "v2", IndexMeta("v2", "m", 32, 0, "t"))
    rebuilt, meta = VectorIndex.load(tmp_path / "v2", index.ann)
    assert meta.tombstones == [] and rebuilt.main.ntotal == rebuilt.count == 446 and rebuilt.kind == "hnsw"


def test_a_float32_graph_saved_before_serves_as_it_was_and_a_rebuild_stores_float16(tmp_path, random_vectors):
    nums = np.arange(500, dtype=np.int64)
    old = hnsw_index(random_vectors, nums, precision="float32")  # as every release before float16 saved it
    old.save(tmp_path / "v1", IndexMeta("v1", "m", 32, 0, "t"))
    loaded, _ = VectorIndex.load(tmp_path / "v1", AnnSettings(exact_below=0, ef_search=64))  # float16 by default
    assert loaded._stored(loaded.main).dtype == np.float32
    np.testing.assert_array_equal(loaded.reconstruct(nums[:5]), random_vectors[:5])
    np.testing.assert_array_equal(loaded.search(random_vectors[:30], 10)[1], old.search(random_vectors[:30], 10)[1])
    loaded.compact(rebuild=True)
    assert loaded.kind == "hnsw" and loaded._stored(loaded.main).dtype == np.float16 and loaded.recall >= 0.95
    np.testing.assert_allclose(loaded.reconstruct(nums), random_vectors[:500], rtol=0, atol=2.0 ** -12)


def test_an_archive_above_the_threshold_is_served_by_hnsw_with_its_recall_shown(tmp_path, stories):
    from click.testing import CliRunner

    from recommender.cli import main
    from recommender.settings import AnnSettings, Settings

    exact = Engine(Settings(data_dir=tmp_path / "exact", model="hashing:256"), embedder=CountingEmbedder())
    exact.ingest([str(stories)])
    settings = Settings(data_dir=tmp_path / "ann", model="hashing:256", ann=AnnSettings(exact_below=5))
    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    meta = read_meta(engine.versions.path("v1"))
    assert meta.kind == "hnsw" and meta.vectors == "float16" and meta.recall_at_10 == 1.0  # a graph of a handful of articles misses nothing
    reloaded = Engine(settings, embedder=CountingEmbedder())
    assert reloaded.state().vectors.kind == "hnsw"
    for seed in ("ukr-1", "fot-1"):
        assert [i.id for i in reloaded.related(seed, k=4)] == [i.id for i in exact.related(seed, k=4)]
    listed = CliRunner().invoke(main, ["index", "list", "--data-dir", str(settings.data_dir)])
    assert "hnsw in float16 (recall@10 1.000)" in listed.output


def test_a_restart_reads_the_saved_lexical_indexes_and_ranks_as_if_it_had_parsed_the_store(tmp_path, stories):
    import shutil

    from recommender.index.state import LEXICAL_DIR
    from recommender.ranking.rules import Filters
    from recommender.settings import Settings
    from tests.conftest import article, write_jsonl

    settings = Settings(data_dir=tmp_path / "d", model="hashing:256")
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    # A change after the save: the restart applies it on top of what it read back.
    late = write_jsonl(tmp_path / "late.jsonl", [article("late-1", "Armistițiul din Marea Neagră, prelungit",
                                                         "Ucraina și Rusia prelungesc armistițiul pe mare.")])
    Engine(settings, embedder=CountingEmbedder()).ingest([str(late)], index=False)

    def live_lists():
        engine = Engine(settings, embedder=CountingEmbedder())
        state = engine.state()
        return [[(i.id, i.relevance, i.reason) for i in ranker_rank(engine, state, seed)]
                for seed in ("ukr-1", "ukr-2", "fot-1", "late-1")], state

    def ranker_rank(engine, state, seed):
        from recommender.ranking import pipeline

        return pipeline.rank(state, engine.seed(state, seed), Filters(), engine.ranking(k=5))

    read_back, state = live_lists()
    assert isinstance(state.lexical._base.ids.base, np.memmap) and "late-1" in state.by_id
    base = state.lexical._base.token
    Engine(settings, embedder=CountingEmbedder()).indexes.save(state)  # a later save: the base stays
    again, state = live_lists()  # the save took late-1 in: read back as a change beside the same base
    assert state.lexical._base.token == base and state.by_id["late-1"] in state.lexical._docs
    shutil.rmtree(settings.index_dir / "v1" / LEXICAL_DIR)  # as a version saved by an earlier release
    parsed, state = live_lists()
    assert not isinstance(state.lexical._base.ids.base, np.memmap)
    assert again == parsed and any(parsed)
    reread, state = live_lists()  # the parse was saved: the next start reads it back
    assert isinstance(state.lexical._base.ids.base, np.memmap) and reread == parsed
    assert [[i[::2] for i in items] for items in read_back] == [[i[::2] for i in items] for items in parsed]
