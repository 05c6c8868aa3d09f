"""Reference table + FITS files -> the prepared dataset (HDF5), in parallel and resumably.

Per row: read the two named extensions, take the table's RV (or estimate one by
cross-correlation where it is missing), count the outlier pixels (docs/preprocessing.md) and reject
the spectrum above the thresholds, resample onto the grid, then normalize a whole chunk at
once with the batched rrnet2022 path. Worker processes handle chunks of rows; the parent
writes them in order, so the dataset is the same for any number of workers. Every row ends
either in the dataset or in the rejects table (``<output stem>_rejects.csv``) with a reason:
a bad file is a reject row, never a crash. An interrupted run resumes from both.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lamost_rrnet.atomic import replace_durably
from lamost_rrnet.crossmatch import reference_label_names
from lamost_rrnet.dataset import DatasetWriter
from lamost_rrnet.errors import CatalogueError, OutputExistsError, SpectrumError
from lamost_rrnet.executors import in_order
from lamost_rrnet.lifeline import exit_with_parent
from lamost_rrnet.locking import exclusive
from lamost_rrnet.pipeline import Resampled, normalize_chunk, resample_spectrum
from lamost_rrnet.progress import make_progress
from lamost_rrnet.spectra.io import MAX_BYTES, Spectrum, read_mrs
from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec
from lamost_rrnet.table_io import read_table

REFERENCE_REQUIRED = (
    "obsid",
    "filename",
    "extname_blue",
    "extname_red",
    "star_id",
    "snr_blue",
    "snr_red",
)
REJECT_COLUMNS = (
    "obsid",
    "filename",
    "extname_blue",
    "extname_red",
    "star_id",
    "reason",
    "n_outliers",
    "max_outlier_run",
)
# Rows per task: big enough to amortize the batched normalization and the IPC, small enough
# that a few chunks in flight per worker stay a few MB.
CHUNK_ROWS = 32


@dataclass(frozen=True)
class Thresholds:
    """Reject a spectrum with more outlier pixels than this, or a longer run of them, or whose
    file needs more than ``max_file_bytes`` decompressed (spectra.io.read_mrs)."""

    max_outliers: int = 100
    max_outlier_run: int = 30
    max_file_bytes: int = MAX_BYTES


@dataclass(frozen=True)
class RowTask:
    index: int
    path: str
    extname_blue: str
    extname_red: str
    rv: float


@dataclass
class ChunkResult:
    """The accepted rows of a chunk (flux normalized, ivar in its units) and the rejected ones."""

    indices: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    rv: np.ndarray
    rv_source: list[str]
    n_outliers: np.ndarray
    max_run: np.ndarray
    rejects: list[tuple[int, str, int | None, int | None]]


@dataclass
class PrepareResult:
    path: Path
    rejects_path: Path
    n_rows: int
    n_accepted: int
    n_rejected: int
    n_resumed: int
    reasons: Counter = field(default_factory=Counter)


def rejects_path_for(output: str | os.PathLike[str]) -> Path:
    """``dataset.h5`` -> ``dataset_rejects.csv``, beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}_rejects.csv")


def _existing_path(path: str) -> str:
    """The file, or its gzipped / gunzipped twin when catalogues and disks disagree on .gz."""
    if os.path.exists(path):
        return path
    twin = path[:-3] if path.endswith(".gz") else path + ".gz"
    return twin if os.path.exists(twin) else path


def _estimate_rv(spectrum: Spectrum) -> float:
    from lamost_rrnet.spectra.rv import estimate_rv

    rv, _ = estimate_rv(spectrum)
    return float(rv)


