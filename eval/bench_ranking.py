"""What the ranking costs at archive scale: a draft ranked live, and lists recomputed.

    python eval/bench_ranking.py --size 100000 --workdir /tmp/bench-100k

Builds (or reuses, with --workdir) the synthetic archive of eval/bench_api.py
(stories over 200 topics, two years, `hashing:384`: the embedding is not what
is measured), then, in one process:
- loads the index (the server's start);
- ranks --drafts drafts live (POST /v1/related's work, the draft's embedding
  included): p50 / p95 per draft;
- recomputes the precomputed lists of --lists articles, as the background worker
  does after a profile switch: lists/s, and the time for the whole archive at that rate.
- with --switch-workers N, a profile switch: every list of the archive computed
  under a new profile in N processes, as `recommender profile activate` does.
- with --blas-threads 1 2 1 2, the drafts and lists again under each count of numpy's
  BLAS threads in turn (RECOMMENDER_BLAS_THREADS; the default is 1): compare as ratios.
Targets (issue 12): draft p95 <= 50 ms and all lists of 100k in <= 10 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from eval.bench_api import MODEL, percentile, synthetic_archive

if TYPE_CHECKING:
    from recommender.index.state import IndexState
    from recommender.serving.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--drafts", type=int, default=300)
    parser.add_argument("--lists", type=int, default=2000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the archive here and reuse it")
    parser.add_argument("--blas-threads", type=int, nargs="*", default=[],
                        help="rounds of drafts and lists under these numpy BLAS thread counts")
    parser.add_argument("--switch-workers", type=int, default=0,
                        help="also time a profile switch: every list of the archive under a new profile, "
                             "in this many processes (`recommender profile activate`)")
    args = parser.parse_args()
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ranking-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"data-{args.size}"
    source = workdir / f"archive-{args.size}.jsonl"
    if not (data / "store.sqlite").exists():
        synthetic_archive(source, args.size)
        started = time.perf_counter()
        Engine(Settings(data_dir=data, model=MODEL)).ingest([str(source)], precompute=False)
        print(f"ingested {args.size} articles in {time.perf_counter() - started:.0f} s (lists not computed)")
    engine = Engine(Settings(data_dir=data, model=MODEL))
    started = time.perf_counter()
    state = engine.state()
    load_s = time.perf_counter() - started
    rng = random.Random(1)
    nums = rng.sample(sorted(state.infos), min(args.lists, len(state.infos)))
    drafts = []
    for num in nums[: args.drafts]:
        found = engine.store.get(state.infos[num].id)
        if found is None:
            continue
        stored = found.article
        drafts.append((stored.title + " actualizare", stored.body, stored.published_at))
    engine.related_to_text(*drafts[0][:2])  # warm-up
    result = {"size": args.size, "load_s": round(load_s, 1), **measure(engine, state, nums, drafts)}
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        result["blas_rounds"] = []
        for threads in args.blas_threads:
            with threadpool_limits(threads, user_api="blas"):
                result["blas_rounds"].append({"blas_threads": threads, **measure(engine, state, nums, drafts)})
            print(json.dumps(result["blas_rounds"][-1]), flush=True)
    if args.switch_workers:
        from recommender.settings import DEFAULT_WEIGHTS

        profile = engine.profiles.save(dict(DEFAULT_WEIGHTS), "bench_ranking", {})
        started = time.perf_counter()
        count = engine.prepare_profile(profile.name, args.switch_workers)
        result["switch_lists"] = count
        result["switch_workers"] = args.switch_workers
        result["switch_min"] = round((time.perf_counter() - started) / 60, 1)
    print(json.dumps(result))


def measure(engine: Engine, state: IndexState, nums: list[int], drafts: list) -> dict:
    """Drafts ranked live (p50 / p95) and the lists of `nums` recomputed (lists/s)."""
    latencies = []
    for title, body, when in drafts:
        t = time.perf_counter()
        engine.related_to_text(title, body, when)
        latencies.append(time.perf_counter() - t)
    lists = engine.lists_for(state)
    started = time.perf_counter()
    engine.upkeep.compute(state, lists, nums)
    per_s = len(nums) / (time.perf_counter() - started)
    return {"draft_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "draft_p95_ms": round(percentile(latencies, 95) * 1000, 1),
            "lists_per_s": round(per_s, 1), "all_lists_min": round(len(state.infos) / per_s / 60, 1),
            "mean_list_ms": round(1000 / per_s, 2)}


if __name__ == "__main__":
    main()
