"""Find a page's "Citește și" blocks and splice suggestions in their place,
keeping every other byte of the page as it came.

A block is a label ("Citește și", "Vezi și", "Recomandări", ...: the shared
list in `recommender.text.normalize`) and the links that follow it, up to the first
content that is not a link; or an element that holds nothing but such a
label and its links. Never a container with other content. Inside script,
style, textarea, template, noscript, comments and iframe fallbacks nothing is
touched: a browser does not render them as the page.

One list per page: the last list block gets the full list, other list blocks
are removed, and each inline teaser ("<p><b>Citește și:</b> <a>X</a></p>")
gets one different suggestion in its own form, or is removed when none is left.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from recommender.text.markup import INERT, RAW_TEXT, RCDATA, Element, Text, parse
from recommender.text.normalize import is_related_label

T = TypeVar("T")

NEVER_BLOCK = frozenset(("#root", "html", "body", "main", "article", "head"))
NOT_RENDERED = RAW_TEXT | RCDATA | INERT | {"script"}
INLINE_LABEL = frozenset(("b", "strong", "em", "i", "span", "u", "small", "font", "label"))
SEPARATORS = frozenset(("", "|", "·", "•", ",", "-", "–", "—", "/", ";"))
MAX_FOREIGN_TEXT = 40  # characters of non-link text a link line may hold (an outlet's name, say)
SHORT = 80  # longest text an element may have to be a label


@dataclass
class _Stats:
    text: int = 0  # visible characters
    link_text: int = 0  # of which inside <a href>
    links: int = 0
    short: str | None = ""  # the text while it is at most SHORT characters


@dataclass
class Block:
    start: int
    end: int
    inline: bool
    links: list[Element] = field(default_factory=list)  # the suggestion links it holds


@dataclass(frozen=True)
class Shape:
    """A list block's own markup, to repeat for our items: its source before the first item
    (its element with every attribute, its heading), each item's tags down to the link, the
    link's attributes, and its source after the last item."""

    before: str
    item_open: str
    link_attrs: tuple[tuple[str, str], ...]
    item_close: str
    after: str
    separator: str = "\n"  # what stood between the first two items, when only blanks, <br> or a mark

    def render(self, items: Sequence[tuple[str, str | None]], extra: dict[str, str] | None = None) -> str:
        """The block with (title, safe URL) items in the site's item markup; text is escaped.
        `extra`: attributes added to each link (an experiment's `data-arm`)."""
        pairs = [(n, v) for n, v in self.link_attrs if n not in (extra or {})] + list((extra or {}).items())
        attrs = "".join(f' {name}="{html.escape(value)}"' for name, value in pairs)
        rows = []
        for title, url in items:
            inner = (f'<a{attrs} href="{html.escape(url)}">{html.escape(title)}</a>' if url
                     else html.escape(title))
            rows.append(self.item_open + inner + self.item_close)
        return self.before + self.separator.join(rows) + self.after


@dataclass
class Plan:
    """What replaces each block: the page's byte ranges and their new markup."""

    replacements: list[tuple[int, int, str]]

    def apply(self, page: str) -> str:
        out, pos = [], 0
        for start, end, markup in self.replacements:
            out += [page[pos:start], markup]
            pos = end
        return "".join(out) + page[pos:]


def find_blocks(page: str, cancelled: Callable[[], bool] = lambda: False) -> list[Block]:
    root = parse(page, cancelled)
    stats = _stats(root)
    blocks: list[Block] = []
    covered = -1
    for node in root.iter():
        if node.start < covered or not _rendered(node):
            continue
        label = _label_start(node, stats)
        if label is None:
            continue
        block = _block(node, label, stats)
        if block is not None:
            blocks.append(block)
            covered = block.end
    return blocks


def page_url(page: str, cancelled: Callable[[], bool] = lambda: False) -> str | None:
    """The page's own URL, as it declares it: <link rel="canonical">, else <meta property="og:url">."""
    canonical = og = None
    for node in parse(page, cancelled).iter():
        if not isinstance(node, Element) or not _rendered(node):
            continue
        if node.tag == "link" and "canonical" in node.attrs.get("rel", "").lower().split():
            canonical = canonical or node.attrs.get("href", "").strip() or None
        elif node.tag == "meta" and node.attrs.get("property", "").strip().lower() == "og:url":
            og = og or node.attrs.get("content", "").strip() or None
    return canonical or og


