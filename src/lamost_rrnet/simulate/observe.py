"""From model spectra to observed ones: RV shift, blaze and counts, noise, defects, coadds.

Mask bits follow LAMOST's pixel mask: 1 (BADCCD) marks bad pixels and columns, which carry
FLUX = 0 and IVAR = 0 in coadds; 2 (BADPROFILE) marks cosmic-ray hits in single exposures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lamost_rrnet.spectra.synthesis.atmosphere import C_KMS, HC_K
from lamost_rrnet.spectra.synthesis.interpolation import cubic_columns, cubic_shift
from lamost_rrnet.spectra.synthesis.model import LOG_STEP, LogGrid, Synthesizer

BAD_PIXEL = 1
COSMIC_RAY = 2
EXPOSURE_PIXELS = 4136

#: The coadd coverage of the in-memory API: that of the real DR7 coadd
#: med-58025-HIP9645901_sp02-051.
COADD_GRIDS = {"blue": LogGrid.covering(4927.2, 5374.0), "red": LogGrid.covering(6300.2, 6877.0)}

#: Default defect rates: bad-pixel runs per pixel, cosmic-ray hits per pixel and exposure.
BAD_PIXEL_RATE = 2e-4
COSMIC_RATE = 5e-4


@dataclass
class ArmData:
    """Observed arrays of one arm for a batch of spectra on a shared wavelength grid."""

    wavelength: np.ndarray  # (pixels,) float64, vacuum Å, ascending
    flux: np.ndarray  # (spectra, pixels) float32, counts
    ivar: np.ndarray  # (spectra, pixels) float32
    mask: np.ndarray  # (spectra, pixels) int16
    snr: np.ndarray  # (spectra,) median flux·sqrt(ivar) over good pixels, as LAMOST reports


def shifted(
    synth: Synthesizer, model: np.ndarray, arm: str, loglam: np.ndarray, rv: np.ndarray
) -> np.ndarray:
    """The rest-frame ``model`` seen at observed log10 λ ``loglam`` (shared by all rows).

    A grid with the model's step is a uniform shift per row; any other grid needs one RV
    for all rows."""
    grid = synth.arms[arm]
    rv = np.asarray(rv, float)
    doppler = np.log10(1.0 + rv / C_KMS)
    part = model[:, synth.arm_slice(arm)]
    if np.allclose(np.diff(loglam), grid.step, rtol=1e-9, atol=0):
        return cubic_shift(part, (loglam[0] - doppler - grid.log_start) / grid.step, loglam.size)
    if np.any(rv != rv[0]):
        raise ValueError("rows with different RVs need the model's own log-λ step")
    return cubic_columns(part, (loglam - doppler[0] - grid.log_start) / grid.step)


_NODES = 24


def _interpolation_matrix(x: np.ndarray) -> np.ndarray:
    """(nodes, pixels): linear interpolation from nodes evenly spaced over x ∈ [-1, 1]."""
    nodes = np.linspace(-1.0, 1.0, _NODES)
    return np.maximum(0.0, 1.0 - np.abs(x[None, :] - nodes[:, None]) / (nodes[1] - nodes[0]))


def continuum_counts(
    rng: np.random.Generator, wavelength: np.ndarray, teff: np.ndarray, level: np.ndarray
) -> np.ndarray:
    """A smooth blaze-like count level: the star's Planck slope times a peaked throughput.

    Both are smooth over an arm, so they are evaluated on a few nodes and interpolated."""
    n = teff.size
    lo, hi = float(wavelength[0]), float(wavelength[-1])
    x = (2.0 * wavelength - (lo + hi)) / (hi - lo)
    xn = np.linspace(-1.0, 1.0, _NODES)[None, :]
    lam = 0.5 * (lo + hi) + 0.5 * (hi - lo) * xn
    mid = 0.5 * (lo + hi)
    planck = np.expm1(HC_K / (mid * teff[:, None])) / np.expm1(HC_K / (lam * teff[:, None]))
    planck *= (mid / lam) ** 5
    x0 = rng.uniform(0.0, 0.3, (n, 1))
    width = rng.uniform(0.8, 1.0, (n, 1))
    tilt = rng.uniform(-0.1, 0.1, (n, 1))
    throughput = np.exp(-0.5 * ((xn - x0) / width) ** 2) * (1.0 + tilt * xn)
    nodes = (level[:, None] * planck * throughput).astype(np.float32)
    return nodes @ _interpolation_matrix(x).astype(np.float32)


def add_noise(
    rng: np.random.Generator, counts: np.ndarray, snr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson-like noise, σ² = k (counts + 0.1 median) with k set by the requested median S/N;
    returns (flux, ivar) with ivar = 1/σ² of the noiseless counts (float32)."""
    f32 = np.float32
    med = np.median(counts[:, ::8], axis=1, keepdims=True)  # a subsample is plenty
    k = med / (1.1 * np.maximum(np.asarray(snr, float)[:, None], 1e-3) ** 2)
    var = counts + (0.1 * med).astype(f32)
    var *= k.astype(f32)
    flux = rng.standard_normal(counts.shape, dtype=f32)
    flux *= np.sqrt(var)
    flux += counts
    return flux, np.reciprocal(var, out=var)


