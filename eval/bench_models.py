"""Embedding options side by side: speed on this machine and quality, same data.

    python eval/bench_models.py --out eval/results/models

For each option: docs/s embedding ZF articles in this process (every core the
model uses by itself), the editors' links of the ranking issue's development
split (hit@10 / MRR@10, default ranking, past-only, queries of 2021), MOROCO
P@5 (default ranking) and RO-STS Spearman. Options:

- `e5-small-q4` (the default: 2,000 characters, 270 tokens on average on ZF,
  at most 512), and `e5-small-q4@N` for N = 32, 64, 128, 256, reading only the
  first N tokens (headline and lead) while BM25 and names still read the 2,000
  characters;
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
import sys
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
    Option("e5, first 32 tokens (about the headline)", "e5-small-q4@32"),
    Option("e5, first 64 tokens", "e5-small-q4@64"),
    Option("e5, first 128 tokens", "e5-small-q4@128"),
    Option("e5, first 256 tokens", "e5-small-q4@256"),
]


@dataclass
class Row:
    option: str
    model: str
    moroco_model: str | None = None  # a static model is distilled per archive
    docs_per_s: float | None = None
    cores_busy: float | None = None  # process CPU time over wall time while embedding: every core, or one?
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


def resolve(option: Option, data_dir: Path, dataset: Path, until: datetime | None, archive: Path | None) -> str:
    """The option's model string: for "static", a model distilled with `until` in
    `archive` (a data dir holding a larger archive, named by path) if given, else in
    `data_dir`, built there once (the dataset is ingested first so it has words to count)."""
    if option.model != "static":
        return option.model
    from embeddings.static import built, read_meta
    from recommender.ranking.distill import DistillOptions, run_distill
    from recommender.serving.engine import Engine

    want = until.isoformat() if until else None
    for path in built(settings_for(archive or data_dir, "e5-small-q4").models_dir):
        if read_meta(path).sample_until == want:
            return f"static:{path.resolve()}" if archive else f"static:{path.name}"
    if archive:
        raise SystemExit(f"no static model distilled with --until {until:%Y-%m-%d} in {archive}; run: "
                         f"recommender distill --data-dir {archive} --until {until:%Y-%m-%d} --sample 20000")
    Engine(settings_for(data_dir, "e5-small-q4")).ingest([str(dataset)], index=False)
    return run_distill(settings_for(data_dir, "e5-small-q4"), DistillOptions(until=until)).model


def speed(model: str, data_dir: Path, dataset: Path, n: int) -> tuple[float, float]:
    from recommender.store.articles import parse_article
    from recommender.store.models import load_model

    settings = settings_for(data_dir, model)
    texts = []
    with dataset.open(encoding="utf-8") as fh:
        for line in fh:
            texts.append(parse_article(json.loads(line)).embed_text(settings.embed_chars).text)
            if len(texts) >= n:
                break
    embedder = load_model(model, models_dir=settings.models_dir)
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
    from recommender.store.models import load_model
    from recommender.store.sqlite import SQLiteStore

    data_dir.mkdir(parents=True, exist_ok=True)
    embedder = load_model(model, models_dir=settings_for(data_dir, model).models_dir)
    return evaluate_sts(path, embedder, SQLiteStore(data_dir / "store.sqlite")).spearman


def measured_before(out: Path | None) -> dict[tuple, dict]:
    """Quality rows of an earlier run, by (ZF model, MOROCO model): the rankings are
    deterministic, so a rerun measures only new options, and every speed again."""
    path = out / "models.json" if out else None
    if path is None or not path.exists():
        return {}
    rows = json.loads(path.read_text())
    return {(r["model"], r.get("moroco_model") or r["model"]): {**r, "moroco_model": r.get("moroco_model") or r["model"]}
            for r in rows}


def quality(row: Row, args) -> None:
    zf_dir, mo_dir = args.zf_cache, args.moroco_cache
    for key, value in links(row.model, zf_dir, args.zf).items():
        setattr(row, key, value)
    moroco_model = row.moroco_model or row.model
    for key, value in topics(moroco_model, mo_dir, args.moroco).items():
        setattr(row, key, value)
    row.sts_spearman = round(sts(moroco_model, mo_dir, args.sts), 4)


def run(args) -> list[Row]:
    rows = []
    zf_dir = args.zf_cache
    before = {} if args.fresh else measured_before(args.out)
    for option in OPTIONS:
        zf_model = resolve(option, zf_dir, args.zf, ZF_SINCE, args.zf_static_archive)
        mo_model = resolve(option, args.moroco_cache, args.moroco, None, None)
        print(f"{option.label}: {zf_model} (ZF), {mo_model} (MOROCO)", flush=True)
        row = Row(option.label, zf_model, mo_model)
        known = before.get((zf_model, mo_model))
        if known:
            row = Row(**{**known, "option": option.label, "docs_per_s": None, "cores_busy": None})
        else:
            quality(row, args)
        print(json.dumps(asdict(row)), flush=True)
        rows.append(row)
        if args.out:
            write(args.out, rows)
    # Speeds last and back to back, so that their ratios come from one stretch of this shared machine.
    for row in rows:
        rate, busy = speed(row.model, zf_dir, args.zf, args.speed_n)
        row.docs_per_s, row.cores_busy = round(rate, 2), round(busy, 2)
        print(f"{row.model}: {rate:.1f} docs/s, {busy:.2f} cores busy", flush=True)
    if args.out:
        write(args.out, rows)
    return rows


def fmt(value, ci=None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table(rows: list[Row]) -> str:
    reference = rows[0].docs_per_s
    lines = ["| option | docs/s | × e5 | cores busy | ZF hit@10 | ZF MRR@10 | MOROCO P@5 | RO-STS ρ |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.docs_per_s / reference if r.docs_per_s and reference else None
        models = [m.replace(f"{Path.cwd()}/", "") for m in dict.fromkeys([r.model, r.moroco_model or r.model])]
        lines.append(f"| {r.option} (`{'`, MOROCO `'.join(models)}`) | {fmt(r.docs_per_s, digits=1)} | {fmt(ratio, digits=1)} "
                     f"| {fmt(r.cores_busy, digits=2)} | {fmt(r.hit10, r.hit10_ci)} | {fmt(r.mrr10, r.mrr10_ci)} "
                     f"| {fmt(r.moroco_p5, r.moroco_p5_ci)} | {fmt(r.sts_spearman)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zf", type=Path, default=Path("eval/data/zf-2020-2021.jsonl"))
    parser.add_argument("--zf-cache", type=Path, default=Path("eval/cache/zf"))
    parser.add_argument("--zf-static-archive", type=Path, default=None,
                        help="Take the ZF static model from this data dir (e.g. eval/cache/zfdev: 2013-2021, so "
                             "that the distillation samples 13,635 articles before 2021 instead of the pool's 2,371)")
    parser.add_argument("--moroco", type=Path, default=Path("eval/data/moroco.jsonl"))
    parser.add_argument("--moroco-cache", type=Path, default=Path("eval/cache/moroco"))
    parser.add_argument("--sts", type=Path, default=Path("../shared/data/ro-sts/RO-STS.test.with_genre.tsv"))
    parser.add_argument("--speed-n", type=int, default=200, help="ZF articles timed per option")
    parser.add_argument("--out", type=Path, default=None,
                        help="Write models.md and models.json here; quality measured there before is reused.")
    parser.add_argument("--fresh", action="store_true", help="Measure every option's quality again.")
    args = parser.parse_args()
    print(table(run(args)))


def write(out: Path, rows: list[Row]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    command = " ".join(["python eval/bench_models.py", *sys.argv[1:]])
    (out / "models.md").write_text(f"# Embedding options ({os.cpu_count()} cores)\n\n```sh\n{command}\n```\n\n"
                                   f"{table(rows)}\n")


if __name__ == "__main__":
    main()
