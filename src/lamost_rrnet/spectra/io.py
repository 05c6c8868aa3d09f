"""Read and write LAMOST medium-resolution (MRS) FITS files.

Two layouts exist. DR7 (up to DR8) stores one pixel per table row with a LOGLAM column;
DR9 v1 and later store each whole array in one row with a linear WAVELENGTH column. Both hold
the coadds ``COADD_B``/``COADD_R`` and one ``B-<lmjm>``/``R-<lmjm>`` table per exposure. Red
exposures are stored with descending wavelengths; every :class:`Arm` here is ascending.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lamost_rrnet.atomic import atomic_write_bytes
from lamost_rrnet.errors import FileTooLarge, SpectrumError

COADD_BLUE = "COADD_B"
COADD_RED = "COADD_R"
_EXTNAME = re.compile(r"^(COADD_[BR]|[BR]-\w+)$")

#: Most bytes :func:`read_mrs` holds for one file, decompressed: headers and the extensions it
#: reads (those it skips are streamed past). A real MRS file is well under 10 MB; the limit
#: keeps a crafted header (a gzip "bomb") from taking the machine's memory.
MAX_BYTES = 256 * 2**20
#: Most pixels in one arm. A real MRS arm has about 4,000; preprocessing and the RV's continuum
#: fit take ~130 bytes per pixel, so an arm of 15 million (240 MB, under MAX_BYTES) took a
#: worker 1.8 GB beyond its reading.
MAX_PIXELS = 2**20


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

    def _number(self, key: str, cast: type, default):
        value = self.header.get(key, default)
        try:
            if isinstance(value, (bool, str)):
                raise ValueError
            return cast(value)
        except (ValueError, OverflowError):
            raise SpectrumError(
                f"{self.path}: header card {key} = {value!r} is not a number"
            ) from None

    @property
    def obsid(self) -> int:
        return self._number("OBSID", int, -1)

    @property
    def designation(self) -> str:
        return str(self.header.get("DESIG", "")).strip()

    @property
    def ra(self) -> float:
        return self._number("RA", float, np.nan)

    @property
    def dec(self) -> float:
        return self._number("DEC", float, np.nan)

    @property
    def lmjd(self) -> int:
        return self._number("LMJD", int, -1)

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


_CHUNK = 1 << 16  # compressed bytes read from the file at a time
_STEP = 1 << 20  # most decompressed bytes made at a time: what skipping an extension holds


class _Reader:
    """Sequential reads from a plain or gzip-compressed file, decompressing only what is read.

    :meth:`read` returns bytes the caller keeps and counts them against ``max_bytes``;
    :meth:`skip` streams past bytes nobody keeps, so what a header declares for an extension
    that is not wanted never has to fit in memory.
    """

    def __init__(self, path: str, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self._left = max_bytes
        self._file = open(path, "rb")
        magic = self._file.read(2)
        self._file.seek(0)
        self._inflate = zlib.decompressobj(31) if magic == b"\x1f\x8b" else None

    def _inflated(self, limit: int) -> bytes:
        """Up to ``limit`` more decompressed bytes; empty only at the end of the stream."""
        inflate = self._inflate
        while not inflate.eof:
            data = inflate.unconsumed_tail or self._file.read(_CHUNK)
            # With no input left, one more call still returns output zlib had pending.
            out = inflate.decompress(data, limit)
            if out:
                return out
            if not data:
                raise EOFError("compressed file ended before the end-of-stream marker")
        return b""

    def read(self, n: int) -> bytes | bytearray:
        """The next ``n`` bytes, fewer at the end of the file."""
        if n > self._left:
            held = self.max_bytes - self._left
            raise FileTooLarge(
                f"{self.path}: over the per-file limit of {self.max_bytes / 2**20:g} MB "
                f"decompressed ({held:,} bytes held, {n:,} more declared)"
            )
        self._left -= n
        if self._inflate is None:
            return self._file.read(n)
        # One buffer, grown in place (realloc): no second copy of what is read, and nothing
        # allocated for what a truncated file only declares.
        out = bytearray()
        while len(out) < n:
            piece = self._inflated(min(n - len(out), _STEP))
            if not piece:
                break
            out += piece
        return out

    def skip(self, n: int) -> None:
        """Move ``n`` bytes on, or to the end of the file, holding at most one step of them."""
        if self._inflate is None:
            self._file.seek(n, os.SEEK_CUR)
            return
        while n > 0:
            piece = self._inflated(min(n, _STEP))
            if not piece:
                return
            n -= len(piece)

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


def _int_card(header: dict, key: str, default: int, low: int = 0, high: int | None = None) -> int:
    """A structural card's value, checked: a lying card must not size a read or a loop."""
    value = header.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} = {value!r} is not an integer")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{key} = {value} is out of range")
    return value


