"""Decompression bombs: small .fits.gz files whose headers declare huge extensions.

Deflate packs zeros about 1000:1, so a file of ~1 MB can declare a GB. The gzip stream is
assembled from one compressed megabyte of zeros repeated (each piece ends with a full flush,
so the pieces are identical and independent), which builds a 1 GB bomb in well under a
second instead of compressing a GB.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

from lamost_rrnet.spectra.io import Arm, encode_mrs

_BLOCK = 2880
_MB = 1 << 20


def _header(cards: list[tuple[str, object]]) -> bytes:
    lines = []
    for key, value in cards:
        text = f"'{value:<8}'" if isinstance(value, str) else str(value)
        lines.append(f"{key:<8}= {text:>20}".ljust(80))
    lines.append("END".ljust(80))
    lines += [" " * 80] * (-len(lines) % 36)
    return "".join(lines).encode("ascii")


def image_header(extname: str, nbytes: int) -> bytes:
    """An IMAGE extension's header declaring ``nbytes`` of 8-bit data."""
    return _header([("XTENSION", "IMAGE"), ("BITPIX", 8), ("NAXIS", 1), ("NAXIS1", nbytes),
                    ("PCOUNT", 0), ("GCOUNT", 1), ("EXTNAME", extname)])  # fmt: skip


def _parts(header: dict, arms: Iterable[Arm], declared: int, junk: str) -> tuple[bytes, bytes]:
    """The file's bytes before and after the ``declared`` zeros of extension ``junk``."""
    raw = encode_mrs(header, arms, compresslevel=None)
    end = raw.index(b"END" + b" " * 77)
    split = -(-(end + 80) // _BLOCK) * _BLOCK  # the primary HDU has no data
    padding = bytes(-declared % _BLOCK)  # the junk data ends on a block boundary
    return raw[:split] + image_header(junk, declared), padding + raw[split:]


def bomb_bytes(header: dict, arms: Iterable[Arm], declared: int, junk: str = "JUNK") -> bytes:
    """A gzip'd MRS file: the primary header, an extension ``junk`` declaring ``declared``
    bytes of zeros (a whole number of MB), then ``arms``."""
    if declared % _MB:
        raise ValueError("declare a whole number of MB")
    before, after = _parts(header, arms, declared, junk)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(before) + deflate.flush(zlib.Z_FULL_FLUSH)
    zeros = bytes(_MB)
    piece = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(after) + deflate.flush()
    crc = zlib.crc32(before)
    for _ in range(declared // _MB):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(after, crc)
    size = len(before) + declared + len(after)
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return gzip_header + head + piece * (declared // _MB) + tail + trailer


def write_bomb(
    path: Path, header: dict, arms: Iterable[Arm], declared: int, junk: str = "JUNK"
) -> Path:
    """A bomb at ``path``: gzip'd if the name ends in .gz, else a sparse plain file (the zeros
    are a hole, so they take no disk)."""
    if path.name.endswith(".gz"):
        path.write_bytes(bomb_bytes(header, arms, declared, junk))
        return path
    before, after = _parts(header, arms, declared, junk)
    with open(path, "wb") as fh:
        fh.write(before)
        fh.seek(declared, 1)
        fh.write(after)
    return path
