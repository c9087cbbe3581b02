"""Readers' events from web-server access logs (the combined log format, gzip too).

A click is a request for an article's page whose query string carries the block's
attribution, `ref=related&from=<seed>&pos=<n>[&arm=<arm>]`; the page's path is resolved
to an article by the stored URLs. An impression is a request the site logs when it
shows the block, e.g. a beacon `GET /px?ref=related-impression&from=<seed>&items=a,b,c
[&arm=<arm>]`. The visitor is the query's `visitor` when the site adds one, else a hash
of the client address and user agent. Crawlers, failed requests and anything else are
skipped and counted.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from recommender.errors import RecommenderError

LINE = re.compile(r'^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<method>[A-Z]+) (?P<target>\S+)[^"]*" '
                  r'(?P<status>\d{3}) \S+(?: "(?P<referer>[^"]*)" "(?P<agent>[^"]*)")?')
CRAWLER = re.compile(r"bot|crawl|spider|slurp|preview|monitor", re.IGNORECASE)
TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"


@dataclass
class LogReport:
    lines: int = 0
    clicks: int = 0
    impressions: int = 0
    unparsed: int = 0  # not the combined log format
    skipped: int = 0  # not ours: other requests, failed ones, crawlers
    unresolved: int = 0  # a click whose page is not a stored article's URL


def path_index(urls: list[tuple[str, str]]) -> dict[str, str]:
    """Stored (id, url) as path -> id: logs carry the path, not the host."""
    return {_path_key(urlsplit(url).path): article_id for article_id, url in urls}


def _path_key(path: str) -> str:
    return unquote(path).rstrip("/").lower() or "/"


def digest(path: Path) -> str:
    """The file's SHA-256: a log imported before is known by its bytes, whatever its name now
    (rotation renames access.log to access.log.1)."""
    sha = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
    except FileNotFoundError:
        raise RecommenderError(f"no log file {path}") from None
    except OSError as exc:
        raise RecommenderError(f"{path} cannot be read: {exc}") from None
    return sha.hexdigest()


def read_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            yield from fh
    except FileNotFoundError:
        raise RecommenderError(f"no log file {path}") from None
    except (OSError, EOFError) as exc:
        raise RecommenderError(f"{path} cannot be read: {exc}") from None


def events_from_log(lines: Iterator[str], paths: dict[str, str], report: LogReport) -> Iterator[dict]:
    """The events of a log's lines, as the dicts POST /v1/events takes."""
    for line in lines:
        report.lines += 1
        match = LINE.match(line)
        if match is None:
            report.unparsed += 1
            continue
        event = _event(match, paths, report)
        if event is not None:
            yield event


def _event(match: re.Match, paths: dict[str, str], report: LogReport) -> dict | None:
    target = urlsplit(match["target"])
    query = {k: v[-1] for k, v in parse_qs(target.query).items()}
    ref = query.get("ref")
    if (ref not in ("related", "related-impression") or match["method"] != "GET"
            or not match["status"].startswith(("2", "3")) or CRAWLER.search(match["agent"] or "")):
        report.skipped += 1
        return None
    try:
        at = datetime.strptime(match["time"], TIME_FORMAT).isoformat()
    except ValueError:
        report.unparsed += 1
        return None
    visitor = query.get("visitor") or hashlib.sha256(f"{match['ip']}\x00{match['agent']}".encode()).hexdigest()[:16]
    common = {"article_id": query.get("from", ""), "visitor": visitor, "at": at,
              **({"arm": query["arm"]} if query.get("arm") else {})}
    if ref == "related-impression":
        report.impressions += 1
        return {"type": "impression", "items": [i for i in query.get("items", "").split(",") if i], **common}
    item = paths.get(_path_key(target.path))
    if item is None:
        report.unresolved += 1
        return None
    report.clicks += 1
    return {"type": "click", "item": item, "pos": _int(query.get("pos")), **common}


def _int(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value
