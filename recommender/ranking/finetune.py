"""`recommender finetune`: e5 adapted to what this archive's editors link.

The pairs are the archive's links (an article and each piece it links), between
articles published before `until`. The newest linked articles are held out: no
pair touching one is learned, and the dense source is scored on them, ranking
every earlier article of the pool around them, before and after. Each pair gets
a hard negative when one exists: an article of the anchor's section, published
within a week of it, linked to it in neither direction.

Crash safety: the run lives in models/.fN.partial; a checkpoint (weights,
optimizer, step) is renamed into place every few minutes, and a rerun with the
same options resumes from it. The finished model is renamed to models/fN whole.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from embeddings import DEFAULT_MODEL, Embedder, EmbedderError
from embeddings.e5_train import (
    E5Trainer,
    FinetuneMeta,
    blend,
    finetuned,
    load_finetuned,
    read_checkpoint,
    save_checkpoint,
    save_model,
    write_meta,
)
from recommender.errors import ModelError, NoLabels
from recommender.index.versions import open_versions
from recommender.settings import Settings
from recommender.store import vector_cache
from recommender.store.articles import ArticleInfo
from recommender.store.base import Store, open_store
from recommender.store.models import load_model

Labels = dict[str, set[str]]
MIN_ANCHORS = 10
HELD_OUT_MAX = 300  # queries enough for the before/after figures; each costs its pool's embedding
POOL_DAYS = 180  # the held-out queries rank the articles of this many days before them (editors link recent pieces)
NEGATIVE_DAYS = 7
CHECKPOINT = "checkpoint.pt"
OPTIONS = "options.json"


@dataclass(frozen=True)
class FinetuneOptions:
    until: datetime | None = None
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    max_tokens: int = 64
    held_out: float = 0.1
    hard_negatives: bool = True
    seed: int = 0
    progress: bool = False
    checkpoint_seconds: float = 300.0
    blend: float = 0.5  # the share of the trained weights in the saved model; applied after training, so no key

    def key(self) -> dict:
        """What a resumed run must share with the one it resumes."""
        return {"until": self.until.isoformat() if self.until else None, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "max_tokens": self.max_tokens, "held_out": self.held_out, "hard_negatives": self.hard_negatives,
                "seed": self.seed}


@dataclass(frozen=True)
class Pair:
    anchor: str
    positive: str
    negative: str | None


@dataclass
class Plan:
    pairs: list[Pair]
    held_out: list[str]  # the newest linked articles, by id
    related: dict[str, set[str]]  # every id's links, in both directions
    batches: list[list[Pair]] = field(default_factory=list)

    def fingerprint(self) -> str:
        text = "\n".join(f"{p.anchor} {p.positive} {p.negative}" for p in self.pairs)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DenseQuality:
    recall_at_100: float
    hit_at_10: float


@dataclass(frozen=True)
class HeldOut:
    queries: int
    pool: int
    before: DenseQuality
    after: DenseQuality
    similarity_kept: float


@dataclass(frozen=True)
class FinetuneResult:
    model: str  # ft:fN
    path: Path
    meta: FinetuneMeta
    resumed_at: int  # the step a checkpoint let it start from (0: from the start)


Echo = Callable[[str], None]
OnStep = Callable[[int, float], None]


def run_finetune(settings: Settings, labels: Labels, opts: FinetuneOptions, echo: Echo = lambda _: None,
                 on_step: OnStep = lambda step, loss: None) -> FinetuneResult:
    """One run at a time per data dir (JobLocked otherwise): two would share a checkpoint."""
    store = open_store(settings)
    with open_versions(settings, store).lock("finetune", "recommender finetune"):
        return _run(settings, store, labels, opts, echo, on_step)


def _run(settings: Settings, store: Store, labels: Labels, opts: FinetuneOptions, echo: Echo,
         on_step: OnStep) -> FinetuneResult:
    started = time.monotonic()
    infos = {info.id: info for info in store.all_infos()}
    plan = make_plan(labels, infos, opts)
    partial, state = _partial_run(settings.models_dir, opts, plan)
    name = f"ft:{partial.name[1:-len('.partial')]}"
    echo(f"{len(plan.pairs):,} pairs from {len({p.anchor for p in plan.pairs}):,} linked articles, "
         f"{sum(p.negative is not None for p in plan.pairs):,} with a hard negative; "
         f"{len(plan.held_out)} newest linked articles held out")
    queries, pool = _held_out(plan, infos, labels, opts)
    base_vectors = pool_vectors(store, load_model(DEFAULT_MODEL, e5_engine=settings.e5_engine), pool, infos)
    before = dense_quality(base_vectors, queries, pool, infos, labels)
    echo(f"dense source before: recall@100 {before.recall_at_100:.3f}, hit@10 {before.hit_at_10:.3f} "
         f"({len(queries)} held-out articles among {len(pool):,})")
    trainer = E5Trainer(_precision(settings), opts.learning_rate, len(plan.batches), opts.max_tokens)
    resumed = _resume(trainer, state, echo)
    losses = _train(trainer, plan, _texts(store, plan, infos), partial, opts, echo, on_step)
    precision = trainer.precision
    save_model(partial, blend(trainer.trained(), opts.blend), _meta(opts, plan, losses, precision, started,
                                                 HeldOut(len(queries), len(pool), before, before, 1.0)))
    del trainer
    tuned = pool_vectors(store, load_finetuned(partial, name, precision=precision), pool, infos)
    scores = HeldOut(len(queries), len(pool), before, dense_quality(tuned, queries, pool, infos, labels),
                     similarity_kept(base_vectors, tuned))
    meta = _meta(opts, plan, losses, precision, started, scores)
    return FinetuneResult(name, _publish(partial, meta), meta, resumed)


def _precision(settings: Settings) -> str:
    """bf16 where the CPU has a unit for it, as the torch engine serves; torch is required."""
    from embeddings.e5 import choose_engine

    try:
        return choose_engine("torch" if settings.e5_engine == "auto" else settings.e5_engine).precision
    except EmbedderError as exc:
        raise ModelError(f"fine-tuning runs on torch: {exc}") from None


def make_plan(labels: Labels, infos: dict[str, ArticleInfo], opts: FinetuneOptions) -> Plan:
    """Pairs, held-out articles and batches: the same options give the same plan, so a rerun resumes it."""
    def dated(article_id: str) -> bool:
        info = infos.get(article_id)
        return info is not None and info.published_at is not None and (
            opts.until is None or info.published_at < opts.until)

    links = {seed: {i for i in linked if dated(i) and i != seed} for seed, linked in labels.items() if dated(seed)}
    links = {seed: linked for seed, linked in links.items() if linked}
    if len(links) < MIN_ANCHORS:
        raise NoLabels(f"{len(links)} linked article(s)" + (f" before {opts.until:%Y-%m-%d}" if opts.until else "")
                       + f" in the store: fine-tuning needs at least {MIN_ANCHORS}")
    related: dict[str, set[str]] = {}
    for seed, linked in links.items():
        for other in linked:
            related.setdefault(seed, set()).add(other)
            related.setdefault(other, set()).add(seed)
    anchors = sorted(links, key=lambda i: (_when(infos[i]), i))
    held = anchors[-min(HELD_OUT_MAX, max(1, round(opts.held_out * len(anchors)))):]
    skip = set(held)
    rng = np.random.default_rng(opts.seed)
    negatives = _Negatives(infos, opts.until)
    pairs = [Pair(seed, other, negatives.pick(seed, related, rng) if opts.hard_negatives else None)
             for seed in anchors if seed not in skip for other in sorted(links[seed]) if other not in skip]
    plan = Plan(pairs, held, related)
    plan.batches = list(_batches(pairs, opts))
    if not plan.batches:
        raise NoLabels(f"no pair left to learn from once the {len(held)} newest linked articles are held out: "
                       "link more articles, or lower --held-out")
    return plan


def _when(info: ArticleInfo) -> float:
    return info.published_at.timestamp() if info.published_at else 0.0


class _Negatives:
    """Articles of the same section published within NEGATIVE_DAYS, by section, in time order."""

    def __init__(self, infos: dict[str, ArticleInfo], until: datetime | None) -> None:
        by_section: dict[str, list[tuple[float, str]]] = {}
        for info in infos.values():
            if info.section_key and info.published_at and (until is None or info.published_at < until):
                by_section.setdefault(info.section_key, []).append((_when(info), info.id))
        self._sections = {key: sorted(rows) for key, rows in by_section.items()}
        self._infos = infos

    def pick(self, anchor: str, related: dict[str, set[str]], rng: np.random.Generator) -> str | None:
        info = self._infos[anchor]
        rows = self._sections.get(info.section_key, [])
        span = NEGATIVE_DAYS * 86400
        lo = bisect.bisect_left(rows, (_when(info) - span, ""))
        hi = bisect.bisect_right(rows, (_when(info) + span, "\U0010ffff"))
        linked = related.get(anchor, set())
        for _ in range(8):
            if hi <= lo:
                return None
            candidate = rows[int(rng.integers(lo, hi))][1]
            if candidate != anchor and candidate not in linked:
                return candidate
        return None


def _batches(pairs: list[Pair], opts: FinetuneOptions) -> Iterator[list[Pair]]:
    for epoch in range(opts.epochs):
        order = np.random.default_rng(opts.seed + 1 + epoch).permutation(len(pairs))
        for start in range(0, len(order), opts.batch_size):
            batch = [pairs[i] for i in order[start:start + opts.batch_size]]
            if len(batch) >= 2:  # one pair alone has no negative to learn from
                yield batch


def batch_inputs(batch: list[Pair], related: dict[str, set[str]]) -> tuple[list[str], list[str], np.ndarray]:
    """Anchor ids, candidate ids (positives, then the hard negatives) and the mask: a candidate
    that is the anchor, or linked to it, is no negative of it (unless it is its own positive)."""
    anchors = [p.anchor for p in batch]
    candidates = [p.positive for p in batch] + [p.negative for p in batch if p.negative is not None]
    masked = np.zeros((len(anchors), len(candidates)), dtype=bool)
    for i, anchor in enumerate(anchors):
        known = related.get(anchor, set()) | {anchor}
        for j, candidate in enumerate(candidates):
            masked[i, j] = j != i and (candidate in known or candidate == batch[i].positive)
    return anchors, candidates, masked


def _partial_run(models_dir: Path, opts: FinetuneOptions, plan: Plan) -> tuple[Path, dict | None]:
    """The run's directory: an unfinished one of the same options and pairs, or the next free number."""
    models_dir.mkdir(parents=True, exist_ok=True)
    key = {**opts.key(), "pairs": plan.fingerprint()}
    for partial in sorted(models_dir.glob(".f*.partial")):
        try:
            same = json.loads((partial / OPTIONS).read_text()) == key
        except (OSError, ValueError):
            same = False
        if same:
            return partial, read_checkpoint(partial / CHECKPOINT)
        shutil.rmtree(partial, ignore_errors=True)  # another run's, given up: the options changed
    taken = [int(p.name[1:]) for p in finetuned(models_dir)]
    partial = models_dir / f".f{max(taken, default=0) + 1}.partial"
    partial.mkdir()
    (partial / OPTIONS).write_text(json.dumps(key))
    return partial, None


