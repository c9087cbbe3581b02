"""e5 fine-tuned on ZF's links (`recommender finetune`) against e5, on the development split.

    python eval/bench_finetune.py --out eval/results/finetune [--finetune-options '--max-tokens 128']

1. The 2013-2021 development file is ingested into a data dir of its own with
   `hashing:384` (the training reads texts and links, not vectors), once.
2. `recommender finetune --until 2021-01-01` runs there, as a user runs it:
   it learns from the links of articles published before 2021 and prints the
   dense source's held-out figures on the newest of them. Timed. `--model`
   skips this and takes a model built before.
3. On the 2020-2021 pool (`eval/cache/zf`, the README's split), the queries of
   2021, past-only: the dense source's recall@100 and hit@10, and the default
   ranking's hit@10 and MRR@10, with the hand-set profile and with a profile
   tuned for each model on the pool's 2020 links (`tune --until 2021-01-01`),
   with each model; the differences are paired query by query (bootstrap 95 %
   intervals).
4. General text: how much of e5's similarities the model keeps over pairs of the
   pool (no labels), MOROCO P@5 (the first `--moroco-n` articles, default ranking)
   and RO-STS Spearman, with each model.

Every vector goes through each data dir's cache, so a rerun embeds nothing;
the first one embeds the pool (4,832 articles) and the MOROCO sample with the
new model. The 2022 test file is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

UNTIL = "2021-01-01"
SINCE = datetime(2021, 1, 1, tzinfo=timezone.utc)
BASE = "e5-small-q4"


def blended(model: str, share: float) -> str:
    """A model built before, re-blended with e5 at `share` (`finetune --blend`), without training
    again: `share` is of the model's own trained weights, so blend it from a model saved at 1."""
    from dataclasses import replace

    from embeddings.e5_train import WEIGHTS_FILE, blend, read_meta, save_model

    source = Path(model.removeprefix("ft:"))
    target = source.with_name(f"{source.name}-blend{round(share * 100)}")
    if not (target / WEIGHTS_FILE).exists():
        target.mkdir(exist_ok=True)
        with np.load(source / WEIGHTS_FILE) as tuned:
            trained = {k: tuned[k] for k in tuned.files}
        save_model(target, blend(trained, share), replace(read_meta(source), blend=share))
    return f"ft:{target}"


def train_store(dev: Path, data_dir: Path) -> None:
    if (data_dir / "store.sqlite").exists():
        return
    subprocess.run(["recommender", "ingest", str(dev), "--data-dir", str(data_dir), "--model", "hashing:384",
                    "--no-precompute", "--no-progress"], check=True)


def finetune(data_dir: Path, extra: str) -> tuple[str, dict, float]:
    started = time.perf_counter()
    out = subprocess.run(["recommender", "finetune", "--data-dir", str(data_dir), "--until", UNTIL, "--json",
                          "--no-progress", *shlex.split(extra)], check=True, stdout=subprocess.PIPE, text=True)
    meta = json.loads(out.stdout)
    return f"ft:{Path(meta['path']).resolve()}", meta, time.perf_counter() - started


def pool_vectors(model: str, data_dir: Path) -> np.ndarray:
    """Every pool article's vector under `model`, in one order (per_query embedded them)."""
    from recommender.settings import Settings
    from recommender.store.base import open_store
    from recommender.store.models import model_name

    store = open_store(Settings(data_dir=data_dir))
    vectors = [store.vector(model_name(model), info.content_hash) for info in store.all_infos()]
    return np.vstack([v for v in vectors if v is not None])


def per_query(model: str, dataset: Path, data_dir: Path) -> dict[str, dict[str, float]]:
    """Per 2021 query: the dense source's recall@100 and hit@10, the default ranking's hit@10 and MRR@10."""
    from eval.dataset import load_dataset
    from eval.metrics import hit_at_k, reciprocal_rank
    from eval.runner import _not_after, pick_queries, run_strategy
    from recommender.serving.engine import Engine
    from recommender.settings import Settings

    data = load_dataset(str(dataset))
    engine = Engine(Settings(data_dir=data_dir, model=model))
    engine.ingest([str(dataset)], index=False)
    state = engine.indexes.build_state("eval", engine.embedder.dimension)

    def relevant(q: str) -> set[str]:
        return {r for r in data.relevant("related", q) if _not_after(data, r, q)}

    queries = [q for q in pick_queries(data, state, None, SINCE) if relevant(q)]
    dense = run_strategy(engine, state, "dense", queries, 100, True, {}).lists
    ranked = run_strategy(engine, state, "default", queries, 10, True, {}).lists
    tuned = run_strategy(engine, state, "default", queries, 10, True, {"weights": tuned_weights(engine, state)}).lists
    return {q: {"dense recall@100": len(relevant(q) & set(dense[q][:100])) / len(relevant(q)),
                "dense hit@10": hit_at_k(dense[q], relevant(q), 10),
                "hit@10": hit_at_k(ranked[q], relevant(q), 10),
                "MRR@10": reciprocal_rank(ranked[q], relevant(q), 10),
                "tuned hit@10": hit_at_k(tuned[q], relevant(q), 10),
                "tuned MRR@10": reciprocal_rank(tuned[q], relevant(q), 10)} for q in queries}


