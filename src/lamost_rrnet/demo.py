"""``lamost-rrnet demo``: the whole job on built-in simulated data, offline, in minutes.

simulate → crossmatch → prepare → train (2 members) → predict the held-out files →
evaluate. Every step is the library call that the corresponding command makes, so the demo
shows exactly what a user's own run does, at a small scale.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lamost_rrnet.errors import OutputExistsError
from lamost_rrnet.names import GROUPS_SINGLE

logger = logging.getLogger(__name__)

#: What the demo writes into its folder; ``overwrite`` removes only these.
DEMO_ENTRIES = ("sim", "reference.fits", "dataset.h5", "dataset_rejects.csv", "model",
                "catalogue.fits", "catalogue.csv", "report")  # fmt: skip


@dataclass(frozen=True)
class DemoSettings:
    """The scale of a demo run: the default fits in 5 minutes on a 2-core laptop CPU."""

    stars: int = 1200
    visits: tuple[int, int] = (1, 3)
    snr: tuple[float, float] = (15.0, 150.0)
    members: int = 2
    groups: str = GROUPS_SINGLE  # one network per member for all labels: twice the epochs in budget
    epochs: int = 12
    batch_size: int = 64  # small sets: more optimizer steps per epoch than the paper's 256
    max_minutes: float = 1.5

    @classmethod
    def quick(cls, stars: int | None = None) -> DemoSettings:
        """Under a minute: fewer stars, fewer epochs."""
        return cls(stars=stars or 300, visits=(1, 2), snr=(30.0, 150.0), epochs=4,
                   batch_size=32, max_minutes=0.35)  # fmt: skip


@dataclass
class DemoResult:
    """Where the demo's products are, and how good the model is on the held-out spectra."""

    out: Path
    catalogue_fits: Path
    catalogue_csv: Path
    report: Path
    model: Path
    mae: dict[str, float]  # per label, on the test split
    baseline_mae: dict[str, float]  # predicting the training mean
    seconds: float


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        present = [name for name in DEMO_ENTRIES if (out / name).exists()]
        others = [p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES]
        if not overwrite or others:
            raise OutputExistsError(
                f"{out}: the folder is not empty; give a new --out"
                + ("" if others else ", or --overwrite to replace an earlier demo")
            )
        for name in present:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_demo(
    out: str | os.PathLike[str] = "demo",
    settings: DemoSettings = DemoSettings(),
    *,
    seed: int = 1,
    device: str = "auto",
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = False,
) -> DemoResult:
    """Run the demo into ``out``, logging one line per step at INFO (and what each step
    logs); ``progress`` shows each step's bars."""
    from astropy.table import Table

    from lamost_rrnet.crossmatch import crossmatch, write_reference
    from lamost_rrnet.dataset import open_dataset
    from lamost_rrnet.evaluate import evaluate_dataset
    from lamost_rrnet.predict import predict_files
    from lamost_rrnet.prepare import prepare_dataset
    from lamost_rrnet.simulate import simulate_set
    from lamost_rrnet.training import train_ensemble

    start = time.perf_counter()
    out = Path(out)
    _prepare_folder(out, overwrite)
    sim = out / "sim"

    logger.info(f"1/5 simulating {settings.stars} stars as LAMOST MRS files in {sim}/")
    simulate_set(sim, settings.stars, visits=settings.visits, snr=settings.snr, seed=seed,
                 n_exposures=(2, 2))  # fmt: skip

    logger.info(
        "2/5 cross-matching the LAMOST catalogue with the labels, and preparing the dataset"
    )
    matched = crossmatch(sim / "lamost_catalogue.csv", labels_file=sim / "labels.csv")
    reference = write_reference(matched.table, out / "reference.fits")
    dataset = out / "dataset.h5"
    prepare_dataset(reference, dataset, spectra_root=sim / "spectra", workers=workers,
                    seed=seed, progress=progress)  # fmt: skip

    logger.info(f"3/5 training a {settings.members}-member RRNet ensemble for all labels "
                f"(at most {settings.epochs} epochs or {settings.max_minutes:g} min)")  # fmt: skip
    model_dir = out / "model"
    train_ensemble(dataset, model_dir, members=settings.members, groups=settings.groups,
                   epochs=settings.epochs, batch_size=settings.batch_size,
                   seed=seed, device=device, max_minutes=settings.max_minutes,
                   name="demo-rrnet", progress=progress)  # fmt: skip

    logger.info("4/5 predicting a catalogue for the held-out (test) files")
    with open_dataset(dataset) as ds:
        test = ds.indices("test")
        files = sorted({str(name) for name in ds.meta("filename", test)})
        train = ds.indices("train")
        names = list(ds.label_names)
        true = ds.labels(test)
        train_mean = np.nanmean(ds.labels(train), axis=0)
    catalogue_fits = out / "catalogue.fits"
    predict_files([sim / "spectra" / name for name in files], model=model_dir,
                  catalogue=sim / "lamost_catalogue.csv", output=catalogue_fits,
                  device=device, workers=0, progress=progress)  # fmt: skip
    catalogue_csv = out / "catalogue.csv"
    # 'dex' is not a FITS unit: the file says so in TUNIT, astropy need not warn about it.
    Table.read(catalogue_fits, unit_parse_strict="silent").write(catalogue_csv, format="ascii.csv")

    logger.info("5/5 writing the evaluation report")
    report = out / "report"
    result = evaluate_dataset(dataset, [model_dir], split="test", out_dir=report,
                              device=device, progress=progress)  # fmt: skip
    overall = result.metrics[result.metrics["snr_bin"] == "all"].set_index("label")
    mae = {label: float(overall.loc[label, "mae"]) for label in names if label in overall.index}
    baseline = {
        label: float(np.nanmean(np.abs(true[:, i] - train_mean[i])))
        for i, label in enumerate(names)
        if label in mae
    }
    return DemoResult(out, catalogue_fits, catalogue_csv, report / "index.md", model_dir, mae,
                      baseline, time.perf_counter() - start)  # fmt: skip