def _resume(trainer: E5Trainer, state: dict | None, echo: Echo) -> int:
    if state is None:
        return 0
    trainer.restore(state)
    echo(f"resuming at step {trainer.step} from the last checkpoint")
    return trainer.step


def _texts(store: Store, plan: Plan, infos: dict[str, ArticleInfo]) -> dict[str, str]:
    ids = {i for p in plan.pairs for i in (p.anchor, p.positive, p.negative) if i is not None}
    nums = [infos[i].num for i in ids]
    by_num = {num: text for num, (text, _) in store.texts_and_terms(nums).items()}
    return {i: by_num.get(infos[i].num, infos[i].title) for i in ids}


def _train(trainer: E5Trainer, plan: Plan, texts: dict[str, str], partial: Path, opts: FinetuneOptions,
           echo: Echo, on_step: OnStep) -> list[float]:
    losses: list[float] = list(_saved_losses(partial))[:trainer.step]
    total, last_save, last_echo = len(plan.batches), time.monotonic(), time.monotonic()
    bar = _bar(opts.progress, total, trainer.step)
    for batch in plan.batches[trainer.step:]:
        anchors, candidates, masked = batch_inputs(batch, plan.related)
        losses.append(trainer.train_step([texts[i] for i in anchors], [texts[i] for i in candidates], masked))
        on_step(trainer.step, losses[-1])
        if bar is not None:
            bar.update(1)
        now = time.monotonic()
        if now - last_save >= opts.checkpoint_seconds or trainer.step == total:
            _checkpoint(partial, trainer, losses)
            last_save = now
        if now - last_echo >= 60:
            echo(f"step {trainer.step}/{total}, loss {np.mean(losses[-50:]):.3f}")
            last_echo = now
    if bar is not None:
        bar.close()
    return losses


