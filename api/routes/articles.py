"""The CMS's writes, and reading one stored article back."""

from __future__ import annotations

import json
from datetime import tzinfo
from typing import Annotated, Sequence

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ArticleId, ServiceDep, SettingsDep, WriteAccess
from api.schemas import ArticleOut, BulkItemOut, BulkOut, WriteOut
from recommender.errors import InvalidArticle, InvalidQuery
from recommender.serving.service import Service
from recommender.store.articles import Article, parse_article

router = APIRouter(tags=["articles"])

ARTICLE_EXAMPLE = {"article": {"value": {
    "title": "Kievul cere garanții de securitate", "body": "<p>Ministrul de externe...</p>",
    "url": "https://www.example.ro/externe/kiev", "published_at": "2025-03-14T19:05:00+02:00",
    "section": "externe", "tags": ["ucraina"]}}}


@router.get("/v1/articles/{article_id}", response_model=ArticleOut)
def get_article(article_id: ArticleId, service: ServiceDep) -> ArticleOut:
    stored = service.article(article_id).article
    return ArticleOut(**stored.model_dump(include={"id", "title", "body", "url", "published_at", "section",
                                                   "tags", "language"}), meta=stored.meta)


@router.put("/v1/articles/{article_id}", response_model=WriteOut, dependencies=[WriteAccess])
def put_article(article_id: ArticleId, payload: Annotated[dict, Body(openapi_examples=ARTICLE_EXAMPLE)],
                service: ServiceDep, settings: SettingsDep) -> WriteOut:
    """Add or replace one article (the JSONL fields); visible in related lists when this returns."""
    if "id" in payload and str(payload["id"]) != article_id:
        raise InvalidArticle(f"id in the body ({payload['id']!r}) differs from the path ({article_id!r})")
    article = parse_article({**payload, "id": article_id}, settings.tzinfo)
    (result,) = service.upsert([article])
    return WriteOut(id=article_id, status=result.status)


@router.post("/v1/articles:bulk", response_model=BulkOut, dependencies=[WriteAccess])
async def bulk(request: Request, service: ServiceDep, settings: SettingsDep) -> BulkOut:
    """Many articles at once: a JSON array, or JSONL (one article a line). Bad items are
    rejected one by one with their position; the others are stored."""
    entries = bulk_entries(await request.body(), request.headers.get("content-type", ""))
    return await run_in_threadpool(bulk_write, service, entries, settings.tzinfo)


@router.delete("/v1/articles/{article_id}", response_model=WriteOut, dependencies=[WriteAccess])
def delete_article(article_id: ArticleId, service: ServiceDep) -> WriteOut:
    """Remove an article; it disappears from every related list at once."""
    service.delete(article_id)
    return WriteOut(id=article_id, status="deleted")


def bulk_entries(raw: bytes, content_type: str, what: str = "articles") -> list[tuple[int, object]]:
    """(index, decoded JSON or `Undecodable`) per item: one bad item never costs the others."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidQuery("the body is not valid UTF-8") from None
    stripped = text.lstrip()
    items: Sequence[str | None]
    if "ndjson" not in content_type and "jsonl" not in content_type and stripped.startswith("["):
        try:
            return list(enumerate(json.loads(text)))
        except json.JSONDecodeError as exc:
            raise InvalidQuery(f"malformed JSON array: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except (ValueError, RecursionError):  # one hostile item: decode the items one by one
            split = split_json_array(stripped)
            if split is None:
                raise InvalidQuery("malformed JSON array") from None
            items = split
    else:
        items = [line if line.strip() else None for line in text.splitlines()]
    entries = [(index, decode_item(item)) for index, item in enumerate(items) if item is not None]
    if not entries:
        raise InvalidQuery(f"no {what} in the body: send a JSON array or JSONL")
    return entries


class Undecodable(str):
    """Why an item could not be decoded: told apart from an item that is a JSON string."""


def decode_item(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return Undecodable(f"malformed JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return Undecodable("JSON nested too deep")
    except ValueError as exc:  # an integer of thousands of digits
        return Undecodable(f"JSON this program refuses: {str(exc).split(';')[0]}")


def split_json_array(text: str) -> list[str] | None:
    """The top-level items of a JSON array as source text, in one linear pass that
    only tracks strings and depth; None if the text is not one array."""
    items, depth, start, in_string, escaped = [], 0, 1, False, False
    for pos, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                last = text[start:pos].strip()
                if last:
                    items.append(last)
                return items if not text[pos + 1:].strip() else None
        elif char == "," and depth == 1:
            items.append(text[start:pos].strip())
            start = pos + 1
    return None


def bulk_write(service: Service, entries: list[tuple[int, object]], timezone_: tzinfo) -> BulkOut:
    results: list[BulkItemOut] = []
    valid: dict[str, tuple[int, Article]] = {}
    for index, value in entries:
        if isinstance(value, Undecodable):
            results.append(BulkItemOut(index=index, status="rejected", error=value))
            continue
        try:
            article = parse_article(value, timezone_)
        except InvalidArticle as exc:
            aid = value.get("id") if isinstance(value, dict) and isinstance(value.get("id"), str) else None
            results.append(BulkItemOut(index=index, id=aid, status="rejected", error=str(exc)))
            continue
        valid[article.id] = (index, article)  # a repeated id: the last one wins
    written = service.upsert([a for _, a in valid.values()]) if valid else []
    for (index, article), result in zip(valid.values(), written):
        results.append(BulkItemOut(index=index, id=article.id, status=result.status))
    results.sort(key=lambda r: r.index)
    counts = {status: sum(1 for r in results if r.status == status)
              for status in ("added", "updated", "unchanged", "rejected")}
    return BulkOut(**counts, results=results)
