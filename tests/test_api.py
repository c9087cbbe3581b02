import dataclasses
import json
import os
import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.serving.lists import _compute_forked as COMPUTE_FORKED
from tests.conftest import STORY_ARTICLES, CountingEmbedder, article, write_jsonl

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def api_settings(settings):
    return settings.model_copy(update={"api_keys": f"other, {KEY}", "max_body_bytes": 64 * 1024})


@pytest.fixture
def client(api_settings, stories):
    from recommender.serving.engine import Engine

    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(stories)])
    app = create_app(api_settings, embedder=CountingEmbedder(), background=False)
    with TestClient(app) as test_client:
        yield test_client


def ids(response):
    return [i["id"] for i in response.json()["items"]]


def follow_ups() -> list[dict]:
    """A follow-up of each story article, for a bulk import into the served archive."""
    return [dict(a, id=f"{a['id']}-b", title=a["title"] + " (continuare)") for a in STORY_ARTICLES]


def stepped_by_hand(service):
    """The server's list worker with its thread ended: the test takes its steps one at a time."""
    worker = service.lists
    worker.stop()
    worker._stop.clear()
    return worker


def settled(client):
    """Writes return before their neighbours' lists are recomputed (in the background,
    outside the write lock); wait for that, as a page view a moment later would."""
    assert client.app.state.service.lists.wait_idle(10)
    return client


def test_related_json_shape_and_attribution(client):
    response = client.get("/v1/articles/ukr-2/related", params={"k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["article_id"] == "ukr-2" and body["model"] == "hashing:256" and body["index_version"] == "v1"
    assert [i["id"] for i in body["items"]] == ["ukr-1", "ukr-3"]  # a week before, then 25 days after
    assert set(body["items"][0]) == {"id", "title", "url", "published_at", "section", "relevance", "rank_score", "reason",
                                  "pinned", "image_url"}


def test_click_attribution_on_urls_and_its_switch(api_settings, tmp_path):
    from recommender.serving.engine import Engine

    records = [dict(a, url=f"https://ziar.ro/{a['id']}?utm=x") for a in STORY_ARTICLES]
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(write_jsonl(tmp_path / "u.jsonl", records))])
    with TestClient(create_app(api_settings, embedder=CountingEmbedder(), background=False)) as c:
        url = c.get("/v1/articles/ukr-2/related").json()["items"][0]["url"]
        assert url == "https://ziar.ro/ukr-1?utm=x&ref=related&from=ukr-2&pos=1"
    plain = api_settings.model_copy(update={"attribution": False})
    with TestClient(create_app(plain, embedder=CountingEmbedder(), background=False)) as c:
        assert c.get("/v1/articles/ukr-2/related").json()["items"][0]["url"] == "https://ziar.ro/ukr-1?utm=x"


def test_related_filters(client):
    assert ids(client.get("/v1/articles/ukr-2/related", params={"exclude_section": "externe"})) == ["ukr-old"]
    assert ids(client.get("/v1/articles/ukr-2/related", params=[("exclude", "ukr-3"), ("exclude", "ukr-old")])) == ["ukr-1"]
    assert "ukr-3" not in ids(client.get("/v1/articles/ukr-2/related", params={"past_only": "true"}))
    assert ids(client.get("/v1/articles/ukr-2/related", params={"section": "sport"})) == []
    assert client.get("/v1/articles/ukr-2/related", params={"max_age_days": 10, "diversity": 0.5}).status_code == 200


def test_related_html_block(client):
    response = client.get("/v1/articles/ukr-2/related.html")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert '<aside class="citeste-si"' in response.text and "Citește și" in response.text
    assert response.text.count('class="citeste-si__item"') == 3


def test_draft(client):
    response = client.post("/v1/related", json={"title": "Derby FCSB Dinamo", "body": "Meci în Superliga",
                                                "k": 2, "filters": {"sections": ["sport"]}})
    assert response.status_code == 200
    assert set(ids(response)) == {"fot-1", "fot-2"} and response.json()["article_id"] is None


def test_a_drafts_section_is_a_feature_of_its_ranking(client):
    """Same words, and a section: with it, the article of that section moves up."""
    draft = {"title": "Porturile din Marea Neagră", "body": "Discuții despre porturi, pe mare, și armistițiu.", "k": 10,
             "published_at": "2025-03-09T10:00:00Z", "diversity": 0}
    plain = client.post("/v1/related", json=draft).json()["items"]
    sectioned = client.post("/v1/related", json={**draft, "section": "Arhiva", "tags": ["pace"]}).json()["items"]
    score = {i["id"]: i["rank_score"] for i in plain}
    with_section = {i["id"]: i["rank_score"] for i in sectioned}
    assert with_section["ukr-old"] > score["ukr-old"]  # ukr-old is in "arhiva": case and diacritics folded
    assert with_section["ukr-1"] == score["ukr-1"]


