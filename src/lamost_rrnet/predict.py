"""The ``predict`` job: LAMOST MRS files in, the documented catalogue out.

Input paths are streamed as plain strings, each input taken once (by its identity,
:mod:`lamost_rrnet.identity`), and cut into small tasks. Worker processes read each
file, take the RV (catalogue or cross-correlation), resample each spectrum onto the model's grid
and normalize the task's spectra in one batch. The main process runs the ensemble on batches of
normalized spectra, applies the flag rule, and hands each finished batch to a writer: the
journal of a resumable file output (:mod:`lamost_rrnet.catalog`), CSV on stdout, or a table in
memory. At most a few batches are in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import multiprocessing
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from rich.markup import escape

from lamost_rrnet._version import __version__
from lamost_rrnet.catalog import (
    BAD_HEADER,
    META_COLUMNS,
    REASONS,
    CatalogueSchema,
    CsvStream,
    FlagRule,
    Journal,
    check_header,
    output_format,
    refuse_existing,
    status_text,
)
from lamost_rrnet.devices import torch_threads
from lamost_rrnet.errors import CatalogueError, CoverageError, RRNetError, SpectrumError
from lamost_rrnet.identity import (
    HashSet,
    contains,
    escape_path,
    escape_text,
    input_identity,
    path_text,
    text_hashes,
)
from lamost_rrnet.lifeline import exit_with_parent
from lamost_rrnet.locking import exclusive
from lamost_rrnet.progress import make_progress, stderr_console
from lamost_rrnet.spectra.io import COADD_BLUE, COADD_RED, MAX_BYTES, read_mrs
from lamost_rrnet.spectra.preprocess import PreprocessSpec, normalize, outlier_stats, resample

RV_COLUMNS = ("rv", "rv_ku0", "rv_br0", "rv_lasp0")
INPUT_SUFFIXES = (".fits", ".fits.gz")
FILES_PER_TASK = 8
_MISSING_RV = -9999.0  # LAMOST's "no value"

# Failure statuses: the labels of such a row are NaN (docs/catalogue.md).
NOT_FOUND = "not_found"
UNREADABLE = "unreadable"
MISSING_EXTENSION = "missing_extension"
BAD_ARM = "bad_arm"
NO_RV = "no_rv"
NO_COVERAGE = "no_coverage"
NONFINITE = "nonfinite"
ERROR = "error"
# Not a failure: a header card the catalogue uses (OBSID, RA, DEC, SNR) is unusable. Its column
# gets the sentinel (-1, NaN), labels are still predicted, and flag is 0.
BAD_HEADER_STATUS = REASONS[BAD_HEADER]
_INT64_MAX = 2**63 - 1


def _cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(device: str = "cpu") -> int:
    """Worker processes by default: a third of the cores for a CPU model, at least one;
    all cores but one when the model runs on an accelerator.

    On a CPU the 12-member ensemble costs about twice the CPU time of reading and
    preprocessing a spectrum (docs/performance.md), so the model, which runs with a thread per
    core in the main process, needs most of the cores.
    """
    cores = _cores()
    if device == "cpu":
        return max(1, cores // 3)
    return max(1, cores - 1)


# ---------------------------------------------------------------------------------------------
# Inputs


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _walk(top: str, on_error: Callable[[str], None] | None) -> Iterator[str]:
    """Files named *.fits or *.fits.gz under ``top``, streamed; symlinked directories skipped.

    A directory that cannot be listed is reported to ``on_error`` and skipped.
    """
    stack = [top]
    while stack:
        where = stack.pop()
        subdirs = []
        try:
            with os.scandir(where) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.path)
                    elif entry.name.lower().endswith(INPUT_SUFFIXES):
                        yield entry.path
        except OSError as exc:
            if on_error is not None:
                on_error(f"{escape_text(where)}: cannot be listed ({exc.strerror or exc}): skipped")
        stack.extend(sorted(subdirs, reverse=True))


def iter_input_paths(
    paths: Iterable[str | bytes | os.PathLike] = (),
    list_file: str | os.PathLike[str] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Every input file, lazily, as a plain string (undecodable bytes as surrogates).

    Files are taken as named; directories are searched recursively for ``*.fits`` and
    ``*.fits.gz``; glob patterns are expanded (``**`` recursive). ``list_file`` holds one path per
    line, read as bytes (blank lines and ``#`` comments skipped, surrounding white space
    stripped). Directories that cannot be listed go to ``on_error`` as one-line messages.
    Nothing is collected, so tens of millions of paths cost no memory.
    """
    for item in paths:
        path = os.fsdecode(item)
        if os.path.isdir(path):
            yield from _walk(path, on_error)
        elif _has_magic(path) and not os.path.exists(path):
            for match in glob.iglob(path, recursive=True):
                if os.path.isdir(match):
                    yield from _walk(match, on_error)
                else:
                    yield match
        else:
            yield path
    if list_file is not None:
        with open(list_file, "rb") as lines:
            for line in lines:
                line = line.strip()
                if line and not line.startswith(b"#"):
                    yield os.fsdecode(line)


