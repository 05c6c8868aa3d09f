"""Saliency: the gradient of an ensemble's mean prediction with respect to the normalized flux
(paper Fig. 4), by torch autograd through the ensemble's members."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lamost_rrnet.ensemble import Ensemble

_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_ranges(text: str) -> list[tuple[float, float]]:
    """``"4000:4300,6000:6300"`` → [(4000, 4300), (6000, 6300)]; ValueError if malformed."""
    ranges = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m is None:
            raise ValueError(f"{part.strip()!r} is not LO:HI (e.g. 4000:4300)")
        lo, hi = float(m.group(1)), float(m.group(2))
        if not hi > lo:
            raise ValueError(f"{part.strip()!r}: the upper end must exceed the lower")
        ranges.append((lo, hi))
    return ranges


def range_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}"


def _batches(flux: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, flux.shape[0], batch_size):
        yield flux[start : start + batch_size]


def saliency(
    ensemble: Ensemble, flux: np.ndarray, labels: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """Mean over spectra of ∂μ/∂flux, (len(labels), n_pixels), in label units per unit of
    normalized flux; μ is the ensemble mean in physical units (paper eq. 3).

    The network sees clip(flux) z-scored per pixel, so by the chain rule the gradient with
    respect to the flux is the gradient with respect to the network input divided by
    flux_std, and zero where the clip is active.
    """
    import torch

    norm = ensemble.normalization
    flux_std = np.asarray(norm.flux_std, np.float64)
    lo, hi = ensemble.preprocessing.clip or (-np.inf, np.inf)
    name_index = {str(n): i for i, n in enumerate(norm.label_names)}
    wanted = {label: k for k, label in enumerate(labels)}
    total = np.zeros((len(labels), flux.shape[1]), np.float64)
    for batch in _batches(np.asarray(flux, np.float32), batch_size):
        inside = (batch > lo) & (batch < hi)
        x = ensemble.network_input(batch).detach().requires_grad_(True)
        for group in ensemble.groups:
            targets = [(k, wanted[lb]) for k, lb in enumerate(group.labels) if lb in wanted]
            if not targets:
                continue
            mean_mu = None
            for member in group.members:
                member.eval()
                mu, _ = member(x)
                mean_mu = mu if mean_mu is None else mean_mu + mu
            mean_mu = mean_mu / len(group.members)
            for n_done, (k, row) in enumerate(targets):
                # Spectra are independent in eval mode, so the gradient of the batch sum
                # holds each spectrum's own gradient.
                (grad,) = torch.autograd.grad(
                    mean_mu[:, k].sum(), x, retain_graph=n_done < len(targets) - 1
                )
                std = float(norm.label_std[name_index[group.labels[k]]])
                g = grad.detach().cpu().double().numpy() * std / flux_std
                total[row] += np.where(inside, g, 0.0).sum(axis=0)
    return total / max(flux.shape[0], 1)
