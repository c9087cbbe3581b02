"""Two versions of the code computing the same lists, alternately: what a change to the
ranking's inner loop saves, and whether it changed any list.

    git clone -q . /tmp/before && git -C /tmp/before checkout -q 4be5385
    python eval/bench_lists.py --data /tmp/ingest/data-2 --before /tmp/before --lists 1000 --rounds 6

--data is a data dir holding an indexed archive (bench_ingest's, say: `hashing:384`).
Each round runs one process per version (this checkout, and the checkout at --before), in
turns (the order flips every round): it loads the index, computes --lists lists of articles
drawn with a fixed seed, without storing them, and reports the CPU time a list and a digest
of the lists (ids, scores and reasons). On a shared machine one process's time varies by
10 % or more from run to run: compare the per-round ratios' median, not two single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from eval.bench_api import MODEL

CHILD = """
import hashlib, json, sys, time
import numpy as np
import recommender
from recommender.serving.engine import Engine
from recommender.settings import Settings

count = int(sys.argv[1])
engine = Engine(Settings())
state = engine.state()
state.settle()
nums = sorted(np.random.default_rng(7).choice(np.array(sorted(state.by_id.values())), count, replace=False).tolist())
for _ in engine.upkeep.lists_for(state, nums[:100]):  # warm: lazily built maps, the pages read
    pass
digest = hashlib.sha256()
started = time.process_time()
for num, items, _ in engine.upkeep.lists_for(state, nums):
    digest.update(json.dumps([num, [(i.id, i.rank_score, i.reason) for i in items]]).encode())
cpu = time.process_time() - started
print(json.dumps({"code": recommender.__file__, "ms_a_list": 1000 * cpu / count, "digest": digest.hexdigest()}))
"""


def measure(code: Path, data: Path, lists: int) -> dict:
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL, PYTHONPATH=str(code))
    done = subprocess.run([sys.executable, "-c", CHILD, str(lists)], cwd=code, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"the lists of {code} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["code"].startswith(str(code.resolve())):  # an installed copy would shadow the checkout
        raise SystemExit(f"{code} ran the recommender package of {result['code']}")
    return result


def commit(checkout: Path) -> str:
    """The checkout's commit, "-dirty" when files differ from it."""
    return subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a data dir, every article indexed")
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--lists", type=int, default=1000, help="lists computed per process")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None, help="write the runs here as JSON")
    args = parser.parse_args()
    versions = {"before": args.before.resolve(), "after": Path(__file__).resolve().parent.parent}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        for name in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
            runs[name].append(measure(versions[name], args.data, args.lists))
            print(f"round {round_ + 1} {name}: {runs[name][-1]['ms_a_list']:.2f} ms CPU a list", file=sys.stderr)
    ratios = [a["ms_a_list"] / b["ms_a_list"] for a, b in zip(runs["after"], runs["before"])]
    digests = {r["digest"] for r in runs["before"] + runs["after"]}
    summary = {"before": commit(versions["before"]), "after": commit(versions["after"]), "lists": args.lists,
               "rounds": args.rounds,
               "before_ms": [round(r["ms_a_list"], 2) for r in runs["before"]],
               "after_ms": [round(r["ms_a_list"], 2) for r in runs["after"]],
               "ratios": [round(x, 3) for x in ratios], "median_ratio": round(statistics.median(ratios), 3),
               "identical_lists": len(digests) == 1}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
