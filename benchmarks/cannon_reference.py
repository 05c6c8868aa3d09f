"""Our quadratic Cannon against an established implementation, on the same split.

The reference is ``thecannon`` of the PyPI package ``annieslasso`` (Casey et al. 2016; with
regularization 0 it is the quadratic Cannon of Ness et al. 2015). Both models get the same
training spectra, inverse variances (``Dataset.ivar``) and labels, and label the same test
spectra; the reference's test step gets the test spectra's inverse variance too, ours infers
the noise from the residuals (docs/training.md, "Classical baseline: The Cannon").

    python benchmarks/cannon_reference.py DATASET.h5 [--labels all|sp] [-o results.json]

``--labels sp`` fits Teff, log g and [Fe/H] only (10 terms instead of 171), for when the
reference is too slow with all 17 labels. Prints a Markdown table of per-label test MAE and
the ratio ours/reference, and the fit and test times (wall and CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lamost_rrnet.dataset import open_dataset
from lamost_rrnet.ensemble import Ensemble
from lamost_rrnet.training.cannon import train_cannon

SP = ["Teff[K]", "Logg", "FeH"]


class Clock:
    """Wall and process CPU seconds of a block (CPU counts every thread)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def as_dict(self) -> dict:
        return {"wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1)}


def reference_cannon():
    """``thecannon``, quiet, with a shim: annieslasso 0.2.96 stores each pixel's scatter as
    the size-1 array scipy's fmin returns, which NumPy 2 refuses to assign to one element."""
    import thecannon
    from thecannon import fitting

    logging.getLogger("thecannon").setLevel(logging.ERROR)
    fit_pixel = fitting.fit_pixel_fixed_scatter

    def fit_pixel_scalar_scatter(*args, **kwargs):
        theta, s2, meta = fit_pixel(*args, **kwargs)
        return theta, float(np.squeeze(s2)), meta

    fitting.fit_pixel_fixed_scatter = fit_pixel_scalar_scatter
    return thecannon


def fit_with_ivar(
    ensemble: Ensemble, flux: np.ndarray, ivar: np.ndarray, names: list[str]
) -> np.ndarray:
    """Labels (physical units, in the order of ``names``) from the test step of the ensemble's
    one Cannon, given the spectra's inverse variance, as the reference's test step is."""
    group = ensemble.groups[0]
    with torch.no_grad():
        z, _ = group.members[0].fit_labels(torch.from_numpy(flux), torch.from_numpy(ivar))
    norm = ensemble.normalization
    rows = norm.index(group.labels)
    labels = z.double().numpy() * norm.label_std[rows] + norm.label_mean[rows]
    return labels[:, [group.labels.index(n) for n in names]]


def run(dataset: Path, labels: list[str] | None) -> dict:
    with open_dataset(dataset) as ds:
        names = labels or ds.label_names
        train, test = ds.indices("train"), ds.indices("test")
        flux, ivar, true_train = ds.flux(train), ds.ivar(train), ds.labels(train, names)
        test_flux, test_ivar, true = ds.flux(test), ds.ivar(test), ds.labels(test, names)
    result = {"dataset": str(dataset), "labels": names, "n_train": int(train.size)}
    result["n_test"] = int(test.size)

    with tempfile.TemporaryDirectory() as tmp:
        with Clock() as fit_clock:
            train_cannon(dataset, Path(tmp) / "cannon", {"ALL": names}, progress=False)
        ensemble = Ensemble.load(Path(tmp) / "cannon", device="cpu")
        with Clock() as test_clock:
            ours, _ = ensemble.predict(test_flux)
    ours = ours[:, [ensemble.labels.index(n) for n in names]]
    scatter2 = ensemble.groups[0].members[0].scatter2.numpy().copy()
    result["ours"] = {"fit": fit_clock.as_dict(), "test": test_clock.as_dict()}
    with torch.no_grad(), Clock() as ivar_clock:
        z, _ = (
            ensemble.groups[0]
            .members[0]
            .fit_labels(torch.from_numpy(test_flux), torch.from_numpy(test_ivar))
        )
    norm = ensemble.normalization
    rows = norm.index(ensemble.groups[0].labels)
    given = z.double().numpy() * norm.label_std[rows] + norm.label_mean[rows]
    given = given[:, [ensemble.groups[0].labels.index(n) for n in names]]
    result["ours_given_ivar"] = {"test": ivar_clock.as_dict()}

    tc = reference_cannon()
    vectorizer = tc.vectorizer.PolynomialVectorizer([f"l{i}" for i in range(len(names))], 2)
    model = tc.CannonModel(
        true_train.astype(np.float64),
        flux.astype(np.float64),
        ivar.astype(np.float64),
        vectorizer=vectorizer,
        regularization=0.0,
    )
    # thecannon draws a progress bar on stdout, which is this script's data.
    with contextlib.redirect_stdout(io.StringIO()):
        with Clock() as ref_fit:
            model.train(threads=1)
        with Clock() as ref_test:
            reference, _, _ = model.test(
                test_flux.astype(np.float64), test_ivar.astype(np.float64), threads=1
            )
    # The same test step with the reference's scatter in place of ours: what is left of any
    # difference is in the implementation, not in the method.
    member = ensemble.groups[0].members[0]
    with torch.no_grad():
        member.scatter2.copy_(torch.as_tensor(np.asarray(model.s2, np.float64)))
    swapped = fit_with_ivar(ensemble, test_flux, test_ivar, names)
    result["scatter2_percentiles_10_50_90"] = {
        "ours": np.percentile(scatter2, [10, 50, 90]).tolist(),
        "reference": np.percentile(model.s2, [10, 50, 90]).tolist(),
    }
    result["reference"] = {
        "package": "annieslasso 0.2.96 (module thecannon)",
        "fit": ref_fit.as_dict(),
        "test": ref_test.as_dict(),
    }
    mae_ours = np.nanmean(np.abs(ours - true), axis=0)
    mae_given = np.nanmean(np.abs(given - true), axis=0)
    mae_swapped = np.nanmean(np.abs(swapped - true), axis=0)
    mae_ref = np.nanmean(np.abs(reference - true), axis=0)
    result["mae"] = {
        n: {
            "reference": float(b),
            "ours_reference_scatter": float(w),
            "ours_given_ivar": float(g),
            "ours": float(a),
            "ratio_reference_scatter": float(w / b),
            "ratio_given_ivar": float(g / b),
            "ratio": float(a / b),
        }
        for n, a, g, w, b in zip(names, mae_ours, mae_given, mae_swapped, mae_ref, strict=True)
    }
    result["failed_reference_fits"] = int(np.isnan(reference).any(axis=1).sum())
    result["machine"] = f"{platform.machine()}, {platform.python_version()}"
    return result


def markdown(result: dict) -> str:
    lines = [
        "| label | thecannon | ours, thecannon's s², given ivar | ours, given ivar "
        "| ours, noise from residuals (predict) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in result["mae"].items():
        lines.append(
            f"| {name} | {m['reference']:.4g} "
            f"| {m['ours_reference_scatter']:.4g} ({m['ratio_reference_scatter']:.3f}) "
            f"| {m['ours_given_ivar']:.4g} ({m['ratio_given_ivar']:.3f}) "
            f"| {m['ours']:.4g} ({m['ratio']:.3f}) |"
        )
    for who in ("ours", "ours_given_ivar", "reference"):
        times = result[who]
        lines.append(
            f"\n{who}: "
            + ", ".join(
                f"{k} {t['wall_s']} s wall ({t['cpu_s']} s CPU)"
                for k, t in times.items()
                if k != "package"
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--labels", choices=("all", "sp"), default="all")
    parser.add_argument("-o", "--output", type=Path, help="Also write the results as JSON.")
    args = parser.parse_args(argv)
    result = run(args.dataset, SP if args.labels == "sp" else None)
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    ratios = [m["ratio_reference_scatter"] for m in result["mae"].values()]
    print(
        f"\nours with thecannon's s² / thecannon: {min(ratios):.3f} to {max(ratios):.3f} "
        "(target 0.9-1.1)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
