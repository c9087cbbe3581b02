"""Whole pages: the rewrite of a page's "Citește și" blocks, and the demo page."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.deps import ArticleId, ServiceDep, SettingsDep
from api.present import block_html, related_out
from api.render import render_template
from api.rewrite import rewrite
from api.schemas import RewriteIn, RewriteOut
from recommender.ranking import Filters
from recommender.text import clean_text

router = APIRouter()


@router.post("/v1/rewrite", response_model=RewriteOut, tags=["related"])
def rewrite_page(body: RewriteIn, service: ServiceDep, settings: SettingsDep) -> RewriteOut:
    """Replace the page's "Citește și" block(s) with related suggestions; the page comes
    back unchanged, with replaced 0, when it has none."""
    if body.article_id:
        service.article(body.article_id)  # an unknown id is a 404 even on a page without a block

    def make_block() -> str:
        if body.article_id:
            answer = service.related(body.article_id, 5, Filters())
        else:
            title, text = page_title_and_text(body.html)
            answer = service.related_to_text(title, text, 5, Filters(), None)
        return block_html(settings, related_out(settings, body.article_id, answer))

    html, replaced = rewrite(body.html, make_block)
    return RewriteOut(html=html, replaced=replaced)


@router.get("/demo/{article_id}", response_class=HTMLResponse, tags=["demo"])
def demo(article_id: ArticleId, service: ServiceDep, settings: SettingsDep) -> HTMLResponse:
    """The article, its old noisy block (if one was ingested as `old_related`) and the new one."""
    stored = service.article(article_id).article
    out = related_out(settings, article_id, service.related(article_id, 5, Filters()))
    old = [o for o in stored.meta.get("old_related", []) if isinstance(o, dict)]
    return HTMLResponse(render_template(
        "demo.html", title=stored.title, section=stored.section or "", css_class=settings.css_class,
        published=stored.published_at.strftime("%Y-%m-%d") if stored.published_at else "",
        paragraphs=clean_text(stored.body, stored.title).splitlines(), old=old, block=block_html(settings, out)))


def page_title_and_text(html: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    heading = soup.find("h1") or soup.find("title")
    text = clean_text(html)
    title = heading.get_text(" ", strip=True) if heading else (text.splitlines() or ["pagină"])[0]
    return title[:500] or "pagină", text
