"""The retraining recipe end to end, with exactly the documented commands:

simulate -> crossmatch --labels-file -> prepare -> train
"""

from __future__ import annotations

import numpy as np
import pytest

from lamost_rrnet.dataset import open_dataset


def _registered(*names: str) -> bool:
    from lamost_rrnet.cli.app import app

    have = {c.name for c in app.registered_commands}
    return set(names) <= have


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_simulate_crossmatch_prepare_train(tmp_path, run_cli):
    if not _registered("simulate", "crossmatch", "prepare", "train"):
        pytest.skip("the simulate and train commands are not registered yet")
    sim, ref, data, model = (tmp_path / n for n in ("sim", "ref.fits", "dataset.h5", "model"))

    code, _, err = run_cli(
        "simulate",
        sim,
        "--stars",
        "24",
        "--visits",
        "1-2",
        "--snr",
        "30",
        "80",
        "--seed",
        "1",
        "--quiet",
    )
    assert code == 0, err
    code, out, err = run_cli(
        "crossmatch", sim / "lamost_catalogue.csv", "--labels-file", sim / "labels.csv", "-o", ref
    )
    assert code == 0, err
    assert out == "" and "labels not NaN" in err
    code, _, err = run_cli(
        "prepare", ref, "--spectra-root", sim / "spectra", "-o", data, "--workers", "2", "--quiet"
    )
    assert code == 0, err
    with open_dataset(data) as ds:
        assert ds.n >= 10
        assert set(ds.meta("split")) == {"train", "valid", "test"}
    code, _, err = run_cli(
        "train",
        data,
        "-o",
        model,
        "--members",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0, err
    assert (model / "model.yaml").is_file()

    from lamost_rrnet.ensemble import Ensemble

    ensemble = Ensemble.load(model)
    with open_dataset(data) as ds:
        mu, sigma = ensemble.predict(ds.flux(ds.indices("test")))
    assert np.isfinite(mu).all() and (sigma > 0).all()