@dataclass(frozen=True)
class InputSelection:
    """What to do with each input of a block: bool arrays, one value per input."""

    take: np.ndarray  # the first time this run meets the input, and not yet in the output
    done: np.ndarray  # already in the output (resume)
    repeated: np.ndarray  # met before in this run, not done


def select_inputs(block: Sequence[str], seen: HashSet, done: np.ndarray) -> InputSelection:
    """Split a block of input paths by identity: new, done (``done``: sorted hashes of the
    output's paths) or repeated (``seen``: this run's inputs so far, updated here)."""
    hashes = text_hashes(path_text(p) for p in block)
    in_output = contains(done, hashes)
    new = seen.add(hashes)
    return InputSelection(new & ~in_output, in_output, ~new & ~in_output)


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------
# RVs from a catalogue


def _basename_key(name: str) -> str:
    name = os.path.basename(name.strip())
    return name[:-3] if name.lower().endswith(".gz") else name


def _find(names: Sequence[str], wanted: str) -> str | None:
    lower = {n.lower(): n for n in names}
    return lower.get(wanted.lower())


def _catalogue_batches(path: str, columns: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """The named columns of a CSV, FITS or Parquet table, in bounded batches of numpy arrays."""
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=262144, columns=columns):
            yield {c: batch[c].to_numpy(zero_copy_only=False) for c in columns}
    elif lower.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        from astropy.io import fits

        with fits.open(path, memmap=True) as hdul:
            data = next((h.data for h in hdul[1:] if isinstance(h, fits.BinTableHDU)), None)
            if data is None:
                raise CatalogueError(f"{path}: no binary table")
            for start in range(0, len(data), 262144):
                rows = data[start : start + 262144]
                yield {c: np.asarray(rows[c]) for c in columns}
    else:
        import pyarrow.csv as pa_csv

        reader = pa_csv.open_csv(
            path, convert_options=pa_csv.ConvertOptions(include_columns=columns)
        )
        for batch in reader:
            yield {c: batch[c].to_numpy(zero_copy_only=False) for c in columns}


def _catalogue_columns(path: str) -> list[str]:
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        if lower.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
            from astropy.io import fits

            with fits.open(path, memmap=True) as hdul:
                for hdu in hdul[1:]:
                    if isinstance(hdu, fits.BinTableHDU):
                        return list(hdu.columns.names)
            raise CatalogueError(f"{path}: no binary table")
        if lower.endswith((".csv", ".csv.gz", ".txt")):
            import pyarrow.csv as pa_csv

            return list(pa_csv.open_csv(path).schema.names)
    except CatalogueError:
        raise
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"{path}: not a readable table ({exc})") from exc
    raise CatalogueError(f"{path}: use a .csv, .fits or .parquet catalogue")


@dataclass(frozen=True)
class RVTable:
    """Catalogue RVs as sorted arrays in ``directory``, memory-mapped by every worker process.

    Look-up is by obsid first, then by file base name (with or without ``.gz``).
    """

    directory: str
    column: str
    n_rows: int

    def lookup(self, obsid: int, filename: str) -> float | None:
        arrays = _rv_arrays(self.directory)
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
    """Obsids as int64, -1 where a value is missing or not a number."""
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce")
    return numbers.fillna(-1).astype(np.int64).to_numpy()


