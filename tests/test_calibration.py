"""Calibrated uncertainties: the scales, the model directory's ``calibration`` field, predict's
calibrated and raw σ, resume, ``lamost-rrnet calibrate`` and the report's before/after."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits

from lamost_rrnet.calibrate import calibrate
from lamost_rrnet.calibration import Calibration, fit_sigma_scales
from lamost_rrnet.catalogue import journal_dir
from lamost_rrnet.dataset import open_dataset, write_dataset
from lamost_rrnet.ensemble import Ensemble
from lamost_rrnet.predict import predict_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GROUPS = {"SP": ["Teff[K]", "Logg", "FeH"], "CA": ["MgH"]}
LABELS = [label for labels in GROUPS.values() for label in labels]
MEAN = {"Teff[K]": 5000.0, "Logg": 3.0, "FeH": -0.2, "MgH": 0.0}
STD = {"Teff[K]": 500.0, "Logg": 1.0, "FeH": 0.3, "MgH": 0.2}


def tiny(seed: int = 0) -> Ensemble:
    """Two groups of two tiny RRNets with random weights, uncalibrated."""
    import torch

    from lamost_rrnet.ensemble import LabelGroup, Normalization
    from lamost_rrnet.models import create_model

    torch.manual_seed(seed)
    groups = [
        LabelGroup(g, labels, [create_model("rrnet", len(labels), Nr=[2, 2, 2]) for _ in "ab"])
        for g, labels in GROUPS.items()
    ]
    norm = Normalization(
        np.ones(7200),
        np.full(7200, 0.05),
        LABELS,
        [MEAN[n] for n in LABELS],
        [STD[n] for n in LABELS],
    )
    ranges = {n: (MEAN[n] - 100 * STD[n], MEAN[n] + 100 * STD[n]) for n in LABELS}
    return Ensemble(
        "tiny",
        "1",
        {"name": "rrnet", "kwargs": {"Nr": [2, 2, 2]}},
        groups,
        norm,
        label_ranges=ranges,
    )


def a_calibration(scales=(2.0, 0.5, 1.25, 3.0)) -> Calibration:
    return Calibration(
        dict(zip(LABELS, scales, strict=True)), "valid", 12, "set.h5", dict.fromkeys(LABELS, 12)
    )


def flux(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 0.05, (n, 7200)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 valid and 20 test spectra with Teff, log g, [Fe/H] (5 valid rows NaN) and CH: the
    model's MgH is missing, the dataset's CH is not predicted."""
    rng = np.random.default_rng(7)
    n = 60
    names = ["Teff[K]", "Logg", "FeH", "CH"]
    labels = rng.normal(
        [MEAN[k] for k in names[:3]] + [0.0], [STD[k] for k in names[:3]] + [0.1], (n, 4)
    )
    labels[:5, 2] = np.nan
    snr = rng.uniform(20, 150, n)
    return write_dataset(
        tmp_path_factory.mktemp("calib") / "set.h5",
        flux(n, 2),
        labels,
        names,
        {"snr_blue": snr, "snr_red": snr, "split": ["valid"] * 40 + ["test"] * 20},
    )


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, dataset):
    """The uncalibrated tiny model, and the same model calibrated on the dataset's valid split."""
    root = tmp_path_factory.mktemp("models")
    plain = tiny()
    plain.save(root / "plain")
    calibrate(plain, dataset).save(root / "calibrated")
    return root / "plain", root / "calibrated"


# -- the scales -----------------------------------------------------------------------------


def test_scales_make_the_std_of_z_one_and_ignore_missing_values():
    rng = np.random.default_rng(0)
    n = 4000
    true = rng.normal(size=(n, 3))
    mu = true + rng.normal(size=(n, 3)) * [0.5, 2.0, 1.0]
    # σ 5× too small, 2.5× too large and about right, with spectrum-to-spectrum variation.
    sigma = np.array([0.1, 5.0, 1.0]) * rng.uniform(0.8, 1.2, (n, 3))
    true[:100, 0] = np.nan  # a missing label
    sigma[100:150, 1] = np.nan  # a missing σ
    sigma[150:160, 1] = 0.0
    mu[160:170, 2] = np.inf
    scales = fit_sigma_scales(mu, sigma, true)
    for j in range(3):
        ok = np.isfinite(true[:, j]) & np.isfinite(mu[:, j]) & (sigma[:, j] > 0)
        z = (mu[ok, j] - true[ok, j]) / (scales[j] * sigma[ok, j])
        assert np.std(z) == pytest.approx(1.0, abs=1e-12)
        # The missing rows are left out, not counted: the same as fitting only the good rows.
        assert fit_sigma_scales(mu[ok, j : j + 1], sigma[ok, j : j + 1], true[ok, j : j + 1])[
            0
        ] == pytest.approx(scales[j], rel=1e-12)
    assert scales == pytest.approx([5.0, 0.4, 1.0], rel=0.05)


