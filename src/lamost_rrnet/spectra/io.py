"""Read and write LAMOST medium-resolution (MRS) FITS files.

Two layouts exist. DR7 (up to DR8) stores one pixel per table row with a LOGLAM column;
DR9 v1 and later store each whole array in one row with a linear WAVELENGTH column. Both hold
the coadds ``COADD_B``/``COADD_R`` and one ``B-<lmjm>``/``R-<lmjm>`` table per exposure. Red
exposures are stored with descending wavelengths; every :class:`Arm` here is ascending.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from lamost_rrnet.atomic import atomic_write_bytes
from lamost_rrnet.errors import SpectrumError

COADD_BLUE = "COADD_B"
COADD_RED = "COADD_R"
_EXTNAME = re.compile(r"^(COADD_[BR]|[BR]-\w+)$")


@dataclass
class Arm:
    """One extension: a blue or red arm of a coadd or of a single exposure."""

    extname: str
    wavelength: np.ndarray  # float32, Å, vacuum and heliocentric, ascending
    flux: np.ndarray  # float32, counts
    ivar: np.ndarray  # float32
    mask: np.ndarray  # int32: ORMASK for coadds, PIXMASK for exposures
    snr: float = float("nan")
    andmask: np.ndarray | None = None  # coadds only
    header: dict = field(default_factory=dict)  # the extension's own keywords (SNR, LMJM, ...)

    @property
    def kind(self) -> str:
        return "coadd" if self.extname.upper().startswith("COADD") else "exposure"

    @property
    def side(self) -> str:
        name = self.extname.upper()
        return "blue" if name in (COADD_BLUE,) or name.startswith("B-") else "red"

    def problem(self) -> str | None:
        """Why this arm cannot be used at all, or None."""
        if self.flux.size == 0 or self.wavelength.size == 0:
            return "zero-length arrays"
        if self.flux.shape != self.wavelength.shape:
            return f"FLUX has {self.flux.size} pixels but the wavelengths {self.wavelength.size}"
        if not np.isfinite(self.flux).any():
            return "flux is NaN or infinite everywhere"
        if not np.isfinite(self.wavelength).all():
            return "non-finite wavelengths"
        if self.ivar.size and not np.any(self.ivar > 0):
            return "IVAR is zero everywhere"
        return None


@dataclass
class Spectrum:
    """A blue and a red arm observed together: one input to the network."""

    filename: str
    obsid: int
    blue: Arm
    red: Arm
    ra: float = float("nan")
    dec: float = float("nan")

    @property
    def key(self) -> tuple[str, str, str]:
        """The catalogue row key: (file name, blue extension, red extension)."""
        return (self.filename, self.blue.extname, self.red.extname)


@dataclass
class MRSFile:
    """A LAMOST MRS file: the primary header and the arms that were read."""

    path: str
    header: dict  # the primary (Information) header's keywords
    layout: str  # "dr7" or "dr9"
    arms: dict[str, Arm]

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)

    @property
    def obsid(self) -> int:
        return int(self.header.get("OBSID", -1))

    @property
    def designation(self) -> str:
        return str(self.header.get("DESIG", "")).strip()

    @property
    def ra(self) -> float:
        return float(self.header.get("RA", np.nan))

    @property
    def dec(self) -> float:
        return float(self.header.get("DEC", np.nan))

    @property
    def lmjd(self) -> int:
        return int(self.header.get("LMJD", -1))

    @property
    def data_release(self) -> str:
        return str(self.header.get("DATA_V", "")).strip()

    def spectrum(self, extname_blue: str = COADD_BLUE, extname_red: str = COADD_RED) -> Spectrum:
        """The blue/red pair named; :class:`SpectrumError` if either is missing or unusable."""
        arms = []
        for name in (extname_blue, extname_red):
            if name not in self.arms:
                raise SpectrumError(
                    f"{self.path}: no extension {name} (has: {', '.join(self.arms) or 'none'})"
                )
            arm = self.arms[name]
            why = arm.problem()
            if why:
                raise SpectrumError(f"{self.path}[{name}]: {why}")
            arms.append(arm)
        return Spectrum(self.filename, self.obsid, arms[0], arms[1], self.ra, self.dec)

    def coadd(self) -> Spectrum:
        return self.spectrum(COADD_BLUE, COADD_RED)

    def exposure_pairs(self) -> list[tuple[str, str]]:
        """(blue, red) extension names of every exposure that has both arms."""
        pairs = []
        for name in self.arms:
            if name.startswith("B-") and "R-" + name[2:] in self.arms:
                pairs.append((name, "R-" + name[2:]))
        return pairs


_BLOCK = 2880
_TFORM = re.compile(r"^\s*(\d*)([LBIJKEDA])")
_FITS_TYPES = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}


class _Reader:
    """Sequential reads from a plain or gzip-compressed file, decompressing only what is read."""

    def __init__(self, path: str):
        self._file = open(path, "rb")
        magic = self._file.read(2)
        self._file.seek(0)
        self._inflate = zlib.decompressobj(31) if magic == b"\x1f\x8b" else None
        self._buffer = bytearray()

    def read(self, n: int) -> bytes:
        if self._inflate is None:
            return self._file.read(n)
        while len(self._buffer) < n:
            chunk = self._file.read(1 << 16)
            if not chunk:
                if not self._inflate.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker")
                break
            self._buffer += self._inflate.decompress(chunk)
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def close(self) -> None:
        self._file.close()


def _parse_value(text: str):
    text = text.strip()
    if text.startswith("'"):
        end = 1
        while True:
            end = text.find("'", end)
            if end < 0 or not text.startswith("''", end):
                break
            end += 2
        return text[1 : end if end > 0 else None].replace("''", "'").rstrip()
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    for cast in (int, float):
        try:
            return cast(text.replace("D", "E") if cast is float else text)
        except ValueError:
            pass
    return text


def _read_header(reader: _Reader, block: bytes | None = None) -> dict | None:
    """The next HDU's header (starting with ``block`` if given) as a dict; None at the end."""
    header: dict = {}
    while True:
        block = reader.read(_BLOCK) if block is None else block
        if not block:
            return None if not header else header
        if len(block) < _BLOCK:
            raise EOFError("the file ends inside a header")
        for i in range(0, _BLOCK, 80):
            card = block[i : i + 80].decode("ascii", "replace")
            key = card[:8].rstrip()
            if key == "END":
                return header
            if card[8:10] == "= " and key not in header:
                header[key] = _parse_value(card[10:])
        block = None


