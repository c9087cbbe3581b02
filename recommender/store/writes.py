"""The one write path: articles in, vectors for their new text, rows in the store.

CLI ingest, every API write route and the tests all write through here; an
index and its lists then follow the store's change log (`Indexes.catch_up`,
`ListUpkeep.refresh`), whoever wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from recommender.store import vector_cache
from recommender.store.articles import Article
from recommender.store.base import ArticleRow, Store, UpsertResult, Writes


@dataclass
class Written:
    results: list[UpsertResult] = field(default_factory=list)
    embedded: int = 0  # texts sent to the model


def write_articles(store: Store, model: str, embed: vector_cache.EmbedStream, batch_size: int,
                   articles: list[Article], embed_chars: int,
                   on_batch: Callable[[int], None] | None = None) -> Written:
    """Store the articles whose text has a vector, then each batch of the others in the
    transaction that stores its vectors: an article is never stored without its vector,
    and an interrupted ingest (Ctrl-C) keeps every article of every finished batch.
    `on_batch(n)`: after each embedded batch of n texts."""
    rows = [ArticleRow.of(a, a.embed_text(embed_chars)) for a in articles]
    pairs = [(row.content_hash, row.text.text) for row in rows]
    pending = vector_cache.missing(store, model, pairs)
    if len({row.article.id for row in rows}) < len(rows):  # a later version must win: every row in order, at the end
        embedded = vector_cache.fill(store, model, pending, embed, batch_size, on_batch=on_batch)
        with store.transaction() as tx:
            return Written([tx.upsert(row) for row in rows], embedded)
    results: dict[int, UpsertResult] = {}
    waiting: dict[str, list[int]] = {h: [] for h, _ in pending}
    for i, row in enumerate(rows):
        waiting.get(row.content_hash, []).append(i)

    def store_rows(tx: Writes, hashes: list[str]) -> None:
        for i in (i for h in hashes for i in waiting.pop(h, [])):
            results[i] = tx.upsert(rows[i])

    with store.transaction() as tx:
        ready = [i for i, row in enumerate(rows) if row.content_hash not in waiting]
        results.update((i, tx.upsert(rows[i])) for i in ready)
    embedded = vector_cache.fill(store, model, pending, embed, batch_size, on_batch=on_batch, with_batch=store_rows)
    return Written([results[i] for i in range(len(rows))], embedded)


def delete_articles(store: Store, ids: list[str]) -> list[str]:
    """Delete in one transaction; the ids that were not there."""
    unknown = []
    with store.transaction() as tx:
        for article_id in ids:
            if tx.delete(article_id) is None:
                unknown.append(article_id)
    return unknown
