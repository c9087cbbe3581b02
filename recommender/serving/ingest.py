"""JSONL files into the write path, chunk by chunk, with a report of every line.

Reading is separate from writing: `ingest_sources` hands each chunk of valid
articles to a `write` function (the engine's one write path) and counts what it
says happened. A bad line is rejected with its file and number; it never stops
the good lines around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Callable

from recommender.store.articles import Article
from recommender.store.base import UpsertResult
from recommender.store.jsonl import Rejection, open_source, read_jsonl

WRITE_CHUNK = 500


@dataclass(frozen=True)
class Duplicate:
    id: str
    first: str  # "file:line" of the first occurrence
    last: str  # the occurrence that wins


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    empty_bodies: int = 0
    truncated: int = 0  # longer than the embedding window: embedded from the beginning
    embedded: int = 0  # texts sent to the model in this run
    lists_left_to_server: bool = False  # a server serves the data dir and recomputes the lists itself

    def summary(self) -> str:
        return (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"rejected {len(self.rejected)}")


Write = Callable[[list[Article]], list[UpsertResult]]


def count_lines(sources: list[str]) -> int | None:
    """The lines of every source file, for a progress bar's total; None when one is standard
    input or cannot be read (the bar then counts without a total)."""
    total = 0
    for source in sources:
        if source == "-":
            return None
        try:
            with open(source, "rb") as fh:
                blocks = list(iter(lambda: fh.read(1 << 20), b""))
        except OSError:
            return None
        if blocks and blocks[0].lstrip()[:1] == b"[":  # a JSON array: its lines are not its articles
            return None
        total += sum(b.count(b"\n") for b in blocks) + bool(blocks and not blocks[-1].endswith(b"\n"))
    return total


def ingest_sources(sources: list[str], write: Write, report: IngestReport,
                   timezone_: tzinfo = timezone.utc) -> None:
    """Read every source and write its valid articles in chunks of WRITE_CHUNK;
    dates without an offset are in `timezone_`."""
    seen: dict[str, str] = {}
    counted: set[str] = set()
    for source in sources:
        try:
            stream, name = open_source(source)
        except OSError as exc:
            report.rejected.append(Rejection(source, 0, f"cannot read file: {exc.strerror or exc}"))
            continue
        chunk: dict[str, tuple[str, Article]] = {}
        with stream:
            for number, item in read_jsonl(stream, name, timezone_):
                if isinstance(item, Rejection):
                    report.rejected.append(item)
                    continue
                where = f"{name}:{number}"
                if item.id in seen:
                    report.duplicates.append(Duplicate(item.id, seen[item.id], where))
                else:
                    seen[item.id] = where
                chunk.pop(item.id, None)  # within a chunk only the last version is written
                chunk[item.id] = (where, item)
                if len(chunk) >= WRITE_CHUNK:
                    _write_chunk(chunk, write, report, counted)
                    chunk = {}
        _write_chunk(chunk, write, report, counted)


def _write_chunk(chunk: dict[str, tuple[str, Article]], write: Write, report: IngestReport,
                 counted: set[str]) -> None:
    if not chunk:
        return
    articles = [article for _, article in chunk.values()]
    for article, result in zip(articles, write(articles)):
        if article.id in counted:  # a duplicate id is counted once; the report lists it apart
            continue
        counted.add(article.id)
        setattr(report, result.status, getattr(report, result.status) + 1)
        report.truncated += result.text.truncated
        report.empty_bodies += result.text.empty_body
