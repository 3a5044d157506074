"""Compressed request bodies, as clients send them (`Content-Encoding`), and
the zip bomb the service must refuse without expanding it."""

import gzip
import struct
import zlib
from functools import cache


@cache
def compressed(body: bytes, coding: str) -> bytes:
    """`body` in a content coding: gzip (or x-gzip), deflate as RFC 9110 means
    it (zlib's format), or "raw deflate", which some clients send as deflate.
    Kept: the tests compress the same bodies again and again."""
    if coding.lower() in ("gzip", "x-gzip"):
        return gzip.compress(body)
    if coding.lower() == "deflate":
        return zlib.compress(body)
    if coding == "raw deflate":
        compressor = zlib.compressobj(wbits=-15)
        return compressor.compress(body) + compressor.flush()
    raise ValueError(coding)


# A coding as a case of the tests: its Content-Encoding header, and how the body is compressed.
CODINGS = {
    "gzip": ("gzip", "gzip"),
    "x-gzip": ("x-gzip", "gzip"),
    "deflate": ("deflate", "deflate"),
    "raw deflate": ("deflate", "raw deflate"),
    "GZip in another case": ("GZip", "gzip"),
}

ZIP_BOMB_EXPANDS_TO = 1 << 30
_MIB = bytes(1 << 20)


@cache
def zip_bomb() -> bytes:
    """About 1 MB of gzip that decompresses to 1 GiB of zeros. Compressing
    1 GiB would take seconds: each MiB of zeros after the first, flushed to a
    byte boundary, compresses to the same bytes, so they are repeated, and
    the trailer's CRC-32 is worked out over the zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(_MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(_MIB) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.compress(_MIB) + compressor.flush()
    crc = 0
    for _ in range(ZIP_BOMB_EXPANDS_TO // len(_MIB)):
        crc = zlib.crc32(_MIB, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, no time, best compression, Unix
    middle = repeated * (ZIP_BOMB_EXPANDS_TO // len(_MIB) - 2)
    return header + first + middle + last + struct.pack("<II", crc, ZIP_BOMB_EXPANDS_TO & 0xFFFFFFFF)


def small_zip_bomb(limit: int) -> bytes:
    """A few kilobytes of gzip that decompress to just over `limit` bytes."""
    return gzip.compress(bytes(limit + 100_000), 9)
