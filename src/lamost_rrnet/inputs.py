"""Which files a run reads: paths, directories, globs and ``--list`` files, streamed; each
input taken once by its identity (:mod:`lamost_rrnet.identity`); and its shard.

Nothing here collects the inputs, so tens of millions of paths cost a few bytes each (the
sorted hashes of :class:`~lamost_rrnet.identity.HashSet`), never a Python object per path.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from lamost_rrnet.catalogue import shard_header
from lamost_rrnet.errors import UsageError
from lamost_rrnet.identity import (
    HashSet,
    contains,
    escape_text,
    input_identity,
    path_text,
    text_hashes,
)

INPUT_SUFFIXES = (".fits", ".fits.gz")


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _walk(top: str, on_error: Callable[[str], None] | None) -> Iterator[str]:
    """Files named *.fits or *.fits.gz under ``top``, streamed; symlinked directories skipped.

    A directory that cannot be listed is reported to ``on_error`` and skipped.
    """
    stack = [top]
    while stack:
        where = stack.pop()
        subdirs = []
        try:
            with os.scandir(where) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.path)
                    elif entry.name.lower().endswith(INPUT_SUFFIXES):
                        yield entry.path
        except OSError as exc:
            if on_error is not None:
                on_error(f"{escape_text(where)}: cannot be listed ({exc.strerror or exc}): skipped")
        stack.extend(sorted(subdirs, reverse=True))


def iter_input_paths(
    paths: Iterable[str | bytes | os.PathLike] = (),
    list_file: str | os.PathLike[str] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Every input file, lazily, as a plain string (undecodable bytes as surrogates).

    Files are taken as named; directories are searched recursively for ``*.fits`` and
    ``*.fits.gz``; glob patterns are expanded (``**`` recursive). ``list_file`` holds one path per
    line, read as bytes (blank lines and ``#`` comments skipped, surrounding white space
    stripped). Directories that cannot be listed go to ``on_error`` as one-line messages.
    """
    for item in paths:
        path = os.fsdecode(item)
        if os.path.isdir(path):
            yield from _walk(path, on_error)
        elif _has_magic(path) and not os.path.exists(path):
            for match in glob.iglob(path, recursive=True):
                if os.path.isdir(match):
                    yield from _walk(match, on_error)
                else:
                    yield match
        else:
            yield path
    if list_file is not None:
        with open(list_file, "rb") as lines:
            for line in lines:
                line = line.strip()
                if line and not line.startswith(b"#"):
                    yield os.fsdecode(line)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the inputs whose identity hash is ``index`` mod ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise UsageError(f"shard {self.index}/{self.count}: need 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` as the command line gives it."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise UsageError(f"--shard {text!r}: expected K/N, e.g. 3/256")
        return cls(int(index), int(count))

    def header(self) -> dict[str, tuple]:
        """The part's header keys: the algorithm (catalogue.SHARD_ALGORITHM), K and N."""
        return shard_header(self.index, self.count)

    def members(self, block: Sequence[str]) -> np.ndarray:
        """Which paths of ``block`` fall in this shard."""
        return shard_hashes(block) % np.uint64(self.count) == np.uint64(self.index)


def shard_hashes(paths: Iterable[str | bytes | os.PathLike]) -> np.ndarray:
    """BLAKE2b with an 8-byte digest of each input identity's bytes, as little-endian uint64:
    the "blake2b-64" of :data:`lamost_rrnet.catalogue.SHARD_ALGORITHM`.

    Unlike Python's salted ``hash()``, the same in every process, machine and release.
    """
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(input_identity(p), digest_size=8).digest(), "little")
            for p in paths
        ),
        dtype=np.uint64,
    )


@dataclass(frozen=True)
class InputSelection:
    """What to do with each input of a block: bool arrays, one value per input."""

    take: np.ndarray  # the first time this run meets the input, and not yet in the output
    done: np.ndarray  # already in the output (resume)
    repeated: np.ndarray  # met before in this run, not done


def select_inputs(block: Sequence[str], seen: HashSet, done: np.ndarray) -> InputSelection:
    """Split a block of input paths by identity: new, done (``done``: sorted hashes of the
    output's paths) or repeated (``seen``: this run's inputs so far, updated here)."""
    hashes = text_hashes(path_text(p) for p in block)
    in_output = contains(done, hashes)
    new = seen.add(hashes)
    return InputSelection(new & ~in_output, in_output, ~new & ~in_output)


def chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
