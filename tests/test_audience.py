"""Readers' events, experiments and their report: through the API, the CLI and a real store."""

from __future__ import annotations

import json
import math
import time

import html5lib
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.audience.experiments import Arm, Experiment, Experiments
from recommender.audience.report import experiment_report
from recommender.cli import main
from recommender.ranking.profiles import open_profiles
from recommender.serving.engine import Engine
from tests.conftest import CountingEmbedder
from tests.test_api import PAGE

ARMS = [Arm(name="control", profile="default"), Arm(name="test", profile="original")]


@pytest.fixture
def app_settings(settings):
    return settings.model_copy(update={"api_keys": "k3y", "max_body_bytes": 256 * 1024})


@pytest.fixture
def served(app_settings, stories):
    """A running app over the stories, and the store's experiments."""
    engine = Engine(app_settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    with TestClient(create_app(app_settings, embedder=CountingEmbedder(), background=False)) as client:
        yield client, engine


KEY = {"Authorization": "Bearer k3y"}


def impression(visitor: str, arm: str, items=("ukr-1", "ukr-3"), seed="ukr-2", **extra) -> dict:
    return {"type": "impression", "article_id": seed, "items": list(items), "arm": arm, "visitor": visitor, **extra}


def click(visitor: str, arm: str, item="ukr-1", pos=1, seed="ukr-2") -> dict:
    return {"type": "click", "article_id": seed, "item": item, "pos": pos, "arm": arm, "visitor": visitor}


def started(experiments: Experiments, arms=ARMS, unit="visitor", name="ab") -> Experiment:
    return experiments.start(name, list(arms), unit)


def test_events_are_stored_or_rejected_one_by_one(served):
    client, engine = served
    experiments = engine.experiments
    started(experiments)
    body = [impression("v1", "control"), click("v1", "control"),
            {"type": "click", "article_id": "ukr-2", "item": "ukr-1", "pos": 0},
            {"type": "impression", "article_id": "nope", "items": ["ukr-1"]},
            {"type": "view", "article_id": "ukr-2"},
            impression("v2", "nosuch"),
            {"type": "impression", "article_id": "ukr-2", "items": ["ukr-1"], "arm": "control"},
            {"type": "impression", "article_id": "ukr-2", "items": ["ukr-1"], "at": "31.11.2025 09:00"},
            "not an object",
            impression("v3", "test", at="2025-03-09T10:00:00+02:00")]
    response = client.post("/v1/events", json=body, headers=KEY)
    assert response.status_code == 200
    out = response.json()
    assert (out["stored"], out["rejected"]) == (3, 7)
    errors = {r["index"]: r["error"] for r in out["results"] if r["status"] == "rejected"}
    assert "pos" in errors[2] and errors[3] == "unknown article 'nope'" and "type" in errors[4]
    assert errors[5] == "no experiment has an arm 'nosuch'" and "assigns by visitor" in errors[6]
    assert "31.11" not in errors[7] and "not a day of the calendar" in errors[7] and "JSON object" in errors[8]
    report = experiment_report(engine.store, experiments.get("ab"))
    assert [(a.arm, a.units, a.impressions, a.clicks) for a in report.arms] == [("control", 1, 1, 1),
                                                                                ("test", 1, 1, 0)]
    assert client.post("/v1/events", json=body).status_code == 401
    jsonl = "\n".join(json.dumps(e) for e in body[:2])
    assert client.post("/v1/events", content=jsonl, headers={**KEY, "content-type": "application/x-ndjson"}
                       ).json()["stored"] == 2
    too_many = client.post("/v1/events", json=[{}] * 10_001, headers=KEY)
    assert too_many.status_code in (400, 413) and "detail" in too_many.json()
    empty = client.post("/v1/events", content=b"", headers=KEY)
    assert empty.status_code == 422 and empty.json()["detail"].startswith("no events in the body")
    metrics = client.get("/metrics").text
    assert "recommender_events_stored_total 5.0" in metrics and "recommender_events_rejected_total 7.0" in metrics


def test_assignment_is_stable_and_follows_the_weights():
    experiment = Experiment(name="ab", arms=[Arm(name="a", profile="default", weight=80),
                                             Arm(name="b", profile="p1", weight=20)])
    arms = [experiment.assign(f"visitor-{i}").name for i in range(20_000)]
    assert arms == [experiment.assign(f"visitor-{i}").name for i in range(20_000)]
    assert abs(arms.count("b") / len(arms) - 0.2) < 0.01
    other = experiment.model_copy(update={"name": "ab2"})
    moved = sum(a != other.assign(f"visitor-{i}").name for i, a in enumerate(arms))
    assert moved > 4000, "another experiment splits the same readers afresh"


def test_the_report_arithmetic_matches_a_hand_computed_example(served):
    """control: two readers, 10 views each, 1 and 3 clicks: CTR 0.2, residuals -1 and +1,
    var = 2/1 * 2 / 20^2 = 0.01. test: three readers (10, 2), (10, 6), (20, 4): CTR 0.3,
    residuals -1, 3, -2, var = 3/2 * 14 / 40^2 = 0.013125. 2 against 3 units at 50/50:
    chi-square 0.2, p 0.6547."""
    client, engine = served
    experiments = engine.experiments
    started(experiments, [Arm(name="control", profile="default"), Arm(name="test", profile="default")])
    readers = {("control", "a"): (10, 1), ("control", "b"): (10, 3),
               ("test", "c"): (10, 2), ("test", "d"): (10, 6), ("test", "e"): (20, 4)}
    events = []
    for (arm, visitor), (views, clicks) in readers.items():
        events += [impression(visitor, arm)] * views + [click(visitor, arm, pos=1 + n % 2) for n in range(clicks)]
    assert client.post("/v1/events", json=events, headers=KEY).json()["rejected"] == 0
    report = experiment_report(engine.store, experiments.get("ab"))
    control, test = report.arms
    assert (control.units, control.impressions, control.clicks, control.ctr) == (2, 20, 4, 0.2)
    assert control.ctr_ci == pytest.approx((0.2 - 1.959964 * 0.1, 0.2 + 1.959964 * 0.1))
    assert (test.units, test.impressions, test.clicks) == (3, 40, 12) and test.ctr == pytest.approx(0.3)
    (diff,) = report.differences
    half = 1.959964 * math.sqrt(0.01 + 0.013125)
    assert diff.diff == pytest.approx(0.1) and diff.ci == pytest.approx((0.1 - half, 0.1 + half))
    assert report.sample_ratio_p == pytest.approx(0.6547, abs=1e-4)
    by_pos = {(p.arm, p.pos): (p.impressions, p.clicks) for p in report.positions}
    assert by_pos[("control", 1)] == (20, 3) and by_pos[("control", 2)] == (20, 1)  # clicks at 1, 2, 1, ...
    assert by_pos[("test", 2)] == (40, 6)


def test_read_routes_answer_the_arm_and_the_original_arm_keeps_the_page(served):
    client, engine = served
    experiments = engine.experiments
    started(experiments)
    ours = next(v for v in (f"r{i}" for i in range(100)) if experiments.get("ab").assign(v).name == "control")
    theirs = next(v for v in (f"r{i}" for i in range(100)) if experiments.get("ab").assign(v).name == "test")
    time.sleep(1.1)  # the server reads the running experiment once a second
    shown = client.get("/v1/articles/ukr-2/related", params={"visitor": ours}).json()
    assert (shown["experiment"], shown["arm"]) == ("ab", "control") and shown["items"]
    assert all(i["url"].endswith("&arm=control") for i in shown["items"])
    kept = client.get("/v1/articles/ukr-2/related", headers={"X-Visitor-Id": theirs}).json()
    assert (kept["arm"], kept["items"]) == ("test", []) and "own block" in kept["note"]
    block = client.get("/v1/articles/ukr-2/related.html", params={"visitor": ours})
    aside = next(html5lib.parse(block.text, namespaceHTMLElements=False).iter("aside"))
    assert aside.get("data-arm") == "control"
    assert client.get("/v1/articles/ukr-2/related.html", params={"visitor": theirs}).status_code == 204
    page = client.post("/v1/rewrite", json={"html": PAGE, "article_id": "ukr-1"}, headers={"X-Visitor-Id": theirs})
    assert page.json() == {"html": PAGE, "replaced": 0, "experiment": "ab", "arm": "test"}
    rewritten = client.post("/v1/rewrite", json={"html": PAGE, "article_id": "ukr-1"}, params={"visitor": ours})
    assert rewritten.json()["replaced"] == 1 and "&amp;arm=control" in rewritten.json()["html"]
    plain = client.get("/v1/articles/ukr-2/related").json()  # no visitor: outside the experiment
    assert plain["arm"] is None and plain["items"]
    experiments.stop("ab")
    time.sleep(1.1)
    assert client.get("/v1/articles/ukr-2/related", params={"visitor": theirs}).json()["arm"] is None


def test_an_arm_of_another_profile_is_ranked_with_its_weights(served, app_settings):
    client, engine = served
    experiments = engine.experiments
    profiles = open_profiles(app_settings, engine.store)
    # Mostly time, the farthest first: the oldest piece leads, where the default's is the closest in text.
    p1 = profiles.save({"dense": 0.1, "log_days": 5.0}, "test", {})
    started(experiments, [Arm(name="a", profile="default", weight=1), Arm(name="b", profile=p1.name, weight=99)],
            unit="article")
    assert experiments.get("ab").assign("ukr-2").name == "b"
    answer = until_arm(client, "/v1/articles/ukr-2/related", {"k": 3}, "b")
    expected = Engine(app_settings, embedder=CountingEmbedder(), profile=p1).related("ukr-2", k=3)
    default = Engine(app_settings, embedder=CountingEmbedder()).related("ukr-2", k=3)
    assert [i["id"] for i in answer["items"]] == [i.id for i in expected] != [i.id for i in default]


def test_the_experiment_commands(app_settings, stories, tmp_path):
    Engine(app_settings, embedder=CountingEmbedder()).ingest([str(stories)])
    env = {"RECOMMENDER_DATA_DIR": str(app_settings.data_dir), "RECOMMENDER_MODEL": app_settings.model,
           "RECOMMENDER_DATABASE_URL": app_settings.database_url}

    def run(*args):
        return CliRunner().invoke(main, list(args), env=env)

    assert run("experiment", "list").output.startswith("no experiments yet")
    bad = run("experiment", "start", "x", "--arm", "a=default", "--arm", "b=p9")
    assert bad.exit_code != 0 and "no ranking profile 'p9'" in bad.output and "Traceback" not in bad.output
    assert run("experiment", "start", "x", "--arm", "a=default").exit_code != 0  # one arm is no experiment
    ok = run("experiment", "start", "vs-old", "--arm", "ours=default", "--arm", "old=original", "--weight", "old=25")
    assert ok.exit_code == 0 and "ours=default 75%, old=original 25%" in ok.output
    again = run("experiment", "start", "y", "--arm", "a=default", "--arm", "b=original")
    assert again.exit_code != 0 and "'vs-old' is running" in again.output
    assert "* vs-old" in run("experiment", "list").output
    assert "experiment running: vs-old" in run("stats").output
    report = json.loads(run("experiment", "report", "vs-old", "--json").output)
    assert [a["arm"] for a in report["arms"]] == ["ours", "old"] and report["arms"][0]["ctr"] is None
    out = tmp_path / "report"
    assert run("experiment", "report", "vs-old", "--out", str(out)).exit_code == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "ctr.png", "positions.png", "days.png"}
    assert run("experiment", "stop", "vs-old").exit_code == 0
    assert "stopped" in run("experiment", "stop", "vs-old").output
    assert run("experiment", "report", "nope").exit_code != 0
    store = Engine(app_settings).store
    profiles = open_profiles(app_settings, store)
    p1 = profiles.save({"dense": 1.0}, "test", {})
    own = run("experiment", "start", "own", "--arm", "a=default", "--arm", f"b={p1.name}", "--explore", "0.1")
    assert own.exit_code == 0 and f"computed 7 lists under {p1.name}" in own.stderr
    assert Experiments(store.shelf("experiments"), profiles).get("own").explore == 0.1
    store.close()
    assert run("experiment", "start", "x2", "--arm", "a=default", "--arm", "b=original", "--explore", "0.9"
               ).exit_code == 2  # a usage error: at most half the views explore


