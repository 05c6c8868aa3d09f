"""Property tests of the MRS reader on mutated files: it returns or raises SpectrumError.

Whatever the bytes (flipped header bytes, odd values of the cards that size the data, cut
files, scrambled tables; gzip'd or plain), :func:`read_mrs` and what is then taken from its
result either work or raise :class:`SpectrumError`, never anything else. Derandomized, so CI
sees the same examples every run; a few seconds in all. The longer, coverage-guided search is
benchmarks/fuzz_reader_atheris.py (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamost_rrnet.errors import SpectrumError
from lamost_rrnet.spectra.io import Arm, encode_mrs, read_mrs

HEADER = {"OBSID": 123, "RA": 10.5, "DEC": -3.25, "DESIG": "LAMOST J004200.00-031500.0",
          "LMJD": 58025, "DATA_V": "LAMOST DR9"}  # fmt: skip


def _arm(name: str, start: float, n: int = 40) -> Arm:
    wave = (start * 10 ** (1e-5 * np.arange(n))).astype(np.float32)
    flux = np.linspace(900, 1100, n, dtype=np.float32)
    return Arm(name, wave, flux, np.full(n, 1e-3, np.float32), np.zeros(n, np.int32), 40.0)


ARMS = [_arm("COADD_B", 4925.0), _arm("COADD_R", 6300.0),
        _arm("B-83555758", 4925.0), _arm("R-83555758", 6300.0)]  # fmt: skip
BASE = {layout: encode_mrs(HEADER, ARMS, layout=layout, compresslevel=None)
        for layout in ("dr7", "dr9")}  # fmt: skip


def _cards(raw: bytes) -> list[tuple[int, str]]:
    """(offset, keyword) of every header card, found by walking the HDUs as the reader does."""
    cards, pos = [], 0
    while pos < len(raw):
        header: dict = {}
        while True:
            card = raw[pos : pos + 80].decode("ascii")
            key = card[:8].rstrip()
            cards.append((pos, key))
            pos += 80
            if key == "END":
                break
            if card[8:10] == "= ":
                header[key] = card[10:].split("/")[0].strip().strip("'").strip()
        pos = -(-pos // 2880) * 2880
        if "XTENSION" in header:
            size = int(header["NAXIS1"]) * int(header["NAXIS2"])
            pos += -(-size // 2880) * 2880
    return cards


CARDS = {layout: _cards(raw) for layout, raw in BASE.items()}
STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT", "TFIELDS",
              "TFORM1", "TFORM3", "TTYPE1", "XTENSION", "EXTNAME", "OBSID", "RA",
              "SNR")  # fmt: skip

layouts = st.sampled_from(sorted(BASE))
value_texts = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-4, 100_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: repr(v).upper()),
    st.sampled_from(["1E999", "-1E999", "NAN", "T", "F", "''", "'", "'E'", "'0E'", "'99999999999J'",
                     "'1000000000000E'", "'BINTABLE'", "'IMAGE'", "'COADD_B'", "'COADD_R'", ""]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(repr),
)  # fmt: skip


def _check(workdir, raw: bytes, gz: bool) -> None:
    path = workdir / ("x.fits.gz" if gz else "x.fits")
    path.write_bytes(gzip.compress(raw, 1, mtime=0) if gz else raw)
    for extensions in (["COADD_B", "COADD_R"], None):
        try:
            mrs = read_mrs(path, extensions)
        except SpectrumError:
            continue
        with contextlib.suppress(SpectrumError):
            (mrs.obsid, mrs.ra, mrs.dec, mrs.lmjd)  # noqa: B018
        with contextlib.suppress(SpectrumError):
            mrs.coadd()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def test_the_base_files_are_read(workdir):
    for raw in BASE.values():
        for gz in (False, True):
            path = workdir / ("base.fits.gz" if gz else "base.fits")
            path.write_bytes(gzip.compress(raw) if gz else raw)
            assert read_mrs(path).coadd().blue.flux.size == 40


@FUZZ
@given(layout=layouts, gz=st.booleans(), data=st.data())
def test_odd_values_of_structural_cards(workdir, layout, gz, data):
    raw = bytearray(BASE[layout])
    cards = [(pos, key) for pos, key in CARDS[layout] if key in STRUCTURAL]
    for pos, key in data.draw(st.lists(st.sampled_from(cards), min_size=1, max_size=3)):
        raw[pos : pos + 80] = f"{key:<8}= {data.draw(value_texts):>20}"[:80].ljust(80).encode()
    _check(workdir, bytes(raw), gz)


@FUZZ
@given(layout=layouts, gz=st.booleans(), data=st.data())
def test_flipped_and_replaced_header_bytes(workdir, layout, gz, data):
    raw = bytearray(BASE[layout])
    offsets = st.sampled_from(CARDS[layout]).flatmap(
        lambda card: st.integers(card[0], card[0] + 79)
    )
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(offsets)] = data.draw(st.integers(0, 255))
    _check(workdir, bytes(raw), gz)


@FUZZ
@given(layout=layouts, gz=st.booleans(), cut=st.integers(0, 10**6))
def test_truncated_files(workdir, layout, gz, cut):
    raw = BASE[layout]
    _check(workdir, raw[: cut % len(raw)], gz)


@FUZZ
@given(layout=layouts, gz=st.booleans(), data=st.data())
def test_scrambled_tables(workdir, layout, gz, data):
    raw = bytearray(BASE[layout])
    header_bytes = {pos + i for pos, _ in CARDS[layout] for i in range(80)}
    table = [i for i in range(2880, len(raw)) if i not in header_bytes]
    start = data.draw(st.sampled_from(table))
    junk = data.draw(st.binary(min_size=1, max_size=400))
    raw[start : start + len(junk)] = junk[: len(raw) - start]
    _check(workdir, bytes(raw), gz)


def test_gzip_streams_with_flipped_bytes(workdir):
    # The compressed stream itself: corrupt deflate data, checksums and sizes.
    packed = gzip.compress(BASE["dr7"], 1, mtime=0)

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, len(packed) - 1), st.integers(0, 255)), max_size=4))
    def check(changes):
        raw = bytearray(packed)
        for pos, value in changes:
            raw[pos] = value
        path = workdir / "z.fits.gz"
        path.write_bytes(bytes(raw))
        with contextlib.suppress(SpectrumError):
            read_mrs(path)

    check()
