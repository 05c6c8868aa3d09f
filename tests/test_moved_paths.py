"""The old import paths of moved modules and functions: each warns, and gives the objects of
the new path themselves (so that a cached singleton stays single)."""

from __future__ import annotations

import importlib
import sys

import pytest

import lamost_rrnet.calibrate as calibrate_job
import lamost_rrnet.calibration as calibration

MOVED_MODULES = {
    "lamost_rrnet.simulate.synth": "lamost_rrnet.spectra.synthesis.model",
    "lamost_rrnet.simulate.atmosphere": "lamost_rrnet.spectra.synthesis.atmosphere",
    "lamost_rrnet.simulate.linelist": "lamost_rrnet.spectra.synthesis.linelist",
    "lamost_rrnet.simulate.molecules": "lamost_rrnet.spectra.synthesis.molecules",
}


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_a_moved_module_warns_and_gives_the_new_modules_objects(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)  # the warning comes on first import
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*import {new}") as record:
        __import__(old)  # as an import statement does: the warning names its line
    assert record[0].filename == __file__
    shim, module = sys.modules[old], importlib.import_module(new)
    names = [name for name in vars(module) if not name.startswith("__")]
    # The very objects: synthesizer() and load_lines() keep one cache between the two paths.
    assert names and all(getattr(shim, name) is getattr(module, name) for name in names)


@pytest.mark.parametrize("name", ["fit_calibration", "calibrate", "calibrate_model"])
def test_a_calibration_job_warns_at_its_old_path(name):
    with pytest.warns(
        DeprecationWarning,
        match=rf"lamost_rrnet\.calibration\.{name} is deprecated.*lamost_rrnet\.calibrate\.{name}$",
    ) as record:
        old = getattr(calibration, name)
    assert old is getattr(calibrate_job, name)
    assert record[0].filename == __file__


def test_calibration_has_no_other_missing_names():
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        calibration.nothing_here  # noqa: B018
