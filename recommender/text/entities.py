"""Named entities the cheap way: the people, companies and places an article names.

Editors link pieces about the same people and companies, and a dense model
blurs names ("BCR" and "BRD" sit close together). No Romanian NER model
installs offline from PyPI without a download step, and capitalisation
carries most of the signal in news prose, so this is a rule-based extractor:

- a capitalised word not at the start of a sentence ("... a spus Klaus Iohannis");
- an acronym anywhere ("BNR", "OMV", "UE"), two to six capitals;
- consecutive capitalised words form one name ("Banca Transilvania"), kept both
  whole and word by word, so "Iohannis" alone still matches "Klaus Iohannis";
- keys are folded (no case, no diacritics) and stemmed, so "României" and
  "România" are one key.

Sentence-initial words are skipped unless they are acronyms or open a
multi-word name: a capital there says nothing.
"""

from __future__ import annotations

import re

from recommender.text.normalize import _stem, _stopwords, fold, normalize

_SENTENCE_END = re.compile(r"(?<=[.!?:;…])\s+|\n+|\s[-–—]\s")
_TOKEN = re.compile(r"[^\W\d_](?:[^\W_]|['’-](?=[^\W\d_]))*", re.UNICODE)
_ACRONYM = re.compile(r"^[A-ZĂÂÎȘȚ]{2,6}$")
MAX_ENTITIES = 64  # per article: a list of 300 names says nothing about any one of them


def _capitalised(word: str) -> bool:
    return word[0].isupper() and not word.isupper() or bool(_ACRONYM.match(word))


def _key(word: str) -> str:
    return _stem(fold(word))


def _names(sentence: str) -> list[list[str]]:
    """Runs of consecutive capitalised words in one sentence, with their position."""
    runs: list[list[str]] = []
    current: list[str] = []
    first = True
    for match in _TOKEN.finditer(sentence):
        word = match.group()
        if _capitalised(word):
            current.append(word)
            if first:
                current.append("\0")  # marks "this run starts the sentence"
        elif current:
            runs.append(current)
            current = []
        first = False
    if current:
        runs.append(current)
    return runs


def entities(title: str, text: str) -> list[str]:
    """The entity keys of an article, most frequent first, at most MAX_ENTITIES."""
    stop = _stopwords()
    counts: dict[str, int] = {}
    for sentence in _SENTENCE_END.split(normalize(f"{title}\n{text}")):
        for run in _names(sentence):
            at_start = "\0" in run
            run = [w for w in run if w != "\0"]
            if at_start and len(run) == 1 and not _ACRONYM.match(run[0]):
                continue  # a lone capital at the start of a sentence
            words = [w for w in run if fold(w) not in stop and len(w) > 1]
            keys = [_key(w) if not _ACRONYM.match(w) else fold(w) for w in words]
            for key in keys:
                counts[key] = counts.get(key, 0) + 1
            if len(keys) > 1:
                whole = "_".join(keys)
                counts[whole] = counts.get(whole, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [key for key, _ in ranked[:MAX_ENTITIES]]
