"""The time prior: how far apart in time a seed and a candidate were published.

Editors link the same story's earlier and later articles, so nearness in time is
evidence. It enters the ranking in two ways, both switched off by
`time_prior=False` (`--no-time-prior`):
- features of each pair (below), which the profile weighs: the hand-set profile
  takes a point per doubling of the distance in weeks (`log_days` in
  `recommender.settings.DEFAULT_WEIGHTS`), a learned one also weighs before or
  after and within a day, a week, a month;
- a candidate source that looks `window_days` around the seed's date
  (`recommender.ranking.candidates`), given the seed's time by `source_time`.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from recommender.ranking.rules import DAY

# The features `time_prior=False` zeroes ("undated" stays: it says the others are missing).
TIME_FEATURES = frozenset({"log_days", "after", "within_day", "within_week", "within_month", "dense_z_x_week"})


def columns(times: np.ndarray, when: float | None) -> dict[str, np.ndarray]:
    """The time features of candidates published at `times` (epoch seconds, NaN when
    undated) for a seed published at `when`; `dense_z_x_week` is derived with the dense ones."""
    undated = np.isnan(times) | (when is None)
    days = np.where(undated, 0.0, (times - (when or 0.0)) / DAY)
    distance = np.where(undated, np.inf, np.abs(days))
    return {
        "log_days": np.log2(1 + np.abs(days) / 7),  # 0 when either is undated
        "after": (days > 0).astype(float),
        "undated": undated.astype(float),
        "within_day": (distance <= 1).astype(float),
        "within_week": (distance <= 7).astype(float),
        "within_month": (distance <= 30).astype(float),
    }


def switched_off(time_prior: bool) -> frozenset[str]:
    """The features a profile's weights do not count."""
    return frozenset() if time_prior else TIME_FEATURES


def source_time(published_at: datetime | None, time_prior: bool) -> float | None:
    """The seed's time for the time candidate source; None runs no time source."""
    return published_at.timestamp() if published_at and time_prior else None
