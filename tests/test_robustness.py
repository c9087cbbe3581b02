"""Bad input and load (issue 11): no 5xx, no lost lines, writes never wait for lists."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.cli import main
from recommender.serving.engine import Engine
from recommender.serving.lists import ListUpkeep
from recommender.store.articles import parse_article
from tests.conftest import HASHING, STORY_ARTICLES, CountingEmbedder, article, write_jsonl

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
HOSTILE_LINES = [
    b'{"id": "big", "title": "b", "n": ' + b"9" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"id": "old", "title": "t", "published_at": "0001-01-01T00:00:00+01:00"}',
    b'{"id": "late", "title": "t", "published_at": "9999-12-31T23:59:59-05:00"}',
    b'{"id": "deep", "title": "t", "extra": ' + b"[" * 300 + b"]" * 300 + b"}",
    b'{"id": "a/b", "title": "t"}',
    b'{"id": " spaced ", "title": "t"}',
]


@pytest.fixture
def client(settings, stories):
    settings = settings.model_copy(update={"api_keys": KEY, "max_concurrent_drafts": 1})
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False)) as test_client:
        yield test_client


def test_no_bad_line_aborts_an_ingest_or_costs_the_good_ones(tmp_path):
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join([b'{"id": "first", "title": "Primul"}', *HOSTILE_LINES,
                                 b'{"id": "last", "title": "Ultimul"}']) + b"\n")
    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "d"), "RECOMMENDER_MODEL": HASHING}
    result = CliRunner().invoke(main, ["ingest", str(path)], env=env)
    assert result.exit_code == 3 and "added 2" in result.stdout and "Traceback" not in result.output
    assert result.stderr.count("rejected ") == len(HOSTILE_LINES)
    assert "4300 digits" in result.stderr and "nested too deep" in result.stderr and "'a/b' contains '/'" in result.stderr


@pytest.mark.parametrize("params", [{"k": "NaN"}, {"k": "Infinity"}, {"diversity": "NaN"}, {"diversity": "-Infinity"},
                                    {"max_age_days": "NaN"}, {"max_age_days": "Infinity"}])
def test_non_finite_numbers_get_a_422(client, params):
    response = client.get("/v1/articles/ukr-2/related", params=params)
    assert response.status_code == 422 and isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("body", [
    b'{"title": "t", "k": NaN}', b'{"title": "t", "diversity": Infinity}',
    b'{"title": "t", "filters": {"max_age_days": NaN}}', b'{"title": "t", "published_at": "0001-01-01T00:00:00+01:00"}',
    b'{"title": "t", "published_at": "9999-12-31T23:59:59-05:00"}',
])
def test_hostile_drafts_get_a_422(client, body):
    response = client.post("/v1/related", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("line", HOSTILE_LINES[2:5])
def test_hostile_articles_get_a_422_on_put(client, line):
    payload = json.loads(line)
    payload.pop("id")
    response = client.put("/v1/articles/hostile", json=payload, headers=AUTH)
    assert response.status_code == 422 and client.get("/v1/articles/hostile").status_code == 404


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_bulk_rejects_hostile_items_one_by_one_and_stores_the_rest(client, content_type):
    good = [json.dumps(article(f"g{i}", f"Articol bun {i}")).encode() for i in range(2)]
    items = [good[0], *HOSTILE_LINES, good[1]]
    body = b"[" + b",".join(items) + b"]" if content_type == "application/json" else b"\n".join(items)
    response = client.post("/v1/articles:bulk", content=body, headers={**AUTH, "content-type": content_type})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["added"] == 2 and result["rejected"] == len(HOSTILE_LINES)
    assert client.get("/v1/articles/g0").status_code == 200 and client.get("/v1/articles/g1").status_code == 200


def test_one_rule_for_ids_on_every_path(client, tmp_path):
    assert client.put("/v1/articles/%20spaced%20", json={"title": "t"}, headers=AUTH).status_code == 422
    assert client.get("/v1/articles/spaced").status_code == 404
    bulk = client.post("/v1/articles:bulk", json=[{"id": "a/b", "title": "t"}], headers=AUTH).json()
    assert bulk["rejected"] == 1 and "'/'" in bulk["results"][0]["error"]
    assert client.put("/v1/articles/a%2Fb", json={"title": "t"}, headers=AUTH).status_code in (404, 422)


def test_a_write_without_a_key_gets_401_before_its_body_is_read(client):
    for method, path in (("PUT", "/v1/articles/x"), ("POST", "/v1/articles:bulk"), ("DELETE", "/v1/articles/x")):
        response = client.request(method, path, content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 401, (method, path)


def test_openapi_declares_the_write_key(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["api-key"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/articles/{article_id}"]["put"]["security"] == [{"api-key": []}]
    assert "security" not in spec["paths"]["/v1/articles/{article_id}/related"]["get"]


def test_drafts_past_the_concurrency_limit_get_a_429(client):
    slots = client.app.state.heavy_slots
    assert slots.acquire(blocking=False)  # the one slot of this fixture, taken by another request
    try:
        busy = client.post("/v1/related", json={"title": "Derby"})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    finally:
        slots.release()
    assert client.post("/v1/related", json={"title": "Derby"}).status_code == 200


def test_a_deeply_nested_draft_is_cleaned_in_linear_time(client):
    deep = "<div>" * 20_000 + "Derby în Superliga, FCSB și Dinamo" + "</div>" * 20_000
    response = client.post("/v1/related", json={"title": "Derby", "body": deep})
    assert response.status_code == 200 and response.json()["items"][0]["id"] in ("fot-1", "fot-2")


def test_writes_do_not_wait_for_list_recomputation(client, settings):
    """With the list worker held, a CLI ingest is picked up and a PUT answers: neither
    waits for lists. The lists follow once the worker runs."""
    service = client.app.state.service
    release = threading.Event()
    real_step = type(service.lists)._step

    def held_step(worker):
        release.wait(30)
        return real_step(worker)

    service.lists._step = held_step.__get__(service.lists)
    cli_engine = Engine(settings.model_copy(update={"api_keys": KEY}), embedder=CountingEmbedder())
    cli_engine.upsert([parse_article(article("ukr-5", "Armistițiul din Marea Neagră, prelungit",
                                             "Ucraina și Rusia prelungesc armistițiul.", "2025-04-10T10:00:00+00:00"))])
    assert service.refresh()
    put = client.put("/v1/articles/ukr-6", json=article("ukr-6", "Porturile ucrainene exportă din nou cereale"),
                     headers=AUTH)
    assert put.status_code == 200
    assert client.get("/readyz").json()["lists_pending"] > 0  # the lists wait; the writes did not
    assert "ukr-5" not in [i["id"] for i in client.get("/v1/articles/ukr-3/related").json()["items"]]
    release.set()
    assert service.lists.wait_idle(10)
    assert "ukr-5" in [i["id"] for i in client.get("/v1/articles/ukr-3/related", params={"k": 10}).json()["items"]]


def test_lists_touched_by_an_interrupted_ingest_are_refreshed_by_the_next_run(settings, stories, tmp_path,
                                                                              monkeypatch):
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    follow_up = write_jsonl(tmp_path / "more.jsonl", [article(
        "ukr-4", "Armistițiul din Marea Neagră, semnat", "Ucraina și Rusia semnează armistițiul pe mare; porturile exportă cereale.",
        "2025-04-05T10:00:00+00:00")])

    def killed(self, *args, **kwargs):  # kill -9 after the index was saved, before any list was recomputed
        raise KeyboardInterrupt

    monkeypatch.setattr(ListUpkeep, "refresh", killed)
    with pytest.raises(KeyboardInterrupt):
        Engine(settings, embedder=CountingEmbedder()).ingest([str(follow_up)])
    monkeypatch.undo()
    rerun = Engine(settings, embedder=CountingEmbedder())
    assert rerun.ingest([str(follow_up)]).unchanged == 1
    state = rerun.state()
    cached = rerun.lists_for(state).get(state.by_id["ukr-3"])
    assert state.by_id["ukr-4"] in [item.num for item in cached.items]


def test_a_server_start_refreshes_lists_an_interrupted_ingest_left_behind(settings, stories, tmp_path, monkeypatch):
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    monkeypatch.setattr(ListUpkeep, "refresh", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        Engine(settings, embedder=CountingEmbedder()).ingest([str(write_jsonl(tmp_path / "m.jsonl", [article(
            "ukr-4", "Armistițiul din Marea Neagră, semnat", "Ucraina și Rusia semnează armistițiul; porturile exportă cereale.",
            "2025-04-05T10:00:00+00:00")]))])
    monkeypatch.undo()
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False)) as restarted:
        assert restarted.app.state.service.lists.wait_idle(10)
        listed = [i["id"] for i in restarted.get("/v1/articles/ukr-3/related", params={"k": 10}).json()["items"]]
    assert "ukr-4" in listed


def test_sigterm_stops_the_server_within_a_few_seconds_while_lists_are_recomputed(settings, tmp_path):
    from tests.test_server import free_port

    many = [article(f"n{i}", f"Știre {i} despre armistițiu și porturi", "Ucraina Rusia armistițiu porturi cereale " * 20,
                    f"2025-03-{1 + i % 28:02d}T10:00:00+00:00") for i in range(600)]
    Engine(settings, embedder=CountingEmbedder()).ingest([str(write_jsonl(tmp_path / "a.jsonl", STORY_ARTICLES))])
    port = free_port()
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(settings.data_dir), RECOMMENDER_MODEL=settings.model,
               RECOMMENDER_REFRESH_SECONDS="0.1")
    server = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        from tests.test_server import wait_until_ready

        wait_until_ready(f"http://127.0.0.1:{port}", server)
        Engine(settings, embedder=CountingEmbedder()).upsert([parse_article(a) for a in many])  # lists to recompute
        deadline = time.monotonic() + 10
        while httpx.get(f"http://127.0.0.1:{port}/readyz").json().get("lists_pending", 0) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        assert time.monotonic() - started < 6
    finally:
        if server.poll() is None:
            server.kill()


def test_a_server_whose_index_is_still_loading_serves_from_the_store(settings, stories, monkeypatch):
    """A large index loads for minutes: meanwhile /readyz says "warming", precomputed lists
    and article reads come from the store, writes are stored; once loaded, the index has them."""
    from recommender.index.state import Indexes

    settings = settings.model_copy(update={"api_keys": KEY, "warm_after_seconds": 0})
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    expected = [i.id for i in Engine(settings, embedder=CountingEmbedder()).related("ukr-2")]
    loaded = threading.Event()
    real_open = Indexes.open_active

    def slow_open(indexes):
        loaded.wait(30)
        return real_open(indexes)

    monkeypatch.setattr(Indexes, "open_active", slow_open)
    with TestClient(create_app(settings, embedder=CountingEmbedder())) as client:
        ready = client.get("/readyz")
        deadline = time.monotonic() + 5  # the start thread opens the store first: "loading" until then
        while ready.status_code == 503 and ready.json().get("status") == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
            ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "warming"
        assert [i["id"] for i in client.get("/v1/articles/ukr-2/related").json()["items"]] == expected
        assert client.get("/v1/articles/nope/related").status_code == 404
        assert client.get("/v1/articles/ukr-2/related", params={"diversity": 0.5}).status_code == 503  # needs the index
        assert client.get("/v1/articles/ukr-2").status_code == 200
        put = client.put("/v1/articles/ukr-5", json=article("ukr-5", "Armistițiul din Marea Neagră, prelungit",
                                                             "Ucraina și Rusia prelungesc armistițiul pe mare."),
                         headers=AUTH)
        assert put.status_code == 200
        loaded.set()
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.get("/readyz").json()["articles"] == len(STORY_ARTICLES) + 1
        assert client.app.state.service.lists.wait_idle(10)
        items = client.get("/v1/articles/ukr-1/related", params={"k": 10}).json()["items"]
        assert "ukr-5" in [i["id"] for i in items]


def test_a_follow_up_reaches_its_story_even_when_the_nearest_neighbour_search_misses(settings, stories, monkeypatch):
    """An approximate index can miss a story's earlier piece among the follow-up's nearest
    neighbours; the follow-up's own list, from every candidate source, still finds it."""
    from recommender.index.vector_index import VectorIndex

    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    real_search = VectorIndex.search

    def missing_neighbours(index, vectors, k):
        scores, nums = real_search(index, vectors, k)
        if k == settings.precompute_k + 1:  # the neighbour search of a write finds nothing
            nums[:] = -1
        return scores, nums

    monkeypatch.setattr(VectorIndex, "search", missing_neighbours)
    engine.upsert([parse_article(article("ukr-5", "Armistițiul din Marea Neagră, prelungit de Kiev",
                                         "Ucraina propune prelungirea armistițiului pe mare pentru porturile ucrainene.",
                                         "2025-04-10T10:00:00+00:00"))])
    engine.sync(engine.state())
    assert "ukr-5" in [i.id for i in Engine(settings, embedder=CountingEmbedder()).related("ukr-1", k=10)]
