"""A fake copy of the published RRNet repository layout, and the published forward pass by hand.

The weights are seeded as in the manifest's ``reference_check`` (normal, std 0.1, in key order),
one seed per member. The normalization is the real ``label_config.pkl``, copied from ../shared
into a temporary directory, never into the project. ``published_forward`` is FACTS.md §2 written
out with torch.nn.functional, independently of ``lamost_rrnet.models``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL_DIR = "RRNet(Nr=[4-8-16]-Ns=40)_post-RNN_add-noise"
GROUPS = ("SP", "CA")


def manifest(shared: Path) -> dict:
    path = shared / "published_rrnet" / "published_state_dict_manifest.json"
    return json.loads(path.read_text())


def member_seed(group: str, index: int) -> int:
    return 100 * GROUPS.index(group) + index


def seeded_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """The manifest's initialization: torch.manual_seed(seed), then normal(0, 0.1) per key."""
    torch.manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        tensor = torch.empty(shape)
        torch.nn.init.normal_(tensor, std=0.1)
        state[key] = tensor
    return state


def write_fake_published(root: Path, shared: Path, members: int = 6) -> Path:
    """``root`` laid out like the published repository: label_config.pkl and the 12 members."""
    shapes = manifest(shared)
    config = root / "data" / "refer_set" / "label_config.pkl"
    config.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / "published_rrnet" / "label_config.pkl", config)
    for group in GROUPS:
        for i in range(members):
            folder = root / "model_log" / MODEL_DIR / f"{group}{i}"
            folder.mkdir(parents=True, exist_ok=True)
            state = seeded_state_dict(shapes[group]["state_dict"], member_seed(group, i))
            torch.save(state, folder / "weight_best.pkl")
    return root


def published_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, softplus variance) of the published post-RNN RRNet for z-scored input x (B, 7200)."""
    h = x.reshape(x.shape[0], 1, -1)
    for stage in range(3):
        p = f"ResBlock_list.{stage}.0."
        main = F.conv1d(h, state[p + "ResBlock.0.weight"], state[p + "ResBlock.0.bias"], padding=1)
        main = F.conv1d(
            F.relu(main), state[p + "ResBlock.2.weight"], state[p + "ResBlock.2.bias"], padding=1
        )
        short = F.conv1d(h, state[p + "downsample.0.weight"], state[p + "downsample.0.bias"])
        h = F.avg_pool1d(main + short, 2)
    h = F.relu(h)
    seq = h.permute(0, 2, 1).reshape(x.shape[0], 40, 360)
    hidden = torch.zeros(x.shape[0], 360, dtype=x.dtype)
    outputs = []
    for t in range(40):
        hidden = torch.tanh(
            seq[:, t] @ state["rnn.weight_ih_l0"].T
            + state["rnn.bias_ih_l0"]
            + hidden @ state["rnn.weight_hh_l0"].T
            + state["rnn.bias_hh_l0"]
        )
        outputs.append(hidden)
    flat = torch.stack(outputs, dim=1).reshape(x.shape[0], -1)
    h = F.relu(F.linear(flat, state["fc1.0.weight"], state["fc1.0.bias"]))
    h = F.relu(F.linear(h, state["fc2.0.weight"], state["fc2.0.bias"]))
    mu = F.linear(h, state["mu.weight"], state["mu.bias"])
    var = F.softplus(F.linear(h, state["sigma.0.weight"], state["sigma.0.bias"]))
    return mu, var