def defect_runs(rng: np.random.Generator, shape: tuple[int, int], rate: float, max_len: int):
    """Boolean (rows, pixels): Poisson-many runs per row, lengths 1..max_len."""
    out = np.zeros(shape, bool)
    if rate <= 0:
        return out
    counts = rng.poisson(rate * shape[1], shape[0])
    rows = np.repeat(np.arange(shape[0]), counts)
    starts = rng.integers(0, shape[1], rows.size)
    lengths = rng.integers(1, max_len + 1, rows.size)
    for offset in range(max_len):
        use = offset < lengths
        out[rows[use], np.minimum(starts[use] + offset, shape[1] - 1)] = True
    return out


def measured_snr(flux: np.ndarray, ivar: np.ndarray, stride: int = 1) -> np.ndarray:
    """Median of flux·sqrt(ivar) over every ``stride``-th pixel (IVAR = 0 ones count as 0),
    as LAMOST's SNR keyword."""
    flux, ivar = flux[:, ::stride], ivar[:, ::stride]
    return np.median(flux * np.sqrt(np.maximum(ivar, 0)), axis=1).astype(np.float64)


def observe_coadds(
    synth: Synthesizer,
    model: np.ndarray,
    teff: np.ndarray,
    rv: np.ndarray,
    snr: np.ndarray,
    rng: np.random.Generator,
    bad_pixel_rate: float = BAD_PIXEL_RATE,
) -> dict[str, ArmData]:
    """Coadd-like observations of model spectra on the standard grids (snr: (N, 2))."""
    out = {}
    level = np.exp(rng.uniform(np.log(500.0), np.log(5000.0), teff.size))
    for k, arm in enumerate(("blue", "red")):
        grid = COADD_GRIDS[arm]
        norm = shifted(synth, model, arm, grid.loglam, rv)
        counts = continuum_counts(rng, grid.wavelength, teff, level * (1.0 + 1.5 * k)) * norm
        flux, ivar = add_noise(rng, counts, snr[:, k])
        bad = defect_runs(rng, flux.shape, bad_pixel_rate, 5)
        flux[bad] = 0.0
        ivar[bad] = 0.0
        mask = np.where(bad, BAD_PIXEL, 0).astype(np.int16)
        # A quarter of the pixels gives the median S/N to well under 1%.
        out[arm] = ArmData(grid.wavelength, flux, ivar, mask, measured_snr(flux, ivar, 4))
    return out


@dataclass(frozen=True)
class Coverage:
    """The exposures' wavelength span of one arm on one spectrograph."""

    start: float  # Å
    log_span: float

    def exposure_loglam(self) -> np.ndarray:
        return np.log10(self.start) + self.log_span * np.arange(EXPOSURE_PIXELS) / (
            EXPOSURE_PIXELS - 1
        )

    def coadd_grid(self, trailing: int) -> LogGrid:
        log_start = np.ceil(np.log10(self.start) / LOG_STEP) * LOG_STEP
        n = int(np.floor((np.log10(self.start) + self.log_span - log_start) / LOG_STEP)) + 1
        return LogGrid(float(log_start), LOG_STEP, n + trailing)