def test_a_label_without_two_usable_rows_keeps_scale_one():
    true = np.array([[1.0, np.nan], [2.0, 3.0], [4.0, np.nan]])
    mu = true + [[0.5, 0.0], [-0.5, 1.0], [0.25, 0.0]]
    scales = fit_sigma_scales(mu, np.full((3, 2), 0.1), true)
    assert scales[0] != 1.0 and scales[1] == 1.0


# -- the model directory --------------------------------------------------------------------


def test_calibration_round_trips_through_model_yaml(tmp_path):
    plain = tiny()
    cal = a_calibration()
    calibrated = plain.with_calibration(cal)
    assert plain.calibration is None and plain.version == "1"  # the original is left alone
    assert calibrated.version == f"1+cal.{cal.digest()}"
    calibrated.save(tmp_path / "m")
    manifest = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    assert manifest["format_version"] == 2
    assert manifest["version"] == calibrated.version
    assert manifest["calibration"] == {
        "split": "valid",
        "n_spectra": 12,
        "dataset": "set.h5",
        "scales": {"Teff[K]": 2.0, "Logg": 0.5, "FeH": 1.25, "MgH": 3.0},
        "n": dict.fromkeys(LABELS, 12),
    }
    loaded = Ensemble.load(tmp_path / "m", device="cpu")
    assert loaded.calibration == cal and loaded.version == calibrated.version
    mu, sigma = loaded.predict(flux(5))
    mu_raw, raw = loaded.predict(flux(5), raw_sigma=True)
    assert np.array_equal(mu, mu_raw)
    assert np.array_equal(sigma, raw * [2.0, 0.5, 1.25, 3.0])
    # The version follows the scales: other scales written by hand are another model.
    manifest["calibration"]["scales"]["Logg"] = 0.75
    (tmp_path / "m" / "model.yaml").write_text(yaml.safe_dump(manifest))
    edited = Ensemble.load(tmp_path / "m", device="cpu")
    assert edited.version.startswith("1+cal.") and edited.version != calibrated.version


def test_model_directory_without_calibration_loads_uncalibrated(tmp_path):
    tiny().save(tmp_path / "old")
    path = tmp_path / "old" / "model.yaml"
    manifest = yaml.safe_load(path.read_text())
    assert "calibration" not in manifest
    manifest["format_version"] = 1  # as written before calibration existed
    path.write_text(yaml.safe_dump(manifest))
    old = Ensemble.load(tmp_path / "old", device="cpu")
    assert old.calibration is None and old.version == "1" and old.sigma_kind == "raw"
    assert old.sigma_scales.tolist() == [1.0] * 4
    assert np.array_equal(old.predict(flux(3))[1], old.predict(flux(3), raw_sigma=True)[1])


def test_calibrate_fits_the_split_so_that_z_has_unit_std(dataset):
    plain = tiny()
    model = calibrate(plain, dataset, "valid", batch_size=16)
    assert plain.calibration is None
    cal = model.calibration
    assert (cal.split, cal.n_spectra) == ("valid", 40)
    assert cal.n == {"Teff[K]": 40, "Logg": 40, "FeH": 35, "MgH": 0}
    assert cal.scales["MgH"] == 1.0  # the dataset has no MgH
    with open_dataset(dataset) as ds:
        idx = ds.indices("valid")
        true = ds.labels(idx, ["Teff[K]", "Logg", "FeH"]).astype(np.float64)
        mu, sigma = model.predict(ds.flux(idx))
        _, raw = model.predict(ds.flux(idx), raw_sigma=True)
    for j, label in enumerate(["Teff[K]", "Logg", "FeH"]):
        ok = np.isfinite(true[:, j])
        z_raw = (mu[ok, j] - true[ok, j]) / raw[ok, j]
        z = (mu[ok, j] - true[ok, j]) / sigma[ok, j]
        assert np.std(z) == pytest.approx(1.0, rel=1e-9), label
        assert np.std(z_raw) == pytest.approx(cal.scales[label], rel=1e-9)
        assert abs(np.std(z_raw) - 1.0) > 0.05  # random weights: far from calibrated before
    # A calibrated model is calibrated afresh from its raw σ, not on top of its scales.
    again = calibrate(model, dataset, "valid", batch_size=16)
    assert again.calibration.scales == pytest.approx(cal.scales, rel=1e-12)
    assert again.version == model.version


