"""Paired bootstrap of the P@k difference between two configurations, query by query.

    python eval/paired.py eval/data/moroco.jsonl --data-dir eval/cache/moroco \\
        --a dense --b hybrid --b-options '{"lexical_weight": 0.3}'

Overlapping confidence intervals of two means do not say whether one ranker
beats the other on the same queries; the interval of the per-query difference does.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from eval.dataset import load_dataset
from eval.metrics import bootstrap_ci, precision_at_k
from eval.runner import pick_queries, run_strategy
from recommender.engine import Engine
from recommender.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--a", default="dense")
    parser.add_argument("--a-options", type=json.loads, default={})
    parser.add_argument("--b", default="hybrid")
    parser.add_argument("--b-options", type=json.loads, default={})
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    engine = Engine(Settings(data_dir=args.data_dir, model=args.model))
    engine.ingest([args.dataset], index=False)
    state = engine.indexes.build_state("eval", engine.embedder.dimension)
    queries = [q for q in pick_queries(dataset, state, None) if dataset.articles[q].label]

    def per_query(strategy: str, options: dict) -> np.ndarray:
        run = run_strategy(engine, state, strategy, queries, args.k, False, options)
        return np.array([precision_at_k(run.lists[q], dataset.relevant("label", q), args.k) for q in queries])

    a, b = per_query(args.a, args.a_options), per_query(args.b, args.b_options)
    lo, hi = bootstrap_ci(b - a)
    print(f"{args.b} {args.b_options} minus {args.a} {args.a_options}, P@{args.k} over {len(queries)} queries: "
          f"{(b - a).mean():+.4f} [{lo:+.4f}, {hi:+.4f}] (a {a.mean():.4f}, b {b.mean():.4f})")


if __name__ == "__main__":
    main()
