"""Editors' controls: pins and blocks per article, articles never recommended, rules files."""

import json

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.cli import main
from recommender.errors import InvalidQuery
from recommender.ranking.editorial import Curation, InvalidRules, load_rules
from recommender.serving.engine import Engine
from recommender.serving.reembed import ReembedOptions, run_reembed
from tests.conftest import HASHING, STORY_ARTICLES, CountingEmbedder, article, write_jsonl

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
RULES = """
never_sections = ["Lifestyle"]
[[never_together]]
under = ["externe"]
never = ["sport"]
"""


@pytest.fixture
def api_settings(settings):
    return settings.model_copy(update={"api_keys": KEY})


def serve(settings):
    return TestClient(create_app(settings, embedder=CountingEmbedder(), background=False))


@pytest.fixture
def client(api_settings, stories):
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(stories)])
    with serve(api_settings) as test_client:
        yield test_client


def ids(response):
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()["items"]]


def curate(client, article_id, **body):
    return client.put(f"/v1/articles/{article_id}/curation", json=body, headers=AUTH)


def test_pins_come_first_in_order_and_blocks_never_appear(client):
    ranked = ids(client.get("/v1/articles/ukr-2/related"))
    assert ranked[:2] == ["ukr-1", "ukr-3"] and "fot-1" not in ranked
    assert curate(client, "ukr-2", pin=["fot-1", "vac-1"], block=["ukr-1"]).status_code == 200
    items = client.get("/v1/articles/ukr-2/related").json()["items"]
    assert [i["id"] for i in items][:3] == ["fot-1", "vac-1", "ukr-3"]
    assert [i["pinned"] for i in items][:3] == [True, True, False]
    assert "ukr-1" not in [i["id"] for i in items]
    assert ids(client.get("/v1/articles/ukr-2/related", params={"k": 1})) == ["fot-1"]
    html = client.get("/v1/articles/ukr-2/related.html").text
    assert html.index("/fot-1") < html.index("/vac-1") < html.index("/ukr-3") and "/ukr-1?" not in html
    assert client.get("/v1/articles/ukr-2/curation", headers=AUTH).json() == {
        "article_id": "ukr-2", "pin": ["fot-1", "vac-1"], "block": ["ukr-1"]}
    assert client.delete("/v1/articles/ukr-2/curation", headers=AUTH).status_code == 200
    assert ids(client.get("/v1/articles/ukr-2/related")) == ranked


def test_a_pin_must_pass_the_requests_filters_and_exist(client):
    curate(client, "ukr-2", pin=["not-yet", "fot-1", "ukr-old"])
    assert ids(client.get("/v1/articles/ukr-2/related"))[:2] == ["fot-1", "ukr-old"]
    assert "fot-1" not in ids(client.get("/v1/articles/ukr-2/related", params={"exclude_section": "sport"}))
    assert "ukr-old" not in ids(client.get("/v1/articles/ukr-2/related", params={"max_age_days": 60}))
    client.put("/v1/articles/not-yet", json=article("not-yet", "Sosește mai târziu"), headers=AUTH)
    assert ids(client.get("/v1/articles/ukr-2/related"))[0] == "not-yet"  # counts once it is stored


def test_curation_routes_need_the_key_and_refuse_nonsense(client):
    assert client.get("/v1/articles/ukr-2/curation").status_code == 401
    assert client.put("/v1/articles/ukr-2/curation", json={"pin": ["fot-1"]}).status_code == 401
    assert curate(client, "nope", pin=["fot-1"]).status_code == 404
    both = curate(client, "ukr-2", pin=["fot-1"], block=["fot-1"])
    assert both.status_code == 422 and "both pinned and blocked" in both.json()["detail"]
    assert "under itself" in curate(client, "ukr-2", pin=["ukr-2"]).json()["detail"]
    assert curate(client, "ukr-2", pin=["x"] * 3 + [f"p{i}" for i in range(30)]).status_code == 422
    assert curate(client, "ukr-2", colour="red").status_code == 422
    assert ids(client.get("/v1/articles/ukr-2/related"))[0] == "ukr-1"  # nothing was stored


