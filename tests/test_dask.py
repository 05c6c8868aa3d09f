"""predict on Dask (lamost_rrnet.dask_executor): the catalogue of a local run, through worker
deaths, files that kill every worker, a killed client, and without dask installed.

One module-scoped LocalCluster of 2 worker processes serves most tests (started once: each
worker imports torch). Its workers' TMPDIR and LAMOST_RRNET_CACHE differ from this process's,
and worker plugins sabotage them where a test needs it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

import test_predict
from lamost_rrnet.catalogue import journal_dir
from lamost_rrnet.dask_executor import DaskExecutor
from lamost_rrnet.errors import ModelError, RRNetError
from lamost_rrnet.pipeline import ModelRunner, Predictor, ReadJob
from lamost_rrnet.predict import predict_files
from test_predict import _read, _zombie, assert_same_catalogue, write_file

dask = pytest.importorskip("dask", reason="dask is not installed (the dask extra)")
distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

# The tiny ensemble and its model directory, shared with test_predict.
ensemble, model_dir = test_predict.ensemble, test_predict.model_dir
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory) -> dict[str, str]:
    """The workers' temporary and cache directories: not this process's."""
    elsewhere = tmp_path_factory.mktemp("worker-env")
    (elsewhere / "tmp").mkdir()
    return {"TMPDIR": str(elsewhere / "tmp"), "LAMOST_RRNET_CACHE": str(elsewhere / "cache")}


@pytest.fixture(scope="module")
def cluster(worker_env):
    """2 single-threaded worker processes, as ``--dask local:2`` starts them."""
    # One death allowed, not local:N's LOCAL_ALLOWED_FAILURES: poison is found after 2 + 2
    # worker restarts instead of 3 + 3 (each restart imports torch again).
    failures = {"distributed.scheduler.allowed-failures": 1}
    with (
        dask.config.set(failures),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            env=worker_env,
            silence_logs=logging.CRITICAL,
        ) as local,
    ):
        yield local


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """12 coadd files in spectra/, and their RVs in rv.csv."""
    root = tmp_path_factory.mktemp("dask-inputs")
    lines = ["obsid,rv"]
    for i in range(12):
        rv = -40.0 + 7.0 * i
        path = root / "spectra" / f"f-{i:02d}.fits.gz"
        write_file(path, 1000 + i, i, rv=rv)
        lines.append(f"{1000 + i},{rv}")
    (root / "rv.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def local_catalogue(inputs, model_dir) -> Table:
    """The catalogue of ``inputs`` from a local run, all in this process."""
    return predict_files(
        [inputs / "spectra"], model=model_dir, catalogue=inputs / "rv.csv", workers=0
    )


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3 files: a few tasks per worker from a dozen files."""
    monkeypatch.setattr("lamost_rrnet.predict.CHUNK_FILES", 3)


# ---------------------------------------------------------------------------------------------
# Worker plugins that sabotage the workers (pickled by reference: the workers import this module)


class Replace(distributed.WorkerPlugin):
    """While registered, ``module.attr`` on every worker is ``wrapper(original, ...)``."""

    def __init__(self, module: str, attr: str, wrapper, **options):
        self.name = f"test-replace-{module}.{attr}"
        self.module, self.attr, self.wrapper, self.options = module, attr, wrapper, options

    def setup(self, worker) -> None:
        module = importlib.import_module(self.module)
        self.original = getattr(module, self.attr)
        replacement = functools.partial(self.wrapper, self.original, **self.options)
        setattr(module, self.attr, replacement)

    def teardown(self, worker) -> None:
        setattr(importlib.import_module(self.module), self.attr, self.original)


def killing_reader(read, path, *args, poison: str | None = None, once: str | None = None, **kw):
    """The reader, except that a file named ``poison*``, or the first file read while the
    marker ``once`` does not exist, SIGKILLs the process: a segfault, or the OOM killer."""
    kills = poison is not None and os.path.basename(os.fspath(path)).startswith(poison)
    if once is not None and not kills:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            kills = True
    if kills:
        os.kill(os.getpid(), signal.SIGKILL)
    return read(path, *args, **kw)


def raising(function, *args, error: Exception, **kw):
    raise error


def no_client_disk(_rv_arrays, directory):
    raise AssertionError(f"a worker read the client's RV table in {directory}")


