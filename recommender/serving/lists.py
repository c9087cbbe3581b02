"""Related lists computed ahead of time, per article, index version and ranking profile, and their upkeep.

A page view then costs a dictionary lookup instead of a nearest-neighbour
search. Lists are computed at ingest and upsert with the default ranking, kept
in memory and in the store (so a restarted server, or one fed by a CLI ingest,
starts warm), and recomputed when an article they could contain changes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import numpy as np

from recommender.index.state import IndexState
from recommender.ranking import pipeline
from recommender.ranking.candidates import fetch_size
from recommender.ranking.editorial import NO_RULES, EditorialRules
from recommender.ranking.rules import Filters, RelatedItem
from recommender.settings import RankingSettings
from recommender.store.articles import ArticleInfo
from recommender.store.base import Store

SAVE_EVERY = 500  # lists written to the store per transaction
SEARCH_BATCH = 64  # seeds whose nearest neighbours are searched in one call
# Stored lists read at start per step: a million at once, as Python lists, took half a GB.
REMEMBER_BATCH = 20_000

Stop = Callable[[], bool]  # asked between chunks of lists: True ends the computation early
Chunk = tuple[list[int], dict[str, tuple[str, list[str]]]]  # nums, and their texts by article id


@dataclass(frozen=True)
class Reach:
    """What computing a seed's list tells about other lists (`ListUpkeep.affected`)."""

    near: list[int]  # the seed's nearest neighbours
    enters: list[int]  # its candidates whose lists it may enter: it scores at least their last item


NO_REACH = Reach([], [])


@dataclass(frozen=True)
class Encoded:
    """A list as stored, with what the upkeep reads of it: the nums it shows, the score of
    its last item (0 for a short list: anything could enter it), and its seed's reach."""

    num: int
    text: str
    shown: list[int]
    floor: float
    reach: Reach


def never() -> bool:
    return False


@dataclass(frozen=True)
class CachedItem:
    num: int
    relevance: float
    rank_score: float
    reason: str

    @classmethod
    def from_json(cls, row: list) -> "CachedItem":
        if len(row) == 3:  # stored before rank_score existed: one score, the ranking's
            num, score, reason = row
            return cls(num, score, score, reason)
        return cls(*row)


    def shown_as(self, info: ArticleInfo) -> RelatedItem:
        """The suggestion this cached item stands for, with the article as it is now."""
        return RelatedItem(info.id, info.title, info.url, info.published_at, info.section, self.relevance,
                           self.rank_score, self.reason, image_url=info.image_url)


@dataclass(frozen=True)
class CachedList:
    items: tuple[CachedItem, ...]
    fresh: bool


def lists_key(version: str, profile: str) -> str:
    """What the store files lists under: the index version and the ranking profile."""
    return f"{version}:{profile}"


