"""Where a related list's candidates come from: four sources, merged.

Ranking can only order what it is given. On editors' links (ZF, 2021 split,
eval/results/zf-2021.md) each source's 100 hold 66 to 76 % of the linked
articles, and the four together 96 %: each brings articles the others miss.

- dense:    nearest neighbours of the seed's vector;
- lexical:  BM25 over the whole archive with the seed's most telling terms;
- time:     the articles published within a window around the seed's date;
            when it holds too many, the closest quarter by time and the most
            similar of the rest;
- entities: BM25 over named entities (people, companies, places) the seed names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from recommender.index.lexical import LexicalIndex
from recommender.index.state import IndexState
from recommender.ranking.rules import DAY

Query = tuple[np.ndarray, np.ndarray]  # a BM25 query: (term ids, weights), from LexicalIndex.query

SOURCES = ("dense", "lexical", "time", "entities")
WINDOW_LIMIT = 2  # the time source scores at most this many times its share, the closest in time
MARGIN = 16  # fetched beyond a source's share, for the seed and filtered-out articles: one search, not two
CLOSEST = 0.25  # share of the time source taken by closeness alone, before similarity picks the rest

Accept = Callable[[np.ndarray], np.ndarray]  # nums -> which of them a list may show


@dataclass(frozen=True)
class Candidates:
    nums: np.ndarray  # every source's candidates, once each
    by_source: dict[str, np.ndarray]  # each source's own, best first


def gather(state: IndexState, vector: np.ndarray, lexical_query: Query, entity_query: Query, when: float | None,
           accept: Accept, per_source: int, window_days: float, past_only: bool,
           nearest: np.ndarray | None = None) -> Candidates:
    """Up to `per_source` accepted candidates from each source, merged. `nearest`:
    the seed's nearest neighbours, already searched for a batch of seeds."""
    by_source = {
        "dense": dense(state, vector, accept, per_source, nearest),
        "lexical": bm25(state.lexical, lexical_query, accept, per_source),
        "time": around(state, vector, when, accept, per_source, window_days, past_only),
        "entities": bm25(state.entities, entity_query, accept, per_source),
    }
    merged = np.unique(np.concatenate([nums for nums in by_source.values()])).astype(np.int64)
    return Candidates(merged, by_source)


def fetch_size(wanted: int) -> int:
    """How many nearest neighbours to search for `wanted` of them to pass the filters."""
    return max(64, wanted + MARGIN)


def dense(state: IndexState, vector: np.ndarray, accept: Accept, wanted: int,
          nearest: np.ndarray | None = None) -> np.ndarray:
    """Nearest neighbours that pass the filters, widening the search until
    enough pass or the whole index has been seen."""
    fetch = fetch_size(wanted)
    if nearest is not None:
        ok = _passing(nearest, accept)
        if len(ok) >= wanted or len(nearest) >= state.vectors.count:
            return ok[:wanted]
    while True:
        _, nums = state.vectors.search(vector, fetch)
        ok = _passing(nums[0], accept)
        if len(ok) >= wanted or fetch >= state.vectors.count:
            return ok[:wanted]
        fetch *= 4


def _passing(nums: np.ndarray, accept: Accept) -> np.ndarray:
    nums = np.asarray(nums, dtype=np.int64)
    nums = nums[nums >= 0]
    return nums[accept(nums)]


def bm25(lexical: LexicalIndex, query: Query, accept: Accept, wanted: int) -> np.ndarray:
    if len(query[0]) == 0 or len(lexical) == 0:
        return np.zeros(0, dtype=np.int64)
    fetch = wanted + MARGIN
    while True:
        _, nums = lexical.search(query, fetch)
        ok = _passing(nums, accept)
        if len(ok) >= wanted or len(nums) < fetch:
            return ok[:wanted]
        fetch *= 4


def around(state: IndexState, vector: np.ndarray, when: float | None, accept: Accept, wanted: int,
           window_days: float, past_only: bool) -> np.ndarray:
    """The accepted articles within `window_days` of `when`; when there are more
    than `wanted`, the closest in time (a share, CLOSEST) and the most similar of the rest."""
    if when is None or window_days <= 0:
        return np.zeros(0, dtype=np.int64)
    nums = state.timeline.window(when, window_days * DAY, 0.0 if past_only else window_days * DAY,
                                 WINDOW_LIMIT * wanted)  # closest in time first
    nums = np.asarray(nums, dtype=np.int64)
    nums = nums[state.vectors.has(nums) & accept(nums)]
    if len(nums) <= wanted:
        return nums
    closest, rest = nums[: int(wanted * CLOSEST)], nums[int(wanted * CLOSEST):]
    cosines = state.vectors.reconstruct(rest) @ vector
    return np.concatenate([closest, rest[np.argsort(-cosines, kind="stable")[: wanted - len(closest)]]])
