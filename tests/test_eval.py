import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from eval.dataset import load_dataset
from eval.metrics import bootstrap_ci, hit_at_k, ndcg_at_k, precision_at_k, recall_at_k, reciprocal_rank
from eval.runner import evaluate
from eval.strategies import STRATEGIES
from recommender.cli import main
from recommender.errors import InvalidQuery, NoLabels
from recommender.settings import Settings
from tests.conftest import HASHING, STORY_ARTICLES, write_jsonl

RANKED = ["a", "b", "c", "d", "e"]


def test_precision_counts_k_in_the_denominator():
    assert precision_at_k(RANKED, {"b", "d", "z"}, 5) == pytest.approx(2 / 5)
    assert precision_at_k(["a"], {"a"}, 5) == pytest.approx(1 / 5), "a short list is not rewarded"


def test_hit_recall_mrr():
    assert hit_at_k(RANKED, {"c"}, 2) == 0.0 and hit_at_k(RANKED, {"c"}, 3) == 1.0
    assert recall_at_k(RANKED, {"b", "d", "z"}, 4) == pytest.approx(2 / 3)
    assert reciprocal_rank(RANKED, {"c", "e"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(RANKED, {"e"}, k=3) == 0.0
    assert reciprocal_rank(RANKED, {"z"}) == 0.0


def test_ndcg_by_hand():
    # relevant at ranks 2 and 4 of 5, three relevant in all:
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKED, {"b", "d", "z"}, 5) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(RANKED, {"a"}, 5) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, {"z"}, 5) == 0.0


def test_ties_are_broken_by_article_number_so_lists_are_stable(tmp_path, settings):
    # Two candidates with the same text tie exactly under every strategy; the lower number wins.
    records = [
        {"id": "q", "title": "Buget și deficit", "topic": "ECO"},
        {"id": "t1", "title": "Deficit bugetar", "body": "Deficitul crește.", "topic": "ECO"},
        {"id": "t2", "title": "Deficit bugetar", "body": "Deficitul crește.", "topic": "POL"},
    ]
    path = write_jsonl(tmp_path / "ties.jsonl", records)
    evaluation = evaluate(str(path), settings, [HASHING], ["dense", "lexical"], [1])
    for run in evaluation.runs:
        assert run.lists["q"] == ["t1"], run.strategy
    # q -> t1 (ECO: hit, not half a hit for the tie); t1 and t2 share their text, so
    # each is the other's duplicate and both get q: t1 hits (ECO), t2 misses (POL).
    result = next(r for r in evaluation.results if r.strategy == "dense")
    assert result.metrics["P@1"] == pytest.approx(2 / 3, abs=1e-4)


def test_queries_without_relevant_items_are_skipped(tmp_path, settings):
    records = [
        {"id": "a", "title": "Unu", "related": ["b"]},
        {"id": "b", "title": "Doi", "related": ["missing-id"]},  # nothing relevant in the dataset
        {"id": "c", "title": "Trei"},
    ]
    path = write_jsonl(tmp_path / "r.jsonl", records)
    evaluation = evaluate(str(path), settings, [HASHING], ["recency"], [2])
    result = evaluation.results[0]
    assert evaluation.queries == 2  # a and b carry a label; c does not
    assert result.metrics["hit@2"] == 1.0  # only query a counts: b is among its two
    assert "P@2" not in result.metrics, "no topic or section: no same-label precision"


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_queries():
    values = np.random.default_rng(1).random(400)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi
    lo_small, hi_small = bootstrap_ci(values[:40])
    assert hi - lo < hi_small - lo_small
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_dataset_without_labels_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"id": "a", "title": "Fără etichete"}])
    with pytest.raises(NoLabels, match="no usable label"):
        load_dataset(path)


def test_section_is_the_label_when_there_is_no_topic(tmp_path, stories):
    assert load_dataset(stories).label_field == "section"


def test_bad_strategy_and_k(stories, settings):
    with pytest.raises(InvalidQuery, match="unknown strategy"):
        evaluate(str(stories), settings, [HASHING], ["magic"], [5])
    with pytest.raises(InvalidQuery, match="--k"):
        evaluate(str(stories), settings, [HASHING], ["dense"], [0])


@pytest.fixture
def labelled(tmp_path):
    records = [dict(a, topic=a["section"], story=a["id"].split("-")[0]) for a in STORY_ARTICLES]
    records[0]["related"] = ["ukr-2", "ukr-3"]
    return write_jsonl(tmp_path / "labelled.jsonl", records + ["{broken"])


