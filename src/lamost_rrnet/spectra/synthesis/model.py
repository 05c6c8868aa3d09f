"""Noiseless continuum-normalized model spectra at R ≈ 7500 on a rest-frame log-λ grid.

Lines narrower than the instrument (all but a few) enter through their equivalent widths: each
line's width is spread with the instrumental Gaussian, which is its observed profile at this
resolution, and the sum D of these convolved widths becomes an absorption d0 (1 - e^-D) that
saturates like a blend. The Mg b triplet and Hα, whose wings are wider than the instrument,
get Milne-Eddington profiles of their own, convolved explicitly. docs/simulator.md has the
physics and its limits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from scipy.ndimage import convolve1d

from lamost_rrnet.labels import ELEMENTS
from lamost_rrnet.spectra.synthesis import molecules
from lamost_rrnet.spectra.synthesis.atmosphere import (
    AMU,
    C_CMS,
    C_KMS,
    Atmosphere,
    LinePhysics,
    atmosphere,
    depth_limit,
    ion_fractions,
    kappa_star_term,
    kappa_wave_term,
    log_cross_section,
    log_kappa_hminus,
    microturbulence,
    reduced_widths,
    species_terms,
)
from lamost_rrnet.spectra.synthesis.linelist import ELEMENT_DATA, K_CGS, load_lines

RESOLUTION = 7500.0
LOG_STEP = 1e-5  # the coadds' log10 λ step

#: Calibration, fixed once against solar equivalent widths and the real spectra (realism.py):
LOG_ETA_OFFSET = -0.05  # dex added to every atomic line opacity
STEEPNESS = 3.0  # temperature-gradient scale of the Milne-Eddington source function
HALPHA_DEPTH = 0.85  # Hα's core depth limit (its core is chromospheric, not LTE)
LOG_MOLECULAR_OFFSET = {"CN A-X": 0.0, "C2 d-a": -0.7}  # dex added to each band system
#: Hα Stark wings, η(Δλ) = K (Δλ² + 0.5²)^(-p/2) with K = K_sun 10^(-slope (θ - θ_sun)):
HALPHA_WING = (0.25, 1.5, 3.5)  # log10 K_sun (Å^p), p, slope

#: Rest-frame model grids (vacuum Å), wide enough for every real coverage and |RV| ≤ 600 km/s.
MODEL_ARMS = {"blue": (4872.0, 5410.0), "red": (6250.0, 6895.0)}

MG_B = (5168.7614, 5174.1248, 5185.0477)
H_ALPHA = 6564.61
_STRONG_WINDOWS = {"mgb": (5150.0, 5205.0), "halpha": (6480.0, 6650.0)}


@dataclass(frozen=True)
class LogGrid:
    """A log10-uniform wavelength grid."""

    log_start: float
    step: float
    n: int

    @classmethod
    def covering(cls, start: float, stop: float, step: float = LOG_STEP) -> LogGrid:
        log_start = np.floor(np.log10(start) / step) * step
        return cls(float(log_start), step, int(np.ceil((np.log10(stop) - log_start) / step)) + 1)

    @property
    def loglam(self) -> np.ndarray:
        return self.log_start + self.step * np.arange(self.n)

    @property
    def wavelength(self) -> np.ndarray:
        return 10.0**self.loglam

    def position(self, wavelength: np.ndarray) -> np.ndarray:
        """Fractional pixel index of wavelengths (Å)."""
        return (np.log10(wavelength) - self.log_start) / self.step


@dataclass
class Stars:
    """Labels as arrays: Teff, log g, vmic and [X/H] for every element the line list has."""

    teff: np.ndarray
    logg: np.ndarray
    vmic: np.ndarray
    abundances: dict[str, np.ndarray]

    @property
    def feh(self) -> np.ndarray:
        return self.abundances["Fe"]

    def __len__(self) -> int:
        return int(self.teff.size)

    def take(self, index) -> Stars:
        return Stars(
            self.teff[index],
            self.logg[index],
            self.vmic[index],
            {k: v[index] for k, v in self.abundances.items()},
        )

    @classmethod
    def from_labels(cls, labels: pd.DataFrame) -> Stars:
        """From a label table (``draw_labels`` columns). Missing [X/H] follow [Fe/H]; a missing
        vmic follows the Gaia-ESO relation."""
        for column in ("Teff[K]", "Logg", "FeH"):
            if column not in labels.columns:
                raise ValueError(f"the labels have no {column} column")
        teff = labels["Teff[K]"].to_numpy(float)
        logg = labels["Logg"].to_numpy(float)
        feh = labels["FeH"].to_numpy(float)
        vmic = (
            labels["vmic"].to_numpy(float)
            if "vmic" in labels.columns
            else microturbulence(teff, logg)
        )
        abundances = {}
        for element in ELEMENT_DATA:
            column = f"{element}H"
            if element in ELEMENTS and column in labels.columns:
                abundances[element] = labels[column].to_numpy(float)
            else:
                abundances[element] = feh  # elements without a label follow iron
        return cls(teff, logg, vmic, abundances)


def reference_oxygen(feh: np.ndarray) -> np.ndarray:
    """[O/H] that CO formation sees: scaled solar with the α trend, not the star's O label."""
    return feh + 0.35 * np.clip(-feh, 0.0, 1.0)


