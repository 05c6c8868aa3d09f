"""Accuracy and speed of lamost_rrnet.spectra.rv.estimate_rv on simulated coadds.

Stars from ``draw_labels``, RVs uniform in ±300 km/s, coadds from ``simulate_observed`` at
fixed S/N (both arms), bad pixels included. Prints, per S/N, the median and 90th percentile
of |ΔRV|, the fraction of |ΔRV| < 3σ, failures (SpectrumError), and the time per estimate.
Targets (issue 5): median |ΔRV| < 1 km/s at S/N ≥ 20, < 3 km/s at S/N 10.

    python benchmarks/bench_rv.py [--n 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lamost_rrnet.errors import SpectrumError
from lamost_rrnet.simulate import draw_labels, simulate_observed
from lamost_rrnet.spectra.rv import estimate_rv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="spectra per S/N")
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    estimate_rv(simulate_observed(draw_labels(1, rng), 50.0, rng).spectrum(0))  # templates
    print(f"{'S/N':>5s} {'median |dRV|':>13s} {'p90 |dRV|':>10s} {'<3 sigma':>9s} "
          f"{'median sigma':>13s} {'failed':>7s} {'ms/spectrum':>12s}")  # fmt: skip
    for snr in (5.0, 10.0, 20.0, 50.0, 100.0):
        labels = draw_labels(args.n, rng)
        rv = rng.uniform(-300.0, 300.0, args.n)
        obs = simulate_observed(labels, snr, rng, rv=rv)
        errors, sigmas, failed = [], [], 0
        start = time.process_time()
        for i in range(args.n):
            try:
                value, sigma = estimate_rv(obs.spectrum(i))
            except SpectrumError:
                failed += 1
                continue
            errors.append(value - rv[i])
            sigmas.append(sigma)
        per = (time.process_time() - start) / args.n * 1000
        err, sig = np.abs(np.array(errors)), np.array(sigmas)
        print(
            f"{snr:5.0f} {np.median(err):10.2f} km/s {np.percentile(err, 90):7.2f} km/s "
            f"{np.mean(err < 3 * sig):8.1%} {np.median(sig):9.2f} km/s {failed:7d} {per:9.1f} ms"
        )


if __name__ == "__main__":
    main()
