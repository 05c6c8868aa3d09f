"""The ``predict`` catalogue: its columns, the flag rule, and streaming, resumable writers.

The columns are the paper's Table 3 followed by ``rv``, ``rv_source``, ``status``, ``model``
and ``path``, the input's identity (docs/catalogue.md). Rows arrive in chunks. Each chunk is
written atomically as a Parquet file into a journal directory beside the output
(``<output>.journal/``), so a run killed at any moment, SIGKILL included, keeps every finished
chunk, and a resumed run reads the journal's paths to skip what is done. A journal appears
under its name only complete, and is renamed away before it is deleted, so no kill leaves a
partial journal to resume from. At the end the journal is assembled into the output in one
atomic move.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lamost_rrnet import labels as label_info
from lamost_rrnet.atomic import atomic_path, remove_stale_temporaries
from lamost_rrnet.errors import CatalogueError, OutputExistsError
from lamost_rrnet.identity import escape_path, text_hashes, unescape_path
from lamost_rrnet.table_io import CATALOGUE_ENDINGS, format_of, set_column_cards

META_COLUMNS = (
    "obsid",
    "filename",
    "ra",
    "dec",
    "extname_blue",
    "extname_red",
    "snr_blue",
    "snr_red",
)
#: A row's identity: its input and the arms it was read from (resume, merge).
KEY_COLUMNS = ("path", "extname_blue", "extname_red")
JOURNAL_SUFFIX = ".journal"
_JOURNAL_VERSION = 2  # 2: rows carry their input's path, the resume key
_IMPORT_ROWS = 65536

# The header of one shard of a sharded run (``predict --shard K/N``): how inputs were split,
# this part's shard (0 to N-1) and N. ``merge`` checks them; unsharded catalogues lack them.
SHARD_ALGORITHM = "blake2b-64"
SHARD_KEYS = ("SHARDALG", "SHARD", "NSHARDS")

# Bits of the flag rule; the status text of a predicted row names the bits that are set.
# BAD_HEADER is not the flag rule's: predict sets it for a header card it could not use.
LOW_SNR, OUTLIERS, OUT_OF_RANGE, HIGH_SIGMA, NAN_LABEL, BAD_HEADER = 1, 2, 4, 8, 16, 32
REASONS = {
    LOW_SNR: "low_snr",
    OUTLIERS: "outliers",
    OUT_OF_RANGE: "out_of_range",
    HIGH_SIGMA: "high_sigma",
    NAN_LABEL: "nan_label",
    BAD_HEADER: "bad_header",
}


@dataclass(frozen=True)
class Column:
    """One catalogue column: its name, storage type, unit and one-line description."""

    name: str
    dtype: str  # a numpy dtype name, or "str"
    unit: str = ""
    description: str = ""


def catalogue_labels(label_names: Sequence[str]) -> list[str]:
    """The model's labels in catalogue order: Table 3 order first, then any others as given."""
    known = [name for name in label_info.CATALOGUE_LABELS if name in label_names]
    return known + [name for name in label_names if name not in label_info.CATALOGUE_LABELS]


def catalogue_columns(label_names: Sequence[str]) -> list[str]:
    """Column names of the catalogue of a model with these labels (paper Table 3 + extras)."""
    return CatalogueSchema.for_labels(label_names).names