def _gaussian_sigma_pixels(resolution: float, step: float) -> float:
    """The instrumental σ in pixels of a log grid, plus the pixel's own boxcar width."""
    sigma = 1.0 / (resolution * 2.0 * np.sqrt(2.0 * np.log(2.0)) * np.log(10.0) * step)
    return float(np.sqrt(sigma**2 + 1.0 / 12.0))


def _spread_matrix(grid: LogGrid, wave: np.ndarray, sigma: float) -> sparse.csr_matrix:
    """Sparse (pixels × lines): each line's instrumental Gaussian per Å, on ``grid``."""
    half = int(np.ceil(4.5 * sigma))
    pos = grid.position(wave)
    first = np.floor(pos).astype(np.int64) - half
    cols = first[:, None] + np.arange(2 * half + 2)[None, :]
    dist = cols - pos[:, None]
    dlam = 10.0 ** (grid.log_start + grid.step * cols) * np.log(10.0) * grid.step
    weight = np.exp(-0.5 * (dist / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma * dlam)
    rows = np.broadcast_to(np.arange(wave.size)[:, None], cols.shape)
    keep = (cols >= 0) & (cols < grid.n)
    matrix = sparse.csr_matrix(
        (weight[keep].astype(np.float32), (cols[keep], rows[keep])), shape=(grid.n, wave.size)
    )
    return matrix


class Synthesizer:
    """Builds the per-line and per-band data once; then makes model spectra for many stars."""

    def __init__(self, resolution: float = RESOLUTION):
        self.resolution = resolution
        self.arms = {arm: LogGrid.covering(*span) for arm, span in MODEL_ARMS.items()}
        self.offsets = {"blue": 0, "red": self.arms["blue"].n}
        self.n_pixels = sum(g.n for g in self.arms.values())
        self.wavelength = np.concatenate([g.wavelength for g in self.arms.values()])
        self.sigma = _gaussian_sigma_pixels(resolution, LOG_STEP)

        lines = load_lines()
        is_strong = (lines.element == "Mg") & np.isin(np.round(lines.wave, 2), np.round(MG_B, 2))
        self.mgb_index = np.flatnonzero(is_strong)
        self.physics = LinePhysics.build(lines, LOG_ETA_OFFSET)
        # Every line's profile, except Mg b's: those get their own wings (_strong_lines).
        self.spread = (self._spread(lines.wave) @ sparse.diags(~is_strong * 1.0)).tocsr()
        self.spread.eliminate_zeros()

        # Molecular bands: per-temperature basis spectra, interpolated in θ for each star.
        self.mol_theta = np.linspace(5040.0 / 7000.0, 5040.0 / 3000.0, 41)
        self.mol_lines = {}
        bases = []
        for system in molecules.SYSTEMS:
            ml = molecules.molecular_lines(system)
            self.mol_lines[system.name] = ml
            log_base = (
                log_cross_section(ml.wave)
                + ml.log_gf
                - kappa_wave_term(ml.wave)
                + LOG_MOLECULAR_OFFSET[system.name]
            )
            strength = 10.0 ** (log_base[None, :] - self.mol_theta[:, None] * ml.energy[None, :])
            bases.append((self._spread(ml.wave) @ strength.T.astype(np.float32)).T)
        self.mol_stack = np.ascontiguousarray(np.concatenate(bases), np.float32)

        self.strong = {}
        for name, (lo, hi) in _STRONG_WINDOWS.items():
            arm = "blue" if hi < 6000 else "red"
            grid = self.arms[arm]
            i0 = int(np.floor(grid.position(lo)))
            i1 = int(np.ceil(grid.position(hi)))
            # Two samples per pixel resolve the saturated cores before binning.
            sub = grid.log_start + grid.step * (
                np.arange(i0, i1)[:, None] + np.array([-0.25, 0.25])
            )
            self.strong[name] = (
                self.offsets[arm] + i0,
                self.offsets[arm] + i1,
                10.0 ** sub.ravel(),
            )
        offset = self.strong["halpha"][2] - H_ALPHA
        reach = min(H_ALPHA - _STRONG_WINDOWS["halpha"][0], _STRONG_WINDOWS["halpha"][1] - H_ALPHA)
        # The taper takes the far wing smoothly to zero at the window's edges (< 0.5% there).
        taper = np.clip(1.0 - (offset / reach) ** 2, 0.0, None) ** 2
        profile = (offset**2 + 0.5**2) ** (-HALPHA_WING[1] / 2) * taper
        self.stark_profile = profile.astype(np.float32)
        half = int(np.ceil(4.5 * self.sigma))
        kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / self.sigma) ** 2)
        self.kernel = (kernel / kernel.sum()).astype(np.float32)

    def _spread(self, wave: np.ndarray) -> sparse.csr_matrix:
        """Sparse (model pixels × lines) instrumental profiles of lines at ``wave``."""
        blocks = [_spread_matrix(grid, wave, self.sigma) for grid in self.arms.values()]
        return sparse.vstack(blocks).tocsr()

    def arm_slice(self, arm: str) -> slice:
        return slice(self.offsets[arm], self.offsets[arm] + self.arms[arm].n)

    # -- physics per star -------------------------------------------------------------------

    def _depth_limits(self, atm: Atmosphere) -> np.ndarray:
        """d0 on every model pixel, linear in λ within each arm (it varies slowly)."""
        out = np.empty((atm.teff.size, self.n_pixels), np.float32)
        for arm, grid in self.arms.items():
            ends = np.array([grid.wavelength[0], grid.wavelength[-1]])
            d = depth_limit(atm.teff, ends, STEEPNESS)
            x = np.linspace(0.0, 1.0, grid.n, dtype=np.float32)
            sl = self.arm_slice(arm)
            out[:, sl] = d[:, :1] + (d[:, 1:] - d[:, :1]) * x[None, :]
        return out

    def _molecular_depth(self, atm: Atmosphere, stars: Stars) -> np.ndarray:
        """Σ over bands of (molecules per continuum opacity) × the basis spectrum at θ."""
        pos = np.clip(
            (atm.theta - self.mol_theta[0]) / (self.mol_theta[1] - self.mol_theta[0]),
            0,
            self.mol_theta.size - 1.001,
        )
        i = pos.astype(int)
        f = pos - i
        log_kappa = kappa_star_term(atm.theta, atm.log_pe)
        log_c = ELEMENT_DATA["C"].solar - 12.0 + stars.abundances["C"]
        log_o = ELEMENT_DATA["O"].solar - 12.0 + reference_oxygen(stars.feh)
        free = {"C": molecules.log_free_carbon(atm.temperature, atm.log_nh, log_c, log_o)}
        n_theta = self.mol_theta.size
        out = np.zeros((len(stars), self.n_pixels), np.float32)
        for s, system in enumerate(molecules.SYSTEMS):
            log_n = atm.log_nh + molecules.log_number_factor(system, atm.temperature)
            for atom in system.atoms:
                el = ELEMENT_DATA[atom]
                log_n = log_n + el.solar - 12.0 + stars.abundances[atom] + free.get(atom, 0.0)
                log_n = log_n + ion_fractions(atm, atom)[0]
            scale = 10.0 ** (log_n - log_kappa)
            # Linear interpolation in θ between the two nearest basis spectra.
            basis = self.mol_stack[s * n_theta : (s + 1) * n_theta]
            out += (scale * (1 - f)).astype(np.float32)[:, None] * basis[i]
            out += (scale * f).astype(np.float32)[:, None] * basis[i + 1]
        return out

    def _strong_lines(self, atm: Atmosphere, terms: np.ndarray) -> dict[str, np.ndarray]:
        """Intrinsic absorption A(λ) of Mg b and Hα on their windows, before convolution."""
        f32 = np.float32
        out = {}
        # Mg b: Milne-Eddington absorption of the three lines' summed Voigt opacity, from the
        # same atomic physics as the other lines. H(a, v) ≈ e^(-v²) + a / (√π (1 + v²)) holds
        # the Doppler core and the Lorentz wings; the cores are saturated anyway.
        phys = self.physics
        k = self.mgb_index
        log_eta = (
            phys.log_eta_int(k)[None, :]
            + terms[:, phys.species[k]]
            - atm.theta[:, None] * phys.ep[k][None, :]
            - kappa_star_term(atm.theta, atm.log_pe)[:, None]
        )
        v2 = 2 * K_CGS * atm.temperature / (ELEMENT_DATA["Mg"].mass * AMU) * 1e-10 + atm.vmic**2
        dld = np.array(MG_B)[None, :] * np.sqrt(v2)[:, None] / C_KMS
        log_vdw = 0.3 * np.log10(atm.temperature / 1e4) + atm.log_nh
        gamma = phys.gamma_rad[k][None, :] + phys.gamma6[k][None, :] * 10.0 ** log_vdw[:, None]
        hwhm = gamma * (np.array(MG_B) * 1e-8) ** 2 / (4 * np.pi * C_CMS) * 1e8
        _, _, sub = self.strong["mgb"]
        eta = np.zeros((atm.teff.size, sub.size), f32)
        for j, line in enumerate(MG_B):
            inv = (1.0 / dld[:, j]).astype(f32)[:, None]
            v_sq = np.square((sub - line).astype(f32)[None, :] * inv)
            h = np.exp(-v_sq)
            v_sq += f32(1.0)
            h += (hwhm[:, j] / dld[:, j] / np.sqrt(np.pi)).astype(f32)[:, None] / v_sq
            h *= (10.0 ** log_eta[:, j] / (np.sqrt(np.pi) * dld[:, j])).astype(f32)[:, None]
            eta += h
        d0 = depth_limit(atm.teff, np.array([5180.0]), STEEPNESS).astype(f32)
        out["mgb"] = self._bin(d0 * eta / (f32(1.0) + eta))

        # Hα: a saturated Doppler core from the n = 2 population, and Stark wings. Their
        # strength is n2 N_e / κ(H⁻), in which P_e cancels (no log g dependence); a one-layer
        # model makes its θ slope (-10.95) far too steep, so slope and shape are calibrated.
        log_eta_h = (
            log_cross_section(H_ALPHA)
            + np.log10(8 * 0.6407)
            - np.log10(2.0)
            - atm.theta * 10.199
            - log_kappa_hminus(atm.theta, atm.log_pe, H_ALPHA)
        )
        dld_h = H_ALPHA * np.sqrt(2e-10 * K_CGS * atm.temperature / (1.008 * AMU) + atm.vmic**2)
        dld_h /= C_KMS
        _, _, sub = self.strong["halpha"]
        inv = (1.0 / dld_h).astype(f32)[:, None]
        eta = np.exp(-np.square((sub - H_ALPHA).astype(f32)[None, :] * inv))
        eta *= (10.0**log_eta_h / (np.sqrt(np.pi) * dld_h)).astype(f32)[:, None]
        log_k, _, slope = HALPHA_WING
        theta_eff = 5040.0 / atm.teff
        wing = (10.0 ** (log_k - slope * (theta_eff - 5040.0 / 5777.0))).astype(f32)[:, None]
        eta += wing * self.stark_profile[None, :]
        out["halpha"] = self._bin(HALPHA_DEPTH * eta / (f32(1.0) + eta))
        return out

    @staticmethod
    def _bin(samples: np.ndarray) -> np.ndarray:
        """Mean of the sub-pixel samples of each pixel (two per pixel)."""
        return samples.reshape(samples.shape[0], -1, 2).mean(axis=2)

    def model(self, stars: Stars, chunk: int = 64) -> np.ndarray:
        """Continuum-normalized rest-frame spectra on the model grid: float32 (stars, pixels)."""
        out = np.empty((len(stars), self.n_pixels), np.float32)
        # Chunks of a few dozen stars keep the (stars × lines) temporaries in cache.
        for start in range(0, len(stars), chunk):
            part = stars.take(slice(start, start + chunk))
            out[start : start + len(part)] = self._model_chunk(part)
        return out

    def _model_chunk(self, stars: Stars) -> np.ndarray:
        atm = atmosphere(stars.teff, stars.logg, stars.feh, stars.vmic)
        terms = species_terms(atm, stars.abundances, self.physics)
        widths = reduced_widths(atm, terms, self.physics)
        depth = np.ascontiguousarray(np.asarray(self.spread @ widths.T, np.float32).T)
        depth += self._molecular_depth(atm, stars)
        # F = 1 - d0 (1 - e^-D), computed in place. exp then -1 rather than expm1: float32
        # expm1 is not vectorized in NumPy (7x slower), and the cancellation costs at most
        # 6e-8 of a flux near 1.
        np.negative(depth, out=depth)
        flux = np.exp(depth, out=depth)
        flux -= np.float32(1.0)
        flux *= self._depth_limits(atm)
        flux += np.float32(1.0)
        for name, absorption in self._strong_lines(atm, terms).items():
            i0, i1, _ = self.strong[name]
            smooth = convolve1d(absorption.astype(np.float32), self.kernel, axis=1, mode="nearest")
            flux[:, i0:i1] *= 1.0 - smooth
        return flux


@functools.cache
def synthesizer(resolution: float = RESOLUTION) -> Synthesizer:
    """The shared :class:`Synthesizer` (built once per process, about a second)."""
    return Synthesizer(resolution)
