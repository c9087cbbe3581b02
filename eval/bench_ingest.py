"""A user's first import, timed as the user runs it: `recommender ingest FILE`, every
related list included, with the lists computed in 1 and in N processes.

    python eval/bench_ingest.py --size 200000 --workers 1 2 --workdir /tmp/ingest

The archive is bench_scale's synthetic one (stories of about 10 pieces, `hashing:384`,
so the model is not what is timed). Each run gets a fresh data dir. Reported per
--workers: wall seconds, CPU share, and peak memory as the sum of the command's
processes' proportional set sizes (forked workers share the parent's pages; PSS
counts each shared page once), sampled every half second, with when it peaked and a
timeline every 10 s (in ingest.json). Compare the runs as a
ratio: the machine is shared. Results go to --out (ingest.json, ingest.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from eval.bench_api import MODEL
from eval.bench_scale import synthetic_archive

TIMELINE_EVERY = 10  # seconds between the memory timeline's samples (the peak is sampled every half second)


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


def timed_ingest(corpus: Path, data: Path, workers: int, max_seconds: float | None = None) -> dict:
    """One run; `max_seconds`: stopped then (its whole process tree), reported unfinished."""
    shutil.rmtree(data, ignore_errors=True)
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL)
    command = [sys.executable, "-m", "recommender.cli", "ingest", str(corpus), "--workers", str(workers),
               "--progress", "--json"]
    started, cpu_before = time.perf_counter(), os.times()
    log = data.parent / f"ingest-{workers}.log"  # the progress bars: where a stopped run had got to
    with log.open("wb") as errors:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors)
    peak, peak_at = 0.0, 0.0
    timeline: list[tuple[int, int]] = []  # (seconds, MB)
    while process.poll() is None:
        now, mb = time.perf_counter() - started, pss_mb(tree(process.pid))
        if mb > peak:
            peak, peak_at = mb, now
        if not timeline or now - timeline[-1][0] >= TIMELINE_EVERY:
            timeline.append((round(now), round(mb)))
        time.sleep(0.5)
        if max_seconds is not None and now > max_seconds:
            for pid in tree(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.wait()
            return {"workers": workers, "finished": False, "stopped_at_s": round(now), "peak_pss_mb": round(peak),
                    "peak_at_s": round(peak_at), "progress": last_progress(log), "timeline": timeline}
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"ingest with --workers {workers} failed (exit {process.returncode})")
    cpu_after = os.times()
    cpu = (cpu_after.children_user - cpu_before.children_user) + (cpu_after.children_system
                                                                  - cpu_before.children_system)
    report = json.loads(process.stdout.read() if process.stdout else b"{}")
    return {"workers": workers, "finished": True, "wall_s": round(wall, 1), "cpu_share": round(cpu / wall, 2),
            "peak_pss_mb": round(peak), "peak_at_s": round(peak_at), "added": report.get("added"),
            "timeline": timeline}


def table_row(run: dict, first: dict) -> str:
    peak = f"{run['peak_pss_mb']} ({run['peak_at_s']})"
    if not run["finished"]:
        return f"| {run['workers']} | stopped at {run['stopped_at_s']}: {run['progress']} | | | {peak} |"
    ratio = f"{run['wall_s'] / first['wall_s']:.2f}" if first["finished"] else ""
    return f"| {run['workers']} | {run['wall_s']} | {ratio} | {run['cpu_share']} | {peak} |"


def last_progress(log: Path) -> str:
    """The last progress bar's last state in a run's log."""
    text = log.read_bytes().decode(errors="replace").replace("\r", "\n")
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200_000, help="articles in the synthetic archive")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ingest"), help="the archive file, reused")
    parser.add_argument("--out", type=Path, default=Path("eval/results/ingest"))
    parser.add_argument("--max-seconds", type=float, help=(
        "stop each run after this long and report its memory so far, marked unfinished (a million "
        "articles on a slow machine)"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"corpus-{args.size}.jsonl"
    if not corpus.exists():
        synthetic_archive(corpus, args.size)
    runs = []
    for workers in args.workers:
        runs.append(timed_ingest(corpus, args.workdir / f"data-{workers}", workers, args.max_seconds))
        print(json.dumps(runs[-1]), flush=True)
    lines = [f"`recommender ingest` of {args.size:,} synthetic articles ({MODEL}), every list included", "",
             "| workers | wall s | vs first | CPU share | peak PSS MB (at s) |", "|---|---|---|---|---|"]
    lines += [table_row(r, runs[0]) for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps({"size": args.size, "model": MODEL, "runs": runs}, indent=2))
    (args.out / "ingest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
