"""A/B experiments between ranking profiles, and against the page's own block.

An experiment splits units (visitors, or articles) between arms by a stable hash
of (experiment, unit), so a visitor sees one arm on every page and on every server
without any state kept per visitor. An arm is a ranking profile, or `original`: the
page keeps the block it had. Experiments are documents on the store's shelf, so one
started by the CLI is seen by every server over the store.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationError, model_validator

from recommender.audience.events import Click, Impression, InvalidEvent, Placed
from recommender.errors import RecommenderError
from recommender.ranking.profiles import Profiles
from recommender.store.base import Shelf

ORIGINAL = "original"  # the arm that keeps the page's own block
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Unit = Literal["visitor", "article"]


def _named(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{what}'s name is 1 to 64 letters, digits, '_', '.' or '-'")
        return value

    return AfterValidator(check)


class Arm(BaseModel):
    name: Annotated[str, _named("an arm")]
    profile: str  # a ranking profile's name, or ORIGINAL
    weight: float = Field(50.0, gt=0, allow_inf_nan=False)


class Experiment(BaseModel):
    name: Annotated[str, _named("an experiment")]
    arms: list[Arm] = Field(min_length=2, max_length=10)
    unit: Unit = "visitor"
    # The share of page views whose block has two neighbouring items swapped: clicks on the
    # same item at two positions measure the position bias that `tune --clicks` corrects.
    explore: float = Field(0.0, ge=0, le=0.5, allow_inf_nan=False)
    started_at: str = Field(default_factory=lambda: _now())
    stopped_at: str | None = None

    @model_validator(mode="after")
    def _distinct_arms(self) -> "Experiment":
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("two arms have the same name")
        return self

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)

    def assign(self, unit: str) -> Arm:
        """The unit's arm: the same for the same (experiment, unit), in proportion to the weights."""
        point = _uniform(self.name, unit) * sum(a.weight for a in self.arms)
        for arm in self.arms:
            point -= arm.weight
            if point < 0:
                return arm
        return self.arms[-1]

    def swap(self, unit: str, article_id: str, first: int, length: int) -> int | None:
        """Where this page view's block swaps item j with j + 1 (`explore` of the views, the
        same for the same reader and article), j in [first, length - 2]; None for most views."""
        if self.explore <= 0 or length - first < 2 or _uniform(self.name, "explore", unit, article_id) >= self.explore:
            return None
        return first + int(_uniform(self.name, "where", unit, article_id) * (length - first - 1))


