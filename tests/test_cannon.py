"""The quadratic Cannon baseline: its design, the per-pixel fit with ivar and scatter, the test
step and its σ, ``train --arch cannon`` and its model directory through predict and evaluate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lamost_rrnet.dataset import write_dataset
from lamost_rrnet.ensemble import Ensemble
from lamost_rrnet.models import create_model
from lamost_rrnet.models.cannon import Cannon
from lamost_rrnet.training.cannon import fit_cannon, train_cannon

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L = 3
P = 240  # two arms of 120 pixels


def hand_model(n_pixels: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A known quadratic model written out term by term: constant c (P,), linear a (P, L) and
    quadratic b[i][j] (P,) for i ≤ j."""
    rng = np.random.default_rng(seed)
    c = 1.0 + rng.normal(0, 0.05, n_pixels)
    a = rng.normal(0, 0.03, (n_pixels, L))
    b = rng.normal(0, 0.01, (n_pixels, L, L))
    return c, a, np.triu(b)


def hand_flux(model, labels: np.ndarray) -> np.ndarray:
    c, a, b = model
    flux = np.tile(c, (len(labels), 1))
    for i in range(L):
        flux += labels[:, [i]] * a[:, i]
        for j in range(i, L):
            flux += labels[:, [i]] * labels[:, [j]] * b[:, i, j]
    return flux