def _data_size(header: dict) -> int:
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    size = abs(int(header.get("BITPIX", 8))) // 8
    for axis in range(1, naxis + 1):
        size *= int(header.get(f"NAXIS{axis}", 0))
    size += int(header.get("PCOUNT", 0))
    return -(-size // _BLOCK) * _BLOCK


def _table_dtype(header: dict, where: str) -> np.dtype:
    fields = []
    for i in range(1, int(header.get("TFIELDS", 0)) + 1):
        name = str(header.get(f"TTYPE{i}", f"COL{i}")).strip().upper()
        match = _TFORM.match(str(header.get(f"TFORM{i}", "")))
        if not match:
            raise SpectrumError(f"{where}: unsupported column format {header.get(f'TFORM{i}')!r}")
        repeat = int(match.group(1) or 1)
        code = match.group(2)
        if code == "A":
            fields.append((name, f"S{repeat}"))
        else:
            fields.append(
                (name, _FITS_TYPES[code], (repeat,)) if repeat != 1 else (name, _FITS_TYPES[code])
            )
    dtype = np.dtype(fields)
    if dtype.itemsize != int(header.get("NAXIS1", -1)):
        raise SpectrumError(f"{where}: the column formats do not add up to NAXIS1")
    return dtype


def _column(data: np.ndarray, name: str, dtype: type) -> np.ndarray:
    # DR9 stores each array in one row, DR7 one pixel per row: ravel covers both.
    return np.asarray(data[name], dtype=dtype).ravel()


def _read_arm(where: str, header: dict, data: np.ndarray, extname: str) -> tuple[Arm, str]:
    names = set(data.dtype.names or ())
    if "FLUX" not in names:
        raise SpectrumError(f"{where}[{extname}]: no FLUX column (has: {', '.join(names)})")
    if "LOGLAM" in names:
        layout = "dr7"
        loglam = _column(data, "LOGLAM", np.float32)
        # Published number types (FACTS.md §3): λ = 10**LOGLAM is kept in float32. Rounding the
        # float64 power is the correctly rounded float32 power on every platform.
        wavelength = np.power(10.0, loglam.astype(np.float64)).astype(np.float32)
    elif "WAVELENGTH" in names:
        layout = "dr9"
        wavelength = _column(data, "WAVELENGTH", np.float32)
    else:
        raise SpectrumError(f"{where}[{extname}]: neither a LOGLAM nor a WAVELENGTH column")
    flux = _column(data, "FLUX", np.float32)
    n = flux.size
    ivar = _column(data, "IVAR", np.float32) if "IVAR" in names else np.ones(n, np.float32)
    mask_name = "ORMASK" if "ORMASK" in names else "PIXMASK" if "PIXMASK" in names else None
    mask = _column(data, mask_name, np.int32) if mask_name else np.zeros(n, np.int32)
    andmask = _column(data, "ANDMASK", np.int32) if "ANDMASK" in names else None
    if wavelength.size > 1 and not np.all(np.diff(wavelength) >= 0):
        order = np.argsort(wavelength, kind="stable")
        wavelength = wavelength[order]
        if flux.size == order.size:
            flux, ivar, mask = flux[order], ivar[order], mask[order]
            andmask = andmask[order] if andmask is not None else None
    keep = {k: header[k] for k in ("SNR", "LMJM", "EXPTIME", "DATE-OBS") if k in header}
    snr = float(header.get("SNR", np.nan))
    return Arm(extname, wavelength, flux, ivar, mask, snr, andmask, keep), layout


def read_mrs(path: str | os.PathLike[str], extensions: Iterable[str] | None = None) -> MRSFile:
    """Read a LAMOST MRS ``.fits`` or ``.fits.gz`` file, in the DR7 or the DR9+ layout.

    ``extensions`` limits reading to the named ones (e.g. ``["COADD_B", "COADD_R"]``); a named
    extension that is absent raises :class:`SpectrumError`. Otherwise every coadd and exposure
    table is read. Only what is needed is decompressed: reading the coadds of a ``.fits.gz``
    stops after them, which makes this several times faster than a general FITS reader.
    """
    path = str(path)
    wanted = None if extensions is None else [e.upper() for e in extensions]
    try:
        reader = _Reader(path)
    except FileNotFoundError as exc:
        raise SpectrumError(f"{path}: no such file") from exc
    except OSError as exc:
        raise SpectrumError(f"{path}: cannot be opened ({exc.strerror or exc})") from exc
    arms: dict[str, Arm] = {}
    layouts = set()
    seen: list[str] = []
    try:
        first = reader.read(_BLOCK)
        if not first.startswith(b"SIMPLE  ="):
            raise SpectrumError(f"{path}: not a FITS file (it does not start with SIMPLE)")
        primary = _read_header(reader, first)
        if not primary or primary.get("SIMPLE") is not True:
            raise SpectrumError(f"{path}: not a FITS file (no SIMPLE = T card)")
        reader.read(_data_size(primary))
        remaining = None if wanted is None else set(wanted)
        while remaining is None or remaining:
            header = _read_header(reader)
            if header is None:
                break
            size = _data_size(header)
            name = str(header.get("EXTNAME", "")).strip().upper()
            seen.append(name)
            selected = _EXTNAME.match(name) if remaining is None else name in remaining
            if not selected or header.get("XTENSION", "").strip() != "BINTABLE":
                if selected and remaining is not None:
                    raise SpectrumError(f"{path}[{name}]: not a binary table")
                reader.read(size)
                continue
            raw = reader.read(size)
            if len(raw) < size:
                raise EOFError(f"the file ends inside extension {name}")
            dtype = _table_dtype(header, f"{path}[{name}]")
            data = np.frombuffer(raw, dtype=dtype, count=int(header.get("NAXIS2", 0)))
            arm, layout = _read_arm(path, header, data, name)
            arms[name] = arm
            layouts.add(layout)
            if remaining is not None:
                remaining.discard(name)
    except SpectrumError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, KeyError, TypeError) as exc:
        raise SpectrumError(f"{path}: not a readable FITS file ({exc})") from exc
    finally:
        reader.close()
    if wanted is not None:
        missing = [e for e in wanted if e not in arms]
        if missing:
            raise SpectrumError(
                f"{path}: no extension {', '.join(missing)} (has: {', '.join(seen) or 'none'})"
            )
    if not arms:
        raise SpectrumError(f"{path}: no COADD_B/COADD_R or B-*/R-* extensions")
    return MRSFile(path, primary, "dr9" if layouts == {"dr9"} else "dr7", arms)


