"""Merging finished catalogues (lamost_rrnet.merge) and ``lamost-rrnet merge``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

import lamost_rrnet.merge as merge
from lamost_rrnet.catalogue import (
    KEY_COLUMNS,
    CatalogueSchema,
    FlagRule,
    catalogue_info,
    journal_dir,
    read_batches,
    shard_header,
    string_widths,
    write_catalogue,
)
from lamost_rrnet.errors import CatalogueError, OutputExistsError
from lamost_rrnet.identity import escape_path
from lamost_rrnet.merge import MAX_EXAMPLES, merge_catalogues
from test_catalogue import HEADER, SCHEMA, WIDTHS, _rows

# What predict writes, but SHARD*, which a sharded run adds.
RUN_HEADER = {
    **HEADER,
    "MODEL": ("m", "lamost-rrnet model name"),
    "RRNETVER": ("0.1.0", "lamost-rrnet version"),
    "PREPROC": ("rrnet2022", "preprocessing spec"),
    "DATE": ("2026-01-02T03:04:05", "UTC creation time"),
}


def _part(where, start: int, n: int = 4, header=None, **over):
    """A finished catalogue of rows ``start`` .. ``start + n - 1`` (unique keys by row)."""
    table = SCHEMA.table(_rows(SCHEMA, n, start, **over))
    write_catalogue(where, SCHEMA, [table], n, WIDTHS, RUN_HEADER if header is None else header)
    return table


def _shard(where, shard: int, n_shards: int, start: int, **header):
    return _part(where, start, header={**RUN_HEADER, **shard_header(shard, n_shards), **header})


def _read(path) -> pa.Table:
    return pa.concat_tables(read_batches(path, SCHEMA))


def _bits(table: pa.Table) -> dict[str, list]:
    """Each column as its values' bits (numbers) or text: equal only if copied exactly."""
    out = {}
    for field in table.schema:
        values = table[field.name].to_numpy()
        if field.type == pa.string():
            out[field.name] = values.tolist()
        else:
            out[field.name] = values.view(f"u{values.dtype.itemsize}").tolist()
    return out


def _tricky_rows(start: int) -> dict:
    """Rows with NaNs of several payloads, -0.0, and escaped non-ASCII paths."""
    n = 4
    cols = _rows(SCHEMA, n, start, status=["", "unreadable", "low_snr,outliers", ""])
    raw = [b"caf\xc3\xa9/x.fits", b"latin\xe9.fits", b"a\\b c.fits  ", b"tab\there.fits"]
    cols["path"] = [escape_path(b"%d/" % start + r) for r in raw]
    cols["filename"] = [escape_path(r) for r in raw]
    payloads = np.array([0x7FC00001, 0x7F800001, 0xFFC12345, 0x80000000], np.uint32)
    cols["Teff[K]"] = payloads.view(np.float32)  # quiet and signalling NaNs, -0.0
    cols["ra"] = np.array([0x7FF8DEADBEEF0001, 0, 0xFFF0000000000001, 1], np.uint64).view(
        np.float64
    )
    cols["snr_blue"] = np.array([np.nan, 1e-45, -np.inf, 3.4e38], np.float32)
    return cols


@pytest.mark.parametrize("suffix", [".parquet", ".fits", ".csv"])
def test_merge_copies_every_row_exactly(tmp_path, suffix):
    parts = []
    for i, fmt in enumerate([".fits", ".parquet", ".fits"]):
        table = SCHEMA.table(_tricky_rows(10 * i))
        path = tmp_path / f"p{i}{fmt}"
        write_catalogue(path, SCHEMA, [table], 4, string_widths(table), RUN_HEADER)
        parts.append(table)
    out = tmp_path / f"all{suffix}"
    summary = merge_catalogues(tmp_path, out)
    assert (summary.parts, summary.rows, summary.output) == (3, 12, str(out))
    merged, expected = _read(out), pa.concat_tables(parts)
    if suffix == ".csv":  # CSV keeps values, not NaN payloads
        assert merged.to_pandas().equals(expected.to_pandas())
    else:
        assert _bits(merged) == _bits(expected)


