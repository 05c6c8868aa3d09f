"""One predict run over a corpus of bad and tricky inputs, all made from one good file.

Every kind of input a survey run meets becomes exactly one row (or is skipped, when the input
expansion yields no regular file), the run exits 0 with no traceback, and the good copies give the
same labels as a clean run of the good file alone (docs/reliability.md).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from lamost_rrnet.identity import unescape_path
from lamost_rrnet.spectra.io import Arm, encode_mrs
from test_predict import BLUE, RED, _arm, tiny_ensemble

CLI = "from lamost_rrnet.cli.app import main; main()"
HEADER = {"OBSID": 42, "RA": 10.0, "DEC": 30.0, "LMJD": 58000, "DESIG": "J004000.00+300000.0"}


def _arms(seed: int = 0, **kw) -> list[Arm]:
    rng = np.random.default_rng(seed)
    return [_arm("COADD_B", BLUE, rng, **kw), _arm("COADD_R", RED, rng, **kw)]


def _fits(header=None, arms=None, **kw) -> bytes:
    """Uncompressed MRS bytes of the good file, or of a variant."""
    return encode_mrs(HEADER if header is None else header, _arms(**kw) if arms is None else arms,
                      compresslevel=None)  # fmt: skip


def _replace_card(raw: bytes, key: str, value: str, nth: int = 0) -> bytes:
    """Set the ``nth`` card ``key`` to the literal ``value`` (lying headers)."""
    start = -1
    for _ in range(nth + 1):
        start = raw.index(f"{key:<8}= ".encode(), start + 1)
    card = f"{key:<8}= {value:>20}".ljust(80).encode()
    return raw[:start] + card + raw[start + 80 :]


def _bomb_extension(n_bytes: int) -> bytes:
    """A BINTABLE of zeros that compresses ~1000:1, placed before the coadds."""
    cards = [
        "XTENSION= 'BINTABLE'", "BITPIX  =                    8", "NAXIS   =                    2",
        "NAXIS1  =                 1000", f"NAXIS2  = {n_bytes // 1000:>20}",
        "PCOUNT  =                    0", "GCOUNT  =                    1",
        "TFIELDS =                    1", "TTYPE1  = 'PAD     '", "TFORM1  = '1000B   '",
        "EXTNAME = 'PADDING '", "END",
    ]  # fmt: skip
    header = "".join(c.ljust(80) for c in cards)
    header += " " * (-len(header) % 2880)
    data = n_bytes // 1000 * 1000
    return header.encode() + b"\0" * (data + (-data % 2880))


def _with_extension_first(raw: bytes, extension: bytes) -> bytes:
    """Insert an extension between the primary HDU and the first coadd."""
    first = raw.index(b"XTENSION")
    return raw[:first] + extension + raw[first:]


#: A corpus file: its bytes and the status of its row (None: any non-empty status with flag 0
#: forced; '': a good row).
Entry = tuple[bytes, str | None]


def _copies(good: bytes, goodz: bytes) -> dict[str | bytes, Entry]:
    """The good file under names that stress paths, and with an extra exposure: good rows."""
    copies = {b"good.fits", b"good.fits.gz", b"sub-a/x.fits", b"sub-b/x.fits",
              "\u00e9toile \u2605.fits".encode(), b"with space.fits", b"bad-\xff-name.fits",
              b"new\nline.fits", b"quote'\"\\name.fits", b"n" * 200 + b".fits"}  # fmt: skip
    files: dict[str | bytes, Entry] = {
        name: (goodz if name.endswith(b".gz") else good, "") for name in copies
    }
    extra = _arms(0) + [_arm("B-100", BLUE, np.random.default_rng(9))]
    files["extra-extension.fits"] = (_fits(arms=extra), "")
    return files


def _damaged(good: bytes, goodz: bytes) -> dict[str | bytes, Entry]:
    """Files cut short, overwritten or not FITS at all."""
    corrupt = bytearray(goodz)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = b"\x55" * 64
    return {
        "truncated.fits.gz": (goodz[: len(goodz) // 2], None),
        "corrupt.fits.gz": (bytes(corrupt), None),
        "empty.fits": (b"", None),
        "empty.fits.gz": (b"", None),
        "text.fits": (b"SIMPLE  = this is not FITS\n" * 10, None),
        "gzipped-text.fits.gz": (gzip.compress(b"hello\n" * 100), None),
        "primary-only.fits": (good[: good.index(b"XTENSION")], None),
        "header-only.fits": (good[: good.index(b"XTENSION") + 2880], None),
        "truncated-data.fits": (good[: len(good) - 5000], None),
    }


def _odd_spectra(good: bytes) -> dict[str | bytes, Entry]:
    """Readable files whose arms or columns are missing, empty, non-finite or misplaced."""
    rng = np.random.default_rng(1)
    files: dict[str | bytes, Entry] = {}
    exposures = [_arm("B-100", BLUE, rng), _arm("R-100", RED, rng)]
    files["no-coadd.fits"] = (_fits(arms=exposures), None)
    files["one-arm.fits"] = (_fits(arms=_arms()[:1]), None)
    # Without IVAR every pixel counts as measured (spectra.io): the same labels.
    files["no-ivar-column.fits"] = (good.replace(b"'IVAR    '", b"'XVAR    '"), "")
    files["no-flux-column.fits"] = (good.replace(b"'FLUX    '", b"'FLUQ    '"), None)
    for name, value in (("nan", np.nan), ("inf", np.inf), ("zero", 0.0), ("negative", -1.0)):
        arms = _arms()
        arms[0].flux[:] = value
        files[f"{name}-flux.fits"] = (_fits(arms=arms), None)
    arms = _arms()
    arms[0].ivar[:] = np.nan
    files["nan-ivar.fits"] = (_fits(arms=arms), None)
    empty = [Arm(name, *(np.zeros(0, np.float32),) * 3, np.zeros(0, np.int32), 50.0)
             for name in ("COADD_B", "COADD_R")]  # fmt: skip
    files["empty-arms.fits"] = (_fits(arms=empty), None)
    files["ten-pixel-arms.fits"] = (_fits(arms=[_arm("COADD_B", BLUE, rng, n=10),
                                               _arm("COADD_R", RED, rng, n=10)]), None)  # fmt: skip
    files["swapped-arms.fits"] = (
        _fits(arms=[_arm("COADD_B", RED, rng), _arm("COADD_R", BLUE, rng)]), None
    )  # fmt: skip
    files["narrow.fits"] = (_fits(arms=[_arm("COADD_B", (5100.0, 5300.0), rng),
                                       _arm("COADD_R", RED, rng)]), None)  # fmt: skip
    files["dark.fits"] = (_fits(snr=0.0), None)  # readable, S/N 0: labels with flag 0 (low_snr)
    return files


def _lying_and_large(good: bytes) -> dict[str | bytes, Entry]:
    """Headers that lie about sizes, extensions that would not fit in memory, files over the
    limit, and catalogue cards of the wrong type or range."""
    files: dict[str | bytes, Entry] = {
        "lying-naxis2.fits": (_replace_card(good, "NAXIS2", "99999999"), None),
        "lying-naxis2-small.fits": (_replace_card(good, "NAXIS2", "10"), None),
        "lying-bitpix.fits": (_replace_card(good, "BITPIX", "-64", nth=1), None),
        "negative-naxis1.fits": (_replace_card(good, "NAXIS1", "-20"), None),
        "huge-tfields.fits": (_replace_card(good, "TFIELDS", "999999999"), None),
    }
    # Extensions that are not read are streamed past, whatever they declare: good rows.
    files["bomb.fits.gz"] = (gzip.compress(_with_extension_first(good, _bomb_extension(40 << 20)),
                                           compresslevel=1, mtime=0), "")  # fmt: skip
    files["padded.fits"] = (_with_extension_first(good, _bomb_extension(3 << 20)), "")
    rng = np.random.default_rng(4)
    files["over-the-limit.fits"] = (_fits(arms=[_arm("COADD_B", BLUE, rng, n=200_000),
                                               _arm("COADD_R", RED, rng, n=200_000)]),
                                    "too_large")  # fmt: skip
    for name, header in (
        ("obsid-beyond-int64.fits", {**HEADER, "OBSID": 2**70}),
        ("obsid-text.fits", {**HEADER, "OBSID": "not-a-number"}),
        ("ra-text.fits", {**HEADER, "RA": "abc"}),
        ("dec-out-of-range.fits", {**HEADER, "DEC": 1e300}),
    ):
        files[name] = (_fits(header=header), "bad_header")
    files["lmjd-huge.fits"] = (_fits(header={**HEADER, "LMJD": 10**30}), "")  # not a catalogue card
    return files


def _links_and_oddities(root: Path) -> dict[bytes, str | None]:
    """Links to the good file, a dangling link, and what is not a regular file."""
    os.symlink(root / "good.fits", root / "symlink.fits")
    os.link(root / "good.fits", root / "hardlink.fits")
    os.symlink(root / "gone.fits", root / "dangling.fits")  # a stale name: a not_found row
    (root / "directory.fits").mkdir()
    (root / "directory.fits" / "inner.txt").write_text("a directory named like a spectrum")
    os.mkfifo(root / "fifo.fits")
    (root / "notes.txt").write_text("not a spectrum by its name")
    return {b"symlink.fits": "", b"hardlink.fits": "", b"dangling.fits": "not_found"}


def build_corpus(root: Path) -> tuple[dict[bytes, str | None], set[bytes]]:
    """Write the corpus under ``root``.

    Returns the expected status of every input that must give a row (None: any non-empty
    status with flag 0 forced; '' : a good row) keyed by its identity's file name, and the
    names of good copies that must agree with a clean run.
    """
    good = _fits()
    goodz = gzip.compress(good, mtime=0)
    files = {**_copies(good, goodz), **_damaged(good, goodz), **_odd_spectra(good),
             **_lying_and_large(good)}  # fmt: skip
    expect: dict[bytes, str | None] = {}
    for name, (data, status) in files.items():
        path = root / os.fsdecode(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[os.fsencode(name)] = status
    expect.update(_links_and_oddities(root))
    good_copies = {k for k, v in expect.items() if v == ""}
    return expect, good_copies


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_ensemble().save(path)
    return path


def _predict(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", CLI, "predict", *map(os.fsencode, args)],
        capture_output=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def _rows(path: Path) -> dict[bytes, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = Table.read(path)
    for name in table.colnames:
        if table[name].dtype.kind in "US" and hasattr(table[name], "filled"):
            table[name] = table[name].filled("")  # astropy masks empty FITS strings
    out: dict[bytes, dict] = {}
    for row in table:
        identity = unescape_path(str(row["path"]))
        assert identity not in out, f"duplicate row for {identity!r}"
        out[identity] = {c: row[c] for c in table.colnames}
    return out


def test_every_kind_of_input_is_one_row_and_nothing_aborts(model_dir, tmp_path):
    root = tmp_path / "corpus"
    expect, good_copies = build_corpus(root)
    assert len(expect) >= 40
    common = ("--model", model_dir, "--max-file-mb", "2", "--workers", "1")
    # The directory twice and a recursive glob: each identity is processed once.
    run = _predict(root, root, f"{root}/**/*.fits", "-o", tmp_path / "corpus.fits", *common)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert b"Traceback" not in run.stderr
    clean = _predict(root / "good.fits", "-o", tmp_path / "clean.fits", *common)
    assert clean.returncode == 0, clean.stderr.decode(errors="replace")
    reference = next(iter(_rows(tmp_path / "clean.fits").values()))

    rows = _rows(tmp_path / "corpus.fits")
    by_name = {os.path.relpath(k, os.fsencode(root)): v for k, v in rows.items()}
    assert set(by_name) == set(expect)
    labels = [c for c in reference if c.endswith("_err")]
    labels += [c.removesuffix("_err") for c in labels]
    wrong = []
    for name, status in expect.items():
        row = by_name[name]
        got = (int(row["flag"]), str(row["status"]))
        if got[0] == 0 and not got[1].strip():
            wrong.append((name, got, "flag 0 without a status"))
        if status is None and got[0] != 0:
            wrong.append((name, got, "a bad input with flag 1"))
        if status == "" and got != (int(reference["flag"]), str(reference["status"])):
            wrong.append((name, got, "a good copy unlike the clean run"))
        if status and (status not in got[1].split(",") or got[0] != 0):
            wrong.append((name, got, f"not {status} with flag 0"))
    assert not wrong, "\n".join(map(str, wrong))
    for name in good_copies:  # within the fake-weights tolerance: 1e-3 of each label's std
        for column in labels:
            std = 500.0 if column.startswith("Teff") else 0.3  # tiny_ensemble's label scale
            assert abs(by_name[name][column] - reference[column]) <= 1e-3 * std, (name, column)
    # The spectrum is fine: labels are still predicted, beside the card's sentinel.
    obsid_row, ra_row = by_name[b"obsid-beyond-int64.fits"], by_name[b"ra-text.fits"]
    assert np.isfinite(obsid_row["Teff[K]"]) and obsid_row["obsid"] == -1
    assert np.isfinite(ra_row["Teff[K]"]) and ra_row["obsid"] == HEADER["OBSID"]
    assert np.ma.is_masked(ra_row["ra"]) or np.isnan(ra_row["ra"])
