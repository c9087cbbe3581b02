"""ASGI middleware: HEAD, the body-size limit, the write-key check and per-route metrics."""

from __future__ import annotations

import json
import time
from typing import Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import Metrics


class HeadMiddleware:
    """HEAD on every GET route, as HTTP asks and load balancers' health checks use:
    the GET's status and headers, without its body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class BodyLimitMiddleware:
    """413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

    async def _too_large(self, send: Send) -> None:
        payload = json.dumps({"detail": f"request body over the {self.limit}-byte limit"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class WriteAuthMiddleware:
    """401 for a write without a valid key, before its body is read or parsed: a
    malformed body from a stranger gets the same answer as a good one."""

    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_write(scope["method"], scope["path"]):
            from api.deps import key_problem

            headers = dict(scope.get("headers") or [])
            problem = key_problem(headers.get(b"authorization", b"").decode("latin-1"), self.keys)
            if problem:
                payload = json.dumps({"detail": problem}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(payload)).encode())]})
                await send({"type": "http.response.body", "body": payload})
                return
        await self.app(scope, receive, send)


def _is_write(method: str, path: str) -> bool:
    return (method in ("PUT", "DELETE") and path.startswith("/v1/articles/")) or (
        method == "POST" and path in ("/v1/articles:bulk", "/v1/events"))


class MetricsMiddleware:
    """Counts every answer, including those given before routing (413, 401),
    labelled by route template; paths that match no route share one label."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]):
        self.app = app
        self.metrics = metrics
        self.routes = routes  # every route with its template, in matching order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        route = route_template(self.routes, scope)  # before routing rewrites the scope

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.observe(route, scope["method"], status, time.perf_counter() - started)


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route a request matches ("/v1/articles/{article_id}"), not its
    path, so that ids do not explode the metric's labels."""
    from starlette.routing import Match

    partial = None
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match == Match.NONE:
            continue
        path = getattr(candidate, "path", None)
        if match == Match.FULL:
            return path or "unmatched"
        partial = partial or path  # the path matched, the method did not (405)
    return partial or "unmatched"
