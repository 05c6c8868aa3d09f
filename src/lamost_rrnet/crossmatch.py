"""Cross-match a LAMOST MRS catalogue with a label source into the reference table.

LAMOST side: a local CSV/FITS/Parquet/ECSV/VOTable file with the default column names of
docs/architecture.md ("Simulated set"), renamed by ``--column NAME=SOURCE`` or a YAML map.
Label side, the label source: a named VizieR catalogue (:mod:`lamost_rrnet.vizier`) or a local
file with the names of simulate's ``labels.csv``. Matching is on the sky (nearest within a
radius), then the quality cuts, each counted. The reference table has one row per spectrum:
the LAMOST columns, ``star_id``, ``separation_arcsec``, ``n_candidates``, the labels and their
``_err``; its metadata records the column mapping (``COLMAP``), the label names (``LABELS``) and
the label source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Column, MaskedColumn, Table

from lamost_rrnet._moved import moved_names
from lamost_rrnet.columns import LAMOST_COLUMNS, RV_COLUMNS
from lamost_rrnet.errors import CatalogueError, OutputExistsError, UsageError
from lamost_rrnet.labels import CATALOGUE_LABELS, description, unit
from lamost_rrnet.table_io import read_table, table_format, write_table

LAMOST_REQUIRED = ("obsid", "filename", "ra", "dec", "snr_blue", "snr_red")
#: Without extension columns, every row is the coadd pair.
EXTNAME_DEFAULTS = {"extname_blue": "COADD_B", "extname_red": "COADD_R"}
LABEL_REQUIRED = ("star_id", "ra", "dec")
QUALITY = "quality_flag"

_UNITS = {
    "ra": "deg",
    "dec": "deg",
    "rv": "km/s",
    "separation_arcsec": "arcsec",
}
_COMMENTS = {
    "obsid": "LAMOST observation id",
    "filename": "spectrum file, relative to the spectra root",
    "extname_blue": "blue extension",
    "extname_red": "red extension",
    "ra": "LAMOST right ascension (J2000)",
    "dec": "LAMOST declination (J2000)",
    "snr_blue": "S/N of the blue arm",
    "snr_red": "S/N of the red arm",
    "rv": "radial velocity (NaN: estimate it)",
    "lmjd": "LAMOST modified Julian day",
    "star_id": "label-catalogue star id",
    "separation_arcsec": "sky separation to the label star",
    "n_candidates": "label stars within the match radius",
}


@dataclass(frozen=True)
class Cuts:
    """The quality cuts; ``None`` (or False) switches one off."""

    snr_min: float | None = 10.0
    teff_range: tuple[float, float] | None = (4000.0, 6500.0)
    quality_good: tuple[str, ...] | None = ("good",)
    drop_nan_labels: bool = True


@dataclass
class CrossmatchResult:
    """The reference table and what it took to make it."""

    table: Table
    mapping: dict[str, dict[str, str]]  # {"lamost": {...}, "labels": {...}}
    reasons: dict[str, str]  # label-side mapping reasons (VizieR metadata)
    counts: list[tuple[str, int | None, int | None]]  # (step, spectra left, stars left)
    ambiguous: Table  # spectra with more than one label star inside the radius
    notes: list[str] = field(default_factory=list)


def parse_column_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["NAME=SOURCE", ...]`` -> {NAME: SOURCE}; ValueError on a malformed pair, and
    :class:`UsageError` (a ValueError) on a NAME that is not a LAMOST column."""
    out = {}
    for pair in pairs:
        name, sep, source = pair.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"{pair!r}: use NAME=SOURCE, e.g. rv=rv_ku0")
        out[name.strip()] = source.strip()
    check_lamost_names(out)
    return out


def check_lamost_names(names: Iterable[str]) -> None:
    """:class:`UsageError` for renames of columns that the LAMOST side does not have."""
    unknown = sorted(set(names) - set(LAMOST_COLUMNS))
    if unknown:
        raise UsageError(
            f"unknown LAMOST column name(s) {', '.join(unknown)}: use {', '.join(LAMOST_COLUMNS)}"
        )


@dataclass
class ColumnMap:
    """Renames from a YAML map. A flat map's pairs apply wherever their SOURCE column exists."""

    lamost: dict[str, str]
    labels: dict[str, str]
    flat: bool