# -- predict ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spectra(tmp_path_factory):
    from synth_inputs import write_spectrum

    root = tmp_path_factory.mktemp("spectra")
    rng = np.random.default_rng(3)
    for i in range(3):
        write_spectrum(root / f"s-{i}.fits", 200 + i, 10.0 + i, 30.0, rng, snr=40.0 + 30 * i)
    (root / "rv.csv").write_text("obsid,rv\n200,0.0\n201,0.0\n202,0.0\n")
    return root


def read_fits(path):
    with fits.open(path) as hdul:
        return dict(hdul[0].header), hdul[1].data.copy()


def test_predict_raw_sigma_differs_by_the_scales_and_the_header_says_which(
    run_cli, model_dirs, spectra, tmp_path
):
    _, calibrated_dir = model_dirs
    model = Ensemble.load(calibrated_dir, device="cpu")
    common = [spectra, "--catalogue", spectra / "rv.csv", "--model", calibrated_dir]
    common += ["--workers", "0", "--quiet"]
    assert run_cli("predict", *common, "-o", tmp_path / "cal.fits")[0] == 0
    assert run_cli("predict", *common, "-o", tmp_path / "raw.fits", "--raw-sigma")[0] == 0
    header, cal = read_fits(tmp_path / "cal.fits")
    raw_header, raw = read_fits(tmp_path / "raw.fits")
    assert (header["SIGMA"], raw_header["SIGMA"]) == ("calibrated", "raw")
    assert header["MODELVER"] == raw_header["MODELVER"] == model.version
    for label, scale in zip(model.labels, model.sigma_scales, strict=True):
        assert np.array_equal(cal[label], raw[label])
        expected = (raw[f"{label}_err"].astype(np.float64) * scale).astype(np.float32)
        np.testing.assert_allclose(cal[f"{label}_err"], expected, rtol=2e-7)
    assert set(cal["model"]) == {f"tiny@{model.version}"}


def test_high_sigma_flag_uses_the_sigma_that_is_written(spectra):
    # Teff σ scaled 10⁴×: far above the label's std (the flag's limit); the raw σ is not.
    model = tiny().with_calibration(a_calibration((1e4, 1.0, 1.0, 1.0)))
    kw = {"model": model, "catalogue": spectra / "rv.csv", "workers": 0}
    calibrated = predict_files([spectra], **kw)
    raw = predict_files([spectra], raw_sigma=True, **kw)
    assert set(calibrated["status"]) == {"high_sigma"} and set(calibrated["flag"]) == {0}
    assert "high_sigma" not in set(raw["status"])
    assert calibrated.meta["SIGMA"] == "calibrated" and raw.meta["SIGMA"] == "raw"
    # A model without calibration writes its ensemble σ, and says so.
    assert predict_files([spectra], **{**kw, "model": tiny()}).meta["SIGMA"] == "raw"


def test_resume_refuses_to_mix_calibrated_and_uncalibrated_outputs(
    run_cli, model_dirs, spectra, tmp_path, monkeypatch
):
    plain_dir, calibrated_dir = model_dirs
    out = tmp_path / "cat.parquet"
    args = [spectra / "s-0.fits", "--catalogue", spectra / "rv.csv", "--workers", "0", "-o", out]
    # A finished output of the uncalibrated model is not continued with the calibrated one.
    assert run_cli("predict", *args, "--model", plain_dir, "--quiet")[0] == 0
    before = out.read_bytes()
    code, _, err = run_cli("predict", *args, "--model", calibrated_dir, "--resume")
    assert code == 1 and "made with another model ('tiny@1'" in err
    assert out.read_bytes() == before and not journal_dir(out).exists()
    # An unfinished run of the calibrated model (killed before assembling its journal) is not
    # continued with the raw σ, nor with the uncalibrated model.
    from lamost_rrnet.catalogue import Journal

    def killed(self, output, header):
        raise KeyboardInterrupt

    monkeypatch.setattr(Journal, "assemble", killed)
    with pytest.raises(KeyboardInterrupt):
        predict_files(
            [spectra / "s-0.fits"],
            model=calibrated_dir,
            catalogue=spectra / "rv.csv",
            output=tmp_path / "new.parquet",
            workers=0,
        )
    monkeypatch.undo()
    assert journal_dir(tmp_path / "new.parquet").is_dir()
    new = [spectra, "--catalogue", spectra / "rv.csv", "--workers", "0", "--resume"]
    new += ["-o", tmp_path / "new.parquet"]
    code, _, err = run_cli("predict", *new, "--model", calibrated_dir, "--raw-sigma")
    assert code == 1 and "another sigma" in err
    code, _, err = run_cli("predict", *new, "--model", plain_dir)
    assert code == 1 and "another model" in err
    code, _, err = run_cli("predict", *new, "--model", calibrated_dir, "--quiet")
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "new.parquet")
    assert len(table) == 3 and set(table["model"]) == {table["model"][0]} != {"tiny@1"}


