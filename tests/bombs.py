"""Decompression bombs and huge files, made in a fraction of a second (tests never commit them)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_SAMPLES = {0: 1, 2: 3, 4: 2, 6: 4}  # samples per pixel of each non-palette PNG colour type


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_ihdr(w: int, h: int, depth: int = 8, ctype: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))


def zlib_of_zeros(n_rows: int, row: bytes, rows_per_block: int = 64) -> bytes:
    """zlib stream of ``row`` repeated ``n_rows`` times: one fully flushed deflate block of
    ``rows_per_block`` rows (it references nothing before it) is repeated, so 800 MB of zeros take
    milliseconds rather than seconds to compress."""
    block = row * rows_per_block
    n_blocks, rest = divmod(n_rows, rows_per_block)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    end = tail.compress(row * rest) + tail.flush()
    adler = 1
    for _ in range(n_blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    return b"\x78\xda" + seg * n_blocks + end + struct.pack(">I", adler)


def png_bomb(w: int, h: int, depth: int = 8, ctype: int = 0) -> bytes:
    """A valid PNG of w x h zero pixels: 10000x10000 8-bit grey is ~97 KB, 16-bit RGBA ~780 KB."""
    row = bytes(1 + w * _PNG_SAMPLES[ctype] * depth // 8)  # filter byte 0, then the samples
    return PNG_SIG + png_ihdr(w, h, depth, ctype) + png_chunk(b"IDAT", zlib_of_zeros(h, row)) + png_chunk(b"IEND", b"")


def sparse_file(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that takes no disk space beyond ``head`` (a hole reads as zeros)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    os.utime(path)
    return path
