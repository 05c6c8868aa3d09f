"""The ``predict`` job: LAMOST MRS files in, the documented catalogue out.

Input paths are streamed (:mod:`lamost_rrnet.inputs`), each input taken once by its identity
and, in a sharded run, only when it falls in the shard. They are cut into chunks of files, and
an executor runs :mod:`lamost_rrnet.pipeline` on them: worker processes on this machine
(:mod:`lamost_rrnet.executors`) or a Dask cluster (:mod:`lamost_rrnet.dask_executor`). This
module only wires them: it owns the output, whose resumable journal
(:mod:`lamost_rrnet.catalogue`) receives each finished chunk, and the progress bar. At most a
few chunks are in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from lamost_rrnet._version import __version__
from lamost_rrnet.catalogue import (
    CatalogueSchema,
    CsvStream,
    FlagRule,
    Journal,
    check_header,
    output_format,
    refuse_existing,
)
from lamost_rrnet.devices import torch_threads
from lamost_rrnet.errors import RRNetError, UsageError
from lamost_rrnet.executors import FEEDER, WORKERS_PREDICT, LocalExecutor
from lamost_rrnet.identity import HashSet, escape_text
from lamost_rrnet.inputs import Shard, chunks, iter_input_paths, select_inputs
from lamost_rrnet.locking import exclusive
from lamost_rrnet.names import DEFAULT_MODEL
from lamost_rrnet.pipeline import Chunk, ModelRunner, Predictor, ReadJob
from lamost_rrnet.progress import make_progress
from lamost_rrnet.rv_table import load_rv_table
from lamost_rrnet.spectra.io import MAX_BYTES

logger = logging.getLogger(__name__)

#: Files per chunk: enough spectra for the ensemble's batched matrix products in a worker
#: (12.5 ms a spectrum at 64, 13.8 at 32, 12.1 at 256), few enough that every worker gets
#: chunks. The feeder takes smaller chunks and batches them.
CHUNK_FILES = 64
FEEDER_CHUNK_FILES = 8
#: Below this many inputs a run stays in one process: starting workers (each imports torch and
#: loads the model) costs more than it saves.
SMALL_RUN = 64


def _cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(device: str = "cpu") -> int:
    """Worker processes by default: one per core on a CPU, where each runs the whole pipeline
    single-threaded; all cores but one when the model runs on an accelerator, where the
    workers read and preprocess and this process feeds the model."""
    cores = _cores()
    if device == "cpu":
        return cores
    return max(1, cores - 1)


# ---------------------------------------------------------------------------------------------
# What the run reports, and where its rows go


@dataclass
class PredictSummary:
    """What a predict run did."""

    output: str | None
    model: str
    files: int = 0
    skipped_files: int = 0
    repeated: int = 0  # inputs named again (same identity): taken once
    not_regular: int = 0  # FIFOs, devices, directories named *.fits: skipped
    outside_shard: int = 0  # inputs that belong to other shards
    unlisted_dirs: int = 0  # directories that could not be listed: skipped
    rows: int = 0
    ok: int = 0
    flagged: int = 0
    failed: int = 0
    seconds: float = 0.0
    rv_column: str | None = None

    def count(self, chunk: Chunk) -> None:
        """Add a chunk's rows: their flags, how many have labels, the files it read."""
        n, ok, n_predicted = len(chunk.flag), int(np.sum(chunk.flag)), chunk.n_predicted
        self.files += chunk.files
        self.not_regular += chunk.not_regular
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
        if self.outside_shard:
            lines.append(f"{self.outside_shard} inputs left to the other shards")
        if self.unlisted_dirs:
            lines.append(f"{self.unlisted_dirs} directories skipped: they could not be listed")
        if self.output and self.output != "-":
            lines.append(f"catalogue written to {self.output}")
        return "\n".join(lines)


def _header(
    ensemble, rule: FlagRule, exposures: bool, sigma: str, shard: Shard | None
) -> dict[str, tuple]:
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
    if shard is not None:
        header.update(shard.header())
    return header


