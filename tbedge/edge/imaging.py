"""Image loading: the one function the whole project uses to turn a file into pixels.

(Minimal PNG/JPEG version; DICOM, reason codes and polarity checks are being added.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..schema import TbedgeInputError

DEFAULT_MAX_PIXELS = 100_000_000


@dataclass
class ImageMeta:
    source_format: str
    bit_depth: int
    photometric: str
    sha256: str
    shape: tuple[int, int]
    windowing: str = "full_range"
    pixel_spacing: tuple[float, float] | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    patient_age_years: float | None = None
    view_position: str | None = None
    modality: str | None = None
    inverted_corrected: bool = False
    qa_flags: list[str] = field(default_factory=list)


@dataclass
class LoadedImage:
    pixels: np.ndarray  # float32, (H, W), [0, 1], native resolution, bright = dense (bone)
    meta: ImageMeta
    dataset: object = None  # the pydicom Dataset for DICOM inputs (headers only)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    data = Path(path).read_bytes()
    if not data:
        raise TbedgeInputError("empty_file")
    sha = hashlib.sha256(data).hexdigest()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise TbedgeInputError("not_an_image")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2GRAY if arr.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    depth = 16 if arr.dtype == np.uint16 else 8
    px = arr.astype(np.float32) / (65535.0 if depth == 16 else 255.0)
    meta = ImageMeta("png", depth, "MONOCHROME2", sha, px.shape)
    return LoadedImage(px, meta)