def test_json_output_schema(labelled, tmp_path):
    result = CliRunner().invoke(main, ["eval", str(labelled), "--model", HASHING, "--k", "2", "--k", "3",
                                       "--data-dir", str(tmp_path / "d"), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dataset"] == str(labelled) and data["queries"] == 7 and data["rejected_lines"] == 1
    assert {r["strategy"] for r in data["results"]} == set(STRATEGIES)
    assert len(data["results"]) == len(STRATEGIES) * 2
    default = next(r for r in data["results"] if r["strategy"] == "default" and r["k"] == 3)
    assert default["model"] == HASHING
    for name in ("P@3", "hit@3", "recall@3", "MRR", "nDCG@3", "story-hit@3", "coverage@3",
                 "diversity@3", "near_dup_rate@3", "short_lists@3", "age_gap_days@3", "latency_ms"):
        assert isinstance(default["metrics"][name], (int, float)), name
    lo, hi = default["ci"]["P@3"]
    assert lo <= default["metrics"]["P@3"] <= hi
    assert "P@2" not in default["metrics"]


def test_two_strategies_end_to_end_write_a_report_with_plots(labelled, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["eval", str(labelled), "--model", HASHING, "--strategy", "lexical",
                                       "--strategy", "default", "--k", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| lexical | hashing:256 |" in report and "| default | hashing:256 |" in report
    for png in ("metrics_by_strategy.png", "p_at_k.png", "score_distribution.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"({png})" in report
    assert "<table>" in (out / "report.html").read_text()
    assert (out / "worst_queries.csv").read_text().startswith("strategy,model,query")
    assert "Kievul" not in report, "no dataset text in reports"


def test_cli_errors_are_one_line(stories, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(main, ["eval", str(stories), "--strategy", "magic", "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1 and bad.output.startswith("error: unknown strategy magic")
    unlabelled = write_jsonl(tmp_path / "u.jsonl", [{"id": "a", "title": "t"}])
    result = runner.invoke(main, ["eval", str(unlabelled), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no usable label" in result.output
    zero = runner.invoke(main, ["eval", str(stories), "--k", "0", "--data-dir", str(tmp_path)])
    assert zero.exit_code == 1 and "--k" in zero.output
    model = runner.invoke(main, ["eval", str(stories), "--model", "nope", "--data-dir", str(tmp_path)])
    assert model.exit_code == 1 and "unknown model" in model.output


STS = "genre\tsource_file\tyear\tscore\tsentence1_ro\tsentence2_ro\tsentence1_en\tsentence2_en\n" + "\n".join([
    "main-news\tx\t1\t5.0\tGuvernul a adoptat bugetul.\tBugetul a fost adoptat de guvern.\ta\tb",
    "main-news\tx\t1\t0.5\tGuvernul a adoptat bugetul.\tFCSB a câștigat derby-ul.\ta\tb",
    "main-news\tx\t1\t3.0\tDeficitul bugetar crește.\tBugetul are un deficit mare.\ta\tb",
    "main-captions\tx\t1\t4.0\tO fată se piaptănă.\tO fată își aranjează părul.\ta\tb",
])


def test_eval_sts_spearman_and_cache(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text(STS + "\n")
    runner = CliRunner()
    args = ["eval-sts", str(path), "--model", "hashing:512", "--genre", "main-news", "--data-dir", str(tmp_path / "c"), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["pairs"] == 3 and row["model"] == "hashing:512" and -1 <= row["spearman"] <= 1
    assert row["spearman"] == pytest.approx(1.0)  # word overlap orders these three pairs right
    assert json.loads(runner.invoke(main, args).stdout) == [row]
    bad = runner.invoke(main, ["eval-sts", str(tmp_path / "missing.tsv"), "--model", "hashing:8",
                               "--data-dir", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_an_explicit_lexical_weight_of_zero_is_kept(labelled, tmp_path, monkeypatch):
    from eval import strategies
    from eval.runner import evaluate as run_eval

    weights = []
    real = strategies.pipeline.relevance

    def spy(state, seed, filters, k, lexical_weight=0.0):
        weights.append(lexical_weight)
        return real(state, seed, filters, k, lexical_weight)

    monkeypatch.setattr(strategies.pipeline, "relevance", spy)
    settings = Settings(data_dir=tmp_path / "z", model=HASHING)
    run_eval(str(labelled), settings, [HASHING], ["hybrid"], [3], options={"lexical_weight": 0.0})
    assert set(weights) == {0.0}
    weights.clear()
    run_eval(str(labelled), settings, [HASHING], ["hybrid"], [3])
    assert set(weights) == {strategies.HYBRID_WEIGHT}


def test_report_says_when_p_at_k_cannot_reach_one_and_keeps_every_curve_and_bar_visible(labelled, tmp_path,
                                                                                         monkeypatch):
    from matplotlib.transforms import Bbox

    from eval import report
    from eval.runner import evaluate as run_eval

    figures = {}

    def keep(fig, path):
        fig.canvas.draw()
        figures[path.name] = fig
        return path

    monkeypatch.setattr(report, "_save", keep)
    evaluation = run_eval(str(labelled), Settings(data_dir=tmp_path / "d", model=HASHING), [HASHING],
                          ["dense", "hybrid", "default"], [3, 5])
    report.write_report(evaluation, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    # sections of 4 (externe), 2 (sport) and 1 (lifestyle, arhiva): P@5 cannot reach 1
    assert "P@5 cannot reach 1" in text and "best possible P@5" in text

    bars_fig = figures["metrics_by_strategy.png"]
    ax = bars_fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches]
    assert not any(Bbox.intersection(legend, b) for b in bars if b.width and b.height), "legend over bars"

    lines = [line for line in figures["p_at_k.png"].axes[0].get_lines() if line.get_label().startswith(("dense", "hybrid", "default"))]
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == len(lines) == 3, "equal curves must still be told apart"


def test_since_scores_only_later_queries_and_keeps_every_candidate(labelled, tmp_path):
    from datetime import datetime, timezone

    from eval.runner import evaluate as run_eval

    settings = Settings(data_dir=tmp_path / "s", model=HASHING)
    since = datetime(2025, 3, 5, tzinfo=timezone.utc)
    later = run_eval(str(labelled), settings, [HASHING], ["dense"], [3], since=since)
    (run,) = later.runs
    assert set(run.lists) == {"ukr-2", "ukr-3", "fot-2", "vac-1"}
    assert "ukr-1" in run.lists["ukr-2"]  # an earlier article is still a candidate
    result = CliRunner().invoke(main, ["eval", str(labelled), "--model", HASHING, "--since", "2025-03-05",
                                       "--strategy", "dense", "--data-dir", str(tmp_path / "c"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["queries"] == 4
