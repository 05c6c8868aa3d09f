"""Input identity, its escaped text form and compact hash sets (lamost_rrnet.identity)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from astropy.table import Table
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lamost_rrnet.catalogue import CatalogueSchema, read_batches, write_catalogue
from lamost_rrnet.identity import (
    HashSet,
    contains,
    escape_path,
    escape_text,
    input_identity,
    path_text,
    text_hashes,
    unescape_path,
)


def test_identity_is_the_normalized_path_as_bytes():
    assert input_identity("a/./b//x.fits") == b"a/b/x.fits"
    assert input_identity(b"a/\xff.fits") == b"a/\xff.fits"
    assert input_identity(os.fsdecode(b"d/../\xfe.fits")) == b"\xfe.fits"
    assert input_identity("a/x.fits") != input_identity("b/x.fits")


def test_escaped_form():
    assert escape_path(b"spectra/med-1.fits.gz") == "spectra/med-1.fits.gz"
    assert escape_path(b"my spectra/x\xff.fits") == "my spectra/x\\xff.fits"
    assert escape_path(b"a\\b") == "a\\\\b"
    assert escape_path(b"tab\there\n") == "tab\\x09here\\x0a"
    assert escape_path(b"x.fits  ") == "x.fits \\x20"  # FITS strips trailing blanks
    assert escape_text("é@1") == "\\xc3\\xa9@1"
    assert path_text(os.fsdecode(b"./d/\x80.fits")) == "d/\\x80.fits"
    with pytest.raises(ValueError):
        unescape_path("a\\b")
    with pytest.raises(ValueError):
        unescape_path("é")


@given(st.binary(max_size=200))
@example(b"x.fits ")
def test_escape_round_trips_any_bytes(raw):
    text = escape_path(raw)
    assert text.isascii() and all(" " <= c <= "~" for c in text)
    assert not text.endswith(" ")
    assert unescape_path(text) == raw


SCHEMA = CatalogueSchema.for_labels(["Teff[K]"])


def _rows(paths: list[str]) -> dict:
    n = len(paths)
    cols = {c.name: np.zeros(n, c.dtype) for c in SCHEMA.columns if c.dtype != "str"}
    cols.update({c.name: [""] * n for c in SCHEMA.columns if c.dtype == "str"})
    cols["path"] = cols["filename"] = paths
    return cols


@pytest.mark.parametrize("suffix", [".fits", ".csv", ".parquet"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(st.binary(max_size=80), min_size=1, max_size=12))
@example(names=[b"x.fits ", b" lead", b"\x00nul\x00", b"", b"nan", b'"q,"\r\n', b"\\x41"])
def test_any_path_survives_each_format(tmp_path, suffix, names):
    paths = [escape_path(raw) for raw in names]
    out = tmp_path / f"cat{suffix}"
    widths = {c.name: max(1, *map(len, paths)) for c in SCHEMA.columns if c.dtype == "str"}
    write_catalogue(out, SCHEMA, [SCHEMA.table(_rows(paths))], len(paths), widths, {})
    back = [t["path"].to_pylist() for t in read_batches(out, SCHEMA)]
    assert [unescape_path(p) for part in back for p in part] == names
    if suffix == ".fits":  # astropy's own reader strips trailing blanks: none to strip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'dex' is not a FITS unit
            assert [
                unescape_path(p) for p in Table.read(out, character_as_bytes=False)["path"]
            ] == names


def test_text_hashes_and_membership():
    hashes = text_hashes(["a.fits", "b.fits", os.fsdecode(b"\xff.fits")])
    assert hashes.dtype == np.uint64 and len(set(hashes.tolist())) == 3
    assert text_hashes([os.fsdecode(b"\xff")])[0] == text_hashes(["\udcff"])[0]
    done = np.sort(hashes[:2])
    assert contains(done, hashes).tolist() == [True, True, False]
    assert not contains(np.empty(0, np.uint64), hashes).any()


def test_hash_set_keeps_the_first_of_repeats_across_batches():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5000, 20000).astype(np.uint64)  # many repeats
    seen = HashSet()
    firsts = np.concatenate([seen.add(values[i : i + 700]) for i in range(0, values.size, 700)])
    _, expected = np.unique(values, return_index=True)
    assert np.flatnonzero(firsts).tolist() == sorted(expected.tolist())
    assert len(seen) == np.unique(values).size and seen.nbytes == 8 * len(seen)
    assert seen.contains(values).all() and not seen.contains(np.array([7001], np.uint64)).any()
    assert len(seen._runs) <= 1 + int(np.log2(len(seen)))  # merged, not one array per batch