class _Writer:
    """Where finished rows go: the journal of a file output, CSV on stdout, or memory.

    Chunks are gathered into batches of at least ``batch_rows`` rows before they are written:
    each journal entry is a file written and synced, too dear for a chunk of a few files.
    Rows not yet written are simply redone by ``--resume``.
    """

    def __init__(
        self,
        output,
        schema: CatalogueSchema,
        run: dict,
        *,
        resume: bool,
        overwrite: bool,
        batch_rows: int = 256,
    ):
        self.output, self.schema = output, schema
        self.batch_rows = batch_rows
        self.journal = self.stream = None
        self.kept: list = []
        self.waiting: list = []
        self.done = np.empty(0, np.uint64)  # hashes of the inputs' paths already written
        if output is not None and os.fspath(output) == "-":
            self.stream = CsvStream(sys.stdout.buffer, schema)
        elif output is not None:
            self.journal = Journal.open(output, schema, run, resume=resume, overwrite=overwrite)
            self.done = self.journal.done_inputs()

    def write(self, columns: dict[str, Any]) -> None:
        self.waiting.append(self.schema.table(columns))
        if sum(len(t) for t in self.waiting) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.waiting:
            return
        table = pa.concat_tables(self.waiting)
        self.waiting = []
        if self.journal is not None:
            self.journal.append(table)
        elif self.stream is not None:
            self.stream.write(table)
        else:
            self.kept.append(table)

    def finish(self, header: dict):
        """Assemble the output; the astropy Table when rows were kept in memory."""
        self._flush()
        if self.journal is not None:
            self.journal.assemble(self.output, header)
        elif self.stream is not None:
            self.stream.close()
        else:
            import pyarrow as pa

            empty = self.schema.table({n: [] for n in self.schema.names})
            return self.schema.astropy(pa.concat_tables(self.kept or [empty]), header)
        return None


def _check_options(
    batch_size: int,
    shard: Shard | str | None,
    dask: str | None,
    workers: int | None,
    layout: str | None,
    output: str | os.PathLike[str] | None,
    resume: bool,
    overwrite: bool,
) -> Shard | None:
    """Refuse options that do not go together, before anything is read; returns the shard."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    if dask is not None and (workers is not None or layout is not None):
        raise UsageError("--dask runs on the cluster's workers: --workers is for a local run")
    if output is not None:
        to_stdout = str(output) == "-"
        fmt = output_format(output)
        if to_stdout and (resume or overwrite):
            raise UsageError("resume and overwrite need an output file, not stdout")
        if shard is not None and (to_stdout or fmt == "csv"):
            raise UsageError(
                "--shard needs a .fits or .parquet output: a part must record its shard"
            )
    return shard


def _load_rv_table(catalogue, rv_column: str | None, scratch: str, summary: PredictSummary):
    """The RV table of ``catalogue``, or None for RVs by cross-correlation; logs which."""
    if catalogue is None:
        logger.info("RV by cross-correlation (no --catalogue)")
        return None
    rv_table = load_rv_table(catalogue, rv_column, scratch)
    summary.rv_column = rv_table.column
    logger.info(f"RV from column {rv_table.column!r} of {catalogue} ({rv_table.n_rows} rows)")
    return rv_table


def _start_executor(
    dask: str | None,
    job: ReadJob,
    predictor: Predictor,
    runner: ModelRunner,
    workers: int,
    layout: str,
):
    """Where the chunks run: the Dask cluster ``dask``, or ``workers`` processes here."""
    if dask is None:
        return LocalExecutor(job, predictor, runner, workers, layout)
    from lamost_rrnet.dask_executor import DaskExecutor

    return DaskExecutor(dask, job, predictor, runner)


def _count_inputs(paths: list[str], list_file, shard: Shard | None) -> int:
    """The inputs this run (its shard) takes, for the bar's total: one more walk of them."""
    blocks = chunks(iter_input_paths(paths, list_file), 4096)
    return sum(len(b) if shard is None else int(shard.members(b).sum()) for b in blocks)