def _bar(progress: bool, total: int, done: int):  # noqa: ANN202 - tqdm's type is optional
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc="fine-tuning", unit="batch")


def _checkpoint(partial: Path, trainer: E5Trainer, losses: list[float]) -> None:
    save_checkpoint(partial / CHECKPOINT, trainer.state())
    (partial / "losses.json").write_text(json.dumps(losses))


def _saved_losses(partial: Path) -> list[float]:
    try:
        return [float(x) for x in json.loads((partial / "losses.json").read_text())]
    except (OSError, ValueError):
        return []


def _held_out(plan: Plan, infos: dict[str, ArticleInfo], labels: Labels,
              opts: FinetuneOptions) -> tuple[list[str], list[str]]:
    """The held-out queries with a link in their pool, and the pool: every article of the
    POOL_DAYS before the first query up to the last one."""
    first = min(_when(infos[q]) for q in plan.held_out) - POOL_DAYS * 86400
    last = max(_when(infos[q]) for q in plan.held_out)
    pool = sorted((i for i, info in infos.items() if info.published_at and first <= _when(info) <= last),
                  key=lambda i: (_when(infos[i]), i))
    members = set(pool)
    queries = [q for q in plan.held_out if any(r in members and _when(infos[r]) < _when(infos[q])
                                               for r in labels.get(q, ()))]
    return queries, pool


