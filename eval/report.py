"""report.md, report.html, PNG plots and the worst-queries CSV of an evaluation.

Only numbers, ids and labels are written: no article text, so reports of
licensed datasets can be committed.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

import numpy as np

from eval.dataset import Dataset
from eval.metrics import ndcg_at_k
from eval.runner import Evaluation, Result
from recommender.index.state import IndexState
from recommender.ranking.rules import rescale

QUALITY_PREFIXES = ("P@", "hit@", "recall@", "MRR", "nDCG@", "story-")
WORST_PER_RUN = 30


def quality_names(results: list[Result], k: int) -> list[str]:
    names: list[str] = []
    for r in results:
        for name in r.metrics:
            if name.startswith(QUALITY_PREFIXES) and (name.endswith(f"@{k}") or "@" not in name) and name not in names:
                names.append(name)
    return names


def other_names(results: list[Result], k: int) -> list[str]:
    names: list[str] = []
    for r in results:
        for name in r.metrics:
            if not name.startswith(QUALITY_PREFIXES) and (name.endswith(f"@{k}") or "@" not in name) and name not in names:
                names.append(name)
    return names


def table(results: list[Result], names: list[str], with_ci: bool) -> list[list[str]]:
    rows = [["strategy", "model", *names]]
    for r in results:
        cells = [r.strategy, r.model]
        for name in names:
            value = r.metrics.get(name)
            if value is None:
                cells.append("")
            elif with_ci and name in r.ci:
                lo, hi = r.ci[name]
                cells.append(f"{value:.3f} [{lo:.3f}, {hi:.3f}]")
            else:
                cells.append(f"{value:g}")
        rows.append(cells)
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(evaluation: Evaluation, out: Path) -> list[Path]:
    dataset, states = evaluation.labelled, evaluation.states
    if dataset is None:
        raise ValueError("a report needs the evaluation's labelled dataset (Evaluation.labelled)")
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_metrics(evaluation, out / "metrics_by_strategy.png"),
        plot_p_at_k(evaluation, dataset, out / "p_at_k.png"),
        plot_score_distribution(dataset, states, out / "score_distribution.png"),
    ]
    shown = [p for p in plots if p is not None]
    sections = []
    for k in evaluation.ks:
        at_k = [r for r in evaluation.results if r.k == k]
        sections.append((f"Quality at k={k} (mean [95% bootstrap CI])", table(at_k, quality_names(at_k, k), True)))
        sections.append((f"List properties and speed at k={k}", table(at_k, other_names(at_k, k), False)))
    intro = (f"Dataset `{evaluation.dataset}`: {evaluation.queries} queries, labels used: "
             f"{', '.join(evaluation.kinds)} (same-label field: {evaluation.label_field or 'none'}); "
             f"{evaluation.rejected} lines rejected at ingest.")
    note = ceiling_note(evaluation, dataset)
    intro += f" {note}" if note else ""
    md = ["# Evaluation report", "", intro, ""]
    for title, rows in sections:
        md += [f"## {title}", "", markdown_table(rows), ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in shown] + ["", GLOSSARY]
    (out / "report.md").write_text("\n".join(md) + "\n")
    body = [f"<h1>Evaluation report</h1><p>{html.escape(intro)}</p>"]
    body += [f"<h2>{html.escape(t)}</h2>{html_table(rows)}" for t, rows in sections]
    body += ['<h2>Plots</h2>'] + [f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in shown]
    body += [f"<pre>{html.escape(GLOSSARY)}</pre>"]
    (out / "report.html").write_text(HTML_PAGE.format(body="\n".join(body)))
    write_worst_queries(evaluation, dataset, out / "worst_queries.csv")
    return [out / "report.md", out / "report.html", out / "worst_queries.csv", *shown]


def plot_metrics(evaluation: Evaluation, path: Path) -> Path | None:
    plt = _pyplot()
    k = evaluation.ks[0]
    at_k = [r for r in evaluation.results if r.k == k]
    names = quality_names(at_k, k)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(at_k)), 4))
    width = 0.8 / len(names)
    labels = [f"{r.strategy}\n{r.model}" for r in at_k]
    for i, name in enumerate(names):
        values = [r.metrics.get(name, np.nan) for r in at_k]
        errors = np.array([[v - r.ci.get(name, [v, v])[0], r.ci.get(name, [v, v])[1] - v]
                           for v, r in zip(values, at_k)]).T
        ax.bar(np.arange(len(at_k)) + i * width, values, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks(np.arange(len(at_k)) + width * (len(names) - 1) / 2, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"Quality by strategy at k={k} (95% bootstrap CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    return _save(fig, path)


def plot_p_at_k(evaluation: Evaluation, dataset: Dataset, path: Path) -> Path | None:
    if "label" not in evaluation.kinds:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    top = max(evaluation.ks)
    ks = range(1, top + 1)
    for n, run in enumerate(evaluation.runs):
        curve = []
        for k in ks:
            hits = [sum(dataset.articles[i].label == dataset.articles[q].label for i in ranked[:k]) / k
                    for q, ranked in run.lists.items() if dataset.articles[q].label]
            curve.append(np.mean(hits))
        # Each run its own marker and dash, drawn thinner on top: equal curves stay visible.
        ax.plot(ks, curve, marker=MARKERS[n % len(MARKERS)], linestyle=DASHES[n % len(DASHES)],
                linewidth=2.5 - 1.5 * n / max(len(evaluation.runs), 1), markersize=7 - 3 * n / max(len(evaluation.runs), 1),
                label=f"{run.strategy} ({run.model})")
    queries = next(iter(evaluation.runs)).lists if evaluation.runs else {}
    ceiling = [p_at_k_ceiling(dataset, list(queries), k) for k in ks]
    ax.plot(ks, ceiling, color="grey", linestyle=":", label="best possible (few relevant)")
    ax.set_xlabel("k")
    ax.set_ylabel(f"same-{evaluation.label_field} precision P@k")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("P@k against k")
    return _save(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "x", "P", "*")
DASHES = ("-", "--", "-.", ":")


def p_at_k_ceiling(dataset: Dataset, queries: list[str], k: int) -> float:
    """The best P@k any ranker can reach: a query with fewer than k relevant articles cannot fill k."""
    values = [min(len(dataset.relevant("label", q)), k) / k for q in queries if dataset.articles[q].label]
    return float(np.mean(values)) if values else 1.0


def ceiling_note(evaluation: Evaluation, dataset: Dataset) -> str:
    """Say when P@k cannot reach 1, and how high it can go."""
    if "label" not in evaluation.kinds or not evaluation.runs:
        return ""
    queries = [q for q in evaluation.runs[0].lists if dataset.articles[q].label]
    notes = []
    for k in evaluation.ks:
        short = sum(1 for q in queries if len(dataset.relevant("label", q)) < k)
        if short:
            notes.append(f"P@{k} cannot reach 1: {short} of {len(queries)} queries have fewer than {k} articles "
                         f"with their label; the best possible P@{k} is {p_at_k_ceiling(dataset, queries, k):.3f}.")
    return " ".join(notes)


def plot_score_distribution(dataset: Dataset, states: dict[str, IndexState], path: Path,
                            sample: int = 300) -> Path | None:
    """Rescaled cosine of relevant vs non-relevant pairs, for each model."""
    kind = "related" if dataset.has_related else ("label" if dataset.label_field else "story")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(states), figsize=(5 * len(states), 3.5), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (model, state) in zip(axes[0], states.items()):
        ids = [i for i in dataset.articles if i in state.by_id and state.by_id[i] in state.vectors]
        nums = np.asarray([state.by_id[i] for i in ids])
        vectors = state.vectors.reconstruct(nums)
        picks = rng.choice(len(ids), size=min(sample, len(ids)), replace=False)
        relevant, other = [], []
        for p in picks:
            sims = rescale(vectors @ vectors[p], state.meta.random_pair_mean)
            rel = dataset.relevant(kind, ids[p])
            mask = np.array([i in rel for i in ids])
            mask_self = np.arange(len(ids)) == p
            relevant.extend(sims[mask].tolist())
            other.extend(sims[~mask & ~mask_self].tolist())
        bins = np.linspace(min(other + relevant + [-0.5]), 1, 60)
        ax.hist(other, bins=bins, density=True, alpha=0.5, label="not relevant")
        ax.hist(relevant, bins=bins, density=True, alpha=0.5, label="relevant")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("relevance (0 = random pair, 1 = identical)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Score distribution, relevant = same {kind if kind != 'label' else dataset.label_field}")
    return _save(fig, path)


def write_worst_queries(evaluation: Evaluation, dataset: Dataset, path: Path) -> None:
    """Per strategy and model, the queries that went worst, suggestions beside labels."""
    k = max(evaluation.ks)
    kind = "related" if dataset.has_related else ("label" if dataset.label_field else "story")
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["strategy", "model", "query", "query_label", "score", "suggested (id:label)", "labelled relevant"])
        for run in evaluation.runs:
            rows = []
            for query, ranked in run.lists.items():
                relevant = dataset.relevant(kind, query)
                if not relevant:
                    continue
                score = ndcg_at_k(ranked[:k], relevant, k)
                rows.append((score, query, ranked[:k], relevant))
            rows.sort(key=lambda r: (r[0], r[1]))
            for score, query, ranked, relevant in rows[:WORST_PER_RUN]:
                labelled = sorted(relevant)[:10] if kind != "label" else [f"{len(relevant)} with the same label"]
                writer.writerow([run.strategy, run.model, query, dataset.articles[query].label or "",
                                 f"{score:.3f}", " ".join(f"{i}:{dataset.articles[i].label or '-'}" for i in ranked),
                                 " ".join(labelled)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


GLOSSARY = """Metrics: P@k = share of the first k suggestions with the query's label (k in the denominator);
hit@k, recall@k, MRR, nDCG@k over the labelled `related` ids; story-* the same over articles of the same story;
coverage@k = share of the archive suggested at least once; diversity@k = mean 1 - cosine between suggestions;
near_dup_rate@k = share of suggestions that duplicate the seed or an earlier suggestion;
short_lists@k = share of queries with fewer than k suggestions; age_gap_days@k = median days between seed and suggestion;
latency_ms = mean time to rank one query (embedding excluded); ann_recall@k = HNSW top-k overlap with exact search."""

HTML_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}img{{max-width:100%}}</style></head><body>
{body}
</body></html>
"""
