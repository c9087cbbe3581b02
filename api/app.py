"""The FastAPI app, built by `create_app(settings)`: nothing happens at import time.

Routes live in `api/routes/` by concept; what they depend on in `api/deps.py`;
errors are translated once in `api/errors.py`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.errors import add_error_handlers
from api.metrics import Metrics
from api.middleware import BodyLimitMiddleware, HeadMiddleware, MetricsMiddleware, WriteAuthMiddleware
from api.render import site_template
from api.routes import articles, curation, events, operations, pages, related
from embeddings import Embedder
from recommender.errors import RecommenderError
from recommender.ranking.editorial import load_rules
from recommender.serving.service import Refresher, Service
from recommender.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, embedder: Embedder | None = None, background: bool = True,
               on_failure: Callable[[], None] = lambda: None) -> FastAPI:
    """`background`: load the index in a thread so /healthz answers at once (tests pass False).
    `on_failure`: called when the start cannot finish (`recommender serve` then exits non-zero)."""
    # A bad rules file or template is told now, as one line, not at the first page view.
    load_rules(settings.rules)
    if settings.block_template is not None:
        site_template(settings.block_template)
    service = Service(settings, embedder)
    refresher = Refresher(service, settings.refresh_seconds, settings.save_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if background:
            threading.Thread(target=_start, args=(service, refresher, on_failure), name="recommender-start",
                             daemon=True).start()
        else:
            _start(service, refresher, on_failure)
        yield
        refresher.stop()
        service.stop()
        if service.ready:
            service.save()

    # /docs and /redoc with their scripts served from the fastapi-offline package, not a CDN:
    # the API often runs where the browser reaching it has no internet.
    app = FastAPIOffline(title="recommender", version="0.1.0", lifespan=lifespan,
                         description="Related articles from the publisher's own archive, for the 'Citește și' block.")
    app.state.service = service
    app.state.metrics = Metrics(service)
    add_error_handlers(app)
    routers = [related.router, articles.router, curation.router, events.router, pages.router, operations.router]
    for router in routers:
        app.include_router(router)
    # The routes with their templates, for the metrics' labels: the app's own (docs) and the routers'.
    templates = [r for r in app.router.routes if getattr(r, "path", None)] + [r for x in routers for r in x.routes]
    app.state.heavy_slots = threading.BoundedSemaphore(settings.max_concurrent_drafts)
    app.add_middleware(HeadMiddleware)  # innermost: routing and metrics see a GET's answer
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(WriteAuthMiddleware, keys=settings.api_key_list)  # before the body is read
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes=templates)  # outermost: sees every answer
    return app


def _start(service: Service, refresher: Refresher, on_failure: Callable[[], None]) -> None:
    try:
        service.start()
    except RecommenderError as exc:
        log.error("cannot serve: %s", exc)
        service.failure = str(exc)
    except Exception as exc:  # a bug or the disk: still a reason on /readyz and in the log, never a hang
        log.exception("cannot serve")
        service.failure = f"unexpected {type(exc).__name__}: {exc}"
    if service.failure:
        on_failure()
        return
    refresher.start()
