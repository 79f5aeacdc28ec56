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
   -> MONOCHROME1 inversion;
4. a layout test on a thumbnail (``orientation``) flags a film that looks upside down (QA flag
   ``orientation_suspected``); PNG/JPEG and colour DICOM carry no polarity, so the same test detects an
   inverted film and corrects it (``inverted_suspected``).

Nothing here logs; error details never contain patient names, IDs or file paths.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..schema import TbedgeInputError
from . import orientation

DEFAULT_MAX_PIXELS = 100_000_000
# Pixels alone do not bound memory: a 97 KB zlib bomb of 10000x10000 8-bit grey used 667 MB, a 778 KB
# 16-bit RGBA one 1.74 GB. This bounds one decode's working set (decode_cost); a Montgomery original
# (4020x4892, 16-bit) needs 263 MiB, a 43 cm film at 0.1 mm (4300x4300, 16-bit) 247 MiB. The shared budget
# is the same size, so decoders in parallel stay within it too, and screen's peak stays under 600 MB.
DEFAULT_MAX_DECODE_BYTES = 320 << 20
_FLOAT_BYTES = 12  # float32 pixels + two float32 temporaries (rescale, window/clip; the pipeline's crop)
HEAD_BYTES = 1 << 16  # enough for every magic number and a PNG IHDR / JPEG SOF in practice
# A shorter side below this is a thumbnail or a strip, not a film: 10-32 px copies of real films scored
# "clear", one of them a film scored 94 at full size. The lung model reads 256 px and the smallest films
# of ../shared/data are 256 px; at 128 px a 43 cm film has 3.4 mm pixels, coarser than the small nodules
# and cavities a reader looks for. Rejected from the header (``too_small``), before decoding.
MIN_SIDE = 128
LOW_LEVELS = 64  # fewer distinct grey levels than this (on a sample) -> QA flag low_bit_depth
# Colour variation (std of the opponent channels, grey levels of 255) above this -> QA flag colour_image. A
# radiograph stored as RGB has none; a uniform tint (a photo of a film on a light box) is a mean, not a
# variation. Measured: docs/reason-codes.md.
COLOUR_STD = 30.0
UNDER_AGE_YEARS = 15.0

# -- polarity check ----------------------------------------------------------------------------
# Mean layout of a frontal chest film at 4x4 after trimming uniform padding (rows: top -> bottom):
# dark air above the shoulders, bright shoulders, dark upper lungs, bright mediastinum/heart and
# a brighter abdomen, dark air beside the lower body. Rounded by hand from the per-site means of
# ../shared/data (Shenzhen/Montgomery and NIH give the same pattern), made left-right symmetric.

# -- DICOM content rules ---------------------------------------------------------------------
# Modalities that are clearly not a projection radiograph of the chest.
NOT_CXR_MODALITIES = frozenset({
    "CT", "MR", "US", "NM", "PT", "MG", "IO", "PX", "OP", "OPT", "OPM", "OCT", "ES", "SM", "XC",
    "GM", "XA", "RF", "RTIMAGE", "ECG", "IVUS", "BMD", "DOC", "SR", "KO", "PR", "SEG", "REG",
})
# BodyPartExamined: any chest word keeps the film (e.g. "CHEST ABDOMEN"); otherwise one of these
# words rejects it. Unknown or empty values are kept: the tag is often missing or free text.
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "TORSO", "WHOLEBODY", "THORAC", "TORAX", "BRUST")
_NOT_CHEST_WORDS = (
    "HEAD", "SKULL", "BRAIN", "FACE", "SINUS", "JAW", "TMJ", "NECK", "CSPINE", "LSPINE", "SSPINE",
    "COCCYX", "SACRUM", "PELVIS", "HIP", "ABDOMEN", "KNEE", "ANKLE", "FOOT", "TOE", "HEEL",
    "LEG", "FEMUR", "TIBIA", "FIBULA", "HAND", "FINGER", "THUMB", "WRIST", "FOREARM", "ELBOW",
    "HUMERUS", "ARM", "SHOULDER", "CLAVICLE", "EXTREMITY", "BREAST", "DENTAL", "TOOTH", "EYE",
)
_LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLAT", "RLAT"})

