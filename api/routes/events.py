"""Readers' events from the site: impressions of the block and clicks on its items."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.deps import ServiceDep, WriteAccess
from api.routes.articles import Undecodable, bulk_entries
from api.schemas import EventResultOut, EventsOut

router = APIRouter(tags=["events"])


@router.post("/v1/events", response_model=EventsOut, dependencies=[WriteAccess])
async def events(request: Request, service: ServiceDep) -> EventsOut:
    """Impressions and clicks, a JSON array or JSONL (at most 10,000 a request):
    `{"type": "impression", "article_id", "items": [ids in shown order], "arm", "visitor", "at"}`,
    `{"type": "click", "article_id", "item", "pos", "arm", "visitor", "at"}` (`arm`, `visitor`
    and `at` optional). Each event is stored or rejected with its reason; one bad event
    never costs the others."""
    entries = bulk_entries(await request.body(), request.headers.get("content-type", ""), "events")
    decoded = [(i, v) for i, v in entries if not isinstance(v, Undecodable)]
    results = await run_in_threadpool(service.audience.record, decoded, len(entries))
    out = [EventResultOut(index=r.index, status=r.status, error=r.error) for r in results]
    out += [EventResultOut(index=i, status="rejected", error=v) for i, v in entries if isinstance(v, Undecodable)]
    out.sort(key=lambda r: r.index)
    stored = sum(1 for r in out if r.status == "stored")
    return EventsOut(stored=stored, rejected=len(out) - stored, results=out)
