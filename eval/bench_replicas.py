"""Several servers over one PostgreSQL, against one server over SQLite, on this machine.

    python eval/bench_replicas.py --articles 100000 --workdir /tmp/replicas \\
        --database postgresql://postgres@127.0.0.1:5432/postgres

The archive is bench_scale's synthetic one (`hashing:384`, stories of about ten
pieces), ingested into SQLite with every list (kept in --workdir and reused), then
moved with `recommender store copy` into a new database on --database's server. Then:

- copy: rows/s of `store copy` (articles, vectors, lists and the change log);
- latency: p50 / p99 of GET /v1/articles/{id}/related (precomputed lists), one
  server over SQLite against one over PostgreSQL, in the same run (a ratio);
- throughput: requests/s with 1, 2 and 3 replicas over the database, spread
  round-robin by one load generator, with the CPU seconds each side used per second
  (this box has 2 cores: the load generator, the servers and PostgreSQL share them);
- freshness: a story's follow-up PUT through one replica until the story's first
  piece lists it through another (median and max);
- failover: the list worker's replica killed (SIGKILL), then a write through
  another, until a third serves the recomputed list;
- lost writes: every acknowledged write is in the database.

Each replica has a data dir of its own, seeded with the SQLite archive's index
files (they fit the copy), as a replica on another machine would be. Results go to
--out (replicas.json, replicas.md). Targets (issue 23): p99 <= 5 ms through
PostgreSQL, freshness <= 1 s, failover <= 10 s, 0 lost writes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from eval.bench_api import MODEL, free_port, percentile, wait_ready
from eval.bench_scale import build, synthetic_archive

KEY = "bench"


def lists_ready(data: Path, workers: int) -> float:
    """Every list of the SQLite archive, computed once (reused on later runs); seconds taken."""
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    engine = Engine(Settings(data_dir=data, model=MODEL))
    state = engine.state()
    lists = engine.lists_for(state)
    todo = engine.upkeep.missing(state, lists)
    started = time.perf_counter()
    if todo:
        engine.upkeep.compute_in_processes(state, lists, todo, workers, progress=True)
    engine.upkeep.record(state, lists)
    return round(time.perf_counter() - started, 1)


def new_database(admin: str, name: str) -> str:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    parts = conninfo_to_dict(admin)
    return f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/{name}"


def copy_rate(data: Path, url: str) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "recommender.cli", "store", "copy", "--data-dir", str(data),
                          "--to", url], check=True, capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    counts = {part.split()[0]: int(part.split()[1].replace(",", ""))
              for part in out.split(": ", 1)[1].split(";")[0].split(", ")}
    return {"copy_s": round(seconds, 1), "copy_rows": sum(counts.values()),
            "copy_rows_per_s": round(sum(counts.values()) / seconds), "copy_articles_per_s":
            round(counts["articles"] / seconds)}


class Server:
    def __init__(self, data: Path, url: str | None, index_from: Path | None = None):
        if index_from is not None and not data.exists():
            shutil.copytree(index_from / "indexes", data / "indexes")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL, RECOMMENDER_API_KEYS=KEY,
                   RECOMMENDER_DATABASE_URL=url or "")
        self.proc = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(self.port),
                                      "--log-level", "warning"], env=env)
        wait_ready(self.base)

    def ready(self) -> dict:
        import httpx

        return httpx.get(f"{self.base}/readyz", timeout=5).json()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def latency(base: str, sample: list[str], requests: int) -> dict:
    import httpx

    times = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for aid in sample[:50]:  # warm the connection and the pages
            client.get(f"/v1/articles/{aid}/related")
        for i in range(requests):
            started = time.perf_counter()
            assert client.get(f"/v1/articles/{sample[i % len(sample)]}/related").status_code == 200
            times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}


def throughput(servers: list[Server], sample: list[str], seconds: float, concurrency: int) -> dict:
    import httpx

    count, errors = [0], [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        clients = [httpx.Client(base_url=s.base, timeout=10) for s in servers]
        i = offset
        while time.perf_counter() < stop:
            ok = clients[i % len(clients)].get(f"/v1/articles/{sample[i % len(sample)]}/related").status_code == 200
            i += concurrency
            with lock:
                count[0] += 1
                errors[0] += not ok
        for c in clients:
            c.close()

    cpu_before = [s.cpu_seconds() for s in servers]
    own_before = time.process_time()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    servers_cpu = sum(s.cpu_seconds() - b for s, b in zip(servers, cpu_before))
    return {"replicas": len(servers), "rps": round(count[0] / wall, 1), "errors": errors[0],
            "servers_cpu_per_s": round(servers_cpu / wall, 2),
            "load_generator_cpu_per_s": round((time.process_time() - own_before) / wall, 2)}


def follow_up(client, story: list[str], new_id: str, rng: random.Random) -> dict:
    """A new piece of the story, worded mostly like its first one (so it enters that one's list)."""
    first = client.get(f"/v1/articles/{story[0]}").json()
    last = client.get(f"/v1/articles/{story[-1]}").json()
    own, other = first["body"].split(), last["body"].split()
    words = rng.sample(own, int(len(own) * 0.6)) + rng.sample(other, int(len(other) * 0.3))
    rng.shuffle(words)
    return {"title": first["title"] + " " + words[0], "body": " ".join(words),
            "published_at": last["published_at"], "section": last["section"]}


def listed(client, seed: str, new_id: str) -> bool:
    items = client.get(f"/v1/articles/{seed}/related", params={"k": 10}).json().get("items", [])
    return any(i["id"] == new_id for i in items)


def freshness(servers: list[Server], stories: list[list[str]], trials: int, written: list[str]) -> list[float]:
    """Milliseconds from a PUT through one replica until another one's list shows it."""
    import httpx

    rng = random.Random(2)
    delays = []
    for trial in range(trials):
        writer, reader = servers[trial % len(servers)], servers[(trial + 1) % len(servers)]
        with httpx.Client(base_url=writer.base, timeout=30) as w, httpx.Client(base_url=reader.base, timeout=30) as r:
            story = rng.choice([s for s in stories if len(s) >= 3])
            new_id = f"fresh-{trial}"
            body = follow_up(w, story, new_id, rng)
            started = time.perf_counter()
            put = w.put(f"/v1/articles/{new_id}", json=body, headers={"Authorization": f"Bearer {KEY}"})
            assert put.status_code == 200, put.text
            written.append(new_id)
            while not listed(r, story[0], new_id):
                if time.perf_counter() - started > 10:
                    break
                time.sleep(0.005)
            delays.append((time.perf_counter() - started) * 1000)
    return delays


def failover(servers: list[Server], stories: list[list[str]], trial: int, written: list[str],
             restart: Callable[[], Server]) -> float:
    """Seconds from the list worker's SIGKILL until another replica serves a list recomputed
    for a write made after it."""
    import httpx

    leader = next(s for s in servers if s.ready().get("list_worker"))
    others = [s for s in servers if s is not leader]
    rng = random.Random(100 + trial)
    story = rng.choice([s for s in stories if len(s) >= 3])
    new_id = f"failover-{trial}"
    with httpx.Client(base_url=others[0].base, timeout=30) as w, httpx.Client(base_url=others[-1].base,
                                                                               timeout=30) as r:
        body = follow_up(w, story, new_id, rng)
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        killed = time.perf_counter()
        assert w.put(f"/v1/articles/{new_id}", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        written.append(new_id)
        while not listed(r, story[0], new_id) and time.perf_counter() - killed < 60:
            time.sleep(0.02)
        seconds = time.perf_counter() - killed
    servers[servers.index(leader)] = restart()
    return round(seconds, 2)


def lost_writes(url: str, written: list[str]) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        found = {r[0] for r in conn.execute("SELECT id FROM articles WHERE id = ANY(%s)", (written,))}
    return len(set(written) - found)


def run(args) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data, _, ingest = build(args.articles, workdir)
    stories = synthetic_archive(None, args.articles)
    result: dict = {"articles": args.articles, "model": MODEL, "cores": os.cpu_count(), **ingest,
                    "lists_s": lists_ready(data, args.workers)}
    for old in workdir.glob("replica-*"):  # their index files would be ahead of the new copy
        shutil.rmtree(old)
    url = new_database(args.database, "recommender_bench_replicas")
    result.update(copy_rate(data, url))
    sample = [aid for story in random.Random(1).sample(stories, min(400, len(stories))) for aid in story[:3]]
    servers: list[Server] = []
    try:
        lite = Server(data, None)
        sqlite_latency = latency(lite.base, sample, args.requests)
        lite.stop()
        replicas = [Server(workdir / f"replica-{i}", url, index_from=data) for i in range(3)]
        servers = replicas
        pg_latency = latency(replicas[0].base, sample, args.requests)
        result["latency"] = {"sqlite": sqlite_latency, "postgres": pg_latency,
                             "p99_ratio_postgres_to_sqlite": round(pg_latency["p99_ms"] / sqlite_latency["p99_ms"], 2)}
        result["throughput"] = [throughput(replicas[:n], sample, args.seconds, args.concurrency) for n in (1, 2, 3)]
        written: list[str] = []
        delays = freshness(replicas, stories, args.trials, written)
        result["freshness_ms_median"] = round(float(np.median(delays)), 1)
        result["freshness_ms_max"] = round(max(delays), 1)
        restarts = iter(range(1_000))

        def restart() -> Server:  # the killed replica comes back, as a new machine would
            return Server(workdir / f"replica-new-{next(restarts)}", url, index_from=data)

        result["failover_s"] = [failover(replicas, stories, t, written, restart) for t in range(args.failovers)]
        result["writes"] = len(written)
        result["lost_writes"] = lost_writes(url, written)
    finally:
        for s in servers:
            s.stop()
    return result


def report(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency"]
    lines = [f"# Replicas over PostgreSQL: {result['articles']:,} articles, {result['cores']} cores", "",
             f"- store copy: {result['copy_rows']:,} rows in {result['copy_s']} s "
             f"({result['copy_rows_per_s']:,} rows/s, {result['copy_articles_per_s']:,} articles/s)",
             f"- related, precomputed: SQLite p50 {lat['sqlite']['p50_ms']} ms / p99 {lat['sqlite']['p99_ms']} ms; "
             f"PostgreSQL p50 {lat['postgres']['p50_ms']} ms / p99 {lat['postgres']['p99_ms']} ms "
             f"(p99 ratio {lat['p99_ratio_postgres_to_sqlite']})",
             f"- freshness across replicas: median {result['freshness_ms_median']} ms, max {result['freshness_ms_max']} ms",
             f"- list worker failover: {', '.join(f'{s} s' for s in result['failover_s'])}",
             f"- lost writes: {result['lost_writes']} of {result['writes']}", "",
             "| replicas | requests/s | errors | servers' CPU s/s | load generator's CPU s/s |", "|---|---|---|---|---|"]
    lines += [f"| {t['replicas']} | {t['rps']} | {t['errors']} | {t['servers_cpu_per_s']} | "
              f"{t['load_generator_cpu_per_s']} |" for t in result["throughput"]]
    (out / "replicas.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/replicas")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a server where the benchmark may create its database")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes computing lists")
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--trials", type=int, default=20, help="freshness trials")
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--out", default="eval/results")
    args = parser.parse_args()
    report(run(args), Path(args.out))


if __name__ == "__main__":
    main()
