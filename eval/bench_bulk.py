"""A bulk import reaching a running server, timed as a CMS would do it: articles
through `POST /v1/articles:bulk` while readers keep opening pages.

    python eval/bench_bulk.py --size 200000 --new 10000 --list-workers 1 2 --workdir /tmp/bulk

The archive is bench_scale's synthetic one (`hashing:384`, so the model is not
what is timed), first stored with `recommender ingest` (every list computed); the
new articles are what the generator writes next (new stories on the same topics,
the first perhaps continuing the archive's last). For each --list-workers (the server's
RECOMMENDER_LIST_WORKERS) a fresh copy of that data dir is served by `recommender
serve`, the new articles are posted in requests of --per-request, and a reader
thread opens a page every --view-every seconds (half new articles, half old).
Reported: seconds from `serve` until it answers and until its index is loaded (a
restart), seconds the bulk requests took, seconds from the last one's answer until
every new article has its own list (`/readyz` lists_pending 0) and until the older
lists they touched are recomputed too (lists_touched 0: the catch-up), the cores the server and
its list workers kept busy then and their CPU time per list, and page-view
latency p50/p99 while the bulk requests run, during the catch-up after the last one,
both together, and after; and in bulk.json, every 2 s, the backlog, the lists recomputed
and the server's CPU seconds. Compare the runs as ratios: the machine is shared.
Results go to --out (bulk.json, bulk.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from eval.bench_api import MODEL, free_port, percentile, wait_ready
from eval.bench_scale import synthetic_archive

KEY = "bench"


def base_dir(workdir: Path, size: int) -> Path:
    """A data dir holding the synthetic archive, every list computed (made once, reused)."""
    data = workdir / f"base-{size}"
    if (data / "done").exists():
        return data
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = workdir / f"corpus-{size}.jsonl"
    synthetic_archive(corpus, size)
    shutil.rmtree(data, ignore_errors=True)
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL)
    subprocess.run([sys.executable, "-m", "recommender.cli", "ingest", str(corpus), "--no-progress"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    (data / "done").touch()
    return data


def new_articles(workdir: Path, size: int, count: int) -> list[dict]:
    """The `count` articles the same generator writes after the archive's `size`: new
    stories on the archive's topics (the first may continue its last story)."""
    path = workdir / f"corpus-{size + count}.jsonl"
    if not path.exists():
        synthetic_archive(path, size + count)
    with path.open() as lines:
        return [json.loads(line) for n, line in enumerate(lines) if n >= size]


class Reader(threading.Thread):
    """Opens a page every `every` seconds: half of them new articles (posted already), half old."""

    def __init__(self, base: str, old: list[str], every: float):
        super().__init__(daemon=True)
        self.base, self.old, self.every = base, old, every
        self.posted: list[str] = []
        self.phase = "bulk"  # then "catch_up" once the last bulk request answered, then "after"
        self.latencies: dict[str, list[float]] = {"bulk": [], "catch_up": [], "after": []}
        self.errors = 0
        self.done = threading.Event()

    def run(self) -> None:
        import httpx

        rng = random.Random(3)
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.done.is_set():
                pool = self.posted if self.posted and rng.random() < 0.5 else self.old
                started = time.perf_counter()
                response = client.get(f"/v1/articles/{rng.choice(pool)}/related")
                self.latencies[self.phase].append((time.perf_counter() - started) * 1000)
                self.errors += response.status_code != 200
                time.sleep(self.every)


class Timeline(threading.Thread):
    """Every `every` seconds from the first bulk request: the server's backlog (new articles
    unlisted, older lists touched), lists recomputed so far, and its CPU seconds."""

    def __init__(self, base: str, pid: int, every: float = 2.0):
        super().__init__(daemon=True)
        self.base, self.pid, self.every = base, pid, every
        self.samples: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.done.wait(self.every):
            unlisted, touched = backlog(self.base) or (-1, -1)
            self.samples.append({"s": round(time.perf_counter() - started, 1), "unlisted": unlisted,
                                 "touched": touched, "recomputed": recomputed(self.base),
                                 "cpu_s": round(cpu_seconds(self.pid), 1)})


def backlog(base: str) -> tuple[int, int] | None:
    """The new articles still without their own lists, and the older lists they touched
    still to recompute; None while the index loads. (A server from before the split
    reports the first only, so that one command can time the code before and after.)"""
    import httpx

    body = httpx.get(f"{base}/readyz", timeout=30).json()
    return (body["lists_pending"], body.get("lists_touched", 0)) if body.get("status") == "ready" else None


