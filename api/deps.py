"""What routes depend on: the service, the settings, the API key check, the
query model of a related request. Each is a FastAPI dependency, so a route's
signature says what it needs."""

from __future__ import annotations

import hmac
import threading
from typing import Annotated, Iterator

from fastapi import Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator

from recommender.ranking.rules import RelatedQuery
from recommender.serving.service import Service
from recommender.settings import Settings
from recommender.store.articles import MAX_ID_LENGTH, check_id

ArticleId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, description="The publisher's article id"),
                      AfterValidator(check_id)]
BEARER = HTTPBearer(auto_error=False, scheme_name="api-key",
                    description="A key from RECOMMENDER_API_KEYS; only the CMS's writes need one")


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.service.settings


def get_visitor(request: Request, visitor: Annotated[str | None, Query(
        max_length=200, description="The reader, as an opaque string the site chooses (or the X-Visitor-Id "
        "header): what an experiment by visitor assigns")] = None) -> str | None:
    found = visitor or request.headers.get("x-visitor-id")
    if found is not None and len(found) > 200:
        raise HTTPException(422, "X-Visitor-Id is longer than 200 characters")
    return found or None


ServiceDep = Annotated[Service, Depends(get_service)]
VisitorDep = Annotated[str | None, Depends(get_visitor)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RelatedQueryDep = Annotated[RelatedQuery, Query()]


def key_problem(authorization: str | None, keys: list[str]) -> str | None:
    """Why a write is refused, or None. With no keys configured, every write is refused."""
    if not keys:
        return "writes are disabled: no API keys are configured (RECOMMENDER_API_KEYS)"
    scheme, _, token = (authorization or "").partition(" ")
    # compare_digest on every key, so the time taken does not tell which key nearly matched
    matched = [hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys]
    if scheme.lower() != "bearer" or not any(matched):
        return "missing or wrong API key: send Authorization: Bearer <key>"
    return None


def require_key(request: Request, settings: SettingsDep,
                _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None) -> None:
    """Declares the scheme in OpenAPI; `WriteAuthMiddleware` has already answered 401
    before the body was read, and this checks again for any route it might miss."""
    problem = key_problem(request.headers.get("authorization"), settings.api_key_list)
    if problem:
        raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})


WriteAccess = Depends(require_key)


def heavy_slot(request: Request) -> Iterator[None]:
    """Open routes that parse and embed text (drafts, page rewrites) run a few at a
    time: past the limit they get a 429 at once, so a flood cannot starve the CMS's
    writes of the embedding engine."""
    slots: threading.BoundedSemaphore = request.app.state.heavy_slots
    if not slots.acquire(blocking=False):
        raise HTTPException(429, "too many draft or rewrite requests at once; retry in a moment",
                            headers={"Retry-After": "1"})
    try:
        yield
    finally:
        slots.release()


HeavySlot = Depends(heavy_slot)
