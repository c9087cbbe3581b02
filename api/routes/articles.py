"""The CMS's writes, and reading one stored article back."""

from __future__ import annotations

import json
from datetime import tzinfo
from typing import Annotated

from fastapi import APIRouter, Body, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ArticleId, ServiceDep, SettingsDep, WriteAccess
from api.schemas import ArticleOut, BulkItemOut, BulkOut, WriteOut
from recommender.articles import Article, parse_article
from recommender.errors import InvalidArticle, InvalidQuery
from recommender.service import Service

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


def bulk_entries(raw: bytes, content_type: str) -> list[tuple[int, object]]:
    """(index, decoded JSON or an error string) per item."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidQuery("the body is not valid UTF-8") from None
    stripped = text.lstrip()
    if "ndjson" not in content_type and "jsonl" not in content_type and stripped.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidQuery(f"malformed JSON array: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        return list(enumerate(values))
    entries: list[tuple[int, object]] = []
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            entries.append((index, json.loads(line)))
        except json.JSONDecodeError as exc:
            entries.append((index, f"malformed JSON: {exc.msg} at column {exc.colno}"))
    if not entries:
        raise InvalidQuery("no articles in the body: send a JSON array or JSONL")
    return entries


def bulk_write(service: Service, entries: list[tuple[int, object]], timezone_: tzinfo) -> BulkOut:
    results: list[BulkItemOut] = []
    valid: dict[str, tuple[int, Article]] = {}
    for index, value in entries:
        if isinstance(value, str):
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
