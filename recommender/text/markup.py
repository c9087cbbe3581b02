"""HTML as a browser reads it, in one linear pass, with the source offset of
every element and text run.

Why not an HTML library: the page rewrite must splice new markup in at source
offsets and keep every other byte, and the libraries that report offsets
(html.parser) end a script at the first `</script>`, even inside a string of
legacy ad code, where a browser does not. This tokenizer follows the HTML
spec where it matters for finding blocks safely: script data with its escape
states, raw text (style, iframe, noscript, ...), RCDATA (textarea, title),
comments, attributes (the first of a duplicate wins), void elements and the
common implied end tags. Its cost is linear in the page and in its depth
(bounded by MAX_DEPTH), so a hostile page cannot make it quadratic.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

MAX_DEPTH = 512  # what Chromium's parser allows too; deeper pages are refused

VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
RAW_TEXT = frozenset("style xmp iframe noembed noframes noscript".split())  # noscript: as with scripting on
RCDATA = frozenset(("textarea", "title"))
INERT = frozenset(("template",))  # parsed, but never rendered as the page
CLOSES_P = frozenset("""address article aside blockquote details div dl fieldset figcaption figure footer form
    h1 h2 h3 h4 h5 h6 header hgroup hr main menu nav ol p pre section table ul""".split())
IMPLIED_BY = {  # a start tag closes an open element of these kinds first
    "li": ("li",), "dt": ("dt", "dd"), "dd": ("dt", "dd"), "option": ("option",),
    "tr": ("tr", "td", "th"), "td": ("td", "th"), "th": ("td", "th"),
}

_TAG_NAME = re.compile(r"[A-Za-z][^\t\n\f\r />]*")
_ATTR = re.compile(r"""[\t\n\f\r /]*([^\t\n\f\r />][^\t\n\f\r /=>]*)"""  # the name
                   r"""(?:[\t\n\f\r ]*=[\t\n\f\r ]*(?:"([^"]*)"?|'([^']*)'?|([^\t\n\f\r >]*)))?""")  # = value
_BETWEEN_ATTRS = re.compile(r"[\t\n\f\r /]*")
_COMMENT_CLOSE = re.compile(r"--!?>")
_SCRIPT_TOKENS = re.compile(r"<!--|-->|</script(?=[\t\n\f\r />])|<script(?=[\t\n\f\r />])", re.IGNORECASE)


class TooDeep(ValueError):
    """The page nests elements deeper than MAX_DEPTH."""


class Cancelled(Exception):
    """The caller stopped the parse (its client went away)."""


@dataclass(eq=False)
class Text:
    start: int
    end: int
    raw: str
    parent: "Element | None" = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return html.unescape(self.raw)


@dataclass(eq=False)
class Element:
    tag: str
    start: int  # offset of "<"
    open_end: int  # offset after the start tag's ">"
    attrs: dict[str, str] = field(default_factory=dict)
    parent: "Element | None" = field(default=None, repr=False)
    children: list["Element | Text"] = field(default_factory=list, repr=False)
    end: int = -1  # offset after the end tag, or where an implied end closed it
    inert: bool = False  # inside a template: never rendered as part of the page

    def iter(self) -> Iterator["Element | Text"]:
        """Every node below, in document order (iterative: depth never recurses)."""
        stack: list[Element | Text] = list(reversed(self.children))
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, Element):
                stack.extend(reversed(node.children))


def parse(page: str, cancelled: Callable[[], bool] = lambda: False) -> Element:
    """The element tree of `page` under a synthetic root spanning the whole text.
    TooDeep when it nests deeper than MAX_DEPTH; Cancelled when `cancelled()` says so."""
    root = Element("#root", 0, 0, end=len(page))
    stack = [root]
    pos, n, steps = 0, len(page), 0
    while pos < n:
        steps += 1
        if steps % 4096 == 0 and cancelled():
            raise Cancelled()
        lt = page.find("<", pos)
        if lt < 0:
            lt = n
        if lt > pos:
            _add(stack[-1], Text(pos, lt, page[pos:lt]))
        if lt >= n:
            break
        pos = _markup(page, lt, stack)
    for element in stack[1:]:
        element.end = n
    return root


