"""What an archive costs as it grows to a million articles, on this machine.

    python eval/bench_scale.py --sizes 100000 300000 1000000 --workdir /tmp/scale

For each size, a synthetic archive of stories (about 10 pieces over a few days,
12 sections, five years of dates; `hashing:384`, so the embedding is not what is
measured) is ingested into its own data dir (kept in --workdir and reused), then:

- ingest: wall time and articles/s (the embedding's own time, measured apart, is
  reported beside it);
- precompute: every article's related list, in `--workers` processes (as after
  a profile switch); with --precompute-sample N, N lists only, the whole
  archive's time extrapolated from their rate (the report says which);
- ANN recall@10 of the served index against exact search, on 500 articles;
- server: seconds from process start until /readyz answers 200, and until the
  index is loaded; resident memory once loaded;
- CLI: `recommender related ID` wall time, process start included (median of 5);
- HTTP: p50 / p99 of GET /v1/articles/{id}/related on precomputed lists;
- freshness: a story's follow-up PUT until the story's first piece lists it.

Results go to --out (scale.json, scale.md, scale.png). Targets (issue 13, at
1M): precompute <= 60 min, server ready <= 15 s, resident <= 4 GB, CLI related
<= 0.5 s, p99 <= 5 ms, freshness <= 1 s; cost per article within 1.5x from 100k to 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from eval.bench_api import MODEL, free_port, percentile, word

SECTIONS = 12
YEARS = 5


def synthetic_archive(path: Path | None, size: int, seed: int = 0) -> list[list[str]]:
    """Write `size` articles as stories of 8 to 12 pieces over a few days, across
    five years (to `path`; None: only the stories, of an archive built before);
    return the stories (lists of ids, oldest first)."""
    rng = random.Random(seed)
    topics = [[word(rng) for _ in range(40)] for _ in range(1000)]
    common = [word(rng) for _ in range(800)]
    start = time.mktime((2021, 1, 1, 0, 0, 0, 0, 0, -1))
    stories: list[list[str]] = []
    n = 0
    with (path.open("w") if path else open(os.devnull, "w")) as out:
        while n < size:
            topic = rng.randrange(len(topics))
            names = [word(rng).capitalize() for _ in range(3)]
            story_words = [word(rng) for _ in range(8)]
            day = rng.uniform(0, 365 * YEARS)
            ids = []
            for part in range(min(rng.randint(8, 12), size - n)):
                aid = f"a{n}"
                words = rng.sample(topics[topic], 10) + story_words + rng.sample(common, 30)
                rng.shuffle(words)
                title = " ".join(words[:6] + names[:2])
                body = " ".join(words[6:]) + ". " + " ".join(names) + " " + " ".join(rng.sample(common, 10))
                when = start + (day + part * rng.uniform(0.2, 1.0)) * 86400
                out.write(json.dumps({
                    "id": aid, "title": title, "body": body, "url": f"https://www.example.ro/{aid}",
                    "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
                    "section": f"s{topic % SECTIONS}"}) + "\n")
                ids.append(aid)
                n += 1
            stories.append(ids)
    return stories


def build(size: int, workdir: Path) -> tuple[Path, list[list[str]], dict]:
    """The archive's data dir, ingested once (reused on later runs), and its stories."""
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    data, corpus = workdir / f"data-{size}", workdir / f"corpus-{size}.jsonl"
    done = workdir / f"ingest-{size}.json"
    if done.exists() and (data / "store.sqlite").exists():
        return data, synthetic_archive(None, size), json.loads(done.read_text())
    stories = synthetic_archive(corpus, size)
    started = time.perf_counter()
    Engine(Settings(data_dir=data, model=MODEL)).ingest([str(corpus)], progress=True, precompute=False)
    ingest_s = time.perf_counter() - started
    report = {"ingest_s": round(ingest_s, 1), "ingest_per_s": round(size / ingest_s, 1),
              "embed_s": round(embed_seconds(corpus), 1)}
    done.write_text(json.dumps(report))
    return data, stories, report


