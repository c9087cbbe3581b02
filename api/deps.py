"""What routes depend on: the service, the settings, the API key check, the
query model of a related request. Each is a FastAPI dependency, so a route's
signature says what it needs."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path, Query, Request

from recommender.ranking import RelatedQuery
from recommender.service import Service
from recommender.settings import Settings

ArticleId = Annotated[str, Path(min_length=1, max_length=512, description="The publisher's article id")]


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.service.settings


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RelatedQueryDep = Annotated[RelatedQuery, Query()]


def require_key(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Writes need `Authorization: Bearer <key>`; with no keys configured, every write is refused."""
    keys = [k.encode() for k in settings.api_key_list]
    scheme, _, token = (authorization or "").partition(" ")
    if not keys:
        raise HTTPException(401, "writes are disabled: no API keys are configured (RECOMMENDER_API_KEYS)",
                            headers={"WWW-Authenticate": "Bearer"})
    # compare_digest on every key, so the time taken does not tell which key nearly matched
    matched = [hmac.compare_digest(token.strip().encode(), k) for k in keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer <key>",
                            headers={"WWW-Authenticate": "Bearer"})


WriteAccess = Depends(require_key)