def test_get_put_delete_article(client):
    assert client.get("/v1/articles/ukr-1").json()["title"].startswith("Kievul")
    new = {"title": "Armistițiul din Marea Neagră, semnat", "body": "Ucraina și Rusia semnează armistițiul pe mare; porturile exportă cereale.",
           "published_at": "2025-04-05T10:00:00+00:00", "section": "externe", "topic": "POL"}
    put = client.put("/v1/articles/ukr-4", json=new, headers=AUTH)
    assert put.status_code == 200 and put.json() == {"id": "ukr-4", "status": "added"}
    stored = client.get("/v1/articles/ukr-4").json()
    assert stored["meta"] == {"topic": "POL"} and stored["published_at"].startswith("2025-04-05")
    assert "ukr-4" in ids(settled(client).get("/v1/articles/ukr-3/related")), "an older piece points to its follow-up"
    assert client.put("/v1/articles/ukr-4", json=new, headers=AUTH).json()["status"] == "unchanged"
    assert client.delete("/v1/articles/ukr-4", headers=AUTH).json() == {"id": "ukr-4", "status": "deleted"}
    assert client.get("/v1/articles/ukr-4").status_code == 404
    for seed in ("ukr-1", "ukr-2", "ukr-3"):
        assert "ukr-4" not in ids(settled(client).get(f"/v1/articles/{seed}/related", params={"k": 10}))


def test_bulk_json_array_and_jsonl(client):
    payload = [article("b-1", "Bugetul pe 2026"), {"id": "b-2"}, article("b-3", "Deficitul bugetar"), "nope"]
    response = client.post("/v1/articles:bulk", json=payload, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert (body["added"], body["rejected"]) == (2, 2)
    assert [(r["index"], r["status"]) for r in body["results"]] == [(0, "added"), (1, "rejected"), (2, "added"), (3, "rejected")]
    assert "title is required" in body["results"][1]["error"]
    lines = "\n".join([json.dumps(article("b-1", "Bugetul pe 2026")), "{bad", json.dumps(article("b-4", "Altul"))])
    jsonl = client.post("/v1/articles:bulk", content=lines, headers={**AUTH, "content-type": "application/x-ndjson"})
    assert [(r["index"], r["status"]) for r in jsonl.json()["results"]] == [(0, "unchanged"), (1, "rejected"), (2, "added")]


def compute_noting_pid(chunk):
    """A forked list worker's job, noting which process ran it (pickled by name: module level)."""
    with open(os.environ["TEST_PIDS_FILE"], "a") as out:
        out.write(f"{os.getpid()}\n")
    return COMPUTE_FORKED(chunk)


def test_a_bulk_import_is_listed_by_forked_processes_as_by_one(api_settings, stories, tmp_path, monkeypatch):
    """A large backlog reaching a server is spread over processes forked from its list
    worker; what they compute is what one process computes, and the server knows it."""
    from recommender.serving import lists
    from recommender.serving.engine import Engine
    from tests.conftest import all_lists

    # Lists computed mid-import see that moment's archive statistics (random-pair mean, BM25
    # idf); the default floor (0.13) sits on these fake vectors' pair relevances, so which
    # moment a list was computed at would decide it. This test compares processes, not moments.
    floor = api_settings.ranking.model_copy(update={"min_score": 0.05})
    api_settings = api_settings.model_copy(update={"ranking": floor})
    monkeypatch.setattr(lists, "SAVE_EVERY", 2)  # 7 new articles: 4 chunks over 2 processes
    pids = tmp_path / "pids"
    monkeypatch.setenv("TEST_PIDS_FILE", str(pids))
    monkeypatch.setattr(lists, "_compute_forked", compute_noting_pid)
    more = follow_ups()
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(stories)])
    forked = api_settings.model_copy(update={"list_workers": 2})
    with TestClient(create_app(forked, embedder=CountingEmbedder(), background=False)) as c:
        assert c.post("/v1/articles:bulk", json=more, headers=AUTH).json()["added"] == 7
        assert settled(c).get("/v1/articles/ukr-1-b/related").status_code == 200
        recomputed = re.search(r"^recommender_lists_recomputed_total (\S+)$", c.get("/metrics").text, re.M)
        assert recomputed and float(recomputed.group(1)) >= 7  # the new articles' own, and those they touch
    assert os.getpid() not in {int(p) for p in pids.read_text().split()}
    alone = Engine(api_settings.model_copy(update={"data_dir": tmp_path / "alone", "database_url": ""}),
                   embedder=CountingEmbedder())
    alone.ingest([str(stories)], workers=1)
    alone.ingest([str(write_jsonl(tmp_path / "more.jsonl", more))], workers=1)
    served = Engine(forked, embedder=CountingEmbedder())
    assert all_lists(served) == all_lists(alone) and len(all_lists(served)) == 14
    assert not served.upkeep.missing(served.state(), served.lists_for(served.state()))


