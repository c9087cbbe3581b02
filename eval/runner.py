"""Run strategies × models over a labelled dataset and compute every metric."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from eval.dataset import Dataset, load_dataset
from eval.metrics import bootstrap_ci, hit_at_k, ndcg_at_k, precision_at_k, recall_at_k, reciprocal_rank
from eval.strategies import RANKERS, STRATEGIES, Context
from recommender.errors import InvalidQuery
from recommender.index.state import IndexState
from recommender.ranking.rules import rescale
from recommender.serving.engine import Engine
from recommender.settings import Settings


@dataclass
class Run:
    """The lists one strategy gave with one model: query id -> suggested ids."""

    strategy: str
    model: str
    lists: dict[str, list[str]]
    latencies: list[float]


@dataclass
class Result:
    strategy: str
    model: str
    k: int
    metrics: dict[str, float]
    ci: dict[str, list[float]]


@dataclass
class Evaluation:
    dataset: str
    label_field: str | None
    kinds: list[str]
    queries: int
    results: list[Result] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    rejected: int = 0
    ks: list[int] = field(default_factory=list)
    labelled: Dataset | None = None  # for the report; not serialised
    states: dict[str, IndexState] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "queries": self.queries,
            "label_field": self.label_field,
            "labels": self.kinds,
            "rejected_lines": self.rejected,
            "results": [{"strategy": r.strategy, "model": r.model, "k": r.k, "metrics": r.metrics, "ci": r.ci}
                        for r in self.results],
        }


def validate(strategies: list[str], ks: list[int]) -> None:
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise InvalidQuery(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    if not ks or any(k <= 0 for k in ks):
        raise InvalidQuery("every --k must be 1 or more")


def evaluate(dataset_path: str, settings: Settings, models: list[str], strategies: list[str], ks: list[int],
             past_only: bool = False, limit_queries: int | None = None, options: dict | None = None,
             ann: bool = False, progress: bool = False, log: Callable[[str], None] = lambda _: None,
             since: datetime | None = None) -> Evaluation:
    """`since`: score only queries published on or after it (the whole file stays the
    candidate pool), so "learned on the past, scored on the future" is one flag."""
    validate(strategies, ks)
    from recommender.store.models import model_name

    for model in models:
        model_name(model)  # a bad model string fails before any work
    dataset = load_dataset(dataset_path)
    ks = sorted(set(ks))
    evaluation = Evaluation(dataset_path, dataset.label_field, dataset.kinds(), 0, rejected=len(dataset.rejected),
                            ks=ks, labelled=dataset)
    for model in models:
        engine = Engine(settings.model_copy(update={"model": model}))
        log(f"{model}: ingesting {dataset_path} (cached vectors are reused)")
        engine.ingest([dataset_path], progress=progress, index=False)
        state = engine.indexes.build_state("eval", engine.embedder.dimension)
        evaluation.states[engine.model] = state
        queries = pick_queries(dataset, state, limit_queries, since)
        evaluation.queries = len(queries)
        for strategy in strategies:
            log(f"{model}: {strategy} over {len(queries)} queries")
            run = run_strategy(engine, state, strategy, queries, max(ks), past_only, options or {})
            evaluation.runs.append(run)
            for k in ks:
                evaluation.results.append(score_run(dataset, engine, state, run, k, past_only))
            if strategy == "default" and "related" in dataset.kinds():
                by_source = source_recall(engine, state, dataset, queries, past_only, options or {})
                for result in evaluation.results[-len(ks):]:
                    result.metrics.update(by_source)
            if ann and strategy == "dense":
                for k in ks:
                    dense = next(r for r in evaluation.results
                                 if (r.strategy, r.model, r.k) == ("dense", engine.model, k))
                    dense.metrics[f"ann_recall@{k}"] = ann_recall(state, run, k, engine)
    return evaluation


def source_recall(engine: Engine, state: IndexState, dataset: Dataset, queries: list[str], past_only: bool,
                  options: dict) -> dict[str, float]:
    """Each candidate source's recall of the labelled related articles (what share of
    them it brings to the ranking at all), and that of all sources together."""
    from recommender.ranking import pipeline
    from recommender.ranking.candidates import SOURCES
    from recommender.ranking.rules import Filters

    opts = engine.ranking(**{**options, "k": 10})
    found: dict[str, list[float]] = {name: [] for name in (*SOURCES, "all")}
    for query in queries:
        relevant = {state.by_id[r] for r in dataset.relevant("related", query)
                    if r in state.by_id and (not past_only or _not_after(dataset, r, query))}
        if not relevant:
            continue
        gathered = pipeline.gather(state, engine.seed(state, query), Filters(past_only=past_only), opts)
        for name, nums in (*gathered.by_source.items(), ("all", gathered.nums)):
            found[name].append(len(relevant & set(nums.tolist())) / len(relevant))
    per = opts.candidates
    return {f"candidates@{per}:{name}": round(float(np.mean(values)), 4) for name, values in found.items() if values}


def pick_queries(dataset: Dataset, state: IndexState, limit: int | None, since: datetime | None = None) -> list[str]:
    queries = [q for q in dataset.queries() if q in state.by_id and state.by_id[q] in state.vectors]
    if since is not None:
        queries = [q for q in queries if (when := dataset.articles[q].published_at) is not None and when >= since]
    if limit and limit < len(queries):
        keep = set(np.random.default_rng(0).choice(len(queries), size=limit, replace=False).tolist())
        queries = [q for i, q in enumerate(queries) if i in keep]
    return queries


def run_strategy(engine: Engine, state: IndexState, strategy: str, queries: list[str], k: int,
                 past_only: bool, options: dict) -> Run:
    ctx = Context(engine, state, k, past_only, options)
    ranker = RANKERS[strategy]
    lists, latencies = {}, []
    for query in queries:
        seed = engine.seed(state, query)
        started = time.perf_counter()
        nums = ranker(ctx, seed)
        latencies.append(time.perf_counter() - started)
        lists[query] = [state.infos[n].id for n in nums]
    return Run(strategy, engine.model, lists, latencies)


def score_run(dataset: Dataset, engine: Engine, state: IndexState, run: Run, k: int, past_only: bool) -> Result:
    per_query: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        per_query.setdefault(name, []).append(value)

    for query, ranked in run.lists.items():
        ranked = ranked[:k]
        for kind in dataset.kinds():
            relevant = dataset.relevant(kind, query)
            if past_only:
                relevant = {r for r in relevant if _not_after(dataset, r, query)}
            if kind == "label":
                if dataset.articles[query].label:
                    add(f"P@{k}", precision_at_k(ranked, relevant, k))
                continue
            if not relevant:
                continue
            prefix = "" if kind == "related" else "story-"
            add(f"{prefix}hit@{k}", hit_at_k(ranked, relevant, k))
            add(f"{prefix}recall@{k}", recall_at_k(ranked, relevant, k))
            add(f"{prefix}MRR", reciprocal_rank(ranked, relevant, k))
            add(f"{prefix}nDCG@{k}", ndcg_at_k(ranked, relevant, k))
        props = list_properties(state, query, ranked, engine.settings.ranking.duplicate_threshold)
        add(f"short_lists@{k}", float(len(ranked) < k))
        add(f"near_dup_rate@{k}", props["near_dup"])
        if props["diversity"] is not None:
            add(f"diversity@{k}", props["diversity"])
        per_query.setdefault("_gaps", []).extend(props["gaps"])
    metrics: dict[str, float] = {}
    ci: dict[str, list[float]] = {}
    gaps = per_query.pop("_gaps", [])
    for name, values in per_query.items():
        metrics[name] = round(float(np.mean(values)), 4)
        ci[name] = [round(v, 4) for v in bootstrap_ci(np.asarray(values))]
    suggested = {item for ranked in run.lists.values() for item in ranked[:k]}
    metrics[f"coverage@{k}"] = round(len(suggested) / max(len(state.infos), 1), 4)
    if gaps:
        metrics[f"age_gap_days@{k}"] = round(float(np.median(gaps)), 2)
    latencies_ms = np.asarray(run.latencies) * 1000
    metrics["latency_ms"] = round(float(latencies_ms.mean()), 3) if len(latencies_ms) else 0.0
    metrics["latency_p95_ms"] = round(float(np.percentile(latencies_ms, 95)), 3) if len(latencies_ms) else 0.0
    return Result(run.strategy, run.model, k, metrics, ci)


def _not_after(dataset: Dataset, candidate: str, query: str) -> bool:
    c, q = dataset.articles[candidate].published_at, dataset.articles[query].published_at
    return c is not None and (q is None or c <= q)


def list_properties(state: IndexState, query: str, ranked: list[str], threshold: float) -> dict:
    """Near-duplicate share, intra-list diversity (mean 1 - cosine) and age gaps of one list."""
    seed_num = state.by_id[query]
    nums = [seed_num] + [state.by_id[i] for i in ranked]
    vectors = state.vectors.reconstruct(np.asarray(nums))
    sims = rescale(vectors @ vectors.T, state.meta.random_pair_mean)
    hashes = [state.infos[n].content_hash for n in nums]
    dups = sum(1 for i in range(1, len(nums))
               if any(sims[i, j] >= threshold or hashes[i] == hashes[j] for j in range(i)))
    items = vectors[1:]
    diversity = None
    if len(items) >= 2:
        raw = items @ items.T
        upper = raw[np.triu_indices(len(items), 1)]
        diversity = float(np.mean(1 - upper))
    seed_time = state.infos[seed_num].published_at
    gaps = [abs((when - seed_time).total_seconds()) / 86400
            for n in nums[1:] if seed_time and (when := state.infos[n].published_at)]
    return {"near_dup": dups / len(ranked) if ranked else 0.0, "diversity": diversity, "gaps": gaps}


def ann_recall(state: IndexState, run: Run, k: int, engine: Engine) -> float:
    """recall@k of an HNSW index against the exact one, over the same queries."""
    import faiss

    nums = state.vectors.ids()
    vectors = state.vectors.reconstruct(nums)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    queries = list(run.lists)
    qvec = state.vectors.reconstruct(np.asarray([state.by_id[q] for q in queries]))
    _, approx = hnsw.search(qvec, k + 1)
    _, exact = state.vectors.search(qvec, k + 1)
    overlaps = []
    for row, query in enumerate(queries):
        seed = state.by_id[query]
        a = [nums[i] for i in approx[row] if i >= 0 and nums[i] != seed][:k]
        e = [n for n in exact[row] if n >= 0 and n != seed][:k]
        overlaps.append(len(set(a) & set(e)) / max(len(e), 1))
    return round(float(np.mean(overlaps)), 4)


def default_out_dir(dataset_path: str) -> Path:
    return Path("eval-out") / Path(dataset_path).stem
