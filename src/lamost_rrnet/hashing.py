"""File hashes: the sha256 a model directory lists and the git blob SHA-1 the registry holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 1 << 20


def _digest(digest, path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's content."""
    return _digest(hashlib.sha256(), path)


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The git blob SHA-1 of a file: sha1(b"blob <size>\\0" + content)."""
    return _digest(hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode()), path)


def file_hash(path: str | os.PathLike[str], kind: str) -> str:
    """``kind:hex`` of a file, for ``kind`` gitsha1 or sha256."""
    if kind == "gitsha1":
        return f"gitsha1:{git_blob_sha1(path)}"
    return f"sha256:{sha256_file(path)}"