@dataclass(frozen=True)
class CatalogueSchema:
    """The columns of one model's catalogue, with their Arrow and FITS types."""

    labels: tuple[str, ...]

    @classmethod
    def for_labels(cls, label_names: Sequence[str]) -> CatalogueSchema:
        return cls(tuple(catalogue_labels(label_names)))

    @classmethod
    def from_columns(cls, names: Sequence[str]) -> CatalogueSchema:
        """The schema whose columns are ``names``; ValueError if they are no catalogue's."""
        names = list(names)
        end = names.index("flag") if "flag" in names else len(META_COLUMNS)
        schema = cls.for_labels(names[len(META_COLUMNS) : end : 2])
        if schema.names != names:
            raise ValueError("its columns are not those of a lamost-rrnet catalogue")
        return schema

    @cached_property
    def columns(self) -> tuple[Column, ...]:
        cols = [
            Column("obsid", "int64", "", "LAMOST observation id (-1 when unknown)"),
            Column("filename", "str", "", "file name of the spectrum (escaped like path)"),
            Column("ra", "float64", "deg", "right ascension (J2000) from the file header"),
            Column("dec", "float64", "deg", "declination (J2000) from the file header"),
            Column("extname_blue", "str", "", "extension of the blue arm"),
            Column("extname_red", "str", "", "extension of the red arm"),
            Column("snr_blue", "float32", "", "S/N of the blue arm (extension header SNR)"),
            Column("snr_red", "float32", "", "S/N of the red arm (extension header SNR)"),
        ]
        for name in self.labels:
            unit, what = label_info.unit(name), label_info.description(name)
            cols.append(Column(name, "float32", unit, what))
            cols.append(Column(f"{name}_err", "float32", unit, f"1-sigma uncertainty of {name}"))
        cols += [
            Column("flag", "int16", "", "1: labels trustworthy; 0: see status"),
            Column("rv", "float64", "km/s", "radial velocity used for the rest frame"),
            Column("rv_source", "str", "", "catalogue or ccf (cross-correlation)"),
            Column("status", "str", "", "empty when fine, else why flagged or failed"),
            Column("model", "str", "", "model name@version (escaped like path)"),
            Column("path", "str", "", "the input path as given, normalized, escaped"),
        ]
        return tuple(cols)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @cached_property
    def arrow(self) -> pa.Schema:
        types = {
            "int64": pa.int64(),
            "int16": pa.int16(),
            "float32": pa.float32(),
            "float64": pa.float64(),
            "str": pa.string(),
        }
        fields = []
        for c in self.columns:
            meta = {"unit": c.unit, "description": c.description}
            fields.append(pa.field(c.name, types[c.dtype], nullable=False, metadata=meta))
        return pa.schema(fields)

    def table(self, data: Mapping[str, Sequence | np.ndarray]) -> pa.Table:
        """An Arrow table of these columns from arrays or lists (all columns required)."""
        missing = [n for n in self.names if n not in data]
        if missing:
            raise KeyError(f"catalogue rows lack columns {missing}")
        arrays = []
        for f in self.arrow:
            values = data[f.name]
            values = list(values) if f.type == pa.string() else np.asarray(values)
            arrays.append(pa.array(values, type=f.type))
        return pa.Table.from_arrays(arrays, schema=self.arrow)

    def astropy(self, table: pa.Table, header: Mapping[str, object] | None = None):
        """The rows as an astropy Table with units, descriptions and ``header`` as meta."""
        from astropy import units as u
        from astropy.table import Table

        out = Table()
        for c in self.columns:
            values = table[c.name].to_numpy(zero_copy_only=False)
            out[c.name] = values.astype(str) if c.dtype == "str" else values.astype(c.dtype)
            if c.unit:
                out[c.name].unit = u.Unit(c.unit)
            out[c.name].description = c.description
        for key, value in (header or {}).items():
            out.meta[key] = value[0] if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class FlagRule:
    """When ``flag`` is 0 for a spectrum whose labels were predicted (docs/catalogue.md).

    The uncertainty limit is in units of the model's own label scale (the standard deviation
    of its training labels, stored with every model): the published model's typical σ is 0.15-0.5
    of it, so σ above 1× that scale, the whole spread of the training set, is far above typical.
    """

    min_snr: float = 10.0
    max_outliers: int = 100
    max_outlier_run: int = 30
    max_sigma_scale: float = 1.0

    def reasons(
        self,
        snr_blue: np.ndarray,
        snr_red: np.ndarray,
        n_outliers: np.ndarray,
        max_run: np.ndarray,
        mu: np.ndarray,
        sigma: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        scale: np.ndarray,
    ) -> np.ndarray:
        """Bitmask per row (0 = good) for rows (B,) with predictions mu, sigma (B, L).

        ``low``/``high`` are each label's allowed range and ``scale`` its label std (L,). An
        unknown S/N counts as low.
        """
        with np.errstate(invalid="ignore"):
            snr_ok = (np.asarray(snr_blue) >= self.min_snr) & (np.asarray(snr_red) >= self.min_snr)
            bits = np.where(snr_ok, 0, LOW_SNR)
            outliers = (np.asarray(n_outliers) > self.max_outliers) | (
                np.asarray(max_run) > self.max_outlier_run
            )
            bits |= np.where(outliers, OUTLIERS, 0)
            finite = np.isfinite(mu).all(axis=1) & np.isfinite(sigma).all(axis=1)
            bits |= np.where(finite, 0, NAN_LABEL)
            outside = ((mu < low) | (mu > high)).any(axis=1)
            bits |= np.where(outside, OUT_OF_RANGE, 0)
            wide = (sigma > self.max_sigma_scale * scale).any(axis=1)
            bits |= np.where(wide, HIGH_SIGMA, 0)
        return bits.astype(np.int16)

    def header(self) -> dict[str, tuple[float, str]]:
        """FITS keywords that record this rule in the catalogue."""
        return {
            "FLAGSNR": (self.min_snr, "flag 0 if S/N below this in either arm"),
            "FLAGNOUT": (self.max_outliers, "flag 0 if more outlier pixels"),
            "FLAGRUN": (self.max_outlier_run, "flag 0 if a longer run of outliers"),
            "FLAGSIG": (self.max_sigma_scale, "flag 0 if sigma > this x label std"),
        }


