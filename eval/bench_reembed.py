"""Re-embedding throughput: the job against the bare embedder, same texts, same model.

    python eval/bench_reembed.py --dataset eval/data/moroco.jsonl --n 120 --model e5-small-q4

Runs, in one process and in this order:
1. the bare embedder: `embedder.embed()` over the texts in batches, in-process;
2. `reembed` in-process (workers 0) into a fresh data dir;
3. `reembed --workers 1` and `--workers 2` (single-threaded processes).
Each job's time covers embedding and checkpoint commits (not the index build,
which the bare embedder does not do either). Targets (issue 4): job / bare >= 0.95,
and workers 2 > 1.5 x workers 1 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from recommender.serving.demo import demo_corpus_path


def load_texts(path: Path, n: int, embed_chars: int) -> list[dict]:
    from recommender.store.articles import parse_article

    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                records.append(json.loads(line))
            if len(records) >= n:
                break
    articles = [parse_article(r) for r in records]
    return [{"id": a.id, "title": a.title, "body": a.body, "text": a.embed_text(embed_chars).text} for a in articles]


def bare_rate(model: str, texts: list[str], batch_size: int) -> float:
    from embeddings import load_embedder
    from recommender.store.vector_cache import length_sorted_batches

    embedder = load_embedder(model, batch_size=batch_size)
    batches = length_sorted_batches([(str(i), t) for i, t in enumerate(texts)], batch_size)
    started = time.perf_counter()
    for batch in batches:
        embedder.embed([t for _, t in batch])
    return len(texts) / (time.perf_counter() - started)


def job_rate(model: str, records: list[dict], batch_size: int, workers: int, workdir: Path) -> float:
    from recommender.serving.engine import Engine
    from recommender.serving.reembed import ReembedOptions, run_reembed
    from recommender.settings import Settings

    data = Path(tempfile.mkdtemp(prefix=f"job-w{workers}-", dir=workdir))
    corpus = data / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({k: r[k] for k in ("id", "title", "body")}, ensure_ascii=False)
                                for r in records) + "\n")
    settings = Settings(data_dir=data / "data", model="hashing:8")
    Engine(settings).ingest([str(corpus)], precompute=False)  # the archive, with a throwaway model
    result = run_reembed(settings, ReembedOptions(model, batch_size=batch_size, workers=workers, activate=False),
                         echo=lambda _: None)
    return result.docs_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path(demo_corpus_path()))
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--model", default="e5-small-q4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--embed-chars", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = load_texts(args.dataset, args.n, args.embed_chars)
    texts = [r["text"] for r in records]
    workdir = Path(tempfile.mkdtemp(prefix="bench-reembed-"))
    bare = bare_rate(args.model, texts, args.batch_size)
    job = job_rate(args.model, records, args.batch_size, 0, workdir)
    one = job_rate(args.model, records, args.batch_size, 1, workdir)
    two = job_rate(args.model, records, args.batch_size, 2, workdir)
    result = {"model": args.model, "texts": len(texts), "batch_size": args.batch_size,
              "bare_docs_per_s": round(bare, 2), "job_docs_per_s": round(job, 2),
              "job_over_bare": round(job / bare, 3), "workers1_docs_per_s": round(one, 2),
              "workers2_docs_per_s": round(two, 2), "workers2_over_workers1": round(two / one, 3)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}, {len(texts)} texts, batch {args.batch_size}: bare {bare:.2f} docs/s, "
              f"job {job:.2f} docs/s (ratio {job / bare:.3f}); workers 1: {one:.2f} docs/s, "
              f"workers 2: {two:.2f} docs/s (ratio {two / one:.3f})")


if __name__ == "__main__":
    main()
