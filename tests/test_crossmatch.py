"""crossmatch: catalogues, column maps, VizieR by UCD (mocked), sky match, cuts, bad input."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import requests
from astropy.io.votable import from_table
from astropy.table import Table
from astroquery.utils.mocks import MockResponse

from lamost_rrnet.crossmatch import (
    Cuts,
    apply_cuts,
    check_reference_output,
    crossmatch,
)
from lamost_rrnet.errors import OutputExistsError, UsageError
from lamost_rrnet.labels import CATALOGUE_LABELS, ELEMENTS
from lamost_rrnet.table_io import read_table
from lamost_rrnet.vizier import map_vizier_columns
from synth_inputs import write_set


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Catalogues only (no spectra): 8 stars, 2 visits each."""
    root = tmp_path_factory.mktemp("sim")
    write_set(root, n_stars=8, visits=2, seed=3, spectra=False)
    return root


def _read(path):
    return read_table(path)


def test_simulated_names_need_no_map(sim, tmp_path, run_cli):
    out = tmp_path / "ref.fits"
    code, stdout, stderr = run_cli(
        "crossmatch", sim / "lamost_catalogue.csv", "--labels-file", sim / "labels.csv", "-o", out
    )
    assert code == 0, stderr
    assert stdout == ""
    assert "matched within 3" in stderr and "labels not NaN" in stderr
    ref = _read(out)
    lamost = Table.read(sim / "lamost_catalogue.csv")
    stars = Table.read(sim / "labels.csv")
    assert len(ref) == len(lamost) == 16
    for name in ("obsid", "filename", "extname_blue", "extname_red", "snr_blue", "rv"):
        assert name in ref.colnames
    for label in CATALOGUE_LABELS:
        assert label in ref.colnames and f"{label}_err" in ref.colnames
    assert (ref["separation_arcsec"] < 3).all()
    # The nearest label star is the one each spectrum was simulated for.
    by_id = {str(s["star_id"]): s for s in stars}
    for row in ref:
        star = by_id[row["star_id"]]
        assert row["filename"].startswith(f"med-{row['lmjd']:.0f}-star")
        assert row["FeH"] == pytest.approx(star["FeH"])
    mapping = json.loads(ref.meta["COLMAP"])
    assert mapping["lamost"]["rv"] == "rv" and mapping["labels"]["Teff[K]"] == "Teff[K]"
    assert json.loads(ref.meta["LABELS"]) == list(CATALOGUE_LABELS)


def test_rv_column_is_the_first_present_and_reported(sim, tmp_path, run_cli):
    lamost = Table.read(sim / "lamost_catalogue.csv")
    lamost.rename_column("rv", "rv_br0")
    lamost["rv_ku0"] = lamost["rv_br0"] + 1.0
    lamost.write(tmp_path / "cat.csv")
    out = tmp_path / "ref.ecsv"
    code, _, stderr = run_cli(
        "crossmatch", tmp_path / "cat.csv", "--labels-file", sim / "labels.csv", "-o", out
    )
    assert code == 0, stderr
    assert "RV column: rv_ku0" in stderr
    ref = Table.read(out)
    np.testing.assert_allclose(np.sort(ref["rv"]), np.sort(lamost["rv_ku0"]))


