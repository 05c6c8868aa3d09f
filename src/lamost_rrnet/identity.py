"""Input identity: what makes two inputs the same input, its text form, and compact hash sets.

An input's identity is the path as supplied (an argument, a ``--list`` line, or a path found
inside a directory argument), normalized with :func:`os.path.normpath`, as bytes
(:func:`os.fsencode`). Linux file names are bytes, not text, so any byte string is an identity.

The catalogue holds identities in one lossless ASCII form (:func:`escape_path`): printable ASCII
stays as it is, a backslash becomes ``\\\\``, every other byte, and a space at the very end,
becomes ``\\xHH`` (two lowercase hex digits). The space at the end is escaped because FITS
readers strip trailing blanks from text columns. :func:`unescape_path` inverts it. Being
ASCII, the form is the same in FITS, CSV and Parquet; being canonical, equal identities have
equal escaped forms, so sets of inputs are kept as hashes of that form (:func:`text_hashes`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable

import numpy as np

# Bytes kept as they are: printable ASCII but the backslash, and a space not at the end.
_UNSAFE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]| \Z")
_ESCAPE = re.compile(r"\\(?:(\\)|x([0-9a-fA-F]{2}))")


def input_identity(path: str | bytes | os.PathLike) -> bytes:
    """The identity of an input path: normalized, as bytes (undecodable names survive)."""
    return os.path.normpath(os.fsencode(path))


def _escape_byte(match: re.Match) -> bytes:
    byte = match.group()
    return b"\\\\" if byte == b"\\" else b"\\x%02x" % byte[0]


def escape_path(raw: bytes) -> str:
    """The catalogue's ASCII form of a byte string; :func:`unescape_path` gives it back."""
    return _UNSAFE.sub(_escape_byte, raw).decode("ascii")


def unescape_path(text: str) -> bytes:
    """The bytes of an :func:`escape_path` form; ValueError if ``text`` is not one."""
    out, end = bytearray(), 0
    for match in _ESCAPE.finditer(text):
        out += _ascii(text[end : match.start()])
        out += b"\\" if match.group(1) else bytes([int(match.group(2), 16)])
        end = match.end()
    out += _ascii(text[end:])
    return bytes(out)


def _ascii(text: str) -> bytes:
    if "\\" in text:
        raise ValueError(f"{text!r}: a backslash not followed by \\ or xHH")
    return text.encode("ascii")


def escape_text(text: str) -> str:
    """:func:`escape_path` of text: its UTF-8 bytes (undecodable surrogates kept as bytes)."""
    return escape_path(text.encode("utf-8", "surrogateescape"))


def path_text(path: str | bytes | os.PathLike) -> str:
    """The escaped identity of ``path``: the catalogue's ``path`` value."""
    return escape_path(input_identity(path))


def text_hashes(texts: Iterable[str]) -> np.ndarray:
    """64-bit hashes (BLAKE2b, 8 bytes, little-endian) of strings, for compact sets of millions.

    Undecodable surrogates are hashed as the bytes they stand for.
    """
    return np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(t.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                "little",
            )
            for t in texts
        ),
        dtype=np.uint64,
    )


def contains(sorted_hashes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which ``hashes`` are in the sorted array ``sorted_hashes``."""
    if sorted_hashes.size == 0:
        return np.zeros(hashes.shape, bool)
    pos = np.clip(np.searchsorted(sorted_hashes, hashes), 0, sorted_hashes.size - 1)
    return sorted_hashes[pos] == hashes


class HashSet:
    """A growing set of uint64 hashes, as a few sorted arrays: 8 bytes a member, 16 at most
    while two arrays merge, never a Python object per member.

    New members go in as a small sorted array; two arrays merge once the older is at most
    twice the size of the newer, so there are about log2(n / batch) arrays to search.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(run.size for run in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(run.nbytes for run in self._runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Which ``hashes`` are in the set."""
        hashes = np.asarray(hashes, np.uint64)
        found = np.zeros(hashes.shape, bool)
        for run in self._runs:
            found |= contains(run, hashes)
        return found

    def add(self, hashes: np.ndarray) -> np.ndarray:
        """Add ``hashes``; True where a hash was not in the set before (the first of repeats)."""
        hashes = np.asarray(hashes, np.uint64)
        unique, first = np.unique(hashes, return_index=True)
        new = ~self.contains(unique)
        mask = np.zeros(hashes.shape, bool)
        mask[first[new]] = True
        if new.any():
            self._runs.append(unique[new])
        while len(self._runs) > 1 and self._runs[-2].size <= 2 * self._runs[-1].size:
            newer, older = self._runs.pop(), self._runs.pop()
            merged = np.concatenate((older, newer))
            del newer, older
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self._runs.append(merged)
        return mask
