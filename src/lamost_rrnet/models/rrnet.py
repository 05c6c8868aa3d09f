"""RRNet (Xiong, Li & Liao 2022): residual conv stages, a recurrent module over sub-bands, and a
Gaussian head. docs/models.md is the specification; ``mode`` gives the paper's Fig. 3 variants.

- ``post-RNN`` (the paper's model): stages → ReLU → ``Ns`` sub-bands → RNN → head.
- ``pre-RNN``: the RNN runs first, over ``Ns`` sub-bands of the flux, then the stages.
- ``raw`` (the paper's "ResNet"): no recurrent module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lamost_rrnet.models.fastconv import packed_residual_features
from lamost_rrnet.models.head import GaussianHead
from lamost_rrnet.models.registry import GaussianNet, register_model

MODES = ("post-RNN", "pre-RNN", "raw")


class ResBlock(nn.Module):
    """conv3 → ReLU → conv3, plus a 1×1 conv shortcut; no batch norm, no activation after."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv1d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) + self.shortcut(x)


class RRNet(GaussianNet):
    """RRNet with residual channels ``Nr``, ``Ns`` sub-bands and one of :data:`MODES`."""

    def __init__(
        self,
        n_labels: int,
        Nr: Sequence[int] = (4, 8, 16),
        Ns: int = 40,
        mode: str = "post-RNN",
        dropout: float = 0.3,
        n_pixels: int = 7200,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown RRNet mode {mode!r}: use one of {', '.join(MODES)}")
        self.Nr = tuple(int(c) for c in Nr)
        self.Ns = int(Ns)
        self.mode = mode
        self.n_pixels = int(n_pixels)
        if not self.Nr or min(self.Nr) < 1:
            raise ValueError(f"Nr must list at least one positive channel count, not {Nr}")
        # Every AvgPool1d(2) must halve the length exactly, or the sub-bands would not line up.
        if self.n_pixels % 2 ** len(self.Nr):
            raise ValueError(f"{self.n_pixels} pixels cannot be halved {len(self.Nr)} times")
        self.length = self.n_pixels // 2 ** len(self.Nr)
        n_features = self.Nr[-1] * self.length
        channels = (1, *self.Nr)
        self.stages = nn.ModuleList(
            ResBlock(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.rnn: nn.RNN | None = None
        if mode != "raw":
            sequence = n_features if mode == "post-RNN" else self.n_pixels
            if self.Ns < 1 or sequence % self.Ns:
                raise ValueError(f"{sequence} {mode} values cannot be cut into Ns={Ns} sub-bands")
            step = sequence // self.Ns
            self.rnn = nn.RNN(step, step, num_layers=1, nonlinearity="tanh", batch_first=True)
        self.head = GaussianHead(n_features, n_labels, dropout)

    def residual_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_pixels) → ReLU of the last stage, flattened in (position, channel) order."""
        h = x.reshape(x.shape[0], 1, -1)
        for stage in self.stages:
            h = F.avg_pool1d(stage(h), 2)
        return F.relu(h).transpose(1, 2).reshape(x.shape[0], -1)

    def _recur(self, h: torch.Tensor) -> torch.Tensor:
        # Sub-band t holds values [t·step, (t+1)·step) of h; the published weights depend on it.
        out, _ = self.rnn(h.reshape(h.shape[0], self.Ns, -1))
        return out.reshape(h.shape[0], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "pre-RNN":
            x = self._recur(x)
        h = self.residual_features(x)
        if self.mode == "post-RNN":
            h = self._recur(h)
        return self.head(h)

    def _recur_in_place(self, h: torch.Tensor) -> torch.Tensor:
        """``_recur`` for inference: one GEMM for the input terms of all steps, then each step
        adds its recurrent term and tanh in place, in the output that the head reads."""
        rnn = self.rnn
        batch = h.shape[0]
        seq = h.reshape(batch * self.Ns, -1)
        bias = rnn.bias_ih_l0 + rnn.bias_hh_l0
        out = torch.addmm(bias, seq, rnn.weight_ih_l0.t()).view(batch, self.Ns, -1)
        previous = out[:, 0].tanh_()
        recurrent = rnn.weight_hh_l0.t()
        for t in range(1, self.Ns):
            previous = out[:, t].addmm_(previous, recurrent).tanh_()
        return out.view(batch, -1)

    def inference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` in eval mode without autograd, computed faster on a CPU.

        The tiny-channel conv1d kernels run the stages at about 1 GFLOP/s on a CPU; the same
        parameters as im2col matrix products are several times faster (docs/models.md).
        """
        if self.training or torch.is_grad_enabled() or x.device.type != "cpu":
            return self(x)
        if self.mode == "pre-RNN":
            x = self._recur_in_place(x)
        h = packed_residual_features(self.stages, x)
        if self.mode == "post-RNN":
            h = self._recur_in_place(h)
        return self.head(h)


@register_model("rrnet")
def rrnet(n_labels: int, **kwargs) -> RRNet:
    """RRNet; keyword arguments ``Nr``, ``Ns``, ``mode``, ``dropout``, ``n_pixels``."""
    return RRNet(n_labels, **kwargs)


@register_model("resnet")
def resnet(n_labels: int, **kwargs) -> RRNet:
    """The paper's "ResNet": RRNet without its recurrent module (mode ``raw``)."""
    if kwargs.pop("mode", "raw") != "raw":
        raise ValueError("resnet is RRNet in mode 'raw'; use arch 'rrnet' for other modes")
    return RRNet(n_labels, mode="raw", **kwargs)
