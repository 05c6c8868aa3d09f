"""The training recipes: noise from each spectrum's ivar, augmentation, micro-batches, early
stopping, and ``--recipe`` on the command line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lamost_rrnet.dataset import write_dataset
from lamost_rrnet.ensemble import Normalization
from lamost_rrnet.spectra.preprocess import C_KMS, RRNET2022
from lamost_rrnet.training.augment import BatchAugmenter, PixelNoise, pixel_sigma
from lamost_rrnet.training.data import load_training_data
from lamost_rrnet.training.groups import GroupSpec
from lamost_rrnet.training.members import RECIPES, Recipe, Shard
from test_training import (
    TINY,
    checkpointed_params,
    script_validation_losses,
    simulated,
    tiny_run,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
P = RRNET2022.n_pixels


def _identity_norm() -> Normalization:
    return Normalization(np.ones(P), np.ones(P), ["a"], np.zeros(1), np.ones(1))


@pytest.fixture(scope="module")
def sim_with_ivar(tmp_path_factory):
    flux, labels, names, meta = simulated(40, seed=4)
    rng = np.random.default_rng(0)
    ivar = rng.uniform(100, 10000, flux.shape).astype(np.float32)
    ivar[:, :50] = 0.0
    path = tmp_path_factory.mktemp("d") / "ivar.h5"
    write_dataset(path, flux, labels, names, meta, ivar=ivar)
    return path, ivar, meta


def test_training_noise_comes_from_the_datasets_ivar(sim_with_ivar):
    path, ivar, _ = sim_with_ivar
    data = load_training_data(path, [GroupSpec("G", ("Teff[K]",))], 4, with_noise=True)
    from lamost_rrnet.dataset import open_dataset

    with open_dataset(path) as ds:
        train = ds.indices("train")
    std = data.normalization.flux_std
    want = 1 / np.sqrt(ivar[train, 60]) / std[60]
    np.testing.assert_allclose(data.noise.sigma[:, 60].astype(np.float64), want, rtol=2e-3)
    # Pixels without information get the spectrum's median σ.
    median = np.median(1 / np.sqrt(ivar[train, 50:]), axis=1)
    np.testing.assert_allclose(data.noise.sigma[:, 0] * std[0], median, rtol=2e-3)
    assert data.noise.low_snr == pytest.approx(np.quantile(data.noise.snr, 0.05))


def test_ivar_noise_follows_each_pixels_sigma_and_degrades_to_lower_snr():
    sigma = np.full((2, P), 0.01)
    sigma[:, P // 2 :] = 0.02
    z, snr = pixel_sigma(1 / sigma**2, np.ones(P))
    # Row 0 sits at the low S/N already: it gets no noise; row 1 has 4 times that S/N.
    noise = PixelNoise(z, snr * np.array([1.0, 4.0], np.float32), float(snr[0]))
    recipe = Recipe(noise="ivar", noise_prob=1.0, noise_from_epoch=1)
    augment = BatchAugmenter(recipe, _identity_norm(), RRNET2022, noise)
    g = torch.Generator().manual_seed(0)
    rows = np.array([0] * 200 + [1] * 200)
    added = augment(torch.ones(400, P), rows, 1, g) - 1
    assert torch.all(added[:200] == 0)
    per_row = added[200:]
    ratio = per_row[:, P // 2 :].std(dim=1) / per_row[:, : P // 2].std(dim=1)
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0), rtol=0.08, atol=0)
    # Target S/N log-uniform in [S/N/4, S/N]: added σ from 0 to sqrt(15)·σ.
    scale = per_row[:, : P // 2].std(dim=1) / 0.01
    assert scale.min() < 0.5 and 3.0 < scale.max() < 15**0.5 * 1.05
    assert augment(torch.ones(3, P), rows[:3], 1, g).shape == (3, P)


def test_paper_noise_ignores_the_spectrums_noise():
    recipe = RECIPES["paper"]
    augment = BatchAugmenter(recipe, _identity_norm(), RRNET2022, None)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(torch.ones(2, P), np.arange(2), 5, g), torch.ones(2, P))
    added = augment(torch.ones(2, P), np.arange(2), 6, g) - 1
    assert (added != 0).float().mean() == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="inverse variance"):
        BatchAugmenter(RECIPES["default"], _identity_norm(), RRNET2022, None)


def test_rv_shift_moves_a_line_by_its_doppler_shift_and_tilt_is_linear():
    wave = RRNET2022.wavelength()
    line = (1 - 0.5 * np.exp(-0.5 * ((wave - 5100.0) / 0.3) ** 2)).astype(np.float32)
    x = torch.from_numpy(line).repeat(64, 1)
    recipe = Recipe(rv_shift=10.0, noise_prob=0.0)
    augment = BatchAugmenter(recipe, _identity_norm(), RRNET2022, None)
    g = torch.Generator().manual_seed(1)
    out = augment(x, np.arange(64), 1, g).numpy()
    v = torch.randn(64, 1, generator=torch.Generator().manual_seed(1)).numpy()[:, 0] * 10.0
    blue = slice(0, 3600)
    depth = 1 - out[:, blue]
    centre = (depth * wave[blue]).sum(axis=1) / depth.sum(axis=1)
    np.testing.assert_allclose(centre - 5100.0, 5100.0 * v / C_KMS, atol=2e-3)

    tilt = BatchAugmenter(Recipe(tilt=0.1, noise_prob=0.0), _identity_norm(), RRNET2022, None)
    ratio = tilt(torch.ones(4, P), np.arange(4), 1, g).numpy()
    for arm in (slice(0, 3600), slice(3600, P)):
        y = ratio[:, arm]
        assert np.abs(np.diff(y, n=2, axis=1)).max() < 1e-5  # a straight line in each arm
        assert np.abs(y[:, 0] + y[:, -1] - 2).max() < 1e-5  # about 1 at the arm's centre


def test_micro_batches_give_the_whole_batchs_gradient(sim_with_ivar):
    """Memory is bounded by computing a batch in micro-batches; the update is the same."""
    path, _, _ = sim_with_ivar
    data = load_training_data(path, [GroupSpec("G", ("Teff[K]", "Logg"))], 16)
    kwargs = {**TINY, "dropout": 0.0}  # dropout draws depend on the micro-batch shape
    results = []
    for micro in (16, 3):
        recipe = Recipe(batch_size=16, noise_prob=0.0, micro_batch=micro)
        shard = Shard("G", 2, [0, 1], "rrnet", kwargs, 5, torch.device("cpu"))
        augment = BatchAugmenter(recipe, data.normalization, data.preprocessing, None)
        sizes = []
        forward = shard.stack.forward

        def spy(x, g, forward=forward, sizes=sizes):
            sizes.append(x.shape[1])
            return forward(x, g)

        shard.stack.forward = spy
        shard._train(1, recipe, data.flux["train"], data.groups["G"]["train"], print, augment)
        assert max(sizes) == micro
        results.append([p.detach().clone() for p in shard.stack.parameters()])
    # Adam's first steps magnify rounding in near-zero gradients: a handful of weights may move
    # by a few % of a step of 5e-4, while a wrong sum over micro-batches moves most of them by
    # a whole step.
    diff = torch.cat([(a - b).abs().flatten() for a, b in zip(*results, strict=True)])
    assert diff.max() < 1e-4
    assert (diff > 5e-6).float().mean() < 1e-4


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, sim_with_ivar, monkeypatch):
    """Scripted validation losses 1.0, 0.5, 0.9, 0.8, ... with patience 2: stops after epoch 4
    and the model holds epoch 2's weights."""
    path, _, _ = sim_with_ivar
    script_validation_losses(monkeypatch, [1.0, 0.5, 0.9, 0.8, 0.7, 0.6])
    out = tmp_path / "m"
    params, grab = checkpointed_params(out)
    recipe = dataclasses.replace(RECIPES["default"], patience=2)
    ensemble = tiny_run(
        path, out, members=1, epochs=6, groups={"SP": ["Teff[K]"]}, callback=grab, recipe=recipe
    )
    assert sorted(params) == [1, 2, 3, 4]
    assert ensemble.provenance["converged"] and ensemble.provenance["epochs_completed"] == 4
    saved = load_file(out / "SP0.safetensors")
    assert all(torch.equal(saved[k], params[2][k]) for k in saved)


def test_recipe_paper_is_selectable_and_default_is_the_default(tmp_path, sim_with_ivar, run_cli):
    path, _, _ = sim_with_ivar
    common = ["--members", "1", "--epochs", "1", "--batch-size", "8", "--nr", "2,2,2", "--quiet"]
    for recipe in ("paper", None):
        out = tmp_path / (recipe or "default")
        args = ["train", path, "-o", out, *common] + (["--recipe", recipe] if recipe else [])
        code, _, err = run_cli(*args)
        assert code == 0, err
        import yaml

        settings = yaml.safe_load((out / "model.yaml").read_text())["provenance"]["settings"]
        assert settings["recipe"]["name"] == (recipe or "default")
        assert settings["recipe"] == {**dataclasses.asdict(RECIPES[recipe or "default"]),
                                      "batch_size": 8}  # fmt: skip
    code, _, err = run_cli("train", path, "-o", tmp_path / "x", "--recipe", "huge", *common)
    assert code == 2 and "--recipe" in err
