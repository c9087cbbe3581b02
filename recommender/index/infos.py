"""Every article's `ArticleInfo`, held as one compact JSON record per article in a
byte array, not as a Python object each.

The objects (an ArticleInfo, its strings, its datetime and two dictionary entries)
took about 690 bytes each (tracemalloc, 200,000 synthetic articles), and every forked
list worker that read them copied their pages: a Python read changes a reference
count. The records and their lookup arrays take 288 bytes, and reading an array
changes nothing, so forked workers share them. An info is decoded when asked for:
ranking asks for a list's dozen items, and reads its few hundred candidates from
`Columns`.

Like the lexical index: an immutable base plus the articles changed since,
folded into a new base once they are many.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from datetime import datetime

import numpy as np

from recommender.index.columns import ABSENT, RowMap
from recommender.store.articles import ArticleInfo

FOLD_AT = 20_000  # changed articles kept apart before they are folded into the base
FIELDS = ("id", "title", "url", "published_at", "section", "language", "content_hash", "tags", "recommendable",
          "image_url", "section_key", "title_key")


def encode(info: ArticleInfo) -> bytes:
    values = [getattr(info, name) for name in FIELDS]
    values[3] = info.published_at.isoformat() if info.published_at else None
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


def decode(num: int, record: bytes) -> ArticleInfo:
    """The info as it was encoded; its keys are read back, not computed again (folding a
    headline took two thirds of a decode)."""
    values = json.loads(record)
    values[3] = datetime.fromisoformat(values[3]) if values[3] else None
    values[7] = tuple(values[7])
    info = object.__new__(ArticleInfo)
    object.__setattr__(info, "num", num)
    for name, value in zip(FIELDS, values):
        object.__setattr__(info, name, value)
    return info


def id_hash(article_id: str) -> int:
    return hash(article_id)  # per process, which is all the table needs: it is never saved


class _Records:
    """Encoded infos, row by row; `nums` and the ids' hashes find a row. Never changed in place."""

    def __init__(self, nums: np.ndarray, offsets: np.ndarray, blob: np.ndarray, hashes: np.ndarray):
        self.nums, self.offsets, self.blob, self.hashes = nums, offsets, blob, hashes
        self.rows = RowMap(nums)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[self.order]

    @classmethod
    def empty(cls) -> "_Records":
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.nums)

    def record(self, row: int) -> bytes:
        return self.blob[self.offsets[row]:self.offsets[row + 1]].tobytes()

    def info(self, row: int) -> ArticleInfo:
        return decode(int(self.nums[row]), self.record(row))

    def rows_of(self, article_id: str) -> Iterator[int]:
        """The rows whose id hashes as `article_id` does (almost always one, or none)."""
        h = id_hash(article_id)
        at = int(np.searchsorted(self.sorted_hashes, h))
        while at < len(self.sorted_hashes) and self.sorted_hashes[at] == h:
            yield int(self.order[at])
            at += 1

    def folded(self, gone: set[int], added: dict[int, ArticleInfo]) -> "_Records":
        """A new base: this one's rows without `gone`, then `added`."""
        keep = np.ones(len(self.nums), dtype=bool)
        if gone:
            rows = self.rows.rows(np.fromiter(gone, dtype=np.int64, count=len(gone)))
            keep[rows[rows != ABSENT]] = False
        # The kept rows' bytes as runs between the gone rows: a few slices, not an index per byte.
        edges = np.flatnonzero(np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8)))
        runs = [self.blob[self.offsets[a]:self.offsets[b]] for a, b in zip(edges[::2], edges[1::2])]
        new = [encode(info) for info in added.values()]
        blob = np.concatenate(runs + [np.frombuffer(b"".join(new), dtype=np.uint8)])
        sizes = np.diff(self.offsets)[keep]
        new_sizes = np.fromiter((len(r) for r in new), dtype=np.int64, count=len(new))
        offsets = np.concatenate([[0], np.cumsum(np.concatenate([sizes, new_sizes]))]).astype(np.int64)
        nums = np.concatenate([self.nums[keep], np.fromiter(added, dtype=np.int64, count=len(added))])
        hashes = np.concatenate([self.hashes[keep], np.fromiter((id_hash(i.id) for i in added.values()),
                                                                dtype=np.int64, count=len(added))])
        return _Records(nums, offsets, blob, hashes)


class InfoTable(MutableMapping[int, ArticleInfo]):
    """num -> ArticleInfo; `ids` maps an article's id to its num."""

    def __init__(self) -> None:
        self._base = _Records.empty()
        self._gone: set[int] = set()  # base nums deleted or replaced since the base was built
        self._added: dict[int, ArticleInfo] = {}  # added or replaced since
        self._added_ids: dict[str, int] = {}
        self.ids = IdMap(self)

    def clone(self) -> "InfoTable":
        """A copy to change while readers keep this one: the base is shared."""
        copy = InfoTable()
        copy._base = self._base
        copy._gone, copy._added, copy._added_ids = set(self._gone), dict(self._added), dict(self._added_ids)
        return copy

    def __getitem__(self, num: int) -> ArticleInfo:
        info = self._added.get(num)
        if info is not None:
            return info
        row = self._base_row(num)
        if row == ABSENT:
            raise KeyError(num)
        return self._base.info(row)

    def __contains__(self, num: object) -> bool:
        if not isinstance(num, (int, np.integer)):
            return False
        return num in self._added or self._base_row(int(num)) != ABSENT

    def _base_row(self, num: int) -> int:
        return ABSENT if num in self._gone else self._base.rows.row(num)

    def __setitem__(self, num: int, info: ArticleInfo) -> None:
        self._drop(num)
        self._added[num] = info
        self._added_ids[info.id] = num

    def __delitem__(self, num: int) -> None:
        if num not in self:
            raise KeyError(num)
        self._drop(num)

    def _drop(self, num: int) -> None:
        old = self._added.pop(num, None)
        if old is not None:
            self._added_ids.pop(old.id, None)
        if self._base.rows.row(num) != ABSENT:
            self._gone.add(num)

    def __iter__(self) -> Iterator[int]:
        for num in self._base.nums.tolist():
            if num not in self._gone:
                yield num
        yield from list(self._added)

    def __len__(self) -> int:
        return len(self._base) - len(self._gone) + len(self._added)

    def find(self, article_id: str) -> int | None:
        num = self._added_ids.get(article_id)
        if num is not None:
            return num
        for row in self._base.rows_of(article_id):
            num = int(self._base.nums[row])
            if num not in self._gone and json.loads(self._base.record(row))[0] == article_id:
                return num
        return None

    def maybe_fold(self, at: int = FOLD_AT) -> None:
        """Fold the changed articles into a new base once they are `at` or more."""
        if len(self._added) + len(self._gone) >= at:
            self._base = self._base.folded(self._gone, self._added)
            self._gone, self._added, self._added_ids = set(), {}, {}


class IdMap(Mapping[str, int]):
    """An InfoTable's articles by id: a view, always current."""

    def __init__(self, table: InfoTable):
        self._table = table

    def __getitem__(self, article_id: str) -> int:
        num = self._table.find(article_id) if isinstance(article_id, str) else None
        if num is None:
            raise KeyError(article_id)
        return num

    def __contains__(self, article_id: object) -> bool:
        return isinstance(article_id, str) and self._table.find(article_id) is not None

    def __iter__(self) -> Iterator[str]:
        for num in self._table:
            yield self._table[num].id

    def __len__(self) -> int:
        return len(self._table)