def test_column_options_and_yaml_maps_rename(sim, tmp_path, run_cli):
    lamost = Table.read(sim / "lamost_catalogue.csv")
    lamost.rename_columns(["snr_blue", "ra", "rv"], ["snr_b", "RA_deg", "my_rv"])
    lamost.write(tmp_path / "cat.fits")
    stars = Table.read(sim / "labels.csv")
    stars.rename_columns(["Teff[K]", "Teff[K]_err", "quality_flag"], ["TEFF", "TEFF_ERR", "qual"])
    stars.write(tmp_path / "stars.parquet")
    (tmp_path / "map.yaml").write_text(
        "lamost:\n  ra: RA_deg\nlabels:\n  Teff[K]: TEFF\n  Teff[K]_err: TEFF_ERR\n"
        "  quality_flag: qual\n"
    )
    out = tmp_path / "ref.fits"
    args = ["crossmatch", tmp_path / "cat.fits", "--labels-file", tmp_path / "stars.parquet"]
    args += ["--column", "snr_blue=snr_b", "--column", "rv=my_rv", "--map", tmp_path / "map.yaml"]
    code, _, stderr = run_cli(*args, "-o", out)
    assert code == 0, stderr
    ref = _read(out)
    assert len(ref) == 16
    np.testing.assert_allclose(
        np.sort(ref["Teff[K]_err"]), np.sort(np.repeat(stars["TEFF_ERR"], 2))
    )
    mapping = json.loads(ref.meta["COLMAP"])
    assert mapping["lamost"]["snr_blue"] == "snr_b" and mapping["labels"]["Teff[K]"] == "TEFF"
    # A flat map applies each pair to whichever catalogue has that column.
    (tmp_path / "flat.yaml").write_text("ra: RA_deg\nTeff[K]: TEFF\nquality_flag: qual\n")
    args = ["crossmatch", tmp_path / "cat.fits", "--labels-file", tmp_path / "stars.parquet"]
    args += [
        "--column",
        "snr_blue=snr_b",
        "--map",
        tmp_path / "flat.yaml",
        "-o",
        tmp_path / "b.csv",
    ]
    code, _, stderr = run_cli(*args)
    assert code == 0, stderr
    assert "no RV column" in stderr  # my_rv is not one of the recognized RV names
    assert np.isnan(Table.read(tmp_path / "b.csv")["rv"]).all()


def test_cuts_count_each_step_and_are_configurable(sim, tmp_path, run_cli):
    lamost = Table.read(sim / "lamost_catalogue.csv")
    lamost["snr_red"][0] = 5.0  # one spectrum below S/N 10
    lamost.write(tmp_path / "cat.csv")
    stars = Table.read(sim / "labels.csv")
    stars["quality_flag"] = stars["quality_flag"].astype("U4")
    stars["quality_flag"][1] = "bad"  # two spectra
    stars["Teff[K]"][2] = 7000.0  # two spectra
    stars["CuH"][3] = np.nan  # two spectra
    stars.write(tmp_path / "stars.csv")
    out = tmp_path / "ref.csv"
    base = ["crossmatch", tmp_path / "cat.csv", "--labels-file", tmp_path / "stars.csv"]
    code, _, stderr = run_cli(*base, "-o", out)
    assert code == 0, stderr
    assert len(Table.read(out)) == 16 - 1 - 2 - 2 - 2
    ref = Table.read(out)
    assert "bad" not in set(ref.colnames)  # the flag column itself is not carried over
    code, _, stderr = run_cli(
        *base,
        "-o",
        out,
        "--overwrite",
        "--snr-min",
        "0",
        "--no-quality-cut",
        "--teff",
        "3000",
        "7500",
        "--keep-nan-labels",
    )
    assert code == 0, stderr
    assert len(Table.read(out)) == 16


def test_apply_cuts_reports_rows_and_stars_after_each_cut():
    t = Table()
    t["star_id"] = ["a", "a", "b", "c", "d"]
    t["snr_blue"] = [50, 5, 50, 50, 50]
    t["snr_red"] = [50, 50, 50, 50, 50]
    t["quality_flag"] = ["good", "good", "bad", "GOOD", "good"]
    t["Teff[K]"] = [5000, 5000, 5000, 5000, 3000.0]
    kept, counts = apply_cuts(t, Cuts(), ["Teff[K]"])
    assert list(kept["star_id"]) == ["a", "c"]
    assert [c[1:] for c in counts] == [(4, 4), (3, 3), (2, 2), (2, 2)]
    assert counts[0][0].startswith("S/N")


