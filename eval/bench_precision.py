"""What storing an HNSW main's vectors in float16 instead of float32 changes, on real e5 vectors.

    python eval/bench_precision.py --model e5-small-q4@128 --queries 1000

An HNSW main (`AnnSettings.precision`) keeps its vectors in 2 bytes a component by
default: half the memory (768 MB against 1.5 GB at a million 384-dimension vectors).
The ranking reads them twice: the graph's nearest neighbours (its dense candidates)
and each candidate's cosine to the seed (a feature). This embeds MOROCO's test
articles (cached in eval/data by the texts' and model's hash), builds both graphs
over them as a first build does (`start_main`, `fill`), and reports for --queries
articles: each graph's recall@10 against exact float32 search, how many of the
float32 graph's top 10 the float16 graph returns, and the cosine differences over
each query's 100 nearest neighbours, with how often their order changes.
Results go to --out (precision.json, precision.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from eval.prepare_moroco import convert
from recommender.index.vector_index import VectorIndex
from recommender.settings import AnnSettings

MOROCO = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "moroco" / "moroco-test.jsonl"
CACHE = Path(__file__).resolve().parent / "data"


def texts_of(source: Path) -> list[str]:
    with source.open(encoding="utf-8") as fh:
        rows = [convert(json.loads(line)) for line in fh if line.strip()]
    return [f"{row['title']}. {row['body']}".strip() for row in rows]


def embedded(texts: list[str], model: str) -> np.ndarray:
    """The texts' vectors, from the cache when the same texts met the same model before."""
    from embeddings.registry import load_embedder

    key = hashlib.sha256(json.dumps([model, texts]).encode()).hexdigest()[:16]
    path = CACHE / f"precision-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = load_embedder(model).embed(texts).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def graph(vectors: np.ndarray, precision: str) -> VectorIndex:
    index = VectorIndex(vectors.shape[1], ann=AnnSettings(exact_below=0, precision=precision))
    index.start_main(len(vectors))
    index.fill(np.arange(len(vectors)), vectors)
    index.filled()
    return index


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def compare(vectors: np.ndarray, queries: int, seed: int = 0) -> dict:
    rows = np.random.default_rng(seed).choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    asked = vectors[rows]
    exact = np.argsort(-(asked @ vectors.T), axis=1, kind="stable")
    full, half = graph(vectors, "float32"), graph(vectors, "float16")
    found32, found16 = full.search(asked, 10)[1], half.search(asked, 10)[1]
    near = exact[:, :100]
    cos32 = np.einsum("qd,qkd->qk", asked, full.reconstruct(near.ravel()).reshape(*near.shape, -1))
    cos16 = np.einsum("qd,qkd->qk", half.reconstruct(rows), half.reconstruct(near.ravel()).reshape(*near.shape, -1))
    flips = np.mean([np.any(np.argsort(-a, kind="stable")[:10] != np.argsort(-b, kind="stable")[:10])
                     for a, b in zip(cos32, cos16)])
    gaps = np.abs(np.diff(np.sort(cos32, axis=1), axis=1))
    return {
        "articles": len(vectors), "queries": len(rows), "dimension": vectors.shape[1],
        "recall@10_float32_graph": round(overlap(found32, exact[:, :10]), 4),
        "recall@10_float16_graph": round(overlap(found16, exact[:, :10]), 4),
        "float16_top10_in_float32_top10": round(overlap(found16, found32), 4),
        "cosine_abs_diff_max": float(np.abs(cos32 - cos16).max()),
        "cosine_abs_diff_p99": float(np.quantile(np.abs(cos32 - cos16), 0.99)),
        "cosine_gap_between_neighbours_median": float(np.median(gaps)),
        "queries_whose_top10_order_changes": round(float(flips), 4),
        "bytes_per_vector": {"float32": 4 * vectors.shape[1], "float16": 2 * vectors.shape[1]},
    }


def markdown(result: dict, model: str) -> str:
    lines = [f"# float16 against float32 vectors in an HNSW main ({model}, MOROCO test articles)", "",
             "| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in result.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="e5-small-q4@128", help="the model whose vectors are compared")
    parser.add_argument("--source", type=Path, default=MOROCO, help="MOROCO's JSONL")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("eval/results/precision"))
    args = parser.parse_args()
    if not args.source.exists():
        parser.error(f"{args.source} not found: MOROCO is in ../shared/data/moroco/ (see ../shared/README.md)")
    vectors = embedded(texts_of(args.source), args.model)
    result = compare(vectors, args.queries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps({"model": args.model, **result}, indent=2) + "\n")
    (args.out / "precision.md").write_text(markdown(result, args.model))
    print(markdown(result, args.model))


if __name__ == "__main__":
    main()