def test_new_articles_are_listed_before_the_older_lists_they_touch(client, monkeypatch):
    """During a bulk import, each batch's own lists come first; the older lists the
    batches touch wait, merged, and are computed once when no new article waits, and only
    then are the lists recorded to follow the changes (a crash before recomputes them)."""
    from recommender.serving.lists import ListUpkeep

    service = client.app.state.service
    worker = stepped_by_hand(service)
    computed: list[list[int]] = []
    real = ListUpkeep.compute_in_processes

    def noting(self, state, lists, nums, *args, **kwargs):
        computed.append(list(nums))
        return real(self, state, lists, nums, *args, **kwargs)

    monkeypatch.setattr(ListUpkeep, "compute_in_processes", noting)
    more = follow_ups()
    store, key = service.snapshot.engine.store, service.snapshot.lists.key
    before = store.lists_refreshed_seq(key)
    assert client.post("/v1/articles:bulk", json=more[:4], headers=AUTH).json()["added"] == 4
    assert worker._step() and worker.unlisted == 0 and worker.touched > 0
    assert client.post("/v1/articles:bulk", json=more[4:], headers=AUTH).json()["added"] == 3
    assert worker.unlisted == 3 and worker._step() and worker.unlisted == 0
    assert store.lists_refreshed_seq(key) == before  # touched lists wait: not recorded yet
    infos = service.snapshot.state.infos
    new = {n for n, info in infos.items() if info.id.endswith("-b")}
    assert [set(c) for c in computed] == [{n for n in new if infos[n].id in {a["id"] for a in more[:4]}},
                                          {n for n in new if infos[n].id in {a["id"] for a in more[4:]}}]
    while worker._touched_step():
        pass
    touched = [n for c in computed[2:] for n in c]
    assert touched and len(touched) == len(set(touched))  # each older list once, for both batches
    assert worker.touched == 0 and store.lists_refreshed_seq(key) == service.snapshot.state.meta.applied_seq
    assert client.get("/readyz").json()["lists_touched"] == 0


def test_older_lists_get_their_turn_while_new_articles_keep_coming(client, monkeypatch):
    """A CMS that never pauses must not leave the touched lists, and the record, behind for
    good: after TOUCHED_WAIT they get a batch before the next new articles' own lists."""
    service = client.app.state.service
    worker = stepped_by_hand(service)
    more = follow_ups()
    store, key = service.snapshot.engine.store, service.snapshot.lists.key
    before = store.lists_refreshed_seq(key)
    assert client.post("/v1/articles:bulk", json=more[:4], headers=AUTH).json()["added"] == 4
    assert worker._step() and worker.touched > 0
    assert client.post("/v1/articles:bulk", json=more[4:], headers=AUTH).json()["added"] == 3
    monkeypatch.setattr(worker, "TOUCHED_WAIT", 0.0)
    assert not worker._step() and worker._touched_step()  # overdue: the older lists first
    assert worker.touched == 0 and worker.unlisted == 3 and store.lists_refreshed_seq(key) == before
    monkeypatch.setattr(worker, "TOUCHED_WAIT", 120.0)
    assert worker._step() and worker.unlisted == 0


def test_forked_list_workers_end_under_a_server_s_signal_handlers(settings, stories, monkeypatch):
    """uvicorn's SIGTERM handler only sets a flag; forks inherit it. Ending a pool then
    raced its queue's lock and hung the server's list worker (seen in eval/bench_bulk.py)."""
    import multiprocessing
    import signal
    import threading

    from recommender.serving import lists
    from recommender.serving.engine import Engine

    monkeypatch.setattr(lists, "SAVE_EVERY", 2)
    engine = Engine(settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)], precompute=False)
    state = engine.state()
    nums = sorted(state.infos)

    def rounds() -> None:
        for _ in range(10):
            engine.upkeep.compute_in_processes(state, engine.lists_for(state), nums, workers=2)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    worker = threading.Thread(target=rounds, daemon=True)
    try:
        worker.start()
        worker.join(60)
        hung = worker.is_alive()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for child in multiprocessing.active_children():  # so that a failure does not hang the suite
            child.kill()
    assert not hung
    assert not engine.upkeep.missing(state, engine.lists_for(state))


SURROGATE = "\ud800"


def escaped(value: object) -> dict:
    """A JSON body with its non-ASCII escaped, as a client in another language may send a
    lone surrogate (httpx itself refuses to encode one)."""
    return {"content": json.dumps(value), "headers": {**AUTH, "content-type": "application/json"}}


