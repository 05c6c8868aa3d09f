"""Table files (lamost_rrnet.table_io): formats by ending, the reader, the writer, old names."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lamost_rrnet.catalogue import output_format
from lamost_rrnet.errors import CatalogueError
from lamost_rrnet.table_io import (
    CATALOGUE_ENDINGS,
    RV_TABLE_ENDINGS,
    format_of,
    read_table,
    table_format,
    write_table,
)


def test_each_use_takes_its_endings_from_the_one_table():
    assert format_of("a/B.FITS.GZ") == "fits"
    assert format_of("x.fits.csv") == "csv"
    assert format_of("x.vot") == format_of("x.xml") == "votable"
    assert format_of("x.pq") is None  # not among TABLE_ENDINGS
    assert format_of("x.pq", CATALOGUE_ENDINGS) == output_format("x.pq") == "parquet"
    assert format_of("x.fits.gz", CATALOGUE_ENDINGS) is None
    for name in ("rv.txt", "rv.csv.gz"):
        assert format_of(name, RV_TABLE_ENDINGS) == "csv"
    assert format_of("rv.fit.gz", RV_TABLE_ENDINGS) == "fits"
    with pytest.raises(CatalogueError, match=r"x\.dat: unknown table format; use one of \.csv"):
        table_format("x.dat")


def test_read_table_names_the_file_in_its_errors(tmp_path):
    with pytest.raises(CatalogueError, match="missing.csv: no such file"):
        read_table(tmp_path / "missing.csv")
    (bad := tmp_path / "bad.fits").write_bytes(b"SIMPLE  = not really FITS")
    with pytest.raises(CatalogueError, match="bad.fits: not a readable fits table"):
        read_table(bad)
    (empty := tmp_path / "empty.csv").write_text("")
    with pytest.raises(CatalogueError, match="empty.csv"):
        read_table(empty)


@pytest.mark.parametrize("name", ["t.fits", "t.csv", "t.ecsv", "t.parquet", "t.vot"])
def test_written_tables_read_back(tmp_path, name):
    table = Table({"obsid": np.arange(3), "FeH": [0.1, -0.2, 0.3], "star_id": ["a", "b", "c"]})
    write_table(table, tmp_path / name, units={"FeH": "dex"})
    got = read_table(tmp_path / name)
    assert got.colnames == table.colnames
    np.testing.assert_allclose(got["FeH"], table["FeH"])
    assert list(got["star_id"]) == ["a", "b", "c"]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # written atomically, no leftovers


def test_fits_gets_the_units_astropy_drops_and_comments(tmp_path):
    table = Table({"ra": [1.0, 2.0], "FeH": [0.1, 0.2], "n": [1, 2]})
    table["n"].unit = "km"  # only the units named are written
    table.meta["LABSRC"] = "here"
    path = tmp_path / "t.fits"
    write_table(
        table,
        path,
        units={"ra": "deg", "FeH": "dex"},
        comments={"ra": "right ascension", "FeH": "abundance [Fe/H]"},
    )
    h = fits.getheader(path, 1)
    cards = {h[f"TTYPE{i}"]: (h.get(f"TUNIT{i}"), h.get(f"TCOMM{i}")) for i in (1, 2, 3)}
    assert cards == {
        "ra": ("deg", "right ascension"),
        "FeH": ("dex", "abundance [Fe/H]"),
        "n": (None, None),
    }
    assert h["LABSRC"] == "here"
    assert table["n"].unit == "km"  # the caller's table is left as it was


def test_a_format_given_overrides_the_name(tmp_path):
    write_table(Table({"a": [1, 2]}), tmp_path / "t.dat", format="csv")
    assert (tmp_path / "t.dat").read_text().splitlines() == ["a", "1", "2"]


def _fresh_import(module: str):
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def test_the_old_catalog_module_warns_and_gives_the_same_names():
    import lamost_rrnet.catalogue as catalogue

    with pytest.warns(DeprecationWarning, match="lamost_rrnet.catalogue"):
        catalog = _fresh_import("lamost_rrnet.catalog")
    assert catalog.Journal is catalogue.Journal
    assert catalog.catalogue_columns is catalogue.catalogue_columns
    assert catalog._IMPORT_ROWS == catalogue._IMPORT_ROWS


def test_old_names_of_moved_things_warn():
    import lamost_rrnet.crossmatch as crossmatch
    import lamost_rrnet.vizier as vizier

    with pytest.warns(DeprecationWarning, match="table_io.read_table"):
        assert crossmatch.read_catalogue is read_table
    with pytest.warns(DeprecationWarning, match="LABEL_SOURCES"):
        assert vizier.LABEL_CATALOGUES is vizier.LABEL_SOURCES
    with pytest.raises(AttributeError):
        crossmatch.nonesuch  # noqa: B018
