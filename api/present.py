"""A service answer as the API shows it: attributed URLs, JSON models, the HTML block."""

from __future__ import annotations

from typing import Sequence

from api.render import attributed, render_block, safe_url
from api.schemas import RelatedItemOut, RelatedOut
from recommender.serving.service import Related
from recommender.settings import Settings
from recommender.text.rewrite import Shape

ORIGINAL_NOTE = "this page view's arm keeps the page's own block: show it, not ours"


def related_out(settings: Settings, article_id: str | None, related: Related) -> RelatedOut:
    items = []
    for pos, item in enumerate(related.items, start=1):
        url = (attributed(item.url, article_id or "draft", pos, related.arm) if settings.attribution
               else safe_url(item.url))
        items.append(RelatedItemOut(id=item.id, title=item.title, url=url, published_at=item.published_at,
                                    section=item.section, relevance=item.relevance,
                                    rank_score=item.rank_score, reason=item.reason, pinned=item.pinned,
                                    image_url=safe_url(item.image_url)))
    return RelatedOut(article_id=article_id, items=items, model=related.model, index_version=related.index_version,
                      experiment=related.experiment, arm=related.arm,
                      note=ORIGINAL_NOTE if related.original else None)


def block_html(settings: Settings, items: list[RelatedItemOut], arm: str | None = None) -> str:
    """The drop-in block for items whose URLs `related_out` already made safe; `arm`: the
    experiment arm it shows, marked as `data-arm`."""
    return render_block(items, [i.url for i in items], settings.css_class, template_path=settings.block_template,
                        arm=arm)


def shaped_html(items: Sequence[RelatedItemOut], shape: Shape, arm: str | None = None) -> str:
    """The list in the replaced block's own markup (a rewrite without a site template)."""
    return shape.render([(i.title, i.url) for i in items], {"data-arm": arm} if arm else {})
