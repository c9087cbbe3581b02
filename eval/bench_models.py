"""Embedding options side by side: speed on this machine and quality, same data.

    python eval/bench_models.py --out eval/results/models

For each option: docs/s embedding ZF articles in this process (every core the
model uses by itself), the editors' links of the ranking issue's development
split (hit@10 / MRR@10, default ranking, past-only, queries of 2021), MOROCO
P@5 (default ranking) and RO-STS Spearman. Options:

- `e5-small-q4` (the default: 2,000 characters, 270 tokens on average on ZF,
  at most 512), and `e5-small-q4@N`, reading only the first N tokens (title and
  lead) while BM25 and names still read the 2,000 characters;
- `static:sN`, distilled from e5 by `recommender distill` in each data dir
  (ZF: sampling only articles before 2021, the queries' year);
- `hashing:384`, the floor: shared words and nothing else.

Every vector goes through each data dir's cache: a rerun embeds nothing. The
first run embeds the ZF pool (4,832 articles) and MOROCO (5,923) at each
window: about an hour on 2 cores beside the caches of the README's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ZF_SINCE = datetime(2021, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Option:
    label: str
    model: str  # "static" is resolved per data dir


OPTIONS = [  # cheapest first: an interrupted run has written those already
    Option("e5, up to 512 tokens (default)", "e5-small-q4"),
    Option("static, distilled from e5", "static"),
    Option("hashing (shared words only)", "hashing:384"),
    Option("e5, first 64 tokens", "e5-small-q4@64"),
    Option("e5, first 128 tokens", "e5-small-q4@128"),
    Option("e5, first 256 tokens", "e5-small-q4@256"),
]


@dataclass
class Row:
    option: str
    model: str
    docs_per_s: float
    cores_busy: float  # process CPU time over wall time while embedding: every core, or one?
    hit10: float | None = None
    hit10_ci: list | None = None
    mrr10: float | None = None
    mrr10_ci: list | None = None
    moroco_p5: float | None = None
    moroco_p5_ci: list | None = None
    sts_spearman: float | None = None


def settings_for(data_dir: Path, model: str):
    from recommender.settings import Settings

    return Settings(data_dir=data_dir, model=model)


def resolve(option: Option, data_dir: Path, dataset: Path, until: datetime | None) -> str:
    """The option's model string in `data_dir`: a static model there distilled with
    these options, built once (the archive is ingested first so it has words to count)."""
    if option.model != "static":
        return option.model
    from embeddings.static import read_meta
    from recommender.distill import DistillOptions, run_distill
    from recommender.engine import Engine

    models = data_dir / "models"
    want = until.isoformat() if until else None
    for path in sorted(models.glob("s*")) if models.exists() else []:
        if read_meta(path).sample_until == want:
            return f"static:{path.name}"
    Engine(settings_for(data_dir, "e5-small-q4")).ingest([str(dataset)], index=False)
    return run_distill(settings_for(data_dir, "e5-small-q4"), DistillOptions(until=until)).model


def speed(model: str, data_dir: Path, dataset: Path, n: int) -> tuple[float, float]:
    from recommender.articles import parse_article
    from recommender.models import load_model

    texts = []
    with dataset.open(encoding="utf-8") as fh:
        for line in fh:
            texts.append(parse_article(json.loads(line)).embed_text(settings_for(data_dir, model).embed_chars).text)
            if len(texts) >= n:
                break
    embedder = load_model(model, models_dir=data_dir / "models")
    embedder.embed(texts[:4])  # load and warm up
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), 32):
        embedder.embed(texts[start:start + 32])
    wall = time.perf_counter() - started
    return len(texts) / wall, (time.process_time() - cpu) / wall


def links(model: str, data_dir: Path, dataset: Path) -> dict:
    from eval.runner import evaluate

    ev = evaluate(str(dataset), settings_for(data_dir, model), [model], ["default"], [10], past_only=True,
                  since=ZF_SINCE)
    r = ev.results[0]
    return {"hit10": r.metrics["hit@10"], "hit10_ci": r.ci.get("hit@10"), "mrr10": r.metrics["MRR"],
            "mrr10_ci": r.ci.get("MRR")}


def topics(model: str, data_dir: Path, dataset: Path) -> dict:
    from eval.runner import evaluate

    ev = evaluate(str(dataset), settings_for(data_dir, model), [model], ["default"], [5])
    r = ev.results[0]
    return {"moroco_p5": r.metrics["P@5"], "moroco_p5_ci": r.ci.get("P@5")}


def sts(model: str, data_dir: Path, path: Path) -> float:
    from eval.sts import evaluate_sts
    from recommender.models import load_model
    from recommender.store import Store

    data_dir.mkdir(parents=True, exist_ok=True)
    embedder = load_model(model, models_dir=data_dir / "models")
    return evaluate_sts(path, embedder, Store(data_dir / "store.sqlite")).spearman


def run(args) -> list[Row]:
    rows = []
    for option in OPTIONS:
        zf_dir, mo_dir = args.zf_cache, args.moroco_cache
        zf_model = resolve(option, zf_dir, args.zf, ZF_SINCE)
        mo_model = resolve(option, mo_dir, args.moroco, None)
        print(f"{option.label}: {zf_model} (ZF), {mo_model} (MOROCO)", flush=True)
        rate, busy = speed(zf_model, zf_dir, args.zf, args.speed_n)
        row = Row(option.label, zf_model, round(rate, 2), round(busy, 2))
        for key, value in links(zf_model, zf_dir, args.zf).items():
            setattr(row, key, value)
        for key, value in topics(mo_model, mo_dir, args.moroco).items():
            setattr(row, key, value)
        row.sts_spearman = round(sts(mo_model, mo_dir, args.sts), 4)
        print(json.dumps(asdict(row)), flush=True)
        rows.append(row)
        if args.out:
            write(args.out, rows)
    return rows


def table(rows: list[Row]) -> str:
    reference = rows[0]
    def fmt(value, ci=None):
        if value is None:
            return "= default"
        text = f"{value:.3f}"
        return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = ["| option | docs/s | × e5 | cores busy | ZF hit@10 | ZF MRR@10 | MOROCO P@5 | RO-STS ρ |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.option} (`{r.model}`) | {r.docs_per_s:,.1f} | {r.docs_per_s / reference.docs_per_s:,.1f} | {r.cores_busy:.2f} "
                     f"| {fmt(r.hit10, r.hit10_ci)} | {fmt(r.mrr10, r.mrr10_ci)} "
                     f"| {fmt(r.moroco_p5, r.moroco_p5_ci)} | {fmt(r.sts_spearman)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zf", type=Path, default=Path("eval/data/zf-2020-2021.jsonl"))
    parser.add_argument("--zf-cache", type=Path, default=Path("eval/cache/zf"))
    parser.add_argument("--moroco", type=Path, default=Path("eval/data/moroco.jsonl"))
    parser.add_argument("--moroco-cache", type=Path, default=Path("eval/cache/moroco"))
    parser.add_argument("--sts", type=Path, default=Path("../shared/data/ro-sts/RO-STS.test.with_genre.tsv"))
    parser.add_argument("--speed-n", type=int, default=200, help="ZF articles timed per option")
    parser.add_argument("--out", type=Path, default=None, help="Write models.md and models.json here.")
    args = parser.parse_args()
    print(table(run(args)))


def write(out: Path, rows: list[Row]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    (out / "models.md").write_text(f"# Embedding options ({os.cpu_count()} cores)\n\n```sh\n"
                                   f"python eval/bench_models.py --out {out}\n```\n\n{table(rows)}\n")


if __name__ == "__main__":
    main()
