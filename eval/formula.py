"""The ranking issue's reference formula against the engine's strategies, on editors' links.

    python eval/formula.py eval/data/zf-2020-2021.jsonl --data-dir eval/cache/zf --since 2021-01-01

For every query published on or after --since that links to earlier articles of
the file, candidates are every article published before it (past-only), and:

    s = 0.3 z(TF-IDF cosine) + 0.7 z(dense cosine) - log2(1 + |days apart| / 7)

with z the z-score over the query's candidates; the top k by s is the list.
TF-IDF is over the store's stemmed, diacritic-free terms (what BM25 sees),
dense is the cached vectors of --model. Beside it, the engine's dense,
lexical and default strategies on the same queries and vectors, so the table
is one run. Prints hit@k and MRR@k with bootstrap intervals.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import numpy as np

from eval.dataset import load_dataset
from eval.metrics import bootstrap_ci, hit_at_k, reciprocal_rank
from eval.runner import pick_queries, run_strategy
from recommender.serving.engine import Engine
from recommender.settings import Settings

DAY = 86400.0


def tfidf_matrix(state, nums: np.ndarray):
    """L2-normalised TF-IDF rows for `nums`, over the lexical index's vocabulary."""
    from scipy.sparse import csr_matrix

    lexical = state.lexical
    docs = [lexical.doc(n) or (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) for n in nums]
    indptr = np.cumsum([0] + [len(d[0]) for d in docs])
    cols = np.concatenate([d[0] for d in docs])
    tf = np.concatenate([d[1] for d in docs]).astype(np.float64)
    df = np.bincount(cols, minlength=len(lexical.vocab)).astype(np.float64)
    idf = np.log((1 + len(nums)) / (1 + df)) + 1
    matrix = csr_matrix((tf * idf[cols], cols, indptr), shape=(len(nums), len(lexical.vocab)))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0] = 1
    return csr_matrix(matrix.multiply(1 / norms[:, None]))


def zscore(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else values * 0


SOURCES = ("dense", "lexical", "time")


def formula_lists(state, queries: list[str], k: int, pool: int = 100) -> tuple[dict[str, list[str]], dict]:
    """The formula's top k per query, and each candidate source's top `pool` (dense
    cosine, TF-IDF cosine, closeness in time) among the query's past articles."""
    nums = state.vectors.ids()
    vectors = state.vectors.reconstruct(nums)
    tfidf = tfidf_matrix(state, nums)
    times = np.array([(state.infos[int(n)].published_at.timestamp() if state.infos[int(n)].published_at else np.nan)
                      for n in nums])
    row_of = {int(n): i for i, n in enumerate(nums)}
    lists: dict[str, list[str]] = {}
    sources: dict[str, dict[str, set[str]]] = {name: {} for name in SOURCES}
    for query in queries:
        row = row_of[state.by_id[query]]
        past = np.flatnonzero((times <= times[row]) & (np.arange(len(nums)) != row))
        if len(past) == 0:
            lists[query] = []
            for name in SOURCES:
                sources[name][query] = set()
            continue
        dense = vectors[past] @ vectors[row]
        lexical = (tfidf[past] @ tfidf[row].T).toarray().ravel()
        days = np.abs(times[past] - times[row]) / DAY
        score = 0.3 * zscore(lexical) + 0.7 * zscore(dense) - np.log2(1 + days / 7)
        ids = lambda order, past=past: [state.infos[int(nums[i])].id for i in past[order]]  # noqa: E731
        lists[query] = ids(np.argsort(-score, kind="stable")[:k])
        for name, values in (("dense", -dense), ("lexical", -lexical), ("time", days)):
            sources[name][query] = set(ids(np.argsort(values, kind="stable")[:pool]))
    return lists, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--since", required=True, help="first query date, YYYY-MM-DD")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    since = datetime.strptime(args.since, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    dataset = load_dataset(args.dataset)
    engine = Engine(Settings(data_dir=args.data_dir, model=args.model))
    engine.ingest([args.dataset], index=False)
    state = engine.indexes.build_state("eval", engine.embedder.dimension)
    queries = [q for q in pick_queries(dataset, state, None, since)
               if any(_before(dataset, r, q) for r in dataset.relevant("related", q))]
    formula, sources = formula_lists(state, queries, args.k)
    runs = {"formula": formula}
    for strategy in ("lexical", "dense", "default"):
        runs[strategy] = run_strategy(engine, state, strategy, queries, args.k, True, {}).lists
    print(f"{len(queries)} queries since {args.since}, past-only candidates, k={args.k}, {args.model}")
    print(f"| ranker | hit@{args.k} | MRR@{args.k} |\n|---|---|---|")
    for name, lists in runs.items():
        hits, rrs = [], []
        for query in queries:
            relevant = {r for r in dataset.relevant("related", query) if _before(dataset, r, query)}
            hits.append(hit_at_k(lists[query], relevant, args.k))
            rrs.append(reciprocal_rank(lists[query], relevant, args.k))
        h, r = np.array(hits), np.array(rrs)
        (hl, hh), (rl, rh) = bootstrap_ci(h), bootstrap_ci(r)
        print(f"| {name} | {h.mean():.3f} [{hl:.3f}, {hh:.3f}] | {r.mean():.3f} [{rl:.3f}, {rh:.3f}] |")
    print("\nCandidate recall@100: the share of a query's linked past articles each source brings in")
    print("| source | recall@100 |\n|---|---|")
    linked = {q: {r for r in dataset.relevant("related", q) if _before(dataset, r, q)} for q in queries}
    for name in (*SOURCES, "dense + lexical + time"):
        found = [(sources[name][q] if name in sources else set().union(*(sources[s][q] for s in SOURCES)))
                 for q in queries]
        recall = np.mean([len(f & linked[q]) / len(linked[q]) for f, q in zip(found, queries)])
        print(f"| {name} | {recall:.3f} |")


def _before(dataset, candidate: str, query: str) -> bool:
    c, q = dataset.articles[candidate].published_at, dataset.articles[query].published_at
    return c is not None and q is not None and c <= q


if __name__ == "__main__":
    main()
