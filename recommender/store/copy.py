"""`recommender store copy`: a store moved to another backend (SQLite to PostgreSQL, or back),
table by table, every row as it is: article numbers, vectors, the change log, lists and
their progress. A server over the copy then starts warm, and its index files still fit.

Resumable: each table is copied in its key order, in batches that commit whole, so the
rows the target already holds are the first ones of the source; a rerun skips them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Callable

from recommender.errors import StoreError
from recommender.store.sql import SQLStore

# Each table's columns, its key first: the order rows are copied in.
TABLES: dict[str, tuple[str, ...]] = {
    "articles": ("num", "id", "title", "body", "url", "published_at", "published_ts", "section", "tags", "language",
                 "meta", "text", "terms", "content_hash", "record_hash", "updated_at", "entities", "recommendable",
                 "image_url"),
    "vectors": ("model", "content_hash", "vector"),
    "changes": ("seq", "num"),
    "related_lists": ("version", "num", "items", "fresh"),
    "list_progress": ("version", "refreshed_seq"),
    "reembed_jobs": ("model", "version", "started_at", "finished_at"),
    "documents": ("name", "body"),
    "event_units": ("experiment", "arm", "unit", "impressions", "clicks"),
    "event_positions": ("experiment", "arm", "pos", "impressions", "clicks"),
    "event_days": ("experiment", "arm", "day", "impressions", "clicks"),
    "event_pairs": ("seed", "item", "pos", "arm", "impressions", "clicks"),
}
KEYS = {"articles": 1, "vectors": 2, "changes": 1, "related_lists": 2, "list_progress": 1, "reembed_jobs": 1,
        "documents": 1, "event_units": 3, "event_positions": 3, "event_days": 3, "event_pairs": 4}
BATCH = 1000

Progress = Callable[[str, int, int], None]  # (table, rows done, rows in all)


@dataclass
class CopyReport:
    copied: dict[str, int] = field(default_factory=dict)  # rows written by this run, per table
    counts: dict[str, int] = field(default_factory=dict)  # rows in both stores once done, per table
    lists_checked: int = 0


def copy_store(source: SQLStore, target: SQLStore, progress: Progress | None = None,
               sample: int = 200) -> CopyReport:
    """Copy every table, then check: the same count of rows in each, and `sample` random
    lists and articles the same in both. StoreError when the target holds another archive."""
    _check_target(source, target)
    report = CopyReport()
    for table, columns in TABLES.items():
        report.copied[table] = _copy_table(source, target, table, columns, progress)
    target.after_copy()
    report.counts, report.lists_checked = _verify(source, target, sample)
    return report


def _copy_table(source: SQLStore, target: SQLStore, table: str, columns: tuple[str, ...],
                progress: Progress | None) -> int:
    total, done = source.count_rows(table), target.count_rows(table)
    if done > total:
        raise StoreError(f"the target holds more {table} rows ({done:,}) than the source ({total:,})",
                         hint="copy into an empty database, or into the one an interrupted copy left")
    order = ", ".join(columns[:KEYS[table]])
    rows = source.scan(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order} LIMIT ? OFFSET ?", (total, done))
    batch: list[tuple] = []
    copied = 0
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            copied += target.insert_rows(table, columns, batch)
            batch = []
            if progress:
                progress(table, done + copied, total)
    copied += target.insert_rows(table, columns, batch)
    if progress:
        progress(table, done + copied, total)
    return copied


def _check_target(source: SQLStore, target: SQLStore) -> None:
    """A target that holds articles must hold the source's first ones, as an interrupted copy leaves."""
    mine = target.first_ids(5)
    if mine and mine != source.first_ids(len(mine)):
        raise StoreError(f"{target.describe()} already holds another archive",
                         hint="copy into an empty database")


def _verify(source: SQLStore, target: SQLStore, sample: int) -> tuple[dict[str, int], int]:
    counts = {}
    for table in TABLES:
        here, there = source.count_rows(table), target.count_rows(table)
        if here != there:
            raise StoreError(f"the copy of {table} has {there:,} rows, the source {here:,}",
                             hint="rerun the copy with no writes to the source meanwhile")
        counts[table] = here
    keys = [(v, n) for v, n, _ in source.scan("SELECT version, num, fresh FROM related_lists LIMIT ?", (100_000,))]
    checked = random.Random(0).sample(keys, min(sample, len(keys)))
    for version, num in checked:
        if source.list_row(version, num) != target.list_row(version, num):
            raise StoreError(f"the list of article {num} ({version}) differs in the copy")
    for aid in source.first_ids(sample):
        a, b = source.get(aid), target.get(aid)
        if a is None or b is None or json.dumps(a.article.model_dump(mode="json")) != json.dumps(
                b.article.model_dump(mode="json")):
            raise StoreError(f"article {aid!r} differs in the copy")
    return counts, len(checked)
