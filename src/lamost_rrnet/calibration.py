"""Calibrated uncertainties: one σ scale per label, fitted on labelled spectra.

A deep ensemble's σ can be off by a factor that is much the same for every spectrum: trained
on a small set, RRNet's σ came out 1.2-2.7× too large (issue 17). One positive scale per
label, chosen so that z = (μ − true)/(scale·σ) has a standard deviation of 1 on held-out
spectra, removes that factor and nothing else: it cannot make σ follow S/N, or anything else
that varies from spectrum to spectrum.

The scales are part of the model (``calibration`` in ``model.yaml``, docs/models.md), and a
calibrated model's version carries a digest of them (``1+cal.3fa2b1c0``), so catalogues made
with other scales, or none, are never mixed by ``predict --resume``.

This module is the record and what a model does with it; fitting the scales on a dataset is
the job of :mod:`lamost_rrnet.calibrate`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from lamost_rrnet._moved import moved_names

#: Separates a model's own version from the digest of its calibration.
VERSION_TAG = "+cal."
#: Fewest labelled spectra a label's scale is fitted on; with fewer it stays 1.
MIN_ROWS = 2


@dataclass(frozen=True)
class Calibration:
    """The σ scales of a model, and the labelled spectra they were fitted on.

    ``scales`` and ``n`` map each label to its scale and to the number of spectra that fitted
    it (0 where the dataset lacks the label: that scale is 1).
    """

    scales: dict[str, float]
    split: str
    n_spectra: int
    dataset: str = ""
    n: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scales = {str(k): float(v) for k, v in self.scales.items()}
        bad = [k for k, v in scales.items() if not (np.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"calibration scales must be positive and finite: {', '.join(bad)}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "n", {str(k): int(v) for k, v in self.n.items()})

    def digest(self) -> str:
        """Eight hex digits identifying the scales (the part of a version after ``+cal.``)."""
        text = json.dumps(sorted(self.scales.items()), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration`` field of model.yaml."""
        return {
            "split": self.split,
            "n_spectra": self.n_spectra,
            "dataset": self.dataset,
            "scales": dict(self.scales),
            "n": dict(self.n),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(
            dict(data["scales"]),
            str(data["split"]),
            int(data["n_spectra"]),
            str(data.get("dataset", "")),
            dict(data.get("n") or {}),
        )


def calibrated_version(version: str, calibration: Calibration | None) -> str:
    """The version of a model with ``calibration``: its own version plus the scales' digest."""
    base = str(version).split(VERSION_TAG)[0]
    return base if calibration is None else f"{base}{VERSION_TAG}{calibration.digest()}"


_Model = TypeVar("_Model", bound="Calibrated")


class Calibrated:
    """What calibration adds to a model class with ``labels`` and ``version``.

    ``predict`` multiplies its σ by :attr:`sigma_scales` unless asked for the raw σ.
    """

    calibration: Calibration | None = None
    labels: list[str]
    version: str

    @property
    def sigma_scales(self) -> np.ndarray:
        """float64 (len(labels),): each label's scale, 1 where there is none."""
        scales = self.calibration.scales if self.calibration is not None else {}
        return np.array([scales.get(label, 1.0) for label in self.labels], np.float64)

    @property
    def sigma_kind(self) -> str:
        """What ``predict`` gives by default: ``calibrated`` σ, or ``raw`` (no calibration)."""
        return "raw" if self.calibration is None else "calibrated"

    def with_calibration(self: _Model, calibration: Calibration | None) -> _Model:
        """A copy of this model (sharing its networks) with ``calibration`` and its version."""
        model = copy.copy(self)
        model.set_calibration(calibration)
        return model

    def set_calibration(self, calibration: Calibration | None) -> None:
        """Hold ``calibration`` (None: uncalibrated), and the version that goes with it."""
        unknown = set(calibration.scales) - set(self.labels) if calibration else set()
        if unknown:
            raise ValueError(f"calibration of labels the model lacks: {', '.join(sorted(unknown))}")
        self.calibration = calibration
        self.version = calibrated_version(self.version, calibration)


def fit_sigma_scales(mu: np.ndarray, sigma: np.ndarray, true: np.ndarray) -> np.ndarray:
    """One positive scale per column such that z = (mu − true)/(scale·sigma) has std 1.

    ``mu``, ``sigma`` and ``true`` are (N, L). Rows where any of the three is not finite, or
    σ is not positive, are left out per column (a missing label costs only that label). The
    std is taken with ddof 0 around the mean of z, as ``evaluate``'s z_std, so that a fitted
    split's z_std is 1 exactly. A column with fewer than :data:`MIN_ROWS` usable rows, or
    with no spread in z, keeps the scale 1.
    """
    return fit_scales_with_counts(mu, sigma, true)[0]


def fit_scales_with_counts(
    mu: np.ndarray, sigma: np.ndarray, true: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """:func:`fit_sigma_scales`, and the number of usable rows of each column."""
    mu, sigma, true = (np.atleast_2d(np.asarray(a, np.float64)) for a in (mu, sigma, true))
    if not mu.shape == sigma.shape == true.shape:
        raise ValueError(f"mu {mu.shape}, sigma {sigma.shape} and true {true.shape} differ")
    scales, counts = np.ones(mu.shape[1]), []
    for j in range(mu.shape[1]):
        ok = np.isfinite(mu[:, j]) & np.isfinite(true[:, j]) & np.isfinite(sigma[:, j])
        ok &= sigma[:, j] > 0
        counts.append(int(ok.sum()))
        if counts[-1] >= MIN_ROWS:
            spread = float(np.std((mu[ok, j] - true[ok, j]) / sigma[ok, j]))
            if np.isfinite(spread) and spread > 0:
                scales[j] = spread
    return scales, counts


def describe(calibration: Calibration, labels: Sequence[str]) -> str:
    """Lines for the user: each label's scale and the spectra it was fitted on."""
    lines = [
        f"σ scales fitted on the {calibration.split} split of {calibration.dataset} "
        f"({calibration.n_spectra} spectra):"
    ]
    for label in labels:
        n = calibration.n.get(label, 0)
        scale = calibration.scales.get(label, 1.0)
        lines.append(f"  {label}: {scale:.3f} ({n} spectra)" if n else f"  {label}: 1 (no labels)")
    return "\n".join(lines)


# Fitting on a dataset is a job (lamost_rrnet.calibrate); the old names stay for one release.
_JOB = "lamost_rrnet.calibrate"
__getattr__ = moved_names(
    __name__, {"fit_calibration": _JOB, "calibrate": _JOB, "calibrate_model": _JOB}
)