# -- lamost-rrnet calibrate -------------------------------------------------------------------


def test_calibrate_command_writes_a_calibrated_copy(run_cli, model_dirs, dataset, tmp_path):
    plain_dir, calibrated_dir = model_dirs
    out = tmp_path / "models" / "mine"
    code, stdout, stderr = run_cli("calibrate", plain_dir, dataset, "-o", out)
    assert code == 0, stderr
    assert stdout == ""
    assert "Teff[K]: " in stderr and "MgH: 1 (no labels)" in stderr
    model = Ensemble.load(out, device="cpu")
    expected = Ensemble.load(calibrated_dir, device="cpu")
    assert model.version == expected.version != "1"
    assert model.calibration.scales == pytest.approx(expected.calibration.scales, rel=1e-12)
    assert sorted(p.name for p in out.iterdir()) == [
        "CA0.safetensors",
        "CA1.safetensors",
        "SP0.safetensors",
        "SP1.safetensors",
        "model.yaml",
        "normalization.npz",
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["mine"]  # no temporary left
    code, _, err = run_cli("calibrate", plain_dir, dataset, "-o", out)
    assert code == 1 and "already exists" in err and "--overwrite" in err
    code, _, err = run_cli("calibrate", plain_dir, dataset, "-o", out, "--split", "test")
    assert code == 1
    assert (
        run_cli("calibrate", plain_dir, dataset, "-o", out, "--split", "test", "--overwrite")[0]
        == 0
    )
    refit = Ensemble.load(out, device="cpu").calibration
    assert (refit.split, refit.n_spectra) == ("test", 20)


def test_calibrate_command_errors(run_cli, model_dirs, dataset, tmp_path):
    plain_dir, _ = model_dirs
    out = tmp_path / "out"
    assert run_cli("calibrate", plain_dir, dataset, "-o", out, "--split", "everything")[0] == 2
    assert run_cli("calibrate", plain_dir, tmp_path / "absent.h5", "-o", out)[0] == 2
    code, _, err = run_cli("calibrate", plain_dir, dataset, "-o", out, "--split", "train")
    assert code == 1 and "the train split is empty" in err
    other = write_dataset(
        tmp_path / "other.h5",
        flux(4),
        np.zeros((4, 1)),
        ["CH"],
        {"snr_blue": [50.0] * 4, "snr_red": [50.0] * 4, "split": ["valid"] * 4},
    )
    code, _, err = run_cli("calibrate", plain_dir, other, "-o", out)
    assert code == 1 and "nothing to calibrate" in err
    assert not out.exists()


# -- the report -------------------------------------------------------------------------------


def test_report_shows_calibration_before_and_after(run_cli, model_dirs, dataset, tmp_path):
    plain_dir, calibrated_dir = model_dirs
    out = tmp_path / "report"
    code, _, stderr = run_cli(
        "evaluate",
        dataset,
        "--split",
        "valid",
        "--model",
        plain_dir,
        "--model",
        calibrated_dir,
        "-o",
        out,
        "--no-plots",
        "--quiet",
    )
    assert code == 0, stderr
    metrics = pd.read_csv(out / "metrics.csv")
    every = metrics[metrics["snr_bin"] == "all"].set_index(["model", "label"])
    scales = Ensemble.load(calibrated_dir, device="cpu").calibration.scales
    for label in ("Teff[K]", "Logg", "FeH"):
        # On the split the scales were fitted on: z_std is 1 after, the scale before.
        assert every.loc[("calibrated", label), "z_std"] == pytest.approx(1.0, rel=1e-6)
        assert every.loc[("calibrated", label), "z_std_raw"] == pytest.approx(scales[label], 1e-6)
        # Uncalibrated: before = after.
        plain = every.loc[("plain", label)]
        assert plain["z_std_raw"] == plain["z_std"]
        assert plain["frac_1sigma_raw"] == plain["frac_1sigma"]
        assert every.loc[("calibrated", label), "mae"] == plain["mae"]
    index = (out / "index.md").read_text()
    assert "### Calibration before and after" in index
    assert "plain: not calibrated" in index
    assert "calibrated: scales fitted on the valid split of" in index
    row = next(
        line for line in index.splitlines() if line.startswith("| Teff |") and "1.000" in line
    )
    teff = scales["Teff[K]"]
    assert f"| {teff:.3f} | {teff:.2f} | 1.00 |" in row
