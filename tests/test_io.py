"""Reading and writing LAMOST MRS files in both layouts, and the reader's bad-input errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from bomb_inputs import write_bomb
from lamost_rrnet.errors import FileTooLarge, SpectrumError
from lamost_rrnet.spectra.io import MAX_PIXELS, Arm, encode_mrs, read_mrs, write_mrs

GOOD = "med-58025-HIP9645901_sp02-051.fits.gz"
ZERO_SNR = "med-58268-HIP95119KP01_sp12-076.fits.gz"


def _arm(name: str, start: float, n: int = 500, rng=None) -> Arm:
    rng = rng or np.random.default_rng(0)
    wave = (10 ** (np.log10(start) + 1e-5 * np.arange(n))).astype(np.float32)
    flux = (1000 + 50 * rng.standard_normal(n)).astype(np.float32)
    ivar = np.full(n, 1e-3, np.float32)
    mask = np.zeros(n, np.int32)
    mask[7] = 4
    return Arm(name, wave, flux, ivar, mask, snr=31.6, header={"LMJM": "83555758"})


def _arms() -> list[Arm]:
    return [
        _arm("COADD_B", 4925.0),
        _arm("COADD_R", 6300.0),
        _arm("B-83555758", 4925.0),
        _arm("R-83555758", 6300.0),
    ]


HEADER = {"OBSID": 123, "RA": 10.5, "DEC": -3.25, "DESIG": "LAMOST J004200.00-031500.0",
          "LMJD": 58025, "DATA_V": "LAMOST DR9"}  # fmt: skip


def test_real_files_are_read_with_all_extensions(real_spectra):
    for path in real_spectra.values():
        mrs = read_mrs(path)
        assert mrs.obsid > 0 and mrs.designation.startswith("LAMOST J")
        assert mrs.layout == "dr7" and mrs.lmjd > 58000
        assert {"COADD_B", "COADD_R"} <= set(mrs.arms)
        assert len(mrs.exposure_pairs()) >= 4
        for arm in mrs.arms.values():
            assert arm.wavelength.dtype == np.float32
            assert np.all(np.diff(arm.wavelength) > 0), f"{arm.extname} not ascending"
            assert arm.flux.size == arm.ivar.size == arm.mask.size == arm.wavelength.size
            assert np.isfinite(arm.snr)


def test_red_exposures_are_sorted_ascending(real_spectra):
    mrs = read_mrs(real_spectra[GOOD])
    red = mrs.arms["R-83555758"]
    assert red.wavelength[0] < 6301 and red.wavelength[-1] > 6870


def test_zero_snr_file_is_read_and_its_snr_reported(real_spectra):
    mrs = read_mrs(real_spectra[ZERO_SNR])
    spectrum = mrs.coadd()
    assert spectrum.blue.snr == 0.0
    assert spectrum.red.snr == pytest.approx(1.01)


def test_reading_only_the_coadds(real_spectra):
    mrs = read_mrs(real_spectra[GOOD], ["COADD_B", "COADD_R"])
    assert list(mrs.arms) == ["COADD_B", "COADD_R"]
    full = read_mrs(real_spectra[GOOD])
    np.testing.assert_array_equal(mrs.arms["COADD_R"].flux, full.arms["COADD_R"].flux)


@pytest.mark.parametrize("layout", ["dr7", "dr9"])
@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"])
def test_write_read_round_trip(tmp_path, layout, suffix):
    arms = _arms()
    path = write_mrs(tmp_path / f"med-58025-TEST_sp01-001{suffix}", HEADER, arms, layout=layout)
    mrs = read_mrs(path)
    assert mrs.layout == layout
    assert mrs.obsid == 123 and mrs.ra == 10.5 and mrs.designation == HEADER["DESIG"]
    for arm in arms:
        got = mrs.arms[arm.extname]
        # DR7 stores LOGLAM in float32, as LAMOST does: ~5e-7 relative resolution in λ
        np.testing.assert_allclose(got.wavelength, arm.wavelength, rtol=1e-6)
        np.testing.assert_array_equal(got.flux, arm.flux)
        np.testing.assert_array_equal(got.ivar, arm.ivar)
        np.testing.assert_array_equal(got.mask, arm.mask)
        assert got.snr == pytest.approx(31.6)
    assert mrs.exposure_pairs() == [("B-83555758", "R-83555758")]


def test_dr7_writer_stores_red_exposures_descending_like_lamost(tmp_path):
    from astropy.io import fits

    path = write_mrs(tmp_path / "x.fits", HEADER, _arms(), layout="dr7")
    with fits.open(path) as hdul:
        assert np.all(np.diff(hdul["R-83555758"].data["LOGLAM"]) < 0)
        assert np.all(np.diff(hdul["COADD_R"].data["LOGLAM"]) > 0)
        assert hdul["B-83555758"].data.columns.names == ["FLUX", "IVAR", "LOGLAM", "PIXMASK"]
        assert hdul["COADD_B"].data.columns.names[-2:] == ["ANDMASK", "ORMASK"]


def test_gzip_output_is_reproducible():
    assert encode_mrs(HEADER, _arms()) == encode_mrs(HEADER, _arms())


def test_not_fits_is_a_spectrum_error(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("this is not a FITS file\n" * 200)
    with pytest.raises(SpectrumError, match="notes.fits.*not a FITS file"):
        read_mrs(path)


def test_truncated_gzip_is_a_spectrum_error(tmp_path, real_spectra):
    data = real_spectra[GOOD].read_bytes()
    path = tmp_path / "cut.fits.gz"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SpectrumError, match="cut.fits.gz"):
        read_mrs(path)


def test_truncated_plain_file_is_a_spectrum_error(tmp_path):
    raw = encode_mrs(HEADER, _arms(), compresslevel=None)
    path = tmp_path / "cut.fits"
    path.write_bytes(raw[: 2880 * 3 + 100])
    with pytest.raises(SpectrumError, match="cut.fits"):
        read_mrs(path)


def test_corrupt_gzip_stream_is_a_spectrum_error(tmp_path):
    raw = bytearray(gzip.compress(encode_mrs(HEADER, _arms(), compresslevel=None)))
    raw[200:260] = b"\0" * 60
    path = tmp_path / "corrupt.fits.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(SpectrumError, match="corrupt.fits.gz"):
        read_mrs(path)


def test_missing_extension_is_named(tmp_path):
    path = write_mrs(tmp_path / "x.fits", HEADER, _arms()[:1])
    with pytest.raises(SpectrumError, match="no extension COADD_R"):
        read_mrs(path).coadd()
    with pytest.raises(SpectrumError, match="no extension COADD_R"):
        read_mrs(path, ["COADD_B", "COADD_R"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: Arm(a.extname, a.wavelength[:0], a.flux[:0], a.ivar[:0], a.mask[:0]),
         "zero-length"),
        (lambda a: Arm(a.extname, a.wavelength, np.full_like(a.flux, np.nan), a.ivar, a.mask),
         "NaN"),
        (lambda a: Arm(a.extname, a.wavelength, a.flux, np.zeros_like(a.ivar), a.mask),
         "IVAR is zero everywhere"),
    ],
)  # fmt: skip
def test_unusable_arms_are_spectrum_errors(tmp_path, change, message):
    arms = _arms()
    arms[1] = change(arms[1])
    path = write_mrs(tmp_path / "bad.fits", HEADER, arms)
    with pytest.raises(SpectrumError, match=rf"bad.fits\[COADD_R\].*{message}"):
        read_mrs(path).coadd()


@pytest.mark.parametrize("layout", ["dr7", "dr9"])
def test_written_files_are_valid_fits_for_astropy(tmp_path, layout):
    from astropy.io import fits

    arms = _arms()
    path = write_mrs(tmp_path / "x.fits.gz", HEADER, arms, layout=layout)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul[0].header["EXTNAME"] == "Information"
        assert hdul[0].header["DESIG"] == HEADER["DESIG"]
        data = hdul["COADD_B"].data
        flux = data["FLUX"][0] if layout == "dr9" else data["FLUX"]
        np.testing.assert_array_equal(flux, arms[0].flux)
        assert hdul["B-83555758"].header["LMJM"] == "83555758"


@pytest.mark.parametrize("suffix", [".fits.gz", ".fits"])
def test_an_extension_declaring_a_bomb_is_streamed_past_in_bounded_memory(tmp_path, suffix):
    # 512 MB of zeros before the coadds: ~0.5 MB gzip'd, a hole in a plain file. Held, they
    # took twice that; streamed past, the read holds one step of them.
    import tracemalloc

    declared = 512 * 2**20
    path = write_bomb(tmp_path / f"bomb{suffix}", HEADER, _arms(), declared)
    assert path.stat().st_size < 2**20 or suffix == ".fits"
    tracemalloc.start()
    try:
        mrs = read_mrs(path, ["COADD_B", "COADD_R"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(mrs.arms) == ["COADD_B", "COADD_R"]
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_a_file_over_the_limit_is_too_large(tmp_path):
    path = write_mrs(tmp_path / "x.fits.gz", HEADER, _arms())
    assert read_mrs(path, max_bytes=10**6).coadd()  # the arms take ~50 kB
    with pytest.raises(FileTooLarge, match=r"x.fits.gz.*limit of 0.0\d+ MB") as info:
        read_mrs(path, max_bytes=20_000)
    assert info.value.status == "too_large"
    assert isinstance(info.value, SpectrumError)


@pytest.mark.parametrize("suffix", [".fits.gz", ".fits"])
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("PCOUNT", 2**30, r"limit of 256 MB"),  # a heap of 1 GB after the rows
     ("NAXIS2", MAX_PIXELS + 1, r"1,048,577 pixels, over the limit")],
)  # fmt: skip
def test_a_coadd_declaring_too_much_is_too_large_before_it_is_read(
    tmp_path, suffix, key, value, message
):
    # The header alone declares it; the file holds none of it. Nothing is decompressed or
    # allocated: the declared sizes are checked first.
    raw = _with_card(encode_mrs(HEADER, _arms()[:1], compresslevel=None), key, str(value))
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    with pytest.raises(FileTooLarge, match=rf"huge.fits.*{message}"):
        read_mrs(path)


def _with_card(raw: bytes, key: str, text: str, hdu: int = 1) -> bytes:
    """``raw`` with card ``key`` of HDU number ``hdu`` (0: primary) set to ``text``."""
    start = 0
    for _ in range(hdu):
        start = raw.index(b"XTENSION=", start + 1)
    card = raw.index(f"{key:<8}= ".encode(), start)
    out = bytearray(raw)
    out[card : card + 80] = f"{key:<8}= {text:>20}".ljust(80).encode("latin-1")
    return bytes(out)


@pytest.mark.parametrize(
    ("key", "text", "hdu"),
    [
        ("XTENSION", "5", 1),  # was AttributeError
        ("NAXIS2", "1E999", 1),  # was OverflowError (an infinite float)
        ("NAXIS2", "-1", 1),  # count=-1 read whatever was there
        ("NAXIS2", "'many'", 1),
        ("NAXIS1", "1.5", 1),
        ("NAXIS", "1000000000", 1),  # a billion axes to loop over
        ("TFIELDS", "99999999999", 1),
        ("BITPIX", "7", 1),
        ("TFORM1", "'99999999999999999E'", 1),
        ("PCOUNT", "-99999999", 1),
        ("NAXIS", "NaN", 0),
    ],
)  # fmt: skip
@pytest.mark.parametrize("suffix", [".fits.gz", ".fits"])
def test_odd_structural_cards_are_spectrum_errors(tmp_path, key, text, hdu, suffix):
    raw = _with_card(encode_mrs(HEADER, _arms(), compresslevel=None), key, text, hdu)
    path = tmp_path / f"odd{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    with pytest.raises(SpectrumError, match=r"odd.fits"):
        read_mrs(path, ["COADD_B", "COADD_R"])


@pytest.mark.parametrize(
    ("key", "text"),
    [("OBSID", "'abc'"), ("OBSID", "1E999"), ("OBSID", "T"), ("LMJD", "1E999"),
     ("LMJD", "'58025'"), ("RA", "'abc'"), ("DEC", "T")],
)  # fmt: skip
def test_unusable_identity_cards_are_spectrum_errors_naming_the_card(tmp_path, key, text):
    path = tmp_path / "odd.fits"
    path.write_bytes(_with_card(encode_mrs(HEADER, _arms(), compresslevel=None), key, text, 0))
    mrs = read_mrs(path)
    with pytest.raises(SpectrumError, match=rf"odd.fits: header card {key} ="):
        (mrs.obsid, mrs.ra, mrs.dec, mrs.lmjd)  # noqa: B018


def test_an_odd_snr_card_costs_only_the_snr(tmp_path):
    path = tmp_path / "odd.fits"
    path.write_bytes(_with_card(encode_mrs(HEADER, _arms(), compresslevel=None), "SNR", "'x'"))
    arm = read_mrs(path).arms["COADD_B"]
    assert np.isnan(arm.snr) and arm.problem() is None


def test_any_failure_while_reading_is_a_spectrum_error(tmp_path, monkeypatch):
    import lamost_rrnet.spectra.io as io

    def fail(*args):
        raise MemoryError

    monkeypatch.setattr(io, "_read_arm", fail)
    path = write_mrs(tmp_path / "x.fits", HEADER, _arms())
    with pytest.raises(SpectrumError, match=r"x.fits: not a readable FITS file \(MemoryError\)"):
        read_mrs(path)


@pytest.mark.parametrize(("key", "text", "hdu"), [("OBSID", "'abc'", 0), ("NAXIS2", "1E999", 1)])
def test_inspect_prints_one_line_for_an_odd_header(tmp_path, run_cli, key, text, hdu):
    path = tmp_path / "odd.fits"
    path.write_bytes(_with_card(encode_mrs(HEADER, _arms(), compresslevel=None), key, text, hdu))
    code, out, err = run_cli("inspect", str(path))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "odd.fits" in err and "Traceback" not in err
