"""The engine: a thin façade over the store, the model, the active index
version and its precomputed lists. Each concept lives in its own module:

- `writes`: the one write path (embed what the cache lacks, store articles);
- `ingest`: JSONL files into that path, with a report;
- `state`: the loaded index and its lifecycle (open, build, catch up, save);
- `ranker`: seed to related list; `lists`: precomputed lists and their upkeep.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Callable

import numpy as np

from embeddings import DEFAULT_MODEL, Embedder
from recommender.audience.experiments import Experiments
from recommender.errors import ArticleNotFound, IndexDamaged
from recommender.index.state import Indexes, IndexState
from recommender.index.versions import open_versions
from recommender.ranking import editorial, pipeline
from recommender.ranking.profiles import DEFAULT as DEFAULT_PROFILE
from recommender.ranking.profiles import Profile, open_profiles
from recommender.ranking.rules import Filters, RelatedItem
from recommender.serving.ingest import IngestReport, count_lines, ingest_sources
from recommender.serving.lists import ListUpkeep, RelatedLists, lists_key, stored_list
from recommender.settings import RankingSettings, Settings
from recommender.store import vector_cache
from recommender.store.articles import Article, ArticleInfo
from recommender.store.base import UpsertResult, open_store
from recommender.store.models import load_model, model_name
from recommender.store.writes import Written, delete_articles, write_articles


def _limit_blas(threads: int) -> None:
    """numpy's BLAS threads, for the process, as FAISS's above (both are process-wide)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")


