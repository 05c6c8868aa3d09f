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
    """The module ``__getattr__`` of module ``old``, some of whose ``names`` moved: each maps
    to its new module, or to ``module:new_name`` when it was renamed too. It warns, and hands
    out the object from its new home."""

    def forward(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        module, _, new_name = names[name].partition(":")
        new_name = new_name or name
        warnings.warn(
            f"{old}.{name} is deprecated and will be removed in the next release: "
            f"use {module}.{new_name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), new_name)

    return forward
