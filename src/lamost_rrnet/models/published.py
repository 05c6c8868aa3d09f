"""The published RRNet weights: their state_dict keys, converted to :class:`RRNet`'s names.

A published member file is ``torch.save(model.state_dict())`` of the authors' post-RNN RRNet
(Nr=[4,8,16], Ns=40), saved from CUDA. Its keys and shapes are listed in
the published repository's state dicts; docs/models.md ("The published files") describes them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from lamost_rrnet.errors import ModelError
from lamost_rrnet.models.registry import load_problem
from lamost_rrnet.models.rrnet import RRNet

#: The paper's run in the authors' ``model_log/``.
PUBLISHED_RUN = "RRNet(Nr=[4-8-16]-Ns=40)_post-RNN_add-noise"
#: Our architecture entry for it.
PUBLISHED_ARCHITECTURE = {
    "name": "rrnet",
    "kwargs": {"Nr": [4, 8, 16], "Ns": 40, "mode": "post-RNN", "dropout": 0.3},
}

_STAGE = re.compile(
    r"ResBlock_list\.(\d+)\.0\.(ResBlock\.0|ResBlock\.2|downsample\.0)\.(weight|bias)"
)
_STAGE_PARTS = {"ResBlock.0": "conv1", "ResBlock.2": "conv2", "downsample.0": "shortcut"}
_HEAD = {"fc1.0": "head.fc1", "fc2.0": "head.fc2", "mu": "head.mu", "sigma.0": "head.var"}
_RUN_NAME = re.compile(r"RRNet\(Nr=\[(\d+(?:-\d+)*)\]-Ns=(\d+)\)_(post-RNN|pre-RNN|raw)(?:_.*)?")


def published_key(key: str) -> str:
    """Our :class:`RRNet` state_dict key for a published key; ValueError for unknown keys."""
    match = _STAGE.fullmatch(key)
    if match:
        stage, part, kind = match.groups()
        return f"stages.{stage}.{_STAGE_PARTS[part]}.{kind}"
    if key.startswith("rnn.") and key.endswith("_l0"):
        return key
    prefix, _, kind = key.rpartition(".")
    if prefix in _HEAD and kind in ("weight", "bias"):
        return f"{_HEAD[prefix]}.{kind}"
    raise ValueError(f"not a key of the published RRNet: {key!r}")


def convert_published_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published state_dict with our key names (the tensors are not copied)."""
    return {published_key(key): value for key, value in state.items()}


def architecture_from_run(run: str) -> dict:
    """Our architecture entry for a published run name such as ``RRNet(Nr=[4-8-16]-Ns=40)_…``."""
    match = _RUN_NAME.fullmatch(run)
    if not match:
        raise ValueError(f"cannot read an RRNet architecture from the run name {run!r}")
    channels, ns, mode = match.groups()
    nr = [int(c) for c in channels.split("-")]
    return {"name": "rrnet", "kwargs": {"Nr": nr, "Ns": int(ns), "mode": mode, "dropout": 0.3}}


def load_published_member(
    path: str | os.PathLike[str], n_labels: int, architecture: dict | None = None
) -> RRNet:
    """One published member file as an :class:`RRNet` in eval mode, on the CPU."""
    path = Path(path)
    kwargs = (architecture or PUBLISHED_ARCHITECTURE)["kwargs"]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise ModelError(f"{path}: not a loadable weight file ({exc})") from exc
    if not isinstance(state, Mapping):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    model = RRNet(n_labels, **kwargs)
    try:
        model.load_state_dict(convert_published_state_dict(state), strict=True)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path}: does not fit RRNet({kwargs}) with {n_labels} labels: {load_problem(exc)}"
        ) from exc
    return model.eval()