def _data_size(header: dict) -> int:
    """Bytes of the HDU's data, padded to whole blocks."""
    naxis = _int_card(header, "NAXIS", 0, high=999)
    if naxis == 0:
        return 0
    bitpix = _int_card(header, "BITPIX", 8, low=-64, high=64)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise ValueError(f"BITPIX = {bitpix} is not a FITS data type")
    size = abs(bitpix) // 8
    for axis in range(1, naxis + 1):
        size *= _int_card(header, f"NAXIS{axis}", 0)
    size += _int_card(header, "PCOUNT", 0)
    return -(-size // _BLOCK) * _BLOCK


def _table_dtype(header: dict, where: str) -> np.dtype:
    fields = []
    for i in range(1, _int_card(header, "TFIELDS", 0, high=999) + 1):
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
    if dtype.itemsize != header.get("NAXIS1"):
        raise SpectrumError(f"{where}: the column formats do not add up to NAXIS1")
    return dtype


def _pixels(dtype: np.dtype, rows: int) -> int:
    """Pixels in a table's FLUX column (one a row in DR7, all in one row in DR9)."""
    if dtype.names is None or "FLUX" not in dtype.names:
        return 0
    return rows * int(np.prod(dtype["FLUX"].shape, dtype=object))


def _column(data: np.ndarray, name: str, dtype: type) -> np.ndarray:
    # DR9 stores each array in one row, DR7 one pixel per row: ravel covers both.
    return np.asarray(data[name], dtype=dtype).ravel()


def _float_or_nan(value) -> float:
    # An odd SNR card costs its value, not the arm: S/N is only reported.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float("nan")


def _read_arm(where: str, header: dict, data: np.ndarray, extname: str) -> tuple[Arm, str]:
    names = set(data.dtype.names or ())
    if "FLUX" not in names:
        raise SpectrumError(f"{where}[{extname}]: no FLUX column (has: {', '.join(names)})")
    if "LOGLAM" in names:
        layout = "dr7"
        loglam = _column(data, "LOGLAM", np.float32)
        # Published number types (docs/preprocessing.md): λ = 10**LOGLAM in float32, correctly
        # rounded: a float32 power differs by one ulp between CPUs, which the outlier steps
        # turn into up to 2 % at single pixels; the rounded float64 power is the same everywhere.
        power = loglam.astype(np.float64)
        wavelength = np.power(10.0, power, out=power).astype(np.float32)  # in place: one copy
        del power
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
    if wavelength.size > 1 and not np.all(wavelength[1:] >= wavelength[:-1]):
        order = np.argsort(wavelength, kind="stable")
        wavelength = wavelength[order]
        if flux.size == order.size:
            flux, ivar, mask = flux[order], ivar[order], mask[order]
            andmask = andmask[order] if andmask is not None else None
    keep = {k: header[k] for k in ("SNR", "LMJM", "EXPTIME", "DATE-OBS") if k in header}
    snr = _float_or_nan(header.get("SNR"))
    return Arm(extname, wavelength, flux, ivar, mask, snr, andmask, keep), layout


def _open(path: str, max_bytes: int) -> _Reader:
    """A reader of ``path``; a file that cannot be opened is a SpectrumError naming it."""
    try:
        return _Reader(path, max_bytes)
    except FileNotFoundError as exc:
        raise SpectrumError(f"{path}: no such file") from exc
    except OSError as exc:
        raise SpectrumError(f"{path}: cannot be opened ({exc.strerror or exc})") from exc
    except ValueError as exc:  # e.g. a NUL byte in the name
        raise SpectrumError(f"{path}: cannot be opened ({exc})") from exc


def _read_table(reader: _Reader, path: str, header: dict, name: str, size: int) -> tuple[Arm, str]:
    """The arm in the binary table ``name`` whose ``size`` bytes of data come next."""
    dtype = _table_dtype(header, f"{path}[{name}]")
    pixels = _pixels(dtype, _int_card(header, "NAXIS2", 0))
    if pixels > MAX_PIXELS:
        raise FileTooLarge(
            f"{path}[{name}]: {pixels:,} pixels, over the limit of {MAX_PIXELS:,} an arm"
        )
    raw = reader.read(size)
    if len(raw) < size:
        raise EOFError(f"the file ends inside extension {name}")
    data = np.frombuffer(raw, dtype=dtype, count=_int_card(header, "NAXIS2", 0))
    # Wild values become inf or NaN, which Arm.problem() reports: a numpy warning for each
    # such file would only be noise on stderr.
    with np.errstate(over="ignore", invalid="ignore"):
        return _read_arm(path, header, data, name)


def _check_found(
    path: str, wanted: list[str] | None, arms: dict[str, Arm], seen: list[str]
) -> None:
    """Refuse a file without an extension asked for, or without any arm."""
    if wanted is not None:
        missing = [e for e in wanted if e not in arms]
        if missing:
            raise SpectrumError(
                f"{path}: no extension {', '.join(missing)} (has: {', '.join(seen) or 'none'})"
            )
    if not arms:
        raise SpectrumError(f"{path}: no COADD_B/COADD_R or B-*/R-* extensions")


def read_mrs(
    path: str | os.PathLike[str],
    extensions: Iterable[str] | None = None,
    max_bytes: int = MAX_BYTES,
) -> MRSFile:
    """Read a LAMOST MRS ``.fits`` or ``.fits.gz`` file, in the DR7 or the DR9+ layout.

    ``extensions`` limits reading to the named ones (e.g. ``["COADD_B", "COADD_R"]``); a named
    extension that is absent raises :class:`SpectrumError`. Otherwise every coadd and exposure
    table is read. Only what is needed is decompressed: reading the coadds of a ``.fits.gz``
    stops after them, which makes this several times faster than a general FITS reader.

    Extensions that are not read are streamed past, never held. What is held (headers and the
    extensions read, decompressed) may not exceed ``max_bytes``, nor an arm :data:`MAX_PIXELS`
    pixels: a file that needs more raises :class:`~lamost_rrnet.errors.FileTooLarge`, before
    reading it. Every failure is a :class:`SpectrumError` naming the file, whatever its bytes.
    """
    path = str(path)
    wanted = None if extensions is None else [e.upper() for e in extensions]
    reader = _open(path, max_bytes)
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
        reader.skip(_data_size(primary))
        remaining = None if wanted is None else set(wanted)
        while remaining is None or remaining:
            header = _read_header(reader)
            if header is None:
                break
            size = _data_size(header)
            name = str(header.get("EXTNAME", "")).strip().upper()
            seen.append(name)
            selected = _EXTNAME.match(name) if remaining is None else name in remaining
            if not selected or str(header.get("XTENSION", "")).strip() != "BINTABLE":
                if selected and remaining is not None:
                    raise SpectrumError(f"{path}[{name}]: not a binary table")
                reader.skip(size)
                continue
            arm, layout = _read_table(reader, path, header, name, size)
            arms[name] = arm
            layouts.add(layout)
            if remaining is not None:
                remaining.discard(name)
    except SpectrumError:
        raise
    except Exception as exc:
        # Whatever odd bytes do to the parsing (MemoryError, OverflowError, struct or zlib
        # errors...), the caller gets one line naming the file, never a traceback.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise SpectrumError(f"{path}: not a readable FITS file ({detail})") from exc
    finally:
        reader.close()
    _check_found(path, wanted, arms, seen)
    return MRSFile(path, primary, "dr9" if layouts == {"dr9"} else "dr7", arms)


def _fits_float(value: float) -> str:
    text = repr(value) if len(repr(value)) <= 20 else f"{value:.15G}"
    text = text.replace("e", "E")
    return text if ("." in text or "E" in text) else text + ".0"


def _card(key: str, value=None, comment: str = "") -> str:
    """One 80-character FITS header card."""
    key = key.upper()
    if key in ("COMMENT", "HISTORY", ""):
        return f"{key:<8}{'' if value is None else value}"[:80].ljust(80)
    if isinstance(value, (bool, np.bool_)):
        text = ("T" if value else "F").rjust(20)
    elif isinstance(value, (int, np.integer)):
        text = str(int(value)).rjust(20)
    elif isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            raise ValueError(f"FITS headers cannot hold {value} ({key})")
        text = _fits_float(float(value)).rjust(20)
    else:
        quoted = str(value).replace("'", "''")
        text = f"'{quoted:<8}'".ljust(20)
    card = f"{key:<8}= {text}"
    if comment:
        card = f"{card} / {comment}"
    if len(card) > 80 and len(f"{key:<8}= {text}") > 80:
        raise ValueError(f"the header value of {key} is too long for one card")
    return card[:80].ljust(80)


def _header_bytes(cards: list[str]) -> bytes:
    cards = [*cards, "END".ljust(80)]
    cards += [" " * 80] * (-len(cards) % 36)
    return "".join(cards).encode("ascii")


def _padded(data: bytes, fill: bytes = b"\0") -> bytes:
    return data + fill * (-len(data) % _BLOCK)


def _arm_table(arm: Arm, layout: str) -> bytes:
    """One BINTABLE extension, header and data, in LAMOST's column layout."""
    wavelength = np.asarray(arm.wavelength)
    flux, ivar = np.asarray(arm.flux), np.asarray(arm.ivar)
    mask = np.asarray(arm.mask)
    andmask = mask if arm.andmask is None else np.asarray(arm.andmask)
    coadd = arm.kind == "coadd"
    masks = [("ANDMASK", andmask), ("ORMASK", mask)] if coadd else [("PIXMASK", mask)]
    if layout == "dr7":
        if not coadd and arm.side == "red":  # as LAMOST stores them
            wavelength, flux, ivar = wavelength[::-1], flux[::-1], ivar[::-1]
            masks = [(name, m[::-1]) for name, m in masks]
        loglam = np.log10(wavelength.astype(np.float64))
        columns = [("FLUX", ">f4", "E", flux), ("IVAR", ">f4", "E", ivar),
                   ("LOGLAM", ">f4", "E", loglam)]  # fmt: skip
        columns += [(name, ">i2", "I", m) for name, m in masks]
        rows, shape = flux.size, ()
    elif layout == "dr9":
        n = flux.size
        columns = [("FLUX", ">f4", f"{n}E", flux), ("IVAR", ">f4", f"{n}E", ivar),
                   ("WAVELENGTH", ">f8", f"{n}D", wavelength)]  # fmt: skip
        columns += [(name, ">i2", f"{n}I", m) for name, m in masks]
        rows, shape = 1, (n,)
    else:
        raise ValueError(f"unknown layout {layout!r}: use dr7 or dr9")
    table = np.empty(rows, np.dtype([(name, dt, shape) for name, dt, _, _ in columns]))
    for name, _, _, values in columns:
        table[name] = np.reshape(values, table[name].shape)
    cards = [
        _card("XTENSION", "BINTABLE", "binary table extension"),
        _card("BITPIX", 8), _card("NAXIS", 2), _card("NAXIS1", table.dtype.itemsize),
        _card("NAXIS2", rows), _card("PCOUNT", 0), _card("GCOUNT", 1),
        _card("TFIELDS", len(columns)),
    ]  # fmt: skip
    for i, (name, _, form, _) in enumerate(columns, start=1):
        cards += [_card(f"TTYPE{i}", name), _card(f"TFORM{i}", form)]
    cards.append(_card("EXTNAME", arm.extname, "The extension name"))
    if np.isfinite(arm.snr):
        cards.append(_card("SNR", round(float(arm.snr), 2), "Signal to noise ratio"))
    cards += [_card(k, v) for k, v in arm.header.items() if k not in ("SNR", "EXTNAME")]
    return _header_bytes(cards) + _padded(table.tobytes())


_STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "EXTNAME", "END")