class RelatedLists:
    """The lists of one index version and ranking profile. They live in the store
    (a page view reads one row by primary key); memory holds only which articles
    each list shows, as one int32 row per article, to find the lists a change touches:
    about 40 MB for a million lists, where the lists themselves would take gigabytes."""

    GROW = 1.5  # the reverse map grows by this factor when a larger article number comes

    def __init__(self, store: Store, version: str, profile: str, width: int = 10):
        self.store = store
        self.version = version
        self.profile = profile
        self.key = lists_key(version, profile)
        self.width = width
        self._items = np.full((0, width), -1, dtype=np.int32)  # row num: the nums its list shows
        self._has = np.zeros(0, dtype=bool)  # row num: its list is stored (it may be empty)
        self._floor = np.zeros(0, dtype=np.float64)  # row num: its last item's rank_score (0: short)
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        """Read which articles each stored list shows (after other processes wrote lists)."""
        rows: list[tuple[int, list[int], float]] = []
        for num, text, _ in self.store.list_rows(self.key):
            items = [CachedItem.from_json(i) for i in json.loads(text)[:self.width]]
            rows.append((num, [i.num for i in items], floor(items, self.width)))
            if len(rows) == REMEMBER_BATCH:
                self._remember(rows)
                rows = []
        self._remember(rows)

    def _remember(self, rows: list[tuple[int, list[int], float]]) -> None:
        if not rows:
            return
        top = max(num for num, _, _ in rows)
        if top >= len(self._items):
            size = max(top + 1, int(len(self._items) * self.GROW))
            grown = np.full((size, self.width), -1, dtype=np.int32)
            grown[: len(self._items)] = self._items
            has = np.zeros(size, dtype=bool)
            has[: len(self._has)] = self._has
            floors = np.zeros(size, dtype=np.float64)
            floors[: len(self._floor)] = self._floor
            self._items, self._has, self._floor = grown, has, floors
        for num, shown, last in rows:
            self._items[num] = -1
            self._items[num, : min(len(shown), self.width)] = shown[: self.width]
            self._has[num] = True
            self._floor[num] = last

    def __len__(self) -> int:
        return int(np.count_nonzero(self._has))

    def get(self, num: int) -> CachedList | None:
        row = self.store.list_row(self.key, num)
        if row is None:
            return None
        return CachedList(tuple(CachedItem.from_json(i) for i in json.loads(row[0])), row[1])

    def put_many(self, lists: dict[int, list[CachedItem]]) -> None:
        self.store.put_lists(self.key, {num: encode(items) for num, items in lists.items()})
        with self._lock:
            self._remember([(num, [i.num for i in items], floor(items, self.width)) for num, items in lists.items()])

    def put_encoded(self, lists: list[Encoded]) -> None:
        """Store lists encoded elsewhere (a forked worker's)."""
        self.store.put_lists(self.key, {e.num: e.text for e in lists})
        with self._lock:
            self._remember([(e.num, e.shown, e.floor) for e in lists])

    def floors(self) -> np.ndarray:
        """Per row num, what a candidate must score to enter its list (0: short, or none stored)."""
        return self._floor

    def reached(self, reaches: dict[int, Reach]) -> set[int]:
        """Of the lists the seeds of `reaches` show and of their nearest neighbours, those
        some seed may enter."""
        near = {n for r in reaches.values() for n in r.near} | self.shown_by(reaches)
        return near & {n for r in reaches.values() for n in r.enters}

    def shown_by(self, nums: Iterable[int]) -> set[int]:
        """The articles the stored lists of `nums` show."""
        rows = [n for n in nums if n < len(self._items)]
        shown = self._items[rows].ravel()
        return set(shown[shown >= 0].tolist())

    def containing(self, nums: Iterable[int]) -> set[int]:
        wanted = np.fromiter(nums, dtype=np.int64)
        if len(wanted) == 0:
            return set()
        items = self._items
        return set(np.flatnonzero(np.isin(items, wanted).any(axis=1)).tolist())

    def has(self, num: int) -> bool:
        return num < len(self._has) and bool(self._has[num])

    def missing_or_stale(self, nums: Iterable[int]) -> list[int]:
        """Those of `nums` without a stored list (stored lists are always fresh: a change
        that concerns one recomputes it)."""
        has = self._has
        return [n for n in nums if n >= len(has) or not has[n]]

    def forget(self, nums: list[int]) -> None:
        """Drop these articles' own lists: deleted articles' (lists that show them are filtered
        at read time), or lists to compute again (`ListUpkeep.to_prepare`)."""
        self.store.delete_lists(self.key, nums)
        with self._lock:
            for n in nums:
                if n < len(self._items):
                    self._items[n], self._has[n], self._floor[n] = -1, False, 0.0


def entering(ranked: pipeline.Ranked, floors: np.ndarray) -> list[int]:
    """The seed's candidates whose lists it scores at least as high as their last item."""
    inside = ranked.nums < len(floors)
    floor_ = np.zeros(len(ranked.nums))
    floor_[inside] = floors[ranked.nums[inside]]
    return ranked.nums[ranked.scores >= floor_].tolist()


def floor(items: list[CachedItem], width: int) -> float:
    """What a candidate must score to enter a list: its last item's rank_score, 0 for a short one."""
    return min(i.rank_score for i in items) if len(items) >= width else 0.0


def encode(items: list[CachedItem]) -> str:
    return json.dumps([[i.num, i.relevance, i.rank_score, i.reason] for i in items], ensure_ascii=False)


