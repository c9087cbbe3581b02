"""Random payloads at every route: bad input may be refused, never answered with a 5xx."""

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from api.app import create_app
from recommender.serving.engine import Engine
from tests.conftest import CountingEmbedder

KEY = "fuzz-key"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)
article_like = st.fixed_dictionaries({}, optional={
    "id": json_values, "title": st.text(max_size=60) | json_values, "body": st.text(max_size=200) | json_values,
    "url": st.text(max_size=40) | json_values, "published_at": st.text(max_size=30) | json_values,
    "section": json_values, "tags": json_values, "language": json_values, "related": json_values,
})
bodies = st.one_of(json_values, article_like, st.lists(article_like, max_size=3))
raw_bodies = st.binary(max_size=300)
ids = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/?#%\\"),
              min_size=1, max_size=30).filter(lambda s: s.strip(". ")) | st.just("ukr-1")
params = st.dictionaries(st.sampled_from(["k", "section", "exclude_section", "max_age_days", "past_only",
                                          "exclude", "diversity"]),
                         st.text(max_size=10) | st.integers(-100, 100).map(str), max_size=4)
auth = st.sampled_from([{}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer nope"}, {"Authorization": "x"}])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from recommender.settings import Settings
    from tests.conftest import STORY_ARTICLES, write_jsonl

    tmp = tmp_path_factory.mktemp("fuzz")
    settings = Settings(data_dir=tmp / "data", model="hashing:256", api_keys=KEY)
    Engine(settings, embedder=CountingEmbedder()).ingest([str(write_jsonl(tmp / "s.jsonl", STORY_ARTICLES))])
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False)) as c:
        yield c


ROUTES = [
    ("GET", "/v1/articles/{id}/related"), ("GET", "/v1/articles/{id}/related.html"), ("POST", "/v1/related"),
    ("GET", "/v1/articles/{id}"), ("PUT", "/v1/articles/{id}"), ("POST", "/v1/articles:bulk"),
    ("DELETE", "/v1/articles/{id}"), ("POST", "/v1/rewrite"), ("GET", "/healthz"), ("GET", "/readyz"),
    ("GET", "/metrics"), ("GET", "/demo/{id}"),
]


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), article_id=ids, query=params, headers=auth,
       body=bodies, raw=raw_bodies, use_raw=st.booleans())
def test_no_route_answers_bad_input_with_a_5xx(client, route, article_id, query, headers, body, raw, use_raw):
    method, template = route
    path = template.replace("{id}", article_id)
    kwargs = {"params": query, "headers": dict(headers)}
    if method in ("POST", "PUT"):
        if use_raw:
            kwargs["content"] = raw
            kwargs["headers"]["content-type"] = "application/json"
        else:
            kwargs["json"] = body
    response = client.request(method, path, **kwargs)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:300])


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(html=st.lists(st.sampled_from(list("<>/ \"'=abcdiphul1") + ["Citește și", "<a href='x'>", "</a>", "<h3>", "</h3>",
                                                                  "<ul>", "<li>", "<div>", "</div>"]),
                     max_size=60).map("".join))
def test_rewrite_never_fails_on_odd_markup(client, html):
    response = client.post("/v1/rewrite", json={"html": html})
    assert response.status_code == 200
    body = response.json()
    assert body["replaced"] >= 0 and (body["replaced"] > 0 or body["html"] == html)
