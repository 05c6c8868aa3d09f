"""The old import paths of moved modules, kept for one release."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
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


def moved_names(old: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of module ``old``, some of whose ``names`` moved (each to the
    module it maps to): it warns, and hands out the object from its new module."""

    def forward(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        new = names[name]
        warnings.warn(
            f"{old}.{name} is deprecated and will be removed in the next release: "
            f"import it from {new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new), name)

    return forward
