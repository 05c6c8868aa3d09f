"""Label sources from VizieR: fetched once through astroquery, cached, mapped by metadata.

VizieR column names are not stable across catalogues (and could not be checked offline), so
the columns are recognized by the metadata VizieR sends with every table: the UCD
(``phys.temperature.effective``, ``phys.gravity``, ``phys.abund.Fe``, ``stat.error``, ...),
the unit and the description. The mapping found is returned so that it can be reported and
recorded; a label that cannot be found is an error, never a guess from a wrong column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import numpy as np
from astropy.table import Column, MaskedColumn, Table

from lamost_rrnet._moved import moved_names
from lamost_rrnet.cache import cache_dir
from lamost_rrnet.errors import CatalogueError
from lamost_rrnet.labels import CATALOGUE_LABELS, ELEMENTS
from lamost_rrnet.table_io import read_table, write_table

#: The label sources by name: name -> VizieR catalogue.
LABEL_SOURCES = {"apogee-payne": "J/ApJ/879/69"}

_XH = re.compile(r"\[\s*([A-Z][a-z]?)\s*/\s*H\s*\]")
_XH_NAME = re.compile(r"^\[?([A-Z][a-z]?)[/_]?H\]?$")
_XFE = re.compile(r"/\s*Fe\s*\]")


def _cache_file(catalog: str):
    return cache_dir("vizier") / (re.sub(r"[^A-Za-z0-9]+", "_", catalog).strip("_") + ".parquet")


def _filled(table: Table) -> Table:
    """Masked values as NaN (numbers) or '' (strings), so the table caches and compares simply."""
    out = Table(meta=dict(table.meta))
    for name in table.colnames:
        col = table[name]
        data = np.asarray(col)
        if isinstance(col, MaskedColumn) and np.any(col.mask):
            if data.dtype.kind in "iufb":
                data = np.where(col.mask, np.nan, data.astype(np.float64))
            else:
                data = np.where(col.mask, "", data.astype(str))
        out[name] = Column(
            data, unit=col.unit, description=col.info.description, meta=dict(col.meta)
        )
    return out


def fetch_vizier(catalog: str, *, refresh: bool = False, timeout: float = 600) -> Table:
    """The whole of a VizieR catalogue (all rows, all columns, J2000 positions in degrees).

    Cached on disk (``lamost_rrnet.cache.cache_dir('vizier')``), so a second call makes no
    network request unless ``refresh``. Column UCDs, units and descriptions are kept.
    """
    path = _cache_file(catalog)
    if path.exists() and not refresh:
        return read_table(path)
    import requests
    from astroquery import cache_conf
    from astroquery.exceptions import TableParseError
    from astroquery.vizier import Vizier

    viz = Vizier(columns=["**", "_RAJ2000", "_DEJ2000"], row_limit=-1)
    viz.TIMEOUT = timeout
    try:
        # astroquery's own cache stores pickles; ours stores Parquet, so keep its cache off.
        with cache_conf.set_temp("cache_active", False):
            tables = viz.get_catalogs(catalog)
    except (requests.RequestException, TableParseError, OSError, ValueError) as exc:
        raise CatalogueError(
            f"VizieR {catalog}: could not fetch it ({exc}). Without network access, download "
            "the table yourself and pass it with --labels-file (and --map)"
        ) from exc
    if not tables or max(len(t) for t in tables.values()) == 0:
        raise CatalogueError(f"VizieR {catalog}: the service returned no rows")
    table = _filled(max(tables.values(), key=len))
    table.meta = {
        "vizier_catalog": catalog,
        "retrieved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_table(table, path)
    return table


def _ucd(table: Table, name: str) -> str:
    return str(table[name].meta.get("ucd") or "").lower()


def _description(table: Table, name: str) -> str:
    return str(table[name].info.description or "")


def _is_error(table: Table, name: str) -> bool:
    return "stat.error" in _ucd(table, name) or name.lower().startswith("e_")


def _element(table: Table, name: str) -> str | None:
    """The element X of an [X/H] column, from its name, else its description or UCD."""
    ucd = _ucd(table, name)
    by_name = _XH.search(name) or _XH_NAME.match(name)
    if by_name is None and "phys.abund" not in ucd:
        return None
    desc = _description(table, name)
    found = by_name or _XH.search(desc)
    if found is not None:
        return found.group(1) if found.group(1) in ELEMENTS else None
    if ucd.endswith("phys.abund.fe") and not _XFE.search(desc):
        return "Fe"
    return None


def _first(
    candidates: Sequence[str], prefer: str = "meta.main", table: Table | None = None
) -> str | None:
    if not candidates:
        return None
    if table is not None:
        for name in candidates:
            if prefer in _ucd(table, name):
                return name
    return candidates[0]


def _error_of(table: Table, value: str) -> str | None:
    """The uncertainty column of ``value``: VizieR's ``e_<name>``, else the matching UCD."""
    for name in table.colnames:
        if name.lower() == f"e_{value}".lower():
            return name
    base = _ucd(table, value).replace(";meta.main", "")
    element = _element(table, value)
    for name in table.colnames:
        if name == value or not _is_error(table, name):
            continue
        ucd = _ucd(table, name)
        if base and base in ucd and (element is None or _element(table, name) == element):
            return name
    return None


