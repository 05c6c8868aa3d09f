"""train: the stacked members against the plain modules, the recipe's outputs, resume and
determinism, label groups, NaN rows, bad inputs and their exit codes, configuration
precedence, and (slow) the small-scale acceptance run on simulated spectra."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lamost_rrnet.dataset import open_dataset, write_dataset
from lamost_rrnet.ensemble import Ensemble
from lamost_rrnet.errors import DatasetError, OutputExistsError, RRNetError, UsageError
from lamost_rrnet.labels import PAPER_GROUPS
from lamost_rrnet.models import create_model
from lamost_rrnet.training import train_ensemble
from lamost_rrnet.training.config import read_config
from lamost_rrnet.training.members import RECIPES
from lamost_rrnet.training.stacked import StackedNet, _Conv3

TINY = {"Nr": [2, 2, 2]}  # 0.5 M parameters: a member trains in milliseconds per spectrum


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def simulated(n_stars: int, seed: int, snr=(30.0, 150.0)):
    """Labels (17 + vmic), rrnet2022-normalized flux and per-star S/N of simulated stars."""
    from lamost_rrnet.simulate import draw_labels, simulate_normalized

    rng = np.random.default_rng(seed)
    labels = draw_labels(n_stars, rng)
    s = rng.uniform(*snr, n_stars)
    flux = simulate_normalized(labels, s, rng)
    names = [c for c in labels.columns if c != "star_id"]
    meta = {"star_id": labels["star_id"].to_numpy(), "snr_blue": s, "snr_red": s}
    return flux, labels[names].to_numpy(np.float32), names, meta


@pytest.fixture(scope="module")
def sim_arrays():
    return simulated(40, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sim_arrays):
    flux, labels, names, meta = sim_arrays
    return write_dataset(tmp_path_factory.mktemp("data") / "sim.h5", flux, labels, names, meta)


def write_variant(path, sim_arrays, labels=None, split=None):
    flux, base, names, meta = sim_arrays
    meta = dict(meta)
    if split is not None:
        meta["split"] = split
    return write_dataset(path, flux, base if labels is None else labels, names, meta)


def tiny_run(dataset, out, **kwargs):
    options = dict(members=2, epochs=2, batch_size=8, arch_kwargs=TINY, progress=False)
    options.update(kwargs)
    return train_ensemble(dataset, out, **options)


class Killed(Exception):
    """Stands for the process being killed after an epoch's checkpoint."""


def weights(directory):
    return {p.name: load_file(p) for p in sorted(directory.glob("*.safetensors"))}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)


def read_history(directory):
    with open(directory / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# -- the stacked forward --------------------------------------------------------------------


def test_conv3_backward_matches_numerical_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5 * 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(2, 4, 3, 3, dtype=torch.double, requires_grad=True)
    b = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _Conv3.apply(x, w, b, 4), (x, w, b))


@pytest.mark.parametrize(
    ("arch", "kwargs", "n"),
    [
        ("rrnet", {}, 2),
        ("rrnet", {}, 1),  # one member takes plain GEMMs
        ("rrnet", {"mode": "pre-RNN"}, 2),
        ("resnet", {}, 2),
        ("starnet", {}, 2),
        ("starnet-r", {}, 2),
    ],
)
def test_stacked_members_compute_what_the_modules_compute(arch, kwargs, n):
    torch.manual_seed(1)
    # 720 pixels: the published shapes, ten times smaller; the stacked code reads no sizes.
    members = [create_model(arch, 3, n_pixels=720, **kwargs).eval() for _ in range(n)]
    stack = StackedNet(members, chunk=2).eval()
    x = torch.randn(n, 5, 720)
    mu, var = stack(x, [None] * n)
    expected = [m(xi) for m, xi in zip(members, x, strict=True)]
    for i, (m_mu, m_var) in enumerate(expected):
        torch.testing.assert_close(mu[i], m_mu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var[i], m_var, rtol=1e-4, atol=1e-6)
    (mu.sum() + var.sum()).backward()
    sum(a.sum() + b.sum() for a, b in expected).backward()
    for i, member in enumerate(members):
        for (name, param, index), (mname, mparam) in zip(
            stack.slots()[i], member.named_parameters(), strict=True
        ):
            assert name == mname and index == i
            torch.testing.assert_close(param.grad[i], mparam.grad, rtol=1e-3, atol=1e-6)


