"""How much each default of the ranking moves the metrics: one change at a time.

    python eval/ablation.py eval/data/moroco.jsonl --data-dir eval/cache/moroco --out eval/results/moroco

Runs the default ranking as shipped, then variants that change one setting
(lexical weight, minimum score, diversity, duplicate threshold, time prior),
plus dense and lexical alone for reference, all with the same model and the
same cached vectors. Writes ablation.md and ablation.json under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.runner import evaluate
from recommender.settings import RankingSettings, Settings

VARIANTS: list[tuple[str, dict]] = [
    ("as shipped", {}),
    ("lexical_weight 0 (dense only)", {"lexical_weight": 0.0}),
    ("lexical_weight 0.1", {"lexical_weight": 0.1}),
    ("lexical_weight 0.5", {"lexical_weight": 0.5}),
    ("min_score 0", {"min_score": 0.0}),
    ("min_score 0.25", {"min_score": 0.25}),
    ("diversity 0", {"diversity": 0.0}),
    ("diversity 0.4", {"diversity": 0.4}),
    ("duplicate_threshold 1.0 (off)", {"duplicate_threshold": 1.0}),
    ("time_prior off", {"time_prior": False}),
]
SHOWN = ("P@{k}", "short_lists@{k}", "near_dup_rate@{k}", "diversity@{k}", "coverage@{k}", "latency_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--limit-queries", type=int, default=None)
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir, model=args.model)
    rows: list[tuple[str, dict, dict]] = []
    for strategy in ("dense", "lexical"):
        rows.append((strategy, {}, run(args, settings, strategy, {})))
    for name, options in VARIANTS:
        rows.append((f"default, {name}", options, run(args, settings, "default", options)))
    write(args, rows)


def run(args, settings: Settings, strategy: str, options: dict):
    evaluation = evaluate(args.dataset, settings, [args.model], [strategy], [args.k],
                          limit_queries=args.limit_queries, options=options)
    print(f"{strategy} {options}: P@{args.k} {evaluation.results[0].metrics.get(f'P@{args.k}')}", flush=True)
    return evaluation.results[0]


def write(args, rows) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    k = args.k
    names = [s.format(k=k) for s in SHOWN]
    defaults = RankingSettings().model_dump()
    lines = [f"# Ablation of the default ranking on `{Path(args.dataset).name}` ({args.model}, k={k})", "",
             "Shipped defaults: " + ", ".join(f"{key}={value}" for key, value in defaults.items() if key != "k"), "",
             "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, _, result in rows:
        cells = []
        for name in names:
            value = result.metrics.get(name)
            ci = result.ci.get(name)
            cells.append("" if value is None else (f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and name.startswith("P@")
                                                   else f"{value:g}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    (args.out / "ablation.json").write_text(json.dumps(
        [{"variant": label, "options": options, "metrics": result.metrics, "ci": result.ci} for label, options, result in rows],
        indent=2))
    print(f"wrote {args.out / 'ablation.md'}")


if __name__ == "__main__":
    main()
