"""prepare: preprocessing into the dataset, rejection, split by star, resume, bad files."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import lamost_rrnet
from lamost_rrnet import prepare as prepare_module
from lamost_rrnet.crossmatch import crossmatch, write_reference
from lamost_rrnet.dataset import open_dataset, work_dir_for
from lamost_rrnet.prepare import Thresholds, prepare_dataset
from lamost_rrnet.spectra.io import read_mrs
from lamost_rrnet.spectra.preprocess import preprocess, resample, resample_ivar
from lamost_rrnet.table_io import read_table
from synth_inputs import write_set

# Row 1: 150 bad pixels (too many); row 2: a run of 40 (too long); row 4: corrupt; row 5: absent.
BAD = {1: 150, 2: 40}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    cat, labels = write_set(root, n_stars=7, visits=2, seed=5, bad_rows=BAD)
    result = crossmatch(cat, labels_file=labels)
    ref = result.table
    ref.sort("obsid")
    (root / "spectra" / ref["filename"][4]).write_bytes(b"\x1f\x8b not a gzip stream")
    (root / "spectra" / ref["filename"][5]).unlink()
    write_reference(ref, root / "ref.fits")
    return root


def _rejects(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_end_to_end_with_rejects(sim, tmp_path, run_cli):
    out = tmp_path / "dataset.h5"
    code, stdout, stderr = run_cli(
        "prepare",
        sim / "ref.fits",
        "--spectra-root",
        sim / "spectra",
        "-o",
        out,
        "--workers",
        "1",
        "--quiet",
    )
    assert code == 0, stderr
    assert stdout == ""
    rejects = {r["filename"]: r for r in _rejects(tmp_path / "dataset_rejects.csv")}
    assert len(rejects) == 4
    reasons = sorted(r["reason"] for r in rejects.values())
    assert any("outlier pixels (more than 100)" in r for r in reasons)
    assert any("outlier pixels in a row (more than 30)" in r for r in reasons)
    assert any("not a readable FITS file" in r for r in reasons)
    assert any("no such file" in r for r in reasons)
    with open_dataset(out) as ds:
        assert ds.n == 14 - 4
        assert set(ds.meta("filename")).isdisjoint(rejects)
        assert set(ds.meta("rv_source")) == {"catalogue"}
        assert (ds.meta("n_outliers") <= 100).all() and (ds.meta("max_outlier_run") <= 30).all()
        # Each row is exactly the rrnet2022 preprocessing of its file at the catalogue RV.
        i = 3
        mrs = read_mrs(sim / "spectra" / ds.meta("filename")[i])
        expected = preprocess(mrs.coadd(), float(ds.meta("rv")[i]))
        np.testing.assert_allclose(ds.flux([i])[0], expected, rtol=1e-5, atol=1e-6)
        assert ds.label_names[0] == "Teff[K]" and np.isfinite(ds.labels()).all()
        assert np.isfinite(ds.label_errors()).all()
        # ivar is the resampled IVAR in the normalized flux's units: times the continuum².
        rv = float(ds.meta("rv")[i])
        continuum = resample(mrs.coadd(), rv) / expected
        want = resample_ivar(mrs.coadd(), rv) * continuum**2
        got = ds.ivar([i])[0]
        assert ds.has_ivar and (got > 0).mean() > 0.99
        # The median cleaning changes a few flux pixels, and with them this continuum.
        close = np.isclose(got, want, rtol=1e-3)
        assert close.mean() > 0.97


def test_thresholds_are_configurable(sim, tmp_path):
    result = prepare_dataset(
        sim / "ref.fits",
        tmp_path / "d.h5",
        spectra_root=sim / "spectra",
        workers=1,
        thresholds=Thresholds(max_outliers=200, max_outlier_run=200),
        progress=False,
    )
    assert result.n_accepted == 14 - 2  # only the two bad files are rejected now
    assert result.reasons == {"unreadable or unusable file": 2}


def test_split_is_by_star_and_seeded(sim, tmp_path):
    splits = []
    for seed in (0, 0, 1):
        path = tmp_path / f"d{len(splits)}.h5"
        prepare_dataset(
            sim / "ref.fits",
            path,
            spectra_root=sim / "spectra",
            workers=1,
            seed=seed,
            fractions=(0.6, 0.2, 0.2),
            progress=False,
        )
        with open_dataset(path) as ds:
            stars, split = ds.meta("star_id"), ds.meta("split")
            for star in np.unique(stars):
                assert np.unique(split[stars == star]).size == 1, star
            assert set(split) == {"train", "valid", "test"}
            splits.append(split)
    np.testing.assert_array_equal(splits[0], splits[1])
    assert not np.array_equal(splits[0], splits[2])


def test_interrupted_run_resumes_without_redoing_rows(sim, tmp_path, monkeypatch):
    out = tmp_path / "d.h5"
    processed = []
    real = prepare_module.process_rows

    def counting(tasks, *args):
        if len(processed) == 2:
            raise KeyboardInterrupt
        processed.append([t.index for t in tasks])
        return real(tasks, *args)

    monkeypatch.setattr(prepare_module, "process_rows", counting)
    kwargs = dict(spectra_root=sim / "spectra", workers=1, chunk_rows=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(sim / "ref.fits", out, **kwargs)
    assert not out.exists() and work_dir_for(out).exists()
    first = sum(processed, [])
    assert len(first) == 6

    processed.clear()
    monkeypatch.setattr(
        prepare_module, "process_rows", lambda t, *a: processed.append(1) or real(t, *a)
    )
    result = prepare_dataset(sim / "ref.fits", out, resume=True, **kwargs)
    assert len(processed) == 3  # the 8 rows left, in chunks of 3
    assert result.n_accepted == 10 and result.n_rejected == 4
    assert len(_rejects(tmp_path / "d_rejects.csv")) == 4

    fresh = tmp_path / "fresh.h5"
    prepare_dataset(sim / "ref.fits", fresh, **kwargs)
    with open_dataset(out) as a, open_dataset(fresh) as b:
        np.testing.assert_array_equal(a.meta("filename"), b.meta("filename"))
        np.testing.assert_array_equal(a.flux(np.arange(a.n)), b.flux(np.arange(b.n)))
        np.testing.assert_array_equal(a.meta("split"), b.meta("split"))

    processed.clear()  # resuming a finished dataset does nothing and keeps it valid
    result = prepare_dataset(sim / "ref.fits", out, resume=True, **kwargs)
    assert processed == [] and result.n_accepted == 10


def test_worker_processes_give_the_same_dataset(sim, tmp_path):
    kwargs = dict(spectra_root=sim / "spectra", chunk_rows=4, progress=False)
    prepare_dataset(sim / "ref.fits", tmp_path / "one.h5", workers=1, **kwargs)
    prepare_dataset(sim / "ref.fits", tmp_path / "two.h5", workers=2, **kwargs)
    with open_dataset(tmp_path / "one.h5") as a, open_dataset(tmp_path / "two.h5") as b:
        np.testing.assert_array_equal(a.meta("obsid"), b.meta("obsid"))
        np.testing.assert_array_equal(a.flux(np.arange(a.n)), b.flux(np.arange(b.n)))


def test_missing_rv_is_estimated(sim, tmp_path, monkeypatch):
    ref = read_table(sim / "ref.fits")
    truth = np.array(ref["rv"])
    ref["rv"][[0, 3]] = np.nan
    write_reference(ref, tmp_path / "ref.fits")
    calls = []

    def fake_estimate(spectrum):
        calls.append(spectrum.filename)
        return float(truth[list(ref["filename"]).index(spectrum.filename)])

    monkeypatch.setattr(prepare_module, "_estimate_rv", fake_estimate)
    prepare_dataset(
        tmp_path / "ref.fits",
        tmp_path / "d.h5",
        spectra_root=sim / "spectra",
        workers=1,
        progress=False,
    )
    with open_dataset(tmp_path / "d.h5") as ds:
        source = dict(zip(ds.meta("filename"), ds.meta("rv_source"), strict=True))
    estimated = {f for f, s in source.items() if s == "ccf"}
    assert estimated == set(calls) and len(estimated) == 2


def test_missing_rv_uses_the_package_estimator(tmp_path, real_spectra):
    from astropy.table import Table

    from lamost_rrnet.spectra.rv import estimate_rv

    name = "med-58644-TD192102N424113K01_sp12-076.fits.gz"
    ref = Table()
    ref["obsid"] = [1]
    ref["filename"] = [name]
    ref["extname_blue"], ref["extname_red"] = ["COADD_B"], ["COADD_R"]
    ref["snr_blue"], ref["snr_red"], ref["rv"] = [52.0], [80.0], [np.nan]
    ref["star_id"] = ["J192814.09+435531.0"]
    ref["Teff[K]"], ref["Teff[K]_err"] = [5000.0], [50.0]
    write_reference(ref, tmp_path / "ref.fits")
    prepare_dataset(
        tmp_path / "ref.fits",
        tmp_path / "d.h5",
        spectra_root=real_spectra[name].parent,
        workers=1,
        fractions=(1, 0, 0),
        progress=False,
    )
    expected, _ = estimate_rv(read_mrs(real_spectra[name]).coadd())
    with open_dataset(tmp_path / "d.h5") as ds:
        assert ds.meta("rv_source")[0] == "ccf"
        assert ds.meta("rv")[0] == pytest.approx(expected)


def test_gzip_name_mismatch_is_tolerated(sim, tmp_path):
    root = tmp_path / "spectra"
    shutil.copytree(sim / "spectra", root)
    for name in read_table(sim / "ref.fits")["filename"][6:9]:
        gz = root / name
        gz.with_name(gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    result = prepare_dataset(
        sim / "ref.fits", tmp_path / "d.h5", spectra_root=root, workers=1, progress=False
    )
    assert result.n_accepted == 10


def test_all_rejected_is_an_error(sim, tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(
        "prepare",
        sim / "ref.fits",
        "--spectra-root",
        tmp_path / "empty",
        "-o",
        tmp_path / "d.h5",
        "--workers",
        "1",
        "--quiet",
    )
    assert code == 1 and "no spectra were accepted" in stderr
    assert not (tmp_path / "d.h5").exists()
    rejects = _rejects(tmp_path / "d_rejects.csv")
    assert len(rejects) == 14 and all("no such file" in r["reason"] for r in rejects)


@pytest.mark.parametrize(
    "args, code",
    [
        (["--split", "7:1"], 2),
        (["--split", "a:b:c"], 2),
        (["--workers", "0"], 2),
        (["--resume", "--overwrite"], 2),
        (["--preprocessing", "no-such-spec"], 2),
    ],
)
def test_invalid_options(sim, tmp_path, run_cli, args, code):
    got, _, _ = run_cli(
        "prepare",
        sim / "ref.fits",
        "--spectra-root",
        sim / "spectra",
        "-o",
        tmp_path / "d.h5",
        *args,
    )
    assert got == code


def test_bad_reference_and_existing_output_exit_1(sim, tmp_path, run_cli):
    ref = read_table(sim / "ref.fits")
    ref.remove_column("star_id")
    ref.write(tmp_path / "ref.csv")
    code, _, stderr = run_cli("prepare", tmp_path / "ref.csv", "-o", tmp_path / "d.h5")
    assert code == 1 and "missing column(s) star_id" in " ".join(stderr.split())
    (tmp_path / "e.h5").write_text("x")
    code, _, stderr = run_cli("prepare", sim / "ref.fits", "-o", tmp_path / "e.h5")
    assert code == 1 and "exists" in stderr


def test_a_rejects_line_cut_short_by_a_kill_is_dropped_on_resume(sim, tmp_path, monkeypatch):
    out = tmp_path / "d.h5"
    real = prepare_module.process_rows
    calls = []

    def interrupted(tasks, *args):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(tasks, *args)

    monkeypatch.setattr(prepare_module, "process_rows", interrupted)
    kwargs = dict(spectra_root=sim / "spectra", workers=1, chunk_rows=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(sim / "ref.fits", out, **kwargs)
    partial = tmp_path / "d_rejects.csv.partial"
    before = _rejects(partial)
    assert len(before) == 2  # rows 1 and 2, of the first chunk
    # A kill in the middle of writing the next reject row: its first fields, no newline.
    ref = read_table(sim / "ref.fits")
    with open(partial, "a") as f:
        f.write(f"{ref['obsid'][4]},{ref['filename'][4]},COAD")
    monkeypatch.setattr(prepare_module, "process_rows", real)
    prepare_dataset(sim / "ref.fits", out, resume=True, **kwargs)
    text = (tmp_path / "d_rejects.csv").read_text()
    rows = _rejects(tmp_path / "d_rejects.csv")
    assert len(text.splitlines()) == 1 + 4
    assert sorted(r["filename"] for r in rows) == sorted(ref["filename"][[1, 2, 4, 5]])
    for row in rows:
        assert row["extname_blue"] == "COADD_B" and row["extname_red"] == "COADD_R"
        assert row["reason"] and None not in row.values()


def test_a_reason_with_newlines_stays_on_one_line(sim, tmp_path, monkeypatch):
    real = prepare_module.process_rows

    def multiline(tasks, *args):
        result = real(tasks, *args)
        result.rejects = [(i, f"line one\nline two ({r})", a, b) for i, r, a, b in result.rejects]
        return result

    monkeypatch.setattr(prepare_module, "process_rows", multiline)
    prepare_dataset(
        sim / "ref.fits", tmp_path / "d.h5", spectra_root=sim / "spectra", workers=1, progress=False
    )
    lines = (tmp_path / "d_rejects.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 and all("line one line two" in line for line in lines[1:])


# A real `prepare` in a subprocess that SIGKILLs itself at one exact point of the build:
# after a committed chunk, in the middle of writing a part, in the middle of the assembly, and
# at each step of moving the assembled dataset into place and removing the work directory.
# Chunks of 3 rows give 5 parts.
KILLER = """
import io, os, shutil, signal, sys
import numpy as np
from lamost_rrnet import dataset, prepare

