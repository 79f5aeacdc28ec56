"""Image loading: the one function the whole project uses to turn a file into pixels.

``load_image(path)`` returns a float32 grey image in [0, 1] at native resolution with
"bright = dense" (MONOCHROME2) polarity, plus metadata, or raises
:class:`~tbedge.schema.TbedgeInputError` with a reason code from ``schema.REASONS``.

Order of work, so that bad inputs cost little:
1. read the first 64 KiB (OSError -> ``unreadable``; zero bytes -> ``empty_file``) and sniff the
   format from its magic bytes, not the file name; a non-image or a file larger than the decode
   budget is rejected from that head, so a 2 GB file costs 64 KiB;
2. parse the header only (PNG chunks, JPEG markers, DICOM elements): truncation, size limits
   (``too_large``: pixels, or decoded bytes = pixels x channels x bytes per sample plus the float
   copies, decided before any pixel is decoded), DICOM content checks;
3. decode, holding the decode's cost in a process-wide memory budget (:data:`DECODE_BUDGET`), so
   concurrent decoders never hold more than one budget of pixels between them; DICOM: modality
   LUT / rescale -> VOI (VOI LUT Sequence, else window, else the full range of values present)
   -> MONOCHROME1 inversion (``dicom``; the shared limits and checks are in ``decode``);
4. a layout test on a thumbnail (``orientation``) flags a film that looks upside down (QA flag
   ``orientation_suspected``); PNG/JPEG and colour DICOM carry no polarity, so the same test detects an
   inverted film and corrects it (``inverted_suspected``).

Nothing here logs; error details never contain patient names, IDs or file paths.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

from ..schema import TbedgeInputError
from .decode import (
    COLOUR_STD,
    DECODE_BUDGET,
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    HEAD_BYTES,
    LOW_LEVELS,
    MIN_SIDE,
    DecodeBudget,
    ImageMeta,
    LoadedImage,
    _check_layout,
    _decode_slot,
    _grey_levels,
    _Limits,
    colour_std,
    decode_cost,
)
from .dicom import _load_dicom_guarded

# Re-exported: the limits and result types are part of this module's interface (load_image's arguments,
# its return type, and what callers tune).
__all__ = ["DECODE_BUDGET", "DEFAULT_MAX_DECODE_BYTES", "DEFAULT_MAX_PIXELS", "MIN_SIDE", "DecodeBudget", "ImageMeta",
           "LoadedImage", "TbedgeInputError", "decode_cost", "jpeg_header", "load_image", "png_header", "sniff"]

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_OTHER_FORMATS = (  # recognised but not accepted: (magic, offset, name)
    (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"), (b"GIF87a", 0, "GIF"), (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WebP"), (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000 (JP2)"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000 codestream"), (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"\xff\x0a", 0, "JPEG XL"), (b"%PDF", 0, "PDF"), (b"ftypheic", 4, "HEIC"),
    (b"ftypavif", 4, "AVIF"), (b"\x1f\x8b", 0, "gzip"), (b"PK\x03\x04", 0, "ZIP"),
)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, check_polarity: bool = True,
               max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> LoadedImage:
    """Read one PNG, JPEG or DICOM file; see the module docstring. Raises TbedgeInputError.

    ``check_polarity=False`` skips the inversion check: for inputs that are not radiographs
    (lung masks are white lungs on black and would be "corrected")."""
    limits = _Limits(max_pixels, max_decode_bytes, check_polarity)
    try:
        data, sha, kind = _read_input(Path(path), max_decode_bytes)
    except OSError as e:  # no path in the detail: file names may carry patient names
        raise TbedgeInputError("unreadable", type(e).__name__) from None
    try:
        if kind == "png":
            return _load_png(data, sha, limits)
        if kind == "jpeg":
            return _load_jpeg(data, sha, limits)
        if kind == "dicom":
            return _load_dicom_guarded(data, sha, limits)
        raise AssertionError(kind)  # _read_input rejects every other kind
    except TbedgeInputError as e:
        e.sha256 = sha  # rejected results still identify the file (Result.sha256)
        raise


def _read_input(path: Path, max_bytes: int) -> tuple[bytes, str, str]:
    """(bytes, sha256, kind) of an image file whose size fits ``max_bytes``; anything else is rejected
    from its first HEAD_BYTES, never read whole (a 2 GB non-image once used 2.27 GB)."""
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEAD_BYTES)
        if not head:
            raise TbedgeInputError("empty_file")
        kind = sniff(head, size)  # by content: file names and extensions lie
        if size > max_bytes:  # no decodable image within the budget is this large; not hashed (seconds per GB)
            reason = "too_large" if kind in ("png", "jpeg", "dicom") else "not_an_image" if kind is None \
                else "unsupported_format"
            raise TbedgeInputError(reason, f"file of {size} bytes > decode limit {max_bytes}")
        data = head + f.read()
    sha = hashlib.sha256(data).hexdigest()
    if kind not in ("png", "jpeg", "dicom"):
        e = TbedgeInputError("unsupported_format", kind) if kind else TbedgeInputError("not_an_image")
        e.sha256 = sha
        raise e
    return data, sha, kind


def _open_regular(path: Path):
    """The file opened for reading; a FIFO, socket or device is refused first (reading a FIFO would block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    f = open(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise OSError(errno.EINVAL, "not a regular file")
    return f


def sniff(data: bytes, size: int | None = None) -> str | None:
    """'png' | 'jpeg' | 'dicom' | the name of a recognised unsupported format | None.

    ``data`` may be the file's head only; ``size`` is then the whole file's length."""
    size = len(data) if size is None else size
    if data.startswith(_PNG_SIG):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    for magic, off, name in _OTHER_FORMATS:
        if data[off:off + len(magic)] == magic:
            return name
    if data[:2] == b"BM" and len(data) >= 26 and struct.unpack("<I", data[2:6])[0] == size:
        return "BMP"
    # DICOM without the 128-byte preamble: starts with a group 0002 or 0008 tag
    if data[:2] in (b"\x02\x00", b"\x08\x00") and len(data) >= 8:
        return "dicom"
    return None


# -- PNG ------------------------------------------------------------------------------------
def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from IHDR; walks the chunks to check for IEND."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise TbedgeInputError("truncated" if len(data) < 33 else "not_an_image", "PNG without IHDR")
    w, h, depth, ctype = struct.unpack(">IIBB", data[16:26])
    if w == 0 or h == 0:
        raise TbedgeInputError("not_an_image", "PNG with a zero dimension")
    pos, n = 8, len(data)
    while pos + 8 <= n:
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        end = pos + 12 + length
        if end > n:
            break
        if data[pos + 4:pos + 8] == b"IEND":
            return w, h, depth, ctype
        pos = end
    raise TbedgeInputError("truncated", "PNG ends before its IEND chunk")


# Channels OpenCV decodes each PNG colour type to (a palette or grey+alpha may become BGRA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


def _load_png(data: bytes, sha: str, limits: _Limits) -> LoadedImage:
    w, h, depth, ctype = png_header(data)
    with _decode_slot(w, h, _PNG_CHANNELS.get(ctype, 4), 2 if depth == 16 else 1, limits):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise TbedgeInputError("unsupported_format", "PNG could not be decoded")
        if depth == 16 and arr.dtype != np.uint16:  # OpenCV must keep all 16 bits
            raise TbedgeInputError("unsupported_format", f"16-bit PNG decoded as {arr.dtype}")
        photometric = {3: "PALETTE"}.get(ctype, "RGB" if ctype in (2, 6) else "MONOCHROME2")
        bits = 16 if depth == 16 else 8  # OpenCV expands 1/2/4-bit grey and palettes to 8 bits
        return _finish_raster(arr, "png", bits, depth, photometric, sha, limits.check_polarity)


# -- JPEG -----------------------------------------------------------------------------------
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(data: bytes) -> tuple[int, int, int, int, int]:
    """(width, height, precision, components, SOF marker) from the SOF segment; checks for EOI."""
    i, n, sof = 2, len(data), None
    while True:
        if i >= n:
            raise TbedgeInputError("truncated", "JPEG ends in its header")
        if data[i] != 0xFF:  # stray bytes between segments: skip them as libjpeg does
            i = data.find(b"\xff", i)
            if i < 0:
                raise TbedgeInputError("truncated", "JPEG ends in its header")
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= n:
            raise TbedgeInputError("truncated", "JPEG ends in its header")
        m = data[i]
        i += 1
        if m == 0xD8 or 0xD0 <= m <= 0xD7 or m == 0x01:  # markers without a length
            continue
        if m == 0xD9:
            raise TbedgeInputError("not_an_image", "JPEG without a scan")
        if i + 2 > n:
            raise TbedgeInputError("truncated", "JPEG ends in its header")
        (length,) = struct.unpack(">H", data[i:i + 2])
        if m in _SOF:
            if i + 8 > n:
                raise TbedgeInputError("truncated", "JPEG ends in its frame header")
            prec, h, w, nc = struct.unpack(">BHHB", data[i + 2:i + 8])
            sof = (w, h, prec, nc, m)
        if m == 0xDA:
            break
        i += length
    if sof is None:
        raise TbedgeInputError("not_an_image", "JPEG without a frame header")
    # EOI cannot occur inside entropy-coded data (0xFF there is followed by 0x00 or RSTn), so
    # an FFD9 after the first scan header means the stream is complete. (OpenCV 4 returns a cut
    # file padded with grey; OpenCV 5 returns None, which alone would not say why.)
    if data.rfind(b"\xff\xd9", i) < 0:
        raise TbedgeInputError("truncated", "JPEG ends before its EOI marker")
    return sof


def _load_jpeg(data: bytes, sha: str, limits: _Limits) -> LoadedImage:
    w, h, prec, nc, marker = jpeg_header(data)
    if w == 0 or h == 0:
        raise TbedgeInputError("unsupported_format", "JPEG with its height in a DNL segment")
    with _decode_slot(w, h, max(1, nc), 2 if prec > 8 else 1, limits):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise TbedgeInputError("unsupported_format", f"JPEG SOF{marker - 0xC0} {prec}-bit not decodable")
        bits = prec if arr.dtype == np.uint16 else 8
        return _finish_raster(arr, "jpeg", bits, bits, "MONOCHROME2" if nc == 1 else "RGB", sha,
                              limits.check_polarity)


def _finish_raster(arr: np.ndarray, fmt: str, bits: int, declared_bits: int, photometric: str,
                   sha: str, check_polarity: bool = True) -> LoadedImage:
    """PNG/JPEG array (uint8/uint16, gray/BGR/BGRA) -> LoadedImage with the polarity check."""
    colour = arr.ndim == 3 and arr.shape[2] in (3, 4) and colour_std(arr[..., 2::-1]) > COLOUR_STD
    if arr.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if arr.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        arr = cv2.cvtColor(arr, code) if arr.shape[2] in (3, 4) else arr[..., 0]
    meta = ImageMeta(fmt, bits, photometric, sha, arr.shape[:2])
    if colour:
        meta.qa_flags.append("colour_image")
    meta.grey_levels = _grey_levels(arr)
    if declared_bits < 8 or meta.grey_levels < LOW_LEVELS:
        meta.qa_flags.append("low_bit_depth")
    px = arr.astype(np.float32) / np.float32(2 ** bits - 1)  # division: 255 -> exactly 1.0
    if check_polarity:
        _check_layout(arr, 1.0 / (2 ** bits - 1), px, meta)
    return LoadedImage(px, meta)
