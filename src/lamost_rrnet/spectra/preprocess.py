"""The published "rrnet2022" preprocessing (docs/preprocessing.md, steps 1-4) and its batched path.

Steps: RV correction to the rest frame, linear resampling onto two 3600-pixel grids of 0.1 Å,
then continuum normalization of each arm (median cleaning, iterative 5th-order polynomial,
division). The clip to [-0.5, 2.5] and the per-pixel z-score (steps 5-6) belong to the model and
are applied by :class:`lamost_rrnet.ensemble.Ensemble`.

Number types: the outlier replacement is chaotic, so one pixel flagged differently changes the
whole arm. To reproduce the published outputs, the spectra, the median cleaning and the
standardization stay in float32 while the polynomial work is float64, exactly as in the
authors' code under NumPy 1.x (docs/preprocessing.md, "Number types"). Keep those dtypes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lamost_rrnet.errors import CoverageError, RRNetError, SpectrumError, UsageError
from lamost_rrnet.spectra.io import Arm, Spectrum

C_KMS = 299792.458
MAX_ITERATIONS = 200  # the published loop has no cap; real spectra converge in < 20


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model's inputs are made: the grid, the normalization and the inference clip."""

    name: str = "rrnet2022"
    blue: tuple[float, float, float] = (4968.0, 5328.0, 0.1)  # np.arange(start, stop, step)
    red: tuple[float, float, float] = (6339.0, 6699.0, 0.1)
    poly_degree: int = 5
    median_clip: tuple[float, float] = (3.0, 4.0)  # d >= 3σ or d <= -4σ, d = medfilt - f
    fit_clip: tuple[float, float] = (4.0, 3.0)  # e <= -4s or e >= 3s, e = fit - y
    clip: tuple[float, float] = (-0.5, 2.5)  # applied at inference only
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        data = dict(data)
        known = {k: data.pop(k) for k in list(data) if k in cls.__dataclass_fields__}
        for key, value in known.items():
            if isinstance(value, list):
                known[key] = tuple(value)
        known.setdefault("extra", {}).update(data)
        return cls(**known)

    def grids(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(*self.blue), np.arange(*self.red)

    def wavelength(self) -> np.ndarray:
        """The network's wavelength grid: blue then red."""
        return np.concatenate(self.grids())

    @property
    def n_pixels(self) -> int:
        blue, red = self.grids()
        return blue.size + red.size

    def compatible(self, other: PreprocessSpec) -> bool:
        """Whether inputs made with ``other`` are valid inputs for a model made with this spec."""
        mine, theirs = self.to_dict(), other.to_dict()
        for d in (mine, theirs):
            d.pop("clip")
            d.pop("extra")
        return mine == theirs


RRNET2022 = PreprocessSpec()


def load_spec(value: str | os.PathLike[str]) -> PreprocessSpec:
    """:data:`RRNET2022` by its name, else the spec in a YAML or JSON file (or a model.yaml's
    ``preprocessing``). :class:`UsageError` when ``value`` is neither the name nor a file,
    :class:`RRNetError` when the file holds no spec."""
    if str(value) == RRNET2022.name:
        return RRNET2022
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{str(value)!r}: use {RRNET2022.name} or an existing spec file")
    import yaml  # here: the package imports this module at start-up, and few runs read a file

    try:
        data = yaml.safe_load(path.read_text())
        data = data.get("preprocessing", data)
        return PreprocessSpec.from_dict(data)
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
        raise RRNetError(f"{path}: not a preprocessing spec ({exc})") from exc


def rest_frame(wavelength: np.ndarray, rv: float) -> np.ndarray:
    """λ / (1 + RV/c), in float32 like the published code (NumPy 1 cast the scalar down)."""
    return wavelength / np.float32(1.0 + float(rv) / C_KMS)


def resample_arm(
    wavelength: np.ndarray, flux: np.ndarray, grid: np.ndarray, *, where: str = "spectrum"
) -> np.ndarray:
    """Linear interpolation of one arm onto ``grid``; refuses to extrapolate."""
    lo, hi = float(wavelength[0]), float(wavelength[-1])
    if lo > grid[0] or hi < grid[-1]:
        gaps = []
        if lo > grid[0]:
            gaps.append(f"{grid[0]:.1f}-{lo:.1f} Å")
        if hi < grid[-1]:
            gaps.append(f"{hi:.1f}-{grid[-1]:.1f} Å")
        raise CoverageError(
            f"{where}: the rest-frame wavelengths {lo:.1f}-{hi:.1f} Å do not cover the grid "
            f"{grid[0]:.1f}-{grid[-1]:.1f} Å (missing {' and '.join(gaps)})"
        )
    return np.interp(grid, wavelength, flux).astype(np.float32)


def resample(spectrum: Spectrum, rv: float = 0.0, spec: PreprocessSpec = RRNET2022) -> np.ndarray:
    """Steps 1-3: rest frame and resampling of both arms, float32[n_pixels] (blue, then red)."""
    if not np.isfinite(rv):
        raise SpectrumError(f"{spectrum.filename}: the RV is not finite ({rv})")
    out = []
    for arm, grid in zip((spectrum.blue, spectrum.red), spec.grids(), strict=True):
        where = f"{spectrum.filename}[{arm.extname}]"
        out.append(resample_arm(rest_frame(arm.wavelength, rv), arm.flux, grid, where=where))
    return np.concatenate(out)


def resample_ivar_arm(wavelength: np.ndarray, ivar: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The inverse variance of :func:`resample_arm`'s output, pixels taken as independent.

    Linear interpolation gives F = (1 − w)·f_i + w·f_(i+1), so Var F = (1 − w)²/ivar_i +
    w²/ivar_(i+1). A pixel with no information (ivar 0) that enters with a nonzero weight
    leaves none in F. Interpolated pixels are correlated and between two source pixels their
    variance drops to half: this is the variance of each grid pixel, not of their sums.
    """
    wave = np.asarray(wavelength, np.float64)
    right = np.clip(np.searchsorted(wave, grid, side="right"), 1, wave.size - 1)
    left = right - 1
    w = np.clip((grid - wave[left]) / (wave[right] - wave[left]), 0.0, 1.0)
    iv = np.asarray(ivar, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(w < 1, (1 - w) ** 2 / iv[left], 0.0) + np.where(w > 0, w**2 / iv[right], 0.0)
        out = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
    return out.astype(np.float32)


def resample_ivar(
    spectrum: Spectrum, rv: float = 0.0, spec: PreprocessSpec = RRNET2022
) -> np.ndarray:
    """Inverse variance of :func:`resample`'s flux (raw units), float32[n_pixels].

    Bad pixels (the outliers of :func:`outlier_stats`: masked, non-positive or non-finite)
    count as ivar 0, since the flux there is not what its IVAR describes.
    """
    out = []
    for arm, grid in zip((spectrum.blue, spectrum.red), spec.grids(), strict=True):
        ivar = np.where(_bad_pixels(arm), 0.0, arm.ivar)
        out.append(resample_ivar_arm(rest_frame(arm.wavelength, rv), ivar, grid))
    return np.concatenate(out)


def _medfilt3(f: np.ndarray) -> np.ndarray:
    """Median of 3 along the last axis with zero-padded ends (scipy.signal.medfilt semantics)."""
    left = np.zeros_like(f)
    right = np.zeros_like(f)
    left[..., 1:] = f[..., :-1]
    right[..., :-1] = f[..., 1:]
    return np.maximum(np.minimum(left, f), np.minimum(np.maximum(left, f), right))


def _median_clean(f: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Step 4a in float32, along the last axis."""
    m = _medfilt3(f)
    d = m - f
    sigma = np.std(d, axis=-1, keepdims=True)
    hi, lo = spec.median_clip
    bad = (d >= hi * sigma) | (d <= -lo * sigma)
    return np.where(bad, m, f)


def _standard_x(grid: np.ndarray) -> np.ndarray:
    x = np.log10(grid)
    return (x - x.mean()) / x.std()


def normalize_arm(
    flux: np.ndarray, grid: np.ndarray, spec: PreprocessSpec = RRNET2022
) -> np.ndarray:
    """Step 4 for one arm, as published: the reference implementation (one spectrum)."""
    f = _median_clean(np.asarray(flux, np.float32), spec)
    x = _standard_x(grid)
    mu_f = np.mean(f)
    y = f - mu_f
    s_f = np.std(y)
    y = y / s_f
    lo, hi = spec.fit_clip
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(MAX_ITERATIONS):
            p = np.polyfit(x, y, spec.poly_degree)
            fit = np.polyval(p, x)
            e = fit - y
            s = np.std(e)
            bad = (e <= -lo * s) | (e >= hi * s)
            if not bad.any():
                break
            y[bad] = fit[bad]
        continuum = np.polyval(p, x) * s_f + mu_f
        return (f / continuum).astype(np.float32)


def normalize_reference(flux: np.ndarray, spec: PreprocessSpec = RRNET2022) -> np.ndarray:
    """Step 4 on one resampled spectrum (float32[n_pixels]), arm by arm, the published way."""
    blue, red = spec.grids()
    flux = np.asarray(flux, np.float32)
    return np.concatenate(
        [normalize_arm(flux[: blue.size], blue, spec), normalize_arm(flux[blue.size :], red, spec)]
    )


class _ArmFitter:
    """Least squares for one arm's fixed grid: polyfit's solution as a precomputed projection."""

    def __init__(self, grid: np.ndarray, degree: int):
        self.x = _standard_x(grid)
        vander = np.vander(self.x, degree + 1)
        self.vander = vander
        self.pinv = np.linalg.pinv(vander)  # (degree+1, n)

    def fit(self, y: np.ndarray) -> np.ndarray:
        """Fitted values (float64) for each row of ``y``."""
        return (y @ self.pinv.T) @ self.vander.T


_FITTERS: dict[tuple, _ArmFitter] = {}


def _fitter(grid_def: tuple[float, float, float], degree: int) -> _ArmFitter:
    key = (grid_def, degree)
    if key not in _FITTERS:
        _FITTERS[key] = _ArmFitter(np.arange(*grid_def), degree)
    return _FITTERS[key]


def _normalize_arm_batch(
    flux: np.ndarray, grid_def: tuple[float, float, float], spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray]:
    """(normalized flux float32, continuum float64) of one arm of a batch."""
    fitter = _fitter(grid_def, spec.poly_degree)
    f = _median_clean(flux, spec)
    mu_f = np.mean(f, axis=1, keepdims=True)
    y = f - mu_f
    s_f = np.std(y, axis=1, keepdims=True)
    y = y / s_f
    lo, hi = spec.fit_clip
    fit = np.empty(y.shape, np.float64)
    rows = np.arange(y.shape[0])  # rows still changing; y holds only those
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(MAX_ITERATIONS):
            fa = fitter.fit(y)
            e = fa - y
            centred = e - e.mean(axis=1, keepdims=True)
            s = np.sqrt(np.einsum("ij,ij->i", centred, centred) / e.shape[1])[:, None]
            bad = (e <= -lo * s) | (e >= hi * s)
            np.copyto(y, fa, casting="same_kind", where=bad)  # the fit, cast to float32
            changed = bad.any(axis=1)
            if not changed.all():
                fit[rows[~changed]] = fa[~changed]
                rows, y = rows[changed], y[changed]
                if rows.size == 0:
                    break
        else:
            fit[rows] = fa
        continuum = fit * s_f + mu_f
        return (f / continuum).astype(np.float32), continuum


_BLOCK_ROWS = 48  # rows per block: the iteration's float64 temporaries stay in the L2 cache


def normalize_with_continuum(
    flux: np.ndarray, spec: PreprocessSpec = RRNET2022
) -> tuple[np.ndarray, np.ndarray]:
    """Step 4 for a batch: (normalized flux float32[B, n_pixels], continuum float64[B, n_pixels]).

    The normalized flux matches :func:`normalize_reference` row by row (to ~1e-6); rows that
    are all zero or constant come out NaN, which the callers report as a failed spectrum.
    Normalization divides by the continuum, so an inverse variance follows as ivar·continuum².
    """
    flux = np.atleast_2d(np.asarray(flux, np.float32))
    n_blue = np.arange(*spec.blue).size
    out = np.empty(flux.shape, np.float32)
    continuum = np.empty(flux.shape, np.float64)
    for start in range(0, flux.shape[0], _BLOCK_ROWS):
        rows = slice(start, start + _BLOCK_ROWS)
        for cols, grid_def in ((slice(None, n_blue), spec.blue), (slice(n_blue, None), spec.red)):
            out[rows, cols], continuum[rows, cols] = _normalize_arm_batch(
                flux[rows, cols], grid_def, spec
            )
    return out, continuum


def normalize(flux: np.ndarray, spec: PreprocessSpec = RRNET2022) -> np.ndarray:
    """Step 4 for a batch: float32[B, n_pixels] → float32[B, n_pixels] (see
    :func:`normalize_with_continuum`)."""
    return normalize_with_continuum(flux, spec)[0]


def preprocess(spectrum: Spectrum, rv: float = 0.0, spec: PreprocessSpec = RRNET2022) -> np.ndarray:
    """Steps 1-4 for one spectrum: the normalized flux the network's input is made from."""
    return normalize(resample(spectrum, rv, spec), spec)[0]


def _bad_pixels(arm: Arm) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (
            (arm.ivar == 0)
            | (arm.mask != 0)
            | ~(arm.flux > 0)
            | ~np.isfinite(arm.flux)
            | ~np.isfinite(arm.ivar)
        )


def _longest_run(bad: np.ndarray) -> int:
    if not bad.any():
        return 0
    padded = np.concatenate(([0], bad.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def outlier_stats(
    spectrum: Spectrum, rv: float = 0.0, spec: PreprocessSpec = RRNET2022
) -> tuple[int, int]:
    """(number of outlier pixels, longest run of them) on the network's grid.

    A grid pixel is an outlier when the source pixel nearest to it (in the rest frame) has
    IVAR = 0, a nonzero mask bit, FLUX <= 0 or a non-finite value. These are bad pixels
    (cosmic rays, dead columns), not the line cores that the median cleaning replaces.
    """
    flags = []
    for arm, grid in zip((spectrum.blue, spectrum.red), spec.grids(), strict=True):
        wave = rest_frame(arm.wavelength, rv).astype(np.float64)
        right = np.clip(np.searchsorted(wave, grid), 1, wave.size - 1)
        left = right - 1
        nearest = np.where(grid - wave[left] <= wave[right] - grid, left, right)
        flags.append(_bad_pixels(arm)[nearest])
    bad = np.concatenate(flags)
    # Runs do not continue across the gap between the arms.
    return int(bad.sum()), max(_longest_run(f) for f in flags)
