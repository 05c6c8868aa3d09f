"""The catalogue's columns, flag rule, writers and journal (lamost_rrnet.catalogue)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from lamost_rrnet.catalogue import (
    HIGH_SIGMA,
    LOW_SNR,
    NAN_LABEL,
    OUT_OF_RANGE,
    OUTLIERS,
    CatalogueSchema,
    FlagRule,
    Journal,
    catalogue_columns,
    catalogue_info,
    journal_dir,
    output_format,
    read_batches,
    shard_header,
    status_text,
    write_catalogue,
)
from lamost_rrnet.errors import CatalogueError, OutputExistsError
from lamost_rrnet.identity import contains, text_hashes
from lamost_rrnet.labels import PUBLISHED_ORDER

TABLE3 = """obsid, filename, ra, dec, extname_blue, extname_red, snr_blue, snr_red,
Teff[K], Teff[K]_err, Logg, Logg_err, CH, CH_err, NH, NH_err, OH, OH_err, MgH, MgH_err,
AlH, AlH_err, SiH, SiH_err, SH, SH_err, KH, KH_err, CaH, CaH_err, TiH, TiH_err, CrH, CrH_err,
MnH, MnH_err, FeH, FeH_err, NiH, NiH_err, CuH, CuH_err, flag"""


def test_columns_are_table3_then_extras():
    want = [c.strip() for c in TABLE3.replace("\n", " ").split(",")]
    got = catalogue_columns(PUBLISHED_ORDER)  # the ensemble's order has FeH third
    assert got == [*want, "rv", "rv_source", "status", "model", "path"]


def test_other_labels_follow_in_the_same_style():
    got = catalogue_columns(["vmic", "FeH", "Teff[K]"])
    labels = got[8 : got.index("flag")]
    assert labels == ["Teff[K]", "Teff[K]_err", "FeH", "FeH_err", "vmic", "vmic_err"]


def _rows(schema: CatalogueSchema, n: int, start: int = 0, **over) -> dict:
    cols = {}
    for c in schema.columns:
        if c.dtype == "str":
            cols[c.name] = [f"{c.name}{i}" for i in range(start, start + n)]
        else:
            cols[c.name] = np.arange(start, start + n).astype(c.dtype)
    cols["status"] = [""] * n
    cols["model"] = ["m@1"] * n  # RUN's model: rows a run with RUN may resume
    cols.update(over)
    return cols


SCHEMA = CatalogueSchema.for_labels(["Teff[K]", "Logg", "FeH"])
WIDTHS = {c.name: 20 for c in SCHEMA.columns if c.dtype == "str"}


def test_flag_rule_each_check():
    rule = FlagRule()
    n = 7
    mu = np.zeros((n, 2))
    sigma = np.full((n, 2), 0.1)
    snr_b = np.full(n, 50.0)
    snr_r = np.full(n, 50.0)
    n_out = np.zeros(n, int)
    run = np.zeros(n, int)
    snr_b[1] = 9.9  # low S/N in one arm
    snr_r[2] = np.nan  # unknown S/N
    n_out[3] = 101  # too many outliers
    run[4] = 31  # too long a run
    mu[5, 1] = 3.0  # outside the range
    sigma[6, 0] = 2.5  # above 1x the label scale (2.0)
    low, high, scale = np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([2.0, 1.0])
    bits = rule.reasons(snr_b, snr_r, n_out, run, mu, sigma, low, high, scale)
    assert bits.tolist() == [0, LOW_SNR, LOW_SNR, OUTLIERS, OUTLIERS, OUT_OF_RANGE, HIGH_SIGMA]
    # at the thresholds the spectrum is still good
    edge = rule.reasons(
        [10.0],
        [10.0],
        [100],
        [30],
        mu[:1] + 1.0,
        sigma[:1] * 0 + 1.0,
        low,
        high,
        np.array([1.0, 1.0]),
    )
    assert edge.tolist() == [0]
    nan = rule.reasons(
        [50.0], [50.0], [0], [0], np.array([[np.nan, 0]]), sigma[:1], low, high, scale
    )
    assert nan.tolist() == [NAN_LABEL]
    assert status_text(np.array([0, LOW_SNR | OUTLIERS, HIGH_SIGMA])) == [
        "",
        "low_snr,outliers",
        "high_sigma",
    ]


def test_text_hashes_membership():
    done = np.unique(text_hashes(["a.fits.gz", "b.fits"]))
    assert contains(done, text_hashes(["b.fits", "c.fits", "a.fits.gz"])).tolist() == [
        True,
        False,
        True,
    ]
    assert not contains(np.empty(0, np.uint64), text_hashes(["a"])).any()


def test_output_format():
    assert output_format("x.FITS") == "fits"
    assert output_format("x.csv") == "csv"
    assert output_format("x.parquet") == "parquet"
    assert output_format("-") == "csv"
    with pytest.raises(ValueError, match="must end in"):
        output_format("x.txt")


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy: 'dex' is not a FITS unit
        return Table.read(path)


def test_fits_units_comments_and_header(tmp_path):
    table = SCHEMA.table(_rows(SCHEMA, 5))
    header = {"MODEL": ("rrnet2022", "model"), "RRNETVER": ("0.1.0", "version")}
    path = tmp_path / "cat.fits"
    write_catalogue(path, SCHEMA, [table.slice(0, 2), table.slice(2)], 5, WIDTHS, header)
    with fits.open(path) as hdul:
        assert hdul[0].header["MODEL"] == "rrnet2022"
        h = hdul[1].header
        units = {h[f"TTYPE{i}"]: h.get(f"TUNIT{i}") for i in range(1, h["TFIELDS"] + 1)}
        comments = {h[f"TTYPE{i}"]: h.get(f"TCOMM{i}") for i in range(1, h["TFIELDS"] + 1)}
        assert units["Teff[K]"] == "K" and units["Logg_err"] == "dex" and units["rv"] == "km/s"
        assert units["FeH"] == "dex" and units["flag"] is None
        assert comments["FeH"] == "abundance [Fe/H]"
        assert all(comments.values())
        assert len(hdul[1].data) == 5
    got = _read(path)
    assert got.colnames == SCHEMA.names
    assert list(got["filename"]) == [f"filename{i}" for i in range(5)]
    assert np.array_equal(got["obsid"], np.arange(5))


def test_fits_rows_and_widths_must_match(tmp_path):
    table = SCHEMA.table(_rows(SCHEMA, 3))
    with pytest.raises(AssertionError, match="wrote 3 rows"):
        write_catalogue(tmp_path / "c.fits", SCHEMA, [table], 4, WIDTHS, {})
    with pytest.raises(AssertionError, match="longer than its FITS width"):
        write_catalogue(tmp_path / "c.fits", SCHEMA, [table], 3, {**WIDTHS, "filename": 5}, {})
    assert not list(tmp_path.iterdir())  # nothing half-written is left


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_round_trip_through_read_batches(tmp_path, suffix):
    cols = _rows(SCHEMA, 4, status=["", "low_snr", "", "unreadable"])
    cols["Teff[K]"] = np.array([5000.5, np.nan, 4000.25, np.nan], np.float32)
    table = SCHEMA.table(cols)
    path = tmp_path / f"cat{suffix}"
    write_catalogue(path, SCHEMA, [table], 4, WIDTHS, {"MODEL": "m"})
    back = next(read_batches(path, SCHEMA))
    assert back.schema.equals(table.schema)
    assert back.to_pandas().equals(table.to_pandas())  # NaN == NaN here
    if suffix == ".parquet":
        schema = pq.read_schema(path)
        assert json.loads(schema.metadata[b"lamost_rrnet"])["MODEL"] == "m"
        assert schema.field("Logg").metadata[b"unit"] == b"dex"


def test_schema_from_columns():
    assert CatalogueSchema.from_columns(SCHEMA.names) == SCHEMA
    for names in (SCHEMA.names[::-1], SCHEMA.names[:-1], ["a", "flag"], []):
        with pytest.raises(ValueError, match="not those of a lamost-rrnet catalogue"):
            CatalogueSchema.from_columns(names)


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
def test_read_batches_of_some_columns(tmp_path, suffix):
    table = SCHEMA.table(_rows(SCHEMA, 3))
    path = tmp_path / f"cat{suffix}"
    write_catalogue(path, SCHEMA, [table], 3, WIDTHS, {"MODEL": "m"})
    back = next(read_batches(path, SCHEMA, ["path", "Logg", "obsid"]))
    assert back.equals(table.select(["path", "Logg", "obsid"]))


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_catalogue_info_reads_the_header_not_the_rows(tmp_path, suffix):
    path = tmp_path / f"cat{suffix}"
    header = {**HEADER, **shard_header(2, 3)}
    write_catalogue(path, SCHEMA, [SCHEMA.table(_rows(SCHEMA, 5))], 5, WIDTHS, header)
    info = catalogue_info(path)
    assert (info.columns, info.n_rows) == (SCHEMA.names, 5)
    assert info.header == {k: v[0] if isinstance(v, tuple) else v for k, v in header.items()}
    assert info.header["SHARD"] == 2 and info.header["SHARDALG"] == "blake2b-64"
    if suffix == ".fits":
        assert info.comments["SHARD"] == "this shard, 0 to NSHARDS-1"
    with pytest.raises(CatalogueError, match="records no header"):
        catalogue_info(tmp_path / "cat.csv")


def test_a_shard_is_0_to_n_minus_1():
    assert shard_header(0, 1)["NSHARDS"][0] == 1
    for shard, n in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(ValueError, match="a shard is 0 to"):
            shard_header(shard, n)


def test_read_batches_refuses_other_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CatalogueError, match="not those of this model"):
        list(read_batches(path, SCHEMA))


RUN = {"model": "m@1", "exposures": False, "flag": dataclasses.asdict(FlagRule()), "sigma": "raw"}
HEADER = {"MODEL": "m", "MODELVER": "1", "SIGMA": "raw", "EXPOSURE": False, **FlagRule().header()}


def test_journal_refuses_existing_output_and_journal(tmp_path):
    out = tmp_path / "cat.fits"
    out.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="--resume"):
        Journal.open(out, SCHEMA, RUN)
    out.unlink()
    journal_dir(out).mkdir()
    with pytest.raises(OutputExistsError, match="unfinished run"):
        Journal.open(out, SCHEMA, RUN)


def test_journal_chunks_resume_and_assemble(tmp_path):
    out = tmp_path / "cat.parquet"
    journal = Journal.open(out, SCHEMA, RUN)
    journal.append(SCHEMA.table(_rows(SCHEMA, 3)))
    (journal.directory / ".chunk-00000002.parquet.abc.part").write_bytes(b"half a chunk")
    assert not out.exists()

    # A later run (after a kill) sees the finished chunk, not the half-written one.
    again = Journal.open(out, SCHEMA, RUN, resume=True)
    assert not list(again.directory.glob("*.part"))
    done = again.done_inputs()
    assert contains(done, text_hashes(["path0", "path2", "path3"])).tolist() == [
        True,
        True,
        False,
    ]
    again.append(SCHEMA.table(_rows(SCHEMA, 2, start=3)))
    assert again.assemble(out, {"MODEL": "m"}) == 5
    assert not journal_dir(out).exists()
    assert pq.read_table(out)["filename"].to_pylist() == [f"filename{i}" for i in range(5)]


def test_journal_refuses_another_model(tmp_path):
    out = tmp_path / "cat.csv"
    Journal.open(out, SCHEMA, RUN).append(SCHEMA.table(_rows(SCHEMA, 1)))
    with pytest.raises(OutputExistsError, match="another model"):
        Journal.open(out, SCHEMA, {**RUN, "model": "other@2"}, resume=True)
    # --overwrite discards it
    fresh = Journal.open(out, SCHEMA, {**RUN, "model": "other@2"}, overwrite=True)
    assert fresh.n_rows() == 0


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_resume_on_a_finished_output_keeps_its_rows(tmp_path, suffix):
    out = tmp_path / f"cat{suffix}"
    first = Journal.open(out, SCHEMA, RUN)
    first.append(SCHEMA.table(_rows(SCHEMA, 3)))
    first.assemble(out, HEADER)
    resumed = Journal.open(out, SCHEMA, RUN, resume=True)
    assert contains(resumed.done_inputs(), text_hashes(["path1"])).all()
    resumed.append(SCHEMA.table(_rows(SCHEMA, 1, start=3)))
    resumed.assemble(out, HEADER)
    names = list(_read(out)["filename"])
    assert names == [f"filename{i}" for i in range(4)]


def test_journal_of_an_older_version_is_refused(tmp_path):
    out = tmp_path / "cat.parquet"
    Journal.open(out, SCHEMA, RUN).append(SCHEMA.table(_rows(SCHEMA, 1)))
    run_file = journal_dir(out) / "run.json"
    old = json.loads(run_file.read_text())
    old["journal_version"] = 1  # rows keyed by file name, without path
    run_file.write_text(json.dumps(old))
    with pytest.raises(OutputExistsError, match="older lamost-rrnet"):
        Journal.open(out, SCHEMA, RUN, resume=True)


def test_a_journal_appears_only_complete(tmp_path, monkeypatch):
    """Killed while copying a finished output's rows: no journal, and the output intact."""
    import lamost_rrnet.catalogue as catalogue

    out = tmp_path / "cat.parquet"
    first = Journal.open(out, SCHEMA, RUN)
    first.append(SCHEMA.table(_rows(SCHEMA, 3)))
    first.assemble(out, HEADER)
    monkeypatch.setattr(catalogue, "_IMPORT_ROWS", 1)

    def disk_full(self, table):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Journal, "append", disk_full)
    with pytest.raises(OSError):
        Journal.open(out, SCHEMA, RUN, resume=True)
    assert not journal_dir(out).exists() and pq.read_table(out).num_rows == 3


def test_header_values_are_checked_before_a_run():
    from lamost_rrnet.catalogue import check_header

    check_header(HEADER)
    with pytest.raises(CatalogueError, match="cannot go into FITS"):
        check_header({**HEADER, "MODEL": "tïny"})


@pytest.mark.parametrize(
    ("change", "words"),
    [({"model": "m@1+cal.0123abcd"}, "another model"), ({"sigma": "calibrated"}, "another sigma")],
)
def test_resume_on_a_finished_output_of_another_model_or_sigma_is_refused(tmp_path, change, words):
    """Another version (e.g. the calibrated model), or calibrated σ after raw σ, would mix two
    kinds of σ in one output."""
    out = tmp_path / "cat.parquet"
    first = Journal.open(out, SCHEMA, RUN)
    first.append(SCHEMA.table(_rows(SCHEMA, 3)))
    first.assemble(out, HEADER)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match=f"made with {words}"):
        Journal.open(out, SCHEMA, {**RUN, **change}, resume=True)
    assert out.read_bytes() == before and not journal_dir(out).exists()