def prepare_index(data: Path, rebuild: bool = False) -> float | None:
    """Seconds to bring an archive built by an earlier release to this one's index
    (HNSW by size, lexical indexes saved for a fast restart), or to rebuild its graph
    with the current settings; None when it is current."""
    from recommender.index.files import read_sealed
    from recommender.index.state import LEXICAL_DIR
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    settings = Settings(data_dir=data, model=MODEL)
    engine = Engine(settings)
    meta = engine.indexes.active_meta()
    if meta is None:
        raise SystemExit(f"no index in {data}: run the ingest step first")
    wanted = "hnsw" if meta.count >= settings.ann.exact_below else "exact"
    manifest = engine.versions.path(meta.version) / LEXICAL_DIR / "meta.json"
    if not rebuild and meta.kind == wanted and manifest.exists() and "parts" in json.loads(read_sealed(manifest)):
        return None
    started = time.perf_counter()
    state = engine.state()
    state.vectors.compact(rebuild=rebuild)
    engine.indexes.save(state)
    return round(time.perf_counter() - started, 1)


def embed_seconds(corpus: Path) -> float:
    """The embedding's own share of an ingest: the same texts through the same model."""
    from embeddings import load_embedder

    embedder = load_embedder(MODEL)
    texts = [a["title"] + "\n" + a["body"] for a in map(json.loads, corpus.open())]
    started = time.perf_counter()
    for i in range(0, len(texts), 512):
        embedder.embed(texts[i:i + 512])
    return time.perf_counter() - started


def precompute(data: Path, sample: list[str], per_size: int, workers: int) -> dict:
    """Compute lists in `workers` processes: the sample's (served below) plus enough
    others for --precompute-sample, or all of them; their rate and the archive's time."""
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    engine = Engine(Settings(data_dir=data, model=MODEL))
    started = time.perf_counter()
    state = engine.state()
    load_s = time.perf_counter() - started
    lists = engine.lists_for(state)
    todo = engine.upkeep.missing(state, lists)
    if per_size < 0:  # keep the earlier run's figures: only the lists served below
        todo = sorted({state.by_id[i] for i in sample} & set(todo))
    elif per_size:
        rng = random.Random(3)
        wanted = {state.by_id[i] for i in sample}
        todo = sorted(wanted | set(rng.sample(todo, min(per_size, len(todo)))) & set(todo))
    started = time.perf_counter()
    engine.upkeep.compute_in_processes(state, lists, todo, workers, progress=True)
    seconds = time.perf_counter() - started
    engine.upkeep.record(state, lists)  # the lists follow the change log: the CLI may read them
    rate = len(todo) / seconds if todo else float("nan")
    return {"load_s": round(load_s, 1), "lists_computed": len(todo), "lists_per_s": round(rate, 1),
            "precompute_min": round(len(state.infos) / rate / 60, 1) if todo else None,
            "precompute_extrapolated": bool(per_size), "ann_recall_at_10": ann_recall(state)}


def ann_recall(state, queries: int = 500, k: int = 10) -> float:
    """Recall@k of the served index's search against exact search over the same vectors."""
    ids = state.vectors.ids()
    rng = np.random.default_rng(0)
    picked = rng.choice(ids, size=min(queries, len(ids)), replace=False)
    vectors = state.vectors.reconstruct(picked)
    _, found = state.vectors.search(vectors, k)
    everything = state.vectors.reconstruct(ids)
    hits = 0
    for row, vector in enumerate(vectors):
        scores = everything @ vector
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        good = set(ids[scores >= kth - 1e-6].tolist())  # ties with the k-th are as good as it
        hits += len(good & set(found[row].tolist()))
    return round(hits / (len(vectors) * k), 4)


def cli_seconds(data: Path, commands: list[list[str]]) -> float:
    """Median wall seconds of `recommender COMMAND...`, process start included."""
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL)
    times = []
    for command in commands:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "recommender.cli", *command], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 2)


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MB of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    resident, peak = (round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM"))
    return resident, peak


def serve(data: Path, sample: list[str], stories: list[list[str]], requests: int) -> dict:
    import httpx

    from eval.bench_api import measure_freshness

    port = free_port()
    env = dict(os.environ, RECOMMENDER_DATA_DIR=str(data), RECOMMENDER_MODEL=MODEL, RECOMMENDER_API_KEYS="bench",
               RECOMMENDER_PRECOMPUTE_ON_START="false", RECOMMENDER_REFRESH_SECONDS="0.5")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "recommender.cli", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_for(base, lambda r: r.status_code == 200)
        loaded_s = wait_for(base, lambda r: r.status_code == 200 and r.json().get("index_loaded", True))
        ready_s, loaded_s = round(ready_s - started, 1), round(loaded_s - started, 1)
        with httpx.Client(base_url=base, timeout=10) as client:
            for aid in sample[:200]:  # warm-up: connections, first-touch page faults
                client.get(f"/v1/articles/{aid}/related")
            latencies = []
            for i in range(requests):
                t = time.perf_counter()
                response = client.get(f"/v1/articles/{sample[i % len(sample)]}/related")
                latencies.append((time.perf_counter() - t) * 1000)
                assert response.status_code == 200, response.text
        rss, peak = rss_mb(server.pid)
        freshness = measure_freshness(base, [s for s in stories if s[0] in set(sample)] or stories, 5)
        rss_after_writes = rss_mb(server.pid)[0]
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"ready_s": ready_s, "loaded_s": loaded_s, "rss_mb": rss, "peak_rss_mb": peak,
            "rss_after_writes_mb": rss_after_writes,
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "freshness_ms_median": round(float(np.median(freshness)), 1), "freshness_ms_max": round(max(freshness), 1)}


