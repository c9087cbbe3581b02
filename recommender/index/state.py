"""The serving index of one version: vectors, what ranking needs of each
article, and BM25 statistics; and its lifecycle (open, build, catch up, save).

Every writer goes through the store; an index follows the store's change log
(`catch_up`), whichever process wrote. So a CLI ingest, an API write and a
re-embedding job all reach a served index the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np

from recommender.errors import IndexDamaged, IndexMismatch, NoIndex
from recommender.index.columns import Columns
from recommender.index.files import read_sealed, write_sealed
from recommender.index.infos import IdMap, InfoTable
from recommender.index.lexical import LexicalIndex
from recommender.index.timeline import Timeline
from recommender.index.vector_index import IndexMeta, VectorIndex, now_iso
from recommender.index.versions import Versions
from recommender.settings import AnnSettings
from recommender.store.articles import ArticleInfo
from recommender.store.base import Store
from recommender.text.normalize import terms

log = logging.getLogger(__name__)


@dataclass
class IndexState:
    """One loaded index version with what ranking needs beside the vectors."""

    version: str
    meta: IndexMeta
    vectors: VectorIndex
    infos: InfoTable = field(default_factory=InfoTable)
    lexical: LexicalIndex = field(default_factory=LexicalIndex)  # BM25 over the text's terms
    entities: LexicalIndex = field(default_factory=LexicalIndex)  # ... over the named entities
    titles: LexicalIndex = field(default_factory=LexicalIndex)  # ... over the headline's terms
    timeline: Timeline = field(default_factory=Timeline)
    columns: Columns = field(default_factory=Columns)  # `infos` as arrays, for a list's few hundred candidates

    @property
    def by_id(self) -> IdMap:
        return self.infos.ids

    def clone(self) -> "IndexState":
        """A copy that can be changed while readers keep using this one."""
        return IndexState(self.version, replace(self.meta), self.vectors.clone(), self.infos.clone(),
                          self.lexical.clone(), self.entities.clone(), self.titles.clone(),
                          self.timeline.clone(), self.columns.clone())

    def warm(self) -> None:
        """Build what the first search would build: the inverted indexes of BM25."""
        for lexical in (self.lexical, self.entities, self.titles):
            lexical.warm()

    def settle(self) -> None:
        """Rebuild the inverted indexes that writes have left documents outside of, before
        many searches (a backlog of lists): each search would score those one by one."""
        for lexical in (self.lexical, self.entities, self.titles):
            lexical.settle()

    def set_records(self, infos: list[ArticleInfo]) -> None:
        """Each article's info, its columns and its place in the timeline."""
        self.columns.set_many(infos)
        for info in infos:
            self.infos[info.num] = info
            self.timeline.set(info.num, info.published_at.timestamp() if info.published_at else None)
        self.infos.maybe_fold()

    def set_infos(self, rows: list[tuple[ArticleInfo, str, str]]) -> None:
        """Each article's info and lexical entries, from its stored terms and entities."""
        self.set_records([info for info, _, _ in rows])
        nums = [info.num for info, _, _ in rows]
        self.lexical.add_many(nums, [term_text.split() for _, term_text, _ in rows])
        self.entities.add_many(nums, [entity_text.split() for _, _, entity_text in rows])
        self.titles.add_many(nums, [terms(info.title) for info, _, _ in rows])

    def apply(self, rows: Iterable[tuple[ArticleInfo, str, str, bytes | None]], gone: Iterable[int] = (),
              fill: bool = False) -> None:
        """Bring the given articles to their current state; `gone` were deleted. `fill`: a
        first build's articles, each once, their vectors straight into the main index
        (`VectorIndex.fill`)."""
        gone = list(gone)
        for num in gone:
            self.infos.pop(num, None)
            self.columns.remove(num)
            for lexical in (self.lexical, self.entities, self.titles):
                lexical.remove(num)
            self.timeline.remove(num)
        self.vectors.remove(np.asarray(gone, dtype=np.int64))
        # Each chunk's vectors go into the index as they come, compacted once at the end: a whole
        # archive's stored bytes and their stacked copy would each be 1.5 GB at a million.
        for chunk in batched(rows, APPLY_CHUNK):
            self.set_infos([(info, term_text, entity_text) for info, term_text, entity_text, _ in chunk])
            self.vectors.remove(np.array([info.num for info, _, _, vector in chunk if vector is None], dtype=np.int64),
                                compact=False)
            embedded = [(info.num, vector) for info, _, _, vector in chunk if vector is not None]
            if embedded:
                nums = np.array([num for num, _ in embedded], dtype=np.int64)
                vectors = np.vstack([np.frombuffer(v, dtype=np.float32) for _, v in embedded])
                if fill:
                    self.vectors.fill(nums, vectors)
                else:
                    self.vectors.upsert(nums, vectors, compact=False)
        self.vectors.maybe_compact()
        self.timeline.settle()


