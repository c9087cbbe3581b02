"""Find a page's "Citește și" blocks and put the related block in their place.

A block is a label ("Citește și", "Citeste si", "Vezi și", ...) followed by
links: either a container holding little else than the label and its links,
or the label element and the link lists right after it.
"""

from __future__ import annotations

import re
from typing import Callable

from recommender.text import fold

LABEL = re.compile(r"^(?:citeste si|cititi si|vezi si|citeste mai mult|va recomandam)\s*[:\-–—]?$")
NEVER_BLOCK = {"html", "body", "main", "article", "[document]"}
MAX_FOREIGN_TEXT = 40  # characters of non-link text a container may hold besides its label


def _own_text(element) -> str:
    return fold(element.get_text(" ", strip=True)).strip()


def _link_text(element) -> int:
    return sum(len(a.get_text(" ", strip=True)) for a in element.find_all("a", href=True))


def _mostly_links(element, label_len: int = 0) -> bool:
    if element.name is None or not element.find("a", href=True):
        return False
    text = len(element.get_text(" ", strip=True))
    return text - _link_text(element) - label_len <= MAX_FOREIGN_TEXT + text // 3


def _labels(soup) -> list:
    found = []
    for element in soup.find_all(True):
        if element.name in ("script", "style") or any(element in parent.descendants for parent in found):
            continue
        text = _own_text(element)
        if LABEL.match(text):
            found.append(element)
        elif element.find("a", href=True) and LABEL.match(_inline_label(element)):
            found.append(element)  # "Citește și: <a>...</a>" in one paragraph
    return found


def _inline_label(element) -> str:
    parts = [s for s in element.find_all(string=True, recursive=False)]
    return fold(" ".join(p.strip() for p in parts if p.strip())).strip()


def _block_for(label) -> list:
    """The elements that make up the block that `label` opens."""
    if label.find("a", href=True):
        return [label]
    label_len = len(label.get_text(" ", strip=True))
    parent = label.parent
    if parent is not None and parent.name not in NEVER_BLOCK and _mostly_links(parent, label_len):
        return [parent]
    block = [label]
    for sibling in label.find_next_siblings(True):
        if not _mostly_links(sibling):
            break
        block.append(sibling)
    return block if len(block) > 1 else []


def rewrite(page: str, make_block: Callable[[], str]) -> tuple[str, int]:
    """(page with every block replaced by make_block(), how many). The page comes
    back byte for byte, and make_block is not called, when there is no block."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page, "html.parser")
    blocks = [b for b in (_block_for(label) for label in _labels(soup)) if b]
    if not blocks:
        return page, 0
    new_block_html = make_block()
    for elements in blocks:
        replacement = BeautifulSoup(new_block_html, "html.parser")
        elements[0].replace_with(replacement)
        for extra in elements[1:]:
            extra.decompose()
    return str(soup), len(blocks)
