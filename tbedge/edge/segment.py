"""``tbedge segment``: cleaned lung mask at input resolution + a contour/box overlay per image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..schema import STATUS_OK
from . import lungs as L
from .outputs import relative_name, write_png
from .pipeline import Pipeline
from .screen import expand_inputs


def segment_overlay(img: np.ndarray, lr: L.LungResult) -> np.ndarray:
    out = cv2.cvtColor((np.clip(img, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    th = max(2, round(img.shape[0] / 300))
    m = L.mask_to_native(lr.mask, img.shape)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), th)
    x0, y0, x1, y1 = lr.box
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 220, 255) if lr.fallback else (255, 200, 0), th)
    if lr.fallback:
        cv2.putText(out, "lungs implausible: fallback crop", (10, 40), cv2.FONT_HERSHEY_SIMPLEX,
                    img.shape[0] / 900, (0, 0, 255), th)
    return out


def segment_files(inputs: list[str | Path], out: Path, engine: Path | None = None,
                  backend: str = "auto", strict_engine: bool = False) -> tuple[list[Path], dict[str, int]]:
    """Mask + overlay for each image, through the pipeline's own lung stage (same decoding, batching,
    self-test and per-file error handling as ``screen``; the classifier is not loaded). A file that
    cannot be read or segmented is skipped, never the whole run: returns the files written and the
    count of skipped ones per reason code."""
    files, roots = expand_inputs(inputs)
    written: list[Path] = []
    skipped: dict[str, int] = {}
    with Pipeline(engine, backend=backend, roles=("lungs",), strict_engine=strict_engine) as pipe:
        for f, s in zip(files, pipe.run(files), strict=True):
            if s.result.status != STATUS_OK:
                skipped[s.result.reason] = skipped.get(s.result.reason, 0) + 1
                continue
            img, lr = s.image.pixels, s.lungs
            stem = relative_name(f, roots).with_suffix("")
            write_png(out / f"{stem}_mask.png", L.mask_to_native(lr.mask, img.shape) * np.uint8(255))
            write_png(out / f"{stem}_overlay.png", segment_overlay(img, lr))
            written.append(f)
    return written, skipped