def stored_list(store: Store, key: str, article_id: str, k: int) -> list[RelatedItem] | None:
    """An article's precomputed list read straight from the store, without loading
    the index: None unless it exists, is fresh, its lists follow every change in the
    log, and none of its items was deleted since."""
    num = store.num_of(article_id)
    row = store.list_row(key, num) if num is not None else None
    refreshed = store.lists_refreshed_seq(key)
    if row is None or not row[1] or refreshed is None or refreshed < store.last_change():
        return None
    cached = [CachedItem.from_json(i) for i in json.loads(row[0])][:k]
    infos = store.infos([item.num for item in cached])
    if len(infos) < len(cached):
        return None
    return [item.shown_as(infos[item.num]) for item in cached]


def last_stored_list(store: Store, key: str, num: int, k: int, filters: Filters) -> list[RelatedItem] | None:
    """The list last stored for an article, even if changes since have not reached it
    yet, without its deleted and filtered-out items: what a server still loading its
    index serves. None when there is none or too few items remain."""
    row = store.list_row(key, num)
    if row is None:
        return None
    cached = [CachedItem.from_json(i) for i in json.loads(row[0])]
    infos = store.infos([num] + [item.num for item in cached])
    if num not in infos:
        return None
    reference = infos[num].published_at or datetime.now(timezone.utc)
    out = [item.shown_as(infos[item.num]) for item in cached
           if item.num in infos and filters.accepts(infos[item.num], reference)]
    return out[:k] if len(out) >= min(k, len(cached)) else None


