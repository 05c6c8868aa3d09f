"""The RV table of ``predict --catalogue`` (CSV, FITS or Parquet; a LAMOST catalogue, say): its
RVs read once in bounded batches into sorted arrays, looked up by obsid or file name by the
processes that read the spectra."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lamost_rrnet.columns import RV_COLUMNS
from lamost_rrnet.errors import CatalogueError
from lamost_rrnet.identity import text_hashes
from lamost_rrnet.table_io import RV_TABLE_ENDINGS, format_of

_MISSING_RV = -9999.0  # LAMOST's "no value"
_BATCH_ROWS = 262144


def _basename_key(name: str) -> str:
    name = os.path.basename(name.strip())
    return name[:-3] if name.lower().endswith(".gz") else name


def _find(names: Sequence[str], wanted: str) -> str | None:
    lower = {n.lower(): n for n in names}
    return lower.get(wanted.lower())


def _table_format(path: str) -> str:
    fmt = format_of(path, RV_TABLE_ENDINGS)
    if fmt is None:
        raise CatalogueError(f"{path}: use a .csv, .fits or .parquet RV table")
    return fmt


def _table_batches(path: str, columns: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The named columns of the RV table, in bounded batches of numpy arrays; without pandas
    or astropy's Table, which would read the whole file."""
    fmt = _table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            yield {c: batch[c].to_numpy(zero_copy_only=False) for c in columns}
    elif fmt == "fits":
        from astropy.io import fits

        with fits.open(path, memmap=True) as hdul:
            data = next((h.data for h in hdul[1:] if isinstance(h, fits.BinTableHDU)), None)
            if data is None:
                raise CatalogueError(f"{path}: no binary table")
            for start in range(0, len(data), _BATCH_ROWS):
                rows = data[start : start + _BATCH_ROWS]
                yield {c: np.asarray(rows[c]) for c in columns}
    else:
        import pyarrow.csv as pa_csv

        reader = pa_csv.open_csv(
            path, convert_options=pa_csv.ConvertOptions(include_columns=columns)
        )
        for batch in reader:
            yield {c: batch[c].to_numpy(zero_copy_only=False) for c in columns}


def _table_columns(path: str) -> list[str]:
    fmt = _table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        if fmt == "fits":
            from astropy.io import fits

            with fits.open(path, memmap=True) as hdul:
                for hdu in hdul[1:]:
                    if isinstance(hdu, fits.BinTableHDU):
                        return list(hdu.columns.names)
            raise CatalogueError(f"{path}: no binary table")
        import pyarrow.csv as pa_csv

        return list(pa_csv.open_csv(path).schema.names)
    except CatalogueError:
        raise
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"{path}: not a readable table ({exc})") from exc


@dataclass(frozen=True)
class RVTable:
    """The RV table's RVs as sorted arrays in ``directory``, memory-mapped by every local worker
    process; or, after :meth:`in_memory`, the arrays themselves, sent to workers that do not
    share the client's disk (Dask).

    Look-up is by obsid first, then by file base name (with or without ``.gz``).
    """

    directory: str
    column: str
    n_rows: int
    arrays: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    def in_memory(self) -> RVTable:
        """The same table holding its arrays, independent of ``directory``."""
        arrays = tuple(np.array(a) for a in _rv_arrays(self.directory))
        return RVTable(self.directory, self.column, self.n_rows, arrays)

    def lookup(self, obsid: int, filename: str) -> float | None:
        arrays = self.arrays if self.arrays is not None else _rv_arrays(self.directory)
        for keys, values, key in (
            (arrays[0], arrays[1], np.int64(obsid)),
            (arrays[2], arrays[3], text_hashes([_basename_key(filename)])[0]),
        ):
            if keys.size:
                i = int(np.searchsorted(keys, key))
                if i < keys.size and keys[i] == key:
                    return float(values[i])
        return None


@functools.lru_cache(maxsize=4)
def _rv_arrays(directory: str) -> tuple[np.ndarray, ...]:
    names = ("obsid", "obsid_rv", "name", "name_rv")
    return tuple(np.load(os.path.join(directory, f"{n}.npy"), mmap_mode="r") for n in names)


def _sorted_unique(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], values[first]


def _as_obsid(values: np.ndarray) -> np.ndarray:
    """Obsids as int64, -1 where a value is missing, negative or not a whole number."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return np.where(values >= 0, values, -1).astype(np.int64)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values >= 0) & (values < 2.0**63) & (values % 1 == 0)
        return np.where(whole, values, -1).astype(np.int64)
    # Text (or mixed objects): digits only, and few enough of them to fit an int64.
    text = np.char.strip(values.astype(str))
    digits = np.char.isdigit(text) & (np.char.str_len(text) <= 18)
    out = np.full(text.shape, -1, np.int64)
    out[digits] = text[digits].astype(np.int64)
    return out


def load_rv_table(path: str | os.PathLike[str], rv_column: str | None, directory: str) -> RVTable:
    """Read the RVs of an RV table (CSV/FITS/Parquet) into an :class:`RVTable`.

    ``rv_column`` names the column; by default the first present of rv, rv_ku0, rv_br0,
    rv_lasp0. Rows are joined by ``obsid``, or by ``filename`` where the obsid is absent.
    """
    path = os.fspath(path)
    names = _table_columns(path)
    wanted = [rv_column] if rv_column else list(RV_COLUMNS)
    column = next((_find(names, c) for c in wanted if _find(names, c)), None)
    if column is None:
        raise CatalogueError(
            f"{path}: no RV column {' or '.join(wanted)} (has: {', '.join(names)})"
        )
    obsid_col, name_col = _find(names, "obsid"), _find(names, "filename")
    if obsid_col is None and name_col is None:
        raise CatalogueError(f"{path}: neither an obsid nor a filename column to join on")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obsid", "obsid_rv", "name", "name_rv")}
    n_rows = 0
    read = [c for c in (obsid_col, name_col, column) if c]
    try:
        for batch in _table_batches(path, read):
            rv = np.asarray(batch[column], np.float64)
            good = np.isfinite(rv) & (rv > _MISSING_RV)
            n_rows += int(good.sum())
            if obsid_col:
                obsid = _as_obsid(batch[obsid_col])
                ok = good & (obsid >= 0)
                parts["obsid"].append(obsid[ok])
                parts["obsid_rv"].append(rv[ok])
            if name_col:
                names_ = [_basename_key(str(n)) for n in np.asarray(batch[name_col])[good]]
                parts["name"].append(text_hashes(names_))
                parts["name_rv"].append(rv[good])
    except (OSError, ValueError, KeyError) as exc:
        raise CatalogueError(f"{path}: cannot read columns {read} ({exc})") from exc
    if n_rows == 0:
        raise CatalogueError(f"{path}: no row has a valid {column}")
    empty = {"obsid": np.int64, "obsid_rv": np.float64, "name": np.uint64, "name_rv": np.float64}
    arrays = {k: np.concatenate(v) if v else np.empty(0, empty[k]) for k, v in parts.items()}
    by_obsid = _sorted_unique(arrays["obsid"], arrays["obsid_rv"])
    by_name = _sorted_unique(arrays["name"], arrays["name_rv"])
    keys = ("obsid", "obsid_rv", "name", "name_rv")
    for key, array in zip(keys, (*by_obsid, *by_name), strict=True):
        np.save(os.path.join(directory, f"{key}.npy"), array)
    return RVTable(directory, column, n_rows)
