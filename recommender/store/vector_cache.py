"""The vector cache: embed what the store has no vector for, in batches, and store it.

Vectors are kept per (model, content hash), so unchanged text is never embedded
twice. This is the one place that fills the cache: ingest, API writes, drafts'
neighbours, re-embedding jobs and the evaluation all come through `fill`. Each
batch is committed as it finishes, so an interrupted run keeps what it embedded.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, Sequence

import numpy as np

from embeddings import Embedder
from recommender.errors import StoreError
from recommender.store.articles import content_hash
from recommender.store.base import Store, Writes

LENGTH_WINDOW = 64  # batches whose texts are sorted by length together, to waste less padding

Batch = list[tuple[str, str]]  # (content hash, text)
Embedded = tuple[list[str], np.ndarray]  # (content hashes, their vectors)
EmbedStream = Callable[[list[Batch]], Iterator[Embedded]]


def split(batch: Batch) -> tuple[list[str], list[str]]:
    return [h for h, _ in batch], [t for _, t in batch]


def length_sorted_batches(items: Sequence[tuple[str, str]], batch_size: int) -> list[Batch]:
    """Batches of similar length, so a batch's padding is small; windows keep the
    order roughly that of the archive, so a resumed job continues where it was."""
    batches: list[Batch] = []
    window = batch_size * LENGTH_WINDOW
    for start in range(0, len(items), window):
        chunk = sorted(items[start:start + window], key=lambda item: len(item[1]))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return batches


def in_process(embed: Callable[[list[str]], np.ndarray]) -> EmbedStream:
    """Batches embedded one after the other in this process by `embed` (an
    embedder's `embed`, or the engine's, which serialises callers). The next batch
    embeds in a thread while the caller commits this one: both engines release the
    GIL while they compute, so the store's writes take nothing from the model."""
    def stream(batches: list[Batch]) -> Iterator[Embedded]:
        from concurrent.futures import Future, ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="embed")
        ahead: deque[tuple[list[str], Future]] = deque()
        queue = iter(batches)

        def submit() -> None:
            batch = next(queue, None)
            if batch is not None:
                hashes, texts = split(batch)
                ahead.append((hashes, pool.submit(embed, texts)))

        try:
            submit()
            while ahead:
                hashes, future = ahead.popleft()
                vectors = future.result()
                submit()
                yield hashes, vectors
        finally:  # an interrupted caller waits for at most the batch under way, then stops
            pool.shutdown(wait=True, cancel_futures=True)

    return stream


def fill(store: Store, model: str, pending: Sequence[tuple[str, str]], embed: EmbedStream, batch_size: int,
         progress: bool = False, desc: str | None = None, announce: bool = True,
         on_batch: Callable[[int], None] | None = None,
         with_batch: Callable[[Writes, list[str]], None] | None = None) -> int:
    """Embed `pending` (content hash, text) pairs and commit each batch; the count embedded.
    `with_batch(tx, hashes)`: more writes in each batch's transaction (the articles
    whose text it embedded, stored with their vectors).
    `announce=False` for vectors no serving index reads (a re-embedding job's, a teacher's):
    they then add no work to the change log, which every server's lists follow.
    `on_batch(n)`: after each committed batch of n texts (a caller's own progress bar)."""
    from tqdm import tqdm

    done = 0
    with tqdm(total=len(pending), unit="doc", desc=desc or f"embedding ({model})",
              disable=not progress or not pending) as bar:
        for hashes, vectors in embed(length_sorted_batches(pending, batch_size)):
            with store.transaction() as tx:
                tx.put_vectors(model, hashes, vectors, announce)
                if with_batch is not None:
                    with_batch(tx, hashes)
            done += len(hashes)
            bar.update(len(hashes))
            if on_batch is not None:
                on_batch(len(hashes))
    return done


def missing(store: Store, model: str, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (hash, text) pairs, once each, whose hash has no vector under `model`."""
    lacking = store.hashes_without_vectors(model, [h for h, _ in pairs])
    unique = {h: t for h, t in pairs if h in lacking}
    return list(unique.items())


def embed_cached(store: Store, embedder: Embedder, texts: list[str], batch_size: int = 64, progress: bool = False,
                 desc: str | None = None) -> np.ndarray:
    """Vectors for `texts` through the cache: a rerun embeds nothing."""
    hashes = [content_hash(t) for t in texts]
    fill(store, embedder.name, missing(store, embedder.name, list(zip(hashes, texts))), in_process(embedder.embed),
         batch_size, progress, desc, announce=False)
    vectors = [store.vector(embedder.name, h) for h in hashes]
    lost = sum(v is None for v in vectors)
    if lost:  # another process pruned them meanwhile
        raise StoreError(f"{lost} of {len(hashes)} vectors under {embedder.name} are gone from the store")
    return np.vstack([v for v in vectors if v is not None])