def _children_of_any_thread(pid: int) -> set[int]:
    """The child processes of ``pid``: a local cluster's are its event-loop thread's."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.update(int(c) for c in (task / "children").read_text().split())
    return children


@contextlib.contextmanager
def on_workers(cluster, plugin):
    with distributed.Client(cluster, set_as_default=False) as client:
        client.register_plugin(plugin)
        try:
            yield client
        finally:
            client.unregister_worker_plugin(plugin.name)


# ---------------------------------------------------------------------------------------------


def test_a_cluster_gives_the_catalogue_of_a_local_run(
    cluster, worker_env, inputs, model_dir, ensemble, local_catalogue, small_chunks
):
    """Workers load the model from its directory and look RVs up in the table they were sent,
    never in the client's temporary directory; their own TMPDIR and cache differ."""
    kw = {"model": model_dir, "catalogue": inputs / "rv.csv"}
    reader = Replace("lamost_rrnet.rv_table", "_rv_arrays", no_client_disk)
    with on_workers(cluster, reader) as client:
        assert set(client.run(tempfile.gettempdir).values()) == {worker_env["TMPDIR"]}
        cache = set(client.run(lambda: os.environ.get("LAMOST_RRNET_CACHE")).values())
        assert cache == {worker_env["LAMOST_RRNET_CACHE"]}
        remote = predict_files([inputs / "spectra"], dask=cluster.scheduler_address, **kw)
    assert worker_env["TMPDIR"] != tempfile.gettempdir()
    assert_same_catalogue(local_catalogue, remote, ensemble)
    assert len(remote) == 12 and set(remote["status"]) == {""}
    assert set(remote["rv_source"]) == {"catalogue"}


def test_tasks_in_flight_are_bounded_and_chunks_come_in_input_order(cluster, inputs, ensemble):
    files = sorted(str(p) for p in (inputs / "spectra").iterdir())
    job = ReadJob(ensemble.preprocessing.to_dict(), False, None)
    runner = ModelRunner(ensemble)
    executor = DaskExecutor(cluster.scheduler_address, job, Predictor(ensemble), runner)
    taken = []

    def tasks():
        for path in files:
            taken.append(path)
            yield [path]

    try:
        done = []
        for chunk in executor.run(tasks()):
            done.extend(chunk.columns["path"])
            assert len(taken) - len(done) <= 3 * 2  # TASKS_PER_THREAD per worker thread
    finally:
        executor.close()
    assert [p.rsplit("/", 1)[1] for p in done] == [os.path.basename(f) for f in files]


def test_cuda_on_workers_without_a_gpu_runs_on_their_cpu(
    cluster, inputs, model_dir, ensemble, local_catalogue
):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: no worker falls back to its CPU")
    remote = predict_files(
        [inputs / "spectra"],
        model=model_dir,
        catalogue=inputs / "rv.csv",
        dask=cluster.scheduler_address,
        device="cuda",
    )
    assert_same_catalogue(local_catalogue, remote, ensemble)


def test_a_worker_killed_while_its_task_runs_changes_nothing(
    cluster, inputs, model_dir, ensemble, local_catalogue, small_chunks, tmp_path
):
    kw = {"model": model_dir, "catalogue": inputs / "rv.csv"}
    marker = tmp_path / "killed-one"
    with on_workers(
        cluster, Replace("lamost_rrnet.pipeline", "read_mrs", killing_reader, once=str(marker))
    ):
        remote = predict_files([inputs / "spectra"], dask=cluster.scheduler_address, **kw)
    assert marker.exists()  # a worker died reading its first file
    assert_same_catalogue(local_catalogue, remote, ensemble)


def test_a_task_that_raises_gives_error_rows_but_a_worker_that_cannot_run_ends_the_run(
    cluster, inputs, model_dir, small_chunks
):
    kw = {"model": model_dir, "catalogue": inputs / "rv.csv", "dask": cluster.scheduler_address}
    broken = RuntimeError("injected")
    with on_workers(
        cluster, Replace("lamost_rrnet.pipeline", "predict_rows", raising, error=broken)
    ):
        table = predict_files([inputs / "spectra"], **kw)
    assert len(table) == 12 and set(table["status"]) == {"error"} and not table["flag"].any()
    no_model = ModelError("the model cannot be loaded here")
    with on_workers(
        cluster, Replace("lamost_rrnet.pipeline", "predict_rows", raising, error=no_model)
    ):
        with pytest.raises(RRNetError, match="a Dask worker: the model cannot be loaded here"):
            predict_files([inputs / "spectra"], **kw)


