"""Realism check: the best-matching simulated spectrum for each real good LAMOST spectrum.

For the three usable real spectra in ../shared/data/lamost_mrs, the RV is estimated with
lamost_rrnet.spectra.rv, the coadd is put through the rrnet2022 preprocessing, and the
Pearson correlation with noiseless simulated spectra (same preprocessing) is computed per arm
over a coarse label grid, on the pixels that the file does not mask (IVAR > 0, no mask bit).
Prints the best match and its correlation per arm (target r ≥ 0.85).

    python benchmarks/realism.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from lamost_rrnet.simulate import simulate_normalized
from lamost_rrnet.simulate.population import TEFF_RANGE
from lamost_rrnet.spectra.io import Spectrum, read_mrs
from lamost_rrnet.spectra.preprocess import RRNET2022, preprocess, resample
from lamost_rrnet.spectra.rv import estimate_rv

GOOD = (
    "med-58025-HIP9645901_sp02-051.fits.gz",
    "med-58408-TD230151N343645T01_sp01-015.fits",
    "med-58644-TD192102N424113K01_sp12-076.fits.gz",
)


def label_grid() -> pd.DataFrame:
    teff = np.arange(4000.0, 7001.0, 250.0)
    logg = np.arange(0.5, 5.01, 0.5)
    feh = np.arange(-1.2, 0.41, 0.2)
    rows = list(itertools.product(teff, logg, feh))
    return pd.DataFrame(rows, columns=["Teff[K]", "Logg", "FeH"])


def good_pixels(spectrum: Spectrum, rv: float) -> np.ndarray:
    """Grid pixels whose neighbouring source pixels all have IVAR > 0 and no mask bit."""
    arms = []
    for arm in (spectrum.blue, spectrum.red):
        good = ((arm.ivar > 0) & (arm.mask == 0)).astype(np.float32)
        arms.append(replace(arm, flux=good))
    return resample(replace(spectrum, blue=arms[0], red=arms[1]), rv, RRNET2022) > 0.999


def correlations(real: np.ndarray, sims: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Pearson r of ``real`` with each row of ``sims`` on the ``good`` pixels, per arm."""
    n_blue = np.arange(*RRNET2022.blue).size
    out = []
    for part in (slice(0, n_blue), slice(n_blue, None)):
        use = np.flatnonzero(good[part]) + part.start
        a = real[use]
        b = sims[:, use]
        a = a - a.mean()
        b = b - b.mean(axis=1, keepdims=True)
        out.append(b @ a / (np.linalg.norm(b, axis=1) * np.linalg.norm(a)))
    return np.stack(out, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared"
    )
    args = parser.parse_args()
    grid = label_grid()
    sims = simulate_normalized(grid, 1e4, np.random.default_rng(0), bad_pixel_rate=0.0)
    print(
        f"{len(grid)} simulated spectra on the grid Teff 4000-7000/250, log g 0.5-5/0.5, "
        "[Fe/H] -1.2-+0.4/0.2 ([X/Fe] = 0)"
    )
    in_range = grid["Teff[K]"].between(*TEFF_RANGE).to_numpy()
    print(
        f"{'file':48s} {'RV km/s':>14s}  {'best Teff/logg/[Fe/H]':>22s}  "
        f"{'r_blue':>6s} {'r_red':>6s}   (best with Teff ≤ {TEFF_RANGE[1]:.0f} K)"
    )
    for name in GOOD:
        spectrum = read_mrs(args.shared / "data" / "lamost_mrs" / name).coadd()
        rv, err = estimate_rv(spectrum)
        real = preprocess(spectrum, rv, RRNET2022)
        good = good_pixels(spectrum, rv)
        r = correlations(real, sims, good)
        score = r.mean(axis=1)
        best = int(np.argmax(score))
        inside = int(np.argmax(np.where(in_range, score, -np.inf)))
        labels = grid.iloc[best]
        print(
            f"{name:48s} {rv:8.2f}±{err:4.2f}  "
            f"{labels['Teff[K]']:6.0f}/{labels['Logg']:3.1f}/{labels['FeH']:+4.1f}        "
            f"{r[best, 0]:6.3f} {r[best, 1]:6.3f}   ({r[inside, 0]:.3f} {r[inside, 1]:.3f})"
        )


if __name__ == "__main__":
    main()
