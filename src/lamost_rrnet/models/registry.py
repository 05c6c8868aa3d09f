"""Architectures by name: ``create_model("rrnet", n_labels, **kwargs)`` and ``list_models()``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch
from torch import nn

from lamost_rrnet.models.head import GaussianHead

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register an architecture builder ``builder(n_labels, **kwargs) -> nn.Module`` by name."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_model(arch: str, n_labels: int, **kwargs) -> nn.Module:
    """A freshly initialized ``arch`` network predicting ``n_labels`` labels.

    Its ``forward(x)`` takes z-scored flux (B, n_pixels) and returns ``(mu, var)``, each
    (B, n_labels), where ``var`` is the softplus output: a variance in z-scored label units.
    """
    try:
        builder = _REGISTRY[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}: choose one of {', '.join(list_models())}"
        ) from None
    if int(n_labels) < 1:
        raise ValueError(f"n_labels must be at least 1, not {n_labels}")
    return builder(int(n_labels), **kwargs)


def load_problem(exc: Exception) -> str:
    """The informative line of a ``load_state_dict`` / safetensors error, for one-line messages."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return "; ".join(lines[1:3])
    return lines[0] if lines else type(exc).__name__


class GaussianNet(nn.Module):
    """Base of every registered network: features, then the shared μ / variance head."""

    head: GaussianHead

    def inference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same ``(mu, var)`` as ``forward``; subclasses may compute it faster without
        autograd. The ensemble calls this."""
        return self(x)