class ListUpkeep:
    """Computes lists with the default ranking and keeps them current after writes."""

    def __init__(self, store: Store, ranking: RankingSettings, precompute_k: int, embed: pipeline.Embed,
                 rules: EditorialRules = NO_RULES, nice: int = 0):
        """`nice`: the CPU priority of the forked processes computing lists."""
        self.store = store
        self.nice = nice
        self.options = pipeline.ranking_options(ranking, k=precompute_k)
        self.precompute_k = precompute_k
        self.embed = embed
        self.rules = rules

    def affected(self, state: IndexState, lists: RelatedLists, changed: Iterable[int], workers: int = 1,
                 stop: Stop = never) -> list[int]:
        """The lists a change can touch, beyond the changed articles' own, which are
        computed and stored here, first: the lists that showed a changed article, and
        those a changed article may now enter. Those are the lists of the articles its
        new list shows (an earlier piece of a story must point to its follow-up, and the
        follow-up's list, from every candidate source, finds it more surely than an
        approximate nearest-neighbour search) and of its nearest neighbours, where it
        scores, as a candidate of theirs seen from its own side, at least as high as their
        last item: of 4,167 such lists after 2,000 new articles, 1,770, catching nearly as
        many of the lists that gain a new article (38.8 % against 39.1 %,
        eval/bench_upkeep.py). Deleted articles' lists are dropped."""
        changed = set(changed)
        lists.forget([n for n in changed if n not in state.infos])
        own = sorted(n for n in changed if n in state.infos)
        affected = lists.containing(changed)
        reach: dict[int, Reach] = {}
        self.compute_in_processes(state, lists, own, workers, stop=stop, reach=reach)
        affected.update(lists.reached(reach))
        return sorted(n for n in affected - set(own) if n in state.infos)

    def refresh(self, state: IndexState, lists: RelatedLists, changed: Iterable[int], progress: bool = False,
                workers: int = 1, stop: Stop = never) -> int:
        """Recompute the lists `changed` touches, the changed articles' own included; how
        many. `stop()`, asked between chunks, ends it early."""
        changed = set(changed)
        affected = self.affected(state, lists, changed, workers, stop)
        own = sum(1 for n in changed if n in state.infos)
        return own + self.compute_in_processes(state, lists, affected, workers, progress, stop)

    def catch_up(self, state: IndexState, lists: RelatedLists, progress: bool = False, workers: int = 1) -> int:
        """Recompute the lists touched by every change the index has applied and the
        lists have not followed yet, whoever applied it and whenever; then record it.
        A version with no record yet (a store from before records) counts as current."""
        done = self.store.lists_refreshed_seq(lists.key)
        applied = state.meta.applied_seq
        if done is not None and done < applied:
            count = self.refresh(state, lists, self.store.changed_between(done, applied), progress, workers)
        else:
            count = 0
        self.record(state, lists)
        return count

    def record(self, state: IndexState, lists: RelatedLists) -> None:
        """The lists follow every change the index has applied."""
        self.store.mark_lists_refreshed(lists.key, state.meta.applied_seq)

    def to_prepare(self, state: IndexState, lists: RelatedLists) -> list[int]:
        """What an activation of `lists`' profile computes before it may call its lists
        current as of `state`: the missing lists, after dropping every stored one that the
        changes since the key's record touch. Stored lists without a record (an activation
        killed before it recorded) are all dropped: nothing says what they have seen."""
        done = self.store.lists_refreshed_seq(lists.key)
        applied = state.meta.applied_seq
        if done is None:
            lists.forget([n for n in state.infos if lists.has(n)])
        elif done < applied:
            lists.forget(self.affected(state, lists, self.store.changed_between(done, applied)))
        return self.missing(state, lists)

    def fill_missing(self, state: IndexState, lists: RelatedLists, progress: bool = False, workers: int = 1) -> int:
        """Compute every list not stored yet; `workers` > 1 only from a command's own
        process (it forks: never from a server's threads)."""
        return self.compute_in_processes(state, lists, self.missing(state, lists), workers, progress)

    @staticmethod
    def missing(state: IndexState, lists: RelatedLists) -> list[int]:
        return lists.missing_or_stale(n for n in state.infos if n in state.vectors)

    def compute(self, state: IndexState, lists: RelatedLists, nums: list[int], progress: bool = False,
                stop: Stop = never, reach: dict[int, Reach] | None = None) -> int:
        """`reach`: filled with each seed's reach (`lists_for`)."""
        from tqdm import tqdm

        batch: dict[int, list[CachedItem]] = {}
        with tqdm(total=len(nums), unit="list", desc="precomputing related lists",
                  disable=not progress or not nums) as bar:
            floors = None if reach is None else lists.floors()  # the lists computed here enter no test
            for start in range(0, len(nums), SEARCH_BATCH):
                if stop():
                    break
                for num, items, found in self.lists_for(state, nums[start:start + SEARCH_BATCH], floors=floors):
                    batch[num] = self.cached_items(state, items)
                    if reach is not None:
                        reach[num] = found
                    bar.update()
                if len(batch) >= SAVE_EVERY:
                    lists.put_many(batch)
                    batch = {}
        lists.put_many(batch)
        return len(nums)

    def compute_in_processes(self, state: IndexState, lists: RelatedLists, nums: list[int], workers: int,
                             progress: bool = False, stop: Stop = never, reach: dict[int, Reach] | None = None
                             ) -> int:
        """`compute`, spread over `workers` forked processes that share this one's
        loaded index (copy-on-write); for many lists (a first ingest, a profile switch,
        a bulk import reaching a server). Fewer than two chunks' worth, and articles
        without a vector (their seed needs the model), are computed here.

        The children never touch the store: a database connection must not cross a
        fork, and a server's other threads hold theirs. This process reads each chunk's
        texts (in the pool's feeder thread) and writes the lists the children return."""
        forkable = [n for n in nums if n in state.vectors]
        if len(forkable) >= 2 * SAVE_EVERY:
            # Each search scores the documents written since the last build one by one: a
            # 10,000-article bulk into a one-worker server had not caught up after 20 minutes.
            state.settle()  # once here, not in every child
        if workers <= 1 or len(forkable) < 2 * SAVE_EVERY:
            return self.compute(state, lists, nums, progress, stop, reach)
        import multiprocessing

        from tqdm import tqdm

        self.compute(state, lists, [n for n in nums if n not in state.vectors], stop=stop, reach=reach)
        global _forked_job
        _forked_job = (self, state, None if reach is None else lists.floors())
        release_free_memory()
        chunks = [forkable[i:i + SAVE_EVERY] for i in range(0, len(forkable), SAVE_EVERY)]
        try:
            with multiprocessing.get_context("fork").Pool(workers, initializer=_start_forked,
                                                          initargs=(self.nice,)) as pool, \
                    tqdm(total=len(forkable), unit="list", desc="computing related lists",
                         disable=not progress) as bar:
                for computed in pool.imap_unordered(_compute_forked, self._with_texts(state, chunks, stop)):
                    lists.put_encoded(computed)
                    if reach is not None:
                        reach.update((e.num, e.reach) for e in computed)
                    bar.update(len(computed))
                    if stop():
                        pool.terminate()
                        break
                else:  # the workers end on their own: terminate() races their queue's lock
                    pool.close()
                    pool.join()
        finally:
            _forked_job = None
        return len(nums)

    def _with_texts(self, state: IndexState, chunks: list[list[int]], stop: Stop) -> Iterator[Chunk]:
        for chunk in chunks:
            if stop():
                return
            texts = self.store.texts_and_terms(chunk)
            yield chunk, {state.infos[num].id: texts[num] for num in chunk if num in texts}

    def lists_for(self, state: IndexState, nums: list[int], texts: pipeline.Texts | None = None,
                  floors: np.ndarray | None = None) -> Iterator[tuple[int, list[RelatedItem], Reach]]:
        """The lists of several articles, their nearest neighbours searched in one
        FAISS call: a matrix product over the batch instead of one per seed.
        `texts`: the seeds' texts, when not read from the store. `floors`
        (`RelatedLists.floors`): with each list, its seed's reach (else an empty one)."""
        source = texts or self.store
        seeds = [pipeline.stored_seed(state, source, state.infos[num].id, self.embed) for num in nums]
        if not seeds:
            return
        _, nearest = state.vectors.search(np.vstack([s.vector for s in seeds]),
                                          fetch_size(self.options.candidates))
        for num, seed, near in zip(nums, seeds, nearest):
            ranked = pipeline.rank_scored(state, seed, self.rules.filters_under(seed.section, Filters()),
                                          self.options, near)
            if floors is None:
                yield num, ranked.items, NO_REACH
            else:
                neighbours = near[:self.precompute_k + 1]
                yield num, ranked.items, Reach(neighbours[neighbours >= 0].tolist(), entering(ranked, floors))

    @staticmethod
    def cached_items(state: IndexState, items: Iterable[RelatedItem]) -> list[CachedItem]:
        return [CachedItem(state.by_id[i.id], i.relevance, i.rank_score, i.reason) for i in items]


