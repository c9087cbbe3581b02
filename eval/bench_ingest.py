"""A user's first import, timed as the user runs it: `recommender ingest FILE`, every
related list included, with the lists computed in 1 and in N processes.

    python eval/bench_ingest.py --size 200000 --workers 1 2 --workdir /tmp/ingest

The archive is bench_scale's synthetic one (stories of about 10 pieces, `hashing:384`,
so the model is not what is timed). Each run gets a fresh data dir. Reported per
--workers: wall seconds, CPU share, and peak memory as the sum of the command's
processes' proportional set sizes (forked workers share the parent's pages; PSS
counts each shared page once), sampled every half second. Compare the runs as a
ratio: the machine is shared. Results go to --out (ingest.json, ingest.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from eval.bench_api import MODEL
from eval.bench_scale import synthetic_archive


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:  # gone meanwhile
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total / 1024


def timed_ingest(corpus: Path, data: Path, workers: int) -> dict:
    shutil.rmtree(data, ignore_errors=True)
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL)
    command = [sys.executable, "-m", "recommender.cli", "ingest", str(corpus), "--workers", str(workers),
               "--no-progress", "--json"]
    started, cpu_before = time.perf_counter(), os.times()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, pss_mb(tree(process.pid)))
        time.sleep(0.5)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"ingest with --workers {workers} failed (exit {process.returncode})")
    cpu_after = os.times()
    cpu = (cpu_after.children_user - cpu_before.children_user) + (cpu_after.children_system
                                                                  - cpu_before.children_system)
    report = json.loads(process.stdout.read() if process.stdout else b"{}")
    return {"workers": workers, "wall_s": round(wall, 1), "cpu_share": round(cpu / wall, 2),
            "peak_pss_mb": round(peak), "added": report.get("added")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200_000, help="articles in the synthetic archive")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ingest"), help="the archive file, reused")
    parser.add_argument("--out", type=Path, default=Path("eval/results/ingest"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"corpus-{args.size}.jsonl"
    if not corpus.exists():
        synthetic_archive(corpus, args.size)
    runs = []
    for workers in args.workers:
        runs.append(timed_ingest(corpus, args.workdir / f"data-{workers}", workers))
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["wall_s"]
    lines = [f"`recommender ingest` of {args.size:,} synthetic articles ({MODEL}), every list included", "",
             "| workers | wall s | vs first | CPU share | peak PSS MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['wall_s']} | {r['wall_s'] / base:.2f} | {r['cpu_share']} | {r['peak_pss_mb']} |"
              for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps({"size": args.size, "model": MODEL, "runs": runs}, indent=2))
    (args.out / "ingest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
