"""Where the pipeline runs on one machine: chunks of files out to worker processes, finished
rows back in input order, at most a few chunks in flight so memory stays bounded.

Two layouts, both built from :mod:`lamost_rrnet.pipeline`:

- **workers predict** (the default on a CPU): each worker process loads the model once and
  runs the whole pipeline on its chunks with one thread (:func:`~lamost_rrnet.pipeline.
  predict_chunk`). A worker per core keeps every core busy with no oversubscription: reading,
  preprocessing and inference of different chunks overlap across the processes.
- **one process feeds the model** (the default on a GPU): the workers read and preprocess
  (:func:`~lamost_rrnet.pipeline.prepare_chunk`); this process gathers their spectra into
  large batches for the model, copied to the GPU from pinned memory without blocking
  (:meth:`~lamost_rrnet.ensemble.Ensemble.network_input`). It runs on a CPU too, which is how
  the tests exercise it.

With no workers, everything runs in this process (small runs: no start-up of worker
processes).
"""

from __future__ import annotations

import collections
import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from lamost_rrnet.errors import RRNetError
from lamost_rrnet.lifeline import exit_with_parent
from lamost_rrnet.pipeline import (
    Chunk,
    ModelRunner,
    Predictor,
    ReadJob,
    Rows,
    predict_chunk,
    predict_rows,
    prepare_chunk,
)

WORKERS_PREDICT = "workers"
FEEDER = "feeder"

T = TypeVar("T")
R = TypeVar("R")

_PREDICTOR: Predictor | None = None  # this worker process's, set by _init_worker


def in_order(
    pool: Executor, function: Callable[..., R], items: Iterable[T], limit: int, *args: Any
) -> Iterator[tuple[T, R]]:
    """``(item, function(item, *args))`` for each item, run on ``pool``, in the items' order,
    with at most ``limit`` submitted and not yet handed back, so that memory stays bounded
    however many items there are. What is still queued is cancelled when the caller stops
    early."""
    pending: collections.deque[tuple[T, Future[R]]] = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(function, item, *args)))
            while len(pending) >= limit:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _init_worker(threads: int, predictor: Predictor | None) -> None:
    from threadpoolctl import threadpool_limits

    global _PREDICTOR
    exit_with_parent()  # a SIGKILLed run must not leave its workers, and their memory, behind
    threadpool_limits(threads)
    _PREDICTOR = predictor


def _context() -> multiprocessing.context.BaseContext:
    """fork on Linux: a worker inherits the imported modules and the model, its pages shared
    copy-on-write, where a spawned one imports torch and unpickles the model (the published
    one is 191 MB): about 3 s of CPU and 0.2 GB a worker. The children never touch a GPU, as
    torch's DataLoader workers do not. Elsewhere (macOS) fork is unsafe: spawn."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _predict_task(paths: Sequence[str], job: ReadJob) -> Chunk:
    assert _PREDICTOR is not None, "worker started without a predictor"
    return predict_chunk(paths, job, _PREDICTOR)


class LocalExecutor:
    """Chunks of files to catalogue rows on this machine, in input order.

    ``layout`` is :data:`WORKERS_PREDICT` or :data:`FEEDER`; ``runner`` is this process's
    model (used with no workers, and by the feeder); ``predictor`` is what workers load.
    """

    def __init__(
        self,
        job: ReadJob,
        predictor: Predictor,
        runner: ModelRunner,
        workers: int,
        layout: str = WORKERS_PREDICT,
        max_in_flight: int | None = None,
    ):
        if layout not in (WORKERS_PREDICT, FEEDER):
            raise ValueError(f"layout {layout!r}: use {WORKERS_PREDICT!r} or {FEEDER!r}")
        self.job, self.predictor, self.runner = job, predictor, runner
        self.layout = layout
        self.max_in_flight = max_in_flight or 2 * max(workers, 1) + 1
        self.pool = None
        if workers > 0:
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=_context(),
                initializer=_init_worker,
                initargs=(predictor.threads, predictor if layout == WORKERS_PREDICT else None),
            )
            # Start the workers now, before any progress thread: a fork copies only the
            # thread that calls it.
            self.pool.submit(int).result()

    def _results(self, tasks: Iterator[list[str]], function, *args) -> Iterator:
        try:
            for _, result in in_order(self.pool, function, tasks, self.max_in_flight, *args):
                yield result
        except BrokenProcessPool as exc:
            raise RRNetError(
                "a worker process died (out of memory?): what is written so far is kept; "
                "continue with --resume"
            ) from exc

    def run(self, tasks: Iterator[list[str]]) -> Iterator[Chunk]:
        """Finished rows of each chunk (workers), or of each batch (feeder), in input order."""
        if self.layout == FEEDER:
            yield from self._feed(tasks)
        elif self.pool is None:
            rule = self.predictor.flag_rule
            for paths in tasks:
                yield predict_rows([prepare_chunk(paths, self.job)], self.runner, rule)
        else:
            yield from self._results(tasks, _predict_task, self.job)

    def _feed(self, tasks: Iterator[list[str]]) -> Iterator[Chunk]:
        """Gather prepared chunks into batches of at least ``runner.batch_size`` spectra."""
        if self.pool is None:
            prepared = (prepare_chunk(paths, self.job) for paths in tasks)
        else:
            prepared = self._results(tasks, prepare_chunk, self.job)
        pending: list[Rows] = []
        for rows in prepared:
            pending.append(rows)
            if sum(len(r) for r in pending) >= self.runner.batch_size:
                yield predict_rows(pending, self.runner, self.predictor.flag_rule)
                pending = []
        if pending:
            yield predict_rows(pending, self.runner, self.predictor.flag_rule)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