class _Inputs:
    """The run's inputs as chunks of files to read: expanded, cut to the shard, each identity
    taken once, and those already in the output (resume) left out. What is left out is
    counted in the summary and advances the bar."""

    def __init__(
        self,
        paths: list[str],
        list_file,
        shard: Shard | None,
        summary: PredictSummary,
        advance: Callable[[int], None],
        chunk_files: int,
    ):
        self.paths, self.list_file, self.shard = paths, list_file, shard
        self.summary, self.advance, self.chunk_files = summary, advance, chunk_files
        self.seen = HashSet()  # this run's inputs, once each

    def _unlisted(self, message: str) -> None:
        self.summary.unlisted_dirs += 1
        logger.warning(message)

    def _in_shard(self, block: list[str]) -> list[str]:
        if self.shard is None:
            return block
        mine = [p for p, keep in zip(block, self.shard.members(block), strict=True) if keep]
        self.summary.outside_shard += len(block) - len(mine)
        return mine

    def chunks(self, done: np.ndarray) -> Iterator[list[str]]:
        """Chunks of the inputs to read; ``done``: hashes of the paths already written."""
        inputs = iter_input_paths(self.paths, self.list_file, on_error=self._unlisted)
        for block in chunks(inputs, 1024):
            block = self._in_shard(block)
            selected = select_inputs(block, self.seen, done)
            self.summary.skipped_files += int(selected.done.sum())
            self.summary.repeated += int(selected.repeated.sum())
            self.advance(len(block) - int(selected.take.sum()))
            todo = (p for p, keep in zip(block, selected.take, strict=True) if keep)
            yield from chunks(todo, self.chunk_files)