_TS_NAMES_FALLBACK = {  # encapsulated syntaxes imagecodecs can decode when no pydicom plugin can
    "1.2.840.10008.1.2.4.50": "jpeg8",
    "1.2.840.10008.1.2.4.51": "jpeg8",
    "1.2.840.10008.1.2.4.57": "ljpeg",
    "1.2.840.10008.1.2.4.70": "ljpeg",
    "1.2.840.10008.1.2.4.80": "jpegls",
    "1.2.840.10008.1.2.4.81": "jpegls",
    "1.2.840.10008.1.2.4.90": "jpeg2k",
    "1.2.840.10008.1.2.4.91": "jpeg2k",
}

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_OTHER_FORMATS = (  # recognised but not accepted: (magic, offset, name)
    (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"), (b"GIF87a", 0, "GIF"), (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WebP"), (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000 (JP2)"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000 codestream"), (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"\xff\x0a", 0, "JPEG XL"), (b"%PDF", 0, "PDF"), (b"ftypheic", 4, "HEIC"),
    (b"ftypavif", 4, "AVIF"), (b"\x1f\x8b", 0, "gzip"), (b"PK\x03\x04", 0, "ZIP"),
)


@dataclass
class ImageMeta:
    source_format: str  # "png" | "jpeg" | "dicom"
    bit_depth: int  # bits per grey sample as stored (PNG/JPEG precision, DICOM BitsStored)
    photometric: str  # as declared (DICOM) or "MONOCHROME2"/"RGB"/"PALETTE" for PNG/JPEG
    sha256: str  # of the file bytes
    shape: tuple[int, int]  # (H, W) of the returned pixels
    windowing: str = "full_range"  # "voi_lut_sequence" | "window" | "full_range"
    pixel_spacing: tuple[float, float] | None = None  # (row, column) mm, when known
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    patient_age_years: float | None = None
    view_position: str | None = None
    modality: str | None = None
    inverted_corrected: bool = False
    qa_flags: list[str] = field(default_factory=list)
    # added: details later stages and reports may want
    transfer_syntax: str | None = None
    body_part: str | None = None
    window: tuple[float, float, str] | None = None  # (center, width, VOI LUT Function) when used
    layout: dict[str, float] | None = None  # orientation.HYPOTHESES -> probability; None when not checked
    grey_levels: int | None = None  # distinct stored values on a pixel sample


@dataclass
class LoadedImage:
    pixels: np.ndarray  # float32, (H, W), [0, 1], native resolution, bright = dense (bone)
    meta: ImageMeta
    dataset: Any = None  # the pydicom Dataset for DICOM inputs (headers only, Pixel Data removed)


