"""A batch of events into the store: checked, placed in their experiment, counted."""

from __future__ import annotations

from typing import Any

from recommender.audience.events import EventResult, count_events
from recommender.audience.experiments import Experiment, Placer
from recommender.store.base import Store


def record_events(store: Store, experiments: list[Experiment], entries: list[tuple[int, Any]],
                  sent: int | None = None) -> list[EventResult]:
    """Store the good events of `entries` ((index, decoded JSON)) as counters, in one
    transaction; a result for each. `sent`: the batch's size, undecodable items included."""
    counts, results = count_events(entries, Placer(experiments), store.existing_ids, sent)
    if len(counts):
        store.add_event_counts({"event_units": counts.units, "event_positions": counts.positions,
                                "event_days": counts.days, "event_pairs": counts.pairs})
    return results