def shard_header(shard: int, n_shards: int) -> dict[str, tuple[object, str]]:
    """The header keys (:data:`SHARD_KEYS`) of shard ``shard`` (0 to ``n_shards`` - 1)."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} of {n_shards}: a shard is 0 to {n_shards - 1}")
    return {
        "SHARDALG": (SHARD_ALGORITHM, "how the inputs were split into shards"),
        "SHARD": (shard, "this shard, 0 to NSHARDS-1"),
        "NSHARDS": (n_shards, "shards of the whole run"),
    }


def status_text(bits: np.ndarray) -> list[str]:
    """The status of predicted rows from their flag bits: e.g. ``low_snr,outliers``; '' if good."""
    out = []
    for value in np.asarray(bits).tolist():
        out.append(",".join(text for bit, text in REASONS.items() if value & bit))
    return out


def output_format(path: str | os.PathLike[str]) -> str:
    """``fits``, ``csv`` or ``parquet`` from the output name; ``-`` is CSV on stdout."""
    if str(path) == "-":
        return "csv"
    fmt = format_of(path, CATALOGUE_ENDINGS)
    if fmt is None:
        raise ValueError(f"{path}: the output must end in .fits, .csv or .parquet (or be -)")
    return fmt


def string_widths(table: pa.Table) -> dict[str, int]:
    """The longest value of each text column of ``table``: what FITS columns are sized by."""
    import pyarrow.compute as pc

    widths = {}
    for f in table.schema:
        if f.type == pa.string():
            longest = pc.max(pc.utf8_length(table[f.name])).as_py() if table.num_rows else 0
            widths[f.name] = int(longest or 0)
    return widths


# ---------------------------------------------------------------------------------------------
# Writers


def _fits_dtype(schema: CatalogueSchema, widths: Mapping[str, int]) -> np.dtype:
    big = {"int64": ">i8", "int16": ">i2", "float32": ">f4", "float64": ">f8"}
    fields = []
    for c in schema.columns:
        fields.append(
            (c.name, f"S{max(1, widths.get(c.name, 1))}" if c.dtype == "str" else big[c.dtype])
        )
    return np.dtype(fields)


def _fits_headers(
    schema: CatalogueSchema, dtype: np.dtype, n_rows: int, header: Mapping[str, object]
) -> bytes:
    from astropy.io import fits

    forms = {"int64": "K", "int16": "I", "float32": "E", "float64": "D"}
    cols = []
    for c in schema.columns:
        form = f"{dtype[c.name].itemsize}A" if c.dtype == "str" else forms[c.dtype]
        cols.append(fits.Column(name=c.name, format=form))
    table = fits.BinTableHDU.from_columns(cols, nrows=0, name="CATALOGUE")
    hdr = table.header
    hdr["NAXIS2"] = n_rows
    if hdr["NAXIS1"] != dtype.itemsize:
        raise AssertionError("FITS row layout differs from the record layout")
    set_column_cards(hdr, [c.unit for c in schema.columns], [c.description for c in schema.columns])
    return _primary_header(header) + hdr.tostring().encode("ascii")


def _primary_header(header: Mapping[str, object]) -> bytes:
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    for key, value in header.items():
        primary.header[key] = value
    return primary.header.tostring().encode("ascii")


def check_header(header: Mapping[str, object]) -> None:
    """Raise :class:`CatalogueError` now if ``header`` cannot be written to a FITS catalogue,
    rather than after every prediction is made."""
    try:
        _primary_header(header)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise CatalogueError(f"a catalogue header value cannot go into FITS: {exc}") from exc


def _records(batch: pa.Table, dtype: np.dtype) -> bytes:
    rec = np.zeros(batch.num_rows, dtype)
    for name in dtype.names:
        values = batch[name].to_numpy(zero_copy_only=False)
        if dtype[name].kind == "S":
            values = np.char.encode(values.astype(str), "ascii", errors="replace")
            if values.size and values.dtype.itemsize > dtype[name].itemsize:
                raise AssertionError(f"{name}: text longer than its FITS width")
        rec[name] = values
    return rec.tobytes()


def write_fits(
    path: str | os.PathLike[str],
    schema: CatalogueSchema,
    batches: Iterable[pa.Table],
    n_rows: int,
    widths: Mapping[str, int],
    header: Mapping[str, object],
) -> None:
    """Stream ``n_rows`` rows into a FITS binary table, atomically; ``widths`` sizes the strings."""
    dtype = _fits_dtype(schema, widths)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(_fits_headers(schema, dtype, n_rows, header))
        written = 0
        for batch in batches:
            fh.write(_records(batch, dtype))
            written += batch.num_rows
        if written != n_rows:
            raise AssertionError(f"{path}: wrote {written} rows, the header says {n_rows}")
        fh.write(b"\0" * (-(written * dtype.itemsize) % 2880))


def _parquet_schema(schema: CatalogueSchema, header: Mapping[str, object]) -> pa.Schema:
    meta = {k: (v[0] if isinstance(v, tuple) else v) for k, v in header.items()}
    return schema.arrow.with_metadata({"lamost_rrnet": json.dumps(meta, default=str)})


class CsvStream:
    """CSV rows written as they come, to an open binary stream (``-o -``: stdout)."""

    def __init__(self, stream: IO[bytes], schema: CatalogueSchema):
        self._writer = pa_csv.CSVWriter(
            stream, schema.arrow, write_options=pa_csv.WriteOptions(quoting_style="needed")
        )
        self._stream = stream

    def write(self, batch: pa.Table) -> None:
        self._writer.write_table(batch)
        self._stream.flush()

    def close(self) -> None:
        self._writer.close()


def write_catalogue(
    path: str | os.PathLike[str],
    schema: CatalogueSchema,
    batches: Iterable[pa.Table],
    n_rows: int,
    widths: Mapping[str, int],
    header: Mapping[str, object],
) -> None:
    """Write the whole catalogue atomically, in the format its name asks for."""
    fmt = output_format(path)
    if fmt == "fits":
        write_fits(path, schema, batches, n_rows, widths, header)
        return
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, _parquet_schema(schema, header)) as writer:
                for batch in batches:
                    writer.write_table(batch.replace_schema_metadata(None).cast(writer.schema))
        else:
            with open(tmp, "wb") as fh:
                stream = CsvStream(fh, schema)
                for batch in batches:
                    stream.write(batch)
                stream.close()


def read_batches(
    path: str | os.PathLike[str], schema: CatalogueSchema, columns: Sequence[str] | None = None
) -> Iterator[pa.Table]:
    """The rows of an existing catalogue file, in bounded batches, typed as ``schema``; only
    ``columns`` of them when given (a Parquet or FITS file then reads no other column)."""
    names = schema.names if columns is None else list(columns)
    target = pa.schema([schema.arrow.field(name) for name in names])
    fmt = output_format(path)
    if fmt == "parquet":
        source = pq.ParquetFile(path)
        _check_columns(path, source.schema_arrow.names, schema)
        for batch in source.iter_batches(batch_size=_IMPORT_ROWS, columns=names):
            yield pa.Table.from_batches([batch]).select(names).cast(target)
    elif fmt == "csv":
        options = pa_csv.ConvertOptions(
            column_types=schema.arrow, strings_can_be_null=False, null_values=[]
        )
        reader = pa_csv.open_csv(path, convert_options=options)
        _check_columns(path, reader.schema.names, schema)
        for batch in reader:
            yield pa.Table.from_batches([batch]).select(names).cast(target)
    else:
        yield from _read_fits_batches(path, schema, target)


def _read_fits_batches(
    path: str | os.PathLike[str], schema: CatalogueSchema, target: pa.Schema
) -> Iterator[pa.Table]:
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            raise CatalogueError(f"{path}: no catalogue table in extension 1")
        data = hdul[1].data
        _check_columns(path, list(data.columns.names), schema)
        for start in range(0, len(data), _IMPORT_ROWS):
            rows = data[start : start + _IMPORT_ROWS]
            arrays = []
            for f in target:
                values = np.asarray(rows[f.name])
                if f.type == pa.string():
                    arrays.append(pa.array(list(values.astype(str)), type=f.type))
                else:
                    arrays.append(pa.array(values.astype(f.type.to_pandas_dtype()), type=f.type))
            yield pa.Table.from_arrays(arrays, schema=target)


def _check_columns(path: str | os.PathLike[str], names: Sequence[str], schema: CatalogueSchema):
    if list(names) != schema.names:
        raise CatalogueError(
            f"{path}: its columns are not those of this model's catalogue (another model, or not "
            "a lamost-rrnet catalogue?): use --overwrite to replace it"
        )


# ---------------------------------------------------------------------------------------------
# Finished catalogues: what their headers record, and resuming from one

# FITS primary-header keys that describe the file, not the catalogue.
_FITS_STRUCTURE = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", "")


@dataclass(frozen=True)
class CatalogueInfo:
    """A finished FITS or Parquet catalogue as its headers describe it, its rows unread."""

    path: Path
    columns: list[str]
    header: dict[str, object]  # the values the writer was given (the header argument)
    comments: dict[str, str]  # their FITS comments; Parquet keeps none
    n_rows: int


def catalogue_info(path: str | os.PathLike[str]) -> CatalogueInfo:
    """Read the columns, header and row count of a FITS or Parquet catalogue; a CSV catalogue
    records no header (CatalogueError)."""
    fmt = output_format(path)
    if fmt == "parquet":
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        header = json.loads((schema.metadata or {}).get(b"lamost_rrnet", b"{}"))
        return CatalogueInfo(Path(path), list(schema.names), header, {}, meta.num_rows)
    if fmt == "csv":
        raise CatalogueError(f"{path}: a CSV catalogue records no header (model, options)")
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            raise CatalogueError(f"{path}: no catalogue table in extension 1")
        primary = hdul[0].header
        keys = [k for k in primary if k not in _FITS_STRUCTURE and not k.startswith("NAXIS")]
        return CatalogueInfo(
            Path(path),
            list(hdul[1].columns.names),
            {k: primary[k] for k in keys},
            {k: primary.comments[k] for k in keys},
            int(hdul[1].header["NAXIS2"]),
        )


def recorded_run(catalogue: CatalogueInfo) -> dict[str, object]:
    """The model, ``exposures``, flag rule, kind of σ and shard a finished FITS or Parquet
    catalogue was made with, as in a journal's ``run``; CatalogueError if it does not record
    them."""
    header, path = catalogue.header, catalogue.path
    keys = ("MODEL", "MODELVER", "EXPOSURE", *FlagRule().header())
    missing = [k for k in keys if k not in header]
    if missing:
        raise CatalogueError(f"{path}: its header lacks {', '.join(missing)}")
    model = unescape_path(str(header["MODEL"])) + b"@" + unescape_path(str(header["MODELVER"]))
    flag = dict(zip(FlagRule.__dataclass_fields__, (header[k] for k in keys[3:]), strict=True))
    # Catalogues from before calibration carry no SIGMA: their σ was the raw ensemble's.
    sigma = str(header.get("SIGMA", "raw"))
    shard = f"{header['SHARD']}/{header['NSHARDS']}" if "SHARDALG" in header else None
    return {
        "model": escape_path(model),
        "exposures": bool(header["EXPOSURE"]),
        "flag": flag,
        "sigma": sigma,
        "shard": shard,
    }


def check_resumable(
    output: str | os.PathLike[str], schema: CatalogueSchema, run: Mapping[str, object]
) -> None:
    """Raise unless the finished ``output`` can take more rows of this ``run``: CSV records no
    settings, an output from before the ``path`` column cannot tell its inputs apart, and one
    made by another model, ``exposures`` or flag rule would mix two runs."""
    if output_format(output) == "csv":
        raise OutputExistsError(
            f"{output}: a finished CSV catalogue does not record its model and options, so "
            "--resume cannot check them: write .fits or .parquet to add to a catalogue later, "
            "or use --overwrite"
        )
    try:
        info = catalogue_info(output)
        if "path" not in info.columns:
            raise OutputExistsError(
                f"{output}: written before catalogues had a path column, so --resume cannot "
                "tell which inputs it holds: use --overwrite or a new output"
            )
        _check_columns(output, info.columns, schema)
        recorded = recorded_run(info)
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"{output}: not a readable catalogue ({exc})") from exc
    for key, value in recorded.items():
        if value != run.get(key):
            raise OutputExistsError(
                f"{output}: made with another {key} ({value!r}, now {run.get(key)!r}): "
                "use --overwrite or a new output"
            )


# ---------------------------------------------------------------------------------------------
# The journal


def journal_dir(output: str | os.PathLike[str]) -> Path:
    """Where the chunks of a run writing ``output`` are kept until it is assembled."""
    output = Path(output)
    return output.with_name(output.name + JOURNAL_SUFFIX)


def run_directories(output: str | os.PathLike[str]) -> list[Path]:
    """The directories that a run writing ``output`` keeps beside it until it has finished:
    its journal, and a journal being built or being removed."""
    output = Path(output)
    return [journal_dir(output), _building_dir(output), _removing_dir(output)]


def _building_dir(output: Path) -> Path:
    """Where a new journal is made, to appear under its own name complete (a rename)."""
    return output.with_name(f".{output.name}.journal-new.part")


def _removing_dir(output: Path) -> Path:
    """Where an assembled journal goes to be removed: a kill half-way through removing leaves
    no partial journal for a resumed run to mistake for the whole."""
    return output.with_name(f".{output.name}.journal-old.part")


def remove_leftovers(output: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed run left beside ``output``: a half-written output file (``.part``),
    a half-built or half-removed journal; the paths removed. Call only while holding the
    output's lock."""
    output = Path(output)
    removed = []
    for directory in (_building_dir(output), _removing_dir(output)):
        if directory.exists():
            shutil.rmtree(directory)
            removed.append(directory)
    return removed + remove_stale_temporaries(output)