def test_architectures_registered_elsewhere_train_through_their_modules(
    tmp_path, dataset, monkeypatch
):
    """No stacked forward for a new architecture: its own modules train, and resume."""
    from lamost_rrnet.models import registry
    from lamost_rrnet.training.stacked import ModuleLoop, stack_members

    class Linear(torch.nn.Module):
        def __init__(self, n_labels):
            super().__init__()
            self.fc = torch.nn.Linear(7200, 2 * n_labels)

        def forward(self, x):
            mu, v = self.fc(torch.nn.functional.dropout(x, 0.1, self.training)).chunk(2, dim=1)
            return mu, torch.nn.functional.softplus(v)

    monkeypatch.setitem(registry._REGISTRY, "linear-test", lambda n, **kw: Linear(n))
    assert isinstance(stack_members([Linear(2), Linear(2)]), ModuleLoop)

    def kill(epoch, rows):
        raise Killed

    run = dict(arch="linear-test", arch_kwargs={}, groups="single", noise_from_epoch=1)
    tiny_run(dataset, tmp_path / "a", **run)
    with pytest.raises(Killed):
        tiny_run(dataset, tmp_path / "b", callback=kill, **run)
    ensemble = tiny_run(dataset, tmp_path / "b", resume=True, **run)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert [len(g.members) for g in ensemble.groups] == [2]


# -- a training run and its outputs ---------------------------------------------------------


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, dataset):
    """One trained model through the command line, shared by the output tests."""
    from lamost_rrnet.cli.app import main

    out = tmp_path_factory.mktemp("cli") / "model"
    args = ["train", dataset, "-o", out, "--members", "2", "--epochs", "2", "--nr", "2,2,2"]
    args += ["--batch-size", "8", "--noise-from-epoch", "2", "--seed", "5", "--quiet"]
    args += ["--recipe", "paper"]  # the published learning rate, checked in the history
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return out