def _markup(page: str, lt: int, stack: list[Element]) -> int:
    """Read the markup at `lt` ("<..."); the offset after it."""
    nxt = page[lt + 1: lt + 2]
    if page.startswith("<!--", lt):
        return _comment_end(page, lt + 4)
    if nxt in ("!", "?"):
        end = page.find(">", lt + 2)
        return len(page) if end < 0 else end + 1
    if nxt == "/":
        name = _TAG_NAME.match(page, lt + 2)
        if name is None:  # "</>" is dropped, "</ x>" is a bogus comment
            end = page.find(">", lt + 2)
            return len(page) if end < 0 else end + 1
        end = page.find(">", name.end())
        end = len(page) if end < 0 else end + 1
        _close(stack, name.group().lower(), lt, end)
        return end
    name = _TAG_NAME.match(page, lt + 1)
    if name is None:
        _add(stack[-1], Text(lt, lt + 1, "<"))
        return lt + 1
    parsed = _attributes(page, name.end())
    if parsed is None:  # an unterminated tag swallows the rest of the page, as in a browser
        return len(page)
    open_end, attrs = parsed
    tag = name.group().lower()
    element = Element(tag, lt, open_end, attrs)
    _open(stack, element)
    if tag in VOID or tag in RAW_TEXT or tag in RCDATA or tag == "script":
        stack.pop()
        if tag in VOID:
            element.end = open_end
            return open_end
        close = _script_end(page, open_end) if tag == "script" else _raw_end(page, open_end, tag)
        element.children.append(Text(open_end, close, page[open_end:close], element))
        end = page.find(">", close)
        element.end = len(page) if close >= len(page) or end < 0 else end + 1
        return element.end
    return open_end


def _attributes(page: str, pos: int) -> tuple[int, dict[str, str]] | None:
    """The attributes of a start tag whose name ends at `pos`, and the offset after its
    ">"; None if the page ends first. As in a browser, a quote opens a value only right
    after "=", and the first of a duplicate attribute wins."""
    attrs: dict[str, str] = {}
    while True:
        pos = _match(_BETWEEN_ATTRS, page, pos).end()
        if pos >= len(page):
            return None
        if page[pos] == ">":
            return pos + 1, attrs
        match = _match(_ATTR, page, pos)
        name = match.group(1).lower()
        if name not in attrs:
            value = next((g for g in match.group(2, 3, 4) if g is not None), "")
            attrs[name] = html.unescape(value)
        pos = match.end()
        if match.group(2) is not None and not page.startswith('"', pos - 1) or (
                match.group(3) is not None and not page.startswith("'", pos - 1)):
            return None  # a quoted value that never closes runs to the end of the page


def _match(pattern: re.Pattern[str], page: str, pos: int) -> re.Match[str]:
    """`pattern.match` for a pattern that matches wherever it is tried (it may match nothing)."""
    match = pattern.match(page, pos)
    assert match is not None
    return match


def _add(parent: Element, node: Element | Text) -> None:
    node.parent = parent
    if isinstance(node, Element):
        node.inert = parent.inert or parent.tag in INERT
    parent.children.append(node)


def _open(stack: list[Element], element: Element) -> None:
    tag = element.tag
    if tag in CLOSES_P and _open_index(stack, "p", stop_at_block=True) is not None:
        _close(stack, "p", element.start, element.start)
    for implied in IMPLIED_BY.get(tag, ()):
        if stack[-1].tag == implied:
            _close(stack, implied, element.start, element.start)
    if len(stack) > MAX_DEPTH:
        raise TooDeep(f"the page nests elements more than {MAX_DEPTH} deep")
    _add(stack[-1], element)
    stack.append(element)


def _open_index(stack: list[Element], tag: str, stop_at_block: bool = False) -> int | None:
    for index in range(len(stack) - 1, 0, -1):
        if stack[index].tag == tag:
            return index
        if stop_at_block and stack[index].tag not in ("b", "i", "em", "strong", "span", "a", "small", "font"):
            return None
    return None


def _close(stack: list[Element], tag: str, at: int, end: int) -> None:
    """Close the nearest open element of `tag` (it ends at `end`) and what is still
    open inside it (they end at `at`, where the closing markup starts)."""
    index = _open_index(stack, tag)
    if index is None:
        return  # a stray end tag is ignored
    for element in stack[index + 1:]:
        element.end = at
    stack[index].end = end
    del stack[index:]


def _comment_end(page: str, body: int) -> int:
    """The offset after a comment whose text starts at `body`, as the standard's comment
    states end it: `<!-->` and `<!--->` are whole (empty) comments, and `--!>` closes
    one as `-->` does (`---->` too: extra dashes stay in the comment end state). A
    tokenizer that waits for `-->` alone hides markup a browser runs."""
    if page.startswith(">", body):
        return body + 1
    if page.startswith("->", body):
        return body + 2
    found = _COMMENT_CLOSE.search(page, body)
    return len(page) if found is None else found.end()


def _raw_end(page: str, start: int, tag: str) -> int:
    found = re.compile(rf"</{tag}(?=[\t\n\f\r />])", re.IGNORECASE).search(page, start)
    return found.start() if found else len(page)


def _script_end(page: str, start: int) -> int:
    """Where a script's text ends, with the spec's escaped and double-escaped states:
    `<!--document.write('<script></script>')//-->` does not end the script."""
    escaped = double = False
    for token in _SCRIPT_TOKENS.finditer(page, start):
        text = token.group().lower()
        if text == "<!--":
            escaped = True
        elif text == "-->":
            escaped = double = False
        elif text == "<script":
            double = double or escaped
        elif double:  # "</script" inside a double-escaped block only leaves it
            double = False
        else:
            return token.start()
    return len(page)
