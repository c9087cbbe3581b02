"""Ranking profiles: the weights of the ranking's features, versioned like index versions.

`profiles/p<N>.json` holds one profile (readable JSON: the weights, where they
came from, what they scored); `profiles/ACTIVE` names the one in use, and
`profiles/HISTORY` the ones activated before it, for rollback. With no ACTIVE
file the hand-set profile `default` (recommender.settings.DEFAULT_WEIGHTS) serves.
Over a database that several servers share, the same names are documents in it.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

from recommender.errors import RecommenderError
from recommender.index.files import atomic_write
from recommender.ranking.features import FEATURES
from recommender.settings import DEFAULT_WEIGHTS, Settings
from recommender.store.base import Shelf, Store

DEFAULT = "default"
ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "HISTORY"
_NAME = re.compile(r"^p(\d+)$")


class Profile(BaseModel):
    name: str
    weights: dict[str, float]
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    source: str = "hand-set"  # how it was made, e.g. the tune command line
    # What tune measured: queries learned on, held-out hit@10 / MRR@10 of this
    # profile and of the one active when it was made.
    report: dict[str, float | int | str] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _known(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(FEATURES) - {"bias"}
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(sorted(unknown))}; known: {', '.join(FEATURES)}, bias")
        if not all(math.isfinite(w) for w in weights.values()):
            raise ValueError("weights must be finite numbers")
        return weights


BUILT_IN = Profile(name=DEFAULT, weights=DEFAULT_WEIGHTS, created_at="", source="hand-set (built in)")


class FolderShelf(Shelf):
    """A folder of the data dir, one file per name, each written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def read(self, name: str) -> str | None:
        try:
            return (self.root / name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write(self, name: str, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / name, text.encode())

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def describe(self, name: str) -> str:
        return str(self.root / name)


class Profiles:
    """The profiles on a shelf: the data dir's profiles/ folder, or, over a database
    that several servers share, its documents, so that an activation anywhere is seen
    by all of them."""

    def __init__(self, shelf: Path | Shelf):
        self.shelf: Shelf = FolderShelf(shelf) if isinstance(shelf, Path) else shelf

    def active_name(self) -> str:
        return (self.shelf.read(ACTIVE_FILE) or "").strip() or DEFAULT

    def active(self) -> Profile:
        return self.get(self.active_name())

    def get(self, name: str) -> Profile:
        if name == DEFAULT:
            return BUILT_IN
        text = self.shelf.read(f"{name}.json") if _NAME.match(name) else None
        if text is None:
            raise RecommenderError(f"no ranking profile {name!r}", hint="see: recommender profile list")
        return parse_profile(text, self.where(name))

    def where(self, name: str) -> str:
        """Where a profile is kept, for messages."""
        describe = getattr(self.shelf, "describe", None)
        return describe(f"{name}.json") if describe else f"profile {name} in the database"

    def names(self) -> list[str]:
        found = [n[:-5] for n in self.shelf.names() if n.endswith(".json") and _NAME.match(n[:-5])]
        return [DEFAULT] + sorted(found, key=lambda n: int(n[1:]))

    def save(self, weights: dict[str, float], source: str, report: dict) -> Profile:
        """A new profile under the next free name; not active until `activate`."""
        used = [int(m.group(1)) for n in self.names() if (m := _NAME.match(n))]
        profile = Profile(name=f"p{max(used, default=0) + 1}", weights=weights, source=source, report=report)
        self.shelf.write(f"{profile.name}.json", profile.model_dump_json(indent=2) + "\n")
        return profile

    def activate(self, name: str) -> Profile:
        profile = self.get(name)  # refuses an unknown name before anything changes
        previous = self.active_name()
        if previous != name:
            self.shelf.write(HISTORY_FILE, "\n".join(self._history() + [previous]) + "\n")
            self.shelf.write(ACTIVE_FILE, name + "\n")
        return profile

    def rollback(self) -> Profile:
        """Back to the profile active before the current one."""
        history = self._history()
        if not history:
            raise RecommenderError("no earlier profile to roll back to", hint="see: recommender profile list")
        previous = history.pop()
        self.get(previous)
        self.shelf.write(HISTORY_FILE, "\n".join(history) + "\n" if history else "")
        self.shelf.write(ACTIVE_FILE, previous + "\n")
        return self.get(previous)

    def _history(self) -> list[str]:
        return (self.shelf.read(HISTORY_FILE) or "").split()


def open_profiles(settings: Settings, store: Store | None = None) -> Profiles:
    """The data dir's profiles, or the shared database's when the settings name one."""
    if not settings.database_url:
        return Profiles(settings.profiles_dir)
    if store is None:
        from recommender.store.base import open_store

        store = open_store(settings)
    return Profiles(store.shelf("profiles"))


def read_profile(path: Path) -> Profile:
    """A profile from a JSON file (one that `recommender tune` wrote, or hand-written)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecommenderError(f"no ranking profile at {path}", hint="see: recommender profile list") from None
    return parse_profile(text, str(path))


def parse_profile(text: str, path: str) -> Profile:
    try:
        return Profile.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecommenderError(f"{path} is not a ranking profile: {where}: {first['msg']}") from None