def predict_files(
    paths: Iterable[str | os.PathLike[str]] = (),
    model: Any = DEFAULT_MODEL,
    catalogue: str | os.PathLike[str] | None = None,
    rv_column: str | None = None,
    output: str | os.PathLike[str] | None = None,
    exposures: bool = False,
    batch_size: int = 256,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    *,
    progress: bool = False,
    device: str = "auto",
    list_file: str | os.PathLike[str] | None = None,
    flag_rule: FlagRule = FlagRule(),
    worker_threads: int = 1,
    threads: int | None = None,
    raw_sigma: bool = False,
    max_file_bytes: int = MAX_BYTES,
    shard: Shard | str | None = None,
    dask: str | None = None,
    layout: str | None = None,
):
    """Run a model over LAMOST MRS files and write (or return) the catalogue.

    ``paths`` are files, directories (searched recursively for *.fits and *.fits.gz) or glob
    patterns; ``list_file`` adds one path per line. Each input is taken once, by its identity
    (:mod:`lamost_rrnet.identity`); FIFOs and other files that are not regular are skipped
    with a warning, as are directories that cannot be listed. ``shard`` (``"K/N"`` or a
    :class:`~lamost_rrnet.inputs.Shard`) takes only the inputs of shard K of N; the part's
    header records it, and :func:`lamost_rrnet.merge_catalogues` joins the parts.

    ``model`` is a registry name, a model directory, a published-layout directory, or an
    ``Ensemble``. RVs come from the RV table ``catalogue`` (CSV/FITS/Parquet, joined by obsid
    or file name, column ``rv_column`` or the first of rv, rv_ku0, rv_br0, rv_lasp0), else
    from cross-correlation. ``exposures`` gives one row per exposure instead of per coadd. The
    ``_err`` columns hold the model's calibrated σ, or with ``raw_sigma`` the ensemble's own
    σ; the header's SIGMA says which. A file that needs more than ``max_file_bytes``
    decompressed becomes a row with status ``too_large``.

    Where it runs: ``dask`` is a dask.distributed scheduler address, or ``local[:N]`` for a
    local cluster of N worker processes (:mod:`lamost_rrnet.dask_executor`), each running the
    model on ``device`` where it has one (CUDA falls back to its CPU). Otherwise
    ``workers`` processes run here (default :func:`default_workers`; 0: all in this process,
    as for runs of fewer than :data:`SMALL_RUN` inputs), each with ``worker_threads`` threads.
    ``layout`` is ``"workers"`` (each worker runs the whole pipeline: the default on a CPU) or
    ``"feeder"`` (workers preprocess, this process runs the model on batches of
    ``batch_size`` with ``threads`` torch threads: the default on a GPU).

    ``output`` ending in .fits, .csv or .parquet is written atomically through a resumable
    journal and a :class:`PredictSummary` is returned; ``"-"`` streams CSV to stdout; None
    returns the catalogue as an astropy Table. An existing output raises
    :class:`~lamost_rrnet.errors.OutputExistsError` unless ``resume`` or ``overwrite``;
    ``resume`` skips the inputs whose ``path`` is already written, and refuses an output made
    with other settings (shard included), a finished CSV output, or one without the ``path``
    column.

    Messages (where the RVs come from) are logged at INFO, and inputs skipped or files that
    killed workers at WARNING; ``progress`` shows a bar of the inputs done.
    """
    started = time.perf_counter()
    shard = _check_options(batch_size, shard, dask, workers, layout, output, resume, overwrite)
    to_file = output is not None and str(output) != "-"
    # Held for the whole run, so that a second run on the same output stops at once.
    with exclusive(output) if to_file else contextlib.nullcontext():
        if to_file:
            refuse_existing(output, resume=resume, overwrite=overwrite)
        paths = [os.fspath(p) for p in paths]  # the arguments, not the expansion
        first = list(itertools.islice(iter_input_paths(paths, list_file), SMALL_RUN))
        if not first:
            where = ", ".join(paths + ([os.fspath(list_file)] if list_file else [])) or "nothing"
            raise RRNetError(f"no input files: none found in {where}")

        # With Dask the workers run the model, each on its device; here it only gives the
        # catalogue's columns and header, on the CPU (the client may have no GPU).
        from lamost_rrnet.model_resolution import load_ensemble

        ensemble = load_ensemble(model, "cpu" if dask is not None else device, progress=progress)
        on_cpu = ensemble.device.type == "cpu"
        layout = layout or (WORKERS_PREDICT if on_cpu else FEEDER)
        if workers is None:
            workers = default_workers(ensemble.device.type) if len(first) >= SMALL_RUN else 0
        threads = _cores() if threads is None else threads
        runner = ModelRunner(ensemble, batch_size, raw_sigma)
        header = _header(ensemble, flag_rule, exposures, runner.sigma, shard)
        if to_file and output_format(output) == "fits":
            check_header(header)  # before, not after, the run
        summary = PredictSummary(None if output is None else os.fspath(output), runner.model_id)

        with tempfile.TemporaryDirectory(prefix="lamost-rrnet-rv-") as scratch:
            rv_table = _load_rv_table(catalogue, rv_column, scratch, summary)
            run = {
                "model": runner.model_id,
                "exposures": bool(exposures),
                "flag": asdict(flag_rule),
                "sigma": runner.sigma,
                "shard": None if shard is None else f"{shard.index}/{shard.count}",
            }
            total = _count_inputs(paths, list_file, shard) if progress else None
            bar = make_progress(progress)
            task_id = bar.add_task("predict", total=total)
            inputs = _Inputs(
                paths,
                list_file,
                shard,
                summary,
                functools.partial(bar.advance, task_id),
                FEEDER_CHUNK_FILES if layout == FEEDER else CHUNK_FILES,
            )
            job = ReadJob(
                ensemble.preprocessing.to_dict(), bool(exposures), rv_table, max_file_bytes
            )
            predictor = Predictor(
                model if dask is not None and isinstance(model, (str, os.PathLike)) else ensemble,
                device if dask is not None else "cpu" if on_cpu else str(ensemble.device),
                batch_size,
                raw_sigma,
                flag_rule,
                worker_threads,
            )
            executor = _start_executor(dask, job, predictor, runner, workers, layout)
            try:
                # After the executor: a cluster that cannot start or be reached leaves no
                # journal that the next run would have to --resume.
                writer = _Writer(
                    output,
                    runner.schema,
                    run,
                    resume=resume,
                    overwrite=overwrite,
                    batch_rows=batch_size,
                )
                # One BLAS thread: the batched normalization's small products are 3x dearer in
                # CPU time with two (idle OpenBLAS threads spin), and slower in wall time too.
                with bar, torch_threads(threads), threadpool_limits(1, user_api="blas"):
                    for chunk in executor.run(inputs.chunks(writer.done)):
                        if chunk.model_id != runner.model_id:
                            raise RRNetError(
                                f"a worker ran model {chunk.model_id}, not {runner.model_id}: "
                                "give --model as a path or name every worker resolves alike"
                            )
                        for message in chunk.messages:
                            logger.warning(message)
                        writer.write(chunk.columns)
                        summary.count(chunk)
                        bar.advance(task_id, chunk.files + chunk.not_regular)
            finally:
                executor.close()
            result = writer.finish(header)
        summary.seconds = time.perf_counter() - started
        return summary if output is not None else result