def refuse_existing(
    output: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False
) -> None:
    """Raise :class:`OutputExistsError` if ``output`` or its journal exists (no flag given)."""
    if resume or overwrite:
        return
    output = Path(output)
    if output.exists():
        raise OutputExistsError(
            f"{output}: already exists: use --resume to add to it or --overwrite to replace it"
        )
    directory = journal_dir(output)
    if directory.exists():
        raise OutputExistsError(
            f"{directory}: an unfinished run's journal exists: use --resume to continue it or "
            "--overwrite to start again"
        )


class Journal:
    """The finished chunks of one run, each an atomically written Parquet file.

    All rows of one input go into the same chunk, so an input's ``path`` in the journal means
    it is done. ``run`` (model, columns, options) must match for a run to be resumed.
    """

    def __init__(self, directory: Path, schema: CatalogueSchema, run: Mapping[str, object]):
        self.directory = directory
        self.schema = schema
        self.run = dict(run, columns=schema.names, journal_version=_JOURNAL_VERSION)
        self._next = 1 + max((self._index(p) for p in self.chunks()), default=0)

    @classmethod
    def open(
        cls,
        output: str | os.PathLike[str],
        schema: CatalogueSchema,
        run: Mapping[str, object],
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> Journal:
        """The journal for a run writing ``output``: new, resumed, or refused.

        Without ``resume`` or ``overwrite`` an existing output or unfinished journal raises
        :class:`OutputExistsError`. ``overwrite`` discards an old journal (the old output is
        replaced only when the new one is complete). ``resume`` continues a journal, or, when
        only a finished output exists, starts one from its rows (:func:`check_resumable`).
        """
        output = Path(output)
        directory = journal_dir(output)
        refuse_existing(output, resume=resume, overwrite=overwrite)
        remove_leftovers(output)
        if overwrite and directory.exists():
            shutil.rmtree(directory)
        if directory.exists():
            journal = cls(directory, schema, run)
            journal._check_run()
            for stale in directory.glob(".*.part"):  # a chunk in flight when the run was killed
                stale.unlink(missing_ok=True)
            return journal
        importing = resume and output.exists()
        if importing:
            check_resumable(output, schema, run)
        # The journal appears under its name only complete, its copy of the output's rows
        # included: a run killed while copying leaves a scratch directory, removed next time,
        # and never a journal that lacks rows the output holds.
        building = _building_dir(output)
        building.mkdir(parents=True)
        journal = cls(building, schema, run)
        with atomic_path(building / "run.json") as tmp:
            tmp.write_text(json.dumps(journal.run, indent=1))
        if importing:
            # The journal holds the whole truth: if killed between the output's move into place
            # and the journal's removal, the journal is simply assembled again.
            for batch in read_batches(output, schema):
                journal.append(batch)
        os.replace(building, directory)
        journal.directory = directory
        return journal

    def _check_run(self) -> None:
        try:
            previous = json.loads((self.directory / "run.json").read_text())
        except (OSError, ValueError) as exc:
            raise CatalogueError(f"{self.directory}: not a readable journal ({exc})") from exc
        if previous.get("journal_version") != _JOURNAL_VERSION:
            raise OutputExistsError(
                f"{self.directory}: written by an older lamost-rrnet, whose rows lack their "
                "input's path: use --overwrite to start again"
            )
        for key in sorted(set(previous) | set(self.run)):
            if key in ("created",):
                continue
            if previous.get(key) != self.run.get(key):
                raise OutputExistsError(
                    f"{self.directory}: written by a run with another {key} "
                    f"({previous.get(key)!r}, now {self.run.get(key)!r}): use --overwrite to "
                    "start again"
                )

    @staticmethod
    def _index(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def chunks(self) -> list[Path]:
        return sorted(self.directory.glob("chunk-*.parquet"), key=self._index)

    def append(self, table: pa.Table) -> None:
        """Write one chunk atomically."""
        meta = {"widths": json.dumps(string_widths(table))}
        table = table.replace_schema_metadata(meta)
        with atomic_path(self.directory / f"chunk-{self._next:08d}.parquet") as tmp:
            pq.write_table(table, tmp)
        self._next += 1

    def done_inputs(self) -> np.ndarray:
        """Sorted unique hashes (:func:`~lamost_rrnet.identity.text_hashes`) of the ``path``
        of every input already written."""
        parts = [np.empty(0, np.uint64)]
        for chunk in self.chunks():
            paths = pq.read_table(chunk, columns=["path"])["path"].to_pylist()
            parts.append(np.unique(text_hashes(paths)))
        return np.unique(np.concatenate(parts))

    def n_rows(self) -> int:
        return sum(pq.read_metadata(c).num_rows for c in self.chunks())

    def batches(self) -> Iterator[pa.Table]:
        for chunk in self.chunks():
            yield pq.read_table(chunk).replace_schema_metadata(None).cast(self.schema.arrow)

    def assemble(self, output: str | os.PathLike[str], header: Mapping[str, object]) -> int:
        """Write every chunk into ``output`` atomically, then remove the journal; the row count."""
        n_rows, widths = 0, {}
        for chunk in self.chunks():
            meta = pq.read_metadata(chunk)
            n_rows += meta.num_rows
            for name, width in json.loads(meta.metadata[b"widths"]).items():
                widths[name] = max(widths.get(name, 0), width)
        write_catalogue(output, self.schema, self.batches(), n_rows, widths, header)
        removing = _removing_dir(Path(output))
        os.replace(self.directory, removing)
        shutil.rmtree(removing)
        return n_rows
