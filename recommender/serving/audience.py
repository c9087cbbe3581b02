"""The audience side of serving: which experiment arm a page view is in, and the
readers' events a site sends back.

The running experiment is read from the store's shelf at most once a second per
server, so a page view stays one list read, and an experiment started or stopped
by the CLI is seen by every server within a second. The events route reads every
experiment's document at the same pace, not on each request.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from recommender.audience.events import EventResult
from recommender.audience.experiments import ORIGINAL, Experiment, Experiments
from recommender.audience.record import record_events
from recommender.store.base import Store

REFRESH_SECONDS = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str
    profile: str  # a ranking profile, or ORIGINAL: the page keeps its own block
    active: bool  # the arm's profile is the active one: the serving lists are its lists
    unit: str  # the visitor or article it was assigned by

    @property
    def original(self) -> bool:
        return self.profile == ORIGINAL


@dataclass(frozen=True)
class _Plan:
    experiment: Experiment | None
    active: str  # the active profile's name when the plan was read
    read_at: float


class Audience:
    """`sources`: the serving engine's (store, experiments, active profile's name), read
    when the plan is refreshed and when events are recorded."""

    def __init__(self, sources: Callable[[], tuple[Store, Experiments, str]]):
        self._sources = sources
        self._plan = _Plan(None, "", float("-inf"))
        self._lock = threading.Lock()
        self._known: tuple[float, list[Experiment]] = (float("-inf"), [])
        self.events_in = 0
        self.events_rejected = 0

    def assign(self, article_id: str, visitor: str | None) -> Assignment | None:
        """The page view's arm in the running experiment; None when none runs, or when it
        assigns by visitor and the request names none."""
        plan = self._current()
        experiment = plan.experiment
        if experiment is None:
            return None
        unit = article_id if experiment.unit == "article" else visitor
        if not unit:
            return None
        arm = experiment.assign(unit)
        return Assignment(experiment.name, arm.name, arm.profile, arm.profile in (ORIGINAL, plan.active), unit)

    def swap(self, arm: Assignment, article_id: str, first: int, length: int) -> int | None:
        """Where the page view's block swaps two neighbouring items, if it is one of the
        experiment's exploring views (`Experiment.swap`)."""
        experiment = self._plan.experiment
        if experiment is None or experiment.name != arm.experiment:
            return None
        return experiment.swap(arm.unit, article_id, first, length)

    def lists_profiles(self) -> list[str]:
        """The running experiment's arm profiles that keep lists of their own (not the active one)."""
        plan = self._current()
        arms = plan.experiment.arms if plan.experiment else []
        return [a.profile for a in arms if a.profile not in (ORIGINAL, plan.active)]

    def _every(self, experiments: Experiments) -> list[Experiment]:
        """Every experiment, stopped ones too (late events still count in theirs): read at most
        once a second, and at once when the running one is not among them yet."""
        read_at, known = self._known
        running = self._current().experiment
        if time.monotonic() - read_at >= REFRESH_SECONDS or (
                running is not None and all(e.name != running.name for e in known)):
            known = experiments.all()
            self._known = (time.monotonic(), known)
        return known

    def _current(self) -> _Plan:
        plan = self._plan
        if time.monotonic() - plan.read_at < REFRESH_SECONDS:
            return plan
        with self._lock:
            if time.monotonic() - self._plan.read_at >= REFRESH_SECONDS:
                try:
                    _, experiments, active = self._sources()
                    self._plan = _Plan(experiments.running(), active, time.monotonic())
                except Exception:  # a page view must not fail on the experiment: the last plan serves
                    log.exception("reading the running experiment failed; retrying in %g s", REFRESH_SECONDS)
                    self._plan = replace(self._plan, read_at=time.monotonic())
            return self._plan

    def record(self, entries: list[tuple[int, Any]], sent: int | None = None) -> list[EventResult]:
        """Store the good events of a batch as counters; a result for each (`sent`: the
        request's events, those that could not be decoded included)."""
        store, experiments, _ = self._sources()
        results = record_events(store, self._every(experiments), entries, sent)
        stored = sum(1 for r in results if r.status == "stored")
        self.events_in += stored
        self.events_rejected += len(results) - stored
        return results
