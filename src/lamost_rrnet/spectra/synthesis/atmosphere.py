"""A one-layer stellar atmosphere and the line strengths it gives (docs/simulator.md).

Every star is reduced to the layer where its lines form: a grey-atmosphere temperature at
τ = 0.3, the gas pressure from hydrostatic equilibrium with the H⁻ continuum, and the electron
pressure from a Saha balance of hydrogen and the metals. Line strengths then follow from the
Boltzmann and Saha populations over the H⁻ continuum opacity, and a Milne-Eddington curve of
growth turns them into equivalent widths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import voigt_profile

from lamost_rrnet.spectra.synthesis.linelist import AMU, ELEMENT_DATA, K_CGS, LineData

C_CMS = 2.99792458e10
C_KMS = 299792.458
TAU_LINE = 0.3  # the optical depth that stands for the line-forming layer
HC_K = 1.4387769e8  # hc/k in Å K

#: Donors of electrons: hydrogen and the metals that matter below 6500 K, with the solar
#: abundance, ionization energy and 2U1/U0; the metals scale with [M/H].
_DONORS = (
    ("H", 12.00, 13.598, 1.0),
    ("Na", 6.24, 5.139, 2 / 2.04),
    ("Mg", 7.60, 7.646, 2 * 2.0 / 1.02),
    ("Al", 6.45, 5.986, 2 / 5.9),
    ("Si", 7.51, 8.152, 2 * 5.6 / 9.5),
    ("K", 5.03, 4.341, 2 / 2.3),
    ("Ca", 6.34, 6.113, 2 * 2.2 / 1.17),
    ("Fe", 7.50, 7.902, 2 * 45.0 / 30.0),
)


def saha_phi(temperature: np.ndarray, chi: float, two_u_ratio: float) -> np.ndarray:
    """Φ(T) = P_e N⁺/N⁰ in dyn cm⁻² (Gray 2005, eq. 1.20)."""
    t = np.asarray(temperature, float)
    return two_u_ratio * t**2.5 * 10.0 ** (-5040.0 * chi / t - 0.1762)


def hminus_alpha(wave: np.ndarray) -> np.ndarray:
    """H⁻ bound-free cross-section in 1e-18 cm² (Gray 2005, eq. 8.11 fit, valid to 16000 Å)."""
    coef = (1.99654, -1.18267e-5, 2.64243e-6, -4.40524e-10, 3.23992e-14, -1.39568e-18, 2.78701e-23)
    w = np.asarray(wave, float)
    return sum(c * w**k for k, c in enumerate(coef))


def kappa_wave_term(wave) -> np.ndarray:
    """The wavelength part of log10 κ(H⁻ bf) per neutral H atom (cm²) at unit P_e and θ."""
    return np.log10(4.158e-10 * 1e-18 * hminus_alpha(wave))


def kappa_star_term(theta: np.ndarray, log_pe: np.ndarray) -> np.ndarray:
    """The stellar part of log10 κ(H⁻ bf): P_e θ^(5/2) 10^(0.754 θ) (Gray 2005, eq. 8.12)."""
    return log_pe + 2.5 * np.log10(theta) + 0.754 * theta


def log_kappa_hminus(theta: np.ndarray, log_pe: np.ndarray, wave: float = 5000.0) -> np.ndarray:
    """log10 of the H⁻ bound-free opacity per neutral H atom (cm²) at ``wave``."""
    return kappa_wave_term(wave) + kappa_star_term(theta, log_pe)


def _electron_pressure(
    log_pg: np.ndarray, temperature: np.ndarray, mh: np.ndarray, start: np.ndarray | None = None
) -> np.ndarray:
    """Solve P_e (1 + He) = P_g Σ_j A_j Φ_j / (P_e + Φ_j) for log P_e (Newton in ln P_e)."""
    pg = 10.0**log_pg
    phis = np.stack([saha_phi(temperature, chi, u) for _, _, chi, u in _DONORS])
    abund = np.stack(
        [
            np.broadcast_to(10.0 ** (a - 12.0 + (0.0 if n == "H" else mh)), pg.shape)
            for n, a, _, _ in _DONORS
        ]
    )
    ap = abund * phis
    ln_pe = np.log(pg * 1e-4) if start is None else start * np.log(10.0)
    for _ in range(30):
        pe = np.exp(ln_pe)
        frac = ap / (pe + phis)
        rhs = frac.sum(axis=0)
        f = np.log(1.085 * pe) - np.log(pg * rhs)
        slope = 1.0 + (frac * pe / (pe + phis)).sum(axis=0) / rhs
        step = np.clip(f / slope, -2.0, 2.0)
        ln_pe = ln_pe - step
        if np.max(np.abs(step)) < 1e-6:
            break
    return ln_pe / np.log(10.0)


@dataclass
class Atmosphere:
    """The line-forming layer of each star (arrays over stars)."""

    teff: np.ndarray
    logg: np.ndarray
    mh: np.ndarray
    vmic: np.ndarray  # km/s
    temperature: np.ndarray  # K at τ = TAU_LINE
    log_pg: np.ndarray  # dyn cm⁻²
    log_pe: np.ndarray
    log_nh: np.ndarray  # neutral H per cm³

    @property
    def theta(self) -> np.ndarray:
        return 5040.0 / self.temperature


def microturbulence(teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """vmic (km/s) from the Gaia-ESO calibration for FGK stars (Bergemann et al.), clipped."""
    t = np.asarray(teff, float) - 5500.0
    g = np.asarray(logg, float) - 4.0
    vmic = 0.998 + 3.16e-4 * t - 0.253 * g - 2.86e-4 * t * g + 0.165 * g * g
    return np.clip(vmic, 0.5, 2.5)


def atmosphere(teff, logg, mh, vmic) -> Atmosphere:
    """The one-layer model for arrays of Teff (K), log g (cgs), [M/H] and vmic (km/s)."""
    teff, logg, mh, vmic = (np.atleast_1d(np.asarray(x, float)) for x in (teff, logg, mh, vmic))
    # Grey atmosphere: T⁴ = 3/4 Teff⁴ (τ + 2/3).
    temperature = teff * (0.75 * (TAU_LINE + 2.0 / 3.0)) ** 0.25
    theta = 5040.0 / temperature
    g = 10.0**logg
    log_pg = 4.8 + 0.6 * (logg - 4.44)
    log_pe = None
    for _ in range(60):  # hydrostatic equilibrium P_g = g τ / κ, κ per gram from H⁻
        log_pe = _electron_pressure(log_pg, temperature, mh, log_pe)
        kappa_mass = 10.0 ** log_kappa_hminus(theta, log_pe) / (1.4 * AMU)
        new = np.log10(g * TAU_LINE / kappa_mass)
        change = new - log_pg
        log_pg = log_pg + 0.6 * change
        if np.max(np.abs(change)) < 1e-5:
            break
    log_pe = _electron_pressure(log_pg, temperature, mh, log_pe)
    log_nh = log_pg - np.log10(1.085 * K_CGS * temperature)
    return Atmosphere(teff, logg, mh, vmic, temperature, log_pg, log_pe, log_nh)


def ion_fractions(atm: Atmosphere, element: str) -> tuple[np.ndarray, np.ndarray]:
    """log10 of the neutral and singly ionized fractions of ``element`` (second ions ignored)."""
    el = ELEMENT_DATA[element]
    log_phi = np.log10(saha_phi(atm.temperature, el.chi1, 2.0 * 10 ** (el.log_u1 - el.log_u0)))
    ratio = log_phi - atm.log_pe  # log N⁺/N⁰
    log_total = np.logaddexp(0.0, ratio * np.log(10)) / np.log(10)
    return -log_total, ratio - log_total


def depth_limit(teff: np.ndarray, wave: np.ndarray, steepness: float) -> np.ndarray:
    """The Milne-Eddington central depth of a saturated line, d0 = β'/(1 + β').

    The source function B(τ) = B0 (1 + β τ) near the surface of a grey atmosphere has
    β = u(x) · dlnT/dτ with u = x / (1 - e^-x), x = hc/λkT0; ``steepness`` scales dlnT/dτ.
    Returns an array of shape (stars, wavelengths).
    """
    t0 = np.asarray(teff, float)[:, None] * 0.5**0.25
    x = HC_K / (np.asarray(wave, float)[None, :] * t0)
    beta = (2.0 / 3.0) * (x / -np.expm1(-x)) * 0.375 * steepness
    return beta / (1.0 + beta)


# The curve of growth: reduced width g = W / (d0 Δλ_D) = ∫ η0 H/(1 + η0 H) dx, tabulated finely
# enough (0.05 dex) for linear interpolation in η0 and nearest neighbours in a.
COG_LOG_ETA = np.linspace(-7.0, 9.0, 321)
COG_LOG_A = np.linspace(-4.0, 1.0, 101)
_COG_STEP = 20.0  # table rows (and columns) per dex


@functools.cache
def cog_table() -> np.ndarray:
    """log10 g over (log η0, log a) for a Voigt profile in a Milne-Eddington atmosphere."""
    # Linear through the Doppler core, logarithmic through the damping wings (to 1e-4 dex).
    x = np.concatenate([np.linspace(0.0, 4.0, 81), np.logspace(np.log10(4.0) + 0.01, 6.5, 320)])
    eta = 10.0 ** COG_LOG_ETA[:, None]
    out = np.empty((COG_LOG_ETA.size, COG_LOG_A.size))
    for j, log_a in enumerate(COG_LOG_A):
        h = np.sqrt(np.pi) * voigt_profile(x, 1 / np.sqrt(2), 10.0**log_a)
        eh = eta * h[None, :]
        out[:, j] = np.log10(2.0 * np.trapezoid(eh / (1.0 + eh), x, axis=1))
    return out


@functools.cache
def _cog_flat() -> np.ndarray:
    return cog_table().astype(np.float32).ravel()


def cog_lookup(log_eta0: np.ndarray, log_a: np.ndarray) -> np.ndarray:
    """log10 g, linear in log η0 and nearest in log a; constant below the table (no line)."""
    f32 = np.float32
    table = _cog_flat()
    ncol = COG_LOG_A.size
    fi = log_eta0 - f32(COG_LOG_ETA[0])
    fi *= f32(_COG_STEP)
    np.clip(fi, f32(0.0), f32(COG_LOG_ETA.size - 1.001), out=fi)
    # Row and column indices stay float32 (exact integers) until the one conversion: float
    # ufuncs are vectorized, mixed int/float arithmetic is not.
    k = np.floor(fi)
    fi -= k
    j = log_a - f32(COG_LOG_A[0])
    j *= f32(_COG_STEP)
    j += f32(0.5)
    np.clip(j, f32(0.0), f32(ncol - 1), out=j)
    np.floor(j, out=j)
    k *= f32(ncol)
    k += j
    index = k.astype(np.int32)
    g0 = np.take(table, index)
    index += ncol
    g1 = np.take(table, index)
    g1 -= g0
    g1 *= fi
    g1 += g0
    return g1


def log_cross_section(wave: np.ndarray) -> np.ndarray:
    """log10 of π e²/(m c²) λ² in cm² Å per unit f (the integrated line cross-section)."""
    return np.log10(8.8528e-13 * (np.asarray(wave, float) * 1e-8) ** 2 * 1e8)


@dataclass(frozen=True)
class LinePhysics:
    """Per-line constants, precomputed once, for fast widths over many stars (float32)."""

    eta_const: np.ndarray  # log σ gf A_sol / (U α_H⁻(λ)) + offset - log λ - log √π
    ep: np.ndarray  # eV
    species: np.ndarray  # int index into the species table
    species_element: tuple[str, ...]
    species_ion: np.ndarray
    mass: np.ndarray  # amu
    log_wave: np.ndarray
    gamma6: np.ndarray  # van der Waals FWHM per H atom at 10^4 K, rad s⁻¹ cm³
    gamma_rad: np.ndarray  # radiative FWHM, rad s⁻¹
    a_const: np.ndarray  # log λ²/(4π c) - log λ, the constant part of log a

    @classmethod
    def build(cls, lines: LineData, log_eta_offset: float) -> LinePhysics:
        species_element = tuple(e for e, _ in lines.species_names)
        species_ion = np.array([i for _, i in lines.species_names], np.int32)
        el = [ELEMENT_DATA[e] for e in lines.element]
        ion = species_ion[lines.species]
        log_u = np.array([e.log_u0 if i == 1 else e.log_u1 for e, i in zip(el, ion, strict=True)])
        solar = np.array([e.solar for e in el])
        log_wave = np.log10(lines.wave)
        log_eta_int = (
            log_cross_section(lines.wave)
            + lines.loggf
            - log_u
            - kappa_wave_term(lines.wave)
            + solar
            - 12.0
            + log_eta_offset
        )
        f32 = np.float32
        return cls(
            eta_const=(log_eta_int - log_wave - 0.5 * np.log10(np.pi)).astype(f32),
            ep=lines.ep.astype(f32),
            species=lines.species,
            species_element=species_element,
            species_ion=species_ion,
            mass=lines.mass,
            log_wave=log_wave.astype(f32),
            gamma6=(10.0**lines.log_gamma6).astype(f32),
            gamma_rad=(0.2223e16 / lines.wave**2).astype(f32),
            a_const=(2 * log_wave - np.log10(4 * np.pi * C_CMS) - 8 - log_wave).astype(f32),
        )

    def log_eta_int(self, index: np.ndarray) -> np.ndarray:
        """The constant part of log η_int for the lines ``index`` (float64)."""
        return (
            self.eta_const[index].astype(float)
            + self.log_wave[index].astype(float)
            + 0.5 * np.log10(np.pi)
        )


def species_terms(atm: Atmosphere, abundances: dict[str, np.ndarray], phys: LinePhysics):
    """Per star and species: [X/H] + log ionization fraction (stars × species), float32."""
    out = np.empty((atm.teff.size, len(phys.species_element)), np.float32)
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, (element, ion) in enumerate(zip(phys.species_element, phys.species_ion, strict=True)):
        if element not in cache:
            cache[element] = ion_fractions(atm, element)
        out[:, k] = abundances[element] + cache[element][ion - 1]
    return out


def reduced_widths(atm: Atmosphere, terms: np.ndarray, phys: LinePhysics) -> np.ndarray:
    """W/d0 in Å for every (star, line): float32 (stars, lines).

    η_int = σ gf A f_ion e^(-χ/kT) / (U κ_c) is the line's integrated opacity over the continuum;
    η0 = η_int / (√π Δλ_D) its central value; the curve of growth gives W/(d0 Δλ_D).
    """
    f32 = np.float32
    # Per star and species: log10 of the Doppler velocity (thermal plus microturbulence, in c),
    # and the abundance terms minus the continuum opacity.
    species_mass = np.zeros(len(phys.species_element))
    species_mass[phys.species] = phys.mass
    v2 = 2e-10 * K_CGS * atm.temperature[:, None] / (species_mass[None, :] * AMU)
    log_v = (0.5 * np.log10(v2 + atm.vmic[:, None] ** 2) - np.log10(C_KMS)).astype(f32)
    eta_part = terms - kappa_star_term(atm.theta, atm.log_pe).astype(f32)[:, None] - log_v
    # log η0 = log η_int - log Δλ_D - log √π, with Δλ_D = λ v.
    log_eta0 = eta_part[:, phys.species]
    log_eta0 += phys.eta_const[None, :]
    log_eta0 -= atm.theta.astype(f32)[:, None] * phys.ep[None, :]
    # Damping Γ = Γ_rad + γ6 N_H (T/10^4 K)^0.3; a = Γ λ² / (4π c Δλ_D).
    vdw = 10.0 ** (0.3 * np.log10(atm.temperature / 1e4) + atm.log_nh)
    vdw = vdw.astype(f32)[:, None]
    log_v_lines = log_v[:, phys.species]
    log_a = phys.gamma6[None, :] * vdw
    log_a += phys.gamma_rad[None, :]
    # float32 log10 is not vectorized in NumPy and log is: 4x faster, the same to 2 ulp.
    np.log(log_a, out=log_a)
    log_a *= f32(1.0 / np.log(10.0))
    log_a += phys.a_const[None, :]
    log_a -= log_v_lines
    log_w = cog_lookup(log_eta0, log_a)
    log_w += log_v_lines
    log_w += phys.log_wave[None, :]
    log_w *= f32(np.log(10.0))
    return np.exp(log_w, out=log_w)