LOG = [
    '203.0.113.9 - - [14/Mar/2025:19:05:00 +0200] "GET /px?ref=related-impression&from=ukr-2&items=ukr-1,ukr-3'
    '&arm=control HTTP/1.1" 204 0 "https://www.exemplu.ro/externe/ukr-2" "Mozilla/5.0 (X11; Linux)"',
    '203.0.113.9 - - [14/Mar/2025:19:05:09 +0200] "GET /externe/ukr-1/?ref=related&from=ukr-2&pos=1&arm=control '
    'HTTP/1.1" 200 5120 "https://www.exemplu.ro/externe/ukr-2" "Mozilla/5.0 (X11; Linux)"',
    '198.51.100.4 - - [14/Mar/2025:19:06:00 +0200] "GET /externe/ukr-1?ref=related&from=ukr-2&pos=1 HTTP/1.1" '
    '200 5120 "-" "Googlebot/2.1"',
    '198.51.100.4 - - [14/Mar/2025:19:06:01 +0200] "GET /externe/ukr-1?ref=related&from=ukr-2&pos=1 HTTP/1.1" '
    '404 12 "-" "Mozilla/5.0"',
    '198.51.100.4 - - [14/Mar/2025:19:06:02 +0200] "GET /externe/gone?ref=related&from=ukr-2&pos=2 HTTP/1.1" '
    '200 12 "-" "Mozilla/5.0"',
    '198.51.100.4 - - [14/Mar/2025:19:06:03 +0200] "GET /externe/ukr-3?ref=related&from=nope&pos=2 HTTP/1.1" '
    '200 12 "-" "Mozilla/5.0"',
    '198.51.100.4 - - [14/Mar/2025:19:06:04 +0200] "GET /index.html HTTP/1.1" 200 12 "-" "Mozilla/5.0"',
    "this is not a log line",
]