prepare.prepare_dataset.__kwdefaults__["chunk_rows"] = 3
where = os.environ["KILL_AT"]
calls = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, before=None, after=None):
    real = getattr(owner, name)
    def wrapper(*args, **kwargs):
        calls.append(name)
        if before and before(*args):
            die()
        result = real(*args, **kwargs)
        if after and after():
            die()
        return result
    setattr(owner, name, wrapper)

if where == "after-chunks":
    wrap(dataset.DatasetWriter, "append", after=lambda: calls.count("append") == 2)
elif where == "with-workers":
    def record_workers():
        if calls.count("append") < 2:
            return False
        import multiprocessing
        with open(os.environ["WORKER_PIDS"], "w") as f:
            f.write(" ".join(str(p.pid) for p in multiprocessing.active_children()))
        return True
    wrap(dataset.DatasetWriter, "append", after=record_workers)
elif where == "mid-part":
    real_savez = np.savez
    def savez(fh, **arrays):
        if len(calls) == 1:
            buffer = io.BytesIO()
            real_savez(buffer, **arrays)
            fh.write(buffer.getvalue()[: buffer.tell() // 2])
            fh.flush()
            die()
        calls.append("savez")
        real_savez(fh, **arrays)
    np.savez = savez
elif where == "mid-assembly":
    wrap(dataset, "_create_row_dataset", before=lambda f, name, *a: name == "meta/obsid")
elif where == "before-move":
    wrap(dataset, "replace_durably", before=lambda src, dst: str(src).endswith("assembled.h5"))
elif where == "before-cleanup":
    finished = lambda path: os.path.exists(os.path.join(path, "finished"))
    wrap(dataset.shutil, "rmtree", before=finished)
elif where == "mid-cleanup":
    real_rmtree = shutil.rmtree
    def rmtree(path, *args, **kwargs):
        if os.path.exists(os.path.join(path, "finished")):
            os.remove(os.path.join(path, "finished"))
            os.remove(os.path.join(path, "part-000000000.npz"))
            die()
        real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree

from lamost_rrnet.cli.app import main
main(sys.argv[1:])
"""


def _prepare_subprocess(args, kill_at=None, **extra_env):
    env = dict(os.environ, **extra_env)
    src = str(Path(lamost_rrnet.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    code = "from lamost_rrnet.cli.app import main; main()"
    if kill_at:
        env["KILL_AT"] = kill_at
        code = KILLER
    cmd = [sys.executable, "-c", code, *args]
    # stderr to a file, not a pipe: a worker left alive would hold a pipe open for ever.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=120)
        err.seek(0)
        proc.stderr = err.read().decode(errors="replace")
    return proc


def _same_dataset(a, b):
    with open_dataset(a) as x, open_dataset(b) as y:
        assert x.n == y.n and x.meta_columns == y.meta_columns
        np.testing.assert_array_equal(x.flux(np.arange(x.n)), y.flux(np.arange(y.n)))
        np.testing.assert_array_equal(x.labels(), y.labels())
        np.testing.assert_array_equal(x.label_errors(), y.label_errors())
        for column in x.meta_columns:
            np.testing.assert_array_equal(x.meta(column), y.meta(column), err_msg=column)


@pytest.fixture(scope="module")
def uninterrupted(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh") / "d.h5"
    kwargs = dict(spectra_root=sim / "spectra", workers=1, chunk_rows=3, progress=False)
    prepare_dataset(sim / "ref.fits", out, **kwargs)
    return out


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize(
    "kill_at",
    ["after-chunks", "mid-part", "mid-assembly", "before-move", "before-cleanup", "mid-cleanup"],
)
def test_sigkill_at_any_point_then_resume_gives_the_same_dataset(
    sim, tmp_path, uninterrupted, kill_at
):
    out = tmp_path / "d.h5"
    args = ["prepare", str(sim / "ref.fits"), "--spectra-root", str(sim / "spectra")]
    args += ["-o", str(out), "--workers", "1", "--quiet"]
    killed = _prepare_subprocess(args, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _prepare_subprocess([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "d_rejects.csv"]
    _same_dataset(out, uninterrupted)
    rejects = sorted(tuple(r.values()) for r in _rejects(tmp_path / "d_rejects.csv"))
    fresh = uninterrupted.with_name("d_rejects.csv")
    assert rejects == sorted(tuple(r.values()) for r in _rejects(fresh))


def test_a_file_over_max_file_mb_is_rejected(sim, tmp_path, run_cli):
    from test_predict import write_file

    root = tmp_path / "spectra"
    shutil.copytree(sim / "spectra", root)
    big = str(read_table(sim / "ref.fits")["filename"][0])  # a good row (BAD, above)
    write_file(root / big, 1, n=200_000)  # 2 arms of 3.2 MB each, under the same name
    out = tmp_path / "d.h5"
    args = ("prepare", sim / "ref.fits", "--spectra-root", root, "-o", out, "--quiet")
    code, _, err = run_cli(*args, "--workers", "1", "--max-file-mb", "2")
    assert code == 0, err
    rejects = {r["filename"]: r["reason"] for r in _rejects(tmp_path / "d_rejects.csv")}
    assert "over the per-file limit of 2 MB" in rejects[big]


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie that nobody reaps has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_workers_of_a_killed_prepare_end_with_it(sim, tmp_path):
    pids_file = tmp_path / "workers"
    args = ["prepare", str(sim / "ref.fits"), "--spectra-root", str(sim / "spectra")]
    args += ["-o", str(tmp_path / "d.h5"), "--workers", "2", "--quiet"]
    killed = _prepare_subprocess(args, "with-workers", WORKER_PIDS=str(pids_file))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 60  # a bound for a loaded machine, not a timing claim
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [p for p in pids if _alive(p)]
    for pid in orphans:  # leave nothing behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert orphans == []
