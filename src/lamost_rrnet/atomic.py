"""Atomic, durable file writes: readers never see a half-written output, even after a crash.

The content is fsynced before the rename and the directory after it: without the first, a
power cut can leave the new name on an empty or partial file; without the second, the rename
itself may be lost.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# mkstemp and mkdtemp create 0600 files and 0700 directories; outputs should get the mode any
# new file or directory gets (the umask).
_UMASK = _umask()
_MODE = 0o666 & ~_UMASK


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a directory's) content and metadata to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return  # Windows cannot open a directory: its renames are durable by other means
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.replace`` a file whose content is fsynced first, then fsync the target directory."""
    fsync_path(source)
    os.replace(source, target)
    fsync_path(Path(target).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary is ``.<name>.<random>.part``: :func:`remove_stale_temporaries` finds those
    that a killed process left behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _MODE)
        replace_durably(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` left beside ``path`` when killed.

    Call it only while holding the output's lock: a live writer's temporary looks the same.
    """
    target = Path(path)
    # mkstemp's names: the prefix, 8 random characters of [a-z0-9_], the suffix. Matching them
    # exactly keeps the temporaries of another output whose name starts with this one's.
    name = re.compile(re.escape(f".{target.name}.") + r"[a-z0-9_]{8}\.part\Z")
    stale = sorted(
        tmp
        for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.part")
        if name.match(tmp.name) and tmp.is_file()
    )
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; it becomes ``path`` only if the block
    succeeds. Whatever was at ``path`` is replaced: the caller decides whether it may be."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.exists() or target.is_symlink():
            # A directory cannot be renamed over a non-empty one: move the old one aside
            # first, so that ``path`` is missing only between two renames.
            old = tmp.with_name(tmp.name + ".old")
            os.replace(target, old)
            os.replace(tmp, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
