"""Index versions on disk: `indexes/<version>/{index.faiss,meta.json}` and an
`indexes/ACTIVE` file naming the one that serves. Switching is one atomic
rename of that file, so a reader sees either the old version or the new one."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from recommender.errors import IndexDamaged, JobLocked, RecommenderError
from recommender.index.files import atomic_write
from recommender.index.vector_index import META_FILE, IndexMeta, read_meta
from recommender.settings import Settings
from recommender.store.base import Shelf, Store

ACTIVE_FILE = "ACTIVE"
log = logging.getLogger(__name__)
_VERSION = re.compile(r"^v(\d+)$")


class Versions:
    def __init__(self, root: Path, shelf: Shelf | None = None):
        self.root = Path(root)
        self.shelf = shelf

    def path(self, version: str) -> Path:
        return self.root / version

    def active(self) -> str | None:
        """The version that serves: the shared one, when there is a shared store (its files
        may not be here yet). An ACTIVE file that is missing or names no version (damaged)
        while versions exist falls back to the newest one, loudly."""
        shared = (self.shelf.read(ACTIVE_FILE) or "").strip() if self.shelf is not None else ""
        if _VERSION.match(shared):
            return shared
        try:
            name: str | None = (self.root / ACTIVE_FILE).read_text(errors="replace").strip()
        except FileNotFoundError:
            name = None
        if name and _VERSION.match(name) and self.path(name).is_dir():  # a damaged sidecar is rebuilt later
            return name
        newest = self.names()[-1:] if self.root.exists() else []
        if newest:
            log.warning("%s names no index version (%r); serving the newest, %s "
                        "(choose another with: recommender index activate)", self.root / ACTIVE_FILE, name, newest[0])
        return newest[0] if newest else None

    def activate(self, version: str) -> None:
        if not (self.path(version) / META_FILE).exists():
            raise RecommenderError(f"no index version {version!r}", hint="see: recommender index list")
        atomic_write(self.root / ACTIVE_FILE, (version + "\n").encode())
        if self.shelf is not None:
            self.register(version, self.meta(version).model)
            self.shelf.write(ACTIVE_FILE, version + "\n")

    def register(self, version: str, model: str) -> None:
        """Claim a version's name for `model` on the shared store, so no other server
        names another model's index so."""
        if self.shelf is not None:
            self.shelf.write(f"{version}.model", model)

    def shared_model(self, version: str) -> str | None:
        """The model a version was registered with on the shared store."""
        return self.shelf.read(f"{version}.model") if self.shelf is not None else None

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        found = [p.name for p in self.root.iterdir() if _VERSION.match(p.name) and (p / META_FILE).exists()]
        return sorted(found, key=lambda n: int(n[1:]))

    def metas(self) -> list[IndexMeta]:
        return [self.meta(n) for n in self.names()]

    def active_meta(self) -> IndexMeta | None:
        """None also while a shared store's active version has no files here yet."""
        version = self.active()
        if version and self.shelf is not None and not self.path(version).exists():
            return None
        return self.meta(version) if version else None

    def meta(self, version: str) -> IndexMeta:
        """A version's sidecar; IndexDamaged when it is missing or unreadable."""
        try:
            return read_meta(self.path(version))
        except (OSError, ValueError, TypeError) as exc:
            raise IndexDamaged(f"the sidecar of index {version} is missing or unreadable ({exc})") from None

    def new_name(self) -> str:
        """The next unused name; directories of unfinished builds count as used."""
        names = [p.name for p in (self.root.iterdir() if self.root.exists() else [])]
        names += [n.removesuffix(".model") for n in (self.shelf.names() if self.shelf is not None else [])]
        used = [int(m.group(1)) for n in names if (m := _VERSION.match(n))]
        return f"v{max(used, default=0) + 1}"

    def remove(self, version: str) -> None:
        if version == self.active():
            raise RecommenderError(f"{version} is the active version; activate another one first")
        shutil.rmtree(self.path(version))

    @contextmanager
    def lock(self, name: str, what: str) -> Iterator[None]:
        """An exclusive, non-blocking lock file; released by the OS if the process dies."""
        with self._lock_file(f".{name}.lock") as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JobLocked(f"another {what} is running on {self.root.parent} (lock {name})",
                                hint="wait for it to finish") from None
            yield

    def hold_serving(self) -> int:
        """A server holds this shared lock while it serves the data dir (released by the
        OS when the process dies); the descriptor to close when it stops."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".serving.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def served(self) -> bool:
        """Whether a server is serving this data dir now."""
        path = self.root / ".serving.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @contextmanager
    def save_lock(self, version: str) -> Iterator[None]:
        """Serialises writers of one version's files across processes (blocking)."""
        with self._lock_file(f".{version}.save.lock") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield

    @contextmanager
    def _lock_file(self, filename: str) -> Iterator[int]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / filename, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            yield fd
        finally:
            os.close(fd)


def open_versions(settings: Settings, store: Store | None = None) -> Versions:
    """The data dir's index versions, coordinated through the store when it is shared."""
    if not settings.database_url:
        return Versions(settings.index_dir)
    if store is None:
        from recommender.store.base import open_store

        store = open_store(settings)
    return Versions(settings.index_dir, store.shelf("indexes"))