def _arm_hdu(arm: Arm, layout: str) -> fits.BinTableHDU:
    wavelength = np.asarray(arm.wavelength)
    flux = np.asarray(arm.flux, np.float32)
    ivar = np.asarray(arm.ivar, np.float32)
    mask = np.asarray(arm.mask, np.int16)
    coadd = arm.kind == "coadd"
    if layout == "dr7":
        if not coadd and arm.side == "red":  # as LAMOST stores them
            wavelength, flux, ivar, mask = wavelength[::-1], flux[::-1], ivar[::-1], mask[::-1]
        cols = [
            fits.Column("FLUX", "E", array=flux),
            fits.Column("IVAR", "E", array=ivar),
            fits.Column("LOGLAM", "E", array=np.log10(wavelength.astype(np.float64))),
        ]
        if coadd:
            andmask = mask if arm.andmask is None else np.asarray(arm.andmask, np.int16)
            cols.append(fits.Column("ANDMASK", "I", array=andmask))
            cols.append(fits.Column("ORMASK", "I", array=mask))
        else:
            cols.append(fits.Column("PIXMASK", "I", array=mask))
    elif layout == "dr9":
        n = flux.size
        cols = [
            fits.Column("FLUX", f"{n}E", array=flux[None, :]),
            fits.Column("IVAR", f"{n}E", array=ivar[None, :]),
            fits.Column("WAVELENGTH", f"{n}D", array=wavelength.astype(np.float64)[None, :]),
        ]
        if coadd:
            andmask = mask if arm.andmask is None else np.asarray(arm.andmask, np.int16)
            cols.append(fits.Column("ANDMASK", f"{n}I", array=andmask[None, :]))
            cols.append(fits.Column("ORMASK", f"{n}I", array=mask[None, :]))
        else:
            cols.append(fits.Column("PIXMASK", f"{n}I", array=mask[None, :]))
    else:
        raise ValueError(f"unknown layout {layout!r}: use dr7 or dr9")
    hdu = fits.BinTableHDU.from_columns(cols, name=arm.extname)
    if np.isfinite(arm.snr):
        hdu.header["SNR"] = (round(float(arm.snr), 2), "Signal to noise ratio")
    for key, value in arm.header.items():
        if key not in ("SNR", "EXTNAME"):
            hdu.header[key] = value
    return hdu