def load_rv_table(path: str | os.PathLike[str], rv_column: str | None, directory: str) -> RVTable:
    """Read the RVs of a LAMOST catalogue (CSV/FITS/Parquet) into an :class:`RVTable`.

    ``rv_column`` names the column; by default the first present of rv, rv_ku0, rv_br0,
    rv_lasp0. Rows are joined by ``obsid``, or by ``filename`` where the obsid is absent.
    """
    path = os.fspath(path)
    names = _catalogue_columns(path)
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
        for batch in _catalogue_batches(path, read):
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


# ---------------------------------------------------------------------------------------------
# Worker side: files to normalized spectra


_ROW_FIELDS = (
    *META_COLUMNS,
    *("rv", "rv_source", "status", "path", "n_outliers", "max_run", "bad_header"),
)


@dataclass(frozen=True)
class _Job:
    spec: dict
    exposures: bool
    rv_table: RVTable | None
    max_bytes: int = MAX_BYTES


@dataclass
class _Rows:
    """The rows of one task: metadata lists, outlier statistics and the normalized spectra."""

    files: int = 0
    skipped: list[str] = field(default_factory=list)  # inputs that are not regular files: why
    meta: dict[str, list] = field(default_factory=lambda: {k: [] for k in _ROW_FIELDS})
    flux: np.ndarray | None = None  # (k, n_pixels) float32, the rows whose status is ""
    flux_rows: np.ndarray | None = None  # their row numbers
    errors: list[str] = field(default_factory=list)  # unexpected exceptions, for the log

    def __len__(self) -> int:
        return len(self.meta["filename"])


def _init_worker(threads: int) -> None:
    from threadpoolctl import threadpool_limits

    exit_with_parent()  # a SIGKILLed run must not leave its workers, and their memory, behind

    threadpool_limits(threads)


def _ccf(spectrum) -> float | None:
    from lamost_rrnet.spectra.rv import estimate_rv

    try:
        rv, _ = estimate_rv(spectrum)
    except (SpectrumError, ValueError, FloatingPointError):
        return None
    return float(rv) if np.isfinite(rv) else None


def _read_failure(path: str, job: _Job) -> str:
    """Why reading failed: a missing file, a missing coadd in a readable file, or unreadable."""
    if not os.path.exists(path):
        return NOT_FOUND
    if job.exposures:
        return UNREADABLE
    try:
        read_mrs(path, max_bytes=job.max_bytes)
    except SpectrumError:
        return UNREADABLE
    return MISSING_EXTENSION


@dataclass(frozen=True)
class HeaderValues:
    """The primary-header values the catalogue uses, checked: sentinels where unusable."""

    obsid: int = -1
    ra: float = float("nan")
    dec: float = float("nan")
    unusable: tuple[str, ...] = ()  # the cards present but out of range or not numbers


