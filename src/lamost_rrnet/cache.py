"""The user cache directory shared by downloaded models and fetched catalogues."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the cache root (for clusters, CI and tests).
CACHE_ENV = "LAMOST_RRNET_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$LAMOST_RRNET_CACHE`` or the platform's user cache for lamost-rrnet, joined with
    ``parts`` and created if missing."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("lamost-rrnet", appauthor=False)
    path = Path(root).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
