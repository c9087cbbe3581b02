"""The files an index version is made of: written whole or not at all, durable before
a manifest names them, and checked against the digest the manifest keeps.

An index is a cache of the store, so a file that fails its check is never read: the
version is rebuilt from the store instead (`recommender.index.state.Indexes`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from recommender.errors import IndexDamaged


def write_with(path: Path, write: Callable[[str], object]) -> str:
    """`write` to a temporary name beside `path` (FAISS takes a file name), flushed to
    disk, then renamed into place; its SHA-256. A failure (a full disk) leaves no
    file, not a truncated one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest(path)


def write_file(path: Path, write: Callable[[BinaryIO], object]) -> str:
    """`write_with`, for writers that take an open binary file."""
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return write_with(path, fill)


def atomic_write(path: Path, data: bytes) -> None:
    write_file(path, lambda fh: fh.write(data))


def write_sealed(path: Path, data: bytes) -> None:
    """`data` after a line holding its SHA-256: a manifest is checked as the files it
    names are, so a flipped digit in it (a digest, a token) is found, not read."""
    atomic_write(path, hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def read_sealed(path: Path) -> bytes:
    """What `write_sealed` wrote; IndexDamaged when it fails its seal. A JSON manifest
    without a seal (written by a release before seals) is read as it is."""
    raw = path.read_bytes()
    if raw.startswith(b"{"):
        return raw
    seal, _, data = raw.partition(b"\n")
    if hashlib.sha256(data).hexdigest().encode() != seal:
        raise IndexDamaged(f"{path} is damaged: it does not match the SHA-256 on its first line")
    return data


def fsync_dir(directory: Path) -> None:
    """Make the renames into `directory` durable (a power loss keeps them)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """IndexDamaged unless `path` exists and has the digest its manifest recorded
    (`expected` None: a file from a release that kept no digests, read as it is)."""
    try:
        found = digest(path)
    except OSError as exc:
        raise IndexDamaged(f"{path} is unreadable ({exc.strerror or exc})") from None
    if expected is not None and found != expected:
        raise IndexDamaged(f"{path} is damaged: its SHA-256 is not the one its manifest recorded")
