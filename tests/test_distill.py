"""The static model: its embedder, its fit against brute-force least squares, and
`recommender distill` end to end with the real e5 teacher on a small archive."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embeddings import load_embedder, validate_model_string
from embeddings.base import ModelLoadError, UnknownModelError
from embeddings.static import (
    StaticEmbedder,
    StaticMeta,
    Vocabulary,
    WordCounts,
    fit,
    mean_matrix,
    save,
)
from recommender.cli import main
from recommender.errors import RecommenderError
from recommender.ranking.distill import DistillOptions, run_distill
from recommender.serving.engine import Engine
from recommender.serving.reembed import ReembedOptions, run_reembed
from recommender.settings import Settings
from tests.conftest import article, write_jsonl

TOPICS = [
    ("Guvernul", "bugetul", "deficitul", "ministrul finanțelor"),
    ("Dinamo", "meciul", "golul", "antrenorul echipei"),
    ("Banca Națională", "dobânda", "inflația", "cursul leului"),
    ("Ucraina", "armistițiul", "porturile", "negocierile de pace"),
]


def corpus(n: int) -> list[dict]:
    records = []
    for i in range(n):
        who, a, b, c = TOPICS[i % len(TOPICS)]
        records.append(article(f"a{i}", f"{who} și {a} în ziua {i % 7}",
                               f"{who} discută despre {a}, {b} și {c}. Detaliul {i % 3} contează.",
                               date=f"2025-0{1 + i % 6}-1{i % 9}T10:00:00+00:00"))
    return records


@pytest.fixture
def archive(tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", model="hashing:64")
    Engine(settings).ingest([str(write_jsonl(tmp_path / "archive.jsonl", corpus(40)))])
    return settings


def tiny_model(tmp_path, words: dict[str, list[float]], weights=None):
    vocabulary = Vocabulary(list(words), list(words), np.array(weights or [1.0] * len(words)))
    meta = StaticMeta("test", len(words), 2, 1, 0.1, 1, 1, None, 0.0, 0.0)
    save(tmp_path / "m", vocabulary, np.array(list(words.values()), dtype=np.float32), meta)
    return StaticEmbedder(tmp_path / "m", "static:m")


def test_an_article_is_the_weighted_mean_of_its_known_words(tmp_path):
    model = tiny_model(tmp_path, {"bursa": [1.0, 0.0], "leul": [0.0, 1.0]}, weights=[1.0, 3.0])
    vectors = model.embed(["Bursa și leul", "BURSA bursa", "cuvinte necunoscute"])
    assert np.allclose(vectors[0], np.array([1.0, 3.0]) / np.sqrt(10), atol=1e-6)
    assert np.allclose(vectors[1], [1.0, 0.0]) and np.allclose(vectors[2], [0.0, 0.0])


def test_text_typed_without_diacritics_gets_the_same_vector(tmp_path):
    counts = WordCounts()
    for text in ["Ţara şi țara", "țara noastră", "tara"]:
        counts.add(text)
    vocabulary = counts.vocabulary(min_count=2, max_words=10)
    assert vocabulary.keys == ["tara"] and vocabulary.spellings == ["țara"]  # the most frequent spelling
    model = tiny_model(tmp_path, {"tara": [0.6, 0.8]})
    assert np.array_equal(model.embed(["Țara"]), model.embed(["tara"]))
    assert np.array_equal(model.embed(["Ţara"]), model.embed(["ţara"]))  # cedilla as well


def test_fit_equals_the_least_squares_solution_over_words():
    rng = np.random.default_rng(0)
    vocabulary = Vocabulary([f"w{i}" for i in range(30)], [f"w{i}" for i in range(30)], rng.uniform(0.2, 1, 30))
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 30, 8)) for _ in range(12)]
    means = mean_matrix(texts, vocabulary)
    prior, targets, ridge = rng.normal(size=(30, 5)), rng.normal(size=(12, 5)), 0.05
    dense = means.toarray()
    # The primal normal equations, over words: (XᵀX + λI) W = XᵀY + λ W0.
    expected = np.linalg.solve(dense.T @ dense + ridge * np.eye(30), dense.T @ targets + ridge * prior)
    assert np.allclose(fit(prior, means, targets, ridge), expected, atol=1e-8)
    assert np.allclose(dense.sum(axis=1), 1.0)  # each row a mean


def test_model_strings():
    assert validate_model_string(" static:s1 ").name == "static:s1"
    with pytest.raises(UnknownModelError, match="static:<name or path>"):
        validate_model_string("static:")
    with pytest.raises(ModelLoadError, match="recommender distill"):
        load_embedder("static:s9", models_dir=None)


def test_distill_with_the_real_teacher_then_reembed_and_serve(archive):
    result = run_distill(archive, DistillOptions(sample=30))
    assert result.model == "static:s1" and (archive.models_dir / "s1" / "model.npz").exists()
    meta = result.meta
    assert (meta.teacher, meta.dimension, meta.sample, meta.corpus_texts) == ("e5-small-q4", 384, 30, 40)
    assert "guvernul" in np.load(result.path / "model.npz")["words"]
    # The fit brings held-out articles closer to the teacher than words alone.
    assert meta.heldout_cosine_fitted > meta.heldout_cosine_vocabulary > 0.5
    again = run_distill(archive, DistillOptions(sample=30))
    assert again.model == "static:s2"  # never overwritten: vectors are cached by model name
    vectors = np.load(result.path / "model.npz")["vectors"]
    assert np.allclose(vectors, np.load(again.path / "model.npz")["vectors"], atol=1e-5)  # deterministic

    run_reembed(archive, ReembedOptions("static:s1", workers=2), echo=lambda _: None)
    engine = Engine(archive.model_copy(update={"model": None}))
    assert engine.model == "static:s1" and engine.state().meta.dimension == 384
    related = [item.id for item in engine.related("a0", k=5)]
    assert related and all(int(r[1:]) % 4 == 0 for r in related[:3])  # the same topic first


def test_until_samples_only_older_articles(archive):
    result = run_distill(archive, DistillOptions(sample=1000, until=None))
    older = run_distill(archive, DistillOptions(sample=1000, until=_date("2025-04-01")))
    assert result.meta.sample == 40 and older.meta.sample < 40 and older.meta.sample_until.startswith("2025-04-01")


def _date(text):
    from datetime import datetime, timezone

    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def test_distill_cli_errors_are_clear(tmp_path, archive):
    runner = CliRunner()
    empty = runner.invoke(main, ["distill", "--data-dir", str(tmp_path / "nothing")])
    assert empty.exit_code != 0 and "no store" in empty.output and "Traceback" not in empty.output
    bad = runner.invoke(main, ["distill", "--data-dir", str(archive.data_dir), "--teacher", "hashing:8"])
    assert bad.exit_code != 0 and "sentence encoder" in bad.output
    assert not archive.models_dir.exists()
    helped = runner.invoke(main, ["distill", "--help"])
    assert helped.exit_code == 0 and "static:s1" in helped.output
    none = runner.invoke(main, ["models", "--data-dir", str(archive.data_dir)])
    assert none.exit_code == 0 and "no models built yet" in none.output


def test_models_lists_what_distill_built(archive):
    run_distill(archive, DistillOptions(sample=30))
    runner = CliRunner()
    listed = runner.invoke(main, ["models", "--data-dir", str(archive.data_dir)])
    lines = listed.output.splitlines()
    assert listed.exit_code == 0 and lines[0].startswith("e5-small-q4") and "engine" in lines[0]
    assert lines[1].startswith("static:s1") and "30 articles" in lines[1]
    rows = json.loads(runner.invoke(main, ["models", "--data-dir", str(archive.data_dir), "--json"]).output)
    assert [(r["model"], r.get("teacher"), r.get("sample")) for r in rows] == [
        ("e5-small-q4", None, None), ("static:s1", "e5-small-q4", 30)]


def test_too_small_an_archive_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", model="hashing:64")
    Engine(settings).ingest([str(write_jsonl(tmp_path / "a.jsonl", corpus(4)))])
    with pytest.raises(RecommenderError, match="too little text"):
        run_distill(settings, DistillOptions())
