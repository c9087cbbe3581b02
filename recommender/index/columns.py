"""Arrays indexed by the store's article number (`num`): what ranking reads of a few
hundred candidates per list, gathered in one step instead of a dictionary lookup each.

At a million articles, a binary search over a sorted array of nums costs some twenty
cache misses per lookup and a Python-level check a microsecond or two; a list reads
several hundred candidates from each of several sources, so both showed up as a
third of a list's cost. A dense array is 4 to 8 bytes per article.
"""

from __future__ import annotations

import numpy as np

from recommender.store.articles import ArticleInfo

ABSENT = -1


class RowMap:
    """num -> row of an immutable array of distinct nums (ABSENT when not there)."""

    def __init__(self, nums: np.ndarray, rows: np.ndarray | None = None):
        nums = np.asarray(nums, dtype=np.int64)
        size = int(nums.max()) + 1 if len(nums) else 0
        self._rows = np.full(size, ABSENT, dtype=np.int64 if size > 2**31 - 1 else np.int32)
        self._rows[nums] = np.arange(len(nums)) if rows is None else rows

    def row(self, num: int) -> int:
        return int(self._rows[num]) if 0 <= num < len(self._rows) else ABSENT

    def rows(self, nums: np.ndarray) -> np.ndarray:
        nums = np.asarray(nums, dtype=np.int64)
        inside = (nums >= 0) & (nums < len(self._rows))
        out = np.full(len(nums), ABSENT, dtype=np.int64)
        out[inside] = self._rows[nums[inside]]
        return out


def where_in_sorted(sorted_nums: np.ndarray, nums: np.ndarray) -> np.ndarray:
    """Each of `nums`' index in the sorted array `sorted_nums`, ABSENT where it is not there:
    for a set of nums that changes too often for a RowMap's dense array."""
    if len(sorted_nums) == 0:
        return np.full(len(nums), ABSENT, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_nums, nums), len(sorted_nums) - 1)
    return np.where(sorted_nums[at] == nums, at, ABSENT)


def content_code(content_hash: str) -> int:
    """The first 64 bits of a content hash: equal texts, equal codes."""
    return int(content_hash[:16], 16) - 2**63 if content_hash else 0


class Columns:
    """Per-article arrays of an index state, kept in step with its `infos`. A clone
    shares the arrays until either side writes (then that side copies them: a few
    tens of MB at a million articles, once per write batch)."""

    def __init__(self) -> None:
        self.present = np.zeros(0, dtype=bool)
        self.when = np.zeros(0)  # Unix time, NaN when undated
        self.section = np.zeros(0, dtype=np.int32)  # a code of the folded section, 0 for none
        self.title = np.zeros(0, dtype=np.int64)  # ArticleInfo.title_key
        self.content = np.zeros(0, dtype=np.int64)  # content_code(content_hash)
        self.withheld = np.zeros(0, dtype=bool)  # not recommendable: never in a list
        self._codes: dict[str, int] = {"": 0}  # shared by clones: append-only
        self._shared = False

    NAMES = ("present", "when", "section", "title", "content", "withheld")

    def set_many(self, infos: list[ArticleInfo]) -> None:
        """Each of these articles' columns, as its info says."""
        if not infos:
            return
        self._own(max(i.num for i in infos) + 1)
        nums = np.fromiter((i.num for i in infos), dtype=np.int64, count=len(infos))
        self.present[nums] = True
        self.when[nums] = np.fromiter((i.published_at.timestamp() if i.published_at else np.nan for i in infos),
                                      dtype=np.float64, count=len(infos))
        self.section[nums] = np.fromiter((self._code(i.section_key) for i in infos), dtype=np.int32, count=len(infos))
        self.title[nums] = np.fromiter((i.title_key for i in infos), dtype=np.int64, count=len(infos))
        self.content[nums] = np.fromiter((content_code(i.content_hash) for i in infos), dtype=np.int64,
                                         count=len(infos))
        self.withheld[nums] = np.fromiter((not i.recommendable for i in infos), dtype=bool, count=len(infos))

    def clone(self) -> "Columns":
        copy = Columns.__new__(Columns)
        for name in self.NAMES:
            setattr(copy, name, getattr(self, name))
        copy._codes = self._codes
        copy._shared = self._shared = True
        return copy

    def remove(self, num: int) -> None:
        if num < len(self.present) and self.present[num]:
            self._own(0)
            self.present[num] = False

    def section_code(self, section_key: str) -> int:
        """The code of a folded section; ABSENT for one no article has."""
        return self._codes.get(section_key, ABSENT)

    def has(self, nums: np.ndarray) -> np.ndarray:
        inside = (nums >= 0) & (nums < len(self.present))
        out = np.zeros(len(nums), dtype=bool)
        out[inside] = self.present[nums[inside]]
        return out

    def others(self, nums: np.ndarray, own: int | None, content_hash: str) -> np.ndarray:
        """Which of `nums` are stored, recommendable articles other than `own` with a text
        other than `content_hash`'s: what any list may show of a seed."""
        out = self.has(nums)
        kept = nums[out]
        out[out] = ((kept != (-1 if own is None else own)) & (self.content[kept] != content_code(content_hash))
                    & ~self.withheld[kept])
        return out

    def _code(self, key: str) -> int:
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self._codes)
        return code

    def _own(self, size: int) -> None:
        if self._shared or size > len(self.present):
            self._grow(size)
            self._shared = False

    def _grow(self, size: int) -> None:
        """Copies every array (a shared one must not change under its readers), with room
        for nums below `size` and a margin, so a stream of new articles copies rarely."""
        size = max(size, len(self.present))
        if size > len(self.present):
            size = max(size, int(len(self.present) * 1.25) + 1024)
        for name in self.NAMES:
            old = getattr(self, name)
            fill = np.nan if name == "when" else 0
            new = np.full(size, fill, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)
