"""Ranking profiles: the weights of the ranking's features, versioned like index versions.

`profiles/p<N>.json` holds one profile (readable JSON: the weights, where they
came from, what they scored); `profiles/ACTIVE` names the one in use, and
`profiles/HISTORY` the ones activated before it, for rollback. With no ACTIVE
file the hand-set profile `default` (recommender.settings.DEFAULT_WEIGHTS) serves.
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
from recommender.settings import DEFAULT_WEIGHTS

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


class Profiles:
    def __init__(self, root: Path):
        self.root = Path(root)

    def active_name(self) -> str:
        try:
            return (self.root / ACTIVE_FILE).read_text().strip() or DEFAULT
        except FileNotFoundError:
            return DEFAULT

    def active(self) -> Profile:
        return self.get(self.active_name())

    def get(self, name: str) -> Profile:
        if name == DEFAULT:
            return BUILT_IN
        path = self.root / f"{name}.json"
        if not _NAME.match(name) or not path.exists():
            raise RecommenderError(f"no ranking profile {name!r}", hint="see: recommender profile list")
        return read_profile(path)

    def names(self) -> list[str]:
        found = [p.stem for p in self.root.glob("p*.json") if _NAME.match(p.stem)] if self.root.exists() else []
        return [DEFAULT] + sorted(found, key=lambda n: int(n[1:]))

    def save(self, weights: dict[str, float], source: str, report: dict) -> Profile:
        """A new profile under the next free name; not active until `activate`."""
        self.root.mkdir(parents=True, exist_ok=True)
        used = [int(m.group(1)) for n in self.names() if (m := _NAME.match(n))]
        profile = Profile(name=f"p{max(used, default=0) + 1}", weights=weights, source=source, report=report)
        atomic_write(self.root / f"{profile.name}.json", (profile.model_dump_json(indent=2) + "\n").encode())
        return profile

    def activate(self, name: str) -> Profile:
        profile = self.get(name)  # refuses an unknown name before anything changes
        previous = self.active_name()
        if previous != name:
            history = self._history() + [previous]
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / HISTORY_FILE, ("\n".join(history) + "\n").encode())
            atomic_write(self.root / ACTIVE_FILE, (name + "\n").encode())
        return profile

    def rollback(self) -> Profile:
        """Back to the profile active before the current one."""
        history = self._history()
        if not history:
            raise RecommenderError("no earlier profile to roll back to", hint="see: recommender profile list")
        previous = history.pop()
        self.get(previous)
        atomic_write(self.root / HISTORY_FILE, ("\n".join(history) + "\n").encode() if history else b"")
        atomic_write(self.root / ACTIVE_FILE, (previous + "\n").encode())
        return self.get(previous)

    def _history(self) -> list[str]:
        try:
            return [line for line in (self.root / HISTORY_FILE).read_text().split() if line]
        except FileNotFoundError:
            return []


def read_profile(path: Path) -> Profile:
    """A profile from a JSON file (one that `recommender tune` wrote, or hand-written)."""
    try:
        return Profile.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecommenderError(f"no ranking profile at {path}", hint="see: recommender profile list") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecommenderError(f"{path} is not a ranking profile: {where}: {first['msg']}") from None
