"""A synthetic stellar population like LAMOST MRS targets: labels for giants and dwarfs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lamost_rrnet.labels import CATALOGUE_LABELS, ELEMENTS
from lamost_rrnet.spectra.synthesis.atmosphere import microturbulence

TEFF_RANGE = (4000.0, 6500.0)
FEH_RANGE = (-1.2, 0.4)

#: [X/Fe] at [Fe/H] = -1 relative to [Fe/H] >= 0 (the α "knee" goes linearly in between),
#: and the star-to-star scatter of [X/Fe].
_TREND = {"O": 0.35, "Mg": 0.30, "Si": 0.25, "S": 0.25, "Ca": 0.20, "Ti": 0.20, "Mn": -0.30}
_TREND.update({"Cu": -0.25, "Al": 0.15, "K": 0.10})
_SCATTER = {"C": 0.10, "N": 0.12, "O": 0.08, "Mg": 0.05, "Al": 0.08, "Si": 0.05, "S": 0.08}
_SCATTER.update({"K": 0.10, "Ca": 0.05, "Ti": 0.06, "Cr": 0.04, "Mn": 0.06, "Ni": 0.04})
_SCATTER.update({"Cu": 0.10})
#: Extra enhancement of the high-α (thick-disc) stars, for the α elements.
_ALPHA = ("O", "Mg", "Si", "S", "Ca", "Ti")


def _giants(n: int, feh: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Red giant branch and red clump: metal-poor giants are hotter at the same log g."""
    clump = rng.random(n) < 0.3
    logg = np.where(clump, rng.normal(2.45, 0.12, n), rng.uniform(0.8, 3.6, n))
    teff = np.where(
        clump,
        rng.normal(4800.0, 80.0, n) - 250.0 * feh,
        4750.0 + 330.0 * (logg - 2.5) - 230.0 * feh + rng.normal(0.0, 70.0, n),
    )
    return teff, logg


def _dwarfs(n: int, feh: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Main sequence, and turn-off stars and subgiants above it."""
    teff = rng.uniform(*TEFF_RANGE, n)
    x = (teff - 4000.0) / 2500.0
    logg = 4.68 - 0.40 * x**1.6 + 0.08 * feh + rng.normal(0.0, 0.07, n)
    # Subgiants: between the turn-off and the base of the giant branch.
    evolved = (rng.random(n) < 0.25) & (teff > 5000.0) & (teff < 6300.0)
    logg = np.where(evolved, rng.uniform(3.5, 4.1, n), logg)
    return teff, logg


def draw_labels(n_stars: int, rng: np.random.Generator) -> pd.DataFrame:
    """Labels of ``n_stars`` stars: star_id, Teff[K], Logg, the 15 [X/H] (catalogue order), vmic.

    About 45% are giants (RGB and clump), the rest dwarfs and subgiants, all at 4000-6500 K.
    [Fe/H] is a thin-disc plus thick-disc mixture within -1.2 to +0.4; α elements rise towards
    low [Fe/H] (more so for the high-α sequence), Mn and Cu fall; giants show the first dredge-up
    ([C/Fe] lower, [N/Fe] higher).
    """
    if n_stars < 1:
        raise ValueError(f"n_stars must be at least 1, not {n_stars}")
    n = int(n_stars)
    thick = rng.random(n) < 0.2
    feh = np.where(thick, rng.normal(-0.55, 0.3, n), rng.normal(-0.1, 0.22, n))
    feh = np.clip(feh, *FEH_RANGE)
    giant = rng.random(n) < 0.45
    teff = np.empty(n)
    logg = np.empty(n)
    teff[giant], logg[giant] = _giants(int(giant.sum()), feh[giant], rng)
    teff[~giant], logg[~giant] = _dwarfs(int((~giant).sum()), feh[~giant], rng)
    teff = np.clip(teff, *TEFF_RANGE)
    logg = np.clip(logg, 0.5, 4.9)

    knee = np.clip(-feh, 0.0, 1.0)  # 0 at [Fe/H] >= 0, 1 at [Fe/H] <= -1
    high_alpha = thick & (rng.random(n) < 0.7)
    data: dict[str, np.ndarray | list[str]] = {
        "star_id": [f"sim{i:07d}" for i in range(n)],
        "Teff[K]": teff,
        "Logg": logg,
    }
    dredged = giant & (logg < 3.3)
    for element in ELEMENTS:
        if element == "Fe":
            data["FeH"] = feh
            continue
        xfe = _TREND.get(element, 0.0) * knee + rng.normal(0.0, _SCATTER[element], n)
        if element in _ALPHA:
            xfe = xfe + np.where(high_alpha, 0.1 + 0.05 * rng.random(n), 0.0)
        if element == "C":
            # Capped at +0.15 so that C/O stays below ~0.8: no accidental carbon stars.
            xfe = np.minimum(xfe - np.where(dredged, 0.2, 0.0), 0.15)
        if element == "N":
            xfe = xfe + np.where(dredged, 0.35, 0.0)
        data[f"{element}H"] = feh + xfe
    data["vmic"] = np.clip(microturbulence(teff, logg) + rng.normal(0.0, 0.1, n), 0.4, 2.8)
    frame = pd.DataFrame(data)
    return frame[["star_id", *CATALOGUE_LABELS, "vmic"]]
