"""Soak: everything at once against a real server on loopback, bounded in time.

    python eval/soak.py --size 50000 --cli-articles 2000 --out eval/results/soak.md

Builds a served archive of --size synthetic articles (`hashing:384`, so the
embedding is not what is measured), starts `recommender serve`, then runs
together, until the CLI ingest has ended and --tail seconds more (at most
--max-seconds):
- 4 readers asking for related lists of random articles;
- a CMS writer: PUT a new article, DELETE an older one of its own, in a loop;
- a draft flood: 4 clients posting 200 kB HTML drafts, unauthenticated;
- `recommender ingest` of --cli-articles new articles into the same data dir.
Reports the 5xx answers, lost writes (a PUT article missing or a DELETE one
still there at the end), PUT latency, and how long after the CLI ingest ended
its articles were served. Targets (issue 11): 0 5xx, 0 lost writes, PUT p99
<= 1 s, CLI articles visible <= 5 s after the ingest ends.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from eval.bench_api import MODEL, free_port, synthetic_archive, wait_ready

KEY = "soak"


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, dict[int, int]] = {}
        self.put_seconds: list[float] = []
        self.errors: list[str] = []

    def count(self, what: str, status: int) -> None:
        with self.lock:
            by_status = self.statuses.setdefault(what, {})
            by_status[status] = by_status.get(status, 0) + 1

    @property
    def server_errors(self) -> int:
        return sum(n for by in self.statuses.values() for status, n in by.items() if status >= 500)


def reader(base: str, ids: list[str], stop: threading.Event, tally: Tally, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            tally.count("GET related", client.get(f"/v1/articles/{rng.choice(ids)}/related").status_code)


def writer(base: str, stop: threading.Event, tally: Tally, written: dict[str, bool]) -> None:
    import httpx

    rng = random.Random(7)
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, timeout=60) as client:
        n = 0
        while not stop.is_set():
            aid = f"cms-{n}"
            body = {"title": f"Știre CMS {n} despre bugetul {rng.randrange(100)}",
                    "body": "Guvernul discută bugetul și deficitul. " * 20,
                    "published_at": "2025-06-01T10:00:00Z", "section": "economie"}
            started = time.perf_counter()
            response = client.put(f"/v1/articles/{aid}", json=body, headers=auth)
            tally.put_seconds.append(time.perf_counter() - started)
            tally.count("PUT", response.status_code)
            if response.status_code == 200:
                written[aid] = True
            if n % 3 == 2:  # delete one of our own, written two steps before
                gone = f"cms-{n - 2}"
                deleted = client.delete(f"/v1/articles/{gone}", headers=auth)
                tally.count("DELETE", deleted.status_code)
                if deleted.status_code == 200:
                    written[gone] = False
            n += 1


def drafter(base: str, stop: threading.Event, tally: Tally) -> None:
    import httpx

    page = "<div><p>" + "Ministrul a anunțat noi măsuri fiscale pentru anul viitor. " * 3500 + "</p></div>"
    with httpx.Client(base_url=base, timeout=60) as client:
        while not stop.is_set():
            response = client.post("/v1/related", json={"title": "Măsuri fiscale", "body": page})
            tally.count("POST draft", response.status_code)
            if response.status_code == 429:
                time.sleep(0.05)


def run(args) -> dict:

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    data = workdir / "data"
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL)
    archive = workdir / "archive.jsonl"
    synthetic_archive(archive, args.size)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recommender.cli", "ingest", str(archive), "--no-precompute"],
                   env=env, check=True, capture_output=True)
    build_seconds = time.perf_counter() - started
    extra = workdir / "extra.jsonl"
    cli_ids = []
    with extra.open("w") as out:
        for record in _synthetic_records(args.cli_articles, seed=5):
            out.write(json.dumps(record) + "\n")
            cli_ids.append(record["id"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                               "--log-level", "warning"],
                              env=dict(env, RECOMMENDER_API_KEYS=KEY, RECOMMENDER_PRECOMPUTE_ON_START="false"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tally, stop = Tally(), threading.Event()
    written: dict[str, bool] = {}
    try:
        wait_ready(base)
        ids = [f"a{i}" for i in range(0, args.size, max(args.size // 5000, 1))]
        threads = [threading.Thread(target=reader, args=(base, ids, stop, tally, i)) for i in range(4)]
        threads += [threading.Thread(target=writer, args=(base, stop, tally, written))]
        threads += [threading.Thread(target=drafter, args=(base, stop, tally)) for _ in range(4)]
        for thread in threads:
            thread.start()
        soak_started = time.perf_counter()
        cli = subprocess.Popen([sys.executable, "-m", "recommender.cli", "ingest", str(extra)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cli.wait(timeout=args.max_seconds)
        cli_ended = time.perf_counter()
        visible_after = _wait_visible(base, cli_ids, cli_ended, args.tail)
        time.sleep(max(0.0, args.tail - (time.perf_counter() - cli_ended)))
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        soak_seconds = time.perf_counter() - soak_started
        lost = _lost_writes(base, written)
    finally:
        stop.set()
        server.terminate()
        server.wait(timeout=30)
    puts_ms = np.asarray(tally.put_seconds) * 1000
    return {
        "archive": args.size, "cli_articles": args.cli_articles, "build_seconds": round(build_seconds, 1),
        "soak_seconds": round(soak_seconds, 1), "cli_ingest_seconds": round(cli_ended - soak_started, 1),
        "answers": tally.statuses, "server_errors": tally.server_errors, "lost_writes": lost,
        "puts": len(puts_ms), "put_p50_ms": round(float(np.percentile(puts_ms, 50)), 1),
        "put_p99_ms": round(float(np.percentile(puts_ms, 99)), 1),
        "cli_visible_after_seconds": None if visible_after is None else round(visible_after, 2),
    }


def _synthetic_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"cli-{i}", "title": f"Articol CLI {i} despre porturi {rng.randrange(50)}",
             "body": "Porturile ucrainene exportă cereale după armistițiu. " * 10,
             "published_at": f"2025-05-{1 + i % 28:02d}T08:00:00Z", "section": "externe"} for i in range(count)]


def _wait_visible(base: str, ids: list[str], since: float, limit: float) -> float | None:
    """Seconds after `since` until the last CLI article has a related list (it is in the index)."""
    import httpx

    with httpx.Client(base_url=base, timeout=60) as client:
        while time.perf_counter() - since < max(limit, 30):
            if client.get(f"/v1/articles/{ids[-1]}/related").status_code == 200 and \
                    client.get(f"/v1/articles/{ids[0]}/related").status_code == 200:
                return time.perf_counter() - since
            time.sleep(0.1)
    return None


def _lost_writes(base: str, written: dict[str, bool]) -> int:
    import httpx

    lost = 0
    with httpx.Client(base_url=base, timeout=60) as client:
        for aid, present in written.items():
            status = client.get(f"/v1/articles/{aid}").status_code
            lost += (status == 200) != present
    return lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--cli-articles", type=int, default=2000)
    parser.add_argument("--tail", type=float, default=10.0, help="seconds of load after the CLI ingest ends")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as Markdown here")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Soak (`python eval/soak.py " + " ".join(sys.argv[1:]) + "`)\n\n```json\n"
                            + json.dumps(result, indent=2) + "\n```\n")


if __name__ == "__main__":
    main()