def rewrite(page: str, suggestions: Callable[[int], Sequence[T]], render_list: Callable[[Sequence[T]], str],
            render_link: Callable[[T], str], k: int = 5, cancelled: Callable[[], bool] = lambda: False,
            render_shaped: Callable[[Sequence[T], Shape], str] | None = None) -> tuple[str, int]:
    """(page with its blocks replaced, how many). `suggestions(n)` is asked once, for
    as many as the page needs; it is not called when the page has no block.
    `render_shaped`: renders the list in the replaced block's own `Shape`, when it has one."""
    plan = plan_rewrite(page, suggestions, render_list, render_link, k, cancelled, render_shaped)
    return plan.apply(page), len(plan.replacements)


def plan_rewrite(page: str, suggestions: Callable[[int], Sequence[T]], render_list: Callable[[Sequence[T]], str],
                 render_link: Callable[[T], str], k: int = 5, cancelled: Callable[[], bool] = lambda: False,
                 render_shaped: Callable[[Sequence[T], Shape], str] | None = None) -> Plan:
    """Which byte ranges of the page are replaced, and by what."""
    blocks = find_blocks(page, cancelled)
    if not blocks:
        return Plan([])
    lists = [b for b in blocks if not b.inline]
    teasers = [b for b in blocks if b.inline]
    items = list(suggestions(min(k * bool(lists) + len(teasers), 50)))
    shown, rest = (items[:k], items[k:]) if lists else ([], items)
    replacements = []
    for block in blocks:
        if not block.inline:
            shape = block_shape(page, block) if render_shaped is not None and block is lists[-1] else None
            if block is not lists[-1]:
                markup = ""
            elif shape is not None and render_shaped is not None:
                markup = render_shaped(shown, shape)
            else:
                markup = render_list(shown)
        elif rest:
            markup = _inline(page, block, render_link(rest.pop(0)))
        else:
            markup = ""
        replacements.append((block.start, block.end, markup))
    return Plan(replacements)


def block_shape(page: str, block: Block) -> Shape | None:
    """The block's own markup around its links, when each link sits in an item of its own
    (`<li>`, or a child of the element holding them all); None when that is unclear."""
    anchors = [a for node in block.links for a in _self_and_below(node)
               if isinstance(a, Element) and a.tag == "a" and "href" in a.attrs]
    if not anchors:
        return None
    items = _items(anchors)
    if items is None:
        return None
    chain = _chain(items[0], anchors[0])
    attrs = tuple((n, v) for n, v in anchors[0].attrs.items() if n != "href" and _ATTR_NAME.match(n))
    between = page[items[0].end:items[1].start] if len(items) > 1 else "\n"
    return Shape(page[block.start:items[0].start], "".join(page[e.start:e.open_end] for e in chain[:-1]), attrs,
                 "".join(f"</{e.tag}>" for e in reversed(chain[:-1])), page[items[-1].end:block.end],
                 between if _SEPARATOR.fullmatch(between) else "\n")


_ATTR_NAME = re.compile(r"^[a-zA-Z_:][-a-zA-Z0-9_:.]*$")
_SEPARATOR = re.compile(r"(?:\s|<br\s*/?>|[|·•,;/–—-]){0,40}", re.IGNORECASE)


def _self_and_below(node: Element) -> list[Element | Text]:
    return [node, *node.iter()]


def _items(anchors: list[Element]) -> list[Element] | None:
    """Each anchor's item: below the deepest element holding every anchor, the child holding it;
    for a single anchor, its <li>, or the anchor itself."""
    if len(anchors) == 1:
        li = next((e for e in _ancestors(anchors[0]) if e.tag == "li"), None)
        return [li or anchors[0]]
    paths = [list(reversed(_ancestors(a))) + [a] for a in anchors]
    depth = 0
    while all(len(p) > depth + 1 for p in paths) and len({id(p[depth]) for p in paths}) == 1:
        depth += 1
    items = [p[depth] for p in paths]
    if len({id(i) for i in items}) != len(items):  # two links in one item: not a plain list
        return None
    return items


def _ancestors(node: Element) -> list[Element]:
    out, parent = [], node.parent
    while parent is not None and parent.tag != "#root":
        out.append(parent)
        parent = parent.parent
    return out


