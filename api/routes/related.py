"""Suggestions: for a stored article (JSON or a drop-in HTML block) and for a draft."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from api.deps import ArticleId, HeavySlot, RelatedQueryDep, ServiceDep, SettingsDep, VisitorDep
from api.present import block_html, related_out
from api.schemas import DraftIn, RelatedOut

router = APIRouter(tags=["related"])


@router.get("/v1/articles/{article_id}/related", response_model=RelatedOut)
def related(article_id: ArticleId, query: RelatedQueryDep, service: ServiceDep, settings: SettingsDep,
            visitor: VisitorDep) -> RelatedOut:
    """Suggestions for a stored article: precomputed when the request allows, live otherwise.
    In a running experiment the answer names its `experiment` and `arm`; the arm `original`
    answers no items, with a `note`: the page shows its own block."""
    answer = service.related(article_id, query.k, query.to_filters(), query.diversity, visitor)
    return related_out(settings, article_id, answer)


@router.get("/v1/articles/{article_id}/related.html", response_class=HTMLResponse,
            responses={204: {"description": "this page view's experiment arm keeps the page's own block"}})
def related_html(article_id: ArticleId, query: RelatedQueryDep, service: ServiceDep, settings: SettingsDep,
                 visitor: VisitorDep) -> Response:
    """The same list as a drop-in "Citește și" block (every field escaped), marked with its
    experiment arm (`data-arm`); 204 when the arm keeps the page's own block."""
    answer = service.related(article_id, query.k, query.to_filters(), query.diversity, visitor)
    if answer.original:
        return Response(status_code=204, headers={"X-Arm": answer.arm or ""})
    return HTMLResponse(block_html(settings, related_out(settings, article_id, answer).items, answer.arm))


@router.post("/v1/related", response_model=RelatedOut, dependencies=[HeavySlot])
def related_draft(draft: DraftIn, service: ServiceDep, settings: SettingsDep) -> RelatedOut:
    """Suggestions for a draft that is not stored yet."""
    answer = service.related_to_text(draft.title, draft.body, draft.k, draft.filters.to_filters(),
                                     draft.diversity, draft.date(settings.tzinfo), draft.section, tuple(draft.tags))
    return related_out(settings, None, answer)
