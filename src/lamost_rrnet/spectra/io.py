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
    header: fits.Header
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
        """The blue/red pair named; raises :class:`SpectrumError` if either is missing or unusable."""
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


def _column(data: fits.FITS_rec, name: str, dtype: type) -> np.ndarray:
    # DR9 stores each array in one row, DR7 one pixel per row: ravel covers both.
    return np.asarray(data[name], dtype=dtype).ravel()


def _read_arm(path: str, hdu: fits.BinTableHDU, extname: str) -> tuple[Arm, str]:
    data = hdu.data
    if data is None:
        raise SpectrumError(f"{path}[{extname}]: the table is empty")
    names = {n.upper(): n for n in data.columns.names}
    if "FLUX" not in names:
        raise SpectrumError(f"{path}[{extname}]: no FLUX column (has: {', '.join(names)})")
    if "LOGLAM" in names:
        layout = "dr7"
        loglam = _column(data, names["LOGLAM"], np.float32)
        # Published number types (FACTS.md §3): λ = 10**LOGLAM is kept in float32. The authors'
        # NumPy 1 used libm's correctly rounded powf; NumPy 2's SIMD float32 power can be 1 ulp
        # off, which flips pixels in the chaotic normalization. Rounding float64 powers matches.
        wavelength = np.power(10.0, loglam.astype(np.float64)).astype(np.float32)
    elif "WAVELENGTH" in names:
        layout = "dr9"
        wavelength = _column(data, names["WAVELENGTH"], np.float32)
    else:
        raise SpectrumError(f"{path}[{extname}]: neither a LOGLAM nor a WAVELENGTH column")
    flux = _column(data, names["FLUX"], np.float32)
    n = flux.size
    ivar = _column(data, names["IVAR"], np.float32) if "IVAR" in names else np.ones(n, np.float32)
    mask_name = names.get("ORMASK") or names.get("PIXMASK")
    mask = _column(data, mask_name, np.int32) if mask_name else np.zeros(n, np.int32)
    andmask = _column(data, names["ANDMASK"], np.int32) if "ANDMASK" in names else None
    if wavelength.size > 1 and not np.all(np.diff(wavelength) >= 0):
        order = np.argsort(wavelength, kind="stable")
        wavelength = wavelength[order]
        if flux.size == order.size:
            flux, ivar, mask = flux[order], ivar[order], mask[order]
            andmask = andmask[order] if andmask is not None else None
    header = hdu.header
    keep = {k: header[k] for k in ("SNR", "LMJM", "EXPTIME", "DATE-OBS") if k in header}
    snr = float(header.get("SNR", np.nan))
    return Arm(extname, wavelength, flux, ivar, mask, snr, andmask, keep), layout


def read_mrs(path: str | os.PathLike[str], extensions: Iterable[str] | None = None) -> MRSFile:
    """Read a LAMOST MRS ``.fits`` or ``.fits.gz`` file, in the DR7 or the DR9+ layout.

    ``extensions`` limits reading to the named ones (e.g. ``["COADD_B", "COADD_R"]``), which is
    faster; a named extension that is absent raises :class:`SpectrumError`. Otherwise every coadd
    and exposure table is read.
    """
    path = str(path)
    wanted = None if extensions is None else [e.upper() for e in extensions]
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            header = hdul[0].header.copy()
            arms: dict[str, Arm] = {}
            layouts = set()
            if wanted is None:
                hdus = [h for h in hdul[1:] if _EXTNAME.match(str(h.name).upper())]
            else:
                present = {str(h.name).upper(): h for h in hdul[1:]}
                missing = [e for e in wanted if e not in present]
                if missing:
                    raise SpectrumError(
                        f"{path}: no extension {', '.join(missing)} "
                        f"(has: {', '.join(present) or 'none'})"
                    )
                hdus = [present[e] for e in wanted]
            for hdu in hdus:
                if not isinstance(hdu, fits.BinTableHDU):
                    raise SpectrumError(f"{path}[{hdu.name}]: not a binary table")
                arm, layout = _read_arm(path, hdu, str(hdu.name).upper())
                arms[arm.extname] = arm
                layouts.add(layout)
    except SpectrumError:
        raise
    except FileNotFoundError as exc:
        raise SpectrumError(f"{path}: no such file") from exc
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error) as exc:
        raise SpectrumError(f"{path}: not a readable FITS file ({exc})") from exc
    if not arms:
        raise SpectrumError(f"{path}: no COADD_B/COADD_R or B-*/R-* extensions")
    return MRSFile(path, header, "dr9" if layouts == {"dr9"} else "dr7", arms)


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
