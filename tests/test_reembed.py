import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from recommender.cli import main
from recommender.errors import JobFailed, JobLocked
from recommender.index.versions import Versions
from recommender.serving.engine import Engine
from recommender.serving.reembed import ReembedOptions, run_reembed
from recommender.settings import Settings
from recommender.store.vector_cache import length_sorted_batches
from tests.conftest import HAS_ST, CountingEmbedder, article, write_jsonl

quiet = lambda message: None  # noqa: E731


def vectors_of(settings, model):
    conn = sqlite3.connect(settings.store_path)
    rows = conn.execute("SELECT content_hash, vector FROM vectors WHERE model = ? ORDER BY content_hash", (model,))
    return {h: np.frombuffer(v, dtype=np.float32) for h, v in rows}


def archive(tmp_path, n: int, name="archive"):
    records = [article(f"a{i}", f"Articolul {i} despre subiectul {i % 17}", f"Textul {i}, cu cuvântul {i % 5} și {i % 11}.",
                       section=f"s{i % 4}") for i in range(n)]
    return write_jsonl(tmp_path / f"{name}.jsonl", records)


@pytest.fixture
def loaded(settings, stories):
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    return settings


def test_a_job_adds_no_work_to_the_change_log_the_serving_lists_follow(loaded):
    """Each vector stored used to log its articles as changed, under a model no serving
    index reads: a running server recomputed every list, then the job did again."""
    store = Engine(loaded, embedder=CountingEmbedder()).store
    before = store.last_change()
    result = run_reembed(loaded, ReembedOptions("hashing:64", batch_size=3, activate=False), echo=quiet)
    assert result.embedded == 7 and store.last_change() == before


def test_new_version_is_built_validated_and_activated(loaded):
    result = run_reembed(loaded, ReembedOptions("hashing:64", batch_size=3), echo=quiet)
    assert (result.version, result.embedded, result.reused, result.complete, result.activated) == ("v2", 7, 0, True, True)
    assert result.checks[0] == "7 articles, all with vectors"
    versions = Versions(loaded.index_dir)
    assert versions.active() == "v2"
    engine = Engine(loaded.model_copy(update={"model": None}))
    assert engine.model == "hashing:64" and engine.state().meta.dimension == 64
    assert [i.id for i in engine.related("ukr-2")]


def test_unchanged_text_is_never_embedded_twice(loaded, settings):
    run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
    again = run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
    assert (again.embedded, again.reused, again.version) == (0, 7, "v3")


def test_no_activate_then_activate_and_roll_back_from_the_cli(loaded):
    run_reembed(loaded, ReembedOptions("hashing:64", activate=False), echo=quiet)
    runner = CliRunner()
    env = {"RECOMMENDER_DATA_DIR": str(loaded.data_dir)}
    listed = json.loads(runner.invoke(main, ["index", "list", "--json"], env=env).stdout)
    assert [(v["version"], v["model"], v["dimension"], v["count"], v["active"]) for v in listed] == [
        ("v1", "hashing:256", 256, 7, True), ("v2", "hashing:64", 64, 7, False)]
    assert all(v["created"] for v in listed)
    assert runner.invoke(main, ["index", "activate", "v2"], env=env).exit_code == 0
    assert Versions(loaded.index_dir).active() == "v2"
    assert runner.invoke(main, ["index", "activate", "v1"], env=env).exit_code == 0
    assert Versions(loaded.index_dir).active() == "v1"
    bad = runner.invoke(main, ["index", "activate", "v9"], env=env)
    assert bad.exit_code == 1 and "no index version 'v9'" in bad.output


def test_prune_never_removes_the_active_version(loaded):
    run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
    run_reembed(loaded, ReembedOptions("hashing:32", activate=False), echo=quiet)
    env = {"RECOMMENDER_DATA_DIR": str(loaded.data_dir)}
    result = CliRunner().invoke(main, ["index", "prune", "--keep", "1"], env=env)
    assert result.exit_code == 0 and "removed v1" in result.output
    assert Versions(loaded.index_dir).names() == ["v2", "v3"]
    CliRunner().invoke(main, ["index", "prune"], env=env)
    assert Versions(loaded.index_dir).names() == ["v2"] and Versions(loaded.index_dir).active() == "v2"