def read_column_map(path: str | os.PathLike[str]) -> ColumnMap:
    """A YAML map of NAME: SOURCE pairs: two sections, ``lamost:`` and ``labels:``, or one
    flat mapping whose pairs apply to whichever side has the SOURCE column."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"{path}: not a readable YAML map ({exc})") from exc

    def pairs(obj: object, where: str) -> dict[str, str]:
        if obj is None:
            return {}
        if not isinstance(obj, dict) or not all(isinstance(v, (str, int)) for v in obj.values()):
            raise CatalogueError(f"{path}: {where} must map NAME: SOURCE column names")
        return {str(k): str(v) for k, v in obj.items()}

    if isinstance(data, dict) and data and set(data) <= {"lamost", "labels"}:
        return ColumnMap(
            pairs(data.get("lamost"), "'lamost'"), pairs(data.get("labels"), "'labels'"), False
        )
    flat = pairs(data, "the map")
    return ColumnMap(flat, dict(flat), True)


def _find(table: Table, name: str) -> str | None:
    """``name`` in the table, exactly or else ignoring case."""
    if name in table.colnames:
        return name
    lower = {c.lower(): c for c in table.colnames}
    return lower.get(name.lower())


def resolve_columns(
    table: Table,
    wanted: Sequence[str],
    required: Sequence[str],
    renames: Mapping[str, str],
    where: str,
) -> dict[str, str]:
    """{our name: source column} for ``wanted``; :class:`CatalogueError` naming what is missing.

    A rename whose source is absent is an error; otherwise names match exactly, then
    ignoring case.
    """
    mapping = {}
    missing = []
    for name in wanted:
        if name in renames:
            source = _find(table, renames[name])
            if source is None:
                raise CatalogueError(
                    f"{where}: the map names column {renames[name]!r} for {name}, but there is "
                    f"none (available: {', '.join(table.colnames)})"
                )
            mapping[name] = source
        elif (source := _find(table, name)) is not None:
            mapping[name] = source
        elif name in required:
            missing.append(name)
    if missing:
        raise CatalogueError(
            f"{where}: missing column(s) {', '.join(missing)} "
            f"(available: {', '.join(table.colnames)}); rename with --column NAME=SOURCE or --map"
        )
    return mapping


def _values(table: Table, name: str, dtype: type) -> np.ndarray:
    col = table[name]
    if dtype is str:
        data = np.asarray(col).astype(str)
        if isinstance(col, MaskedColumn):
            data = np.where(col.mask, "", data)
        return np.char.strip(data)
    try:
        data = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CatalogueError(f"column {name!r} is not numeric ({exc})") from exc
    if isinstance(col, MaskedColumn):
        data = np.where(col.mask, np.nan, data)
    return data


def _present(table: Table, renames: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in renames.items() if _find(table, v) is not None}


def load_lamost(
    path: str | os.PathLike[str],
    renames: Mapping[str, str] | None = None,
    loose: Mapping[str, str] | None = None,
) -> tuple[Table, dict[str, str], list[str]]:
    """The LAMOST catalogue with our column names: (table, {our name: source}, notes).

    ``renames`` must name existing columns; ``loose`` pairs apply only where they do.
    """
    raw = read_table(path)
    loose = {k: v for k, v in (loose or {}).items() if k in LAMOST_COLUMNS}
    renames = {**_present(raw, loose), **(renames or {})}
    where = str(path)
    wanted = [c for c in LAMOST_COLUMNS if c != "rv"]
    mapping = resolve_columns(raw, wanted, LAMOST_REQUIRED, renames, where)
    notes = []
    if "rv" in renames:
        mapping.update(resolve_columns(raw, ["rv"], ["rv"], renames, where))
    else:
        for candidate in RV_COLUMNS:
            if (source := _find(raw, candidate)) is not None:
                mapping["rv"] = source
                break
    if "rv" in mapping:
        notes.append(f"RV column: {mapping['rv']}")
    else:
        notes.append("no RV column: prepare will estimate every RV by cross-correlation")
    out = Table()
    try:
        obsid = _values(raw, mapping["obsid"], np.float64)
        if not np.isfinite(obsid).all():
            raise CatalogueError(f"column {mapping['obsid']!r} (obsid) has missing values")
        out["obsid"] = np.asarray(raw[mapping["obsid"]]).astype(np.int64)
        out["filename"] = _values(raw, mapping["filename"], str)
        for ext, default in EXTNAME_DEFAULTS.items():
            if ext in mapping:
                out[ext] = np.char.upper(_values(raw, mapping[ext], str))
            else:
                out[ext] = np.full(len(raw), default)
                notes.append(f"no {ext} column: using {default}")
        for name in ("ra", "dec", "snr_blue", "snr_red"):
            out[name] = _values(raw, mapping[name], np.float64)
        out["rv"] = (
            _values(raw, mapping["rv"], np.float64)
            if "rv" in mapping
            else np.full(len(raw), np.nan)
        )
        if "lmjd" in mapping:
            out["lmjd"] = _values(raw, mapping["lmjd"], np.float64)
    except CatalogueError as exc:
        raise CatalogueError(f"{where}: {exc}") from exc
    return out, mapping, notes


def standardize_labels(
    raw: Table, mapping: Mapping[str, str], label_names: Sequence[str], where: str
) -> Table:
    """The label source's table with our names: star_id, ra, dec, labels, _err, quality_flag."""
    missing = [n for n in (*LABEL_REQUIRED, *label_names) if n not in mapping]
    if missing:
        raise CatalogueError(
            f"{where}: missing column(s) {', '.join(missing)} "
            f"(available: {', '.join(raw.colnames)}); rename with --map"
        )
    absent = [s for s in mapping.values() if s not in raw.colnames]
    if absent:
        raise CatalogueError(
            f"{where}: the map names column(s) {', '.join(absent)}, which do not exist "
            f"(available: {', '.join(raw.colnames)})"
        )
    out = Table()
    try:
        out["star_id"] = _values(raw, mapping["star_id"], str)
        out["label_ra"] = _values(raw, mapping["ra"], np.float64)
        out["label_dec"] = _values(raw, mapping["dec"], np.float64)
        for label in label_names:
            out[label] = _values(raw, mapping[label], np.float64)
            err = mapping.get(f"{label}_err")
            out[f"{label}_err"] = (
                _values(raw, err, np.float64) if err else np.full(len(raw), np.nan)
            )
        if QUALITY in mapping:
            col = raw[mapping[QUALITY]]
            kind = np.asarray(col).dtype.kind
            out[QUALITY] = _values(raw, mapping[QUALITY], str if kind in "USO" else np.float64)
    except CatalogueError as exc:
        raise CatalogueError(f"{where}: {exc}") from exc
    return out


