"""Several members of one architecture trained as one batched computation.

A member stack holds M networks of the same architecture and label count. ``forward`` takes
one batch per member, x of shape (M, B, n_pixels), and returns μ and variance (M, B, n_labels);
the loss is the sum of the members' losses, so each member gets exactly its own gradient and
an Adam over the stacked parameters is M independent Adams.

:class:`StackedNet` is the fast path for the registered architectures (RRNet in all modes,
the paper's ResNet, StarNet, StarNet-R). Its parameters are the members' state_dict entries
stacked along a new first axis, and its forward is written for that layout:

- Activations of the convolutional stages live as (M, channels, position·spectrum), spectrum
  fastest, so the neighbours of a pixel are B columns away. A k=3 convolution of all members
  is one batched GEMM over an im2col buffer [left | centre | right]; its backward is written
  by hand (:class:`_Conv3`), which spares autograd's zero-filled slice gradients. PyTorch's
  conv1d runs these 1-16 channel kernels at about 1 GFLOP/s on a CPU and dominates a plain
  training step; as GEMMs they stream at memory speed.
- ``torch.vmap`` has no batching rule for ``nn.RNN``, so the recurrence is explicit: one GEMM
  projects every step's input, then one batched GEMM per step.
- The dense head is batched GEMMs.
- Dropout and noise draw from one generator per member, so a member's random stream does not
  depend on how many members share its stack.

:class:`ModuleLoop` is the fallback for architectures registered elsewhere: the same interface,
the members' own forward one after another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lamost_rrnet.models.rrnet import RRNet
from lamost_rrnet.models.starnet import StarNet


def _dropout(h: torch.Tensor, p: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Inverted dropout with each member's mask drawn from its own generator."""
    if p <= 0.0:
        return h
    keep = torch.stack(
        [torch.rand(h.shape[1:], generator=g, device=h.device, dtype=h.dtype) for g in generators]
    )
    return h * (keep >= p) / (1.0 - p)


