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
from recommender.store.base import ArticleRow, Store, UpsertResult


@dataclass
class Written:
    results: list[UpsertResult] = field(default_factory=list)
    embedded: int = 0  # texts sent to the model


def write_articles(store: Store, model: str, embed: vector_cache.EmbedStream, batch_size: int,
                   articles: list[Article], embed_chars: int,
                   on_batch: Callable[[int], None] | None = None) -> Written:
    """Embed the texts the cache lacks (committed batch by batch), then store the
    articles in one transaction: an article is never stored without its vector
    being at least on its way, and a crash keeps every finished batch.
    `on_batch(n)`: after each embedded batch of n texts."""
    rows = [ArticleRow.of(a, a.embed_text(embed_chars)) for a in articles]
    pairs = [(row.content_hash, row.text.text) for row in rows]
    embedded = vector_cache.fill(store, model, vector_cache.missing(store, model, pairs), embed, batch_size,
                                 on_batch=on_batch)
    with store.transaction() as tx:
        results = [tx.upsert(row) for row in rows]
    return Written(results, embedded)


def delete_articles(store: Store, ids: list[str]) -> list[str]:
    """Delete in one transaction; the ids that were not there."""
    unknown = []
    with store.transaction() as tx:
        for article_id in ids:
            if tx.delete(article_id) is None:
                unknown.append(article_id)
    return unknown
