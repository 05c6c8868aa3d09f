"""Coverage-guided fuzzing of the MRS reader with atheris (libFuzzer), outside CI.

Each input becomes a file that :func:`read_mrs` reads twice (the coadds only, then every
extension); everything ``inspect`` and ``predict`` take from the result is then touched. The
only exception allowed out is :class:`SpectrumError`; anything else is a crash, and libFuzzer
writes the input to ``crash-*``. The first byte of an input picks the container: 1 gzips the
rest (so the fuzzer mutates the FITS structure behind a valid gzip stream), anything else
writes the bytes as they are (plain FITS, or a corrupt gzip stream).

The seed corpus (written to CORPUS_DIR, if empty) is a few small files of both layouts from
the project's own writer.

Run: ``nice -n 10 python benchmarks/fuzz_reader_atheris.py CORPUS_DIR -max_total_time=600
-timeout=20 -rss_limit_mb=2048 -max_len=65536`` (libFuzzer flags after the corpus).
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["lamost_rrnet"]):
    from lamost_rrnet.errors import SpectrumError
    from lamost_rrnet.spectra.io import COADD_BLUE, COADD_RED, Arm, encode_mrs, read_mrs
    from lamost_rrnet.spectra.summary import summary_text

_WORK = Path(tempfile.mkdtemp(prefix="fuzz-reader-"))
_FILE = _WORK / "input.fits"


def _arm(name: str, start: float, n: int = 40) -> Arm:
    wave = (start * 10 ** (1e-5 * np.arange(n))).astype(np.float32)
    flux = np.linspace(900, 1100, n, dtype=np.float32)
    return Arm(name, wave, flux, np.full(n, 1e-3, np.float32), np.zeros(n, np.int32), 40.0,
               header={"LMJM": "83555758"})  # fmt: skip


def seed_corpus(directory: Path) -> None:
    header = {"OBSID": 123, "RA": 10.5, "DEC": -3.25, "DESIG": "LAMOST J004200.00-031500.0",
              "LMJD": 58025, "DATA_V": "LAMOST DR9"}  # fmt: skip
    arms = [_arm("COADD_B", 4925.0), _arm("COADD_R", 6300.0),
            _arm("B-83555758", 4925.0), _arm("R-83555758", 6300.0)]  # fmt: skip
    for layout in ("dr7", "dr9"):
        raw = encode_mrs(header, arms, layout=layout, compresslevel=None)
        (directory / f"{layout}-plain").write_bytes(b"\0" + raw)
        (directory / f"{layout}-gzip-by-harness").write_bytes(b"\1" + raw)
        (directory / f"{layout}-gzip").write_bytes(b"\0" + gzip.compress(raw, 1, mtime=0))


def _touch(mrs) -> None:
    """What inspect and predict take from a file, each allowed to fail only as SpectrumError."""
    for use in (
        lambda: summary_text(mrs),
        lambda: (mrs.obsid, mrs.ra, mrs.dec, mrs.lmjd),
        lambda: mrs.coadd(),
        *[lambda pair=pair: mrs.spectrum(*pair) for pair in mrs.exposure_pairs()],
    ):
        try:
            use()
        except SpectrumError:
            pass


def test_one_input(data: bytes) -> None:
    payload = gzip.compress(data[1:], 1, mtime=0) if data[:1] == b"\1" else data[1:]
    _FILE.write_bytes(payload)
    for extensions in ([COADD_BLUE, COADD_RED], None):
        try:
            _touch(read_mrs(_FILE, extensions))
        except SpectrumError:
            pass


def main() -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            seed_corpus(corpus)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
