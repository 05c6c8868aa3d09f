"""Weak molecular bands: the CN red system and the C2 Swan system, built from molecular constants.

No molecular line list ships with lamost-rrnet, so the lines are computed here from the
spectroscopic constants (Huber & Herzberg 1979): band origins from the vibrational terms,
rotational lines of the P, Q and R branches from the rotational constants, Hönl-London factors
for the branch strengths and harmonic-oscillator Franck-Condon factors for the band strengths.
Spin splitting and Λ-doubling are ignored, which places lines to within a few tenths of an
ångström of their real positions: enough for weak blends at R ≈ 7500.

Molecular abundances follow from dissociation equilibrium, where the molecular partition
function cancels: n(J'') = n_A n_B (h²/2πμkT)^(3/2) e^(D0/kT) g (2J''+1) e^(-E''/kT) / (U_A U_B).
Carbon locked into CO is removed first, by the same equilibrium; the oxygen it pairs with is
the scaled-solar oxygen of the star's [Fe/H] and α trend, not its own [O/H], so that the O label
acts only through the O lines (docs/simulator.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite import hermval

from lamost_rrnet.spectra.synthesis.linelist import AMU, ELEMENT_DATA

H_CGS = 6.62607015e-27
K_CGS = 1.380649e-16
CM1_EV = 1.239842e-4  # eV per cm⁻¹
HBAR_AMU_CM = 1.0545718e-27 / AMU  # ħ / amu in cm² s⁻¹

#: Wavelength ranges (vacuum Å) inside which molecular lines are kept: the MRS arms.
WINDOWS = ((4900.0, 5400.0), (6250.0, 6900.0))
PRUNE_DEX = 2.5


@dataclass(frozen=True)
class State:
    te: float  # cm⁻¹ above the molecule's ground state
    we: float
    wexe: float
    be: float
    alpha_e: float
    re: float  # Å

    def g(self, v: np.ndarray) -> np.ndarray:
        return self.we * (v + 0.5) - self.wexe * (v + 0.5) ** 2

    def b(self, v: np.ndarray) -> np.ndarray:
        return self.be - self.alpha_e * (v + 0.5)


@dataclass(frozen=True)
class System:
    name: str
    atoms: tuple[str, str]
    mass: float  # reduced mass, amu
    d0: float  # dissociation energy, eV
    f_el: float  # electronic oscillator strength (band f = f_el q)
    g_lower: int  # electronic degeneracy of the lower state
    upper: State
    lower: State
    delta_lambda: int  # ΔΛ between upper and lower state: picks the Hönl-London factors


CN_RED = System(
    "CN A-X",
    ("C", "N"),
    12.0 * 14.003 / 26.003,
    7.72,
    2.6e-3,
    2,
    upper=State(9245.28, 1812.56, 12.60, 1.7151, 0.01708, 1.2333),
    lower=State(0.0, 2068.59, 13.087, 1.8997, 0.01736, 1.1718),
    delta_lambda=1,
)
C2_SWAN = System(
    "C2 d-a",
    ("C", "C"),
    6.0,
    6.21,
    3.0e-2,
    6,
    upper=State(20022.50, 1788.22, 16.44, 1.7527, 0.01610, 1.2661),
    lower=State(716.24, 1641.35, 11.67, 1.6324, 0.01660, 1.3119),
    delta_lambda=0,
)
SYSTEMS = (CN_RED, C2_SWAN)


def _oscillator(v: int, x: np.ndarray) -> np.ndarray:
    """Normalized harmonic-oscillator eigenfunction in the dimensionless coordinate x."""
    coef = np.zeros(v + 1)
    coef[v] = 1.0
    norm = 1.0 / np.sqrt(2.0**v * np.prod(np.arange(1, v + 1, dtype=float)) * np.sqrt(np.pi))
    return norm * hermval(x, coef) * np.exp(-0.5 * x * x)


def franck_condon(system: System, v_max: int) -> np.ndarray:
    """q[v', v''] as squared overlaps of displaced harmonic oscillators."""
    r = np.linspace(0.6, 2.2, 4001)  # Å
    dr = r[1] - r[0]
    out = np.empty((v_max + 1, v_max + 1))
    waves = []
    for state in (system.upper, system.lower):
        omega = 2 * np.pi * 2.99792458e10 * state.we  # rad/s
        scale = np.sqrt(HBAR_AMU_CM / (system.mass * omega)) * 1e8  # Å
        x = (r - state.re) / scale
        waves.append([_oscillator(v, x) / np.sqrt(scale) for v in range(v_max + 1)])
    for vu in range(v_max + 1):
        for vl in range(v_max + 1):
            out[vu, vl] = (np.sum(waves[0][vu] * waves[1][vl]) * dr) ** 2
    return out


def _honl_london(delta_lambda: int, j: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Branch → (J', S) for lower-state J'' = j; singlet formulas (Herzberg 1950)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if delta_lambda == 1:  # Π - Σ
            s = {"R": (j + 2) / 2.0, "Q": (2 * j + 1) / 2.0, "P": (j - 1) / 2.0}
            lowest = {"R": 0, "Q": 1, "P": 2}
        else:  # Π - Π
            s = {
                "R": (j + 2) * j / (j + 1),
                "Q": (2 * j + 1) / (j * (j + 1)),
                "P": (j + 1) * (j - 1) / j,
            }
            lowest = {"R": 1, "Q": 1, "P": 2}
    shift = {"R": 1, "Q": 0, "P": -1}
    return {b: (j + shift[b], np.where(j >= lowest[b], s[b], 0.0)) for b in s}


@dataclass(frozen=True)
class MolecularLines:
    system: System
    wave: np.ndarray  # vacuum Å
    log_gf: np.ndarray  # log10(f_el q S g_lower): strength at unit lower-level population
    energy: np.ndarray  # lower-level energy above the ground level, eV


@functools.cache
def molecular_lines(system: System, v_max: int = 12, j_max: int = 90) -> MolecularLines:
    """The rotational lines of ``system`` inside :data:`WINDOWS`, negligible ones dropped."""
    q = franck_condon(system, v_max)
    j = np.arange(0, j_max + 1, dtype=float)
    waves, log_gf, energy = [], [], []
    up, lo = system.upper, system.lower
    for vu in range(v_max + 1):
        for vl in range(v_max + 1):
            if q[vu, vl] < 1e-4:
                continue
            origin = up.te - lo.te + up.g(vu) - lo.g(vl)
            e_lower = lo.te + lo.g(vl) - lo.g(0) + lo.b(vl) * j * (j + 1)
            for jp, strength in _honl_london(system.delta_lambda, j).values():
                nu = origin + up.b(vu) * jp * (jp + 1) - lo.b(vl) * j * (j + 1)
                wave = 1e8 / nu
                keep = (strength > 0) & (nu > 0)
                keep &= np.any([(wave > a) & (wave < b) for a, b in WINDOWS], axis=0)
                waves.append(wave[keep])
                log_gf.append(np.log10(system.f_el * q[vu, vl] * strength[keep] * system.g_lower))
                energy.append(e_lower[keep] * CM1_EV)
    wave, log_gf, energy = np.concatenate(waves), np.concatenate(log_gf), np.concatenate(energy)
    # Drop lines weaker than 10^-2.5 of the system's strongest even at 4000 K: they add
    # nothing visible, and the band windows stay where the bands are.
    strength = log_gf - 5040.0 / 4000.0 * energy
    keep = strength > strength.max() - PRUNE_DEX
    return MolecularLines(system, wave[keep], log_gf[keep], energy[keep])


#: CO X¹Σ⁺: dissociation energy (eV), reduced mass (amu), B and ωe (cm⁻¹).
_CO = (11.09, 12.0 * 15.995 / 27.995, 1.9313, 2169.81)


def log_free_carbon(
    temperature: np.ndarray, log_nh: np.ndarray, log_c: np.ndarray, log_o: np.ndarray
) -> np.ndarray:
    """log10 of the fraction of carbon not bound in CO, from n_CO = K n_C n_O (C, O by H)."""
    t = np.asarray(temperature, float)
    d0, mass, b, we = _CO
    q = 0.6950 * t / b / -np.expm1(-1.4388 * we / t)  # rotational x vibrational
    log_k = (
        1.5 * np.log10(H_CGS**2 / (2 * np.pi * mass * AMU * K_CGS * t))
        + 5040.0 * d0 / t
        + np.log10(q)
        - ELEMENT_DATA["C"].log_u0
        - ELEMENT_DATA["O"].log_u0
    )
    nh = 10.0**log_nh
    k = 10.0**log_k
    c = 10.0**log_c * nh
    o = 10.0**log_o * nh
    b_ = k * (c + o) + 1.0
    # The smaller root of k x² - (k (c + o) + 1) x + k c o = 0, in a cancellation-free form.
    n_co = 2.0 * k * c * o / (b_ + np.sqrt(b_ * b_ - 4.0 * k * k * c * o))
    return np.log10(np.maximum(c - n_co, 1e-30 * c) / c)


def log_number_factor(system: System, temperature: np.ndarray) -> np.ndarray:
    """log10 of (h²/2πμkT)^(3/2) e^(D0/kT) / (U_A U_B): molecules per unit n_A n_B, per level."""
    t = np.asarray(temperature, float)
    mu = system.mass * AMU
    ua, ub = (ELEMENT_DATA[a].log_u0 for a in system.atoms)
    return (
        1.5 * np.log10(H_CGS**2 / (2 * np.pi * mu * K_CGS * t)) + 5040.0 * system.d0 / t - ua - ub
    )