def pool_vectors(store: Store, embedder: Embedder, pool: list[str], infos: dict[str, ArticleInfo]) -> np.ndarray:
    """Through the vector cache: e5's are free on an archive e5 serves, the new model's are
    those `reembed --model ft:fN` would compute."""
    return vector_cache.embed_cached(store, embedder, [store.get_text(i) or infos[i].title for i in pool])


def dense_quality(vectors: np.ndarray, queries: list[str], pool: list[str], infos: dict[str, ArticleInfo],
                  labels: Labels) -> DenseQuality:
    """The dense source alone: each query's earlier pool articles by cosine."""
    if not queries:
        return DenseQuality(0.0, 0.0)
    row = {article_id: r for r, article_id in enumerate(pool)}
    when = np.array([_when(infos[i]) for i in pool])
    recalls, hits = [], []
    for q in queries:
        scores = vectors @ vectors[row[q]]
        scores[when >= _when(infos[q])] = -np.inf  # past-only, the query itself included
        top = [pool[i] for i in np.argsort(-scores, kind="stable")[:100] if np.isfinite(scores[i])]
        relevant = {r for r in labels[q] if r in row and _when(infos[r]) < _when(infos[q])}
        recalls.append(len(relevant & set(top)) / len(relevant))
        hits.append(float(bool(relevant & set(top[:10]))))
    return DenseQuality(round(float(np.mean(recalls)), 4), round(float(np.mean(hits)), 4))


def similarity_kept(before: np.ndarray, after: np.ndarray, pairs: int = 20_000) -> float:
    """How much of e5's sense of similarity the new model keeps, with no labels: the Spearman
    correlation of the two models' cosines over random pairs of the same articles (1: every
    pair in e5's order). Links change a few pairs' order; a model that forgot general text
    changes them all."""
    if len(before) < 3:
        return 1.0
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(before), (2, pairs))
    keep = i != j
    a, b = (np.einsum("ij,ij->i", v[i[keep]], v[j[keep]]) for v in (before, after))
    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in (a, b))
    return round(float(np.corrcoef(ra, rb)[0, 1]), 4)


def _meta(opts: FinetuneOptions, plan: Plan, losses: list[float], precision: str, started: float,
          scores: HeldOut) -> FinetuneMeta:
    tenth = max(1, len(losses) // 10)
    return FinetuneMeta(
        DEFAULT_MODEL, opts.until.isoformat() if opts.until else None, len({p.anchor for p in plan.pairs}),
        len(plan.pairs), sum(p.negative is not None for p in plan.pairs), opts.epochs, len(losses), opts.batch_size,
        opts.learning_rate, opts.max_tokens, precision, round(time.monotonic() - started, 1), _cpu(),
        round(float(np.mean(losses[:tenth])), 4) if losses else 0.0,
        round(float(np.mean(losses[-tenth:])), 4) if losses else 0.0, scores.queries, scores.pool,
        scores.before.recall_at_100, scores.after.recall_at_100, scores.before.hit_at_10, scores.after.hit_at_10,
        scores.similarity_kept, opts.blend)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _publish(partial: Path, meta: FinetuneMeta) -> Path:
    write_meta(partial, meta)
    for name in (CHECKPOINT, OPTIONS, "losses.json"):
        (partial / name).unlink(missing_ok=True)
    final = partial.with_name(partial.name[1:-len(".partial")])
    partial.rename(final)
    return final