class Indexes:
    """The index versions of one model: open the active one, build, catch up, save."""

    def __init__(self, store: Store, versions: Versions, model: str, ann: AnnSettings | None = None):
        self.store = store
        self.versions = versions
        self.model = model
        self.ann = ann or AnnSettings()
        self.rebuilding: str | None = None  # why, while a damaged version is rebuilt from the store

    def active_meta(self) -> IndexMeta | None:
        """The active version's sidecar; IndexMismatch if it was built with another model."""
        meta = self.versions.active_meta()
        if meta is not None and meta.model != self.model:
            raise IndexMismatch(
                f"the active index {meta.version} was built with model {meta.model!r}, not {self.model!r}",
                hint=f"use --model {meta.model} (or RECOMMENDER_MODEL), or build and activate an index "
                     f"for the new model with: recommender reembed --model {self.model}")
        return meta

    def open_active(self) -> IndexState:
        version = self.versions.active()
        if version is None:
            raise NoIndex("no index yet: nothing has been ingested",
                          hint="ingest articles first, e.g. recommender ingest articles.jsonl")
        try:
            meta = self.active_meta()
        except IndexDamaged as exc:
            return self._rebuild(version, None, exc)
        if meta is None:  # a shared store's version, new to this data dir
            return self._rebuild(version, None, FileNotFoundError(self.versions.path(version)))
        path = self.versions.path(meta.version)
        try:
            vectors, meta = VectorIndex.load(path, self.ann)
        except (IndexDamaged, IndexMismatch, RuntimeError, OSError, ValueError) as exc:
            return self._rebuild(meta.version, meta.dimension, exc)
        state = IndexState(meta.version, meta, vectors)
        saved = load_lexical(path, meta.applied_seq)
        if saved is not None:  # what the version saved: read back memory-mapped, no text parsed
            state.lexical, state.entities, state.titles = saved
            for infos in batched(self.store.all_infos(), APPLY_CHUNK):
                state.set_records(infos)
        else:
            for chunk in batched(self.store.index_rows(self.model, with_vectors=False), APPLY_CHUNK):
                state.set_infos([(info, term_text, entity_text) for info, term_text, entity_text, _ in chunk])
            self._keep_lexical(state)
        state.timeline.settle()
        self.catch_up(state)
        return state

    def _rebuild(self, version: str, dimension: int | None, why: Exception) -> IndexState:
        """The index is only a cache of the store's vectors: a damaged file is rebuilt,
        loudly, never read. `rebuilding` says so meanwhile (a server is not ready)."""
        if self.versions.path(version).exists():
            self.rebuilding = f"index {version} is damaged ({why}); rebuilding it from the store"
            log.warning("%s", self.rebuilding)
        else:  # a shared store's version, new to this data dir
            self.rebuilding = f"index {version} is not in {self.versions.root} yet; building it from the store"
            log.info("%s", self.rebuilding)
        try:
            return self.build_version(version, dimension or self._stored_dimension(), activate=False)
        finally:
            self.rebuilding = None

    def _stored_dimension(self) -> int:
        for _, _, _, vector in self.store.index_rows(self.model):
            if vector is not None:
                return len(vector) // 4  # float32
        raise IndexDamaged(f"no vector under {self.model} in the store to rebuild the index from",
                           hint=f"re-embed the archive: recommender reembed --model {self.model}")

    def _keep_lexical(self, state: IndexState) -> None:
        """Save what was just parsed (a version saved by an earlier release, or damaged), so
        the next start reads it back. It reflects the store as it is now, at least the
        version's last change: the catch-up from that change then converges as usual."""
        try:
            with self.versions.save_lock(state.version):
                save_lexical(self.versions.path(state.version), state, state.meta.applied_seq)
        except OSError as exc:
            log.warning("could not save the lexical index of %s (%s); the next start parses again", state.version, exc)

    def build_state(self, version: str, dimension: int) -> IndexState:
        """A full in-memory index for this model from the store's vectors."""
        meta = IndexMeta(version, self.model, dimension, 0, now_iso(), self.store.last_change())
        state = IndexState(version, meta, VectorIndex(dimension, ann=self.ann))
        state.vectors.start_main(self.store.count())
        state.apply(self.store.index_rows(self.model), fill=True)
        state.vectors.filled()
        self.catch_up(state)
        state.meta.random_pair_mean = state.vectors.random_pair_mean()
        return state

    def build_version(self, version: str, dimension: int, activate: bool) -> IndexState:
        """build_state, saved as `version` on disk, and optionally made active."""
        self.versions.register(version, self.model)
        state = self.build_state(version, dimension)
        self.save(state)
        if activate:
            self.versions.activate(version)
        return state

    def catch_up(self, state: IndexState, limit: int | None = None) -> list[int]:
        """Apply the store's changes since the index's last one (the next `limit` of
        them, with a limit); the nums changed."""
        last, nums = self.store.changes_since(state.meta.applied_seq, limit)
        if nums:
            rows = list(self.store.index_rows(self.model, nums))
            present = {row[0].num for row in rows}
            state.apply(rows, gone=[n for n in nums if n not in present])
        state.meta.applied_seq = last
        return nums

    def save(self, state: IndexState) -> None:
        """The vectors, and the lexical indexes that a restart then reads back instead of
        parsing every article again. The lexical files go first and carry the change
        they reflect; a sidecar that does not match them makes a restart parse the store."""
        state.meta.random_pair_mean = state.vectors.random_pair_mean()
        with self.versions.save_lock(state.version):
            path = self.versions.path(state.version)
            save_lexical(path, state, state.meta.applied_seq)
            state.vectors.save(path, state.meta)


