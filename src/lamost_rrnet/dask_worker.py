"""What runs on a Dask worker for :mod:`lamost_rrnet.dask_executor`: the run each worker holds,
and the task that predicts a chunk of files with it.

Importing this module imports ``distributed``: only the executor does, once it knows the
extra is installed, and the workers, which unpickle what it sends them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from distributed import WorkerPlugin

from lamost_rrnet.errors import RRNetError
from lamost_rrnet.pipeline import Chunk, Predictor, ReadJob, predict_chunk

#: The runs this worker process holds, by run id: set and removed by :class:`RunPlugin`.
_RUNS: dict[str, tuple[ReadJob, Predictor]] = {}


class RunPlugin(WorkerPlugin):
    """Gives every worker of the cluster, present and future, the run's job and predictor.

    The scheduler keeps the plugin and sets it up on each worker as it joins, a worker
    restarted after a crash included: the RV table and the model travel once per worker,
    never with a task, and no worker's death can lose them (unlike scattered data, of which
    the scheduler may keep a single copy).
    """

    def __init__(self, run_id: str, job: ReadJob, predictor: Predictor):
        self.name = f"lamost-rrnet-{run_id}"
        self.run_id, self.job, self.predictor = run_id, job, predictor

    def setup(self, worker) -> None:
        _RUNS[self.run_id] = (self.job, self.predictor)

    def teardown(self, worker) -> None:
        _RUNS.pop(self.run_id, None)


def _on_this_worker(predictor: Predictor) -> Predictor:
    """``predictor`` with its device made one this worker has: CUDA falls back to the CPU on a
    worker without a GPU, so that a cluster of mixed nodes runs ``--device cuda`` on all."""
    if not predictor.device.startswith("cuda"):
        return predictor
    import torch

    if torch.cuda.is_available():
        return predictor
    return dataclasses.replace(predictor, device="cpu")


def predict_task(run_id: str, paths: Sequence[str]) -> Chunk:
    """The whole pipeline for a chunk of files, on this worker, with the run's model (loaded
    once per process by :func:`~lamost_rrnet.pipeline.worker_runner`)."""
    try:
        job, predictor = _RUNS[run_id]
    except KeyError:
        raise RRNetError(
            f"this Dask worker does not hold run {run_id}: its plugin failed to set up"
        ) from None
    return predict_chunk(paths, job, _on_this_worker(predictor))
