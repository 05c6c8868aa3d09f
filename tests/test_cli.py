"""The command line: global options anywhere, exit codes, streams, and ``inspect``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from astropy.table import Table

from lamost_rrnet import __version__
from lamost_rrnet.cli.app import hoist_global_options

GOOD = "med-58025-HIP9645901_sp02-051.fits.gz"


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"lamost-rrnet {__version__}"


def test_global_options_are_hoisted_from_after_the_subcommand():
    argv = ["inspect", "f.fits", "--quiet", "--threads", "2", "--device=cpu", "--rv", "-20"]
    assert hoist_global_options(argv) == [
        "--quiet", "--threads", "2", "--device=cpu", "inspect", "f.fits", "--rv", "-20"
    ]  # fmt: skip
    assert hoist_global_options(["inspect", "--", "--quiet"]) == ["inspect", "--", "--quiet"]


def test_inspect_prints_the_summary_on_stdout(run_cli, real_spectra):
    code, out, err = run_cli("inspect", real_spectra[GOOD], "--quiet")
    assert code == 0, err
    expected = ("589002051", "LAMOST J193322.51+430102.9", "293.343833", "58025",
                "LAMOST DR7", "COADD_B", "coadd", "R-83555799", "exposure", "3771", "92.84",
                "162.45")  # fmt: skip
    for text in expected:
        assert text in out
    assert err == ""


def test_inspect_plot_and_save(run_cli, real_spectra, tmp_path):
    png, csv, fits = tmp_path / "spec.png", tmp_path / "norm.csv", tmp_path / "norm.fits"
    code, out, err = run_cli(
        "inspect", real_spectra[GOOD], "--plot", png, "--rv", "-20", "--save", csv
    )
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written" in err and "written" not in out
    table = Table.read(csv)
    assert table.colnames == ["wavelength", "flux"] and len(table) == 7200
    assert np.median(table["flux"]) == pytest.approx(1.0, abs=0.1)
    code, _, _ = run_cli("inspect", real_spectra[GOOD], "--rv", "-20", "--save", fits, "--quiet")
    assert code == 0
    np.testing.assert_allclose(Table.read(fits)["flux"], table["flux"], rtol=1e-6)


def test_missing_path_is_a_usage_error(run_cli, tmp_path):
    code, _, err = run_cli("inspect", tmp_path / "nothere.fits")
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize(
    "args", [("--device", "tpu", "inspect", "x"), ("--threads", "0", "inspect", "x"),
             ("inspect", "--no-such-option"), ("no-such-command",)]
)  # fmt: skip
def test_bad_command_lines_exit_2(run_cli, args):
    assert run_cli(*args)[0] == 2


def test_bad_file_is_one_line_and_exit_1(run_cli, tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits")
    code, out, err = run_cli("inspect", bad)
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and "bad.fits" in err and "Traceback" not in err
    code, _, err = run_cli("inspect", bad, "--verbose")
    assert code == 1 and "Traceback" in err


def test_missing_extension_exit_1(run_cli, real_spectra, tmp_path):
    code, _, err = run_cli(
        "inspect", real_spectra[GOOD], "--blue", "B-1", "--save", tmp_path / "x.csv"
    )
    assert code == 1 and "no extension B-1" in err


def test_the_default_file_limit_is_the_readers():
    from lamost_rrnet.cli.common import MAX_FILE_MB
    from lamost_rrnet.spectra.io import MAX_BYTES

    assert MAX_FILE_MB * 2**20 == MAX_BYTES


def test_the_library_only_adds_a_null_handler_and_the_cli_takes_its_own_away(run_cli, tmp_path):
    logger = logging.getLogger("lamost_rrnet")
    assert [type(h) for h in logger.handlers] == [logging.NullHandler]
    level = logger.level
    code, _, err = run_cli("inspect", tmp_path / "nothere.fits", "--verbose")
    assert code == 2 and err
    assert [type(h) for h in logger.handlers] == [logging.NullHandler] and logger.level == level


@pytest.mark.parametrize(
    ("quiet", "verbose", "level"),
    [(False, False, logging.INFO), (True, False, logging.WARNING), (False, True, logging.DEBUG)],
)
def test_quiet_and_verbose_choose_the_level(quiet, verbose, level):
    from lamost_rrnet.cli.log import message_level

    assert message_level(quiet, verbose) == level


def test_messages_look_as_the_console_prints_them_and_warnings_say_so(capsys):
    from lamost_rrnet.cli.log import show_messages
    from lamost_rrnet.progress import stderr_console

    logger = logging.getLogger("lamost_rrnet.test")
    long = " ".join(f"/data/spectra/[{i}]/file.fits" for i in range(8))  # wider than the console
    undo = show_messages(logging.INFO)
    try:
        logger.debug("not shown")
        logger.info("short [bold]not markup[/]")
        logger.warning(long)
        logger.info(long)
    finally:
        undo()
    logger.warning("not shown either: the handler is gone")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["short [bold]not markup[/]", f"warning: {long}"]  # one unwrapped line
    stderr_console.print(long, markup=False)  # wrapped, as the console wraps text
    assert lines[2:] == capsys.readouterr().err.splitlines() and len(lines) > 3