def tuned_weights(engine, state) -> dict[str, float]:  # noqa: ANN001 - an Engine and its IndexState
    """The profile `recommender tune --until 2021-01-01` learns on the pool under this model (2020's links)."""
    from recommender.ranking import tune

    labels = tune.labels_from_articles(engine.store, list(state.by_id), "related", tune.url_index(engine.store))
    return tune.learn(state, engine.store, labels, engine.ranking(k=10), engine.embed, SINCE).weights


def paired(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict[str, dict]:
    from eval.metrics import bootstrap_ci

    queries = sorted(set(a) & set(b))
    out = {}
    for metric in next(iter(a.values())):
        va, vb = (np.array([side[q][metric] for q in queries]) for side in (a, b))
        lo, hi = bootstrap_ci(vb - va)
        out[metric] = {"e5": round(float(va.mean()), 4), "finetuned": round(float(vb.mean()), 4),
                       "diff": round(float((vb - va).mean()), 4), "ci": [round(lo, 4), round(hi, 4)],
                       "queries": len(queries)}
    return out


def general(model: str, moroco: Path, moroco_dir: Path, sts: Path) -> dict[str, float]:
    from eval.bench_models import sts as sts_spearman
    from eval.bench_models import topics

    p5 = topics(model, moroco_dir, moroco)
    return {"moroco_p5": round(p5["moroco_p5"], 4), "moroco_p5_ci": p5["moroco_p5_ci"],
            "sts_spearman": round(sts_spearman(model, moroco_dir, sts), 4)}


def moroco_sample(moroco: Path, n: int, work: Path) -> Path:
    path = work / f"moroco-{n}.jsonl"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        with moroco.open(encoding="utf-8") as fh:
            path.write_text("".join(line for line, _ in zip(fh, range(n))), encoding="utf-8")
    return path


def table(links: dict[str, dict], models: dict[str, dict], similarity: float) -> str:
    lines = ["| 2021 queries, past-only | e5 | fine-tuned | difference [95 % CI] |", "|---|---|---|---|"]
    for metric, r in links.items():
        lines.append(f"| {metric} | {r['e5']:.3f} | {r['finetuned']:.3f} | {r['diff']:+.3f} "
                     f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] |")
    lines += ["", "| general text | e5 | fine-tuned |", "|---|---|---|",
              f"| e5's cosines kept over pairs of the pool (Spearman) | 1 | {similarity:.3f} |"]
    for key in ("moroco_p5", "sts_spearman"):
        lines.append(f"| {key} | {models['e5'][key]:.3f} | {models['finetuned'][key]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, default=Path("eval/data/zf-dev.jsonl"))
    parser.add_argument("--train-dir", type=Path, default=Path("eval/cache/zfdev-hash"))
    parser.add_argument("--zf", type=Path, default=Path("eval/data/zf-2020-2021.jsonl"))
    parser.add_argument("--zf-cache", type=Path, default=Path("eval/cache/zf"))
    parser.add_argument("--moroco", type=Path, default=Path("eval/data/moroco.jsonl"))
    parser.add_argument("--moroco-n", type=int, default=1000)
    parser.add_argument("--moroco-cache", type=Path, default=Path("eval/cache/moroco-ft"))
    parser.add_argument("--sts", type=Path, default=Path("../shared/data/ro-sts/RO-STS.test.with_genre.tsv"))
    parser.add_argument("--finetune-options", default="", help="More options for recommender finetune")
    parser.add_argument("--model", default=None, help="A fine-tuned model built before (ft:<path>): no training")
    parser.add_argument("--blend", type=float, default=None,
                        help="With --model (one saved with --blend 1): score it re-blended at this share")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result: dict = {"command": " ".join(["python eval/bench_finetune.py", *sys.argv[1:]]), "cores": os.cpu_count()}
    model = args.model
    if model is None:
        train_store(args.dev, args.train_dir)
        model, result["finetune"], result["finetune_seconds"] = finetune(args.train_dir, args.finetune_options)
        print(json.dumps(result["finetune"]), flush=True)
    else:  # a model built before: what it measured when it was built
        from dataclasses import asdict

        from embeddings.e5_train import read_meta

        result["finetune"] = asdict(read_meta(Path(model.removeprefix("ft:"))))
    if args.blend is not None:
        model = blended(model, args.blend)
        result["blend"] = args.blend
    result["model"] = model
    a, b = per_query(BASE, args.zf, args.zf_cache), per_query(model, args.zf, args.zf_cache)
    result["links"] = paired(a, b)
    from recommender.ranking.finetune import similarity_kept

    result["similarity_kept"] = similarity_kept(pool_vectors(BASE, args.zf_cache), pool_vectors(model, args.zf_cache))
    print(json.dumps(result["links"]), flush=True)
    sample = moroco_sample(args.moroco, args.moroco_n, args.moroco_cache)
    result["general"] = {"e5": general(BASE, sample, args.moroco_cache, args.sts),
                         "finetuned": general(model, sample, args.moroco_cache, args.sts)}
    print(table(result["links"], result["general"], result["similarity_kept"]))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "results.md").write_text(f"# e5 fine-tuned on ZF's links\n\n```sh\n{result['command']}\n```\n\n"
                                             f"{table(result['links'], result['general'], result['similarity_kept'])}\n")


if __name__ == "__main__":
    main()
