"""A service answer as the API shows it: attributed URLs, JSON models, the HTML block."""

from __future__ import annotations

from typing import Sequence

from api.render import attributed, render_block, safe_url
from api.schemas import RelatedItemOut, RelatedOut
from recommender.serving.service import Related
from recommender.settings import Settings
from recommender.text.rewrite import Shape


def related_out(settings: Settings, article_id: str | None, related: Related) -> RelatedOut:
    items = []
    for pos, item in enumerate(related.items, start=1):
        url = attributed(item.url, article_id or "draft", pos) if settings.attribution else safe_url(item.url)
        items.append(RelatedItemOut(id=item.id, title=item.title, url=url, published_at=item.published_at,
                                    section=item.section, relevance=item.relevance,
                                    rank_score=item.rank_score, reason=item.reason, pinned=item.pinned))
    return RelatedOut(article_id=article_id, items=items, model=related.model, index_version=related.index_version)


def block_html(settings: Settings, items: list[RelatedItemOut]) -> str:
    """The drop-in block for items whose URLs `related_out` already made safe."""
    return render_block(items, [i.url for i in items], settings.css_class, template_path=settings.block_template)


def shaped_html(items: Sequence[RelatedItemOut], shape: Shape) -> str:
    """The list in the replaced block's own markup (a rewrite without a site template)."""
    return shape.render([(i.title, i.url) for i in items])