def wait_for(base: str, ok, timeout: float = 3600) -> float:
    """perf_counter() when GET /readyz first satisfies `ok`."""
    import httpx

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if ok(httpx.get(f"{base}/readyz", timeout=5)):
                return time.perf_counter()
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {base} never became ready")


def bench_size(size: int, args) -> dict:
    data, stories, result = build(size, args.workdir)
    rng = random.Random(1)
    firsts = [s[0] for s in rng.sample(stories, min(200, len(stories)))]
    sample = firsts + [f"a{rng.randrange(size)}" for _ in range(1800)]
    result = {"articles": size, **result}
    upgraded = prepare_index(data, args.rebuild_index)
    if upgraded is not None:
        result["index_upgrade_s"] = upgraded
    computed = precompute(data, sample, -1 if args.keep_precompute else args.precompute_sample, args.workers)
    if (computed["lists_computed"] == 0 or args.keep_precompute) and args.previous.get(size):  # a rerun
        carried = ("lists_computed", "lists_per_s", "precompute_min", "precompute_extrapolated")
        computed.update({key: args.previous[size][key] for key in carried if key in args.previous[size]})
    result.update(computed)
    result["cli_related_s"] = cli_seconds(data, [["related", aid, "--json"] for aid in sample[:5]])
    result["cli_stats_s"] = cli_seconds(data, [["stats", "--json"]] * 3)
    result.update(serve(data, sample, stories, args.requests))
    return result


def report(results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    columns = ["articles", "ingest_s", "ingest_per_s", "embed_s", "lists_per_s", "precompute_min", "ann_recall_at_10",
               "ready_s", "loaded_s", "rss_mb", "rss_after_writes_mb", "cli_related_s", "cli_stats_s", "p50_ms", "p99_ms", "freshness_ms_max"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in results]
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "scale.png")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["articles"] for r in results]
    per_article = {
        "ingest, ms per article": [1000 / r["ingest_per_s"] for r in results],
        "precompute, ms per list (2 processes)": [1000 / r["lists_per_s"] for r in results],
        "resident memory, KB per article": [r["rss_mb"] * 1024 / r["articles"] for r in results],
        "server loaded, ms per 1,000 articles": [r["loaded_s"] * 1e6 / r["articles"] for r in results],
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, values in per_article.items():
        left.plot(sizes, values, marker="o", label=label)
    left.set(xscale="log", title="cost per article against archive size", xlabel="articles")
    left.legend(fontsize=8)
    for key, label in [("p99_ms", "HTTP related p99, ms"), ("cli_related_s", "CLI related, s"),
                       ("ready_s", "server ready, s")]:
        right.plot(sizes, [r[key] for r in results], marker="o", label=label)
    right.set(xscale="log", yscale="log", title="latencies", xlabel="articles")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/scale"), help="synthetic archives, kept and reused")
    parser.add_argument("--out", type=Path, default=Path("eval/results/scale"))
    parser.add_argument("--workers", type=int, default=2, help="processes computing lists")
    parser.add_argument("--precompute-sample", type=int, default=0, metavar="N",
                        help="compute N lists and extrapolate the archive's time (0: compute them all)")
    parser.add_argument("--requests", type=int, default=3000, help="sequential HTTP requests per size")
    parser.add_argument("--keep-precompute", action="store_true",
                        help="keep the precompute figures of the last run (compute only the lists served)")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rebuild each archive's index with the current settings (RECOMMENDER_ANN__*)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    done = args.workdir / "results.json"
    results = {r["articles"]: r for r in json.loads(done.read_text())} if done.exists() else {}
    args.previous = dict(results)
    for size in args.sizes:
        results[size] = bench_size(size, args)
        print(json.dumps(results[size]), flush=True)
        done.write_text(json.dumps(list(results.values())))
        report(sorted(results.values(), key=lambda r: r["articles"]), args.out)


if __name__ == "__main__":
    main()
