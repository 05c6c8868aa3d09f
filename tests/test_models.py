"""The networks: registry, shapes, the published keys, the reference check, the fast path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_published import seeded_state_dict
from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
from lamost_rrnet.models import GaussianNet, RRNet, StarNet, create_model, list_models
from lamost_rrnet.models.fastconv import packed_residual_features
from lamost_rrnet.models.published import (
    PUBLISHED_ARCHITECTURE,
    PUBLISHED_RUN,
    architecture_from_run,
    convert_published_state_dict,
    published_key,
)
from lamost_rrnet.spectra.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def manifest(shared_dir):
    path = shared_dir / "published_rrnet" / "published_state_dict_manifest.json"
    return json.loads(path.read_text())


def reference_inputs() -> torch.Tensor:
    return torch.stack([torch.linspace(-2, 2, 7200), 2 * torch.sin(torch.arange(7200.0) / 50.0)])


def test_registry_names_and_errors():
    assert list_models() == ["cannon", "resnet", "rrnet", "starnet", "starnet-r"]
    assert list_models("starnet*") == ["starnet", "starnet-r"]
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*rrnet"):
        create_model("vgg", 3)
    with pytest.raises(ValueError, match="mode"):
        create_model("rrnet", 3, mode="sideways")
    with pytest.raises(ValueError, match="raw"):
        create_model("resnet", 3, mode="post-RNN")
    with pytest.raises(ValueError, match="sub-bands"):
        create_model("rrnet", 3, Ns=7)


@pytest.mark.parametrize(
    ("arch", "kwargs", "rnn_size", "head_in"),
    [
        ("rrnet", {}, 360, 14400),
        ("rrnet", {"mode": "pre-RNN"}, 180, 14400),
        ("rrnet", {"Nr": [2, 3], "Ns": 30}, 180, 5400),
        ("resnet", {}, None, 14400),
        ("starnet", {}, None, 28800),
        ("starnet-r", {}, 360, 28800),
    ],
)
def test_architectures(arch, kwargs, rnn_size, head_in):
    torch.manual_seed(1)
    model = create_model(arch, 5, **kwargs)
    assert isinstance(model, GaussianNet)
    assert model.head.fc1.in_features == head_in
    assert (model.rnn is None) == (rnn_size is None)
    if rnn_size is not None:
        assert model.rnn.input_size == model.rnn.hidden_size == rnn_size
    if arch.startswith("starnet"):
        assert isinstance(model, StarNet)
        assert model.conv1.weight.shape == (4, 1, 3)
        assert model.conv2.weight.shape == (16, 4, 3)
    model.eval()
    mu, var = model(torch.randn(2, 7200))
    assert mu.shape == var.shape == (2, 5)
    assert bool((var > 0).all())


def test_dropout_is_active_in_training_only():
    torch.manual_seed(2)
    model = create_model("rrnet", 3, Nr=[2, 2, 2], Ns=10, n_pixels=720, dropout=0.3)
    x = torch.randn(4, 720)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize("group", ["SP", "CA"])
def test_every_published_key_and_shape(manifest, group):
    entry = manifest[group]
    shapes = entry["state_dict"]
    converted = convert_published_state_dict({k: torch.zeros(s) for k, s in shapes.items()})
    model = RRNet(entry["num_labels"], **PUBLISHED_ARCHITECTURE["kwargs"])
    ours = model.state_dict()
    assert len(converted) == len(shapes) == len(ours)
    assert set(converted) == set(ours)
    for key, shape in shapes.items():
        assert tuple(ours[published_key(key)].shape) == tuple(shape), key
    model.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in model.parameters()) == entry["params"]


def test_converter_refuses_foreign_keys():
    with pytest.raises(ValueError, match="not a key of the published RRNet"):
        convert_published_state_dict({"encoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a key"):
        published_key("ResBlock_list.0.0.ResBlock.1.weight")


def test_run_names_give_the_architecture():
    assert architecture_from_run(PUBLISHED_RUN) == PUBLISHED_ARCHITECTURE
    assert architecture_from_run("RRNet(Nr=[2-4]-Ns=20)_raw")["kwargs"] == {
        "Nr": [2, 4],
        "Ns": 20,
        "mode": "raw",
        "dropout": 0.3,
    }
    with pytest.raises(ValueError, match="StarNet"):
        architecture_from_run("StarNet_add-noise")


#: The manifest's tolerances: the float64 forward pass is exact up to summation order; in
#: float32 the seeded 40-step RNN amplifies rounding, which differs between CPUs, to a few 1e-4.
FLOAT64_TOL = {"rtol": 1e-6, "atol": 1e-9}
FLOAT32_TOL = {"rtol": 1e-3, "atol": 1e-6}


def _reference_ensemble(model: RRNet, n_pixels: int = 7200) -> Ensemble:
    """One member and an identity normalization: Ensemble.predict then returns the member's
    own μ and √variance, through the batched float32 inference path."""
    n = model.head.mu.out_features
    names = [f"y{i}" for i in range(n)]
    normalization = Normalization(
        np.zeros(n_pixels), np.ones(n_pixels), names, np.zeros(n), np.ones(n)
    )
    spec = PreprocessSpec(clip=None)
    return Ensemble("check", "0", {"name": "rrnet"}, [LabelGroup("G", names, [model])],
                    normalization, spec)  # fmt: skip


@pytest.mark.parametrize("group", ["SP", "CA"])
def test_reference_check(manifest, group):
    entry = manifest[group]
    check = entry["reference_check"]
    state = convert_published_state_dict(seeded_state_dict(entry["state_dict"], 0))
    want_mu = np.array(check["mu"])
    want_var = np.array(check["variance_softplus_output"])
    x = reference_inputs()

    exact = RRNet(entry["num_labels"]).double().eval()
    exact.load_state_dict(state)
    with torch.no_grad():
        mu, var = exact(x.double())
    np.testing.assert_allclose(mu.numpy(), want_mu, **FLOAT64_TOL)
    np.testing.assert_allclose(var.numpy(), want_var, **FLOAT64_TOL)

    model = RRNet(entry["num_labels"])
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.inference_mode():
        outputs = {"forward": model(x), "inference": model.inference(x)}
    for path, (mu32, var32) in outputs.items():
        np.testing.assert_allclose(mu32.numpy(), want_mu, **FLOAT32_TOL, err_msg=path)
        np.testing.assert_allclose(var32.numpy(), want_var, **FLOAT32_TOL, err_msg=path)
    mu_e, sigma_e = _reference_ensemble(model).predict(x.numpy())
    np.testing.assert_allclose(mu_e, want_mu, **FLOAT32_TOL)
    np.testing.assert_allclose(sigma_e**2, want_var, **FLOAT32_TOL)


@pytest.mark.parametrize(
    ("kwargs", "batch"),
    [
        ({}, 1),
        ({}, 9),
        ({"mode": "pre-RNN", "n_pixels": 1800, "Ns": 20}, 11),
        ({"mode": "raw", "n_pixels": 1800}, 11),
        ({"Nr": [3, 5], "Ns": 18, "n_pixels": 1800}, 11),
        ({"Nr": [2, 2, 2, 4], "Ns": 16, "n_pixels": 1600}, 11),
    ],
)
def test_inference_path_equals_the_modules(kwargs, batch):
    torch.manual_seed(3)
    model = create_model("rrnet", 4, **kwargs).eval()
    x = 1.5 * torch.randn(batch, model.n_pixels)
    with torch.no_grad():
        want_features = model.residual_features(x)
        want = model(x)
    with torch.inference_mode():
        # chunks of 4 leave a short chunk at the end
        features = packed_residual_features(model.stages, x, chunk=4)
        got = model.inference(x)
    torch.testing.assert_close(features, want_features, rtol=1e-4, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_inference_keeps_autograd_and_training_semantics():
    torch.manual_seed(4)
    model = create_model("rrnet", 2, Nr=[2, 2, 2], Ns=10, n_pixels=720)
    x = torch.randn(3, 720, requires_grad=True)
    model.eval()
    mu, _ = model.inference(x)
    mu.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model.inference(x)[0], model.inference(x)[0])
