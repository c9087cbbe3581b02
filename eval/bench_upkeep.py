"""How well the lists' upkeep follows new articles: after a batch of them, which of the
older articles' lists it recomputes, against what recomputing every list would change.

    python eval/bench_upkeep.py --size 20000 --new 2000 --workdir /tmp/upkeep

The archive is bench_scale's synthetic one (`hashing:384`), stored with `recommender
ingest` (bench_bulk's base data dir, reused); the new articles are what the generator
writes next. In a copy of the base, the new articles are written and the index caught
up; then `ListUpkeep.affected` picks the older lists to recompute (of those the new lists
show and the new articles' nearest neighbours, the ones where the new article, seen as a
candidate from its own side, scores at least the list's last item), as a server's
catch-up or `ingest` does; then every older list is recomputed, and compared with what
it was before.

Reported: the lists the rule recomputes, and its recall of the older lists that a full
recomputation gives a new article ("gained"); the positions the new articles take in
them; and, for the next step, what a score test would catch: an older list A is picked
when some new article N scores A, among N's own candidates, at least as high as A's
list's last item scores (rank_score), at a margin, or the best such pairs up to a
budget. Results go to --out (upkeep.json, upkeep.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from eval.bench_api import MODEL
from eval.bench_bulk import base_dir, new_articles


def snapshot(lists, nums: list[int]) -> tuple[dict[int, tuple[int, ...]], dict[int, float]]:
    """Each list's shown nums, and the rank_score of its last item (0 for a short list)."""
    shown, floor = {}, {}
    for num in nums:
        cached = lists.get(num)
        items = cached.items if cached else ()
        shown[num] = tuple(i.num for i in items)
        floor[num] = min(i.rank_score for i in items) if len(items) >= lists.width else 0.0
    return shown, floor


def best_scores(engine, state, new: list[int]) -> dict[int, float]:
    """Per older article, the highest rank_score any new article gives it among its candidates."""
    from recommender.ranking import pipeline
    from recommender.ranking.rules import Filters

    upkeep, opts = engine.upkeep, engine.upkeep.options
    best: dict[int, float] = {}
    fresh = set(new)
    for num in new:
        seed = pipeline.stored_seed(state, engine.store, state.infos[num].id, engine.embed)
        pairs = pipeline.candidate_pairs(state, seed, upkeep.rules.filters_under(seed.section, Filters()), opts)
        linear = pipeline.score_pairs(pairs, opts.weights, opts.time_prior)
        scores = 1.0 / (1.0 + np.exp(-np.clip(linear, -50, 50)))
        for other, score in zip(pairs.nums.tolist(), scores.tolist()):
            if other not in fresh and score > best.get(other, -1.0):
                best[other] = score
    return best


def unpruned(state, lists, new: list[int], k: int) -> set[int]:
    """The upkeep's rule before its score test: every older list the new lists show, and
    every nearest neighbour of a new article."""
    shown = lists.shown_by(new)
    _, near = state.vectors.search(state.vectors.reconstruct(np.asarray(new)), k + 1)
    return (shown | {int(n) for n in near.ravel() if n >= 0}) - set(new)


def measure(data: Path, articles: list[dict], workers: int) -> dict:
    from recommender.serving.engine import Engine
    from recommender.settings import Settings
    from recommender.store.articles import Article

    engine = Engine(Settings(data_dir=data, model=MODEL))
    state = engine.state()
    lists = engine.lists_for(state)
    old = sorted(state.infos)
    before, floor = snapshot(lists, old)
    engine.upsert([Article(**a) for a in articles])
    engine.indexes.catch_up(state)
    new = sorted(set(state.infos) - set(old))
    start = time.perf_counter()
    affected = set(engine.upkeep.affected(state, lists, new, workers))
    own_s = time.perf_counter() - start
    before_test = unpruned(state, lists, new, engine.upkeep.precompute_k)
    engine.upkeep.compute_in_processes(state, lists, sorted(affected), workers)
    rule_s = time.perf_counter() - start
    best = best_scores(engine, state, new)
    engine.upkeep.compute_in_processes(state, lists, old, workers)
    after, _ = snapshot(lists, old)
    fresh = set(new)
    changed = {n for n in old if after[n] != before[n]}
    gained = {n for n in changed if fresh & set(after[n])}
    positions = np.bincount([i for n in gained for i, m in enumerate(after[n]) if m in fresh], minlength=lists.width)
    out = {"old": len(old), "new": len(new), "changed": len(changed), "gained": len(gained),
           "gained_positions": positions.tolist(),
           "rule": {"lists": len(affected), "recall": round(len(affected & gained) / max(len(gained), 1), 3),
                    "own_s": round(own_s, 1), "seconds": round(rule_s, 1)},
           "unpruned": {"lists": len(before_test),
                        "recall": round(len(before_test & gained) / max(len(gained), 1), 3)},
           "score_test": [], "score_budget": []}
    for margin in (0.0, 0.05):
        picked = {a for a, s in best.items() if s >= floor[a] - margin}
        out["score_test"].append({"margin": margin, "lists": len(picked),
                                  "recall": round(len(picked & gained) / max(len(gained), 1), 3)})
    ranked = [a for _, a in sorted(((s - floor[a], a) for a, s in best.items()), reverse=True)]
    for budget in (len(affected) // 2, len(affected)):
        picked = set(ranked[:budget])
        out["score_budget"].append({"lists": budget, "recall": round(len(picked & gained) / max(len(gained), 1), 3)})
    return out


def report(result: dict, size: int) -> str:
    rule = result["rule"]
    lines = [f"{result['new']:,} new articles into {size:,} (hashing:384): of the {result['old']:,} older lists, "
             f"a full recomputation changes {result['changed']:,}, and gives {result['gained']:,} a new article "
             f"(at positions 1-{len(result['gained_positions'])}: {result['gained_positions']})", "",
             "| which older lists are recomputed | lists | recall of the gained |", "|---|---|---|",
             f"| shown by the new lists, and the new articles' nearest neighbours | {result['unpruned']['lists']:,} | "
             f"{result['unpruned']['recall']} |",
             f"| the upkeep's rule: of those, where the new article scores at least the list's last item | "
             f"{rule['lists']:,} | {rule['recall']} |"]
    lines += [f"| score test, margin {t['margin']} | {t['lists']:,} | {t['recall']} |" for t in result["score_test"]]
    lines += [f"| score test, the best {t['lists']:,} | {t['lists']:,} | {t['recall']} |" for t in result["score_budget"]]
    lines += ["", f"The rule's own lists and older lists took {rule['seconds']} s "
                  f"(the new articles' own: {rule['own_s']} s)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20_000, help="articles in the archive")
    parser.add_argument("--new", type=int, default=2_000, help="articles written after it, at once")
    parser.add_argument("--workers", type=int, default=2, help="processes computing lists")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/upkeep"), help="the base data dir, reused")
    parser.add_argument("--out", type=Path, default=Path("eval/results/upkeep"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = base_dir(args.workdir, args.size)
    data = args.workdir / "run"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(base, data)
    result = measure(data, new_articles(args.workdir, args.size, args.new), args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "upkeep.json").write_text(json.dumps({"size": args.size, **result}, indent=2))
    text = report(result, args.size)
    (args.out / "upkeep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