def _obsid(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    elif isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    elif not isinstance(value, int):
        return None
    return value if 0 <= value <= _INT64_MAX else None


def _number(value: object, low: float, high: float) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if low <= number <= high else None  # NaN fails both


def header_values(header: Mapping[str, object]) -> HeaderValues:
    """OBSID (0 to 2**63-1), RA (0-360 deg) and DEC (-90 to 90 deg) from a primary header.

    An absent card gives its sentinel (-1, NaN); a card present but unusable (not a number,
    out of range, non-finite) gives the sentinel too and is named in ``unusable``. Never raises.
    """
    values, unusable = {}, []
    for key, parse, sentinel in (
        ("OBSID", _obsid, -1),
        ("RA", lambda v: _number(v, 0.0, 360.0), float("nan")),
        ("DEC", lambda v: _number(v, -90.0, 90.0), float("nan")),
    ):
        value = parse(header[key]) if key in header else sentinel
        if value is None:
            unusable.append(key)
            value = sentinel
        values[key.lower()] = value
    return HeaderValues(**values, unusable=tuple(unusable))


def _snr(value: float) -> tuple[float, bool]:
    """An arm's S/N and whether its card was usable: NaN (unknown) is; inf or < 0 is not."""
    if np.isnan(value) or (np.isfinite(value) and value >= 0):
        return value, True
    return float("nan"), False


def _not_regular(path: str) -> str | None:
    """Why ``path`` must not be opened (a FIFO would block), or None to read it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: its row says so
    if stat.S_ISREG(mode):
        return None
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file (FIFO, socket, device)"


def _file_rows(path: str, job: _Job, spec: PreprocessSpec) -> list[tuple[dict, Any]]:
    """(row, resampled flux or None) for each spectrum of one file."""
    name = os.path.basename(path)
    base = _base_row(path, job)
    try:
        mrs = read_mrs(
            path, None if job.exposures else [COADD_BLUE, COADD_RED], max_bytes=job.max_bytes
        )
    except SpectrumError as exc:
        # A reader's error may name its own status (e.g. a file over the size cap).
        status = getattr(exc, "status", None) or _read_failure(path, job)
        return [(dict(base, status=status), None)]
    values = header_values(mrs.header)
    # The reader's properties read these cards again: give them the checked values.
    mrs.header.update(OBSID=values.obsid, RA=values.ra, DEC=values.dec)
    base.update(obsid=values.obsid, ra=values.ra, dec=values.dec, bad_header=bool(values.unusable))
    pairs = mrs.exposure_pairs() if job.exposures else [(COADD_BLUE, COADD_RED)]
    if not pairs:
        return [(dict(base, status=MISSING_EXTENSION), None)]
    rv = job.rv_table.lookup(mrs.obsid, name) if job.rv_table is not None else None
    source = "catalogue" if rv is not None else "ccf"
    if rv is None and job.exposures and COADD_BLUE in mrs.arms and COADD_RED in mrs.arms:
        # The observation's RV applies to each exposure, as with a catalogue RV; the coadd
        # has the best S/N to measure it on.
        try:
            rv = _ccf(mrs.coadd())
        except SpectrumError:
            rv = None
    out = []
    for blue, red in pairs:
        row = dict(base, extname_blue=blue, extname_red=red)
        try:
            spectrum = mrs.spectrum(blue, red)
        except SpectrumError:
            out.append((dict(row, status=BAD_ARM), None))
            continue
        (snr_blue, blue_ok), (snr_red, red_ok) = _snr(spectrum.blue.snr), _snr(spectrum.red.snr)
        row.update(snr_blue=snr_blue, snr_red=snr_red)
        row["bad_header"] = row["bad_header"] or not (blue_ok and red_ok)
        rv_here = rv if rv is not None else _ccf(spectrum)
        if rv_here is None:
            out.append((dict(row, status=NO_RV), None))
            continue
        row.update(rv=rv_here, rv_source=source)
        try:
            flux = resample(spectrum, rv_here, spec)
        except CoverageError:
            out.append((dict(row, status=NO_COVERAGE), None))
            continue
        n_out, run = outlier_stats(spectrum, rv_here, spec)
        out.append((dict(row, n_outliers=n_out, max_run=run), flux))
    return out


def _process(paths: list[str], job: _Job) -> _Rows:
    """Read, resample and normalize the spectra of a few files (runs in a worker process)."""
    spec = PreprocessSpec.from_dict(job.spec)
    rows = _Rows()
    resampled: list[np.ndarray] = []
    resampled_rows: list[int] = []
    for path in paths:
        why = _not_regular(path)
        if why is not None:
            rows.skipped.append(f"{path_text(path)}: {why}: skipped")
            continue
        rows.files += 1
        try:
            items = _file_rows(path, job, spec)
        except Exception as exc:  # one pathological file must not end a run over millions
            rows.errors.append(f"{path_text(path)}: {type(exc).__name__}: {exc}")
            items = [(dict(_base_row(path, job), status=ERROR), None)]
        for row, flux in items:
            if flux is not None:
                resampled_rows.append(len(rows))
                resampled.append(flux)
            for key, values in rows.meta.items():
                values.append(row[key])
    if resampled:
        with np.errstate(all="ignore"):
            normalized = normalize(np.stack(resampled), spec)
        finite = np.isfinite(normalized).all(axis=1)
        index = np.asarray(resampled_rows)
        for i in index[~finite]:
            rows.meta["status"][i] = NONFINITE
        rows.flux, rows.flux_rows = normalized[finite], index[finite]
    return rows


def _base_row(path: str, job: _Job) -> dict[str, Any]:
    """A row with what is known before reading the file."""
    row = dict.fromkeys(_ROW_FIELDS, np.nan)
    identity = input_identity(path)
    row.update(
        obsid=-1,
        filename=escape_path(os.path.basename(identity)),
        path=escape_path(identity),
        bad_header=False,
        extname_blue="" if job.exposures else COADD_BLUE,
        extname_red="" if job.exposures else COADD_RED,
        rv_source="",
        status="",
        n_outliers=-1,
        max_run=-1,
    )
    return row


# ---------------------------------------------------------------------------------------------
# Main side: the model, the flag rule and the writers


@dataclass
class PredictSummary:
    """What a predict run did."""

    output: str | None
    model: str
    files: int = 0
    skipped_files: int = 0
    repeated: int = 0  # inputs named again (same identity): taken once
    not_regular: int = 0  # FIFOs, devices, directories named *.fits: skipped
    unlisted_dirs: int = 0  # directories that could not be listed: skipped
    rows: int = 0
    ok: int = 0
    flagged: int = 0
    failed: int = 0
    seconds: float = 0.0
    rv_column: str | None = None

    def count(self, flag: np.ndarray, n_predicted: int) -> None:
        """Add a batch of rows: their flags, and how many of them have labels."""
        n, ok = len(flag), int(np.sum(flag))
        self.rows += n
        self.ok += ok
        self.flagged += n_predicted - ok
        self.failed += n - n_predicted

    @property
    def rate(self) -> float:
        """Spectra per second over the whole run."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        lines = [
            f"{self.rows} spectra from {self.files} files: {self.ok} ok, {self.flagged} flagged, "
            f"{self.failed} failed; {self.rate:,.1f} spectra/s ({self.seconds:.1f} s)"
        ]
        if self.skipped_files:
            lines.append(f"{self.skipped_files} files skipped: already in the output (resume)")
        if self.repeated:
            lines.append(f"{self.repeated} inputs skipped: named more than once (taken once)")
        if self.not_regular:
            lines.append(f"{self.not_regular} inputs skipped: not regular files")
        if self.unlisted_dirs:
            lines.append(f"{self.unlisted_dirs} directories skipped: they could not be listed")
        if self.output and self.output != "-":
            lines.append(f"catalogue written to {self.output}")
        return "\n".join(lines)