def test_events_are_imported_from_access_logs(app_settings, stories, tmp_path):
    import gzip

    engine = Engine(app_settings, embedder=CountingEmbedder())
    engine.ingest([str(stories)])
    started(engine.experiments, [Arm(name="control", profile="default"), Arm(name="test", profile="default")])
    plain, zipped = tmp_path / "access.log", tmp_path / "access.log.1.gz"
    plain.write_text("\n".join(LOG[:4]) + "\n")
    with gzip.open(zipped, "wt") as fh:
        fh.write("\n".join(LOG[4:]) + "\n")
    env = {"RECOMMENDER_DATA_DIR": str(app_settings.data_dir), "RECOMMENDER_DATABASE_URL": app_settings.database_url}
    result = CliRunner().invoke(main, ["events", "import", str(plain), str(zipped), "--json"], env=env)
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert {k: counts[k] for k in ("lines", "stored", "clicks", "impressions", "rejected", "skipped", "unresolved",
                                   "unparsed")} == {"lines": 8, "stored": 2, "clicks": 2, "impressions": 1,
                                                    "rejected": 1, "skipped": 3, "unresolved": 1, "unparsed": 1}
    assert counts["reasons"] == {"unknown article": 1}
    (control, _) = experiment_report(engine.store, engine.experiments.get("ab")).arms
    assert (control.units, control.impressions, control.clicks) == (1, 1, 1)  # one reader: address and browser
    plain.rename(tmp_path / "access.log.1")  # rotated: the same bytes under another name
    again = CliRunner().invoke(main, ["events", "import", str(tmp_path / "access.log.1"), "--json"], env=env)
    assert again.exit_code == 0 and json.loads(again.stdout)["stored"] == 0 and "imported before" in again.stderr
    forced = CliRunner().invoke(main, ["events", "import", str(tmp_path / "access.log.1"), "--again", "--json"],
                                env=env)
    assert json.loads(forced.stdout)["stored"] == 2
    garbage = tmp_path / "notes.txt"
    garbage.write_text("hello\nworld\n")
    refused = CliRunner().invoke(main, ["events", "import", str(garbage)], env=env)
    assert refused.exit_code != 0 and "combined log format" in refused.output