def encode_mrs(
    header: Mapping | fits.Header,
    arms: Iterable[Arm],
    layout: str = "dr7",
    compresslevel: int | None = 1,
) -> bytes:
    """The bytes of an MRS file; gzip-compressed (reproducibly, mtime 0) unless level is None."""
    primary = fits.PrimaryHDU()
    items = header.items() if not isinstance(header, fits.Header) else header.cards
    for item in items:
        key, value = item[0], item[1]
        if key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", ""):
            continue
        primary.header[key] = value
    primary.header["EXTNAME"] = "Information"
    hdul = fits.HDUList([primary, *(_arm_hdu(a, layout) for a in arms)])
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    raw = buffer.getvalue()
    if compresslevel is None:
        return raw
    # astropy compresses at level 9 (slow); level 1 is ~10x faster for ~15% more bytes.
    return gzip.compress(raw, compresslevel=compresslevel, mtime=0)


def write_mrs(
    path: str | os.PathLike[str],
    header: Mapping | fits.Header,
    arms: Iterable[Arm],
    layout: str = "dr7",
    compresslevel: int = 1,
) -> Path:
    """Write an MRS file atomically; gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    gz = path.name.endswith(".gz")
    atomic_write_bytes(path, encode_mrs(header, arms, layout, compresslevel if gz else None))
    return path