def cannon(fit) -> Cannon:
    return Cannon(L, arms=(P // 2, P // 2)).set_fit(fit.theta, fit.scatter2)


def run(member: Cannon, flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        mu, var = member(torch.from_numpy(np.asarray(flux, np.float64)))
    return mu.numpy(), var.numpy()


def test_recovers_a_known_quadratic_model_and_the_labels_of_its_noiseless_spectra():
    model = hand_model(P, seed=1)
    rng = np.random.default_rng(2)
    train = rng.uniform(-2, 2, (200, L))
    flux = hand_flux(model, train)
    fit = fit_cannon(flux, np.full_like(flux, 1e4), train)
    c, a, b = model
    i, j = np.triu_indices(L)
    expected = np.hstack([c[:, None], a, b[:, i, j]])
    np.testing.assert_allclose(fit.theta, expected, atol=1e-5)
    test = rng.uniform(-1.8, 1.8, (30, L))
    mu, var = run(cannon(fit), hand_flux(model, test))
    np.testing.assert_allclose(mu, test, atol=1e-4)
    assert (var >= 0).all() and np.isfinite(var).all()


def test_pixels_of_zero_ivar_are_ignored_in_training_and_at_test():
    model = hand_model(P, seed=3)
    rng = np.random.default_rng(4)
    train = rng.uniform(-2, 2, (200, L))
    flux = hand_flux(model, train) + rng.normal(0, 1e-3, (200, P))
    ivar = np.full_like(flux, 1e6)
    # A bad-pixel region: wrong flux in a third of the spectra, flagged with ivar 0.
    bad = np.zeros_like(flux, bool)
    bad[::3, 20:60] = True
    flux[bad] = 3.0
    ivar[bad] = 0.0
    dead = 100  # no spectrum has a usable value here
    ivar[:, dead] = 0.0
    weighted = fit_cannon(flux, ivar, train)
    unweighted = fit_cannon(flux, np.full_like(flux, 1e6), train)
    truth = fit_cannon(hand_flux(model, train), np.full_like(flux, 1e6), train).theta
    region = slice(20, 60)
    assert np.abs(weighted.theta[region] - truth[region]).max() < 0.01
    assert np.abs(unweighted.theta[region] - truth[region]).max() > 0.1
    assert weighted.scatter2[dead] == np.inf and not weighted.theta[dead].any()
    # At test time, a NaN pixel has no weight either, and an all-NaN spectrum gets NaN.
    test = rng.uniform(-1.5, 1.5, (10, L))
    spectra = hand_flux(model, test)
    spectra[:, 150:170] = np.nan
    spectra[-1] = np.nan
    mu, var = run(cannon(weighted), spectra)
    np.testing.assert_allclose(mu[:-1], test[:-1], atol=0.01)
    assert np.isnan(mu[-1]).all() and np.isnan(var[-1]).all()


def test_a_known_ivar_at_test_weights_the_pixels_as_the_cannon_does():
    model = hand_model(P, seed=12)
    rng = np.random.default_rng(13)
    train = rng.uniform(-2, 2, (200, L))
    member = cannon(fit_cannon(hand_flux(model, train), np.full((200, P), 1e6), train))
    test = rng.uniform(-1.5, 1.5, (20, L))
    spectra = hand_flux(model, test) + rng.normal(0, 0.01, (20, P))
    spectra[:, 30:60] += 0.5  # a bad region, flagged by ivar 0
    ivar = np.full_like(spectra, 0.01**-2)
    ivar[:, 30:60] = 0.0
    with torch.no_grad():
        mu, var = member.fit_labels(torch.from_numpy(spectra), torch.from_numpy(ivar))
    blind, _ = run(member, spectra)
    flagged, unflagged = np.abs(mu.numpy() - test).mean(), np.abs(blind - test).mean()
    assert flagged < 0.03 and unflagged > 3 * flagged, (flagged, unflagged)
    z = (mu.numpy() - test) / np.sqrt(var.numpy())
    assert 0.6 < z.std() < 1.5


def test_intrinsic_scatter_is_fitted_per_pixel():
    model = hand_model(P, seed=5)
    rng = np.random.default_rng(6)
    train = rng.uniform(-2, 2, (1500, L))
    noise = 0.01
    flux = hand_flux(model, train) + rng.normal(0, noise, (1500, P))
    flux[:, :40] += rng.normal(0, 0.02, (1500, 40))  # model scatter s = 0.02 in 40 pixels
    fit = fit_cannon(flux, np.full_like(flux, noise**-2), train)
    np.testing.assert_allclose(np.median(fit.scatter2[:40]), 0.02**2, rtol=0.15)
    assert np.median(fit.scatter2[40:]) < 0.1 * 0.02**2


def test_sigma_follows_the_noise_and_is_calibrated_without_ivar_at_test():
    model = hand_model(P, seed=7)
    rng = np.random.default_rng(8)
    train = rng.uniform(-2, 2, (400, L))
    flux = hand_flux(model, train) + rng.normal(0, 0.002, (400, P))
    member = cannon(fit_cannon(flux, np.full_like(flux, 0.002**-2), train))
    test = rng.uniform(-1.5, 1.5, (300, L))
    sigmas, z_std = [], []
    for noise in (0.004, 0.016):
        mu, var = run(member, hand_flux(model, test) + rng.normal(0, noise, (300, P)))
        sigmas.append(np.sqrt(var).mean())
        z_std.append(((mu - test) / np.sqrt(var)).std(axis=0))
    assert 3.0 < sigmas[1] / sigmas[0] < 5.0  # σ ∝ noise (4×)
    assert np.all((np.array(z_std) > 0.8) & (np.array(z_std) < 1.25)), z_std


def test_gradient_with_respect_to_the_flux_is_the_implicit_one():
    model = hand_model(P, seed=9)
    rng = np.random.default_rng(10)
    train = rng.uniform(-2, 2, (200, L))
    member = cannon(fit_cannon(hand_flux(model, train), np.full((200, P), 1e4), train))
    spectrum = hand_flux(model, rng.uniform(-1, 1, (1, L))) + rng.normal(0, 0.01, (1, P))
    x = torch.from_numpy(spectrum).requires_grad_(True)
    mu, _ = member(x)
    (grad,) = torch.autograd.grad(mu[0, 0], x)
    for pixel in (5, 130):
        step = np.zeros_like(spectrum)
        step[0, pixel] = 1e-4
        numeric = (run(member, spectrum + step)[0] - run(member, spectrum - step)[0])[0, 0] / 2e-4
        assert grad[0, pixel].item() == pytest.approx(numeric, rel=0.05, abs=1e-3)


# -- train --arch cannon: the model directory, predict and evaluate ---------------------------

SP = ["Teff[K]", "Logg", "FeH"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from lamost_rrnet.simulate import draw_labels, simulate_normalized

    rng = np.random.default_rng(11)
    labels = draw_labels(60, rng)
    snr = rng.uniform(40, 150, 60)
    flux = simulate_normalized(labels, snr, rng)
    names = [c for c in labels.columns if c != "star_id"]
    meta = {"star_id": labels["star_id"].to_numpy(), "snr_blue": snr, "snr_red": snr}
    path = tmp_path_factory.mktemp("data") / "sim.h5"
    return write_dataset(path, flux, labels[names].to_numpy(np.float32), names, meta)


@pytest.fixture(scope="module")
def groups_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("groups") / "groups.yaml"
    path.write_text(yaml.safe_dump({"SP": SP}))
    return path


@pytest.fixture(scope="module")
def cannon_dir(tmp_path_factory, dataset, groups_file):
    from lamost_rrnet.cli.app import main

    out = tmp_path_factory.mktemp("models") / "cannon_model"
    args = ["--quiet", "train", dataset, "-o", out, "--arch", "cannon", "--groups", groups_file]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code in (0, None)
    return out


def test_train_arch_cannon_writes_a_model_directory_that_loads(cannon_dir, dataset):
    from lamost_rrnet.dataset import open_dataset

    ensemble = Ensemble.load(cannon_dir, device="cpu")
    assert ensemble.architecture == {"name": "cannon", "kwargs": {"arms": [3600, 3600]}}
    assert [(g.name, g.labels, len(g.members)) for g in ensemble.groups] == [("SP", SP, 1)]
    with open_dataset(dataset) as ds:
        test = ds.indices("test")
        mu, sigma = ensemble.predict(ds.flux(test))
        true = ds.labels(test, SP)
    assert np.isfinite(mu).all() and (sigma > 0).all()
    # 42 training spectra of 3 labels: a crude model, but far better than the label spread.
    assert (np.abs(mu - true).mean(axis=0) < 0.5 * true.std(axis=0)).all()
    # Calibrated on the valid split like the networks: scales there make std z = 1.
    assert ensemble.sigma_kind == "calibrated" and "+cal." in ensemble.version
    with open_dataset(dataset) as ds:
        valid = ds.indices("valid")
        mu, sigma = ensemble.predict(ds.flux(valid))
        z = (mu - ds.labels(valid, SP)) / sigma
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-3)


def test_predict_cli_reads_the_cannon_model(cannon_dir, tmp_path, run_cli):
    from astropy.table import Table

    from lamost_rrnet.simulate import simulate_set

    simulate_set(tmp_path / "sim", 2, visits=1, snr=(60, 80), seed=3)
    out = tmp_path / "cat.csv"
    code, _, err = run_cli(
        "predict", tmp_path / "sim" / "spectra", "--model", cannon_dir, "-o", out
    )
    assert code == 0, err
    table = Table.read(out)
    assert len(table) == 2
    for label in ("Teff[K]", "Logg", "FeH"):
        assert np.isfinite(table[label]).all() and (table[f"{label}_err"] > 0).all()


def test_evaluate_shows_rrnet_and_the_cannon_side_by_side(
    cannon_dir, dataset, groups_file, tmp_path, run_cli
):
    from lamost_rrnet.training import train_ensemble

    rrnet = tmp_path / "rrnet_model"
    train_ensemble(
        dataset,
        rrnet,
        members=1,
        epochs=1,
        batch_size=8,
        groups=str(groups_file),
        arch_kwargs={"Nr": [2, 2, 2]},
        progress=False,
    )
    report = tmp_path / "report"
    code, _, err = run_cli(
        "evaluate", dataset, "--model", rrnet, "--model", cannon_dir, "-o", report, "--no-plots"
    )
    assert code == 0, err
    metrics = pd.read_csv(report / "metrics.csv")
    overall = metrics[(metrics["snr_bin"] == "all")]
    assert set(overall["model"]) == {"rrnet_model", "cannon_model"}
    assert set(overall["label"]) == set(SP)
    # The report's tables put the two models in adjacent columns, one row per label.
    text = (report / "index.md").read_text()
    mae_table = text.split("*MAE*")[1]
    assert "| label | rrnet_model | cannon_model |" in mae_table.splitlines()[2]


def test_default_groups_fit_every_label_in_one_cannon(dataset, tmp_path):
    ensemble = train_cannon(dataset, tmp_path / "all", progress=False)
    from lamost_rrnet.dataset import open_dataset

    with open_dataset(dataset) as ds:
        assert [(g.name, g.labels) for g in ensemble.groups] == [("ALL", ds.label_names)]
    member = ensemble.groups[0].members[0]
    assert member.theta.shape == (7200, 1 + 18 + 18 * 19 // 2)


@pytest.mark.parametrize(
    "extra",
    [["--members", "2"], ["--epochs", "3"], ["--members", "6", "--epochs", "30"], ["--lr", "1e-3"]],
)
def test_training_options_with_arch_cannon_are_a_usage_error(extra, dataset, tmp_path, run_cli):
    code, _, err = run_cli("train", dataset, "-o", tmp_path / "m", "--arch", "cannon", *extra)
    assert code == 2 and extra[0] in err
    assert not (tmp_path / "m").exists()


def test_training_options_from_the_environment_count_as_given(
    dataset, tmp_path, run_cli, monkeypatch
):
    monkeypatch.setenv("LAMOST_RRNET_TRAIN_EPOCHS", "5")
    code, _, err = run_cli("train", dataset, "-o", tmp_path / "m", "--arch", "cannon")
    assert code == 2 and "--epochs" in err


def test_create_model_builds_an_unfitted_cannon():
    member = create_model("cannon", 4, arms=[10, 20])
    assert member.theta.shape == (30, 15) and member.scatter2.shape == (30,)
    with pytest.raises(ValueError, match="arms"):
        create_model("cannon", 4, arms=[0])


def test_train_ensemble_refuses_the_cannon(dataset, tmp_path):
    from lamost_rrnet.training import train_ensemble

    with pytest.raises(ValueError, match="fitted, not trained"):
        train_ensemble(dataset, tmp_path / "m", arch="cannon", progress=False)
