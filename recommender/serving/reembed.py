"""Re-embed the whole archive with a model into a new index version.

The checkpoint is the store's vector table itself: each batch's vectors are
committed under (model, content hash) as soon as they exist, so `kill -9`
loses at most the batches in flight, a rerun embeds only what is missing, and
text any earlier job embedded with the same model is never embedded again.
The active version keeps serving until the new one is complete, validated, has
its related lists, and is switched in by one atomic rename.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from embeddings import Embedder
from recommender.errors import JobFailed
from recommender.index.state import IndexState
from recommender.index.versions import Versions, open_versions
from recommender.serving.engine import Engine
from recommender.settings import Settings
from recommender.store import vector_cache
from recommender.store.models import E5Engine, load_model, model_name
from recommender.store.vector_cache import Batch, split

SHARD_BATCHES = 8  # batches per Ray task


@dataclass(frozen=True)
class ReembedOptions:
    model: str
    device: str | None = None
    batch_size: int = 32
    workers: int = 0  # 0: in this process, with the embedder's own threading
    limit: int | None = None
    activate: bool = True
    ray_address: str | None = None
    progress: bool = False
    list_workers: int = 1  # forked processes computing the new version's related lists


@dataclass
class ReembedResult:
    model: str
    version: str
    total_texts: int
    embedded: int
    reused: int
    seconds: float
    resumed: bool
    complete: bool = False
    activated: bool = False
    checks: list[str] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def run_reembed(settings: Settings, opts: ReembedOptions, echo: Callable[[str], None] = print) -> ReembedResult:
    name = model_name(opts.model)
    versions = open_versions(settings)
    with versions.lock("reembed", "re-embedding job"):
        # Load the model before any work: a bad id or an unreachable hub fails here.
        embedder = load_model(name, device=opts.device, batch_size=opts.batch_size, models_dir=settings.models_dir,
                              e5_engine=settings.e5_engine)
        job_settings = settings.model_copy(update={"model": name, "batch_size": opts.batch_size, "device": opts.device})
        engine = Engine(job_settings, embedder)
        try:
            return _run(engine, versions, embedder, opts, echo)
        except (sqlite3.OperationalError, OSError) as exc:
            raise _failure("the job could not write to the data dir", engine, exc) from None


def _run(engine: Engine, versions: Versions, embedder: Embedder, opts: ReembedOptions,
         echo: Callable[[str], None]) -> ReembedResult:
    model = engine.model
    version, resumed = _job_version(engine, versions)
    pending = engine.store.texts_missing_vectors(model)
    total = engine.store.count_texts()
    result = ReembedResult(model, version, total, 0, total - len(pending), 0.0, resumed)
    echo(f"{'resuming' if resumed else 'starting'} {version} with {model}: "
         f"{len(pending)} texts to embed, {result.reused} already embedded")
    if opts.limit is not None:
        pending = pending[: opts.limit]
    started = time.perf_counter()
    result.embedded = _embed_all(engine, pending, opts, embedder)
    result.seconds = time.perf_counter() - started
    if engine.store.texts_missing_vectors(model):
        echo(f"embedded {result.embedded} texts ({result.docs_per_second:.1f} docs/s); the job is not complete "
             f"(--limit); rerun without --limit to finish {version}")
        return result
    result.complete = True
    state = _build(engine, version, embedder, result, opts)
    if opts.activate:
        versions.activate(version)
        result.activated = True
    engine.store.finish_job(model)
    echo(f"{version} ready: {state.vectors.count} articles, dimension {state.meta.dimension}"
         + (", active" if result.activated else f"; activate it with: recommender index activate {version}"))
    return result


def _embed_all(engine: Engine, pending: list[tuple[str, str]], opts: ReembedOptions, embedder: Embedder) -> int:
    models_dir, e5_engine = engine.settings.models_dir, engine.settings.e5_engine
    stream: vector_cache.EmbedStream
    if opts.ray_address:
        stream = partial(embed_with_ray, opts.ray_address, engine.model, opts.device, opts.batch_size, models_dir,
                         e5_engine)
    elif opts.workers > 0:
        stream = partial(embed_with_processes, engine.model, opts.device, opts.batch_size, opts.workers, models_dir,
                         e5_engine)
    else:
        stream = vector_cache.in_process(embedder.embed)
    try:
        # The new version is built from the store when every text has its vector, so its
        # vectors need no change-log rows: those would make every server recompute the
        # active version's lists for nothing (the whole archive's, on a full job).
        return vector_cache.fill(engine.store, engine.model, pending, stream, opts.batch_size, opts.progress,
                                 desc=f"re-embedding ({engine.model})", announce=False)
    except (sqlite3.OperationalError, OSError) as exc:
        raise _failure("could not write a checkpoint", engine, exc) from None


def _failure(what: str, engine: Engine, exc: Exception) -> JobFailed:
    active = engine.versions.active() or "no version"
    return JobFailed(f"{what} ({type(exc).__name__}: {exc}). Nothing was activated: {active} keeps serving, and the "
                     f"vectors committed so far are kept",
                     hint=f"free disk space or fix permissions under {engine.settings.data_dir}, "
                          "then rerun the same command to resume")


def _build(engine: Engine, version: str, embedder: Embedder, result: ReembedResult, opts: ReembedOptions):
    """Index, validation, related lists: everything before the switch."""
    try:
        state = engine.indexes.build_state(version, embedder.dimension)
        result.checks = validate(engine, state, embedder)
        engine.indexes.save(state)
        lists = engine.lists_for(state)
        engine.upkeep.fill_missing(state, lists, opts.progress, opts.list_workers)
        engine.upkeep.catch_up(state, lists)  # records that the lists are current
    except (sqlite3.OperationalError, OSError) as exc:
        raise _failure(f"could not write index version {version}", engine, exc) from None
    return state


def validate(engine: Engine, state: IndexState, embedder: Embedder, sample: int = 20) -> list[str]:
    """Every article has a vector, the dimension is the model's, and a sample of
    articles re-embedded now sits at its own place in the index."""
    missing = [info.id for info in state.infos.values() if info.num not in state.vectors]
    if missing:
        raise JobFailed(f"{len(missing)} articles have no vector (first: {missing[0]})", hint="rerun to resume")
    if state.meta.dimension != embedder.dimension or state.vectors.dimension != embedder.dimension:
        raise JobFailed(f"index dimension {state.meta.dimension} is not the model's {embedder.dimension}")
    rng = np.random.default_rng(0)
    infos = list(state.infos.values())
    picks = [infos[i] for i in rng.choice(len(infos), size=min(sample, len(infos)), replace=False)] if infos else []
    texts = [engine.store.get_text(info.id) or info.title for info in picks]
    fresh = embedder.embed(texts) if picks else np.zeros((0, embedder.dimension))
    for info, vector in zip(picks, fresh):
        scores, nums = state.vectors.search(vector, 1)
        own = float(state.vectors.reconstruct(np.array([info.num]))[0] @ vector)
        if own < 0.99 or (scores[0][0] - own) > 1e-3:
            raise JobFailed(f"spot check failed for {info.id}: its stored vector does not match a fresh embedding "
                            f"(cosine {own:.3f}); the job did not activate anything")
    return [f"{len(infos)} articles, all with vectors", f"dimension {embedder.dimension}",
            f"{len(picks)} articles re-embedded and found at their own place"]


def _job_version(engine: Engine, versions: Versions) -> tuple[str, bool]:
    version = engine.store.unfinished_job(engine.model)
    if version is not None:
        return version, True
    version = versions.new_name()
    versions.path(version).mkdir(parents=True, exist_ok=True)  # reserves the name
    engine.store.start_job(engine.model, version)
    return version, False


# --- embedding backends -----------------------------------------------------------

_worker_embedder: Embedder | None = None  # one per worker process, loaded by its initializer


def _init_worker(model: str, device: str | None, batch_size: int, models_dir: Path, e5_engine: E5Engine) -> None:
    global _worker_embedder
    # Each worker is single-threaded: N workers use N cores without oversubscription.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _worker_embedder = load_model(model, device=device, batch_size=batch_size, threads=1, models_dir=models_dir,
                                  e5_engine=e5_engine)


def _embed_in_worker(batch: Batch) -> tuple[list[str], np.ndarray]:
    hashes, texts = split(batch)
    assert _worker_embedder is not None, "_init_worker runs first"
    return hashes, _worker_embedder.embed(texts)


def embed_with_processes(model: str, device: str | None, batch_size: int, workers: int, models_dir: Path,
                         e5_engine: E5Engine, batches: list[Batch]) -> Iterator[tuple[list[str], np.ndarray]]:
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no inherited threads or CUDA state
    # Longest batches first: the workers then finish together instead of one
    # idling while the other embeds the last, longest batch.
    ordered = sorted(batches, key=lambda b: sum(len(t) for _, t in b), reverse=True)
    initargs = (model, device, batch_size, models_dir, e5_engine)
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        yield from pool.imap_unordered(_embed_in_worker, ordered)


def _embed_shard(model: str, device: str | None, batch_size: int, models_dir: Path, e5_engine: E5Engine,
                 shard: list[Batch]) -> tuple[list[str], np.ndarray]:
    """A Ray task: embed a shard, return it in the checkpoint format (hashes, vectors)."""
    global _worker_embedder
    if _worker_embedder is None or _worker_embedder.name != model:
        _worker_embedder = load_model(model, device=device, batch_size=batch_size, models_dir=models_dir,
                                      e5_engine=e5_engine)
    hashes: list[str] = []
    vectors = []
    for batch in shard:
        h, texts = split(batch)
        hashes += h
        vectors.append(_worker_embedder.embed(texts))
    return hashes, np.vstack(vectors)


def embed_with_ray(address: str, model: str, device: str | None, batch_size: int, models_dir: Path,
                   e5_engine: E5Engine, batches: list[Batch]) -> Iterator[tuple[list[str], np.ndarray]]:
    try:
        import ray
    except ImportError:
        raise JobFailed("--ray needs Ray, which is not installed", hint="pip install 'recommender[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_embed_shard)
    shards = [batches[i:i + SHARD_BATCHES] for i in range(0, len(batches), SHARD_BATCHES)]
    pending = [task.remote(model, device, batch_size, models_dir, e5_engine, shard) for shard in shards]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
