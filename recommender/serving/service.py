"""What the HTTP routes call: reads from a snapshot, writes that never block them.

Readers take the current `Snapshot` (engine, index state, precomputed lists)
by reference and finish on it. A writer goes through the engine's one write
path (embed, commit to SQLite), then, under the one write lock, applies the
store's changes to a *copy* of the index state and swaps the snapshot in: a
short critical section, whatever the archive's size. The lists those changes
touch are recomputed afterwards by one background worker (`ListWorker`),
outside the lock, newest state winning; reads serve the old lists meanwhile.
The same swap brings in changes made by other processes (a CLI ingest) and a
newly activated index version.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Iterator

from embeddings import Embedder
from recommender.audience.experiments import Experiments
from recommender.errors import ArticleNotFound, NoIndex, RecommenderError, StoreUnavailable
from recommender.index.state import IndexState
from recommender.ranking import pipeline
from recommender.ranking.editorial import Curation
from recommender.ranking.rules import Filters, RelatedItem
from recommender.serving.audience import Assignment, Audience
from recommender.serving.engine import Engine
from recommender.serving.lists import SAVE_EVERY, CachedList, RelatedLists, at_least_nice, last_stored_list, lists_key
from recommender.settings import Settings
from recommender.store.articles import Article, ArticleInfo
from recommender.store.base import Lease, Store, StoredArticle, UpsertResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    engine: Engine
    state: IndexState
    lists: RelatedLists


@dataclass(frozen=True)
class Related:
    items: list[RelatedItem]
    model: str
    index_version: str
    experiment: str | None = None  # the experiment the page view is in, and its arm
    arm: str | None = None
    original: bool = False  # the arm that keeps the page's own block: no items


@dataclass(frozen=True)
class Warming:
    """What a server still loading its index tells /readyz."""

    index_version: str | None
    model: str
    ranking_profile: str
    loading_seconds: float


class Counters:
    """What the service counts; the metrics endpoint reads it."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.stale = 0


