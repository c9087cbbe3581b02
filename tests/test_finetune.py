"""Fine-tuning e5 on the archive's links (`recommender finetune`), on the real model.

The archive is small and its texts short, so that a run is seconds on two cores;
the trainer, the checkpoints and the served model are the real ones.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from embeddings import load_embedder  # noqa: E402
from embeddings.e5_train import WEIGHTS_FILE, E5Trainer  # noqa: E402
from recommender.cli import main  # noqa: E402
from recommender.errors import ModelError, NoLabels  # noqa: E402
from recommender.ranking.finetune import (  # noqa: E402
    FinetuneOptions,
    batch_inputs,
    make_plan,
    run_finetune,
    similarity_kept,
)
from recommender.serving.engine import Engine  # noqa: E402
from recommender.settings import Settings  # noqa: E402
from recommender.store.base import open_store  # noqa: E402
from recommender.store.models import load_model  # noqa: E402
from tests.conftest import HASHING, article, write_jsonl  # noqa: E402

TOPICS = [("Banca centrală", "dobânda de politică monetară crește, inflația rămâne ridicată"),
          ("Bursa de la București", "acțiunile companiilor energetice urcă după rezultatele trimestriale"),
          ("Bugetul de stat", "deficitul bugetar depășește ținta, ministerul finanțelor taie cheltuieli"),
          ("Prețul gazelor", "facturile la gaze cresc iarna, furnizorii cer plafonare"),
          ("Piața imobiliară", "prețurile apartamentelor noi cresc în marile orașe"),
          ("Fonduri europene", "România absoarbe bani din PNRR pentru autostrăzi și spitale")]


def archive() -> list[dict]:
    """Stories of three pieces over three days, two sections shared by every story and
    stories overlapping in time, so that each section's week holds unlinked pieces
    (the hard negatives); every later piece links the earlier ones of its story."""
    records = []
    for s in range(12):
        title, lead = TOPICS[s % len(TOPICS)]
        for p in range(3):
            day = 1 + s + p
            records.append(article(f"s{s}-{p}", f"{title}: episodul {p + 1} al dosarului {s}",
                                   f"{lead}. Reporterii revin asupra cazului {s}.",
                                   f"2025-03-{day:02d}T10:00:00+00:00", section=("economie", "finante")[s % 2],
                                   related=[f"s{s}-{q}" for q in range(p)]))
    return records


@pytest.fixture
def store_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", model=HASHING)
    Engine(settings).ingest([str(write_jsonl(tmp_path / "a.jsonl", archive()))])
    return settings


def labels_of(settings):
    from recommender.ranking import tune

    store = open_store(settings)
    return tune.labels_from_field(store, [i.id for i in store.all_infos()])


FAST = FinetuneOptions(batch_size=4, max_tokens=32, learning_rate=1e-4, held_out=0.2)


def test_the_plan_holds_the_newest_linked_articles_out_and_masks_known_links(store_dir):
    store = open_store(store_dir)
    infos = {i.id: i for i in store.all_infos()}
    plan = make_plan(labels_of(store_dir), infos, FAST)
    assert len(plan.held_out) == round(0.2 * 24) and plan.held_out[-1] == "s11-2"
    held = set(plan.held_out)
    assert all(p.anchor not in held and p.positive not in held for p in plan.pairs)
    newest_learned = max(infos[p.anchor].published_at for p in plan.pairs)
    assert all(infos[h].published_at >= newest_learned for h in held)
    negatives = [p for p in plan.pairs if p.negative]
    assert negatives, "stories sharing a section and a week give hard negatives"
    for p in negatives:
        assert infos[p.negative].section == infos[p.anchor].section and p.negative not in plan.related[p.anchor]
        assert abs((infos[p.negative].published_at - infos[p.anchor].published_at).days) <= 7
    # s3-2 links s3-0 and s3-1: with both pairs in one batch, neither positive is the other's negative
    batch = [p for p in plan.pairs if p.anchor == "s3-2"]
    anchors, candidates, masked = batch_inputs(batch, plan.related)
    assert candidates[:2] == ["s3-0", "s3-1"] and masked[0, 1] and masked[1, 0] and not masked[0, 0]


def test_similarity_kept_is_1_for_the_same_vectors_and_near_0_for_unrelated_ones():
    vectors = np.random.default_rng(1).normal(size=(200, 16))
    assert similarity_kept(vectors, vectors) == 1.0
    assert similarity_kept(vectors, vectors + 0.1 * np.random.default_rng(2).normal(size=vectors.shape)) > 0.9
    assert abs(similarity_kept(vectors, np.random.default_rng(3).normal(size=vectors.shape))) < 0.05


def test_a_step_on_linked_pairs_lowers_their_loss():
    anchors = ["Banca centrală ridică dobânda", "Bursa urcă după rezultate", "Deficitul bugetar crește"]
    positives = ["BNR majorează dobânda de politică monetară", "Acțiunile energetice cresc la bursă",
                 "Ministerul finanțelor taie cheltuieli, deficitul depășește ținta"]
    negatives = ["Meciul de fotbal s-a încheiat la egalitate", "Vremea se răcește în weekend"]
    masked = np.zeros((3, 5), dtype=bool)
    trainer = E5Trainer("fp32", 1e-4, 10, 32)
    before = float(trainer.loss(anchors, positives + negatives, masked).detach())
    for _ in range(3):
        trainer.train_step(anchors, positives + negatives, masked)
    after = float(trainer.loss(anchors, positives + negatives, masked).detach())
    assert after < before - 0.05, (before, after)


def test_an_untrained_model_serves_as_e5_and_is_measured_before_and_after(store_dir):
    result = run_finetune(store_dir, labels_of(store_dir),
                          FinetuneOptions(batch_size=4, max_tokens=32, learning_rate=0.0, held_out=0.2))
    assert result.model == "ft:f1" and (store_dir.models_dir / "f1" / WEIGHTS_FILE).exists()
    assert not list(store_dir.models_dir.glob(".*partial"))
    m = result.meta
    assert m.steps >= 1 and m.heldout_queries >= 1 and m.heldout_pool > m.heldout_queries
    assert (m.recall_at_100_after, m.hit_at_10_after) == (m.recall_at_100_before, m.hit_at_10_before)
    assert m.similarity_kept == 1.0
    texts = [a["title"] + "\n" + a["body"] for a in archive()[:6]]
    tuned = load_model("ft:f1", models_dir=store_dir.models_dir)
    base = load_embedder("e5-small-q4", e5_engine="torch")
    assert tuned.name == "ft:f1"
    np.testing.assert_allclose(tuned.embed(texts), base.embed(texts), atol=1e-5)


def test_the_saved_model_is_the_blend_of_the_trained_weights_and_e5s(store_dir, tmp_path):
    from embeddings.e5_train import read_meta

    labels = labels_of(store_dir)
    trained = run_finetune(store_dir, labels, replace(FAST, blend=1.0))
    other = Settings(data_dir=tmp_path / "other", model=HASHING)
    Engine(other).ingest([str(write_jsonl(tmp_path / "b.jsonl", archive()))])
    half = run_finetune(other, labels_of(other), replace(FAST, blend=0.5))
    assert read_meta(half.path).blend == 0.5 and trained.meta.blend == 1.0
    base = E5Trainer("fp32", 0.0, 1, 32).trained()
    with np.load(trained.path / WEIGHTS_FILE) as a, np.load(half.path / WEIGHTS_FILE) as b:
        moved = [key for key in a.files if not np.allclose(a[key], base[key], atol=1e-6)]
        assert moved, "training changed the weights"
        for key in a.files:
            np.testing.assert_allclose(b[key], (a[key] + base[key]) / 2, atol=1e-5, err_msg=key)
    assert trained.meta.similarity_kept < half.meta.similarity_kept <= 1.0


def test_a_crashed_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(store_dir, tmp_path):
    class Crash(Exception):
        pass

    def crash_at_3(step, loss):
        if step == 3:
            raise Crash

    labels = labels_of(store_dir)
    with pytest.raises(Crash):
        run_finetune(store_dir, labels, replace(FAST, checkpoint_seconds=0), on_step=crash_at_3)
    assert (store_dir.models_dir / ".f1.partial" / "checkpoint.pt").exists()
    resumed = run_finetune(store_dir, labels, FAST)
    assert resumed.resumed_at == 2 and resumed.model == "ft:f1"  # step 3 died before its checkpoint

    other = Settings(data_dir=tmp_path / "other", model=HASHING)
    Engine(other).ingest([str(write_jsonl(tmp_path / "b.jsonl", archive()))])
    whole = run_finetune(other, labels_of(other), FAST)
    assert whole.resumed_at == 0 and whole.meta.steps == resumed.meta.steps
    with np.load(resumed.path / WEIGHTS_FILE) as a, np.load(whole.path / WEIGHTS_FILE) as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)
    assert resumed.meta.loss_first == pytest.approx(whole.meta.loss_first, abs=1e-4)


def test_too_few_links_and_a_missing_model_are_clear_errors(store_dir, tmp_path):
    with pytest.raises(NoLabels, match="at least 10"):
        run_finetune(store_dir, {"s1-1": {"s1-0"}}, FAST)
    with pytest.raises(ModelError, match="no fine-tuned model"):
        load_model("ft:f7", models_dir=store_dir.models_dir)
    (store_dir.models_dir / "f8").mkdir(parents=True)
    (store_dir.models_dir / "f8" / WEIGHTS_FILE).write_bytes(b"not numpy")
    with pytest.raises(ModelError, match="damaged"):
        load_model("ft:f8", models_dir=store_dir.models_dir)


def test_the_cli_builds_a_model_that_reembed_serves(store_dir):
    runner = CliRunner()
    data = ["--data-dir", str(store_dir.data_dir)]
    assert "Examples:" in runner.invoke(main, ["finetune", "--help"]).output
    result = runner.invoke(main, ["finetune", *data, "--batch-size", "4", "--max-tokens", "32", "--held-out",
                                  "0.2", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["model"] == "ft:f1" and meta["pairs"] > 0 and 0 <= meta["hit_at_10_after"] <= 1
    listed = runner.invoke(main, ["models", *data])
    assert "ft:f1" in listed.output and "linked articles" in listed.output
    assert runner.invoke(main, ["reembed", *data, "--model", "ft:f1"]).exit_code == 0
    assert open_store(store_dir).stats().vectors_by_model["ft:f1"] == len(archive())
    related = runner.invoke(main, ["related", *data, "s5-2", "--json"])
    assert related.exit_code == 0 and json.loads(related.stdout), related.output
    bare = runner.invoke(main, ["finetune", "--data-dir", str(store_dir.data_dir) + "-missing"])
    assert bare.exit_code != 0 and "no store" in bare.output
    beyond = runner.invoke(main, ["finetune", *data, "--blend", "1.5"])
    assert beyond.exit_code == 2 and "--blend" in beyond.output and "Traceback" not in beyond.output