# ============================================================================================
class DecodeBudget:
    """Bytes of decode working memory shared by every decoding thread: a decode waits until its cost
    fits, so N workers never decode N large images at once. One decode larger than the whole budget
    (a caller's own higher limit) runs alone."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._cv = threading.Condition()

    @contextmanager
    def reserve(self, n: int) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: self.used == 0 or self.used + n <= self.total)
            self.used += n
        try:
            yield
        finally:
            with self._cv:
                self.used -= n
                self._cv.notify_all()


DECODE_BUDGET = DecodeBudget(DEFAULT_MAX_DECODE_BYTES)


@dataclass
class _Limits:
    max_pixels: int
    max_decode_bytes: int
    check_polarity: bool


# ============================================================================================
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


def decode_cost(w: int, h: int, channels: int, sample_bytes: int) -> int:
    """Bytes one decode holds at its peak: the decoded samples, a grey copy of a colour image, and the
    float32 pixels with their temporaries. Bounds memory by bytes, where max_pixels bounds only pixels."""
    grey = sample_bytes if channels > 1 else 0
    return w * h * (channels * sample_bytes + grey + _FLOAT_BYTES)


def _check_limits(w: int, h: int, channels: int, sample_bytes: int, limits: _Limits) -> int:
    """The header's size checks (pixels, then decoded bytes); returns the decode's cost in bytes."""
    _check_size(w, h, limits.max_pixels)
    cost = decode_cost(w, h, channels, sample_bytes)
    if cost > limits.max_decode_bytes:
        raise TbedgeInputError("too_large", f"{w}x{h}x{channels} at {8 * sample_bytes} bits needs ~{cost >> 20} MiB "
                                            f"to decode > limit {limits.max_decode_bytes >> 20} MiB")
    return cost


def _decode_slot(w: int, h: int, channels: int, sample_bytes: int, limits: _Limits):
    """Check the header's size limits, then hold the decode's cost in the shared budget (a context)."""
    return DECODE_BUDGET.reserve(_check_limits(w, h, channels, sample_bytes, limits))


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


def _check_layout(img: np.ndarray, scale: float, px: np.ndarray, meta: ImageMeta,
                  polarity_declared: bool = False) -> None:
    """Score the film's layout (``orientation``): invert ``px`` in place when it looks like a negative (never
    when the polarity is declared), and flag a film that looks upside down."""
    lay = orientation.classify(img, scale)
    meta.layout = lay.to_dict()
    invert, flipped = orientation.decide(lay, polarity_declared)
    if invert:
        np.subtract(1.0, px, out=px)
        meta.inverted_corrected = True
        meta.qa_flags.append("inverted_suspected")
    if flipped:
        meta.qa_flags.append("orientation_suspected")


def colour_std(rgb: np.ndarray) -> float:
    """Spread of colour on a ~64k-pixel sample: sqrt(var(R-G) + var((R+G)/2-B)), in 8-bit grey levels (the
    variation term of Hasler and Suesstrunk's colourfulness)."""
    h, w = rgb.shape[:2]
    step = max(1, int((h * w / 65536) ** 0.5))
    x = rgb[::step, ::step, :3].astype(np.float32) * np.float32(255.0 / (65535 if rgb.dtype == np.uint16 else 255))
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return float(np.sqrt((r - g).var() + (0.5 * (r + g) - b).var()))


def _grey_levels(arr: np.ndarray) -> int:
    """Distinct values on a ~64k-pixel sample of an integer image."""
    h, w = arr.shape[:2]
    step = max(1, int((h * w / 65536) ** 0.5))
    s = arr[::step, ::step].ravel()
    if s.size == 0:
        return 0
    if s.dtype.kind in "ui":
        s = s.astype(np.int64) - int(s.min())
        if int(s.max()) < 1 << 20:
            return int(np.count_nonzero(np.bincount(s)))
    return int(np.unique(s).size)


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise TbedgeInputError("too_large", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    if min(w, h) < MIN_SIDE:
        raise TbedgeInputError("too_small", f"{w}x{h}: shorter side < {MIN_SIDE} pixels")


# -- DICOM ----------------------------------------------------------------------------------
def _load_dicom_guarded(data: bytes, sha: str, limits: _Limits) -> LoadedImage:
    """pydicom converts elements lazily, so a malformed value can raise from any later access (the fuzzer found
    NotImplementedError, AttributeError, ValueError, struct.error): such a file is unreadable, not an error."""
    try:
        return _load_dicom(data, sha, limits)
    except (TbedgeInputError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001
        raise TbedgeInputError("unreadable", f"malformed DICOM: {type(e).__name__}") from None


def _load_dicom(data: bytes, sha: str, limits: _Limits) -> LoadedImage:
    import pydicom  # lazy: only DICOM inputs pay for the import
    import pydicom.config
    from pydicom.errors import InvalidDicomError

    # Reading-time value validation echoes header values (birth dates, names) into warnings and
    # the "pydicom" logger; tbedge never logs patient data, and validates what it uses itself.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except InvalidDicomError:
        raise TbedgeInputError("not_an_image", "not a DICOM file") from None
    except (EOFError, struct.error, zlib.error) as e:
        raise TbedgeInputError("truncated", f"DICOM header: {type(e).__name__}") from None
    except Exception as e:  # a parser crash on garbage is a rejected input, not an error
        raise TbedgeInputError("not_an_image", f"DICOM could not be parsed: {type(e).__name__}") from None
    if data[128:132] != b"DICM" and not any(k in ds for k in ("SOPClassUID", "Rows", "Modality")):
        raise TbedgeInputError("not_an_image", "no DICOM image elements")
    _check_dicom_truncation(ds, data)
    if not ds.file_meta.get("TransferSyntaxUID"):  # raw dataset without file meta
        from pydicom import uid
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                                          uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)

    meta = _dicom_meta(ds, sha)  # a value its VR cannot hold: unreadable (_load_dicom_guarded)
    if "PixelData" not in ds:
        raise TbedgeInputError("dicom_no_pixels")
    _check_dicom_content(ds, meta)
    frames = int(_num(ds.get("NumberOfFrames"), 1) or 1)
    if frames > 1:
        raise TbedgeInputError("dicom_multiframe", f"{frames} frames")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or cols <= 0:
        raise TbedgeInputError("not_an_image", "DICOM without Rows/Columns")
    cost = _check_limits(cols, rows, *_dicom_samples(ds, meta.photometric), limits)
    _check_native_length(ds, rows, cols)
    with DECODE_BUDGET.reserve(cost):
        return _decode_dicom(ds, meta, limits.check_polarity)


def _dicom_samples(ds: Any, photometric: str) -> tuple[int, int]:
    """(channels, bytes per sample) of the decoded array; a palette expands to RGB of up to 16 bits."""
    spp = max(1, int(_num(ds.get("SamplesPerPixel"), 1)))
    sample_bytes = max(1, (int(_num(ds.get("BitsAllocated"), 16)) + 7) // 8)
    if photometric == "PALETTE COLOR":
        return max(spp, 3), max(sample_bytes, 2)
    return spp, sample_bytes


def _decode_dicom(ds: Any, meta: ImageMeta, check_polarity: bool) -> LoadedImage:
    arr = _decode_dicom_pixels(ds)
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        raise TbedgeInputError("unsupported_format", f"pixel array of shape {arr.shape}")
    meta.grey_levels = _grey_levels(arr if arr.ndim == 2 else arr[..., 0])
    if meta.bit_depth < 8 or meta.grey_levels < LOW_LEVELS:
        meta.qa_flags.append("low_bit_depth")

    pi = meta.photometric
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        px, meta.windowing, meta.window = dicom_to_display(arr, ds)
        if pi == "MONOCHROME1":
            px = np.subtract(1.0, px, out=px)
        if check_polarity:  # the polarity is declared; the orientation is not
            _check_layout(px, 1.0, px, meta, polarity_declared=True)
    else:  # colour secondary capture: no declared polarity, treat like a PNG photo of a film
        if pi == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut
            arr = apply_color_lut(arr, ds)
        if colour_std(arr[..., :3]) > COLOUR_STD:
            meta.qa_flags.append("colour_image")
        arr = cv2.cvtColor(np.ascontiguousarray(arr[..., :3]), cv2.COLOR_RGB2GRAY)
        top = 255 if arr.dtype == np.uint8 else 65535
        px = arr.astype(np.float32) / np.float32(top)
        if check_polarity:
            _check_layout(arr, 1.0 / top, px, meta)
    meta.shape = px.shape[:2]
    # Keep headers for SR/SC writers; drop the (large) pixel bytes.
    del ds.PixelData
    return LoadedImage(np.clip(px, 0.0, 1.0, out=px), meta, ds)


def _check_dicom_truncation(ds: Any, data: bytes) -> None:
    """pydicom reads a cut file without complaint; find the evidence it leaves instead.

    (No warnings capture: warnings.catch_warnings is process-global and the pipeline is threaded.)"""
    keys = list(ds.keys())
    if not keys:
        raise TbedgeInputError("truncated", "DICOM ends after its file meta information")
    # The element being read at EOF is kept with fewer bytes than its declared length.
    raw = ds.get_item(keys[-1])
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if (isinstance(value, bytes) and length is not None and length != _UNDEFINED
            and len(value) < length):
        raise TbedgeInputError("truncated", f"DICOM ends inside element {keys[-1]}")
    # A last element of undefined length (sequence, encapsulated Pixel Data) ends with a delimiter.
    if length == _UNDEFINED and not data.endswith(_SEQ_DELIMITERS):
        raise TbedgeInputError("truncated", f"DICOM ends inside element {keys[-1]} before its delimiter")
    # Encapsulated Pixel Data cut before its delimiter is dropped altogether: look for its tag.
    if "PixelData" not in ds and any(t in data for t in _PIXEL_DATA_TAGS):
        raise TbedgeInputError("truncated", "DICOM ends inside its Pixel Data")


_UNDEFINED = 0xFFFFFFFF
_SEQ_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")  # LE, BE
# (7FE0,0010) followed by VR OB/OW (explicit VR) or an undefined length (implicit VR), LE and BE
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00OB", b"\xe0\x7f\x10\x00OW", b"\xe0\x7f\x10\x00\xff\xff\xff\xff",
                    b"\x7f\xe0\x00\x10OB", b"\x7f\xe0\x00\x10OW")


def _check_native_length(ds: Any, rows: int, cols: int) -> None:
    if _is_compressed(ds.file_meta.get("TransferSyntaxUID")):
        return
    spp = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 16)
    need = (rows * cols * spp * bits + 7) // 8
    have = len(ds.PixelData)
    if have < need:
        raise TbedgeInputError("truncated", f"Pixel Data has {have} of {need} bytes")


def _is_compressed(ts: Any) -> bool:
    """Whether a transfer syntax is encapsulated; a malformed or unknown one is unsupported (pydicom raises
    ValueError, which the fuzzer found escaping load_image as a processing error)."""
    if not ts:
        return False
    try:
        return bool(ts.is_compressed)
    except ValueError:
        raise TbedgeInputError("unsupported_format", "unknown transfer syntax") from None


def _pixel_spacing(ds: Any) -> tuple[float, float] | None:
    """Row and column spacing in mm, or None when absent or malformed (it is informative, never a reason to
    refuse a film; the fuzzer found '.' escaping as ValueError)."""
    try:
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) >= 2 else None
    except (ValueError, TypeError, IndexError):
        return None