def test_cli_writes_a_model_directory_that_loads_and_predicts(cli_model, dataset):
    for name in ("model.yaml", "normalization.npz", "history.csv", "loss_curve.png"):
        assert (cli_model / name).is_file(), name
    assert (cli_model / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ensemble = Ensemble.load(cli_model, device="cpu")
    assert [g.name for g in ensemble.groups] == ["SP", "CA"]
    assert [len(g.members) for g in ensemble.groups] == [2, 2]
    assert ensemble.labels == list(PAPER_GROUPS["SP"] + PAPER_GROUPS["CA"])
    assert ensemble.architecture == {"name": "rrnet", "kwargs": TINY}
    with open_dataset(dataset) as ds:
        mu, sigma = ensemble.predict(ds.flux(ds.indices("test")))
    assert mu.shape == (len(mu), 17) and np.isfinite(mu).all() and (sigma > 0).all()
    manifest = yaml.safe_load((cli_model / "model.yaml").read_text())
    assert manifest["provenance"]["settings"]["recipe"]["noise_from_epoch"] == 2
    assert manifest["provenance"]["epochs_completed"] == 2


def test_cli_model_loads_by_path_as_predict_and_evaluate_resolve_it(cli_model):
    from lamost_rrnet.model_resolution import load_model

    model = load_model(str(cli_model), device="cpu")
    assert model.labels == list(PAPER_GROUPS["SP"] + PAPER_GROUPS["CA"])


def test_trained_model_is_calibrated_on_the_valid_split(cli_model, dataset):
    ensemble = Ensemble.load(cli_model, device="cpu")
    cal = ensemble.calibration
    assert cal.split == "valid" and ensemble.version == f"1+cal.{cal.digest()}"
    with open_dataset(dataset) as ds:
        idx = ds.indices("valid")
        mu, sigma = ensemble.predict(ds.flux(idx))
        true = ds.labels(idx, ensemble.labels).astype(np.float64)
    assert cal.n_spectra == idx.size >= 2
    z = (mu - true) / sigma
    for j, label in enumerate(ensemble.labels):
        assert cal.n[label] == idx.size
        assert np.std(z[:, j]) == pytest.approx(1.0, rel=1e-4), label


def test_history_has_every_epoch_member_and_label(cli_model):
    rows = read_history(cli_model)
    assert len(rows) == 2 * 2 * 2  # groups × members × epochs
    assert {(r["group"], r["member"], r["epoch"]) for r in rows} == {
        (g, m, e) for g in ("SP", "CA") for m in ("0", "1") for e in ("1", "2")
    }
    sp = next(r for r in rows if r["group"] == "SP")
    assert float(sp["valid_mae_Teff[K]"]) > 0 and float(sp["train_mae_FeH"]) > 0
    assert sp["valid_mae_CH"] == ""  # a CA label: not this group's
    for r in rows:
        assert np.isfinite(float(r["train_loss"])) and np.isfinite(float(r["valid_loss"]))
        assert float(r["lr"]) == 5e-4


def test_normalization_comes_from_the_training_split_only(cli_model, dataset):
    with open_dataset(dataset) as ds:
        train = ds.indices("train")
        flux, labels = ds.flux(train), ds.labels(train)
        everything = ds.labels(np.arange(ds.n))
        names = ds.label_names
    with np.load(cli_model / "normalization.npz") as norm:
        np.testing.assert_allclose(norm["flux_mean"], flux.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(norm["flux_std"], flux.std(0), rtol=1e-4, atol=1e-6)
        for j, name in enumerate(norm["label_names"]):
            k = names.index(str(name))
            assert norm["label_mean"][j] == pytest.approx(labels[:, k].mean(), rel=1e-6)
            assert norm["label_std"][j] == pytest.approx(labels[:, k].std(), rel=1e-5)
        assert norm["label_mean"][0] != pytest.approx(everything[:, 0].mean(), rel=1e-6)


def script_validation_losses(monkeypatch, losses) -> None:
    """Make each epoch's validation loss the next of ``losses`` (the errors stay real)."""
    from lamost_rrnet.training.members import Shard

    script = iter(losses)
    validate = Shard._validate

    def scripted(self, recipe, flux, split):
        loss, abs_err = validate(self, recipe, flux, split)
        return torch.full_like(loss, next(script)), abs_err

    monkeypatch.setattr(Shard, "_validate", scripted)


def checkpointed_params(out) -> tuple[dict, Callable[..., None]]:
    """A ``callback`` for :func:`tiny_run` that keeps the first SP member's parameters of each
    epoch's checkpoint under ``out``, and the dict it fills."""
    params = {}

    def grab(epoch, rows):
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        params[epoch] = state["members"]["SP"][0]["params"]

    return params, grab


def test_best_validation_weights_are_kept(tmp_path, dataset, monkeypatch):
    """Scripted validation losses 1.0, 0.5, 0.9: the model keeps epoch 2's weights."""
    script_validation_losses(monkeypatch, [1.0, 0.5, 0.9])
    out = tmp_path / "m"
    params, grab = checkpointed_params(out)
    ensemble = tiny_run(
        dataset, out, members=1, epochs=3, groups={"SP": ["Teff[K]"]}, callback=grab
    )
    saved = load_file(out / "SP0.safetensors")
    assert all(torch.equal(saved[k], params[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], params[3][k]) for k in saved)
    assert ensemble.provenance["best_epochs"] == {"SP": [2]}
    assert [r["best"] for r in read_history(out)] == ["1", "1", "0"]


# -- resume and determinism -----------------------------------------------------------------


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, dataset):
    # Epoch 2 draws from the noise and dropout streams too.
    run = dict(seed=11, noise_from_epoch=2, groups="single")
    tiny_run(dataset, tmp_path / "a", **run)
    tiny_run(dataset, tmp_path / "a2", **run)
    assert_same_weights(tmp_path / "a", tmp_path / "a2")  # determinism

    def kill_after_first(epoch, rows):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        tiny_run(dataset, tmp_path / "b", callback=kill_after_first, **run)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    assert not (tmp_path / "b" / "model.yaml").exists()
    with pytest.raises(OutputExistsError):
        tiny_run(dataset, tmp_path / "b", **run)
    tiny_run(dataset, tmp_path / "b", resume=True, **run)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert read_history(tmp_path / "a") == [
        {**r, "seconds": a["seconds"]}
        for r, a in zip(read_history(tmp_path / "b"), read_history(tmp_path / "a"), strict=True)
    ]
    with pytest.raises(RRNetError, match="seed"):
        tiny_run(dataset, tmp_path / "b", resume=True, **{**run, "seed": 12})


def test_time_budget_stops_between_epochs_and_resume_finishes(tmp_path, dataset):
    out = tmp_path / "m"
    first = tiny_run(dataset, out, members=1, epochs=3, max_minutes=1e-6, groups="single")
    assert first.provenance["epochs_completed"] == 1 and first.provenance["stopped_early"]
    assert (out / "model.yaml").is_file()
    done = tiny_run(dataset, out, members=1, epochs=3, resume=True, groups="single")
    assert done.provenance["epochs_completed"] == 3
    assert len(read_history(out)) == 3


def test_members_on_several_devices_train_like_one_stack(tmp_path, dataset):
    tiny_run(dataset, tmp_path / "one", devices=["cpu"], groups="single", epochs=1)
    tiny_run(dataset, tmp_path / "two", devices=["cpu", "cpu"], groups="single", epochs=1)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys() == {"ALL0.safetensors", "ALL1.safetensors"}
    for name in one:
        for key in one[name]:
            torch.testing.assert_close(one[name][key], two[name][key], rtol=1e-3, atol=1e-5)


# -- label groups and NaN labels ------------------------------------------------------------


def test_groups_single_and_yaml_with_any_dataset_label(tmp_path, dataset):
    single = tiny_run(dataset, tmp_path / "s", members=1, epochs=1, groups="single")
    with open_dataset(dataset) as ds:
        assert single.labels == ds.label_names and "vmic" in single.labels
    spec = tmp_path / "groups.yaml"
    spec.write_text("groups:\n  TURB: [vmic, Logg]\n  FE: [FeH]\n")
    custom = tiny_run(dataset, tmp_path / "y", members=1, epochs=1, groups=spec)
    assert [(g.name, g.labels) for g in custom.groups] == [
        ("TURB", ["vmic", "Logg"]),
        ("FE", ["FeH"]),
    ]
    assert set(custom.label_ranges) == {"vmic", "Logg", "FeH"}


def test_nan_label_rows_are_dropped_per_group_and_reported(tmp_path, sim_arrays, run_cli):
    flux, labels, names, meta = sim_arrays
    labels = labels.copy()
    labels[:6, names.index("CuH")] = np.nan  # CA loses these rows, SP keeps them
    path = write_variant(tmp_path / "nan.h5", sim_arrays, labels=labels)
    with open_dataset(path) as ds:
        split = ds.meta("split")[:6]
    out = tmp_path / "m"
    code, stdout, err = run_cli(
        "train", path, "-o", out, "--members", "1", "--epochs", "1", "--nr", "2,2,2",
        "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    assert stdout == ""
    n_train = int((split == "train").sum())
    assert f"group CA: {n_train} of" in " ".join(err.split())
    assert "group SP" not in err
    assert "epoch 1/1" in err and "model written to" in err  # progress on stderr
    rows = yaml.safe_load((out / "model.yaml").read_text())["provenance"]["rows"]
    assert rows["SP"]["train"] - rows["CA"]["train"] == n_train


# -- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--members", "0"],
        ["--arch", "transformer"],
        ["--groups", "nonsense"],
        ["--nr", "4,x"],
        ["--lr", "0"],
        ["--resume", "--overwrite"],
        ["--devices", "gpu7"],
    ],
)
def test_bad_command_lines_exit_2(args, dataset, tmp_path, run_cli):
    code, out, err = run_cli("train", dataset, "-o", tmp_path / "m", *args)
    assert code == 2, err
    assert out == ""


