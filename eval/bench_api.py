"""Load benchmark of the HTTP API against a real uvicorn on loopback.

    python eval/bench_api.py --sizes 10000 100000 --requests 3000 --seconds 60

For each archive size it builds a synthetic archive (stories of 3 to 6
articles over 200 topics, vectors by `hashing:384`: the embedding is not what
is measured), precomputes the lists of the articles it will query, starts
`recommender serve` with one worker, and measures from a client process:
- latency p50/p99 and requests/s of GET /v1/articles/{id}/related
  (precomputed path, one connection, sequential; bounded by --requests and --seconds);
- requests/s with --concurrency connections;
- freshness: time from a PUT of a story's follow-up until the story's first
  article lists it (the PUT's own embedding included; it is negligible here).
Targets (issue 3): p99 <= 5 ms on the precomputed path, freshness <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODEL = "hashing:384"
SYLLABLES = "ba be bi bo bu ca ce ci co cu da de di do du fa fe fi ga ge la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi zo zu".split()


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))


def synthetic_archive(path: Path, size: int, seed: int = 0) -> list[list[str]]:
    """Write `size` articles; return the stories (lists of ids, oldest first)."""
    rng = random.Random(seed)
    topics = [[word(rng) for _ in range(30)] for _ in range(200)]
    common = [word(rng) for _ in range(500)]
    stories: list[list[str]] = []
    start = time.mktime((2024, 1, 1, 0, 0, 0, 0, 0, -1))
    with path.open("w") as out:
        n = 0
        while n < size:
            topic = rng.randrange(len(topics))
            story_words = [word(rng) for _ in range(6)]
            day = rng.uniform(0, 700)
            ids = []
            for part in range(min(rng.randint(3, 6), size - n)):
                aid = f"a{n}"
                words = rng.sample(topics[topic], 8) + story_words + rng.sample(common, 20)
                rng.shuffle(words)
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + (day + part * rng.uniform(0.5, 5)) * 86400))
                out.write(json.dumps({"id": aid, "title": " ".join(words[:8]), "body": " ".join(words[8:]),
                                      "url": f"https://www.example.ro/{aid}", "published_at": when,
                                      "section": f"s{topic % 12}"}) + "\n")
                ids.append(aid)
                n += 1
            stories.append(ids)
    return stories


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_size(size: int, args, workdir: Path) -> dict:
    import httpx

    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    data = workdir / f"data-{size}"
    corpus = workdir / f"corpus-{size}.jsonl"
    t0 = time.perf_counter()
    stories = synthetic_archive(corpus, size)
    settings = Settings(data_dir=data, model=MODEL)
    engine = Engine(settings)
    engine.ingest([str(corpus)], precompute=False)
    build_s = time.perf_counter() - t0
    rng = random.Random(1)
    sample = [f"a{rng.randrange(size)}" for _ in range(min(args.requests, 2000))]
    state = engine.state()
    lists = engine.lists_for(state)
    t0 = time.perf_counter()
    engine.upkeep.compute(state, lists, sorted({state.by_id[i] for i in sample}))
    live_ms = (time.perf_counter() - t0) / len(set(sample)) * 1000

    port = free_port()
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL, RECOMMENDER_API_KEYS="bench",
               RECOMMENDER_PRECOMPUTE_ON_START="false", RECOMMENDER_REFRESH_SECONDS="0.5")
    server = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=10) as client:
            for aid in sample[:200]:  # warm-up: connections, caches, first-touch page faults
                client.get(f"/v1/articles/{aid}/related")
            latencies = []
            deadline = time.perf_counter() + args.seconds
            started = time.perf_counter()
            for i in range(args.requests):
                aid = sample[i % len(sample)]
                t = time.perf_counter()
                response = client.get(f"/v1/articles/{aid}/related")
                latencies.append(time.perf_counter() - t)
                assert response.status_code == 200, response.text
                if time.perf_counter() > deadline:
                    break
            sequential_rps = len(latencies) / (time.perf_counter() - started)
            metrics = client.get("/metrics").text
        concurrent_rps = concurrent_load(base, sample, args)
        freshness = measure_freshness(base, stories, args.freshness_trials)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = [x * 1000 for x in latencies]
    hit_line = next((line for line in metrics.splitlines() if line.startswith("recommender_cache_hit_ratio")), "")
    return {
        "articles": size,
        "build_seconds": round(build_s, 1),
        "live_ranking_ms": round(live_ms, 2),
        "requests": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "sequential_rps": round(sequential_rps, 1),
        "concurrent_rps": round(concurrent_rps, 1),
        "concurrency": args.concurrency,
        "cache_hit_ratio": float(hit_line.split()[-1]) if hit_line else None,
        "freshness_ms_median": round(float(np.median(freshness)), 1),
        "freshness_ms_max": round(max(freshness), 1),
    }


def wait_ready(base: str, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {base} never became ready")


def concurrent_load(base: str, sample: list[str], args) -> float:
    import httpx

    count = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + min(args.seconds, 15)

    def worker(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            i = offset
            while time.perf_counter() < stop:
                client.get(f"/v1/articles/{sample[i % len(sample)]}/related")
                i += args.concurrency
                with lock:
                    count[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0] / (time.perf_counter() - started)


def measure_freshness(base: str, stories: list[list[str]], trials: int) -> list[float]:
    """Milliseconds from PUT start until the story's first article lists the new piece."""
    import httpx

    rng = random.Random(2)
    delays = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for trial in range(trials):
            story = rng.choice([s for s in stories if len(s) >= 3])
            first = client.get(f"/v1/articles/{story[0]}").json()
            last = client.get(f"/v1/articles/{story[-1]}").json()
            # Same story and topic, new wording: mostly the first piece's words (so it ranks among
            # the first piece's ten, in stories of up to a dozen pieces), not a copy of it.
            own, other = first["body"].split(), last["body"].split()
            words = rng.sample(own, int(len(own) * 0.6)) + rng.sample(other, int(len(other) * 0.3))
            rng.shuffle(words)
            follow_up = {"title": first["title"] + " " + words[0], "body": " ".join(words),
                         "published_at": last["published_at"], "section": last["section"]}
            new_id = f"fresh-{trial}"
            client.get(f"/v1/articles/{story[0]}/related")  # its list is precomputed and hot
            started = time.perf_counter()
            put = client.put(f"/v1/articles/{new_id}", json=follow_up, headers={"Authorization": "Bearer bench"})
            assert put.status_code == 200, put.text
            while True:
                items = client.get(f"/v1/articles/{story[0]}/related", params={"k": 10}).json()["items"]
                if any(i["id"] == new_id for i in items):
                    delays.append((time.perf_counter() - started) * 1000)
                    break
                if time.perf_counter() - started > 10:
                    delays.append(float("inf"))
                    break
                time.sleep(0.005)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--requests", type=int, default=3000, help="at most this many sequential requests per size")
    parser.add_argument("--seconds", type=float, default=60, help="and at most this long")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--freshness-trials", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the synthetic archives here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-api-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in args.sizes:
        result = bench_size(size, args, workdir)
        results.append(result)
        if not args.json:
            print(f"{size:>7} articles: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                  f"{result['sequential_rps']} req/s sequential, {result['concurrent_rps']} req/s with "
                  f"{args.concurrency} connections; freshness median {result['freshness_ms_median']} ms, "
                  f"max {result['freshness_ms_max']} ms; live ranking {result['live_ranking_ms']} ms/list; "
                  f"cache hit ratio {result['cache_hit_ratio']}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
