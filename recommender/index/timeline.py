"""The archive in date order: which articles were published near a given time.

Editors mostly link recent pieces (half of ZF's links are to articles at most
six days older), many of which are not among the nearest by cosine. A sorted
array answers "everything within N days" with two binary searches.
"""

from __future__ import annotations

import numpy as np

BULK = 64  # pending changes applied by one re-sort rather than one by one


class Timeline:
    """Dated articles sorted by publication time. Arrays are replaced, never
    changed in place, so a clone shares them until either side writes."""

    def __init__(self) -> None:
        self._at: dict[int, float] = {}  # num -> Unix time
        self._sorted = (np.zeros(0), np.zeros(0, dtype=np.int64))  # (times, nums), swapped as one
        self._pending: list[tuple[int, float | None, float | None]] = []  # (num, old, new)

    def clone(self) -> "Timeline":
        copy = Timeline()
        copy._at, copy._sorted, copy._pending = dict(self._at), self._sorted, list(self._pending)
        return copy

    def __len__(self) -> int:
        return len(self._at)

    def set(self, num: int, when: float | None) -> None:
        """Place an article at `when` (None: undated, so not in the timeline)."""
        old = self._at.pop(num, None)
        if when is not None:
            self._at[num] = when
        if old != when:
            self._pending.append((num, old, when))

    def remove(self, num: int) -> None:
        self.set(num, None)

    def window(self, when: float, before: float, after: float, limit: int) -> np.ndarray:
        """Nums published in [when - before, when + after] (seconds), closest to `when`
        first, at most `limit` of them."""
        times, nums = self._sorted if not self._pending else self.settle()
        lo = int(np.searchsorted(times, when - before, side="left"))
        hi = int(np.searchsorted(times, when + after, side="right"))
        if limit <= 0:
            return nums[:0]
        if limit < hi - lo:
            lo, hi = self._closest_span(times, when, lo, hi, limit)
        closest = np.argsort(np.abs(times[lo:hi] - when), kind="stable")[:limit]
        return nums[lo:hi][closest]

    @staticmethod
    def _closest_span(times: np.ndarray, when: float, lo: int, hi: int, limit: int) -> tuple[int, int]:
        """A span of [lo, hi) holding its `limit` articles closest to `when` and every one
        tied with them. Times are sorted, so they lie within `limit` places of `when`: a
        month of a million-article archive is some 16,000 articles, and this sorts a few hundred."""
        at = int(np.searchsorted(times, when))
        a, b = max(lo, at - limit), min(hi, at + limit)
        gaps = np.abs(times[a:b] - when)
        cut = np.partition(gaps, limit - 1)[limit - 1] if limit < len(gaps) else gaps.max()
        slack = 1e-3  # seconds: |t - when| rounds, so the span is widened by far more than that
        return (max(lo, int(np.searchsorted(times, when - cut - slack, side="left"))),
                min(hi, int(np.searchsorted(times, when + cut + slack, side="right"))))

    def settle(self) -> tuple[np.ndarray, np.ndarray]:
        """Sort in the pending changes. The writer calls it before a state is
        published, so readers of a published timeline never change it."""
        times, nums = self._sorted
        if len(self._pending) > BULK:
            nums = np.fromiter(self._at.keys(), dtype=np.int64, count=len(self._at))
            times = np.fromiter(self._at.values(), dtype=np.float64, count=len(self._at))
            order = np.lexsort((nums, times))
            times, nums = times[order], nums[order]
        else:
            for num, old, new in self._pending:
                if old is not None:
                    lo, hi = np.searchsorted(times, old, side="left"), np.searchsorted(times, old, side="right")
                    hits = lo + np.flatnonzero(nums[lo:hi] == num)
                    times, nums = np.delete(times, hits), np.delete(nums, hits)
                if new is not None:
                    at = np.searchsorted(times, new, side="right")
                    times, nums = np.insert(times, at, new), np.insert(nums, at, num)
        self._sorted, self._pending = (times, nums), []
        return times, nums
