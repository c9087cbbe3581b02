"""Learning the ranking profile from the archive's links, and serving profiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.cli import main
from recommender.errors import NoLabels, RecommenderError
from recommender.ranking import tune
from recommender.ranking.features import FEATURES
from recommender.ranking.profiles import DEFAULT, Profiles, read_profile
from recommender.settings import DEFAULT_WEIGHTS
from tests.conftest import HASHING, CountingEmbedder, article, write_jsonl

WORDS = ("guvern buget deficit ministru proiect lege vot senat camera partid sondaj alegeri primar consiliu "
         "investitie fabrica export import piata bursa actiuni dobanda credit banca inflatie salariu pensie").split()


def linked_archive(n_stories: int = 30) -> list[dict]:
    """Stories of four pieces over four days, each in a section of its own, their words
    hardly different from the noise around them (one word of the story's own); every
    later piece links the earlier ones, as an editor would. Section and time are the
    signal, the text barely."""
    rng = np.random.default_rng(0)
    records = []
    for s in range(n_stories):
        for p in range(4):
            day = 1 + 2 * s + p
            records.append(article(
                f"st{s}-{p}", " ".join(rng.choice(WORDS, 4)).capitalize(), " ".join([f"subiect{s}", *rng.choice(WORDS, 30)]),
                f"2025-{1 + day // 28:02d}-{1 + day % 28:02d}T10:00:00+00:00", section=f"dosar-{s}",
                related=[f"st{s}-{q}" for q in range(p)]))
    for i in range(3 * n_stories):
        day = i * 2 // 3
        records.append(article(f"noise-{i}", " ".join(rng.choice(WORDS, 4)).capitalize(), " ".join(rng.choice(WORDS, 30)),
                               f"2025-{1 + day // 28:02d}-{1 + day % 28:02d}T12:00:00+00:00", section="diverse"))
    return records


@pytest.fixture
def linked(engine, tmp_path):
    engine.ingest([str(write_jsonl(tmp_path / "linked.jsonl", linked_archive()))])
    return engine


def learned(engine, until=None):
    state = engine.state()
    labels = tune.labels_from_field(engine.store, list(state.by_id))
    return tune.learn(state, engine.store, labels, engine.ranking(k=10), engine.embed, until)


def test_tune_learns_what_the_links_say_and_measures_it_on_newer_articles(linked):
    result = learned(linked)
    assert result.links == 90 and result.held_out == 18 and result.learned_on == 72
    assert set(result.weights) == set(FEATURES) and set(DEFAULT_WEIGHTS) <= set(FEATURES)
    # What these editors follow (the story's section, its days, its one word): the fit
    # finds it, and it pays on the held-out, newer articles.
    assert result.weights["same_section"] > 0 and result.weights["log_days"] < 0 and result.weights["lexical_z"] > 0
    assert result.after.hit >= result.before.hit and result.after.mrr > result.before.mrr
    assert result.after.mrr > 0.95


def test_tune_until_learns_only_from_older_links(linked):
    from datetime import datetime, timezone

    result = learned(linked, until=datetime(2025, 2, 1, tzinfo=timezone.utc))
    assert result.links < 90 and result.report["until"] == "2025-02-01"
    with pytest.raises(NoLabels, match="at least 10"):
        learned(linked, until=datetime(2025, 1, 5, tzinfo=timezone.utc))


def test_links_from_bodies_and_a_cms_csv(engine, tmp_path):
    records = [article("a-1", "Primul", "Text."), article("a-2", "Al doilea", "Text.", url="https://www.ziar.ro/x/a-2/"),
               article("a-3", "Al treilea", 'Vezi <a href="https://ziar.ro/x/a-2?utm=1">aici</a> și '
                                             '<a href="https://www.exemplu.ro/externe/a-1">acolo</a>, '
                                             '<a href="https://alt-site.ro/z">nu</a>.')]
    engine.ingest([str(write_jsonl(tmp_path / "a.jsonl", records))])
    urls = tune.url_index(engine.store)
    assert tune.labels_from_links(engine.store, urls, ["a-1", "a-2", "a-3"]) == {"a-3": {"a-1", "a-2"}}
    csv = tmp_path / "links.csv"
    csv.write_text("from,to\na-2,a-1\nhttps://www.exemplu.ro/externe/a-3,a-2\nnope,a-1\n", encoding="utf-8")
    known = lambda value: engine.store.num_of(value) is not None  # noqa: E731
    assert tune.labels_from_csv(csv, urls, known) == {"a-2": {"a-1"}, "a-3": {"a-2"}}
    csv.write_text("source,target\na-2,a-1\n", encoding="utf-8")
    with pytest.raises(RecommenderError, match="'from' and 'to'"):
        tune.labels_from_csv(csv, urls, known)


def test_profiles_are_versioned_activated_and_rolled_back(tmp_path):
    profiles = Profiles(tmp_path / "profiles")
    assert profiles.names() == [DEFAULT] and profiles.active().weights == DEFAULT_WEIGHTS
    p1 = profiles.save({"dense_z": 1.0}, "test", {"links": 3})
    p2 = profiles.save({"dense_z": 2.0, "bias": -1.0}, "test", {})
    assert (p1.name, p2.name) == ("p1", "p2") and profiles.active_name() == DEFAULT  # saving activates nothing
    profiles.activate("p1")
    profiles.activate("p2")
    assert profiles.active().weights == {"dense_z": 2.0, "bias": -1.0}
    assert profiles.rollback().name == "p1" and profiles.rollback().name == DEFAULT
    with pytest.raises(RecommenderError, match="no earlier profile"):
        profiles.rollback()
    with pytest.raises(RecommenderError, match="no ranking profile 'p9'"):
        profiles.activate("p9")
    assert json.loads((tmp_path / "profiles" / "p1.json").read_text())["weights"] == {"dense_z": 1.0}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "weights": {"shoe_size": 1.0}}))
    with pytest.raises(RecommenderError, match="unknown feature.*shoe_size"):
        read_profile(bad)


def test_tune_cli_saves_a_profile_that_related_uses_once_activated(tmp_path):
    runner = CliRunner()
    # The stories' text is noise by design, so no minimum text relevance.
    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING,
           "RECOMMENDER_RANKING__MIN_SCORE": "0"}
    path = write_jsonl(tmp_path / "linked.jsonl", linked_archive(85))  # 255 linked, 51 of them held out
    out = runner.invoke(main, ["tune", str(path)], env=env)
    assert out.exit_code == 0, out.output
    assert "learned from 255 linked articles" in out.output and "saved profile p1" in out.output
    assert "recommender profile activate p1" in out.output
    before = json.loads(runner.invoke(main, ["related", "st5-3", "--json", "--k", "3"], env=env).output)
    assert runner.invoke(main, ["profile", "activate", "p1"], env=env).exit_code == 0
    listed = runner.invoke(main, ["profile", "list"], env=env).output
    assert "* p1" in listed and "held-out hit@10" in listed
    after = json.loads(runner.invoke(main, ["related", "st5-3", "--json", "--k", "3"], env=env).output)
    assert {i["id"] for i in after} == {"st5-2", "st5-1", "st5-0"} and after != before
    assert runner.invoke(main, ["profile", "rollback"], env=env).output.strip() == "default is active"
    refused = runner.invoke(main, ["profile", "activate", "nope"], env=env)
    assert refused.exit_code == 1 and "no ranking profile 'nope'" in refused.output
    few = runner.invoke(main, ["tune", "--until", "2025-01-03"], env=env)
    assert few.exit_code == 1 and "at least 10 are needed" in few.output and "Traceback" not in few.output


def test_tune_does_not_recommend_a_profile_measured_on_few_articles_and_counts_dropped_links(tmp_path):
    """14 linked articles measured a gain on 3 (hit@10 1.000 -> 1.000) and recommended the profile."""
    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING}
    records = linked_archive(10)
    records[3]["related"] = records[3]["related"] + ["gone-1", "gone-2"]
    out = CliRunner().invoke(main, ["tune", str(write_jsonl(tmp_path / "l.jsonl", records)), "--activate"], env=env)
    assert out.exit_code == 0, out.output
    assert "measured on 6 held-out linked articles, fewer than 50" in out.output and "not activated" in out.output
    assert "dropped 2 link(s) to ids not in the archive" in out.output
    assert "recommender profile activate" not in out.output
    assert "* default" in CliRunner().invoke(main, ["profile", "list"], env=env).output


def test_a_server_switches_profile_after_computing_its_lists_in_the_background(settings, tmp_path):
    from recommender.serving.engine import Engine

    ranking = settings.ranking.model_copy(update={"min_score": 0.0, "lexical_weight": 0.3})  # text is noise here
    settings = settings.model_copy(update={"ranking": ranking})
    from recommender.serving.lists import lists_key

    Engine(settings, embedder=CountingEmbedder()).ingest([str(write_jsonl(tmp_path / "l.jsonl", linked_archive()))])
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False)) as client:
        service = client.app.state.service
        assert service.lists.wait_idle(30)
        assert client.get("/readyz").json()["ranking_profile"] == DEFAULT
        old = client.get("/v1/articles/st5-3/related").json()["items"]
        profile = Profiles(settings.profiles_dir).save({"same_section": 10.0, "log_days": -1.0}, "test", {})
        Profiles(settings.profiles_dir).activate(profile.name)
        service.lists.stop()  # hold the worker, to see what serves while the new lists are pending
        service.refresh()
        assert service.lists.preparing == "p1" and service.snapshot.engine.profile.name == DEFAULT
        assert client.get("/v1/articles/st5-3/related").json()["items"] == old  # the old lists serve meanwhile
        assert client.get("/readyz").json()["ranking_profile_pending"] == "p1"
        service.lists._stop.clear()
        service.lists.start(fill_missing=False)
        assert service.lists.wait_idle(60)
        assert service.snapshot.engine.profile.name == "p1" and service.lists.preparing is None
        new = [i["id"] for i in client.get("/v1/articles/st5-3/related").json()["items"]]
        assert set(new[:3]) == {"st5-2", "st5-1", "st5-0"} and new != [i["id"] for i in old]
        stored = {num for num, _, _ in service.snapshot.engine.store.list_rows(lists_key("v1", "p1"))}
        assert len(stored) == len(service.snapshot.state.infos)  # every list, computed before the switch


def test_tune_indexes_a_store_an_interrupted_first_ingest_left_without_an_index(settings):
    from recommender.serving.engine import Engine
    from recommender.store.articles import Article

    engine = Engine(settings, embedder=CountingEmbedder())
    engine.upsert([Article.model_validate(record) for record in linked_archive()])  # stored, never indexed
    assert engine.indexes.active_meta() is None
    env = {"RECOMMENDER_DATA_DIR": str(settings.data_dir), "RECOMMENDER_MODEL": HASHING}
    out = CliRunner().invoke(main, ["tune"], env=env)
    assert out.exit_code == 0, out.output
    assert "learned from 90 linked articles" in out.output and engine.indexes.active_meta() is not None


def test_activating_a_profile_again_recomputes_the_lists_changed_since_it_last_served(tmp_path):
    """Lists left under p1 by an earlier activation must receive the writes made since:
    they used to be called current at once, showing a deleted article and missing a
    follow-up, through restarts."""
    from recommender.serving.lists import lists_key
    from recommender.store.sqlite import SQLiteStore

    runner = CliRunner()
    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING,
           "RECOMMENDER_RANKING__MIN_SCORE": "0"}

    def cli(*args: str) -> str:
        out = runner.invoke(main, list(args), env=env)
        assert out.exit_code == 0, out.output
        return out.output

    cli("ingest", str(write_jsonl(tmp_path / "linked.jsonl", linked_archive())))
    cli("tune")
    cli("profile", "activate", "p1")
    cli("profile", "rollback")
    store = SQLiteStore(tmp_path / "data" / "store.sqlite")
    gone = store.num_of("st5-0")
    last = next(record for record in linked_archive() if record["id"] == "st5-3")
    follow_up = article("st5-4", "Un nou episod", last["body"] + " vot senat", "2025-01-16T10:00:00+00:00",
                        section="dosar-5")
    cli("ingest", str(write_jsonl(tmp_path / "more.jsonl", [follow_up])))
    cli("delete", "st5-0")
    cli("profile", "activate", "p1")
    shown = {num: {item[0] for item in json.loads(items)} for num, items, _ in store.list_rows(lists_key("v1", "p1"))}
    assert not [num for num, items in shown.items() if gone in items]
    new = store.num_of("st5-4")
    assert new in shown and any(new in items for items in shown.values())
    assert new in shown[store.num_of("st5-3")]  # the story's last piece now points to its follow-up


def test_lists_an_activation_left_without_a_record_are_all_recomputed(settings, tmp_path):
    from recommender.serving.engine import Engine

    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(write_jsonl(tmp_path / "l.jsonl", linked_archive(5)))])
    p1 = Profiles(settings.profiles_dir).save({"same_section": 10.0}, "test", {})
    under_p1 = Engine(settings, embedder=CountingEmbedder(), profile=p1)
    state = under_p1.state()
    lists = under_p1.lists_for(state)
    under_p1.upkeep.compute(state, lists, sorted(state.infos)[:7])  # an activation killed before it recorded
    assert len(lists) == 7 and under_p1.upkeep.to_prepare(state, lists) == sorted(state.infos)
    under_p1.upkeep.compute(state, lists, under_p1.upkeep.to_prepare(state, lists))
    under_p1.upkeep.record(state, lists)
    assert under_p1.upkeep.to_prepare(state, lists) == []  # recorded: current, nothing to redo
