"""Radial velocities by cross-correlation with rest-frame templates that the package builds.

The templates are noiseless model spectra from lamost-rrnet's own spectral synthesis
(:mod:`lamost_rrnet.spectra.synthesis`, which the simulator uses too) for a few stellar
types, on its log-λ grid at R ≈ 7500; they are built once per process. Each arm is divided
by a robust polynomial continuum; an FFT cross-correlation over whole pixels picks the
template and the velocity, and a χ² fit (template scaled and offset per arm, sub-pixel shifts
by cubic interpolation) refines it. The uncertainty is the χ² curvature's, scaled up by the
reduced χ² when the template does not match to the noise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lamost_rrnet.errors import SpectrumError
from lamost_rrnet.spectra.io import Arm, Spectrum
from lamost_rrnet.spectra.synthesis.interpolation import cubic_columns

C_KMS = 299792.458
V_MAX = 600.0  # km/s searched
MIN_SIGNIFICANCE = 10.0  # peak of the cross-correlation over its noise
#: Observed-frame windows used: where the template has lines, with room for |RV| ≤ V_MAX.
WINDOWS = {"blue": (4950.0, 5350.0), "red": (6300.0, 6800.0)}
#: (Teff, log g, [Fe/H]) of the templates: K giant, metal-poor giant, K, G and F dwarfs.
TEMPLATE_LABELS = (
    (4500.0, 2.4, -0.2),
    (4900.0, 2.0, -1.0),
    (4600.0, 4.6, 0.0),
    (5750.0, 4.4, 0.0),
    (6300.0, 4.2, -0.4),
)
_DEGREE = 5


@dataclass(frozen=True)
class _Templates:
    log_start: dict[str, float]  # per arm: log10 λ of pixel 0
    step: float
    flux: dict[str, np.ndarray]  # per arm: (templates, pixels), continuum-normalized
    max_lag: int  # lattice pixels searched either way
    n_fft: dict[str, int]
    spectra: dict[str, tuple[np.ndarray, np.ndarray]]  # per arm: FFTs of (T - 1), (T - 1)²


@functools.cache
def _templates() -> _Templates:
    import pandas as pd

    from lamost_rrnet.spectra.synthesis.model import Stars, synthesizer

    synth = synthesizer()
    labels = pd.DataFrame(TEMPLATE_LABELS, columns=["Teff[K]", "Logg", "FeH"])
    model = synth.model(Stars.from_labels(labels))
    step = synth.arms["blue"].step
    max_lag = int(np.ceil(np.log10(1 + V_MAX / C_KMS) / step))
    flux, n_fft, spectra = {}, {}, {}
    for arm in synth.arms:
        flux[arm] = model[:, synth.arm_slice(arm)].astype(np.float64)
        n = flux[arm].shape[1]
        n_fft[arm] = int(2 ** np.ceil(np.log2(n + 2 * max_lag + 1)))
        resid = flux[arm] - 1.0
        spectra[arm] = (
            np.conj(np.fft.rfft(resid, n_fft[arm], axis=1)),
            np.conj(np.fft.rfft(resid**2, n_fft[arm], axis=1)),
        )
    return _Templates(
        {arm: g.log_start for arm, g in synth.arms.items()},
        step,
        flux,
        max_lag,
        n_fft,
        spectra,
    )


@dataclass
class _Segment:
    """One arm, continuum-normalized, on the pixels that count."""

    arm: str
    loglam: np.ndarray
    y: np.ndarray  # flux / continuum - 1
    w: np.ndarray  # inverse variance of y


def _segment(arm: Arm, name: str) -> _Segment | None:
    lo, hi = WINDOWS[name]
    wave = np.asarray(arm.wavelength, float)
    flux = np.asarray(arm.flux, float)
    ivar = np.asarray(arm.ivar, float) if arm.ivar.size else np.ones_like(flux)
    with np.errstate(invalid="ignore"):
        good = (
            (wave > lo)
            & (wave < hi)
            & np.isfinite(flux)
            & np.isfinite(ivar)
            & (ivar > 0)
            & (flux > 0)
            & (np.asarray(arm.mask) == 0)
        )
    if good.sum() < 200:
        return None
    wave, flux, ivar = wave[good], flux[good], ivar[good]
    x = (2 * wave - (lo + hi)) / (hi - lo)
    basis = np.polynomial.legendre.legvander(x, _DEGREE)
    keep = np.ones(x.size, bool)
    for _ in range(10):  # the upper envelope: lines and cosmic rays are clipped away
        bk = basis * keep[:, None]
        coef = np.linalg.solve(bk.T @ basis, bk.T @ flux)
        cont = basis @ coef
        resid = flux - cont
        sigma = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        new = (resid > -1.0 * sigma) & (resid < 3.0 * sigma)
        if np.array_equal(new, keep) or new.sum() < 50:
            break
        keep = new
    if not np.all(cont > 0):
        return None
    y = flux / cont - 1.0
    w = ivar * cont**2
    spikes = y * np.sqrt(w) > 6.0  # cosmic rays above the continuum
    w[spikes] = 0.0
    return _Segment(name, np.log10(wave), y, w)


def _lattice(seg: _Segment, start: float, step: float, n: int) -> tuple[np.ndarray, ...]:
    """y·w and w of a segment on the template's log lattice (linear interpolation)."""
    grid = start + step * np.arange(n)
    inside = (grid >= seg.loglam[0]) & (grid <= seg.loglam[-1])
    wy = np.where(inside, np.interp(grid, seg.loglam, seg.w * seg.y), 0.0)
    w = np.where(inside, np.interp(grid, seg.loglam, seg.w), 0.0)
    return wy, w