def test_serving_the_old_model_after_a_switch_is_refused(loaded):
    run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
    from recommender.errors import IndexMismatch

    with pytest.raises(IndexMismatch, match="'hashing:64', not 'hashing:256'"):
        Engine(loaded).related("ukr-1")


def test_batches_are_sorted_by_length_within_a_window():
    items = [(str(i), "x" * length) for i, length in enumerate([5, 1, 9, 3, 7, 2])]
    batches = length_sorted_batches(items, batch_size=2)
    assert [[len(t) for _, t in b] for b in batches] == [[1, 2], [3, 5], [7, 9]]
    assert sorted(h for b in batches for h, _ in b) == sorted(h for h, _ in items)


def test_limit_is_a_trial_run_that_activates_nothing(loaded):
    result = run_reembed(loaded, ReembedOptions("hashing:64", limit=3), echo=quiet)
    assert (result.embedded, result.complete, result.activated) == (3, False, False)
    assert Versions(loaded.index_dir).active() == "v1"
    finished = run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
    assert (finished.version, finished.embedded, finished.reused, finished.activated) == ("v2", 4, 3, True)


def test_bad_models_fail_before_any_work(loaded):
    runner = CliRunner()
    env = {"RECOMMENDER_DATA_DIR": str(loaded.data_dir), "HF_HUB_OFFLINE": "1"}
    unknown = runner.invoke(main, ["reembed", "--model", "gpt-9"], env=env)
    assert unknown.exit_code == 1 and "unknown model 'gpt-9'" in unknown.output
    hub = runner.invoke(main, ["reembed", "--model", "st:someone/not-downloaded"], env=env)
    advice = "st:/path/to/model" if HAS_ST else "pip install torch==2.13.0 'recommender[st]'"
    assert hub.exit_code == 1 and advice in hub.output
    assert Versions(loaded.index_dir).names() == ["v1"] and not (loaded.index_dir / "v2").exists()
    assert vectors_of(loaded, "st:someone/not-downloaded") == {}


def test_a_second_job_on_the_same_data_dir_is_refused(loaded):
    with Versions(loaded.index_dir).lock("reembed", "re-embedding job"):
        with pytest.raises(JobLocked, match="another re-embedding job is running"):
            run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
        result = CliRunner().invoke(main, ["reembed", "--model", "hashing:64"],
                                    env={"RECOMMENDER_DATA_DIR": str(loaded.data_dir)})
        assert result.exit_code == 1 and result.output.startswith("error: another re-embedding job is running")
    assert run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet).activated


def test_disk_full_while_checkpointing_keeps_the_old_version_and_the_job_resumable(loaded, monkeypatch):
    from recommender.store.sqlite import SQLiteStore

    original = SQLiteStore.conn.fget

    def small_disk(store):
        conn = original(store)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "disk full"
        return conn

    monkeypatch.setattr(SQLiteStore, "conn", property(small_disk))
    with pytest.raises(JobFailed, match=r"could not write.*full.*v1 keeps serving") as failure:
        run_reembed(loaded, ReembedOptions("hashing:1024", batch_size=1), echo=quiet)
    assert "rerun" in failure.value.hint
    monkeypatch.setattr(SQLiteStore, "conn", property(original))
    assert Versions(loaded.index_dir).active() == "v1"
    assert [i.id for i in Engine(loaded).related("ukr-2")]
    resumed = run_reembed(loaded, ReembedOptions("hashing:1024"), echo=quiet)
    assert resumed.activated and resumed.version == "v2"