@pytest.mark.parametrize("field", [{"body": f"un {SURROGATE}"}, {"section": SURROGATE}, {"tags": [SURROGATE]},
                                   {"language": SURROGATE}, {"url": f"https://x.ro/{SURROGATE}"},
                                   {"meta": {"autor": [SURROGATE]}}, {"meta": {SURROGATE: 1}}])
def test_a_lone_surrogate_is_a_422_on_put(client, field):
    response = client.put("/v1/articles/s", **escaped({"title": "Titlu", **field}))
    assert response.status_code == 422 and "lone UTF-16 surrogate" in response.json()["detail"]
    assert client.get("/v1/articles/s").status_code == 404


def test_a_lone_surrogate_costs_only_its_own_bulk_item(client):
    payload = [article("g-1", "Bugetul pe 2026"), {"id": "g-2", "title": f"Titlu {SURROGATE}"}]
    body = client.post("/v1/articles:bulk", **escaped(payload)).json()
    assert [(r["index"], r["status"]) for r in body["results"]] == [(0, "added"), (1, "rejected")]
    assert "title holds a lone UTF-16 surrogate" in body["results"][1]["error"]


def test_a_lone_surrogate_in_a_draft_or_a_page_is_a_422(client):
    draft = client.post("/v1/related", **escaped({"title": "Bugetul", "body": f"deficit {SURROGATE}"}))
    assert draft.status_code == 422 and "body holds a lone UTF-16 surrogate" in draft.json()["detail"]
    page = client.post("/v1/rewrite", **escaped({"html": f"<p>{SURROGATE}</p>"}))
    assert page.status_code == 422 and "html holds a lone UTF-16 surrogate" in page.json()["detail"]
    nested = client.post("/v1/related", **escaped({"title": "Bugetul", "filters": {"exclude_ids": [SURROGATE]}}))
    assert nested.status_code == 422


def test_writes_need_a_key_and_write_nothing_without_one(client):
    body = {"title": "Neautorizat"}
    assert client.put("/v1/articles/x", json=body).status_code == 401
    wrong = client.put("/v1/articles/x", json=body, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/articles:bulk", json=[article("x", "t")]).status_code == 401
    assert client.delete("/v1/articles/ukr-1", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/v1/articles/x").status_code == 404 and client.get("/v1/articles/ukr-1").status_code == 200


def test_no_keys_configured_means_no_writes(settings, stories):
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False)) as c:
        response = c.put("/v1/articles/x", json={"title": "t"}, headers=AUTH)
        assert response.status_code == 401 and "no API keys" in response.json()["detail"]


@pytest.mark.parametrize("hidden", ["%E2%80%8B", "%E2%80%AE", "%C2%85", "%C2%A0", "%EF%BB%BF", "%E2%80%A8",
                                    "%FF", "%FE", "e%CC%81"])
def test_ids_that_would_look_alike_are_refused_everywhere(client, hidden):
    """Zero-width, right-to-left override, NEL, no-break space, BOM, line separator,
    invalid UTF-8 (%FF and %FE both decoded to U+FFFD named one article) and a
    decomposed é: each a 422 on a route, and a rejection at ingest."""
    put = client.put(f"/v1/articles/a{hidden}b", json={"title": "Titlu"}, headers=AUTH)
    assert put.status_code == 422, put.text
    assert client.get(f"/v1/articles/a{hidden}b/related").status_code == 422
    from urllib.parse import unquote

    bulk = client.post("/v1/articles:bulk", **escaped([{"id": unquote(f"a{hidden}b"), "title": "Titlu"}])).json()
    assert bulk["results"][0]["status"] == "rejected" and "id" in bulk["results"][0]["error"]


def test_unknown_ids_are_404_with_a_message(client):
    for path in ("/v1/articles/nope", "/v1/articles/nope/related", "/v1/articles/nope/related.html", "/demo/nope"):
        response = client.get(path)
        assert response.status_code == 404 and "nope" in response.json()["detail"], path
    assert client.delete("/v1/articles/nope", headers=AUTH).status_code == 404
    assert client.post("/v1/rewrite", json={"html": "<p>x</p>", "article_id": "nope"}).status_code == 404


