"""Romanian text normalization: the first thing every article goes through.

Three forms of the same text are used downstream:
- `clean_text`: readable text (NFC, comma-below ș/ț, HTML and page boilerplate removed),
  which is what gets embedded;
- `fold`: lowercase without diacritics, so "Ședința" and "sedinta" compare equal;
- `terms`: folded, stop-word-free, stemmed tokens for lexical (BM25) matching.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from html import unescape
from typing import Callable

from recommender.text.markup import Element, Text, TooDeep, parse

# Romanian has two visually similar forms of ș/ț: the legacy cedilla (ş ţ, from
# ISO-8859-2 days) and the correct comma-below. Old archives mix both.
_CEDILLA_TO_COMMA = str.maketrans({"ş": "ș", "Ş": "Ș", "ţ": "ț", "Ţ": "Ț"})

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACES = re.compile(r"[ \t\u00a0\u200b]+")
_HTML_HINT = re.compile(r"<\s*(?:/?[a-zA-Z][a-zA-Z0-9]*\b[^>]*|!--)>?")

# Labels that open a block of links to other stories ("Citește și" and its
# kin), folded: the page rewrite replaces such blocks, and ingest drops them
# from the text it embeds. One list for both.
RELATED_LABELS = (
    "citeste si", "cititi si", "vezi si", "citeste mai mult", "vezi mai mult", "va recomandam", "iti recomandam",
    "recomandari", "articole similare", "articole recomandate", "pe aceeasi tema", "te-ar putea interesa",
    "mai multe stiri",
)
# Other page slots that are not the article: dropped at ingest, never rewritten.
_OTHER_LABELS = ("recomandarea video",)
_LABEL = "(?:" + "|".join(re.escape(label) for label in RELATED_LABELS + _OTHER_LABELS) + ")"
# The label alone, or followed by a separator and the inline teaser ("Citește și: X").
_LABEL_LINE = re.compile(rf"^{_LABEL}\s*(?:[:\-–—»]\s*(?P<rest>.*))?$")
_RELATED_LABEL = re.compile(r"^(?:" + "|".join(re.escape(label) for label in RELATED_LABELS) + r")\s*[:\-–—»]?$")


def is_related_label(text: str) -> bool:
    """'Citește și', 'CITITI SI:', 'Vă recomandăm' ...: any case, with or without
    diacritics and a colon."""
    folded = " ".join(fold(text).split())
    return len(folded) <= 40 and bool(_RELATED_LABEL.match(folded))
_JUNK_LINE = re.compile(
    r"^(?:distribuie|share|foto|video|sursa foto|urmareste[- ]ne\b.*|aboneaza[- ]te\b.*"
    r"|comentarii|publicitate|advertisement)\s*:?\s*$"
)
_BREADCRUMB_SEP = re.compile(r"\s(?:»|›|>|/|\|)\s")
_BREADCRUMB_HOME = ("prima pagina", "acasa", "home", "stiri")
_BLOCK_ITEM_MAX_WORDS = 20
_BLOCK_TAG_SET = frozenset(["p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "section",
                            "article", "header", "footer", "aside", "blockquote", "figure", "figcaption", "table",
                            "title", "dt", "dd"])

_STOPWORDS_RAW = """
a acea aceasta această aceea acei aceia acel acela acele acelea acest acesta aceste acestea acestei
acestor acestui acolo acum ai aia aibă aici al ale alt alta alte altă altceva altcineva am ar are
as aș asta astăzi astfel asupra atat atât atâta atâtea atâți atunci au avea avem aveți avut azi
bine ca că căci care cărei căror cărui cât câte câți către ce cea ceea cei ceilalți cel cele
celor ceva chiar cine cineva cu cum cumva da dacă dar de deci deja deoarece departe deși despre
din dintre doar după ea ei el ele era erau este eu fără fata fi fie fiecare fiind foarte for
fost fusese iar ii îi îl îmi în înainte înapoi încât încă între întrucât îţi îți la le li lor
lui mai mult multă multe mulți ne nici nimic niciun nicio noi nostru noastră nu o ori oricare
orice oricum pe peste pentru poate pot prea prin sa să sau se si şi și sub sunt suntem sunteți
ta tale te ti tot toată toate toți tu tău un una unde unei unele uneori unii unor unui unul
va vă vi voi vom vor vreo vreun zi
"""


def normalize(text: str) -> str:
    """NFC plus comma-below ș/ț; the canonical form every other step starts from."""
    return unicodedata.normalize("NFC", text).translate(_CEDILLA_TO_COMMA)


def fold(text: str) -> str:
    """Lowercase and strip diacritics: 'Ședința' -> 'sedinta'."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def looks_like_html(text: str) -> bool:
    return bool(_HTML_HINT.search(text))


def html_to_text(html: str, cancelled: Callable[[], bool] = lambda: False) -> str:
    """Visible text of an HTML fragment or page, one line per block element, in one
    linear pass (`recommender.text.markup`): link-only teaser paragraphs, scripts,
    navigation and the like dropped."""
    try:
        root = parse(html, cancelled)
    except TooDeep:  # not a page a browser would build either: keep its words, drop its tags
        return _lines(unescape(_TAGS.sub("\n", html)))
    skipped = _link_teasers(root)
    out: list[str] = []
    stack: list = [(child, False) for child in reversed(root.children)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            out.append("\n")
            continue
        if isinstance(node, Text):
            out.append(node.text)
            continue
        if node.tag in _HIDDEN_TAGS or node.inert or id(node) in skipped:
            continue
        block = node.tag in _BLOCK_TAG_SET
        if block:
            out.append("\n")
            stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.children))
    return _lines("".join(out))


