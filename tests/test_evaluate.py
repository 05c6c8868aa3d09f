"""evaluate: metrics checked number by number against hand computations, the report files,
the dataset and catalogue modes, saliency, and the command line's exit codes."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from lamost_rrnet.evaluate.metrics import (
    METRIC_COLUMNS,
    compute_metrics,
    coverage_curve,
    repeat_scatter,
    spectrum_snr,
)

NAN = math.nan


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Six spectra whose S/N = min(blue, red) is 9.9 (below every bin: only in "all"), then each
# bin edge or just under it: 10 and 19.99 -> [10, 20), 20 -> [20, 40), 40 -> [40, 60), 60 -> 60+.
SNR_BLUE = [9.9, 50.0, 19.99, 20.0, 45.0, 60.0]
SNR_RED = [30.0, 10.0, 80.0, 25.0, 40.0, 100.0]
TEFF_TRUE = [5000.0] * 6
TEFF_RESIDUAL = [10.0, -20.0, 30.0, 40.0, -50.0, 60.0]
TEFF_SIGMA = [10.0, 10.0, 20.0, 20.0, 100.0, 30.0]
# Spectrum 3 has no true [Fe/H]: it drops out, leaving the [20, 40) bin of FeH empty.
FEH_TRUE = [0.0, 0.0, 0.0, NAN, 0.0, 0.0]
FEH_RESIDUAL = [0.1, -0.1, 0.2, 0.0, 0.3, -0.2]
FEH_SIGMA = [0.1, 0.2, 0.1, 0.1, 0.1, 0.4]

# By hand. Teff, all: residuals 10 -20 30 40 -50 60 sum to 70, |r| to 210, r² to 9100;
# z = 1 -2 1.5 2 -0.5 2 sum to 4, z² to 15.5; |z| <= 1 twice, <= 2 always.
# FeH, all: residuals 0.1 -0.1 0.2 0.3 -0.2 sum to 0.3, |r| to 0.9, r² to 0.19;
# z = 1 -0.5 2 3 -0.5 sum to 5, z² to 14.5; |z| <= 1 three times, <= 2 four times.
# Columns: n, mae, bias, scatter, mean_sigma, z_mean, z_std, frac_1sigma, frac_2sigma.
EXPECTED = {
    ("Teff[K]", "all"): (
        6,
        210 / 6,
        70 / 6,
        math.sqrt(9100 / 6 - (70 / 6) ** 2),
        190 / 6,
        4 / 6,
        math.sqrt(15.5 / 6 - (4 / 6) ** 2),
        2 / 6,
        1.0,
    ),
    ("Teff[K]", "10-20"): (2, 25.0, 5.0, 25.0, 15.0, -0.25, 1.75, 0.0, 1.0),
    ("Teff[K]", "20-40"): (1, 40.0, 40.0, 0.0, 20.0, 2.0, 0.0, 0.0, 1.0),
    ("Teff[K]", "40-60"): (1, 50.0, -50.0, 0.0, 100.0, -0.5, 0.0, 1.0, 1.0),
    ("Teff[K]", "60+"): (1, 60.0, 60.0, 0.0, 30.0, 2.0, 0.0, 0.0, 1.0),
    ("FeH", "all"): (
        5,
        0.18,
        0.06,
        math.sqrt(0.038 - 0.06**2),
        0.18,
        1.0,
        math.sqrt(1.9),
        0.6,
        0.8,
    ),
    ("FeH", "10-20"): (2, 0.15, 0.05, 0.15, 0.15, 0.75, 1.25, 0.5, 1.0),
    ("FeH", "20-40"): (0, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN),
    ("FeH", "40-60"): (1, 0.3, 0.3, 0.0, 0.1, 3.0, 0.0, 0.0, 0.0),
    ("FeH", "60+"): (1, 0.2, -0.2, 0.0, 0.4, -0.5, 0.0, 1.0, 1.0),
}
BIN_ORDER = ["all", "10-20", "20-40", "40-60", "60+"]


def known_arrays():
    true = np.column_stack([TEFF_TRUE, FEH_TRUE])
    pred = true + np.column_stack([TEFF_RESIDUAL, FEH_RESIDUAL])
    sigma = np.column_stack([TEFF_SIGMA, FEH_SIGMA])
    return pred, sigma, true


def check_against_hand(table: pd.DataFrame, model: str, split: str) -> None:
    """Every row and every number of a metrics table against EXPECTED."""
    assert list(table.columns) == list(METRIC_COLUMNS)
    assert list(zip(table["label"], table["snr_bin"], strict=True)) == [
        (label, b) for label in ("Teff[K]", "FeH") for b in BIN_ORDER
    ]
    assert set(table["model"]) == {model}
    assert set(table["split"]) == {split}
    for row in table.itertuples(index=False):
        want = EXPECTED[(row.label, row.snr_bin)]
        got = (row.n, row.mae, row.bias, row.scatter, row.mean_sigma, row.z_mean, row.z_std)
        got += (row.frac_1sigma, row.frac_2sigma)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True), (
            row.label,
            row.snr_bin,
        )


def test_compute_metrics_matches_hand_computation():
    pred, sigma, true = known_arrays()
    snr = spectrum_snr(np.array(SNR_BLUE), np.array(SNR_RED))
    assert snr.tolist() == [9.9, 10.0, 19.99, 20.0, 40.0, 60.0]
    table = compute_metrics(pred, sigma, true, snr, ["Teff[K]", "FeH"], model="m", split="test")
    check_against_hand(table, "m", "test")


def test_repeat_scatter_by_star_and_median_snr():
    # Star a: 3 spectra at S/N 15 -> [10, 20), std(1, 2, 3; ddof 1) = 1. Star b: median S/N 50
    # -> [40, 60), std(0, 0, 3; ddof 1) = sqrt(3). Star c has 2 spectra: too few.
    pred = np.array([[1.0], [2.0], [3.0], [0.0], [0.0], [3.0], [7.0], [9.0]])
    star = np.array(["a", "a", "a", "b", "b", "b", "c", "c"])
    snr = np.array([15.0, 15.0, 15.0, 50.0, 55.0, 45.0, 15.0, 15.0])
    got = repeat_scatter(pred, star, snr, ["FeH"]).set_index("snr_bin")
    assert got.loc["all", "n_stars"] == 2
    assert got.loc["all", "sigma_obs"] == pytest.approx((1 + math.sqrt(3)) / 2)
    assert got.loc["10-20", "n_stars"] == 1
    assert got.loc["10-20", "sigma_obs"] == pytest.approx(1.0)
    assert got.loc["40-60", "sigma_obs"] == pytest.approx(math.sqrt(3))
    assert got.loc["20-40", "n_stars"] == 0
    assert math.isnan(got.loc["20-40", "sigma_obs"])


def test_coverage_curve_counts_inside_gaussian_intervals():
    z = np.array([0.5, -1.5, 2.5, 0.1, NAN])
    levels = np.array([math.erf(1 / math.sqrt(2)), math.erf(2 / math.sqrt(2))])  # ±1σ, ±2σ
    assert coverage_curve(z, levels) == pytest.approx([2 / 4, 3 / 4])


def write_catalogues(tmp_path, sky: bool = False):
    """A predicted catalogue (the known arrays) and a reference in another order, each with one
    row the other lacks."""
    pred, sigma, true = known_arrays()
    obsid = np.arange(100, 106)
    ra = np.linspace(10.0, 11.0, 6)
    dec = np.full(6, 40.0)
    cat = pd.DataFrame(
        {
            "obsid": np.append(obsid, 999),
            "ra": np.append(ra, 50.0),
            "dec": np.append(dec, -10.0),
            "snr_blue": SNR_BLUE + [50.0],
            "snr_red": SNR_RED + [50.0],
            "Teff[K]": np.append(pred[:, 0], 4000.0),
            "Teff[K]_err": np.append(sigma[:, 0], 1.0),
            "FeH": np.append(pred[:, 1], 0.0),
            "FeH_err": np.append(sigma[:, 1], 0.1),
            "Logg": 4.0,  # not in the reference: not compared
        }
    )
    order = [3, 5, 0, 2, 1, 4]
    ref = pd.DataFrame(
        {
            "obsid": np.append(obsid[order], 555),
            # 0.5 arcsec away from the catalogue's positions.
            "ra": np.append(ra[order], 200.0),
            "dec": np.append(dec[order] + 0.5 / 3600, 0.0),
            "Teff[K]": np.append(true[order, 0], 6000.0),
            "FeH": np.append(true[order, 1], 0.5),
        }
    )
    if sky:
        ref["obsid"] = np.arange(len(ref)) + 10_000  # no ids in common
    cat_path, ref_path = tmp_path / "cat.csv", tmp_path / "ref.csv"
    cat.to_csv(cat_path, index=False)
    ref.to_csv(ref_path, index=False)
    return cat_path, ref_path


@pytest.mark.parametrize("match", ["obsid", "sky"])
def test_catalogue_mode_metrics_csv_matches_hand_computation(tmp_path, run_cli, match):
    cat, ref = write_catalogues(tmp_path, sky=match == "sky")
    out = tmp_path / "report"
    # Figures are drawn once (obsid); the sky match checks only the numbers.
    plots = ["--html"] if match == "obsid" else ["--no-plots"]
    code, stdout, stderr = run_cli(
        "evaluate", cat, "--reference", ref, "--match", match, "-o", out, *plots
    )
    assert code == 0, stderr
    assert stdout == ""
    check_against_hand(pd.read_csv(out / "metrics.csv"), "cat", "matched")
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["n_matched"] == 6
    assert meta["columns"] == list(METRIC_COLUMNS)
    feh_empty = [m for m in meta["metrics"] if m["label"] == "FeH" and m["snr_bin"] == "20-40"]
    assert feh_empty[0]["n"] == 0 and feh_empty[0]["mae"] is None
    index = (out / "index.md").read_text()
    # Table 2 style: μ_r and σ_r per common label, in the label's unit and precision.
    assert "| Teff (K) | 6 | 11.7 | 37.2 |" in index
    assert "| [Fe/H] (dex) | 5 | 0.060 | 0.185 |" in index
    assert "log g" not in index
    if match == "obsid":
        assert (out / "residuals.png").read_bytes()[:4] == b"\x89PNG"
        assert "<table>" in (out / "index.html").read_text()
    else:
        assert not (out / "residuals.png").exists()


def test_catalogue_mode_sky_radius_excludes_far_rows(tmp_path, run_cli):
    cat, ref = write_catalogues(tmp_path, sky=True)
    out = tmp_path / "r"
    code, _, stderr = run_cli(
        "evaluate", cat, "--reference", ref, "--match", "sky", "--max-separation", "0.1", "-o", out
    )
    assert code == 1
    assert "no row matches" in stderr


def test_catalogue_without_common_labels_fails(tmp_path, run_cli):
    cat, _ = write_catalogues(tmp_path)
    other = tmp_path / "other.csv"
    pd.DataFrame({"obsid": [100], "teff": [5000.0]}).to_csv(other, index=False)
    code, _, stderr = run_cli("evaluate", cat, "--reference", other, "-o", tmp_path / "r")
    assert code == 1
    assert "no label column in common" in stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--match", "name"],
        ["--model", "rrnet2022"],
        ["--saliency", "4000:4300"],
        ["--split", "valid"],
    ],
)
def test_catalogue_mode_invalid_options_exit_2(tmp_path, run_cli, extra):
    cat, ref = write_catalogues(tmp_path)
    code, _, _ = run_cli("evaluate", cat, "--reference", ref, "-o", tmp_path / "r", *extra)
    assert code == 2


# -- dataset mode -----------------------------------------------------------------------------

# A model whose every weight is zero predicts its head's biases for any spectrum: with μ bias
# ``shift`` and variance softplus⁻¹(1), each member gives μ = mean + shift·std and σ = std.
KNOWN_MEAN = {"Teff[K]": 5000.0, "Logg": 3.0, "FeH": 0.0}
KNOWN_STD = {"Teff[K]": 20.0, "Logg": 1.0, "FeH": 0.25}
# True labels = the constant prediction minus these residuals; every number is exact in float32
# and no z falls on a ±1 or ±2 edge, where float32 rounding of σ could move it across.
DS_TEFF_RESIDUAL = [10.0, -30.0, 50.0, 10.0, -50.0, 70.0]
DS_FEH_RESIDUAL = [0.125, -0.375, 0.625, NAN, 0.375, -0.875]
# By hand, σ = 20 K and 0.25 dex everywhere. Teff: residuals sum to 60, |r| to 220, r² to 11000,
# z = 0.5 -1.5 2.5 0.5 -2.5 3.5. FeH (spectrum 3 has no true value): sum -0.125, |r| 2.375,
# r² 1.453125, z = 0.5 -1.5 2.5 1.5 -3.5.
DS_EXPECTED = {
    ("Teff[K]", "all"): (
        6,
        220 / 6,
        10.0,
        math.sqrt(11000 / 6 - 100),
        20.0,
        0.5,
        math.sqrt(11000 / 6 - 100) / 20,
        2 / 6,
        3 / 6,
    ),
    ("Teff[K]", "10-20"): (2, 40.0, 10.0, 40.0, 20.0, 0.5, 2.0, 0.0, 0.5),
    ("Teff[K]", "20-40"): (1, 10.0, 10.0, 0.0, 20.0, 0.5, 0.0, 1.0, 1.0),
    ("Teff[K]", "40-60"): (1, 50.0, -50.0, 0.0, 20.0, -2.5, 0.0, 0.0, 0.0),
    ("Teff[K]", "60+"): (1, 70.0, 70.0, 0.0, 20.0, 3.5, 0.0, 0.0, 0.0),
    ("FeH", "all"): (
        5,
        0.475,
        -0.025,
        math.sqrt(0.29),
        0.25,
        -0.1,
        math.sqrt(0.29) / 0.25,
        0.2,
        0.6,
    ),
    ("FeH", "10-20"): (2, 0.5, 0.125, 0.5, 0.25, 0.5, 2.0, 0.0, 0.5),
    ("FeH", "20-40"): (0, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN),
    ("FeH", "40-60"): (1, 0.375, 0.375, 0.0, 0.25, 1.5, 0.0, 0.0, 1.0),
    ("FeH", "60+"): (1, 0.875, -0.875, 0.0, 0.25, -3.5, 0.0, 0.0, 0.0),
}


def normalization(labels):
    from lamost_rrnet.ensemble import Normalization

    return Normalization(
        flux_mean=np.ones(7200, np.float32),
        flux_std=np.full(7200, 0.1, np.float32),
        label_names=list(labels),
        label_mean=[KNOWN_MEAN[lb] for lb in labels],
        label_std=[KNOWN_STD[lb] for lb in labels],
    )


def constant_model(directory, labels, shift=0.0, name="const", preprocessing=None):
    """A saved 2-member ensemble predicting mean + shift·std with σ = std for every spectrum."""
    import torch

    from lamost_rrnet.ensemble import Ensemble, LabelGroup
    from lamost_rrnet.models import create_model
    from lamost_rrnet.spectra.preprocess import RRNET2022

    members = []
    for _ in range(2):
        member = create_model("rrnet", len(labels), Nr=[2, 2, 2])
        with torch.no_grad():
            for p in member.parameters():
                p.zero_()
            member.head.mu.bias.fill_(shift)
            member.head.var.bias.fill_(math.log(math.e - 1.0))  # softplus⁻¹(1)
        members.append(member)
    ens = Ensemble(
        name,
        "1",
        {"name": "rrnet", "kwargs": {"Nr": [2, 2, 2]}},
        [LabelGroup("G", list(labels), members)],
        normalization(labels),
        preprocessing or RRNET2022,
    )
    return ens.save(directory)


def random_model(directory, labels, seed, name):
    """A saved 2-member ensemble of tiny RRNets with random weights."""
    import torch

    from lamost_rrnet.ensemble import Ensemble, LabelGroup
    from lamost_rrnet.models import create_model

    torch.manual_seed(seed)
    members = [create_model("rrnet", len(labels), Nr=[2, 2, 2]) for _ in range(2)]
    ens = Ensemble(
        name,
        "1",
        {"name": "rrnet", "kwargs": {"Nr": [2, 2, 2]}},
        [LabelGroup("G", list(labels), members)],
        normalization(labels),
    )
    ens.save(directory)
    return ens


def known_dataset(path, preprocessing=None):
    """Six test spectra (S/N as SNR_BLUE/SNR_RED) and two train spectra; no valid split."""
    from lamost_rrnet.dataset import write_dataset
    from lamost_rrnet.spectra.preprocess import RRNET2022

    rng = np.random.default_rng(1)
    teff = KNOWN_MEAN["Teff[K]"] - np.array(DS_TEFF_RESIDUAL + [0.0, 0.0])
    feh = KNOWN_MEAN["FeH"] - np.array(DS_FEH_RESIDUAL + [0.0, 0.0])
    logg = np.full(8, 3.0)
    return write_dataset(
        path,
        rng.normal(1.0, 0.05, (8, 7200)),
        np.column_stack([teff, logg, feh]),
        ["Teff[K]", "Logg", "FeH"],
        {
            "obsid": np.arange(8),
            "star_id": [f"s{i}" for i in range(8)],
            "snr_blue": SNR_BLUE + [50.0, 50.0],
            "snr_red": SNR_RED + [50.0, 50.0],
            "split": ["test"] * 6 + ["train"] * 2,
        },
        preprocessing=preprocessing or RRNET2022,
    )


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    return {
        "dataset": known_dataset(root / "known.h5"),
        "const": constant_model(root / "const", ["Teff[K]", "FeH"]),
        # Half a std higher: Teff 10 K, FeH 0.125 dex above the first.
        "shifted": constant_model(root / "shifted", ["Teff[K]", "FeH"], shift=0.5),
        "root": root,
    }


def test_dataset_metrics_csv_matches_hand_computation_for_two_models(known, run_cli, tmp_path):
    out = tmp_path / "report"
    code, stdout, stderr = run_cli(
        "evaluate",
        known["dataset"],
        "--model",
        known["const"],
        "--model",
        known["shifted"],
        "-o",
        out,
        "--quiet",
        "--no-plots",
    )
    assert code == 0, stderr
    assert stdout == ""
    assert not list(out.glob("*.png"))
    table = pd.read_csv(out / "metrics.csv")
    global EXPECTED
    saved, EXPECTED = EXPECTED, DS_EXPECTED
    try:
        check_against_hand(table[table["model"] == "const"].reset_index(drop=True), "const", "test")
    finally:
        EXPECTED = saved
    # The shifted model: Teff residuals 20 -20 60 20 -40 80, |r| summing to 240.
    shifted = table[(table["model"] == "shifted") & (table["snr_bin"] == "all")].set_index("label")
    assert shifted.loc["Teff[K]", "mae"] == pytest.approx(40.0)
    assert shifted.loc["Teff[K]", "bias"] == pytest.approx(20.0)
    assert shifted.loc["FeH", "bias"] == pytest.approx(-0.025 + 0.125)
    # The Markdown report shows it wide: one column per model, in the label's precision.
    index = (out / "index.md").read_text()
    assert "| label | const | shifted |" in index
    assert "| Teff (K) | 36.7 | 40.0 |" in index  # MAE
    assert "| Teff (K) | 10.0 | 20.0 |" in index  # bias
    assert "| label | const S/N 10-20 | const S/N 20-40 |" in index
    assert "const does not predict Logg: not evaluated." in index
    meta = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in meta["models"]] == ["const", "shifted"]
    assert meta["dataset"]["n_spectra"] == 6


def test_dataset_errors_exit_1(known, run_cli, tmp_path):
    ds, const = known["dataset"], known["const"]
    out = tmp_path / "r"
    code, _, err = run_cli("evaluate", ds, "--model", const, "--split", "valid", "-o", out)
    assert code == 1 and "the valid split is empty" in err
    code, _, err = run_cli("evaluate", ds, "--model", const, "--label", "Logg", "-o", out)
    assert code == 1 and "does not predict Logg" in err
    code, _, err = run_cli("evaluate", ds, "--model", const, "--label", "MgH", "-o", out)
    assert code == 1 and "no label MgH" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.yaml").write_text("name: [unclosed\n")
    code, _, err = run_cli("evaluate", ds, "--model", broken, "-o", out)
    assert code == 1 and "broken" in err
    # A manifest that reads but does not hold together (a group without labels).
    odd = tmp_path / "odd"
    shutil.copytree(const, odd)
    manifest = yaml.safe_load((odd / "model.yaml").read_text())
    del manifest["groups"][0]["labels"]
    (odd / "model.yaml").write_text(yaml.safe_dump(manifest))
    code, _, err = run_cli("evaluate", ds, "--model", odd, "-o", out)
    assert code == 1 and "cannot be loaded" in err
    code, _, err = run_cli("evaluate", ds, "--model", tmp_path / "absent" / "model", "-o", out)
    assert code == 1 and "no such model" in err
    not_h5 = tmp_path / "cat.csv"
    not_h5.write_text("obsid\n1\n")
    code, _, err = run_cli("evaluate", not_h5, "--model", const, "-o", out)
    assert code == 1 and "--reference" in err
    assert not out.exists()


def test_preprocessing_mismatch_exits_1(known, run_cli, tmp_path):
    from lamost_rrnet.spectra.preprocess import PreprocessSpec

    other = known_dataset(tmp_path / "deg4.h5", PreprocessSpec(name="deg4", poly_degree=4))
    code, _, err = run_cli("evaluate", other, "--model", known["const"], "-o", tmp_path / "r")
    assert code == 1
    assert "does not match model" in err and "poly_degree" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--saliency", "4000-4300"],
        ["--saliency", "4300:4000"],
        ["--match", "sky"],
        ["--split", "everything"],
        ["--batch-size", "0"],
        ["--saliency", "4000:4300", "--no-plots"],
    ],
)
def test_dataset_mode_invalid_options_exit_2(known, run_cli, tmp_path, extra):
    code, _, _ = run_cli(
        "evaluate", known["dataset"], "--model", known["const"], "-o", tmp_path / "r", *extra
    )
    assert code == 2


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """40 test spectra of 10 stars (4 spectra each) with Teff, log g and [Fe/H], and a tiny
    RRNet ensemble with random weights."""
    from lamost_rrnet.dataset import write_dataset

    root = tmp_path_factory.mktemp("realistic")
    rng = np.random.default_rng(2)
    n = 40
    labels = np.column_stack(
        [rng.uniform(4000, 6500, n), rng.uniform(1, 5, n), rng.normal(-0.3, 0.3, n)]
    )
    path = write_dataset(
        root / "real.h5",
        rng.normal(1.0, 0.05, (n, 7200)),
        labels,
        ["Teff[K]", "Logg", "FeH"],
        {
            "obsid": np.arange(n),
            "star_id": [f"s{i // 4}" for i in range(n)],
            "snr_blue": rng.uniform(5, 100, n),
            "snr_red": rng.uniform(5, 100, n),
            "split": ["test"] * n,
        },
    )
    ens = random_model(root / "tiny", ["Teff[K]", "Logg", "FeH"], seed=0, name="tiny")
    return {"dataset": path, "model": root / "tiny", "ensemble": ens}


def test_report_figures_and_html(realistic, run_cli, tmp_path):
    out = tmp_path / "report"
    code, stdout, stderr = run_cli(
        "evaluate",
        realistic["dataset"],
        "--model",
        realistic["model"],
        "-o",
        out,
        "--saliency",
        "4000:4400,7000:8000",
        "--batch-size",
        "16",
        "--html",
    )
    assert code == 0, stderr
    assert stdout == ""
    index = (out / "index.md").read_text()
    names = ["mae_comparison"] + [
        f"{kind}_tiny"
        for kind in ("residuals", "sigma_snr", "coverage", "z_teff", "z_logg", "z_feh", "kiel")
    ]
    names.append("saliency_tiny")
    for name in names:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert f"({name}.png)" in index
    assert "no real.h5 spectra with 7000 ≤ Teff < 8000 K" in index
    # Ten stars with four spectra each: σ_obs is reported.
    meta = json.loads((out / "metrics.json").read_text())
    assert {r["n_stars"] for r in meta["sigma_obs"] if r["snr_bin"] == "all"} == {10}
    assert "Repeat observations" in index
    page = (out / "index.html").read_text()
    assert '<img src="kiel_tiny.png"' in page and "<table>" in page


def test_saliency_matches_finite_differences(realistic):
    """∂μ/∂flux by autograd equals the ensemble's own predictions differenced pixel by pixel;
    a clipped pixel has zero gradient."""
    from lamost_rrnet.evaluate.saliency import saliency

    ens = realistic["ensemble"]
    rng = np.random.default_rng(3)
    flux = rng.normal(1.0, 0.05, (1, 7200)).astype(np.float32)
    flux[0, 100] = 3.0  # above the inference clip (2.5)
    grad = saliency(ens, flux, ["Logg", "Teff[K]"])
    assert grad.shape == (2, 7200)
    assert grad[:, 100].tolist() == [0.0, 0.0]
    pixels = np.argsort(-np.abs(grad[1]))[:5]  # where Teff responds most
    eps = 0.02
    bumped = np.repeat(flux, 2 * pixels.size, axis=0).astype(np.float64)
    for k, j in enumerate(pixels):
        bumped[2 * k, j] += eps
        bumped[2 * k + 1, j] -= eps
    mu, _ = ens.predict(bumped.astype(np.float32))
    numeric = (mu[0::2] - mu[1::2]) / (2 * eps)  # (pixels, labels in ens order)
    order = [ens.labels.index("Logg"), ens.labels.index("Teff[K]")]
    assert numeric[:, order].T == pytest.approx(grad[:, pixels], rel=0.05, abs=1e-3)


def test_dataset_is_evaluated_in_batches(realistic, tmp_path, monkeypatch):
    """The flux reaches the model batch by batch (bounded memory), and every spectrum once."""
    from lamost_rrnet.evaluate import evaluate_dataset

    ens = realistic["ensemble"]
    seen = []
    original = ens.predict

    def spy(flux, batch_size=256, **kwargs):
        seen.append(flux.shape[0])
        return original(flux, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(ens, "predict", spy)
    result = evaluate_dataset(
        realistic["dataset"], [ens], out_dir=tmp_path, batch_size=16, figures=False, progress=False
    )
    assert seen == [16, 16, 8]
    assert set(result.metrics["model"]) == {"tiny"}
    assert result.metrics.query("snr_bin == 'all'")["n"].tolist() == [40, 40, 40]