def _coarse(segments: list[_Segment], tpl: _Templates) -> tuple[int, int, float]:
    """(template, lag in lattice pixels, significance) of the best cross-correlation peak.

    For a lag k, C(k) = Σ_j w_j y_j (T_(j-k) - 1) and its noise is √(Σ_j w_j (T_(j-k) - 1)²).
    """
    lags = np.arange(-tpl.max_lag, tpl.max_lag + 1)
    num = 0.0
    den = 0.0
    for seg in segments:
        n_fft = tpl.n_fft[seg.arm]
        n = tpl.flux[seg.arm].shape[1]
        wy, w = _lattice(seg, tpl.log_start[seg.arm], tpl.step, n)
        # Subtract the weighted mean so that continuum offsets do not correlate.
        wy = wy - w * (wy.sum() / max(w.sum(), 1e-30))
        resid_fft, square_fft = tpl.spectra[seg.arm]
        idx = lags % n_fft
        num = num + np.fft.irfft(np.fft.rfft(wy, n_fft)[None, :] * resid_fft, n_fft)[:, idx]
        den = den + np.fft.irfft(np.fft.rfft(w, n_fft)[None, :] * square_fft, n_fft)[:, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(den > 0, num / np.sqrt(np.maximum(den, 1e-300)), 0.0)
    t, k = np.unravel_index(int(np.argmax(z)), z.shape)
    return int(t), int(lags[k]), float(z[t, k])


def _chi2(segments: list[_Segment], tpl: _Templates, t: int, velocity: float) -> float:
    """χ² of the template at ``velocity``, scaled and offset per arm by least squares."""
    total = 0.0
    shift = np.log10(1 + velocity / C_KMS)
    for seg in segments:
        pos = (seg.loglam - shift - tpl.log_start[seg.arm]) / tpl.step
        model = cubic_columns(tpl.flux[seg.arm][t : t + 1], pos)[0].astype(float) - 1.0
        sw, swm, swy = seg.w.sum(), (seg.w * model).sum(), (seg.w * seg.y).sum()
        swmm, swmy = (seg.w * model * model).sum(), (seg.w * model * seg.y).sum()
        det = sw * swmm - swm * swm
        if det <= 0:
            return np.inf
        alpha = (sw * swmy - swm * swy) / det
        beta = (swy - alpha * swm) / sw
        total += float((seg.w * (seg.y - alpha * model - beta) ** 2).sum())
    return total


def estimate_rv(spectrum: Spectrum) -> tuple[float, float]:
    """(RV, 1σ uncertainty) in km/s of a spectrum, by cross-correlation with the templates.

    Raises :class:`SpectrumError` when no RV can be measured: too few usable pixels, or no
    significant correlation peak (e.g. a spectrum of noise).
    """
    segments = [s for s in (_segment(spectrum.blue, "blue"), _segment(spectrum.red, "red")) if s]
    where = f"{spectrum.filename}[{spectrum.blue.extname},{spectrum.red.extname}]"
    if not segments:
        raise SpectrumError(f"{where}: no RV: too few usable pixels")
    tpl = _templates()
    t, lag, significance = _coarse(segments, tpl)
    if significance < MIN_SIGNIFICANCE or abs(lag) >= tpl.max_lag:
        raise SpectrumError(
            f"{where}: no RV: no significant cross-correlation peak "
            f"(significance {significance:.1f} < {MIN_SIGNIFICANCE:g})"
        )
    pixel = (10**tpl.step - 1) * C_KMS  # km/s per lattice pixel
    offsets = np.arange(-1.5, 1.51, 0.25)
    velocities = (lag + offsets) * pixel
    chi2 = np.array([_chi2(segments, tpl, t, v) for v in velocities])
    k = int(np.clip(np.argmin(chi2), 2, offsets.size - 3))
    a, b, c = np.polyfit(velocities[k - 2 : k + 3], chi2[k - 2 : k + 3], 2)
    if a <= 0:
        raise SpectrumError(f"{where}: no RV: the χ² minimum is not defined")
    rv = float(-b / (2 * a))
    if not velocities[0] <= rv <= velocities[-1]:
        rv = float(velocities[np.argmin(chi2)])
    dof = max(sum(int((s.w > 0).sum()) for s in segments) - 1 - 2 * len(segments), 1)
    chi2_min = c - b * b / (4 * a)
    err = float(np.sqrt(1.0 / a) * np.sqrt(max(1.0, chi2_min / dof)))
    return rv, err
