"""``lamost-rrnet demo --quick``: the whole job on built-in data, offline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from astropy.table import Table

from lamost_rrnet.dataset import open_dataset
from lamost_rrnet.labels import CATALOGUE_LABELS

TABLE3_START = ["obsid", "filename", "ra", "dec", "extname_blue", "extname_red", "snr_blue",
                "snr_red", "Teff[K]", "Teff[K]_err", "Logg", "Logg_err"]  # fmt: skip


def test_demo_quick_runs_the_whole_job(run_cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--quick", "--out", out, "--quiet")
    assert code == 0, err
    for rel in ("sim/lamost_catalogue.csv", "sim/labels.csv", "reference.fits", "dataset.h5",
                "model/model.yaml", "catalogue.fits", "catalogue.csv", "report/index.md",
                "report/metrics.csv"):  # fmt: skip
        assert (out / rel).is_file(), rel
    assert list((out / "sim" / "spectra").glob("med-*.fits.gz"))
    assert list((out / "report").glob("*.png"))

    # The catalogue covers the held-out files with the paper's columns, as FITS and CSV.
    fits_cat = Table.read(out / "catalogue.fits", unit_parse_strict="silent")
    csv_cat = Table.read(out / "catalogue.csv", format="ascii.csv")
    assert fits_cat.colnames[: len(TABLE3_START)] == TABLE3_START
    assert fits_cat.colnames == csv_cat.colnames and len(fits_cat) == len(csv_cat) > 0
    assert fits_cat.colnames.index("FeH") == fits_cat.colnames.index("MnH_err") + 1
    with open_dataset(out / "dataset.h5") as ds:
        test = ds.indices("test")
        test_files = {str(f) for f in ds.meta("filename", test)}
        teff = list(ds.label_names).index("Teff[K]")
        true = ds.labels(test)[:, teff]
        train_mean = np.nanmean(ds.labels(ds.indices("train"))[:, teff])
    assert {str(f) for f in fits_cat["filename"]} == test_files

    # The model beats predicting the training mean for Teff on the test split.
    metrics = pd.read_csv(out / "report" / "metrics.csv")
    row = metrics[(metrics["label"] == "Teff[K]") & (metrics["snr_bin"] == "all")].iloc[0]
    assert row["mae"] < np.mean(np.abs(true - train_mean))

    # The summary on stdout: MAE per label, the products and the next commands.
    for text in ("Teff[K]", "catalogue", "report", "model", "lamost-rrnet predict",
                 "lamost-rrnet train"):  # fmt: skip
        assert text in stdout
    assert sum(label in stdout for label in CATALOGUE_LABELS) == len(CATALOGUE_LABELS)


def test_demo_refuses_a_folder_that_is_not_its_own(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli("demo", "--quick", "--out", tmp_path)
    assert code == 1 and "not empty" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"
