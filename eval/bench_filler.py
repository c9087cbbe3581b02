"""Filler: how many items of a list come from another story, under each admission rule.

    python eval/bench_filler.py --out eval/results/filler
    python eval/bench_filler.py --stories tests/data/four_stories.jsonl --k 10 \\
        --gate 'old={"min_score": 0.05}' --gate 'new={"min_score": 0.13}'

A story set is JSONL articles with a "story" field (tests/data/four_stories.jsonl:
floods, a teachers' strike, football and energy prices, published side by side
over October 2025). Every article's list at --k is ranked under each gate; the
figures are the share of listed items from another story (the filler), the
share of the article's own story that the list holds (of at most k), and the
number of lists with any filler. The demo archive's diplomacy article is
checked for the bear story the issue reported.

Only the list precision is here; what a gate costs in editors' links is
measured on the ZF development split with eval/paired.py:

    python eval/paired.py eval/data/zf-2020-2021.jsonl --data-dir eval/cache/zf \\
        --since 2021-01-01 --past-only --k 10 --a default --a-options '{"min_score": 0.05}' --b default
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_GATES = {
    "min_score 0.05 (the old default)": {"min_score": 0.05},
    "min_score 0.10": {"min_score": 0.10},
    "min_score 0.13 (the default)": {"min_score": 0.13},
    "min_score 0.15": {"min_score": 0.15},
}
DIPLOMACY, BEAR = "ext-2025-03-13-romania-ucraina-ministru", "med-2025-03-14-urs"


@dataclass
class GateResult:
    gate: str
    options: dict
    lists: int
    items: int
    other_story: float  # share of listed items from another story
    lists_with_filler: int
    own_story_recall: float  # listed pieces of the seed's story / min(k, pieces of it)
    demo_bear_listed: bool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", default="tests/data/four_stories.jsonl")
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--gate", action="append", default=[], metavar='NAME={"option": value}',
                        help="a ranking option set to compare (repeatable); default: a built-in set")
    parser.add_argument("--out", default=None, help="write results.json and results.md here")
    args = parser.parse_args()
    gates = dict(_parse_gate(g) for g in args.gate) or DEFAULT_GATES
    results = measure(Path(args.stories), args.model, args.k, gates)
    table = render(results, args.stories, args.model, args.k)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        (out / "results.md").write_text(table + "\n")


def _parse_gate(text: str) -> tuple[str, dict]:
    name, sep, options = text.partition("=")
    if not sep:
        raise SystemExit(f"--gate {text!r}: expected NAME={{json options}}")
    return name, json.loads(options)


def measure(stories: Path, model: str, k: int, gates: dict[str, dict]) -> list[GateResult]:
    from recommender.serving.demo import demo_corpus_path

    story_of = {(r := json.loads(line))["id"]: r["story"] for line in stories.read_text(encoding="utf-8").splitlines()
                if line.strip()}
    with tempfile.TemporaryDirectory() as tmp:
        stories_engine = _engine(Path(tmp) / "stories", model, str(stories))
        demo_engine = _engine(Path(tmp) / "demo", model, demo_corpus_path())
        return [_gate(name, options, stories_engine, demo_engine, story_of, k) for name, options in gates.items()]


def _engine(data_dir: Path, model: str, path: str):
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    engine = Engine(Settings(data_dir=data_dir, model=model))
    engine.ingest([path])
    return engine


def _gate(name: str, options: dict, engine, demo, story_of: dict[str, str], k: int) -> GateResult:
    items = other = with_filler = 0
    recall = []
    for aid, story in story_of.items():
        listed = [item.id for item in engine.related(aid, k=k, **options)]
        foreign = sum(story_of.get(i) != story for i in listed)
        items, other, with_filler = items + len(listed), other + foreign, with_filler + (foreign > 0)
        pieces = sum(s == story for s in story_of.values()) - 1
        recall.append((len(listed) - foreign) / min(k, pieces) if pieces else 1.0)
    bear = BEAR in {item.id for item in demo.related(DIPLOMACY, k=k, **options)}
    return GateResult(name, options, len(story_of), items, other / items if items else 0.0, with_filler,
                      sum(recall) / len(recall), bear)


def render(results: list[GateResult], stories: str, model: str, k: int) -> str:
    lines = [f"Filler at k={k} on {stories} ({model}); the demo's diplomacy article and the bear story",
             "", "| gate | items | from another story | lists with filler | own story held | demo bear listed |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.gate} | {r.items} | {r.other_story:.1%} | {r.lists_with_filler} of {r.lists} "
                     f"| {r.own_story_recall:.1%} | {'yes' if r.demo_bear_listed else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