@pytest.mark.slow
def test_a_file_that_kills_every_worker_is_an_error_row(
    run_cli, cluster, inputs, model_dir, ensemble, small_chunks, tmp_path
):
    """Its chunk is rerun a file at a time; the file becomes an ``error`` row, a warning names
    it, and the run ends with exit 0."""
    spectra = tmp_path / "in"
    for source in sorted((inputs / "spectra").iterdir())[1:6]:
        (spectra / source.name).parent.mkdir(exist_ok=True)
        (spectra / source.name).symlink_to(source)
    good = sorted(spectra.iterdir())
    write_file(spectra / "poison.fits.gz", 1011, 11)
    out = tmp_path / "remote.parquet"
    args = ["predict", spectra, "-o", out, "--model", model_dir, "--catalogue", inputs / "rv.csv"]
    killer = Replace("lamost_rrnet.pipeline", "read_mrs", killing_reader, poison="poison")
    with on_workers(cluster, killer):
        code, _, err = run_cli(*args, "--dask", cluster.scheduler_address)
    assert code == 0, err
    assert "poison.fits.gz: killed the Dask workers that read it" in err
    remote = _read(out)
    poisoned = remote["filename"] == "poison.fits.gz"
    assert list(remote["status"][poisoned]) == ["error"] and remote["flag"][poisoned][0] == 0
    assert np.isnan(remote["Teff[K]"][poisoned][0])
    local = predict_files(good, model=model_dir, catalogue=inputs / "rv.csv", workers=0)
    assert_same_catalogue(local, remote[~poisoned], ensemble)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_resume_after_the_client_is_sigkilled_loses_and_duplicates_nothing(
    run_cli, cluster, inputs, model_dir, ensemble, tmp_path
):
    """The client of ``--dask local:2`` is killed once its journal holds a chunk: its workers
    end with it, and --resume (on another cluster) completes the output exactly."""
    spectra = tmp_path / "in"
    spectra.mkdir()
    sources = sorted((inputs / "spectra").iterdir())
    for i in range(160):  # 5 chunks
        (spectra / f"s{i:03d}.fits.gz").symlink_to(sources[i % len(sources)])
    out = tmp_path / "cat.fits"
    args = ["predict", str(spectra), "-o", str(out), "--model", str(model_dir), "--quiet"]
    args += ["--catalogue", str(inputs / "rv.csv")]
    cli = "from lamost_rrnet.cli.app import main; main()"
    run = subprocess.Popen([sys.executable, "-c", cli, *args, "--dask", "local:2"])
    journal = journal_dir(out)
    deadline = time.monotonic() + 120  # a bound for a loaded machine, not a timing claim
    workers: set[int] = set()
    while time.monotonic() < deadline and run.poll() is None:
        workers.update(_children_of_any_thread(run.pid))
        if list(journal.glob("chunk-*.parquet")):
            break
        time.sleep(0.005)
    assert run.poll() is None, "the run ended before it could be killed"
    run.kill()
    run.wait()
    assert not out.exists() and list(journal.glob("chunk-*.parquet"))
    deadline = time.monotonic() + 60
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = {p for p in workers if Path(f"/proc/{p}").exists() and not _zombie(p)}
        time.sleep(0.05)
    for pid in alive:  # leave nothing behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert len(workers) >= 2 and alive == set()
    code, _, err = run_cli(*args, "--resume", "--dask", cluster.scheduler_address)
    assert code == 0, err
    resumed = _read(out)
    assert len(set(resumed["path"])) == len(resumed) == 160
    whole = tmp_path / "whole.fits"
    assert run_cli(*args[:3], str(whole), *args[4:], "--dask", cluster.scheduler_address)[0] == 0
    assert_same_catalogue(_read(whole), resumed, ensemble)
    assert not journal.exists()


def test_without_dask_installed_dask_is_one_line_naming_the_extra(
    run_cli, inputs, model_dir, monkeypatch, tmp_path
):
    monkeypatch.setitem(sys.modules, "distributed", None)
    out = tmp_path / "cat.fits"
    common = ("--model", model_dir, "-o", out, "--quiet")
    code, _, err = run_cli("predict", inputs / "spectra", *common, "--dask", "local:2")
    assert code == 1 and err.count("\n") == 1
    assert 'pip install "lamost-rrnet[dask]"' in err
    assert not out.exists() and not journal_dir(out).exists()


def test_dask_with_workers_or_a_bad_local_is_a_usage_error(run_cli, inputs, model_dir):
    common = ("predict", inputs / "spectra", "--model", model_dir, "--quiet")
    assert run_cli(*common, "--dask", "local:2", "--workers", "2")[0] == 2
    code, _, err = run_cli(*common, "--dask", "local:two")
    assert code == 2 and "local:N" in err
