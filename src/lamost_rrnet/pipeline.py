"""The one pipeline: files in, catalogue rows out.

A chunk of files is read, given its RV (catalogue or cross-correlation), resampled onto the
model's grid and normalized in one batch (:func:`prepare_chunk`); the ensemble then predicts
the chunk's spectra, the flag rule is applied and the catalogue columns are built
(:func:`predict_rows`). :func:`predict_chunk` does both, in whatever process runs it: a local
worker, a Dask worker, or the main process for a small run. With a GPU the halves are split:
CPU workers run :func:`prepare_chunk` and one process feeds the GPU large batches
(:mod:`lamost_rrnet.executors`). The local, sharded and Dask runs are wired from these
functions only, so they give the same rows.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lamost_rrnet.catalogue import (
    BAD_HEADER,
    META_COLUMNS,
    REASONS,
    CatalogueSchema,
    FlagRule,
    status_text,
)
from lamost_rrnet.errors import CoverageError, SpectrumError
from lamost_rrnet.identity import escape_path, escape_text, input_identity, path_text
from lamost_rrnet.rv_table import RVTable
from lamost_rrnet.spectra.io import COADD_BLUE, COADD_RED, MAX_BYTES, read_mrs
from lamost_rrnet.spectra.preprocess import (
    PreprocessSpec,
    normalize_with_continuum,
    outlier_stats,
    resample,
    resample_ivar,
)

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


_ROW_FIELDS = (
    *META_COLUMNS,
    *("rv", "rv_source", "status", "path", "n_outliers", "max_run", "bad_header"),
)


@dataclass(frozen=True)
class ReadJob:
    """How to read and preprocess: everything a worker needs besides the paths (picklable,
    nothing on the client's disk but, for local workers, the memory-mapped RV table)."""

    spec: dict
    exposures: bool
    rv_table: RVTable | None
    max_bytes: int = MAX_BYTES


@dataclass
class Rows:
    """The rows of one task: metadata lists, outlier statistics and the normalized spectra."""

    files: int = 0
    skipped: list[str] = field(default_factory=list)  # inputs that are not regular files: why
    meta: dict[str, list] = field(default_factory=lambda: {k: [] for k in _ROW_FIELDS})
    flux: np.ndarray | None = None  # (k, n_pixels) float32, the rows whose status is ""
    flux_rows: np.ndarray | None = None  # their row numbers
    errors: list[str] = field(default_factory=list)  # unexpected exceptions, for the log

    def __len__(self) -> int:
        return len(self.meta["filename"])

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row's metadata (a value for every field)."""
        for key, values in self.meta.items():
            values.append(row[key])


def _ccf(spectrum) -> float | None:
    from lamost_rrnet.spectra.rv import estimate_rv

    try:
        rv, _ = estimate_rv(spectrum)
    except (SpectrumError, ValueError, FloatingPointError):
        return None
    return float(rv) if np.isfinite(rv) else None


def _read_failure(path: str, job: ReadJob) -> str:
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


def _file_rows(path: str, job: ReadJob, spec: PreprocessSpec) -> list[tuple[dict, Any]]:
    """(row, :class:`Resampled` or None) for each spectrum of one file."""
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
            done = resample_spectrum(spectrum, rv_here, spec)
        except CoverageError:
            out.append((dict(row, status=NO_COVERAGE), None))
            continue
        out.append((dict(row, n_outliers=done.n_outliers, max_run=done.max_run), done))
    return out


@dataclass
class Resampled:
    """A spectrum on the model's grid (steps 1-3), before the continuum normalization."""

    flux: np.ndarray  # float32[n_pixels]
    ivar: np.ndarray | None  # its inverse variance, raw units, when asked for
    n_outliers: int
    max_run: int


def resample_spectrum(
    spectrum, rv: float, spec: PreprocessSpec, *, with_ivar: bool = False
) -> Resampled:
    """Outlier statistics and steps 1-3 of one spectrum, as ``predict`` and ``prepare`` take
    them; CoverageError when the spectrum does not cover the grid."""
    n_outliers, max_run = outlier_stats(spectrum, rv, spec)
    flux = resample(spectrum, rv, spec)
    ivar = resample_ivar(spectrum, rv, spec) if with_ivar else None
    return Resampled(flux, ivar, n_outliers, max_run)


def normalize_chunk(
    items: Sequence[Resampled], spec: PreprocessSpec
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Step 4 for a chunk in one batch: normalized flux float32[k, n_pixels], the inverse
    variance in its units (None unless the items carry one), and which rows are finite."""
    with np.errstate(all="ignore"):
        flux, continuum = normalize_with_continuum(np.stack([r.flux for r in items]), spec)
        ivar = None
        if items[0].ivar is not None:
            # Dividing the flux by the continuum divides its σ too.
            ivar = np.stack([r.ivar for r in items]) * continuum**2
            ivar = np.where(np.isfinite(ivar), ivar, 0.0).astype(np.float32)
    return flux, ivar, np.isfinite(flux).all(axis=1)


def prepare_chunk(paths: Sequence[str], job: ReadJob) -> Rows:
    """Read, resample and normalize the spectra of a few files: the first half of the pipeline."""
    spec = PreprocessSpec.from_dict(job.spec)
    rows = Rows()
    resampled: list[Resampled] = []
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
        for row, done in items:
            if done is not None:
                resampled_rows.append(len(rows))
                resampled.append(done)
            rows.append(row)
    if resampled:
        normalized, _, finite = normalize_chunk(resampled, spec)
        index = np.asarray(resampled_rows)
        for i in index[~finite]:
            rows.meta["status"][i] = NONFINITE
        rows.flux, rows.flux_rows = normalized[finite], index[finite]
    return rows


def _base_row(path: str, job: ReadJob) -> dict[str, Any]:
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


class ModelRunner:
    """The ensemble with what the catalogue and the flag rule need, in the catalogue's order."""

    def __init__(self, ensemble, batch_size: int = 256, raw_sigma: bool = False):
        self.ensemble = ensemble
        self.schema = CatalogueSchema.for_labels(ensemble.labels)
        self.model_id = model_id(ensemble)
        self.batch_size = batch_size
        self.raw_sigma = raw_sigma
        self.sigma = "raw" if raw_sigma else ensemble.sigma_kind
        labels = self.schema.labels
        self.order = [list(ensemble.labels).index(name) for name in labels]
        ranges = ensemble.label_ranges or {}
        inf = float("inf")
        self.low = np.array([ranges.get(n, (-inf, inf))[0] for n in labels], np.float64)
        self.high = np.array([ranges.get(n, (-inf, inf))[1] for n in labels], np.float64)
        norm = ensemble.normalization
        norm_names = list(norm.label_names)
        self.scale = np.array(
            [np.asarray(norm.label_std)[norm_names.index(n)] for n in labels], np.float64
        )

    def predict(self, flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sigma = self.ensemble.predict(
            flux, batch_size=self.batch_size, raw_sigma=self.raw_sigma
        )
        return np.asarray(mu)[:, self.order], np.asarray(sigma)[:, self.order]


def model_id(ensemble) -> str:
    """The ``model`` column: name@version, escaped (identity.escape_text) so any name fits."""
    return escape_text(f"{ensemble.name}@{ensemble.version}")


@dataclass
class Chunk:
    """Finished catalogue rows of some files, and what the run reports about them."""

    columns: dict[str, Any]  # the catalogue's columns (CatalogueSchema.table takes them)
    n_predicted: int  # rows with labels
    files: int  # regular files read
    not_regular: int  # inputs skipped: FIFOs, devices, directories named *.fits
    messages: list[str]  # warnings for the log
    model_id: str

    @property
    def flag(self) -> np.ndarray:
        return self.columns["flag"]


def predict_rows(parts: Sequence[Rows], model: ModelRunner, rule: FlagRule) -> Chunk:
    """Predict the normalized spectra of ``parts`` and build their catalogue rows."""
    schema = model.schema
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
    columns.update(flag=flag, status=status, model=[model.model_id] * n)
    columns["obsid"] = np.asarray(meta["obsid"], np.int64)
    return Chunk(
        columns,
        int(predicted.size),
        sum(p.files for p in parts),
        sum(len(p.skipped) for p in parts),
        [m for p in parts for m in (*p.skipped, *p.errors)],
        model.model_id,
    )


def failed_rows(paths: Sequence[str], job: ReadJob, status: str, why: str) -> Rows:
    """Rows of status ``status`` for ``paths``, without reading them: for files that made
    every worker that read them die (:mod:`lamost_rrnet.dask_executor`)."""
    rows = Rows()
    for path in paths:
        rows.files += 1
        rows.errors.append(f"{path_text(path)}: {why}")
        rows.append(dict(_base_row(path, job), status=status))
    return rows


@dataclass(frozen=True)
class Predictor:
    """What a worker needs to predict: picklable, loaded once per process.

    ``model`` is a registry name or a model directory (each worker resolves and verifies it
    itself), or an ensemble object (pickled to the workers).
    """

    model: Any
    device: str = "cpu"
    batch_size: int = 256
    raw_sigma: bool = False
    flag_rule: FlagRule = FlagRule()
    threads: int = 1  # torch and BLAS threads in the worker


_RUNNERS: dict[tuple, ModelRunner] = {}


def worker_runner(predictor: Predictor) -> ModelRunner:
    """This process's runner for ``predictor``: the model is loaded on first use only."""
    model = predictor.model
    key = (
        os.fspath(model) if isinstance(model, (str, os.PathLike)) else id(model),
        predictor.device,
        predictor.batch_size,
        predictor.raw_sigma,
    )
    runner = _RUNNERS.get(key)
    if runner is None:
        from lamost_rrnet.model_resolution import load_ensemble

        ensemble = load_ensemble(model, predictor.device)
        runner = ModelRunner(ensemble, predictor.batch_size, predictor.raw_sigma)
        _RUNNERS.clear()  # one model per process: a new run's model replaces the last
        _RUNNERS[key] = runner
    return runner


def predict_chunk(paths: Sequence[str], job: ReadJob, predictor: Predictor) -> Chunk:
    """The whole pipeline for a few files, in this process, with ``predictor.threads`` threads."""
    from threadpoolctl import threadpool_limits

    from lamost_rrnet.devices import torch_threads

    runner = worker_runner(predictor)
    with threadpool_limits(predictor.threads), torch_threads(predictor.threads):
        return predict_rows([prepare_chunk(paths, job)], runner, predictor.flag_rule)