def load_label_file(
    path: str | os.PathLike[str],
    renames: Mapping[str, str] | None = None,
    label_names: Sequence[str] = CATALOGUE_LABELS,
    loose: Mapping[str, str] | None = None,
) -> tuple[Table, dict[str, str]]:
    """A local label file with our names: (table, {our name: source}).

    ``renames`` must name existing columns; ``loose`` pairs apply only where they do.
    """
    raw = read_table(path)
    renames = {**_present(raw, loose or {}), **(renames or {})}
    wanted = [*LABEL_REQUIRED, *label_names, *(f"{n}_err" for n in label_names), QUALITY]
    required = [*LABEL_REQUIRED, *label_names]
    mapping = resolve_columns(raw, wanted, required, renames, str(path))
    return standardize_labels(raw, mapping, label_names, str(path)), mapping


def match_catalogues(
    lamost: Table, labels: Table, radius_arcsec: float = 3.0
) -> tuple[Table, Table]:
    """Each LAMOST row joined to the nearest label star within the radius.

    Returns (matched rows with ``star_id``, ``separation_arcsec``, ``n_candidates`` and the
    label columns; the ambiguous subset, where several label stars lie inside the radius).
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    good_l = np.isfinite(lamost["ra"]) & np.isfinite(lamost["dec"])
    good_s = np.isfinite(labels["label_ra"]) & np.isfinite(labels["label_dec"])
    rows = np.flatnonzero(good_l)
    stars = labels[good_s]
    empty = lamost[:0]
    if rows.size == 0 or len(stars) == 0:
        return _join(empty, stars[:0], np.zeros(0), np.zeros(0, int)), empty
    c_lamost = SkyCoord(lamost["ra"][rows] * u.deg, lamost["dec"][rows] * u.deg)
    c_stars = SkyCoord(stars["label_ra"] * u.deg, stars["label_dec"] * u.deg)
    radius = radius_arcsec * u.arcsec
    idx, sep, _ = c_lamost.match_to_catalog_sky(c_stars)
    inside = sep < radius
    n_candidates = inside.astype(int)
    if len(stars) > 1:
        _, sep2, _ = c_lamost.match_to_catalog_sky(c_stars, nthneighbor=2)
        crowded = np.flatnonzero(inside & (sep2 < radius))
        if crowded.size:
            found, _, _, _ = c_stars.search_around_sky(c_lamost[crowded], radius)
            n_candidates[crowded] = np.bincount(found, minlength=crowded.size)
    keep = np.flatnonzero(inside)
    matched = _join(
        lamost[rows[keep]], stars[idx[keep]], sep[keep].to_value(u.arcsec), n_candidates[keep]
    )
    return matched, matched[matched["n_candidates"] > 1]


def _join(lamost: Table, stars: Table, sep: np.ndarray, n_cand: np.ndarray) -> Table:
    out = Table(lamost, copy=True)
    out["star_id"] = Column(np.asarray(stars["star_id"]).astype(str))
    out["separation_arcsec"] = np.asarray(sep, np.float64)
    out["n_candidates"] = np.asarray(n_cand, np.int64)
    for name in stars.colnames:
        if name not in ("star_id", "label_ra", "label_dec"):
            out[name] = stars[name]
    return out


def _is_good(values: np.ndarray, good: Sequence[str]) -> np.ndarray:
    if values.dtype.kind in "fiu":
        try:
            targets = [float(g) for g in good]
        except ValueError:
            return np.zeros(values.size, bool)
        return np.isin(values, targets)
    return np.isin(np.char.lower(values.astype(str)), [g.strip().lower() for g in good])


def apply_cuts(
    table: Table, cuts: Cuts, label_names: Sequence[str], where: str = "label source"
) -> tuple[Table, list[tuple[str, int, int]]]:
    """Apply the cuts in order; return the rows left and (step, spectra, stars) after each."""
    counts = []

    def step(name: str, keep: np.ndarray) -> None:
        nonlocal table
        table = table[keep]
        counts.append((name, len(table), len(np.unique(table["star_id"]))))

    if cuts.snr_min is not None:
        with np.errstate(invalid="ignore"):
            keep = (table["snr_blue"] >= cuts.snr_min) & (table["snr_red"] >= cuts.snr_min)
        step(f"S/N ≥ {cuts.snr_min:g} in both arms", np.asarray(keep))
    if cuts.quality_good:
        if QUALITY not in table.colnames:
            raise CatalogueError(
                f"{where}: no quality_flag column for the quality cut; name one with --map "
                "quality_flag=COLUMN, or pass --no-quality-cut"
            )
        good = _is_good(np.asarray(table[QUALITY]), cuts.quality_good)
        step(f"quality flag {'/'.join(cuts.quality_good)}", good)
    if cuts.teff_range is not None:
        lo, hi = cuts.teff_range
        teff = np.asarray(table["Teff[K]"], np.float64)
        with np.errstate(invalid="ignore"):
            step(f"{lo:g} ≤ Teff ≤ {hi:g} K", (teff >= lo) & (teff <= hi))
    if cuts.drop_nan_labels:
        values = np.column_stack([np.asarray(table[n], np.float64) for n in label_names])
        step("labels not NaN", np.isfinite(values).all(axis=1))
    return table, counts


def crossmatch(
    catalogue: str | os.PathLike[str],
    *,
    labels: str = "apogee-payne",
    labels_file: str | os.PathLike[str] | None = None,
    columns: Mapping[str, str] | None = None,
    map_file: str | os.PathLike[str] | None = None,
    label_names: Sequence[str] = CATALOGUE_LABELS,
    radius_arcsec: float = 3.0,
    cuts: Cuts = Cuts(),
    refresh: bool = False,
) -> CrossmatchResult:
    """Match a LAMOST catalogue with a label source: ``labels_file``, else the one named
    ``labels`` (:data:`~lamost_rrnet.vizier.LABEL_SOURCES`).

    ``columns`` renames LAMOST-side columns (``--column``); ``map_file`` is a YAML map for
    either side. Raises :class:`CatalogueError` for missing columns, an empty match, or a
    cut that leaves nothing, and :class:`UsageError` for a rename of an unknown column.
    """
    check_lamost_names(columns or {})
    cmap = ColumnMap({}, {}, False) if map_file is None else read_column_map(map_file)
    strict_lamost = {} if cmap.flat else dict(cmap.lamost)
    strict_lamost.update(columns or {})
    lamost, lamost_map, notes = load_lamost(
        catalogue, strict_lamost, cmap.lamost if cmap.flat else None
    )
    counts: list[tuple[str, int | None, int | None]] = [("LAMOST spectra", len(lamost), None)]
    reasons: dict[str, str] = {}
    strict_labels = {} if cmap.flat else cmap.labels
    loose_labels = cmap.labels if cmap.flat else {}
    if labels_file is not None:
        star_table, label_map = load_label_file(
            labels_file, strict_labels, label_names, loose_labels
        )
        source = str(labels_file)
    else:
        from lamost_rrnet.vizier import LABEL_SOURCES, load_vizier_labels

        raw, label_map, reasons = load_vizier_labels(
            labels, label_names, strict_labels, loose=loose_labels, refresh=refresh
        )
        source = f"VizieR {LABEL_SOURCES[labels]}"
        star_table = standardize_labels(raw, label_map, label_names, source)
    counts.append(("label stars", None, len(np.unique(star_table["star_id"]))))
    matched, ambiguous = match_catalogues(lamost, star_table, radius_arcsec)
    counts.append(
        (f'matched within {radius_arcsec:g}"', len(matched), len(np.unique(matched["star_id"])))
    )
    if len(matched) == 0:
        raise CatalogueError(
            f"{catalogue}: no spectrum has a star of {source} within {radius_arcsec:g} arcsec"
        )
    if len(ambiguous):
        notes.append(
            f"{len(ambiguous)} spectra have more than one label star within "
            f"{radius_arcsec:g} arcsec: the nearest was kept"
        )
    table, cut_counts = apply_cuts(matched, cuts, label_names, source)
    counts.extend(cut_counts)
    if len(table) == 0:
        failed = next(name for name, n, _ in cut_counts if n == 0)
        raise CatalogueError(f"{catalogue}: no spectrum is left after the cut '{failed}'")
    if QUALITY in table.colnames:
        table.remove_column(QUALITY)
    mapping = {"lamost": lamost_map, "labels": label_map}
    table.meta.update(
        {
            "COLMAP": json.dumps(mapping, sort_keys=True),
            "LABELS": json.dumps(list(label_names)),
            "LABSRC": source,
            "RADIUS": float(radius_arcsec),
        }
    )
    return CrossmatchResult(table, mapping, reasons, counts, ambiguous, notes)


def _column_cards(table: Table) -> tuple[dict[str, str], dict[str, str]]:
    """The FITS unit and comment of each column of a reference table."""
    units, comments = {}, {}
    for name in table.colnames:
        base = name[:-4] if name.endswith("_err") else name
        col_unit = _UNITS.get(name) or (unit(base) if base in CATALOGUE_LABELS else None)
        if col_unit:
            units[name] = col_unit
        comment = _COMMENTS.get(name) or description(base)
        if name.endswith("_err"):
            comment = f"uncertainty of {comment}"
        comments[name] = comment[:68]
    return units, comments


def check_reference_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """:class:`OutputExistsError` for an existing ``path`` unless ``overwrite``; call it before
    :func:`crossmatch` too, so that a refusal costs no catalogue download."""
    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; use --overwrite")


def write_reference(table: Table, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the reference table (FITS, CSV, ECSV or Parquet by extension), atomically."""
    path = Path(path)
    fmt = table_format(path)
    check_reference_output(path, overwrite=overwrite)
    units, comments = _column_cards(table)
    write_table(table, path, format=fmt, units=units, comments=comments)
    return path


def reference_label_names(table: Table) -> list[str]:
    """The label columns of a reference table: from its metadata, else by name."""
    if "LABELS" in table.meta:
        return list(json.loads(table.meta["LABELS"]))
    return [n for n in CATALOGUE_LABELS if n in table.colnames]


# read_catalogue is table_io.read_table now; the old name stays one release for scripts.
__getattr__ = moved_names(__name__, {"read_catalogue": "lamost_rrnet.table_io:read_table"})
