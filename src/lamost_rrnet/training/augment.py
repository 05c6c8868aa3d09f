"""What a training batch goes through before the network sees it: noise and augmentation.

Two kinds of noise (``Recipe.noise``):

- ``paper``: N(0, 1) added to each z-scored pixel with probability ``noise_prob``, as
  published. In z units that is as much noise as the spread of the whole training set at
  that pixel, whatever the spectrum's own S/N, so it teaches the network nothing about how
  its error depends on the noise.
- ``ivar``: with probability ``noise_prob`` a spectrum is degraded to a lower S/N drawn
  log-uniformly between the training set's low S/N (its 5th percentile) and its own: noise of
  σ·sqrt((S/N / target)² − 1) per pixel, σ from the spectrum's own inverse variance, so its
  noise keeps its shape along the spectrum. The training set then spans the survey's S/N
  range for every star, and the Gaussian NLL makes the predicted σ follow the noise.

Augmentation (``Recipe.rv_shift``, ``Recipe.tilt``): a small residual RV error (a shift of
N(0, rv_shift) km/s, by linear interpolation) and a continuum-normalization error (a linear
tilt of N(0, tilt) end to end of each arm), both applied to the normalized flux.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lamost_rrnet.ensemble import Normalization
from lamost_rrnet.spectra.preprocess import C_KMS, PreprocessSpec

#: The degraded S/N is drawn down to this quantile of the training set's S/N.
LOW_SNR_QUANTILE = 0.05


@dataclass
class PixelNoise:
    """Each training spectrum's per-pixel σ in z units, and its S/N."""

    sigma: np.ndarray  # float16 (n_train, n_pixels): σ of the normalized flux / flux std
    snr: np.ndarray  # float32 (n_train,): median sqrt(ivar) over pixels with information
    low_snr: float  # the lowest S/N a spectrum is degraded to


def pixel_sigma(ivar: np.ndarray, flux_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ in z units float16, S/N float32) of rows of inverse variance (normalized units).

    Pixels without information (ivar 0) get the spectrum's median σ: their flux was
    interpolated over, and noise of the typical size keeps them unremarkable.
    """
    ivar = np.asarray(ivar, np.float64)
    good = ivar > 0
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), np.nan)
    with_info = good.any(axis=1)
    median = np.zeros(ivar.shape[0])
    median[with_info] = np.nanmedian(sigma[with_info], axis=1)
    sigma = np.where(good, sigma, median[:, None])
    snr = np.where(median > 0, 1.0 / np.where(median > 0, median, 1.0), 0.0)
    return (sigma / flux_std).astype(np.float16), snr.astype(np.float32)


def low_snr(snr: np.ndarray) -> float:
    """The S/N that spectra are degraded down to: a low quantile of the training set's."""
    positive = snr[snr > 0]
    return float(np.quantile(positive, LOW_SNR_QUANTILE)) if positive.size else 0.0


class BatchAugmenter:
    """Applies a recipe's noise and augmentation to one member's batch of z-scored flux."""

    def __init__(
        self,
        recipe,
        normalization: Normalization,
        spec: PreprocessSpec,
        noise: PixelNoise | None,
    ):
        self.recipe = recipe
        self.noise = noise
        if recipe.noise == "ivar" and noise is None:
            raise ValueError("the ivar noise needs the training spectra's inverse variance")
        self.mean = torch.as_tensor(normalization.flux_mean, dtype=torch.float32)
        self.std = torch.as_tensor(normalization.flux_std, dtype=torch.float32)
        blue, red = spec.grids()
        wave = np.concatenate([blue, red])
        step = np.concatenate([np.full(blue.size, spec.blue[2]), np.full(red.size, spec.red[2])])
        # Pixels moved per km/s, and each pixel's position in its arm (-1..1) and arm bounds.
        self.pixels_per_kms = torch.as_tensor(wave / C_KMS / step, dtype=torch.float32)
        self.position = torch.as_tensor(
            np.concatenate([np.linspace(-1, 1, blue.size), np.linspace(-1, 1, red.size)]),
            dtype=torch.float32,
        )
        self.arm_lo = torch.as_tensor(
            np.concatenate([np.zeros(blue.size), np.full(red.size, blue.size)]), dtype=torch.long
        )
        self.arm_hi = torch.as_tensor(
            np.concatenate([np.full(blue.size, blue.size - 1), np.full(red.size, wave.size - 1)]),
            dtype=torch.long,
        )
        self.is_red = torch.as_tensor(np.arange(wave.size) >= blue.size)

    def __call__(
        self, x: torch.Tensor, rows: np.ndarray, epoch: int, generator: torch.Generator
    ) -> torch.Tensor:
        """x (B, n_pixels) z-scored flux of training rows ``rows``; returns the batch to fit."""
        r = self.recipe
        if r.rv_shift > 0 or r.tilt > 0:
            x = self._augment(x, generator)
        if not r.noisy(epoch):
            return x
        if r.noise == "paper":
            hit = torch.rand(x.shape, generator=generator, device=x.device) < r.noise_prob
            return x + torch.randn(x.shape, generator=generator, device=x.device) * hit
        return x + self._degrade(x, rows, generator)

    def _degrade(self, x: torch.Tensor, rows: np.ndarray, generator: torch.Generator):
        noise = self.noise
        b = x.shape[0]
        hit = torch.rand(b, generator=generator, device=x.device) < self.recipe.noise_prob
        u = torch.rand(b, generator=generator, device=x.device)
        snr = torch.as_tensor(noise.snr[rows], device=x.device)
        low = torch.full_like(snr, noise.low_snr).clamp(max=snr)
        # log-uniform between the low S/N and the spectrum's own
        target = low * (snr / low.clamp(min=1e-6)) ** u
        factor = torch.sqrt((snr / target.clamp(min=1e-6)) ** 2 - 1.0).clamp(min=0.0)
        factor = torch.where(hit & (snr > 0), factor, torch.zeros_like(factor))
        sigma = torch.as_tensor(noise.sigma[rows], device=x.device).float()
        draws = torch.randn(x.shape, generator=generator, device=x.device)
        return draws * sigma * factor[:, None]

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        r = self.recipe
        b = x.shape[0]
        dev = x.device
        flux = x * self.std.to(dev) + self.mean.to(dev)
        if r.rv_shift > 0:
            v = torch.randn(b, 1, generator=generator, device=dev) * r.rv_shift
            source = torch.arange(x.shape[1], device=dev) - v * self.pixels_per_kms.to(dev)
            lo, hi = self.arm_lo.to(dev), self.arm_hi.to(dev)
            left = source.floor().long()
            w = source - left
            left_c = torch.minimum(torch.maximum(left, lo), hi)
            right_c = torch.minimum(torch.maximum(left + 1, lo), hi)
            flux = (1 - w) * flux.gather(1, left_c) + w * flux.gather(1, right_c)
        if r.tilt > 0:
            slopes = torch.randn(b, 2, generator=generator, device=dev) * r.tilt
            slope = torch.where(self.is_red.to(dev), slopes[:, 1:], slopes[:, :1])
            flux = flux * (1 + 0.5 * slope * self.position.to(dev))
        return (flux - self.mean.to(dev)) / self.std.to(dev)
