"""Ensembles: eq. 3, normalization, the model directory round trip, the published layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from torch import nn

from helpers_published import (
    GROUPS,
    MODEL_DIR,
    manifest,
    member_seed,
    published_forward,
    seeded_state_dict,
    write_fake_published,
)
from lamost_rrnet.devices import select_device
from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
from lamost_rrnet.errors import ModelError
from lamost_rrnet.labels import PAPER_GROUPS, PUBLISHED_ORDER
from lamost_rrnet.model_resolution import load_model
from lamost_rrnet.models import create_model
from lamost_rrnet.published_layout import load_label_config, published_runs
from lamost_rrnet.spectra.preprocess import PreprocessSpec

GROUP_LABELS = {"A": ["Teff[K]", "Logg"], "B": ["FeH", "MgH", "CuH"]}


def small_ensemble(seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    arch = {"name": "rrnet", "kwargs": {"Nr": (2, 2, 3), "Ns": 30}}
    groups = [
        LabelGroup(
            name, labels, [create_model("rrnet", len(labels), **arch["kwargs"]) for _ in range(2)]
        )
        for name, labels in GROUP_LABELS.items()
    ]
    rng = np.random.default_rng(seed)
    names = ["vmic", "Teff[K]", "Logg", "FeH", "MgH", "CuH"]
    norm = Normalization(
        rng.normal(1.0, 0.02, 7200),
        rng.uniform(0.05, 0.2, 7200),
        names,
        [1.2, 5000.0, 3.0, -0.2, -0.1, -0.3],
        [0.3, 550.0, 0.9, 0.25, 0.2, 0.35],
    )
    return Ensemble(
        "small",
        "0.1",
        arch,
        groups,
        norm,
        PreprocessSpec(clip=(-0.25, 2.0)),
        {"Teff[K]": (4000, 6500.5), "FeH": (-1.0, 0.5)},
        {"trained_on": "nothing", "epochs": np.int64(3), "members": (2, 2)},
    )


def spectra(n: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flux = 1.0 + 0.1 * rng.standard_normal((n, 7200)).astype(np.float32)
    flux[:, 100:110] = 3.0  # clipped at inference
    flux[:, 5000:5004] = -1.0
    return flux


class Fixed(nn.Module):
    """A member whose outputs are given, for checking the combination on its own."""

    def __init__(self, mu, var):
        super().__init__()
        self.register_buffer("mu", torch.tensor(mu, dtype=torch.float32))
        self.register_buffer("var", torch.tensor(var, dtype=torch.float32))

    def forward(self, x):
        return self.mu.expand(x.shape[0], -1), self.var.expand(x.shape[0], -1)


def test_eq3_combination_and_scaling():
    mus = [[1.0, -2.0], [3.0, -1.0], [2.0, 0.5]]
    variances = [[0.04, 1.0], [0.09, 0.25], [0.01, 4.0]]
    norm = Normalization(np.ones(7200), np.ones(7200), ["x", "y", "z"], [10, 20, 30], [2, 3, 4])
    groups = [
        LabelGroup("G", ["z", "x"], [Fixed(m, v) for m, v in zip(mus, variances, strict=True)]),
        LabelGroup("H", ["y"], [Fixed([0.5], [0.16])]),
    ]
    ens = Ensemble("fixed", "1", {"name": "none"}, groups, norm)
    assert ens.labels == ["z", "x", "y"]
    mu, sigma = ens.predict(np.ones((3, 7200), np.float32))
    m, v = np.array(mus), np.array(variances)
    mean = m.mean(0)
    var = (v + m**2).mean(0) - mean**2  # paper eq. 3, literally
    np.testing.assert_allclose(mu[0], [mean[0] * 4 + 30, mean[1] * 2 + 10, 0.5 * 3 + 20])
    np.testing.assert_allclose(sigma[0], [np.sqrt(var[0]) * 4, np.sqrt(var[1]) * 2, 0.4 * 3])
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (3, 3)


def test_network_input_clips_and_zscores():
    ens = small_ensemble()
    flux = spectra(2)
    x = ens.network_input(flux).numpy()
    norm = ens.normalization
    want = (np.clip(flux, -0.25, 2.0) - norm.flux_mean) / norm.flux_std
    np.testing.assert_allclose(x, want, rtol=1e-6)
    assert x.dtype == np.float32
    with pytest.raises(ValueError, match=r"\(B, 7200\)"):
        ens.network_input(flux[:, :7000])


def test_predict_batches_are_independent():
    ens = small_ensemble()
    flux = spectra(5)
    flux[3] = np.nan
    mu, sigma = ens.predict(flux, batch_size=256)
    mu2, sigma2 = ens.predict(flux, batch_size=3)
    assert np.isnan(mu[3]).all() and np.isnan(sigma[3]).all()
    good = [0, 1, 2, 4]
    assert np.isfinite(mu[good]).all() and (sigma[good] > 0).all()
    np.testing.assert_allclose(mu2, mu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-6, atol=1e-12)


def test_predict_shards_batches_over_cpu_threads(monkeypatch):
    """With several torch threads, each batch is split into single-threaded shards run side by
    side; the results equal the one-thread run, and the caller's thread count comes back."""
    ens = small_ensemble()
    flux = spectra(70)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want_mu, want_sigma = ens.predict(flux, batch_size=64)
        torch.set_num_threads(2)
        calls = []
        original = Ensemble._predict_rows

        def spy(self, flux, rows, mu, sigma):
            calls.append((rows.start, rows.stop, torch.get_num_threads()))
            original(self, flux, rows, mu, sigma)

        monkeypatch.setattr(Ensemble, "_predict_rows", spy)
        mu, sigma = ens.predict(flux, batch_size=64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # 64 rows in two shards of 32; the last 6 rows are too few to split.
    assert sorted(calls) == [(0, 32, 1), (32, 64, 1), (64, 70, 1)]
    np.testing.assert_allclose(mu, want_mu, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-5, atol=1e-10)


def test_model_directory_round_trip(tmp_path):
    ens = small_ensemble()
    ens.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == [
        "A0.safetensors",
        "A1.safetensors",
        "B0.safetensors",
        "B1.safetensors",
        "model.yaml",
        "normalization.npz",
    ]
    manifest_ = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    assert manifest_["groups"][1] == {
        "name": "B",
        "labels": GROUP_LABELS["B"],
        "members": ["B0.safetensors", "B1.safetensors"],
    }
    assert manifest_["normalization"] == "normalization.npz"
    assert set(manifest_["sha256"]) == set(files) - {"model.yaml"}
    assert manifest_["label_ranges"]["Teff[K]"] == [4000.0, 6500.5]
    with safe_open(tmp_path / "m" / "A0.safetensors", "pt") as fh:
        assert "stages.0.conv1.weight" in fh.keys()

    back = Ensemble.load(tmp_path / "m", device="auto")
    assert back.device.type == select_device("auto").type
    assert back.to("cpu") is back and back.device == torch.device("cpu")
    for attr in ("name", "version", "architecture", "labels", "label_ranges", "provenance"):
        assert getattr(back, attr) == getattr(ens, attr), attr
    assert back.preprocessing == ens.preprocessing
    assert back.architecture["kwargs"]["Nr"] == [2, 2, 3]
    assert back.provenance["epochs"] == 3
    for field in ("flux_mean", "flux_std", "label_mean", "label_std"):
        a, b = getattr(back.normalization, field), getattr(ens.normalization, field)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert back.normalization.label_names == ens.normalization.label_names
    for a, b in zip(back.members(), ens.members(), strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    flux = spectra(3)
    for a, b in zip(back.predict(flux), ens.predict(flux), strict=True):
        assert np.array_equal(a, b)


def test_model_directory_refuses_changed_or_missing_files(tmp_path):
    small_ensemble().save(tmp_path / "m")
    member = tmp_path / "m" / "B1.safetensors"
    data = bytearray(member.read_bytes())
    data[-1] ^= 1
    member.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"B1.safetensors: sha256 differs"):
        Ensemble.load(tmp_path / "m", device="cpu")
    member.unlink()
    with pytest.raises(ModelError, match=r"B1.safetensors: missing"):
        Ensemble.load(tmp_path / "m", device="cpu")
    (tmp_path / "m" / "model.yaml").write_text("name: x\n")
    with pytest.raises(ModelError, match="not a lamost-rrnet model manifest"):
        Ensemble.load(tmp_path / "m", device="cpu")


def test_inconsistent_ensembles_are_refused():
    ens = small_ensemble()
    with pytest.raises(ValueError, match="no statistics for OH"):
        Ensemble(
            "x",
            "1",
            ens.architecture,
            [LabelGroup("G", ["OH"], ens.members()[:1])],
            ens.normalization,
        )
    with pytest.raises(ValueError, match="more than one group"):
        Ensemble("x", "1", ens.architecture, ens.groups + ens.groups[:1], ens.normalization)
    with pytest.raises(ValueError, match="no members"):
        Ensemble("x", "1", ens.architecture, [LabelGroup("G", ["FeH"], [])], ens.normalization)


# -- the published repository's layout ------------------------------------------------------


@pytest.fixture(scope="module")
def published_root(shared_dir, tmp_path_factory):
    return write_fake_published(tmp_path_factory.mktemp("RRNet"), shared_dir)


@pytest.fixture(scope="module")
def published(published_root):
    return load_model(published_root, device="cpu")


def test_published_layout_equals_the_hand_computation(published, published_root):
    """FACTS.md §3 steps 5-7 and §4 by hand, on the members' own outputs."""
    assert published.labels == list(PUBLISHED_ORDER)
    assert [len(g.members) for g in published.groups] == [6, 6]
    config = load_label_config(published_root / "data" / "refer_set" / "label_config.pkl")
    flux = spectra(3)
    x = torch.from_numpy(
        ((np.clip(flux, -0.5, 2.5) - config["flux_mean"]) / config["flux_std"]).astype(np.float32)
    )
    want_mu, want_sigma = [], []
    with torch.inference_mode():
        for group in published.groups:
            outputs = [member.inference(x) for member in group.members]
            mus = np.array([m.double().numpy() for m, _ in outputs])
            variances = np.array([v.double().numpy() for _, v in outputs])
            mean = mus.mean(0)
            var = (variances + mus**2).mean(0) - mean**2
            rows = [config["label_list"].index(n) for n in PAPER_GROUPS[group.name]]
            want_mu.append(mean * config["label_std"][rows] + config["label_mean"][rows])
            want_sigma.append(np.sqrt(var) * config["label_std"][rows])
    mu, sigma = published.predict(flux)
    np.testing.assert_allclose(mu, np.concatenate(want_mu, 1), rtol=1e-5)
    np.testing.assert_allclose(sigma, np.concatenate(want_sigma, 1), rtol=1e-5)


def test_published_members_are_the_published_weights(published, shared_dir):
    """Each loaded member computes the published network (FACTS.md §2) with its own file's
    weights: in float64, where this seeded network's chaos does not blur the comparison."""
    shapes = manifest(shared_dir)
    x = torch.randn(2, 7200, dtype=torch.float64)
    for g, group in enumerate(published.groups):
        i = 5 if g else 0
        state = seeded_state_dict(shapes[GROUPS[g]]["state_dict"], member_seed(GROUPS[g], i))
        member = group.members[i]
        with torch.no_grad():
            want = published_forward({k: v.double() for k, v in state.items()}, x)
            got = member.double()(x)
        member.float()
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_published_label_ranges(published):
    config = published.normalization
    ranges = published.label_ranges
    assert ranges["Teff[K]"] == (4000.0, 6500.0)
    assert ranges["Logg"] == (0.0, 5.0)
    assert ranges["FeH"] == (-1.45, 0.45)
    row = config.label_names.index("CuH")
    mean, std = config.label_mean[row], config.label_std[row]
    assert ranges["CuH"] == pytest.approx((mean - 4 * std, mean + 4 * std))
    assert set(ranges) == set(PUBLISHED_ORDER)


def test_published_run_selection(published_root, tmp_path):
    root = tmp_path / "clone"
    shutil.copytree(published_root / "data", root / "data")
    run = published_root / "model_log" / MODEL_DIR
    other = "RRNet(Nr=[4-8-16]-Ns=40)_pre-RNN"
    for name in (MODEL_DIR, other):
        for member in ("SP0", "CA0"):
            (root / "model_log" / name / member).mkdir(parents=True)
            (root / "model_log" / name / member / "weight_best.pkl").symlink_to(
                run / member / "weight_best.pkl"
            )
    assert published_runs(root) == sorted([MODEL_DIR, other])
    chosen = load_model(root, device="cpu")
    assert chosen.version == MODEL_DIR and [len(g.members) for g in chosen.groups] == [1, 1]
    # a run named by its directory is taken as it is, whatever its name says
    with pytest.raises(ModelError, match="pre-RNN"):
        load_model(root / "model_log" / other, device="cpu")
    # a CA member where an SP member belongs: the shapes say so
    sp0 = root / "model_log" / MODEL_DIR / "SP0" / "weight_best.pkl"
    sp0.unlink()
    sp0.symlink_to(run / "CA0" / "weight_best.pkl")
    with pytest.raises(ModelError, match=r"SP0/weight_best.pkl: does not fit .*3 labels.*mu"):
        load_model(root, device="cpu")
    shutil.rmtree(root / "model_log" / MODEL_DIR)
    (root / "model_log" / "RRNet(Nr=[4-8-16]-Ns=40)_raw" / "SP0").mkdir(parents=True)
    (root / "model_log" / "RRNet(Nr=[4-8-16]-Ns=40)_raw" / "SP0" / "weight_best.pkl").touch()
    with pytest.raises(ModelError, match=r"2 runs and none is the paper's.*pre-RNN.*_raw"):
        load_model(root, device="cpu")


def test_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="neither a model directory"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="unknown model 'rrnet1999'"):
        load_model("rrnet1999")
    with pytest.raises(ModelError, match=r"rrnet1999: not a model directory.*load_model"):
        Ensemble.load("rrnet1999")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelError, match="not a file"):
        load_model(tmp_path / "f.txt")


def test_published_layout_saves_as_our_directory(published, tmp_path):
    # one member per group is enough to carry the published normalization, ranges and keys
    groups = [LabelGroup(g.name, g.labels, g.members[:1]) for g in published.groups]
    subset = Ensemble(
        published.name,
        published.version,
        published.architecture,
        groups,
        published.normalization,
        published.preprocessing,
        published.label_ranges,
        published.provenance,
    )
    subset.save(tmp_path / "ours")
    back = Ensemble.load(tmp_path / "ours", device="cpu")
    assert back.label_ranges == published.label_ranges
    assert back.architecture == published.architecture
    assert back.provenance == published.provenance
    flux = spectra(2)
    for a, b in zip(back.predict(flux), subset.predict(flux), strict=True):
        assert np.array_equal(a, b)
