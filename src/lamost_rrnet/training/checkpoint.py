"""Training checkpoints: the whole state after an epoch, per member, written atomically.

The state is kept per member (parameters, Adam moments, random generators, best weights), not
per stack, so a run resumes on another device layout or thread count. The file holds only
tensors, numbers, strings, lists and dicts: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lamost_rrnet.atomic import atomic_path
from lamost_rrnet.errors import RRNetError
from lamost_rrnet.training.stacked import ModuleLoop, StackedNet

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "lamost-rrnet training checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    """A checkpoint written by :func:`save_checkpoint`; :class:`RRNetError` if unreadable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise RRNetError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RRNetError(f"{path}: not a lamost-rrnet training checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise RRNetError(f"{path}: written by a newer lamost-rrnet; upgrade to resume it")
    return state


def export_optimizer(stack: StackedNet | ModuleLoop, optimizer: torch.optim.Optimizer) -> list:
    """Each member's optimizer state: {parameter name: {state key: CPU tensor}}."""
    members = []
    for slots in stack.slots():
        state = {}
        for name, param, index in slots:
            entry = optimizer.state.get(param)
            if entry:
                state[name] = {
                    k: (v[index] if index is not None and v.dim() else v).detach().cpu().clone()
                    for k, v in entry.items()
                }
        members.append(state)
    return members


def import_optimizer(
    stack: StackedNet | ModuleLoop, optimizer: torch.optim.Optimizer, members: Sequence[dict]
) -> None:
    """Put the per-member states of :func:`export_optimizer` back into ``optimizer``."""
    pieces: dict[torch.Tensor, dict[str, list]] = {}
    for slots, state in zip(stack.slots(), members, strict=True):
        for name, param, index in slots:
            for key, value in state.get(name, {}).items():
                pieces.setdefault(param, {}).setdefault(key, []).append((index, value))
    for param, entry in pieces.items():
        restored = {}
        for key, items in entry.items():
            index, value = items[0]
            if not value.dim():
                # Adam's step count: one CPU scalar, the same for every member of a stack.
                restored[key] = value.clone()
            elif index is None:
                restored[key] = value.to(param.device)
            else:
                ordered = [v for _, v in sorted(items, key=lambda item: item[0])]
                restored[key] = torch.stack(ordered).to(param.device)
        optimizer.state[param] = restored
