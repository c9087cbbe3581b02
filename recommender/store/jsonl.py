"""Reading JSONL article files: every bad line is rejected with its number and
reason, and never stops the good lines around it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timezone, tzinfo
from pathlib import Path
from typing import IO, Iterator

from recommender.errors import InvalidArticle
from recommender.store.articles import Article, parse_article


@dataclass(frozen=True)
class Rejection:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def read_jsonl(stream: IO[bytes], source: str,
               timezone_: tzinfo = timezone.utc) -> Iterator[tuple[int, Article | Rejection]]:
    """Yield (line number, article or rejection); blank lines are skipped. Dates
    without an offset are in `timezone_`."""
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            where = f"byte {raw[exc.start]:#04x} at column {exc.start + 1}"
            yield number, Rejection(source, number, f"not valid UTF-8 ({where})")
            continue
        text = text.strip().lstrip("\ufeff")
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, Rejection(source, number, f"malformed JSON: {exc.msg} at column {exc.colno}")
            continue
        except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting past the limit
            yield number, Rejection(source, number, f"JSON this program refuses: {_reason(exc)}")
            continue
        try:
            yield number, parse_article(obj, timezone_)
        except InvalidArticle as exc:
            yield number, Rejection(source, number, str(exc))


def _reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return str(exc).split(";")[0]


def open_source(path: str) -> tuple[IO[bytes], str]:
    """A file path, or '-' for standard input."""
    if path == "-":
        import sys

        return sys.stdin.buffer, "<stdin>"
    return Path(path).open("rb"), path
