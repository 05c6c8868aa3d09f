"""Small simulated-looking inputs for the crossmatch and prepare tests.

A few stars, each observed a few times: MRS files written with ``write_mrs`` (continuum,
absorption lines, noise, an RV shift), a LAMOST-like catalogue and a label catalogue with the
default column names of docs/architecture.md ("Simulated set").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from lamost_rrnet.labels import CATALOGUE_LABELS
from lamost_rrnet.spectra.io import Arm, write_mrs

C_KMS = 299792.458
BLUE = (4950.0, 5350.0)
RED = (6320.0, 6720.0)
N_PIX = 3900


def arm(extname: str, span, rng, rv: float = 0.0, snr: float = 60.0, bad: int = 0) -> Arm:
    """One arm: smooth continuum times Gaussian lines, shifted by ``rv``, with noise.

    ``bad`` pixels (a run in the middle) get IVAR 0 and a mask bit, like a cosmic ray.
    """
    wave = np.geomspace(*span, N_PIX)
    x = (wave - wave.mean()) / np.ptp(wave)
    flux = 1000 * (1 + 0.3 * x - 0.2 * x**2)
    line_rng = np.random.default_rng(len(extname) + int(span[0]))  # same lines in every file
    centres = line_rng.uniform(span[0] + 20, span[1] - 20, 60) * (1 + rv / C_KMS)
    depths = line_rng.uniform(0.1, 0.6, 60)
    for c, d in zip(centres, depths, strict=True):
        flux *= 1 - d * np.exp(-0.5 * ((wave - c) / 0.25) ** 2)
    flux = flux + rng.normal(0, flux / snr)
    ivar = np.full(N_PIX, (snr / 1000) ** 2, np.float32)
    mask = np.zeros(N_PIX, np.int32)
    if bad:
        start = N_PIX // 2
        ivar[start : start + bad] = 0
        mask[start : start + bad] = 1
    return Arm(extname, wave.astype(np.float32), flux.astype(np.float32), ivar, mask, snr)


def write_spectrum(path: Path, obsid: int, ra: float, dec: float, rng, **kw) -> Path:
    """A coadd-only MRS file (``**kw`` goes to both arms); gzipped when the name ends in .gz."""
    bad = kw.pop("bad", 0)
    layout = kw.pop("layout", "dr7")
    arms = [arm("COADD_B", BLUE, rng, bad=bad, **kw), arm("COADD_R", RED, rng, **kw)]
    header = {"OBSID": obsid, "RA": ra, "DEC": dec, "LMJD": 58000}
    return write_mrs(path, header, arms, layout=layout)


def write_set(
    root: Path,
    n_stars: int = 6,
    visits: int = 2,
    seed: int = 0,
    *,
    bad_rows: dict[int, int] | None = None,
    snr: float = 60.0,
    spectra: bool = True,
) -> tuple[Path, Path]:
    """``root/spectra/*.fits.gz``, ``root/lamost_catalogue.csv`` and ``root/labels.csv``.

    ``bad_rows`` maps a catalogue row to a number of bad blue pixels for that spectrum;
    ``spectra=False`` writes only the two catalogues.
    """
    rng = np.random.default_rng(seed)
    bad_rows = bad_rows or {}
    spectra_dir = root / "spectra"
    spectra_dir.mkdir(parents=True, exist_ok=True)
    stars = Table()
    stars["star_id"] = [f"2M{i:08d}" for i in range(n_stars)]
    stars["ra"] = rng.uniform(10, 20, n_stars)
    stars["dec"] = rng.uniform(30, 40, n_stars)
    for label in CATALOGUE_LABELS:
        base = 5000.0 if label.startswith("Teff") else (2.5 if label == "Logg" else 0.0)
        scale = 500.0 if label.startswith("Teff") else (1.0 if label == "Logg" else 0.2)
        stars[label] = base + scale * rng.uniform(-1, 1, n_stars)
        stars[f"{label}_err"] = np.abs(scale * 0.05 * rng.normal(1, 0.1, n_stars))
    stars["vmic"] = rng.uniform(0.5, 2, n_stars)
    stars["quality_flag"] = ["good"] * n_stars
    rows = []
    for s in range(n_stars):
        for v in range(visits):
            i = len(rows)
            obsid = 100000 + i
            rv = float(rng.normal(0, 40))
            name = f"med-{58000 + v}-star{s:03d}-{i:03d}.fits.gz"
            # LAMOST positions scatter by ~0.3" around the label star's.
            ra = stars["ra"][s] + rng.normal(0, 1e-4)
            dec = stars["dec"][s] + rng.normal(0, 1e-4)
            if spectra:
                write_spectrum(
                    spectra_dir / name, obsid, ra, dec, rng, rv=rv, snr=snr, bad=bad_rows.get(i, 0)
                )
            rows.append((obsid, name, "COADD_B", "COADD_R", ra, dec, snr, snr, rv, 58000 + v))
    names = ("obsid", "filename", "extname_blue", "extname_red", "ra", "dec")
    names += ("snr_blue", "snr_red", "rv", "lmjd")
    catalogue = Table(rows=rows, names=names)
    catalogue.write(root / "lamost_catalogue.csv", format="ascii.csv", overwrite=True)
    stars.write(root / "labels.csv", format="ascii.csv", overwrite=True)
    return root / "lamost_catalogue.csv", root / "labels.csv"
