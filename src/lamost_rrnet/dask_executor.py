"""Where the pipeline runs on a Dask cluster: chunks of files out to the workers as tasks,
finished rows back in input order, at most a few tasks per worker thread in flight.

``address`` is a dask.distributed scheduler (``tcp://host:port``), or ``local[:N]`` for a
``LocalCluster`` of N single-threaded worker processes on 127.0.0.1 (default: one per core),
started here and closed by :meth:`DaskExecutor.close`.

What travels: each task carries its chunk's paths only. The read job and the predictor go
once to every worker, through a worker plugin (:class:`~lamost_rrnet.dask_worker.RunPlugin`)
that the scheduler also sets up on workers that join or restart later. The RV table goes in
it as arrays (:meth:`~lamost_rrnet.rv_table.RVTable.in_memory`), not as the memory-mapped
files in this process's temporary directory: workers need nothing from this machine's disk
but the spectra. The model goes as its registry name or directory, which each worker
resolves, verifies and loads once per process itself (:func:`~lamost_rrnet.pipeline.
worker_runner`), or, for an ensemble object given to the library, pickled in the plugin.

Failures: a worker that dies has its tasks rerun by the scheduler. A chunk whose workers keep
dying (``distributed.KilledWorker``: more deaths than the scheduler's
``distributed.scheduler.allowed-failures``) is rerun one file at a time, and a file that
still kills its workers becomes a row of status ``error``, with a warning naming it: one
poisonous file never ends the run. The local cluster allows :data:`LOCAL_ALLOWED_FAILURES`
deaths, so that poison is found fast; a remote scheduler keeps its own setting (Dask's
default is 3), which this client cannot change. Any other exception a task raises makes its
chunk's rows ``error`` rows too, except an :class:`~lamost_rrnet.errors.RRNetError` (a
worker that cannot load the model or use its device), which would fail every chunk alike
and so ends the run. This process owns the output and its journal (:mod:`lamost_rrnet.
predict`), so ``--resume`` gives the same guarantees as a local run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator

from lamost_rrnet.errors import RRNetError, UsageError
from lamost_rrnet.pipeline import (
    ERROR,
    Chunk,
    ModelRunner,
    Predictor,
    ReadJob,
    failed_rows,
    predict_rows,
)

#: Worker deaths a task may cause on the local cluster before it is given up
#: (``distributed.scheduler.allowed-failures``): a chunk is tried 3 times, then its files.
LOCAL_ALLOWED_FAILURES = 2
#: Tasks in flight per worker thread: enough that no worker waits for the next chunk while
#: this process takes in a result, few enough that memory does not grow with the inputs.
TASKS_PER_THREAD = 3
#: Seconds between looks at the cluster's size (workers may join or leave during a run).
_RESIZE_SECONDS = 2.0
#: Seconds to wait for a remote scheduler to answer.
_CONNECT_TIMEOUT = "10s"

logger = logging.getLogger(__name__)


class DaskUnavailableError(RRNetError):
    """``--dask`` was given, but dask.distributed is not installed."""


def is_local(address: str) -> bool:
    """Whether ``address`` asks for a local cluster (``local`` or ``local:N``)."""
    return address == "local" or address.startswith("local:")


def local_workers(address: str) -> int | None:
    """N for ``local:N``; None (one per core) for ``local``. UsageError for anything else."""
    if address == "local":
        return None
    count = address.removeprefix("local:")
    if not count.isdigit() or int(count) < 1:
        raise UsageError(
            f"--dask {address}: use local or local:N (N worker processes, N >= 1), or a "
            "scheduler address such as tcp://host:8786"
        )
    return int(count)


def check_address(address: str) -> None:
    """Raise UsageError for a scheduler address that names no port (a typo, not a cluster that
    is down: that is found by connecting)."""
    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise UsageError(
            f"--dask {address}: {exc}: use tcp://host:port, or local[:N] for N local worker "
            "processes"
        ) from exc


class DaskExecutor:
    """Chunks of files to catalogue rows on a Dask cluster, in input order.

    ``runner`` is this process's model: it builds the ``error`` rows of files that killed
    their workers (without calling the model: those rows have no flux). The cluster's
    address and worker threads are logged at INFO.
    """

    def __init__(
        self,
        address: str,
        job: ReadJob,
        predictor: Predictor,
        runner: ModelRunner,
    ):
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise DaskUnavailableError(
                f'--dask needs dask.distributed ({exc}): pip install "lamost-rrnet[dask]"'
            ) from exc
        from lamost_rrnet.dask_worker import RunPlugin

        self.job, self.runner, self.rule = job, runner, predictor.flag_rule
        self.cluster = self.client = None
        self.plugin: str | None = None
        self._count = 0
        self._limit, self._limit_at = 2, float("-inf")
        if is_local(address):
            settings = {
                "distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
                # The workers' statistical profiler walks the task's stack every 10 ms: it took
                # 5-10 ms of CPU per spectrum (about 40 % more) in benchmarks/bench_dask.py.
                "distributed.worker.profile.enabled": False,
            }
            try:
                with dask.config.set(settings):
                    self.cluster = LocalCluster(
                        n_workers=local_workers(address),
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address=None,
                        # Its HTTP server (health, metrics) on a free port, not 8787 or a
                        # warning on stderr when another cluster holds that.
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                        # This process reports what matters (files that killed workers).
                        silence_logs=logging.CRITICAL,
                    )
            # RuntimeError: a worker process that failed to start (its nanny's report).
            except (OSError, RuntimeError, TimeoutError) as exc:
                raise RRNetError(f"cannot start a local Dask cluster: {exc}") from exc
            self.client = Client(self.cluster, set_as_default=False)
        else:
            check_address(address)
            try:
                self.client = Client(address, timeout=_CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise RRNetError(f"Dask scheduler {address}: cannot connect ({exc})") from exc
        self.run_id = uuid.uuid4().hex
        if job.rv_table is not None:
            job = dataclasses.replace(job, rv_table=job.rv_table.in_memory())
        plugin = RunPlugin(self.run_id, job, predictor)
        try:
            self.client.register_plugin(plugin)
        except Exception as exc:  # whatever a worker raised while taking the run: its setup
            self.close()
            raise RRNetError(
                f"a Dask worker cannot take the run ({type(exc).__name__}: {exc}); "
                "lamost-rrnet must be installed on every worker"
            ) from exc
        self.plugin = plugin.name
        if logger.isEnabledFor(logging.INFO):  # asking the scheduler costs a round trip
            threads = self._threads()
            logger.info(
                f"Dask scheduler {self.client.scheduler.address}: "
                f"{threads} worker thread{'s' if threads != 1 else ''}"
                + ("" if threads else " yet: tasks wait for workers to join")
            )

    def _threads(self) -> int:
        return sum(self.client.nthreads().values())

    def _in_flight(self) -> int:
        """How many tasks may be in flight: a few per worker thread, looked up now and then."""
        now = time.monotonic()
        if now - self._limit_at > _RESIZE_SECONDS:
            self._limit, self._limit_at = max(2, TASKS_PER_THREAD * self._threads()), now
        return self._limit

    def _submit(self, paths: list[str]):
        from lamost_rrnet.dask_worker import predict_task

        self._count += 1
        return self.client.submit(
            predict_task,
            self.run_id,
            paths,
            key=f"lamost-rrnet-{self.run_id}-{self._count}",
            pure=False,
            # Once more for an exception (a GPU out of memory on a shared node, say); worker
            # deaths are counted by the scheduler instead (allowed-failures).
            retries=1,
        )

    def run(self, tasks: Iterator[list[str]]) -> Iterator[Chunk]:
        """Finished rows of each chunk, in input order."""
        pending: collections.deque = collections.deque()
        for paths in tasks:
            pending.append((paths, self._submit(paths)))
            while len(pending) >= self._in_flight():
                yield from self._finish(*pending.popleft())
        while pending:
            yield from self._finish(*pending.popleft())

    def _finish(self, paths: list[str], future) -> Iterator[Chunk]:
        """The rows of a finished task; for a chunk that killed its workers, those of its files
        run one at a time."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        exc = future.exception()  # once the task ends: None if it ran, or was cancelled
        if exc is None:
            try:
                chunk = future.result()
            except CancelledError as cancelled:  # the scheduler, or the connection to it, went
                raise RRNetError(
                    f"the Dask scheduler dropped a task ({cancelled}): what is written so far "
                    "is kept; continue with --resume"
                ) from cancelled
            yield chunk
        elif isinstance(exc, KilledWorker) and len(paths) > 1:
            # One at a time: a file rerun beside others could be blamed for their deaths.
            for path in paths:
                yield from self._finish([path], self._submit([path]))
        elif isinstance(exc, KilledWorker):
            deaths = exc.allowed_failures + 1
            yield self._failed(
                paths, f"killed the Dask workers that read it ({deaths} times): not read again"
            )
        elif isinstance(exc, RRNetError):
            raise RRNetError(f"a Dask worker: {exc}") from exc
        else:
            yield self._failed(paths, f"{type(exc).__name__}: {exc}")

    def _failed(self, paths: list[str], why: str) -> Chunk:
        return predict_rows([failed_rows(paths, self.job, ERROR, why)], self.runner, self.rule)

    def close(self) -> None:
        """Withdraw the run from the workers; stop the local cluster, if one was started."""
        if self.plugin is not None:
            try:
                self.client.unregister_worker_plugin(self.plugin)
            except (OSError, TimeoutError):
                pass  # the scheduler is gone, and the run's plugin with it
            self.plugin = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