@pytest.mark.parametrize("request_args", [
    ("get", "/v1/articles/ukr-1/related", {"params": {"k": 0}}),
    ("get", "/v1/articles/ukr-1/related", {"params": {"k": 51}}),
    ("get", "/v1/articles/ukr-1/related", {"params": {"k": "five"}}),
    ("get", "/v1/articles/ukr-1/related", {"params": {"diversity": 2}}),
    ("get", "/v1/articles/ukr-1/related", {"params": {"max_age_days": -1}}),
    ("post", "/v1/related", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    ("post", "/v1/related", {"json": {"title": ""}}),
    ("post", "/v1/related", {"json": {"title": "t", "k": 100}}),
    ("post", "/v1/related", {"json": {"title": "t", "filters": {"unknown": 1}}}),
    ("put", "/v1/articles/x", {"json": {"body": "no title"}, "headers": AUTH}),
    ("put", "/v1/articles/x", {"json": ["not", "an", "object"], "headers": AUTH}),
    ("put", "/v1/articles/x", {"json": {"title": "t", "published_at": "yesterday"}, "headers": AUTH}),
    ("put", "/v1/articles/x", {"json": {"id": "y", "title": "t"}, "headers": AUTH}),
    ("post", "/v1/articles:bulk", {"content": b"[{", "headers": AUTH}),
    ("post", "/v1/rewrite", {"json": {"article_id": "ukr-1"}}),
])
def test_bad_input_is_422_with_field_detail(client, request_args):
    method, path, kwargs = request_args
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("given", ["31.11.2025 09:00", "yesterday-<b>4242</b>"])
def test_a_bad_date_is_422_without_the_value_echoed(client, given):
    for response in (client.put("/v1/articles/x", json={"title": "t", "published_at": given}, headers=AUTH),
                     client.post("/v1/related", json={"title": "t", "published_at": given})):
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("published_at") and given not in detail and "4242" not in detail
    assert "not a day of the calendar" in detail or "is not a date" in detail


def test_body_over_the_limit_is_413(client):
    big = {"title": "Mare", "body": "x" * (70 * 1024)}
    response = client.put("/v1/articles/big", json=big, headers=AUTH)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold on a streamed body too
        for _ in range(100):
            yield b"x" * 1024

    streamed = client.post("/v1/articles:bulk", content=chunks(), headers=AUTH)
    assert streamed.status_code == 413
    assert client.get("/v1/articles/big").status_code == 404


XSS_TITLE = '<script>alert("x")</script> "citat" & \'apostrof\' <img src=x onerror=alert(1)>'


def test_block_template_escapes_every_field_and_links_only_http():
    from datetime import datetime, timezone

    from api.render import attributed, render_block
    from recommender.ranking.rules import RelatedItem

    items = [RelatedItem("a", XSS_TITLE, "javascript:alert(1)", datetime.now(timezone.utc), '"><b>s</b>', 0.5, 0.5, "r"),
             RelatedItem("b", "Bun", 'https://ok.ro/a?x=<b>&y="q"', None, None, 0.4, 0.4, "r")]
    urls = [attributed(i.url, 'seed"<', n) for n, i in enumerate(items, 1)]
    html = render_block(items, urls, "citeste-si")
    assert urls[0] is None and "javascript:" not in html
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html and "&amp; &#39;apostrof&#39;" in html
    (href,) = re.findall(r'href="([^"]*)"', html)
    assert href == "https://ok.ro/a?x=%3Cb%3E&amp;y=%22q%22&amp;ref=related&amp;from=seed%22%3C&amp;pos=2"


def test_stored_hostile_fields_come_out_inert(client):
    seed = {"title": "Alfa beta gama", "body": "alfa beta gama delta", "published_at": "2025-03-09T10:00:00+00:00"}
    evil = {"title": XSS_TITLE + " alfa beta", "body": "alfa beta gama epsilon", "url": "javascript:alert(1)",
            "section": '"><script>s()</script>', "published_at": "2025-03-09T10:00:00+00:00"}
    odd = dict(evil, title="Altul " + XSS_TITLE, body="alfa gama delta zeta", url='https://ok.ro/a?x=<b>&y="q"')
    for aid, body in (("seed", seed), ("evil", evil), ("odd", odd)):
        assert client.put(f"/v1/articles/{aid}", json=body, headers=AUTH).status_code == 200
    assert set(ids(settled(client).get("/v1/articles/seed/related"))) == {"evil", "odd"}
    html = client.get("/v1/articles/seed/related.html").text
    assert "<script>" not in html and "<img" not in html and "javascript:" not in html
    assert html.count("&lt;script&gt;") == 4  # two titles and two sections
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert len(hrefs) == 1 and hrefs[0].startswith("https://ok.ro/a?x=%3Cb%3E")
    assert [i["url"] for i in client.get("/v1/articles/seed/related").json()["items"]].count(None) == 1


PAGE = """<html><head><title>Convorbiri</title></head><body>
<nav class="breadcrumb">Prima pagină » Știri » Externe</nav>
<h1>Kievul propune un armistițiu în Marea Neagră</h1><h2>Kievul propune un armistițiu în Marea Neagră</h2>
<p class="teaser"><a href="/altceva">Alt articol</a></p>
<p>Ucraina propune Rusiei un armistițiu pe mare, ca porturile ucrainene să poată exporta cereale.</p>
<div class="video"><h3>Recomandarea video</h3><p>Imagini</p></div>
<div class="citeste-si"><h3>Citește și</h3><ul>
<li><span>Turism Express</span><a href="https://p.example/1">Cât costă o vacanță în Grecia</a></li>
<li><span>Showbiz Azi</span><a href="https://p.example/2">Fotografiile unei vedete</a></li>
</ul></div>
<footer>Contact</footer></body></html>"""


def test_rewrite_replaces_the_noisy_block(client):
    response = client.post("/v1/rewrite", json={"html": PAGE, "article_id": "ukr-1"})
    body = response.json()
    assert response.status_code == 200 and body["replaced"] == 1
    html = body["html"]
    assert "vacanță în Grecia" not in html and "p.example" not in html
    assert 'class="citeste-si"' in html and "Negocieri la Istanbul" in html
    assert "Recomandarea video" in html and "<footer>Contact</footer>" in html and "/altceva" in html


def test_rewrite_keeps_the_sites_own_block_markup(client):
    page = PAGE.replace('<div class="citeste-si">', '<div class="rel-box" id="rel" data-x="1">').replace(
        "<li>", '<li class="rel-item">').replace("<a href", '<a class="rel-link" href')
    html = client.post("/v1/rewrite", json={"html": page, "article_id": "ukr-1"}).json()["html"]
    block = html.split('<div class="rel-box" id="rel" data-x="1"><h3>Citește și</h3><ul>')[1].split("</ul></div>")[0]
    items = re.findall(r'<li class="rel-item"><a class="rel-link" href="([^"]+)">([^<]+)</a></li>', block)
    assert [title for _, title in items][:2] == ["Negocieri la Istanbul pentru armistițiul din Marea Neagră",
                                                 "Acord pentru armistițiul din Marea Neagră"]
    assert all("from=ukr-1" in url for url, _ in items) and "Turism Express" not in html
    assert "<aside" not in html


def test_rewrite_finds_the_pages_article_by_its_canonical_url(client):
    """Without article_id the page's own article came back as suggestion 1."""
    for head in ('<link rel="canonical" href="https://www.exemplu.ro/externe/ukr-2">',
                 '<meta property="og:url" content="https://www.exemplu.ro/externe/ukr-2/">'):
        page = PAGE.replace("<title>Convorbiri</title>", head).replace(
            "Kievul propune un armistițiu în Marea Neagră", "Negocieri la Istanbul pentru armistițiul din Marea Neagră")
        html = client.post("/v1/rewrite", json={"html": page}).json()["html"]
        listed = re.findall(r'href="([^"]+)"', html.split('<div class="citeste-si">')[1])
        assert listed and all("from=ukr-2" in u for u in listed) and not any("/ukr-2?" in u for u in listed)


def test_a_site_template_renders_the_block_and_a_broken_one_falls_back(api_settings, stories, tmp_path):
    from api.render import InvalidTemplate
    from recommender.serving.engine import Engine

    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(stories)])
    template = tmp_path / "block.html"
    template.write_text('<nav class="mine">{% for i in items %}<a data-pos="{{ i.pos }}" href="{{ i.url }}">'
                        "{{ i.title }}</a>{{ i.section }}{% endfor %}</nav>")
    own = api_settings.model_copy(update={"block_template": template})
    with TestClient(create_app(own, embedder=CountingEmbedder(), background=False)) as c:
        block = c.get("/v1/articles/ukr-2/related.html").text
        assert block.startswith('<nav class="mine"><a data-pos="1" href="https://www.exemplu.ro/externe/ukr-1?')
        page = c.post("/v1/rewrite", json={"html": PAGE, "article_id": "ukr-1"}).json()["html"]
        assert '<nav class="mine">' in page and 'data-pos="2"' in page
        c.put("/v1/articles/ukr-1", json={"title": "<script>alert(1)</script> armistițiu Marea Neagră"},
              headers=AUTH)
        assert "<script>" not in c.get("/v1/articles/ukr-2/related.html").text
        template.write_text("{{ items[0].title.nope() }}")  # fails while rendering
        from api.render import site_template

        site_template.cache_clear()
        assert '<aside class="citeste-si"' in c.get("/v1/articles/ukr-2/related.html").text
    template.write_text("{% for %}")
    site_template.cache_clear()
    with pytest.raises(InvalidTemplate, match="not a valid Jinja template"):
        create_app(own, embedder=CountingEmbedder(), background=False)