def recomputed(base: str) -> int:
    import httpx

    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("recommender_lists_recomputed_total"):
            return int(float(line.split()[-1]))
    return -1


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children it has waited for (its list pools' workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run(data: Path, articles: list[dict], workers: int, blas: int, nice: int, args) -> dict:
    import httpx

    served = args.workdir / f"served-{workers}"
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(data, served)
    port = free_port()
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(served), RECOMMENDER_MODEL=MODEL, RECOMMENDER_API_KEYS=KEY,
               RECOMMENDER_LIST_WORKERS=str(workers), RECOMMENDER_BLAS_THREADS=str(blas),
               RECOMMENDER_LIST_NICE=str(nice))
    server = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    launched = time.perf_counter()
    try:
        wait_ready(base)  # answering: precomputed lists and writes, from the store
        answering = time.perf_counter()
        while backlog(base) is None:  # ready, the index loaded (not warming)
            time.sleep(0.2)
        loaded = time.perf_counter()
        reader = Reader(base, [f"a{i}" for i in random.Random(5).sample(range(args.size), 2000)], args.view_every)
        reader.start()
        timeline = Timeline(base, server.pid)
        timeline.start()
        started = time.perf_counter()
        with httpx.Client(base_url=base, timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as client:
            for at in range(0, len(articles), args.per_request):
                batch = articles[at:at + args.per_request]
                response = client.post("/v1/articles:bulk", json=batch)
                assert response.status_code == 200 and response.json()["added"] == len(batch), response.text
                reader.posted += [a["id"] for a in batch]
        posted = time.perf_counter()
        reader.phase = "catch_up"
        cpu_posted, lists_posted = cpu_seconds(server.pid), recomputed(base)
        while backlog(base)[0] != 0:  # type: ignore[index]
            time.sleep(0.1)
        listed = time.perf_counter()
        while backlog(base) != (0, 0):
            time.sleep(0.1)
        caught_up = time.perf_counter()
        lists = recomputed(base)
        cpu = cpu_seconds(server.pid) - cpu_posted
        reader.phase = "after"
        time.sleep(args.after)
        reader.done.set()
        reader.join()
        timeline.done.set()
        timeline.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
    bulk, catch_up, after = (reader.latencies[p] for p in ("bulk", "catch_up", "after"))
    during = bulk + catch_up
    # The catch-up's CPU over the lists finished in it: the step running when the bulk ended counts
    # whole in both. What the catch-up needs is that many lists times this, over the cores.
    caught = max(lists - lists_posted, 1)
    return {"list_workers": workers, "blas_threads": blas, "list_nice": nice, "lists_recomputed": lists,
            "catch_up_cores": round(cpu / max(caught_up - posted, 1e-9), 2),
            "cpu_ms_per_list": round(1000 * cpu / caught, 2), "answering_s": round(answering - launched, 1),
            "index_loaded_s": round(loaded - launched, 1), "bulk_s": round(posted - started, 1),
            "new_listed_s": round(listed - posted, 1), "catch_up_s": round(caught_up - posted, 1),
            "views_during": len(during), "during_p50_ms": round(percentile(during, 50), 1),
            "during_p99_ms": round(percentile(during, 99), 1),
            "bulk_p50_ms": round(percentile(bulk, 50), 1), "bulk_p99_ms": round(percentile(bulk, 99), 1),
            "catch_up_p50_ms": round(percentile(catch_up, 50), 1), "catch_up_p99_ms": round(percentile(catch_up, 99), 1),
            "after_p50_ms": round(percentile(after, 50), 2),
            "after_p99_ms": round(percentile(after, 99), 2), "view_errors": reader.errors,
            "timeline": timeline.samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200_000, help="articles in the served archive")
    parser.add_argument("--new", type=int, default=10_000, help="articles posted in bulk")
    parser.add_argument("--per-request", type=int, default=500, help="articles per bulk request")
    parser.add_argument("--list-workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--blas-threads", type=int, nargs="+", default=[1],
                        help="the server's numpy BLAS threads (RECOMMENDER_BLAS_THREADS): a run for each, "
                             "times each --list-workers")
    parser.add_argument("--list-nice", type=int, nargs="+", default=[10],
                        help="the forked list workers' CPU priority (RECOMMENDER_LIST_NICE): a run for each, "
                             "times the above")
    parser.add_argument("--view-every", type=float, default=0.02, help="seconds between a reader's page views")
    parser.add_argument("--after", type=float, default=10.0, help="seconds of page views after the catch-up")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bulk"), help="the base data dir, reused")
    parser.add_argument("--base", type=Path, default=None,
                        help="a data dir of bench_scale's archive of --size, every list computed (bench_ingest's)")
    parser.add_argument("--out", type=Path, default=Path("eval/results/bulk"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.base or base_dir(args.workdir, args.size)
    articles = new_articles(args.workdir, args.size, args.new)
    runs = []
    for workers in args.list_workers:
        for blas in args.blas_threads:
            for nice in args.list_nice:
                runs.append(run(data, articles, workers, blas, nice, args))
                print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["catch_up_s"] or 1.0
    lines = [f"{args.new:,} articles through POST /v1/articles:bulk ({args.per_request} a request) into a served "
             f"archive of {args.size:,} ({MODEL}), a page view every {args.view_every} s meanwhile", "",
             "| list workers | BLAS threads | nice | lists | start: answers / index loaded s | bulk s | new listed s | catch-up s | "
             "vs first | cores busy, CPU ms a list | views p50 / p99 ms: bulk requests | catch-up | both | after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['list_workers']} | {r['blas_threads']} | {r['list_nice']} | {r['lists_recomputed']} | "
              f"{r['answering_s']} / {r['index_loaded_s']} | {r['bulk_s']} | {r['new_listed_s']} | {r['catch_up_s']} | {r['catch_up_s'] / base:.2f} | "
              f"{r['catch_up_cores']}, {r['cpu_ms_per_list']} | {r['bulk_p50_ms']} / {r['bulk_p99_ms']} | {r['catch_up_p50_ms']} / {r['catch_up_p99_ms']} | "
              f"{r['during_p50_ms']} / {r['during_p99_ms']} | {r['after_p50_ms']} / {r['after_p99_ms']} |" for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bulk.json").write_text(json.dumps({"size": args.size, "new": args.new, "runs": runs}, indent=2))
    (args.out / "bulk.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
