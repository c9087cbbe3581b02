"""Damage every kind of file of a served data dir, and see whether the server notices.

    python eval/bench_corruption.py --size 3000 --queries 40 --out eval/results/corruption.md

Builds a synthetic archive (eval/bench_api.py's, vectors by `hashing:384`) with an
HNSW main index (past 1,000 articles here), lexical bases (folded past 1,000 changed
documents here rather than 20,000, so a small archive has them), then writes more
articles so that a FAISS delta and lexical deltas exist too: every kind of file. Then, for each file of the active index version (and the ACTIVE pointer),
and each damage (truncate to half, flip 8 bytes in the middle, swap with a file of the
same kind, delete), on a fresh copy of the data dir: starts the API in-process, asks
`--queries` live lists (`diversity` set, so they are ranked through the indexes, not
read from the stored lists) and compares them with the undamaged answers.

A case is "detected" when the start logged the damage (a warning naming it), "right"
when every answer equals the undamaged one or that of the same data dir rebuilt from
its store (an HNSW index rebuilt from scratch may order a neighbour differently from
one grown by writes; both are what the index kind answers, built single-threaded so
that a rebuild is deterministic), "crashed" when the start or a query raised. The goal:
every case detected and right.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from eval.bench_api import synthetic_archive
from recommender.serving.engine import Engine
from recommender.settings import AnnSettings, Settings

MODEL = "hashing:384"


@dataclass
class Case:
    file: str
    damage: str
    detected: bool
    right: bool
    crashed: str = ""


def truncate(path: Path, _: Path | None) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path: Path, _: Path | None) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def swap(path: Path, partner: Path | None) -> None:
    if partner is None:
        raise LookupError("no file of the same kind")
    a, b = path.read_bytes(), partner.read_bytes()
    path.write_bytes(b)
    partner.write_bytes(a)


def delete(path: Path, _: Path | None) -> None:
    path.unlink()


DAMAGES = {"truncate": truncate, "flip": flip, "swap": swap, "delete": delete}


def small_folds() -> None:
    """Lexical bases from 1,000 changed documents on (20,000 in production), in this process."""
    from recommender.index import lexical

    lexical.FOLD_MIN = 1000


def settings_for(data: Path) -> Settings:
    return Settings(data_dir=data, model=MODEL, ann=AnnSettings(exact_below=1000), faiss_threads=1)


def build(data: Path, size: int) -> None:
    archive = data.parent / "archive.jsonl"
    synthetic_archive(archive, size)
    engine = Engine(settings_for(data))
    engine.ingest([str(archive)], precompute=False)
    more = data.parent / "more.jsonl"
    synthetic_archive(more, 100, seed=1)  # under 5 % of the main: kept as a FAISS delta
    more.write_text(more.read_text().replace('"id": "a', '"id": "b'))  # new ids: a delta on the HNSW main
    Engine(settings_for(data)).ingest([str(more)], precompute=False)


def kind(path: Path) -> str:
    """What a file is, without the names that change from save to save."""
    name = path.name
    for prefix in ("delta-", "terms-", "base-"):
        if name.startswith(prefix):
            name = prefix + "*" + path.suffix
    parent = path.parent.name
    if parent.startswith("base-"):
        parent = f"{path.parent.parent.name}/base-*"
    return f"{parent}/{name}" if parent not in ("v1", "indexes") else name


def partner_of(path: Path, files: list[Path]) -> Path | None:
    """A file of the same kind in another lexical part, or the other FAISS file."""
    same = [f for f in files if f != path and f.name.split("-")[0] == path.name.split("-")[0] and f.suffix == path.suffix]
    if path.name == "index.faiss" or path.name.startswith("delta-") and path.suffix == ".faiss":
        same = [f for f in files if f != path and f.suffix == ".faiss"]
    return same[0] if same else None


def answers(client: TestClient, ids: list[str]) -> list[list[str]]:
    out = []
    for aid in ids:
        response = client.get(f"/v1/articles/{aid}/related", params={"k": 5, "diversity": 0.1})
        response.raise_for_status()
        out.append([item["id"] for item in response.json()["items"]])
    return out


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_case(pristine: Path, work: Path, rel: Path, damage: str, ids: list[str],
             references: list[list[list[str]]]) -> Case:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    files = sorted(p for p in (work / "indexes" / "v1").rglob("*") if p.is_file() and not p.name.startswith("."))
    target = work / rel
    DAMAGES[damage](target, partner_of(target, files))
    caught = Warnings()
    logging.getLogger("recommender").addHandler(caught)
    try:
        with TestClient(create_app(settings_for(work), background=False)) as client:
            ready = client.get("/readyz").json()["status"]
            if ready != "ready":
                return Case(str(rel), damage, bool(caught.messages), False, f"readyz {ready}")
            got = answers(client, ids)
    except Exception as exc:  # what the benchmark is looking for: report it, go on
        return Case(str(rel), damage, bool(caught.messages), False, f"{type(exc).__name__}: {exc}"[:120])
    finally:
        logging.getLogger("recommender").removeHandler(caught)
    return Case(str(rel), damage, bool(caught.messages), got in references)


def run_rebuilt(pristine: Path, work: Path, ids: list[str]) -> list[list[str]]:
    """The answers of the data dir with its index rebuilt from the store."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    (work / "indexes" / "v1" / "index.faiss").unlink()
    with TestClient(create_app(settings_for(work), background=False)) as client:
        return answers(client, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=3_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the built archive between runs")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too (markdown)")
    args = parser.parse_args()
    small_folds()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="corruption-"))
    pristine = root / "pristine" / "data"
    if not (pristine / "store.sqlite").exists():
        pristine.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        build(pristine, args.size)
        print(f"built {args.size + 100} articles in {time.monotonic() - started:.0f} s")
    app = create_app(settings_for(pristine), background=False)
    with TestClient(app) as client:
        ids = sorted(app.state.service.snapshot.state.by_id)[:: max(1, (args.size + 100) // args.queries)]
        reference = answers(client, ids)
    rebuilt = run_rebuilt(pristine, root / "work" / "data", ids)
    print(f"a rebuild from the store answers {sum(a == b for a, b in zip(reference, rebuilt))} of {len(ids)} "
          "lists as the grown index does")
    files = sorted(p for p in (pristine / "indexes" / "v1").rglob("*") if p.is_file() and not p.name.startswith("."))
    files.append(pristine / "indexes" / "ACTIVE")
    cases = []
    for path in files:
        for damage in DAMAGES:
            partner = partner_of(path, files)
            if damage == "swap" and (partner is None or partner.read_bytes() == path.read_bytes()):
                continue  # nothing to swap with, or a swap that changes no byte
            case = run_case(pristine, root / "work" / "data", path.relative_to(pristine), damage, ids,
                            [reference, rebuilt])
            cases.append(case)
            print(f"{kind(path):28} {damage:8} detected={case.detected} right={case.right} {case.crashed}", flush=True)
    report(cases, args.out)


def report(cases: list[Case], out: Path | None) -> None:
    lines = ["| file | damage | detected | right answers | crashed |", "|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| `{c.file}` | {c.damage} | {'yes' if c.detected else '**no**'} | "
                     f"{'yes' if c.right else '**no**'} | {c.crashed} |")
    detected, right = sum(c.detected for c in cases), sum(c.right for c in cases)
    lines.append("")
    lines.append(f"{len(cases)} damaged data dirs: {detected} detected, {right} answered as before the damage, "
                 f"{sum(bool(c.crashed) for c in cases)} crashed or not ready.")
    text = "\n".join(lines)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Damaged data dirs (python eval/bench_corruption.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