def test_read_only_store_fails_cleanly_and_resumes_later(loaded, monkeypatch):
    from recommender.store.sqlite import SQLiteStore

    original = SQLiteStore.conn.fget

    def read_only(store):
        conn = original(store)
        conn.execute("PRAGMA query_only = ON")  # what a store file without write permission gives
        return conn

    monkeypatch.setattr(SQLiteStore, "conn", property(read_only))
    with pytest.raises(JobFailed, match=r"readonly.*v1 keeps serving") as failure:
        run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet)
    assert "permissions" in failure.value.hint
    monkeypatch.setattr(SQLiteStore, "conn", property(original))
    assert Versions(loaded.index_dir).active() == "v1"
    assert run_reembed(loaded, ReembedOptions("hashing:64"), echo=quiet).activated


def twin_archives(tmp_path, n: int) -> tuple[Settings, Settings]:
    """Two data dirs holding the same articles, to compare two ways of re-embedding them."""
    corpus = archive(tmp_path, n)
    pair = Settings(data_dir=tmp_path / "one", model="hashing:32"), Settings(data_dir=tmp_path / "two", model="hashing:32")
    for s in pair:
        Engine(s).ingest([str(corpus)])
    return pair


def test_process_workers_give_the_in_process_vectors(tmp_path):
    one, two = twin_archives(tmp_path, 60)
    run_reembed(one, ReembedOptions("hashing:48", batch_size=7), echo=quiet)
    run_reembed(two, ReembedOptions("hashing:48", batch_size=7, workers=2), echo=quiet)
    a, b = vectors_of(one, "hashing:48"), vectors_of(two, "hashing:48")
    assert a.keys() == b.keys() and len(a) == 60
    assert all(np.array_equal(a[h], b[h]) for h in a)


def test_tiny_sentence_transformers_model_reembeds(loaded, tiny_st_model):
    result = run_reembed(loaded, ReembedOptions(f"st:{tiny_st_model}", batch_size=4, device="cpu"), echo=quiet)
    assert result.activated and result.embedded == 7
    engine = Engine(loaded.model_copy(update={"model": None}))
    assert engine.model == f"st:{tiny_st_model}" and engine.state().meta.dimension == 16


def test_ray_path_equals_the_single_process_path(tmp_path):
    ray = pytest.importorskip("ray")
    single, spread = twin_archives(tmp_path, 40)
    run_reembed(single, ReembedOptions("hashing:96", batch_size=3), echo=quiet)
    try:
        result = run_reembed(spread, ReembedOptions("hashing:96", batch_size=3, ray_address="local"), echo=quiet)
    finally:
        ray.shutdown()
    assert result.activated and result.embedded == 40
    a, b = vectors_of(single, "hashing:96"), vectors_of(spread, "hashing:96")
    assert a.keys() == b.keys() and all(np.array_equal(a[h], b[h]) for h in a)


def test_kill_9_mid_job_then_resume_gives_the_uninterrupted_vectors(tmp_path):
    corpus = archive(tmp_path, 4000)
    killed = Settings(data_dir=tmp_path / "killed", model="hashing:16")
    clean = Settings(data_dir=tmp_path / "clean", model="hashing:16")
    for s in (killed, clean):
        Engine(s).ingest([str(corpus)], precompute=False)
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(killed.data_dir))
    command = [sys.executable, "-m", "recommender.cli", "reembed", "--model", "hashing:200", "--batch-size", "1",
               "--no-progress"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    while done < 300:
        assert time.monotonic() < deadline and proc.poll() is None, "the job ended before it could be killed"
        time.sleep(0.02)
        try:
            done = len(vectors_of(killed, "hashing:200"))
        except sqlite3.OperationalError:
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(vectors_of(killed, "hashing:200"))
    assert 300 <= partial < 4000, partial
    assert Versions(killed.index_dir).active() == "v1"
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming v2" in resumed.stderr and f"reused {partial}" in resumed.stdout
    run_reembed(clean, ReembedOptions("hashing:200", batch_size=1), echo=quiet)
    a, b = vectors_of(killed, "hashing:200"), vectors_of(clean, "hashing:200")
    assert a.keys() == b.keys() and len(a) == 4000
    assert all(np.array_equal(a[h], b[h]) for h in a)
    assert Versions(killed.index_dir).active() == "v2"
