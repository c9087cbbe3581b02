"""Domain errors to HTTP answers, translated once, here. Bodies carry the
message only: the CLI's hints (`RecommenderError.hint`) name commands a page
backend cannot run."""

from __future__ import annotations

from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from recommender.errors import (
    ArticleNotFound,
    IndexDamaged,
    IndexMismatch,
    InvalidArticle,
    InvalidQuery,
    ModelError,
    NoIndex,
    RecommenderError,
    StoreUnavailable,
)
from recommender.store.articles import describe_validation_error

STATUS = [  # most specific first: the first match wins
    (ArticleNotFound, 404),
    (InvalidArticle, 422),
    (InvalidQuery, 422),
    (NoIndex, 503),
    (StoreUnavailable, 503),  # the database is away: nothing was written, a retry may succeed
    (IndexMismatch, 503),
    (IndexDamaged, 503),
    (ModelError, 503),
    (RecommenderError, 400),
]


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RecommenderError)
    async def domain(request: Request, exc: RecommenderError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(ValidationError)
    async def validation(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation_error(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_request_errors(exc.errors())}, status_code=422)


def describe_request_errors(errors: Sequence[Any]) -> str:
    """One line, the same shape as every other 4xx. The offending input is not
    echoed: it may be huge, or not representable in JSON (NaN)."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON body: {err.get('ctx', {}).get('error', 'cannot be parsed')}")
            continue
        where = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        field = ".".join(where) or "body"
        message = ("is required" if err.get("type") == "missing"
                   else err.get("msg", "invalid").removeprefix("Value error, "))
        parts.append(f"{field}: {message}")
    return "; ".join(parts) or "invalid request"
