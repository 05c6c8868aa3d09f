"""Shared fixtures: the read-only ../shared material and an in-process CLI runner."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_addoption(parser):
    parser.addoption(
        "--remote-data", action="store_true", default=False, help="run tests that need internet"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--remote-data"):
        return
    skip = pytest.mark.skip(reason="needs the internet: run with --remote-data")
    for item in items:
        if "remote_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models run fastest so, on a CPU shared with others."""
    from lamost_rrnet.devices import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "published_rrnet" / "FACTS.md").exists():
        pytest.skip("../shared is absent (it holds the real spectra and published-model facts)")
    return SHARED


@pytest.fixture(scope="session")
def real_spectra(shared_dir: Path) -> dict[str, Path]:
    """The four real LAMOST DR7 MRS files, by file name."""
    files = sorted((shared_dir / "data" / "lamost_mrs").glob("med-*.fits*"))
    if len(files) != 4:
        pytest.skip("../shared/data/lamost_mrs does not hold the four real spectra")
    return {f.name: f for f in files}


@pytest.fixture
def run_cli(capsys):
    """Run ``lamost-rrnet ARGS`` in-process; return (exit code, stdout, stderr)."""
    from lamost_rrnet.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        sys.stdout.flush()
        return code, out, err

    return run