def test_merged_header_is_the_parts_common_one(tmp_path):
    for k in range(3):
        _shard(tmp_path / f"p{k}.fits", k, 3, 10 * k)
    out = tmp_path / "all.fits"
    merge_catalogues(tmp_path, out, shards=3)
    header = fits.getheader(out, 0)
    for key in ("MODEL", "MODELVER", "SIGMA", "RRNETVER", "PREPROC", "EXPOSURE", "FLAGSNR"):
        assert header[key] == fits.getheader(tmp_path / "p0.fits", 0)[key]
    assert header.comments["MODEL"] == "lamost-rrnet model name"
    assert header["SHARDALG"] == "blake2b-64" and header["NSHARDS"] == 3
    assert "SHARD" not in header and header["NMERGED"] == 3
    assert header["DATE"] != RUN_HEADER["DATE"][0]


def test_a_key_differing_between_parts_is_dropped(tmp_path):
    _part(tmp_path / "a.parquet", 0)
    _part(tmp_path / "b.parquet", 10, header={**RUN_HEADER, "RRNETVER": "0.2.0"})
    merge_catalogues(tmp_path, tmp_path / "all.parquet")
    header = catalogue_info(tmp_path / "all.parquet").header
    assert "RRNETVER" not in header and header["MODEL"] == "m" and header["NMERGED"] == 2


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"MODELVER": "2"}, "another model (MODEL@MODELVER) than {a} (m@1): {b} (m@2)"),
        ({"EXPOSURE": True}, "another exposure setting (EXPOSURE) than {a} (False): {b} (True)"),
        ({"SIGMA": "calibrated"}, "another kind of sigma (SIGMA) than {a} (raw): {b} (calibrated)"),
        ({"PREPROC": "other"}, "another preprocessing (PREPROC) than {a} (rrnet2022): {b} (other)"),
        (FlagRule(min_snr=5.0).header(), "another flag rule (FLAG*) than {a} (min_snr=10.0"),
    ],
)
def test_parts_of_other_runs_are_refused(tmp_path, change, words):
    a, b = tmp_path / "a.fits", tmp_path / "b.parquet"
    _part(a, 0)
    _part(b, 10, header={**RUN_HEADER, **change})
    with pytest.raises(CatalogueError) as caught:
        merge_catalogues([a, b], tmp_path / "all.parquet")
    assert str(caught.value).startswith("1 part with " + words.format(a=a, b=b))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "all.parquet").exists()


def test_sharded_and_unsharded_parts_are_not_mixed(tmp_path):
    _shard(tmp_path / "a.parquet", 0, 2, 0)
    _part(tmp_path / "b.parquet", 10)
    with pytest.raises(CatalogueError, match=r"another shard algorithm \(SHARDALG\).*\(none\)"):
        merge_catalogues(tmp_path, tmp_path / "all.parquet")


def test_an_unfinished_part_is_refused(tmp_path):
    _part(tmp_path / "a.parquet", 0)
    _part(tmp_path / "b.parquet", 10)
    journal_dir(tmp_path / "b.parquet").mkdir()  # a run is adding to it, or was killed
    journal_dir(tmp_path / "c.fits").mkdir()  # killed before its catalogue was written
    with pytest.raises(CatalogueError, match="^2 parts unfinished") as caught:
        merge_catalogues(tmp_path, tmp_path / "all.parquet")
    assert str(tmp_path / "b.parquet") in str(caught.value)
    assert str(tmp_path / "c.fits") in str(caught.value)


def test_duplicates_are_counted_with_at_most_ten_examples(tmp_path):
    a, b, c = (tmp_path / name for name in ("a.parquet", "b.fits", "c.parquet"))
    _part(a, 0, n=12)
    _part(b, 0, n=12)  # the same 12 rows again
    _part(c, 100, n=3, path=["x", "x", "y"], extname_blue=["B"] * 3, extname_red=["R"] * 3)
    # one file's exposures: the same path, other extensions
    _part(tmp_path / "d.parquet", 200, n=2, path=["x", "x"], extname_blue=["B1", "B2"])
    with pytest.raises(CatalogueError) as caught:
        merge_catalogues(tmp_path, tmp_path / "all.parquet")
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    within, across = lines
    assert within == f"1 duplicate identity within parts: x [B/R] more than once in {c}"
    assert across.startswith("12 duplicate identities across parts: ") and across.endswith(", ...")
    assert across.count(f" in {a} and {b}") == MAX_EXAMPLES
    assert across.count("[extname_blue") == MAX_EXAMPLES


