"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz")
def readyz(service: ServiceDep) -> JSONResponse:
    if service.failure:
        return JSONResponse({"status": "failed", "detail": service.failure}, status_code=503)
    if service.store_damage:  # nothing rebuilds a store: out of rotation until it is restored
        return JSONResponse({"status": "store damaged", "detail": service.store_damage}, status_code=503)
    if service.rebuilding:  # a damaged index file: nothing it says is trusted until rebuilt
        return JSONResponse({"status": "rebuilding", "detail": service.rebuilding}, status_code=503)
    if service.warming:  # a large index still loading: precomputed lists and writes are served from the store
        return JSONResponse({"status": "warming", "index_loaded": False, **asdict(service.warming_facts())})
    if not service.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    snap = service.snapshot
    return JSONResponse({"status": "ready", "index_loaded": True, "index_version": snap.state.version,
                         "model": snap.engine.model,
                         "articles": snap.state.vectors.count, "ranking_profile": snap.engine.profile.name,
                         # a newly activated profile whose lists are being computed; the current one serves meanwhile
                         "ranking_profile_pending": service.lists.preparing,
                         # changed articles whose own lists are being recomputed, then older lists they touched
                         "lists_pending": service.lists.unlisted, "lists_touched": service.lists.touched,
                         # over a shared database, whether this server is the one computing lists
                         "list_worker": bool(service.lists.leading),
                         "applied_change": snap.state.meta.applied_seq})  # how far this server follows the store


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
