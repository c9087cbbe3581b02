import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from recommender.cli import main
from tests.conftest import HASHING, article, needs_st, write_jsonl

COMMANDS = ["ingest", "related", "delete", "stats", "demo", "serve", "reembed", "eval", "eval-sts", "index list",
            "index activate", "index prune", "tune", "profile activate", "profile list", "curate", "rules check",
            "experiment start", "experiment stop", "experiment list", "experiment report", "events import"]


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    env = {"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING}

    def invoke(*args, **kwargs):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False, **kwargs)

    return invoke


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(run, command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "recommender " + command in result.output


def test_top_level_help_says_what_to_run_first(run):
    result = run("--help")
    assert result.exit_code == 0 and "recommender demo" in result.output


def test_ingest_prints_counts_and_names_rejected_lines(run, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [article("1", "Bun"), "{oops", {"id": "2"}, article("3", "Tot bun")])
    result = run("ingest", str(path))
    assert result.exit_code == 3
    assert "added 2, updated 0, unchanged 0, rejected 2" in result.stdout
    assert f"rejected {path}:2: malformed JSON" in result.stderr
    assert f"rejected {path}:3: title is required" in result.stderr
    again = run("ingest", str(path))
    assert "added 0, updated 0, unchanged 2, rejected 2" in again.stdout


def test_a_lone_surrogate_rejects_its_line_and_no_other(run, tmp_path):
    """JSON's \\ud800 decodes to a string no UTF-8 output can hold: the ingest used to stop
    at that line with 'unexpected UnicodeEncodeError', every rerun at the same line."""
    bad = '{"id": "s", "title": "Titlu", "body": "un \\ud800 text", "tags": ["\\udc00"]}'
    path = write_jsonl(tmp_path / "a.jsonl", [article("1", "Bugetul pe 2026"), bad, article("3", "Deficitul bugetar")])
    result = run("ingest", str(path))
    assert result.exit_code == 3, result.output
    assert "added 2, updated 0, unchanged 0, rejected 1" in result.stdout
    assert f"rejected {path}:2: body holds a lone UTF-16 surrogate" in result.stderr
    assert run("related", "1", "--json").exit_code == 0  # the index was built over the good lines


def test_clean_ingest_exits_zero_and_reports_duplicates(run, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [article("1", "Unu"), article("1", "Unu bis")])
    result = run("ingest", str(path))
    assert result.exit_code == 0, result.output
    assert "duplicate id '1'" in result.stderr and "the last one wins" in result.stderr


def test_ingest_reads_standard_input(run, stories):
    result = run("ingest", "-", input=stories.read_bytes())
    assert result.exit_code == 0 and "added 7" in result.stdout


def test_related_json_and_text(run, stories):
    run("ingest", str(stories))
    result = run("related", "ukr-2", "--json", "--k", "2")
    assert result.exit_code == 0
    items = json.loads(result.stdout)
    assert isinstance(items, list) and 1 <= len(items) <= 2
    assert {"id", "relevance", "rank_score", "title", "url", "published_at", "section", "reason"} <= set(items[0])
    assert items[0]["id"] == "ukr-1"
    text = run("related", "ukr-2")
    assert text.exit_code == 0 and "1. [" in text.stdout and "shared terms" in text.stdout


def test_related_filters_from_flags(run, stories):
    run("ingest", str(stories))
    result = run("related", "ukr-2", "--json", "--exclude-section", "externe", "--past-only")
    assert [i["id"] for i in json.loads(result.stdout)] == ["ukr-old"]


def test_related_for_a_draft(run, stories):
    run("ingest", str(stories))
    result = run("related", "--title", "Derby FCSB Dinamo", "--body", "Meci în Superliga", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["id"] in {"fot-1", "fot-2"}


def test_related_needs_an_id_or_a_title(run):
    result = run("related")
    assert result.exit_code == 2 and "ARTICLE_ID or --title" in result.output


def test_errors_are_one_line_without_traceback(run, stories):
    assert run("related", "x").output.strip().startswith("error: no store in")
    run("ingest", str(stories))
    result = run("related", "nope")
    assert result.exit_code == 1
    assert result.output.strip() == "error: no article with id 'nope'"
    mismatch = run("related", "ukr-1", "--model", "hashing:64")
    assert mismatch.exit_code == 1 and "reembed" in mismatch.output and "Traceback" not in mismatch.output
    unknown = run("related", "ukr-1", "--model", "bert-huge")
    assert unknown.exit_code == 1 and "unknown model 'bert-huge'" in unknown.output


def test_bad_setting_from_environment_is_one_line(tmp_path, stories):
    result = CliRunner().invoke(main, ["ingest", str(stories)],
                                env={"RECOMMENDER_DATA_DIR": str(tmp_path), "RECOMMENDER_BATCH_SIZE": "lots"})
    assert result.exit_code == 1 and result.output.startswith("error: invalid setting: batch_size")


def test_stats(run, stories):
    assert run("stats").output.startswith("error: no store")
    run("ingest", str(stories))
    data = json.loads(run("stats", "--json").stdout)
    assert data["articles"] == 7 and data["vectors_by_model"] == {HASHING: 7} and data["active_version"] == "v1"
    assert "articles: 7" in run("stats").stdout


def test_stats_on_an_empty_store_says_so(run, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [article("1", "Bun")])
    run("ingest", str(path))
    run("delete", "1")
    shown = run("stats").stdout
    assert "the store is empty" in shown and "None" not in shown and "sections:" not in shown


def test_demo_shows_noisy_block_beside_new_suggestions(run, tmp_path):
    result = run("demo", "--model", "hashing:512", "--data-dir", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    before, after = result.stdout.split("After")
    assert "Cât costă o vacanță all inclusive în Grecia" in before
    suggestions = [line for line in after.splitlines() if line.startswith("  - ")]
    assert len(suggestions) == 5
    assert not any("vacanță" in line or "vedetă" in line for line in suggestions)


def test_help_imports_nothing_heavy():
    code = "import sys; from recommender.cli import main; print(sorted(m for m in ('numpy', 'faiss', 'torch', 'bs4', 'fastapi') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@needs_st
def test_real_process_fails_fast_on_an_unreachable_hub(tmp_path, stories):
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", RECOMMENDER_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "recommender.cli", "ingest", str(stories),
                           "--model", "st:someone/some-model"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "cannot reach the Hugging Face hub" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # nothing was ingested


def test_serve_refuses_a_model_that_does_not_match_the_active_index(run, stories):
    run("ingest", str(stories))
    result = run("serve", "--model", "hashing:64", "--port", "1")
    assert result.exit_code == 1
    assert "built with model 'hashing:256', not 'hashing:64'" in result.output and "reembed" in result.output


def test_related_reads_a_current_list_from_the_store_without_loading_the_index(run, stories, tmp_path):
    run("ingest", str(stories))
    before = json.loads(run("related", "ukr-2", "--json").stdout)
    index_file = tmp_path / "data" / "indexes" / "v1" / "index.faiss"
    index_file.rename(tmp_path / "moved.faiss")  # were the index loaded, it would be rebuilt here
    assert json.loads(run("related", "ukr-2", "--json").stdout) == before
    assert not index_file.exists()
    # with options the list is ranked live, and the index comes back
    assert json.loads(run("related", "ukr-2", "--json", "--diversity", "0").stdout)
    assert index_file.exists()


def test_related_ranks_live_when_the_lists_are_behind_the_store(run, stories, tmp_path):
    from recommender.serving.engine import Engine
    from recommender.settings import Settings
    from recommender.store.articles import parse_article

    run("ingest", str(stories))
    engine = Engine(Settings(data_dir=tmp_path / "data", model=HASHING))
    engine.upsert([parse_article(article("ukr-4", "Acordul pentru armistițiul din Marea Neagră, semnat",
                                         "Ucraina și Rusia au semnat armistițiul pe mare; porturile exportă cereale.",
                                         "2025-04-03T10:00:00+00:00"))])  # stored; no list knows it yet
    assert "ukr-4" in [i["id"] for i in json.loads(run("related", "ukr-3", "--json").stdout)]


def test_a_bad_index_or_warm_start_setting_is_one_line(tmp_path, stories):
    for name, value, field in (("RECOMMENDER_ANN__KIND", "fast", "ann.kind"),
                               ("RECOMMENDER_WARM_AFTER_SECONDS", "-1", "warm_after_seconds")):
        result = CliRunner().invoke(main, ["ingest", str(stories)], env={"RECOMMENDER_DATA_DIR": str(tmp_path), name: value})
        assert result.exit_code == 1 and result.output.startswith(f"error: invalid setting: {field}"), result.output
        assert not (tmp_path / "store.sqlite").exists()  # refused before anything was written


def test_a_full_disk_is_one_line_with_what_to_do(run, tmp_path, monkeypatch):
    from recommender.serving.engine import Engine

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "data" / "store.sqlite-wal"))

    monkeypatch.setattr(Engine, "ingest", full)
    result = CliRunner().invoke(main, ["ingest", str(write_jsonl(tmp_path / "a.jsonl", [article("1", "Unu")]))],
                                env={"RECOMMENDER_DATA_DIR": str(tmp_path / "data"), "RECOMMENDER_MODEL": HASHING})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: no space left on the device" in result.stderr and "store.sqlite-wal" in result.stderr
    assert "hint: free space on the data dir's disk and rerun" in result.stderr


def test_help_shows_the_ranking_defaults_the_settings_use():
    from recommender.settings import RankingSettings

    shown = " ".join(CliRunner().invoke(main, ["related", "--help"]).output.split())
    defaults = RankingSettings()
    for option, value in (("--min-score FLOAT", defaults.min_score), ("--diversity FLOAT", defaults.diversity),
                          ("--k INTEGER", defaults.k)):
        after = shown[shown.index(option):]
        assert f"[default: {value};" in after[:220], option


@pytest.mark.parametrize("command", [["related", "x"], ["related", "--title", "Bugetul"], ["tune"],
                                     ["profile", "list"], ["profile", "show"], ["profile", "activate", "p1"],
                                     ["profile", "rollback"]])
def test_a_read_on_a_mistyped_data_dir_says_so_and_creates_nothing(tmp_path, command):
    missing = tmp_path / "nope"
    result = CliRunner().invoke(main, [*command, "--data-dir", str(missing)])
    assert result.exit_code != 0 and f"no store in {missing}" in result.output, result.output
    assert "Traceback" not in result.output and not missing.exists()


def test_a_file_that_is_not_jsonl_is_named_once_and_a_json_array_is_read(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nSome prose.\n{not json either}\n", encoding="utf-8")
    result = run("ingest", str(readme))
    assert result.exit_code == 3 and result.stderr.count("rejected") == 1
    assert f"rejected {readme}:1: not a JSONL file" in result.stderr
    array = tmp_path / "export.json"
    array.write_text(json.dumps([article("1", "Bugetul pe 2026"), article("2", "Deficitul"), {"id": "3"}]),
                     encoding="utf-8")
    read = run("ingest", str(array))
    assert "added 2, updated 0, unchanged 0, rejected 1" in read.stdout
    assert f"rejected {array}:3: title is required" in read.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    nothing = run("ingest", str(empty))
    assert nothing.exit_code == 3 and "the file is empty" in nothing.stderr
