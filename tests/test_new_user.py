"""What a new user tripped on (issue 9): one date form, dates as CMS exports carry
them, a CLI delete, clean logs, one error shape, every answer counted."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.app import create_app
from recommender.cli import main
from recommender.serving.engine import Engine
from tests.conftest import HASHING, CountingEmbedder, article, write_jsonl

KEY = "k"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def env(tmp_path):
    return {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING}


def cli(env, *args, **kwargs):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, **kwargs)


@pytest.fixture
def client(settings, stories):
    settings = settings.model_copy(update={"api_keys": KEY, "max_body_bytes": 4096})
    Engine(settings, embedder=CountingEmbedder()).ingest([str(stories)])
    with TestClient(create_app(settings, embedder=CountingEmbedder(), background=False)) as test_client:
        yield test_client


def test_published_at_has_one_iso_form_in_the_cli_and_the_api(env, stories, client):
    cli(env, "ingest", str(stories))
    from_cli = {i["id"]: i["published_at"] for i in json.loads(cli(env, "related", "ukr-2", "--json").stdout)}
    from_api = {i["id"]: i["published_at"] for i in client.get("/v1/articles/ukr-2/related").json()["items"]}
    assert from_cli == from_api and all(ISO_Z.match(v) for v in from_cli.values())
    stats = json.loads(cli(env, "stats", "--json").stdout)
    assert stats["first_published"] == "2023-03-01T10:00:00Z" and ISO_Z.match(stats["last_published"])


@pytest.mark.parametrize("given, stored", [
    ("2025-05-20T14:30:00+03:00", "2025-05-20T11:30:00Z"),
    ("20.05.2025 14:30", "2025-05-20T11:30:00Z"),  # naive: the archive's zone, Europe/Bucharest (UTC+3 in May)
    ("20.05.2025", "2025-05-19T21:00:00Z"),
    ("Tue, 20 May 2025 14:30:00 +0300", "2025-05-20T11:30:00Z"),
    (1747751400, "2025-05-20T14:30:00Z"),
    ("1747751400", "2025-05-20T14:30:00Z"),
])
def test_dates_as_romanian_cms_exports_carry_them(env, tmp_path, given, stored):
    path = write_jsonl(tmp_path / "a.jsonl", [article("d", "Titlu", date=given)])
    result = cli(env, "ingest", "--timezone", "Europe/Bucharest", str(path))
    assert result.exit_code == 0, result.output
    from recommender.store.sqlite import SQLiteStore

    assert SQLiteStore(tmp_path / "data" / "store.sqlite").get("d").article.published_at.isoformat().replace(
        "+00:00", "Z") == stored


def test_a_rejected_date_says_why_and_an_impossible_day_is_named_as_such(env, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [article("a", "Bun"), article("b", "Rău", date="31.11.2025 09:00"),
                                              article("c", "Antic", date="0001-01-01T00:00:00+01:00"),
                                              article("d", "Ciudat", date="mâine dimineață")])
    result = cli(env, "ingest", str(path))
    assert result.exit_code == 3 and "added 1" in result.stdout
    assert f"{path}:2: published_at is not a day of the calendar (day is out of range" in result.stderr
    assert f"{path}:3: published_at is outside the years" in result.stderr
    assert f"{path}:4: published_at is not a date; use" in result.stderr and "dd.mm.yyyy" in result.stderr


def test_an_unknown_time_zone_is_refused_with_a_clear_message(env, stories):
    result = CliRunner().invoke(main, ["ingest", "--timezone", "Europe/Atlantis", str(stories)], env=env)
    assert result.exit_code == 1 and "unknown time zone 'Europe/Atlantis'" in result.output
    assert "Traceback" not in result.output


def test_cli_delete_has_the_effect_of_the_api_route(env, stories, tmp_path):
    cli(env, "ingest", str(stories))
    assert "ukr-3" in [i["id"] for i in json.loads(cli(env, "related", "ukr-2", "--json").stdout)]
    ids = tmp_path / "ids.txt"
    ids.write_text("ukr-3\nnobody\n")
    result = cli(env, "delete", "fot-2", "--from-file", str(ids))
    assert result.exit_code == 3 and "deleted 2; not found 1" in result.stdout and "'nobody'" in result.stderr
    assert "ukr-3" not in [i["id"] for i in json.loads(cli(env, "related", "ukr-2", "--json").stdout)]
    gone = CliRunner().invoke(main, ["related", "ukr-3"], env=env)
    assert gone.exit_code == 1 and "no article with id 'ukr-3'" in gone.output
    from recommender.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "data" / "store.sqlite")
    assert store.get("ukr-3") is None and store.count() == 5
    # the precomputed lists, which the API serves, no longer show it
    lists = [json.loads(items) for _, items, _ in store.list_rows("v1")]
    assert all(row[0] != 3 for items in lists for row in items)


def test_progress_bars_only_on_a_terminal_unless_asked(env, stories):
    quiet = cli(env, "ingest", str(stories))
    assert "\r" not in quiet.stderr and "it/s" not in quiet.stderr
    asked = cli(env, "ingest", "--progress", str(stories))
    assert "ingesting" in asked.stderr


def test_a_malformed_json_body_gets_the_one_line_error_shape(client):
    bad = client.post("/v1/related", content=b'{"title": ', headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json() == {"detail": "malformed JSON body: Expecting value"}
    query = client.get("/v1/articles/ukr-2/related", params={"k": "many"})
    assert query.status_code == 422 and isinstance(query.json()["detail"], str) and query.json()["detail"].startswith("k: ")


def test_every_answer_is_counted_by_route_template(client):
    client.put("/v1/articles/x", json={"title": "fără cheie"})  # 401, from a dependency
    client.post("/v1/related", content=b"x" * 10_000)  # 413, before routing
    client.get("/docs")
    client.get("/v1/articles/ukr-2")
    metrics = client.get("/metrics").text
    for route, status in [("/v1/articles/{article_id}", "401"), ("/v1/related", "413"), ("/docs", "200"),
                          ("/v1/articles/{article_id}", "200")]:
        assert f'route="{route}",status="{status}"' in metrics, (route, status)
    assert 'route="/v1/articles/ukr-2"' not in metrics


def test_evaluation_needs_nothing_beyond_the_base_install():
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    base = " ".join(config["dependencies"])
    assert "matplotlib" in base, "eval --out draws plots: matplotlib must come with the base install"


def test_a_drafts_date_without_an_offset_is_in_the_archives_zone():
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from api.schemas import DraftIn

    draft = DraftIn(title="Titlu", published_at="20.05.2025 14:30")
    assert draft.date(ZoneInfo("Europe/Bucharest")) == datetime(2025, 5, 20, 11, 30, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="is not a day of the calendar"):
        DraftIn(title="Titlu", published_at="31.02.2025")
