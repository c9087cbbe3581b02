"""Reading JSONL article files (or one JSON array): every bad line is rejected with
its number and reason, and never stops the good lines around it."""

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
    without an offset are in `timezone_`. A file that holds one JSON array is read
    as its list of articles (numbered by item); a file whose first line is not JSON
    at all is rejected once, as not JSONL, rather than line by line; an empty one
    is rejected as empty."""
    lines = enumerate(stream, start=1)
    number, raw = next(((n, r) for n, r in lines if r.strip().lstrip(b"\xef\xbb\xbf")), (0, b""))
    if not number:
        yield 0, Rejection(source, 0, "the file is empty: no articles in it")
        return
    first = raw.strip().lstrip(b"\xef\xbb\xbf")
    if first.startswith(b"["):
        yield from _read_array(raw + b"".join(raw for _, raw in lines), source, timezone_)
        return
    if not first.startswith(b"{"):
        yield number, Rejection(source, number, "not a JSONL file: expected one JSON object per line, "
                                                "e.g. {\"id\": \"a1\", \"title\": \"...\", \"body\": \"...\"}")
        return
    yield number, _line(raw, source, number, timezone_)
    for number, raw in lines:
        if raw.strip():
            yield number, _line(raw, source, number, timezone_)


def _line(raw: bytes, source: str, number: int, timezone_: tzinfo) -> Article | Rejection:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(source, number, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1})")
    return _article(text.strip().lstrip("\ufeff"), source, number, timezone_)


def _article(text: str, source: str, number: int, timezone_: tzinfo) -> Article | Rejection:
    if not text:
        return Rejection(source, number, "empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejection(source, number, f"malformed JSON: {exc.msg} at column {exc.colno}")
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting past the limit
        return Rejection(source, number, f"JSON this program refuses: {_reason(exc)}")
    return _parsed(obj, source, number, timezone_)


def _parsed(obj: object, source: str, number: int, timezone_: tzinfo) -> Article | Rejection:
    try:
        return parse_article(obj, timezone_)
    except InvalidArticle as exc:
        return Rejection(source, number, str(exc))


def _read_array(data: bytes, source: str, timezone_: tzinfo) -> Iterator[tuple[int, Article | Rejection]]:
    """A JSON array of articles; each is numbered by its place in the array."""
    try:
        items = json.loads(data.decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as exc:
        yield 1, Rejection(source, 1, f"not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})")
        return
    except json.JSONDecodeError as exc:
        yield exc.lineno, Rejection(source, exc.lineno, f"a JSON array that does not parse: {exc.msg} "
                                                        f"at line {exc.lineno}, column {exc.colno}")
        return
    except (ValueError, RecursionError) as exc:
        yield 1, Rejection(source, 1, f"JSON this program refuses: {_reason(exc)}")
        return
    if not isinstance(items, list):
        yield 1, Rejection(source, 1, "a JSON value that is not an array of articles")
        return
    for number, obj in enumerate(items, start=1):
        yield number, _parsed(obj, source, number, timezone_)


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
