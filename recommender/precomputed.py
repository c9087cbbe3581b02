"""Related lists computed ahead of time, per article and index version.

A page view then costs a dictionary lookup instead of a nearest-neighbour
search. Lists are computed at ingest and upsert with the default ranking, kept
in memory and in SQLite (so a restarted server, or one fed by a CLI ingest,
starts warm), and recomputed when an article they could contain changes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from recommender.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS related_lists (
    version TEXT NOT NULL,
    num INTEGER NOT NULL,
    items TEXT NOT NULL,      -- JSON [[num, score, reason], ...], best first
    fresh INTEGER NOT NULL,   -- 0 once an article it may concern changed
    PRIMARY KEY (version, num)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class CachedItem:
    num: int
    score: float
    reason: str


@dataclass(frozen=True)
class CachedList:
    items: tuple[CachedItem, ...]
    fresh: bool


class RelatedLists:
    def __init__(self, store: Store, version: str):
        self.store = store
        self.version = version
        self._lists: dict[int, CachedList] = {}
        self._containing: dict[int, set[int]] = {}  # item num -> lists that show it
        self._lock = threading.Lock()
        store.conn.executescript(SCHEMA)
        self._load()

    def _load(self) -> None:
        rows = self.store.conn.execute(
            "SELECT num, items, fresh FROM related_lists WHERE version = ?", (self.version,))
        for num, items, fresh in rows:
            self._remember(num, CachedList(tuple(CachedItem(*i) for i in json.loads(items)), bool(fresh)))

    def _remember(self, num: int, cached: CachedList) -> None:
        old = self._lists.get(num)
        if old is not None:
            for item in old.items:
                self._containing.get(item.num, set()).discard(num)
        self._lists[num] = cached
        for item in cached.items:
            self._containing.setdefault(item.num, set()).add(num)

    def __len__(self) -> int:
        return len(self._lists)

    def get(self, num: int) -> CachedList | None:
        return self._lists.get(num)

    def put_many(self, lists: dict[int, list[CachedItem]]) -> None:
        rows = [(self.version, num, json.dumps([[i.num, i.score, i.reason] for i in items], ensure_ascii=False))
                for num, items in lists.items()]
        with self.store.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO related_lists VALUES (?, ?, ?, 1)", rows)
        with self._lock:
            for num, items in lists.items():
                self._remember(num, CachedList(tuple(items), True))

    def containing(self, nums) -> set[int]:
        with self._lock:
            return {owner for n in nums for owner in self._containing.get(n, ())}

    def missing_or_stale(self, nums) -> list[int]:
        return [n for n in nums if (c := self._lists.get(n)) is None or not c.fresh]

    def mark_stale(self, nums) -> None:
        nums = [n for n in nums if n in self._lists]
        with self.store.transaction() as conn:
            conn.executemany("UPDATE related_lists SET fresh = 0 WHERE version = ? AND num = ?",
                             [(self.version, n) for n in nums])
        with self._lock:
            for n in nums:
                self._lists[n] = CachedList(self._lists[n].items, False)

    def forget(self, nums) -> None:
        """Deleted articles: their own lists go (lists that show them are filtered at read time)."""
        with self.store.transaction() as conn:
            conn.executemany("DELETE FROM related_lists WHERE version = ? AND num = ?", [(self.version, n) for n in nums])
        with self._lock:
            for n in nums:
                cached = self._lists.pop(n, None)
                for item in cached.items if cached else ():
                    self._containing.get(item.num, set()).discard(n)

    @staticmethod
    def drop_version(store: Store, version: str) -> None:
        store.conn.executescript(SCHEMA)
        with store.transaction() as conn:
            conn.execute("DELETE FROM related_lists WHERE version = ?", (version,))