HeaderLike = Mapping | Sequence[tuple[str, object, str]]  # or an astropy.io.fits.Header


def _header_entries(header: HeaderLike) -> list[tuple[str, object, str]]:
    # An astropy Header, recognized by its cards so that reading never imports astropy
    # (a second of start-up for a one-file predict).
    if hasattr(header, "cards"):
        return [(c.keyword, c.value, c.comment) for c in header.cards]
    if isinstance(header, Mapping):
        return [(k, v, "") for k, v in header.items()]
    return [(k, v, c) for k, v, c in header]


def encode_mrs(
    header: HeaderLike,
    arms: Iterable[Arm],
    layout: str = "dr7",
    compresslevel: int | None = 1,
) -> bytes:
    """The bytes of an MRS file; gzip-compressed (reproducibly, mtime 0) unless level is None.

    ``header`` holds the primary header's keywords: a mapping, an astropy Header, or
    (keyword, value, comment) triples.

    The FITS structure is written directly (cards and big-endian tables): astropy's general
    writer took ~75 ms a file, which made writing large simulated sets slow.
    """
    cards = [_card("SIMPLE", True, "conforms to FITS standard"), _card("BITPIX", 16),
             _card("NAXIS", 0), _card("EXTEND", True)]  # fmt: skip
    for key, value, comment in _header_entries(header):
        if key.upper() not in _STRUCTURAL and not (isinstance(value, float) and value != value):
            cards.append(_card(key, value, comment))
    cards.append(_card("EXTNAME", "Information", "The extension name"))
    raw = _header_bytes(cards) + b"".join(_arm_table(a, layout) for a in arms)
    if compresslevel is None:
        return raw
    # gzip level 1 is ~10x faster than astropy's level 9 for ~15% more bytes.
    return gzip.compress(raw, compresslevel=compresslevel, mtime=0)


def write_mrs(
    path: str | os.PathLike[str],
    header: HeaderLike,
    arms: Iterable[Arm],
    layout: str = "dr7",
    compresslevel: int = 1,
) -> Path:
    """Write an MRS file atomically; gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    gz = path.name.endswith(".gz")
    atomic_write_bytes(path, encode_mrs(header, arms, layout, compresslevel if gz else None))
    return path
