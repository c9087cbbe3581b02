"""The drop-in "Citește și" block, and the click-attribution links in it.

Jinja2 autoescaping escapes every field; only http(s) URLs become links, so a
title with <script> or a `javascript:` URL comes out inert.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SAFE_SCHEMES = ("http", "https")


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


def attributed(url: str | None, seed_id: str, position: int) -> str | None:
    """Adds ref=related&from=<seed>&pos=<n>, keeping the URL's own query and fragment."""
    url = safe_url(url)
    if url is None:
        return None
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("ref", "from", "pos")]
    query += [("ref", "related"), ("from", seed_id), ("pos", str(position))]
    return urlunsplit(parts._replace(query=urlencode(query)))


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("api", "templates"), autoescape=select_autoescape(default=True))


def render_block(items: Sequence[Shown], urls: Sequence[str | None], css_class: str,
                 heading: str = "Citește și") -> str:
    template = _environment().get_template("related_block.html")
    return template.render(items=list(zip(items, urls)), css_class=css_class, heading=heading)


def render_link(item: Shown) -> str:
    """One suggestion as an inline link, for a teaser ("Citește și: <a>...</a>"); its URL
    already made safe (and attributed) by the caller."""
    from markupsafe import escape

    if not item.url:
        return str(escape(item.title))
    return f'<a href="{escape(item.url)}">{escape(item.title)}</a>'


def render_template(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)