def test_bad_datasets_exit_1_with_a_clear_message(tmp_path, sim_arrays, dataset, run_cli):
    flux, labels, names, meta = sim_arrays
    no_valid = np.where(np.arange(len(flux)) % 2 == 0, "train", "test")
    all_nan = labels.copy()
    all_nan[:, names.index("FeH")] = np.nan
    bad_group = tmp_path / "g.yaml"
    bad_group.write_text("X: ['Teff[K]', NoSuchLabel]\n")
    cases = [
        (write_variant(tmp_path / "nv.h5", sim_arrays, split=no_valid), [], "valid split"),
        (dataset, ["--groups", str(bad_group)], "no label NoSuchLabel"),
        (write_variant(tmp_path / "nan.h5", sim_arrays, labels=all_nan), [], "FeH is NaN"),
        (dataset, ["--batch-size", "1000"], "batch size 1000 is larger"),
    ]
    for path, extra, message in cases:
        out = tmp_path / f"m{len(extra)}{path.stem}"
        code, stdout, err = run_cli("train", path, "-o", out, "--quiet", *extra)
        assert code == 1, (message, err)
        assert message in " ".join(err.split()) and stdout == ""
        assert str(path.name) in err


def test_library_raises_dataset_error(dataset, tmp_path):
    with pytest.raises(DatasetError, match="batch size"):
        tiny_run(dataset, tmp_path / "m", batch_size=10_000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"recipe": "huge"}, "unknown recipe 'huge'"),
        ({"arch": "transformer"}, "unknown architecture 'transformer'"),
        ({"arch_kwargs": {"Ns": 7}}, "sub-bands"),
        ({"arch_kwargs": {"depth": 3}}, "depth"),
    ],
)
def test_library_raises_usage_error_before_touching_the_output(dataset, tmp_path, kwargs, message):
    with pytest.raises(UsageError, match=message):
        tiny_run(dataset, tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


# -- configuration precedence ---------------------------------------------------------------


def test_read_config_names_options_as_parameters_and_refuses_unknown_ones(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("--batch-size: 16\nnr: [2, 2, 2]\n")
    assert read_config(config, {"batch_size", "nr"}) == {"batch_size": 16, "nr": "2,2,2"}
    with pytest.raises(UsageError, match="unknown option 'nr'"):
        read_config(config, {"batch_size"})
    config.write_text("[16]\n")
    with pytest.raises(UsageError, match="must map option names"):
        read_config(config, {"batch_size"})
    config.write_text("a: [\n")
    with pytest.raises(UsageError, match="cannot read it") as info:
        read_config(config, {"a"})
    assert "\n" not in str(info.value)


def test_option_beats_environment_beats_config_beats_default(
    tmp_path, dataset, run_cli, monkeypatch
):
    captured = {}
    monkeypatch.setattr("lamost_rrnet.training.train_ensemble", lambda *a, **k: captured.update(k))
    config = tmp_path / "train.yaml"
    config.write_text("epochs: 7\nbatch-size: 16\nmembers: 3\nnr: [2, 2, 2]\nlr: 0.001\n")
    monkeypatch.setenv("LAMOST_RRNET_TRAIN_BATCH_SIZE", "32")
    monkeypatch.setenv("LAMOST_RRNET_TRAIN_MEMBERS", "4")
    code, _, err = run_cli(
        "train", dataset, "-o", tmp_path / "m", "--config", config, "--members", "5"
    )
    assert code == 0, err
    assert captured["members"] == 5  # option
    assert captured["batch_size"] == 32  # environment over config
    assert captured["epochs"] == 7 and captured["lr"] == 0.001  # config over default
    assert captured["arch_kwargs"] == {"Nr": [2, 2, 2]}
    # Defaults: the recipe's own noise, the default recipe.
    assert captured["noise_prob"] is None and captured["seed"] == 0
    assert captured["recipe"] == "default"
    config.write_text("epoch: 3\n")
    code, _, err = run_cli("train", dataset, "-o", tmp_path / "m", "--config", config)
    assert code == 2 and "unknown option" in err


# -- optional TensorBoard -------------------------------------------------------------------


def test_tensorboard_logs_when_installed_and_is_skipped_otherwise(tmp_path, monkeypatch):
    import sys

    from lamost_rrnet.training import history

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    assert history.TensorBoardLog(tmp_path / "tb").writer is None
    history.TensorBoardLog(tmp_path / "tb").log([{"group": "SP", "member": 0, "epoch": 1}])

    scalars = []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def flush(self):
            pass

    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    log = history.TensorBoardLog(tmp_path / "tb")
    row = {"group": "SP", "member": 1, "epoch": 3, "best": 1, "valid_loss": 0.5}
    log.log([{**row, "valid_mae_CH": ""}])
    assert scalars == [("SP/member1/valid_loss", 0.5, 3)]


# -- acceptance: simulated spectra, 2-member RRNet, 2-minute CPU budget -----------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_small_scale_acceptance(tmp_path):
    flux, labels, names, meta = simulated(2000, seed=7)
    path = write_dataset(tmp_path / "sim2000.h5", flux, labels, names, meta)
    sp = list(PAPER_GROUPS["SP"])
    torch.set_num_threads(2)
    ensemble = train_ensemble(
        path,
        tmp_path / "model",
        members=2,
        groups={"SP": sp},
        epochs=30,
        batch_size=32,
        max_minutes=1.0,
        progress=False,
    )
    with open_dataset(path) as ds:
        test, train = ds.indices("test"), ds.indices("train")
        mu, _ = ensemble.predict(ds.flux(test))
        truth, train_labels = ds.labels(test, sp), ds.labels(train, sp)
    mae = np.abs(mu - truth).mean(axis=0)
    baseline = np.abs(train_labels.mean(axis=0) - truth).mean(axis=0)
    print(dict(zip(sp, mae, strict=True)), dict(zip(sp, baseline, strict=True)))
    assert (mae < 0.5 * baseline).all(), (mae, baseline)


def test_each_recipe_brings_its_batch_size_and_the_option_overrides_it():
    """The default recipe steps every 32 spectra (a small set needs the steps), the paper's
    every 256; --batch-size replaces either."""
    from lamost_rrnet.training.loop import _recipe

    assert RECIPES["default"].batch_size == 32
    assert _recipe("default", None, None, None, None).batch_size == 32
    assert _recipe("paper", None, None, None, None).batch_size == 256
    assert _recipe("default", 8, None, None, None).batch_size == 8
    paper = _recipe("paper", 8, 1e-3, None, None)
    assert paper == replace(RECIPES["paper"], batch_size=8, lr=1e-3)
