"""`recommender distill`: a static model built from the archive and a teacher.

Steps, each resumable because every teacher vector goes through the vector
cache (committed batch by batch): count the archive's words; embed each
vocabulary word with the teacher; embed a sample of articles with the teacher
(articles it has already embedded first: on an archive served by e5 the sample
is free); fit; write `models/sN` under the data dir, next free number, renamed
into place whole. See `embeddings.static` for the recipe.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from embeddings import Embedder
from embeddings.static import (
    StaticMeta,
    Vocabulary,
    WordCounts,
    built,
    fit,
    mean_cosine,
    mean_matrix,
    save,
)
from recommender.errors import RecommenderError
from recommender.settings import Settings
from recommender.store import vector_cache
from recommender.store.base import Store, open_store
from recommender.store.models import load_model, model_name

HELD_OUT_EVERY = 10  # every tenth sample article scores the fit, before it is refitted on all


@dataclass(frozen=True)
class DistillOptions:
    teacher: str = "e5-small-q4"
    sample: int = 10_000
    until: datetime | None = None  # sample only articles published before
    min_count: int = 2
    max_words: int = 100_000
    ridge: float = 0.01
    progress: bool = False


@dataclass(frozen=True)
class DistillResult:
    model: str  # the model string to use: static:sN
    path: Path
    meta: StaticMeta
    seconds: float


def run_distill(settings: Settings, opts: DistillOptions,
                echo: Callable[[str], None] = lambda _: None) -> DistillResult:
    started = time.monotonic()
    teacher_name = model_name(opts.teacher)
    if teacher_name.startswith(("static:", "hashing:")):
        raise RecommenderError(f"the teacher must be a sentence encoder (e5-small-q4 or st:...), not {teacher_name}")
    store = open_store(settings)
    echo("counting the archive's words")
    counts = WordCounts()
    for text in store.all_texts():
        counts.add(text)
    vocabulary = counts.vocabulary(opts.min_count, opts.max_words)
    until_ts = opts.until.timestamp() if opts.until else None
    sample = store.sample_texts(teacher_name, opts.sample, until_ts)
    if len(vocabulary.keys) < 2 or len(sample) < HELD_OUT_EVERY:
        raise RecommenderError(f"too little text to distill from: {len(vocabulary.keys)} words seen "
                               f"{opts.min_count}+ times, {len(sample)} articles to sample; ingest the archive first")
    teacher = load_model(teacher_name, device=settings.device, batch_size=settings.batch_size,
                         models_dir=settings.models_dir, e5_engine=settings.e5_engine)
    echo(f"{len(vocabulary.keys):,} words from {counts.texts:,} texts; {teacher_name} embeds each word once "
         f"(cached: a rerun resumes)")
    words = _teacher_vectors(store, teacher, vocabulary.spellings, "teacher: words", opts.progress)
    echo(f"{teacher_name} embeds the sample: {len(sample):,} articles (those it already has cost nothing)")
    targets = _teacher_vectors(store, teacher, [text for _, text in sample], "teacher: sample articles", opts.progress)
    echo("fitting the word vectors to the sample")
    fitted, meta = _fit(vocabulary, words, [text for _, text in sample], targets, opts, counts.texts, teacher_name)
    path = _publish(settings.models_dir, vocabulary, fitted, meta)
    return DistillResult(f"static:{path.name}", path, meta, time.monotonic() - started)


def _teacher_vectors(store: Store, teacher: Embedder, texts: list[str], desc: str, progress: bool) -> np.ndarray:
    return vector_cache.embed_cached(store, teacher, texts, batch_size=32, progress=progress, desc=desc)


def _fit(vocabulary: Vocabulary, words: np.ndarray, texts: list[str], targets: np.ndarray, opts: DistillOptions,
         corpus_texts: int, teacher: str) -> tuple[np.ndarray, StaticMeta]:
    means = mean_matrix(texts, vocabulary)
    held = np.arange(len(texts)) % HELD_OUT_EVERY == 0
    trial = fit(words, means[~held], targets[~held], opts.ridge)
    meta = StaticMeta(teacher, len(vocabulary.keys), words.shape[1], opts.min_count, opts.ridge, corpus_texts,
                      len(texts), opts.until.isoformat() if opts.until else None,
                      round(mean_cosine(means[held], words, targets[held]), 4),
                      round(mean_cosine(means[held], trial, targets[held]), 4))
    return fit(words, means, targets, opts.ridge), meta


def _publish(models_dir: Path, vocabulary: Vocabulary, fitted: np.ndarray, meta: StaticMeta) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    taken = built(models_dir)
    final = models_dir / f"s{int(taken[-1].name[1:]) + 1 if taken else 1}"
    partial = models_dir / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save(partial, vocabulary, fitted, meta)
    partial.rename(final)
    return final
