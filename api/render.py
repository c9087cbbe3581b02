"""The drop-in "Citește și" block, and the click-attribution links in it.

Jinja2 autoescaping escapes every field; only http(s) URLs become links, so a
title with <script> or a `javascript:` URL comes out inert.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from recommender.errors import RecommenderError

log = logging.getLogger(__name__)
SAFE_SCHEMES = ("http", "https")


class InvalidTemplate(RecommenderError):
    """The site's block template cannot be read or compiled."""


class Shown(Protocol):
    """What a block shows of a suggestion: the library's RelatedItem and the API's
    RelatedItemOut both are one."""

    @property
    def title(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def section(self) -> str | None: ...


def safe_url(url: str | None) -> str | None:
    """The URL if it is an absolute http(s) URL, else None."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme.lower() in SAFE_SCHEMES and parts.netloc else None


def attributed(url: str | None, seed_id: str, position: int, arm: str | None = None) -> str | None:
    """Adds ref=related&from=<seed>&pos=<n> (and &arm=<arm> in an experiment), keeping the
    URL's own query and fragment."""
    url = safe_url(url)
    if url is None:
        return None
    parts = urlsplit(url)
    ours = ("ref", "from", "pos", "arm")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    query += [("ref", "related"), ("from", seed_id), ("pos", str(position))] + ([("arm", arm)] if arm else [])
    return urlunsplit(parts._replace(query=urlencode(query)))


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("api", "templates"), autoescape=select_autoescape(default=True))


def render_block(items: Sequence[Shown], urls: Sequence[str | None], css_class: str,
                 heading: str = "Citește și", template_path: Path | None = None, arm: str | None = None) -> str:
    """The block in the site's template when one is set, else in the built-in one."""
    if template_path is not None:
        html = site_template(template_path).render(items, urls, css_class, heading, arm)
        if html is not None:
            return html
    template = _environment().get_template("related_block.html")
    return template.render(items=list(zip(items, urls)), css_class=css_class, heading=heading, arm=arm)


class SiteTemplate:
    """The site's own block markup: a Jinja file (RECOMMENDER_BLOCK_TEMPLATE), autoescaped and
    sandboxed. Each item has `title`, `url` (safe, attributed), `published_at`, `section`,
    `image_url` (safe; None when the article has none), `pos` and `pinned`; `arm` is the
    page view's experiment arm (None outside one), for a `data-arm` mark. A template that
    fails while rendering falls back to the built-in block, logged: a page never loses its
    block to it."""

    def __init__(self, path: Path):
        from jinja2 import TemplateError
        from jinja2.sandbox import SandboxedEnvironment

        self.path = Path(path)
        env = SandboxedEnvironment(autoescape=True)
        try:
            self.template = env.from_string(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidTemplate(f"the block template {path} cannot be read: {exc}") from None
        except TemplateError as exc:
            raise InvalidTemplate(f"the block template {path} is not a valid Jinja template: {exc}") from None

    def render(self, items: Sequence[Any], urls: Sequence[str | None], css_class: str, heading: str,
               arm: str | None = None) -> str | None:
        shown = [SimpleNamespace(title=i.title, url=u, published_at=getattr(i, "published_at", None),
                                 section=i.section, image_url=safe_url(getattr(i, "image_url", None)), pos=pos,
                                 pinned=getattr(i, "pinned", False))
                 for pos, (i, u) in enumerate(zip(items, urls), start=1)]
        try:
            return self.template.render(items=shown, css_class=css_class, heading=heading, arm=arm)
        except Exception:  # the operator's template: its bug must not cost the page its block
            log.exception("the block template %s failed; serving the built-in block", self.path)
            return None


@lru_cache(maxsize=4)
def site_template(path: Path) -> SiteTemplate:
    return SiteTemplate(path)


def render_link(item: Shown) -> str:
    """One suggestion as an inline link, for a teaser ("Citește și: <a>...</a>"); its URL
    already made safe (and attributed) by the caller."""
    from markupsafe import escape

    if not item.url:
        return str(escape(item.title))
    return f'<a href="{escape(item.url)}">{escape(item.title)}</a>'


def render_template(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)