T = TypeVar("T")
# Articles applied per step when building: their term lists (hundreds of strings each) are held at once.
APPLY_CHUNK = 20_000


def batched(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


LEXICAL_DIR = "lexical"
LEXICAL_PARTS = ("text", "entities", "titles")


def save_lexical(path: Path, state: IndexState, applied_seq: int) -> None:
    """Each part's files, then the manifest naming them (written last, atomically), then
    the files no manifest names any more. A base is written once: later saves add only
    the documents changed since, so a minute's writes do not rewrite hundreds of MB."""
    directory = path / LEXICAL_DIR
    manifests = {name: lexical.save(directory / name)
                 for name, lexical in zip(LEXICAL_PARTS, (state.lexical, state.entities, state.titles))}
    write_sealed(directory / "meta.json", json.dumps({"applied_seq": applied_seq, "parts": manifests}).encode())
    for name, manifest in manifests.items():
        keep = LexicalIndex.files(manifest)
        for entry in (directory / name).iterdir():
            if entry.name not in keep:  # a reader that mapped an old base keeps its pages
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def load_lexical(path: Path, applied_seq: int) -> tuple[LexicalIndex, LexicalIndex, LexicalIndex] | None:
    """The saved lexical indexes when they reflect exactly `applied_seq`, else None."""
    directory = path / LEXICAL_DIR
    try:
        meta = json.loads(read_sealed(directory / "meta.json"))
        if meta["applied_seq"] != applied_seq:
            return None
        lexical, entities, titles = (LexicalIndex.load(directory / name, meta["parts"][name]) for name in LEXICAL_PARTS)
        return lexical, entities, titles
    except (IndexDamaged, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        if not isinstance(exc, FileNotFoundError) or directory.exists():  # none at all: saved by an old release
            log.warning("lexical index in %s damaged or unreadable (%s); parsing the store instead", path, exc)
        return None