class _Model:
    """The ensemble with what the flag rule needs, in the catalogue's label order."""

    def __init__(self, ensemble, schema: CatalogueSchema, batch_size: int, raw_sigma: bool):
        self.ensemble = ensemble
        self.batch_size = batch_size
        self.raw_sigma = raw_sigma
        self.sigma = "raw" if raw_sigma else ensemble.sigma_kind
        self.order = [list(ensemble.labels).index(name) for name in schema.labels]
        ranges = ensemble.label_ranges or {}
        inf = float("inf")
        self.low = np.array([ranges.get(n, (-inf, inf))[0] for n in schema.labels], np.float64)
        self.high = np.array([ranges.get(n, (-inf, inf))[1] for n in schema.labels], np.float64)
        norm = ensemble.normalization
        norm_names = list(norm.label_names)
        self.scale = np.array(
            [np.asarray(norm.label_std)[norm_names.index(n)] for n in schema.labels], np.float64
        )

    def predict(self, flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sigma = self.ensemble.predict(
            flux, batch_size=self.batch_size, raw_sigma=self.raw_sigma
        )
        return np.asarray(mu)[:, self.order], np.asarray(sigma)[:, self.order]


def _catalogue_rows(
    parts: list[_Rows], model: _Model, schema: CatalogueSchema, rule: FlagRule, model_id: str
) -> tuple[dict[str, Any], np.ndarray]:
    """Predict the normalized spectra of ``parts`` and build their catalogue columns."""
    meta: dict[str, list] = {k: [] for k in parts[0].meta}
    fluxes, rows_with_flux, offset = [], [], 0
    for part in parts:
        for key, values in part.meta.items():
            meta[key].extend(values)
        if part.flux is not None and len(part.flux):
            fluxes.append(part.flux)
            rows_with_flux.append(part.flux_rows + offset)
        offset += len(part)
    n, n_labels = offset, len(schema.labels)
    mu = np.full((n, n_labels), np.nan)
    sigma = np.full((n, n_labels), np.nan)
    flag = np.zeros(n, np.int16)
    status = list(meta["status"])
    bad_header = np.asarray(meta["bad_header"], bool)
    predicted = np.concatenate(rows_with_flux) if rows_with_flux else np.empty(0, int)
    failed_bad_header = bad_header.copy()
    failed_bad_header[predicted] = False
    for i in np.flatnonzero(failed_bad_header).tolist():
        status[i] = f"{status[i]},{BAD_HEADER_STATUS}" if status[i] else BAD_HEADER_STATUS
    if predicted.size:
        mu_p, sigma_p = model.predict(np.concatenate(fluxes))
        mu[predicted], sigma[predicted] = mu_p, sigma_p
        bits = rule.reasons(
            np.asarray(meta["snr_blue"], np.float64)[predicted],
            np.asarray(meta["snr_red"], np.float64)[predicted],
            np.asarray(meta["n_outliers"])[predicted],
            np.asarray(meta["max_run"])[predicted],
            mu_p,
            sigma_p,
            model.low,
            model.high,
            model.scale,
        )
        bits |= np.where(bad_header[predicted], BAD_HEADER, 0).astype(bits.dtype)
        flag[predicted] = bits == 0
        for i, text in zip(predicted.tolist(), status_text(bits), strict=True):
            status[i] = text
    columns: dict[str, Any] = {k: meta[k] for k in schema.names if k in meta}
    for j, name in enumerate(schema.labels):
        columns[name] = mu[:, j].astype(np.float32)
        columns[f"{name}_err"] = sigma[:, j].astype(np.float32)
    columns.update(flag=flag, status=status, model=[model_id] * n)
    columns["obsid"] = np.asarray(meta["obsid"], np.int64)
    return columns, predicted


def _model_id(ensemble) -> str:
    """The ``model`` column: name@version, escaped (identity.escape_text) so any name fits."""
    return escape_text(f"{ensemble.name}@{ensemble.version}")


def _header(ensemble, rule: FlagRule, exposures: bool, sigma: str) -> dict[str, tuple]:
    # Text from the model is escaped: FITS headers hold printable ASCII only.
    header: dict[str, tuple] = {
        "MODEL": (escape_text(str(ensemble.name)), "lamost-rrnet model name"),
        "MODELVER": (escape_text(str(ensemble.version)), "model version"),
        "SIGMA": (sigma, "_err: calibrated, or raw ensemble sigma"),
        "RRNETVER": (__version__, "lamost-rrnet version"),
        "PREPROC": (escape_text(str(ensemble.preprocessing.name)), "preprocessing spec"),
        "EXPOSURE": (bool(exposures), "T: one row per exposure; F: coadds"),
        "DATE": (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC creation time"),
    }
    header.update(rule.header())
    return header


def _load_model(model: Any, device: str, progress: bool):
    """The ensemble on ``device``: ``model`` itself, or what ``--model`` names."""
    if isinstance(model, (str, os.PathLike)):
        from lamost_rrnet.hub import load_model

        return load_model(os.fspath(model), device=device, progress=progress)
    return model.to(device)


class _Writer:
    """Where finished rows go: the journal of a file output, CSV on stdout, or memory."""

    def __init__(
        self, output, schema: CatalogueSchema, run: dict, *, resume: bool, overwrite: bool
    ):
        self.output, self.schema = output, schema
        self.journal = self.stream = None
        self.kept: list = []
        self.done = np.empty(0, np.uint64)  # hashes of the inputs' paths already written
        if output is not None and os.fspath(output) == "-":
            self.stream = CsvStream(sys.stdout.buffer, schema)
        elif output is not None:
            self.journal = Journal.open(output, schema, run, resume=resume, overwrite=overwrite)
            self.done = self.journal.done_inputs()

    def write(self, columns: dict[str, Any]) -> None:
        table = self.schema.table(columns)
        if self.journal is not None:
            self.journal.append(table)
        elif self.stream is not None:
            self.stream.write(table)
        else:
            self.kept.append(table)

    def finish(self, header: dict):
        """Assemble the output; the astropy Table when rows were kept in memory."""
        if self.journal is not None:
            self.journal.assemble(self.output, header)
        elif self.stream is not None:
            self.stream.close()
        else:
            import pyarrow as pa

            empty = self.schema.table({n: [] for n in self.schema.names})
            return self.schema.astropy(pa.concat_tables(self.kept or [empty]), header)
        return None


class _Pipeline:
    """Tasks out to the workers in input order, at most ``max_in_flight`` at a time."""

    def __init__(self, job: _Job, workers: int, max_in_flight: int, worker_threads: int):
        self.job = job
        self.max_in_flight = max_in_flight
        self.pool = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(worker_threads,),
            )

    def run(self, tasks: Iterator[list[str]]) -> Iterator[_Rows]:
        if self.pool is None:
            for paths in tasks:
                yield _process(paths, self.job)
            return
        pending: collections.deque[Future] = collections.deque()
        try:
            for paths in tasks:
                pending.append(self.pool.submit(_process, paths, self.job))
                while len(pending) >= self.max_in_flight:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise RRNetError(
                "a worker process died (out of memory?): what is written so far is kept; "
                "continue with --resume"
            ) from exc

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def predict_files(
    paths: Iterable[str | os.PathLike[str]] = (),
    model: Any = "rrnet2022",
    catalogue: str | os.PathLike[str] | None = None,
    rv_column: str | None = None,
    output: str | os.PathLike[str] | None = None,
    exposures: bool = False,
    batch_size: int = 256,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    device: str = "auto",
    list_file: str | os.PathLike[str] | None = None,
    flag_rule: FlagRule = FlagRule(),
    worker_threads: int = 1,
    threads: int | None = None,
    raw_sigma: bool = False,
    max_file_bytes: int = MAX_BYTES,
):
    """Run a model over LAMOST MRS files and write (or return) the catalogue.

    ``paths`` are files, directories (searched recursively for *.fits and *.fits.gz) or glob
    patterns; ``list_file`` adds one path per line. Each input is taken once, by its identity
    (:mod:`lamost_rrnet.identity`); FIFOs and other files that are not regular are skipped
    with a warning, as are directories that cannot be listed. ``model`` is a registry name, a model
    directory, a published-layout directory, or an ``Ensemble``. RVs come from ``catalogue``
    (CSV/FITS/Parquet, joined by obsid or file name, column ``rv_column`` or the first of
    rv, rv_ku0, rv_br0, rv_lasp0), else from cross-correlation. ``exposures`` gives one row per
    exposure instead of per coadd. ``workers`` processes read and preprocess (0: in this process,
    default :func:`default_workers`), each with ``worker_threads`` BLAS threads; the model runs
    here with ``threads`` torch threads (default: one per core; on a CPU the ensemble runs its
    batches as one single-threaded shard per thread, which shares the cores with the workers
    better than intra-op threads do). The ``_err`` columns hold the model's calibrated σ, or
    with ``raw_sigma`` the ensemble's own σ; the header's SIGMA says which. A file that needs
    more than ``max_file_bytes`` decompressed becomes a row with status ``too_large``.

    ``output`` ending in .fits, .csv or .parquet is written atomically through a resumable
    journal and a :class:`PredictSummary` is returned; ``"-"`` streams CSV to stdout; None
    returns the catalogue as an astropy Table. An existing output raises
    :class:`~lamost_rrnet.errors.OutputExistsError` unless ``resume`` or ``overwrite``;
    ``resume`` skips the inputs whose ``path`` is already written, and refuses an output made
    with other settings, a finished CSV output, or one without the ``path`` column.
    """
    started = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    to_stdout = output is not None and str(output) == "-"
    if output is not None:
        output_format(output)
        if to_stdout and (resume or overwrite):
            raise ValueError("resume and overwrite need an output file, not stdout")
    to_file = output is not None and not to_stdout
    # Held for the whole run, so that a second run on the same output stops at once.
    with exclusive(output) if to_file else contextlib.nullcontext():
        if to_file:
            refuse_existing(output, resume=resume, overwrite=overwrite)
        paths = [os.fspath(p) for p in paths]  # the arguments, not the expansion
        first = next(iter_input_paths(paths, list_file), None)
        if first is None:
            where = ", ".join(paths + ([os.fspath(list_file)] if list_file else [])) or "nothing"
            raise RRNetError(f"no input files: none found in {where}")

        ensemble = _load_model(model, device, progress)
        workers = default_workers(ensemble.device.type) if workers is None else workers
        schema = CatalogueSchema.for_labels(ensemble.labels)
        runner = _Model(ensemble, schema, batch_size, raw_sigma)
        model_id = _model_id(ensemble)
        if to_file and output_format(output) == "fits":
            # before, not after, the run
            check_header(_header(ensemble, flag_rule, exposures, runner.sigma))
        summary = PredictSummary(None if output is None else os.fspath(output), model_id)
        say = stderr_console.print if progress else (lambda *a, **k: None)

        with tempfile.TemporaryDirectory(prefix="lamost-rrnet-rv-") as scratch:
            rv_table = None
            if catalogue is not None:
                rv_table = load_rv_table(catalogue, rv_column, scratch)
                summary.rv_column = rv_table.column
                say(f"RV from column {rv_table.column!r} of {catalogue} ({rv_table.n_rows} rows)")
            else:
                say("RV by cross-correlation (no --catalogue)")
            run = {
                "model": model_id,
                "exposures": bool(exposures),
                "flag": asdict(flag_rule),
                "sigma": runner.sigma,
            }
            writer = _Writer(output, schema, run, resume=resume, overwrite=overwrite)

            total = sum(1 for _ in iter_input_paths(paths, list_file)) if progress else None
            bar = make_progress(progress)
            task_id = bar.add_task("predict", total=total)

            def warn(message: str) -> None:
                say(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

            def unlisted(message: str) -> None:
                summary.unlisted_dirs += 1
                warn(message)

            seen = HashSet()  # this run's inputs, once each

            def tasks() -> Iterator[list[str]]:
                inputs = iter_input_paths(paths, list_file, on_error=unlisted)
                for block in _chunks(inputs, 1024):
                    selected = select_inputs(block, seen, writer.done)
                    summary.skipped_files += int(selected.done.sum())
                    summary.repeated += int(selected.repeated.sum())
                    bar.advance(task_id, len(block) - int(selected.take.sum()))
                    todo = (p for p, keep in zip(block, selected.take, strict=True) if keep)
                    yield from _chunks(todo, FILES_PER_TASK)

            def flush(pending: list[_Rows]) -> None:
                columns, predicted = _catalogue_rows(pending, runner, schema, flag_rule, model_id)
                writer.write(columns)
                summary.count(columns["flag"], predicted.size)
                pending.clear()

            job = _Job(ensemble.preprocessing.to_dict(), bool(exposures), rv_table, max_file_bytes)
            in_flight = max(4 * max(workers, 1), 2 * batch_size // FILES_PER_TASK + 1)
            pipeline = _Pipeline(job, workers, in_flight, worker_threads)
            pending: list[_Rows] = []
            threads = _cores() if threads is None else threads
            try:
                with bar, torch_threads(threads):
                    for rows in pipeline.run(tasks()):
                        summary.files += rows.files
                        summary.not_regular += len(rows.skipped)
                        for message in (*rows.skipped, *rows.errors):
                            warn(message)
                        pending.append(rows)
                        if sum(len(r) for r in pending) >= batch_size:
                            flush(pending)
                        bar.advance(task_id, rows.files + len(rows.skipped))
                    if pending:
                        flush(pending)
            finally:
                pipeline.close()
            result = writer.finish(_header(ensemble, flag_rule, exposures, runner.sigma))
        summary.seconds = time.perf_counter() - started
        return summary if output is not None else result