def process_rows(
    tasks: Sequence[RowTask],
    spec: PreprocessSpec = RRNET2022,
    thresholds: Thresholds = Thresholds(),
) -> ChunkResult:
    """Read, check and preprocess a chunk of rows (runs in a worker process)."""
    kept: list[int] = []
    resampled: list[Resampled] = []
    rvs, sources = [], []
    rejects: list[tuple[int, str, int | None, int | None]] = []
    for task in tasks:
        stats: tuple[int, int] | None = None
        try:
            path = _existing_path(task.path)
            mrs = read_mrs(
                path,
                extensions=[task.extname_blue, task.extname_red],
                max_bytes=thresholds.max_file_bytes,
            )
            spectrum = mrs.spectrum(task.extname_blue.upper(), task.extname_red.upper())
            if np.isfinite(task.rv):
                rv, source = task.rv, "catalogue"
            else:
                rv, source = _estimate_rv(spectrum), "ccf"
            done = resample_spectrum(spectrum, rv, spec, with_ivar=True)
            stats = (done.n_outliers, done.max_run)
            if stats[0] > thresholds.max_outliers:
                raise SpectrumError(
                    f"{stats[0]} outlier pixels (more than {thresholds.max_outliers})"
                )
            if stats[1] > thresholds.max_outlier_run:
                raise SpectrumError(
                    f"{stats[1]} outlier pixels in a row (more than {thresholds.max_outlier_run})"
                )
        except SpectrumError as exc:
            rejects.append((task.index, str(exc), *(stats or (None, None))))
            continue
        except Exception as exc:  # a malformed file must become a reject row, not end the run
            reason = f"{task.path}: unexpected {type(exc).__name__}: {exc}"
            rejects.append((task.index, reason, *(stats or (None, None))))
            continue
        kept.append(task.index)
        resampled.append(done)
        rvs.append(rv)
        sources.append(source)
    if resampled:
        flux, ivar, finite = normalize_chunk(resampled, spec)
    else:
        flux = ivar = np.empty((0, spec.n_pixels))
        finite = np.zeros(0, bool)
    n_out = [r.n_outliers for r in resampled]
    runs = [r.max_run for r in resampled]
    for i in np.flatnonzero(~finite):
        reason = "continuum normalization failed (flat, zero or non-finite flux)"
        rejects.append((kept[i], reason, n_out[i], runs[i]))
    pick = np.flatnonzero(finite)
    return ChunkResult(
        indices=np.asarray(kept, np.int64)[pick],
        flux=flux[pick].astype(np.float32),
        ivar=ivar[pick].astype(np.float32),
        rv=np.asarray(rvs, np.float64)[pick],
        rv_source=[sources[i] for i in pick],
        n_outliers=np.asarray(n_out, np.int64)[pick],
        max_run=np.asarray(runs, np.int64)[pick],
        rejects=rejects,
    )


def _init_worker() -> None:
    """One BLAS/OpenMP thread per worker: the parallelism is the processes. A worker ends
    with its parent, so that a killed run leaves none behind."""
    exit_with_parent()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # before any torch import in this process
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _run_chunks(
    chunks: Iterator[list[RowTask]],
    spec: PreprocessSpec,
    thresholds: Thresholds,
    workers: int,
) -> Iterator[tuple[int, ChunkResult]]:
    """(rows, result) per chunk, in submission order, with at most 2 chunks per worker queued."""
    if workers <= 1:
        from threadpoolctl import threadpool_limits

        # The matrices are small: BLAS threads cost more in overhead than they gain.
        with threadpool_limits(1):
            for chunk in chunks:
                yield len(chunk), process_rows(chunk, spec, thresholds)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        for chunk, result in in_order(pool, process_rows, chunks, 2 * workers, spec, thresholds):
            yield len(chunk), result


def _read_reference(reference: str | os.PathLike[str]):
    table = read_table(reference)
    label_names = reference_label_names(table)
    missing = [c for c in (*REFERENCE_REQUIRED, *label_names) if c not in table.colnames]
    if missing or not label_names:
        raise CatalogueError(
            f"{reference}: missing column(s) {', '.join(missing) or 'with labels'} "
            f"(available: {', '.join(table.colnames)}); make it with lamost-rrnet crossmatch"
        )
    return table, label_names


def _column(table, name: str, dtype: type) -> np.ndarray:
    col = table[name]
    if dtype is str:
        data = np.char.strip(np.asarray(col).astype(str))
    else:
        data = np.asarray(col, dtype=dtype)
    mask = getattr(col, "mask", None)
    if mask is not None and dtype is np.float64:
        data = np.where(mask, np.nan, data)
    return data