def _dicom_meta(ds: Any, sha: str) -> ImageMeta:
    ts = ds.file_meta.get("TransferSyntaxUID")
    meta = ImageMeta(
        source_format="dicom",
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        sha256=sha,
        shape=(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)),
        windowing="full_range",
        pixel_spacing=_pixel_spacing(ds),
        sop_instance_uid=str(ds.SOPInstanceUID) if ds.get("SOPInstanceUID") else None,
        study_instance_uid=str(ds.StudyInstanceUID) if ds.get("StudyInstanceUID") else None,
        patient_age_years=patient_age_years(ds),
        view_position=(str(ds.get("ViewPosition", "")).strip().upper() or None),
        modality=(str(ds.get("Modality", "")).strip().upper() or None),
        transfer_syntax=str(ts) if ts else None,
        body_part=(str(ds.get("BodyPartExamined", "")).strip().upper() or None),
    )
    if meta.patient_age_years is not None and meta.patient_age_years < UNDER_AGE_YEARS:
        meta.qa_flags.append("under_15")
    if meta.view_position == "AP" or "antero-posterior" in _view_code_meaning(ds):
        meta.qa_flags.append("ap_view")
    return meta


def _check_dicom_content(ds: Any, meta: ImageMeta) -> None:
    if meta.modality in NOT_CXR_MODALITIES:
        raise TbedgeInputError("dicom_not_cxr", f"Modality {meta.modality}")
    part = re.sub(r"[^A-Z]", "", meta.body_part or "")
    if part and not any(w in part for w in _CHEST_WORDS) and any(w in part for w in _NOT_CHEST_WORDS):
        raise TbedgeInputError("dicom_not_cxr", f"BodyPartExamined {meta.body_part}")
    meaning = _view_code_meaning(ds)
    if meta.view_position in _LATERAL_VIEWS or ("lateral" in meaning and "decubitus" not in meaning):
        raise TbedgeInputError("dicom_lateral", f"ViewPosition {meta.view_position or meaning}")


