"""File names read from a manifest or a registry must stay inside the directory they name."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath


def stays_inside(name: object) -> bool:
    """Whether ``name`` is a non-empty relative path without ``..``, on POSIX and Windows
    alike: joined to a directory, it names something inside that directory."""
    if not isinstance(name, str) or not name or "\0" in name:
        return False
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(name)
        if path.drive or path.root or ".." in path.parts:
            return False
    return True
