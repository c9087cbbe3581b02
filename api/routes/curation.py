"""Editors' pins and blocks under one article. Every route takes the write key: the
choices are the newsroom's, not the public's."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ArticleId, ServiceDep, WriteAccess
from api.schemas import CurationOut
from recommender.ranking.editorial import Curation

router = APIRouter(tags=["curation"], dependencies=[WriteAccess])


@router.get("/v1/articles/{article_id}/curation", response_model=CurationOut)
def get_curation(article_id: ArticleId, service: ServiceDep) -> CurationOut:
    return CurationOut.of(article_id, service.curation(article_id))


@router.put("/v1/articles/{article_id}/curation", response_model=CurationOut)
def put_curation(article_id: ArticleId, curation: Curation, service: ServiceDep) -> CurationOut:
    """Replace the article's pins and blocks: pins come first in every list under it, in
    this order, when they exist and pass the request's filters; blocked ids never appear.
    Visible at the next page view, kept across re-embeddings and profile switches."""
    service.curate(article_id, curation)
    return CurationOut.of(article_id, curation)


@router.delete("/v1/articles/{article_id}/curation", response_model=CurationOut)
def delete_curation(article_id: ArticleId, service: ServiceDep) -> CurationOut:
    """Drop the article's pins and blocks: its list is the ranking's again."""
    service.curate(article_id, Curation())
    return CurationOut.of(article_id, Curation())