def _view_code_meaning(ds: Any) -> str:
    seq = ds.get("ViewCodeSequence")
    try:
        return str(seq[0].get("CodeMeaning", "")).lower() if seq else ""
    except (IndexError, AttributeError):
        return ""


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_AGE_UNIT = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def patient_age_years(ds: Any) -> float | None:
    """PatientAge ('045Y', '006M', '003W', '010D'), else birth date vs study/acquisition date."""
    m = _AGE_RE.match(str(ds.get("PatientAge", "") or ""))
    if m:
        return round(int(m.group(1)) / _AGE_UNIT[m.group(2)], 3)
    born = _dicom_date(ds.get("PatientBirthDate"))
    seen = next((d for d in (_dicom_date(ds.get(k)) for k in
                             ("StudyDate", "AcquisitionDate", "ContentDate", "SeriesDate")) if d), None)
    if born and seen and seen >= born:
        return round((seen - born).days / 365.25, 3)
    return None


def _dicom_date(v: Any) -> date | None:
    s = str(v or "").strip()
    if len(s) < 8 or not s[:8].isdigit():
        return None
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    except ValueError:
        return None


def _num(v: Any, default: float) -> float:
    """First value of a DS/IS/US element (which may be multi-valued) as float."""
    if v is None or v == "":
        return default
    try:
        if not isinstance(v, (str, bytes)) and hasattr(v, "__getitem__"):
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return default