class Service:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self._embedder = embedder
        self._write = threading.Lock()
        self.counters = Counters()
        self._snapshot: Snapshot | None = None
        self._saved_seq = -1
        self.failure: str | None = None  # why start() failed, for /readyz
        self.store_damage: str | None = None  # what the store's integrity check found, for /readyz
        self._cold: Engine | None = None  # the engine while its index loads: the store is usable already
        self._started_at = time.monotonic()
        self._serving: int | None = None  # the serving lock's descriptor
        self.lists = ListWorker(self)
        self.audience = Audience(self._audience_sources)
        self._arms: dict[str, tuple[Engine, RelatedLists]] = {}  # arm profile -> its engine and lists
        self._arms_lock = threading.Lock()
        self._arms_loading: set[str] = set()
        self._arms_failed: dict[str, float] = {}  # when an arm's lists last failed to load

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Open the active version, or create an empty one; then the server is ready.
        Lists still missing are served live until the list worker fills them. While a
        large index loads, the store answers what it can (`warming`)."""
        engine = Engine(self.settings, self._embedder)
        self._started_at = time.monotonic()
        self._cold = engine
        try:
            state = engine.state()
        except NoIndex:
            state = engine.new_version()
        state.warm()  # else the first write after a start waits for it (5 s at a million articles)
        lists = engine.lists_for(state)
        self._snapshot = Snapshot(engine, state, lists)
        self._cold = None
        self._saved_seq = state.meta.applied_seq
        self._serving = engine.versions.hold_serving()  # a CLI ingest leaves the lists to this server
        # Changes applied before a crash and never followed by their lists: the worker's first job.
        done = engine.store.lists_refreshed_seq(lists.key)
        if done is not None and done < state.meta.applied_seq:
            self.lists.enqueue(engine.store.changed_between(done, state.meta.applied_seq))
        self.lists.start(fill_missing=self.settings.precompute_on_start)
        threading.Thread(target=self._check_store, args=(engine,), name="recommender-check", daemon=True).start()
        threading.Thread(target=self._load_model, args=(engine,), name="recommender-model", daemon=True).start()

    @staticmethod
    def _load_model(engine: Engine) -> None:
        """The model in memory before the first write needs it; a model that cannot load
        is reported here and again, as a 4xx or 503, by the write that needs it."""
        try:
            engine.load_model()
        except RecommenderError as exc:
            log.error("the model %s cannot load: %s", engine.model, exc)

    def _check_store(self, engine: Engine) -> None:
        """The store cannot be rebuilt from anything, so a damaged page is reported loudly
        (a server that serves from it leaves the load balancer's rotation) rather than
        found one wrong answer at a time. In a thread: it reads every page once."""
        store = engine.store
        damage = store.damage()
        if damage:
            log.error("the store %s is damaged (%s); %s", store.describe(), damage, store.repair_hint())
            self.store_damage = damage

    def stop(self) -> None:
        self.lists.stop()
        if self._serving is not None:
            os.close(self._serving)
            self._serving = None
        if self._snapshot is not None:  # a database's pool and listener go with the server
            self._snapshot.engine.store.close()

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @property
    def rebuilding(self) -> str | None:
        """Why the index is being rebuilt from the store (a damaged file), while it is."""
        cold = self._cold
        return cold.indexes.rebuilding if cold is not None and self._snapshot is None else None

    @property
    def warming(self) -> bool:
        """The index is still loading, and has been for long enough that the store answers meanwhile."""
        return (self._snapshot is None and self._cold is not None and self.failure is None
                and time.monotonic() - self._started_at >= self.settings.warm_after_seconds)

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise NoIndex("the index is still loading")
        return self._snapshot

    def warming_facts(self) -> Warming:
        engine = self._engine()
        return Warming(engine.versions.active(), engine.model, engine.profile.name,
                       round(time.monotonic() - self._started_at, 1))

    def _engine(self) -> Engine:
        """The serving engine; while warming, the one whose index is loading (its store serves)."""
        cold = self._cold  # read once: the loader clears it when it is done
        return cold if cold is not None and self.warming else self.snapshot.engine

    ARM_RETRY_SECONDS = 10.0  # after an arm's lists failed to load
    CATCH_UP_CHUNK = 200  # changes applied per hold of the write lock when catching up others' writes

    def refresh(self) -> bool:
        """Bring in other processes' writes and version switches; True if anything changed.
        A large backlog (a CLI ingest) is applied in chunks, the write lock released in
        between, so the CMS's own writes never queue behind all of it."""
        current = self.snapshot
        active = current.engine.versions.active()
        if active and active != current.state.version:
            self._switch_version(active)
            return True
        with self._write:
            current = self.snapshot
            profile = current.engine.profiles.active_name()
            if profile != current.engine.profile.name and profile != self.lists.preparing:
                self.lists.prepare(current.engine.reloaded())
        moved = False
        while True:
            with self._write:
                current = self.snapshot
                if current.engine.store.last_change() <= current.state.meta.applied_seq:
                    return moved
                self._advance(self.CATCH_UP_CHUNK)
                moved = True

    def save(self) -> None:
        """Persist the index when it moved since the last save (the store is always
        current). Writing 150 MB takes a while, so it happens outside the write lock,
        from a copy: writes go on meanwhile."""
        with self._write:
            current = self.snapshot
            if current.state.meta.applied_seq == self._saved_seq:
                return
            copy = current.state.clone()
        current.engine.indexes.save(copy)
        self._saved_seq = copy.meta.applied_seq

    def _advance(self, limit: int | None = None) -> list[int]:
        """Apply committed changes to a copy of the state and swap it in (write lock
        held). Every change it applies goes to the list worker, whoever wrote it:
        another process may have stored new lists already, but this server's copy
        in memory is older."""
        current = self.snapshot
        state = current.state.clone()
        changed = current.engine.indexes.catch_up(state, limit)
        self.lists.swap(Snapshot(current.engine, state, current.lists), changed)
        return changed

    def _set_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def _switch_version(self, version: str) -> None:
        from recommender.index.vector_index import read_meta

        versions = self.snapshot.engine.versions
        # A shared store's version may have no files here yet: the engine builds them from the store.
        model = versions.shared_model(version) or read_meta(versions.path(version)).model
        settings = self.settings.model_copy(update={"model": model})
        embedder = self._embedder if self._embedder is not None and self._embedder.name == model else None
        # Opened (or built, for a shared store's version new here) outside the write lock: writes go
        # on into the old snapshot meanwhile, and the new one catches up on them once swapped in.
        engine = Engine(settings, embedder)
        state = engine.state()
        lists = engine.lists_for(state)
        with self._write:
            log.info("switched to index %s (%s)", version, model)
            self.lists.swap(Snapshot(engine, state, lists), [])
            self.lists.request_fill()  # normally done by the job before activating; until then, served live
            self._saved_seq = state.meta.applied_seq
            self._advance()

    # --- reads ----------------------------------------------------------------

    def related(self, article_id: str, k: int, filters: Filters, diversity: float | None = None,
                visitor: str | None = None) -> Related:
        """The article's list under the editors' rules and its curation, read at every
        request: a pin or a block shows at the next page view, on every server. In a running
        experiment, the list of the page view's arm (`visitor`: the unit of an experiment
        by visitor); while the index loads, no one is assigned."""
        engine = self._engine()
        seed = self._info(article_id)
        arm = self.assignment(article_id, visitor)
        if arm is not None and arm.original:
            return Related([], engine.model, self.snapshot.state.version, arm.experiment, arm.arm, original=True)
        edit = engine.edit(seed, filters, k)
        found = None
        if arm is not None and not arm.active:
            try:
                own = self.arm_snapshot(arm.profile)
                found = self._ranked(article_id, k, edit.filters, diversity, own) if own else None
            except Exception:  # the page keeps a block: the active profile's, outside the experiment
                log.exception("ranking %s under arm %s failed; serving the active profile", article_id, arm.arm)
            if found is None:  # its lists still loading, or a failure: outside the experiment
                arm = None
        if found is None:
            found = self._ranked(article_id, k, edit.filters, diversity)
        items = edit.apply(found.items, k)
        if arm is None:
            return replace(found, items=items)
        swap = self.audience.swap(arm, article_id, sum(1 for i in items if i.pinned), len(items))
        if swap is not None:  # an exploring view: two neighbours swapped, pins left in place
            items[swap], items[swap + 1] = items[swap + 1], items[swap]
        return replace(found, items=items, experiment=arm.experiment, arm=arm.arm)

    def assignment(self, article_id: str, visitor: str | None) -> Assignment | None:
        """The page view's experiment arm; while the index loads, no one is assigned."""
        return None if self.warming else self.audience.assign(article_id, visitor)

    def arm_snapshot(self, profile: str) -> Snapshot | None:
        """The serving index under an experiment arm's profile: its own engine and precomputed
        lists (`recommender experiment start` computes them; the list worker keeps them current
        while the experiment runs, and a list still missing is ranked live once and stored).
        None while they load, in the background: reading which article each list shows takes
        seconds at a million, which no page view waits for."""
        snap = self.snapshot
        with self._arms_lock:
            held = self._arms.get(profile)
            if held is not None and held[1].version == snap.state.version:
                return Snapshot(held[0], snap.state, held[1])
            retry_at = self._arms_failed.get(profile, float("-inf")) + self.ARM_RETRY_SECONDS
            if profile not in self._arms_loading and time.monotonic() >= retry_at:
                self._arms_loading.add(profile)
                threading.Thread(target=self._load_arm, args=(profile, snap), name="recommender-arm",
                                 daemon=True).start()
        return None

    def _load_arm(self, profile: str, snap: Snapshot) -> None:
        try:
            engine = Engine(self.settings.model_copy(update={"model": snap.engine.model}), self._embedder,
                            snap.engine.profiles.get(profile))
            lists = engine.lists_for(snap.state)
            with self._arms_lock:
                self._arms[profile] = (engine, lists)
        except Exception:
            log.exception("loading the lists of experiment arm %s failed; its views get the active profile", profile)
            self._arms_failed[profile] = time.monotonic()
        finally:
            with self._arms_lock:
                self._arms_loading.discard(profile)

    def arm_lists(self) -> list[tuple[Engine, RelatedLists]]:
        """The lists of the running experiment's arms of other profiles than the active one."""
        wanted = set(self.audience.lists_profiles())
        with self._arms_lock:
            return [held for profile, held in self._arms.items() if profile in wanted]

    def _audience_sources(self) -> tuple[Store, Experiments, str]:
        engine = self._engine()
        return engine.store, engine.experiments, engine.profile.name

    def _info(self, article_id: str) -> ArticleInfo:
        if self.warming:
            return self._engine().stored_info(article_id)
        state = self.snapshot.state
        num = state.by_id.get(article_id)
        if num is None:
            raise ArticleNotFound(article_id)
        return state.infos[num]

    def curation(self, article_id: str) -> Curation:
        self._info(article_id)
        return self._engine().curations.get(article_id)

    def curate(self, article_id: str, curation: Curation) -> None:
        self._info(article_id)
        self._engine().curations.put(article_id, curation.check_for(article_id))

    def _ranked(self, article_id: str, k: int, filters: Filters, diversity: float | None,
                snap: Snapshot | None = None) -> Related:
        """`snap`: an experiment arm's (its profile's engine and lists over the serving index)."""
        if self.warming:
            return self._while_warming(article_id, k, filters, diversity)
        snap = snap or self.snapshot
        num = snap.state.by_id.get(article_id)
        if num is None:
            raise ArticleNotFound(article_id)
        cached = snap.lists.get(num) if snap.lists.version == snap.state.version else None
        plain = diversity is None and not filters.restricts_dates and not filters.language
        if plain and k <= self.settings.precompute_k and cached is not None and cached.fresh:
            items = self._from_cache(snap, num, cached, k, filters)
            if items is not None:
                self.counters.hits += 1
                return Related(items, snap.engine.model, snap.state.version)
        self.counters.misses += 1
        try:
            items = self._live(snap, num, article_id, k, filters, diversity)
        except Exception:
            if cached is None:
                raise
            log.exception("live ranking failed for %s; serving the cached list", article_id)
            self.counters.stale += 1
            items = self._from_cache(snap, num, cached, k, filters, strict=False) or []
            return Related(items, snap.engine.model, snap.state.version)
        return Related(items, snap.engine.model, snap.state.version)

    def _while_warming(self, article_id: str, k: int, filters: Filters, diversity: float | None) -> Related:
        """The list last stored for the article, from the store alone; ranking live needs the index."""
        engine = self._engine()
        num = engine.store.num_of(article_id)
        if num is None:
            raise ArticleNotFound(article_id)
        version = engine.versions.active()
        items = None
        if version and diversity is None and k <= self.settings.precompute_k:
            items = last_stored_list(engine.store, lists_key(version, engine.profile.name), num, k, filters)
        if items is None or not version:
            raise NoIndex("the index is still loading; until then only precomputed lists are served")
        self.counters.hits += 1
        return Related(items, engine.model, version)

    def _live(self, snap: Snapshot, num: int, article_id: str, k: int, filters: Filters,
              diversity: float | None) -> list[RelatedItem]:
        engine = snap.engine
        seed = engine.seed(snap.state, article_id)
        unfiltered = filters == engine.rules.filters_under(seed.section, Filters()) and diversity is None
        if unfiltered and k <= self.settings.precompute_k:
            # Compute the full precomputed list once and keep it for the next view; not while the
            # list worker has a backlog (a bulk import): it is about to store this one, and a page
            # view must not wait for the store's writer behind its batches.
            items = pipeline.rank(snap.state, seed, filters, engine.ranking(k=self.settings.precompute_k))
            if not self.lists.backlog:
                snap.lists.put_many({num: engine.upkeep.cached_items(snap.state, items)})
            return items[:k]
        return pipeline.rank(snap.state, seed, filters, engine.ranking(k=k, diversity=diversity))

    def _from_cache(self, snap: Snapshot, num: int, cached: CachedList, k: int, filters: Filters,
                    strict: bool = True) -> list[RelatedItem] | None:
        """The cached list with deleted and filtered-out items removed; None when
        too few remain to answer without a live search."""
        state = snap.state
        reference = state.infos[num].published_at or datetime.now(timezone.utc)
        out = []
        for item in cached.items:
            info = state.infos.get(item.num)
            if info is None or not filters.accepts(info, reference):
                continue
            out.append(item.shown_as(info))
        exhaustive = len(cached.items) < self.settings.precompute_k and len(out) == len(cached.items)
        if strict and len(out) < k and not exhaustive:
            return None
        return out[:k]

    def related_to_text(self, title: str, body: str, k: int, filters: Filters, diversity: float | None,
                        published_at: datetime | None = None, section: str | None = None,
                        tags: tuple[str, ...] = ()) -> Related:
        snap = self.snapshot
        seed = snap.engine.draft_seed(title, body, published_at, section, tags)
        filters = snap.engine.rules.filters_under(section, filters)
        items = pipeline.rank(snap.state, seed, filters, snap.engine.ranking(k=k, diversity=diversity))
        return Related(items, snap.engine.model, snap.state.version)

    def article_at(self, url: str | None) -> str | None:
        """The id of the article stored under `url` (with or without a final slash), if any."""
        if not url:
            return None
        store = self._engine().store
        for candidate in dict.fromkeys((url, url.rstrip("/"), url.rstrip("/") + "/")):
            found = store.id_by_url(candidate)
            if found is not None:
                return found
        return None

    def article(self, article_id: str) -> StoredArticle:
        found = self._engine().store.get(article_id)
        if found is None:
            raise ArticleNotFound(article_id)
        return found

    # --- writes ---------------------------------------------------------------

    def upsert(self, articles: list[Article]) -> list[UpsertResult]:
        """Store and index articles; visible to readers when this returns. The
        embedding happens before the write lock is taken: reads and other
        writers' swaps go on meanwhile. While warming, articles are stored and the
        index takes them in as it finishes loading."""
        engine = self._engine()
        written = engine.upsert(articles)
        if self._snapshot is not None:
            with self._write:
                self._advance()
        return written.results

    def delete(self, article_id: str) -> None:
        engine = self._engine()
        if engine.delete([article_id]):
            raise ArticleNotFound(article_id)
        if self._snapshot is not None:
            with self._write:
                self._advance()


class ListWorker:
    """One background thread that recomputes the lists writes touched, outside the
    write lock. It always works on the newest snapshot, so the newest state wins;
    reads serve the old lists meanwhile. When idle it fills lists still missing.

    Over a shared store one server at a time does this (the store's lease "lists"):
    the others serve the rows it stores, and the first to take the lease when its
    holder dies catches up from the last change the lists are recorded to follow."""

    BATCH = 200  # lists per step: a stop or a newer change is seen between steps
    FORKED_BATCH = 2 * SAVE_EVERY  # per worker process, when a step's lists are forked out (seconds of work)
    RETRY_LEASE = 1.0  # seconds between a follower's tries to take the lease
    # Touched lists get a batch after waiting this long even while new articles keep coming,
    # so a CMS that never pauses cannot leave older lists, and the record, behind for good.
    TOUCHED_WAIT = 120.0

    def __init__(self, service: "Service"):
        self.service = service
        self._lock = threading.Lock()  # guards the snapshot swap together with the queue
        self._pending: set[int] = set()
        self._busy = 0
        # By lists key: older lists that changes touched (recommender.serving.lists.ListUpkeep.affected),
        # recomputed once no changed article waits for its own list, each once however many
        # batches of a bulk import touched it.
        self._touched: dict[str, set[int]] = {}
        self._touching = 0  # of them, those being recomputed now
        self._touched_turn = time.monotonic()  # since when they have waited for their next batch
        self._fill = False
        self._todo: Iterator[int] | None = None  # lists still to fill, listed once per fill
        # A newly activated ranking profile: its lists are computed in full before it serves.
        self._next: tuple[Engine, RelatedLists] | None = None  # a profile being prepared, and its lists
        self._next_todo: Iterator[int] | None = None
        self._next_since = 0  # the seq its lists are current at, once its todo is computed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leading: bool | None = None  # None until the lease was first tried
        # A large backlog (a bulk import) is computed in this many forked processes.
        self.workers = service.settings.list_workers or os.cpu_count() or 1
        self.recomputed = 0  # lists recomputed after changes, since start (a metric)
        self._arms_current: set[str] = set()  # keys of experiment arms' lists that follow the index
        self._next_try = 0.0

    def start(self, fill_missing: bool) -> None:
        self._fill = fill_missing
        self._thread = threading.Thread(target=self._run, name="recommender-lists", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def swap(self, snapshot: Snapshot, changed: list[int]) -> None:
        """Serve `snapshot` from now on, and queue the lists its changes touch. One
        step under one lock: the worker never sees the new snapshot without its changes."""
        with self._lock:
            self.service._set_snapshot(snapshot)
            self._pending.update(changed)
        if changed:
            self._wake.set()

    def enqueue(self, nums: list[int]) -> None:
        with self._lock:
            self._pending.update(nums)
        self._wake.set()

    def prepare(self, engine: Engine) -> None:
        """Compute every list under `engine`'s ranking profile, then serve it; the
        current lists serve until then. A newer activation replaces an unfinished one."""
        snap = self.service.snapshot
        lists = engine.lists_for(snap.state)
        with self._lock:
            self._next = (engine, lists)
            self._next_todo = None
        log.info("ranking profile %s activated; computing its lists", engine.profile.name)
        self._wake.set()

    @property
    def preparing(self) -> str | None:
        """The ranking profile whose lists are being computed, if any."""
        job = self._next
        return job[0].profile.name if job else None

    def request_fill(self) -> None:
        self._todo = None
        self._fill = True
        self._wake.set()

    @property
    def unlisted(self) -> int:
        """Changed articles whose own lists are not recomputed yet."""
        with self._lock:
            return len(self._pending) + self._busy

    @property
    def touched(self) -> int:
        """Older lists that changes touched, to recompute once `unlisted` is 0."""
        with self._lock:
            return sum(len(t) for t in self._touched.values()) + self._touching

    @property
    def backlog(self) -> int:
        """Lists that changes call for and are not recomputed yet."""
        return self.unlisted + self.touched

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """For tests and benchmarks: until nothing is queued (True) or the timeout."""
        deadline = time.monotonic() + timeout
        while self.backlog or self._fill or self._next:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _run(self) -> None:
        # This thread at the forked workers' priority too (Linux schedules threads one by one):
        # the request threads of the same process come first.
        at_least_nice(self.service.settings.list_nice, threading.get_native_id())
        lease = self.service.snapshot.engine.store.lease("lists")
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                if not self._lead(lease):
                    continue
                while not self._stop.is_set() and (self._step() or self._touched_step() or self._profile_step()
                                                   or self._arm_step() or self._fill_step()):
                    pass
            except StoreUnavailable as exc:  # the database is away: the next wake-up retries
                log.warning("recomputing related lists: %s", exc)
            except Exception:  # keep serving the old lists; the next change retries
                log.exception("recomputing related lists failed")
        lease.release()

    def _lead(self, lease: Lease) -> bool:
        """Whether this server computes the lists now (taking the lease if it is free)."""
        if not self.leading and time.monotonic() < self._next_try:
            return False
        held = lease.held()
        if held and self.leading is False:
            self._take_over()
        if not held:
            self._next_try = time.monotonic() + self.RETRY_LEASE
            with self._lock:  # the leader computes them
                self._pending.clear()
                self._touched.clear()
            self._follow_profile()
        self.leading = held
        return held

    def _take_over(self) -> None:
        """Become the list worker after another server: read back the lists it stored, and
        queue every change since the last one its lists were recorded to follow."""
        snap = self.service.snapshot
        lists = snap.engine.lists_for(snap.state)
        with self.service._write:
            current = self.service.snapshot
            if current.state.version == snap.state.version and current.engine is snap.engine:
                self.swap(Snapshot(current.engine, current.state, lists), [])
            current = self.service.snapshot
        done = current.engine.store.lists_refreshed_seq(current.lists.key)
        applied = current.state.meta.applied_seq
        self.enqueue(current.engine.store.changed_between(done or 0, applied))
        self.request_fill()
        log.info("this server now computes the related lists (from change %s)", done)

    def _follow_profile(self) -> None:
        """A follower serves a newly activated profile once the leader has computed its lists."""
        job = self._next
        if job is None or job[0].store.lists_refreshed_seq(job[1].key) is None:
            return
        engine = job[0]
        with self.service._write:
            current = self.service.snapshot
            self.swap(Snapshot(engine, current.state, engine.lists_for(current.state)), [])
            self._next, self._next_todo = None, None
        log.info("ranking profile %s serves (its lists computed by another server)", engine.profile.name)

    def _step(self) -> bool:
        """The changed articles' own lists; the older lists they touch wait in `_touched`:
        a new article's page view is off the precomputed path until its list exists, an
        older article's list only lacks the newest pieces meanwhile."""
        with self._lock:
            snap = self.service._snapshot
            if snap is None or not self._pending:  # changes wait for the first snapshot
                return False
            if self._touched_overdue():  # the older lists' turn
                return False
            batch, self._pending = self._pending, set()
            self._busy = len(batch)
        try:
            for engine, lists in self._following(snap):
                touched = engine.upkeep.affected(snap.state, lists, batch, self.workers, self._stop.is_set)
                with self._lock:
                    self._touched.setdefault(lists.key, set()).update(touched)
                if self._stop.is_set():
                    return False
                self.recomputed += sum(1 for n in batch if n in snap.state.infos)
        except Exception:
            with self._lock:  # tried again after the next wake-up, a second at most
                self._pending |= batch
            raise
        finally:
            with self._lock:
                self._busy = 0
        self._record_if_current(snap)
        return True

    def _touched_step(self) -> bool:
        """A batch of the older lists changes touched, while no changed article waits; once
        none is left, the lists are recorded to follow every change the snapshot holds."""
        snap = self.service._snapshot
        if snap is None:
            return False
        following = self._following(snap)
        with self._lock:
            if self._pending and not self._touched_overdue():
                return False
            keys = {lists.key for _, lists in following}
            self._touched = {key: todo for key, todo in self._touched.items() if key in keys and todo}
            if not self._touched:
                return False
            engine, lists = next((e, li) for e, li in following if li.key in self._touched)
            todo = self._touched[lists.key]
            taken = [todo.pop() for _ in range(min(len(todo), self.FORKED_BATCH * self.workers))]
            self._touching = len(taken)
            self._touched_turn = time.monotonic()
        try:
            self.recomputed += engine.upkeep.compute_in_processes(
                snap.state, lists, sorted(n for n in taken if n in snap.state.infos), self.workers,
                stop=self._stop.is_set)
        except Exception:
            with self._lock:
                self._touched.setdefault(lists.key, set()).update(taken)
            raise
        finally:
            with self._lock:
                self._touching = 0
        self._record_if_current(snap)
        return True

    def _touched_overdue(self) -> bool:
        """Whether touched lists have waited TOUCHED_WAIT for a batch (asked under the lock;
        while none waits, this restarts the clock)."""
        waiting = any(self._touched.values())
        if not waiting:
            self._touched_turn = time.monotonic()
        return waiting and time.monotonic() - self._touched_turn >= self.TOUCHED_WAIT

    def _record_if_current(self, snap: Snapshot) -> None:
        """Once no change waits, own lists or touched ones: the lists follow every change
        `snap` holds (a crash before then recomputes from the previous record)."""
        with self._lock:
            caught_up = not self._pending and not any(self._touched.values())
        if caught_up and not self._stop.is_set():
            for engine, lists in self._following(snap):
                engine.upkeep.record(snap.state, lists)

    def _following(self, snap: Snapshot) -> list[tuple[Engine, RelatedLists]]:
        """The lists changes are followed in: the serving ones, then those of a running
        experiment's arms of other profiles that `_arm_step` brought up to date."""
        arms = [(e, lists) for e, lists in self.service.arm_lists()
                if lists.version == snap.state.version and lists.key in self._arms_current]
        return [(snap.engine, snap.lists), *arms]

    def _compute_batch(self, engine: Engine, state: IndexState, lists: RelatedLists, todo: Iterator[int]) -> bool:
        """The next BATCH of `todo` computed (those still missing: a read may have filled
        some); False once `todo` is exhausted. The list of missing ones is taken once per
        pass, not per batch, so a pass stays linear in the archive."""
        taken = [n for _, n in zip(range(self.BATCH if self.workers <= 1 else self.FORKED_BATCH * self.workers), todo)]
        if not taken:
            return False
        engine.upkeep.compute_in_processes(state, lists, lists.missing_or_stale(n for n in taken if n in state.infos),
                                           self.workers, stop=self._stop.is_set)
        return True

    def _profile_step(self) -> bool:
        """A batch of the next profile's lists; once all are done, the swap to it, with
        the changes made meanwhile queued for recomputation under it."""
        job = self._next
        if job is None:
            return False
        engine, lists = job
        if self._next_todo is None:  # lists stored before (an earlier activation) are kept if still current
            state = self.service.snapshot.state
            self._next_todo = iter(engine.upkeep.to_prepare(state, lists))
            self._next_since = state.meta.applied_seq
        if self._compute_batch(engine, self.service.snapshot.state, lists, self._next_todo):
            return True
        with self._lock:
            if self._next is job:
                current = self.service.snapshot
                self.service._set_snapshot(Snapshot(engine, current.state, lists))
                self._pending.update(engine.store.changed_between(self._next_since, current.state.meta.applied_seq))
                self._next, self._next_todo = None, None
                log.info("ranking profile %s serves", engine.profile.name)
        engine.store.mark_lists_refreshed(lists.key, self._next_since)  # other servers may switch to it
        return True

    def _arm_step(self) -> bool:
        """Bring one experiment arm's lists up to the serving index: the changes made since they
        were last current (since `experiment start` computed them, or an earlier experiment's
        end). From then on `_step` keeps them current with the serving lists. An arm whose
        lists were never computed starts empty: each is ranked live at its first view, and kept."""
        snap = self.service._snapshot
        if snap is None:
            return False
        profiles = self.service.audience.lists_profiles()
        # An arm no experiment runs is not kept current: a later one catches up from its record.
        self._arms_current &= {lists_key(snap.state.version, p) for p in profiles}
        for profile in profiles:
            arm = self.service.arm_snapshot(profile)
            if arm is None or arm.lists.key in self._arms_current:
                continue  # loading: the next pass, a second later at most
            upkeep, store = arm.engine.upkeep, arm.engine.store
            if store.lists_refreshed_seq(arm.lists.key) is None:
                arm.lists.forget([n for n in snap.state.infos if arm.lists.has(n)])
                upkeep.record(snap.state, arm.lists)
            else:
                upkeep.catch_up(snap.state, arm.lists, workers=self.workers)
            self._arms_current.add(arm.lists.key)
            log.info("experiment arm %s: its lists follow the serving index", profile)
            return True
        return False

    def _fill_step(self) -> bool:
        """Compute a batch of the lists still missing."""
        snap = self.service._snapshot
        if not self._fill or snap is None:
            return False
        if self._todo is None:
            self._todo = iter(snap.engine.upkeep.missing(snap.state, snap.lists))
        if self._compute_batch(snap.engine, snap.state, snap.lists, self._todo):
            return True
        self._fill, self._todo = False, None
        with self._lock:
            caught_up = not self._pending and not self._touched.get(snap.lists.key)
        if caught_up:
            snap.engine.upkeep.record(snap.state, snap.lists)
        return False


class Refresher:
    """Background thread: picks up other processes' writes and saves the index now and then.
    It polls every `every` seconds, and wakes at once when the store notifies a commit
    (PostgreSQL's NOTIFY), so a write through one server reaches the others in milliseconds."""

    def __init__(self, service: Service, every: float, save_every: float):
        self.service = service
        self.every = every
        self.save_every = save_every
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recommender-refresh", daemon=True)

    def start(self) -> None:
        self.service.snapshot.engine.store.watch(self._wake.set)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # never started when the service could not start
            self._thread.join(timeout=2)

    def _run(self) -> None:
        last_save = time.monotonic()
        while True:
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.service.refresh()
                if time.monotonic() - last_save >= self.save_every:
                    self.service.save()
                    last_save = time.monotonic()
            except StoreUnavailable as exc:  # the database is away: serve what is known, retry
                log.warning("background refresh: %s", exc)
            except Exception:  # keep serving the last good snapshot
                log.exception("background refresh failed")