def test_rows_are_read_only_once_the_headers_agree(tmp_path, monkeypatch):
    _part(tmp_path / "a.parquet", 0)
    _part(tmp_path / "b.parquet", 10, header={**RUN_HEADER, "MODELVER": "2"})

    def no_rows(*args, **kwargs):
        raise AssertionError("rows were read")

    monkeypatch.setattr(merge, "read_batches", no_rows)
    with pytest.raises(CatalogueError, match="another model"):
        merge_catalogues(tmp_path, tmp_path / "all.parquet")


def test_the_duplicate_check_reads_only_the_key_columns(tmp_path, monkeypatch):
    _part(tmp_path / "a.parquet", 0)
    _part(tmp_path / "b.parquet", 10)
    passes = []

    def spy(path, schema, columns=None):
        passes.append(columns)
        return read_batches(path, schema, columns)

    monkeypatch.setattr(merge, "read_batches", spy)
    merge_catalogues(tmp_path, tmp_path / "all.parquet")
    assert passes == [KEY_COLUMNS, KEY_COLUMNS, None, None]


def test_missing_repeated_and_foreign_shards_with_shards(tmp_path):
    _shard(tmp_path / "s0.parquet", 0, 6, 0)
    _shard(tmp_path / "s1.parquet", 1, 6, 10)
    _shard(tmp_path / "s1-again.parquet", 1, 6, 20)
    _shard(tmp_path / "s3.parquet", 3, 6, 30)
    with pytest.raises(CatalogueError) as caught:
        merge_catalogues(tmp_path, tmp_path / "all.parquet", shards=6)
    s1, s1_again = tmp_path / "s1.parquet", tmp_path / "s1-again.parquet"
    assert str(caught.value).splitlines() == [
        f"1 shard in more than one part: 1 ({s1_again} and {s1})",
        "3 missing shards of 6: 2, 4, 5",
    ]
    with pytest.raises(CatalogueError, match="4 parts with another shard count .* the 8 asked"):
        merge_catalogues(tmp_path, tmp_path / "all.parquet", shards=8)


def test_without_shards_the_parts_given_are_merged(tmp_path):
    _shard(tmp_path / "s0.parquet", 0, 4, 0)
    _shard(tmp_path / "s3.parquet", 3, 4, 30)
    assert merge_catalogues(tmp_path, tmp_path / "out" / "all.parquet").rows == 8
    with pytest.raises(CatalogueError, match="^2 missing shards of 4: 1, 2$"):
        merge_catalogues(tmp_path, tmp_path / "out" / "again.parquet", shards=4)


def test_unsharded_parts_with_shards(tmp_path):
    _part(tmp_path / "a.parquet", 0)
    with pytest.raises(CatalogueError, match=r"1 part without a shard index \(SHARD\): "):
        merge_catalogues(tmp_path, tmp_path / "all.parquet", shards=1)


def test_every_kind_of_problem_is_reported_at_once(tmp_path):
    _shard(tmp_path / "s0.parquet", 0, 3, 0)
    _shard(tmp_path / "s1.fits", 1, 3, 10, MODELVER="2")
    journal_dir(tmp_path / "s1.fits").mkdir()
    (tmp_path / "s2.parquet").write_bytes(b"not parquet")
    with pytest.raises(CatalogueError) as caught:
        merge_catalogues(tmp_path, tmp_path / "all.parquet", shards=3)
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "1 part unfinished (a run's journal is beside them",
        "1 part not readable",
        f"1 part with another model (MODEL@MODELVER) than {tmp_path / 's0.parquet'} (m@1)",
        "1 missing shard of 3",
    ]


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
    parts = tmp_path / "parts"
    _part(parts / "a.parquet", 0)
    _part(parts / "b.parquet", 10)
    out = parts / "all.parquet"  # among the parts, but never one of them
    journal_dir(out).mkdir()  # of a predict run on this name, killed
    with pytest.raises(OutputExistsError, match="unfinished predict run.*--overwrite"):
        merge_catalogues(parts, out)
    journal_dir(out).rmdir()
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        merge_catalogues(parts, out)
    assert out.read_bytes() == b"old"
    assert merge_catalogues(parts, out, overwrite=True).rows == 8
    journal_dir(out).mkdir()
    (parts / ".all.parquet.k1ll3d_0.part").write_bytes(b"a merge killed while writing")
    assert merge_catalogues(parts, out, overwrite=True).rows == 8
    assert not journal_dir(out).exists()  # it would replace the merge if resumed
    assert not list(parts.glob(".*"))  # no temporary or lock file is left