def _decode_dicom_pixels(ds: Any) -> np.ndarray:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID")
    if not ts:
        raise TbedgeInputError("unsupported_format", "no Transfer Syntax UID")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise TbedgeInputError("unsupported_format", f"transfer syntax {ts}") from None
    # Never GDCM: on a malformed JPEG 2000 stream it throws a C++ exception that aborts the whole process
    # (found by the load_image fuzzer). Another plugin, or imagecodecs, decodes what GDCM would.
    plugins = [p for p in (decoder.available_plugins if decoder.is_available else ()) if p != "gdcm"]
    if _is_compressed(ts) and not plugins:
        return _decode_with_imagecodecs(ds, str(ts))
    try:
        if plugins:
            ds.pixel_array_options(decoding_plugin=plugins[0])
        return ds.pixel_array
    except (struct.error, EOFError) as e:  # encapsulated fragments that claim more bytes than the file has
        raise TbedgeInputError("truncated", f"Pixel Data fragments: {type(e).__name__}") from None
    except Exception as e:  # noqa: BLE001 - pydicom's decoders raise many types on malformed pixel modules
        raise TbedgeInputError("unsupported_format", f"pixel data not decodable ({ts.name}): "
                               f"{type(e).__name__}") from None


def _decode_with_imagecodecs(ds: Any, ts: str) -> np.ndarray:
    """Single-frame unsigned monochrome fallback when no pydicom plugin handles `ts`."""
    codec = _TS_NAMES_FALLBACK.get(ts)
    if codec is None or int(ds.get("PixelRepresentation", 0)) != 0 \
            or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise TbedgeInputError("unsupported_format", f"no decoder installed for transfer syntax {ts}")
    import imagecodecs
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    try:
        arr = getattr(imagecodecs, f"{codec}_decode")(frame)
    except Exception as e:  # imagecodecs raises its own per-codec error classes
        raise TbedgeInputError("unsupported_format", f"{codec} decode failed: {type(e).__name__}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    bits = int(ds.get("BitsStored") or 16)
    if arr.dtype.kind == "u" and bits < arr.dtype.itemsize * 8:
        arr = arr & np.array((1 << bits) - 1, arr.dtype)  # pydicom masks unused high bits too
    return arr


# -- DICOM grey pipeline ---------------------------------------------------------------------
def dicom_to_display(arr: np.ndarray, ds: Any) -> tuple[np.ndarray, str, tuple | None]:
    """Stored values -> modality LUT/rescale -> VOI -> float32 [0, 1] (MONOCHROME1 not yet inverted).

    Returns (pixels, windowing path, (center, width, function) or None)."""
    x = modality_lut(arr, ds)
    seq = ds.get("VOILUTSequence")
    if seq:
        return voi_lut(x, seq[0], ds), "voi_lut_sequence", None
    c, w = _num(ds.get("WindowCenter"), np.nan), _num(ds.get("WindowWidth"), np.nan)
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if np.isfinite(c) and np.isfinite(w) and (w >= 1 if func == "LINEAR" else w > 0):
        return window(x, c, w, func), "window", (float(c), float(w), func)
    lo, hi = float(x.min()), float(x.max())
    px = (x - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(x)
    return px.astype(np.float32, copy=False), "full_range", None


def modality_lut(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PS3.3 C.11.1: Modality LUT Sequence if present, else Rescale Slope/Intercept (float32)."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut
        return apply_modality_lut(arr, ds).astype(np.float32)
    slope = _num(ds.get("RescaleSlope"), 1.0)
    intercept = _num(ds.get("RescaleIntercept"), 0.0)
    x = arr.astype(np.float32)
    if slope != 1.0:
        x *= np.float32(slope)
    if intercept != 0.0:
        x += np.float32(intercept)
    return x


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 windowing to [0, 1]."""
    c, w = float(center), float(width)
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(np.float32(-4.0 / w) * (x - np.float32(c))))
    elif function == "LINEAR_EXACT":
        y = (x - np.float32(c)) * np.float32(1.0 / w) + np.float32(0.5)
    elif w > 1:  # LINEAR, and any unknown function (the standard's default)
        y = (x - np.float32(c - 0.5)) * np.float32(1.0 / (w - 1.0)) + np.float32(0.5)
    else:  # LINEAR with width 1 is a threshold
        y = (x > c - 0.5).astype(np.float32)
    return np.clip(y, 0.0, 1.0).astype(np.float32, copy=False)


def voi_lut(x: np.ndarray, item: Any, ds: Any) -> np.ndarray:
    """Apply one VOI LUT Sequence item to modality values, normalised to [0, 1]."""
    desc = [int(v) for v in item.LUTDescriptor]
    n, first, bits = desc[0] or 65536, desc[1], desc[2]
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):  # OW: 16-bit words in the dataset's byte order
        little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
        lut = np.frombuffer(elem.value, dtype="<u2" if little else ">u2", count=n)
    else:
        vals = elem.value
        lut = np.asarray([vals] if isinstance(vals, (int, float)) else list(vals), dtype=np.float64)
    lut = lut.astype(np.float32)
    top = float(2 ** bits - 1)
    vmax = float(lut.max()) if lut.size else 0.0
    # Some writers declare 16 bits for 12-bit LUT values (or the reverse); trust the data then.
    if vmax > top or (vmax > 0 and vmax <= top / 16):
        top = float(2 ** max(1, int(np.ceil(np.log2(vmax + 1)))) - 1)
    idx = np.clip(np.rint(x) - first, 0, len(lut) - 1).astype(np.intp)
    return np.clip(lut[idx] * np.float32(1.0 / top), 0.0, 1.0)
