"""A normalized spectrum as a table file (``inspect --save``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.table import Table

from lamost_rrnet.atomic import atomic_path


def write_normalized(
    path: str | os.PathLike[str],
    wavelength: np.ndarray,
    flux: np.ndarray,
    rv: float = 0.0,
    source: str = "",
) -> None:
    """Columns ``wavelength`` (Å, rest frame, vacuum) and ``flux``; CSV or FITS by extension."""
    table = Table({"wavelength": np.asarray(wavelength, np.float64), "flux": flux})
    table["wavelength"].unit = "Angstrom"
    table.meta["RV"] = rv
    table.meta["SOURCE"] = source
    table.meta["PREPROC"] = "rrnet2022 steps 1-4"
    fmt = "fits" if Path(path).suffix.lower() in (".fits", ".fit") else "ascii.csv"
    with atomic_path(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
