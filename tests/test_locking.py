"""One run at a time per output: the lock beside it, and the commands that take it."""

from __future__ import annotations

import os

import pytest

from lamost_rrnet.errors import OutputBusyError
from lamost_rrnet.locking import exclusive, lock_path
from lamost_rrnet.prepare import prepare_dataset
from lamost_rrnet.training import train_ensemble


def test_the_lock_excludes_a_second_holder_and_goes_with_the_first(tmp_path):
    out = tmp_path / "new" / "cat.fits"
    with exclusive(out):
        assert lock_path(out).read_text() == str(os.getpid())
        with pytest.raises(OutputBusyError, match=rf"cat\.fits: another run \(PID {os.getpid()}\)"):
            with exclusive(out):
                pass
    assert not lock_path(out).exists()
    with exclusive(out):  # free again
        pass


def test_a_directory_given_as_dot_is_locked_beside_it(tmp_path, monkeypatch):
    work = tmp_path / "model"
    work.mkdir()
    monkeypatch.chdir(work)
    with exclusive("."):
        assert (tmp_path / ".model.lock").exists()
        with pytest.raises(OutputBusyError):
            with exclusive(work):
                pass


def test_prepare_and_train_refuse_an_output_in_use(tmp_path):
    dataset = tmp_path / "set.h5"
    with exclusive(dataset), pytest.raises(OutputBusyError, match="set.h5"):
        prepare_dataset(tmp_path / "reference.fits", dataset, workers=0, progress=False)
    model = tmp_path / "model"
    with exclusive(model), pytest.raises(OutputBusyError, match="model"):
        train_ensemble(dataset, model, members=1, epochs=1, progress=False)
    assert not model.exists() and not dataset.exists()
