"""Readers' clicks as labels for `recommender tune --clicks`, corrected for position bias.

A reader clicks the first item more than the fifth whatever they are: position k is
examined with some probability p_k. A click at k is weighted 1/p_k (inverse propensity),
so the labels say what readers preferred, not where the list put it. The p_k are
estimated from the data by intervention harvesting (Agarwal et al., WSDM 2019): the
same (article, item) shown at two neighbouring positions, by two arms or by a list that
changed, has the same relevance, so its CTRs there differ by p_k / p_k-1 alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby
from typing import Iterable

from recommender.store.base import Store

MAX_POS = 50


@dataclass(frozen=True)
class ClickLabels:
    weights: dict[str, dict[str, float]]  # seed -> {clicked item: weight}, mean weight 1
    propensity: list[float]  # p_1 .. p_K, p_1 = 1
    harvested: list[int]  # per k >= 2: the (article, item) pairs seen at both k-1 and k
    clicks: int


def propensities(rows: Iterable[tuple[str, str, int, int, int]]) -> tuple[list[float], list[int]]:
    """p_k relative to p_1 from (seed, item, pos, impressions, clicks) rows in (seed, item)
    order; a position with no pair shown at it and the one above keeps the one above's."""
    num: dict[int, float] = defaultdict(float)
    den: dict[int, float] = defaultdict(float)
    pairs: dict[int, int] = defaultdict(int)
    top = 1
    for _, group in groupby(rows, key=lambda r: (r[0], r[1])):
        at = {int(pos): (imps, clicks) for _, _, pos, imps, clicks in group if imps > 0}
        top = max(top, *at)
        for k in at:
            if k - 1 in at:
                (n0, c0), (n1, c1) = at[k - 1], at[k]
                w = min(n0, n1)
                num[k] += w * c1 / n1
                den[k] += w * c0 / n0
                pairs[k] += 1
    p, harvested = [1.0], []
    for k in range(2, min(top, MAX_POS) + 1):
        ratio = num[k] / den[k] if den[k] > 0 else 1.0
        p.append(min(max(p[-1] * ratio, 1e-3), 1.0))
        harvested.append(pairs[k])
    return p, harvested


def click_labels(store: Store, debias: bool = True) -> ClickLabels:
    """Each article's clicked items, weighted by their clicks over the examination propensity
    of the positions they were clicked at (`debias=False`: by clicks alone)."""
    p, harvested = propensities(store.event_pairs()) if debias else ([1.0] * MAX_POS, [])
    weights: dict[str, dict[str, float]] = defaultdict(dict)
    clicks = 0
    for seed, item, pos, _, c in store.event_pairs():
        if c:
            clicks += int(c)
            weight = c / p[min(int(pos), len(p)) - 1]
            weights[seed][item] = weights[seed].get(item, 0.0) + weight
    total = sum(len(v) for v in weights.values())
    mean = sum(w for v in weights.values() for w in v.values()) / total if total else 1.0
    scaled = {s: {i: w / mean for i, w in v.items()} for s, v in weights.items()}
    return ClickLabels(scaled, p, harvested, clicks)


def beside_editors(weights: dict[str, dict[str, float]], editors: dict[str, set[str]]) -> dict[str, dict[str, float]]:
    """Click weights as labels beside the editors' links: an item the editor linked and
    readers clicked counts for both (1 + its clicks' weight), not for its clicks alone."""
    return {seed: {item: w + (1.0 if item in editors.get(seed, ()) else 0.0) for item, w in items.items()}
            for seed, items in weights.items()}