def test_a_site_template_shows_each_articles_picture_when_it_is_http(api_settings, tmp_path):
    import html5lib

    from recommender.serving.engine import Engine

    pictures = {"ukr-1": "https://www.exemplu.ro/img/ukr-1.jpg?w=300&h=200", "ukr-3": "javascript:alert(1)"}
    records = [dict(a, image_url=pictures[a["id"]]) if a["id"] in pictures else a for a in STORY_ARTICLES]
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(write_jsonl(tmp_path / "a.jsonl", records))])
    template = tmp_path / "block.html"
    template.write_text('<ul>{% for i in items %}<li data-id="{{ i.pos }}">{% if i.image_url %}'
                        '<img src="{{ i.image_url }}">{% endif %}{{ i.title }}</li>{% endfor %}</ul>')
    own = api_settings.model_copy(update={"block_template": template})
    with TestClient(create_app(own, embedder=CountingEmbedder(), background=False)) as c:
        items = {i["id"]: i for i in c.get("/v1/articles/ukr-2/related", params={"k": 10}).json()["items"]}
        assert items["ukr-1"]["image_url"] == pictures["ukr-1"] and items["ukr-3"]["image_url"] is None
        assert all(i["image_url"] is None for aid, i in items.items() if aid != "ukr-1")
        tree = html5lib.parse(c.get("/v1/articles/ukr-2/related.html", params={"k": 10}).text,
                              namespaceHTMLElements=False)
        assert [img.get("src") for img in tree.iter("img")] == [pictures["ukr-1"]]
        assert len(list(tree.iter("li"))) == len(items)


