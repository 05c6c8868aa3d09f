"""Table files: the format each file-name ending means, one reader and one writer.

In the spirit of astropy's I/O registry, :data:`FORMATS` is the one table of endings and
formats; each use names the endings it accepts (:data:`TABLE_ENDINGS` for whole tables read
and written through astropy, :data:`CATALOGUE_ENDINGS` for predict's catalogue,
:data:`RV_TABLE_ENDINGS` for the RV table). The catalogue and the RV table have streaming
readers and writers of their own, for their size, but take their formats from here, and the
catalogue's FITS writer its column cards (:func:`set_column_cards`).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from astropy.table import Table

from lamost_rrnet.atomic import atomic_path
from lamost_rrnet.errors import CatalogueError

if TYPE_CHECKING:
    from astropy.io.fits import Header

#: Every file-name ending the package knows (compared in lower case) and its format.
FORMATS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".txt": "csv",
    ".ecsv": "ecsv",
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".fit.gz": "fits",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".vot": "votable",
    ".xml": "votable",
}
#: What :func:`read_table` and :func:`write_table` accept: reference tables, LAMOST
#: catalogues, label files and catalogues to compare.
TABLE_ENDINGS = (".csv", ".ecsv", ".fit", ".fits", ".fits.gz", ".parquet", ".vot", ".xml")
#: What predict writes and merge joins (lamost_rrnet.catalogue).
CATALOGUE_ENDINGS = (".fits", ".fit", ".csv", ".parquet", ".pq")
#: What the RVs of predict come from (lamost_rrnet.rv_table).
RV_TABLE_ENDINGS = (
    ".csv",
    ".csv.gz",
    ".txt",
    ".fits",
    ".fit",
    ".fits.gz",
    ".fit.gz",
    ".parquet",
    ".pq",
)

# astropy's names of the formats.
_ASTROPY = {
    "csv": "ascii.csv",
    "ecsv": "ascii.ecsv",
    "fits": "fits",
    "parquet": "parquet",
    "votable": "votable",
}


def format_of(path: str | os.PathLike[str], endings: Collection[str] = TABLE_ENDINGS) -> str | None:
    """The format of ``path`` by the longest of ``endings`` its name ends in (any case);
    None if it ends in none of them."""
    name = os.fspath(path).lower()
    for ending in sorted(endings, key=len, reverse=True):
        if name.endswith(ending):
            return FORMATS[ending]
    return None


def table_format(path: str | os.PathLike[str], endings: Collection[str] = TABLE_ENDINGS) -> str:
    """:func:`format_of`, or :class:`CatalogueError` naming the file and ``endings``."""
    fmt = format_of(path, endings)
    if fmt is None:
        raise CatalogueError(
            f"{path}: unknown table format; use one of {', '.join(sorted(endings))}"
        )
    return fmt


def read_table(path: str | os.PathLike[str]) -> Table:
    """Read a table file (:data:`TABLE_ENDINGS`); :class:`CatalogueError` if it cannot be."""
    fmt = table_format(path)
    if not Path(path).is_file():
        raise CatalogueError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unit and VO warnings from foreign tables
            table = Table.read(path, format=_ASTROPY[fmt])
    except Exception as exc:  # astropy raises many types for bad contents; all mean "unreadable"
        raise CatalogueError(f"{path}: not a readable {fmt} table ({exc})") from exc
    if len(table.colnames) == 0:
        raise CatalogueError(f"{path}: the table has no columns")
    return table


def set_column_cards(
    header: Header, units: Sequence[str | None], comments: Sequence[str | None]
) -> None:
    """Give each column of a FITS table ``header`` its TUNIT and TCOMM, after its TFORM (where
    astropy's HDU writer moves them after the last column's); an empty one is left out.

    astropy drops units that FITS does not know (``dex``) and never writes TCOMM, so both are
    set here.
    """
    for i, (unit, comment) in enumerate(zip(units, comments, strict=True), start=1):
        after = f"TFORM{i}"
        if unit:
            header.set(f"TUNIT{i}", unit, after=after)
            after = f"TUNIT{i}"
        if comment:
            header.set(f"TCOMM{i}", comment, after=after)


def _fits_bytes(table: Table, units: Mapping[str, str], comments: Mapping[str, str]) -> bytes:
    from astropy.io import fits

    plain = Table(table, copy=False)
    for name in plain.colnames:
        plain[name].unit = None
    hdu = fits.table_to_hdu(plain)
    names = plain.colnames
    set_column_cards(hdu.header, [units.get(n) for n in names], [comments.get(n) for n in names])
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    return buffer.getvalue()


def write_table(
    table: Table,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    units: Mapping[str, str] | None = None,
    comments: Mapping[str, str] | None = None,
) -> None:
    """Write ``table`` atomically, replacing ``path``, in ``format`` or else the one its name
    asks for (:data:`TABLE_ENDINGS`).

    A FITS file gives each column the unit ``units`` names for it, and no other, and the
    comment (TCOMM) ``comments`` names; other formats keep the table's own units.
    """
    fmt = format or table_format(path)
    with atomic_path(path) as tmp:
        if fmt == "fits":
            tmp.write_bytes(_fits_bytes(table, units or {}, comments or {}))
        else:
            table.write(tmp, format=_ASTROPY[fmt], overwrite=True)