class ReadAhead:
    """Texts read by the parent for a forked worker's chunk (`pipeline.Texts`)."""

    def __init__(self, texts: dict[str, tuple[str, list[str]]]):
        self.texts = texts

    def text_and_terms(self, article_id: str) -> tuple[str, list[str]] | None:
        return self.texts.get(article_id)


# What a forked list worker computes with: set by the parent just before forking,
# so the children inherit the loaded index instead of loading it again.
_forked_job: tuple[ListUpkeep, IndexState, np.ndarray | None] | None = None


def _job() -> tuple[ListUpkeep, IndexState, np.ndarray | None]:
    assert _forked_job is not None, "set before the pool forks"
    return _forked_job


def _start_forked(nice: int = 0) -> None:
    import signal

    from threadpoolctl import threadpool_limits

    # A fork keeps the parent's handlers: a server's (uvicorn's) SIGTERM handler only sets
    # a flag, so the pool's terminate() never ended its workers and the list worker hung in
    # join. Ctrl-C is the parent's to handle: it terminates the pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)  # N workers on N cores, not N x BLAS threads
    at_least_nice(nice)  # a server's page views first: on 2 cores, 2 workers took their CPU (p99 126 ms)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel before forking. A build leaves much
    of its transient memory free but mapped; it counted as this process's, and a forked
    worker that allocated into it copied the page first."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to hand back this way
        pass


def at_least_nice(nice: int, thread: int = 0) -> None:
    """This process (or one of its threads, by native id) at CPU priority `nice` or lower:
    a forked worker inherits its thread's, and lowering it again needs privileges."""
    import os

    os.setpriority(os.PRIO_PROCESS, thread, max(os.getpriority(os.PRIO_PROCESS, thread), nice))


def _compute_forked(chunk: Chunk) -> list[Encoded]:
    """A chunk's lists, encoded as stored, with the nums each shows."""
    upkeep, state, floors = _job()
    nums, texts = chunk
    out = []
    for num, items, reach in upkeep.lists_for(state, nums, ReadAhead(texts), floors):
        cached = upkeep.cached_items(state, items)
        out.append(Encoded(num, encode(cached), [i.num for i in cached], floor(cached, upkeep.precompute_k), reach))
    return out