def test_rewrite_without_an_id_uses_the_page_text(client):
    body = client.post("/v1/rewrite", json={"html": PAGE}).json()
    assert body["replaced"] == 1 and "Acord pentru armistițiul din Marea Neagră" in body["html"]
    assert "vacanță în Grecia" not in body["html"]


def test_rewrite_leaves_a_page_without_a_block_unchanged(client):
    page = "<html><body><p>Citește și alte știri pe site.</p><a href='/x'>x</a></body></html>"
    assert client.post("/v1/rewrite", json={"html": page}).json() == {"html": page, "replaced": 0, "experiment": None,
                                                                     "arm": None}


def test_operations_routes(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["articles"] == 7
    client.get("/v1/articles/ukr-2/related")
    client.get("/v1/articles/ukr-2/related", params={"max_age_days": 3})
    text = client.get("/metrics").text
    assert 'recommender_requests_total{method="GET",route="/v1/articles/{article_id}/related",status="200"} 2.0' in text
    assert 'recommender_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/articles/{article_id}/related"}' in text
    assert "recommender_index_articles 7.0" in text
    assert "recommender_cache_hit_ratio 0.5" in text


def test_openapi_docs_have_examples(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/articles/{article_id}/related" in spec["paths"] and "/v1/rewrite" in spec["paths"]
    assert "examples" in json.dumps(spec["components"]["schemas"]["DraftIn"])


def test_stale_cached_list_is_served_when_the_engine_fails(client, monkeypatch):
    client.get("/v1/articles/ukr-2/related")  # cached
    service = client.app.state.service
    snap = service.snapshot
    stored = snap.lists.get
    monkeypatch.setattr(snap.lists, "get", lambda num: dataclasses.replace(stored(num), fresh=False))

    def broken(*args, **kwargs):
        raise RuntimeError("index on fire")

    monkeypatch.setattr(snap.engine, "seed", broken)
    response = client.get("/v1/articles/ukr-2/related")
    assert response.status_code == 200 and ids(response)[0] == "ukr-1"
    assert "recommender_stale_served_total 1.0" in client.get("/metrics").text


def test_demo_page_shows_old_and_new_blocks(api_settings, tmp_path):
    from recommender.serving.demo import DEMO_ARTICLE, demo_corpus_path
    from recommender.serving.engine import Engine

    Engine(api_settings, embedder=CountingEmbedder()).ingest([demo_corpus_path()])
    with TestClient(create_app(api_settings, embedder=CountingEmbedder(), background=False)) as c:
        html = c.get(f"/demo/{DEMO_ARTICLE}").text
    old, new = html.split('id="new-block"')
    assert "Cât costă o vacanță all inclusive în Grecia" in old
    assert new.count('class="citeste-si__link"') == 5


def test_rewrite_refuses_a_page_nested_past_the_limit_with_a_422(client):
    deep = "<div>" * 5_000 + "Citește și <a href=/x>x</a>" + "</div>" * 5_000
    response = client.post("/v1/rewrite", json={"html": deep})
    assert response.status_code == 422 and "nests elements more than 512 deep" in response.json()["detail"]


def test_rewrite_removes_an_inline_teaser_when_the_list_took_every_suggestion(client):
    page = ("<article><h1>Kievul propune un armistițiu</h1><p>Text.</p>"
            "<p><strong>CITEȘTE ȘI:</strong> <a href='/vechi'>Ceva vechi</a></p><p>Mai mult text.</p>"
            + PAGE.split("<body>")[1].split("<footer>")[0].split('<div class="video">')[1].split("</div>", 1)[1]
            + "</article>")
    body = client.post("/v1/rewrite", json={"html": page, "article_id": "ukr-1"}).json()
    assert body["replaced"] == 2 and body["html"].count('<div class="citeste-si">') == 1
    # ukr-1 has three related articles here: the end-of-article list shows them all,
    # so the teaser, which may not repeat one, is removed
    listed = re.findall(r'href="([^"]+)"', body["html"].split('<div class="citeste-si">')[1])
    assert len(listed) == 3 and "CITEȘTE ȘI" not in body["html"] and "Ceva vechi" not in body["html"]
    assert "<p>Text.</p><p>Mai mult text.</p>" in body["html"]


def test_head_answers_every_get_route_without_a_body(client):
    for path in ("/healthz", "/readyz", "/metrics", "/v1/articles/ukr-1", "/v1/articles/ukr-1/related",
                 "/v1/articles/ukr-1/related.html", "/demo/ukr-1"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert client.head("/v1/articles/nope").status_code == 404
    assert client.head("/v1/rewrite").status_code == 405  # a POST-only route


def test_the_open_demo_page_has_a_cost_bound(api_settings, stories, tmp_path):
    """A body the CLI ingested at 3 MB is shown from its start only, and the demo waits
    for a heavy-route slot like drafts and rewrites (a 30 MB one cost 30 s of CPU a view)."""
    from recommender.serving.engine import Engine
    from recommender.text.normalize import clean_text

    body = "<p>" + "Guvernul a aprobat bugetul pe anul viitor. " * 70_000 + "</p>"
    huge = write_jsonl(tmp_path / "huge.jsonl", [article("huge", "Bugetul, în detaliu", body)])
    Engine(api_settings, embedder=CountingEmbedder()).ingest([str(stories), str(huge)])
    with TestClient(create_app(api_settings, embedder=CountingEmbedder(), background=False)) as client:
        page = client.get("/demo/huge")
        assert page.status_code == 200 and 10_000 < len(page.text) < len(clean_text(body[:60_000], ""))
        slots = client.app.state.heavy_slots
        while slots.acquire(blocking=False):  # every slot busy
            pass
        busy = client.get("/demo/huge")
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"


def test_the_model_is_loaded_at_start_not_by_the_first_write(api_settings, stories):
    """The first write after a start waited 2.2 s for e5 to load (issue 25)."""
    import time

    from recommender.serving.engine import Engine

    Engine(api_settings).ingest([str(stories)])
    app = create_app(api_settings, background=False)  # no embedder given: the server loads its own
    with TestClient(app):
        engine = app.state.service.snapshot.engine
        deadline = time.monotonic() + 10
        while engine._embedder is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine._embedder is not None


def test_a_backlog_listed_in_one_process_rebuilds_bm25_first(api_settings, stories, monkeypatch):
    """A bulk import reaching a one-worker server: each list's searches scored every
    document written since BM25's last build one by one (not caught up after 20 minutes at 10,000)."""
    from recommender.serving import lists
    from recommender.serving.engine import Engine

    monkeypatch.setattr(lists, "SAVE_EVERY", 2)
    engine = Engine(api_settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    state = engine.state()
    state.warm()
    for n in range(len(state.infos), len(state.infos) + 7):
        state.lexical.add(n, ["continuare"])  # written after the build, as a bulk import's are
    assert state.lexical._postings is not None and state.lexical._postings.delta
    lists_ = engine.lists_for(state)
    engine.upkeep.compute_in_processes(state, lists_, sorted(state.infos), workers=1)
    assert not state.lexical._postings.delta


def test_a_page_view_stores_its_live_list_only_without_a_backlog(client):
    """During a bulk import the list worker is about to store the list; a page view that ranked
    it live must not wait for the store's writer behind the worker's batches."""
    service = client.app.state.service
    assert service.lists.wait_idle(10)
    service.lists.stop()  # its backlog stays as set below
    state = service.snapshot.state
    num = state.by_id["ukr-2"]
    key = service.snapshot.lists.key
    store = service.snapshot.engine.store
    service.snapshot.lists.forget([num])
    service.lists._pending.add(state.by_id["fot-1"])
    assert ids(client.get("/v1/articles/ukr-2/related")) and store.list_row(key, num) is None
    service.lists._pending.clear()
    assert ids(client.get("/v1/articles/ukr-2/related")) and store.list_row(key, num) is not None
