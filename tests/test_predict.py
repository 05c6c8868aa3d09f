"""The predict job: inputs, RVs, bad spectra, outputs, resume, the CLI (lamost_rrnet.predict)."""

from __future__ import annotations

import csv
import inspect
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lamost_rrnet.catalogue import catalogue_columns, journal_dir
from lamost_rrnet.errors import CatalogueError, OutputExistsError, RRNetError
from lamost_rrnet.inputs import iter_input_paths
from lamost_rrnet.labels import PAPER_GROUPS, PUBLISHED_ORDER
from lamost_rrnet.predict import CHUNK_FILES, default_workers, predict_files
from lamost_rrnet.rv_table import load_rv_table
from lamost_rrnet.spectra.io import Arm, write_mrs

C_KMS = 299792.458
BLUE, RED = (4940.0, 5360.0), (6310.0, 6730.0)


def _arm(extname, span, rng, *, snr=80.0, rv=0.0, scale=1.0, n=3900) -> Arm:
    wave = np.geomspace(*span, n)
    x = (wave - wave.mean()) / np.ptp(wave)
    flux = 1000 * (1 + 0.3 * x)
    lines = np.random.default_rng(int(span[0]))  # the same lines in every file
    for centre, depth in zip(lines.uniform(*span, 40), lines.uniform(0.1, 0.5, 40), strict=True):
        flux *= 1 - depth * np.exp(-0.5 * ((wave - centre * (1 + rv / C_KMS)) / 0.3) ** 2)
    flux = (flux + rng.normal(0, flux / max(snr, 1))) * scale
    ivar = np.full(n, (max(snr, 1) / 1000) ** 2, np.float32)
    return Arm(
        extname, wave.astype(np.float32), flux.astype(np.float32), ivar, np.zeros(n, np.int32), snr
    )


def write_file(path: Path, obsid: int, seed: int = 0, *, exposures=0, coadd=True, **kw) -> Path:
    """An MRS file with a coadd and ``exposures`` B-/R- pairs; ``kw`` goes to every arm."""
    rng = np.random.default_rng(seed)
    blue_span = kw.pop("blue_span", BLUE)
    arms = []
    if coadd:
        arms += [_arm("COADD_B", blue_span, rng, **kw), _arm("COADD_R", RED, rng, **kw)]
    for i in range(exposures):
        arms += [_arm(f"B-{100 + i}", blue_span, rng, **kw), _arm(f"R-{100 + i}", RED, rng, **kw)]
    header = {"OBSID": obsid, "RA": 10.0 + seed, "DEC": 30.0, "LMJD": 58000}
    return write_mrs(path, header, arms)


