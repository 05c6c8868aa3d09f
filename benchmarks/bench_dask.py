"""``predict --dask`` against the local executor, on the same files and the same cores.

The same .fits.gz coadds (``bench_predict.make_inputs``: noisy copies of the real spectra, with
an RV catalogue) go through ``predict_files`` to a FITS catalogue with the published-size
12-member ensemble (seeded weights), saved as a model directory that every worker loads
itself:

- **local, 2 workers**: the local executor (``workers=2``);
- **dask local:1** and **dask local:2**: a LocalCluster of 1 and of 2 single-threaded worker
  processes, started by the run and closed at its end;
- **dask, warm cluster of 1 and of 2**: a LocalCluster started beforehand and warmed by a
  small run (its workers hold the model), given as ``tcp://`` address: the steady rate, without
  the start-up.

Each is timed end to end, start-up (worker processes, torch imports, model loading) included,
as a user sees it. The runs are interleaved, ``--rounds`` times, and the fastest of each
counts: on a shared machine the spread shows how much the load changed; the load average is
printed before and after. So are the CPU milliseconds per spectrum of each run, all processes
together (the fewest of the rounds): the cost of each way at equal work, which the load of a
shared machine does not change as much as the rates; and the warm workers' resident memory.

Run: ``python benchmarks/bench_dask.py [--n 1200] [--rounds 2]``. Needs
../shared/data/lamost_mrs and the dask extra.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from bench_predict import make_inputs, published_size_ensemble
from lamost_rrnet.predict import predict_files


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _cpu_seconds(warm: dict[int, str]) -> float:
    """CPU seconds spent so far by this process, its finished children (the local executor's
    and the local:N clusters' workers, reaped when a run ends) and the warm clusters' workers."""
    import distributed

    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    for address in warm.values():
        with distributed.Client(address, set_as_default=False) as client:
            total += sum(client.run(_process_cpu).values())
    return total


@contextlib.contextmanager
def _warm_cluster(n: int, spectra: Path, model: Path, catalogue: Path) -> Iterator[str]:
    """A LocalCluster of ``n`` whose workers have run a few files (and so hold the model)."""
    import distributed

    with distributed.LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.CRITICAL,
    ) as cluster:
        files = sorted(spectra.iterdir())[: 32 * n]
        predict_files(files, model=model, catalogue=catalogue, dask=cluster.scheduler_address)
        yield cluster.scheduler_address


def main() -> None:
    import distributed

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="spectra (files)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, interleaved")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {}
    cpu_ms: dict[str, list[float]] = {}  # CPU milliseconds per spectrum, all processes
    warm: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spectra = Path(tmp) / "spectra"
        spectra.mkdir()
        catalogue = make_inputs(spectra, args.n)
        model = Path(tmp) / "model"
        published_size_ensemble().save(model)

        def timed(name: str, **where) -> None:
            cpu0, t0 = _cpu_seconds(warm), time.perf_counter()
            summary = predict_files(
                [spectra],
                model=model,
                catalogue=catalogue,
                output=Path(tmp) / f"{name.replace(' ', '-')}.fits",
                overwrite=True,
                device="cpu",
                **where,
            )
            assert summary.rows == args.n, summary.text()
            rates.setdefault(name, []).append(args.n / (time.perf_counter() - t0))
            cpu_ms.setdefault(name, []).append(1e3 * (_cpu_seconds(warm) - cpu0) / args.n)

        with contextlib.ExitStack() as stack:
            for n in (1, 2):
                warm[n] = stack.enter_context(_warm_cluster(n, spectra, model, catalogue))
            for _ in range(args.rounds):
                timed("local, 2 workers", workers=2)
                timed("dask local:1", dask="local:1")
                timed("dask local:2", dask="local:2")
                for n, address in warm.items():
                    timed(f"dask, warm cluster of {n}", dask=address)
            with distributed.Client(warm[2], set_as_default=False) as client:
                rss = list(client.run(_rss).values())
    load_after = os.getloadavg()

    best = {name: max(values) for name, values in rates.items()}
    local = best["local, 2 workers"]
    print(
        f"date {date.today()}  machine {platform.machine()}, {os.cpu_count()} cores  "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"{args.n} .fits.gz coadds -> FITS catalogue, 12-member published-size ensemble, CPU")
    for name, values in rates.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        cpu = min(cpu_ms[name])
        print(f"{name:<27}: {best[name]:6.1f} spectra/s (best of {shown}); {cpu:.1f} CPU ms each")
    print(f"warm worker memory         : {max(rss) / 2**20:.0f} MB resident at most")
    warm1, warm2 = best["dask, warm cluster of 1"], best["dask, warm cluster of 2"]
    print(
        f"equal cores, dask/local    : {best['dask local:2'] / local:.2f} (local:2), "
        f"{warm2 / local:.2f} (warm cluster of 2)"
    )
    print(
        f"1 -> 2 workers, dask       : {best['dask local:2'] / best['dask local:1']:.2f} "
        f"(local:N), {warm2 / warm1:.2f} (warm clusters)"
    )


if __name__ == "__main__":
    main()
