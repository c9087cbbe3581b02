"""The FastAPI app, built by `create_app(settings)`: nothing happens at import time."""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from api.metrics import Metrics
from api.render import attributed, render_block, render_template, safe_url
from api.rewrite import rewrite
from api.schemas import (
    ArticleOut, BulkItemOut, BulkOut, DraftIn, RelatedItemOut, RelatedOut, RewriteIn, RewriteOut, WriteOut,
)
from api.service import Refresher, Related, Service
from embeddings import Embedder, EmbedderError
from recommender.articles import Article, describe_validation_error, parse_article
from recommender.errors import (
    ArticleNotFound, IndexMismatch, InvalidArticle, InvalidQuery, NoIndex, RecommenderError,
)
from recommender.ranking import Filters
from recommender.settings import Settings
from recommender.text import clean_text

log = logging.getLogger(__name__)

ArticleId = Annotated[str, Path(min_length=1, max_length=512, description="The publisher's article id")]


def create_app(settings: Settings, embedder: Embedder | None = None, background: bool = True) -> FastAPI:
    """`background`: load the index in a thread so /healthz answers at once (tests pass False)."""
    service = Service(settings, embedder)
    refresher = Refresher(service, settings.refresh_seconds, settings.save_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if background:
            threading.Thread(target=_start, args=(service, refresher), name="recommender-start", daemon=True).start()
        else:
            _start(service, refresher)
        yield
        refresher.stop()
        if service.ready:
            service.save()

    app = FastAPI(title="recommender", version="0.1.0", lifespan=lifespan,
                  description="Related articles from the publisher's own archive, for the 'Citește și' block.")
    app.state.service = service
    metrics = Metrics(service)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    app.add_middleware(_BodyLimitMiddleware, limit=settings.max_body_bytes)
    _add_error_handlers(app)
    require_key = _key_checker(settings.api_key_list)

    def related_query(k: Annotated[int, Query(ge=1, le=50)] = 5,
                      section: Annotated[list[str], Query(description="Only these sections")] = [],
                      exclude_section: Annotated[list[str], Query()] = [],
                      max_age_days: Annotated[float | None, Query(ge=0, description="From the seed's date")] = None,
                      past_only: bool = False,
                      exclude: Annotated[list[str], Query(description="Ids already on the page")] = [],
                      diversity: Annotated[float | None, Query(ge=0, le=1, description="0 relevance only, 1 novelty only")] = None):
        filters = Filters(tuple(section), tuple(exclude_section), None, tuple(exclude), max_age_days, past_only)
        return k, filters, diversity

    def to_out(article_id: str | None, related: Related) -> RelatedOut:
        items = []
        for pos, item in enumerate(related.items, start=1):
            url = attributed(item.url, article_id or "draft", pos) if settings.attribution else safe_url(item.url)
            items.append(RelatedItemOut(id=item.id, title=item.title, url=url, published_at=item.published_at,
                                        section=item.section, score=item.score, reason=item.reason))
        return RelatedOut(article_id=article_id, items=items, model=related.model, index_version=related.index_version)

    def block_html(out: RelatedOut) -> str:
        return render_block(out.items, [i.url for i in out.items], settings.css_class)

    @app.get("/v1/articles/{article_id}/related", response_model=RelatedOut, tags=["related"])
    def related(article_id: ArticleId, query: tuple = Depends(related_query)) -> RelatedOut:
        """Suggestions for a stored article: precomputed when the request allows, live otherwise."""
        k, filters, diversity = query
        return to_out(article_id, service.related(article_id, k, filters, diversity))

    @app.get("/v1/articles/{article_id}/related.html", response_class=HTMLResponse, tags=["related"])
    def related_html(article_id: ArticleId, query: tuple = Depends(related_query)) -> HTMLResponse:
        """The same list as a drop-in "Citește și" block (every field escaped)."""
        k, filters, diversity = query
        return HTMLResponse(block_html(to_out(article_id, service.related(article_id, k, filters, diversity))))

    @app.post("/v1/related", response_model=RelatedOut, tags=["related"])
    def related_draft(draft: DraftIn) -> RelatedOut:
        """Suggestions for a draft that is not stored yet."""
        related = service.related_to_text(draft.title, draft.body, draft.k, draft.filters.to_filters(),
                                          draft.diversity, draft.published_at)
        return to_out(None, related)

    @app.get("/v1/articles/{article_id}", response_model=ArticleOut, tags=["articles"])
    def get_article(article_id: ArticleId) -> ArticleOut:
        stored = service.article(article_id).article
        return ArticleOut(**stored.model_dump(include={"id", "title", "body", "url", "published_at", "section",
                                                       "tags", "language"}), meta=stored.meta)

    @app.put("/v1/articles/{article_id}", response_model=WriteOut, tags=["articles"],
             dependencies=[Depends(require_key)])
    def put_article(article_id: ArticleId, payload: Annotated[dict, _article_body()]) -> WriteOut:
        """Add or replace one article (the JSONL fields); visible in related lists when this returns."""
        if "id" in payload and str(payload["id"]) != article_id:
            raise InvalidArticle(f"id in the body ({payload['id']!r}) differs from the path ({article_id!r})")
        article = parse_article({**payload, "id": article_id})
        (result,) = service.upsert([article])
        return WriteOut(id=article_id, status=result.status)

    @app.post("/v1/articles:bulk", response_model=BulkOut, tags=["articles"], dependencies=[Depends(require_key)])
    async def bulk(request: Request) -> BulkOut:
        """Many articles at once: a JSON array, or JSONL (one article a line). Bad items are
        rejected one by one with their position; the others are stored."""
        raw = await request.body()
        entries = _bulk_entries(raw, request.headers.get("content-type", ""))
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_bulk_write, service, entries)

    @app.delete("/v1/articles/{article_id}", response_model=WriteOut, tags=["articles"],
                dependencies=[Depends(require_key)])
    def delete_article(article_id: ArticleId) -> WriteOut:
        """Remove an article; it disappears from every related list at once."""
        service.delete(article_id)
        return WriteOut(id=article_id, status="deleted")

    @app.post("/v1/rewrite", response_model=RewriteOut, tags=["related"])
    def rewrite_page(body: RewriteIn) -> RewriteOut:
        """Replace the page's "Citește și" block(s) with related suggestions; the page comes
        back unchanged, with replaced 0, when it has none."""
        if body.article_id:
            service.article(body.article_id)  # an unknown id is a 404 even on a page without a block

        def make_block() -> str:
            if body.article_id:
                return block_html(to_out(body.article_id, service.related(body.article_id, 5, Filters())))
            title, text = _page_title_and_text(body.html)
            return block_html(to_out(None, service.related_to_text(title, text, 5, Filters(), None)))

        html, replaced = rewrite(body.html, make_block)
        return RewriteOut(html=html, replaced=replaced)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"])
    def readyz() -> JSONResponse:
        if service.failure:
            return JSONResponse({"status": "failed", "detail": service.failure}, status_code=503)
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        snap = service.snapshot
        return JSONResponse({"status": "ready", "index_version": snap.state.version, "model": snap.engine.model,
                             "articles": snap.state.vectors.count})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/demo/{article_id}", response_class=HTMLResponse, tags=["demo"])
    def demo(article_id: ArticleId) -> HTMLResponse:
        """The article, its old noisy block (if one was ingested as `old_related`) and the new one."""
        stored = service.article(article_id).article
        out = to_out(article_id, service.related(article_id, 5, Filters()))
        old = [o for o in stored.meta.get("old_related", []) if isinstance(o, dict)]
        return HTMLResponse(render_template(
            "demo.html", title=stored.title, section=stored.section or "", css_class=settings.css_class,
            published=stored.published_at.strftime("%Y-%m-%d") if stored.published_at else "",
            paragraphs=clean_text(stored.body, stored.title).splitlines(), old=old, block=block_html(out)))

    return app


