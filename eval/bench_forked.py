"""What forked list workers cost in memory: the pages each one copies from the index it shares.

    python eval/bench_forked.py --data-dir /tmp/ingest/data-2 --lists 12000

`ingest` and a server's catch-up compute lists in processes forked from the one that
holds the index, sharing its pages copy-on-write; a page a worker writes to (a Python
object's reference count, a free slot its own allocation lands in) is copied. This
builds the in-memory index of --data-dir's store as a first ingest does (a data dir
that `python eval/bench_ingest.py` left behind serves), forks 2 workers that compute
--lists lists, and samples every 0.3 s the processes' PSS and private dirty memory.
Reported: the build's PSS, the parent's PSS at the fork, the peak of the sum, each
process's private memory then, and lists/s. To compare two releases, run it in each
checkout on the same data dir, one after the other. Results go to --out (forked.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

from eval.bench_api import MODEL

SAMPLE_EVERY = 0.3


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) // 1024
    return out


class Peak:
    """The largest sum of the processes' PSS seen, and each one's private memory then."""

    def __init__(self) -> None:
        self.total, self.private, self.stopped = 0, [0], False

    def watch(self, pids: list[int]) -> None:
        while not self.stopped:
            try:
                rolled = [rollup(pid) for pid in pids]
            except OSError:  # a worker ending
                return
            if sum(r["Pss"] for r in rolled) > self.total:
                self.total, self.private = sum(r["Pss"] for r in rolled), [r["Private_Dirty"] for r in rolled]
            time.sleep(SAMPLE_EVERY)


def measure(data_dir: Path, lists: int, workers: int) -> dict:
    from recommender.serving import lists as upkeep_module
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    engine = Engine(Settings(data_dir=data_dir, model=MODEL))
    started = time.perf_counter()
    state = engine.indexes.build_state("bench", engine.embedder.dimension)
    built = {"build_s": round(time.perf_counter() - started, 1), "build_pss_mb": rollup(os.getpid())["Pss"]}
    state.settle()  # as compute_in_processes does before it forks
    nums = list(state.infos)[:lists]
    texts = engine.store.texts_and_terms(nums)
    step = upkeep_module.SAVE_EVERY
    chunks = [(nums[i:i + step], {state.infos[n].id: texts[n] for n in nums[i:i + step]})
              for i in range(0, len(nums), step)]
    del texts
    upkeep_module._forked_job = (engine.upkeep, state, None)
    upkeep_module.release_free_memory()
    at_fork = rollup(os.getpid())["Pss"]
    peak = Peak()
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers, initializer=upkeep_module._start_forked) as pool:
        watcher = threading.Thread(target=peak.watch, args=([os.getpid()] + [p.pid for p in multiprocessing.active_children()],))
        watcher.start()
        for _ in pool.imap_unordered(upkeep_module._compute_forked, chunks):
            pass
        peak.stopped = True
        watcher.join()
    return {**built, "parent_pss_at_fork_mb": at_fork, "peak_pss_mb": peak.total,
            "private_mb_parent_then_workers": peak.private, "workers": workers, "lists": len(nums),
            "lists_per_s": round(len(nums) / (time.perf_counter() - started))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help=f"a data dir whose store holds {MODEL} vectors")
    parser.add_argument("--lists", type=int, default=12_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("eval/results/forked"))
    args = parser.parse_args()
    if not (args.data_dir / "store.sqlite").exists():
        parser.error(f"no store in {args.data_dir}: run python eval/bench_ingest.py --size 200000 first")
    result = measure(args.data_dir, args.lists, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "forked.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