class Engine:
    def __init__(self, settings: Settings, embedder: Embedder | None = None, profile: Profile | None = None):
        """`profile`: rank with this ranking profile instead of the active one."""
        import faiss

        faiss.omp_set_num_threads(settings.faiss_threads)
        _limit_blas(settings.blas_threads)
        self.settings = settings
        self.store = open_store(settings)
        self.versions = open_versions(settings, self.store)
        self._embedder = embedder
        self._embed_lock = threading.Lock()  # the embedding engines are not documented as thread-safe
        self._state: IndexState | None = None
        if embedder is not None:
            self.model = embedder.name
        else:
            self.model = model_name(settings.model or self._active_model() or DEFAULT_MODEL)
        self.indexes = Indexes(self.store, self.versions, self.model, settings.ann)
        self.profiles = open_profiles(settings, self.store)
        self.profile = profile or self.profiles.active()
        # The active profile's weights are the ranking's defaults (the built-in profile's are the
        # settings', so RECOMMENDER_RANKING__WEIGHTS applies to it); a request may still override them.
        weights = settings.ranking.weights if self.profile.name == DEFAULT_PROFILE else self.profile.weights
        self.ranking_defaults = settings.ranking.model_copy(update={"weights": weights})
        self.rules = editorial.load_rules(settings.rules)
        self.curations = editorial.Curations(self.store)
        self.experiments = Experiments(self.store.shelf("experiments", replica=True), self.profiles)
        self.upkeep = ListUpkeep(self.store, self.ranking_defaults, settings.precompute_k, self.embed, self.rules,
                                 settings.list_nice)

    def _active_model(self) -> str | None:
        """The active index's model; with its sidecar damaged, or no index in this data dir
        yet (a new server over a shared database), the model the store holds the most
        vectors of: the index is then built from them, without embedding anything."""
        try:
            active = self.versions.active_meta()
        except IndexDamaged:
            active = None
        if active is not None:
            return active.model
        version = self.versions.active()
        shared = self.versions.shared_model(version) if version else None
        if shared:  # a shared store serves a version whose files this data dir lacks yet
            return shared
        by_model = self.store.stats().vectors_by_model
        return max(by_model, key=lambda m: by_model[m]) if by_model else None

    def prepare_profile(self, name: str, workers: int = 1, progress: bool = False) -> int:
        """Compute every list of the active index under profile `name` (in `workers`
        processes), before it is activated; the lists computed."""
        engine = Engine(self.settings.model_copy(update={"model": self.model}), self._embedder,
                        self.profiles.get(name))
        state = self.state()
        lists = engine.lists_for(state)
        todo = engine.upkeep.to_prepare(state, lists)
        engine.upkeep.compute_in_processes(state, lists, todo, workers, progress)
        engine.upkeep.record(state, lists)
        return len(todo)

    def reloaded(self) -> "Engine":
        """The same data dir and model (and loaded embedder), with the ranking profile active now."""
        return Engine(self.settings.model_copy(update={"model": self.model}), self._embedder)

    # --- the model ----------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            s = self.settings
            self._embedder = load_model(self.model, device=s.device, batch_size=s.batch_size, models_dir=s.models_dir,
                                        e5_engine=s.e5_engine)
        return self._embedder

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._embed_lock:
            return self.embedder.embed(texts)

    def load_model(self) -> None:
        """Load the model now (a server does it at start, so that its first write does
        not wait seconds for it); under the embedding lock, so it loads once."""
        with self._embed_lock:
            _ = self.embedder

    def check_model(self) -> None:
        """Raise IndexMismatch if the active index was built with another model."""
        self.indexes.active_meta()

    # --- the active index ---------------------------------------------------

    def state(self) -> IndexState:
        if self._state is None:
            self._state = self.indexes.open_active()
        return self._state

    def new_version(self) -> IndexState:
        """A first index version from whatever the store holds, made active."""
        return self.indexes.build_version(self.versions.new_name(), self.embedder.dimension, activate=True)

    def lists_for(self, state: IndexState) -> RelatedLists:
        return RelatedLists(self.store, state.version, self.profile.name, self.settings.precompute_k)

    # --- writes -------------------------------------------------------------

    def upsert(self, articles: list[Article], on_batch: Callable[[int], None] | None = None) -> Written:
        """Store articles (embedding the text the cache lacks). Indexes follow via `catch_up`.
        `on_batch(n)`: after each embedded batch of n texts."""
        return write_articles(self.store, self.model, vector_cache.in_process(self.embed), self.settings.batch_size,
                              list(articles), self.settings.embed_chars, on_batch)

    def delete(self, ids: list[str]) -> list[str]:
        """Delete articles; the ids that were not stored."""
        return delete_articles(self.store, ids)

    def delete_and_sync(self, ids: list[str]) -> list[str]:
        """Delete, then bring the active index and its lists up to date; the ids not found."""
        unknown = self.delete(ids)
        if self.indexes.active_meta() is not None:
            self.sync(self.state())
        return unknown

    def sync(self, state: IndexState, progress: bool = False, workers: int = 1) -> None:
        """Apply the store's changes to the index, save it, and recompute the lists
        of every change the lists have not followed yet (this run's, or those of
        an earlier run that stopped between the two), in `workers` processes."""
        self.indexes.catch_up(state)
        self.indexes.save(state)
        lists = self.lists_for(state)
        self.upkeep.catch_up(state, lists, progress, workers)
        self.upkeep.fill_missing(state, lists, progress, workers)

    def embed_missing(self, progress: bool = False) -> int:
        """Embed every stored text this model has no vector for (an interrupted run's leftovers)."""
        return vector_cache.fill(self.store, self.model, self.store.texts_missing_vectors(self.model),
                            vector_cache.in_process(self.embed), self.settings.batch_size, progress)

    def ingest(self, sources: list[str], progress: bool = False, index: bool = True,
               precompute: bool = True, workers: int = 1) -> IngestReport:
        """Read JSONL files through the write path, then bring the active index
        (unless `index` is False: the evaluation builds its own in memory) and
        the precomputed lists (unless `precompute` is False) up to date, the
        lists in `workers` forked processes."""
        from tqdm import tqdm

        state = self.state() if index and self.indexes.active_meta() is not None else None
        _ = self.embedder  # a model that cannot load fails before any line is read
        report = IngestReport()
        # A total from the files' lines (stdin has none), moving with every embedded batch: the first
        # chunk's embedding takes minutes on a CPU, and a bar standing still at 0 looks like a hang.
        with tqdm(total=count_lines(sources), unit=" article", desc=f"ingesting ({self.model})",
                  disable=not progress) as bar:
            def write(articles: list[Article]) -> list[UpsertResult]:
                moved = 0

                def embedded(n: int) -> None:
                    nonlocal moved
                    step = min(n, len(articles) - moved)
                    moved += step
                    bar.update(step)

                written = self.upsert(articles, embedded)
                report.embedded += written.embedded
                bar.update(len(articles) - moved)
                return written.results

            ingest_sources(sources, write, report, self.settings.tzinfo)
        report.embedded += self.embed_missing(progress)
        if not index:
            return report
        if precompute and self.versions.served():
            report.lists_left_to_server = True  # it recomputes them as it catches up; doing it twice costs both
            precompute = False
        if state is None:
            state = self.new_version()
            if precompute:
                lists = self.lists_for(state)
                self.upkeep.fill_missing(state, lists, progress, workers)
                self.upkeep.catch_up(state, lists)  # records that the lists are current
        elif precompute:
            self.sync(state, progress, workers)
        else:
            self.indexes.catch_up(state)
            self.indexes.save(state)
        return report

    # --- reads --------------------------------------------------------------

    def ranking(self, **overrides) -> RankingSettings:
        return pipeline.ranking_options(self.ranking_defaults, **overrides)

    def seed(self, state: IndexState, article_id: str) -> pipeline.Seed:
        return pipeline.stored_seed(state, self.store, article_id, self.embed)

    def draft_seed(self, title: str, body: str = "", published_at: datetime | None = None,
                   section: str | None = None, tags: tuple[str, ...] = ()) -> pipeline.Seed:
        return pipeline.draft_seed(title, body, published_at, self.settings.embed_chars, self.embed, section, tags)

    def related(self, article_id: str, filters: Filters = Filters(), **options) -> list[RelatedItem]:
        """What the API serves for the article, editors' choices included."""
        opts = self.ranking(**options)
        seed = self.stored_info(article_id)
        edit = self.edit(seed, filters, opts.k)
        plain = edit.filters == self.rules.filters_under(seed.section, Filters()) and not edit.pinned
        plain &= all(v is None for name, v in options.items() if name != "k")
        meta = self.indexes.active_meta()
        if plain and meta is not None and opts.k <= self.settings.precompute_k:
            # The list the API would serve, from the store alone: no index to load.
            cached = stored_list(self.store, lists_key(meta.version, self.profile.name), article_id, opts.k)
            if cached is not None:
                return cached
        state = self.state()
        return edit.apply(pipeline.rank(state, self.seed(state, article_id), edit.filters, opts), opts.k)

    def stored_info(self, article_id: str) -> ArticleInfo:
        num = self.store.num_of(article_id)
        info = self.store.infos([num]).get(num) if num is not None else None
        if info is None:
            raise ArticleNotFound(article_id)
        return info

    def edit(self, seed: ArticleInfo, filters: Filters, k: int) -> editorial.Edit:
        """The editors' rules and this article's curation, applied to a request's filters."""
        return editorial.edit(seed, filters, k, self.curations.get(seed.id), self.rules, self.lookup)

    def lookup(self, ids: list[str]) -> list[ArticleInfo]:
        """The stored articles of `ids`, in their order, those that exist."""
        nums = [n for i in ids if (n := self.store.num_of(i)) is not None]
        infos = self.store.infos(nums)
        return [infos[n] for n in nums if n in infos]

    def related_to_text(self, title: str, body: str = "", published_at: datetime | None = None,
                        filters: Filters = Filters(), **options) -> list[RelatedItem]:
        """Suggestions for a draft that is not in the index."""
        state = self.state()
        return pipeline.rank(state, self.draft_seed(title, body, published_at), filters, self.ranking(**options))