def test_nearest_star_is_kept_and_ambiguity_reported(sim, tmp_path, run_cli):
    stars = Table.read(sim / "labels.csv")
    twin = stars[:1].copy()
    twin["star_id"] = ["2MTWIN"]
    twin["dec"] = twin["dec"] + 2.0 / 3600  # 2" away: inside the radius, but farther
    stars = Table(np.concatenate([stars.as_array(), twin.as_array()]))
    stars.write(tmp_path / "stars.csv")
    out = tmp_path / "ref.csv"
    code, _, stderr = run_cli(
        "crossmatch",
        sim / "lamost_catalogue.csv",
        "--labels-file",
        tmp_path / "stars.csv",
        "-o",
        out,
        "--verbose",
    )
    assert code == 0, stderr
    assert "2 spectra have more than one label star" in stderr
    assert "ambiguous: obsid" in stderr
    ref = Table.read(out)
    assert "2MTWIN" not in set(ref["star_id"])
    assert sorted(ref["n_candidates"])[-2:] == [2, 2]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "missing column(s) snr_blue"),
        ("empty", "no spectrum has a star"),
        ("unreadable", "not a readable fits table"),
        ("cut-to-nothing", "no spectrum is left after the cut"),
        ("missing-label", "missing column(s) CuH"),
    ],
)
def test_bad_inputs_exit_1_with_a_clear_message(sim, tmp_path, run_cli, case, message):
    cat, labels = sim / "lamost_catalogue.csv", sim / "labels.csv"
    extra = []
    if case == "missing":
        t = Table.read(cat)
        t.remove_column("snr_blue")
        t.write(cat := tmp_path / "cat.csv")
    elif case == "empty":
        t = Table.read(labels)
        t["dec"] = t["dec"] - 10
        t.write(labels := tmp_path / "stars.csv")
    elif case == "unreadable":
        (cat := tmp_path / "cat.fits").write_bytes(b"SIMPLE  = not really FITS")
    elif case == "cut-to-nothing":
        extra = ["--snr-min", "1000"]
    elif case == "missing-label":
        t = Table.read(labels)
        t.remove_column("CuH")
        t.write(labels := tmp_path / "stars.csv")
    out = tmp_path / "ref.fits"
    code, stdout, stderr = run_cli("crossmatch", cat, "--labels-file", labels, "-o", out, *extra)
    assert code == 1, stderr
    assert message in " ".join(stderr.split())
    assert stdout == "" and not out.exists()
    if case == "missing":
        assert "available: obsid, filename" in " ".join(stderr.split())


@pytest.mark.parametrize(
    "args",
    [
        ["--column", "snr_blue"],
        ["--column", "nonsense=snr_b"],
        ["--radius", "0"],
        ["--labels", "gaia-xp"],
        ["--teff", "6500", "4000"],
        ["--label-names", "Teff[K],XH"],
        ["--labels", "apogee-payne"],  # together with --labels-file
    ],
)
def test_invalid_options_exit_2(sim, tmp_path, run_cli, args):
    code, _, _ = run_cli(
        "crossmatch",
        sim / "lamost_catalogue.csv",
        "--labels-file",
        sim / "labels.csv",
        "-o",
        tmp_path / "ref.fits",
        *args,
    )
    assert code == 2


def test_a_wrong_column_is_a_usage_error_even_over_an_existing_output(sim, tmp_path, run_cli):
    """The command line is checked before the output: exit 2, and the file is left alone."""
    out = tmp_path / "ref.fits"
    out.write_text("keep me")
    args = ("--labels-file", sim / "labels.csv", "-o", out, "--column", "nonsense=snr_b")
    code, _, stderr = run_cli("crossmatch", sim / "lamost_catalogue.csv", *args)
    assert code == 2 and "unknown LAMOST column name(s) nonsense" in " ".join(stderr.split())
    assert out.read_text() == "keep me"