def test_position_propensities_from_items_shown_at_neighbouring_positions():
    """x at 1 and 2: CTR 0.20 and 0.10, so p2/p1 = 0.5; y at 2 and 3: 0.10 and 0.04, so
    p3/p2 = 0.4 and p3 = 0.2. z, shown at 1 only, says nothing about the ratios."""
    from recommender.audience.clicks import propensities

    rows = [("s", "x", 1, 100, 20), ("s", "x", 2, 100, 10), ("s", "y", 2, 50, 5), ("s", "y", 3, 50, 2),
            ("t", "z", 1, 1000, 900)]
    p, harvested = propensities(rows)
    assert p == pytest.approx([1.0, 0.5, 0.2]) and harvested == [1, 1]


def test_tune_learns_from_clicks_weighted_by_position(app_settings, tmp_path):
    from recommender.audience.clicks import beside_editors, click_labels
    from recommender.audience.record import record_events
    from tests.test_ranking import FOUR_STORIES

    engine = Engine(app_settings, embedder=CountingEmbedder())
    engine.ingest([str(FOUR_STORIES)])
    env = {"RECOMMENDER_DATA_DIR": str(app_settings.data_dir), "RECOMMENDER_MODEL": app_settings.model,
           "RECOMMENDER_DATABASE_URL": app_settings.database_url}
    none = CliRunner().invoke(main, ["tune", "--clicks"], env=env)
    assert none.exit_code != 0 and "no clicks stored" in none.output
    stories = ["inundatii", "greva", "fotbal", "energie"]
    events = []
    for story in stories:  # readers click the story's other pieces, at positions 1 and 2
        for n in range(1, 7):
            seed, items = f"{story}-{n}", [f"{story}-{m}" for m in range(1, 7) if m != n][:2]
            events += [{"type": "impression", "article_id": seed, "items": items}] * 4
            events += [{"type": "click", "article_id": seed, "item": items[1], "pos": 2}]
    assert all(r.status == "stored" for r in record_events(engine.store, [], list(enumerate(events))))
    labels = click_labels(engine.store)
    assert labels.clicks == 24 and set(labels.weights["greva-1"]) == {"greva-3"}
    result = CliRunner().invoke(main, ["tune", "--clicks", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "24 clicks on 24 (article, item) pairs" in result.stderr
    learned = json.loads(result.stdout)["name"]
    assert f"experiment start {learned}-trial --arm control=default --arm test={learned}" in result.stderr
    assert "--clicks" in json.loads(result.stdout)["source"]
    assert beside_editors({"a": {"b": 0.5, "c": 2.0}}, {"a": {"b"}}) == {"a": {"b": 1.5, "c": 2.0}}


def test_an_arms_lists_are_precomputed_and_kept_current_with_writes(served, app_settings):
    from recommender.serving.lists import lists_key

    client, engine = served
    p1 = open_profiles(app_settings, engine.store).save({"dense": 0.1, "log_days": 5.0}, "test", {})
    computed = engine.prepare_profile(p1.name)  # what `experiment start` does first
    started(engine.experiments, [Arm(name="a", profile="default"), Arm(name="b", profile=p1.name)])
    service = client.app.state.service
    key = lists_key(service.snapshot.state.version, p1.name)
    assert computed == len(service.snapshot.state.infos) and engine.store.lists_refreshed_seq(key) is not None
    time.sleep(1.1)
    service.lists._wake.set()
    deadline = time.monotonic() + 10
    while key not in service.lists._arms_current and time.monotonic() < deadline:
        time.sleep(0.05)
    assert key in service.lists._arms_current
    follow_up = {"title": "Negocieri la Istanbul: a doua rundă pentru armistițiul din Marea Neagră",
                 "body": "Delegațiile Ucrainei și Rusiei se întâlnesc din nou la Istanbul pentru armistițiu.",
                 "published_at": "2025-03-10T10:00:00+00:00", "section": "externe"}
    assert client.put("/v1/articles/ukr-4", json=follow_up, headers=KEY).status_code == 200
    assert service.lists.wait_idle(10)
    num = engine.store.num_of("ukr-4")
    row = engine.store.list_row(key, engine.store.num_of("ukr-2"))
    assert row is not None and num in [item[0] for item in json.loads(row[0])]
    assert engine.store.list_row(key, num) is not None  # the new article's own list under the arm
    visitor = next(v for v in (f"r{i}" for i in range(100)) if engine.experiments.get("ab").assign(v).name == "b")
    hits = service.counters.hits
    answer = client.get("/v1/articles/ukr-2/related", params={"visitor": visitor, "k": 3}).json()
    assert answer["arm"] == "b" and service.counters.hits == hits + 1  # one row read, not a live ranking


def test_an_exploring_experiment_swaps_two_neighbours_in_a_share_of_views(served):
    client, engine = served
    engine.experiments.start("ab", [Arm(name="a", profile="default"), Arm(name="b", profile="default")], "visitor",
                             explore=0.5)
    time.sleep(1.1)
    plain = ids(client.get("/v1/articles/ukr-2/related", params={"k": 3}))
    orders = {v: ids(client.get("/v1/articles/ukr-2/related", params={"k": 3, "visitor": v})) for v in
              (f"r{i}" for i in range(60))}
    swapped = [o for o in orders.values() if o != plain]
    assert 15 <= len(swapped) <= 45 and all(sorted(o) == sorted(plain) for o in swapped)
    assert all(sum(a != b for a, b in zip(o, plain)) == 2 for o in swapped)  # two neighbours, nothing else
    assert orders == {v: ids(client.get("/v1/articles/ukr-2/related", params={"k": 3, "visitor": v}))
                      for v in orders}  # the same reader sees the same order again
    client.put("/v1/articles/ukr-2/curation", json={"pin": [plain[-1]]}, headers=KEY)
    pinned = {v: ids(client.get("/v1/articles/ukr-2/related", params={"k": 3, "visitor": v})) for v in orders}
    assert all(o[0] == plain[-1] for o in pinned.values())  # a pin keeps its place


def until_arm(client, path: str, params: dict, arm: str, timeout: float = 10.0) -> dict:
    """The answer once the server serves `arm`: it reads the running experiment once a second,
    and loads an arm's lists in the background (views meanwhile get the active profile's)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(path, params=params).json()
        if answer["arm"] == arm or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def ids(response) -> list[str]:
    return [i["id"] for i in response.json()["items"]]


def test_the_events_route_reads_the_experiments_once_a_second_and_places_a_new_ones_events(served, monkeypatch):
    client, engine = served
    reads = []
    every = Experiments.all
    monkeypatch.setattr(Experiments, "all", lambda self: reads.append(1) or every(self))
    started(engine.experiments)
    for visitor in ("v1", "v2", "v3"):
        assert client.post("/v1/events", json=[impression(visitor, "control")], headers=KEY).json()["stored"] == 1
    assert len(reads) == 1
    engine.experiments.stop("ab")
    started(engine.experiments, [Arm(name="red", profile="default"), Arm(name="blue", profile="default")], name="cd")
    time.sleep(1.1)  # the running experiment is re-read once a second: now "cd"
    out = client.post("/v1/events", json=[impression("v4", "red"), impression("v5", "control")], headers=KEY).json()
    assert out["stored"] == 2, out  # "red" of the new experiment, and a late event of the stopped "ab"
