"""RRNet's residual stages for inference, as a few large matrix products on the same parameters.

PyTorch's conv1d runs 1→4→8→16-channel kernels at about 1 GFLOP/s on a CPU, and the stages
then take 80–90 % of a member's forward pass. Here each stage is rewritten, without changing
what it computes:

- Activations live as (channel, position, spectrum) matrices, so that a position's neighbours
  are whole blocks of columns and a convolution's zero padding is one block at an end.
- Positions are stored even ones first, then odd ones. AvgPool1d(2) after conv2 is then a
  stride-2 convolution with 4 taps (h at 2p−1, 2p, 2p+1, 2p+2), computed only where it is
  kept: the even and odd halves of conv1's output are two of its taps as they stand.
- Each convolution is one GEMM on an im2col buffer. A row of ones carries the bias; the
  pool's ½ and the shortcut's bias are folded into the weights; the 1×1 shortcut reads the
  even and odd input rows as one matrix, and conv2's GEMM accumulates onto its output.

Spectra go through in chunks of :data:`CHUNK_PER_THREAD` per torch thread, so that each
thread's share of the buffers stays in cache. The results
equal the module path to float32 rounding (tests/test_models.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: Spectra per chunk and torch thread: the stage-1 buffers of 8 spectra take about 2.5 MB.
CHUNK_PER_THREAD = 8


@dataclass(frozen=True)
class _PackedStage:
    c_in: int
    c_out: int
    conv1: torch.Tensor  # (c_out, 3 c_in + 1): columns [centre | bias | left | right]
    shortcut: torch.Tensor  # (c_out, 2 c_in): ½ w for each (channel, even/odd)
    conv2: torch.Tensor  # (c_out, 4 c_out + 1): [h(2p) | h(2p+1) | bias | h(2p-1) | h(2p+2)]


def _pack(stage: nn.Module) -> _PackedStage:
    w1, w2 = stage.conv1.weight, stage.conv2.weight
    c_out, c_in, _ = w1.shape
    conv1 = torch.cat([w1[:, :, 1], stage.conv1.bias[:, None], w1[:, :, 0], w1[:, :, 2]], dim=1)
    shortcut = 0.5 * stage.shortcut.weight[:, :, 0].repeat_interleave(2, dim=1)
    # pooled(p) = ½ (conv2(h)(2p) + conv2(h)(2p+1)) + biases: a 4-tap kernel on h.
    conv2 = torch.cat(
        [
            0.5 * (w2[:, :, 0] + w2[:, :, 1]),
            0.5 * (w2[:, :, 1] + w2[:, :, 2]),
            (stage.conv2.bias + stage.shortcut.bias)[:, None],
            0.5 * w2[:, :, 0],
            0.5 * w2[:, :, 2],
        ],
        dim=1,
    )
    return _PackedStage(c_in, c_out, conv1.contiguous(), shortcut.contiguous(), conv2.contiguous())


class _Workspace:
    """Per stage: the conv1 im2col buffer (rows [centre | ones | left | right], columns even
    positions then odd, each (position, spectrum)), the conv2 tap buffer and the output; the
    ones rows and the zero padding are written once."""

    def __init__(self, stages: Sequence[_PackedStage], length: int, batch: int, like: torch.Tensor):
        self.batch = batch
        self.buffers = []
        for stage in stages:
            n, c = length * batch, stage.c_in
            cols = like.new_empty(3 * c + 1, n)
            cols[c].fill_(1.0)
            cols[c + 1 : 2 * c + 1, :batch].zero_()  # left of position 0
            cols[2 * c + 1 :, n - batch :].zero_()  # right of the last position
            m, c = n // 2, stage.c_out
            taps = like.new_empty(4 * c + 1, m)
            taps[2 * c].fill_(1.0)
            taps[2 * c + 1 : 3 * c + 1, :batch].zero_()  # h(-1)
            taps[3 * c + 1 :, m - batch :].zero_()  # h(length)
            self.buffers.append((cols, taps, like.new_empty(c, m)))
            length //= 2


def _fill_neighbours(cols: torch.Tensor, channels: int, batch: int) -> None:
    """Left and right rows from the centre rows, in the even-then-odd column order."""
    n = cols.shape[1]
    m = n // 2
    centre = cols[:channels]
    left = cols[channels + 1 : 2 * channels + 1]
    right = cols[2 * channels + 1 :]
    left[:, batch:m].copy_(centre[:, m : n - batch])  # x(2q-1) = odd(q-1)
    left[:, m:].copy_(centre[:, :m])  # x(2q) = even(q)
    right[:, :m].copy_(centre[:, m:])  # x(2q+1) = odd(q)
    right[:, m : n - batch].copy_(centre[:, batch:m])  # x(2q+2) = even(q+1)


def _even_then_odd(src: torch.Tensor, dest: torch.Tensor, length: int, batch: int) -> None:
    """(C, position·spectrum) in position order → ``dest`` with even positions first."""
    channels = src.shape[0]
    half = length // 2
    dest.view(channels, 2, half, batch).copy_(
        src.view(channels, half, 2, batch).permute(0, 2, 1, 3)
    )


def _run_chunk(
    stages: Sequence[_PackedStage], x: torch.Tensor, work: _Workspace, out: torch.Tensor
) -> None:
    """Stages on x (b, n_pixels) into out (b, L, C), before the final ReLU."""
    b, length = x.shape
    x_even_odd = x.reshape(b, length // 2, 2).permute(2, 1, 0)  # (even/odd, position, spectrum)
    work.buffers[0][0][0].view(2, length // 2, b).copy_(x_even_odd)
    for i, stage in enumerate(stages):
        cols, taps, acc = work.buffers[i]
        c, m = stage.c_out, cols.shape[1] // 2
        _fill_neighbours(cols, stage.c_in, b)
        torch.mm(stage.conv1, cols[:, :m], out=taps[:c])  # h(2p)
        torch.mm(stage.conv1, cols[:, m:], out=taps[c : 2 * c])  # h(2p+1)
        taps[: 2 * c].relu_()
        taps[2 * c + 1 : 3 * c + 1, b:].copy_(taps[c : 2 * c, : m - b])  # h(2p-1)
        taps[3 * c + 1 :, : m - b].copy_(taps[:c, b:])  # h(2p+2)
        torch.mm(stage.shortcut, cols[: stage.c_in].view(2 * stage.c_in, m), out=acc)
        acc.addmm_(stage.conv2, taps)
        length //= 2
        if i + 1 < len(stages):
            _even_then_odd(acc, work.buffers[i + 1][0][:c], length, b)
        else:
            out.permute(2, 1, 0).copy_(acc.view(c, length, b))


def packed_residual_features(
    stages: Sequence[nn.Module], x: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """What ``RRNet.residual_features`` computes, for inference: (B, n_pixels) → (B, L·C)."""
    chunk = chunk or CHUNK_PER_THREAD * torch.get_num_threads()
    packed = [_pack(stage) for stage in stages]
    batch, n_pixels = x.shape
    length = n_pixels // 2 ** len(packed)
    out = x.new_empty(batch, length, packed[-1].c_out)
    work = None
    for start in range(0, batch, chunk):
        xb = x[start : start + chunk]
        if work is None or work.batch != xb.shape[0]:
            work = _Workspace(packed, n_pixels, xb.shape[0], x)
        _run_chunk(packed, xb, work, out[start : start + xb.shape[0]])
    return out.relu_().reshape(batch, -1)