def test_curation_survives_a_reembedding_and_a_new_server(api_settings, stories):
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(stories)])
    with serve(api_settings) as c:
        curate(c, "ukr-2", pin=["vac-1"], block=["ukr-1"])
    run_reembed(api_settings, ReembedOptions("hashing:64"), echo=lambda message: None)
    moved = api_settings.model_copy(update={"model": "hashing:64"})
    engine = Engine(moved)
    assert engine.model == "hashing:64"
    found = [i.id for i in engine.related("ukr-2")]
    assert found[0] == "vac-1" and "ukr-1" not in found


def test_an_article_never_recommended_keeps_its_own_list(client):
    advert = article("adv-1", "Armistițiul din Marea Neagră: oferte la porturile Ucrainei",
                     "Armistițiul pe mare, porturile ucrainene și cereale: o ofertă.", "2025-03-08T12:00:00+00:00",
                     recommendable=False)
    assert client.put("/v1/articles/adv-1", json=advert, headers=AUTH).status_code == 200
    assert client.app.state.service.lists.wait_idle(10)
    for seed in ("ukr-1", "ukr-2", "ukr-3", "ukr-old"):
        assert "adv-1" not in ids(client.get(f"/v1/articles/{seed}/related", params={"k": 10}))
        assert "adv-1" not in ids(client.get(f"/v1/articles/{seed}/related", params={"k": 3, "diversity": 0.3}))
    assert "ukr-2" in ids(client.get("/v1/articles/adv-1/related"))
    assert client.get("/v1/articles/adv-1").json()["meta"] == {}  # a field, not metadata
    client.put("/v1/articles/adv-1", json=dict(advert, recommendable=True), headers=AUTH)
    assert client.app.state.service.lists.wait_idle(10)
    assert "adv-1" in ids(client.get("/v1/articles/ukr-2/related", params={"k": 10}))


def test_recommendable_left_at_true_leaves_a_reingest_unchanged(engine, stories):
    engine.ingest([str(stories)])
    assert engine.ingest([str(stories)]).unchanged == len(STORY_ARTICLES)


ON_TOPIC_ELSEWHERE = [  # the armistice story, in sections the rules keep apart
    article("spt-1", "Armistițiul din Marea Neagră amână meciul de la Odesa",
            "Armistițiul pe mare: porturile ucrainene și meciul amânat.", "2025-03-08T16:00:00+00:00", section="Sport"),
    article("vac-2", "Vacanță la Marea Neagră după armistițiu",
            "Armistițiul pe mare redeschide porturile Ucrainei pentru turiști.", "2025-03-09T08:00:00+00:00",
            section="lifestyle"),
]


def test_rules_keep_sections_out_of_lists_and_pairs_apart(api_settings, tmp_path):
    # The fake vectors rate ukr-1 under ukr-2 just below the default floor (0.13); rules are tested here.
    floor = api_settings.ranking.model_copy(update={"min_score": 0.05})
    api_settings = api_settings.model_copy(update={"ranking": floor})
    archive = write_jsonl(tmp_path / "a.jsonl", STORY_ARTICLES + ON_TOPIC_ELSEWHERE)
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(archive)])
    with serve(api_settings) as c:  # without rules both are on the lists
        assert {"spt-1", "vac-2"} <= set(ids(c.get("/v1/articles/ukr-2/related", params={"k": 10})))
        assert {"spt-1", "vac-2"} <= set(ids(c.get("/v1/articles/ukr-old/related", params={"k": 10})))
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    ruled = api_settings.model_copy(update={"rules": rules})
    with serve(ruled) as c:
        for params in ({"k": 10}, {"k": 10, "diversity": 0.2}):
            under_externe = ids(c.get("/v1/articles/ukr-2/related", params=params))
            under_arhiva = ids(c.get("/v1/articles/ukr-old/related", params=params))
            assert {"spt-1", "vac-2"}.isdisjoint(under_externe) and "ukr-1" in under_externe
            assert "spt-1" in under_arhiva and "vac-2" not in under_arhiva
        curate(c, "ukr-2", pin=["vac-2", "spt-1", "ukr-old"])  # the rules hold over pins too
        assert ids(c.get("/v1/articles/ukr-2/related"))[0] == "ukr-old"
        draft = c.post("/v1/related", json={"title": "Armistițiu în Marea Neagră", "section": "externe", "k": 10})
        assert draft.status_code == 200, draft.text
        assert {"spt-1", "vac-2"}.isdisjoint(i["id"] for i in draft.json()["items"])