#: Exposure coverage seen in the real files (Å): blue from 4894-4927 to 5372-5391, red from
#: 6270-6308 to 6842-6875.
_SPANS = {"blue": ((4893.0, 4928.0), (5372.0, 5391.0)), "red": ((6270.0, 6309.0), (6842.0, 6876.0))}


def spectrograph_coverage(rng: np.random.Generator) -> dict[str, Coverage]:
    """A spectrograph's arms, spread like the real files."""
    out = {}
    for arm, (start, end) in _SPANS.items():
        lo, hi = rng.uniform(*start), rng.uniform(*end)
        out[arm] = Coverage(lo, float(np.log10(hi / lo)))
    return out


@dataclass
class Exposure:
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    snr: float


def observe_exposures(
    synth: Synthesizer,
    model: np.ndarray,
    arm: str,
    coverage: Coverage,
    teff: float,
    rv: float,
    snr: np.ndarray,
    level: np.ndarray,
    rng: np.random.Generator,
    bad_columns: np.ndarray,
    cosmic_rate: float,
) -> list[Exposure]:
    """Single exposures of one star on one arm (``model``: its (1, pixels) rest spectrum)."""
    loglam = coverage.exposure_loglam()
    n = snr.size
    norm = shifted(synth, np.repeat(model, n, axis=0), arm, loglam, np.full(n, rv))
    wave = 10.0**loglam
    counts = continuum_counts(rng, wave, np.full(n, teff), level) * norm
    flux, ivar = add_noise(rng, counts, snr)
    mask = np.zeros(flux.shape, np.int16)
    hits = defect_runs(rng, flux.shape, cosmic_rate, 3)
    sigma = 1.0 / np.sqrt(ivar)
    flux = np.where(hits, flux + rng.uniform(5.0, 80.0, flux.shape) * sigma, flux)
    mask[hits] |= COSMIC_RAY
    flux[:, bad_columns] = 0.0
    ivar[:, bad_columns] = 0.0
    mask[:, bad_columns] |= BAD_PIXEL
    snrs = measured_snr(flux, ivar)
    return [Exposure(flux[i], ivar[i], mask[i], float(snrs[i])) for i in range(n)]


def combine(
    exposure_loglam: np.ndarray, exposures: list[Exposure], grid: LogGrid
) -> tuple[np.ndarray, ...]:
    """Inverse-variance coadd of exposures on ``grid``; masked pixels are rejected.

    Returns flux, ivar, andmask, ormask (float32, float32, int16, int16).
    """
    pos = (grid.loglam - exposure_loglam[0]) / (exposure_loglam[1] - exposure_loglam[0])
    inside = (pos >= 0) & (pos <= exposure_loglam.size - 1)
    i = np.clip(np.floor(pos).astype(np.int64), 0, exposure_loglam.size - 2)
    t = np.clip(pos - i, 0.0, 1.0)
    nearest = np.clip(np.rint(pos).astype(np.int64), 0, exposure_loglam.size - 1)
    num = np.zeros(grid.n)
    den = np.zeros(grid.n)
    ormask = np.zeros(grid.n, np.int16)
    andmask = np.full(grid.n, -1, np.int16)
    for exp in exposures:
        good = np.where(exp.mask == 0, exp.ivar, 0.0)
        w = good[i] * (1 - t) + good[i + 1] * t
        w = np.where(((exp.mask[i] != 0) | (exp.mask[i + 1] != 0)) | ~inside, 0.0, w)
        f = exp.flux[i] * (1 - t) + exp.flux[i + 1] * t
        num += w * f
        den += w
        m = np.where(inside, exp.mask[nearest], 0).astype(np.int16)
        ormask |= m
        andmask &= m
    andmask = np.where(inside, andmask, 0).astype(np.int16)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(den > 0, num / den, 0.0)
    return flux.astype(np.float32), den.astype(np.float32), andmask, ormask


def snr_ratio(teff: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Red-to-blue S/N ratio: cooler stars are relatively brighter in the red."""
    planck = np.expm1(HC_K / (5150.0 * teff)) / np.expm1(HC_K / (6600.0 * teff))
    planck *= (5150.0 / 6600.0) ** 5
    return np.sqrt(np.maximum(planck, 0.1)) * 1.6 * rng.uniform(0.85, 1.15, teff.size)
