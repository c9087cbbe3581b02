"""Whole pages: the rewrite of a page's "Citește și" blocks, and the demo page."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ArticleId, HeavySlot, ServiceDep, SettingsDep, VisitorDep
from api.present import block_html, related_out, shaped_html
from api.render import render_link, render_template
from api.schemas import RelatedItemOut, RewriteIn, RewriteOut
from recommender.errors import InvalidQuery
from recommender.ranking.rules import Filters
from recommender.serving.audience import Assignment
from recommender.text.markup import Cancelled, Element, TooDeep, parse
from recommender.text.normalize import clean_text, html_to_text
from recommender.text.rewrite import page_url, rewrite

router = APIRouter()


@router.post("/v1/rewrite", response_model=RewriteOut, tags=["related"], dependencies=[HeavySlot])
async def rewrite_page(body: RewriteIn, request: Request, service: ServiceDep, settings: SettingsDep,
                       visitor: VisitorDep) -> Response:
    """Replace the page's "Citește și" blocks with related suggestions, keeping every
    other byte of the page; it comes back unchanged, with replaced 0, when it has none.
    The end-of-article block gets the list; each inline teaser one other suggestion.
    Without `article_id`, the page's `<link rel="canonical">` or `og:url` naming a stored
    article's URL makes it the seed; else the page's own text is. In a running experiment
    the answer names the page view's arm; `original` leaves the page byte for byte."""
    if body.article_id:
        service.article(body.article_id)  # an unknown id is a 404 even on a page without a block
    cancel = threading.Event()
    seed_id = body.article_id
    arm: Assignment | None = None

    def suggest(n: int) -> list[RelatedItemOut]:
        if seed_id:
            answer = service.related(seed_id, n, Filters(), visitor=visitor)
        else:
            title, text = page_title_and_text(body.html, cancel.is_set)
            answer = service.related_to_text(title, text, n, Filters(), None)
        return related_out(settings, seed_id, answer).items

    def work() -> tuple[str, int]:
        nonlocal seed_id, arm
        # Without an id, the page's own article is found by the URL it declares, so it never lists itself.
        seed_id = seed_id or service.article_at(page_url(body.html, cancel.is_set))
        arm = service.assignment(seed_id, visitor) if seed_id else None
        if arm is not None and arm.original:
            return body.html, 0
        name = arm.arm if arm else None
        # The site's template when it has one; else the replaced block's own markup, else ours.
        shaped = None if settings.block_template else partial(shaped_html, arm=name)
        return rewrite(body.html, suggest, partial(block_html, settings, arm=name), render_link,
                       cancelled=cancel.is_set, render_shaped=shaped)

    job = asyncio.ensure_future(run_in_threadpool(work))
    deadline = time.monotonic() + settings.request_budget_seconds
    while not job.done():
        await asyncio.wait({job}, timeout=0.2)
        if not job.done() and (time.monotonic() > deadline or await request.is_disconnected()):
            cancel.set()  # the client left, or the budget is spent: the worker stops at its next check
    try:
        html, replaced = job.result()
    except Cancelled:
        if time.monotonic() > deadline:
            raise InvalidQuery(f"the page took longer than the {settings.request_budget_seconds:g} s budget "
                               "to rewrite; send a smaller page") from None
        return Response(status_code=499)
    except TooDeep as exc:
        raise InvalidQuery(str(exc)) from None
    return JSONResponse(RewriteOut(html=html, replaced=replaced, experiment=arm.experiment if arm else None,
                                   arm=arm.arm if arm else None).model_dump())


# The demo page shows the start of an article: cleaning a whole body on an open route
# cost 29.7 s of CPU for a 30 MB one (the CLI ingests bodies of any length).
DEMO_BODY_CHARS = 50_000


@router.get("/demo/{article_id}", response_class=HTMLResponse, tags=["demo"], dependencies=[HeavySlot])
def demo(article_id: ArticleId, service: ServiceDep, settings: SettingsDep) -> HTMLResponse:
    """The article, its old noisy block (if one was ingested as `old_related`) and the new
    one. Its cost is bounded: the first DEMO_BODY_CHARS of the body, a few pages at a time."""
    stored = service.article(article_id).article
    out = related_out(settings, article_id, service.related(article_id, 5, Filters()))
    old = [o for o in stored.meta.get("old_related", []) if isinstance(o, dict)]
    return HTMLResponse(render_template(
        "demo.html", title=stored.title, section=stored.section or "", css_class=settings.css_class,
        published=stored.published_at.strftime("%Y-%m-%d") if stored.published_at else "",
        paragraphs=clean_text(stored.body[:DEMO_BODY_CHARS], stored.title).splitlines(), old=old,
        block=block_html(settings, out.items)))


def page_title_and_text(page: str, cancelled: Callable[[], bool] = lambda: False) -> tuple[str, str]:
    """The page's headline (its first h1, else its title, else its first line) and its text."""
    root = parse(page, cancelled)
    heading = next((n for n in root.iter() if isinstance(n, Element) and n.tag == "h1"), None) or next(
        (n for n in root.iter() if isinstance(n, Element) and n.tag == "title"), None)
    title = " ".join(html_to_text(page[heading.open_end:heading.end]).split()) if heading else ""
    text = clean_text(page, title)
    return (title or (text.splitlines() or ["pagină"])[0])[:500], text