def map_vizier_columns(
    table: Table, label_names: Sequence[str] = CATALOGUE_LABELS
) -> tuple[dict[str, str], dict[str, str]]:
    """Map a VizieR table's columns to our names by UCD, unit and description.

    Returns ({our name: VizieR column}, {our name: why}) for ``star_id``, ``ra``, ``dec``,
    ``quality_flag`` and each label and its ``_err``; names that were not found are absent.
    """
    names = table.colnames
    mapping: dict[str, str] = {}
    why: dict[str, str] = {}

    def put(target: str, source: str | None, reason: str) -> None:
        if source is not None:
            mapping[target] = source
            why[target] = reason

    ids = [n for n in names if "meta.id" in _ucd(table, n)]
    apogee = [n for n in ids if "apogee" in (n + _description(table, n)).lower()]
    put("star_id", _first(apogee or ids, table=table), "UCD meta.id")
    for coord, computed in (("ra", "_RAJ2000"), ("dec", "_DEJ2000")):
        if computed in names:
            put(coord, computed, "VizieR's computed J2000 position")
        else:
            cands = [n for n in names if _ucd(table, n).startswith(f"pos.eq.{coord}")]
            put(coord, _first(cands, table=table), f"UCD pos.eq.{coord}")
    values = [n for n in names if not _is_error(table, n)]
    teff = [
        n
        for n in values
        if _ucd(table, n).startswith("phys.temperature.effective")
        and str(table[n].unit or "K") == "K"
    ]
    logg = [n for n in values if _ucd(table, n).startswith("phys.gravity")]
    found = {"Teff[K]": _first(teff, table=table), "Logg": _first(logg, table=table)}
    put("Teff[K]", found["Teff[K]"], "UCD phys.temperature.effective, unit K")
    put("Logg", found["Logg"], "UCD phys.gravity")
    for name in values:
        element = _element(table, name)
        label = f"{element}H" if element else None
        if label and label not in mapping:
            found[label] = name
            put(label, name, f"[{element}/H] by UCD {_ucd(table, name) or '-'} and name")
    for label in label_names:
        if label in mapping:
            put(f"{label}_err", _error_of(table, mapping[label]), "UCD stat.error / e_ prefix")
    quality = [n for n in names if _ucd(table, n).startswith("meta.code.qual")]
    quality += [n for n in names if re.search(r"qual|flag", n, re.I) and n not in quality]
    put("quality_flag", _first(quality, prefer="meta.code.qual", table=table), "quality UCD/name")
    keep = {"star_id", "ra", "dec", "quality_flag", *label_names}
    keep |= {f"{label}_err" for label in label_names}
    return {k: v for k, v in mapping.items() if k in keep}, {
        k: why[k] for k in mapping if k in keep
    }


def load_vizier_labels(
    name: str,
    label_names: Sequence[str] = CATALOGUE_LABELS,
    renames: Mapping[str, str] | None = None,
    *,
    loose: Mapping[str, str] | None = None,
    refresh: bool = False,
) -> tuple[Table, dict[str, str], dict[str, str]]:
    """A label source by name (``apogee-payne``) as (raw table, mapping, reasons).

    ``renames`` (our name -> VizieR column, from ``--map``) override the metadata mapping;
    ``loose`` ones (a flat map's) only where the catalogue has that column.
    """
    if name not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {name!r}: use {', '.join(LABEL_SOURCES)}")
    catalog = LABEL_SOURCES[name]
    table = fetch_vizier(catalog, refresh=refresh)
    mapping, why = map_vizier_columns(table, label_names)
    present = {k: v for k, v in (loose or {}).items() if v in table.colnames}
    for target, source in {**present, **(renames or {})}.items():
        mapping[target] = source
        why[target] = "given by --map"
    table.meta["source"] = f"VizieR {catalog}"
    return table, mapping, why


# LABEL_CATALOGUES is LABEL_SOURCES now; the old name stays one release for scripts.
__getattr__ = moved_names(__name__, {"LABEL_CATALOGUES": "lamost_rrnet.vizier:LABEL_SOURCES"})