def _uniform(*parts: str) -> float:
    """A number in [0, 1) that is the same for the same parts: a stable hash."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


RUNNING = "RUNNING"  # the name of the running experiment, as profiles' ACTIVE names theirs


class Experiments:
    """The experiments on a shelf, one document each; at most one runs at a time, so a
    page view is in at most one. `RUNNING` names it: each server reads that once a second,
    not every experiment ever run."""

    def __init__(self, shelf: Shelf, profiles: Profiles):
        self.shelf = shelf
        self.profiles = profiles

    def all(self) -> list[Experiment]:
        found = [self._read(n) for n in self.shelf.names() if n.endswith(".json")]
        return sorted((e for e in found if e is not None), key=lambda e: e.started_at)

    def get(self, name: str) -> Experiment:
        found = self._read(f"{name}.json") if NAME.match(name) else None
        if found is None:
            raise RecommenderError(f"no experiment {name!r}", hint="see: recommender experiment list")
        return found

    def running(self) -> Experiment | None:
        name = (self.shelf.read(RUNNING) or "").strip()
        found = self._read(f"{name}.json") if NAME.match(name) else None
        return found if found is not None and found.running else None

    def start(self, name: str, arms: list[Arm], unit: Unit, explore: float = 0.0) -> Experiment:
        experiment = self.check(name, arms, unit, explore)
        self._write(experiment)
        self.shelf.write(RUNNING, name + "\n")
        return experiment

    def check(self, name: str, arms: list[Arm], unit: Unit, explore: float = 0.0) -> Experiment:
        """The experiment `start` would write, or the reason it cannot."""
        try:
            experiment = Experiment(name=name, arms=arms, unit=unit, explore=explore)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise RecommenderError(f"experiment {name!r}: {first['msg'].removeprefix('Value error, ')}") from None
        for arm in arms:
            if arm.profile != ORIGINAL:
                self.profiles.get(arm.profile)  # an unknown profile is refused before anything is written
        if self._read(f"{name}.json") is not None:
            raise RecommenderError(f"an experiment {name!r} exists already; choose another name")
        current = self.running()
        if current is not None:
            raise RecommenderError(f"experiment {current.name!r} is running; one runs at a time",
                                   hint=f"recommender experiment stop {current.name}")
        return experiment

    def stop(self, name: str) -> Experiment:
        experiment = self.get(name)
        if not experiment.running:
            raise RecommenderError(f"experiment {name!r} was stopped at {experiment.stopped_at}")
        stopped = experiment.model_copy(update={"stopped_at": _now()})
        self._write(stopped)  # first: a server reading RUNNING meanwhile finds the document stopped
        self.shelf.write(RUNNING, "")
        return stopped

    def _read(self, name: str) -> Experiment | None:
        text = self.shelf.read(name)
        return Experiment.model_validate_json(text) if text else None

    def _write(self, experiment: Experiment) -> None:
        self.shelf.write(f"{experiment.name}.json", experiment.model_dump_json(indent=2) + "\n")


class Placer:
    """Where each event of a batch is counted: the experiment it names, or else the newest
    one with its arm; an event without an arm is counted outside any experiment."""

    def __init__(self, experiments: list[Experiment]):
        self.by_name = {e.name: e for e in experiments}
        self.newest = list(reversed(experiments))

    def __call__(self, event: Impression | Click) -> Placed:
        if event.arm is None:
            if event.experiment is not None:
                raise InvalidEvent("an event naming an experiment needs its arm")
            return Placed("", "", event.visitor or "")
        experiment = self._experiment(event.experiment, event.arm)
        unit = event.article_id if experiment.unit == "article" else event.visitor
        if not unit:
            raise InvalidEvent(f"experiment {experiment.name!r} assigns by visitor; the event has none")
        return Placed(experiment.name, event.arm, unit)

    def _experiment(self, name: str | None, arm: str) -> Experiment:
        if name is not None:
            found = self.by_name.get(name)
            if found is None:
                raise InvalidEvent(f"no experiment {name!r}")
            if found.arm(arm) is None:
                raise InvalidEvent(f"experiment {name!r} has no arm {arm!r}")
            return found
        for experiment in self.newest:
            if experiment.arm(arm) is not None:
                return experiment
        raise InvalidEvent(f"no experiment has an arm {arm!r}")


def parse_arms(arms: list[str], weights: list[str]) -> list[Arm]:
    """`--arm NAME=PROFILE` and `--weight NAME=PERCENT` options as arms (equal weights by default)."""
    pairs = [_pair(a, "--arm", "NAME=PROFILE") for a in arms]
    weight = {name: value for name, value in (_pair(w, "--weight", "NAME=NUMBER") for w in weights)}
    unknown = set(weight) - {name for name, _ in pairs}
    if unknown:
        raise RecommenderError(f"--weight names no arm: {', '.join(sorted(unknown))}")
    try:
        numbers = {name: float(value) for name, value in weight.items()}
    except ValueError:
        raise RecommenderError("--weight takes a number, e.g. --weight test=10") from None
    # Weights are percentages: the arms without one share what the others leave of 100.
    rest = [name for name, _ in pairs if name not in numbers]
    if numbers and rest:
        left = 100.0 - sum(numbers.values())
        if left <= 0:
            raise RecommenderError(f"the --weight values leave nothing of 100 for {', '.join(rest)}")
        numbers |= {name: left / len(rest) for name in rest}
    try:
        return [Arm(name=name, profile=profile, weight=numbers.get(name, 50.0)) for name, profile in pairs]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise RecommenderError(f"--arm / --weight: {first['msg'].removeprefix('Value error, ')}") from None


def _pair(text: str, option: str, form: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise RecommenderError(f"{option} takes {form}, got {text!r}")
    return name.strip(), value.strip()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