def _bmm(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``add + a @ b`` per member. A stack of one member uses a plain GEMM: the CPU's batched
    GEMM parallelizes over members only, so one member would get one thread."""
    if a.shape[0] == 1:
        out = torch.mm(a[0], b[0]) if add is None else torch.addmm(add[0], a[0], b[0])
        return out.unsqueeze(0)
    return torch.bmm(a, b) if add is None else torch.baddbmm(add, a, b)


class _Conv3(torch.autograd.Function):
    """k=3, padding=1 convolution of (M, C, L·B) activations, spectrum fastest (stride B)."""

    @staticmethod
    def forward(ctx, x, weight, bias, batch: int):  # type: ignore[override]
        m, c, n = x.shape
        cols = x.new_empty(m, 3 * c, n)
        cols[:, :c, :batch] = 0.0
        cols[:, :c, batch:] = x[:, :, : n - batch]
        cols[:, c : 2 * c] = x
        cols[:, 2 * c :, : n - batch] = x[:, :, batch:]
        cols[:, 2 * c :, n - batch :] = 0.0
        # weight (M, co, C, 3) → (M, co, 3C) in the [left | centre | right] order of cols.
        w = weight.permute(0, 1, 3, 2).reshape(m, weight.shape[1], 3 * c)
        ctx.save_for_backward(cols, w)
        ctx.batch = batch
        return _bmm(w, cols, bias.unsqueeze(2))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        cols, w = ctx.saved_tensors
        batch = ctx.batch
        m, c3, n = cols.shape
        c = c3 // 3
        grad = grad.contiguous()
        grad_w = _bmm(grad, cols.transpose(1, 2))
        grad_w = grad_w.reshape(m, -1, 3, c).permute(0, 1, 3, 2)
        grad_cols = _bmm(w.transpose(1, 2), grad)
        grad_x = grad_cols[:, c : 2 * c].clone()
        grad_x[:, :, : n - batch] += grad_cols[:, :c, batch:]
        grad_x[:, :, batch:] += grad_cols[:, 2 * c :, : n - batch]
        return grad_x, grad_w, grad.sum(2), None


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-member Linear: x (M, B, in), weight (M, out, in), bias (M, out)."""
    return _bmm(x, weight.transpose(1, 2), bias.unsqueeze(1))


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-member 1×1 convolution of (M, C, N) activations; weight (M, co, C, 1)."""
    return _bmm(weight[..., 0], x, bias.unsqueeze(2))


def _rnn(params: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Single-layer tanh RNN (batch first, zero initial state) of (M, B, T, D): (M, B, T·H)."""
    m, b, t, d = x.shape
    w_ih, w_hh = params[f"{prefix}weight_ih_l0"], params[f"{prefix}weight_hh_l0"]
    bias = params[f"{prefix}bias_ih_l0"] + params[f"{prefix}bias_hh_l0"]
    projected = _linear(x.reshape(m, b * t, d), w_ih, bias).view(m, b, t, -1)
    steps = projected.unbind(2)
    w_hh_t = w_hh.transpose(1, 2)
    h = torch.tanh(steps[0])
    outputs = [h]
    for step in steps[1:]:
        h = torch.tanh(_bmm(h, w_hh_t, step))
        outputs.append(h)
    return torch.stack(outputs, dim=2).reshape(m, b, -1)


def _to_positions(x: torch.Tensor) -> torch.Tensor:
    """(M, B, P) spectra → (M, 1, P·B) activations, spectrum fastest."""
    m, b, p = x.shape
    return x.transpose(1, 2).reshape(m, 1, p * b)


def _to_features(h: torch.Tensor, batch: int) -> torch.Tensor:
    """(M, C, L·B) activations → (M, B, L·C) in (position, channel) order, as the models do."""
    m, c, n = h.shape
    return h.view(m, c, n // batch, batch).permute(0, 3, 2, 1).reshape(m, batch, -1)


@dataclass(frozen=True)
class _Plan:
    """What the stacked forward needs to know of a registered architecture."""

    kind: str  # "rrnet" (RRNet in any mode) or "starnet" (StarNet, StarNet-R)
    n_stages: int
    mode: str  # "post-RNN", "pre-RNN" or "raw"
    n_bands: int
    dropout: float


def _plan(model: nn.Module) -> _Plan | None:
    if type(model) is RRNet:
        n_stages = len(model.stages)
        return _Plan("rrnet", n_stages, model.mode, model.Ns, model.head.dropout)
    if type(model) is StarNet:
        mode = "raw" if model.rnn is None else "post-RNN"
        return _Plan("starnet", 0, mode, model.Ns, model.head.dropout)
    return None


#: Member-spectra per chunk of the convolutional stages; 16-32 measured best on the 2-core
#: development CPU (32 MB of L3 cache), where 64 ran 1.7 times slower.
CHUNK_SPECTRA = 32

#: Slots of one member: (state_dict name, the parameter holding it, its index there or None).
Slots = list[tuple[str, torch.Tensor, "int | None"]]


class StackedNet(nn.Module):
    """M members of a registered architecture as stacked parameters, with a batched forward.

    The convolutional stages run ``chunk`` spectra of every member at a time (by default
    :data:`CHUNK_SPECTRA` member-spectra in all), so that their im2col buffers stay in the CPU
    cache; the recurrent layer and the head take the whole batch.
    """

    def __init__(self, members: Sequence[nn.Module], chunk: int | None = None):
        super().__init__()
        if not members:
            raise ValueError("a member stack needs at least one member")
        plan = _plan(members[0])
        if plan is None:
            raise TypeError(f"no stacked forward for {type(members[0]).__name__}")
        self.plan = plan
        self.chunk = int(chunk or max(2, CHUNK_SPECTRA // len(members)))
        states = [m.state_dict() for m in members]
        self.names = list(states[0])
        # ParameterDict keys may not contain dots.
        self.stacked = nn.ParameterDict(
            {
                n.replace(".", "__"): nn.Parameter(torch.stack([s[n].detach() for s in states]))
                for n in self.names
            }
        )
        self.n_members = len(members)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        names = {n for n, _ in model.named_parameters()}
        return _plan(model) is not None and names == set(model.state_dict())

    def _params(self) -> dict[str, torch.Tensor]:
        return {n: self.stacked[n.replace(".", "__")] for n in self.names}

    def slots(self) -> list[Slots]:
        params = self._params()
        return [[(n, params[n], i) for n in self.names] for i in range(self.n_members)]

    def forward(
        self, x: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._params()
        plan = self.plan
        if plan.mode == "pre-RNN":
            x = _rnn(p, "rnn.", x.reshape(*x.shape[:2], plan.n_bands, -1))
        features = self._stages_rrnet if plan.kind == "rrnet" else self._stages_starnet
        h = torch.cat([features(p, xc) for xc in x.split(self.chunk, dim=1)], dim=1)
        if plan.mode == "post-RNN":
            h = _rnn(p, "rnn.", h.reshape(*h.shape[:2], plan.n_bands, -1))
        return self._head(p, h, generators)

    def _stages_rrnet(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[1]
        h = _to_positions(x)
        for i in range(self.plan.n_stages):
            s = f"stages.{i}."
            a = F.relu(_Conv3.apply(h, p[s + "conv1.weight"], p[s + "conv1.bias"], batch))
            a = _Conv3.apply(a, p[s + "conv2.weight"], p[s + "conv2.bias"], batch)
            a = a + _pointwise(h, p[s + "shortcut.weight"], p[s + "shortcut.bias"])
            pairs = a.view(a.shape[0], a.shape[1], -1, 2, batch)
            h = (0.5 * (pairs[:, :, :, 0] + pairs[:, :, :, 1])).flatten(2)
        return _to_features(F.relu(h), batch)

    def _stages_starnet(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[1]
        h = F.relu(_Conv3.apply(_to_positions(x), p["conv1.weight"], p["conv1.bias"], batch))
        h = F.relu(_Conv3.apply(h, p["conv2.weight"], p["conv2.bias"], batch))
        h = h.view(h.shape[0], h.shape[1], -1, 4, batch).max(dim=3).values.flatten(2)
        return _to_features(h, batch)

    def _head(
        self, p: dict[str, torch.Tensor], h: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rate = self.plan.dropout if self.training else 0.0
        h = _dropout(F.relu(_linear(h, p["head.fc1.weight"], p["head.fc1.bias"])), rate, generators)
        h = _dropout(F.relu(_linear(h, p["head.fc2.weight"], p["head.fc2.bias"])), rate, generators)
        mu = _linear(h, p["head.mu.weight"], p["head.mu.bias"])
        return mu, F.softplus(_linear(h, p["head.var.weight"], p["head.var.bias"]))


class ModuleLoop(nn.Module):
    """The member-stack interface over any modules: their own forward, one after another.

    Their dropout draws from torch's global generator, which the training seeds.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("a member stack needs at least one member")
        self.members = nn.ModuleList(members)
        self.n_members = len(members)

    def slots(self) -> list[Slots]:
        return [
            [(n, t, None) for n, t in m.state_dict(keep_vars=True).items()] for m in self.members
        ]

    def forward(
        self, x: torch.Tensor, generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [member(xi) for member, xi in zip(self.members, x, strict=True)]
        return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])


def stack_members(members: Sequence[nn.Module]) -> StackedNet | ModuleLoop:
    """The fastest member stack for these members (all of one architecture)."""
    if StackedNet.supports(members[0]):
        return StackedNet(members)
    return ModuleLoop(members)


def member_states(stack: StackedNet | ModuleLoop) -> list[dict[str, torch.Tensor]]:
    """Each member's parameters as a state_dict of detached CPU copies."""
    return [
        {n: (p[i] if i is not None else p).detach().cpu().clone() for n, p, i in slots}
        for slots in stack.slots()
    ]


def load_member_states(
    stack: StackedNet | ModuleLoop, states: Sequence[dict[str, torch.Tensor]]
) -> None:
    with torch.no_grad():
        for slots, state in zip(stack.slots(), states, strict=True):
            for n, p, i in slots:
                (p[i] if i is not None else p).copy_(state[n])
