"""The engine: store + embedder + active index version, and the related-articles query."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import numpy as np

from embeddings import DEFAULT_MODEL, Embedder, load_embedder, validate_model_string
from pydantic import ValidationError

from recommender.articles import Article, content_hash, describe_validation_error
from recommender.errors import ArticleNotFound, IndexMismatch, InvalidQuery, NoIndex
from recommender.index import IndexMeta, VectorIndex, now_iso, read_meta
from recommender.ingest import Duplicate, IngestReport, open_source, read_jsonl, Rejection
from recommender.lexical import LexicalIndex
from recommender.precomputed import CachedItem, RelatedLists
from recommender.ranking import (
    DAY, Filters, RelatedItem, age_phrase, mmr_select, rescale, shared_terms_reason, time_factor,
)
from recommender.settings import RankingSettings, Settings
from recommender.store import ArticleInfo, Store
from recommender.text import fold, stem_words, surface_words, terms
from recommender.versions import Versions

log = logging.getLogger(__name__)

WRITE_CHUNK = 500
POOL_MIN = 30  # MMR looks at this many top candidates at least


@dataclass
class IndexState:
    """One loaded index version with what ranking needs beside the vectors."""

    version: str
    meta: IndexMeta
    vectors: VectorIndex
    infos: dict[int, ArticleInfo] = field(default_factory=dict)
    by_id: dict[str, int] = field(default_factory=dict)
    lexical: LexicalIndex = field(default_factory=LexicalIndex)

    def clone(self) -> "IndexState":
        """A copy that can be changed while readers keep using this one."""
        from dataclasses import replace

        return IndexState(self.version, replace(self.meta), self.vectors.clone(), dict(self.infos),
                          dict(self.by_id), self.lexical.clone())

    def set_info(self, info: ArticleInfo, term_text: str) -> None:
        old = self.infos.get(info.num)
        if old is not None and old.id != info.id:
            self.by_id.pop(old.id, None)
        self.infos[info.num] = info
        self.by_id[info.id] = info.num
        self.lexical.add(info.num, term_text.split())

    def apply(self, rows: Iterable[tuple[ArticleInfo, str, bytes | None]], gone: Iterable[int] = ()) -> None:
        """Bring the given articles to their current state; `gone` were deleted."""
        gone = list(gone)
        for num in gone:
            info = self.infos.pop(num, None)
            if info is not None:
                self.by_id.pop(info.id, None)
            self.lexical.remove(num)
        self.vectors.remove(np.asarray(gone, dtype=np.int64))
        add_nums, add_vecs, drop = [], [], []
        for info, term_text, vector in rows:
            self.set_info(info, term_text)
            if vector is None:
                drop.append(info.num)
            else:
                add_nums.append(info.num)
                add_vecs.append(np.frombuffer(vector, dtype=np.float32))
        self.vectors.remove(np.asarray(drop, dtype=np.int64))
        if add_nums:
            self.vectors.upsert(np.asarray(add_nums, dtype=np.int64), np.vstack(add_vecs))


@dataclass(frozen=True)
class Seed:
    """What the related list is computed from: a stored article or a draft."""

    num: int | None
    content_hash: str
    vector: np.ndarray
    published_at: datetime | None
    title: str
    text: str


class Explainer:
    """Builds each item's reason from the seed's words, computed once per list."""

    def __init__(self, lexical: LexicalIndex, seed_text: str):
        self.lexical = lexical
        pairs = surface_words(seed_text)
        self.seed_terms = stem_words([folded for _, folded in pairs])
        self.surface: dict[str, str] = {}
        for stem, (word, _) in zip(self.seed_terms, pairs):
            self.surface.setdefault(stem, word)
        self.idf = lexical.idf_of(self.seed_terms)

    def reason(self, num: int) -> str:
        return shared_terms_reason(self.seed_terms, self.lexical.terms_of(num), self.idf, self.surface)


class Engine:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self.store = Store(settings.store_path)
        self.versions = Versions(settings.index_dir)
        self._embedder = embedder
        self._state: IndexState | None = None
        import faiss

        faiss.omp_set_num_threads(settings.faiss_threads)
        self.model = embedder.name if embedder is not None else validate_model_string(
            settings.model or self._active_model() or DEFAULT_MODEL).name

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            s = self.settings
            self._embedder = load_embedder(self.model, device=s.device, batch_size=s.batch_size)
        return self._embedder

    # --- the active index -----------------------------------------------------

    def state(self) -> IndexState:
        if self._state is None:
            self._state = self._open_active()
        return self._state

    def _active_model(self) -> str | None:
        version = self.versions.active()
        return read_meta(self.versions.path(version)).model if version else None

    def check_model(self) -> None:
        """Raise IndexMismatch if the active index was built with another model."""
        self._active_meta()

    def _active_meta(self) -> IndexMeta | None:
        version = self.versions.active()
        if version is None:
            return None
        meta = read_meta(self.versions.path(version))
        if meta.model != self.model:
            raise IndexMismatch(
                f"the active index {version} was built with model {meta.model!r}, not {self.model!r}. "
                f"Use --model {meta.model} (or RECOMMENDER_MODEL), or build and activate an index "
                f"for the new model with: recommender reembed --model {self.model}"
            )
        return meta

    def _open_active(self) -> IndexState:
        meta = self._active_meta()
        if meta is None:
            raise NoIndex("no index yet: ingest articles first, e.g. recommender ingest articles.jsonl")
        path = self.versions.path(meta.version)
        try:
            vectors, meta = VectorIndex.load(path)
        except (IndexMismatch, RuntimeError, OSError, ValueError) as exc:
            # The index is only a cache of the store's vectors, so a damaged file is rebuilt, not fatal.
            log.warning("index %s unreadable (%s); rebuilding it from the store", meta.version, exc)
            return self.build_version(meta.version, activate=False)
        state = IndexState(meta.version, meta, vectors)
        for info, term_text, _ in self.store.index_rows(self.model, with_vectors=False):
            state.set_info(info, term_text)
        self.catch_up(state)
        return state

    def build_state(self, version: str, dimension: int | None = None) -> IndexState:
        """A full in-memory index for this engine's model from the store's vectors."""
        dimension = dimension or self.embedder.dimension
        meta = IndexMeta(version, self.model, dimension, 0, now_iso(), self.store.last_change())
        state = IndexState(version, meta, VectorIndex(dimension))
        state.apply(self.store.index_rows(self.model))
        self.catch_up(state)
        state.meta.random_pair_mean = state.vectors.random_pair_mean()
        return state

    def build_version(self, version: str, activate: bool, dimension: int | None = None) -> IndexState:
        """build_state, saved as `version` on disk, and optionally made active."""
        state = self.build_state(version, dimension)
        self.save(state)
        if activate:
            self.versions.activate(version)
        return state

    def catch_up(self, state: IndexState) -> list[int]:
        """Apply the store's changes since the index's last one; the nums changed."""
        last, nums = self.store.changes_since(state.meta.applied_seq)
        if nums:
            rows = list(self.store.index_rows(self.model, nums))
            present = {info.num for info, _, _ in rows}
            state.apply(rows, gone=[n for n in nums if n not in present])
        state.meta.applied_seq = last
        return nums

    # --- precomputed lists --------------------------------------------------

    def lists_for(self, state: IndexState) -> RelatedLists:
        return RelatedLists(self.store, state.version)

    def refresh_related(self, state: IndexState, lists: RelatedLists, changed: Iterable[int],
                        progress: bool = False) -> int:
        """Recompute the lists a change can touch: the changed articles' own, those
        of their nearest neighbours (an earlier piece of a story must point to its
        follow-up), and those that showed them."""
        changed = set(changed)
        gone = [n for n in changed if n not in state.infos]
        lists.forget(gone)
        affected = {n for n in changed if n in state.infos} | lists.containing(changed)
        for num in list(affected & changed):
            if num in state.vectors:
                vector = state.vectors.reconstruct(np.array([num]))
                # The articles whose lists it can enter are among its nearest neighbours.
                _, near = state.vectors.search(vector, self.settings.precompute_k + 1)
                affected.update(int(n) for n in near[0] if n >= 0)
        return self.compute_lists(state, lists, sorted(n for n in affected if n in state.infos), progress)

    def precompute_missing(self, state: IndexState, lists: RelatedLists, progress: bool = False) -> int:
        return self.compute_lists(state, lists, lists.missing_or_stale(n for n in state.infos if n in state.vectors),
                                  progress)

    def compute_lists(self, state: IndexState, lists: RelatedLists, nums: list[int], progress: bool = False) -> int:
        from tqdm import tqdm

        opts = self.ranking(k=self.settings.precompute_k)
        batch: dict[int, list[CachedItem]] = {}
        with tqdm(total=len(nums), unit="list", desc="precomputing related lists", disable=not progress or not nums) as bar:
            for num in nums:
                items = self.rank(state, self.seed(state, state.infos[num].id), Filters(), opts)
                batch[num] = [CachedItem(state.by_id[i.id], i.score, i.reason) for i in items]
                if len(batch) >= 500:
                    lists.put_many(batch)
                    batch = {}
                bar.update()
        lists.put_many(batch)
        return len(nums)

    def save(self, state: IndexState) -> None:
        state.meta.random_pair_mean = state.vectors.random_pair_mean()
        with self.versions.save_lock(state.version):
            state.vectors.save(self.versions.path(state.version), state.meta)

    # --- writes -------------------------------------------------------------

    def ingest(self, sources: list[str], progress: bool = False, index: bool = True,
               precompute: bool = True) -> IngestReport:
        """Read JSONL files into the store, embed what is new, update the index
        (unless `index` is False: the evaluation builds its own in memory) and
        the precomputed lists (unless `precompute` is False: the server fills
        missing ones in the background)."""
        state = self.state() if index and self._active_meta() is not None else None
        self.embedder  # a model that cannot load fails before any line is read
        report = IngestReport()
        seen: dict[str, str] = {}
        for source in sources:
            self._ingest_source(source, report, seen)
        self.embed_missing(report, progress)
        if not index:
            return report
        if state is None:
            state = self.build_version(self.versions.new_name(), activate=True)
            changed = list(state.infos)
        else:
            changed = self.catch_up(state)
            self.save(state)
        if precompute:
            lists = self.lists_for(state)
            self.refresh_related(state, lists, changed, progress)
            self.precompute_missing(state, lists, progress)
        return report

    def _ingest_source(self, source: str, report: IngestReport, seen: dict[str, str]) -> None:
        try:
            stream, name = open_source(source)
        except OSError as exc:
            report.rejected.append(Rejection(source, 0, f"cannot read file: {exc.strerror or exc}"))
            return
        chunk: list[tuple[str, Article]] = []
        with stream:
            for number, item in read_jsonl(stream, name):
                if isinstance(item, Rejection):
                    report.rejected.append(item)
                    continue
                chunk.append((f"{name}:{number}", item))
                if len(chunk) >= WRITE_CHUNK:
                    self._write_chunk(chunk, report, seen)
                    chunk = []
        self._write_chunk(chunk, report, seen)

    def _write_chunk(self, chunk: list[tuple[str, Article]], report: IngestReport, seen: dict[str, str]) -> None:
        with self.store.transaction() as conn:
            for where, article in chunk:
                result = self.store.upsert(conn, article, self.settings.embed_chars)
                if article.id in seen:
                    report.duplicates.append(Duplicate(article.id, seen[article.id], where))
                    continue
                seen[article.id] = where
                setattr(report, result.status, getattr(report, result.status) + 1)
                report.truncated += result.text.truncated
                report.empty_bodies += result.text.empty_body

    def embed_missing(self, report: IngestReport | None = None, progress: bool = False) -> int:
        """Embed every stored text this model has no vector for, a batch per commit."""
        from tqdm import tqdm

        pending = self.store.texts_missing_vectors(self.model)
        batch = self.settings.batch_size
        with tqdm(total=len(pending), unit="doc", desc=f"embedding ({self.model})",
                  disable=not progress or not pending) as bar:
            for start in range(0, len(pending), batch):
                hashes, texts = zip(*pending[start:start + batch])
                vectors = self.embedder.embed(list(texts))
                with self.store.transaction() as conn:
                    self.store.put_vectors(conn, self.model, list(hashes), vectors)
                bar.update(len(texts))
        if report is not None:
            report.embedded += len(pending)
        return len(pending)

    # --- reads --------------------------------------------------------------

    def ranking(self, **overrides) -> RankingSettings:
        unknown = set(overrides) - set(RankingSettings.model_fields)
        if unknown:
            raise InvalidQuery(f"unknown ranking option(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in overrides.items() if v is not None}
        try:
            return RankingSettings.model_validate({**self.settings.ranking.model_dump(), **values})
        except ValidationError as exc:
            raise InvalidQuery(describe_validation_error(exc)) from None

    def related(self, article_id: str, filters: Filters = Filters(), **options) -> list[RelatedItem]:
        state = self.state()
        return self.rank(state, self.seed(state, article_id), filters, self.ranking(**options))

    def related_to_text(self, title: str, body: str = "", published_at: datetime | None = None,
                        filters: Filters = Filters(), **options) -> list[RelatedItem]:
        """Suggestions for a draft that is not in the index."""
        state = self.state()
        return self.rank(state, self.draft_seed(title, body, published_at), filters, self.ranking(**options))

    def seed(self, state: IndexState, article_id: str) -> Seed:
        num = state.by_id.get(article_id)
        if num is None:
            raise ArticleNotFound(article_id)
        info = state.infos[num]
        text = self.store.get_text(article_id) or info.title
        if num in state.vectors:
            vector = state.vectors.reconstruct(np.array([num]))[0]
        else:  # stored but not embedded yet (an ingest was interrupted)
            vector = self.embedder.embed([text])[0]
        return Seed(num, info.content_hash, vector, info.published_at, info.title, text)

    def draft_seed(self, title: str, body: str = "", published_at: datetime | None = None) -> Seed:
        draft = Article(id="draft", title=title, body=body, published_at=published_at)
        text = draft.embed_text(self.settings.embed_chars).text
        vector = self.embedder.embed([text])[0]
        return Seed(None, content_hash(text), vector, draft.published_at, draft.title, text)

    def rank(self, state: IndexState, seed: Seed, filters: Filters, opts: RankingSettings) -> list[RelatedItem]:
        """The default ranking: every rule of `recommender.ranking`, in order."""
        if state.vectors.count == 0:
            return []
        reference = seed.published_at or datetime.now(timezone.utc)
        nums, dense, relevance = self.relevance(state, seed, filters, opts.k, opts.lexical_weight)
        seed_title = fold(seed.title).strip()
        keep = (relevance >= opts.min_score) & (dense < opts.duplicate_threshold)
        keep &= np.array([state.infos[n].title_key != seed_title for n in nums], dtype=bool)
        nums, relevance = nums[keep], relevance[keep]
        if len(nums) == 0:
            return []
        deltas = self._deltas(state, nums, reference)
        score = relevance
        if opts.time_prior:
            factor = time_factor(np.nan_to_num(deltas, nan=np.inf), opts.half_life_days, opts.time_floor)
            score = relevance * factor
        pool = np.argsort(-score, kind="stable")[: max(POOL_MIN, 4 * opts.k)]
        vectors = state.vectors.reconstruct(nums[pool])
        sims = rescale(vectors @ vectors.T, state.meta.random_pair_mean)
        chosen = [pool[i] for i in mmr_select(score[pool], sims, opts.k, opts.diversity, opts.duplicate_threshold)]
        explain = Explainer(state.lexical, seed.text)
        return [self._item(state, explain, int(nums[i]), float(score[i]), deltas[i]) for i in chosen]

    def relevance(self, state: IndexState, seed: Seed, filters: Filters, k: int,
                  lexical_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(nums, rescaled dense similarity, relevance) of the candidates that pass
        the filters. With a lexical weight, relevance blends in BM25, computed on
        the dense candidates only: its cost does not grow with the archive, and a
        write never forces a corpus-wide lexical rebuild."""
        reference = seed.published_at or datetime.now(timezone.utc)
        accept = self._acceptor(state, seed, filters, reference)
        cosines, nums = self._dense_candidates(state, seed, accept, k)
        dense = rescale(cosines, state.meta.random_pair_mean)
        if lexical_weight <= 0 or len(nums) == 0:
            return nums, dense, dense
        lexical = self._lexical(state, seed, nums)
        return nums, dense, (1 - lexical_weight) * dense + lexical_weight * lexical

    @staticmethod
    def _acceptor(state: IndexState, seed: Seed, filters: Filters, reference: datetime):
        def accept(num: int) -> bool:
            info = state.infos.get(num)
            return (info is not None and num != seed.num and info.content_hash != seed.content_hash
                    and filters.accepts(info, reference))

        return accept

    @staticmethod
    def _dense_candidates(state: IndexState, seed: Seed, accept, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest neighbours that pass the filters, widening the search until
        enough pass or the whole index has been seen."""
        fetch = max(64, 10 * k)
        while True:
            cosines, nums = state.vectors.search(seed.vector, fetch)
            cosines, nums = cosines[0], nums[0]
            ok = np.array([n >= 0 and accept(int(n)) for n in nums], dtype=bool)
            if ok.sum() >= 5 * k or fetch >= state.vectors.count:
                return cosines[ok], nums[ok]
            fetch *= 4

    @staticmethod
    def _lexical(state: IndexState, seed: Seed, nums: np.ndarray) -> np.ndarray:
        """BM25 of each candidate against the seed's top terms, over the seed's own score."""
        seed_terms = terms(seed.text)
        query = state.lexical.query(seed_terms)
        own = state.lexical.score_terms(query, seed_terms)
        if own <= 0:
            return np.zeros(len(nums))
        return np.minimum(state.lexical.score(query, nums.tolist()) / own, 1.0)

    @staticmethod
    def _deltas(state: IndexState, nums: np.ndarray, reference: datetime) -> np.ndarray:
        """Days from the seed to each candidate (negative: published before); NaN if undated."""
        ref = reference.timestamp()
        return np.array([
            (info.published_at.timestamp() - ref) / DAY if (info := state.infos[n]).published_at else np.nan
            for n in nums
        ])

    @staticmethod
    def _item(state: IndexState, explain: "Explainer", num: int, score: float, delta: float) -> RelatedItem:
        info = state.infos[num]
        reason = explain.reason(num)
        when = age_phrase(None if np.isnan(delta) else delta)
        return RelatedItem(info.id, info.title, info.url, info.published_at, info.section, round(score, 4),
                           f"{reason}; {when}" if when else reason)
