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

# Romanian has two visually similar forms of ș/ț: the legacy cedilla (ş ţ, from
# ISO-8859-2 days) and the correct comma-below. Old archives mix both.
_CEDILLA_TO_COMMA = str.maketrans({"ş": "ș", "Ş": "Ș", "ţ": "ț", "Ţ": "Ț"})

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACES = re.compile(r"[ \t\u00a0\u200b]+")
_HTML_HINT = re.compile(r"<\s*(?:/?[a-zA-Z][a-zA-Z0-9]*\b[^>]*|!--)>?")

# Labels that open a block of links unrelated to the article body.
_BLOCK_LABELS = (
    "citeste si", "citeste mai mult", "cititi si", "vezi si", "vezi mai mult",
    "recomandarea video", "recomandari", "va recomandam", "iti recomandam",
    "articole similare", "articole recomandate", "mai multe stiri",
)
_LABEL_LINE = re.compile(
    r"^(?:" + "|".join(re.escape(label) for label in _BLOCK_LABELS) + r")\b\s*[:\-–—]?\s*(?P<rest>.*)$"
)
_JUNK_LINE = re.compile(
    r"^(?:distribuie|share|foto|video|sursa foto|urmareste[- ]ne\b.*|aboneaza[- ]te\b.*"
    r"|comentarii|publicitate|advertisement)\s*:?\s*$"
)
_BREADCRUMB_SEP = re.compile(r"\s(?:»|›|>|/|\|)\s")
_BREADCRUMB_HOME = ("prima pagina", "acasa", "home", "stiri")
_BLOCK_ITEM_MAX_WORDS = 20
_BLOCK_TAGS = ["p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "section", "article",
               "header", "footer", "aside", "blockquote", "figure", "figcaption", "table", "title", "dt", "dd"]

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


def html_to_text(html: str) -> str:
    """Visible text of an HTML fragment or page, one line per block element."""
    from bs4 import BeautifulSoup  # bs4 is slow to import; keep `--help` instant

    soup = BeautifulSoup(html, "lxml")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "svg", "head", "nav"]):
        tag.decompose()
    for block in soup(["p", "li", "div"]):
        if _is_link_teaser(block):
            block.decompose()
    for block in soup(_BLOCK_TAGS):
        block.insert_before("\n")
        block.append("\n")
    # Markup, not blank lines, separates HTML paragraphs; dropping the blank lines
    # keeps a "Citește și" heading and its links in one block.
    lines = (_SPACES.sub(" ", line).strip() for line in soup.get_text("").splitlines())
    return "\n".join(line for line in lines if line)


def _is_link_teaser(element) -> bool:
    """A short paragraph that is nothing but a link: a teaser for another story."""
    text = element.get_text(" ", strip=True)
    links = " ".join(a.get_text(" ", strip=True) for a in element.find_all("a"))
    return bool(text) and text == links and len(text.split()) <= _BLOCK_ITEM_MAX_WORDS


def _is_breadcrumb(folded: str) -> bool:
    return len(_BREADCRUMB_SEP.findall(folded)) >= 1 and folded.startswith(_BREADCRUMB_HOME) and len(folded.split()) <= 15


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


def surface_words(text: str) -> list[tuple[str, str]]:
    """(lowercase word as written, folded word), stop words and one-letter words removed."""
    stop = _stopwords()
    pairs = ((w.lower(), fold(w)) for w in _WORD.findall(normalize(text)))
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