def test_library_refuses_unknown_columns_and_existing_outputs(sim, tmp_path):
    with pytest.raises(UsageError, match="unknown LAMOST column name"):
        crossmatch(
            sim / "lamost_catalogue.csv",
            labels_file=sim / "labels.csv",
            columns={"nonsense": "snr_b"},
        )
    out = tmp_path / "ref.fits"
    check_reference_output(out)
    out.write_text("keep me")
    check_reference_output(out, overwrite=True)
    with pytest.raises(OutputExistsError, match="exists"):
        check_reference_output(out)


def test_existing_output_is_refused(sim, tmp_path, run_cli):
    out = tmp_path / "ref.fits"
    out.write_text("keep me")
    code, _, stderr = run_cli(
        "crossmatch", sim / "lamost_catalogue.csv", "--labels-file", sim / "labels.csv", "-o", out
    )
    assert code == 1 and "exists" in stderr
    assert out.read_text() == "keep me"


# --- VizieR (APOGEE-Payne), mocked the way astroquery's own tests do -------------------------


def _payne_votable(stars: Table) -> bytes:
    """A VizieR-style VOTable of the label stars: VizieR-like names and UCDs, e_ errors."""
    t = Table()
    t["APOGEE"] = stars["star_id"].astype(str)
    t["_RAJ2000"] = stars["ra"]
    t["_DEJ2000"] = stars["dec"]
    ucds = {"APOGEE": "meta.id;meta.main", "_RAJ2000": "pos.eq.ra", "_DEJ2000": "pos.eq.dec"}
    t["Teff"] = stars["Teff[K]"]
    t["Teff"].unit = "K"
    t["e_Teff"] = stars["Teff[K]_err"]
    t["e_Teff"].unit = "K"
    t["logg"] = stars["Logg"]
    t["e_logg"] = stars["Logg_err"]
    ucds.update(
        Teff="phys.temperature.effective",
        e_Teff="stat.error;phys.temperature.effective",
        logg="phys.gravity",
        e_logg="stat.error;phys.gravity",
    )
    for el in ELEMENTS:
        name = f"[{el}/H]"
        t[name] = stars[f"{el}H"]
        t[f"e_{name}"] = stars[f"{el}H_err"]
        t[name].description = f"Abundance [{el}/H]"
        ucds[name] = "phys.abund.Fe" if el == "Fe" else "phys.abund"
        ucds[f"e_{name}"] = "stat.error;" + ucds[name]
    t["[C/Fe]"] = stars["CH"] - stars["FeH"]  # a decoy: not an [X/H] label
    ucds["[C/Fe]"] = "phys.abund"
    t["QFlag"] = stars["quality_flag"].astype(str)
    ucds["QFlag"] = "meta.code.qual"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VO warns that '[C/H]' is not a valid XML ID
        vot = from_table(t)
    resource = vot.resources[0]
    resource.name = "J/ApJ/879/69"
    table = resource.tables[0]
    table.name = "J/ApJ/879/69/table"
    for f in table.fields:
        f.ucd = ucds.get(f.name)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vot.to_xml(buffer)
    return buffer.getvalue()


@pytest.fixture
def vizier(sim, tmp_path, monkeypatch):
    """Patch requests.Session.request (as astroquery's tests do); record the requests."""
    monkeypatch.setenv("LAMOST_RRNET_CACHE", str(tmp_path / "cache"))
    content = _payne_votable(Table.read(sim / "labels.csv"))
    calls = []

    def request(self, method, url, data=None, timeout=10, **kwargs):
        calls.append((method, url, data))
        return MockResponse(content, url=url)

    monkeypatch.setattr(requests.Session, "request", request)
    return calls