def test_cli_merges_quietly_on_stdout(run_cli, tmp_path):
    _shard(tmp_path / "s0.fits", 0, 2, 0)
    _shard(tmp_path / "s1.parquet", 1, 2, 10)
    out = tmp_path / "out" / "all.fits"
    code, stdout, err = run_cli("merge", tmp_path, "-o", out, "--shards", "2")
    assert code == 0, err
    assert stdout == "" and "8 rows from 2 parts merged into" in " ".join(err.split())
    assert len(_read(out)) == 8
    code, stdout, err = run_cli("merge", tmp_path, "-o", out, "--quiet", "--overwrite")
    assert (code, stdout, err) == (0, "", "")


def test_cli_refusals_exit_1_with_one_error_line_each(run_cli, tmp_path):
    _shard(tmp_path / "s0.parquet", 0, 4, 0)
    _shard(tmp_path / "s1.parquet", 1, 4, 10, MODELVER="2")
    code, stdout, err = run_cli("merge", tmp_path, "-o", tmp_path / "x" / "all.csv", "--shards", 4)
    assert code == 1 and stdout == ""
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert lines[1] == "error: 2 missing shards of 4: 2, 3"
    (tmp_path / "taken.csv").write_text("x")
    code, stdout, err = run_cli("merge", tmp_path / "s0.parquet", "-o", tmp_path / "taken.csv")
    assert (code, stdout) == (1, "") and "already exists" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["a.parquet", "-o", "all.parquet", "--shards", "0"], "greater than or equal to 1"),
        (["a.parquet"], "Missing option '-o'"),
        (["a.parquet", "-o", "all.txt"], "must end in .fits, .csv or .parquet"),
        (["a.parquet", "-o", "-"], "not stdout"),
        (["nope.parquet", "-o", "all.parquet"], "does not exist"),
        (["-o", "all.parquet"], "Missing argument 'PARTS"),
    ],
)
def test_cli_usage_errors_exit_2(run_cli, tmp_path, args, words):
    _part(tmp_path / "a.parquet", 0)
    args = [tmp_path / a if a.endswith((".parquet", ".txt")) else a for a in args]
    code, stdout, err = run_cli("merge", *args)
    assert code == 2 and stdout == ""
    assert words in " ".join(err.replace("│", " ").split())
    assert not (tmp_path / "all.parquet").exists()


def test_parts_that_are_no_catalogue_or_another_models(tmp_path):
    _part(tmp_path / "a.parquet", 0)
    other = CatalogueSchema.for_labels(["Teff[K]"])
    table = other.table(_rows(other, 2, 10))
    write_catalogue(tmp_path / "b.parquet", other, [table], 2, WIDTHS, RUN_HEADER)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "c.parquet")
    (tmp_path / "d.fits").write_bytes(b"SIMPLE  =")
    with pytest.raises(CatalogueError) as caught:
        merge_catalogues(tmp_path, tmp_path / "out.parquet")
    unreadable, labels = str(caught.value).splitlines()
    assert unreadable.startswith(f"2 parts not readable: {tmp_path / 'c.parquet'}: its columns")
    assert f"; {tmp_path / 'd.fits'}: " in unreadable
    assert labels == f"1 part with other columns (labels) than {tmp_path / 'a.parquet'}: " + str(
        tmp_path / "b.parquet"
    )