def _open_rejects(path: Path, resume: bool) -> tuple[set[tuple[str, str, str]], Counter]:
    """Keys and reasons already in the partial rejects table (kept on resume)."""
    partial = path.with_name(path.name + ".partial")
    if resume and not partial.exists() and path.exists():
        os.replace(path, partial)
    if resume and partial.exists():
        _drop_partial_line(partial)
    if not resume or not partial.exists() or partial.stat().st_size == 0:
        with open(partial, "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(REJECT_COLUMNS)
        return set(), Counter()
    keys, reasons = set(), Counter()
    with open(partial, newline="") as f:
        for row in csv.DictReader(f):
            keys.add((row["filename"], row["extname_blue"], row["extname_red"]))
            reasons[_reason_kind(row["reason"])] += 1
    return keys, reasons


def _drop_partial_line(path: Path) -> None:
    """Cut a file after its last newline: a kill mid-write leaves the last line incomplete.

    Every reject row is one line (reasons carry no newline), so what remains is whole rows.
    """
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            block = f.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                pos = pos - step + newline + 1
                break
            pos -= step
        if pos != end:
            f.truncate(pos)


def _one_line(reason: str) -> str:
    """A reason as one line, so that each reject row is exactly one line of the file."""
    return " ".join(reason.splitlines())


def _reason_kind(reason: str) -> str:
    """A short class of a reject reason, for the summary."""
    for kind in ("outlier pixels in a row", "outlier pixels", "do not cover", "normalization"):
        if kind in reason:
            return kind
    return "unreadable or unusable file"


def prepare_dataset(
    reference: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    spectra_root: str | os.PathLike[str] | None = None,
    workers: int = 2,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    thresholds: Thresholds = Thresholds(),
    spec: PreprocessSpec = RRNET2022,
    chunk_rows: int = CHUNK_ROWS,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> PrepareResult:
    """Preprocess every row of a reference table into a dataset; return counts and paths.

    Rows already in the dataset or the rejects table are skipped on ``resume``. Raises
    :class:`~lamost_rrnet.errors.DatasetError` when no spectrum is accepted at all.
    ``progress`` shows a bar of the rows done.
    """
    output = Path(output)
    rejects_path = rejects_path_for(output)
    with exclusive(output):  # one run at a time on a dataset
        if rejects_path.exists() and not (resume or overwrite):
            raise OutputExistsError(f"{rejects_path}: exists; use --resume or --overwrite")
        table, label_names = _read_reference(reference)
        root = Path(spectra_root) if spectra_root is not None else Path()
        filename = _column(table, "filename", str)
        blue = np.char.upper(_column(table, "extname_blue", str))
        red = np.char.upper(_column(table, "extname_red", str))
        rv = (
            _column(table, "rv", np.float64)
            if "rv" in table.colnames
            else np.full(len(table), np.nan)
        )
        labels = np.column_stack([_column(table, n, np.float64) for n in label_names])
        errors = np.column_stack(
            [
                _column(table, f"{n}_err", np.float64)
                if f"{n}_err" in table.colnames
                else np.full(len(table), np.nan)
                for n in label_names
            ]
        )
        meta_source = {
            "obsid": _column(table, "obsid", np.int64),
            "filename": filename,
            "extname_blue": blue,
            "extname_red": red,
            "star_id": _column(table, "star_id", str),
            "snr_blue": _column(table, "snr_blue", np.float64),
            "snr_red": _column(table, "snr_red", np.float64),
        }

        writer = DatasetWriter(
            output, label_names, spec, resume=resume, overwrite=overwrite, with_ivar=True
        )
        done = writer.done_keys()
        n_resumed = writer.n
        reject_keys, reasons = _open_rejects(rejects_path, resume)
        done |= reject_keys
        seen: set[tuple[str, str, str]] = set()
        todo = []
        for i, key in enumerate(zip(filename, blue, red, strict=True)):
            if key in done or key in seen:  # finished earlier, or a duplicate row
                continue
            seen.add(key)
            todo.append(RowTask(i, str(root / key[0]), key[1], key[2], float(rv[i])))
        n_rejected = len(reject_keys)
        chunks = (todo[i : i + chunk_rows] for i in range(0, len(todo), chunk_rows))
        partial = rejects_path.with_name(rejects_path.name + ".partial")
        with make_progress(progress) as bar, open(partial, "a", newline="") as rejects_file:
            task = bar.add_task("prepare", total=len(todo))
            out = csv.writer(rejects_file, lineterminator="\n")
            for n, result in _run_chunks(chunks, spec, thresholds, workers):
                idx = result.indices
                if idx.size:
                    meta = {k: v[idx] for k, v in meta_source.items()}
                    meta.update(
                        rv=result.rv,
                        rv_source=np.asarray(result.rv_source, dtype=str),
                        n_outliers=result.n_outliers,
                        max_outlier_run=result.max_run,
                    )
                    writer.append(result.flux, labels[idx], meta, errors[idx], ivar=result.ivar)
                for i, reason, n_bad, run in result.rejects:
                    m = meta_source
                    row = [m["obsid"][i], filename[i], blue[i], red[i], m["star_id"][i]]
                    out.writerow(
                        [*row, _one_line(reason)]
                        + ["" if n_bad is None else n_bad, "" if run is None else run]
                    )
                    reasons[_reason_kind(reason)] += 1
                n_rejected += len(result.rejects)
                rejects_file.flush()
                os.fsync(rejects_file.fileno())
                bar.advance(task, n)
        replace_durably(partial, rejects_path)
        n_accepted = writer.n
        writer.finish(fractions, seed)
        return PrepareResult(
            output, rejects_path, len(table), n_accepted, n_rejected, n_resumed, reasons
        )
