"""What every image reader shares: the limits (pixels, decoded bytes, the smallest side), the result types,
the process-wide decode budget, and the checks run on decoded pixels (grey levels, colour, layout)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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
