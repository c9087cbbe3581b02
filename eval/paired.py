"""Paired bootstrap of the difference between two rankings, query by query.

    python eval/paired.py eval/data/moroco.jsonl --data-dir eval/cache/moroco \\
        --a dense --b hybrid --b-options '{"lexical_weight": 0.3}'
    python eval/paired.py eval/data/zf-2020-2021.jsonl --data-dir eval/cache/zf \\
        --since 2021-01-01 --past-only --k 10 --a default --b default --b-profile eval/cache/zf18/profiles/p1.json

Overlapping confidence intervals of two means do not say whether one ranker
beats the other on the same queries; the interval of the per-query difference
does. With "related" labels it reports hit@k and MRR@k (past-only links with
--past-only); with topics, P@k. --a-profile / --b-profile rank "default" with a
ranking profile's weights (a profiles/pN.json file).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from eval.dataset import load_dataset
from eval.metrics import bootstrap_ci, hit_at_k, precision_at_k, reciprocal_rank
from eval.runner import _not_after, pick_queries, run_strategy
from recommender.ranking.profiles import read_profile
from recommender.serving.engine import Engine
from recommender.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--since", default=None, help="score queries published on or after YYYY-MM-DD")
    parser.add_argument("--past-only", action="store_true")
    for side, strategy in (("a", "dense"), ("b", "hybrid")):
        parser.add_argument(f"--{side}", default=strategy)
        parser.add_argument(f"--{side}-options", type=json.loads, default={})
        parser.add_argument(f"--{side}-profile", default=None, help="a ranking profile's JSON file")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    engine = Engine(Settings(data_dir=args.data_dir, model=args.model))
    engine.ingest([args.dataset], index=False)
    state = engine.indexes.build_state("eval", engine.embedder.dimension)
    since = datetime.strptime(args.since, "%Y-%m-%d").replace(tzinfo=timezone.utc) if args.since else None
    related = "related" in dataset.kinds()

    def relevant(query: str) -> set[str]:
        found = dataset.relevant("related" if related else "label", query)
        return {r for r in found if not args.past_only or _not_after(dataset, r, query)}

    queries = [q for q in pick_queries(dataset, state, None, since) if relevant(q)]

    def per_query(strategy: str, options: dict, profile: str | None) -> dict[str, np.ndarray]:
        if profile:
            options = {**options, "weights": read_profile(Path(profile)).weights}
        lists = run_strategy(engine, state, strategy, queries, args.k, args.past_only, options).lists
        if not related:
            return {f"P@{args.k}": np.array([precision_at_k(lists[q], relevant(q), args.k) for q in queries])}
        return {f"hit@{args.k}": np.array([hit_at_k(lists[q], relevant(q), args.k) for q in queries]),
                f"MRR@{args.k}": np.array([reciprocal_rank(lists[q], relevant(q), args.k) for q in queries])}

    a = per_query(args.a, args.a_options, args.a_profile)
    b = per_query(args.b, args.b_options, args.b_profile)
    name_a = " ".join(filter(None, [args.a, json.dumps(args.a_options) if args.a_options else "", args.a_profile]))
    name_b = " ".join(filter(None, [args.b, json.dumps(args.b_options) if args.b_options else "", args.b_profile]))
    print(f"b = {name_b}; a = {name_a}; {len(queries)} queries")
    for metric in a:
        diff = b[metric] - a[metric]
        lo, hi = bootstrap_ci(diff)
        print(f"{metric}: b - a {diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] (a {a[metric].mean():.4f}, "
              f"b {b[metric].mean():.4f})")


if __name__ == "__main__":
    main()
