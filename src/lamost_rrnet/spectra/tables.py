"""A normalized spectrum as a table file (``inspect --save``)."""

from __future__ import annotations

import os

import numpy as np
from astropy.table import Table

from lamost_rrnet.table_io import format_of, write_table


def write_normalized(
    path: str | os.PathLike[str],
    wavelength: np.ndarray,
    flux: np.ndarray,
    rv: float = 0.0,
    source: str = "",
) -> None:
    """Columns ``wavelength`` (Å, rest frame, vacuum) and ``flux``; CSV or FITS by extension."""
    table = Table({"wavelength": np.asarray(wavelength, np.float64), "flux": flux})
    table.meta["RV"] = rv
    table.meta["SOURCE"] = source
    table.meta["PREPROC"] = "rrnet2022 steps 1-4"
    fmt = format_of(path, (".fits", ".fit")) or "csv"
    write_table(table, path, format=fmt, units={"wavelength": "Angstrom"})