def _lines(text: str) -> str:
    # Markup, not blank lines, separates HTML paragraphs; dropping the blank lines
    # keeps a "Citește și" heading and its links in one block.
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


_TAGS = re.compile(r"<[^>]*>")
_HIDDEN_TAGS = frozenset(("script", "style", "noscript", "template", "iframe", "svg", "head", "nav", "textarea",
                          "title", "xmp", "noembed", "noframes"))
_TEASER_TAGS = frozenset(("p", "li", "div"))


def _link_teasers(root: Element) -> set[int]:
    """Ids of short p/li/div elements that are nothing but a link: teasers for other
    stories. Bottom-up word counts, so the cost stays linear however deep the page."""
    nodes = list(root.iter())
    words: dict[int, int] = {}  # element id -> visible words
    linked: dict[int, int] = {}  # element id -> of which inside <a>
    teasers: set[int] = set()
    for node in reversed(nodes):  # children before their parents
        assert node.parent is not None  # iter() yields the root's descendants, never the root
        parent = id(node.parent)
        if isinstance(node, Text):
            count = len(node.text.split())
            words[parent] = words.get(parent, 0) + count
            if node.parent.tag == "a":
                linked[parent] = linked.get(parent, 0) + count
            continue
        if node.tag in _HIDDEN_TAGS:
            continue
        own_words, own_linked = words.get(id(node), 0), linked.get(id(node), 0)
        if node.tag == "a":
            own_linked = own_words
        if node.tag in _TEASER_TAGS and own_words and own_words == own_linked and own_words <= _BLOCK_ITEM_MAX_WORDS:
            teasers.add(id(node))
        words[parent] = words.get(parent, 0) + own_words
        linked[parent] = linked.get(parent, 0) + own_linked
    return teasers


def _is_breadcrumb(folded: str) -> bool:
    return (len(_BREADCRUMB_SEP.findall(folded)) >= 1 and folded.startswith(_BREADCRUMB_HOME)
            and len(folded.split()) <= 15)


def strip_boilerplate(text: str, title: str = "") -> str:
    """Drop breadcrumbs, 'Citește și'/'Recomandarea video' blocks, repeated headlines.

    A block is its label line plus the short lines after it (outlet names and
    headlines), up to the first blank line or long paragraph.
    """
    folded_title = fold(title).strip()
    kept: list[str] = []
    in_block = False
    for raw in text.splitlines():
        line = _SPACES.sub(" ", raw).strip()
        folded = fold(line)
        if not line:
            in_block = False
            continue
        label = _LABEL_LINE.match(folded)
        if label:
            in_block = not label.group("rest")  # an inline "Citește și: X" is one line
            continue
        if in_block and len(line.split()) <= _BLOCK_ITEM_MAX_WORDS:
            continue
        in_block = False
        if _JUNK_LINE.match(folded) or _is_breadcrumb(folded):
            continue
        if folded_title and folded == folded_title:
            continue
        if kept and kept[-1] == line:
            continue
        kept.append(line)
    return "\n".join(kept)


def clean_text(text: str | None, title: str = "") -> str:
    """Body text ready to embed: normalized, HTML gone, boilerplate gone."""
    if not text:
        return ""
    text = normalize(text)
    if looks_like_html(text):
        text = html_to_text(text)
    return strip_boilerplate(text, title)


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    return frozenset(fold(word) for word in _STOPWORDS_RAW.split())


@lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("romanian")


@lru_cache(maxsize=200_000)
def _fold_word(word: str) -> str:
    # An archive's words repeat: folding each again was a tenth of a related list's cost.
    return fold(word)


def surface_words(text: str) -> list[tuple[str, str]]:
    """(lowercase word as written, folded word), stop words and one-letter words removed."""
    stop = _stopwords()
    pairs = ((w.lower(), _fold_word(w)) for w in _WORD.findall(normalize(text)))
    return [(w, f) for w, f in pairs if len(f) > 1 and f not in stop and not f.isdigit()]


def words(text: str) -> list[str]:
    """Folded word tokens, stop words and one-letter tokens removed."""
    return [f for _, f in surface_words(text)]


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)


def stem_words(folded_words: list[str]) -> list[str]:
    # A newsroom's vocabulary repeats: caching word stems makes stemming a lookup.
    return [_stem(w) for w in folded_words]


def terms(text: str) -> list[str]:
    """Stemmed folded words: the vocabulary of lexical matching."""
    return stem_words(words(text))


_SURROGATE = re.compile("[\ud800-\udfff]")


def not_unicode(value: object) -> str | None:
    """Where a decoded JSON value holds a string that is not Unicode text, or None.
    JSON's \\ud800 escapes decode to lone UTF-16 surrogates, which no UTF-8 output
    (a hash, the store, a response) can encode. Iterative: a deep value cannot exhaust
    the stack. Returns the path of the first one, e.g. "body" or "meta.author[0]"."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path or "value"
        elif isinstance(item, dict):
            if any(isinstance(key, str) and _SURROGATE.search(key) for key in item):
                return f"{path or 'value'} (a key)"
            stack.extend(reversed([(child, f"{path}.{key}" if path else str(key)) for key, child in item.items()]))
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{path}[{i}]") for i, child in enumerate(item)]))
    return None


def check_unicode(value: object) -> None:
    """ValueError, with where, when `not_unicode` finds a string that is not text."""
    where = not_unicode(value)
    if where is not None:
        raise ValueError(f"{where} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape), "
                         "which is not text; send valid Unicode")
