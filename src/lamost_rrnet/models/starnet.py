"""StarNet and StarNet-R, the paper's comparison models (docs/models.md).

StarNet: Conv1d(1→4, k3) ReLU, Conv1d(4→16, k3) ReLU, MaxPool1d(4), then the shared head.
StarNet-R adds the recurrent module after the convolutions: 80 sub-bands through RNN(360, 360).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamost_rrnet.models.head import GaussianHead
from lamost_rrnet.models.registry import GaussianNet, register_model


class StarNet(GaussianNet):
    """StarNet, optionally with a recurrent module over ``Ns`` sub-bands (StarNet-R)."""

    def __init__(
        self,
        n_labels: int,
        recurrent: bool = False,
        Ns: int = 80,
        dropout: float = 0.3,
        n_pixels: int = 7200,
    ):
        super().__init__()
        self.n_pixels = int(n_pixels)
        if self.n_pixels % 4:
            raise ValueError(f"{self.n_pixels} pixels cannot be max-pooled by 4 exactly")
        self.conv1 = nn.Conv1d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv1d(4, 16, 3, padding=1)
        n_features = 16 * (self.n_pixels // 4)
        self.Ns = int(Ns)
        self.rnn: nn.RNN | None = None
        if recurrent:
            if self.Ns < 1 or n_features % self.Ns:
                raise ValueError(f"{n_features} values cannot be cut into Ns={Ns} sub-bands")
            step = n_features // self.Ns
            self.rnn = nn.RNN(step, step, num_layers=1, nonlinearity="tanh", batch_first=True)
        self.head = GaussianHead(n_features, n_labels, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        h = F.relu(self.conv1(x.reshape(batch, 1, -1)))
        h = F.max_pool1d(F.relu(self.conv2(h)), 4)
        # (position, channel) order, as the recurrent sub-bands need (docs/models.md).
        h = h.transpose(1, 2).reshape(batch, -1)
        if self.rnn is not None:
            h, _ = self.rnn(h.reshape(batch, self.Ns, -1))
            h = h.reshape(batch, -1)
        return self.head(h)


@register_model("starnet")
def starnet(n_labels: int, **kwargs) -> StarNet:
    """StarNet; keyword arguments ``dropout``, ``n_pixels``."""
    return StarNet(n_labels, recurrent=False, **kwargs)


@register_model("starnet-r")
def starnet_r(n_labels: int, **kwargs) -> StarNet:
    """StarNet-R; keyword arguments ``Ns`` (default 80), ``dropout``, ``n_pixels``."""
    return StarNet(n_labels, recurrent=True, **kwargs)