def tiny_ensemble(labels_by_group=PAPER_GROUPS, ranges=None, seed=0):
    """A two-member-per-group RRNet ensemble with tiny stages (Nr=[2,2,2])."""
    import torch

    from lamost_rrnet.ensemble import Ensemble, LabelGroup, Normalization
    from lamost_rrnet.models import create_model
    from lamost_rrnet.spectra.preprocess import RRNET2022

    torch.manual_seed(seed)
    groups = [
        LabelGroup(
            name, list(labels), [create_model("rrnet", len(labels), Nr=[2, 2, 2]) for _ in range(2)]
        )
        for name, labels in labels_by_group.items()
    ]
    names = [label for labels in labels_by_group.values() for label in labels]
    mean = np.array([5000.0 if n.startswith("Teff") else 0.0 for n in names])
    std = np.array([500.0 if n.startswith("Teff") else 0.3 for n in names])
    norm = Normalization(
        np.ones(7200, np.float32), np.full(7200, 0.2, np.float32), names, mean, std
    )
    if ranges is None:
        ranges = {n: (m - 100 * s, m + 100 * s) for n, m, s in zip(names, mean, std, strict=True)}
    return Ensemble(
        "tiny",
        "1",
        {"name": "rrnet", "kwargs": {"Nr": [2, 2, 2]}},
        groups,
        norm,
        RRNET2022,
        ranges,
        {},
    )


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One torch thread, as if on one core: lean on a shared CI machine (and much faster there)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("lamost_rrnet.predict._cores", lambda: 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.fixture(scope="module")
def spectra(tmp_path_factory) -> Path:
    """Three good coadd files (one with exposures) and a catalogue of their RVs."""
    root = tmp_path_factory.mktemp("spectra")
    write_file(root / "a-1.fits.gz", 101, 1, rv=20.0, exposures=2)
    write_file(root / "sub" / "b-2.fits.gz", 102, 2, rv=-35.0)
    write_file(root / "sub" / "deeper" / "c-3.fits", 103, 3, rv=5.0)
    (root / "notes.txt").write_text("not a spectrum")
    (root / "rv.csv").write_text("obsid,rv_ku0,rv_br0\n101,20.0,1\n102,-35.0,1\n103,5.0,1\n")
    return root


def _read(path) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy: 'dex' is not a FITS unit
        return Table.read(path)


def assert_same_catalogue(a: Table, b: Table, ensemble) -> None:
    """The same catalogue (issue 15's sense): the same rows after sorting by the resume key;
    labels and σ within 1e-3 of each label's std (batches of other sizes round differently);
    every other column equal."""
    keys = ["path", "extname_blue", "extname_red"]
    a, b = a.copy(), b.copy()
    a.sort(keys)
    b.sort(keys)
    assert a.colnames == b.colnames and len(a) == len(b)
    norm = ensemble.normalization
    std = dict(zip(norm.label_names, np.asarray(norm.label_std), strict=True))
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        label = name.removesuffix("_err")
        if label in std:
            assert np.allclose(x, y, rtol=0, atol=1e-3 * std[label], equal_nan=True), name
        else:
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_inputs_are_streamed_from_dirs_globs_and_lists(spectra, tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# my files\n\n{spectra / 'a-1.fits.gz'}\n  {tmp_path / 'gone.fits'}  \n")
    found = iter_input_paths([spectra], listing)
    assert inspect.isgenerator(found)
    names = sorted(os.path.basename(p) for p in found)
    assert names == ["a-1.fits.gz", "a-1.fits.gz", "b-2.fits.gz", "c-3.fits", "gone.fits"]
    globbed = list(iter_input_paths([str(spectra / "**" / "*.fits")]))
    assert [os.path.basename(p) for p in globbed] == ["c-3.fits"]


def test_catalogue_rows_with_catalogue_rv(ensemble, spectra):
    table = predict_files([spectra], model=ensemble, catalogue=spectra / "rv.csv", workers=0)
    assert table.colnames == catalogue_columns(ensemble.labels)
    table.sort("filename")
    assert list(table["filename"]) == ["a-1.fits.gz", "b-2.fits.gz", "c-3.fits"]
    assert list(table["obsid"]) == [101, 102, 103]
    assert list(table["extname_blue"]) == ["COADD_B"] * 3
    # rv_ku0 is the first of the default RV columns present (there is no "rv")
    assert np.allclose(table["rv"], [20.0, -35.0, 5.0])
    assert set(table["rv_source"]) == {"catalogue"}
    assert np.all(table["flag"] == 1) and set(table["status"]) == {""}
    assert np.isfinite(table["Teff[K]"]).all() and (table["Teff[K]_err"] > 0).all()
    assert set(table["model"]) == {"tiny@1"}
    assert table["Teff[K]"].unit == "K" and table["FeH"].unit == "dex"


def test_model_output_is_the_ensemble_on_the_preprocessed_flux(ensemble, spectra):
    from lamost_rrnet.spectra.io import read_mrs
    from lamost_rrnet.spectra.preprocess import preprocess

    table = predict_files(
        [spectra / "a-1.fits.gz"], model=ensemble, catalogue=spectra / "rv.csv", workers=0
    )
    flux = preprocess(read_mrs(spectra / "a-1.fits.gz").coadd(), 20.0)
    mu, sigma = ensemble.predict(flux[None])
    for j, name in enumerate(ensemble.labels):
        assert table[name][0] == pytest.approx(mu[0, j], rel=1e-5, abs=1e-6)
        assert table[f"{name}_err"][0] == pytest.approx(sigma[0, j], rel=1e-5, abs=1e-6)


def test_exposures_get_their_own_rows_and_the_observation_rv(ensemble, spectra):
    table = predict_files(
        [spectra / "a-1.fits.gz"],
        model=ensemble,
        exposures=True,
        catalogue=spectra / "rv.csv",
        workers=0,
    )
    assert list(zip(table["extname_blue"], table["extname_red"], strict=True)) == [
        ("B-100", "R-100"),
        ("B-101", "R-101"),
    ]
    assert np.allclose(table["rv"], 20.0) and set(table["rv_source"]) == {"catalogue"}
    assert np.isfinite(table["Logg"]).all()


def test_rv_join_by_file_name_with_or_without_gz(spectra, tmp_path):
    cat = tmp_path / "rv.csv"
    cat.write_text("filename,rv,rv_ku0\na-1.fits,7.5,1\nsub/b-2.fits.gz,-2.5,1\n")
    rv = load_rv_table(cat, None, str(tmp_path))
    assert rv.column == "rv"
    assert rv.lookup(-1, "a-1.fits.gz") == 7.5
    assert rv.lookup(999, "b-2.fits") == -2.5
    assert rv.lookup(101, "c-3.fits") is None
    assert load_rv_table(cat, "rv_ku0", str(tmp_path)).lookup(-1, "a-1.fits") == 1.0


def test_rv_join_by_obsid_first_from_fits_and_parquet(tmp_path):
    t = Table({"obsid": [5, 6], "filename": ["x.fits", "y.fits"], "RV_LASP0": [1.5, -9999.0]})
    for name in ("cat.fits", "cat.parquet"):
        t.write(tmp_path / name)
        rv = load_rv_table(tmp_path / name, None, str(tmp_path))
        assert rv.column == "RV_LASP0"
        assert rv.lookup(5, "other.fits") == 1.5
        assert rv.lookup(6, "y.fits") is None  # -9999 means no RV


def test_rv_catalogue_problems_are_clear(spectra, tmp_path):
    cat = tmp_path / "cat.csv"
    cat.write_text("obsid,teff\n1,5000\n")
    with pytest.raises(CatalogueError, match="no RV column rv or rv_ku0"):
        load_rv_table(cat, None, str(tmp_path))
    with pytest.raises(CatalogueError, match="no RV column vhelio"):
        load_rv_table(cat, "vhelio", str(tmp_path))
    cat.write_text("star,rv\n1,5\n")
    with pytest.raises(CatalogueError, match="neither an obsid nor a filename"):
        load_rv_table(cat, None, str(tmp_path))


def _bad_inputs(root: Path) -> dict[str, str]:
    """Files that must become failed rows, by the status each must get."""
    good = write_file(root / "good.fits.gz", 1, 1)
    (root / "text.fits").write_text("SIMPLE  = this is not FITS")
    (root / "truncated.fits.gz").write_bytes(good.read_bytes()[:2000])
    write_file(root / "no-coadd.fits", 3, 3, coadd=False, exposures=1)
    write_file(root / "narrow.fits", 4, 4, blue_span=(5100.0, 5300.0))
    write_file(root / "zeros.fits", 5, 5, scale=0.0)
    nan_arm = _arm("COADD_B", BLUE, np.random.default_rng(0))
    nan_arm.flux[:] = np.nan
    write_mrs(
        root / "nan-arm.fits",
        {"OBSID": 6},
        [nan_arm, _arm("COADD_R", RED, np.random.default_rng(1))],
    )
    return {
        "text.fits": "unreadable",
        "truncated.fits.gz": "unreadable",
        "no-coadd.fits": "missing_extension",
        "narrow.fits": "no_coverage",
        "zeros.fits": "nonfinite",
        "nan-arm.fits": "bad_arm",
        "missing.fits": "not_found",
    }


def test_bad_spectra_are_rows_not_crashes(ensemble, tmp_path):
    expected = _bad_inputs(tmp_path)
    write_file(tmp_path / "dark.fits", 7, 7, snr=0.0)  # readable, S/N 0: labels, flag 0
    rv = tmp_path / "rv.csv"
    rv.write_text("obsid,rv\n" + "".join(f"{i},0\n" for i in range(1, 8)))
    table = predict_files(
        [tmp_path, tmp_path / "missing.fits"], model=ensemble, catalogue=rv, workers=0
    )
    rows = {r["filename"]: r for r in table}
    assert len(table) == len(expected) + 2
    for name, status in expected.items():
        row = rows[name]
        assert row["status"] == status, name
        assert row["flag"] == 0 and np.isnan(row["Teff[K]"]) and np.isnan(row["CuH_err"]), name
    assert rows["good.fits.gz"]["flag"] == 1
    dark = rows["dark.fits"]
    assert np.isfinite(dark["Teff[K]"]) and dark["flag"] == 0
    assert "low_snr" in dark["status"]


def test_flag_uses_the_model_label_ranges(spectra):
    narrow = tiny_ensemble(ranges={"Teff[K]": (0.0, 1.0)})
    table = predict_files([spectra], model=narrow, catalogue=spectra / "rv.csv", workers=0)
    assert np.all(table["flag"] == 0)
    assert set(table["status"]) == {"out_of_range"}


def test_model_with_other_labels(spectra):
    other = tiny_ensemble({"G": ("vmic", "FeH", "Teff[K]")})
    table = predict_files([spectra], model=other, catalogue=spectra / "rv.csv", workers=0)
    assert table.colnames[8:15] == [
        "Teff[K]",
        "Teff[K]_err",
        "FeH",
        "FeH_err",
        "vmic",
        "vmic_err",
        "flag",
    ]


@pytest.mark.parametrize("layout", ["workers", "feeder"])
def test_worker_processes_give_the_same_rows(ensemble, spectra, layout):
    """Workers that run the whole pipeline, and workers that feed this process's model (the GPU
    layout, run here on the CPU), give the rows of a run in one process."""
    kw = {"model": ensemble, "catalogue": spectra / "rv.csv", "exposures": True}
    inline = predict_files([spectra], workers=0, **kw)
    pooled = predict_files([spectra], workers=2, batch_size=1, layout=layout, **kw)
    for t in (inline, pooled):
        t.sort(["filename", "extname_blue"])
    assert len(inline) == 4
    for name in inline.colnames:
        if inline[name].dtype.kind == "f":  # batches of another size: float rounding differs
            assert np.allclose(inline[name], pooled[name], rtol=1e-5, equal_nan=True), name
        else:
            assert np.array_equal(inline[name], pooled[name]), name


def test_model_threads_and_default_workers(ensemble, spectra, monkeypatch):
    """The model gets a thread per core (its CPU shards share them with the workers) unless
    told otherwise; the default worker count leaves a CPU model most of the cores."""
    import torch

    seen = []
    predict = ensemble.predict

    def spy(flux, batch_size=256, **kwargs):
        seen.append(torch.get_num_threads())
        return predict(flux, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(ensemble, "predict", spy)
    monkeypatch.setattr("lamost_rrnet.predict._cores", lambda: 3)
    before = torch.get_num_threads()
    kw = {"model": ensemble, "catalogue": spectra / "rv.csv"}
    predict_files([spectra / "a-1.fits.gz"], workers=0, **kw)
    predict_files([spectra / "a-1.fits.gz"], workers=0, threads=1, **kw)
    assert seen == [3, 1]
    assert torch.get_num_threads() == before
    monkeypatch.setattr("lamost_rrnet.predict._cores", lambda: 12)
    assert default_workers("cpu") == 12 and default_workers("cuda") == 11
    monkeypatch.setattr("lamost_rrnet.predict._cores", lambda: 2)
    assert default_workers("cpu") == 2 and default_workers("mps") == 1


def test_ccf_rv_when_there_is_no_catalogue(ensemble, spectra):
    rv = pytest.importorskip("lamost_rrnet.spectra.rv")
    from lamost_rrnet.spectra.io import read_mrs

    path = spectra / "a-1.fits.gz"
    coadd_rv, _ = rv.estimate_rv(read_mrs(path).coadd())
    table = predict_files([path], model=ensemble, workers=0, exposures=True)
    assert len(table) == 2 and set(table["rv_source"]) == {"ccf"}
    assert np.allclose(table["rv"], coadd_rv)  # measured once on the coadd, for each exposure
    table = predict_files([path], model=ensemble, workers=0)
    assert table["rv_source"][0] == "ccf" and table["rv"][0] == pytest.approx(coadd_rv)


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_file_outputs_and_their_headers(ensemble, spectra, tmp_path, suffix):
    out = tmp_path / f"cat{suffix}"
    summary = predict_files(
        [spectra], model=ensemble, catalogue=spectra / "rv.csv", output=out, workers=0
    )
    assert (summary.rows, summary.ok, summary.flagged, summary.failed) == (3, 3, 0, 0)
    assert not journal_dir(out).exists()
    table = _read(out)
    assert table.colnames == catalogue_columns(ensemble.labels)
    assert sorted(table["obsid"]) == [101, 102, 103]
    if suffix == ".fits":
        with fits.open(out) as hdul:
            assert hdul[0].header["MODEL"] == "tiny" and hdul[0].header["MODELVER"] == "1"
            assert hdul[0].header["RRNETVER"]
            h = hdul[1].header
            tunit = {h[f"TTYPE{i}"]: h.get(f"TUNIT{i}") for i in range(1, h["TFIELDS"] + 1)}
            assert (tunit["Teff[K]"], tunit["NiH_err"], tunit["rv"]) == ("K", "dex", "km/s")
            assert h["TCOMM1"]


def test_existing_output_refused_overwritten_or_resumed(ensemble, spectra, tmp_path):
    out = tmp_path / "cat.parquet"
    kw = {"model": ensemble, "catalogue": spectra / "rv.csv", "output": out, "workers": 0}
    predict_files([spectra / "a-1.fits.gz"], **kw)
    with pytest.raises(OutputExistsError, match="--resume"):
        predict_files([spectra], **kw)
    summary = predict_files([spectra], resume=True, **kw)
    assert (summary.skipped_files, summary.rows) == (1, 2)
    assert sorted(_read(out)["filename"]) == ["a-1.fits.gz", "b-2.fits.gz", "c-3.fits"]
    predict_files([spectra / "sub" / "deeper" / "c-3.fits"], overwrite=True, **kw)
    assert list(_read(out)["filename"]) == ["c-3.fits"]


def test_no_input_files_is_an_error(ensemble, tmp_path):
    with pytest.raises(RRNetError, match="no input files"):
        predict_files([tmp_path], model=ensemble, workers=0)


@pytest.fixture(scope="module")
def model_dir(ensemble, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    ensemble.save(path)
    return path


def test_cli_csv_on_stdout(run_cli, model_dir, spectra, tmp_path):
    common = ("--model", model_dir, "--catalogue", spectra / "rv.csv", "--workers", "0")
    code, out, err = run_cli("predict", spectra, "-o", "-", *common)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].replace('"', "").split(",") == catalogue_columns(list(PUBLISHED_ORDER))
    assert len(lines) == 4
    assert "3 ok, 0 flagged, 0 failed" in err and "spectra/s" in err and "rv_ku0" in err
    listing = tmp_path / "files.txt"
    listing.write_text(f"{spectra / 'a-1.fits.gz'}\n{spectra / 'sub' / 'b-2.fits.gz'}\n")
    code, out, err = run_cli("predict", "--list", listing, "--quiet", *common)
    assert code == 0 and err == "" and len(out.splitlines()) == 3


def test_cli_exit_codes(run_cli, model_dir, spectra, tmp_path):
    out = tmp_path / "c.csv"
    out.write_text("exists")
    common = ("--model", model_dir, "--workers", "0", "--quiet")
    assert run_cli("predict", spectra, "-o", out, *common)[0] == 1  # existing output
    code, _, err = run_cli("predict", tmp_path / "empty-dir-does-not-exist", *common)
    assert code == 2  # a path that does not exist is a command-line error
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("predict", tmp_path / "empty", *common[:-1])
    assert code == 1 and "no input files" in err
    code, _, err = run_cli(
        "predict", spectra, "--model", tmp_path / "no-model", "-o", tmp_path / "x.fits"
    )
    assert code == 1 and not (tmp_path / "x.fits").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli("predict", spectra, "-o", blocker / "x.fits", *common[:-1])
    assert code == 1 and "a-file" in err  # an output that cannot be written
    assert run_cli("predict", spectra, "-o", tmp_path / "x.txt", *common)[0] == 2
    assert run_cli("predict", spectra, "--resume", *common)[0] == 2  # resume needs a file


def test_stdout_closed_early_ends_quietly(model_dir, spectra):
    """`predict -o - | head`: the reader goes away, and predict stops at once with exit 1 (the
    environment ended the run, as Click and Python's docs have it), quietly: no traceback."""
    args = ["predict", str(spectra), "-o", "-", "--model", str(model_dir), "--workers", "0"]
    code = "from lamost_rrnet.cli.app import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--catalogue", str(spectra / "rv.csv")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before predict writes anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    assert b"Traceback" not in err and b"rror" not in err and b"Exception" not in err


def test_a_second_run_on_the_same_output_is_refused(run_cli, model_dir, spectra, tmp_path):
    """While one run holds an output, another stops with exit 1 naming the holder; the lock
    goes with its holder, and a killed holder leaves none behind."""
    from lamost_rrnet.errors import OutputBusyError
    from lamost_rrnet.locking import exclusive, lock_path

    out = tmp_path / "cat.fits"
    common = ("--model", model_dir, "--workers", "0", "--quiet")
    with exclusive(out):
        with pytest.raises(OutputBusyError, match=f"PID {os.getpid()}"):
            predict_files([spectra], model=model_dir, output=out, workers=0, resume=True)
        code, _, err = run_cli("predict", spectra, "-o", out, "--resume", *common)
        assert code == 1 and "cat.fits" in err and "another run" in err
    assert not lock_path(out).exists() and not out.exists()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from lamost_rrnet.locking import exclusive\n"
            f"with exclusive({str(out)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline() == b"held\n"
    assert run_cli("predict", spectra, "-o", out, *common)[0] == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    code, _, err = run_cli("predict", spectra, "-o", out, *common)
    assert code == 0, err
    assert out.exists() and not lock_path(out).exists()


def test_resume_after_sigkill_loses_and_duplicates_nothing(run_cli, model_dir, spectra, tmp_path):
    """Kill a run with SIGKILL once it has written chunks; --resume completes it exactly."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [f"s{i:03d}.fits.gz" for i in range(4 * CHUNK_FILES)]  # four chunks
    for name in names:
        (inputs / name).symlink_to(spectra / "sub" / "b-2.fits.gz")
    out = tmp_path / "cat.fits"
    args = [
        "predict",
        str(inputs),
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--quiet",
        "--threads",
        "1",
    ]
    code = "from lamost_rrnet.cli.app import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.PIPE)
    journal = journal_dir(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(journal.glob("chunk-*.parquet"))) >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # atomic: no half-written catalogue
    assert len(list(journal.glob("chunk-*.parquet"))) >= 2
    assert run_cli(*args, "--resume")[0] == 0
    assert sorted(_read(out)["filename"]) == names
    assert not journal.exists()


def test_reproduces_the_published_pipeline_by_hand(shared_dir, real_spectra, tmp_path):
    """A fake copy of the published repository (seeded weights, the real label_config): predict
    on the four real files equals FACTS.md §3-4 computed by hand, from our per-spectrum
    published-method preprocessing and from the published reference outputs, to 1e-3 of each
    label's std on all four files.
    """
    import torch

    from helpers_published import (
        manifest,
        member_seed,
        published_forward,
        seeded_state_dict,
        write_fake_published,
    )
    from lamost_rrnet.published_layout import load_label_config
    from lamost_rrnet.spectra.io import read_mrs
    from lamost_rrnet.spectra.preprocess import normalize_reference, resample

    root = write_fake_published(tmp_path / "published", shared_dir)
    references, rvs, lines = {}, {}, ["filename,rv"]
    for ref in sorted((shared_dir / "published_rrnet" / "reference").glob("*.npy")):
        stem, rv = ref.stem.rsplit("_rv", 1)  # the RV is in the reference's name
        name = next(n for n in real_spectra if n.startswith(stem + "."))
        references[name] = np.load(ref)
        rvs[name] = float(rv)
        lines.append(f"{name},{float(rv)}")
    assert len(references) == 4
    (tmp_path / "rv.csv").write_text("\n".join(lines) + "\n")
    table = predict_files(
        list(real_spectra.values()),
        model=root,
        catalogue=tmp_path / "rv.csv",
        workers=0,
        device="cpu",
    )
    assert len(table) == 4 and set(table["status"]) != {""}
    names = list(table["filename"])

    # FACTS.md §3 steps 5-6 and §4, by hand
    config = load_label_config(root / "data" / "refer_set" / "label_config.pkl")
    shapes = manifest(shared_dir)

    def by_hand(flux: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        x = (np.clip(flux, -0.5, 2.5) - config["flux_mean"]) / config["flux_std"]
        x = torch.from_numpy(x.astype(np.float32))
        out = {}
        for group, labels in PAPER_GROUPS.items():
            mus, variances = [], []
            for i in range(6):
                state = seeded_state_dict(shapes[group]["state_dict"], member_seed(group, i))
                with torch.no_grad():
                    mu_i, var_i = published_forward(state, x)
                mus.append(mu_i.double().numpy())
                variances.append(var_i.double().numpy())
            mus = np.array(mus)
            mu = mus.mean(axis=0)
            sigma = np.sqrt(np.mean(np.array(variances) + mus**2, axis=0) - mu**2)
            for j, label in enumerate(labels):
                k = config["label_list"].index(label)
                std, mean = config["label_std"][k], config["label_mean"][k]
                out[label] = (mu[:, j] * std + mean, sigma[:, j] * std, std)
        return out

    ours = np.stack(
        [normalize_reference(resample(read_mrs(real_spectra[n]).coadd(), rvs[n])) for n in names]
    )
    published = np.stack([references[name] for name in names]).astype(np.float32)
    for flux in (ours, published):
        for label, (value, error, std) in by_hand(flux).items():
            np.testing.assert_allclose(table[label], value, rtol=0, atol=1e-3 * std, err_msg=label)
            np.testing.assert_allclose(
                table[f"{label}_err"], error, rtol=0, atol=1e-3 * std, err_msg=label
            )
    # the S/N ~ 0 file: labels, but flag 0
    dark = table[table["filename"] == "med-58268-HIP95119KP01_sp12-076.fits.gz"][0]
    assert np.isfinite(dark["Teff[K]"]) and dark["flag"] == 0 and "low_snr" in dark["status"]


# ---------------------------------------------------------------------------------------------
# Input identity and hard-to-break runs (issue 14)


def _paths(path) -> list[bytes]:
    from lamost_rrnet.identity import unescape_path

    return sorted(unescape_path(p) for p in _read(path)["path"])


def test_undecodable_names_are_ordinary_rows(ensemble, spectra, tmp_path):
    """Linux names are bytes: one that is not UTF-8 gets a row, its path kept exactly."""
    from lamost_rrnet.identity import escape_path

    root = tmp_path / "in"
    good = write_file(root / os.fsdecode(b"caf\xe9-\xff.fits"), 7, 7)
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"# bytes, not UTF-8\n" + os.fsencode(good) + b"\n" + b"gone-\xfe.fits\n")
    out = tmp_path / "cat.fits"
    summary = predict_files([root], list_file=listing, model=ensemble, output=out, workers=0)
    assert summary.rows == 2 and summary.repeated == 1  # the directory and the list name it
    table = _read(out)
    rows = {r["filename"]: r for r in table}
    assert set(rows) == {"caf\\xe9-\\xff.fits", "gone-\\xfe.fits"}
    assert rows["caf\\xe9-\\xff.fits"]["flag"] == 1
    assert rows["gone-\\xfe.fits"]["status"] == "not_found"
    assert _paths(out) == sorted([os.fsencode(good), b"gone-\xfe.fits"])
    assert escape_path(os.fsencode(good)) in set(table["path"])


def test_same_base_name_in_two_directories_are_two_inputs(ensemble, spectra, tmp_path):
    a = write_file(tmp_path / "a" / "x.fits", 1, 1)
    b = write_file(tmp_path / "b" / "x.fits", 2, 2)
    out = tmp_path / "cat.parquet"
    kw = {"model": ensemble, "output": out, "workers": 0}
    predict_files([a], **kw)
    summary = predict_files([a, b], resume=True, **kw)
    assert (summary.skipped_files, summary.rows) == (1, 1)
    assert sorted(_read(out)["obsid"]) == [1, 2]
    assert _paths(out) == sorted([os.fsencode(a), os.fsencode(b)])


def test_each_input_is_taken_once_but_links_are_other_inputs(ensemble, spectra, tmp_path):
    a = spectra / "a-1.fits.gz"
    link = tmp_path / "link.fits.gz"
    link.symlink_to(a)
    hard = tmp_path / "hard.fits.gz"
    os.link(a, hard)
    table_and_summary = predict_files(
        [spectra, a, f"{spectra}/./a-1.fits.gz", str(spectra / "**" / "*.fits*"), link, hard],
        model=ensemble,
        catalogue=spectra / "rv.csv",
        output=tmp_path / "cat.csv",
        workers=0,
    )
    assert table_and_summary.rows == 5 and table_and_summary.repeated == 5
    names = sorted(_read(tmp_path / "cat.csv")["filename"])
    assert names == ["a-1.fits.gz", "b-2.fits.gz", "c-3.fits", "hard.fits.gz", "link.fits.gz"]


def test_header_values_are_checked():
    from lamost_rrnet.pipeline import header_values

    good = header_values({"OBSID": 5, "RA": 359.5, "DEC": -89.0})
    assert (good.obsid, good.ra, good.dec, good.unusable) == (5, 359.5, -89.0, ())
    assert header_values({"OBSID": "12", "RA": "1.5"}).obsid == 12
    missing = header_values({})
    assert missing.obsid == -1 and np.isnan(missing.ra) and missing.unusable == ()
    for bad in (
        {"OBSID": 2**64},
        {"OBSID": -3},
        {"OBSID": "x1"},
        {"OBSID": 1.5},
        {"OBSID": True},
        {"RA": float("inf")},
        {"RA": "nan"},
        {"RA": 400.0},
        {"RA": 10**400},
        {"DEC": -90.5},
        {"DEC": "12:30:00"},
        {"DEC": None},
    ):
        values = header_values(bad)
        assert values.unusable == tuple(bad), bad
        assert values.obsid == -1 and np.isnan(values.ra) and np.isnan(values.dec)


def test_unusable_header_cards_give_bad_header_rows(ensemble, tmp_path):
    """No header value may abort a run: an OBSID beyond int64 once did (OverflowError)."""
    rng = np.random.default_rng(0)
    arms = [_arm("COADD_B", BLUE, rng), _arm("COADD_R", RED, rng)]
    write_mrs(tmp_path / "big-obsid.fits", {"OBSID": 2**64, "RA": 10.0, "DEC": 5.0}, arms)
    write_mrs(tmp_path / "bad-radec.fits", {"OBSID": 9, "RA": "inf", "DEC": -100.0}, arms)
    negative = [_arm("COADD_B", BLUE, rng, snr=-5.0), _arm("COADD_R", RED, rng)]
    write_mrs(tmp_path / "bad-snr.fits", {"OBSID": 10, "RA": 1.0, "DEC": 2.0}, negative)
    nan_arm = _arm("COADD_B", BLUE, rng)
    nan_arm.flux[:] = np.nan
    write_mrs(tmp_path / "both.fits", {"OBSID": "abc"}, [nan_arm, arms[1]])
    write_file(tmp_path / "good.fits", 11, 3)
    out = tmp_path / "cat.fits"
    summary = predict_files([tmp_path], model=ensemble, output=out, workers=0)
    assert summary.rows == 5
    rows = {r["filename"]: r for r in fits.getdata(out, 1)}
    for name in ("big-obsid.fits", "bad-radec.fits", "bad-snr.fits"):
        row = rows[name]
        assert "bad_header" in row["status"] and row["flag"] == 0, name
        assert np.isfinite(row["Teff[K]"]), name  # the spectrum is fine: labels
    assert rows["big-obsid.fits"]["obsid"] == -1 and rows["big-obsid.fits"]["ra"] == 10.0
    assert rows["bad-radec.fits"]["obsid"] == 9 and np.isnan(rows["bad-radec.fits"]["ra"])
    assert np.isnan(rows["bad-radec.fits"]["dec"]) and np.isnan(rows["bad-snr.fits"]["snr_blue"])
    assert rows["both.fits"]["status"] == "bad_arm,bad_header" and rows["both.fits"]["obsid"] == -1
    assert rows["good.fits"]["status"] == "" and rows["good.fits"]["flag"] == 1


def test_a_reader_error_may_carry_its_own_status(ensemble, spectra, monkeypatch):
    from lamost_rrnet.errors import SpectrumError

    class TooBig(SpectrumError):
        status = "too_large"

    def refuse(path, extensions=None, **kwargs):
        raise TooBig(f"{path}: over the cap")

    monkeypatch.setattr("lamost_rrnet.pipeline.read_mrs", refuse)
    table = predict_files([spectra / "sub" / "deeper" / "c-3.fits"], model=ensemble, workers=0)
    assert list(table["status"]) == ["too_large"] and table["flag"][0] == 0


def test_fifos_are_skipped_and_unlistable_directories_warned(
    run_cli, model_dir, spectra, tmp_path, monkeypatch, caplog
):
    """A FIFO named *.fits is never opened (opening one blocks until a writer comes). The
    library logs the warnings; the CLI shows them, with --quiet too."""
    root = tmp_path / "in"
    root.mkdir()
    os.mkfifo(root / "pipe.fits")
    os.mkfifo(tmp_path / "named.fits")
    (root / "dir.fits").symlink_to(spectra / "sub")  # a symlink to a directory
    write_file(root / "locked" / "x.fits", 1, 1)
    write_file(root / "ok.fits", 2, 2)
    real_scandir = os.scandir

    def scandir(path):
        if isinstance(path, str) and os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("lamost_rrnet.inputs.os.scandir", scandir)
    signal.alarm(120)  # a hang fails the test instead of the whole run
    try:
        with caplog.at_level(logging.WARNING, logger="lamost_rrnet"):
            summary = predict_files([root, tmp_path / "named.fits"], model=model_dir, workers=0)
        args = ("predict", root, tmp_path / "named.fits", "--model", model_dir, "--workers", "0")
        code, out, err = run_cli(*args)
        quiet_code, _, quiet_err = run_cli(*args, "--quiet")
    finally:
        signal.alarm(0)
    assert len(summary) == 1 and summary["filename"][0] == "ok.fits"
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("lamost_rrnet")]
    assert any("pipe.fits: not a regular file" in m for m in logged)
    assert any("locked: cannot be listed" in m for m in logged)
    assert code == 0 and len(out.splitlines()) == 2
    assert "pipe.fits: not a regular file" in err and "dir.fits: a directory" in err
    assert "named.fits: not a regular file" in err
    assert "warning: " in err and "locked: cannot be listed (Permission denied): skipped" in err
    assert "3 inputs skipped: not regular files" in err
    assert "1 directories skipped" in err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert quiet_code == 0 and quiet_err.splitlines() == warned


def test_resume_never_loses_the_rows_of_a_finished_output(ensemble, spectra, monkeypatch, tmp_path):
    """A kill while the output's rows are copied into the journal, or while the journal is
    removed after assembly, must leave nothing that a later --resume takes for the whole."""
    import shutil

    import lamost_rrnet.catalogue as catalogue

    out = tmp_path / "cat.fits"
    kw = {"model": ensemble, "catalogue": spectra / "rv.csv", "output": out, "workers": 0}
    predict_files([spectra], **kw)
    monkeypatch.setattr(catalogue, "_IMPORT_ROWS", 1)
    append = catalogue.Journal.append
    calls = []

    def killed_on_second(self, table):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as SIGKILL would, mid-copy
        append(self, table)

    monkeypatch.setattr(catalogue.Journal, "append", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        predict_files([spectra], resume=True, **kw)
    monkeypatch.setattr(catalogue.Journal, "append", append)
    new = write_file(tmp_path / "new.fits", 104, 4)
    summary = predict_files([spectra, new], resume=True, **kw)
    assert (summary.skipped_files, summary.rows) == (3, 1)
    assert sorted(_read(out)["obsid"]) == [101, 102, 103, 104]

    # Killed half-way through removing the assembled journal: the next run must not
    # resume from what is left of it.
    rmtree = shutil.rmtree

    def half_removed(path, *args, **kwargs):
        chunks = sorted(Path(path).glob("chunk-*.parquet"))
        if chunks:
            chunks[0].unlink()
            raise KeyboardInterrupt
        rmtree(path, *args, **kwargs)

    newer = write_file(tmp_path / "newer.fits", 105, 5)
    monkeypatch.setattr(catalogue.shutil, "rmtree", half_removed)
    monkeypatch.setattr(catalogue, "_IMPORT_ROWS", 65536)
    with pytest.raises(KeyboardInterrupt):
        predict_files([newer], resume=True, batch_size=1, **kw)
    monkeypatch.setattr(catalogue.shutil, "rmtree", rmtree)
    predict_files([spectra, new, newer], resume=True, **kw)
    assert sorted(_read(out)["obsid"]) == [101, 102, 103, 104, 105]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cat.fits")] == []


def test_leftovers_of_a_killed_assembly_are_removed(ensemble, spectra, tmp_path):
    import tempfile

    out = tmp_path / "cat.fits"
    kw = {"model": ensemble, "output": out, "workers": 0}
    predict_files([spectra / "sub" / "deeper" / "c-3.fits"], **kw)
    # what atomic_path leaves when killed: its temporary file, named as mkstemp names it
    fd, left = tempfile.mkstemp(prefix=".cat.fits.", suffix=".part", dir=tmp_path)
    os.close(fd)
    (tmp_path / ".cat.fits.journal-old.part").mkdir()
    fd, other = tempfile.mkstemp(prefix=".cat.fits.fits.", suffix=".part", dir=tmp_path)
    os.close(fd)  # another output's (cat.fits.fits): not ours to remove
    predict_files([spectra / "sub" / "deeper" / "c-3.fits"], resume=True, **kw)
    assert not os.path.exists(left) and not (tmp_path / ".cat.fits.journal-old.part").exists()
    assert os.path.exists(other)


def test_resume_checks_the_settings_of_a_finished_output(run_cli, ensemble, spectra, tmp_path):
    from lamost_rrnet.catalogue import FlagRule

    for suffix in (".fits", ".parquet"):
        out = tmp_path / f"cat{suffix}"
        kw = {"catalogue": spectra / "rv.csv", "output": out, "workers": 0, "resume": True}
        predict_files([spectra / "sub" / "deeper" / "c-3.fits"], model=ensemble, **kw)
        other = tiny_ensemble()
        other.name = "other"
        with pytest.raises(OutputExistsError, match="another model"):
            predict_files([spectra], model=other, **kw)
        with pytest.raises(OutputExistsError, match="another exposures"):
            predict_files([spectra], model=ensemble, exposures=True, **kw)
        with pytest.raises(OutputExistsError, match="another flag"):
            predict_files([spectra], model=ensemble, flag_rule=FlagRule(min_snr=5.0), **kw)
        assert predict_files([spectra], model=ensemble, **kw).rows == 2
        assert len(_read(out)) == 3


def test_resume_refuses_a_finished_csv_and_an_old_output(run_cli, model_dir, spectra, tmp_path):
    import pyarrow.parquet as pq

    common = ("--model", model_dir, "--workers", "0", "--quiet")
    out = tmp_path / "cat.csv"
    assert run_cli("predict", spectra / "sub" / "deeper" / "c-3.fits", "-o", out, *common)[0] == 0
    code, _, err = run_cli("predict", spectra, "-o", out, "--resume", *common)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "CSV" in err and ".fits or .parquet" in err
    old = tmp_path / "old.parquet"
    assert run_cli("predict", spectra / "sub" / "deeper" / "c-3.fits", "-o", old, *common)[0] == 0
    table = pq.read_table(old)
    pq.write_table(table.drop_columns(["path"]), old)  # as written before the path column
    code, _, err = run_cli("predict", spectra, "-o", old, "--resume", *common)
    assert code == 1 and "before catalogues had a path column" in err
    assert len(err.strip().splitlines()) == 1


def test_a_csv_run_resumes_from_its_journal(ensemble, spectra, tmp_path, monkeypatch):
    import lamost_rrnet.executors as executors

    monkeypatch.setattr("lamost_rrnet.predict.CHUNK_FILES", 8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(10):  # two chunks of up to 8 files
        (inputs / f"s{i}.fits").symlink_to(spectra / "sub" / "deeper" / "c-3.fits")
    out = tmp_path / "cat.csv"
    rows = executors.predict_rows
    calls = []

    def killed_on_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rows(*args)

    monkeypatch.setattr(executors, "predict_rows", killed_on_second)
    kw = {"model": ensemble, "output": out, "workers": 0, "batch_size": 1}
    with pytest.raises(KeyboardInterrupt):
        predict_files([inputs], **kw)
    monkeypatch.setattr(executors, "predict_rows", rows)
    summary = predict_files([inputs], resume=True, **kw)
    assert (summary.skipped_files, summary.rows) == (8, 2)
    assert sorted(_read(out)["filename"]) == [f"s{i}.fits" for i in range(10)]


def test_non_ascii_model_names_are_escaped_in_the_output(spectra, tmp_path):
    from lamost_rrnet.identity import unescape_path

    named = tiny_ensemble()
    named.name = "tïny ★"
    out = tmp_path / "cat.fits"
    kw = {"model": named, "output": out, "workers": 0}
    predict_files([spectra / "sub" / "deeper" / "c-3.fits"], **kw)
    with fits.open(out) as hdul:
        assert unescape_path(hdul[0].header["MODEL"]).decode() == "tïny ★"
    assert unescape_path(_read(out)["model"][0]).decode() == "tïny ★@1"
    assert predict_files([spectra], resume=True, **kw).rows == 2


def test_a_file_over_max_file_mb_is_a_too_large_row(run_cli, model_dir, spectra, tmp_path):
    big = write_file(tmp_path / "big.fits", 9, 9, n=200_000)  # 2 arms of 3.2 MB each
    shutil.copy(spectra / "a-1.fits.gz", tmp_path / "a-1.fits.gz")
    common = ("--model", model_dir, "--workers", "0", "--quiet", "-o", "-")
    code, out, err = run_cli("predict", tmp_path, "--max-file-mb", "2", *common)
    assert code == 0, err
    rows = {r["filename"]: r for r in csv.DictReader(io.StringIO(out))}
    assert rows["big.fits"]["status"] == "too_large" and rows["big.fits"]["flag"] == "0"
    assert rows["a-1.fits.gz"]["flag"] == "1"
    code, out, err = run_cli("predict", big, *common)  # under the default limit: read
    assert code == 0 and "too_large" not in out


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_workers_of_a_killed_predict_end_with_it(model_dir, spectra, tmp_path):
    for i in range(40):
        shutil.copy(spectra / "a-1.fits.gz", tmp_path / f"copy-{i}.fits.gz")
    cli = "from lamost_rrnet.cli.app import main; main()"
    args = [sys.executable, "-c", cli, "predict", str(tmp_path), "--model", str(model_dir)]
    args += ["--workers", "2", "--quiet", "-o", str(tmp_path / "out.fits")]
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120  # bounds for a loaded machine, not timing claims
    workers: list[int] = []
    while len(workers) < 2 and run.poll() is None and time.monotonic() < deadline:
        workers = _children(run.pid)
        time.sleep(0.02)
    run.kill()
    run.wait()
    assert len(workers) >= 2, "predict ended before its workers could be seen"
    deadline = time.monotonic() + 60
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.05)
    for pid in alive:  # leave nothing behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