def test_a_bad_rules_file_is_named_with_what_is_wrong(tmp_path):
    path = tmp_path / "rules.toml"
    with pytest.raises(InvalidRules, match="no rules file"):
        load_rules(path)
    path.write_text("never_sections = [")
    with pytest.raises(InvalidRules, match="not valid TOML"):
        load_rules(path)
    path.write_text('never_section = ["x"]')
    with pytest.raises(InvalidRules, match="never_section"):
        load_rules(path)
    path.write_text("[[never_together]]\nunder = ['a']\n")
    with pytest.raises(InvalidRules, match="never"):
        load_rules(path)
    assert load_rules(None).excluded_under("externe") == ()


def test_curation_model_checks():
    assert Curation(pin=["a", "b", "a"]).pin == ["a", "b"]
    with pytest.raises(InvalidQuery):
        Curation(pin=["a"]).check_for("a")
    with pytest.raises(ValueError):
        Curation(block=["a/b"])


@pytest.fixture
def run(tmp_path, stories):
    runner = CliRunner()
    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING}

    def invoke(*args):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    assert invoke("ingest", str(stories)).exit_code == 0
    return invoke


def test_cli_curate_pins_blocks_and_clears(run):
    assert run("related", "ukr-2", "--json").exit_code == 0
    result = run("curate", "ukr-2", "--pin", "vac-1", "--block", "ukr-1", "--pin", "ghost")
    assert result.exit_code == 0 and "pinned: vac-1, ghost" in result.output
    assert "'ghost' is not in the archive" in result.output
    shown = [i["id"] for i in json.loads(run("related", "ukr-2", "--json").output)]
    assert shown[0] == "vac-1" and "ukr-1" not in shown
    assert json.loads(run("curate", "ukr-2", "--json").output)["block"] == ["ukr-1"]
    assert run("curate", "ukr-2", "--pin", "ukr-1").exit_code == 0  # a new pin lifts its block
    assert json.loads(run("curate", "ukr-2", "--json").output) == {
        "article_id": "ukr-2", "pin": ["vac-1", "ghost", "ukr-1"], "block": []}
    assert "pinned: -" in run("curate", "ukr-2", "--clear").output
    missing = run("curate", "nope", "--pin", "vac-1")
    assert missing.exit_code == 1 and "no article with id 'nope'" in missing.output
    assert run("curate", "ukr-2", "--pin", "a", "--block", "a").exit_code == 2
    assert "under itself" in run("curate", "ukr-2", "--pin", "ukr-2").output


def test_cli_rules_check(run, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    result = run("rules", "check", str(path))
    assert result.exit_code == 0 and "never shown: Lifestyle" in result.output and "under externe: never sport" in result.output
    path.write_text("never_sections = 3")
    bad = run("rules", "check", str(path))
    assert bad.exit_code == 1 and "never_sections" in bad.output and "Traceback" not in bad.output
    assert run("rules", "check").exit_code == 2  # neither a file nor RECOMMENDER_RULES
    assert run("rules", "check", "--help").output.count("recommender rules check") >= 1