def _chain(item: Element, anchor: Element) -> list[Element]:
    """The elements from `item` down to `anchor`, both included."""
    chain = [anchor]
    while chain[-1] is not item and chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    return list(reversed(chain))


def _inline(page: str, block: Block, link: str) -> str:
    """The teaser as it was, with its link swapped for the new one."""
    (old,) = block.links
    return page[block.start:old.start] + link + page[old.end:block.end]


def _rendered(node: Element | Text) -> bool:
    parent = node.parent
    if isinstance(node, Element) and (node.inert or node.tag in NOT_RENDERED):
        return False
    return parent is None or not (parent.inert or parent.tag in NOT_RENDERED)


def _stats(root: Element) -> dict[int, _Stats]:
    """Text and link statistics of every element, bottom-up in one pass."""
    nodes = list(root.iter())
    stats: dict[int, _Stats] = {id(root): _Stats()}
    for node in nodes:
        if isinstance(node, Element):
            stats[id(node)] = _Stats()
    for node in reversed(nodes):  # children before their parents
        assert node.parent is not None  # iter() yields the root's descendants, never the root
        parent = stats[id(node.parent)]
        if isinstance(node, Text):
            if _rendered(node):
                _add_text(parent, node.text, node.parent.tag == "a")
            continue
        own = stats[id(node)]
        if node.tag == "a" and "href" in node.attrs:
            own.links += 1
            own.link_text = own.text
        if _rendered(node):
            parent.links += own.links
            parent.link_text += own.link_text
            _add_text(parent, own.short if own.short is not None else "x" * (SHORT + 1), False, own.text)
    return stats


def _add_text(stats: _Stats, text: str, in_link: bool, length: int | None = None) -> None:
    size = len(text.strip()) if length is None else length
    stats.text += size
    if in_link:
        stats.link_text += size
    if stats.short is not None:
        joined = f"{stats.short} {text}" if stats.short else text
        stats.short = joined if len(joined) <= SHORT and (length is None or length <= SHORT) else None


def _label_start(node: Element | Text, stats: dict[int, _Stats]) -> int | None:
    """Where the label starts, if `node` is one."""
    if isinstance(node, Text):
        text = node.text
        if not text.strip() or not is_related_label(text):
            return None
        return node.start + len(node.raw) - len(node.raw.lstrip())
    own = stats[id(node)]
    if node.tag in NEVER_BLOCK or own.short is None or not is_related_label(own.short):
        return None
    return node.start


def _block(label: Element | Text, start: int, stats: dict[int, _Stats]) -> Block | None:
    """The label and the links after it; widened to its container when that holds nothing else."""
    links, end, members = _links_after(label, stats)
    if not links:
        return None
    inline = (len(links) == 1 and links[0].tag == "a" and links[0].parent is label.parent
              and (isinstance(label, Text) or label.tag in INLINE_LABEL))
    suggestion_links = [links[0]] if inline else links
    container = label.parent
    while (container is not None and container.tag not in NEVER_BLOCK and not container.inert
           and all(_blank(c) or c in members for c in container.children)):
        start, end, members = container.start, container.end, {container}
        container = container.parent
    return Block(start, end, inline, suggestion_links)


def _links_after(label: Element | Text, stats: dict[int, _Stats]) -> tuple[list[Element], int, set]:
    assert label.parent is not None  # labels are found among the root's descendants
    siblings = label.parent.children
    members: set = {label}
    links: list[Element] = []
    pending: list = []  # blanks and separators: part of the block only if a link follows
    end = label.end
    for node in siblings[siblings.index(label) + 1:]:
        if _blank(node) or (isinstance(node, Element) and node.tag == "br"):
            pending.append(node)
            continue
        if not isinstance(node, Element) or not _mostly_links(node, stats):
            break
        members.update(pending, {node})
        pending = []
        links.append(node)
        end = node.end
    return links, end, members


def _blank(node: Element | Text) -> bool:
    return isinstance(node, Text) and node.text.strip() in SEPARATORS


def _mostly_links(element: Element, stats: dict[int, _Stats]) -> bool:
    own = stats[id(element)]
    if own.links == 0:
        return False
    return own.text - own.link_text <= MAX_FOREIGN_TEXT + own.text // 3
