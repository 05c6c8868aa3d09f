"""The prepared dataset: layout, round trip, chunked reads, splits by star, append and resume."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from lamost_rrnet.dataset import (
    DatasetWriter,
    assign_splits,
    open_dataset,
    work_dir_for,
    write_dataset,
)
from lamost_rrnet.errors import DatasetError, OutputExistsError
from lamost_rrnet.labels import CATALOGUE_LABELS
from lamost_rrnet.spectra.preprocess import RRNET2022, PreprocessSpec

NAMES = list(CATALOGUE_LABELS)


def _rows(n: int, seed: int = 0, first: int = 0):
    rng = np.random.default_rng(seed)
    flux = rng.normal(1, 0.1, (n, 7200)).astype(np.float32)
    labels = rng.normal(0, 1, (n, len(NAMES))).astype(np.float32)
    errors = np.abs(rng.normal(0, 0.1, labels.shape)).astype(np.float32)
    meta = {
        "obsid": np.arange(first, first + n) + 10**9,
        "filename": [f"f{i}.fits.gz" for i in range(first, first + n)],
        "extname_blue": ["COADD_B"] * n,
        "extname_red": ["COADD_R"] * n,
        "star_id": [f"star{(i // 3):03d}" for i in range(first, first + n)],
        "snr_blue": rng.uniform(10, 100, n),
        "snr_red": rng.uniform(10, 100, n),
        "rv": rng.normal(0, 30, n),
        "rv_source": ["catalogue"] * n,
        "n_outliers": rng.integers(0, 50, n),
        "max_outlier_run": rng.integers(0, 10, n),
    }
    return flux, labels, errors, meta


def test_layout_matches_the_design(tmp_path):
    flux, labels, errors, meta = _rows(20)
    path = write_dataset(tmp_path / "d.h5", flux, labels, NAMES, meta, errors)
    with h5py.File(path, "r") as f:
        assert f["flux"].dtype == np.float32 and f["flux"].shape == (20, 7200)
        assert f["flux"].chunks[1] == 7200 and f["flux"].chunks[0] < 20
        assert f["labels"].dtype == np.float32 and f["labels"].shape == (20, 17)
        assert list(f["labels"].attrs["names"]) == NAMES
        assert f["label_errors"].dtype == np.float32
        assert f["meta/obsid"].dtype == np.int64
        for col in ("filename", "extname_blue", "extname_red", "star_id", "rv_source", "split"):
            assert h5py.check_string_dtype(f["meta"][col].dtype).encoding == "utf-8", col
        for col in ("snr_blue", "snr_red", "rv", "n_outliers", "max_outlier_run"):
            assert f["meta"][col].shape == (20,)
        assert PreprocessSpec.from_dict(json.loads(f.attrs["preprocessing"])) == RRNET2022
        assert f.attrs["lamost_rrnet_version"]
        assert "T" in f.attrs["created"]


def test_round_trip_and_chunked_reads(tmp_path):
    flux, labels, errors, meta = _rows(40)
    write_dataset(tmp_path / "d.h5", flux, labels, NAMES, meta, errors)
    with open_dataset(tmp_path / "d.h5") as ds:
        assert ds.n == 40 and ds.label_names == NAMES and ds.preprocessing == RRNET2022
        picks = np.array([33, 2, 17, 2, 39])  # unsorted, repeated, far apart
        np.testing.assert_array_equal(ds.flux(picks), flux[picks])
        np.testing.assert_array_equal(ds.flux(np.arange(5, 12)), flux[5:12])
        np.testing.assert_array_equal(ds.labels(picks), labels[picks])
        np.testing.assert_array_equal(ds.label_errors(picks), errors[picks])
        np.testing.assert_array_equal(ds.labels(picks, ["FeH", "Logg"]), labels[picks][:, [14, 1]])
        assert list(ds.meta("filename", [0, 39])) == ["f0.fits.gz", "f39.fits.gz"]
        np.testing.assert_array_equal(ds.meta("obsid"), meta["obsid"])
        seen = []
        order = np.random.default_rng(1).permutation(40)
        for idx, fl, lab in ds.iter_batches(order, batch_size=16):
            np.testing.assert_array_equal(fl, flux[idx])
            np.testing.assert_array_equal(lab, labels[idx])
            seen.extend(idx)
        assert seen == list(order)
        with pytest.raises(DatasetError, match="no label"):
            ds.labels([0], ["XH"])


def test_ivar_without_a_per_pixel_array_comes_from_each_arms_snr(tmp_path):
    flux, labels, errors, meta = _rows(4)
    meta["snr_blue"] = np.array([10.0, 50.0, np.nan, 0.0])
    meta["snr_red"] = np.array([20.0, 5.0, 30.0, -1.0])
    write_dataset(tmp_path / "d.h5", flux, labels, NAMES, meta, errors)
    with open_dataset(tmp_path / "d.h5") as ds:
        ivar = ds.ivar([1, 0, 2, 3])
    assert ivar.dtype == np.float32 and ivar.shape == (4, 7200)
    n_blue = RRNET2022.grids()[0].size
    want_blue = np.repeat([[2500.0], [100.0], [0.0], [0.0]], n_blue, axis=1)
    want_red = np.repeat([[25.0], [400.0], [900.0], [0.0]], 7200 - n_blue, axis=1)
    np.testing.assert_array_equal(ivar, np.hstack([want_blue, want_red]))


def test_per_pixel_ivar_is_stored_and_read_back(tmp_path):
    flux, labels, errors, meta = _rows(5)
    ivar = np.random.default_rng(2).uniform(1, 1e4, flux.shape).astype(np.float32)
    write_dataset(tmp_path / "d.h5", flux, labels, NAMES, meta, errors, ivar=ivar)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert f.attrs["format_version"] == 2
        assert f["ivar"].dtype == np.float32 and f["ivar"].chunks == f["flux"].chunks
    with open_dataset(tmp_path / "d.h5") as ds:
        assert ds.has_ivar and ds.format_version == 2
        np.testing.assert_array_equal(ds.ivar([4, 0, 4]), ivar[[4, 0, 4]])


def test_a_format_1_dataset_is_read_and_a_newer_format_refused(tmp_path):
    flux, labels, errors, meta = _rows(4)
    write_dataset(tmp_path / "old.h5", flux, labels, NAMES, meta, errors)
    with h5py.File(tmp_path / "old.h5", "a") as f:
        del f.attrs["format_version"]  # as written before format 2
    with open_dataset(tmp_path / "old.h5") as ds:
        assert ds.format_version == 1 and not ds.has_ivar
        np.testing.assert_array_equal(ds.flux([2]), flux[[2]])
        assert ds.ivar([0]).shape == (1, 7200)
    with h5py.File(tmp_path / "old.h5", "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(DatasetError, match="format 99 is newer"):
        open_dataset(tmp_path / "old.h5")


def test_missing_errors_are_nan_and_missing_split_raises(tmp_path):
    flux, labels, _, meta = _rows(6)
    meta["split"] = ["train"] * 5 + ["test"]
    write_dataset(tmp_path / "d.h5", flux, labels, NAMES, meta)
    with open_dataset(tmp_path / "d.h5") as ds:
        assert np.isnan(ds.label_errors([0])).all()
        assert list(ds.indices("test")) == [5]
        with pytest.raises(DatasetError, match="valid split is empty"):
            ds.indices("valid")


def test_bad_files_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "absent.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        open_dataset(tmp_path / "junk.h5")


def test_split_by_star_has_no_star_in_two_splits():
    stars = np.array([f"s{i % 97}" for i in range(1000)])
    split = assign_splits(stars, (0.7, 0.1, 0.2), seed=3)
    for star in np.unique(stars):
        assert np.unique(split[stars == star]).size == 1
    per_star = {s: split[stars == s][0] for s in np.unique(stars)}
    counts = {k: sum(v == k for v in per_star.values()) for k in ("train", "valid", "test")}
    assert counts == {"train": 68, "valid": 10, "test": 19}


def test_splits_are_seeded_and_independent_of_row_order():
    stars = np.array([f"s{i % 50}" for i in range(200)])
    a = assign_splits(stars, seed=5)
    np.testing.assert_array_equal(a, assign_splits(stars, seed=5))
    assert not np.array_equal(a, assign_splits(stars, seed=6))
    order = np.random.default_rng(0).permutation(200)
    np.testing.assert_array_equal(assign_splits(stars[order], seed=5), a[order])


def test_small_sets_still_get_every_split():
    split = assign_splits(["a", "b", "c"], (0.7, 0.1, 0.2))
    assert sorted(split) == ["test", "train", "valid"]


def test_writer_appends_resumes_and_splits(tmp_path):
    path = tmp_path / "d.h5"
    flux, labels, errors, meta = _rows(30)
    first = {k: v[:12] for k, v in meta.items()}
    w = DatasetWriter(path, NAMES)
    w.append(flux[:5], labels[:5], {k: v[:5] for k, v in first.items()}, errors[:5])
    w.append(flux[5:12], labels[5:12], {k: v[5:12] for k, v in first.items()}, errors[5:12])
    assert not path.exists()  # unfinished builds never take the final name
    assert sorted(p.name for p in work_dir_for(path).glob("part-*")) == [
        "part-000000000.npz",
        "part-000000001.npz",
    ]

    w = DatasetWriter(path, NAMES, resume=True)
    assert w.n == 12
    assert ("f3.fits.gz", "COADD_B", "COADD_R") in w.done_keys()
    assert len(w.done_keys()) == 12
    rest = {k: v[12:] for k, v in meta.items()}
    w.append(flux[12:], labels[12:], rest, errors[12:])
    w.finish(seed=2)
    assert not work_dir_for(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]
    with open_dataset(path) as ds:
        assert ds.n == 30
        np.testing.assert_array_equal(ds.flux(np.arange(30)), flux)
        np.testing.assert_array_equal(ds.labels(), labels)
        np.testing.assert_array_equal(ds.label_errors(), errors)
        for name, values in meta.items():
            np.testing.assert_array_equal(ds.meta(name), np.asarray(values), err_msg=name)
        split = ds.meta("split")
        np.testing.assert_array_equal(split, assign_splits(meta["star_id"], seed=2))
        stars = ds.meta("star_id")
        for star in np.unique(stars):
            assert np.unique(split[stars == star]).size == 1


def test_built_dataset_has_the_layout_of_write_dataset(tmp_path):
    flux, labels, errors, meta = _rows(20)
    write_dataset(tmp_path / "a.h5", flux, labels, NAMES, meta, errors, seed=4)
    w = DatasetWriter(tmp_path / "b.h5", NAMES)
    for lo in (0, 8):
        hi = lo + 12 if lo else 8
        w.append(flux[lo:hi], labels[lo:hi], {k: v[lo:hi] for k, v in meta.items()}, errors[lo:hi])
    w.finish(seed=4)

    def layout(path):
        items = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    items.setdefault(
                        name, (obj.shape, obj.dtype, obj.chunks is not None, obj.maxshape)
                    )
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
            attrs = sorted(f.attrs)
            chunks = f["flux"].chunks
        return items, attrs, chunks

    assert layout(tmp_path / "a.h5") == layout(tmp_path / "b.h5")
    with open_dataset(tmp_path / "a.h5") as a, open_dataset(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a.flux(np.arange(20)), b.flux(np.arange(20)))
        np.testing.assert_array_equal(a.meta("split"), b.meta("split"))


def test_writer_never_trusts_temporaries_left_by_a_kill(tmp_path):
    path = tmp_path / "d.h5"
    flux, labels, errors, meta = _rows(10)
    w = DatasetWriter(path, NAMES)
    w.append(flux[:4], labels[:4], {k: v[:4] for k, v in meta.items()})
    # A kill mid-write leaves a temporary beside the part it was writing, and during the
    # assembly one beside the assembled file and one beside the dataset.
    work = work_dir_for(path)
    (work / ".part-000000001.npz.k3j2.part").write_bytes(b"PK\x03\x04 half a zip")
    (work / ".assembled.h5.x9z1.part").write_bytes(b"\x89HDF half")
    (tmp_path / ".d.h5.a1b2c3d4.part").write_bytes(b"half")
    w = DatasetWriter(path, NAMES, resume=True)
    assert w.n == 4
    assert sorted(p.name for p in work.iterdir()) == ["build.json", "part-000000000.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [work.name]
    w.append(flux[4:], labels[4:], {k: v[4:] for k, v in meta.items()})
    w.finish()
    with open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.flux(np.arange(10)), flux)


def test_a_finish_cut_short_is_completed_by_the_next_writer(tmp_path, monkeypatch):
    path = tmp_path / "d.h5"
    flux, labels, errors, meta = _rows(6)
    w = DatasetWriter(path, NAMES)
    w.append(flux, labels, meta, errors)

    def killed():
        raise KeyboardInterrupt  # stands for a kill after the assembled file was committed

    monkeypatch.setattr(w, "_complete_interrupted_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        w.finish()
    assert not path.exists() and (work_dir_for(path) / "assembled.h5").exists()
    monkeypatch.undo()
    with pytest.raises(OutputExistsError):  # the next run finds it done
        DatasetWriter(path, NAMES)
    assert not work_dir_for(path).exists()
    with open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.flux(np.arange(6)), flux)


def test_resume_extends_a_finished_dataset(tmp_path):
    path = tmp_path / "d.h5"
    flux, labels, errors, meta = _rows(10)
    write_dataset(
        path, flux[:6], labels[:6], NAMES, {k: v[:6] for k, v in meta.items()}, errors[:6]
    )
    w = DatasetWriter(path, NAMES, resume=True)  # a finished dataset reopens for appending
    assert w.n == 6 and not path.exists()
    assert ("f5.fits.gz", "COADD_B", "COADD_R") in w.done_keys()
    w.append(flux[6:], labels[6:], {k: v[6:] for k, v in meta.items()}, errors[6:])
    w.finish(seed=1)
    with open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.flux(np.arange(10)), flux)
        np.testing.assert_array_equal(ds.meta("filename"), meta["filename"])
        np.testing.assert_array_equal(ds.meta("split"), assign_splits(meta["star_id"], seed=1))


def test_writer_refuses_existing_and_mismatched(tmp_path):
    path = tmp_path / "d.h5"
    flux, labels, errors, meta = _rows(6)
    write_dataset(path, flux, labels, NAMES, meta, errors)
    with pytest.raises(OutputExistsError):
        DatasetWriter(path, NAMES)
    with pytest.raises(DatasetError, match="other labels"):
        DatasetWriter(path, NAMES[:3], resume=True)
    assert path.exists() and not work_dir_for(path).exists()  # a refused resume changes nothing
    w = DatasetWriter(tmp_path / "u.h5", NAMES)
    w.append(flux, labels, meta, errors)
    with pytest.raises(OutputExistsError, match="unfinished build"):
        DatasetWriter(tmp_path / "u.h5", NAMES)
    with pytest.raises(DatasetError, match="other labels"):
        DatasetWriter(tmp_path / "u.h5", NAMES[:3], resume=True)
    w = DatasetWriter(tmp_path / "u.h5", NAMES, overwrite=True)
    assert w.n == 0
    with pytest.raises(DatasetError, match="no spectra"):
        DatasetWriter(tmp_path / "e.h5", NAMES).finish()


def test_a_part_removed_by_hand_is_redone_not_overwritten(tmp_path):
    path = tmp_path / "d.h5"
    flux, labels, errors, meta = _rows(6)
    w = DatasetWriter(path, NAMES)
    for lo in (0, 3):
        w.append(
            flux[lo : lo + 3], labels[lo : lo + 3], {k: v[lo : lo + 3] for k, v in meta.items()}
        )
    (work_dir_for(path) / "part-000000000.npz").unlink()  # as an unreadable part's error says
    w = DatasetWriter(path, NAMES, resume=True)
    assert w.n == 3 and {k[0] for k in w.done_keys()} == {"f3.fits.gz", "f4.fits.gz", "f5.fits.gz"}
    w.append(flux[:3], labels[:3], {k: v[:3] for k, v in meta.items()})
    w.finish()
    with open_dataset(path) as ds:
        assert list(ds.meta("filename")) == [f"f{i}.fits.gz" for i in (3, 4, 5, 0, 1, 2)]
        np.testing.assert_array_equal(ds.flux(np.arange(6)), flux[[3, 4, 5, 0, 1, 2]])
