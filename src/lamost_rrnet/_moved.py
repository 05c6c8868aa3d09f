"""The old import paths of moved modules, kept for one release."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved_module(old: str, new: str) -> Callable[[str], Any]:
    """Warn that module ``old`` is now ``new``, and give the module ``__getattr__`` of ``old``:
    it hands out ``new``'s own objects, so that a cached singleton stays single."""
    module = importlib.import_module(new)
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: import {new}",
        DeprecationWarning,
        stacklevel=3,  # the module that imports ``old``, past the shim's own body
    )

    def forward(name: str) -> Any:
        return getattr(module, name)

    return forward
