"""``predict --shard K/N``: each input in exactly one shard, chosen by a stable hash of its
identity; parts record their shard, resume only their own shard, and an empty shard is a valid
empty catalogue."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from lamost_rrnet.catalogue import catalogue_info, recorded_run
from lamost_rrnet.errors import OutputExistsError, UsageError
from lamost_rrnet.inputs import Shard, shard_hashes
from lamost_rrnet.merge import merge_catalogues
from lamost_rrnet.predict import predict_files
from test_predict import _read, assert_same_catalogue, tiny_ensemble, write_file


@pytest.fixture(scope="module")
def ensemble():
    return tiny_ensemble()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Twelve inputs: links to three coadd files (one with exposures) under other names."""
    root = tmp_path_factory.mktemp("shard")
    sources = [
        write_file(root / "src" / "a.fits.gz", 201, 1, exposures=2),
        write_file(root / "src" / "b.fits", 202, 2),
        write_file(root / "src" / "c.fits.gz", 203, 3),
    ]
    (root / "in").mkdir()
    for i in range(12):
        source = sources[i % 3]
        (root / "in" / f"s{i:02d}{''.join(source.suffixes)}").symlink_to(source)
    return root / "in"


def test_the_hash_is_blake2b_64_of_the_identity_and_the_same_in_every_process():
    paths = ["dr9/a.fits.gz", "./dr9//a.fits.gz", b"dr9/\xff.fits"]
    want = [
        int.from_bytes(hashlib.blake2b(b"dr9/a.fits.gz", digest_size=8).digest(), "little"),
    ] * 2 + [int.from_bytes(hashlib.blake2b(b"dr9/\xff.fits", digest_size=8).digest(), "little")]
    assert shard_hashes(paths).tolist() == want  # a normalized path is the same input
    code = (
        "from lamost_rrnet.inputs import shard_hashes; "
        "print(int(shard_hashes(['dr9/a.fits.gz'])[0]))"
    )
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert int(out.stdout) == want[0], out.stderr


def test_shards_partition_the_input_in_any_order(inputs):
    paths = sorted(str(p) for p in inputs.iterdir())
    for n in (1, 3, 7):
        members = [Shard(k, n).members(paths) for k in range(n)]
        assert np.array_equal(np.sum(members, axis=0), np.ones(len(paths)))
        backwards = [Shard(k, n).members(paths[::-1])[::-1] for k in range(n)]
        assert all(np.array_equal(a, b) for a, b in zip(members, backwards, strict=True))


def test_three_parts_merged_are_the_unsharded_catalogue(ensemble, inputs, tmp_path):
    kw = {"model": ensemble, "workers": 0, "exposures": True}
    whole = tmp_path / "whole.fits"
    predict_files([inputs], output=whole, **kw)
    listing = tmp_path / "files.txt"  # the list in another order than the directory walk
    listing.write_bytes(b"\n".join(os.fsencode(p) for p in sorted(inputs.iterdir())[::-1]))
    (tmp_path / "parts").mkdir()
    paths = []
    for k in range(3):
        out = tmp_path / "parts" / f"part-{k}.parquet"
        summary = predict_files(list_file=listing, output=out, shard=f"{k}/3", **kw)
        assert summary.outside_shard == 12 - summary.files
        assert recorded_run(catalogue_info(out))["shard"] == f"{k}/3"
        paths.append(set(pq.read_table(out, columns=["path"])["path"].to_pylist()))
    assert sum(len(p) for p in paths) == len(set().union(*paths)) == 12  # each in one shard
    assert all(paths)  # with 12 inputs, no shard of three is empty here
    merged = tmp_path / "merged.fits"
    merge_catalogues([tmp_path / "parts"], merged, shards=3)
    assert_same_catalogue(_read(merged), _read(whole), ensemble)
    want, got = fits.getheader(whole, 0), fits.getheader(merged, 0)
    ignore = {"DATE", "SHARDALG", "SHARD", "NSHARDS", "NMERGED"}
    assert {k: want[k] for k in want if k not in ignore} == {
        k: got[k] for k in got if k not in ignore
    }


def test_an_empty_shard_writes_an_empty_catalogue_with_its_shard(ensemble, inputs, tmp_path):
    paths = [str(p) for p in inputs.iterdir()]
    n = 64
    empty = next(k for k in range(n) if not Shard(k, n).members(paths).any())
    for suffix in ("fits", "parquet"):
        out = tmp_path / f"empty.{suffix}"
        summary = predict_files([inputs], model=ensemble, output=out, shard=Shard(empty, n))
        assert (summary.rows, summary.outside_shard) == (0, 12)
        if suffix == "parquet":  # astropy cannot read an empty Parquet table
            table = pq.read_table(out)
            names = table.column_names
        else:
            table = _read(out)
            names = table.colnames
        assert len(table) == 0 and "path" in names
        assert recorded_run(catalogue_info(out))["shard"] == f"{empty}/{n}"
        if suffix == "fits":
            primary = fits.getheader(out, 0)
            assert (primary["SHARDALG"], primary["SHARD"], primary["NSHARDS"]) == (
                "blake2b-64",
                empty,
                n,
            )


def test_a_part_resumes_only_its_own_shard(ensemble, inputs, tmp_path):
    out = tmp_path / "part.fits"
    kw = {"model": ensemble, "workers": 0, "output": out}
    predict_files([inputs], shard="1/3", **kw)
    for other in ("2/3", "1/4", None):
        with pytest.raises(OutputExistsError, match="shard"):
            predict_files([inputs], shard=other, resume=True, **kw)
    summary = predict_files([inputs], shard="1/3", resume=True, **kw)
    assert summary.rows == 0 and summary.skipped_files > 0


def test_shard_usage_errors(ensemble, inputs, tmp_path, run_cli):
    with pytest.raises(UsageError, match="fits or .parquet"):
        predict_files([inputs], model=ensemble, output=tmp_path / "p.csv", shard="0/2")
    model = tmp_path / "model"
    ensemble.save(model)
    common = ("predict", inputs, "--model", model, "--quiet")
    for bad in ("3/3", "1", "a/b", "-1/2"):
        code, out, err = run_cli(*common, "-o", tmp_path / "p.fits", "--shard", bad)
        assert code == 2 and out == "" and "shard" in err, (bad, err)
    code, _, err = run_cli(*common, "-o", tmp_path / "p.csv", "--shard", "0/2")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(*common, "-o", tmp_path / "p.parquet", "--shard", "0/2")
    assert code == 0, err
