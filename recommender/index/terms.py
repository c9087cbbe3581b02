"""A lexical index's vocabulary (term <-> id) as numpy arrays rather than Python objects.

Forked list workers share the parent's index copy-on-write. A dictionary of a
million terms is millions of small Python objects, and they cost twice: a worker
that reads a term string changes its reference count, and every small object a
worker allocates goes into a free slot of the parent's half-empty object pools;
either way the 4 KB page is copied into the worker. At 200,000 articles each of two
workers had copied 89 MB of the pages holding the vocabulary's strings after 6,000
lists (read from /proc/PID/pagemap), 70 % of its own memory; with the strings kept
as bytes but the dictionary kept, 61 MB.

So the terms up to the last `freeze` are arrays: their UTF-8 bytes with offsets
(id -> term), and their hashes sorted (term -> id); those added since are a small
dictionary. Hashes are Python's own, which forked workers share; they never leave the
process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable

import numpy as np

UNKNOWN = -1


@dataclass(frozen=True)
class _Frozen:
    text: bytes  # the terms' UTF-8 bytes, in id order (one object: reading it writes nothing shared)
    offsets: np.ndarray  # int64, one more than the terms: term i is text[offsets[i]:offsets[i + 1]]
    hashes: np.ndarray  # int64, sorted: hash(term) of every term
    ids: np.ndarray  # int64: the id of each of `hashes`

    @classmethod
    def of(cls, terms: list[str], before: "_Frozen | None" = None) -> "_Frozen":
        """The terms (ids following `before`'s) as arrays, after `before`'s."""
        encoded = [term.encode() for term in terms]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        text = b"".join(encoded)
        hashes = np.array(list(map(hash, terms)), dtype=np.int64)
        ids = np.arange(len(terms), dtype=np.int64)
        if before is not None:
            start = len(before.offsets) - 1
            text = before.text + text
            offsets = np.concatenate([before.offsets, offsets[1:] + before.offsets[-1]])
            hashes, ids = np.concatenate([before.hashes, hashes]), np.concatenate([before.ids, ids + start])
        order = np.argsort(hashes, kind="stable")
        return cls(text, offsets, hashes[order], ids[order])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def term(self, term_id: int) -> str:
        return self.text[self.offsets[term_id]:self.offsets[term_id + 1]].decode()

    def find(self, terms: list[str]) -> np.ndarray:
        """Each term's id, UNKNOWN where absent. Two terms of the vocabulary with one hash are
        told apart by their bytes; a term outside the vocabulary whose 64-bit hash is one
        inside's takes its id, a chance of about 1e-13 per term at a million terms."""
        out = np.full(len(terms), UNKNOWN, dtype=np.int64)
        if not len(self) or not terms:
            return out
        wanted = np.array(list(map(hash, terms)), dtype=np.int64)
        order = np.argsort(wanted)  # searched in order: numpy then starts each search from the last
        at = np.empty(len(terms), dtype=np.int64)
        at[order] = np.searchsorted(self.hashes, wanted[order])
        last = len(self.hashes) - 1
        hit = self.hashes[np.minimum(at, last)] == wanted
        out[hit] = self.ids[np.minimum(at, last)[hit]]
        shared = hit & (self.hashes[np.minimum(at + 1, last)] == wanted) & (at < last)
        for i in np.flatnonzero(shared).tolist():
            run = self.ids[at[i]:np.searchsorted(self.hashes, wanted[i], side="right")]
            out[i] = next((int(t) for t in run if self.term(int(t)) == terms[i]), UNKNOWN)
        return out

    def take(self, term_ids: list[int] | np.ndarray) -> list[str]:
        ids = np.asarray(term_ids, dtype=np.int64)
        data = self.text
        return [data[a:b].decode() for a, b in zip(self.offsets[ids].tolist(), self.offsets[ids + 1].tolist())]


class Vocabulary:
    """Term <-> id, append-only: ids 0.. in the order terms were added. Shared by an index's
    clones; one writer adds at a time, readers need no lock (a freeze swaps one tuple)."""

    def __init__(self, terms: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._parts: tuple[_Frozen, dict[str, int], list[str]] = (_Frozen.of(list(terms)), {}, [])

    def __len__(self) -> int:
        frozen, _, added = self._parts
        return len(frozen) + len(added)

    def ids(self, terms: list[str]) -> np.ndarray:
        """Each term's id, UNKNOWN (-1) for a term not in the vocabulary (see `_Frozen.find`)."""
        frozen, recent, _ = self._parts
        if not recent:
            return frozen.find(terms)
        out = np.fromiter((recent.get(t, UNKNOWN) for t in terms), dtype=np.int64, count=len(terms))
        rest = np.flatnonzero(out == UNKNOWN)
        if len(rest) and len(frozen):
            out[rest] = frozen.find([terms[i] for i in rest.tolist()])
        return out

    def add(self, term: str) -> int:
        """A new term's id (the caller found it absent)."""
        with self._lock:
            frozen, recent, added = self._parts
            added.append(term)  # the list first: whoever finds the id finds its term
            recent[term] = term_id = len(frozen) + len(added) - 1
            return term_id

    def __getitem__(self, term_id: int) -> str:
        frozen, _, added = self._parts
        return frozen.term(term_id) if term_id < len(frozen) else added[term_id - len(frozen)]

    def take(self, term_ids: Iterable[int]) -> list[str]:
        frozen, _, _ = self._parts
        term_ids = list(term_ids)
        if not term_ids or max(term_ids) < len(frozen):
            return frozen.take(term_ids)
        return [self[i] for i in term_ids]

    def first(self, count: int) -> list[str]:
        """The first `count` terms, as a save writes them."""
        frozen, _, added = self._parts
        return frozen.take(np.arange(min(count, len(frozen)))) + added[: max(0, count - len(frozen))]

    def freeze(self) -> None:
        """Move the terms added since the last freeze into the arrays: after each block of a
        build (the strings then go with the block's other transient objects, instead of
        staying scattered over the heap's pages), and before forking list workers."""
        with self._lock:
            frozen, _, added = self._parts
            if added:
                self._parts = (_Frozen.of(added, frozen), {}, [])