def test_apogee_payne_is_fetched_once_mapped_by_ucd_and_cached(sim, tmp_path, run_cli, vizier):
    args = ["crossmatch", sim / "lamost_catalogue.csv", "--labels", "apogee-payne", "--verbose"]
    code, _, stderr = run_cli(*args, "-o", tmp_path / "ref.fits")
    assert code == 0, stderr
    assert len(vizier) == 1
    method, _, data = vizier[0]
    assert method == "POST"
    assert "-source=J/ApJ/879/69" in data and "-out.max=unlimited" in data
    text = " ".join(stderr.split())
    assert "Teff[K]←Teff (UCD phys.temperature.effective" in text
    assert "CH←[C/H]" in text and "quality_flag←QFlag" in text
    ref = _read(tmp_path / "ref.fits")
    assert len(ref) == 16
    mapping = json.loads(ref.meta["COLMAP"])["labels"]
    assert mapping["FeH"] == "[Fe/H]" and mapping["FeH_err"] == "e_[Fe/H]"
    assert mapping["star_id"] == "APOGEE" and mapping["ra"] == "_RAJ2000"
    stars = {str(s["star_id"]): s for s in Table.read(sim / "labels.csv")}
    for row in ref:
        assert row["CH"] == pytest.approx(stars[row["star_id"]]["CH"])
        assert row["TiH_err"] == pytest.approx(stars[row["star_id"]]["TiH_err"])

    vizier.clear()
    code, _, stderr = run_cli(*args, "-o", tmp_path / "ref2.fits")
    assert code == 0, stderr
    assert vizier == []  # the second run reads the cache


def test_vizier_mapping_by_metadata(sim):
    from astropy.io.votable import parse

    xml = _payne_votable(Table.read(sim / "labels.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = parse(io.BytesIO(xml)).get_first_table().to_table(use_names_over_ids=True)
    mapping, why = map_vizier_columns(table)
    assert mapping["CH"] == "[C/H]" and mapping["CH_err"] == "e_[C/H]"
    assert mapping["Logg"] == "logg" and mapping["Teff[K]_err"] == "e_Teff"
    assert set(CATALOGUE_LABELS) <= set(mapping)
    table.remove_column("[Cu/H]")
    mapping, _ = map_vizier_columns(table)
    assert "CuH" not in mapping  # never a wrong column instead


def test_vizier_without_a_label_or_network_exits_1(sim, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("LAMOST_RRNET_CACHE", str(tmp_path / "cache"))

    def offline(self, method, url, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests.Session, "request", offline)
    code, _, stderr = run_cli(
        "crossmatch", sim / "lamost_catalogue.csv", "-o", tmp_path / "ref.fits"
    )
    assert code == 1
    assert "could not fetch it" in stderr and "--labels-file" in " ".join(stderr.split())


def test_vizier_missing_label_names_what_was_found(sim, tmp_path, run_cli, vizier, monkeypatch):
    stars = Table.read(sim / "labels.csv")
    content = _payne_votable(stars).replace(b'"[Cu/H]"', b'"CuX"').replace(b"[Cu/H]", b"CuX")

    def request(self, method, url, data=None, timeout=10, **kwargs):
        return MockResponse(content, url=url)

    monkeypatch.setattr(requests.Session, "request", request)
    code, _, stderr = run_cli(
        "crossmatch", sim / "lamost_catalogue.csv", "-o", tmp_path / "ref.fits"
    )
    assert code == 1
    assert "missing column(s) CuH" in " ".join(stderr.split())


@pytest.mark.remote_data
def test_live_apogee_payne_maps_every_label(tmp_path, monkeypatch):
    from lamost_rrnet.vizier import load_vizier_labels

    monkeypatch.setenv("LAMOST_RRNET_CACHE", str(tmp_path))
    table, mapping, _ = load_vizier_labels("apogee-payne")
    assert len(table) > 100_000
    assert set(CATALOGUE_LABELS) <= set(mapping)
    assert {"star_id", "ra", "dec", "quality_flag"} <= set(mapping)


def test_library_call_matches_the_cli(sim):
    result = crossmatch(sim / "lamost_catalogue.csv", labels_file=sim / "labels.csv")
    assert len(result.table) == 16
    assert result.counts[0] == ("LAMOST spectra", 16, None)
    assert result.counts[2][1:] == (16, 8)
