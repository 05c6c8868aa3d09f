"""The Cannon (Ness et al. 2015, ApJ 808, 16) as an ensemble member: its test step.

A quadratic Cannon models each pixel p of continuum-normalized flux as θ_p · v(ℓ), with the
design vector v(ℓ) = [1, ℓ_i, ℓ_i ℓ_j (i ≤ j)] of standardized labels ℓ (17 labels: 171
terms), plus an intrinsic scatter s²_p. :func:`lamost_rrnet.training.cannon.fit_cannon`
fits θ and s²; this module holds them as buffers and finds a spectrum's labels by weighted
nonlinear least squares (docs/training.md, "Classical baseline: The Cannon").

As a member it takes what an :class:`~lamost_rrnet.ensemble.Ensemble` gives its members and
returns what they return: the ensemble of a Cannon stores a flux normalization of mean 0 and
std 1, so the input is the clipped normalized flux itself, and the output is (μ, variance) in
standardized label units. The variance is the diagonal of the label-fit covariance
(JᵀWJ)⁻¹.

A model directory holds flux but no inverse variance, so the test step weights pixel p of arm
a by 1/(s²_p + n²_a), with n²_a each spectrum's white-noise variance in arm a estimated from
its own residuals (a robust, median-based estimate); σ thus grows as S/N falls.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lamost_rrnet.models.registry import register_model

#: The median of χ² with one degree of freedom: median(r²/σ²) of Gaussian residuals.
_CHI2_MEDIAN = 0.454936
#: Spectra solved together: their Jacobians (rows × pixels × labels, float64) stay ~60 MB.
_ROWS = 64
#: Starting noise variance of the linearized first guess (S/N 50 on the continuum).
_GUESS_NOISE = 4e-4


def n_terms(n_labels: int) -> int:
    """Length of the quadratic design vector: 1 + L + L(L+1)/2."""
    return 1 + n_labels + n_labels * (n_labels + 1) // 2


def design_matrix(labels: np.ndarray) -> np.ndarray:
    """float64 (N, 1 + L + L(L+1)/2): [1, ℓ_i, ℓ_i ℓ_j for i ≤ j in row-major order]."""
    labels = np.asarray(labels, np.float64)
    i, j = np.triu_indices(labels.shape[1])
    return np.hstack([np.ones((labels.shape[0], 1)), labels, labels[:, i] * labels[:, j]])


class Cannon(nn.Module):
    """A fitted quadratic Cannon: coefficients ``theta`` (P, T) and scatter ``scatter2`` (P,).

    ``arms`` are the pixel counts of the spectrograph arms, in order (blue, red): each arm
    gets its own noise level. ``rounds`` noise estimates alternate with ``iterations``
    Levenberg–Marquardt steps each. A pixel with infinite scatter (no training data) and a
    pixel of non-finite flux carry no weight; a spectrum without any finite pixel gets NaN.
    """

    def __init__(
        self,
        n_labels: int,
        arms: Sequence[int] = (3600, 3600),
        rounds: int = 3,
        iterations: int = 8,
    ):
        super().__init__()
        self.n_labels = int(n_labels)
        self.arms = [int(a) for a in arms]
        if not self.arms or min(self.arms) < 1:
            raise ValueError(f"arms must be positive pixel counts, not {list(arms)}")
        if rounds < 1 or iterations < 1:
            raise ValueError("rounds and iterations must be at least 1")
        self.rounds = int(rounds)
        self.iterations = int(iterations)
        n_pixels = sum(self.arms)
        # float64: the normal matrices of the fit square the design's condition number.
        self.register_buffer(
            "theta", torch.zeros(n_pixels, n_terms(self.n_labels), dtype=torch.float64)
        )
        self.register_buffer("scatter2", torch.zeros(n_pixels, dtype=torch.float64))
        i, j = np.triu_indices(self.n_labels)
        self._pairs = (torch.from_numpy(i), torch.from_numpy(j))

    def set_fit(self, theta: np.ndarray, scatter2: np.ndarray) -> Cannon:
        """Load fitted coefficients and scatter; returns self."""
        with torch.no_grad():
            self.theta.copy_(torch.as_tensor(np.asarray(theta, np.float64)))
            self.scatter2.copy_(torch.as_tensor(np.asarray(scatter2, np.float64)))
        return self

    # -- the model and its derivatives -----------------------------------------------------

    def _design(self, labels: torch.Tensor) -> torch.Tensor:
        i, j = (t.to(labels.device) for t in self._pairs)
        ones = torch.ones_like(labels[:, :1])
        return torch.cat([ones, labels, labels[:, i] * labels[:, j]], dim=1)

    def _linear_quadratic(self) -> tuple[torch.Tensor, torch.Tensor]:
        """θ as f = θ₀ + A ℓ + ℓᵀ Q ℓ with Q symmetric: A (P, L), Q (P, L, L)."""
        n = self.n_labels
        i, j = (t.to(self.theta.device) for t in self._pairs)
        quad = self.theta[:, 1 + n :]
        q = self.theta.new_zeros(self.theta.shape[0], n, n)
        # An off-diagonal term ℓ_i ℓ_j is shared by Q_ij and Q_ji.
        half = torch.where(i == j, quad, quad / 2)
        q[:, i, j] = half
        q[:, j, i] = half
        return self.theta[:, 1 : 1 + n], q

    def _model(self, labels: torch.Tensor) -> torch.Tensor:
        return self._design(labels) @ self.theta.T

    def _noise_weights(self, r2: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """1/(s² + n²_arm) per pixel, with each arm's n² such that the median of
        r²/(s² + n²) over its live pixels is that of χ²₁ (a few fixed-point steps)."""
        s2 = self.scatter2.expand_as(r2)
        out = torch.zeros_like(r2)
        start = 0
        for size in self.arms:
            arm = slice(start, start + size)
            start += size
            r2_arm = torch.where(live[:, arm], r2[:, arm], torch.nan)
            n2 = torch.nanmedian(r2_arm, dim=1, keepdim=True).values / _CHI2_MEDIAN
            for _ in range(3):
                ratio = torch.nanmedian(r2_arm / (s2[:, arm] + n2), dim=1, keepdim=True).values
                n2 = n2 * ratio / _CHI2_MEDIAN
            # An arm without live pixels (NaN) or without residuals (0) still gives finite weights.
            n2 = torch.nan_to_num(n2, nan=1.0).clamp_min(1e-12)
            out[:, arm] = torch.where(live[:, arm], 1.0 / (s2[:, arm] + n2), 0.0)
        return out

    def _first_guess(self, flux: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Labels from the model linear in its design vector: the linear terms of the weighted
        least-squares design vector (all spectra share the weights 1/(s² + n²), n = 1/50)."""
        w = torch.where(torch.isfinite(self.scatter2), 1.0 / (self.scatter2 + _GUESS_NOISE), 0.0)
        basis = self.theta[:, 1:]
        normal = basis.T @ (basis * w[:, None])
        normal += torch.eye(normal.shape[0], dtype=normal.dtype, device=normal.device) * (
            1e-9 * normal.diagonal().mean()
        )
        rhs = (torch.where(live, flux - self.theta[:, 0], 0.0) * w) @ basis
        terms = torch.linalg.solve(normal, rhs.T).T
        # A quadratic model extrapolates badly: start inside the training set's bulk.
        return terms[:, : self.n_labels].clamp(-3.0, 3.0)

    # -- the test step ---------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, variance), each (B, L) in standardized label units, from flux (B, P)."""
        return self.fit_labels(x)

    inference = forward

    def fit_labels(
        self, flux: torch.Tensor, ivar: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The test step: (μ, variance) of the labels of ``flux`` (B, P).

        Without ``ivar`` (what an ensemble gives a member) each arm's noise is estimated from
        the residuals; with the inverse variance of the flux (B, P), the weights are
        ivar/(1 + ivar s²) as in The Cannon's own test step.
        """
        x = flux.to(torch.float64)
        weights = None if ivar is None else ivar.to(torch.float64)
        parts = [
            self._solve(x[a : a + _ROWS], None if weights is None else weights[a : a + _ROWS])
            for a in range(0, x.shape[0], _ROWS)
        ]
        mu, var = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return mu.to(flux.dtype), var.to(flux.dtype)

    def _solve(
        self, flux: torch.Tensor, ivar: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        live = torch.isfinite(flux) & torch.isfinite(self.scatter2)
        if ivar is not None:
            live &= torch.isfinite(ivar) & (ivar > 0)
            given = torch.where(live, ivar / (1.0 + ivar * self.scatter2), 0.0)
        usable = live.any(dim=1)
        flux = torch.where(live, flux, 0.0)
        lin, quad = self._linear_quadratic()
        eye = torch.eye(self.n_labels, dtype=flux.dtype, device=flux.device)

        def normal(labels: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            jac = lin + 2 * torch.einsum("pkj,bj->bpk", quad, labels)
            jw = jac * w[:, :, None]
            return jw, jw.transpose(1, 2) @ jac

        with torch.no_grad():
            fixed = flux.detach()
            labels = self._first_guess(fixed, live)
            for _ in range(self.rounds):
                residual = fixed - self._model(labels)
                w = self._noise_weights(residual**2, live) if ivar is None else given
                chi2 = (w * residual**2).sum(dim=1)
                damping = torch.full_like(chi2, 1e-3)
                for _ in range(self.iterations):
                    jw, hessian = normal(labels, w)
                    gradient = (jw * residual[:, :, None]).sum(dim=1)
                    scale = hessian.diagonal(dim1=1, dim2=2).clamp_min(1e-300)
                    step = torch.linalg.solve(
                        hessian + torch.diag_embed(damping[:, None] * scale) + 1e-12 * eye,
                        gradient,
                    )
                    trial = labels + step
                    trial_residual = fixed - self._model(trial)
                    trial_chi2 = (w * trial_residual**2).sum(dim=1)
                    better = trial_chi2 <= chi2
                    labels = torch.where(better[:, None], trial, labels)
                    residual = torch.where(better[:, None], trial_residual, residual)
                    chi2 = torch.where(better, trial_chi2, chi2)
                    damping = torch.where(better, damping / 3, damping * 4)
        # One Gauss-Newton step outside no_grad, at the converged labels: its value is the
        # solution, and its gradient with respect to the flux is the implicit one,
        # (JᵀWJ)⁻¹JᵀW, which is what saliency needs.
        labels = labels.detach()
        jw, hessian = normal(labels, w)
        hessian = hessian + 1e-12 * eye
        residual = flux - self._model(labels)
        mu = labels + torch.linalg.solve(hessian, (jw * residual[:, :, None]).sum(dim=1))
        var = torch.linalg.inv(hessian.detach()).diagonal(dim1=1, dim2=2)
        nan = torch.full_like(mu, torch.nan)
        return torch.where(usable[:, None], mu, nan), torch.where(usable[:, None], var, nan)


@register_model("cannon")
def _build(n_labels: int, **kwargs) -> Cannon:
    return Cannon(n_labels, **kwargs)