def _start(service: Service, refresher: Refresher) -> None:
    try:
        service.start()
    except (RecommenderError, EmbedderError) as exc:
        log.error("cannot serve: %s", exc)
        service.failure = str(exc)
        return
    refresher.start()
    if service.settings.precompute_on_start:
        service.precompute_missing()


def _article_body():
    from fastapi import Body

    return Body(openapi_examples={"article": {"value": {
        "title": "Kievul cere garanții de securitate", "body": "<p>Ministrul de externe...</p>",
        "url": "https://www.example.ro/externe/kiev", "published_at": "2025-03-14T19:05:00+02:00",
        "section": "externe", "tags": ["ucraina"]}}})


def _bulk_entries(raw: bytes, content_type: str) -> list[tuple[int, object]]:
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


def _bulk_write(service: Service, entries: list[tuple[int, object]]) -> BulkOut:
    results: list[BulkItemOut] = []
    valid: dict[str, tuple[int, Article]] = {}
    for index, value in entries:
        if isinstance(value, str):
            results.append(BulkItemOut(index=index, status="rejected", error=value))
            continue
        try:
            article = parse_article(value)
        except InvalidArticle as exc:
            aid = value.get("id") if isinstance(value, dict) and isinstance(value.get("id"), str) else None
            results.append(BulkItemOut(index=index, id=aid, status="rejected", error=str(exc)))
            continue
        valid[article.id] = (index, article)  # a repeated id: the last one wins
    written = service.upsert([a for _, a in valid.values()]) if valid else []
    for (index, article), result in zip(valid.values(), written):
        results.append(BulkItemOut(index=index, id=article.id, status=result.status))
    results.sort(key=lambda r: r.index)
    count = lambda status: sum(1 for r in results if r.status == status)  # noqa: E731
    return BulkOut(added=count("added"), updated=count("updated"), unchanged=count("unchanged"),
                   rejected=count("rejected"), results=results)


def _page_title_and_text(html: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    heading = soup.find("h1") or soup.find("title")
    text = clean_text(html)
    title = heading.get_text(" ", strip=True) if heading else (text.splitlines() or ["pagină"])[0]
    return title[:500] or "pagină", text


def _key_checker(keys: list[str]):
    encoded = [k.encode() for k in keys]

    def require_key(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if not encoded:
            raise HTTPException(401, "writes are disabled: no API keys are configured (RECOMMENDER_API_KEYS)",
                                headers={"WWW-Authenticate": "Bearer"})
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip().encode(), k) for k in encoded):
            raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_key


def _add_error_handlers(app: FastAPI) -> None:
    def handler(status: int):
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        return handle

    app.add_exception_handler(ArticleNotFound, handler(404))
    app.add_exception_handler(InvalidArticle, handler(422))
    app.add_exception_handler(InvalidQuery, handler(422))
    app.add_exception_handler(NoIndex, handler(503))
    app.add_exception_handler(IndexMismatch, handler(503))
    app.add_exception_handler(RecommenderError, handler(400))
    app.add_exception_handler(EmbedderError, handler(503))

    async def validation(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation_error(exc)}, status_code=422)

    app.add_exception_handler(ValidationError, validation)


class _BodyLimitMiddleware:
    """413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        payload = json.dumps({"detail": f"request body over the {self.limit}-byte limit"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _MetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), scope["method"], status,
                                 time.perf_counter() - started)
